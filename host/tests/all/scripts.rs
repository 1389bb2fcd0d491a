//! Each of ferry's Lua scripts on its own, against a real `redis-server` (issue 24 §4): the
//! keys it touches and its reply for each branch, as its header documents them. The delivery
//! tests cover what the scripts do together; these pin down each one's contract, so a change
//! to a script (or to the prelude they share) that breaks it fails here by name.

use std::collections::BTreeSet;

use ferry::consume::scripts::{self, Decision, Replay, Start};
use ferry::consume::settle::{Disposition, Routing, Settled, Settlement, settle};
use ferry::consume::{Tally, now_ms};
use ferry::event::Event;
use ferry::handler::{Effects, FollowUp};
use ferry::keys::SubscriberKeys;
use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::support::Env;

const GROUP: &str = "sub";

fn keys() -> SubscriberKeys {
    SubscriberKeys::new("events", GROUP)
}

/// Every key in the database.
async fn all_keys(conn: &mut MultiplexedConnection) -> BTreeSet<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.expect("KEYS")
}

async fn cmd<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The group on `stream`, created from the start.
async fn group(conn: &mut MultiplexedConnection, stream: &str) {
    let _: () = cmd(conn, &["XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM"]).await;
}

/// Add an entry of `fields` to `stream`; its id.
async fn add(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut c = redis::cmd("XADD");
    c.arg(stream).arg("*");
    for (k, v) in fields {
        c.arg(*k).arg(*v);
    }
    c.query_async(conn).await.expect("XADD")
}

/// Deliver everything new on `stream` to consumer `c` (pending, for a script to ack).
async fn deliver(conn: &mut MultiplexedConnection, stream: &str) {
    let _: Value = cmd(conn, &["XREADGROUP", "GROUP", GROUP, "c", "STREAMS", stream, ">"]).await;
}

async fn pending(conn: &mut MultiplexedConnection, stream: &str) -> i64 {
    let summary: Vec<Value> = cmd(conn, &["XPENDING", stream, GROUP]).await;
    match summary.first() {
        Some(Value::Int(n)) => *n,
        other => panic!("{other:?}"),
    }
}

async fn hget(conn: &mut MultiplexedConnection, key: &str, field: &str) -> Option<String> {
    cmd(conn, &["HGET", key, field]).await
}

