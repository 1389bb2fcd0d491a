//! Hot reload of the schema directory: changes are debounced, then the whole directory is
//! read again and swapped in, or refused (the active set stays; [`super::Registry::reload`]).
//!
//! The directory is watched recursively (`TYPE/VERSION.json`); editors' temporary files and
//! access events are ignored by the same rule as plugins' (`crate::fs_events`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

use super::Registry;

/// How long the directory must be quiet before it is read again (as for plugins).
pub use crate::fs_events::DEBOUNCE;

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

/// Whether a changed path is one a schema set reads.
fn counts(path: &std::path::Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".json") || name == "contract.toml" || path.extension().is_none())
}

/// Watch `registry`'s directory and reload it on changes (nothing to watch without one).
pub fn watch(registry: Arc<Registry>) -> anyhow::Result<Option<Watcher>> {
    let Some(dir) = registry.dir().map(PathBuf::from) else { return Ok(None) };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let changed = events
                .iter()
                .any(|e| crate::fs_events::changes(&e.event.kind) && e.event.paths.iter().any(|p| counts(p)));
            if changed {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!("schema directory watch error: {e}");
            }
        }
    })
    .context("starting the schema directory watcher")?;
    debouncer.watch(&dir, RecursiveMode::Recursive).with_context(|| format!("watching {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching for schema changes");
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            // Compiling is CPU work; keep it off the runtime's worker threads.
            let registry = registry.clone();
            let _ = tokio::task::spawn_blocking(move || registry.reload()).await;
        }
    });
    Ok(Some(Watcher { _debouncer: Box::new(debouncer), task }))
}
