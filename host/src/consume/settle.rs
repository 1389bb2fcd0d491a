//! Settling handled entries: ack, ack + schedule a retry, ack + dead-letter, ack + record
//! dedupe + publish follow-ups, and promoting due retries.
//!
//! Every move is one atomic Redis operation over keys that share the stream's hash tag.
//! Moves with side effects run as a Lua script that starts with `XACK` and does nothing else
//! when the ack removed nothing: so a settle replayed after a lost reply, or a settle racing
//! another consumer that claimed the entry, never writes a retry, a dead letter or a follow-up
//! twice. Plain acks (the hot path) go as one `MULTI`/`EXEC` of `XACK` + `ZADD` per batch,
//! which is idempotent by itself.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;

use super::read::Entry;
use crate::event::Event;
use crate::keys::SubscriberKeys;
use crate::plugin::sandbox::FollowUp;

/// Delivery metadata fields ferry adds to retry and dead-letter entries. Event attributes
/// are lowercase letters and digits (CloudEvents), so the `_` prefix cannot collide.
pub mod meta {
    /// The attempt number the entry will be delivered with (retry stream).
    pub const ATTEMPT: &str = "_attempt";
    /// `stream/entry-id` where the event was first read.
    pub const ORIGIN: &str = "_origin";
    /// Failure reason.
    pub const REASON: &str = "_reason";
    /// Failure kind.
    pub const KIND: &str = "_kind";
    /// Attempts made.
    pub const ATTEMPTS: &str = "_attempts";
    /// Subscriber that failed it.
    pub const SUBSCRIBER: &str = "_subscriber";
    /// Plugin version that failed it.
    pub const VERSION: &str = "_plugin_version";
    /// First failure time (RFC 3339).
    pub const FIRST_FAILURE: &str = "_first_failure";
    /// Last failure time (RFC 3339).
    pub const LAST_FAILURE: &str = "_last_failure";
}

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Acknowledge; record the event id for dedupe if `dedupe`; publish follow-ups.
    Ack {
        /// Record the event id as handled.
        dedupe: Option<String>,
        /// Follow-up events to publish with the ack.
        follow_ups: Vec<FollowUp>,
    },
    /// Acknowledge and schedule `fields` to be delivered again at `due_ms`.
    Retry {
        /// When the retry is due (Unix ms).
        due_ms: u64,
        /// Fields of the retry-stream entry.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Acknowledge and add `fields` to the dead-letter stream.
    DeadLetter {
        /// Fields of the dead-letter entry.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Do nothing: the entry stays pending and is delivered again (a host-side failure).
    Leave,
}

/// One entry to settle.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// Stream key the entry was read from (source or retry stream).
    pub key: String,
    /// Entry id.
    pub id: String,
    /// What to do.
    pub disposition: Disposition,
    /// Under per-key order: the partition key this event holds and the hold's owner
    /// (`_origin`), released once the event is handled or dead-lettered.
    pub release: Option<(String, String)>,
}

const SETTLE_LUA: &str = concat!(include_str!("netstrings.lua"), include_str!("settle.lua"));
const PROMOTE_LUA: &str = concat!(include_str!("netstrings.lua"), include_str!("promote.lua"));
const ORDER_LUA: &str = include_str!("order.lua");
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(PROMOTE_LUA));
static ORDER: LazyLock<Script> = LazyLock::new(|| Script::new(ORDER_LUA));

/// Encode fields as netstrings (`len:bytes,`), the form the Lua scripts decode: binary-safe,
/// unlike JSON in Redis's Lua.
pub fn netstrings(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        for part in [k, v] {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part);
            out.push(b',');
        }
    }
    out
}

/// Fields of an event as owned pairs, as `XADD` writes them.
pub fn event_fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> =
        event.to_fields().into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect();
    out.push((b"schemaversion".to_vec(), event.schemaversion.to_string().into_bytes()));
    out
}

/// The entry's own event fields, without ferry's `_` metadata.
pub fn original_fields(entry: &Entry) -> Vec<(Vec<u8>, Vec<u8>)> {
    entry.fields.iter().filter(|(k, _)| !k.starts_with(b"_")).cloned().collect()
}

