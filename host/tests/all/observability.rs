//! Observability: metrics move, readiness follows Redis, `ferry status` matches Redis (once
//! and watching), the status page renders in headless Chromium, logs carry the event span.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::config::Config;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::support::{
    Env, HostProcess, InProcessHost, RECORDER_TOML, ferry, ferry_bin, free_addr, publish, recorder_of,
};

/// The recorder's config with retries an hour apart: a retried event stays scheduled.
fn slow_retry_toml() -> String {
    RECORDER_TOML
        .replace("initial_delay = \"50ms\"", "initial_delay = \"1h\"")
        .replace("max_delay = \"1s\"", "max_delay = \"2h\"")
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    match ferry::status::http_get(addr, path).await {
        Ok(body) => (200, body),
        Err(e) => {
            let text = e.to_string();
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (code, text)
        }
    }
}

/// The value of the metric line starting with `prefix` (name and labels), if exported.
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// The value of the metric line starting with `prefix`, 0 when absent.
fn metric(body: &str, prefix: &str) -> f64 {
    sample(body, prefix).unwrap_or(0.0)
}

/// Start a host with its admin endpoint on a free port; wait until it answers.
async fn host_with_admin(env: &Env, config: Config) -> (InProcessHost, String) {
    let mut config = config;
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let host = InProcessHost::start(config);
    env.wait_for("the admin endpoint", Duration::from_secs(20), || async {
        (get(&addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    (host, addr)
}

/// Start `ferry run` as a process with extra arguments and environment; output goes to the
/// returned host's log.
fn run_process(env: &Env, config: &Config, args: &[&str], vars: &[(&str, &str)]) -> HostProcess {
    let config_path = env.cache.path().join("host.toml");
    std::fs::write(&config_path, toml::to_string(config).expect("config serializes")).expect("writing config");
    let log = env.cache.path().join("host.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(ferry_bin())
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(args)
        .env("FERRY_LOG", "info")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("starting ferry");
    HostProcess { child, log }
}

/// Publish an event carrying a correlation id and a producer's trace context.
async fn publish_traced(conn: &mut MultiplexedConnection, data: &str, traceparent: &str) -> Event {
    let mut event = Event::new("Traced", "tests", data);
    event.correlationid = Some("order-42".into());
    event.traceparent = Some(traceparent.into());
    ferry::outbox::publish(conn, "events", &event).await.expect("publishing");
    event
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_are_handled_retried_and_dead_lettered() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    env.add_plugin("slow", fixtures::RECORDER, &slow_retry_toml());
    let (host, addr) = host_with_admin(&env, env.config()).await;
    let mut conn = env.conn().await;
    let before = env
        .wait_for("the first poll of the queue gauges", Duration::from_secs(10), || async {
            let (_, body) = get(&addr, "/metrics").await;
            sample(&body, r#"ferry_group_lag{subscriber="rec",stream="events"}"#).is_some().then_some(body)
        })
        .await;
    for (name, value) in
        [("events_handled_total", 0.0), ("events_retried_total", 0.0), ("events_dead_lettered_total", 0.0)]
    {
        assert_eq!(metric(&before, &format!(r#"ferry_{name}{{subscriber="rec"}}"#)), value, "{name}");
    }
    assert_eq!(metric(&before, r#"ferry_dead_letters{subscriber="rec",stream="events"}"#), 0.0);

    publish(&mut conn, "events", "Ok", "{}").await;
    publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":2}"#).await;
    publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    publish(&mut conn, "events", "Boom", r#"{"act":"panic","until":2}"#).await;
    let after = env
        .wait_for("every event to be settled and the gauges polled", Duration::from_secs(20), || async {
            let (_, body) = get(&addr, "/metrics").await;
            let rec = |name: &str| metric(&body, &format!(r#"ferry_{name}{{subscriber="rec",stream="events"}}"#));
            let slow = |name: &str| metric(&body, &format!(r#"ferry_{name}{{subscriber="slow",stream="events"}}"#));
            let done = metric(&body, r#"ferry_events_handled_total{subscriber="rec"}"#) == 3.0
                && rec("dead_letters") == 1.0
                && rec("retries_waiting") == 0.0
                && rec("group_pending") == 0.0
                && slow("retries_waiting") == 2.0
                && slow("dead_letters") == 1.0;
            done.then_some(body)
        })
        .await;
    let rec = |name: &str| metric(&after, &format!(r#"ferry_{name}{{subscriber="rec"}}"#));
    assert_eq!(rec("events_retried_total"), 2.0, "{after}");
    assert_eq!(rec("events_dead_lettered_total"), 1.0);
    assert_eq!(rec("events_in_flight"), 0.0);
    assert_eq!(metric(&after, r#"ferry_failures_total{subscriber="rec",kind="trap"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_failures_total{subscriber="rec",kind="handler-reject"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_events_handled_total{subscriber="slow"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_events_retried_total{subscriber="slow"}"#), 2.0);
    assert_eq!(metric(&after, r#"ferry_group_lag{subscriber="rec",stream="events"}"#), 0.0);
    assert_eq!(metric(&after, r#"ferry_plugin_loads_total{plugin="rec"}"#), 1.0);
    assert_eq!(metric(&after, "ferry_redis_up"), 1.0);
    assert_eq!(metric(&after, r#"ferry_handler_duration_seconds_count{subscriber="rec"}"#), 6.0, "one per attempt");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_plugins_list_reads_the_running_host() {
    let mut env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let (host, addr) = host_with_admin(&env, env.config()).await;

    let a = addr.clone();
    let (status, table, _) =
        tokio::task::spawn_blocking(move || ferry(&["plugins", "list", "--admin", &a])).await.expect("join");
    assert!(status.success());
    assert!(
        table.starts_with("PLUGIN") && table.contains("rec") && table.contains("running") && table.contains("events:*"),
        "{table}"
    );
    let a = addr.clone();
    let (_, json, _) =
        tokio::task::spawn_blocking(move || ferry(&["plugins", "list", "--admin", &a, "--json"])).await.expect("join");
    let plugins: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(plugins[0]["version"].as_str().map(str::len), Some(12));

    env.redis.kill();
    let (code, body) = get(&addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("redis unreachable"), "{body}");
    assert_eq!(get(&addr, "/healthz").await.0, 200, "alive all the same");
    env.wait_for("redis_up to drop and the status view to say so", Duration::from_secs(20), || async {
        let (_, metrics) = get(&addr, "/metrics").await;
        let (_, status) = get(&addr, "/api/status").await;
        let status: Value = serde_json::from_str(&status).ok()?;
        (metric(&metrics, "ferry_redis_up ") == 0.0 && status["redis_up"] == false).then_some(())
    })
    .await;

    env.redis.restart().expect("restart");
    env.wait_for("ready again", Duration::from_secs(20), || async {
        let (_, metrics) = get(&addr, "/metrics").await;
        (get(&addr, "/readyz").await.0 == 200 && metric(&metrics, "ferry_redis_up ") == 1.0).then_some(())
    })
    .await;
    host.stop().await;
}

/// Pairs of a Redis reply (`XINFO ...` items) as a JSON object, for comparisons.
fn pairs(value: redis::Value) -> serde_json::Map<String, Value> {
    ferry::consume::read::pairs(value)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                redis::Value::Int(n) => Value::from(n),
                redis::Value::BulkString(b) => Value::from(String::from_utf8_lossy(&b).into_owned()),
                redis::Value::SimpleString(s) => Value::from(s),
                _ => Value::Null,
            };
            (k, v)
        })
        .collect()
}

async fn xinfo(conn: &mut MultiplexedConnection, args: &[&str]) -> Vec<serde_json::Map<String, Value>> {
    let value: redis::Value = redis::cmd("XINFO").arg(args).query_async(conn).await.expect("XINFO");
    match value {
        redis::Value::Array(items) => items.into_iter().map(pairs).collect(),
        other => panic!("XINFO {args:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_status_matches_the_redis_state_of_a_scripted_scenario() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &slow_retry_toml());
    let mut config = env.config();
    config.consumer = Some("host-a".into());
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    // Handled, retried (and then waiting an hour), dead-lettered.
    for _ in 0..3 {
        publish(&mut conn, "events", "Ok", "{}").await;
    }
    publish(&mut conn, "events", "Later", r#"{"act":"retry","until":2}"#).await;
    publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    env.records_at_least(3, Duration::from_secs(20)).await;
    env.wait_for("one retry scheduled and one dead letter", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move {
            let g = ferry::status::collect(&mut conn, &["events".to_string()]).await.ok()?.pop()?;
            (g.retries_scheduled == 1 && g.dead_letters == 1 && g.pending == 0).then_some(())
        }
    })
    .await;
    host.stop().await;
    // A blocking read dropped at shutdown is still served by Redis until it times out; wait
    // for it to end so the entries below stay unread.
    env.wait_for("no client blocked in a read", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO").arg("clients").query_async(&mut conn).await.ok()?;
            info.lines().any(|l| l.trim() == "blocked_clients:0").then_some(())
        }
    })
    .await;
    // Three entries nobody has handled: another host instance reads one and dies with it.
    for _ in 0..3 {
        publish(&mut conn, "events", "Unread", "{}").await;
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "rec", "host-b", "COUNT", "1", "STREAMS", "events", ">"][..])
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");

    let keys = SubscriberKeys::new("events", "rec");
    let consumers_before = xinfo(&mut conn, &["CONSUMERS", "events", "rec"]).await;
    let url = env.redis.url();
    let (status, json, stderr) =
        tokio::task::spawn_blocking(move || ferry(&["status", "--json", "--redis", &url])).await.expect("join");
    assert!(status.success(), "{stderr}");
    let consumers_after = xinfo(&mut conn, &["CONSUMERS", "events", "rec"]).await;
    let groups: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{json}");
    let g = &groups[0];
    assert_eq!((g["stream"].as_str(), g["group"].as_str()), (Some("events"), Some("rec")));

    // Every figure is Redis's own.
    let info = xinfo(&mut conn, &["GROUPS", "events"]).await.pop().expect("the group");
    assert_eq!(g["pending"], info["pending"], "{json}");
    assert_eq!(g["lag"], info["lag"], "{json}");
    let scheduled: u64 = redis::cmd("ZCARD").arg(&keys.schedule).query_async(&mut conn).await.expect("ZCARD");
    let dead: u64 = redis::cmd("XLEN").arg(&keys.dlq).query_async(&mut conn).await.expect("XLEN");
    assert_eq!((g["retries_scheduled"].as_u64(), g["dead_letters"].as_u64()), (Some(scheduled), Some(dead)));
    assert_eq!((scheduled, dead), (1, 1), "the scenario's retry and dead letter");
    assert_eq!(g["retries_pending"], 0);
    assert_eq!((g["lag"].as_u64(), g["pending"].as_u64()), (Some(2), Some(1)), "{json}");
    assert!(g["oldest_pending_ms"].as_u64().is_some(), "host-b's entry is pending: {json}");

    let names = |cs: &[serde_json::Map<String, Value>]| cs.iter().map(|c| c["name"].clone()).collect::<Vec<_>>();
    let shown: Vec<Value> = g["consumers"].as_array().expect("consumers").iter().map(|c| c["name"].clone()).collect();
    assert_eq!(shown, names(&consumers_before), "{json}");
    assert_eq!(shown, vec![Value::from("host-a"), Value::from("host-b")]);
    for (i, c) in g["consumers"].as_array().expect("consumers").iter().enumerate() {
        assert_eq!(c["pending"], consumers_before[i]["pending"], "{json}");
        // Last seen: between Redis's idle time just before and just after the command.
        let idle = c["idle_ms"].as_u64().expect("idle_ms");
        let seen = |c: &serde_json::Map<String, Value>| c.get("inactive").unwrap_or(&c["idle"]).as_u64();
        let (low, high) = (seen(&consumers_before[i]), seen(&consumers_after[i]));
        assert!(low.zip(high).is_some_and(|(low, high)| low <= idle && idle <= high), "{idle} vs {low:?}..{high:?}");
    }
    assert_eq!(g["consumers"][1]["pending"], 1, "host-b holds the entry it read");

    let url = env.redis.url();
    let (_, table, _) = tokio::task::spawn_blocking(move || ferry(&["status", "--redis", &url])).await.expect("join");
    assert!(table.starts_with("STREAM"), "{table}");
    assert!(table.contains("host-a (") && table.contains("host-b (1 pending, seen"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|row| row.contains(" 1+0 ")), "retries column: {table}");
}

/// What a child process has written to stdout so far, read on a thread.
struct Output {
    child: std::process::Child,
    text: Arc<Mutex<String>>,
}

impl Output {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(ferry_bin())
            .args(args)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running ferry");
        let text = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { child, text }
    }

    /// The screens drawn so far (split on the clear-screen sequence).
    fn frames(&self) -> Vec<String> {
        self.text.lock().expect("lock").split("\x1b[2J").skip(1).map(str::to_string).collect()
    }

    fn lines(&self) -> Vec<String> {
        self.text.lock().expect("lock").lines().map(str::to_string).collect()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row of `group` on `stream` in a status table, split into columns.
fn row(frame: &str, stream: &str, group: &str) -> Option<Vec<String>> {
    frame
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.len() >= 7 && cols[0] == stream && cols[1] == group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_status_watch_redraws_fresh_state_and_rides_out_a_redis_outage() {
    let mut env = Env::new();
    let mut conn = env.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "events", "rec", "$", "MKSTREAM"][..])
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let url = env.redis.url();
    let mut watch = Output::spawn(&["status", "--watch", "1", "--stream", "events", "--redis", &url]);
    let json = Output::spawn(&["status", "--watch", "1", "--json", "--stream", "events", "--redis", &url]);
    let frame = env
        .wait_for("a first screen", Duration::from_secs(20), || async {
            watch.frames().into_iter().find(|f| row(f, "events", "rec").is_some())
        })
        .await;
    assert!(frame.contains(&format!("{url} · every 1s")), "a header names the server and period:\n{frame}");
    assert_eq!(row(&frame, "events", "rec").expect("row")[2], "0", "no lag yet:\n{frame}");

    for _ in 0..2 {
        publish(&mut conn, "events", "Ok", "{}").await;
    }
    env.wait_for("a later screen with the new lag", Duration::from_secs(20), || async {
        watch.frames().iter().find_map(|f| row(f, "events", "rec").filter(|r| r[2] == "2"))
    })
    .await;
    // Each watcher refreshes on its own clock: the JSON one must have drawn the lag too before
    // the outage begins (else a slow machine sees it skip straight from 0 to the outage).
    let json_doc = |want: fn(&Value) -> bool| {
        let lines = json.lines();
        async move { lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|d| want(&d)).then_some(()) }
    };
    env.wait_for("the new lag in the JSON lines", Duration::from_secs(20), || json_doc(|d| d[0]["lag"] == 2)).await;

    env.redis.kill();
    let seen = watch.frames().len();
    env.wait_for("the outage on screen", Duration::from_secs(30), || async {
        watch.frames().iter().skip(seen).any(|f| f.contains("redis unreachable")).then_some(())
    })
    .await;
    env.wait_for("the outage in the JSON lines", Duration::from_secs(30), || json_doc(|d| d["error"].is_string()))
        .await;
    assert!(watch.child.try_wait().expect("try_wait").is_none(), "watching goes on through the outage");
    env.redis.restart().expect("restart");
    // The restarted server is empty (no persistence): a table again, without the stream.
    let seen = watch.frames().len();
    env.wait_for("a table again after the restart", Duration::from_secs(30), || async {
        watch.frames().iter().skip(seen).any(|f| f.contains("STREAM") && !f.contains("unreachable")).then_some(())
    })
    .await;

    // With --json, one document per refresh and line; the outage is one too.
    let lines = json.lines();
    assert!(lines.len() >= 3, "{lines:?}");
    let docs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(docs[0][0]["group"], "rec", "{lines:?}");
    assert!(docs.iter().any(|d| d[0]["lag"] == 2), "{lines:?}");
    assert!(docs.iter().any(|d| d["error"].is_string()), "{lines:?}");
}

/// The text of the cell `col` in the row with id `row_id` of a dumped DOM.
fn dom_cell(dom: &str, row_id: &str, col: &str) -> Option<String> {
    let start = dom.find(&format!(r#"id="{row_id}""#))?;
    let row = &dom[start..start + dom[start..].find("</tr>")?];
    let needle = format!(r#"data-col="{col}">"#);
    let at = row.find(&needle)? + needle.len();
    Some(row[at..at + row[at..].find('<')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_subscriber_rows_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must install chromium (scripts/setup.sh)");
        eprintln!("skipping: /usr/bin/chromium is not installed (scripts/setup.sh installs it)");
        return;
    }
    let env = Env::new();
    env.add_plugin("alpha", fixtures::RECORDER, RECORDER_TOML);
    env.add_plugin("beta", fixtures::RECORDER, &slow_retry_toml());
    let (host, addr) = host_with_admin(&env, env.config()).await;
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Ok", "{}").await;
    publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    publish(&mut conn, "events", "Later", r#"{"act":"retry"}"#).await;
    // alpha retries fast and dead-letters "Later" too; beta's retry waits an hour.
    env.wait_for("alpha: 2 dead letters; beta: 1 dead letter and 1 retry waiting", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move {
            let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.ok()?;
            let by = |name: &str| groups.iter().find(|g| g.group == name).cloned();
            let (a, b) = (by("alpha")?, by("beta")?);
            let done = a.dead_letters == 2
                && a.pending + a.retries_scheduled + a.retries_pending == 0
                && b.dead_letters == 1
                && b.retries_scheduled == 1
                && b.pending == 0;
            done.then_some(())
        }
    })
    .await;
    let (_, plugins) = get(&addr, "/api/plugins").await;
    let plugins: Value = serde_json::from_str(&plugins).expect("plugins json");
    let version = plugins[0]["version"].as_str().expect("version").to_string();

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{addr}/");
    let shot = screenshot.clone();
    let (dom, shot_status) = tokio::task::spawn_blocking(move || {
        let run = |extra: &str| {
            let profile = tempfile::tempdir().expect("profile");
            Command::new("/usr/bin/chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1200,800",
                    "--virtual-time-budget=5000",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(extra)
                .arg(&url)
                .output()
                .expect("running chromium")
        };
        let dom = run("--dump-dom");
        let shot = run(&format!("--screenshot={}", shot.display()));
        (String::from_utf8_lossy(&dom.stdout).into_owned(), shot.status)
    })
    .await
    .expect("join");
    host.stop().await;

    let cell = |sub: &str, col: &str| dom_cell(&dom, &format!("sub-{sub}-events"), col);
    assert!(cell("alpha", "subscriber").is_some(), "alpha's row rendered:\n{dom}");
    for (sub, dead, retries) in [("alpha", "2", "0"), ("beta", "1", "1")] {
        assert_eq!(cell(sub, "version").as_deref(), Some(version.as_str()), "{sub}");
        assert_eq!(cell(sub, "state").as_deref(), Some("running"), "{sub}");
        assert_eq!(cell(sub, "handled").as_deref(), Some("1"), "{sub}");
        assert_eq!(cell(sub, "lag").as_deref(), Some("0"), "{sub}");
        assert_eq!(cell(sub, "pending").as_deref(), Some("0"), "{sub}");
        assert_eq!(cell(sub, "dead_letters").as_deref(), Some(dead), "{sub}");
        assert_eq!(cell(sub, "retries_waiting").as_deref(), Some(retries), "{sub}");
        // Rates need two refreshes: a number rather than a dash shows the page refreshed itself.
        for rate in ["handled_rate", "retried_rate", "dead_lettered_rate"] {
            let value = cell(sub, rate).unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{sub} {rate}: {value:?}");
        }
    }
    assert!(dom.contains(r#"<span id="redis" class="ok">reachable</span>"#), "redis state shown");
    assert!(shot_status.success() && screenshot.exists(), "screenshot saved to {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_put_plugin_output_inside_the_event_span_with_its_correlation() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut host = run_process(&env, &env.config(), &["--log-format", "json"], &[]);
    let mut conn = env.conn().await;
    // The first attempt panics: the guest's panic message is logged inside the event span.
    let event = publish_traced(&mut conn, r#"{"act":"panic","until":2}"#, &traceparent()).await;
    let line = env
        .wait_for("the guest's stderr in the log", Duration::from_secs(30), || async {
            host.log().lines().find(|l| l.contains("stderr: ")).map(str::to_string)
        })
        .await;
    env.records_at_least(1, Duration::from_secs(20)).await;
    host.terminate();
    let log = host.log();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
    }
    let line: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(line["target"], "ferry::plugin", "{line}");
    assert!(line["fields"]["message"].as_str().is_some_and(|m| m.contains("boom on purpose")), "{line}");
    let span = &line["span"];
    assert_eq!(span["name"], "event", "{line}");
    assert_eq!(span["event_id"], event.id.as_str());
    assert_eq!(span["event_type"], "Traced");
    assert_eq!(span["subscriber"], "rec");
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["correlationid"], "order-42");
    assert_eq!(span["traceparent"], traceparent().as_str());
    assert_eq!(span["plugin_version"].as_str().map(str::len), Some(12), "{line}");
}

/// A stand-in OTLP/HTTP collector: keeps each request body, answers 200.
#[cfg(feature = "otel")]
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() < end + 4 + length {
                        continue;
                    }
                    sink.lock().expect("lock").push(request[end + 4..end + 4 + length].to_vec());
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    let _ = socket.write_all(reply.as_bytes()).await;
                    request.clear();
                }
            });
        }
    });
    (format!("http://{addr}"), bodies)
}

#[cfg(feature = "otel")]
fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_continues_the_producers_trace() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let (endpoint, bodies) = collector().await;
    let mut host = run_process(
        &env,
        &env.config(),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut conn = env.conn().await;
    let event = publish_traced(&mut conn, "{}", &traceparent()).await;
    env.records_at_least(1, Duration::from_secs(30)).await;
    // The protobuf carries ids as raw bytes and attributes as strings: look for both.
    let (trace, parent) = (hex(TRACE_ID), hex(PARENT_ID));
    let contains = |body: &[u8], needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    env.wait_for("the event span at the collector", Duration::from_secs(30), || async {
        bodies
            .lock()
            .expect("lock")
            .iter()
            .any(|b| contains(b, &trace) && contains(b, &parent) && contains(b, event.id.as_bytes()))
            .then_some(())
    })
    .await;
    assert!(host.terminate().success(), "{}", host.log());
    assert!(host.log().contains("exporting spans over OTLP"), "{}", host.log());
}

/// Issue 23, "checked and sound": metric labels carry only names the operator chose
/// (subscriber, stream, plugin, table, write) and a failure's kind, never an event's type or
/// a failure's text, so a producer or a plugin can neither grow the series without bound nor
/// write into the metrics. Events of odd types, rejected, panicking and retried to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_carry_no_event_types_or_error_text() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let (host, addr) = host_with_admin(&env, env.config()).await;
    let mut conn = env.conn().await;
    let cases = [
        ("OddTypeHandled", "{}"),
        ("OddTypeRejected", r#"{"act":"reject"}"#),
        ("OddTypePanicked", r#"{"act":"panic"}"#),
        ("OddTypeRetried", r#"{"act":"retry"}"#),
        ("OddType\",kind=\"forged\"} 1\n# TYPE forged counter", r#"{"act":"reject"}"#),
    ];
    for (event_type, data) in cases {
        publish(&mut conn, "events", event_type, data).await;
    }
    let body = env
        .wait_for("one event handled and four dead-lettered", Duration::from_secs(60), || async {
            let (_, body) = get(&addr, "/metrics").await;
            let done = metric(&body, r#"ferry_events_handled_total{subscriber="rec"}"#) == 1.0
                && metric(&body, r#"ferry_events_dead_lettered_total{subscriber="rec"}"#) == 4.0;
            done.then_some(body)
        })
        .await;
    host.stop().await;
    for text in ["OddType", "forged", "rejected on purpose", "boom on purpose", "asked to retry", "panicked"] {
        assert!(!body.contains(text), "`{text}` is in the metrics:\n{body}");
    }
    let names = ["subscriber", "stream", "kind", "plugin", "table", "write", "le"];
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else { continue };
        let labels = &rest[..rest.rfind('}').unwrap_or(rest.len())];
        for pair in labels.split("\",") {
            let (name, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("a label in {line}"));
            let value = value.trim_end_matches('"');
            assert!(names.contains(&name), "label `{name}` in {line}");
            if name == "kind" {
                assert!(value.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "a kind, not a text: {line}");
            }
        }
    }
}

/// The DOM headless Chromium renders for `url` (after the page's script ran), or `None`
/// without Chromium.
fn rendered_dom(url: &str) -> Option<String> {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must install chromium (scripts/setup.sh)");
        eprintln!("not rendering: /usr/bin/chromium is not installed (scripts/setup.sh installs it)");
        return None;
    }
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("running chromium");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Issue 23, "checked and sound": text from plugins reaches the status page only as text.
/// The page's script has no HTML sink (every value goes through `textContent`); markup in a
/// plugin's subscription and in a refused plugin's error is a plain JSON string in
/// `/api/status` and, rendered by headless Chromium, text: no element is made of it and its
/// handlers never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_from_plugins_reaches_the_status_page_only_as_text() {
    let env = Env::new();
    let img = "<img src=x onerror=document.title='owned'><b id=injected>bold</b>";
    let svg = "<svg/onload=document.title=document.domain>";
    env.add_plugin("marked", fixtures::RECORDER, &recorder_of(&[img]));
    env.add_plugin(
        "refused",
        fixtures::RECORDER,
        &format!("subscriptions = [{{ type = \"*\", stream = \"{svg}\" }}]\n{RECORDER_TOML}"),
    );
    let (host, addr) = host_with_admin(&env, env.config()).await;

    let (_, page) = get(&addr, "/").await;
    let script = &page[page.find("<script>").expect("the page's script")..];
    // The console (issue 27) shows producers' and plugins' text too: the same rule, on its
    // page and script as the endpoint serves them.
    let (_, console) = get(&addr, "/console").await;
    let (_, console_js) = get(&addr, "/console/console.js").await;
    assert!(console_js.contains("textContent"), "the console's script is served:\n{console_js}");
    assert!(!console.contains("<script>"), "the console has no inline script (its policy forbids one)");
    for (what, text) in [("status page", script), ("console page", &console), ("console script", &console_js)] {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "DOMParser",
            "setHTML",
            "parseHTML",
            "srcdoc",
            "eval(",
            "Function(",
        ] {
            assert!(!text.contains(sink), "the {what} uses `{sink}`");
        }
    }
    assert!(script.contains("td.textContent = text"), "values are written as text");

    let (_, status) = get(&addr, "/api/status").await;
    let status: Value = serde_json::from_str(&status).expect("status json");
    let plugin = |name: &str| status["plugins"].as_array()?.iter().find(|p| p["name"] == name).cloned();
    let marked = plugin("marked").expect("marked listed");
    assert_eq!(marked["subscriptions"][0]["event_type"], img, "{marked}");
    let refused = plugin("refused").expect("refused listed");
    assert_eq!(refused["state"], "refused", "{refused}");
    assert!(refused["error"].as_str().unwrap_or_default().contains(svg), "{refused}");

    let url = format!("http://{addr}/");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url)).await.expect("join");
    host.stop().await;
    let Some(dom) = dom else { return };
    assert!(dom.contains(r#"data-refreshes="#), "the script ran:\n{dom}");
    assert!(dom.contains("&lt;img src=x onerror=document.title='owned'&gt;"), "the markup shown as text:\n{dom}");
    assert!(dom.contains("&lt;svg/onload=document.title=document.domain&gt;"), "the error shown as text:\n{dom}");
    for element in ["<img", "<svg", "<b id=\"injected\"", "<b id=injected"] {
        assert!(!dom.contains(element), "`{element}` became an element:\n{dom}");
    }
    assert!(dom.contains("<title>ferry status</title>"), "no handler of the markup ran:\n{dom}");
}
