//! A handler's state, changed exactly once per event (issue 25): what one event's call
//! reads and writes, buffered by the host and committed with the event's acknowledgement.
//!
//! Reads see the committed state plus the event's own writes ([`Txn::get`]). Writes stay in
//! the [`Txn`] until the settle commits them (`state_commit.lua`): an event that is retried,
//! dead-lettered, trapped, timed out, or whose host dies leaves nothing behind. Concurrency is
//! optimistic: every key read is committed only if its version is still the one seen; a
//! conflicting commit writes nothing and the event runs again (not charged: it did nothing
//! wrong). Increments read and write, so two hosts incrementing one key never lose an update.
//!
//! Bounds ([`StateLimits`]): key and value sizes and writes per event are refused at the call
//! with a clear error to the guest; the subscriber's total bytes are checked when the commit
//! runs (only it knows the total then).
//!
//! Where the committed state is read from is a [`Source`]: Redis ([`Conn`]) in a host, or
//! [`Memory`] where no Redis runs (`ferry plugins invoke --state`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::connection::Conn;
use crate::handler::Prefetched;
use crate::keys::state_field;

/// A committed value and its version (0: never written).
pub type Stored = (Option<Vec<u8>>, u64);

/// Where a [`Txn`] reads the committed state: the value and version of each key.
pub trait Source {
    /// The committed value and version of each of `keys` of the state hash `hash`, in order.
    fn read(&mut self, hash: &str, keys: &[&str]) -> impl Future<Output = Result<Vec<Stored>, StateError>> + Send;
}

impl Source for Conn {
    fn read(&mut self, hash: &str, keys: &[&str]) -> impl Future<Output = Result<Vec<Stored>, StateError>> + Send {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(hash);
        for k in keys {
            cmd.arg(state_field::value(k)).arg(state_field::version(k));
        }
        async move {
            let reply: Vec<Option<Vec<u8>>> = cmd
                .query_async(self)
                .await
                .map_err(|e| StateError::Unavailable(crate::redact::redact(&e.to_string())))?;
            Ok(reply
                .chunks(2)
                .map(|pair| {
                    let version = pair
                        .get(1)
                        .cloned()
                        .flatten()
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    (pair.first().cloned().flatten(), version)
                })
                .collect())
        }
    }
}

/// Handler state held in memory, for `ferry plugins invoke` (one call, no Redis, so no
/// concurrent writer: every version is 0). Clones share the values.
#[derive(Debug, Clone, Default)]
pub struct Memory(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl Memory {
    /// State holding `values`.
    pub fn with(values: BTreeMap<String, Vec<u8>>) -> Self {
        Self(Arc::new(Mutex::new(values)))
    }

    /// Apply a transaction's `writes` (what a commit would write).
    pub fn apply(&self, writes: &BTreeMap<String, Option<Vec<u8>>>) {
        let mut values = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in writes {
            match v {
                Some(v) => values.insert(k.clone(), v.clone()),
                None => values.remove(k),
            };
        }
    }

    /// The values now.
    pub fn values(&self) -> BTreeMap<String, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Source for Memory {
    fn read(&mut self, _hash: &str, keys: &[&str]) -> impl Future<Output = Result<Vec<Stored>, StateError>> + Send {
        let values = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let found: Vec<Stored> = keys.iter().map(|k| (values.get(*k).cloned(), 0)).collect();
        std::future::ready(Ok(found))
    }
}

/// The commit script (see its header), after the state rules it shares with the settle
/// (`consume/state.lua`).
pub static COMMIT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    let rules = concat!(include_str!("../consume/state.lua"), include_str!("state_commit.lua"));
    redis::Script::new(&format!("{}{rules}", crate::keys::state_field::lua()))
});

/// A subscriber's state bounds (`[subscribers.NAME.state]`).
pub use crate::config::StateLimits;

/// Why a state call failed; the guest gets the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A key over `limits.key_bytes`, or empty.
    #[error("state key of {0} bytes: keys are 1 to {1} bytes")]
    Key(usize, usize),
    /// A value over `limits.value_bytes`.
    #[error("state value of {0} bytes is over the limit of {1}")]
    Value(usize, usize),
    /// More keys written than `limits.writes_per_event`.
    #[error("more than {0} state keys written by one event")]
    Writes(usize),
    /// `increment` on a value that is not a decimal i64, or an overflow.
    #[error("state key {0:?} does not hold an integer (or the increment overflows)")]
    NotInteger(String),
    /// Redis could not be read: the event is retried.
    #[error("state unavailable: {0}")]
    Unavailable(String),
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Written (or nothing to write).
    Done,
    /// A key read changed meanwhile: nothing was written; run the event again.
    Conflict(String),
    /// The subscriber's quota would be exceeded: nothing was written.
    OverQuota {
        /// The bytes stored now.
        total: u64,
    },
}

