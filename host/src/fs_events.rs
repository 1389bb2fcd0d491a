//! The rules every directory watcher follows (plugins in `reload`, schemas in
//! `contract::watch`, upcasters in `host`): how long a directory must be quiet, and which file
//! events may have changed a file's contents; and [`watch`], the watcher of a directory that is
//! read again whole on every change. One home, so the watchers cannot drift apart.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use notify_debouncer_full::notify::event::{AccessKind, AccessMode};
use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

/// How long a watched directory must be quiet before its changes are applied.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Whether a file event may have changed contents: opening, reading and closing a file
/// do not (closing after a write does).
pub fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watching stops when this is dropped.
pub struct Watcher {
    _debouncer: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a watcher runs after changes: the directory read again.
pub type Reload = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Watch `dir` (recursively) and run `reload` once the directory has been quiet for
/// [`DEBOUNCE`] after a change to a path `counts` says yes to; changes during a reload make one
/// more. `what` names the directory in logs ("schema directory").
pub fn watch(dir: &Path, what: &'static str, counts: fn(&Path) -> bool, reload: Reload) -> anyhow::Result<Watcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let changed =
                events.iter().any(|e| changes(&e.event.kind) && e.event.paths.iter().any(|p: &PathBuf| counts(p)));
            if changed {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!("{what} watch error: {e}");
            }
        }
    })
    .with_context(|| format!("starting the {what} watcher"))?;
    debouncer.watch(dir, RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the {what} for changes");
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            reload().await;
        }
    });
    Ok(Watcher { _debouncer: Box::new(debouncer), task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_not_a_change() {
        use notify_debouncer_full::notify::event::{CreateKind, ModifyKind};
        assert!(!changes(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes(&EventKind::Access(AccessKind::Read)));
        assert!(!changes(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(changes(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(changes(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes(&EventKind::Create(CreateKind::File)));
    }
}