/// Apply `settlements` for subscriber `group` using `keys`. All plain acks go in one
/// `MULTI`/`EXEC`; every other move is its own guarded script, pipelined..
pub async fn settle<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    dedupe_window_ms: u64,
    now_ms: u64,
    settlements: &[Settlement],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut acks: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut scripted = Vec::new();
    for s in settlements {
        match &s.disposition {
            Disposition::Leave => {}
            Disposition::Ack { dedupe, follow_ups } if follow_ups.is_empty() && s.release.is_none() => {
                match acks.iter_mut().find(|(k, _)| *k == s.key) {
                    Some((_, ids)) => ids.push(&s.id),
                    None => acks.push((&s.key, vec![&s.id])),
                }
                if let Some(id) = dedupe {
                    seen.push(id);
                }
            }
            _ => scripted.push(s),
        }
    }
    if !acks.is_empty() {
        pipe.atomic();
        for (key, ids) in &acks {
            pipe.cmd("XACK").arg(*key).arg(group).arg(ids).ignore();
        }
        if !seen.is_empty() && dedupe_window_ms > 0 {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&keys.seen);
            for id in &seen {
                zadd.arg(now_ms).arg(*id);
            }
            pipe.add_command(zadd).ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&keys.seen)
                .arg("-inf")
                .arg(format!("({}", now_ms.saturating_sub(dedupe_window_ms)))
                .ignore();
        }
    }
    if !acks.is_empty() {
        pipe.query_async::<()>(conn).await?;
    }
    if scripted.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for s in scripted {
        let (release_key, owner) = s.release.clone().unwrap_or_default();
        let parked = keys.parked(&release_key);
        let mut cmd_keys: Vec<&str> =
            vec![&s.key, &keys.schedule, &keys.dlq, &keys.seen, &keys.holds, &parked, &keys.retry];
        let mut args: Vec<Vec<u8>> = vec![
            group.as_bytes().to_vec(),
            s.id.as_bytes().to_vec(),
            now_ms.to_string().into_bytes(),
            dedupe_window_ms.to_string().into_bytes(),
            release_key.into_bytes(),
            owner.into_bytes(),
        ];
        match &s.disposition {
            Disposition::Ack { dedupe, follow_ups } => {
                args.push(b"ack".to_vec());
                args.push(dedupe.as_deref().unwrap_or("").as_bytes().to_vec());
                for f in follow_ups {
                    cmd_keys.push(&f.stream);
                    args.push(netstrings(&event_fields(&f.event)));
                }
            }
            Disposition::Retry { due_ms, fields } => {
                args.push(b"retry".to_vec());
                args.push(due_ms.to_string().into_bytes());
                args.push(netstrings(fields));
            }
            Disposition::DeadLetter { fields } => {
                args.push(b"dlq".to_vec());
                args.push(netstrings(fields));
            }
            Disposition::Leave => continue,
        }
        pipe.add_command(evalsha(&SETTLE, &cmd_keys, &args)).ignore();
    }
    match pipe.query_async::<()>(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load_scripts(conn).await?;
            pipe.query_async::<()>(conn).await
        }
        other => other,
    }
}

/// `EVALSHA sha numkeys keys... args...` for `script`.
fn evalsha(script: &Script, keys: &[&str], args: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// Load the scripts into the server's script cache (after a restart or `SCRIPT FLUSH`).
pub async fn load_scripts<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<()> {
    for body in [SETTLE_LUA, PROMOTE_LUA, ORDER_LUA] {
        redis::cmd("SCRIPT").arg("LOAD").arg(body).query_async::<String>(conn).await?;
    }
    Ok(())
}

/// Move up to `limit` due retries from the schedule into the subscriber's retry stream.
/// Returns how many moved. Atomic, so several hosts can promote at once.
pub async fn promote<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    now_ms: u64,
    limit: usize,
) -> redis::RedisResult<usize> {
    let cmd = evalsha(
        &PROMOTE,
        &[&keys.schedule, &keys.retry],
        &[now_ms.to_string().into_bytes(), limit.to_string().into_bytes()],
    );
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load_scripts(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// An entry that wants its partition key under per-key order.
pub struct Claim<'a> {
    /// The entry.
    pub entry: &'a Entry,
    /// Its partition key.
    pub key: &'a str,
    /// The hold's owner: the event's `_origin` (stable across retries).
    pub owner: String,
}

/// Claim the partition keys of `claims` in order; returns, per claim, whether to handle it
/// now (`true`) or it was parked behind its key (`false`, already acked and stored).
pub async fn claim_keys<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    claims: &[Claim<'_>],
) -> redis::RedisResult<Vec<bool>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut args: Vec<Vec<u8>> = vec![group.as_bytes().to_vec()];
    for c in claims {
        let mut fields = original_fields(c.entry);
        fields.push((meta::ATTEMPT.into(), b"1".to_vec()));
        fields.push((meta::ORIGIN.into(), c.owner.as_bytes().to_vec()));
        args.push(c.entry.key.as_bytes().to_vec());
        args.push(c.entry.id.as_bytes().to_vec());
        args.push(c.key.as_bytes().to_vec());
        args.push(c.owner.as_bytes().to_vec());
        args.push(netstrings(&fields));
    }
    let cmd = evalsha(&ORDER, &[&keys.holds, &keys.parked_prefix], &args);
    let result: redis::RedisResult<Vec<i64>> = match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load_scripts(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    };
    Ok(result?.into_iter().map(|n| n == 1).collect())
}
