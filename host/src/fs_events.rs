//! The rules both directory watchers follow (plugins in `reload`, schemas in
//! `contract::watch`): how long a directory must be quiet, and which file events may have
//! changed a file's contents. One home, so the two watchers cannot drift apart.

use std::time::Duration;

use notify_debouncer_full::notify::EventKind;
use notify_debouncer_full::notify::event::{AccessKind, AccessMode};

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
