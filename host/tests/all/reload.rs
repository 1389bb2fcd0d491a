//! Hot reload: swap under load, slow copies, broken versions, removal and return, changed
//! subscriptions, and the compiled-artifact cache.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_test_fixtures as fixtures;

use crate::support::{Env, InProcessHost, RECORDER_TOML, publish, records};

fn watched(env: &Env) -> ferry::config::Config {
    let mut config = env.config();
    config.watch = true;
    config
}

/// Deploy `fixture` as `dir/name.wasm` the safe way: write beside it, then rename.
fn deploy(dir: &Path, name: &str, fixture: &str) {
    let tmp = dir.join(format!(".{name}.upload"));
    std::fs::copy(fixture, &tmp).expect("copy");
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename");
}

async fn plugin_state(host: &ferry::host::Host, name: &str) -> Option<ferry::host::PluginStatus> {
    host.plugins().await.into_iter().find(|p| p.name == name)
}

/// A stream entry id as a comparable pair.
fn entry_pos(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("stream entry id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_load_handles_every_event_exactly_once_and_then_only_on_v2() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(watched(&env)).await.expect("host");
    let watcher = ferry::reload::watch(host.clone()).expect("watch");
    let v1 = plugin_state(&host, "rec").await.and_then(|p| p.version).expect("v1");
    let url = env.redis.url();
    // The producer publishes until it is told the swap happened, then 300 more: the overlap
    // is forced, whatever the speed of the machine or of the compiler.
    let (swapped_tx, mut swapped_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(async move {
        // A long response timeout: on a loaded machine a reply may take longer than the
        // client's default 500 ms, and a publish must not fail for that.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let client = redis::Client::open(url).expect("url");
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.expect("conn");
        let mut ids = Vec::new();
        let mut after = 0;
        let mut i = 0;
        while after < 300 {
            ids.push(publish(&mut conn, "events", "Load", &format!(r#"{{"i":{i}}}"#)).await.id);
            i += 1;
            if *swapped_rx.borrow_and_update() {
                after += 1;
            } else if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ids
    });
    env.records_at_least(100, Duration::from_secs(20)).await;
    deploy(env.plugins.path(), "rec", fixtures::RECORDER_V2);
    env.wait_for("v2 to be swapped in", Duration::from_secs(60), || async {
        plugin_state(&host, "rec").await.and_then(|p| p.version).filter(|v| *v != v1)
    })
    .await;
    swapped_tx.send(true).expect("producer alive");
    let sent = producer.await.expect("producer");
    let recs = env.records_at_least(sent.len(), Duration::from_secs(60)).await;
    env.settled("events", Duration::from_secs(20)).await;

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &recs {
        *seen.entry(r["id"].as_str().expect("id")).or_default() += 1;
    }
    assert!(sent.iter().all(|id| seen.get(id.as_str()) == Some(&1)), "every event exactly once");
    assert_eq!(recs.len(), sent.len(), "nothing else");
    // The first event (in stream order) that v2 handled cuts the stream in two: v1 before
    // it, v2 after it (events read before the swap may finish on v1, but none after).
    let pos = |r: &serde_json::Value| entry_pos(r["entry_id"].as_str().expect("entry id"));
    let first_v2 = recs.iter().filter(|r| r["mark"] == "v2").map(pos).min().expect("v2 took over");
    assert!(recs.iter().filter(|r| pos(r) >= first_v2).all(|r| r["mark"] == "v2"), "after v2's first, only v2");
    assert!(recs.iter().filter(|r| pos(r) < first_v2).all(|r| r["mark"] == "v1"));
    let on_v1 = recs.iter().filter(|r| r["mark"] == "v1").count();
    assert!(on_v1 >= 100 && recs.len() - on_v1 >= 300, "both versions served: {on_v1} on v1 of {}", recs.len());
    println!("swap under load: {on_v1} events on v1, {} on v2", recs.len() - on_v1);
    drop(watcher);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_copies_and_broken_versions_never_replace_a_running_version() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(watched(&env)).await.expect("host");
    let watcher = ferry::reload::watch(host.clone()).expect("watch");
    let version_v1 = plugin_state(&host, "rec").await.and_then(|p| p.version).expect("v1");
    let mut conn = env.conn().await;

    // A slow copy straight onto the live name: four chunks, pauses longer than the debounce.
    let bytes = std::fs::read(fixtures::RECORDER_V2).expect("read");
    let target = env.plugins.path().join("rec.wasm");
    let mut file = std::fs::File::create(&target).expect("create");
    for chunk in bytes.chunks(bytes.len() / 4 + 1) {
        file.write_all(chunk).expect("write");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // While partial, v1 keeps serving.
        let state = plugin_state(&host, "rec").await.expect("rec");
        assert_eq!(state.state, "running");
    }
    drop(file);
    let v2 = env
        .wait_for("v2 after the copy completed", Duration::from_secs(20), || async {
            let p = plugin_state(&host, "rec").await?;
            (p.version != Some(version_v1.clone()) && p.error.is_none()).then_some(p.version)
        })
        .await;
    publish(&mut conn, "events", "AfterCopy", "{}").await;
    let recs = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(recs[0]["mark"], "v2");

    // A broken version is refused with its reason; v2 keeps serving.
    let broken = env.plugins.path().join(".rec.broken");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0garbage").expect("write");
    std::fs::rename(&broken, &target).expect("rename");
    let refused = env
        .wait_for("the broken version to be refused", Duration::from_secs(20), || async {
            plugin_state(&host, "rec").await.and_then(|p| p.error)
        })
        .await;
    assert!(refused.contains("invalid component"), "{refused}");
    let state = plugin_state(&host, "rec").await.expect("rec");
    assert_eq!((state.state.as_str(), state.version), ("running", v2));
    publish(&mut conn, "events", "AfterBroken", "{}").await;
    let recs = env.records_at_least(2, Duration::from_secs(20)).await;
    assert_eq!(recs[1]["mark"], "v2", "the old version still serves");
    drop(watcher);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_plugin_keeps_its_group_and_its_events_wait_until_it_returns() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(watched(&env)).await.expect("host");
    let watcher = ferry::reload::watch(host.clone()).expect("watch");
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Before", "{}").await;
    env.records_at_least(1, Duration::from_secs(20)).await;

    std::fs::remove_file(env.plugins.path().join("rec.wasm")).expect("remove");
    env.wait_for("the subscriber to stop", Duration::from_secs(20), || async {
        plugin_state(&host, "rec").await.is_none().then_some(())
    })
    .await;
    let mut waiting = Vec::new();
    for i in 0..5 {
        waiting.push(publish(&mut conn, "events", "While", &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(records(&mut conn, "records").await.len(), 1, "nothing handled while removed");
    let groups = ferry::status::collect(&mut conn, &["events".to_string()]).await.expect("status");
    assert_eq!(groups[0].group, "rec", "the consumer group is kept");

    deploy(env.plugins.path(), "rec", fixtures::RECORDER);
    let recs = env.records_at_least(6, Duration::from_secs(20)).await;
    let handled: Vec<&str> = recs[1..].iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(handled, waiting.iter().map(String::as_str).collect::<Vec<_>>(), "the waiting events, in order");
    drop(watcher);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_config_changes_the_subscriptions_and_the_subscriber_follows() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(watched(&env)).await.expect("host");
    let watcher = ferry::reload::watch(host.clone()).expect("watch");
    let mut conn = env.conn().await;
    let toml = format!(
        "subscriptions = [{{ type = \"Moved\", stream = \"other\" }}]\nread_streams = [\"other\"]\n{RECORDER_TOML}"
    );
    let tmp = env.plugins.path().join(".rec.toml.new");
    std::fs::write(&tmp, toml).expect("write");
    std::fs::rename(&tmp, env.plugins.path().join("rec.toml")).expect("rename");
    env.wait_for("the new subscriptions", Duration::from_secs(20), || async {
        let p = plugin_state(&host, "rec").await?;
        (p.subscriptions.first()?.stream == "other").then_some(())
    })
    .await;
    let moved = publish(&mut conn, "other", "Moved", "{}").await;
    let recs = env.records_at_least(1, Duration::from_secs(20)).await;
    assert_eq!(recs[0]["id"], moved.id.as_str());
    assert_eq!(recs[0]["stream"], "other");
    drop(watcher);
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_artifact_cache_makes_a_restart_fast_and_a_corrupt_entry_is_rebuilt() {
    let cache_dir = tempfile::tempdir().expect("temp dir");
    let key_dir = tempfile::tempdir().expect("temp dir");
    let key = key_dir.path().join("cache.key");
    let cache = ferry::plugin::cache::Cache::open(cache_dir.path(), &key).expect("cache");
    let engine = ferry::plugin::Engine::new(&Default::default()).expect("engine");
    let path = Path::new(fixtures::RECORDER);
    let limits = ferry::config::LimitsConfig::default();
    let started = Instant::now();
    let cold = ferry::plugin::Plugin::load(&engine, path, Some(&cache), &limits).await.expect("cold");
    let cold_time = started.elapsed();
    let started = Instant::now();
    let warm = ferry::plugin::Plugin::load(&engine, path, Some(&cache), &limits).await.expect("warm");
    let warm_time = started.elapsed();
    assert!(!cold.cached && warm.cached);
    assert_eq!(cold.version, warm.version);
    assert_eq!(cold.declared, warm.declared, "equivalent");
    println!("artifact cache: cold {cold_time:?}, cached {warm_time:?}");

    // Corrupt the entry: detected by its checksum, removed, rebuilt.
    let entry = std::fs::read_dir(cache_dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("cache entry");
    let mut bytes = std::fs::read(&entry).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("write");
    let rebuilt = ferry::plugin::Plugin::load(&engine, path, Some(&cache), &limits).await.expect("rebuilt");
    assert!(!rebuilt.cached, "a corrupt entry is never trusted");
    let again = ferry::plugin::Plugin::load(&engine, path, Some(&cache), &limits).await.expect("again");
    assert!(again.cached, "the rebuilt entry is valid");

    // And a whole host on the same cache handles events.
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let mut config = env.config();
    config.cache_dir = Some(cache_dir.path().to_path_buf());
    config.cache_key = Some(key);
    let host = InProcessHost::start(config);
    let mut conn = env.conn().await;
    publish(&mut conn, "events", "Cached", "{}").await;
    env.records_at_least(1, Duration::from_secs(20)).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_plugin_file_never_reloads_it() {
    let env = Env::new();
    let path = env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let host = ferry::host::Host::start(watched(&env)).await.expect("host");
    let _watcher = ferry::reload::watch(host.clone()).expect("watch");
    assert_eq!(host.loads(), 1);
    let marker = async |name: &str| {
        deploy(env.plugins.path(), name, fixtures::NOOP);
        env.wait_for(&format!("{name} loaded"), Duration::from_secs(30), || async {
            plugin_state(&host, name).await.filter(|p| p.state == "running")
        })
        .await;
    };
    // What `cat`, `sha256sum` or a backup tool does: open, read, close.
    for _ in 0..20 {
        std::fs::read(&path).expect("read");
        std::fs::read(path.with_extension("toml")).expect("read");
    }
    // Loads are applied in order per batch of changes: two markers later, the reads are long
    // past the watcher.
    marker("marker-1").await;
    marker("marker-2").await;
    assert_eq!(host.loads(), 3, "the markers loaded; reading rec.wasm loaded nothing");
    // Writing the same bytes again is no change either.
    std::fs::write(&path, std::fs::read(&path).expect("read")).expect("write");
    marker("marker-3").await;
    marker("marker-4").await;
    assert_eq!(host.loads(), 5, "unchanged contents are not reloaded");
    host.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_log_lines_say_what_changed_refuse_once_and_confirm_a_fix() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = watched(&env);
    config.consumer = Some("reloader".into());
    let env_vars = [("FERRY_LOG".to_string(), "info,ferry::host=debug".to_string())];
    let host = crate::support::HostProcess::start_with(&config, dir.path(), "host", &env_vars);
    let wait_log = |what: &'static str, n: usize| {
        let host = &host;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let log = host.log();
                if log.lines().filter(|l| l.contains(what)).count() >= n {
                    return log;
                }
                assert!(Instant::now() < deadline, "no {n}× `{what}` in the log:\n{log}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_log("plugin loaded", 1).await;
    let toml = env.plugins.path().join("rec.toml");
    let changed = format!("concurrency = 3\n{RECORDER_TOML}");
    std::fs::write(&toml, &changed).expect("write");
    let log = wait_log("plugin settings changed", 1).await;
    let line = log.lines().find(|l| l.contains("plugin settings changed")).expect("line");
    assert!(line.contains("concurrency"), "the line names the setting: {line}");
    // A typo, saved twice: refused with one error line.
    let typo = format!("concurrenc = 3\n{RECORDER_TOML}");
    std::fs::write(&toml, &typo).expect("write");
    wait_log("refusing plugin", 1).await;
    std::fs::write(&toml, format!("{typo}\n")).expect("write");
    let log = wait_log("still refusing plugin", 1).await;
    let errors = log.lines().filter(|l| l.contains("ERROR") && l.contains("refusing plugin")).count();
    assert_eq!(errors, 1, "one error line per refusal:\n{log}");
    // The fix: back to the running settings, confirmed.
    std::fs::write(&toml, &changed).expect("write");
    wait_log("plugin files are valid again", 1).await;
    drop(host);
}
