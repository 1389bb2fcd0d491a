//! `ferry status`: streams, groups, lag, pending, retries and dead letters, straight from
//! Redis (no running host needed); and a tiny HTTP client for asking a running host.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use redis::aio::ConnectionLike;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::consume::read;
use crate::keys::SubscriberKeys;

/// `ferry status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redis URL.
    #[arg(long, env = "FERRY_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Streams to show (default: every stream that has a ferry consumer group).
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

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
    /// Consumers (host instances) with their idle time, ms.
    pub consumers: Vec<ConsumerStatus>,
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
pub async fn discover<C: ConnectionLike>(conn: &mut C, extra: &[String]) -> redis::RedisResult<Vec<String>> {
    let mut streams: Vec<String> = extra.to_vec();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("ferry:retry:{*}:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for key in batch {
            if let Some(rest) = key.strip_prefix("ferry:retry:{")
                && let Some((stream, _)) = rest.split_once("}:")
            {
                streams.push(stream.to_string());
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    streams.sort();
    streams.dedup();
    Ok(streams)
}

/// The status of every group on `streams`.
pub async fn collect<C: ConnectionLike>(conn: &mut C, streams: &[String]) -> redis::RedisResult<Vec<GroupStatus>> {
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
            let (held_keys, parked, oldest_hold) = hold_state(conn, &keys).await?;
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
                held_keys,
                parked,
                oldest_hold_ms: oldest_hold.map(|since| crate::consume::now_ms().saturating_sub(since)),
                consumers,
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
    let value: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({last}"))
        .arg("+")
        .arg("COUNT")
        .arg(100_000)
        .query_async(conn)
        .await?;
    Ok(match value {
        redis::Value::Array(items) => items.len() as u64,
        _ => 0,
    })
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

/// Run `ferry status`.
///
/// Once, the command fails when Redis does; with `--watch` it reports the failure in place of
/// the table and keeps refreshing, so an operator watching through an outage sees it end.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (_, mut conn) = crate::host::connect(&args.redis).await?;
    loop {
        let snapshot = snapshot(&mut conn, &args.streams).await;
        match (&args.watch, snapshot) {
            (None, Err(e)) => return Err(e),
            (None, Ok(groups)) if args.json => println!("{}", serde_json::to_string_pretty(&groups)?),
            (None, Ok(groups)) => print!("{}", render(&groups)),
            // Watching with --json: one compact document per line, for a script to follow.
            (Some(_), Ok(groups)) if args.json => println!("{}", serde_json::to_string(&groups)?),
            (Some(_), Err(e)) if args.json => println!("{}", serde_json::json!({ "error": format!("{e:#}") })),
            (Some(secs), result) => {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                print!("\x1b[2J\x1b[H{} · every {}s · {now}\n\n", without_password(&args.redis), secs.max(&1));
                match result {
                    Ok(groups) => print!("{}", render(&groups)),
                    Err(e) => println!("redis unreachable: {e:#}"),
                }
            }
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        match args.watch {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `url` without its user and password, for showing on screen.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
}

async fn snapshot<C: ConnectionLike>(conn: &mut C, extra: &[String]) -> anyhow::Result<Vec<GroupStatus>> {
    let streams = discover(conn, extra).await.context("listing streams")?;
    collect(conn, &streams).await.context("reading group state")
}

/// The status as a text table.
pub fn render(groups: &[GroupStatus]) -> String {
    let mut rows = vec![
        ["STREAM", "SUBSCRIBER", "LAG", "PENDING", "OLDEST", "RETRIES", "DEAD", "CONSUMERS"].map(String::from).to_vec(),
    ];
    for g in groups {
        let consumers: Vec<String> = g
            .consumers
            .iter()
            .map(|c| {
                format!(
                    "{} ({} pending, seen {} ago)",
                    c.name,
                    c.pending,
                    humantime::format_duration(std::time::Duration::from_millis(c.idle_ms / 1000 * 1000))
                )
            })
            .collect();
        rows.push(vec![
            g.stream.clone(),
            g.group.clone(),
            g.lag.map_or("?".into(), |l| l.to_string()),
            g.pending.to_string(),
            g.oldest_pending_ms.map_or("-".into(), |ms| format!("{ms}ms")),
            format!("{}+{}", g.retries_scheduled, g.retries_pending),
            g.dead_letters.to_string(),
            consumers.join(", "),
        ]);
    }
    crate::cli::table(&rows)
}

/// `GET path` from a host's admin endpoint at `addr` (`host:port`), returning the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .context("timed out connecting")??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
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
    fn the_watch_header_never_shows_a_password() {
        assert_eq!(without_password("redis://:s3cret@db:6379/0"), "redis://db:6379/0");
        assert_eq!(without_password("rediss://user:pw@db"), "rediss://db");
        assert_eq!(without_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn the_table_shows_unknown_lag_and_consumers_last_seen() {
        let g = GroupStatus {
            stream: "orders".into(),
            group: "billing".into(),
            lag: None,
            pending: 2,
            oldest_pending_ms: Some(1500),
            retries_scheduled: 1,
            retries_pending: 3,
            dead_letters: 4,
            held_keys: 0,
            parked: 0,
            oldest_hold_ms: None,
            consumers: vec![ConsumerStatus { name: "host-a".into(), pending: 2, idle_ms: 61_500 }],
        };
        let table = render(&[g]);
        let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
        assert_eq!(&row[..7], ["orders", "billing", "?", "2", "1500ms", "1+3", "4"]);
        assert!(table.contains("host-a (2 pending, seen 1m 1s ago)"), "{table}");
    }
}
