//! Hot reload: watch the plugin directory and apply what changed.
//!
//! File events are debounced (a copy in progress produces a burst of writes), then each
//! affected plugin is re-applied: a new `NAME.wasm` starts a subscriber, a changed one (or a
//! changed `NAME.toml` beside it) is compiled, validated and swapped in, a removed one stops
//! its subscriber. A half-written file fails validation and is refused with a log line; the
//! running version keeps serving until a complete file arrives. The safe way to deploy is to
//! write elsewhere in the same filesystem and `mv` into place (an atomic rename).
//!
//! Only changes count: access events (a `cat`, a checksum, a backup tool reading the file)
//! are ignored, and the host skips a file whose contents and settings are unchanged. Each
//! plugin's change is applied in a task of its own, so a plugin that is slow to load never
//! holds up another.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

use crate::fs_events::changes;
use crate::host::Host;

/// How long the directory must be quiet before changes are applied.
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

/// The plugin names affected by changes to `paths` in `dir`.
pub fn affected(dir: &Path, paths: &[PathBuf]) -> BTreeSet<String> {
    paths
        .iter()
        .filter(|p| p.parent().is_some_and(|parent| same_dir(parent, dir)))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm" || e == "toml"))
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .filter(|name| !name.starts_with('.'))
        .collect()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b)
}

/// Start watching the host's plugin directory.
pub fn watch(host: Arc<Host>) -> anyhow::Result<Watcher> {
    let dir = host.config().plugins.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let paths: Vec<PathBuf> =
                events.into_iter().filter(|e| changes(&e.event.kind)).flat_map(|e| e.event.paths).collect();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!("plugin directory watch error: {e}");
            }
        }
    })
    .context("starting the plugin directory watcher")?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching for plugin changes");
    let task = tokio::spawn(async move {
        while let Some(mut paths) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            for name in affected(&dir, &paths) {
                // The host serializes loads of one plugin, in the order they were asked for.
                let (host, path) = (host.clone(), dir.join(format!("{name}.wasm")));
                tokio::spawn(async move { host.apply(&path).await });
            }
        }
    });
    Ok(Watcher { _debouncer: Box::new(debouncer), task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugin_files_in_the_directory_count() {
        let dir = Path::new("/plugins");
        let paths = [
            PathBuf::from("/plugins/a.wasm"),
            PathBuf::from("/plugins/b.toml"),
            PathBuf::from("/plugins/.c.wasm"),
            PathBuf::from("/plugins/d.wasm.tmp"),
            PathBuf::from("/elsewhere/e.wasm"),
        ];
        let names: Vec<String> = affected(dir, &paths).into_iter().collect();
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
    }
}
