//! `ferry status`: the queue state [`ferry::status`] reads from Redis, as a table, JSON or a
//! refreshing screen.

use std::process::ExitCode;

use clap::Args;
use ferry::status::{GroupStatus, StreamRetention, snapshot};

use super::RedisArgs;
use super::table::{header, table};

/// `ferry status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Streams to show (default: every stream that has a ferry consumer group).
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// Show only the streams under retention (length against `max_len` / `max_age`, oldest
    /// entry, the group holding the safe floor); with `--json`, as JSON.
    #[arg(long)]
    pub retention: bool,
}

/// Run `ferry status`.
///
/// Once, the command fails when Redis does; with `--watch` it reports the failure in place of
/// the table and keeps refreshing, so an operator watching through an outage sees it end.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = args.redis.config()?;
    let url = config.redis.clone();
    let mut conn = args.redis.connect().await?;
    // On a single node every stream is on it; on a cluster the snapshot names each one's node.
    let single = (!config.cluster).then(|| without_password(&url));
    if args.retention {
        return retention(&args, &config, &mut conn).await;
    }
    if !args.streams.is_empty() {
        check_named(&mut conn, &args.streams).await?;
    }
    loop {
        let snapshot = snapshot(&mut conn, &args.streams).await.map(|mut groups| {
            for g in groups.iter_mut().filter(|g| g.node.is_none()) {
                g.node.clone_from(&single);
            }
            // `--stream S` shows S (and its partitions) only.
            groups.retain(|g| {
                args.streams.is_empty() || args.streams.iter().any(|s| s == ferry::keys::logical(&g.stream))
            });
            groups
        });
        match (&args.watch, snapshot) {
            (None, Err(e)) => return Err(e),
            (None, Ok(groups)) if args.json => println!("{}", serde_json::to_string_pretty(&groups)?),
            (None, Ok(groups)) => {
                print!("{}", render(&groups));
                let unread = unread(&mut conn, &config, &args.streams, &groups).await?;
                if !unread.is_empty() {
                    print!("\nstreams ferry writes to that no subscriber reads:\n{}", table(&unread));
                }
                let streams = streams(&mut conn, &config, &args.streams).await?;
                if !streams.is_empty() {
                    print!("\n{}", render_retention(&streams));
                }
            }
            // Watching with --json: one compact document per line, for a script to follow.
            (Some(_), Ok(groups)) if args.json => println!("{}", serde_json::to_string(&groups)?),
            (Some(_), Err(e)) if args.json => println!("{}", serde_json::json!({ "error": format!("{e:#}") })),
            (Some(secs), result) => {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                print!("\x1b[2J\x1b[H{} · every {}s · {now}\n\n", without_password(&url), secs.max(&1));
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

/// Say (on stderr) which streams named with `--stream` do not exist, as a key or as its
/// partitions: their rows are empty because there is nothing, not because nothing is wrong.
async fn check_named(conn: &mut ferry::connection::Conn, named: &[String]) -> anyhow::Result<()> {
    for stream in named {
        let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
        let partition: bool = redis::cmd("EXISTS").arg(ferry::keys::partition(stream, 0)).query_async(conn).await?;
        if !exists && !partition {
            eprintln!("no stream `{stream}` in this Redis");
        }
    }
    Ok(())
}

/// Streams ferry writes to (named with `--stream`, or the configuration's `publish_streams`
/// and `[streams.NAME]`) that no ferry subscriber reads, with their length: follow-up targets
/// never appear among the groups.
async fn unread(
    conn: &mut ferry::connection::Conn,
    config: &ferry::config::Config,
    named: &[String],
    groups: &[GroupStatus],
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut candidates: Vec<String> = named.to_vec();
    if named.is_empty() {
        candidates.extend(config.streams.keys().cloned());
        for sub in std::iter::once(&config.defaults).chain(config.subscribers.values()) {
            candidates.extend(sub.publish_streams.iter().flatten().cloned());
        }
    }
    candidates.sort();
    candidates.dedup();
    let mut rows = vec![header(&["STREAM", "LENGTH"])];
    for stream in candidates {
        if groups.iter().any(|g| ferry::keys::logical(&g.stream) == stream) {
            continue;
        }
        let len: u64 = redis::cmd("XLEN").arg(&stream).query_async(conn).await.unwrap_or(0);
        rows.push(vec![stream, len.to_string()]);
    }
    Ok(if rows.len() > 1 { rows } else { Vec::new() })
}

/// The retention state of the streams it applies to (see [`ferry::status::retention_targets`]).
async fn streams(
    conn: &mut ferry::connection::Conn,
    config: &ferry::config::Config,
    extra: &[String],
) -> anyhow::Result<Vec<StreamRetention>> {
    let sources = ferry::status::discover(conn, extra).await?;
    let targets = ferry::status::retention_targets(config, &sources);
    Ok(ferry::status::retention(conn, &targets).await?)
}

/// `ferry status --retention`: once, or every `--watch` seconds.
async fn retention(
    args: &StatusArgs,
    config: &ferry::config::Config,
    conn: &mut ferry::connection::Conn,
) -> anyhow::Result<ExitCode> {
    loop {
        let streams = streams(conn, config, &args.streams).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&streams)?);
        } else {
            print!("{}", render_retention(&streams));
        }
        match args.watch {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Retention as a text table: length against the limits, the oldest entry, and the group
/// holding the safe floor (with the age of the oldest entry it still needs).
pub fn render_retention(streams: &[StreamRetention]) -> String {
    let secs = |ms: u64| humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string();
    let mut rows = vec![header(&["STREAM", "LENGTH", "MAX_LEN", "OVER", "OLDEST", "MAX_AGE", "FLOOR HELD BY"])];
    for s in streams {
        rows.push(vec![
            s.stream.clone(),
            s.length.to_string(),
            s.max_len.map_or("-".into(), |n| n.to_string()),
            s.over.to_string(),
            s.oldest_entry_age_ms.map_or("-".into(), secs),
            s.max_age_ms.map_or("-".into(), secs),
            match (&s.floor_group, s.floor_age_ms) {
                (Some(group), Some(age)) => format!("{group} ({} old)", secs(age)),
                (Some(group), None) => format!("{group} (needs none)"),
                (None, _) => "- (no group)".into(),
            },
        ]);
    }
    table(&rows)
}

/// `url` without its user and password, for showing on screen.
pub(crate) fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
}

/// The status as a text table.
pub fn render(groups: &[GroupStatus]) -> String {
    let mut rows = vec![header(&[
        "STREAM",
        "SUBSCRIBER",
        "LAG",
        "PENDING",
        "OLDEST",
        "RETRIES",
        "DEAD",
        "HELD",
        "STATE",
        "NODE",
        "CONSUMERS",
    ])];
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
            // Per-key order: held keys / parked events (oldest hold), "-" when none.
            match (g.held_keys, g.oldest_hold_ms) {
                (0, _) => "-".into(),
                (n, age) => format!("{n}/{} ({}s)", g.parked, age.unwrap_or(0) / 1000),
            },
            if g.state_bytes == 0 { "-".into() } else { format!("{}B", g.state_bytes) },
            g.node.as_deref().unwrap_or("-").trim_start_matches("redis://").to_string(),
            consumers.join(", "),
        ]);
    }
    let mut out = table(&rows);
    // A stream key whose primary has no replica is named below the table, with the node and
    // what to do.
    for g in groups {
        if let Some(why) = &g.degraded {
            out.push_str(&format!("! {} ({}): {why}\n", g.stream, g.group));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::status::ConsumerStatus;

    #[test]
    fn the_watch_header_never_shows_a_password() {
        assert_eq!(without_password("redis://:s3cret@db:6379/0"), "redis://db:6379/0");
        assert_eq!(without_password("rediss://user:pw@db"), "rediss://db");
        assert_eq!(without_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn the_retention_table_names_the_group_holding_the_floor() {
        let s = StreamRetention {
            stream: "records".into(),
            length: 25_000,
            max_len: Some(1000),
            max_age_ms: None,
            oldest_entry_age_ms: Some(61_000),
            over: 24_000,
            floor_group: Some("stopped".into()),
            floor_age_ms: Some(60_500),
        };
        let table = render_retention(&[s]);
        let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
        assert_eq!(row, ["records", "25000", "1000", "24000", "1m", "1s", "-", "stopped", "(1m", "old)"]);
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
            unforwarded: 0,
            state_bytes: 1234,
            held_keys: 0,
            parked: 0,
            oldest_hold_ms: None,
            consumers: vec![ConsumerStatus { name: "host-a".into(), pending: 2, idle_ms: 61_500 }],
            node: Some("10.0.0.2:7001".into()),
            replicas: Some(1),
            degraded: None,
        };
        let table = render(std::slice::from_ref(&g));
        let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
        assert_eq!(&row[..10], ["orders", "billing", "?", "2", "1500ms", "1+3", "4", "-", "1234B", "10.0.0.2:7001"]);
        assert!(table.contains("host-a (2 pending, seen 1m 1s ago)"), "{table}");
        assert!(!table.contains('!'), "nothing degraded: {table}");
        let mut alone = g.clone();
        alone.degraded = Some("no replica: 10.0.0.2:7001 serves orders alone (add a replica to it)".into());
        let table = render(&[alone]);
        assert!(table.contains("! orders (billing): no replica: 10.0.0.2:7001"), "{table}");
    }
}