/// The fields of the entries of `stream`, in order, as text.
async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Vec<(String, String)>> {
    let raw: Vec<(String, Vec<(String, String)>)> = cmd(conn, &["XRANGE", stream, "-", "+"]).await;
    raw.into_iter().map(|(_, f)| f).collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

// ---- read.lua ---------------------------------------------------------------------------

/// read.lua: with nothing new it returns the last ids to wait from; under per-key order the
/// first entry of a key takes it, a later one is parked behind it (acked, stored with
/// `_attempt`, `_origin`, `_parked` and without the producer's `_` fields), an entry without
/// a key or one the dispatcher will refuse (a field twice) passes untouched, and it touches
/// only the per-key set.
#[tokio::test]
async fn read_takes_a_free_key_parks_behind_a_held_one_and_passes_the_rest() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    group(&mut conn, &k.stream).await;
    group(&mut conn, &k.retry).await;
    let before = all_keys(&mut conn).await;
    let read = ferry::consume::reader::read_fresh_ordered(&mut conn, &k, GROUP, "c", 10).await.expect("read");
    let ferry::consume::read::Fresh::Nothing(last) = read else { panic!("{read:?}") };
    assert_eq!(last, ["0-0".to_string(), "0-0".to_string()]);

    let first = add(&mut conn, "events", &[("id", "a"), ("partitionkey", "K")]).await;
    let second = add(&mut conn, "events", &[("id", "b"), ("partitionkey", "K"), ("_x", "forged")]).await;
    let plain = add(&mut conn, "events", &[("id", "c")]).await;
    let twice = add(&mut conn, "events", &[("id", "d"), ("partitionkey", "L"), ("id", "again")]).await;
    let read = ferry::consume::reader::read_fresh_ordered(&mut conn, &k, GROUP, "c", 10).await.expect("read");
    let ferry::consume::read::Fresh::Read(read) = read else { panic!("{read:?}") };
    let ids: Vec<&str> = read.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), plain.as_str(), twice.as_str()], "the parked entry is not handed out");

    let owner = format!("events/{first}");
    assert_eq!(hget(&mut conn, &k.holds, "K").await, Some(owner.clone()));
    assert_eq!(hget(&mut conn, &k.holders, &owner).await.as_deref(), Some("K"));
    assert_eq!(hget(&mut conn, &k.holds, "L").await, None, "a refused entry takes no key");
    let since: Option<f64> = cmd(&mut conn, &["ZSCORE", &k.hold_since, "K"]).await;
    assert!(since.is_some());
    assert_eq!(cmd::<i64>(&mut conn, &["GET", &k.parked_count]).await, 1);
    assert_eq!(pending(&mut conn, "events").await, 3, "the parked entry is acked");
    let stored: Vec<Vec<u8>> = cmd(&mut conn, &["LRANGE", &k.parked("K"), "0", "-1"]).await;
    let parked = format!(
        "2:id,1:b,12:partitionkey,1:K,8:_attempt,1:1,7:_origin,{}:events/{second},7:_parked,1:1,",
        7 + second.len()
    );
    assert_eq!(stored, [parked.into_bytes()]);

    let touched: BTreeSet<String> = all_keys(&mut conn).await.difference(&before).cloned().collect();
    let expected: BTreeSet<String> =
        [&k.holds, &k.holders, &k.hold_since, &k.parked_count, &k.parked("K")].map(String::clone).into();
    assert_eq!(touched, expected);
}

// ---- dispatch.lua -------------------------------------------------------------------------

struct Asked<'a> {
    entry: &'a str,
    event: &'a str,
    owner: &'a str,
    replay: bool,
    pkey: &'a str,
    guess: &'a str,
}

/// Run dispatch.lua for `asked` (window 1 h, lease 10 s, 2 deliveries at most).
async fn dispatch(conn: &mut MultiplexedConnection, ordered: bool, now: u64, asked: &[Asked<'_>]) -> Vec<Decision> {
    let mut args: Vec<Vec<u8>> = [GROUP, &now.to_string(), "3600000", "10000", "2", if ordered { "1" } else { "0" }]
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
    for a in asked {
        let stored = scripts::netstrings(&[("id", a.event), ("_origin", a.owner)]);
        for v in [b"events".to_vec(), a.entry.into(), a.event.into(), a.owner.into()] {
            args.push(v);
        }
        args.push(if a.replay { b"1".to_vec() } else { b"0".to_vec() });
        args.extend([a.pkey.as_bytes().to_vec(), stored, a.guess.as_bytes().to_vec()]);
    }
    let reply =
        scripts::call(conn, &scripts::DISPATCH, &scripts::dispatch_keys(&keys()), &args).await.expect("dispatch");
    Decision::parse_all(reply, asked.len()).expect("one decision each")
}

/// dispatch.lua, one event per branch: run (leased, not started: `expiry:0:owner`), dup and
/// dead within the window (dead not for a replay), wait behind another delivery's live lease,
/// crash when the budget is spent, and a precheck's guess removed when the decision is not run.
#[tokio::test]
async fn dispatch_decides_run_dup_dead_wait_and_crash_and_records_only_runs() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    let now = now_ms();
    let _: () = cmd(&mut conn, &["ZADD", &k.seen, &now.to_string(), "handled"]).await;
    let _: () = cmd(&mut conn, &["ZADD", &k.dead, &now.to_string(), "lettered"]).await;
    let live = scripts::marker(now + 60_000, 1, "events/9-0");
    let spent = scripts::marker(now + 60_000, 2, "events/5-0");
    let guess = scripts::marker(now + 10_000, 0, "events/2-0");
    for (id, marker) in [("busy", &live), ("spent", &spent), ("handled", &guess)] {
        let _: () = cmd(&mut conn, &["HSET", &k.inflight, id, marker]).await;
    }
    let ask = |entry, event, owner, replay, guess| Asked { entry, event, owner, replay, pkey: "", guess };
    let decisions = dispatch(
        &mut conn,
        false,
        now,
        &[
            ask("1-0", "fresh", "events/1-0", false, ""),
            ask("2-0", "handled", "events/2-0", false, &guess),
            ask("3-0", "lettered", "events/3-0", false, ""),
            ask("4-0", "lettered", "events/4-0", true, ""),
            ask("5-0", "spent", "events/5-0", false, ""),
            ask("6-0", "busy", "events/6-0", false, ""),
        ],
    )
    .await;
    use Decision::*;
    assert_eq!(
        decisions,
        [Run { holds: false }, Duplicate { holds: false }, Dead { holds: false }, Run { holds: false }, Crash, Wait]
    );
    let expiry = now + 10_000;
    assert_eq!(hget(&mut conn, &k.inflight, "fresh").await, Some(scripts::marker(expiry, 0, "events/1-0")));
    assert_eq!(hget(&mut conn, &k.inflight, "lettered").await, Some(scripts::marker(expiry, 0, "events/4-0")));
    assert_eq!(hget(&mut conn, &k.inflight, "handled").await, None, "the guess is removed");
    assert_eq!(hget(&mut conn, &k.inflight, "spent").await, Some(spent), "a crash leaves the count");
    assert_eq!(hget(&mut conn, &k.inflight, "busy").await, Some(live), "the other delivery's marker stays");
    let written: BTreeSet<String> = all_keys(&mut conn).await;
    assert_eq!(written, [&k.seen, &k.dead, &k.inflight].map(String::clone).into(), "no per-key keys without order");
}

