//! The audit trail: every operator action on dead letters (who, what, on which, how many,
//! when; for an edit, the event and the fields changed), appended to one bounded Redis stream
//! that `GET /api/audit` and `ferry audit` read, and where a dead letter's past edits are
//! looked up.
//!
//! The stream is [`keys::AUDIT`], trimmed to about [`MAX_ENTRIES`] (`XADD ... MAXLEN ~`): the
//! trail is for the last weeks of operations, not an archive. An action is recorded after it
//! ran, with the count it reached; a failure to record is logged by the caller and does not
//! undo the action.

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::consume::read;
use crate::keys;

/// About how many entries the trail keeps.
pub const MAX_ENTRIES: usize = 10_000;

/// One recorded action.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// The entry's id in the trail.
    pub id: String,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// The name of the token that acted (`cli:USER` from the command line).
    pub token: String,
    /// What was done: `replay`, `purge` or `edit` (an edited event replayed).
    pub action: String,
    /// The subscriber whose dead letters it acted on.
    pub subscriber: String,
    /// Which dead letters, as the JSON of a dead-letter selection.
    pub selection: String,
    /// How many it reached.
    pub count: u64,
    /// The event an `edit` changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The fields an `edit` changed (`data` for the payload, else attribute names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// Append an action to the trail; `selection` is written as JSON (a
/// dead-letter selection).
pub async fn record<C: ConnectionLike>(
    conn: &mut C,
    token: &str,
    action: &str,
    subscriber: &str,
    selection: &impl Serialize,
    count: usize,
) -> redis::RedisResult<()> {
    append(conn, token, action, subscriber, selection, count, None).await
}

/// Append an edit: `token` changed `fields` of event `event_id`, replayed to `subscriber`.
pub async fn record_edit<C: ConnectionLike>(
    conn: &mut C,
    token: &str,
    subscriber: &str,
    event_id: &str,
    fields: &[String],
) -> redis::RedisResult<()> {
    let selection = serde_json::json!({ "ids": [event_id] });
    append(conn, token, EDIT, subscriber, &selection, 1, Some((event_id, fields))).await
}

/// The action name of an edit.
pub const EDIT: &str = "edit";

async fn append<C: ConnectionLike>(
    conn: &mut C,
    token: &str,
    action: &str,
    subscriber: &str,
    selection: &impl Serialize,
    count: usize,
    edit: Option<(&str, &[String])>,
) -> redis::RedisResult<()> {
    let selection = serde_json::to_string(selection).unwrap_or_default();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys::AUDIT).arg("MAXLEN").arg("~").arg(MAX_ENTRIES).arg("*");
    cmd.arg("token").arg(token).arg("action").arg(action).arg("subscriber").arg(subscriber);
    cmd.arg("selection").arg(selection).arg("count").arg(count);
    if let Some((event_id, fields)) = edit {
        cmd.arg("event").arg(event_id).arg("fields").arg(serde_json::to_string(fields).unwrap_or_default());
    }
    let _: String = cmd.query_async(conn).await?;
    Ok(())
}

/// The edits of event `event_id` replayed to `subscriber`, oldest first (from the whole trail).
pub async fn edits<C: ConnectionLike>(
    conn: &mut C,
    subscriber: &str,
    event_id: &str,
) -> redis::RedisResult<Vec<Entry>> {
    let mut found: Vec<Entry> = list(conn, MAX_ENTRIES * 2)
        .await?
        .into_iter()
        .filter(|e| e.action == EDIT && e.subscriber == subscriber && e.event_id.as_deref() == Some(event_id))
        .collect();
    found.reverse();
    Ok(found)
}

/// The newest `limit` entries, newest first.
pub async fn list<C: ConnectionLike>(conn: &mut C, limit: usize) -> redis::RedisResult<Vec<Entry>> {
    let value: redis::Value =
        redis::cmd("XREVRANGE").arg(keys::AUDIT).arg("+").arg("-").arg("COUNT").arg(limit).query_async(conn).await?;
    Ok(read::parse_entries(keys::AUDIT, value)
        .iter()
        .map(|e| {
            let text = |name: &str| e.field(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            let ms = e.id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
            Entry {
                id: e.id.clone(),
                time: crate::consume::letters::rfc3339_ms(ms),
                token: text("token"),
                action: text("action"),
                subscriber: text("subscriber"),
                selection: text("selection"),
                count: text("count").parse().unwrap_or(0),
                event_id: e.field("event").map(|v| String::from_utf8_lossy(v).into_owned()),
                fields: serde_json::from_str(&text("fields")).unwrap_or_default(),
            }
        })
        .collect())
}
