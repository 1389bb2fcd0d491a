//! The security review's attacks (issue 23) that need a real guest: each one fails.
//! The others are unit tests beside the code they attack (`plugin::cache`, `plugin::invoke`,
//! `plugin::sandbox`, `config`); docs/security.md lists them all.

use std::path::Path;
use std::sync::Arc;

use ferry::config::{EngineConfig, LimitsConfig};
use ferry::event::Event;
use ferry::handler::{FailureKind, Invoke, Job, Outcome};
use ferry::plugin::capability::Grants;
use ferry::plugin::invoke::Runner;
use ferry::plugin::{Engine, Plugin};
use ferry_test_fixtures as fixtures;

/// A runner of the hostile fixture allowed to publish to `events`.
async fn hostile() -> Runner {
    let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
    let limits = LimitsConfig::default();
    let plugin = Plugin::load(&engine, Path::new(fixtures::HOSTILE), None, &limits).await.expect("load");
    let settings = ferry::config::SubscriberConfig {
        publish_streams: Some(vec!["events".into()]),
        limits: Some(limits),
        ..Default::default()
    }
    .fill();
    let grants = Arc::new(Grants::new("hostile", &plugin.version, &settings));
    Runner::with_concurrency(engine, plugin, grants, 1)
}

fn job(event: Event) -> Arc<Job> {
    Arc::new(Job { event, stream: "events".into(), entry_id: "1-0".into(), attempt: 1, prefetched: None })
}

