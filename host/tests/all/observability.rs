//! Observability: metrics move, readiness follows Redis, `ferry status` matches Redis, the
//! status page renders in headless Chromium.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_test_fixtures as fixtures;

use crate::support::{Env, InProcessHost, RECORDER_TOML, ferry, publish};

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
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

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_are_handled_retried_and_dead_lettered() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    env.wait_for("the admin endpoint", Duration::from_secs(20), || async {
        (get(&addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let (_, before) = get(&addr, "/metrics").await;
    assert_eq!(metric(&before, r#"ferry_events_handled_total{subscriber="rec"}"#), 0.0);

    publish(&mut conn, "events", "Ok", "{}").await;
    publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":2}"#).await;
    publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    publish(&mut conn, "events", "Boom", r#"{"act":"panic","until":2}"#).await;
    env.settled("events", Duration::from_secs(20)).await;
    let after = env
        .wait_for("gauges to be polled", Duration::from_secs(10), || async {
            let (_, body) = get(&addr, "/metrics").await;
            (metric(&body, r#"ferry_dead_letters{subscriber="rec",stream="events"}"#) == 1.0).then_some(body)
        })
        .await;
    assert_eq!(metric(&after, r#"ferry_events_handled_total{subscriber="rec"}"#), 3.0, "{after}");
    assert_eq!(metric(&after, r#"ferry_events_retried_total{subscriber="rec"}"#), 2.0);
    assert_eq!(metric(&after, r#"ferry_events_dead_lettered_total{subscriber="rec"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_failures_total{subscriber="rec",kind="trap"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_failures_total{subscriber="rec",kind="handler-reject"}"#), 1.0);
    assert_eq!(metric(&after, r#"ferry_group_pending{subscriber="rec",stream="events"}"#), 0.0);
    assert_eq!(metric(&after, r#"ferry_plugin_loads_total{plugin="rec"}"#), 1.0);
    assert_eq!(metric(&after, "ferry_redis_up"), 1.0);
    assert!(after.contains("ferry_handler_duration_seconds_bucket"), "histogram exported");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_plugins_list_reads_the_running_host() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let host = InProcessHost::start(config);
    env.wait_for("ready", Duration::from_secs(20), || async { (get(&addr, "/readyz").await.0 == 200).then_some(()) })
        .await;

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
    let plugins: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(plugins[0]["version"].as_str().map(str::len), Some(12));

    let mut redis = env.redis;
    redis.kill();
    let (code, body) = get(&addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("redis unreachable"), "{body}");
    redis.restart().expect("restart");
    let env = Env { redis, plugins: env.plugins, cache: env.cache };
    env.wait_for("ready again", Duration::from_secs(20), || async {
        (get(&addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_status_matches_the_redis_state_of_a_scripted_scenario() {
    let env = Env::new();
    let toml = RECORDER_TOML
        .replace("initial_delay = \"50ms\"", "initial_delay = \"1h\"")
        .replace("max_delay = \"1s\"", "max_delay = \"2h\"");
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let mut config = env.config();
    config.consumer = Some("host-a".into());
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
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
    // Two entries nobody has read yet.
    publish(&mut conn, "events", "Unread", "{}").await;
    publish(&mut conn, "events", "Unread", "{}").await;

    let url = env.redis.url();
    let (status, json, stderr) =
        tokio::task::spawn_blocking(move || ferry(&["status", "--json", "--redis", &url])).await.expect("join");
    assert!(status.success(), "{stderr}");
    let groups: serde_json::Value = serde_json::from_str(&json).expect("json");
    let g = &groups[0];
    assert_eq!(g["stream"], "events");
    assert_eq!(g["group"], "rec");
    // A blocking read dropped at shutdown may still be served by Redis (entries then wait in
    // host-a's pending list for its restart): the two unread entries are lag or pending.
    assert_eq!(g["lag"].as_u64().unwrap_or(0) + g["pending"].as_u64().unwrap_or(0), 2, "{json}");
    assert_eq!(g["retries_scheduled"], 1);
    assert_eq!(g["dead_letters"], 1);
    assert_eq!(g["consumers"][0]["name"], "host-a");
    let url = env.redis.url();
    let (_, table, _) = tokio::task::spawn_blocking(move || ferry(&["status", "--redis", &url])).await.expect("join");
    assert!(table.starts_with("STREAM") && table.contains("host-a (0 pending, seen"), "{table}");
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
    env.add_plugin("beta", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Ok", "{}").await;
    publish(&mut conn, "events", "Bad", r#"{"act":"reject"}"#).await;
    env.settled("events", Duration::from_secs(20)).await;
    env.wait_for("the admin endpoint", Duration::from_secs(20), || async {
        (get(&addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("status-page.png");
    let url = format!("http://{addr}/");
    let (dom, shot) = tokio::task::spawn_blocking(move || {
        let run = |extra: &[String]| {
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
                    "--window-size=1400,700",
                    "--virtual-time-budget=5000",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(extra)
                .arg(&url)
                .output()
                .expect("running chromium")
        };
        let dom = run(&["--dump-dom".to_string()]);
        let shot = run(&[format!("--screenshot={}", screenshot.display())]);
        (String::from_utf8_lossy(&dom.stdout).into_owned(), (shot.status, screenshot))
    })
    .await
    .expect("join");
    assert!(dom.contains(r#"id="sub-alpha-events""#), "alpha row rendered:\n{dom}");
    assert!(dom.contains(r#"id="sub-beta-events""#), "beta row rendered");
    assert!(dom.contains("reachable"), "redis state shown");
    assert!(shot.0.success() && shot.1.exists(), "screenshot saved to {}", shot.1.display());
    host.stop().await;
}
