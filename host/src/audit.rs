//! The audit trail: every operator action on dead letters (who, what, on which, how many,
//! when), appended to one bounded Redis stream that `GET /api/audit` and `ferry audit` read.
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
    /// What was done: `replay` or `purge`.
    pub action: String,
    /// The subscriber whose dead letters it acted on.
    pub subscriber: String,
    /// Which dead letters, as the JSON of a [`crate::dlq::Selection`].
    pub selection: String,
    /// How many it reached.
    pub count: u64,
}

/// Append an action to the trail.
pub async fn record<C: ConnectionLike>(
    conn: &mut C,
    token: &str,
    action: &str,
    subscriber: &str,
    selection: &crate::dlq::Selection,
    count: usize,
) -> redis::RedisResult<()> {
    let selection = serde_json::to_string(selection).unwrap_or_default();
    let _: String = redis::cmd("XADD")
        .arg(keys::AUDIT)
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_ENTRIES)
        .arg("*")
        .arg("token")
        .arg(token)
        .arg("action")
        .arg(action)
        .arg("subscriber")
        .arg(subscriber)
        .arg("selection")
        .arg(selection)
        .arg("count")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(())
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
            }
        })
        .collect())
}