fn act(act: &str) -> Event {
    Event::new("Hostile", "test", format!(r#"{{"act":"{act}"}}"#))
}

#[tokio::test]
async fn a_huge_retry_reason_is_cut_like_stderr() {
    let runner = hostile().await;
    match runner.handle(job(act("huge_reason"))).await {
        Outcome::Failed { kind: FailureKind::HandlerRetry, reason, .. } => {
            assert!(reason.len() <= 1100, "cut: {} bytes", reason.len());
            assert!(reason.contains("bytes cut"), "says so: {}", &reason[reason.len().saturating_sub(80)..]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn follow_ups_with_huge_fields_are_refused_and_never_held() {
    let runner = hostile().await;
    match runner.handle(job(act("huge_follow_ups"))).await {
        Outcome::Handled { effects } => {
            assert!(effects.follow_ups.is_empty(), "{} held", effects.follow_ups.len())
        }
        other => panic!("{other:?}"),
    }
}

/// A depth limit alone does not bound a plugin that re-emits what it handles twice: 2^32
/// events before the depth ends it. The causation budget does: every descendant of a
/// producer's event is counted against its budget, so the whole tree stays within
/// `CAUSATION_BUDGET` events, and the event whose follow-ups would exceed it is refused the
/// `send` (the SDK's `?` makes that a reject, so it is dead-lettered).
#[tokio::test]
async fn an_amplifying_tree_of_follow_ups_stays_within_the_causation_budget() {
    let runner = hostile().await;
    let mut queue = std::collections::VecDeque::from([act("amplify")]);
    let (mut handled, mut failed) = (0u64, 0u64);
    while let Some(event) = queue.pop_front() {
        assert!(handled <= u64::from(ferry::event::CAUSATION_BUDGET) + 1, "the tree grew past the budget");
        match runner.handle(job(event)).await {
            Outcome::Handled { effects } => {
                handled += 1;
                queue.extend(effects.follow_ups.into_iter().map(|f| f.event));
            }
            // The SDK turns the refused `send` into a reject: dead-lettered at once.
            Outcome::Failed { kind: FailureKind::HandlerReject, reason, .. } => {
                assert!(reason.contains("causation budget"), "{reason}");
                failed += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Every descendant ran or was refused; the root is not a descendant.
    assert!(handled - 1 + failed <= u64::from(ferry::event::CAUSATION_BUDGET), "{handled} handled, {failed} failed");
    assert!(failed > 0, "the leaves that wanted more were refused");
}

/// A plugin that re-emits what it handles once, to the stream it reads, loops forever; the
/// chain ends at the maximum causation depth (the `causationdepth` attribute ferry sets on
/// every follow-up), where the event past it is refused as invalid and so dead-lettered.
#[tokio::test]
async fn a_loop_of_follow_ups_is_dead_lettered_past_the_maximum_causation_depth() {
    let runner = hostile().await;
    let mut event = act("echo");
    let mut hops = 0;
    loop {
        assert!(hops <= ferry::event::MAX_CAUSATION_DEPTH + 1, "the chain went on past the maximum depth");
        match runner.handle(job(event.clone())).await {
            Outcome::Handled { effects } => {
                assert_eq!(effects.follow_ups.len(), 1);
                event = effects.follow_ups[0].event.clone();
                hops += 1;
            }
            Outcome::Failed { kind: FailureKind::InvalidEvent, reason, .. } => {
                assert!(reason.contains("causation depth"), "{reason}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // The producer's event (depth 0) and every follow-up up to the maximum depth ran.
    assert_eq!(hops, ferry::event::MAX_CAUSATION_DEPTH + 1, "every hop up to the maximum ran");
}

/// Reading a stream is a grant like publishing to one: a plugin (or its own file) naming
/// another team's stream is refused unless the operator lists it in `read_streams`; the
/// host's own stream needs no grant, and the number of streams is capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_another_stream_needs_a_grant_and_the_count_is_capped() {
    use crate::support::{Env, RECORDER_TOML};
    let env = Env::new();
    let sub = |stream: &str| format!("{{ type = \"*\", stream = \"{stream}\" }}");
    env.add_plugin("thief", fixtures::RECORDER, &format!("subscriptions = [{}]\n{RECORDER_TOML}", sub("payments")));
    let many: Vec<String> = (0..=ferry::host::MAX_STREAMS).map(|i| sub(&format!("s{i}"))).collect();
    let granted: Vec<String> = (0..=ferry::host::MAX_STREAMS).map(|i| format!("\"s{i}\"")).collect();
    env.add_plugin(
        "many",
        fixtures::RECORDER,
        &format!("subscriptions = [{}]\nread_streams = [{}]\n{RECORDER_TOML}", many.join(", "), granted.join(", ")),
    );
    env.add_plugin(
        "granted",
        fixtures::RECORDER,
        &format!(
            "subscriptions = [{}, {}]\nread_streams = [\"orders\"]\n{RECORDER_TOML}",
            sub("orders"),
            sub("events")
        ),
    );
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let plugins = host.plugins().await;
    let state = |name: &str| plugins.iter().find(|p| p.name == name).cloned().expect(name);
    let thief = state("thief");
    assert_eq!(thief.state, "refused");
    let error = thief.error.unwrap_or_default();
    assert!(error.contains("payments") && error.contains("read_streams"), "{error}");
    let many = state("many");
    assert_eq!(many.state, "refused");
    assert!(many.error.unwrap_or_default().contains("at most"), "capped");
    let granted = state("granted");
    assert_eq!(granted.state, "running", "{:?}", granted.error);
    assert_eq!(granted.subscriptions.len(), 2);
    host.stop_all().await;
}

/// Issue 23, item 9: passwords in Redis and PostgreSQL addresses never reach the terminal:
/// not in `--help` (clap shows environment values by default), not in connection errors.
#[test]
fn credentials_never_appear_in_help_or_errors() {
    use std::process::Command;
    let run = |args: &[&str]| {
        let out = Command::new(crate::support::ferry_bin())
            .args(args)
            .env("FERRY_LOG", "warn")
            .env("FERRY_CACHE_DIR", "")
            .env("FERRY_REDIS", "redis://ferry:hunter2@127.0.0.1:1")
            .env("FERRY_POSTGRES", "postgres://ferry:hunter2@127.0.0.1:1/db?password=hunter2")
            .output()
            .expect("running ferry");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    for args in [
        &["run", "--help"][..],
        &["status", "--help"],
        &["relay", "--help"],
        &["demo", "--help"],
        &["status"],
        &["status", "--redis", "redis://ferry:hunter2@127.0.0.1:1"],
        &["status", "--redis", "redis://ferry:hun/ter2@127.0.0.1:1"],
        &["status", "--cluster", "--redis", "redis://ferry:hunter2@127.0.0.1:1,redis://ferry:hunter2@127.0.0.1:2"],
        &["relay", "init"],
        &["relay", "init", "--postgres", "host=127.0.0.1 port=1 user=ferry password=hunter2"],
    ] {
        let out = run(args);
        assert!(!out.contains("hunter2") && !out.contains("ter2"), "ferry {args:?} showed the password:\n{out}");
    }
}

/// The same through the plugin's own `subscriptions()` export: 100,000 streams declared, even
/// all granted, are refused at load; the host and a neighbour run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_declaring_100000_streams_is_refused_and_the_host_runs_on() {
    use crate::support::{Env, RECORDER_TOML};
    let env = Env::new();
    env.add_plugin("streams", fixtures::HOSTILE_LOAD_STREAMS, RECORDER_TOML);
    env.add_plugin("good", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let plugins = host.plugins().await;
    let state = |name: &str| plugins.iter().find(|p| p.name == name).cloned().expect(name);
    let streams = state("streams");
    assert_eq!(streams.state, "refused");
    assert!(streams.error.unwrap_or_default().contains("at most"), "capped");
    assert_eq!(state("good").state, "running");
    host.stop_all().await;
}

/// Item 16, decided and documented (docs/security.md, "Known limits"): deduplication is by
/// event `id` alone, so unique ids are the producers' duty. This pins the decision: an event
/// whose id was handled is skipped (and counted) whichever producer (`source`) wrote it, and
/// ids from `ferry::outbox` (UUID v7) never collide between producers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_a_handled_id_is_skipped_whichever_producer_wrote_it() {
    use std::time::Duration;

    use crate::support::{Env, RECORDER_TOML};

    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let mut conn = env.conn().await;
    let billing = Event::new("Charged", "billing", "{}");
    ferry::outbox::publish(&mut conn, "events", &billing).await.expect("publish");
    env.records_at_least(1, Duration::from_secs(20)).await;
    let mut shipping = Event::new("Shipped", "shipping", "{}");
    shipping.id = billing.id.clone();
    ferry::outbox::publish(&mut conn, "events", &shipping).await.expect("publish the same id");
    let other = Event::new("Shipped", "shipping", "{}");
    assert_ne!(other.id, billing.id, "the outbox's ids are unique across producers");
    ferry::outbox::publish(&mut conn, "events", &other).await.expect("publish");
    let records = env.records_at_least(2, Duration::from_secs(20)).await;
    env.settled("events", Duration::from_secs(20)).await;
    let types: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(types, ["Charged", "Shipped"], "the second producer's reuse of the id was skipped: {records:?}");
    assert_eq!(records[1]["id"], other.id.as_str());
    assert_eq!(ferry::metrics::count(&host.context().metrics.deduplicated, "rec"), 1);
    host.stop_all().await;
}

/// A runner of the recorder as subscriber `name`, granted the `records` stream and `config`
/// (with `record_to = "records"`, where it writes what it saw).
async fn recorder(name: &str, config: &[(&str, &str)]) -> Runner {
    let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
    let limits = LimitsConfig::default();
    let plugin = Plugin::load(&engine, Path::new(fixtures::RECORDER), None, &limits).await.expect("load");
    let mut values: std::collections::BTreeMap<String, String> =
        config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    values.insert("record_to".into(), "records".into());
    let settings = ferry::config::SubscriberConfig {
        publish_streams: Some(vec!["records".into()]),
        config: Some(values),
        limits: Some(limits),
        ..Default::default()
    }
    .fill();
    let grants = Arc::new(Grants::new(name, &plugin.version, &settings));
    Runner::with_concurrency(engine, plugin, grants, 1)
}

/// What the recorder noted (a JSON object) handling an event with payload `data`.
async fn note(runner: &Runner, data: String) -> serde_json::Value {
    match runner.handle(job(Event::new("Probe", "test", data))).await {
        Outcome::Handled { effects } => {
            let record: serde_json::Value =
                serde_json::from_slice(&effects.follow_ups[0].event.data).expect("a JSON record");
            let note = record["note"].as_str().expect("a note");
            serde_json::from_str(note).unwrap_or_else(|e| panic!("a JSON note ({e}): {note}"))
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 23, "checked and sound": a guest finds nothing the operator did not grant. No
/// arguments, no environment, stdin at its end, no file under any path a preopened directory
/// would be mounted at; a UDP socket, a name lookup and a TCP connection (to a port that
/// listens) are all refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_finds_no_arguments_environment_stdin_preopens_sockets_or_name_lookup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let runner = recorder("ambient", &[]).await;
    let found = note(&runner, format!(r#"{{"act":"ambient","port":{port}}}"#)).await;
    assert_eq!(found["args"], serde_json::json!([]), "no arguments: {found}");
    assert_eq!(found["env"], serde_json::json!([]), "no environment: {found}");
    assert_eq!(found["stdin"], "0 bytes", "stdin is empty and closed: {found}");
    assert_eq!(found["paths"], serde_json::json!([]), "no preopened directory: {found}");
    for probe in ["udp", "dns", "tcp"] {
        let outcome = found[probe].as_str().unwrap_or_default();
        assert!(outcome.starts_with("denied"), "{probe} must be refused: {found}");
    }
}

/// Issue 23, "checked and sound": a plugin reads only the config values granted to its own
/// subscriber. The same plugin as another subscriber, beside it, finds the first one's secret
/// absent, exactly like a key nobody set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reads_only_the_config_values_granted_to_its_own_subscriber() {
    let owner = recorder("owner", &[("secret", "owners-secret"), ("region", "eu")]).await;
    let other = recorder("other", &[("region", "us")]).await;
    let ask = r#"{"act":"config","keys":["secret","region","record_to","unset"]}"#;
    assert_eq!(
        note(&owner, ask.to_string()).await,
        serde_json::json!({"secret": "owners-secret", "region": "eu", "record_to": "records"})
    );
    assert_eq!(
        note(&other, ask.to_string()).await,
        serde_json::json!({"region": "us", "record_to": "records"}),
        "the other subscriber's secret reads as absent"
    );
    // And the first one still reads its own (nothing the second was granted leaks back).
    assert_eq!(note(&owner, ask.to_string()).await["region"], "eu");
}

/// Issue 23, "checked and sound": a stream name with a brace, `#` or a control character is
/// refused wherever it is named, granted or not: as the host's own `stream`, in a plugin's
/// subscriptions (listed in `read_streams` all the same), and in `publish.send` to a stream
/// in `publish_streams`. The rule itself: `keys::tests::stream_names_with_braces_hash_spaces_or_control_characters_are_refused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_with_a_brace_hash_or_control_character_is_refused_wherever_it_is_named() {
    use crate::support::{Env, RECORDER_TOML};
    for stream in ["ev{x}", "ev#1", "ev\u{1b}[2J"] {
        let engine = Engine::new(&EngineConfig { pooling: false, ..EngineConfig::default() }).expect("engine");
        let limits = LimitsConfig::default();
        let plugin = Plugin::load(&engine, Path::new(fixtures::RECORDER), None, &limits).await.expect("load");
        let settings = ferry::config::SubscriberConfig {
            publish_streams: Some(vec![stream.into()]),
            config: Some([("follow_to".to_string(), stream.to_string())].into()),
            limits: Some(limits),
            ..Default::default()
        }
        .fill();
        let grants = Arc::new(Grants::new("sender", &plugin.version, &settings));
        let runner = Runner::with_concurrency(engine, plugin, grants, 1);
        match runner.handle(job(Event::new("Probe", "test", r#"{"act":"follow"}"#))).await {
            Outcome::Failed { kind: FailureKind::HandlerReject, reason, .. } => {
                assert!(reason.contains("must not contain braces"), "{stream:?}: {reason}")
            }
            other => panic!("publishing to {stream:?} was not refused: {other:?}"),
        }
    }

    let env = Env::new();
    for (i, stream) in ["ev{x}", "ev#1"].into_iter().enumerate() {
        let name = format!("reader{i}");
        let toml = format!(
            "subscriptions = [{{ type = \"*\", stream = \"{stream}\" }}]\nread_streams = [\"{stream}\"]\n{RECORDER_TOML}"
        );
        env.add_plugin(&name, fixtures::RECORDER, &toml);
    }
    let host = ferry::host::Host::start(env.config()).await.expect("host");
    let plugins = host.plugins().await;
    assert_eq!(plugins.len(), 2);
    for plugin in plugins {
        assert_eq!(plugin.state, "refused", "{}", plugin.name);
        let error = plugin.error.unwrap_or_default();
        assert!(error.contains("must not contain braces"), "{}: {error}", plugin.name);
    }
    host.stop_all().await;

    for stream in ["ev{x}", "ev#1", "ev\u{1b}[2J"] {
        let mut config = env.config();
        config.stream = stream.into();
        let Err(e) = ferry::host::Host::start(config).await else { panic!("a host on {stream:?} started") };
        assert!(format!("{e:#}").contains("must not contain braces"), "{stream:?}: {e:#}");
    }
}
