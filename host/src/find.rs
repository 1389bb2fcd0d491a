//! Find an event by its id or its correlation id across streams: where it is for each
//! subscriber of its stream (handled, waiting for a retry, dead, parked behind its key,
//! pending) and the follow-ups it caused (events whose `causationid` is its id), as a tree.
//! The one implementation `ferry find` and the admin endpoint's `GET /api/find` share.
//!
//! Streams have no index by event id, so each stream is read newest first, at most
//! [`MAX_SCAN`] entries of it; [`Findings::truncated`] says when a stream was longer.

use std::collections::{BTreeMap, HashSet};

use redis::aio::ConnectionLike;
use redis::streams::StreamInfoGroupsReply;
use serde::Serialize;

use crate::consume::read::{self, Entry};
use crate::consume::scripts::netstrings;
use crate::event::field;
use crate::keys::SubscriberKeys;

/// Most entries read of one stream.
pub const MAX_SCAN: usize = 100_000;

/// Entries read per `XREVRANGE`.
const PAGE: usize = 1000;

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Query {
    /// The event with this id, and what it caused.
    Id(String),
    /// Every event with this correlation id.
    Correlation(String),
}

/// What was found: the events, roots first, each with its follow-ups under it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Findings {
    /// Events whose cause is not among them, each with its follow-ups.
    pub events: Vec<Found>,
    /// Entries read, over every stream.
    pub scanned: u64,
    /// Whether a stream was longer than [`MAX_SCAN`] (its older entries were not read).
    pub truncated: bool,
}

/// One event found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Found {
    /// Its id.
    pub event_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The stream (key) it is in.
    pub stream: String,
    /// Its entry id there.
    pub entry_id: String,
    /// Its correlation id.
    pub correlation: Option<String>,
    /// The id of the event that caused it.
    pub causation: Option<String>,
    /// Where it is for each subscriber of its stream.
    #[serde(rename = "where")]
    pub places: Vec<Place>,
    /// Events it caused.
    pub children: Vec<Found>,
}

/// Where an event is for one subscriber.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Place {
    /// The subscriber (consumer group).
    pub subscriber: String,
    /// `handled`, `retrying`, `dead`, `parked` or `pending`.
    pub status: &'static str,
    /// Which: the consumer, the due time, the reason, the key.
    pub detail: String,
}

/// An entry read, with what the tree needs.
#[derive(Debug, Clone)]
struct Seen {
    stream: String,
    entry: Entry,
}

