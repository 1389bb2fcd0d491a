//! The console's admin API (issue 27): tokens and roles, the login cookie, CSRF and `Host`
//! checks, the limit on failed logins, dead letters filtered and grouped as `ferry dlq`
//! shows them, group replay, the audit trail, and producers' text returned as JSON strings.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use ferry::config::Config;
use ferry::event::Event;
use ferry::keys::SubscriberKeys;
use ferry_test_fixtures as fixtures;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Env, InProcessHost, RECORDER_TOML, ferry, free_addr};

const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789ab";

/// One HTTP answer.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// `METHOD path` with `headers` (a `Host` naming `addr` unless given) and `body`.
async fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    // Status 0: nothing listens (yet).
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return Reply { status: 0, head: String::new(), body: String::new() };
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status");
    Reply { status, head: head.to_string(), body: body.to_string() }
}

async fn get(addr: &str, path: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    request(addr, "GET", path, &headers, "").await
}

async fn post(addr: &str, path: &str, token: &str, body: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    request(addr, "POST", path, &[("Authorization", &bearer), ("Content-Type", "application/json")], body).await
}

/// A host running the recorder as `rec`, its admin endpoint on a free loopback port with an
/// operator (`alice`) and a viewer (`vera`) token in a 0600 file.
async fn console_host(env: &Env) -> (InProcessHost, String) {
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let tokens = env.cache.path().join("admin-tokens");
    std::fs::write(&tokens, format!("# name role token\nalice operator {OPERATOR}\nvera viewer {VIEWER}\n"))
        .expect("tokens file");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config: Config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    config.admin.tokens_file = Some(tokens);
    config.consumer = Some("console-host-1".into());
    let host = InProcessHost::start(config);
    env.wait_for("the admin endpoint and the subscriber", Duration::from_secs(30), || async {
        let reply = get(&addr, "/api/plugins", Some(VIEWER)).await;
        (reply.status == 200 && reply.body.contains("\"rec\"")).then_some(())
    })
    .await;
    (host, addr)
}

/// Write a dead letter of `rec` on `events` as the host writes one; returns the event.
async fn dead_letter(
    conn: &mut MultiplexedConnection,
    event_type: &str,
    kind: &str,
    reason: &str,
    correlation: Option<&str>,
) -> Event {
    let mut event = Event::new(event_type, "tests", "{}");
    event.correlationid = correlation.map(Into::into);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(SubscriberKeys::new("events", "rec").dlq).arg("*");
    event.write_fields(&mut cmd);
    cmd.arg("_reason").arg(reason).arg("_kind").arg(kind).arg("_attempts").arg(3).arg("_subscriber").arg("rec");
    let _: String = cmd.query_async(conn).await.expect("XADD");
    event
}

async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out, err) = ferry(&args);
        (status.success(), out, err)
    })
    .await
    .expect("join")
}