/// dispatch.lua under per-key order: the first event of a free key takes it (`runh`), the
/// next of that key is parked behind it (acked, stored, counted), a duplicate that holds its
/// key says so (`duph`) so its settle hands the key on, and the key's own holder (its retry)
/// runs holding it.
#[tokio::test]
async fn dispatch_takes_a_free_key_parks_behind_a_held_one_and_flags_a_holding_duplicate() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    group(&mut conn, "events").await;
    let first = add(&mut conn, "events", &[("id", "a")]).await;
    let second = add(&mut conn, "events", &[("id", "b")]).await;
    deliver(&mut conn, "events").await;
    let now = now_ms();
    let _: () = cmd(&mut conn, &["ZADD", &k.seen, &now.to_string(), "old"]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.holds, "L", "events/0-1"]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.holders, "events/0-1", "L"]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.holds, "M", "events/0-2"]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.holders, "events/0-2", "M"]).await;
    let (o1, o2) = (format!("events/{first}"), format!("events/{second}"));
    let ask = |entry, event, owner, pkey| Asked { entry, event, owner, replay: false, pkey, guess: "" };
    let decisions = dispatch(
        &mut conn,
        true,
        now,
        &[
            ask(&first, "a", &o1, "K"),
            ask(&second, "b", &o2, "K"),
            ask("0-1", "old", "events/0-1", "L"),
            ask("0-2", "retried", "events/0-2", "M"),
        ],
    )
    .await;
    use Decision::*;
    let want = [Run { holds: true }, Park, Duplicate { holds: true }, Run { holds: true }];
    assert_eq!(decisions, want, "a retry of the key's own holder runs and keeps the key");
    assert_eq!(hget(&mut conn, &k.holds, "M").await.as_deref(), Some("events/0-2"));
    assert_eq!(hget(&mut conn, &k.holds, "K").await, Some(o1.clone()));
    assert_eq!(hget(&mut conn, &k.holders, &o1).await.as_deref(), Some("K"));
    assert_eq!(pending(&mut conn, "events").await, 1, "the parked entry is acked");
    let stored: Vec<Vec<u8>> = cmd(&mut conn, &["LRANGE", &k.parked("K"), "0", "-1"]).await;
    assert_eq!(stored, [scripts::netstrings(&[("id", "b"), ("_origin", o2.as_str())])]);
    assert_eq!(cmd::<i64>(&mut conn, &["GET", &k.parked_count]).await, 1);
    assert_eq!(hget(&mut conn, &k.inflight, "b").await, None, "a parked event is not leased");
}

