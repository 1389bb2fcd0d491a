//! The producer side: adding events to a stream, alone or inside the caller's transaction.
//!
//! The outbox pattern on Redis: a producer writes its own state and the event in one
//! `MULTI`/`EXEC`, so the event exists exactly when the state change does.
//!
//! ```no_run
//! # async fn demo(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
//! use ferry::event::Event;
//!
//! let mut event = Event::new("OrderCreated", "orders", r#"{"order_id":"o-1"}"#);
//! event.partitionkey = Some("o-1".into());
//! let mut tx = redis::pipe();
//! tx.atomic()
//!     .hset("order:o-1", "status", "created").ignore();
//! ferry::outbox::add(&mut tx, "events", &event);
//! let (entry_id,): (String,) = tx.query_async(conn).await?;
//! # Ok(()) }
//! ```

use redis::aio::ConnectionLike;

use crate::event::Event;

/// The `XADD stream * fields...` command for `event`.
pub fn xadd(stream: &str, event: &Event) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    event.write_fields(&mut cmd);
    cmd
}

/// Append the `XADD` of `event` to `pipe` (call `pipe.atomic()` to make it part of a
/// `MULTI`/`EXEC` with the caller's own writes). Its reply is the new entry id.
pub fn add(pipe: &mut redis::Pipeline, stream: &str, event: &Event) {
    pipe.add_command(xadd(stream, event));
}

/// The stream key `event` goes to when `stream` has `partitions` partitions (see
/// [`crate::keys::route`]): use it with [`add`] or [`publish`] for a partitioned stream.
pub fn route(stream: &str, partitions: u32, event: &Event) -> String {
    crate::keys::route(stream, partitions, event.partitionkey.as_deref(), &event.id)
}

/// Add `event` to `stream` on its own; returns the stream entry id.
pub async fn publish<C: ConnectionLike>(conn: &mut C, stream: &str, event: &Event) -> redis::RedisResult<String> {
    xadd(stream, event).query_async(conn).await
}

/// The outbox in the application's PostgreSQL database: add an event inside the caller's
/// transaction; `ferry relay` publishes it once committed. See [`crate::relay`].
pub mod postgres {
    pub use crate::relay::producer::{add, add_to};
}
