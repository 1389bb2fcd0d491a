//! Retention under load: trimming keeps up with any inflow the host can consume, never goes
//! below the safe floor, and says which group holds it back.

use std::time::{Duration, Instant};

use ferry::config::RetentionConfig;
use ferry_test_fixtures as fixtures;

use crate::support::{Env, InProcessHost, RECORDER_TOML, xlen};

/// Add `n` small events to `stream` in pipelines of 1,000, paced to `per_sec` (as fast as
/// Redis takes them when it cannot keep up: the pace is a ceiling, not a promise).
async fn feed(conn: &mut redis::aio::MultiplexedConnection, stream: &str, n: usize, per_sec: usize) {
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for i in sent..(sent + 1000).min(n) {
            let event = ferry::event::Event::new("Fed", "tests", format!(r#"{{"i":{i}}}"#));
            ferry::outbox::add(&mut pipe, stream, &event);
            pipe.ignore();
        }
        pipe.query_async::<()>(conn).await.expect("xadd");
        sent = (sent + 1000).min(n);
        let due = started + Duration::from_secs_f64(sent as f64 / per_sec as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

async fn group_exists(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> bool {
    let groups: redis::Value =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.unwrap_or(redis::Value::Nil);
    let redis::Value::Array(groups) = groups else { return false };
    groups
        .into_iter()
        .any(|g| ferry::consume::read::pair_str(&ferry::consume::read::pairs(g), "name").as_deref() == Some(group))
}

/// 60,000 entries that no group needs (the subscriber's group starts at the end) are six old
/// passes' worth (10,000 per pass): the first pass now removes them all. Four intervals from
/// the moment the group exists leave the old trimmer at 20,000+ entries whatever the speed of
/// the machine (it cannot remove more than 10,000 per pass, and runs at most once per interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_burst_larger_than_one_old_pass_within_a_few_intervals() {
    let env = Env::new();
    env.add_plugin("rec", fixtures::RECORDER, &RECORDER_TOML.replace("start = \"beginning\"", "start = \"new\""));
    let mut conn = env.conn().await;
    // 20,000 events/s for three seconds, before the subscriber's group exists.
    feed(&mut conn, "events", 60_000, 20_000).await;
    let interval = Duration::from_secs(1);
    let mut config = env.config();
    config.retention = Some(RetentionConfig { max_len: Some(1000), max_age: None, interval });
    let host = InProcessHost::start(config);
    env.wait_for("the subscriber's group", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { group_exists(&mut conn, "events", "rec").await.then_some(()) }
    })
    .await;
    env.wait_for("the stream back at max_len", interval * 4, || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn, "events").await.expect("xlen") <= 1000).then_some(()) }
    })
    .await;
    assert_eq!(
        xlen(&mut conn, "events").await.expect("xlen"),
        1000,
        "exactly max_len is kept: nobody needs more, max_len wants that many"
    );
    host.stop().await;
}