// ---- settle.lua ---------------------------------------------------------------------------

fn settlement(id: &str, event_id: &str, hand_on: bool, disposition: Disposition) -> Settlement {
    Settlement {
        key: "events".into(),
        id: id.into(),
        event_id: event_id.into(),
        owner: format!("events/{id}"),
        hand_on,
        disposition,
        fallback: None,
        state_fallbacks: None,
        tally: Tally::None,
    }
}

async fn settle_all(conn: &mut MultiplexedConnection, settlements: &[Settlement]) -> Vec<Settled> {
    let k = keys();
    let none = std::collections::BTreeMap::new();
    let routing = Routing { cluster: false, keys: &k, partitions: &none };
    settle(conn, routing, GROUP, 3_600_000, 10_000, settlements).await.expect("settle")
}

/// settle.lua's ack: acked, the follow-up written, the event recorded as handled and its
/// marker forgotten; the same settle again is `Elsewhere` and writes nothing twice; a
/// follow-up stream of another type refuses the whole settle before the ack.
#[tokio::test]
async fn settle_acks_with_follow_ups_once_and_a_wrong_typed_target_refuses_before_the_ack() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    group(&mut conn, "events").await;
    let id = add(&mut conn, "events", &[("id", "e")]).await;
    let other = add(&mut conn, "events", &[("id", "f")]).await;
    deliver(&mut conn, "events").await;
    let _: () =
        cmd(&mut conn, &["HSET", &k.inflight, "e", &scripts::marker(now_ms() + 10_000, 1, &format!("events/{id}"))])
            .await;
    let _: () = cmd(&mut conn, &["SET", "wrong", "a string"]).await;
    let ack = |id: &str, event_id: &str, target: &str| {
        let follow_ups = vec![FollowUp { stream: target.into(), event: Event::new("Done", "sub", "{}") }];
        settlement(id, event_id, false, Disposition::Ack { record: true, effects: Effects { follow_ups, state: None } })
    };
    let s = ack(&id, "e", "records");
    assert_eq!(settle_all(&mut conn, std::slice::from_ref(&s)).await, [Settled::Done]);
    assert_eq!(settle_all(&mut conn, &[s]).await, [Settled::Elsewhere]);
    assert_eq!(entries(&mut conn, "records").await.len(), 1, "written once");
    assert_eq!(hget(&mut conn, &k.inflight, "e").await, None);
    let seen: Option<f64> = cmd(&mut conn, &["ZSCORE", &k.seen, "e"]).await;
    assert!(seen.is_some(), "recorded as handled");
    assert_eq!(settle_all(&mut conn, &[ack(&other, "f", "wrong")]).await, [Settled::FollowUpRefused]);
    assert_eq!(pending(&mut conn, "events").await, 1, "refused before the ack");
}

