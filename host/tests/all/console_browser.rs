//! The console in a real browser (issue 27): a host with its admin endpoint and tokens, dead
//! letters seeded as the host writes them, and `tests/browser/walk.mjs` (playwright-core
//! driving Debian's Chromium, headless) walking the page as an operator and as a viewer.
//! Screenshots land in `target/console-screenshots/`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Config;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;

use crate::support::{Env, InProcessHost, RECORDER_TOML};

const OPERATOR: &str = "walk-operator-token-0123456789";
const VIEWER: &str = "walk-viewer-token-0123456789ab";
/// Longest the walk may take; it normally needs well under a minute.
const WALK_TIMEOUT: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository root").to_path_buf()
}

/// Why the walk cannot run here, if it cannot: no Chromium, or `npm ci` not run in
/// `tests/browser`. In CI both are installed by `scripts/setup.sh`, so there it is a failure.
fn missing_tools() -> Option<String> {
    let why = if !Path::new("/usr/bin/chromium").exists() {
        "/usr/bin/chromium is not installed"
    } else if !repo_root().join("tests/browser/node_modules/playwright-core/package.json").exists() {
        "tests/browser has no node_modules (npm ci)"
    } else if Command::new("node").arg("--version").output().is_err() {
        "node is not installed"
    } else {
        return None;
    };
    Some(why.to_string())
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// One dead letter of `rec` on `events`, written as the settle writes one.
fn dead_letter_cmd(event: &Event, kind: &str, reason: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(SubscriberKeys::new("events", "rec").dlq).arg("*");
    event.write_fields(&mut cmd);
    // To the millisecond, as the settle writes them.
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_millisecond(now.millisecond()).expect("a time");
    let rfc3339 = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).expect("a time");
    cmd.arg("_reason").arg(reason).arg("_kind").arg(kind).arg("_attempts").arg(3).arg("_subscriber").arg("rec");
    cmd.arg("_first_failure").arg(rfc3339(now - Duration::from_millis(1500))).arg("_last_failure").arg(rfc3339(now));
    cmd.arg("_plugin_version").arg("walk-seed").arg("_host").arg("walk-host");
    cmd
}

