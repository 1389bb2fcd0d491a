//! ferry's Lua scripts, in one place: each state transition that must be atomic over
//! several keys is one script over keys that share the stream's hash tag.
//!
//! Scripts are sent by `EVALSHA` and loaded on `NOSCRIPT` (after a Redis restart or a
//! `SCRIPT FLUSH`), so the hot path never sends a script body.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Script};

macro_rules! script {
    ($name:ident, $file:literal, $doc:literal) => {
        #[doc = $doc]
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(concat!(include_str!("prelude.lua"), include_str!($file))));
    };
}

script!(READ, "read.lua", "Read new entries and, under per-key order, queue each on its key in stream order.");
script!(DISPATCH, "dispatch.lua", "Dedupe check-and-record, crash budget and per-key claims of a read.");
script!(SETTLE, "settle.lua", "Ack, retry, dead-letter or release a group of entries.");
script!(PROMOTE, "promote.lua", "Move due retries into the retry stream.");
script!(START, "start.lua", "Charge the runs that really start to their events' crash budgets.");
script!(COUNT, "count.lua", "Count a stream's entries after an id without sending them.");
script!(REFRESH, "refresh.lua", "Push the leases of the events this host is handling.");
script!(SWEEP, "sweep.lua", "Drop in-flight markers abandoned long ago.");
script!(REAP, "reap.lua", "Remove silent consumers with nothing pending, atomically.");
script!(REPLAY, "replay.lua", "Move one dead letter to the retry stream, once.");
script!(TRIM, "trim.lua", "One bounded step of trimming a stream by its retention, never below its safe floor.");

/// Every script, for loading after `NOSCRIPT`.
fn all() -> [&'static Script; 11] {
    [&READ, &DISPATCH, &SETTLE, &START, &COUNT, &PROMOTE, &REFRESH, &SWEEP, &REAP, &REPLAY, &TRIM]
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

/// Load every script into the server's script cache.
pub async fn load<C: ConnectionLike>(conn: &mut C) -> redis::RedisResult<()> {
    for script in all() {
        script.load_async(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lua_limits_are_the_dispatchers() {
        let prelude = include_str!("prelude.lua");
        let line = format!(
            "local MAX_FIELDS, MAX_ENTRY_BYTES = {}, {}",
            super::super::dispatch::MAX_FIELDS,
            super::super::dispatch::MAX_ENTRY_BYTES
        );
        assert!(prelude.contains(&line), "prelude.lua must say `{line}`");
    }
}
