//! Dead letters: list, show, replay and purge.
//!
//! Each subscriber has one dead-letter stream per source stream it reads,
//! `ferry:dlq:{STREAM}:SUBSCRIBER`, in the source stream's hash slot (a dead-lettering moves
//! the event atomically with its ack). An entry keeps the event's fields untouched plus
//! `_reason`, `_kind`, `_attempts`, `_subscriber`, `_plugin_version`, `_origin`,
//! `_first_failure` and `_last_failure`. Replay moves an entry into the subscriber's own retry
//! stream with its attempts reset, so it reaches that subscriber only.

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::connection::{Replication, Scan};
use crate::consume::read::{self, Entry};
use crate::consume::scripts;
use crate::consume::settle::{meta, netstrings, original_fields};
use crate::keys::{self, SubscriberKeys};

/// One dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Source stream.
    pub stream: String,
    /// Subscriber.
    pub subscriber: String,
    /// Entry id in the dead-letter stream.
    pub id: String,
    /// The event's id (empty for an invalid entry without one).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Failure kind.
    pub kind: String,
    /// Failure reason.
    pub reason: String,
    /// Attempts made.
    pub attempts: String,
    /// Plugin version that failed it.
    pub plugin_version: String,
    /// First failure time.
    pub first_failure: String,
    /// Last failure time.
    pub last_failure: String,
    /// Every field of the entry, as text (binary data lossily).
    pub fields: Vec<(String, String)>,
}