/// What the walk expects (see walk.mjs): the letter to edit, 1,000 traps of one cause, three
/// Refunds, one letter carrying markup in its type, reason and payload.
async fn seed(conn: &mut MultiplexedConnection) {
    let mut fix = Event::new("OrderPlaced", "shop", r#"{"order":17,"sku":"bad"}"#);
    fix.datacontenttype = "application/json".into();
    fix.correlationid = Some("corr-walk".into());
    fix.subject = Some("order-17".into());
    let _: String = dead_letter_cmd(&fix, "handler-reject", "sku bad unknown").query_async(conn).await.expect("XADD");
    let mut pipe = redis::pipe();
    for n in 0..1000u32 {
        let event = Event::new("PaymentCaptured", "payments", format!(r#"{{"payment":{n}}}"#));
        pipe.add_command(dead_letter_cmd(
            &event,
            "trap",
            &format!("wasm trap at 0x{:08x}: unreachable", 0x7f00_0000 + n),
        ));
    }
    let _: Vec<String> = pipe.query_async(conn).await.expect("XADD the group");
    for n in [3, 5, 8] {
        let event = Event::new("Refund", "payments", format!(r#"{{"refund":{n}}}"#));
        let _: String = dead_letter_cmd(&event, "handler-reject", &format!("refund {n} too late"))
            .query_async(conn)
            .await
            .expect("XADD");
    }
    let marked = Event::new(
        "<img src=x onerror=\"window.__owned=1\">",
        "<b id=\"injected\">source</b>",
        r#"{"note":"<img src=x onerror=window.__owned=3><b id=\"injected\">bold</b>"}"#,
    );
    let reason = "<script>window.__owned=2</script><b id=\"injected\">reason</b>";
    let _: String = dead_letter_cmd(&marked, "handler-reject", reason).query_async(conn).await.expect("XADD");
}

/// Run the walk against `url`; its output (and why it failed) in the error.
fn walk(url: &str, screenshots: &Path) -> Result<String, String> {
    let dir = repo_root().join("tests/browser");
    let log = tempfile::NamedTempFile::new().expect("walk log");
    // One open file for both streams: one offset, so neither overwrites the other.
    let out = log.reopen().expect("log");
    let mut child = Command::new("node")
        .arg("walk.mjs")
        .current_dir(&dir)
        .env("FERRY_CONSOLE_URL", url)
        .env("FERRY_OPERATOR_TOKEN", OPERATOR)
        .env("FERRY_VIEWER_TOKEN", VIEWER)
        .env("FERRY_SCREENSHOTS", screenshots)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("running node");
    let deadline = Instant::now() + WALK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(format!("the walk failed ({s}):\n{output}")),
        None => Err(format!("the walk did not end within {WALK_TIMEOUT:?}:\n{output}")),
    }
}

/// Issue 27's browser test: log in, the overview, dead letters filtered, one opened, edited
/// and replayed, a group of 1,000 replayed as a job whose bar survives a reload and reaches
/// the end, one selected row replayed and the rest purged by filter, an event found by
/// correlation id with its follow-ups, the plugins, the audit trail, logging out;
/// a viewer sees every action disabled; markup from producers renders as text. Any console
/// error or uncaught exception in the page fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_walks_through_login_dead_letters_jobs_find_and_audit_in_headless_chromium() {
    if let Some(why) = missing_tools() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must install the browser walk (scripts/setup.sh): {why}"
        );
        eprintln!("skipping: {why} (scripts/setup.sh installs it)");
        return;
    }
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &format!("concurrency = 8\n{RECORDER_TOML}"));
    let tokens = env.cache.path().join("admin-tokens");
    std::fs::write(&tokens, format!("alice operator {OPERATOR}\nvera viewer {VIEWER}\n")).expect("tokens file");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config: Config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    config.admin.tokens_file = Some(tokens);
    let mut conn = env.conn().await;
    seed(&mut conn).await;
    let host = InProcessHost::start(config);
    // A handled event with the walk's correlation id; its `Recorded` follow-up is its child.
    let mut handled = Event::new("OrderPlaced", "shop", r#"{"order":16}"#);
    handled.correlationid = Some("corr-walk".into());
    ferry::outbox::publish(&mut conn, "events", &handled).await.expect("publishing");
    // Failures for the overview's charts: five rejected (dead-lettered), five that fail once.
    for _ in 0..5 {
        crate::support::publish(&mut conn, "events", "Rejected", r#"{"act":"reject"}"#).await;
        crate::support::publish(&mut conn, "events", "Flaky", r#"{"act":"retry","until":2}"#).await;
    }
    env.records_at_least(6, Duration::from_secs(60)).await;
    env.wait_for("the admin endpoint", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(drop)
    })
    .await;

    let screenshots = repo_root().join("target/console-screenshots");
    let url = format!("http://{addr}");
    let result = tokio::task::spawn_blocking(move || walk(&url, &screenshots)).await.expect("join");
    host.stop().await;
    match result {
        Ok(output) => eprintln!("{output}"),
        Err(why) => panic!("{why}"),
    }
}

/// An HTTP/1.1 exchange as a reverse proxy forwards it: `headers` as given (`Host` included),
/// answered as (status, head, body).
async fn forwarded(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// What docs/operations.md says of the console behind a TLS-terminating proxy (nginx with
/// `proxy_set_header Host $host` and `X-Forwarded-Proto https`, or Caddy, which sends both by
/// default): the public name in `admin.hosts` is admitted and any other refused, the page
/// carries its Content-Security-Policy, the login cookie is `Secure`, and the browser's
/// `https://` Origin passes the CSRF check while another site's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_proxy_the_console_gets_a_secure_cookie_and_its_https_origin_passes() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let tokens = env.cache.path().join("admin-tokens");
    std::fs::write(&tokens, format!("alice operator {OPERATOR}\n")).expect("tokens file");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config: Config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    config.admin.tokens_file = Some(tokens);
    config.admin.hosts = vec!["ferry.example.com".into()];
    let host = InProcessHost::start(config);
    env.wait_for("the admin endpoint", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(drop)
    })
    .await;
    let public = [("Host", "ferry.example.com"), ("X-Forwarded-Proto", "https")];

    let (status, head, body) = forwarded(&addr, "GET", "/console", &public, "").await;
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("/console/console.js"), "the page");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    let (status, _, _) = forwarded(&addr, "GET", "/console", &[("Host", "ferry.attacker.example")], "").await;
    assert_eq!(status, 421, "a name outside admin.hosts");

    let login = serde_json::json!({ "token": OPERATOR }).to_string();
    let origin = ("Origin", "https://ferry.example.com");
    let (status, head, body) = forwarded(&addr, "POST", "/api/login", &[public[0], public[1], origin], &login).await;
    assert_eq!(status, 200, "{head}{body}");
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie").to_string();
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    let session = cookie["set-cookie:".len()..].split(';').next().expect("name=value").trim().to_string();
    let (_, plain, _) = forwarded(&addr, "POST", "/api/login", &[public[0], origin], &login).await;
    assert!(!plain.contains("; secure"), "over plain HTTP the cookie cannot be Secure: {plain}");

    let cookie = ("Cookie", session.as_str());
    let (status, _, body) =
        forwarded(&addr, "POST", "/api/dlq/rec/purge", &[public[0], origin, cookie], r#"{"all":true}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"purged":0}"#), "the console's own https Origin");
    let evil = ("Origin", "https://evil.example");
    let (status, _, _) =
        forwarded(&addr, "POST", "/api/dlq/rec/purge", &[public[0], evil, cookie], r#"{"all":true}"#).await;
    assert_eq!(status, 403, "another site's Origin");
    let (status, _, body) = forwarded(&addr, "GET", "/api/whoami", &[public[0], cookie], "").await;
    assert_eq!((status, body.contains("alice")), (200, true), "{body}");
    host.stop().await;
}