/// settle.lua's retry keeps the event's marker (lease from its due time, budget restarted)
/// and its key; its dead letter with a wrong-typed dead-letter key is refused and the run given
/// back; a give-back takes a charged start off the budget and ends the lease, once.
#[tokio::test]
async fn settle_retries_refuses_a_wrong_typed_dead_letter_key_and_gives_back_once() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    group(&mut conn, "events").await;
    let ids = [add(&mut conn, "events", &[("id", "r")]).await, add(&mut conn, "events", &[("id", "g")]).await];
    deliver(&mut conn, "events").await;
    let now = now_ms();
    for (event, id) in [("r", &ids[0]), ("g", &ids[1])] {
        let _: () =
            cmd(&mut conn, &["HSET", &k.inflight, event, &scripts::marker(now + 10_000, 2, &format!("events/{id}"))])
                .await;
    }
    let due = now + 5_000;
    let retry = Disposition::Retry { due_ms: due, fields: vec![(b"id".to_vec(), b"r".to_vec())] };
    assert_eq!(settle_all(&mut conn, &[settlement(&ids[0], "r", true, retry)]).await, [Settled::Done]);
    let scheduled: Vec<(Vec<u8>, f64)> = cmd(&mut conn, &["ZRANGE", &k.schedule, "0", "-1", "WITHSCORES"]).await;
    assert_eq!(scheduled, [(scripts::netstrings(&[("id", "r")]), due as f64)]);
    assert_eq!(
        hget(&mut conn, &k.inflight, "r").await,
        Some(scripts::marker(due + 10_000, 0, &format!("events/{}", ids[0])))
    );

    let _: () = cmd(&mut conn, &["SET", &k.dlq, "a string"]).await;
    let letter = Disposition::DeadLetter { fields: vec![(b"id".to_vec(), b"g".to_vec())] };
    assert_eq!(settle_all(&mut conn, &[settlement(&ids[1], "g", false, letter)]).await, [Settled::KeyRefused]);
    assert_eq!(pending(&mut conn, "events").await, 1, "not acked");
    let owner = format!("events/{}", ids[1]);
    let marker = hget(&mut conn, &k.inflight, "g").await.expect("kept: it counts a run");
    let (expiry, rest) = marker.split_once(':').expect("marker");
    assert_eq!(rest, format!("1:{owner}"), "the refused run is given back");
    assert!(expiry.parse::<u64>().expect("ms") <= now_ms(), "its lease ended");
    let give_back = Settlement::give_back("events".into(), ids[1].clone(), "g".into(), owner.clone(), true);
    assert_eq!(settle_all(&mut conn, &[give_back]).await, [Settled::Done]);
    assert_eq!(hget(&mut conn, &k.inflight, "g").await, Some(marker), "a lease already ended gives nothing back twice");
}

/// settle.lua hands a key on: the holder's settle moves the next parked entry to the retry
/// stream and makes it the holder; a parked entry without `_origin` cannot be handed the key:
/// it is dead-lettered as `invalid-event` (keeping its identifying attributes) and the key goes
/// on to the next; with nothing parked the key is freed.
#[tokio::test]
async fn settle_hands_the_key_to_the_next_parked_entry_and_sets_aside_one_without_an_origin() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    group(&mut conn, "events").await;
    let id = add(&mut conn, "events", &[("id", "h")]).await;
    deliver(&mut conn, "events").await;
    let owner = format!("events/{id}");
    let _: () = cmd(&mut conn, &["HSET", &k.holds, "K", &owner]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.holders, &owner, "K"]).await;
    let broken = scripts::netstrings(&[("id", "x"), ("type", "T"), ("data", "{}")]);
    let next = scripts::netstrings(&[("id", "n"), ("_origin", "events/7-0")]);
    for stored in [&broken, &next] {
        let _: () = redis::cmd("RPUSH").arg(k.parked("K")).arg(stored).query_async(&mut conn).await.expect("RPUSH");
    }
    let _: () = cmd(&mut conn, &["SET", &k.parked_count, "2"]).await;
    let skip = settlement(&id, "h", true, Disposition::Skip);
    assert_eq!(settle_all(&mut conn, &[skip]).await, [Settled::Done]);
    assert_eq!(hget(&mut conn, &k.holds, "K").await.as_deref(), Some("events/7-0"));
    assert_eq!(hget(&mut conn, &k.holders, &owner).await, None);
    assert_eq!(hget(&mut conn, &k.holders, "events/7-0").await.as_deref(), Some("K"));
    let since: Option<f64> = cmd(&mut conn, &["ZSCORE", &k.hold_since, "K"]).await;
    assert!(since.is_some(), "the new holder's hold began now");
    assert_eq!(cmd::<i64>(&mut conn, &["GET", &k.parked_count]).await, 0);
    let retried = entries(&mut conn, &k.retry).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(field(&retried[0], "id"), Some("n"));
    let letters = entries(&mut conn, &k.dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!((field(&letters[0], "_kind"), field(&letters[0], "id")), (Some("invalid-event"), Some("x")));
    assert_eq!((field(&letters[0], "type"), field(&letters[0], "data")), (Some("T"), None));
    // The new holder settles with nothing parked: the key is free.
    let _: () = cmd(&mut conn, &["XGROUP", "CREATE", &k.retry, GROUP, "0"]).await;
    deliver(&mut conn, &k.retry).await;
    let retry_id: Vec<(String, Value)> = cmd(&mut conn, &["XRANGE", &k.retry, "-", "+"]).await;
    let mut done = settlement(&retry_id[0].0, "n", true, Disposition::Skip);
    (done.key, done.owner) = (k.retry.clone(), "events/7-0".into());
    assert_eq!(settle_all(&mut conn, &[done]).await, [Settled::Done]);
    assert_eq!(hget(&mut conn, &k.holds, "K").await, None);
    let since: Option<f64> = cmd(&mut conn, &["ZSCORE", &k.hold_since, "K"]).await;
    assert_eq!(since, None);
}

