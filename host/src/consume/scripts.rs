//! ferry's Lua scripts, in one place: each state transition that must be atomic over
//! several keys is one script over keys that share the stream's hash tag.
//!
//! What the scripts and the Rust side must agree on is written here once: each script's key
//! order (the per-key set first, as one slice: [`per_key`]), the run marker
//! ([`marker`]), the argument encoding ([`netstrings`]), and the names and limits the scripts
//! read, generated into every script's head from the Rust constants ([`constants`]) rather
//! than copied into Lua. Every reply is parsed into a Rust type whose error arm names the
//! script ([`unexpected`]): a reply no arm reads is an error, never a silent default.
//!
//! Scripts are sent by `EVALSHA` and loaded on `NOSCRIPT` (after a Redis restart or a
//! `SCRIPT FLUSH`), so the hot path never sends a script body.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisError, Script, Value};

use super::letters::meta;
use crate::event::{MAX_ENTRY_BYTES, MAX_FIELDS, field};
use crate::handler::FailureKind;
use crate::keys::SubscriberKeys;

/// One of ferry's scripts: its file name (for errors) and its `redis::Script`.
pub struct Lua {
    /// The file the script was built from, e.g. `settle.lua`.
    pub name: &'static str,
    script: Script,
}

impl Lua {
    /// The script `name`: the generated constants, the prelude, then `parts` in order.
    fn new(name: &'static str, parts: &[&str]) -> Self {
        let mut text = constants();
        text.push_str(include_str!("prelude.lua"));
        for part in parts {
            text.push_str(part);
        }
        Self { name, script: Script::new(&text) }
    }
}

impl std::ops::Deref for Lua {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.script
    }
}

macro_rules! script {
    ($name:ident, $file:literal, $doc:literal) => {
        script!($name, $file, [include_str!($file)], $doc);
    };
    ($name:ident, $file:literal, $parts:expr, $doc:literal) => {
        #[doc = $doc]
        pub static $name: LazyLock<Lua> = LazyLock::new(|| Lua::new($file, &$parts));
    };
}

script!(READ, "read.lua", "Read new entries and, under per-key order, queue each on its key in stream order.");
script!(
    DISPATCH,
    "dispatch.lua",
    "Dedupe check-and-record, crash budget and partition keys taken or parked behind, for a read."
);
script!(
    SETTLE,
    "settle.lua",
    [include_str!("state.lua"), include_str!("settle.lua")],
    "Ack, retry, dead-letter or give back a batch of entries."
);
script!(
    ACKS,
    "acks.lua",
    [include_str!("state.lua"), include_str!("acks.lua")],
    "Ack a batch of entries that write state and nothing else, in fewer commands than settle.lua."
);
script!(PROMOTE, "promote.lua", "Move due retries into the retry stream.");
script!(
    START,
    "start.lua",
    [include_str!("state.lua"), include_str!("start.lua")],
    "Charge the runs that really start to their events' crash budgets; read ahead the state they ask for."
);
script!(COUNT, "count.lua", "Count a stream's entries after an id without sending them.");
script!(REFRESH, "refresh.lua", "Push the leases of the events this host is handling.");
script!(SWEEP, "sweep.lua", "Drop run markers abandoned long ago.");
script!(REAP, "reap.lua", "Remove silent consumers with nothing pending, atomically.");
script!(REPLAY, "replay.lua", "Move one dead letter to the retry stream, once.");
script!(TRIM, "trim.lua", "One bounded step of trimming a stream by its retention, never below its safe floor.");

/// Every script, for loading after `NOSCRIPT`.
fn all() -> [&'static Lua; 12] {
    [&READ, &DISPATCH, &SETTLE, &ACKS, &START, &COUNT, &PROMOTE, &REFRESH, &SWEEP, &REAP, &REPLAY, &TRIM]
}