/// One event's state reads and writes (see the module docs).
#[derive(Debug, Clone)]
pub struct Txn {
    key: String,
    limits: StateLimits,
    /// Version seen of every key read from Redis, and the length of the value it held then
    /// (`None`: none), from which the commit's change of the total is worked out.
    seen: BTreeMap<String, (u64, Option<usize>)>,
    /// The event's view: committed values read, overlaid by its own writes.
    view: BTreeMap<String, Option<Vec<u8>>>,
    /// Its writes: `Some` set, `None` delete.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// A key's committed value and version read before the call (`handler::Job::prefetched`):
    /// taken into the view, as a read, only when the event reads that key.
    prefetched: Option<Arc<Prefetched>>,
}

impl Txn {
    /// An empty transaction on the state hash `key` (from [`crate::keys::state`]).
    pub fn new(key: String, limits: StateLimits) -> Self {
        Self { key, limits, seen: BTreeMap::new(), view: BTreeMap::new(), writes: BTreeMap::new(), prefetched: None }
    }

    /// The transaction with `prefetched` known: a read of its key takes it instead of asking
    /// the source (the commit checks its version as for any read).
    pub fn with_prefetched(mut self, prefetched: Option<Arc<Prefetched>>) -> Self {
        self.prefetched = prefetched;
        self
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        if key.is_empty() || key.len() > self.limits.key_bytes {
            return Err(StateError::Key(key.len(), self.limits.key_bytes));
        }
        Ok(())
    }

    /// Read `keys` not yet in the view from `source`, value and version in one round trip.
    async fn load<S: Source>(&mut self, source: &mut S, keys: &[&str]) -> Result<(), StateError> {
        if let Some(ahead) = self.prefetched.take_if(|p| keys.contains(&p.key.as_str()))
            && !self.view.contains_key(&ahead.key)
        {
            self.seen.insert(ahead.key.clone(), (ahead.version, ahead.value.as_ref().map(Vec::len)));
            self.view.insert(ahead.key.clone(), ahead.value.clone());
        }
        let missing: Vec<&str> = keys.iter().copied().filter(|k| !self.view.contains_key(*k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let read = source.read(&self.key, &missing).await?;
        for (k, (value, version)) in missing.iter().zip(read) {
            self.seen.insert(k.to_string(), (version, value.as_ref().map(Vec::len)));
            self.view.insert(k.to_string(), value);
        }
        Ok(())
    }

    /// The value of `key`: the event's own write if any, else the committed one.
    pub async fn get<S: Source>(&mut self, conn: &mut S, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.check_key(key)?;
        self.load(conn, &[key]).await?;
        Ok(self.view.get(key).cloned().flatten())
    }

    /// The values of `keys`, in order, in one round trip for those not read yet.
    pub async fn get_many<S: Source>(
        &mut self,
        conn: &mut S,
        keys: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        for k in keys {
            self.check_key(k)?;
        }
        self.load(conn, keys).await?;
        Ok(keys.iter().map(|k| self.view.get(*k).cloned().flatten()).collect())
    }

    /// Whether `key` has a value.
    pub async fn exists<S: Source>(&mut self, conn: &mut S, key: &str) -> Result<bool, StateError> {
        Ok(self.get(conn, key).await?.is_some())
    }

    fn write(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), StateError> {
        self.check_key(key)?;
        if let Some(v) = &value
            && v.len() > self.limits.value_bytes
        {
            return Err(StateError::Value(v.len(), self.limits.value_bytes));
        }
        if !self.writes.contains_key(key) && self.writes.len() >= self.limits.writes_per_event {
            return Err(StateError::Writes(self.limits.writes_per_event));
        }
        self.view.insert(key.to_string(), value.clone());
        self.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// Set `key` to `value` (a blind write: not version-checked unless the event read it).
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), StateError> {
        self.write(key, Some(value))
    }

    /// Delete `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), StateError> {
        self.write(key, None)
    }

    /// Add `delta` to the integer at `key` (absent: 0) and return the new value. It reads the
    /// key, so the commit checks its version: no concurrent increment is lost.
    pub async fn increment<S: Source>(&mut self, conn: &mut S, key: &str, delta: i64) -> Result<i64, StateError> {
        let now = match self.get(conn, key).await? {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| StateError::NotInteger(key.to_string()))?,
        };
        let next = now.checked_add(delta).ok_or_else(|| StateError::NotInteger(key.to_string()))?;
        self.set(key, next.to_string().into_bytes())?;
        Ok(next)
    }

