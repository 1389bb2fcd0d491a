//! One dead letter in full and its repair: the detail the console's letter view and
//! `ferry dlq show` present (every attribute, the payload made readable, ferry's metadata, the
//! past edits), and edit-and-replay, which fixes the payload or attributes of one event and
//! replays it as the same event id with the edit recorded.
//!
//! An edit is written twice: as an `_edited` marker on the replayed entry (so the handler's
//! run can be traced to it) and as an `edit` entry in the audit trail, which is where a
//! dead letter's past edits are read from (the marker does not survive a later failure:
//! dead letters keep the event's own fields only).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Planned, ReplayError, move_letters, replay_fields, streams};
use crate::connection::{Replication, Scan};
use crate::consume::letters::{meta, original_fields};
use crate::consume::read::{self, Entry};
use crate::event::{Event, field};
use crate::keys::SubscriberKeys;

/// The marker an edited replay carries: `{"by", "at_ms", "fields"}` as JSON.
pub const EDITED: &str = "_edited";

/// Most payload bytes a [`Detail`] shows; the rest is cut (and said so).
pub const MAX_SHOWN: usize = 1 << 20;

/// One dead letter in full.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detail {
    /// Entry id in the dead-letter stream.
    pub entry_id: String,
    /// The subscriber that dead-lettered it.
    pub subscriber: String,
    /// The source stream.
    pub stream: String,
    /// Every attribute of the event (every field but the payload and ferry's `_` metadata).
    pub event: BTreeMap<String, String>,
    /// The payload, made readable.
    pub payload: Payload,
    /// ferry's metadata: why and when it failed.
    pub meta: Meta,
    /// Past edits of this event replayed to this subscriber, oldest first.
    pub edits: Vec<EditRecord>,
}

/// A payload as text: pretty JSON, text, or hex.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Payload {
    /// `json` (valid JSON, pretty-printed), `text` (UTF-8) or `binary` (hex).
    pub kind: &'static str,
    /// The payload in that form, cut at [`MAX_SHOWN`] bytes of payload.
    pub text: String,
    /// The payload's size in bytes.
    pub bytes: usize,
    /// Whether `text` was cut.
    pub truncated: bool,
}

impl Payload {
    /// `data` made readable.
    pub fn of(data: &[u8]) -> Self {
        let truncated = data.len() > MAX_SHOWN;
        let shown = &data[..data.len().min(MAX_SHOWN)];
        let (kind, text) = match std::str::from_utf8(data) {
            Ok(text) if !truncated => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value) => ("json", serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_string())),
                Err(_) => ("text", text.to_string()),
            },
            Ok(_) => ("text", String::from_utf8_lossy(shown).into_owned()),
            Err(_) => ("binary", shown.iter().map(|b| format!("{b:02x}")).collect()),
        };
        Self { kind, text, bytes: data.len(), truncated }
    }
}

/// ferry's metadata of a dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Meta {
    /// Attempts made.
    pub attempts: Option<u32>,
    /// First failure (Unix ms).
    pub first_failure_ms: Option<u64>,
    /// Last failure (Unix ms).
    pub last_failure_ms: Option<u64>,
    /// Failure reason.
    pub reason: String,
    /// Failure kind.
    pub kind: String,
    /// The host (consumer name) that dead-lettered it, when recorded.
    pub host: Option<String>,
    /// The plugin version that failed it.
    pub plugin_version: String,
    /// `stream/entry-id` where the event was first read.
    pub origin: Option<String>,
}

/// One past edit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EditRecord {
    /// The token name that made it.
    pub by: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// The fields it changed.
    pub fields: Vec<String>,
}

/// The dead letter of `subscriber` with entry id `entry_id`, as (its dead-letter key, its
/// keys, the entry), on any stream the subscriber reads.
async fn find_entry<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    entry_id: &str,
) -> redis::RedisResult<Option<(String, SubscriberKeys, Entry)>> {
    if !valid_entry_id(entry_id) {
        return Ok(None);
    }
    for (key, stream, _) in streams(conn, Some(subscriber)).await? {
        let value: redis::Value = redis::cmd("XRANGE").arg(&key).arg(entry_id).arg(entry_id).query_async(conn).await?;
        if let Some(entry) = read::parse_entries(&key, value).into_iter().next() {
            return Ok(Some((key, SubscriberKeys::new(&stream, subscriber), entry)));
        }
    }
    Ok(None)
}

