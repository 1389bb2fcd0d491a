//! Queue state straight from Redis: streams, groups, lag, pending, retries and dead letters
//! (no running host needed). `ferry status`, the admin endpoint's gauges and status page and
//! the tests read it; and a tiny HTTP client for asking a running host's admin endpoint.

use anyhow::Context as _;
use redis::aio::ConnectionLike;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connection::Scan;
use crate::consume::read;
use crate::keys::SubscriberKeys;

/// One consumer group on one stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStatus {
    /// Stream.
    pub stream: String,
    /// Group (subscriber).
    pub group: String,
    /// Entries not yet delivered to the group (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered and not yet settled.
    pub pending: u64,
    /// Age of the oldest pending entry, ms.
    pub oldest_pending_ms: Option<u64>,
    /// Retries waiting for their due time.
    pub retries_scheduled: u64,
    /// Entries in the subscriber's retry stream not yet settled (read or not).
    pub retries_pending: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Partition keys held by an event (per-key order).
    pub held_keys: u64,
    /// Events parked behind a held key.
    pub parked: u64,
    /// Age of the oldest hold, ms: a key held for long is a stuck key.
    pub oldest_hold_ms: Option<u64>,
    /// Follow-ups of the stream that could not be forwarded to their target (on a cluster:
    /// a target key of another type), set aside with their reason.
    pub unforwarded: u64,
    /// Bytes of keys and values of the subscriber's handler state on this stream (the total
    /// its quota counts, kept by every commit: one HGET, no scan); 0 without state.
    pub state_bytes: u64,
    /// Consumers (host instances) with their idle time, ms.
    pub consumers: Vec<ConsumerStatus>,
    /// The node that holds the stream key (`host:port` of the primary serving its slot on a
    /// cluster; on a single node, whatever the caller fills in, else `null`).
    pub node: Option<String>,
    /// On a cluster, the replicas of that primary that are not failed (`CLUSTER SLOTS`);
    /// `null` on a single node.
    pub replicas: Option<u64>,
    /// Why writes to this stream key cannot be confirmed by a replica, naming the node (a
    /// primary with no replica: under `durability = "replicated"` its writes wait, or go ahead
    /// unconfirmed, by `durability_on_missing_replica`); `null` when nothing is wrong.
    pub degraded: Option<String>,
}

/// A consumer of a group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConsumerStatus {
    /// Consumer name (host instance).
    pub name: String,
    /// Entries pending on it.
    pub pending: u64,
    /// Milliseconds since it was last seen.
    pub idle_ms: u64,
}

fn as_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

/// Streams that carry ferry consumer groups: those with a retry stream, plus `extra`.
pub async fn discover<C: Scan>(conn: &mut C, extra: &[String]) -> redis::RedisResult<Vec<String>> {
    let mut streams: Vec<String> = extra.to_vec();
    for key in crate::connection::scan(conn, crate::keys::ALL_RETRY_PATTERN, None).await? {
        if let Some((stream, _)) = crate::keys::parse_retry(&key) {
            streams.push(stream.to_string());
        }
    }
    streams.sort();
    streams.dedup();
    Ok(streams)
}

/// Which primary serves each slot range, and how many replicas it has, from `CLUSTER
/// SLOTS` (which leaves failed replicas out); empty on a single node.
#[derive(Debug, Default)]
pub struct Placement(Vec<(u16, u16, String, usize)>);

impl Placement {
    /// Ask `conn`. A node without cluster support answers with an error: no placement.
    pub async fn read<C: ConnectionLike>(conn: &mut C) -> Self {
        match redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await {
            Ok(reply) => Self::parse(reply),
            Err(_) => Self::default(),
        }
    }