impl DeadLetter {
    fn from_entry(stream: &str, subscriber: &str, entry: &Entry) -> Self {
        let text = |name: &str| entry.field(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        Self {
            stream: stream.to_string(),
            subscriber: subscriber.to_string(),
            id: entry.id.clone(),
            event_id: text("id"),
            event_type: text("type"),
            kind: text(meta::KIND),
            reason: text(meta::REASON),
            attempts: text(meta::ATTEMPTS),
            plugin_version: text(meta::VERSION),
            first_failure: text(meta::FIRST_FAILURE),
            last_failure: text(meta::LAST_FAILURE),
            fields: entry
                .fields
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    }
}

/// Every dead-letter stream key, optionally of one subscriber, as (key, stream, subscriber).
pub async fn streams<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
) -> redis::RedisResult<Vec<(String, String, String)>> {
    let pattern = match subscriber {
        Some(s) => keys::dlq_pattern(s),
        None => keys::ALL_DLQ_PATTERN.to_string(),
    };
    let mut out = Vec::new();
    for key in crate::connection::scan(conn, &pattern, Some("stream")).await? {
        if let Some((stream, sub)) = keys::parse_dlq(&key)
            && subscriber.is_none_or(|s| s == sub)
        {
            out.push((key.clone(), stream.to_string(), sub.to_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Up to `limit` dead letters (oldest first), of one subscriber or all.
pub async fn list<C: Scan>(
    conn: &mut C,
    subscriber: Option<&str>,
    limit: usize,
) -> redis::RedisResult<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for (key, stream, sub) in streams(conn, subscriber).await? {
        if out.len() >= limit {
            break;
        }
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit - out.len())
            .query_async(conn)
            .await?;
        out.extend(read::parse_entries(&key, value).iter().map(|e| DeadLetter::from_entry(&stream, &sub, e)));
    }
    Ok(out)
}

/// How many dead letters there are, of one subscriber or all (what [`list`] would return
/// without a limit).
pub async fn total<C: Scan>(conn: &mut C, subscriber: Option<&str>) -> redis::RedisResult<u64> {
    let mut total = 0;
    for (key, _, _) in streams(conn, subscriber).await? {
        let n: u64 = redis::cmd("XLEN").arg(&key).query_async(conn).await?;
        total += n;
    }
    Ok(total)
}

/// Count of dead letters per (stream, subscriber).
pub async fn counts<C: Scan>(conn: &mut C) -> redis::RedisResult<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for (key, stream, sub) in streams(conn, None).await? {
        let n: u64 = redis::cmd("XLEN").arg(&key).query_async(conn).await?;
        out.push((stream, sub, n));
    }
    Ok(out)
}

/// The dead letter whose entry id or event id is `id`.
pub async fn show<C: Scan>(conn: &mut C, subscriber: Option<&str>, id: &str) -> redis::RedisResult<Option<DeadLetter>> {
    for (key, stream, sub) in streams(conn, subscriber).await? {
        let value: redis::Value = redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(conn).await?;
        if let Some(e) =
            read::parse_entries(&key, value).iter().find(|e| e.id == id || e.field("id") == Some(id.as_bytes()))
        {
            return Ok(Some(DeadLetter::from_entry(&stream, &sub, e)));
        }
    }
    Ok(None)
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every dead letter of the subscriber.
    All,
    /// These entry ids or event ids.
    Ids(Vec<String>),
}

/// Replay the selected dead letters of `subscriber`: each moves atomically (`MULTI`: `XADD`
/// to the subscriber's retry stream with attempts reset, `XDEL` from the dead-letter stream).
/// `progress(done, total)` is called after each chunk. Returns how many were replayed.
pub async fn replay<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    selection: &Selection,
    progress: impl FnMut(usize, usize),
) -> redis::RedisResult<usize> {
    replay_with(conn, subscriber, selection, Replication::PRIMARY, progress).await
}

/// [`replay`], as durably as `replication` asks: under `durability = "replicated"` each chunk
/// of moves ends with `WAIT 1` in its pipeline, and a chunk no replica confirmed is an error
/// (the moves stand on the primary; a failover may undo them, putting the dead letters back,
/// and replaying again is safe: each dead letter is moved once).
pub async fn replay_with<C: Scan>(
    conn: &mut C,
    subscriber: &str,
    selection: &Selection,
    replication: Replication,
    mut progress: impl FnMut(usize, usize),
) -> redis::RedisResult<usize> {
    let mut done = 0;
    for (key, stream, _) in streams(conn, Some(subscriber)).await? {
        let mut seen = 0;
        let keys = SubscriberKeys::new(&stream, subscriber);
        crate::consume::ensure_groups(conn, &keys, subscriber, crate::config::Start::New).await?;
        let chosen = select(conn, &key, selection).await?;
        let total = chosen.len();
        for chunk in chosen.chunks(200) {
            let mut pipe = redis::pipe();
            for entry in chunk {
                let mut fields = original_fields(entry);
                fields.push((meta::ATTEMPT.into(), b"1".to_vec()));
                fields.push((meta::REPLAY.into(), crate::consume::now_ms().to_string().into_bytes()));
                if let Some(origin) = entry.field(meta::ORIGIN) {
                    fields.push((meta::ORIGIN.into(), origin.to_vec()));
                }
                let args = [entry.id.as_bytes().to_vec(), netstrings(&fields)];
                pipe.add_command(scripts::evalsha(&scripts::REPLAY, &[&key, &keys.retry], &args));
            }
            replication.append_wait(&mut pipe);
            let mut replies: Vec<redis::Value> = match pipe.query_async(conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    scripts::load(conn).await?;
                    pipe.query_async(conn).await?
                }
                other => other?,
            };
            if let Err(e) = replication.take_wait(&mut replies) {
                let what = format!("replayed {done} dead letter(s) so far; the last chunk of moves {e}");
                return Err(redis::RedisError::from((redis::ErrorKind::Io, "replay", what)));
            }
            seen += chunk.len();
            done += replies.iter().filter(|v| matches!(v, redis::Value::Int(1))).count();
            progress(seen, total);
        }
    }
    Ok(done)
}

/// Delete the selected dead letters of `subscriber`. Returns how many were removed.
pub async fn purge<C: Scan>(conn: &mut C, subscriber: &str, selection: &Selection) -> redis::RedisResult<usize> {
    let mut done = 0;
    for (key, _, _) in streams(conn, Some(subscriber)).await? {
        let chosen = select(conn, &key, selection).await?;
        for chunk in chosen.chunks(500) {
            let ids: Vec<&str> = chunk.iter().map(|e| e.id.as_str()).collect();
            let n: usize = redis::cmd("XDEL").arg(&key).arg(&ids).query_async(conn).await?;
            done += n;
        }
    }
    Ok(done)
}

async fn select<C: ConnectionLike>(conn: &mut C, key: &str, selection: &Selection) -> redis::RedisResult<Vec<Entry>> {
    let value: redis::Value = redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(conn).await?;
    let entries = read::parse_entries(key, value);
    Ok(match selection {
        Selection::All => entries,
        Selection::Ids(ids) => entries
            .into_iter()
            .filter(|e| ids.iter().any(|id| *id == e.id || e.field("id") == Some(id.as_bytes())))
            .collect(),
    })
}