/// Whether `id` reads as a stream entry id (`ms-seq`): anything else would be an `XRANGE`
/// error, or a range.
fn valid_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn ms_of(rfc3339: Option<&[u8]>) -> Option<u64> {
    let text = std::str::from_utf8(rfc3339?).ok()?;
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The dead letter of `subscriber` with entry id `entry_id` in full, with its past edits.
pub async fn detail<C: Scan>(conn: &mut C, subscriber: &str, entry_id: &str) -> redis::RedisResult<Option<Detail>> {
    let Some((_, keys, entry)) = find_entry(conn, subscriber, entry_id).await? else { return Ok(None) };
    let text = |name: &str| entry.field(name).map(|v| String::from_utf8_lossy(v).into_owned());
    let event: BTreeMap<String, String> = original_fields(&entry)
        .into_iter()
        .filter(|(k, _)| k != field::DATA.as_bytes())
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let meta = Meta {
        attempts: text(meta::ATTEMPTS).and_then(|a| a.parse().ok()),
        first_failure_ms: ms_of(entry.field(meta::FIRST_FAILURE)),
        last_failure_ms: ms_of(entry.field(meta::LAST_FAILURE)),
        reason: text(meta::REASON).unwrap_or_default(),
        kind: text(meta::KIND).unwrap_or_default(),
        host: text(meta::HOST),
        plugin_version: text(meta::VERSION).unwrap_or_default(),
        origin: text(meta::ORIGIN),
    };
    let edits = match event.get(field::ID) {
        Some(id) => crate::audit::edits(conn, subscriber, id)
            .await?
            .into_iter()
            .map(|e| EditRecord {
                by: e.token,
                at_ms: e.id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0),
                fields: e.fields,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Some(Detail {
        entry_id: entry.id.clone(),
        subscriber: subscriber.to_string(),
        stream: keys.stream.clone(),
        event,
        payload: Payload::of(entry.field(field::DATA).unwrap_or_default()),
        meta,
        edits,
    }))
}

/// What an edit changes: the payload, attributes (an empty value removes an optional one).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Edit {
    /// The new payload, as text.
    pub data: Option<String>,
    /// New attribute values by name.
    pub attributes: BTreeMap<String, String>,
}

/// Why an edit was not replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// No dead letter has that entry id (it may have been replayed or purged meanwhile).
    #[error("no dead letter {0} of this subscriber (replayed or purged already?)")]
    NotFound(String),
    /// The edit names something it may not change.
    #[error("{0}")]
    Refused(String),
    /// The edited event is not a valid event.
    #[error("the edited event is not valid: {0}")]
    Invalid(#[from] crate::event::InvalidEvent),
    /// Redis failed, or no replica confirmed the replay.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

impl From<redis::RedisError> for EditError {
    fn from(e: redis::RedisError) -> Self {
        EditError::Replay(ReplayError::Redis(e))
    }
}

/// `fields` with `edit` applied; returns the names changed. The id is the event's identity
/// and stays; ferry's `_` metadata is not the event's to edit.
fn apply(fields: &mut Vec<(Vec<u8>, Vec<u8>)>, edit: &Edit) -> Result<Vec<String>, EditError> {
    let mut changes: Vec<(&str, &[u8])> = edit.attributes.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    if let Some(data) = &edit.data {
        changes.push((field::DATA, data.as_bytes()));
    }
    let mut changed = Vec::new();
    for (name, value) in changes {
        if name == field::ID {
            return Err(EditError::Refused("the id cannot be edited: the event is replayed as itself".into()));
        }
        let attribute = name == field::DATA
            || (!name.is_empty()
                && name.len() <= 20
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !attribute {
            return Err(EditError::Refused(format!(
                "{:?} is not an attribute name (lowercase letters and digits, at most 20)",
                crate::redact::escape(name)
            )));
        }
        let at = fields.iter().position(|(k, _)| k == name.as_bytes());
        let before = at.map(|i| fields[i].1.as_slice());
        if before == Some(value) || (before.is_none() && value.is_empty()) {
            continue;
        }
        match (at, value.is_empty() && name != field::DATA) {
            (Some(i), true) => drop(fields.remove(i)),
            (Some(i), false) => fields[i].1 = value.to_vec(),
            (None, _) => fields.push((name.as_bytes().to_vec(), value.to_vec())),
        }
        changed.push(name.to_string());
    }
    Ok(changed)
}

/// Edit dead letter `entry_id` of `subscriber` and replay it as the same event id (attempts
/// reset, marked [`EDITED`]), then record the edit in the audit trail under `by`. Returns
/// the fields changed.
pub async fn edit<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    entry_id: &str,
    edit: &Edit,
    by: &str,
    replication: Replication,
) -> Result<Vec<String>, EditError> {
    let Some((key, keys, entry)) = find_entry(conn, subscriber, entry_id).await? else {
        return Err(EditError::NotFound(entry_id.to_string()));
    };
    let mut fields = original_fields(&entry);
    let changed = apply(&mut fields, edit)?;
    let event = Event::from_fields(&fields)?;
    crate::consume::ensure_groups(conn, &keys, subscriber, crate::config::Start::New).await?;
    let marker = serde_json::json!({ "by": by, "at_ms": crate::consume::now_ms(), "fields": changed });
    let mut fields = replay_fields(&entry, fields);
    fields.push((EDITED.into(), marker.to_string().into_bytes()));
    let letter = Planned { key, keys, entry };
    if move_letters(conn, &[(&letter, fields)], replication).await? == 0 {
        return Err(EditError::NotFound(entry_id.to_string()));
    }
    if let Err(e) = crate::audit::record_edit(conn, by, subscriber, &event.id, &changed).await {
        tracing::error!("recording the edit of {} ({subscriber}) in the audit trail: {e}", event.id);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(Vec<u8>, Vec<u8>)> {
        [("id", "e1"), ("type", "T"), ("subject", "old"), ("data", "{}")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn an_edit_changes_what_it_names_keeps_the_id_and_refuses_metadata() {
        let mut f = fields();
        let edit = Edit {
            data: Some(r#"{"fixed":true}"#.into()),
            attributes: [("subject".to_string(), "new".to_string()), ("type".to_string(), "T".to_string())].into(),
        };
        assert_eq!(apply(&mut f, &edit).expect("applies"), vec!["subject", "data"], "unchanged type not counted");
        assert_eq!(f[2].1, b"new");
        assert_eq!(f[3].1, br#"{"fixed":true}"#);
        let remove = Edit { data: None, attributes: [("subject".to_string(), String::new())].into() };
        assert_eq!(apply(&mut f, &remove).expect("applies"), vec!["subject"]);
        assert!(!f.iter().any(|(k, _)| k == b"subject"));
        for bad in ["id", "_attempt", "Subject", "a-b", ""] {
            let edit = Edit { data: None, attributes: [(bad.to_string(), "x".to_string())].into() };
            assert!(matches!(apply(&mut fields(), &edit), Err(EditError::Refused(_))), "{bad}");
        }
    }

    #[test]
    fn a_payload_is_shown_as_pretty_json_text_or_hex() {
        let json = Payload::of(br#"{"a":[1,2]}"#);
        assert_eq!((json.kind, json.text.contains("\n  \"a\"")), ("json", true));
        assert_eq!(Payload::of(b"plain <b>text</b>").kind, "text");
        let binary = Payload::of(&[0xff, 0x00, 0x10]);
        assert_eq!((binary.kind, binary.text.as_str(), binary.bytes), ("binary", "ff0010", 3));
        assert!(valid_entry_id("1700000000000-0") && !valid_entry_id("-") && !valid_entry_id("1-2-3"));
    }
}