    /// Parse a `CLUSTER SLOTS` reply: `[start, end, [ip, port, id, …], replicas…]` per range.
    fn parse(reply: redis::Value) -> Self {
        let redis::Value::Array(ranges) = reply else { return Self::default() };
        let ranges = ranges.into_iter().filter_map(|range| {
            let redis::Value::Array(range) = range else { return None };
            let slot = |i: usize| match range.get(i) {
                Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let Some(redis::Value::Array(primary)) = range.get(2) else { return None };
            let host = primary.first().and_then(read::text)?;
            let port = match primary.get(1) {
                Some(redis::Value::Int(p)) => *p,
                _ => return None,
            };
            let replicas = range.len().saturating_sub(3);
            Some((slot(0)?, slot(1)?, format!("{host}:{port}"), replicas))
        });
        Self(ranges.collect())
    }

    /// The primary serving `key`'s slot, if known.
    pub fn node_of(&self, key: &str) -> Option<String> {
        self.range_of(key).map(|(_, _, node, _)| node.clone())
    }

    /// How many replicas the primary serving `key`'s slot has, if known.
    pub fn replicas_of(&self, key: &str) -> Option<usize> {
        self.range_of(key).map(|(_, _, _, replicas)| *replicas)
    }

    fn range_of(&self, key: &str) -> Option<&(u16, u16, String, usize)> {
        let slot = crate::keys::slot(key);
        self.0.iter().find(|(start, end, _, _)| (*start..=*end).contains(&slot))
    }

    /// Why writes to `key` cannot be confirmed by a replica, if they cannot.
    pub fn degraded(&self, key: &str) -> Option<String> {
        match self.range_of(key) {
            Some((_, _, node, 0)) => Some(format!(
                "no replica: {node} serves {key} alone (add a replica to it); under durability = \"replicated\" its writes are not confirmed"
            )),
            _ => None,
        }
    }
}

/// The status of every group on `streams`.
pub async fn collect<C: ConnectionLike>(conn: &mut C, streams: &[String]) -> redis::RedisResult<Vec<GroupStatus>> {
    let placement = Placement::read(conn).await;
    let mut out = Vec::new();
    for stream in streams {
        let groups: redis::Value = match redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await {
            Ok(v) => v,
            // Redis answered (no such key, not a stream): nothing to show for this stream. A
            // connection failure is the caller's to see, not an empty status.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension) => continue,
            Err(e) => return Err(e),
        };
        let redis::Value::Array(groups) = groups else { continue };
        for g in groups {
            let g = read::pairs(g);
            let Some(group) = read::pair_str(&g, "name") else { continue };
            let keys = SubscriberKeys::new(stream, &group);
            let pending = as_u64(read::pair_int(&g, "pending")).unwrap_or(0);
            // `lag` is null after deletions or trimming: count what follows the last delivery.
            let lag = match as_u64(read::pair_int(&g, "lag")) {
                Some(lag) => Some(lag),
                None => match read::pair_str(&g, "last-delivered-id") {
                    Some(last) => Some(undelivered(conn, stream, &last).await?),
                    None => None,
                },
            };
            let oldest_pending_ms = oldest_pending(conn, stream, &group).await?;
            let (retries_scheduled, retries_pending) = retry_state(conn, &keys, &group).await?;
            let dead_letters: u64 = redis::cmd("XLEN").arg(&keys.dlq).query_async(conn).await?;
            let unforwarded: u64 = redis::cmd("XLEN").arg(&keys.forward_dead).query_async(conn).await?;
            let (held_keys, parked, oldest_hold) = hold_state(conn, &keys).await?;
            let state_bytes: Option<i64> =
                redis::cmd("HGET").arg(&keys.state).arg(crate::keys::state_field::BYTES).query_async(conn).await?;
            let consumers: redis::Value =
                redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(&group).query_async(conn).await?;
            let consumers = match consumers {
                redis::Value::Array(items) => items
                    .into_iter()
                    .map(read::pairs)
                    .map(|c| ConsumerStatus {
                        name: read::pair_str(&c, "name").unwrap_or_default(),
                        pending: as_u64(read::pair_int(&c, "pending")).unwrap_or(0),
                        idle_ms: as_u64(read::pair_int(&c, "inactive").or_else(|| read::pair_int(&c, "idle")))
                            .unwrap_or(0),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            out.push(GroupStatus {
                stream: stream.clone(),
                group,
                lag,
                pending,
                oldest_pending_ms,
                retries_scheduled,
                retries_pending,
                dead_letters,
                unforwarded,
                state_bytes: state_bytes.unwrap_or(0).max(0) as u64,
                held_keys,
                parked,
                oldest_hold_ms: oldest_hold.map(|since| crate::consume::now_ms().saturating_sub(since)),
                consumers,
                node: placement.node_of(stream),
                replicas: placement.replicas_of(stream).map(|n| n as u64),
                degraded: placement.degraded(stream),
            });
        }
    }
    Ok(out)
}

/// Per-key order: held keys, parked events and when the oldest hold began (ms).
async fn hold_state<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
) -> redis::RedisResult<(u64, u64, Option<u64>)> {
    let (held, parked, oldest): (u64, Option<i64>, Vec<(String, f64)>) = redis::pipe()
        .cmd("HLEN")
        .arg(&keys.holds)
        .cmd("GET")
        .arg(&keys.parked_count)
        .cmd("ZRANGE")
        .arg(&keys.hold_since)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    let parked = parked.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    Ok((held, parked, oldest.first().map(|(_, since)| *since as u64)))
}

/// Entries of `key` after `last` (not yet delivered), counted up to 100,000.
async fn undelivered<C: ConnectionLike>(conn: &mut C, key: &str, last: &str) -> redis::RedisResult<u64> {
    // Counted inside Redis (count.lua): a backlog's payloads never cross the network to be
    // counted, on every status tick and every `/api/status` request.
    use crate::consume::scripts::{self, COUNT};
    let reply = scripts::call(conn, &COUNT, &[key], &[last, "100000"]).await?;
    scripts::parse(&COUNT, &reply)
}

/// Retries waiting in the schedule, and retries in the subscriber's retry stream (delivered
/// but unsettled, or promoted but not yet read), read in one `MULTI` so an entry moving
/// between the two is never missed.
async fn retry_state<C: ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
) -> redis::RedisResult<(u64, u64)> {
    let (scheduled, groups, stream): (u64, redis::Value, redis::Value) = redis::pipe()
        .atomic()
        .cmd("ZCARD")
        .arg(&keys.schedule)
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(&keys.retry)
        .cmd("XINFO")
        .arg("STREAM")
        .arg(&keys.retry)
        .query_async(conn)
        .await
        .or_else(|e| {
            if e.to_string().contains("no such key") { Ok((0, redis::Value::Nil, redis::Value::Nil)) } else { Err(e) }
        })?;
    let added = read::pair_int(&read::pairs(stream), "entries-added").unwrap_or(0);
    let redis::Value::Array(groups) = groups else { return Ok((scheduled, 0)) };
    for g in groups.into_iter().map(read::pairs) {
        if read::pair_str(&g, "name").as_deref() == Some(group) {
            let pending = as_u64(read::pair_int(&g, "pending")).unwrap_or(0);
            let read_so_far = read::pair_int(&g, "entries-read").unwrap_or(added);
            return Ok((scheduled, pending + u64::try_from(added - read_so_far).unwrap_or(0)));
        }
    }
    Ok((scheduled, 0))
}

async fn oldest_pending<C: ConnectionLike>(conn: &mut C, stream: &str, group: &str) -> redis::RedisResult<Option<u64>> {
    let v: redis::Value =
        redis::cmd("XPENDING").arg(stream).arg(group).arg("-").arg("+").arg(1).query_async(conn).await?;
    if let redis::Value::Array(rows) = v
        && let Some(redis::Value::Array(cols)) = rows.first()
    {
        return Ok(match cols.get(2) {
            Some(redis::Value::Int(ms)) => u64::try_from(*ms).ok(),
            _ => None,
        });
    }
    Ok(None)
}

/// Retention of one stream: its length against its limits, the age of its oldest entry, and
/// the group holding its safe floor (a group that stopped reading keeps every entry it has
/// not settled, whatever the limits say).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamRetention {
    /// Stream key (a partition is a stream of its own).
    pub stream: String,
    /// Entries in the stream.
    pub length: u64,
    /// `max_len`, if set.
    pub max_len: Option<u64>,
    /// `max_age`, ms, if set.
    pub max_age_ms: Option<u64>,
    /// Age of the oldest entry, ms (`null`: empty).
    pub oldest_entry_age_ms: Option<u64>,
    /// Entries over `max_len` (0 without one): what the next pass removes, or what the floor
    /// keeps when it stays above 0.
    pub over: u64,
    /// The group holding the safe floor (`null`: no group; the stream is trimmed by its
    /// limits alone).
    pub floor_group: Option<String>,
    /// Age of the oldest entry that group still needs, ms (`null`: it needs none, it has
    /// read and settled everything).
    pub floor_age_ms: Option<u64>,
}

/// The streams retention applies to: those with a `[streams.NAME] retention`, and, under the
/// host's `[retention]`, every source stream in `sources` without one of its own.
pub fn retention_targets(
    config: &crate::config::Config,
    sources: &[String],
) -> Vec<(String, crate::config::RetentionConfig)> {
    let mut out = config.retention_keys();
    let own = config.stream_retention();
    if let Some(r) = config.retention {
        for stream in sources {
            if !own.contains_key(crate::keys::logical(stream)) && !out.iter().any(|(s, _)| s == stream) {
                out.push((stream.clone(), r));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The retention state of `streams`.
pub async fn retention<C: ConnectionLike>(
    conn: &mut C,
    streams: &[(String, crate::config::RetentionConfig)],
) -> redis::RedisResult<Vec<StreamRetention>> {
    let now = crate::consume::now_ms();
    let mut out = Vec::new();
    for (stream, r) in streams {
        let length: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
        let first = first_at(conn, stream, "-").await?;
        let age = |id: &str| now.saturating_sub(read::parse_id(id).0);
        let floor = match crate::consume::trim::floor(conn, stream).await {
            Ok(floor) => floor,
            // No such stream yet: nothing to hold.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension) => None,
            Err(e) => return Err(e),
        };
        let needed = match &floor {
            Some(f) => first_at(conn, stream, &f.id).await?,
            None => None,
        };
        out.push(StreamRetention {
            stream: stream.clone(),
            length,
            max_len: r.max_len,
            max_age_ms: r.max_age.map(|a| a.as_millis() as u64),
            oldest_entry_age_ms: first.as_deref().map(age),
            over: r.max_len.map_or(0, |max| length.saturating_sub(max)),
            floor_age_ms: needed.as_deref().map(age),
            floor_group: floor.map(|f| f.group),
        });
    }
    Ok(out)
}

/// The id of the first entry of `stream` at or after `start`.
async fn first_at<C: ConnectionLike>(conn: &mut C, stream: &str, start: &str) -> redis::RedisResult<Option<String>> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg(start).arg("+").arg("COUNT").arg(1).query_async(conn).await?;
    Ok(read::parse_entries(stream, value).into_iter().next().map(|e| e.id))
}

/// Every ferry group on the streams that carry one, plus `extra` streams.
pub async fn snapshot<C: Scan>(conn: &mut C, extra: &[String]) -> anyhow::Result<Vec<GroupStatus>> {
    let streams = discover(conn, extra).await.context("listing streams")?;
    collect(conn, &streams).await.context("reading group state")
}

/// `GET path` from a host's admin endpoint at `addr` (`host:port`), returning the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .context("timed out connecting")??;
    // A script reaching an endpoint that requires a token passes it as FERRY_ADMIN_TOKEN.
    let authorization = match std::env::var("FERRY_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => format!("Authorization: Bearer {token}\r\n"),
        _ => String::new(),
    };
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        anyhow::bail!("{status}: {body}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_finds_the_primary_of_a_keys_slot() {
        let int = redis::Value::Int;
        let node = |host: &str, port| {
            redis::Value::Array(vec![
                redis::Value::BulkString(host.into()),
                int(port),
                redis::Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = redis::Value::Array(vec![
            redis::Value::Array(vec![int(0), int(8191), node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            redis::Value::Array(vec![int(8192), int(16383), node("10.0.0.2", 7001)]),
        ]);
        let placement = Placement::parse(reply);
        // `events` hashes to slot 9102 and `events#1` to 5684 (CLUSTER KEYSLOT).
        assert_eq!(placement.node_of("events").as_deref(), Some("10.0.0.2:7001"));
        assert_eq!(placement.node_of("events#1").as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(Placement::default().node_of("events"), None);
        assert_eq!((placement.replicas_of("events#1"), placement.replicas_of("events")), (Some(1), Some(0)));
        assert_eq!(placement.degraded("events#1"), None);
        assert!(placement.degraded("events").is_some_and(|why| why.contains("no replica: 10.0.0.2:7001")));
    }
}
