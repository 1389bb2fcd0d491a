//! Hot reload of the schema directory: changes are debounced, then the whole directory is
//! read again and swapped in, or refused (the active set stays; [`super::Registry::reload`]).
//!
//! The directory is watched recursively (`TYPE/VERSION.json`); editors' temporary files and
//! access events are ignored by the same rule as plugins' (`crate::fs_events`).

use std::path::PathBuf;
use std::sync::Arc;

use super::Registry;
pub use crate::fs_events::Watcher;

/// Whether a changed path is one a schema set reads.
fn counts(path: &std::path::Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".json") || name == "contract.toml" || path.extension().is_none())
}

/// Watch `registry`'s directory and reload it on changes (nothing to watch without one).
pub fn watch(registry: Arc<Registry>) -> anyhow::Result<Option<Watcher>> {
    let Some(dir) = registry.dir().map(PathBuf::from) else { return Ok(None) };
    let reload: crate::fs_events::Reload = Box::new(move || {
        let registry = registry.clone();
        Box::pin(async move {
            // Compiling is CPU work; keep it off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || registry.reload()).await;
        })
    });
    crate::fs_events::watch(&dir, "schema directory", counts, reload).map(Some)
}