fn args(list: &[&str], url: &str) -> Vec<String> {
    list.iter().map(|s| s.to_string()).chain(["--redis".to_string(), url.to_string()]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_token_a_viewer_cannot_act_and_foreign_origins_and_hosts_are_refused() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let reads = [
        "/api/plugins",
        "/api/status",
        "/api/asyncapi.json",
        "/api/schemas/OrderPlaced/1",
        "/api/catalog/OrderPlaced",
        "/api/dlq/rec",
        "/api/dlq/rec/groups",
        "/api/dlq/rec/letters/1-0",
        "/api/audit",
        "/api/whoami",
        "/api/jobs",
        "/api/jobs/00ff",
        "/api/find?id=x",
        "/api/overview",
    ];
    for path in reads {
        let reply = get(&addr, path, None).await;
        assert_eq!(reply.status, 401, "{path} without a token: {}", reply.body);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{path}");
        let reply = get(&addr, path, Some(VIEWER)).await;
        assert!(![401, 403].contains(&reply.status), "{path} with the viewer's token: {} {}", reply.status, reply.body);
    }
    for path in ["/api/dlq/rec/replay", "/api/dlq/rec/purge", "/api/dlq/rec/letters/1-0/edit"] {
        let reply = request(&addr, "POST", path, &[], r#"{"all":true}"#).await;
        assert_eq!(reply.status, 401, "{path} without a token");
        let reply = post(&addr, path, VIEWER, r#"{"all":true}"#).await;
        assert_eq!(reply.status, 403, "{path} as a viewer: {}", reply.body);
        let reply = get(&addr, path, Some(OPERATOR)).await;
        assert_eq!(reply.status, 405, "{path} is POST only");
        let bearer = format!("Bearer {OPERATOR}");
        let reply =
            request(&addr, "POST", path, &[("Authorization", &bearer), ("Origin", "http://evil.example")], "{}").await;
        assert_eq!(reply.status, 403, "{path} from another origin: {}", reply.body);
    }
    let reply = post(&addr, "/api/dlq/rec/purge", OPERATOR, r#"{"all":true}"#).await;
    assert_eq!((reply.status, reply.json()), (200, serde_json::json!({"purged": 0})));
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(&addr, path, None).await.status, 200, "{path} stays open (admin.open_metrics)");
    }
    let reply =
        request(&addr, "GET", "/api/plugins", &[("Host", "evil.example"), ("Authorization", "Bearer x")], "").await;
    assert_eq!(reply.status, 421, "a foreign Host is refused before anything else");
    let reply = get(&addr, "/api/plugins", Some("not-a-token-at-all")).await;
    assert_eq!(reply.status, 401, "an unknown token");

    // `ferry plugins list --admin` passes FERRY_ADMIN_TOKEN as its bearer token.
    let plugins_list = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(crate::support::ferry_bin());
        cmd.args(["plugins", "list", "--admin", &addr]).env("FERRY_LOG", "warn").env_remove("FERRY_ADMIN_TOKEN");
        if let Some(token) = token {
            cmd.env("FERRY_ADMIN_TOKEN", token);
        }
        move || cmd.output().expect("running ferry")
    };
    let without = tokio::task::spawn_blocking(plugins_list(None)).await.expect("join");
    assert!(!without.status.success(), "no token: refused");
    let with = tokio::task::spawn_blocking(plugins_list(Some(VIEWER))).await.expect("join");
    assert!(
        with.status.success() && String::from_utf8_lossy(&with.stdout).contains("rec"),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_httponly_cookie_that_works_and_the_sixth_failed_login_gets_429() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let origin = format!("http://{addr}");
    let login = |token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        let (addr, origin) = (addr.clone(), origin.clone());
        async move { request(&addr, "POST", "/api/login", &[("Origin", &origin)], &body).await }
    };
    let reply = login(OPERATOR).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["name"], "alice");
    let cookie = reply.header("set-cookie").expect("a session cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let reply = request(&addr, "GET", "/api/dlq/rec", &[("Cookie", &session)], "").await;
    assert_eq!(reply.status, 200, "the cookie identifies the page: {}", reply.body);
    let reply =
        request(&addr, "POST", "/api/dlq/rec/replay", &[("Cookie", &session), ("Origin", &origin)], r#"{"all":true}"#)
            .await;
    assert_eq!((reply.status, reply.json()), (200, serde_json::json!({"replayed": 0})), "same-origin POST");
    let reply = request(
        &addr,
        "POST",
        "/api/dlq/rec/replay",
        &[("Cookie", &session), ("Origin", "http://evil.example")],
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(reply.status, 403, "cross-origin POST with the cookie");
    let reply = request(&addr, "POST", "/api/dlq/rec/replay", &[("Cookie", &session)], r#"{"all":true}"#).await;
    assert_eq!(reply.status, 403, "a cookie POST without Origin");
    let reply = request(&addr, "GET", "/api/dlq/rec", &[("Cookie", "ferry_session=forged")], "").await;
    assert_eq!(reply.status, 401, "a made-up session");

    for i in 1..=5 {
        assert_eq!(login("wrong-token-guess-000").await.status, 401, "failed login {i}");
    }
    assert_eq!(login("wrong-token-guess-000").await.status, 429, "the sixth failed login within a minute");
    assert_eq!(login(OPERATOR).await.status, 429, "limited, even with the right token, until the minute passes");
    let reply = request(&addr, "GET", "/api/dlq/rec", &[("Cookie", &session)], "").await;
    assert_eq!(reply.status, 200, "an open session is not cut by the limit");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_groups_match_the_cli_a_group_replay_replays_that_group_and_each_action_is_audited() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let url = env.redis.url();
    let mut conn = env.conn().await;
    let mut missing = Vec::new();
    for n in [17, 4242, 9] {
        missing
            .push(dead_letter(&mut conn, "OrderPlaced", "handler-reject", &format!("order {n} not found"), None).await);
    }
    dead_letter(&mut conn, "OrderPlaced", "trap", "wasm trap at 0x7ffd1234: unreachable", Some("corr-7")).await;
    dead_letter(&mut conn, "Refund", "trap", "wasm trap at 0x00ab9999: unreachable", None).await;

    // Filters: the API's list is what `ferry dlq list --json` prints for the same flags.
    for (query, flags, n) in [
        ("type=OrderPlaced", vec!["--type", "OrderPlaced"], 4),
        ("kind=trap", vec!["--kind", "trap"], 2),
        ("reason=NOT%20FOUND", vec!["--reason", "NOT FOUND"], 3),
        ("correlation=corr-7", vec!["--correlation", "corr-7"], 1),
        ("since=1h&type=Refund", vec!["--since", "1h", "--type", "Refund"], 1),
        ("until=1000", vec!["--until", "1000"], 0),
    ] {
        let api = get(&addr, &format!("/api/dlq/rec?{query}"), Some(VIEWER)).await.json();
        let mut flags: Vec<&str> = flags;
        flags.splice(0..0, ["dlq", "list", "--subscriber", "rec", "--json"]);
        let (ok, out, err) = cli(args(&flags, &url)).await;
        assert!(ok, "{err}");
        let from_cli: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(api["dead_letters"], from_cli, "{query}");
        assert_eq!(api["total"], n, "{query}: {api}");
    }
    let by_id = get(&addr, &format!("/api/dlq/rec?id={}", missing[1].id), Some(VIEWER)).await.json();
    assert_eq!(by_id["dead_letters"][0]["event_id"], missing[1].id.as_str());

    // Groups: the same as `ferry dlq groups --json`; numbers and hex normalised away.
    let groups = get(&addr, "/api/dlq/rec/groups", Some(VIEWER)).await.json();
    let (ok, out, err) = cli(args(&["dlq", "groups", "--subscriber", "rec", "--json"], &url)).await;
    assert!(ok, "{err}");
    assert_eq!(groups, serde_json::from_str::<Value>(&out).expect("json"));
    let groups = groups.as_array().expect("array").clone();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(
        (groups[0]["kind"].as_str(), groups[0]["reason"].as_str()),
        (Some("handler-reject"), Some("order <n> not found"))
    );
    assert_eq!(groups[0]["count"], 3);
    assert_eq!(
        (groups[1]["reason"].as_str(), groups[1]["count"].as_u64()),
        (Some("wasm trap at <hex>: unreachable"), Some(2))
    );
    assert!(groups[0]["oldest"].as_str() <= groups[0]["newest"].as_str());
    let group = groups[0]["group"].as_str().expect("group id").to_string();

    // A group replay replays exactly that group: the recorder handles those three only.
    let reply = post(&addr, "/api/dlq/rec/replay", OPERATOR, &serde_json::json!({ "group": group }).to_string()).await;
    assert_eq!((reply.status, reply.json()), (200, serde_json::json!({"replayed": 3})), "{}", reply.body);
    let records = env.records_at_least(3, Duration::from_secs(30)).await;
    let mut recorded: Vec<String> = records.iter().filter_map(|r| r["id"].as_str().map(String::from)).collect();
    let mut wanted: Vec<String> = missing.iter().map(|e| e.id.clone()).collect();
    recorded.sort();
    wanted.sort();
    assert_eq!(recorded, wanted);
    let left = get(&addr, "/api/dlq/rec", Some(VIEWER)).await.json();
    assert_eq!(left["total"], 2, "the other group stays: {left}");

    // Purge by filter from the API, replay a group from the CLI: both audited.
    let reply = post(&addr, "/api/dlq/rec/purge", OPERATOR, r#"{"type":"Refund"}"#).await;
    assert_eq!(reply.json(), serde_json::json!({"purged": 1}));
    let trap =
        get(&addr, "/api/dlq/rec/groups", Some(VIEWER)).await.json()[0]["group"].as_str().expect("id").to_string();
    let (ok, out, err) = cli(args(&["dlq", "replay", "--subscriber", "rec", "--group", &trap], &url)).await;
    assert!(ok && out.contains("replayed 1 dead letter(s)"), "{out}{err}");

    let audit = get(&addr, "/api/audit", Some(VIEWER)).await.json();
    let audit = audit.as_array().expect("array");
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert_eq!(
        (audit[2]["token"].as_str(), audit[2]["action"].as_str(), audit[2]["count"].as_u64()),
        (Some("alice"), Some("replay"), Some(3))
    );
    assert!(audit[2]["selection"].as_str().is_some_and(|s| s.contains(&group)), "{audit:?}");
    assert_eq!((audit[1]["action"].as_str(), audit[1]["count"].as_u64()), (Some("purge"), Some(1)));
    assert!(audit[1]["selection"].as_str().is_some_and(|s| s.contains("Refund")));
    assert!(audit[0]["token"].as_str().is_some_and(|t| t.starts_with("cli")), "{audit:?}");
    let (ok, out, err) = cli(args(&["audit"], &url)).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("alice") && out.contains("purge") && out.contains(&group) && out.contains("3 entries"),
        "{out}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_and_script_in_types_and_reasons_come_back_as_json_strings() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let mut conn = env.conn().await;
    let event_type = "<script>alert(1)</script>";
    let reason = "<img src=x onerror=alert(2)> \"quoted\" \u{1b}[2J";
    dead_letter(&mut conn, event_type, "handler-reject", reason, Some("</script><b>")).await;
    for path in ["/api/dlq/rec", "/api/dlq/rec/groups"] {
        let reply = get(&addr, path, Some(VIEWER)).await;
        assert_eq!(reply.status, 200);
        assert!(reply.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{}", reply.head);
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert!(!reply.body.contains('\u{1b}'), "control characters are escaped in JSON");
    }
    let list = get(&addr, "/api/dlq/rec", Some(VIEWER)).await.json();
    assert_eq!(list["dead_letters"][0]["event_type"], event_type);
    assert_eq!(list["dead_letters"][0]["reason"], reason);
    let filtered = get(&addr, "/api/dlq/rec?type=%3Cscript%3Ealert(1)%3C%2Fscript%3E", Some(VIEWER)).await.json();
    assert_eq!(filtered["total"], 1);
    let reply = post(&addr, "/api/dlq/rec/purge", OPERATOR, &serde_json::json!({ "reason": "<img" }).to_string()).await;
    assert_eq!(reply.json(), serde_json::json!({"purged": 1}));
    let (ok, out, _) = cli(args(&["audit"], &env.redis.url())).await;
    assert!(ok && out.contains("<img") && !out.contains('\u{1b}'), "{out:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_endpoint_refuses_to_start_without_tokens_and_on_loopback_it_stays_open() {
    let env = Env::new();
    let mut config = env.config();
    config.admin.listen = "0.0.0.0:0".into();
    let host = ferry::host::Host::start(config).await.expect("host");
    let err = ferry::admin::spawn(host.clone()).await.expect_err("no tokens off loopback");
    let text = format!("{err:#}");
    assert!(text.contains("not a loopback address") && text.contains("admin.tokens_file"), "{text}");
    host.stop_all().await;

    let mut config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let host = InProcessHost::start(config);
    env.wait_for("the admin endpoint", Duration::from_secs(20), || async {
        (get(&addr, "/healthz", None).await.status == 200).then_some(())
    })
    .await;
    let reply = get(&addr, "/api/dlq/rec", None).await;
    assert_eq!(reply.status, 200, "loopback without tokens stays open: {}", reply.body);
    let reply =
        request(&addr, "POST", "/api/dlq/rec/purge", &[("Origin", "http://evil.example")], r#"{"all":true}"#).await;
    assert_eq!(reply.status, 403, "even open, a cross-origin POST is refused");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_environment_work_and_a_failed_login_is_logged_without_the_token() {
    let env = Env::new();
    let mut config = env.config();
    let addr = free_addr();
    config.admin.listen = addr.clone();
    let tokens = format!("ops operator {OPERATOR},look viewer {VIEWER}");
    let mut host = crate::support::HostProcess::start_with(
        &config,
        env.cache.path(),
        "host",
        &[("FERRY_ADMIN_TOKENS".to_string(), tokens)],
    );
    env.wait_for("the admin endpoint", Duration::from_secs(30), || async {
        (get(&addr, "/healthz", None).await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(&addr, "/api/audit", None).await.status, 401);
    assert_eq!(get(&addr, "/api/audit", Some(VIEWER)).await.status, 200);
    assert_eq!(post(&addr, "/api/dlq/rec/purge", VIEWER, r#"{"all":true}"#).await.status, 403);
    assert_eq!(post(&addr, "/api/dlq/rec/purge", OPERATOR, r#"{"all":true}"#).await.status, 200);
    let guess = "guess-that-must-not-be-logged";
    let origin = format!("http://{addr}");
    let body = serde_json::json!({ "token": guess }).to_string();
    assert_eq!(request(&addr, "POST", "/api/login", &[("Origin", &origin)], &body).await.status, 401);
    let log = env
        .wait_for("the failed login in the log", Duration::from_secs(10), || async {
            let log = host.log();
            log.contains("failed login").then_some(log)
        })
        .await;
    assert!(log.contains("127.0.0.1"), "the client address is logged: {log}");
    assert!(!log.contains(guess) && !log.contains(OPERATOR) && !log.contains(VIEWER), "{log}");
    host.terminate();
}

/// Wait until `rec` has `n` dead letters; returns the listing.
async fn dead_letters(env: &Env, addr: &str, n: u64) -> Value {
    env.wait_for(&format!("{n} dead letter(s)"), Duration::from_secs(30), || async {
        let list = get(addr, "/api/dlq/rec", Some(VIEWER)).await.json();
        (list["total"] == n).then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_token_and_its_role() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    assert_eq!(
        get(&addr, "/api/whoami", Some(VIEWER)).await.json(),
        serde_json::json!({"name": "vera", "role": "viewer"})
    );
    assert_eq!(
        get(&addr, "/api/whoami", Some(OPERATOR)).await.json(),
        serde_json::json!({"name": "alice", "role": "operator"})
    );
    assert_eq!(get(&addr, "/api/whoami", None).await.status, 401);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_dead_letter_is_replayed_as_the_same_event_with_the_new_payload_and_the_edit_is_audited() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let mut conn = env.conn().await;
    let mut event = Event::new("OrderPlaced", "tests", r#"{"act":"reject","order":"<script>alert(1)</script>"}"#);
    event.subject = Some("order-1".into());
    event.correlationid = Some("corr-edit".into());
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    let list = dead_letters(&env, &addr, 1).await;
    let entry = list["dead_letters"][0]["id"].as_str().unwrap_or_else(|| panic!("entry id: {list}")).to_string();

    // The detail: every attribute, the payload pretty-printed, ferry's metadata, no edits.
    let detail = get(&addr, &format!("/api/dlq/rec/letters/{entry}"), Some(VIEWER)).await.json();
    assert_eq!(detail["entry_id"], entry.as_str());
    assert_eq!(detail["event"]["id"], event.id.as_str());
    assert_eq!(detail["event"]["subject"], "order-1");
    assert_eq!(detail["event"]["correlationid"], "corr-edit");
    assert!(detail["event"].get("data").is_none() && detail["event"].get("_reason").is_none(), "{detail}");
    assert_eq!(detail["payload"]["kind"], "json");
    assert!(detail["payload"]["text"].as_str().is_some_and(|t| t.contains("\n  \"act\": \"reject\"")), "{detail}");
    assert!(
        detail["payload"]["text"].as_str().is_some_and(|t| t.contains("<script>alert(1)</script>")),
        "producers' text comes back verbatim in a JSON string: {detail}"
    );
    assert_eq!(detail["meta"]["kind"], "handler-reject");
    assert_eq!(detail["meta"]["attempts"], 1);
    assert!(detail["meta"]["reason"].as_str().is_some_and(|r| r.contains("rejected on purpose")), "{detail}");
    assert!(detail["meta"]["plugin_version"].as_str().is_some_and(|v| !v.is_empty()), "{detail}");
    assert_eq!(detail["meta"]["host"], "console-host-1", "the host that dead-lettered it: {detail}");
    assert!(detail["meta"]["last_failure_ms"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000), "{detail}");
    assert_eq!(detail["edits"], serde_json::json!([]));
    assert_eq!(get(&addr, "/api/dlq/rec/letters/1-0", Some(VIEWER)).await.status, 404);
    assert_eq!(get(&addr, "/api/dlq/rec/letters/not-an-id", Some(VIEWER)).await.status, 404);

    let path = format!("/api/dlq/rec/letters/{entry}/edit");
    let still_failing = serde_json::json!({ "data": r#"{"act":"reject","try":2}"# }).to_string();
    assert_eq!(post(&addr, &path, VIEWER, &still_failing).await.status, 403, "a viewer cannot edit");
    let bearer = format!("Bearer {OPERATOR}");
    let foreign = [("Authorization", bearer.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(request(&addr, "POST", &path, &foreign, &still_failing).await.status, 403, "cross-origin");
    let reply = post(&addr, &path, OPERATOR, r#"{"attributes":{"id":"another"}}"#).await;
    assert_eq!(reply.status, 400, "the id stays: {}", reply.body);
    let reply = post(&addr, &path, OPERATOR, r#"{"attributes":{"time":"yesterday"}}"#).await;
    assert_eq!(reply.status, 400, "an invalid event is refused: {}", reply.body);
    assert_eq!(dead_letters(&env, &addr, 1).await["dead_letters"][0]["id"], entry.as_str(), "nothing moved");

    // A first edit that still fails: the event comes back dead, its detail lists the edit.
    let reply = post(&addr, &path, OPERATOR, &still_failing).await;
    assert_eq!((reply.status, reply.json()), (200, serde_json::json!({"replayed": 1, "fields": ["data"]})));
    assert_eq!(post(&addr, &path, OPERATOR, &still_failing).await.status, 404, "that dead letter is gone");
    let again = env
        .wait_for("the edited event dead again", Duration::from_secs(30), || async {
            let list = get(&addr, "/api/dlq/rec", Some(VIEWER)).await.json();
            let id = list["dead_letters"][0]["id"].as_str().filter(|id| *id != entry)?.to_string();
            Some(id)
        })
        .await;
    let detail = get(&addr, &format!("/api/dlq/rec/letters/{again}"), Some(VIEWER)).await.json();
    assert_eq!(detail["event"]["id"], event.id.as_str(), "the same event");
    assert!(detail["payload"]["text"].as_str().is_some_and(|t| t.contains("\"try\": 2")), "{detail}");
    assert_eq!(detail["edits"].as_array().map(Vec::len), Some(1), "{detail}");
    assert_eq!(
        (detail["edits"][0]["by"].as_str(), detail["edits"][0]["fields"].clone()),
        (Some("alice"), serde_json::json!(["data"]))
    );

    // The fix: the plugin handles the same event id with the new payload and subject.
    let fixed = serde_json::json!({
        "data": r#"{"act":"ok","note":"<img src=x onerror=alert(1)>"}"#,
        "attributes": {"subject": "order-1-fixed"},
    });
    let reply = post(&addr, &format!("/api/dlq/rec/letters/{again}/edit"), OPERATOR, &fixed.to_string()).await;
    assert_eq!(reply.json(), serde_json::json!({"replayed": 1, "fields": ["subject", "data"]}), "{}", reply.body);
    let records = env.records_at_least(1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], event.id.as_str(), "replayed as the same event id");
    assert_eq!(records[0]["subject"], "order-1-fixed");
    assert_eq!(records[0]["correlationid"], "corr-edit", "what the edit did not name stays");
    let data: Value = serde_json::from_str(records[0]["data"].as_str().expect("data")).expect("json");
    assert_eq!(data["note"], "<img src=x onerror=alert(1)>");
    assert_eq!(dead_letters(&env, &addr, 0).await["total"], 0);

    let audit = get(&addr, "/api/audit", Some(VIEWER)).await.json();
    assert_eq!(audit.as_array().map(Vec::len), Some(2), "{audit}");
    assert_eq!(
        (audit[0]["action"].as_str(), audit[0]["token"].as_str(), audit[0]["event_id"].as_str()),
        (Some("edit"), Some("alice"), Some(event.id.as_str()))
    );
    assert_eq!(audit[0]["fields"], serde_json::json!(["subject", "data"]));
    assert_eq!(audit[0]["count"], 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_a_thousand_replays_as_a_job_to_its_total_and_the_same_post_while_it_runs_gets_the_same_job() {
    let env = Env::new();
    env.add_plugin("bulk", fixtures::RECORDER, RECORDER_TOML);
    let (host, addr) = console_host(&env).await;
    let mut conn = env.conn().await;
    let mut pipe = redis::pipe();
    for n in 0..1000 {
        let event = Event::new("OrderPlaced", "tests", "{}");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(SubscriberKeys::new("events", "bulk").dlq).arg("*");
        event.write_fields(&mut cmd);
        cmd.arg("_reason").arg(format!("order {n} not found")).arg("_kind").arg("handler-reject");
        pipe.add_command(cmd).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.expect("XADD");
    let groups = get(&addr, "/api/dlq/bulk/groups", Some(VIEWER)).await.json();
    assert_eq!(groups[0]["count"], 1000, "{groups}");
    let body = serde_json::json!({ "group": groups[0]["group"] }).to_string();

    // The job stops after its first batch until `pause` is dropped: the second POST below
    // provably arrives while it runs.
    let pause = ferry::admin::jobs::pause_after_first_batch("bulk");
    assert_eq!(post(&addr, "/api/dlq/bulk/replay", VIEWER, &body).await.status, 403, "a viewer cannot start a job");
    let reply = post(&addr, "/api/dlq/bulk/replay", OPERATOR, &body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.json()["job"].as_str().expect("a job id").to_string();
    let path = format!("/api/jobs/{id}");
    let job = env
        .wait_for("the job's first batch", Duration::from_secs(30), || async {
            let job = get(&addr, &path, Some(VIEWER)).await.json();
            (job["done"].as_u64() > Some(0)).then_some(job)
        })
        .await;
    assert_eq!((job["state"].as_str(), job["total"].as_u64()), (Some("running"), Some(1000)), "{job}");
    assert_eq!(
        (job["action"].as_str(), job["subscriber"].as_str(), job["by"].as_str()),
        (Some("replay"), Some("bulk"), Some("alice"))
    );
    assert!(job["done"].as_u64() < Some(1000), "paused part way: {job}");
    let again = post(&addr, "/api/dlq/bulk/replay", OPERATOR, &body).await;
    assert_eq!((again.status, again.json()["job"].as_str()), (202, Some(id.as_str())), "the running job, not a second");
    let listed = get(&addr, "/api/jobs", Some(VIEWER)).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());

    drop(pause);
    let job = env
        .wait_for("the job's end", Duration::from_secs(60), || async {
            let job = get(&addr, &path, Some(VIEWER)).await.json();
            (job["state"] != "running").then_some(job)
        })
        .await;
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64(), job["total"].as_u64(), job["count"].as_u64()),
        (Some("done"), Some(1000), Some(1000), Some(1000)),
        "{job}"
    );
    assert!(job["finished_ms"].as_u64() >= job["started_ms"].as_u64(), "{job}");
    assert_eq!(get(&addr, "/api/dlq/bulk", Some(VIEWER)).await.json()["total"], 0);
    let records = env.records_at_least(1000, Duration::from_secs(60)).await;
    let handled = crate::support::by_subscriber(&records, "bulk");
    assert_eq!(crate::support::counts(&handled).len(), 1000, "each replayed event handled");
    let audit = get(&addr, "/api/audit", Some(VIEWER)).await.json();
    assert_eq!((audit[0]["action"].as_str(), audit[0]["count"].as_u64()), (Some("replay"), Some(1000)), "{audit}");

    // Once it ended, the same POST starts nothing (the group is empty) and answers at once;
    // `"job": true` makes even a small action a job.
    let reply = post(&addr, "/api/dlq/bulk/replay", OPERATOR, &body).await;
    assert_eq!((reply.status, reply.json()), (200, serde_json::json!({"replayed": 0})));
    dead_letter(&mut conn, "Refund", "trap", "boom", None).await;
    let reply = post(&addr, "/api/dlq/rec/purge", OPERATOR, r#"{"all": true, "job": true}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let path = format!("/api/jobs/{}", reply.json()["job"].as_str().expect("id"));
    let job = env
        .wait_for("the purge job's end", Duration::from_secs(30), || async {
            let job = get(&addr, &path, Some(VIEWER)).await.json();
            (job["state"] == "done").then_some(job)
        })
        .await;
    assert_eq!((job["action"].as_str(), job["count"].as_u64()), (Some("purge"), Some(1)), "{job}");
    assert_eq!(get(&addr, "/api/jobs/00ff", Some(VIEWER)).await.status, 404);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_by_correlation_returns_where_each_event_is_and_the_causation_tree_as_the_cli_does() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let mut conn = env.conn().await;
    let correlation = "corr-<b>find</b>";
    let mut handled = Event::new("OrderPlaced", "tests", r#"{"act":"ok"}"#);
    handled.correlationid = Some(correlation.into());
    ferry::outbox::publish(&mut conn, "events", &handled).await.expect("publish");
    let mut dead = Event::new("<script>alert(1)</script>", "tests", r#"{"act":"reject"}"#);
    dead.correlationid = Some(correlation.into());
    ferry::outbox::publish(&mut conn, "events", &dead).await.expect("publish");
    let records = env.records_at_least(1, Duration::from_secs(30)).await;
    dead_letters(&env, &addr, 1).await;

    let found = get(&addr, "/api/find?correlation=corr-%3Cb%3Efind%3C%2Fb%3E", Some(VIEWER)).await.json();
    let events = found["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "two roots: {found}");
    assert_eq!(found["truncated"], false, "every stream read whole: {found}");
    let (first, second) = (&events[0], &events[1]);
    assert_eq!((first["event_id"].as_str(), first["stream"].as_str()), (Some(handled.id.as_str()), Some("events")));
    assert_eq!(first["correlation"], correlation, "verbatim");
    assert_eq!(first["where"][0]["subscriber"], "rec");
    assert_eq!(first["where"][0]["status"], "handled", "{found}");
    let child = &first["children"][0];
    assert_eq!(first["children"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!((child["type"].as_str(), child["stream"].as_str()), (Some("Recorded"), Some("records")));
    assert_eq!(child["causation"], handled.id.as_str());
    assert_eq!(records[0]["id"], handled.id.as_str(), "the recorder's follow-up is of the handled event");
    assert_eq!(second["event_id"], dead.id.as_str());
    assert_eq!(second["type"], "<script>alert(1)</script>", "verbatim in a JSON string");
    assert_eq!(second["where"][0]["status"], "dead", "{found}");
    assert!(second["where"][0]["detail"].as_str().is_some_and(|d| d.contains("rejected on purpose")), "{found}");
    assert_eq!(second["children"], serde_json::json!([]));

    // By id: the event and what it caused; the CLI prints the same.
    let by_id = get(&addr, &format!("/api/find?id={}", handled.id), Some(VIEWER)).await.json();
    assert_eq!(by_id["events"].as_array().map(Vec::len), Some(1), "{by_id}");
    assert_eq!(by_id["events"][0], events[0]);
    let (ok, out, err) =
        cli(args(&["find", "--correlation", correlation, "--stream", "records", "--json"], &env.redis.url())).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json"), found);
    let (ok, out, _) = cli(args(&["find", "--id", &handled.id, "--stream", "records"], &env.redis.url())).await;
    assert!(ok && out.contains("rec: handled") && out.contains("Recorded"), "{out}");
    assert_eq!(get(&addr, "/api/find", Some(VIEWER)).await.status, 400);
    assert_eq!(get(&addr, "/api/find?id=nothing-like-it", Some(VIEWER)).await.json()["events"], serde_json::json!([]));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_has_a_row_per_subscriber_and_stream_and_a_history_sampled_from_the_metrics() {
    let env = Env::new();
    let (host, addr) = console_host(&env).await;
    let mut conn = env.conn().await;
    for _ in 0..5 {
        crate::support::publish(&mut conn, "events", "OrderPlaced", r#"{"act":"ok"}"#).await;
    }
    crate::support::publish(&mut conn, "events", "OrderPlaced", r#"{"act":"reject"}"#).await;
    dead_letters(&env, &addr, 1).await;
    // Points come every 10 s; the one after these runs counts them.
    let overview = env
        .wait_for("a history point with the runs", Duration::from_secs(45), || async {
            let overview = get(&addr, "/api/overview", Some(VIEWER)).await.json();
            let points = overview["history"].as_array()?.clone();
            let sum = |name: &str| points.iter().filter_map(|p| p[name].as_u64()).sum::<u64>();
            (sum("handled") == 5 && sum("dead_lettered") == 1).then_some(overview)
        })
        .await;
    let points = overview["history"].as_array().expect("points");
    let busy = points.iter().find(|p| p["handled"].as_u64() > Some(0)).expect("a busy point");
    assert!(busy["t"].as_u64().is_some_and(|t| t > 1_700_000_000), "{busy}");
    assert!(busy["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{busy}");
    assert!(busy["p99_ms"].as_f64() >= busy["p50_ms"].as_f64(), "{busy}");
    assert!(points.iter().map(|p| p["failed"].as_u64().unwrap_or(0)).sum::<u64>() >= 1, "the rejection: {points:?}");
    let rows = overview["subscribers"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{overview}");
    assert_eq!((rows[0]["subscriber"].as_str(), rows[0]["stream"].as_str()), (Some("rec"), Some("events")));
    assert_eq!((rows[0]["dead_letters"].as_u64(), rows[0]["pending"].as_u64()), (Some(1), Some(0)), "{overview}");
    assert!(rows[0]["consumers"].as_u64() >= Some(1), "{overview}");
    assert_eq!(rows[0]["consumer_list"].as_array().map(Vec::len), rows[0]["consumers"].as_u64().map(|n| n as usize));
    for key in ["lag", "retries_waiting", "held_keys"] {
        assert!(rows[0].get(key).is_some(), "{key}: {overview}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_show_their_grants_limits_last_reload_and_state_throttled_or_refused_with_the_reason() {
    let env = Env::new();
    std::fs::write(env.plugins.path().join("broken.wasm"), b"<script>not wasm</script>").expect("write");
    let (host, addr) = console_host(&env).await;
    let plugins = get(&addr, "/api/plugins", Some(VIEWER)).await.json();
    let by_name = |plugins: &Value, name: &str| {
        plugins.as_array().and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned()).unwrap_or(Value::Null)
    };
    let rec = by_name(&plugins, "rec");
    assert_eq!(rec["state"], "running", "{rec}");
    assert!(rec["version"].as_str().is_some_and(|v| !v.is_empty()), "{rec}");
    assert_eq!(rec["subscriptions"][0]["event_type"], "*");
    assert!(rec["last_reload_ms"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000), "{rec}");
    assert_eq!(rec["grants"]["publish_streams"], serde_json::json!(["records"]));
    assert_eq!(rec["grants"]["config"], serde_json::json!(["record_to"]), "config keys, never values: {rec}");
    assert!(!rec["grants"].to_string().contains("\"records\"}"), "{rec}");
    assert!(rec["limits"]["memory"].as_u64().is_some_and(|m| m > 0), "{rec}");
    assert!(rec["limits"].get("deadline").is_some() && rec["limits"]["retry"]["max_attempts"] == 3, "{rec}");
    let max = rec["limits"]["throttle"]["max"].as_u64().expect("throttle");
    assert_eq!(
        (rec["limits"]["concurrency"].as_u64(), rec["limits"]["throttle"]["limit"].as_u64()),
        (Some(max), Some(max))
    );
    let broken = by_name(&plugins, "broken");
    assert_eq!(broken["state"], "refused", "{plugins}");
    assert!(broken["reason"].as_str().is_some_and(|r| !r.is_empty()), "{broken}");

    // Traps (one event, three attempts) throttle the subscriber: its limit halves (down to
    // one) and, its last call having failed, its long calls pause.
    let mut conn = env.conn().await;
    crate::support::publish(&mut conn, "events", "OrderPlaced", r#"{"act":"panic"}"#).await;
    dead_letters(&env, &addr, 1).await;
    let rec = by_name(&get(&addr, "/api/plugins", Some(VIEWER)).await.json(), "rec");
    assert_eq!(rec["state"], "throttled", "{rec}");
    assert_eq!(rec["limits"]["throttle"]["penalized"], true, "{rec}");
    assert!(rec["limits"]["throttle"]["limit"].as_u64() <= Some(max.div_ceil(2)), "{rec}");
    assert!(rec["reason"].as_str().is_some_and(|r| r.contains(&format!("of {max} calls"))), "{rec}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_dlq_edit_replays_the_same_event_marked_edited_and_dlq_show_prints_the_payload() {
    let env = Env::new();
    let url = env.redis.url();
    let mut conn = env.conn().await;
    let event = dead_letter(&mut conn, "OrderPlaced", "handler-reject", "sku unknown", Some("corr-cli")).await;
    let keys = SubscriberKeys::new("events", "rec");
    let letters = ferry::consume::read::parse_entries(
        &keys.dlq,
        redis::cmd("XRANGE").arg(&keys.dlq).arg("-").arg("+").query_async(&mut conn).await.expect("XRANGE"),
    );
    let entry = letters[0].id.clone();
    let (ok, out, err) = cli(args(&["dlq", "show", &entry, "--subscriber", "rec"], &url)).await;
    assert!(ok && out.contains("payload (json, 2 bytes)"), "{out}{err}");

    let edit = ["dlq", "edit", &entry, "--subscriber", "rec", "--data", r#"{"sku":"A-1"}"#, "--set", "subject=fixed"];
    let (ok, out, err) = cli(args(&edit, &url)).await;
    assert!(ok && out.contains("changed: subject, data"), "{out}{err}");
    let (ok, _, err) = cli(args(&edit, &url)).await;
    assert!(!ok && err.contains("no dead letter"), "a second edit finds it gone: {err}");

    // No host runs: the replayed entry waits in the retry stream as the edit wrote it.
    let retry = ferry::consume::read::parse_entries(
        &keys.retry,
        redis::cmd("XRANGE").arg(&keys.retry).arg("-").arg("+").query_async(&mut conn).await.expect("XRANGE"),
    );
    assert_eq!(retry.len(), 1);
    let field = |name: &str| retry[0].field(name).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(field("id").as_deref(), Some(event.id.as_str()), "the same event id");
    assert_eq!(field("data").as_deref(), Some(r#"{"sku":"A-1"}"#));
    assert_eq!(field("subject").as_deref(), Some("fixed"));
    assert_eq!(field("correlationid").as_deref(), Some("corr-cli"));
    assert_eq!(field("_attempt").as_deref(), Some("1"));
    assert!(field("_replay").is_some() && field("_reason").is_none());
    let marker: Value = serde_json::from_str(&field("_edited").expect("the edited marker")).expect("json");
    assert!(marker["by"].as_str().is_some_and(|by| by.starts_with("cli")), "{marker}");
    assert_eq!(marker["fields"], serde_json::json!(["subject", "data"]));
    let (ok, out, _) = cli(args(&["audit"], &url)).await;
    assert!(ok && out.contains("edit") && out.contains(&event.id), "{out}");
}
