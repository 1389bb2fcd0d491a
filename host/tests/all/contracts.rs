//! Event contracts (issue 26): valid and invalid events on each path, the schema directory
//! reloaded with a breaking version, `ferry schemas check` and the generated documents.

use std::path::Path;
use std::time::Duration;

use ferry::config::Config;
use ferry::event::Event;
use ferry_test_fixtures as fixtures;
use serde_json::{Value, json};

use crate::support::{Env, RECORDER_TOML, ferry};

/// `OrderCreated@1`: an order id and a non-negative amount.
pub fn order_v1() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0}},
        "required": ["order_id", "amount"]
    })
}

/// Write `(type, version, schema)` files under `dir`.
pub fn write_schemas(dir: &Path, schemas: &[(&str, u32, Value)]) {
    for (t, v, doc) in schemas {
        std::fs::create_dir_all(dir.join(t)).expect("mkdir");
        std::fs::write(dir.join(t).join(format!("{v}.json")), serde_json::to_vec_pretty(doc).expect("json"))
            .expect("write schema");
    }
}

fn with_schemas(env: &Env, dir: &Path) -> Config {
    let mut config = env.config();
    config.schemas = Some(dir.to_path_buf());
    config
}

fn order(v: u32, data: Value) -> Event {
    let mut e = Event::new("OrderCreated", "tests", data.to_string());
    e.schemaversion = v;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_is_dead_lettered_before_dispatch_with_path_keyword_and_schema() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(with_schemas(&env, schemas.path())).await.expect("host");
    let mut conn = env.conn().await;
    let good = order(1, json!({"order_id": "o-1", "amount": 5}));
    let bad = order(1, json!({"order_id": "o-2", "amount": -5}));
    for e in [&good, &bad] {
        ferry::outbox::publish(&mut conn, "events", e).await.expect("publish");
    }
    env.settled("events", Duration::from_secs(30)).await;
    let recs = env.records_at_least(1, Duration::from_secs(10)).await;
    assert_eq!(recs.len(), 1, "only the valid event reached the handler: {recs:?}");
    assert_eq!(recs[0]["id"], good.id.as_str());
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].event_id.as_str(), letters[0].kind.as_str()), (bad.id.as_str(), "invalid-event"));
    let reason = &letters[0].reason;
    assert!(reason.contains("OrderCreated@1") && reason.contains("at /amount (minimum)"), "{reason}");

    // Replayed while still invalid: refused again on the replay path.
    let ids = ferry::dlq::Selection::Ids(vec![bad.id.clone()]);
    assert_eq!(ferry::dlq::replay(&mut conn, "rec", &ids, |_, _| {}).await.expect("replay"), 1);
    env.settled("events", Duration::from_secs(30)).await;
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 1, "dead-lettered again: {letters:?}");
    assert!(letters[0].reason.contains("at /amount (minimum)"));

    // The schema widened in place (a backward-compatible edit): the replay reaches the handler.
    let mut wider = order_v1();
    wider["properties"]["amount"] = json!({"type": "integer"});
    write_schemas(schemas.path(), &[("OrderCreated", 1, wider)]);
    host.context().contracts.as_ref().expect("registry").reload().expect("reloads");
    assert_eq!(ferry::dlq::replay(&mut conn, "rec", &ids, |_, _| {}).await.expect("replay"), 1);
    let recs = env.records_at_least(2, Duration::from_secs(30)).await;
    assert_eq!(recs[1]["id"], bad.id.as_str());
    host.stop_all().await;
}