// ---- start.lua, refresh.lua, sweep.lua ------------------------------------------------------

/// start.lua charges a run only where the marker is the asker's (`starts + 1`, lease pushed)
/// and reads the state key a started run asks for (value and version; nothing for a refused
/// run; empty where the state hash holds another type); refresh.lua pushes only the asker's leases and counts them; sweep.lua drops only markers
/// whose lease ended before its cut and returns the next cursor.
#[tokio::test]
async fn start_refresh_and_sweep_touch_only_the_askers_markers() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    let now = now_ms();
    let _: () = cmd(&mut conn, &["HSET", &k.inflight, "mine", &scripts::marker(now, 1, "events/1-0")]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.inflight, "theirs", &scripts::marker(now, 0, "events/2-0")]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.inflight, "old", &scripts::marker(5, 3, "events/3-0")]).await;
    let expiry = (now + 1_000).to_string();
    let args = [expiry.as_str(), "mine", "events/1-0", "", "theirs", "events/1-0", "k", "gone", "events/1-0", ""];
    let reply = scripts::call(&mut conn, &scripts::START, &[&k.inflight, &k.state], &args).await.expect("start");
    assert_eq!(Start::parse_all(reply, 3).expect("parsed"), [Start::Started(None), Start::Refused, Start::Refused]);
    assert_eq!(hget(&mut conn, &k.inflight, "mine").await, Some(format!("{expiry}:2:events/1-0")));
    assert_eq!(hget(&mut conn, &k.inflight, "gone").await, None, "nothing created");

    let _: () = cmd(&mut conn, &["HSET", &k.state, "=k", "v", "#k", "7"]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.inflight, "a", &scripts::marker(now, 0, "events/4-0")]).await;
    let _: () = cmd(&mut conn, &["HSET", &k.inflight, "b", &scripts::marker(now, 0, "events/5-0")]).await;
    let args = [expiry.as_str(), "a", "events/4-0", "k", "b", "events/5-0", "unset"];
    let reply = scripts::call(&mut conn, &scripts::START, &[&k.inflight, &k.state], &args).await.expect("start");
    assert_eq!(
        Start::parse_all(reply, 2).expect("parsed"),
        [Start::Started(Some((Some(b"v".to_vec()), 7))), Start::Started(Some((None, 0)))]
    );
    let _: () = cmd(&mut conn, &["DEL", &k.state]).await;
    let _: () = cmd(&mut conn, &["SET", &k.state, "not a hash"]).await;
    let args = [expiry.as_str(), "a", "events/4-0", "k"];
    let reply = scripts::call(&mut conn, &scripts::START, &[&k.inflight, &k.state], &args).await.expect("start");
    assert_eq!(Start::parse_all(reply, 1).expect("parsed"), [Start::Started(Some((None, 0)))], "charged all the same");
    assert_eq!(hget(&mut conn, &k.inflight, "a").await, Some(format!("{expiry}:2:events/4-0")));

    let pushed = (now + 2_000).to_string();
    let args = [pushed.as_str(), "mine", "events/1-0", "theirs", "events/1-0"];
    let reply = scripts::call(&mut conn, &scripts::REFRESH, &[&k.inflight], &args).await.expect("refresh");
    assert_eq!(scripts::parse::<u64>(&scripts::REFRESH, &reply).expect("count"), 1);
    assert_eq!(hget(&mut conn, &k.inflight, "mine").await, Some(format!("{pushed}:2:events/1-0")));
    assert_eq!(hget(&mut conn, &k.inflight, "theirs").await, Some(scripts::marker(now, 0, "events/2-0")));

    let reply = scripts::call(&mut conn, &scripts::SWEEP, &[&k.inflight], &["0", "1000", "100"]).await.expect("sweep");
    assert_eq!(scripts::parse::<String>(&scripts::SWEEP, &reply).expect("cursor"), "0");
    let left: BTreeSet<String> = cmd(&mut conn, &["HKEYS", &k.inflight]).await;
    assert_eq!(left, ["a", "b", "mine", "theirs"].map(String::from).into());
}