    /// Whether there is nothing to commit (no writes: reads alone need no check).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The event's writes, for `ferry plugins invoke` and the trace.
    pub fn writes(&self) -> &BTreeMap<String, Option<Vec<u8>>> {
        &self.writes
    }

    /// The commit's arguments (see `consume/state.lua`): the quota, the reads, the writes.
    /// A write of a key the event read is sent with its next version and its share of the
    /// total's change (the commit applies only if that read is still current, so what was
    /// read is what is stored); a blind write is left for the script to look up.
    pub fn commit_args(&self) -> Vec<Vec<u8>> {
        let number = |n: &dyn std::fmt::Display| n.to_string().into_bytes();
        let mut args = Vec::with_capacity(4 + 2 * self.seen.len() + 4 * self.writes.len());
        args.push(number(&self.limits.quota_bytes));
        args.push(number(&self.seen.len()));
        for (k, (version, _)) in &self.seen {
            args.push(k.clone().into_bytes());
            args.push(number(version));
        }
        args.push(number(&self.writes.len()));
        let delta_at = args.len();
        args.push(Vec::new());
        let mut delta: i64 = 0;
        for (k, v) in &self.writes {
            args.push(k.clone().into_bytes());
            args.push(if v.is_some() { b"s".to_vec() } else { b"d".to_vec() });
            args.push(v.clone().unwrap_or_default());
            match self.seen.get(k) {
                Some((version, had)) => {
                    delta += size_change(k.len(), *had, v.as_ref().map(Vec::len));
                    args.push(number(&(version + 1)));
                }
                None => args.push(Vec::new()),
            }
        }
        args[delta_at] = number(&delta);
        args
    }

    /// Commit on its own (the settle runs the same rules with the ack).
    pub async fn commit(&self, conn: &mut Conn) -> redis::RedisResult<Committed> {
        if self.is_empty() {
            return Ok(Committed::Done);
        }
        let mut invocation = COMMIT.key(&self.key);
        for a in self.commit_args() {
            invocation.arg(a);
        }
        let reply: Vec<redis::Value> = invocation.invoke_async(conn).await?;
        parse_commit(&reply)
    }
}

/// How a write changes the bytes stored: a key of `key` bytes holding a value of `had` bytes
/// (`None`: none) before and `now` after (`None`: deleted), as `state.lua` counts them.
fn size_change(key: usize, had: Option<usize>, now: Option<usize>) -> i64 {
    let stored = |v: Option<usize>| v.map_or(0, |len| (key + len) as i64);
    stored(now) - stored(had)
}

/// The commit script's reply, with an explicit error arm for anything else.
pub fn parse_commit(reply: &[redis::Value]) -> redis::RedisResult<Committed> {
    use redis::Value;
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    match int(reply.first()) {
        Some(1) => Ok(Committed::Done),
        Some(0) => match reply.get(1) {
            Some(Value::BulkString(k)) => Ok(Committed::Conflict(String::from_utf8_lossy(k).into_owned())),
            _ => Err(bad_reply(reply)),
        },
        Some(-1) => Ok(Committed::OverQuota { total: int(reply.get(1)).unwrap_or(0).max(0) as u64 }),
        _ => Err(bad_reply(reply)),
    }
}

