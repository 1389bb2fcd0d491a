//! The entries of one (subscriber, stream) in this host's hands: read and not yet settled
//! (waiting for a worker, running, waiting for another delivery of their event, or queued to
//! settle). A re-read of the pending list or a takeover skips them; the housekeeper keeps
//! them alive; at shutdown the ones with a recorded run are given back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::read::Entry;

/// One entry in this host's hands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Stream key it was read from.
    pub key: String,
    /// Entry id.
    pub id: String,
    /// Its event's id once a run was recorded for it; empty before.
    pub event_id: String,
    /// The run's owner.
    pub owner: String,
}

/// The entries in this host's hands, shared by the stages of one (subscriber, stream).
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<(String, String), Held>>>);

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Held>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `entries` into this host's hands; returns those that were not already.
    pub fn admit(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut held = self.lock();
        entries
            .into_iter()
            .filter(|e| {
                let key = (e.key.clone(), e.id.clone());
                if held.contains_key(&key) {
                    return false;
                }
                let h = Held { key: e.key.clone(), id: e.id.clone(), event_id: String::new(), owner: String::new() };
                held.insert(key, h);
                true
            })
            .collect()
    }

    /// Note that a run of `event_id` owned by `owner` was recorded for the entry.
    pub fn running(&self, key: &str, id: &str, event_id: &str, owner: &str) {
        if let Some(h) = self.lock().get_mut(&(key.to_string(), id.to_string())) {
            h.event_id = event_id.to_string();
            h.owner = owner.to_string();
        }
    }

    /// The entry left this host's hands.
    pub fn remove(&self, key: &str, id: &str) {
        self.lock().remove(&(key.to_string(), id.to_string()));
    }

    /// Whether the entry is in this host's hands.
    pub fn contains(&self, key: &str, id: &str) -> bool {
        self.lock().contains_key(&(key.to_string(), id.to_string()))
    }

    /// Every entry in this host's hands.
    pub fn snapshot(&self) -> Vec<Held> {
        self.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, id: &str) -> Entry {
        Entry { key: key.into(), id: id.into(), fields: Vec::new() }
    }

    #[test]
    fn an_entry_is_admitted_once_and_the_same_id_in_another_stream_is_another_entry() {
        let held = InFlight::default();
        let first = held.admit(vec![entry("events", "1-0"), entry("retry", "1-0")]);
        assert_eq!(first.len(), 2, "same id, different streams");
        assert!(held.admit(vec![entry("events", "1-0")]).is_empty(), "already in hand");
        held.running("retry", "1-0", "e", "events/0-1");
        let snapshot = held.snapshot();
        let run = snapshot.iter().find(|h| h.key == "retry").expect("held");
        assert_eq!((run.event_id.as_str(), run.owner.as_str()), ("e", "events/0-1"));
        held.remove("events", "1-0");
        assert!(!held.contains("events", "1-0") && held.contains("retry", "1-0"));
    }
}