// ---- promote.lua, replay.lua, count.lua, reap.lua ---------------------------------------------

/// promote.lua moves the due retries only, each once; replay.lua moves a dead letter once and
/// answers `Gone` the second time; count.lua counts after an id up to its cap; reap.lua
/// removes only the silent consumers with nothing pending, never the asker.
#[tokio::test]
async fn promote_replay_count_and_reap_keep_their_contracts() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    let due = scripts::netstrings(&[("id", "due")]);
    let later = scripts::netstrings(&[("id", "later")]);
    let _: () = redis::cmd("ZADD")
        .arg(&k.schedule)
        .arg(10)
        .arg(&due)
        .arg(5_000)
        .arg(&later)
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    let moved = ferry::consume::housekeeping::promote(&mut conn, &k, 100, 10).await.expect("promote");
    assert_eq!(moved, 1);
    assert_eq!(ferry::consume::housekeeping::promote(&mut conn, &k, 100, 10).await.expect("promote"), 0);
    assert_eq!(entries(&mut conn, &k.retry).await, [vec![("id".to_string(), "due".to_string())]]);

    let letter = add(&mut conn, &k.dlq, &[("id", "l")]).await;
    let stored = scripts::netstrings(&[("id", "l"), ("_replay", "1")]);
    let args = [letter.as_bytes().to_vec(), stored];
    for want in [Replay::Moved, Replay::Gone] {
        let reply = scripts::call(&mut conn, &scripts::REPLAY, &[&k.dlq, &k.retry], &args).await.expect("replay");
        assert_eq!(Replay::parse(&reply).expect("parsed"), want);
    }
    assert_eq!(entries(&mut conn, &k.retry).await.len(), 2);

    let first = add(&mut conn, "counted", &[("n", "1")]).await;
    for _ in 0..4 {
        add(&mut conn, "counted", &[("n", "2")]).await;
    }
    for (cap, want) in [("100", 4), ("3", 3)] {
        let reply =
            scripts::call(&mut conn, &scripts::COUNT, &["counted"], &[first.as_str(), cap]).await.expect("count");
        assert_eq!(scripts::parse::<u64>(&scripts::COUNT, &reply).expect("count"), want);
    }

    group(&mut conn, "counted").await;
    for consumer in ["me", "silent", "busy"] {
        let _: () = cmd(&mut conn, &["XGROUP", "CREATECONSUMER", "counted", GROUP, consumer]).await;
    }
    let _: Value =
        cmd(&mut conn, &["XREADGROUP", "GROUP", GROUP, "busy", "COUNT", "1", "STREAMS", "counted", ">"]).await;
    let removed = env
        .wait_for("a silent consumer to be reaped", std::time::Duration::from_secs(10), || {
            let mut conn = conn.clone();
            async move {
                let reply =
                    scripts::call(&mut conn, &scripts::REAP, &["counted"], &[GROUP, "me", "50"]).await.expect("reap");
                let removed: Vec<String> = scripts::parse(&scripts::REAP, &reply).expect("names");
                (!removed.is_empty()).then_some(removed)
            }
        })
        .await;
    assert_eq!(removed, ["silent"], "only the silent consumer with nothing pending, never the asker");
    let left: Vec<Vec<Value>> = cmd(&mut conn, &["XINFO", "CONSUMERS", "counted", GROUP]).await;
    assert_eq!(left.len(), 2, "me and busy stay");
}