/// On follow-ups: `publish.send` refuses one that breaks its type's contract and says why,
/// with the JSON path; the recorder passes the error on, so its event is retried and ends as a
/// dead letter whose reason carries it. Nothing invalid reaches the records stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_that_breaks_its_contract_is_refused_in_publish_send_with_its_path() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    // The recorder's follow-up (`Recorded`) has no `ticket`: this contract demands one.
    let recorded = json!({"type": "object", "required": ["ticket"]});
    write_schemas(schemas.path(), &[("Recorded", 1, recorded)]);
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(with_schemas(&env, schemas.path())).await.expect("host");
    let mut conn = env.conn().await;
    let sent = crate::support::publish(&mut conn, "events", "Any", "{}").await;
    let letter = env
        .wait_for("the dead letter of the event whose follow-up was refused", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move { ferry::dlq::list(&mut conn, Some("rec"), 10).await.ok()?.into_iter().next() }
        })
        .await;
    assert_eq!(letter.event_id, sent.id);
    assert!(
        letter.reason.contains("Recorded@1") && letter.reason.contains("ticket"),
        "the reason names the schema and the missing property: {}",
        letter.reason
    );
    let records: u64 = redis::cmd("XLEN").arg("records").query_async(&mut conn).await.expect("xlen");
    assert_eq!(records, 0, "no invalid follow-up was written");
    host.stop_all().await;
}

