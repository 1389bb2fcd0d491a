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

use crate::connection::{NotReplicated, Replication};
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

/// [`add`] after checking `event` against its contract in `registry` (and filling its
/// `dataschema`): an event its schema refuses is not added.
pub fn add_checked(
    pipe: &mut redis::Pipeline,
    stream: &str,
    event: &mut Event,
    registry: Option<&crate::contract::Registry>,
) -> Result<(), crate::contract::Invalid> {
    if let Some(registry) = registry {
        registry.prepare(event)?;
    }
    add(pipe, stream, event);
    Ok(())
}

/// [`publish_with`] after checking `event` against its contract in `registry` (and filling
/// its `dataschema`): an event its schema refuses is not published ([`PublishError::Invalid`]).
pub async fn publish_checked<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    event: &mut Event,
    replication: Replication,
    registry: Option<&crate::contract::Registry>,
) -> Result<String, PublishError> {
    if let Some(registry) = registry {
        registry.prepare(event)?;
    }
    publish_with(conn, stream, event, replication).await
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

/// Add `event` to `stream` on its own, as durably as `replication` asks: under
/// `durability = "replicated"` the `XADD` and a `WAIT 1` go in one pipeline on one connection
/// (on a cluster, to the stream's primary), so the answer covers this very write. When no
/// replica confirmed in time the event is on the primary but may be lost in a failover:
/// publishing the same event again is safe (consumers dedupe by event id).
pub async fn publish_with<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    event: &Event,
    replication: Replication,
) -> Result<String, PublishError> {
    if !replication.waits() {
        return Ok(publish(conn, stream, event).await?);
    }
    let mut pipe = redis::pipe();
    pipe.add_command(xadd(stream, event));
    replication.append_wait(&mut pipe);
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let confirmed = replication.take_wait(&mut replies);
    let entry_id: String =
        redis::from_redis_value(replies.pop().unwrap_or(redis::Value::Nil)).map_err(redis::RedisError::from)?;
    confirmed.map_err(|source| PublishError::NotReplicated { entry_id: entry_id.clone(), source })?;
    Ok(entry_id)
}

/// Why [`publish_with`] could not say the event is safely stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The `XADD` failed: the event may or may not be in the stream.
    #[error("adding the event failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The event is in the stream on the primary, not known to be on a replica.
    #[error("event added as entry {entry_id}, but it {source}")]
    NotReplicated {
        /// The new entry's id.
        entry_id: String,
        /// Why it is not known to be replicated.
        source: NotReplicated,
    },
    /// The event's contract refuses it ([`publish_checked`]): nothing was written.
    #[error("event refused by its contract: {0}")]
    Invalid(#[from] crate::contract::Invalid),
}

/// The outbox in the application's PostgreSQL database: add an event inside the caller's
/// transaction; `ferry relay` publishes it once committed. See [`crate::relay`].
pub mod postgres {
    pub use crate::relay::producer::{add, add_to};
}