/// A Lua string literal of `s`.
fn lua_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The head of every script: the Rust constants the scripts read, as Lua locals. `F` holds
/// ferry's `_` metadata names, `A` the event attributes, `INVALID_EVENT` the failure kind a
/// parked entry that cannot be handed its key is dead-lettered with.
pub fn constants() -> String {
    let table = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(name, value)| format!("{name} = {}", lua_string(value))).collect::<Vec<_>>().join(", ")
    };
    let f = table(&[
        ("PREFIX", meta::PREFIX),
        ("ATTEMPT", meta::ATTEMPT),
        ("ORIGIN", meta::ORIGIN),
        ("PARKED", meta::PARKED),
        ("KIND", meta::KIND),
        ("REASON", meta::REASON),
    ]);
    let a = table(&[
        ("ID", field::ID),
        ("TYPE", field::TYPE),
        ("SOURCE", field::SOURCE),
        ("TIME", field::TIME),
        ("PARTITIONKEY", field::PARTITIONKEY),
    ]);
    format!(
        "-- Generated from the Rust constants (consume/scripts.rs `constants`).\n\
         local MAX_FIELDS, MAX_ENTRY_BYTES = {MAX_FIELDS}, {MAX_ENTRY_BYTES}\n\
         local F = {{{f}}}\n\
         local A = {{{a}}}\n\
         local INVALID_EVENT = {}\n\
         {}",
        lua_string(FailureKind::InvalidEvent.as_str()),
        crate::keys::state_field::lua(),
    )
}

/// The per-key set, `KEYS[1..5]` of every script that takes, parks behind or hands on a
/// partition key (read, dispatch, settle), in this one order (the prelude's `per_key`).
pub fn per_key(keys: &SubscriberKeys) -> [&str; 5] {
    [&keys.holds, &keys.holders, &keys.hold_since, &keys.parked_count, &keys.parked_prefix]
}

/// The keys of `read.lua`: the per-key set, the source stream, the retry stream.
pub fn read_keys(keys: &SubscriberKeys) -> Vec<&str> {
    [&per_key(keys)[..], &[keys.stream.as_str(), keys.retry.as_str()]].concat()
}

/// The keys of `dispatch.lua`: the per-key set, seen, dead, inflight.
pub fn dispatch_keys(keys: &SubscriberKeys) -> Vec<&str> {
    [&per_key(keys)[..], &[keys.seen.as_str(), keys.dead.as_str(), keys.inflight.as_str()]].concat()
}

/// The keys of `settle.lua`: the per-key set, schedule, dead-letter stream, seen, dead,
/// inflight, retry stream, state.
pub fn settle_keys(keys: &SubscriberKeys) -> Vec<&str> {
    let own = [&keys.schedule, &keys.dlq, &keys.seen, &keys.dead, &keys.inflight, &keys.retry, &keys.state];
    [&per_key(keys)[..], &own.map(String::as_str)[..]].concat()
}

/// The keys of `acks.lua`: seen, dead, inflight, state.
pub fn acks_keys(keys: &SubscriberKeys) -> [&str; 4] {
    [&keys.seen, &keys.dead, &keys.inflight, &keys.state]
}

/// A run marker: `lease-expiry-ms:starts:owner` (the prelude's `mark`
/// writes it, `marker` reads it).
pub fn marker(expiry_ms: u64, starts: u32, owner: &str) -> String {
    format!("{expiry_ms}:{starts}:{owner}")
}

/// Encode fields as netstrings (`len:bytes,`), the form the prelude's `fields` decodes:
/// binary-safe, unlike JSON in Redis's Lua.
pub fn netstrings<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        push_netstring(&mut out, k.as_ref());
        push_netstring(&mut out, v.as_ref());
    }
    out
}

