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
    /// Its run has started (charged to the crash budget): a give-back takes the run back.
    pub started: bool,
}

/// What is known of an entry in this host's hands beyond its name.
#[derive(Debug, Clone, Default)]
struct Run {
    event_id: String,
    owner: String,
    started: bool,
}

/// The entries in this host's hands, shared by the stages of one (subscriber, stream): by
/// stream key, then entry id, so the per-event lookups borrow the names instead of copying
/// them.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, HashMap<String, Run>>>>);

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Run>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `entries` into this host's hands; returns those that were not already.
    pub fn admit(&self, mut entries: Vec<Entry>) -> Vec<Entry> {
        let mut held = self.lock();
        entries.retain(|e| {
            if !held.contains_key(&e.key) {
                held.insert(e.key.clone(), HashMap::new());
            }
            let Some(ids) = held.get_mut(&e.key) else { return true };
            if ids.contains_key(&e.id) {
                return false;
            }
            ids.insert(e.id.clone(), Run::default());
            true
        });
        entries
    }

    /// Note that a run of `event_id` owned by `owner` was recorded (leased) for the entry: from
    /// now on its lease is kept alive and a stop gives it back.
    pub fn running(&self, key: &str, id: &str, event_id: &str, owner: &str) {
        if let Some(run) = self.lock().get_mut(key).and_then(|ids| ids.get_mut(id)) {
            run.event_id = event_id.to_string();
            run.owner = owner.to_string();
        }
    }

    /// Note that the entry's run really started (its start was recorded).
    pub fn started(&self, key: &str, id: &str) {
        if let Some(run) = self.lock().get_mut(key).and_then(|ids| ids.get_mut(id)) {
            run.started = true;
        }
    }

    /// The entry left this host's hands.
    pub fn remove(&self, key: &str, id: &str) {
        if let Some(ids) = self.lock().get_mut(key) {
            ids.remove(id);
        }
    }

    /// Whether the entry is in this host's hands.
    pub fn contains(&self, key: &str, id: &str) -> bool {
        self.lock().get(key).is_some_and(|ids| ids.contains_key(id))
    }

    /// Every entry in this host's hands.
    pub fn snapshot(&self) -> Vec<Held> {
        let held = self.lock();
        let mut out = Vec::new();
        for (key, ids) in held.iter() {
            out.extend(ids.iter().map(|(id, run)| Held {
                key: key.clone(),
                id: id.clone(),
                event_id: run.event_id.clone(),
                owner: run.owner.clone(),
                started: run.started,
            }));
        }
        out
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