impl Seen {
    fn text(&self, name: &str) -> Option<String> {
        self.entry.field(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Look for `query` in `streams` (stream keys; a partitioned stream's partitions each).
pub async fn find<C: ConnectionLike>(conn: &mut C, streams: &[String], query: &Query) -> redis::RedisResult<Findings> {
    let mut scanned = 0;
    let mut truncated = false;
    let mut wanted: Vec<Seen> = Vec::new();
    // Every entry with a cause, by the cause: the follow-ups of an event found by id.
    let mut caused: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut keys: Vec<&String> = streams.iter().collect();
    keys.sort();
    keys.dedup();
    for stream in keys {
        let (entries, cut) = newest(conn, stream).await?;
        scanned += entries.len() as u64;
        truncated |= cut;
        for entry in entries {
            let seen = Seen { stream: stream.clone(), entry };
            let hit = match query {
                Query::Id(id) => seen.entry.field(field::ID) == Some(id.as_bytes()),
                Query::Correlation(c) => seen.entry.field(field::CORRELATIONID) == Some(c.as_bytes()),
            };
            if hit {
                wanted.push(seen.clone());
            }
            if let (Query::Id(_), Some(cause)) = (query, seen.text(field::CAUSATIONID)) {
                caused.entry(cause).or_default().push(seen);
            }
        }
    }
    if let Query::Correlation(_) = query {
        for seen in &wanted {
            if let Some(cause) = seen.text(field::CAUSATIONID) {
                caused.entry(cause).or_default().push(seen.clone());
            }
        }
    }
    let ids: HashSet<String> = wanted.iter().filter_map(|s| s.text(field::ID)).collect();
    let mut roots: Vec<Seen> = match query {
        Query::Id(_) => wanted,
        Query::Correlation(_) => {
            wanted.into_iter().filter(|s| s.text(field::CAUSATIONID).is_none_or(|c| !ids.contains(&c))).collect()
        }
    };
    roots.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
    let mut events = Vec::new();
    for root in roots {
        events.push(tree(conn, root, &caused, 0).await?);
    }
    Ok(Findings { events, scanned, truncated })
}

/// Deepest follow-up chain shown (the host stops chains at [`crate::event::MAX_CAUSATION_DEPTH`]).
const MAX_DEPTH: usize = crate::event::MAX_CAUSATION_DEPTH as usize + 1;

/// `seen` with where it is and its follow-ups, recursively.
async fn tree<C: ConnectionLike>(
    conn: &mut C,
    seen: Seen,
    caused: &BTreeMap<String, Vec<Seen>>,
    depth: usize,
) -> redis::RedisResult<Found> {
    let event_id = seen.text(field::ID).unwrap_or_default();
    let places = places(conn, &seen, &event_id).await?;
    let mut children = Vec::new();
    if depth < MAX_DEPTH
        && let Some(kids) = caused.get(&event_id)
    {
        for kid in kids {
            children.push(Box::pin(tree(conn, kid.clone(), caused, depth + 1)).await?);
        }
        children.sort_by(|a: &Found, b| a.entry_id.cmp(&b.entry_id));
    }
    Ok(Found {
        event_type: seen.text(field::TYPE).unwrap_or_default(),
        correlation: seen.text(field::CORRELATIONID),
        causation: seen.text(field::CAUSATIONID),
        stream: seen.stream,
        entry_id: seen.entry.id,
        event_id,
        places,
        children,
    })
}

/// The newest entries of `stream`, at most [`MAX_SCAN`], and whether there were more.
async fn newest<C: ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<(Vec<Entry>, bool)> {
    let mut out: Vec<Entry> = Vec::new();
    let mut end = "+".to_string();
    while out.len() < MAX_SCAN {
        let value: redis::Value =
            redis::cmd("XREVRANGE").arg(stream).arg(&end).arg("-").arg("COUNT").arg(PAGE).query_async(conn).await?;
        let page = read::parse_entries(stream, value);
        let last = page.len() < PAGE;
        if let Some(oldest) = page.last() {
            end = format!("({}", oldest.id);
        }
        out.extend(page);
        if last {
            return Ok((out, false));
        }
    }
    // Cut only if something older is left.
    let older: redis::Value =
        redis::cmd("XREVRANGE").arg(stream).arg(&end).arg("-").arg("COUNT").arg(1).query_async(conn).await?;
    Ok((out, !read::parse_entries(stream, older).is_empty()))
}

/// A stream entry id as numbers, to compare.
fn id_of(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Where `seen` is for every consumer group of its stream.
async fn places<C: ConnectionLike>(conn: &mut C, seen: &Seen, event_id: &str) -> redis::RedisResult<Vec<Place>> {
    let groups: StreamInfoGroupsReply =
        match redis::cmd("XINFO").arg("GROUPS").arg(&seen.stream).query_async(conn).await {
            Ok(groups) => groups,
            // A stream without groups (a follow-up stream nobody reads).
            Err(_) => return Ok(Vec::new()),
        };
    let mut out = Vec::new();
    for group in groups.groups {
        let keys = SubscriberKeys::new(&seen.stream, &group.name);
        let (status, detail) = place(conn, &keys, seen, event_id, &group).await?;
        out.push(Place { subscriber: group.name.clone(), status, detail });
    }
    Ok(out)
}

/// Whether a netstring-encoded entry (a schedule member, a parked event) is event `id`'s.
fn holds_event(encoded: &[u8], id_field: &[u8]) -> bool {
    encoded.windows(id_field.len()).any(|w| w == id_field)
}

/// Where `seen` is for one group: the first of dead, retrying, parked, being handled,
/// handled, pending that applies.
async fn place<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    seen: &Seen,
    event_id: &str,
    group: &redis::streams::StreamInfoGroup,
) -> redis::RedisResult<(&'static str, String)> {
    let letters: redis::Value = redis::cmd("XRANGE").arg(&keys.dlq).arg("-").arg("+").query_async(conn).await?;
    if let Some(d) =
        read::parse_entries(&keys.dlq, letters).iter().find(|e| e.field(field::ID) == Some(event_id.as_bytes()))
    {
        let reason = d.field(crate::consume::letters::meta::REASON).map(String::from_utf8_lossy).unwrap_or_default();
        return Ok(("dead", format!("dead letter {}: {reason}", d.id)));
    }
    let id_field = netstrings(&[(field::ID, event_id)]);
    let waiting: Vec<(Vec<u8>, u64)> =
        redis::cmd("ZRANGE").arg(&keys.schedule).arg(0).arg(-1).arg("WITHSCORES").query_async(conn).await?;
    if let Some((_, due)) = waiting.iter().find(|(member, _)| holds_event(member, &id_field)) {
        return Ok(("retrying", format!("next attempt due at {}", crate::consume::letters::rfc3339_ms(*due))));
    }
    if let Some(key) = seen.text(field::PARTITIONKEY) {
        let parked: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(keys.parked(&key)).arg(0).arg(-1).query_async(conn).await?;
        if parked.iter().any(|p| holds_event(p, &id_field)) {
            return Ok(("parked", format!("behind the holder of key {key}")));
        }
    }
    let running: Option<String> = redis::cmd("HGET").arg(&keys.inflight).arg(event_id).query_async(conn).await?;
    if let Some(running) = running {
        let owner = running.splitn(3, ':').nth(2).unwrap_or("");
        return Ok(("pending", format!("being handled by {owner}")));
    }
    let handled: Option<u64> = redis::cmd("ZSCORE").arg(&keys.seen).arg(event_id).query_async(conn).await?;
    if let Some(at) = handled {
        return Ok(("handled", format!("handled at {}", crate::consume::letters::rfc3339_ms(at))));
    }
    let dead: Option<u64> = redis::cmd("ZSCORE").arg(&keys.dead).arg(event_id).query_async(conn).await?;
    if let Some(at) = dead {
        return Ok((
            "dead",
            format!(
                "dead-lettered at {} (no longer in the dead-letter stream)",
                crate::consume::letters::rfc3339_ms(at)
            ),
        ));
    }
    let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&seen.stream)
        .arg(&group.name)
        .arg(&seen.entry.id)
        .arg(&seen.entry.id)
        .arg(1)
        .query_async(conn)
        .await?;
    if let Some(p) = pending.ids.first() {
        return Ok(("pending", format!("delivered to {}, not settled", p.consumer)));
    }
    if id_of(&seen.entry.id) > id_of(&group.last_delivered_id) {
        return Ok(("pending", "not delivered yet".into()));
    }
    Ok(("handled", "acknowledged (not subscribed, or handled before the dedupe window)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_entry_is_found_by_its_id_field_and_ids_compare_as_numbers() {
        let id = netstrings(&[(field::ID, "e-1")]);
        assert!(holds_event(&netstrings(&[("type", "T"), ("id", "e-1"), ("data", "{}")]), &id));
        assert!(!holds_event(&netstrings(&[("id", "e-10")]), &id));
        assert!(id_of("10-0") > id_of("9-5") && id_of("9-10") > id_of("9-9"));
    }
}