// ---- trim.lua, state_commit.lua ------------------------------------------------------------

/// trim.lua answers zeros for a stream that is not there, and never trims below a group's
/// floor: with an unread entry left, a retry stream is trimmed to that entry.
#[tokio::test]
async fn trim_stops_at_the_floor_and_answers_for_a_missing_stream() {
    let env = Env::new();
    let mut conn = env.conn().await;
    let pass = ferry::consume::trim::pass(&mut conn, "missing", None, now_ms()).await.expect("trim");
    assert_eq!((pass.removed, pass.length), (0, 0));
    group(&mut conn, "retry").await;
    for i in 0..3 {
        add(&mut conn, "retry", &[("i", &i.to_string())]).await;
    }
    let _: Value = cmd(&mut conn, &["XREADGROUP", "GROUP", GROUP, "c", "COUNT", "2", "STREAMS", "retry", ">"]).await;
    let ids: Vec<(String, Value)> = cmd(&mut conn, &["XRANGE", "retry", "-", "+"]).await;
    let _: i64 = cmd(&mut conn, &["XACK", "retry", GROUP, &ids[0].0]).await;
    let pass = ferry::consume::trim::pass(&mut conn, "retry", None, now_ms()).await.expect("trim");
    assert_eq!((pass.removed, pass.length), (1, 2), "the pending second entry is the floor");
    assert_eq!(pass.floor.map(|f| f.id), Some(ids[1].0.clone()));
}

/// state_commit.lua: a commit whose reads are current writes (`Done`), one whose key changed
/// meanwhile is a `Conflict` naming the key, one past the quota is `OverQuota` with the total;
/// neither refusal writes anything.
#[tokio::test]
async fn state_commit_applies_current_reads_and_refuses_a_conflict_or_the_quota() {
    use ferry::plugin::state::{COMMIT, Committed, parse_commit};
    let env = Env::new();
    let mut conn = env.conn().await;
    let k = keys();
    // quota, reads, (key, seen), writes, the checked writes' change, (key, op, value, next)
    let commit = |quota: &str, seen: &str, delta: &str, value: &str, next: &str| -> Vec<String> {
        [quota, "1", "n", seen, "1", delta, "n", "s", value, next].map(String::from).to_vec()
    };
    let mut run = async |args: Vec<String>| {
        let mut invocation = COMMIT.key(&k.state);
        invocation.arg(args);
        let reply: Vec<Value> = invocation.invoke_async(&mut conn).await.expect("commit");
        parse_commit(&reply).expect("parsed")
    };
    assert_eq!(run(commit("0", "0", "2", "1", "1")).await, Committed::Done);
    assert_eq!(run(commit("0", "0", "2", "2", "1")).await, Committed::Conflict("n".into()));
    assert_eq!(run(commit("4", "1", "11", "a long value", "2")).await, Committed::OverQuota { total: 2 });
    let mut conn = env.conn().await;
    assert_eq!(hget(&mut conn, &k.state, "=n").await.as_deref(), Some("1"));
    assert_eq!(hget(&mut conn, &k.state, "#n").await.as_deref(), Some("1"));
}
