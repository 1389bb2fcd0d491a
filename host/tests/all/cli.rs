//! The command line as a user meets it: every command reads `--config` with the same
//! precedence as `ferry run` (flags > `FERRY_*` variables > file > defaults), `ferry dlq list`
//! gives the total when it cuts the list, and `--cache-dir ""` turns the cache off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry::config::Config;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, HostProcess, InProcessHost, RECORDER_TOML, ferry_bin, free_addr, publish};

/// A Redis URL nothing listens on: a command that used it instead of the file's would fail.
fn dead_redis() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, toml::to_string(config).expect("config serializes")).expect("writing config");
    path
}

/// Run `ferry` with `args` and extra environment variables; no `FERRY_*` variable of the
/// caller leaks in. Returns (success, stdout, stderr).
fn ferry_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).env("FERRY_LOG", "warn").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") && k != "FERRY_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

/// Add `n` dead letters of `subscriber` on `events`, written as the host writes them.
async fn add_dead_letters(env: &Env, subscriber: &str, n: usize) {
    let mut conn = env.conn().await;
    let key = SubscriberKeys::new("events", subscriber).dlq;
    for i in 0..n {
        let id = format!("evt-{subscriber}-{i}");
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("id")
            .arg(&id)
            .arg("type")
            .arg("Bad")
            .arg("_reason")
            .arg("rejected on purpose")
            .arg("_kind")
            .arg("handler-reject")
            .arg("_attempts")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("XADD");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_dlq_and_publish_read_redis_and_stream_from_the_config_file() {
    let env = Env::new();
    add_dead_letters(&env, "rec", 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = env.config();
    config.stream = "orders".into();
    let file = write_config(dir.path(), &config);
    let file = file.to_str().expect("utf-8").to_string();
    let (status, dlq, show, published) = blocking(move || {
        (
            ferry_env(&["status", "--config", &file, "--stream", "events", "--json"], &[]),
            ferry_env(&["dlq", "list", "--config", &file], &[]),
            ferry_env(&["dlq", "show", "evt-rec-1"], &[("FERRY_CONFIG", &file)]),
            ferry_env(&["publish", "--config", &file, "--type", "Placed", "--data", "{}"], &[]),
        )
    })
    .await;
    assert!(status.0, "status read the file's redis: {}", status.2);
    serde_json::from_str::<serde_json::Value>(&status.1).expect("status printed JSON");
    assert!(dlq.0 && dlq.1.contains("2 dead letter(s)"), "dlq list read the file's redis: {}{}", dlq.1, dlq.2);
    assert!(show.0 && show.1.contains("evt-rec-1"), "FERRY_CONFIG is read too: {}{}", show.1, show.2);
    assert!(published.0, "publish read the file's redis: {}", published.2);
    assert!(
        published.2.contains("to stream `orders`") && published.2.contains(&env.redis.url().replace("redis://", "")),
        "publish says where it wrote: {}",
        published.2
    );
    let mut conn = env.conn().await;
    let len: u64 = redis::cmd("XLEN").arg("orders").query_async(&mut conn).await.expect("XLEN");
    assert_eq!(len, 1, "publish used the file's stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_environment_which_overrides_the_file() {
    let env = Env::new();
    add_dead_letters(&env, "rec", 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let good = env.redis.url();
    let dead = dead_redis();
    // The file points nowhere; the environment or a flag brings the right Redis.
    let mut config = env.config();
    config.redis = dead.clone();
    let nowhere = write_config(dir.path(), &config).to_str().expect("utf-8").to_string();
    let (file_only, env_over_file, flag_over_env) = blocking(move || {
        (
            ferry_env(&["dlq", "list", "--config", &nowhere], &[]),
            ferry_env(&["dlq", "list", "--config", &nowhere], &[("FERRY_REDIS", &good)]),
            ferry_env(&["dlq", "list", "--config", &nowhere, "--redis", &good], &[("FERRY_REDIS", &dead)]),
        )
    })
    .await;
    assert!(!file_only.0, "the file's dead Redis was used: {}", file_only.1);
    assert!(file_only.2.contains("cannot reach Redis"), "{}", file_only.2);
    assert!(env_over_file.0 && env_over_file.1.contains("1 dead letter(s)"), "{}{}", env_over_file.1, env_over_file.2);
    assert!(flag_over_env.0 && flag_over_env.1.contains("1 dead letter(s)"), "{}{}", flag_over_env.1, flag_over_env.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_list_finds_the_admin_endpoint_in_the_config_file() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    config.admin.listen = free_addr();
    let host = InProcessHost::start(config.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_config(dir.path(), &config).to_str().expect("utf-8").to_string();
    let listed = env
        .wait_for("the host to list its plugin", Duration::from_secs(30), || {
            let file = file.clone();
            async move {
                let out = blocking(move || ferry_env(&["plugins", "list", "--config", &file], &[])).await;
                (out.0 && out.1.contains("running")).then_some(out.1)
            }
        })
        .await;
    assert!(listed.starts_with("PLUGIN") && listed.contains("rec"), "{listed}");
    host.stop().await;
    let mut off = config;
    off.admin.listen = String::new();
    let file = write_config(dir.path(), &off).to_str().expect("utf-8").to_string();
    let out = blocking(move || ferry_env(&["plugins", "list", "--config", &file], &[])).await;
    assert!(!out.0 && out.2.contains("admin endpoint is off"), "{}", out.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_prints_the_total_and_says_when_the_list_was_cut() {
    let env = Env::new();
    add_dead_letters(&env, "rec", 5).await;
    add_dead_letters(&env, "other", 2).await;
    let url = env.redis.url();
    let (cut, whole, one_subscriber, json) = blocking(move || {
        (
            ferry_env(&["dlq", "list", "--limit", "3", "--redis", &url], &[]),
            ferry_env(&["dlq", "list", "--redis", &url], &[]),
            ferry_env(&["dlq", "list", "--subscriber", "rec", "--limit", "4", "--redis", &url], &[]),
            ferry_env(&["dlq", "list", "--limit", "3", "--json", "--redis", &url], &[]),
        )
    })
    .await;
    assert!(cut.0, "{}", cut.2);
    assert_eq!(cut.1.lines().count(), 1 + 3 + 1, "header, 3 rows, summary:\n{}", cut.1);
    assert!(cut.1.ends_with("7 dead letter(s); showing the first 3 (--limit 3)\n"), "{}", cut.1);
    assert!(whole.1.ends_with("\n7 dead letter(s)\n"), "{}", whole.1);
    assert!(one_subscriber.1.ends_with("5 dead letter(s); showing the first 4 (--limit 4)\n"), "{}", one_subscriber.1);
    let shown: Vec<serde_json::Value> = serde_json::from_str(&json.1).expect("json");
    assert_eq!(shown.len(), 3);
    assert!(json.2.contains("showing 3 of 7"), "{}", json.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cache_dir_flag_runs_without_a_cache() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let dir = tempfile::tempdir().expect("temp dir");
    let xdg = tempfile::tempdir().expect("temp dir");
    let config = env.config();
    let file = write_config(dir.path(), &config);
    let log = dir.path().join("host.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(ferry_bin())
        .args(["run", "--config", file.to_str().expect("utf-8"), "--cache-dir", ""])
        .env("FERRY_LOG", "info")
        .env("XDG_CACHE_HOME", xdg.path())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("starting ferry");
    let mut host = HostProcess { child, log };
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Placed", "{}").await;
    env.records_at_least(1, Duration::from_secs(30)).await;
    assert!(host.terminate().success(), "{}", host.log());
    let written = |d: &Path| std::fs::read_dir(d).expect("read dir").count();
    assert_eq!(written(env.cache.path()), 0, "the file's cache dir was not used");
    assert_eq!(written(xdg.path()), 0, "the default cache dir was not used");
}

/// Run `cmd` in `dir`; its success and combined output.
fn run_in(dir: &std::path::Path, cmd: &str, args: &[&str]) -> (bool, String) {
    // The generated project builds into its own `target/`, as its README says, whatever
    // target directory the suite itself was built with.
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_plugin_made_by_ferry_new_builds_passes_its_tests_invokes_and_runs_with_nothing_else() {
    let env = Env::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let (made, tested, built, invoked) = blocking(move || {
        let made = run_in(&root, ferry_bin(), &["new", "rust", "shop-stock"]);
        let project = root.join("shop-stock");
        let host_target = run_in(&project, "rustc", &["-vV"])
            .1
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .expect("host target");
        let tested = run_in(&project, "cargo", &["test", "--quiet", "--target", &host_target]);
        let built = run_in(&project, "cargo", &["build", "--quiet", "--release"]);
        let wasm = "target/wasm32-wasip2/release/shop_stock.wasm";
        let invoked = run_in(
            &project,
            ferry_bin(),
            &[
                "plugins",
                "invoke",
                wasm,
                "--event",
                "event.json",
                "--state",
                "state.json",
                "--config",
                "publish=stock",
                "--publish-stream",
                "stock",
            ],
        );
        (made, tested, built, invoked)
    })
    .await;
    assert!(made.0, "{}", made.1);
    assert!(tested.0 && tested.1.contains("2 passed"), "the generated tests pass: {}", tested.1);
    assert!(built.0, "the generated project builds: {}", built.1);
    assert!(invoked.0 && invoked.1.contains("ack") && invoked.1.contains("StockReserved"), "{}", invoked.1);
    assert!(invoked.1.contains(r#"state set "stock:sku-1" = 8"#), "the stock from state.json, taken: {}", invoked.1);
    // And `ferry run` runs it, with state granted and its stock set by the operator.
    let wasm = dir.path().join("shop-stock/target/wasm32-wasip2/release/shop_stock.wasm");
    env.add_plugin(
        "shop-stock",
        wasm.to_str().expect("utf-8"),
        "start = \"beginning\"\nstate = true\npublish_streams = [\"stock\"]\n[config]\npublish = \"stock\"\n",
    );
    let mut conn = env.conn().await;
    let mut state_conn = ferry::connection::Conn::Node(conn.clone());
    ferry::plugin::capability::state::stored::set(
        &mut state_conn,
        "events",
        "shop-stock",
        "stock:sku-1",
        b"10".to_vec(),
    )
    .await
    .expect("set the stock");
    let host = crate::support::InProcessHost::start(env.config());
    let order = r#"{"order_id":"o-1","sku":"sku-1","quantity":2}"#;
    crate::support::publish(&mut conn, "events", "OrderCreated", order).await;
    env.wait_for("the follow-up in `stock`", std::time::Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN").arg("stock").query_async(&mut conn).await.ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    host.stop().await;
    let left = ferry::plugin::capability::state::stored::get(&mut state_conn, "events", "shop-stock", "stock:sku-1")
        .await
        .expect("get");
    assert_eq!(left.as_deref(), Some(b"8".as_slice()), "committed with the event's acknowledgement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_made_by_ferry_new_pass_their_own_tests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let (py, js) = blocking(move || {
        assert!(run_in(&root, ferry_bin(), &["new", "python", "greeter"]).0);
        assert!(run_in(&root, ferry_bin(), &["new", "javascript", "welcome"]).0);
        let py = run_in(&root.join("greeter"), "python3", &["-m", "unittest", "-v"]);
        let js = run_in(&root.join("welcome"), "node", &["--import", "./ferry-testing.mjs", "--test"]);
        (py, js)
    })
    .await;
    assert!(py.0 && py.1.contains("Ran 4 tests"), "{}", py.1);
    assert!(js.0 && js.1.contains("# pass 4"), "{}", js.1);
    // A name that is not a subscriber name, or a directory that exists, is refused.
    let (bad, _, err) =
        crate::support::ferry(&["new", "rust", "Bad_Name", "--dir", dir.path().to_str().expect("utf-8")]);
    assert!(!bad.success() && err.contains("lowercase"), "{err}");
}

/// A one-connection-at-a-time HTTP/1.1 server on a free port answering `201` to everything;
/// the requests it got, head and body as sent.
fn warehouse() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then the body by its content-length (chunked: to the last chunk).
            while let Ok(n) = conn.read(&mut chunk) {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let Some(end) = text.find("\r\n\r\n") else { continue };
                let length: Option<usize> =
                    text[..end].lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok());
                let done = match length {
                    Some(n) => buf.len() >= end + 4 + n,
                    None => !text[..end].contains("chunked") || text.ends_with("0\r\n\r\n"),
                };
                if n == 0 || done {
                    break;
                }
            }
            requests.lock().expect("lock").push(String::from_utf8_lossy(&buf).into_owned());
            let _ = conn.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    (port, seen)
}

/// `ferry new python|javascript` projects build with their own scripts and pass `ferry plugins
/// invoke` as their README runs it (state from `state.json`, an origin granted) with the
/// README's `warehouse_url` added, so the reservation is POSTed to a local server too. (One
/// invoke each: every invoke compiles the component afresh, seconds for these.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_made_by_ferry_new_build_and_pass_invoke() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let (port, requests) = warehouse();
    let outputs = blocking(move || {
        assert!(run_in(&root, ferry_bin(), &["new", "python", "shop-py"]).0);
        assert!(run_in(&root, ferry_bin(), &["new", "javascript", "shop-js"]).0);
        let (py, js) = (root.join("shop-py"), root.join("shop-js"));
        let built = run_in(&py, "./build.sh", &[]);
        assert!(built.0, "the generated Python project builds: {}", built.1);
        let installed = run_in(&js, "npm", &["install", "--no-audit", "--no-fund"]);
        assert!(installed.0, "{}", installed.1);
        let built = run_in(&js, "npm", &["run", "build"]);
        assert!(built.0, "the generated JavaScript project builds: {}", built.1);
        let origin = format!("http://127.0.0.1:{port}");
        let warehouse = format!("warehouse_url={origin}/reservations");
        let mut outputs = Vec::new();
        for (project, wasm) in [(&py, "shop-py.wasm"), (&js, "shop-js.wasm")] {
            let readme = [
                "plugins",
                "invoke",
                wasm,
                "--event",
                "event.json",
                "--state",
                "state.json",
                "--http-allow",
                &origin,
                "--config",
                "publish=stock",
                "--publish-stream",
                "stock",
            ];
            let with_http = [&readme[..], &["--config", &warehouse]].concat();
            outputs.push((wasm, run_in(project, ferry_bin(), &with_http)));
        }
        outputs
    })
    .await;
    for (wasm, (ok, out)) in &outputs {
        assert!(*ok && out.contains("ack") && out.contains("StockReserved"), "{wasm}: {out}");
        assert!(out.contains("stock:sku-1\" = 8"), "{wasm}: 10 in stock - 2: {out}");
        assert!(out.contains("/reservations -> 201"), "{wasm}: the call in the report: {out}");
    }
    let requests = requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2, "one POST per project with warehouse_url: {requests:#?}");
    for request in &requests {
        assert!(request.starts_with("POST /reservations"), "{request}");
        assert!(request.contains(r#""sku":"sku-1""#) && request.contains(r#""quantity":2"#), "{request}");
        assert!(request.to_ascii_lowercase().contains("idempotency-key: shop-"), "{request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stream_filters_names_missing_streams_and_shows_streams_nobody_reads() {
    let env = Env::new();
    let mut conn = env.conn().await;
    // A subscriber's group on `events`, and follow-ups in `followups` that nobody reads.
    ferry::consume::ensure_groups(&mut conn, &SubscriberKeys::new("events", "rec"), "rec", ferry::config::Start::New)
        .await
        .expect("groups");
    for _ in 0..3 {
        publish(&mut conn, "followups", "Recorded", "{}").await;
    }
    let url = env.redis.url();
    let (only_followups, nosuch, all) = blocking(move || {
        (
            ferry_env(&["status", "--redis", &url, "--stream", "followups"], &[]),
            ferry_env(&["status", "--redis", &url, "--stream", "nosuch"], &[]),
            ferry_env(&["status", "--redis", &url, "--stream", "events"], &[]),
        )
    })
    .await;
    assert!(only_followups.0, "{}", only_followups.2);
    assert!(!only_followups.1.contains("rec"), "only the stream asked for: {}", only_followups.1);
    assert!(
        only_followups.1.contains("no subscriber reads")
            && only_followups.1.contains("followups")
            && only_followups.1.contains('3'),
        "a stream only follow-ups go to is shown with its length: {}",
        only_followups.1
    );
    assert!(nosuch.0 && nosuch.2.contains("no stream `nosuch`"), "{}{}", nosuch.1, nosuch.2);
    assert!(all.0 && all.1.contains("rec") && !all.1.contains("followups"), "{}", all.1);
}