fn push_netstring(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(part.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(part);
    out.push(b',');
}

/// `EVALSHA sha numkeys keys... args...` for `script`.
pub fn evalsha<A: redis::ToRedisArgs>(script: &Script, keys: &[&str], args: &[A]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// Run `cmd` (an `EVALSHA`), loading the scripts first if the server lost them.
pub async fn run<C: ConnectionLike, T: FromRedisValue>(conn: &mut C, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// Run `script` over `keys` with `args`; its reply as it came, for the script's parser.
pub async fn call<C: ConnectionLike, A: redis::ToRedisArgs>(
    conn: &mut C,
    script: &Lua,
    keys: &[&str],
    args: &[A],
) -> redis::RedisResult<Value> {
    run(conn, &evalsha(script, keys, args)).await
}

/// Load every script into the server's script cache.
pub async fn load<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<()> {
    for script in all() {
        script.load_async(conn).await?;
    }
    Ok(())
}

/// `script` answered `reply`, which its reply type has no arm for: an error naming the script.
pub fn unexpected(script: &Lua, reply: &Value) -> RedisError {
    let mut shown = format!("{reply:?}");
    if shown.len() > 300 {
        let cut = (0..=300).rev().find(|&i| shown.is_char_boundary(i)).unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a ferry script",
        format!("{} answered {shown}", script.name),
    ))
}

/// A reply of type `T` from `script` (counts, cursors, names), or an error naming it.
pub fn parse<T: FromRedisValue>(script: &Lua, reply: &Value) -> redis::RedisResult<T> {
    T::from_redis_value_ref(reply).map_err(|_| unexpected(script, reply))
}

/// A list reply of exactly `n` items from `script`, each read by `item`.
pub fn list<T>(script: &Lua, reply: Value, n: usize, item: impl Fn(&Value) -> Option<T>) -> redis::RedisResult<Vec<T>> {
    match &reply {
        Value::Array(items) if items.len() == n => {
            items.iter().map(|v| item(v).ok_or_else(|| unexpected(script, &reply))).collect()
        }
        _ => Err(unexpected(script, &reply)),
    }
}

/// What `dispatch.lua` decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it now; `holds`: it holds its partition key (its settle hands the key on).
    Run {
        /// It holds its partition key.
        holds: bool,
    },
    /// Handled within the dedupe window: acked without running.
    Duplicate {
        /// It holds its partition key.
        holds: bool,
    },
    /// Dead-lettered within the dedupe window: acked without running.
    Dead {
        /// It holds its partition key.
        holds: bool,
    },
    /// Another delivery of the event is running: decided after that one settles.
    Wait,
    /// Its crash budget is spent: dead-lettered as `crash`.
    Crash,
    /// Parked behind its partition key (already acked and stored).
    Park,
}

impl Decision {
    /// The decision `dispatch.lua` writes as `word`; `None` for a word it never writes.
    pub fn from_word(word: &[u8]) -> Option<Self> {
        Some(match word {
            b"run" => Self::Run { holds: false },
            b"runh" => Self::Run { holds: true },
            b"dup" => Self::Duplicate { holds: false },
            b"duph" => Self::Duplicate { holds: true },
            b"dead" => Self::Dead { holds: false },
            b"deadh" => Self::Dead { holds: true },
            b"wait" => Self::Wait,
            b"crash" => Self::Crash,
            b"park" => Self::Park,
            _ => return None,
        })
    }

    /// `dispatch.lua`'s reply for `n` events: one decision each, or an error naming the script.
    pub fn parse_all(reply: Value, n: usize) -> redis::RedisResult<Vec<Self>> {
        list(&DISPATCH, reply, n, |v| match v {
            Value::BulkString(b) => Self::from_word(b),
            Value::SimpleString(s) => Self::from_word(s.as_bytes()),
            _ => None,
        })
    }
}

/// What `start.lua` answered for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Charged to its event's crash budget: the run may start; with the committed value and
    /// version of the state key it asked for, if it asked for one.
    Started(Option<(Option<Vec<u8>>, u64)>),
    /// Its marker is not this owner's (another delivery holds it, or it is gone): it must not.
    Refused,
}