fn bad_reply(reply: &[redis::Value]) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a ferry script",
        format!("state_commit.lua answered {reply:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_test_kit::redis_server::RedisServer;

    async fn conn(server: &RedisServer) -> Conn {
        let client = redis::Client::open(server.url()).expect("url");
        Conn::Node(client.get_multiplexed_async_connection().await.expect("connect"))
    }

    fn txn() -> Txn {
        Txn::new(crate::keys::state("events", "inventory"), StateLimits { quota_bytes: 64, ..StateLimits::default() })
    }

    #[tokio::test]
    async fn reads_see_own_writes_and_nothing_is_written_before_the_commit() {
        let server = RedisServer::start().expect("redis");
        let mut c = conn(&server).await;
        let mut t = txn();
        assert_eq!(t.get(&mut c, "sku-1").await.expect("get"), None);
        t.set("sku-1", b"7".to_vec()).expect("set");
        assert_eq!(t.get(&mut c, "sku-1").await.expect("get"), Some(b"7".to_vec()), "own write");
        assert_eq!(t.increment(&mut c, "sku-1", 3).await.expect("incr"), 10);
        assert!(t.exists(&mut c, "sku-1").await.expect("exists"));
        let mut other = txn();
        assert_eq!(other.get(&mut c, "sku-1").await.expect("get"), None, "not committed: invisible");
        // A retried or dead-lettered event is a dropped Txn: nothing to undo.
        drop(t);
        let mut again = txn();
        assert_eq!(again.get(&mut c, "sku-1").await.expect("get"), None);
        again.set("sku-1", b"5".to_vec()).expect("set");
        assert_eq!(again.commit(&mut c).await.expect("commit"), Committed::Done);
        let mut fresh = txn();
        assert_eq!(fresh.get_many(&mut c, &["sku-1", "sku-2"]).await.expect("get"), vec![Some(b"5".to_vec()), None]);
    }

    #[tokio::test]
    async fn a_key_changed_after_it_was_read_is_a_conflict_and_writes_nothing() {
        let server = RedisServer::start().expect("redis");
        let mut c = conn(&server).await;
        let (mut a, mut b) = (txn(), txn());
        a.increment(&mut c, "n", 1).await.expect("a");
        b.increment(&mut c, "n", 1).await.expect("b");
        b.set("other", b"x".to_vec()).expect("b");
        assert_eq!(a.commit(&mut c).await.expect("a"), Committed::Done);
        assert_eq!(b.commit(&mut c).await.expect("b"), Committed::Conflict("n".into()));
        let mut check = txn();
        assert_eq!(check.get_many(&mut c, &["n", "other"]).await.expect("get"), vec![Some(b"1".to_vec()), None]);
        // A delete bumps the version too: a reader of the deleted key conflicts.
        let mut reader = txn();
        reader.get(&mut c, "n").await.expect("get");
        reader.set("n2", b"y".to_vec()).expect("set");
        let mut deleter = txn();
        deleter.delete("n").expect("delete");
        assert_eq!(deleter.commit(&mut c).await.expect("delete"), Committed::Done);
        assert_eq!(reader.commit(&mut c).await.expect("reader"), Committed::Conflict("n".into()));
    }

    /// A key read ahead is read from there (no round trip) and checked at the commit like any
    /// read: stale, the commit conflicts; a key read ahead but never read is not checked.
    #[tokio::test]
    async fn a_prefetched_key_is_read_without_asking_and_checked_at_the_commit() {
        let server = RedisServer::start().expect("redis");
        let mut c = conn(&server).await;
        let ahead = |value: &str, version| {
            Some(Arc::new(Prefetched { key: "n".into(), value: Some(value.as_bytes().to_vec()), version }))
        };
        let mut first = txn();
        first.increment(&mut c, "n", 1).await.expect("incr");
        assert_eq!(first.commit(&mut c).await.expect("commit"), Committed::Done);
        // Seeded with what Redis does not hold: the read shows the prefetched value.
        let mut stale = txn().with_prefetched(ahead("40", 0));
        assert_eq!(stale.increment(&mut c, "n", 1).await.expect("incr"), 41, "read from the prefetch");
        assert_eq!(stale.commit(&mut c).await.expect("commit"), Committed::Conflict("n".into()));
        let mut fresh = txn().with_prefetched(ahead("1", 1));
        assert_eq!(fresh.increment(&mut c, "n", 1).await.expect("incr"), 2);
        assert_eq!(fresh.commit(&mut c).await.expect("commit"), Committed::Done);
        // Not read: no check, so a stale prefetch of another key costs nothing.
        let mut blind = txn().with_prefetched(ahead("40", 0));
        blind.set("m", b"x".to_vec()).expect("set");
        assert_eq!(blind.commit_args()[1], b"0", "no read to check");
        assert_eq!(blind.commit(&mut c).await.expect("commit"), Committed::Done);
        // Written before it is read: the event's own write wins over the prefetch.
        let mut own = txn().with_prefetched(ahead("40", 0));
        own.set("n", b"7".to_vec()).expect("set");
        assert_eq!(own.get(&mut c, "n").await.expect("get"), Some(b"7".to_vec()));
        let mut check = txn();
        assert_eq!(check.get(&mut c, "n").await.expect("get"), Some(b"2".to_vec()));
    }

    #[tokio::test]
    async fn bounds_are_refused_at_the_call_and_the_quota_at_the_commit() {
        let server = RedisServer::start().expect("redis");
        let mut c = conn(&server).await;
        let mut t = Txn::new(
            crate::keys::state("events", "inventory"),
            StateLimits { key_bytes: 8, value_bytes: 16, writes_per_event: 2, quota_bytes: 20, prefetch: true },
        );
        assert_eq!(t.set("", vec![]), Err(StateError::Key(0, 8)));
        assert_eq!(t.set("123456789", vec![]), Err(StateError::Key(9, 8)));
        assert_eq!(t.set("k", vec![0; 17]), Err(StateError::Value(17, 16)));
        t.set("a", vec![1; 10]).expect("a");
        t.set("b", vec![1; 10]).expect("b");
        t.set("a", vec![2; 10]).expect("rewriting a key written already is not another write");
        assert_eq!(t.set("c", vec![]), Err(StateError::Writes(2)));
        // 1 + 10 + 1 + 10 = 22 bytes > 20.
        assert_eq!(t.commit(&mut c).await.expect("commit"), Committed::OverQuota { total: 0 });
        let mut small = Txn::new(
            crate::keys::state("events", "inventory"),
            StateLimits { quota_bytes: 20, ..StateLimits::default() },
        );
        small.set("a", vec![1; 10]).expect("a");
        assert_eq!(small.commit(&mut c).await.expect("commit"), Committed::Done);
        let mut bad = txn();
        bad.set("word", b"seven".to_vec()).expect("set");
        assert_eq!(bad.increment(&mut c, "word", 1).await, Err(StateError::NotInteger("word".into())));
    }

    #[tokio::test]
    async fn a_txn_on_memory_reads_the_seed_and_its_own_writes_and_applies_them() {
        let mut memory = Memory::with([("n".to_string(), b"41".to_vec())].into());
        let mut t = txn();
        assert_eq!(t.increment(&mut memory, "n", 1).await.expect("incr"), 42);
        assert_eq!(t.get_many(&mut memory, &["n", "m"]).await.expect("get"), vec![Some(b"42".to_vec()), None]);
        assert_eq!(memory.values()["n"], b"41", "nothing is written before the commit");
        t.delete("gone").expect("delete");
        memory.apply(t.writes());
        assert_eq!(memory.values(), [("n".to_string(), b"42".to_vec())].into());
    }

    #[tokio::test]
    async fn two_writers_incrementing_one_key_lose_no_update() {
        let server = RedisServer::start().expect("redis");
        let c = conn(&server).await;
        let worker = |mut c: Conn| async move {
            let mut conflicts = 0u32;
            for _ in 0..500 {
                loop {
                    let mut t = txn();
                    t.increment(&mut c, "counter", 1).await.expect("incr");
                    // Yield between read and commit so the two writers interleave.
                    tokio::task::yield_now().await;
                    match t.commit(&mut c).await.expect("commit") {
                        Committed::Done => break,
                        Committed::Conflict(_) => conflicts += 1,
                        other => panic!("{other:?}"),
                    }
                }
            }
            conflicts
        };
        let (a, b) = tokio::join!(tokio::spawn(worker(c.clone())), tokio::spawn(worker(c.clone())));
        let conflicts = a.expect("a") + b.expect("b");
        eprintln!("{conflicts} conflicting commits ran again");
        let mut check = txn();
        let mut c = c;
        assert_eq!(
            check.get(&mut c, "counter").await.expect("get"),
            Some(b"1000".to_vec()),
            "{conflicts} conflicts retried"
        );
    }

    /// A write of a key the event read is sent with its next version and its share of the
    /// total's change (what the read found is what the commit replaces); a blind write is
    /// sent with neither, for the script to look up.
    #[tokio::test]
    async fn a_checked_write_carries_its_next_version_and_size_change_a_blind_one_neither() {
        let values = BTreeMap::from([("a".to_string(), b"abc".to_vec()), ("d".to_string(), b"xy".to_vec())]);
        let mut memory = Memory::with(values);
        let mut t = txn();
        assert_eq!(t.get_many(&mut memory, &["a", "d", "new"]).await.expect("read").len(), 3);
        t.set("a", b"hello".to_vec()).expect("set"); // +2
        t.delete("d").expect("delete"); // -(1 + 2)
        t.set("new", b"v".to_vec()).expect("set"); // +(3 + 1)
        t.set("blind", b"zz".to_vec()).expect("set"); // looked up by the script
        let text: Vec<String> = t.commit_args().iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!(
            text,
            [
                "64", "3", "a", "0", "d", "0", "new", "0", "4", "3", "a", "s", "hello", "1", "blind", "s", "zz", "",
                "d", "d", "", "1", "new", "s", "v", "1"
            ]
        );
        assert_eq!(size_change(3, None, None), 0, "deleting what was never there");
    }
}