/// Add `n` events to `stream` at up to `per_sec`, and after each 1,000 let `group` read them
/// all and acknowledge them (a consumer at full speed); the ids added, oldest first.
async fn feed_and_consume(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    n: usize,
    per_sec: usize,
    group: &str,
    mut each_chunk: impl FnMut(&[String]),
) -> Vec<String> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let mut pipe = redis::pipe();
        for i in ids.len()..(ids.len() + 1000).min(n) {
            ferry::outbox::add(&mut pipe, stream, &ferry::event::Event::new("Fed", "tests", format!(r#"{{"i":{i}}}"#)));
        }
        let added: Vec<String> = pipe.query_async(conn).await.expect("xadd");
        ids.extend(added);
        each_chunk(&ids);
        let value: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("c")
            .arg("COUNT")
            .arg(100_000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(conn)
            .await
            .expect("read");
        let read: Vec<String> = ferry::consume::read::parse_read_reply(value).into_iter().map(|e| e.id).collect();
        if !read.is_empty() {
            let _: i64 = redis::cmd("XACK").arg(stream).arg(group).arg(&read).query_async(conn).await.expect("ack");
        }
        let due = started + Duration::from_secs_f64(ids.len() as f64 / per_sec as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    ids
}

async fn first_id(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Option<String> {
    let value: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await.expect("xrange");
    ferry::consume::read::parse_entries(stream, value).into_iter().next().map(|e| e.id)
}

fn gauge(metrics: &str, name: &str, stream: &str) -> Option<i64> {
    let prefix = format!("{name}{{stream=\"{stream}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A follow-up target no ferry subscriber reads, with `[streams.NAME] retention`: fed at up to
/// 20,000 events/s and read at full speed, it is back at exactly `max_len` within a few
/// intervals of the last event. A group that stopped reading then holds the floor: every entry
/// it has not read stays (checked after every 1,000 added, while trimming runs), the stream
/// grows past `max_len`, and status and the metric say so, naming the group. Once the group
/// catches up, the stream is back at `max_len`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_faster_than_one_old_pass_stays_at_max_len_and_a_stopped_group_keeps_its_entries() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("firehose")
        .arg("fast")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let interval = Duration::from_millis(500);
    let retention = RetentionConfig { max_len: Some(1000), max_age: None, interval };
    let mut config = env.config();
    config
        .streams
        .insert("firehose".into(), ferry::config::StreamConfig { retention: Some(retention), ..Default::default() });
    config.admin.listen = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let addr = config.admin.listen.clone();
    let host = ferry::host::Host::start(config.clone()).await.expect("host");
    let admin = ferry::admin::spawn(host.clone()).await.expect("admin").expect("admin on");

    // 60,000 events at up to 20,000/s: six old passes' worth, fed over a few intervals.
    feed_and_consume(&mut conn, "firehose", 60_000, 20_000, "fast", |_| {}).await;
    env.wait_for("the stream back at max_len", interval * 6, || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn, "firehose").await.expect("xlen") == 1000).then_some(()) }
    })
    .await;

    // A group that stops reading: it has read nothing of what follows.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("firehose")
        .arg("stopped")
        .arg("$")
        .query_async(&mut conn)
        .await
        .expect("group");
    let mut checker = env.conn().await;
    // After each 1,000 added: what the stopped group needs (everything added since it stopped)
    // is all there, while the host trims.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    let feeding = tokio::spawn({
        let mut conn = conn.clone();
        async move {
            let each = |ids: &[String]| tx.send((ids[0].clone(), ids.len())).unwrap_or(());
            feed_and_consume(&mut conn, "firehose", 20_000, 20_000, "fast", each).await
        }
    });
    while let Some((needed, added)) = rx.recv().await {
        let first = first_id(&mut checker, "firehose").await.expect("not empty");
        assert!(ferry::consume::read::cmp_ids(&first, &needed).is_le(), "trimmed past the stopped group's floor");
        let len = xlen(&mut checker, "firehose").await.expect("xlen");
        assert!(len >= added as u64, "{len} entries left, {added} needed by the stopped group");
    }
    let ids = feeding.await.expect("feeder");
    env.wait_for("the entries before the stopped group's floor removed", interval * 6, || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn, "firehose").await.expect("xlen") == 20_000).then_some(()) }
    })
    .await;
    assert_eq!(first_id(&mut conn, "firehose").await.as_ref(), ids.first(), "nothing the stopped group needs is gone");
    let targets = ferry::status::retention_targets(&config, &[]);
    let status = ferry::status::retention(&mut conn, &targets).await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!((status[0].length, status[0].over), (20_000, 19_000));
    assert_eq!(status[0].floor_group.as_deref(), Some("stopped"), "status names the group holding the floor");
    // `ferry status --retention --json`, from the same configuration file.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, toml::to_string(&config).expect("config serializes")).expect("config file");
    let file = file.to_string_lossy().into_owned();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        crate::support::ferry(&["status", "--retention", "--json", "--config", &file])
    })
    .await
    .expect("join");
    assert!(status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json[0]["stream"], "firehose", "{stdout}");
    assert_eq!(json[0]["floor_group"], "stopped", "{stdout}");
    assert_eq!(json[0]["max_len"], 1000, "{stdout}");
    let view: serde_json::Value =
        serde_json::from_str(&ferry::status::http_get(&addr, "/api/status").await.expect("api/status")).expect("json");
    assert_eq!(view["streams"][0]["floor_group"], "stopped", "{view}");
    env.wait_for("the metric of entries over retention", interval * 6, || {
        let addr = addr.clone();
        async move {
            let metrics = ferry::status::http_get(&addr, "/metrics").await.ok()?;
            (gauge(&metrics, "ferry_stream_entries_over_retention", "firehose") == Some(19_000)).then_some(())
        }
    })
    .await;

    // The stopped group catches up: the stream is back at max_len.
    let value: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("stopped")
        .arg("c")
        .arg("COUNT")
        .arg(100_000)
        .arg("STREAMS")
        .arg("firehose")
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read");
    let read: Vec<String> = ferry::consume::read::parse_read_reply(value).into_iter().map(|e| e.id).collect();
    let _: i64 =
        redis::cmd("XACK").arg("firehose").arg("stopped").arg(&read).query_async(&mut conn).await.expect("ack");
    env.wait_for("the stream back at max_len", interval * 6, || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn, "firehose").await.expect("xlen") == 1000).then_some(()) }
    })
    .await;
    admin.abort();
    host.stop_all().await;
}