impl Start {
    /// `start.lua`'s reply for `n` runs: one answer each, or an error naming the script.
    pub fn parse_all(reply: Value, n: usize) -> redis::RedisResult<Vec<Self>> {
        list(&START, reply, n, |v| match v {
            Value::Int(1) => Some(Self::Started(None)),
            Value::Int(0) => Some(Self::Refused),
            Value::Array(read) => match read.as_slice() {
                [Value::Int(1), value, version] => {
                    let value = match value {
                        Value::Nil => None,
                        Value::BulkString(b) => Some(b.clone()),
                        _ => return None,
                    };
                    let version = match version {
                        Value::Nil => 0,
                        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
                        _ => return None,
                    };
                    Some(Self::Started(Some((value, version))))
                }
                _ => None,
            },
            _ => None,
        })
    }
}

/// What `replay.lua` answered for one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Moved to the retry stream by this call.
    Moved,
    /// Already gone (replayed or purged by someone else): nothing written.
    Gone,
}

impl Replay {
    /// `replay.lua`'s reply, or an error naming the script.
    pub fn parse(reply: &Value) -> redis::RedisResult<Self> {
        match reply {
            Value::Int(1) => Ok(Self::Moved),
            Value::Int(0) => Ok(Self::Gone),
            _ => Err(unexpected(&REPLAY, reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_the_rust_ones() {
        let head = constants();
        assert!(head.contains(&format!("local MAX_FIELDS, MAX_ENTRY_BYTES = {MAX_FIELDS}, {MAX_ENTRY_BYTES}")));
        assert!(head.contains("ORIGIN = '_origin'") && head.contains("PARTITIONKEY = 'partitionkey'"), "{head}");
        assert!(head.contains("INVALID_EVENT = 'invalid-event'"), "{head}");
        assert_eq!(lua_string("a'b\\"), r"'a\'b\\'");
    }

    #[test]
    fn the_per_key_set_leads_each_key_list_in_one_order() {
        let keys = SubscriberKeys::new("events", "sub");
        let set = per_key(&keys);
        for list in [read_keys(&keys), dispatch_keys(&keys), settle_keys(&keys)] {
            assert_eq!(list[..5], set);
        }
        assert_eq!(settle_keys(&keys).len(), 12);
    }

    #[test]
    fn an_unknown_verdict_or_a_short_reply_is_an_error_naming_the_script() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Decision::parse_all(Value::Array(vec![bulk("runh"), bulk("park")]), 2).expect("parsed");
        assert_eq!(ok, [Decision::Run { holds: true }, Decision::Park]);
        for (reply, n) in [(Value::Array(vec![bulk("runs")]), 1), (Value::Array(vec![bulk("run")]), 2), (Value::Nil, 0)]
        {
            let e = Decision::parse_all(reply, n).expect_err("refused");
            assert!(e.to_string().contains("dispatch.lua"), "{e}");
        }
        let e = Start::parse_all(Value::Array(vec![Value::Int(2)]), 1).expect_err("refused");
        assert!(e.to_string().contains("start.lua"), "{e}");
        let read = |value: Value, version: Value| Value::Array(vec![Value::Int(1), value, version]);
        let started = Start::parse_all(
            Value::Array(vec![read(Value::Nil, Value::Nil), read(bulk("v"), bulk("3")), Value::Int(0)]),
            3,
        )
        .expect("parsed");
        assert_eq!(
            started,
            [Start::Started(Some((None, 0))), Start::Started(Some((Some(b"v".to_vec()), 3))), Start::Refused]
        );
        for bad in [read(bulk("v"), bulk("x")), read(Value::Int(4), Value::Nil), Value::Array(vec![Value::Int(1)])] {
            assert!(Start::parse_all(Value::Array(vec![bad]), 1).is_err(), "a malformed read is an error");
        }
        assert!(Replay::parse(&Value::Okay).is_err());
    }
}
