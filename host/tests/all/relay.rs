//! The PostgreSQL outbox relay against a real PostgreSQL and Redis: what arrives, what never
//! does, the late-committing transaction, failed rows, takeover, and the chaos run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry::event::Event;
use ferry_test_fixtures as fixtures;
use serde_json::Value;

use crate::pg::{self, InProcessRelay, RelayProcess, stream_events};
use crate::support::{Env, InProcessHost, RECORDER_TOML, by_subscriber, ferry};

fn json(data: &[u8]) -> Value {
    serde_json::from_slice(data).expect("JSON payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_arrive_with_their_ids_and_attributes_and_rolled_back_rows_never() {
    let env = Env::new();
    let pg = pg::start().await;
    let mut client = pg::client(&pg.url()).await;
    let relay = InProcessRelay::start(pg::settings(&pg, &env.redis.url()));

    // The producer API, every attribute set, inside a transaction with a business write.
    client.batch_execute("CREATE TABLE orders (id text PRIMARY KEY)").await.expect("orders table");
    let mut full = Event::new("OrderCreated", "orders", r#"{"order_id":"o-1","lines":[1,2]}"#);
    full.schemaversion = 3;
    full.subject = Some("order/o-1".into());
    full.dataschema = Some("https://example.invalid/order.json".into());
    full.correlationid = Some("corr-1".into());
    full.causationid = Some("cause-1".into());
    full.partitionkey = Some("o-1".into());
    full.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES ('o-1')", &[]).await.expect("order");
    ferry::outbox::postgres::add(&tx, &full).await.expect("add");
    tx.commit().await.expect("commit");

    // A payload that is not JSON, to another stream.
    let mut text = Event::new("Note", "notes", "plain words, not JSON");
    text.datacontenttype = "text/plain".into();
    ferry::outbox::postgres::add_to(&client, &ferry::relay::Table::default(), Some("notes"), &text)
        .await
        .expect("add text");

    // A transaction that rolls back, then a plain INSERT committed after it.
    let rolled_back = Event::new("Phantom", "orders", "{}");
    let tx = client.transaction().await.expect("begin");
    ferry::outbox::postgres::add(&tx, &rolled_back).await.expect("add");
    tx.rollback().await.expect("rollback");
    let plain = pg::insert_plain(&client, "Plain", r#"{"n": 1}"#).await;

    let conn = env.conn().await;
    let events = env
        .wait_for("the plain row in the stream", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move {
                let events = stream_events(&mut conn, "events").await;
                events.iter().any(|e| e.id == plain.to_string()).then_some(events)
            }
        })
        .await;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![full.id.as_str(), plain.to_string().as_str()], "in commit order; the rolled-back row never");

    let got = &events[0];
    assert_eq!(got.event_type, full.event_type);
    assert_eq!(got.source, full.source);
    assert_eq!(got.time, full.time);
    assert_eq!(got.schemaversion, 3);
    assert_eq!(got.datacontenttype, full.datacontenttype);
    assert_eq!(got.subject, full.subject);
    assert_eq!(got.dataschema, full.dataschema);
    assert_eq!(got.correlationid, full.correlationid);
    assert_eq!(got.causationid, full.causationid);
    assert_eq!(got.partitionkey, full.partitionkey);
    assert_eq!(got.traceparent, full.traceparent);
    assert_eq!(json(&got.data), json(&full.data));
    let plain_event = &events[1];
    assert_eq!((plain_event.schemaversion, plain_event.datacontenttype.as_str()), (1, "application/json"));
    assert_eq!(json(&plain_event.data), serde_json::json!({"n": 1}));

    let notes = env
        .wait_for("the text row in its stream", Duration::from_secs(30), || {
            let mut conn = conn.clone();
            async move { Some(stream_events(&mut conn, "notes").await).filter(|e| !e.is_empty()) }
        })
        .await;
    assert_eq!(notes[0].id, text.id);
    assert_eq!(notes[0].data, b"plain words, not JSON");

    // Rows are marked once Redis confirmed, so the mark may trail the entry a little.
    let (c, metrics) = (&client, &relay.metrics);
    env.wait_for("every committed row marked published and counted", Duration::from_secs(30), move || async move {
        let row = c
            .query_one("SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) FROM ferry_outbox", &[])
            .await
            .ok()?;
        let (published, all): (i64, i64) = (row.get(0), row.get(1));
        let counted = metrics.render().contains("ferry_relay_rows_relayed_total{table=\"ferry_outbox\"} 3");
        // 3 rows in all: the rolled-back one never existed.
        (published == 3 && all == 3 && counted).then_some(())
    })
    .await;
    let (status, out, err) = ferry(&["relay", "status", "--postgres", &pg.url(), "--json"]);
    assert!(status.success(), "{err}");
    let table: Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!((table["backlog"].as_i64(), table["failed"].as_i64()), (Some(0), Some(0)), "{table}");
    assert_eq!(table["active_relay"], format!("ferry relay {} at 127.0.0.1", std::process::id()), "{table}");

    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let env = Env::new();
    let pg = pg::start().await;
    let mut early = pg::client(&pg.url()).await;
    let mut late = pg::client(&pg.url()).await;
    let relay = InProcessRelay::start(pg::settings(&pg, &env.redis.url()));

    // `early` takes its transaction id first; `late` inserts first (lower seq) but commits
    // after `early`'s row, with its higher seq, was relayed: a poller that remembers the
    // highest seq it relayed would skip `late`'s row for ever.
    let early_tx = early.transaction().await.expect("begin");
    early_tx.query_one("SELECT pg_current_xact_id()", &[]).await.expect("xid");
    let late_tx = late.transaction().await.expect("begin");
    let late_event = Event::new("Late", "tests", "{}");
    ferry::outbox::postgres::add(&late_tx, &late_event).await.expect("add late");
    let early_event = Event::new("Early", "tests", "{}");
    ferry::outbox::postgres::add(&early_tx, &early_event).await.expect("add early");
    early_tx.commit().await.expect("commit early");

    let mut conn = env.conn().await;
    let early_id = early_event.id.clone();
    env.wait_for("the early row in the stream", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let id = early_id.clone();
        async move { stream_events(&mut conn, "events").await.iter().any(|e| e.id == id).then_some(()) }
    })
    .await;
    let seq_of = "SELECT seq FROM ferry_outbox WHERE type = $1";
    let late_seq: i64 = late_tx.query_one(seq_of, &[&"Late"]).await.expect("late seq").get(0);
    let early_seq: i64 = late_tx.query_one(seq_of, &[&"Early"]).await.expect("early seq").get(0);
    assert!(late_seq < early_seq, "the late row has the lower seq ({late_seq} vs {early_seq})");
    assert!(
        !stream_events(&mut conn, "events").await.iter().any(|e| e.id == late_event.id),
        "an uncommitted row is never relayed"
    );

    late_tx.commit().await.expect("commit late");
    let late_id = late_event.id.clone();
    env.wait_for("the late row in the stream", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let id = late_id.clone();
        async move { stream_events(&mut conn, "events").await.iter().any(|e| e.id == id).then_some(()) }
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_marked_failed_with_the_reason_and_the_rows_behind_them_flow() {
    let env = Env::new();
    let pg = pg::start().await;
    let client = pg::client(&pg.url()).await;
    let relay = InProcessRelay::start(pg::settings(&pg, &env.redis.url()));

    let first = pg::insert_plain(&client, "First", "{}").await;
    let c = &client;
    let insert = move |sql: &'static str| {
        let client = c;
        async move {
            let id = uuid::Uuid::now_v7();
            client.execute(sql, &[&id]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            id
        }
    };
    let bad_stream =
        insert("INSERT INTO ferry_outbox (id, type, source, data, stream) VALUES ($1, 'T', 's', '{}', 'a{b}')").await;
    let own_key =
        insert("INSERT INTO ferry_outbox (id, type, source, data, stream) VALUES ($1, 'T', 's', '{}', 'ferry:x')")
            .await;
    let empty_type = insert("INSERT INTO ferry_outbox (id, type, source, data) VALUES ($1, '', 's', '{}')").await;
    let bad_version =
        insert("INSERT INTO ferry_outbox (id, type, source, data, schemaversion) VALUES ($1, 'T', 's', '{}', -1)")
            .await;
    let bad_json =
        insert("INSERT INTO ferry_outbox (id, type, source, data_binary) VALUES ($1, 'T', 's', 'not json'::bytea)")
            .await;
    let both = insert(
        "INSERT INTO ferry_outbox (id, type, source, data, data_binary, datacontenttype) \
         VALUES ($1, 'T', 's', '{}', 'x'::bytea, 'text/plain')",
    )
    .await;
    let last = pg::insert_plain(&client, "Last", "{}").await;

    let mut conn = env.conn().await;
    env.wait_for("the last row in the stream", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            let events = stream_events(&mut conn, "events").await;
            events.iter().any(|e| e.id == last.to_string()).then_some(())
        }
    })
    .await;
    let ids: Vec<String> = stream_events(&mut conn, "events").await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![first.to_string(), last.to_string()], "only the valid rows are published");

    let failed: HashMap<uuid::Uuid, (String, i32)> = env
        .wait_for("the invalid rows marked failed", Duration::from_secs(30), move || async move {
            let failed: HashMap<uuid::Uuid, (String, i32)> = c
                .query("SELECT id, error, attempts FROM ferry_outbox WHERE failed_at IS NOT NULL", &[])
                .await
                .ok()?
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect();
            (failed.len() >= 6).then_some(failed)
        })
        .await;
    let expect = [
        (bad_stream, "braces"),
        (own_key, "ferry's own keys"),
        (empty_type, "`type`"),
        (bad_version, "schemaversion"),
        (bad_json, "not valid JSON"),
        (both, "both data and data_binary"),
    ];
    assert_eq!(failed.len(), expect.len(), "{failed:?}");
    for (id, reason) in expect {
        let (error, attempts) = &failed[&id];
        assert!(error.contains(reason), "{id}: `{error}` should mention {reason}");
        assert_eq!(*attempts, 1);
    }

    // The CLI lists them; fix one row and re-queue it.
    let url = pg.url();
    let (status, out, err) = ferry(&["relay", "failed", "--postgres", &url]);
    assert!(status.success(), "{err}");
    assert!(out.contains(&bad_stream.to_string()) && out.contains("6 failed row(s)"), "{out}");
    let (status, out, err) = ferry(&["relay", "failed", "--postgres", &url, "--json"]);
    assert!(status.success(), "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).expect("JSON list");
    assert_eq!(listed.len(), 6);

    client.execute("UPDATE ferry_outbox SET stream = 'events' WHERE id = $1", &[&bad_stream]).await.expect("fix");
    let (status, out, err) = ferry(&["relay", "retry", "--postgres", &url, &bad_stream.to_string()]);
    assert!(status.success() && out.contains("re-queued 1 row"), "{out}{err}");
    env.wait_for("the fixed row in the stream", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            stream_events(&mut conn, "events").await.iter().any(|e| e.id == bad_stream.to_string()).then_some(())
        }
    })
    .await;

    // Retrying every row without fixing them fails them again, one attempt more.
    let (status, out, err) = ferry(&["relay", "retry", "--postgres", &url, "--all"]);
    assert!(status.success() && out.contains("re-queued 5 row"), "{out}{err}");
    env.wait_for("the unfixed rows to fail again", Duration::from_secs(60), move || {
        let client = c;
        async move {
            let row = client
                .query_one("SELECT count(*) FROM ferry_outbox WHERE failed_at IS NOT NULL AND attempts = 2", &[])
                .await
                .ok()?;
            (row.get::<_, i64>(0) == 5).then_some(())
        }
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_init_print_is_the_schema_and_init_is_idempotent() {
    let pg = pg::start().await;
    let (status, out, err) = ferry(&["relay", "init", "--print", "--table", "app.outbox"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("CREATE TABLE IF NOT EXISTS app.outbox"), "{out}");
    let client = pg::client(&pg.url()).await;
    client.batch_execute("CREATE SCHEMA app").await.expect("schema");
    client.batch_execute(&out).await.expect("the printed SQL runs as it is");
    let url = pg.url();
    for _ in 0..2 {
        let (status, out, err) = ferry(&["relay", "init", "--postgres", &url, "--table", "app.outbox"]);
        assert!(status.success(), "{out}{err}");
    }
    let (status, _, err) = ferry(&["relay", "init", "--print", "--table", "Bad-Name"]);
    assert!(!status.success() && err.contains("invalid outbox table name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_relays_the_outbox_when_configured_and_the_subscriber_handles_it() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, RECORDER_TOML);
    let pg = pg::start().await;
    let mut config = env.config();
    config.relay = Some(ferry::config::RelayConfig {
        postgres: pg.url(),
        poll: Duration::from_millis(100),
        delete_published: true,
        ..Default::default()
    });
    // The real `ferry run`, which wires the relay beside the host.
    let dir = tempfile::tempdir().expect("temp dir");
    let host = crate::support::HostProcess::start(&config, dir.path(), "host");
    let client = pg::client(&pg.url()).await;
    let id = pg::insert_plain(&client, "OrderCreated", r#"{"order_id": "o-9"}"#).await;
    let recs = env.records_at_least(1, Duration::from_secs(60)).await;
    assert_eq!(recs[0]["id"], id.to_string());
    assert_eq!(recs[0]["type"], "OrderCreated");
    let c = &client;
    env.wait_for("delete_published to remove the row", Duration::from_secs(30), move || async move {
        let left: i64 = c.query_one("SELECT count(*) FROM ferry_outbox", &[]).await.ok()?.get(0);
        (left == 0).then_some(())
    })
    .await;
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_is_killed() {
    let env = Env::new();
    let pg = pg::start().await;
    let client = pg::client(&pg.url()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut relays = [
        RelayProcess::start(&pg.url(), &env.redis.url(), dir.path(), "a"),
        RelayProcess::start(&pg.url(), &env.redis.url(), dir.path(), "b"),
    ];
    let pids: Vec<u32> = relays.iter().map(RelayProcess::pid).collect();
    let active = env
        .wait_for("one relay to be active", Duration::from_secs(60), || {
            let (client, pids) = (&client, &pids);
            async move { pg::active_relay(client).await.filter(|pid| pids.contains(pid)) }
        })
        .await;
    let mut sent = HashSet::new();
    for i in 0..300 {
        sent.insert(pg::insert_plain(&client, "Before", &format!(r#"{{"i": {i}}}"#)).await.to_string());
    }
    let conn = env.conn().await;
    env.wait_for("some rows relayed", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { (!stream_events(&mut conn, "events").await.is_empty()).then_some(()) }
    })
    .await;
    let killed_at = Instant::now();
    let index = pids.iter().position(|p| *p == active).expect("active is ours");
    relays[index].kill();
    let survivor = pids[1 - index];
    for i in 0..300 {
        sent.insert(pg::insert_plain(&client, "After", &format!(r#"{{"i": {i}}}"#)).await.to_string());
    }
    let c = &client;
    env.wait_for("the standby to take the lock", Duration::from_secs(60), move || async move {
        (pg::active_relay(c).await == Some(survivor)).then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    let events = env
        .wait_for("every row in the stream", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            let sent = sent.clone();
            async move {
                let events = stream_events(&mut conn, "events").await;
                let got: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
                sent.is_subset(&got).then_some(events)
            }
        })
        .await;
    let unique: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    println!(
        "takeover after {takeover:?}; {} entries for {} rows ({} re-published)",
        events.len(),
        unique.len(),
        events.len() - unique.len()
    );
    assert_eq!(unique.len(), 600, "nothing lost, nothing foreign\n{}", relays[1 - index].log());
}

/// Producer `p` writes `rows` rows in small transactions, keys `p{p}-k{0..10}`, each key's
/// rows numbered in order. A transaction whose commit is cut off by a restart is retried with
/// the same ids: a unique violation means it had committed.
async fn produce(url: String, p: usize, rows: usize) -> usize {
    let mut next = 0usize;
    let mut per_key = [0u64; 10];
    let mut client = None;
    while next < rows {
        if client.is_none() {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let size = 1 + (next % 4).min(rows - next - 1);
        let mut batch = Vec::new();
        let mut keys = per_key;
        for i in next..next + size {
            let k = i % 10;
            let mut event = Event::new("Chaos", "tests", format!(r#"{{"key":"p{p}-k{k}","n":{},"i":{i}}}"#, keys[k]));
            // Ids derived from the position, so a retried transaction inserts the same ids.
            event.id = uuid::Uuid::from_u128(((p as u128) << 64) | i as u128).to_string();
            event.partitionkey = Some(format!("p{p}-k{k}"));
            keys[k] += 1;
            batch.push(event);
        }
        let result: Result<(), tokio_postgres::Error> = async {
            let tx = c.transaction().await?;
            for event in &batch {
                if let Err(e) = ferry::outbox::postgres::add(&tx, event).await {
                    return match e {
                        ferry::relay::RelayError::Postgres(e) => Err(e),
                        other => panic!("{other}"),
                    };
                }
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(_) => {
                client = None;
                continue;
            }
        }
        per_key = keys;
        next += size;
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_relay_kills_and_server_restarts_lose_nothing_and_keep_key_order() {
    let mut env = Env::with_redis(ferry_test_kit::redis_server::RedisServer::start_with(true).expect("redis with AOF"));
    let toml = format!("ordered = true\nconcurrency = 8\n{RECORDER_TOML}");
    env.add_plugin("rec", fixtures::RECORDER, &toml);
    let mut pg = pg::start().await;
    let url = pg.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let host = InProcessHost::start(env.config());

    let producers: Vec<_> = (0..4).map(|p| tokio::spawn(produce(url.clone(), p, 5000))).collect();
    let mut relay = RelayProcess::start(&url, &env.redis.url(), dir.path(), "relay");
    let mut kills = 0;
    for round in 0..10u64 {
        tokio::time::sleep(Duration::from_millis(400 + (round * 173) % 500)).await;
        relay.kill();
        kills += 1;
        if round == 3 {
            tokio::task::block_in_place(|| env.redis.restart()).expect("redis restarts");
        }
        if round == 6 {
            tokio::task::block_in_place(|| pg.restart()).expect("postgres restarts");
        }
        relay = RelayProcess::start(&url, &env.redis.url(), dir.path(), "relay");
    }
    let mut total = 0;
    for p in producers {
        total += p.await.expect("producer");
    }
    assert_eq!(total, 20_000);
    let client = pg::client(&url).await;
    let committed: i64 = client.query_one("SELECT count(*) FROM ferry_outbox", &[]).await.expect("count").get(0);
    assert_eq!(committed, 20_000, "every producer transaction committed once");

    let c = &client;
    env.wait_for("every row marked published", Duration::from_secs(300), move || async move {
        let unrelayed: i64 =
            c.query_one("SELECT count(*) FROM ferry_outbox WHERE published_at IS NULL", &[]).await.ok()?.get(0);
        (unrelayed == 0).then_some(())
    })
    .await;
    let conn = env.conn().await;
    env.wait_for("20000 records", Duration::from_secs(300), || {
        let mut conn = conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN").arg("records").query_async(&mut conn).await.ok()?;
            (n >= 20_000).then_some(())
        }
    })
    .await;
    env.settled("events", Duration::from_secs(60)).await;
    let recs: Vec<Value> = pg::all_events(&env.redis.url(), "records")
        .await
        .iter()
        .map(|e| serde_json::from_slice(&e.data).expect("record JSON"))
        .collect();
    let events = pg::all_events(&env.redis.url(), "events").await;

    // Every committed row is in the stream; per key, first appearances are in order.
    let mut seen = HashSet::new();
    let mut last_n: HashMap<String, i64> = HashMap::new();
    for event in &events {
        if !seen.insert(event.id.clone()) {
            continue;
        }
        let data = json(&event.data);
        let key = data["key"].as_str().expect("key").to_string();
        let n = data["n"].as_i64().expect("n");
        let prev = last_n.insert(key.clone(), n).unwrap_or(-1);
        assert_eq!(n, prev + 1, "key {key}: {n} follows {prev} in the stream");
    }
    assert_eq!(seen.len(), 20_000, "every committed row is in the stream\n{}", relay.log());

    // Handled once each (duplicates in the stream are absorbed by dedupe), in key order.
    let handled = by_subscriber(&recs, "rec");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut handled_n: HashMap<String, i64> = HashMap::new();
    for r in &handled {
        *counts.entry(r["id"].as_str().expect("id")).or_default() += 1;
        let data: Value = serde_json::from_str(r["data"].as_str().expect("data")).expect("json");
        let key = data["key"].as_str().expect("key").to_string();
        let n = data["n"].as_i64().expect("n");
        let prev = handled_n.insert(key.clone(), n).unwrap_or(-1);
        assert_eq!(n, prev + 1, "key {key}: handled {n} after {prev}");
    }
    assert_eq!(counts.len(), 20_000, "every row handled");
    let twice: Vec<&Value> =
        handled.iter().filter(|r| r["id"].as_str().is_some_and(|id| counts.get(id).is_some_and(|c| *c > 1))).collect();
    let show: Vec<String> = twice
        .iter()
        .take(6)
        .map(|r| format!("{} entry {} attempt {} stream {}", r["id"], r["entry_id"], r["attempt"], r["stream"]))
        .collect();
    assert!(twice.is_empty(), "{} records of rows handled twice, e.g.\n{}", twice.len(), show.join("\n"));
    println!(
        "relay chaos: {kills} SIGKILLs, 1 PostgreSQL and 1 Redis restart; {} stream entries for 20000 rows",
        events.len()
    );
    host.stop().await;
}

/// Wait until the relay has run its fetch after publishing and marking everything so far: it is
/// then waiting for a NOTIFY or its poll interval, with no fetch in flight.
async fn relay_idle_after(env: &Env, client: &tokio_postgres::Client, id: uuid::Uuid) {
    env.wait_for("the relay to wait after marking the row", Duration::from_secs(60), move || async move {
        let marked: bool = client
            .query_one("SELECT published_at IS NOT NULL FROM ferry_outbox WHERE id = $1", &[&id])
            .await
            .ok()?
            .get(0);
        // The fetch follows the mark, so a fetch seen as the work session's last statement
        // after the mark found nothing, and nothing runs until the relay wakes.
        let fetched_last = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ferry relay %' \
                 AND state = 'idle' AND query LIKE 'SELECT seq, id, type%'",
                &[],
            )
            .await
            .ok()?
            .get::<_, i64>(0)
            == 1;
        (marked && fetched_last).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_the_relay_long_before_its_poll_interval() {
    let env = Env::new();
    let pg = pg::start().await;
    let client = pg::client(&pg.url()).await;
    let mut settings = pg::settings(&pg, &env.redis.url());
    settings.poll = Duration::from_secs(3600);
    let relay = InProcessRelay::start(settings);
    let first = pg::insert_plain(&client, "First", "{}").await;
    relay_idle_after(&env, &client, first).await;
    // Only the trigger's NOTIFY can wake it now: the poll is an hour away.
    let second = pg::insert_plain(&client, "Second", "{}").await;
    let conn = env.conn().await;
    env.wait_for("the second row, woken by NOTIFY", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { stream_events(&mut conn, "events").await.iter().any(|e| e.id == second.to_string()).then_some(()) }
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_finds_a_row_whose_notify_came_while_an_older_transaction_held_it_back() {
    let env = Env::new();
    let pg = pg::start().await;
    let client = pg::client(&pg.url()).await;
    let mut older = pg::client(&pg.url()).await;
    let mut settings = pg::settings(&pg, &env.redis.url());
    settings.poll = Duration::from_millis(200);
    let relay = InProcessRelay::start(settings);
    let first = pg::insert_plain(&client, "First", "{}").await;
    relay_idle_after(&env, &client, first).await;

    // An older transaction (it took its id first) is open when the row commits and NOTIFYs:
    // the relay wakes but may not read the row yet. The older one then commits without
    // touching the outbox, so no NOTIFY follows: only polling finds the row.
    let older_tx = older.transaction().await.expect("begin");
    older_tx.query_one("SELECT pg_current_xact_id()", &[]).await.expect("xid");
    let held = pg::insert_plain(&client, "Held", "{}").await;
    let committed: time::OffsetDateTime = client.query_one("SELECT clock_timestamp()", &[]).await.expect("now").get(0);
    let c = &client;
    env.wait_for("the relay to fetch after the held row's NOTIFY", Duration::from_secs(60), move || async move {
        // A fetch that started after the row committed (and NOTIFYed) and left it unpublished.
        let row = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a, ferry_outbox o WHERE o.id = $1 \
                 AND a.application_name LIKE 'ferry relay %' AND a.query LIKE 'SELECT seq, id, type%' \
                 AND a.query_start > $2 AND o.published_at IS NULL",
                &[&held, &committed],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;
    let conn = env.conn().await;
    assert!(
        !stream_events(&mut conn.clone(), "events").await.iter().any(|e| e.id == held.to_string()),
        "held back while the older transaction runs"
    );
    older_tx.commit().await.expect("commit older");
    env.wait_for("the held row, found by polling", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { stream_events(&mut conn, "events").await.iter().any(|e| e.id == held.to_string()).then_some(()) }
    })
    .await;
    relay.stop().await;
}

/// The relay re-publishes rows after a crash with the same event ids: copies that reach a
/// subscriber in one read are handled once, ordered or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_relayed_event_in_one_read_are_handled_once() {
    for ordered in [true, false] {
        let env = Env::new();
        env.add_plugin("rec", fixtures::RECORDER, &format!("ordered = {ordered}\nconcurrency = 8\n{RECORDER_TOML}"));
        let mut conn = env.conn().await;
        let events: Vec<Event> = (0..200)
            .map(|i| {
                let mut event = Event::new("Copy", "tests", format!(r#"{{"i":{i}}}"#));
                event.partitionkey = Some(format!("k{}", i % 10));
                event
            })
            .collect();
        // What a relay killed between XADD and marking leaves behind: every event twice.
        for event in events.iter().chain(events.iter()) {
            ferry::outbox::publish(&mut conn, "events", event).await.expect("xadd");
        }
        let host = InProcessHost::start(env.config());
        env.records_at_least(200, Duration::from_secs(30)).await;
        env.settled("events", Duration::from_secs(30)).await;
        let recs = crate::support::records(&mut conn, "records").await;
        host.stop().await;
        assert_eq!(recs.len(), 200, "ordered = {ordered}: each event handled once");
    }
}

/// Issue 23, "checked and sound": values reach PostgreSQL only as parameters, in both
/// directions. Attributes written as SQL (quotes, a second statement, a comment) go in through
/// the producer API and come out of the relay unchanged, the table intact; a row whose
/// stream name carries a quote is marked failed with an error that quotes it verbatim (the
/// relay's own UPDATE binds the error too). The table name is the only text in the SQL and is
/// validated (`relay::schema::tests::the_table_name_is_validated_and_every_value_is_a_parameter`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_as_sql_reach_postgresql_only_as_parameters() {
    let env = Env::new();
    let pg = pg::start().await;
    let client = pg::client(&pg.url()).await;
    let relay = InProcessRelay::start(pg::settings(&pg, &env.redis.url()));

    let drop = "T'); DROP TABLE ferry_outbox; --";
    let mut event = Event::new(drop, "s' OR '1'='1", r#"{"note":"'; DELETE FROM ferry_outbox; --"}"#);
    event.subject = Some("'||pg_sleep(30)||'".into());
    event.partitionkey = Some("k\"; TRUNCATE ferry_outbox; /*".into());
    event.correlationid = Some("$1 $2 \\' E'\\x00'".into());
    ferry::outbox::postgres::add(&client, &event).await.expect("add");
    let quoted = uuid::Uuid::now_v7();
    client
        .execute(
            "INSERT INTO ferry_outbox (id, type, source, data, stream) VALUES ($1, 'T', 's', '{}', $2)",
            &[&quoted, &"x'{y}"],
        )
        .await
        .expect("a row with a quote in its stream");
    let last = pg::insert_plain(&client, "Last", "{}").await;

    let conn = env.conn().await;
    let events = env
        .wait_for("the last row in the stream", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move {
                let events = stream_events(&mut conn, "events").await;
                events.iter().any(|e| e.id == last.to_string()).then_some(events)
            }
        })
        .await;
    let got = events.iter().find(|e| e.id == event.id).expect("the hostile-looking event relayed");
    assert_eq!(
        (&got.event_type, &got.source, &got.subject, &got.partitionkey, &got.correlationid),
        (&event.event_type, &event.source, &event.subject, &event.partitionkey, &event.correlationid),
        "every attribute byte for byte"
    );
    assert_eq!(json(&got.data), json(&event.data), "the payload (jsonb keeps its value, not its spacing)");
    let c = &client;
    let error: String = env
        .wait_for("the quoted row marked failed", Duration::from_secs(30), move || async move {
            c.query_opt("SELECT error FROM ferry_outbox WHERE id = $1 AND failed_at IS NOT NULL", &[&quoted])
                .await
                .ok()?
                .map(|r| r.get(0))
        })
        .await;
    assert!(error.contains("x'{y}"), "the error, quote and all: {error}");
    let rows: i64 = client.query_one("SELECT count(*) FROM ferry_outbox", &[]).await.expect("the table").get(0);
    assert_eq!(rows, 3, "the table and its rows are all there");
    relay.stop().await;
}