/// `n` entries on `stream`, all read by group `g`, all acknowledged except those at the
/// positions in `pending`; their ids.
async fn read_all_but(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    n: usize,
    pending: &[usize],
) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            ferry::outbox::add(&mut pipe, stream, &ferry::event::Event::new("Fed", "tests", format!(r#"{{"i":{i}}}"#)));
        }
        let added: Vec<String> = pipe.query_async(conn).await.expect("xadd");
        ids.extend(added);
    }
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("g").arg("0").query_async(conn).await.expect("group");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("read");
    let acked: Vec<&String> = ids.iter().enumerate().filter(|(i, _)| !pending.contains(i)).map(|(_, id)| id).collect();
    for chunk in acked.chunks(1000) {
        let _: i64 = redis::cmd("XACK").arg(stream).arg("g").arg(chunk).query_async(conn).await.expect("ack");
    }
    ids
}

/// The length limit cuts at `max_len` when everything the floor keeps is within it, and at the
/// floor otherwise, on each path `trim.lua` decides by: the floor group's lag alone, a walk of
/// its pending window, and (a window longer than one walk) cuts found from the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_cuts_at_max_len_or_at_the_floor_whichever_keeps_more() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let pass = |conn: &mut redis::aio::MultiplexedConnection, stream: &'static str, max_len: u64| {
        let retention = RetentionConfig { max_len: Some(max_len), max_age: None, interval: Duration::from_secs(1) };
        let mut conn = conn.clone();
        async move {
            ferry::consume::trim::pass(&mut conn, stream, Some(&retention), ferry::consume::now_ms())
                .await
                .expect("pass")
        }
    };

    // No stream yet (a follow-up target nobody wrote to): nothing to do, no error.
    let p = pass(&mut conn, "missing", 500).await;
    assert_eq!((p.removed, p.length, p.calls), (0, 0, 1));

    // No group: the limits alone.
    feed(&mut conn, "lone", 3000, 1_000_000).await;
    let p = pass(&mut conn, "lone", 500).await;
    assert_eq!((p.length, p.held, p.floor), (500, false, None));

    // By age: everything is older than max_age, but a group has read only half.
    for ms in 1..=100 {
        let _: String = redis::cmd("XADD")
            .arg("aged")
            .arg(format!("{ms}-0"))
            .arg("f")
            .arg("v")
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("aged")
        .arg("half")
        .arg("50-0")
        .query_async(&mut conn)
        .await
        .expect("group");
    let retention =
        RetentionConfig { max_len: None, max_age: Some(Duration::from_millis(1)), interval: Duration::from_secs(1) };
    let p =
        ferry::consume::trim::pass(&mut conn, "aged", Some(&retention), ferry::consume::now_ms()).await.expect("pass");
    assert_eq!((p.length, p.held, p.first_id.as_deref()), (50, true, Some("51-0")), "{p:?}");
    assert_eq!(p.floor.map(|f| f.group).as_deref(), Some("half"));

    // The floor after an id with the largest sequence number is the next millisecond's first.
    for id in ["5-18446744073709551615", "6-0", "7-0"] {
        let _: String =
            redis::cmd("XADD").arg("maxseq").arg(id).arg("f").arg("v").query_async(&mut conn).await.expect("xadd");
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("maxseq")
        .arg("g")
        .arg("5-18446744073709551615")
        .query_async(&mut conn)
        .await
        .expect("group");
    let p = ferry::consume::trim::pass(&mut conn, "maxseq", None, ferry::consume::now_ms()).await.expect("pass");
    assert_eq!((p.removed, p.length, p.floor.map(|f| f.id)), (1, 2, Some("6-0".to_string())));

    // A window of 200 pending entries at the end: within max_len.
    let ids = read_all_but(&mut conn, "window", 5000, &(4800..5000).collect::<Vec<_>>()).await;
    let p = pass(&mut conn, "window", 1000).await;
    assert_eq!((p.length, p.held), (1000, false));
    assert_eq!(p.floor.as_ref().map(|f| (f.id.as_str(), f.group.as_str())), Some((ids[4800].as_str(), "g")));

    // The oldest pending entry 3,000 from the end, max_len 1,000: the floor binds.
    let ids = read_all_but(&mut conn, "held", 5000, &[2000, 4999]).await;
    let p = pass(&mut conn, "held", 1000).await;
    assert_eq!((p.length, p.held), (3000, true));
    assert_eq!(p.first_id.as_ref(), Some(&ids[2000]), "the oldest pending entry is kept");

    // One pending entry 3,000 from the end, everything after it acknowledged, max_len 4,000:
    // the window is longer than one walk, so the cut is found from the head; max_len binds.
    let ids = read_all_but(&mut conn, "long", 10_000, &[7000]).await;
    let p = pass(&mut conn, "long", 4000).await;
    assert_eq!((p.length, p.held), (4000, false), "{p:?}");
    assert_eq!(p.first_id.as_ref(), Some(&ids[6000]));
    assert!(p.calls > 1, "cut over several bounded calls: {p:?}");
}