/// `ferry plugins invoke --schemas DIR` checks the event as a host would before dispatch.
#[test]
fn ferry_plugins_invoke_checks_the_event_against_its_contract() {
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"type": "OrderCreated", "data": {"order_id": "o-1", "amount": -1}}"#).expect("write");
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"type": "OrderCreated", "data": {"order_id": "o-1", "amount": 1}}"#).expect("write");
    let dir_arg = schemas.path().to_str().expect("utf-8 path");
    let invoke = |event: &Path| {
        ferry(&[
            "plugins",
            "invoke",
            fixtures::RECORDER,
            "--event",
            event.to_str().expect("utf-8"),
            "--schemas",
            dir_arg,
        ])
    };
    let (status, out, err) = invoke(&bad);
    assert!(!status.success(), "{out}{err}");
    assert!(out.contains("invalid-event") && out.contains("at /amount (minimum)"), "{out}{err}");
    let (status, out, err) = invoke(&good);
    assert!(status.success(), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_refuses_an_invalid_event_and_fills_dataschema() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let registry = ferry::contract::Registry::open(schemas.path(), Default::default()).expect("registry");
    let mut conn = env.conn().await;
    let replication = ferry::connection::Replication::PRIMARY;
    let mut bad = order(1, json!({"order_id": 7, "amount": 1}));
    let err = ferry::outbox::publish_checked(&mut conn, "events", &mut bad, replication, Some(&registry))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("at /order_id (type)"), "{err}");
    let mut good = order(1, json!({"order_id": "o", "amount": 1}));
    ferry::outbox::publish_checked(&mut conn, "events", &mut good, replication, Some(&registry))
        .await
        .expect("published");
    let len: u64 = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.expect("xlen");
    assert_eq!(len, 1, "only the valid event was written");
    let mut pipe = redis::pipe();
    let mut tx_bad = order(1, json!({}));
    assert!(ferry::outbox::add_checked(&mut pipe, "events", &mut tx_bad, Some(&registry)).is_err());
    assert_eq!(pipe.len(), 0, "nothing added to the transaction");
    assert_eq!(good.dataschema.as_deref(), Some("ferry://schemas/OrderCreated/1.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_publish_refuses_an_invalid_event_with_its_path() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let dir = schemas.path().to_str().expect("utf-8 path");
    let url = env.redis.url();
    let args =
        |data: &'static str| ["publish", "--redis", &url, "--schemas", dir, "--type", "OrderCreated", "--data", data];
    let (status, _, stderr) = ferry(&args(r#"{"order_id":"o"}"#));
    assert!(!status.success(), "refused");
    assert!(stderr.contains("required") && stderr.contains("OrderCreated@1"), "{stderr}");
    let (status, stdout, stderr) = ferry(&args(r#"{"order_id":"o","amount":2}"#));
    assert!(status.success(), "{stderr}");
    let mut conn = env.conn().await;
    let value: redis::Value =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let entries = ferry::consume::read::parse_entries("events", value);
    assert_eq!(entries.len(), 1);
    let event = Event::from_fields(&entries[0].fields).expect("event");
    assert_eq!(event.id, stdout.trim());
    assert_eq!(event.dataschema.as_deref(), Some("ferry://schemas/OrderCreated/1.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_directory_reloaded_with_a_breaking_version_is_refused_and_the_old_set_kept() {
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let registry =
        std::sync::Arc::new(ferry::contract::Registry::open(schemas.path(), Default::default()).expect("registry"));
    let _watcher = ferry::contract::watch::watch(registry.clone()).expect("watch").expect("a directory");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let until = |what: &str, done: &dyn Fn() -> bool| {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        !done()
    };
    // A v2 that requires a new property: old payloads are refused (not backward).
    let mut v2 = order_v1();
    v2["required"] = json!(["order_id", "amount", "currency"]);
    write_schemas(schemas.path(), &[("OrderCreated", 2, v2)]);
    while until("the refusal", &|| registry.refused().is_some()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = registry.refused().unwrap_or_default();
    assert!(reason.contains("OrderCreated@2") && reason.contains("currency"), "{reason}");
    assert!(registry.active().schema("OrderCreated", 2).is_none(), "the old set stays active");
    // A compatible v2 (an optional property without constraints... and a wider amount).
    let mut v2 = order_v1();
    v2["properties"]["amount"] = json!({"type": "number", "minimum": 0});
    write_schemas(schemas.path(), &[("OrderCreated", 2, v2)]);
    while until("the new set", &|| registry.active().schema("OrderCreated", 2).is_some()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registry.refused().is_none());
}

fn check(args: &[&str]) -> (bool, String) {
    let mut all = vec!["schemas", "check"];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = ferry(&all);
    (status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn ferry_schemas_check_prints_each_violation_with_its_path() {
    let schemas = tempfile::tempdir().expect("tempdir");
    let dir = schemas.path().to_str().expect("utf-8");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let (ok, out) = check(&["--dir", dir]);
    assert!(ok, "{out}");
    assert!(out.contains("OrderCreated: versions 1 (backward-transitive)"), "{out}");
    // v2 lowers nothing but narrows `amount` to at most 100: old payloads are refused.
    let mut v2 = order_v1();
    v2["properties"]["amount"]["maximum"] = json!(100);
    write_schemas(schemas.path(), &[("OrderCreated", 2, v2)]);
    let (ok, out) = check(&["--dir", dir]);
    assert!(!ok, "{out}");
    assert!(out.contains("violation: OrderCreated@2") && out.contains("/properties/amount/maximum"), "{out}");
}

#[test]
fn ferry_schemas_check_against_a_base_finds_versions_changed_in_place_or_removed() {
    let base = tempfile::tempdir().expect("tempdir");
    write_schemas(base.path(), &[("OrderCreated", 1, order_v1()), ("Gone", 1, json!({"type": "object"}))]);
    let now = tempfile::tempdir().expect("tempdir");
    let mut edited = order_v1();
    edited["required"] = json!(["order_id", "amount", "currency"]);
    write_schemas(now.path(), &[("OrderCreated", 1, edited)]);
    let (ok, out) =
        check(&["--dir", now.path().to_str().expect("utf-8"), "--base", base.path().to_str().expect("utf-8")]);
    assert!(!ok, "{out}");
    assert!(out.contains("OrderCreated@1 against the base") && out.contains("currency"), "{out}");
    assert!(out.contains("Gone@1 against the base") && out.contains("removed"), "{out}");
}

#[test]
fn ferry_schemas_check_reads_the_base_from_a_git_ref_and_lists_stale_subscribers() {
    let repo = tempfile::tempdir().expect("tempdir");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(repo.path()).args(args).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    let dir = repo.path().join("schemas");
    write_schemas(&dir, &[("OrderCreated", 1, order_v1())]);
    git(&["add", "."]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"]);
    let mut narrowed = order_v1();
    narrowed["properties"]["amount"]["maximum"] = json!(10);
    write_schemas(&dir, &[("OrderCreated", 1, narrowed)]);
    let config = repo.path().join("ferry.toml");
    let plugins = repo.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::fs::write(plugins.join("old.toml"), "subscriptions = [{ type = \"OrderCreated\", versions = [7] }]\n")
        .expect("write");
    std::fs::write(&config, format!("plugins = {:?}\nschemas = {:?}\n", plugins, dir)).expect("write config");
    let (ok, out) = check(&["--config", config.to_str().expect("utf-8"), "--base", "HEAD"]);
    assert!(!ok, "{out}");
    assert!(out.contains("OrderCreated@1 against the base") && out.contains("maximum"), "{out}");
    assert!(out.contains("subscriber `old` accepts OrderCreated versions 7"), "{out}");
}

/// `@asyncapi/parser`, pinned by `tests/asyncapi/package-lock.json`, installed with `npm ci`
/// into `target/asyncapi` (again when the lock changes); returns the validating script.
fn asyncapi_parser() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = root.join("tests/asyncapi");
    let target = root.join("target/asyncapi");
    std::fs::create_dir_all(&target).expect("mkdir target/asyncapi");
    let lock = std::fs::read(source.join("package-lock.json")).expect("the lock file");
    let installed = std::fs::read(target.join("package-lock.json")).ok();
    for file in ["package.json", "package-lock.json", "validate.mjs"] {
        std::fs::copy(source.join(file), target.join(file)).expect("copying the parser project");
    }
    if installed.as_deref() != Some(&lock[..]) || !target.join("node_modules/@asyncapi/parser").exists() {
        let out = std::process::Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(&target)
            .output()
            .expect("running npm (scripts/setup.sh installs node and npm)");
        assert!(out.status.success(), "npm ci: {}", String::from_utf8_lossy(&out.stderr));
    }
    target.join("validate.mjs")
}

#[test]
fn the_generated_asyncapi_document_is_valid_for_the_asyncapi_parser() {
    let root = tempfile::tempdir().expect("tempdir");
    let schemas = root.path().join("schemas");
    let money = json!({"type": "object", "properties": {"cents": {"type": "integer"}}, "required": ["cents"]});
    // v1 closed: v2's new optional properties are a backward-compatible change.
    let mut v1 = order_v1();
    v1["additionalProperties"] = json!(false);
    let mut v2 = v1.clone();
    v2["properties"]["total"] = json!({"$ref": "../Money/1.json"});
    v2["properties"]["lines"] = json!({"type": "array", "items": {"$ref": "#/$defs/line"}});
    v2["$defs"] = json!({"line": {"type": "object", "properties": {"sku": {"type": "string"}}}});
    v2["required"] = json!(["order_id"]);
    write_schemas(&schemas, &[("OrderCreated", 1, v1), ("OrderCreated", 2, v2), ("Money", 1, money)]);
    std::fs::write(
        schemas.join("OrderCreated/contract.toml"),
        "owner = \"orders team\"\ndescription = \"An order was placed.\"\ncompatibility = \"backward\"\n",
    )
    .expect("contract");
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::fs::write(
        plugins.join("billing.toml"),
        "subscriptions = [{ type = \"Order*\", versions = [2] }]\npublish_streams = [\"invoices\"]\n",
    )
    .expect("write");
    let config = root.path().join("ferry.toml");
    std::fs::write(&config, format!("plugins = {plugins:?}\nschemas = {schemas:?}\n")).expect("config");
    let out = root.path().join("docs");
    let (status, stdout, stderr) =
        ferry(&["schemas", "docs", "--config", config.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")]);
    assert!(status.success(), "{stdout}{stderr}");
    let file = out.join("asyncapi.json");
    let document: Value = serde_json::from_slice(&std::fs::read(&file).expect("written")).expect("json");
    assert_eq!(document["asyncapi"], "3.0.0");
    assert!(
        document["components"]["messages"]["OrderCreated.v2"]["payload"]["schema"]["properties"]["total"]["properties"]
            ["cents"]
            .is_object(),
        "refs inlined: {document}"
    );
    assert_eq!(
        document["operations"]["billing.receive.events.Order_"]["messages"].as_array().map(Vec::len),
        Some(1),
        "{document}"
    );
    assert_eq!(document["operations"]["billing.send.invoices"]["action"], "send");

    let script = asyncapi_parser();
    let run = std::process::Command::new("node").arg(&script).arg(&file).output().expect("running node");
    let said = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the parser refused the document:\n{said}\n{document:#}");
    assert!(said.contains("valid AsyncAPI 3.0.0"), "{said}");

    let page = std::fs::read_to_string(out.join("catalog/OrderCreated.md")).expect("catalog page");
    assert!(page.contains("orders team") && page.contains("### 1 → 2") && page.contains("billing"), "{page}");
    assert!(page.contains("(backward): yes"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_marks_a_row_its_contract_refuses_failed_and_relays_the_rest() {
    let env = Env::new();
    let pg = crate::pg::start().await;
    let client = crate::pg::client(&pg.url()).await;
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    let mut settings = crate::pg::settings(&pg, &env.redis.url());
    settings.contracts = Some(std::sync::Arc::new(
        ferry::contract::Registry::open(schemas.path(), Default::default()).expect("registry"),
    ));
    let relay = crate::pg::InProcessRelay::start(settings);
    let bad = crate::pg::insert_plain(&client, "OrderCreated", r#"{"order_id":"o","amount":-1}"#).await;
    let good = crate::pg::insert_plain(&client, "OrderCreated", r#"{"order_id":"o","amount":1}"#).await;
    let conn = env.conn().await;
    let events = env
        .wait_for("the valid row in the stream", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move {
                let events = crate::pg::stream_events(&mut conn, "events").await;
                (!events.is_empty()).then_some(events)
            }
        })
        .await;
    assert_eq!(events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![good.to_string()]);
    assert_eq!(events[0].dataschema.as_deref(), Some("ferry://schemas/OrderCreated/1.json"));
    let c = &client;
    let error: String = env
        .wait_for("the invalid row marked failed", Duration::from_secs(30), move || async move {
            let row = c
                .query_opt("SELECT error FROM ferry_outbox WHERE id = $1 AND failed_at IS NOT NULL", &[&bad])
                .await
                .ok()??;
            row.get(0)
        })
        .await;
    assert!(error.contains("OrderCreated@1") && error.contains("at /amount (minimum)"), "{error}");
    relay.stop().await;
}

/// `OrderPlaced` v1, v2 and v3 as the upcaster fixture converts them; v3 also requires what
/// `v3_requires` names (an empty list: nothing more).
fn order_placed(dir: &Path, v3_requires: &[&str]) {
    let v1 = json!({
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "cents": {"type": "integer"}},
        "required": ["order_id", "cents"]
    });
    let v2 = json!({
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "object", "required": ["cents"]}},
        "required": ["order_id", "amount"]
    });
    let mut required = vec!["order_id", "amount"];
    required.extend_from_slice(v3_requires);
    let v3 = json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "object", "required": ["cents", "currency"]}
        },
        "required": required
    });
    write_schemas(dir, &[("OrderPlaced", 1, v1), ("OrderPlaced", 2, v2), ("OrderPlaced", 3, v3)]);
    // Each version changes the payload's shape: no compatibility between them is claimed.
    std::fs::write(dir.join("OrderPlaced/contract.toml"), "compatibility = \"none\"\n").expect("contract.toml");
}

fn placed(v: u32, data: Value) -> Event {
    let mut e = Event::new("OrderPlaced", "tests", data.to_string());
    e.schemaversion = v;
    e
}

/// A recorder that accepts `OrderPlaced` at version 3 only.
fn v3_only() -> String {
    format!("subscriptions = [{{ type = \"OrderPlaced\", versions = [3] }}]\n{RECORDER_TOML}")
}

/// Upcasting on the live and retry paths, with a failing upcaster: a subscriber that accepts
/// only v3 gets v1 and v2 events converted along the upcaster's chain (v1 -> v2 -> v3),
/// checked against the v3 schema, while the stored entries stay as they were; a retried v1
/// event is converted again on its retry; a payload the upcaster refuses and one it traps on
/// are dead-lettered as `upcast-failed` with the reason, at once. The upcaster is added to its
/// directory while the host runs (hot reload), in a `ferry run` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upcaster_chain_converts_old_versions_live_and_on_retry_and_its_failures_are_dead_letters() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    order_placed(schemas.path(), &[]);
    let upcasters = tempfile::tempdir().expect("tempdir");
    env.add_plugin("rec", fixtures::RECORDER, &v3_only());
    let mut config = with_schemas(&env, schemas.path());
    config.upcasters = Some(upcasters.path().to_path_buf());
    config.watch = true;
    let dir = tempfile::tempdir().expect("tempdir");
    let host = crate::support::HostProcess::start(&config, dir.path(), "host");
    let mut conn = env.conn().await;
    // Without an upcaster a v1 event is not this subscriber's: skipped.
    let early = placed(1, json!({"order_id": "o-0", "cents": 1}));
    ferry::outbox::publish(&mut conn, "events", &early).await.expect("publish");
    env.settled_groups("events", &["rec"], Duration::from_secs(60)).await;
    std::fs::copy(fixtures::UPCASTER, upcasters.path().join("orders.wasm")).expect("copy the upcaster");
    env.wait_for("the upcaster to be loaded", Duration::from_secs(60), || {
        let log = host.log();
        async move { log.contains("upcasters reloaded").then_some(()) }
    })
    .await;
    let events = [
        placed(1, json!({"order_id": "o-1", "cents": 100})),
        placed(2, json!({"order_id": "o-2", "amount": {"cents": 200}})),
        placed(3, json!({"order_id": "o-3", "amount": {"cents": 300, "currency": "USD"}})),
        placed(1, json!({"order_id": "o-4", "cents": 400, "act": "retry", "until": 2})),
    ];
    let poison = placed(1, json!({"order_id": "o-5", "cents": 500, "poison": true}));
    let trap = placed(1, json!({"order_id": "o-6", "cents": 600, "trap": true}));
    for e in events.iter().chain([&poison, &trap]) {
        ferry::outbox::publish(&mut conn, "events", e).await.expect("publish");
    }
    env.records_at_least(4, Duration::from_secs(60)).await;
    env.settled_groups("events", &["rec"], Duration::from_secs(60)).await;
    let records = env.records_at_least(4, Duration::from_secs(10)).await;
    let by_order = |id: &str| {
        records
            .iter()
            .find(|r| {
                serde_json::from_str::<Value>(r["data"].as_str().unwrap_or("null"))
                    .ok()
                    .is_some_and(|d| d["order_id"] == id)
            })
            .unwrap_or_else(|| panic!("a record of {id}: {records:?}"))
    };
    for (id, cents, currency) in [("o-1", 100, "EUR"), ("o-2", 200, "EUR"), ("o-3", 300, "USD"), ("o-4", 400, "EUR")] {
        let r = by_order(id);
        assert_eq!(r["schemaversion"], 3, "{id} reached the handler as v3: {r}");
        let data: Value = serde_json::from_str(r["data"].as_str().unwrap_or("null")).expect("json data");
        assert_eq!(data["amount"], json!({"cents": cents, "currency": currency}), "{id}");
        assert!(data.get("cents").is_none(), "{id}: the v1 field moved");
    }
    assert_eq!(by_order("o-4")["attempt"], 2, "converted again on its retry");
    assert_eq!(records.len(), 4, "the early v1 event (no upcaster then) was skipped: {records:?}");
    // The stored entry is never rewritten.
    let stored: redis::Value =
        redis::cmd("XRANGE").arg("events").arg("-").arg("+").query_async(&mut conn).await.expect("xrange");
    let stored = ferry::consume::read::parse_entries("events", stored);
    let first = stored.iter().find(|e| e.field("id") == Some(events[0].id.as_bytes())).expect("stored v1");
    assert_eq!(first.field("data"), Some(events[0].data.as_slice()));
    assert_eq!(first.field("schemaversion"), Some(&b"1"[..]));
    // The upcaster's failures: dead letters with the reason, after one attempt.
    let letters = ferry::dlq::list(&mut conn, Some("rec"), 10).await.expect("dlq");
    assert_eq!(letters.len(), 2, "{letters:?}");
    let letter = |e: &Event| letters.iter().find(|l| l.event_id == e.id).unwrap_or_else(|| panic!("{letters:?}"));
    for (e, says) in [(&poison, "no amount in cents"), (&trap, "trap")] {
        let l = letter(e);
        assert_eq!((l.kind.as_str(), l.attempts.as_str()), ("upcast-failed", "1"), "{l:?}");
        assert!(l.reason.contains("OrderPlaced@1->2") && l.reason.contains(says), "{}", l.reason);
    }
    drop(host);
}

/// Upcasting on the replay path: the converted payload breaks the v3 schema (which demands a
/// `channel` no upcaster sets), so the event is dead-lettered as `upcast-failed`; once the v3
/// schema is fixed, replaying the dead letter converts it again and the handler gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_an_upcast_is_converted_again_when_replayed() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    order_placed(schemas.path(), &["channel"]);
    let upcasters = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures::UPCASTER, upcasters.path().join("orders.wasm")).expect("copy the upcaster");
    env.add_plugin("rec", fixtures::RECORDER, &v3_only());
    let mut config = with_schemas(&env, schemas.path());
    config.upcasters = Some(upcasters.path().to_path_buf());
    let host = ferry::host::Host::start(config).await.expect("host");
    let mut conn = env.conn().await;
    let event = placed(1, json!({"order_id": "o-1", "cents": 100}));
    ferry::outbox::publish(&mut conn, "events", &event).await.expect("publish");
    let letter = env
        .wait_for("the dead letter of the invalid upcast", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move { ferry::dlq::list(&mut conn, Some("rec"), 10).await.ok()?.into_iter().next() }
        })
        .await;
    assert_eq!((letter.event_id.as_str(), letter.kind.as_str()), (event.id.as_str(), "upcast-failed"));
    assert!(
        letter.reason.contains("upcast payload is invalid") && letter.reason.contains("channel"),
        "{}",
        letter.reason
    );
    order_placed(schemas.path(), &[]);
    host.context().contracts.as_ref().expect("registry").reload().expect("reloads");
    let ids = ferry::dlq::Selection::Ids(vec![event.id.clone()]);
    assert_eq!(ferry::dlq::replay(&mut conn, "rec", &ids, |_, _| {}).await.expect("replay"), 1);
    let records = env.records_at_least(1, Duration::from_secs(60)).await;
    assert_eq!((records[0]["id"].as_str(), records[0]["schemaversion"].as_u64()), (Some(event.id.as_str()), Some(3)));
    host.stop_all().await;
}

/// The admin endpoint serves the generated documents: the AsyncAPI document of the active
/// set with the running subscribers, each schema as written, and each type's catalog page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_the_asyncapi_document_schemas_and_catalog() {
    let env = Env::new();
    let schemas = tempfile::tempdir().expect("tempdir");
    write_schemas(schemas.path(), &[("OrderCreated", 1, order_v1())]);
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = with_schemas(&env, schemas.path());
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string();
    config.admin.listen = addr.clone();
    let host = crate::support::InProcessHost::start(config);
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move { ferry::status::http_get(&addr, path).await }
    };
    env.wait_for("the subscriber in /api/plugins", Duration::from_secs(30), || async {
        get("/api/plugins").await.ok().filter(|body| body.contains("\"rec\"")).map(|_| ())
    })
    .await;
    let document: Value = serde_json::from_str(&get("/api/asyncapi.json").await.expect("asyncapi")).expect("json");
    assert_eq!(document["asyncapi"], "3.0.0");
    assert!(document["components"]["messages"].to_string().contains("OrderCreated"), "{document}");
    assert!(document["operations"].to_string().contains("rec"), "the running subscriber: {document}");
    let schema: Value = serde_json::from_str(&get("/api/schemas/OrderCreated/1").await.expect("schema")).expect("json");
    assert_eq!(schema, order_v1());
    let missing = get("/api/schemas/OrderCreated/9").await.expect_err("no such version");
    assert!(missing.to_string().contains("404"), "{missing}");
    let page = get("/api/catalog/OrderCreated").await.expect("catalog");
    assert!(page.starts_with("# OrderCreated") && page.contains("rec"), "{page}");
    host.stop().await;
}
