//! The reader: the first stage of an event's path. It owns the blocking connection of one
//! (subscriber, stream) and reads the source stream and the subscriber's retry stream in one
//! `XREADGROUP`: first this consumer's own pending entries (id `0`, left by a previous run of
//! this host), then new ones (`>`). [`ReadAhead`] runs it on a task of its own, so the next
//! read overlaps with the events of the previous one.
//!
//! Under per-key order new entries are read through `read.lua` instead, which queues each on
//! its partition key as it is delivered (see [`read_fresh_ordered`]); a script cannot
//! block, so when nothing is new the reader waits with an `XREAD BLOCK`, which delivers
//! nothing, and reads again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::read::{self, Entry, Fresh};
use super::scripts::{self, READ};
use super::{Context, InFlight, Subscriber, ensure_groups, now_ms};
use crate::backoff::Backoff;
use crate::config::Start;
use crate::connection::Conn;
use crate::keys::SubscriberKeys;
use crate::stop::Stop;

/// Reads entries for one (subscriber, stream), reconnecting with backoff.
pub struct Reader {
    keys: SubscriberKeys,
    /// Its settings (per-key order) are looked up on every read: a reload may change them.
    subscriber: Arc<Subscriber>,
    start: Start,
    block: Duration,
    conn: Option<Conn>,
    /// Per stream (source, retry): where the pending phase has got to.
    cursors: [String; 2],
    pending_phase: bool,
    /// Between failed connection attempts.
    backoff: Backoff,
}

impl Reader {
    /// A reader of `keys` for `subscriber`'s group, creating the groups at `start` if they are missing.
    pub fn new(keys: SubscriberKeys, subscriber: Arc<Subscriber>, start: Start, block: Duration) -> Self {
        Self {
            keys,
            subscriber,
            start,
            block,
            conn: None,
            cursors: ["0".into(), "0".into()],
            pending_phase: true,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        }
    }

    /// Read the pending list again from the start on the next call (after entries were given
    /// back to Redis).
    pub fn rewind(&mut self) {
        self.cursors = ["0".into(), "0".into()];
        self.pending_phase = true;
    }

    /// The next entries, at most `count`; empty when nothing arrived within the block time
    /// or Redis is unreachable (after a backoff).
    pub async fn next(&mut self, ctx: &Context, count: usize) -> Vec<Entry> {
        // `durability_on_missing_replica = "wait"` and no replica confirms this stream key's
        // settles: what is read could not be settled, so read nothing until one does.
        if ctx.replicas.holds_back(&self.keys.stream) {
            tokio::time::sleep(self.block.min(Duration::from_millis(500))).await;
            return Vec::new();
        }
        let Some(conn) = self.conn.as_mut() else {
            let connected = async {
                let mut c = ctx.redis.dedicated(self.block).await?;
                ensure_groups(&mut c, &self.keys, &self.subscriber.name, self.start).await?;
                Ok::<_, redis::RedisError>(c)
            };
            match connected.await {
                Ok(c) => {
                    ctx.health.up(&ctx.metrics);
                    self.conn = Some(c);
                    self.rewind();
                    self.backoff.reset();
                }
                Err(e) => {
                    ctx.health.down(&ctx.metrics, &e);
                    self.backoff.wait().await;
                }
            }
            return Vec::new();
        };
        let keys = [self.keys.stream.as_str(), self.keys.retry.as_str()];
        let block = self.block.as_millis() as u64;
        let result = if self.pending_phase {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&self.subscriber.name).arg(&ctx.consumer).arg("COUNT").arg(count).arg("STREAMS");
            cmd.arg(&keys).arg(&self.cursors);
            cmd.query_async::<redis::Value>(conn).await.map(read::parse_read_reply)
        } else if self.subscriber.active().settings.ordered {
            match read_fresh_ordered(conn, &self.keys, &self.subscriber.name, &ctx.consumer, count).await {
                Ok(Fresh::Read(entries)) => Ok(entries),
                Ok(Fresh::Nothing(last)) => {
                    let mut wait = redis::cmd("XREAD");
                    wait.arg("BLOCK").arg(block).arg("STREAMS").arg(&keys).arg(&last);
                    wait.query_async::<redis::Value>(conn).await.map(|_| Vec::new())
                }
                Err(e) => Err(e),
            }
        } else {
            read::read_group(conn, &self.subscriber.name, &ctx.consumer, count, Some(block), &keys, ">").await
        };
        match result {
            Ok(entries) => {
                ctx.health.up(&ctx.metrics);
                if self.pending_phase {
                    if entries.is_empty() {
                        self.pending_phase = false;
                    }
                    for e in &entries {
                        let slot = usize::from(e.key != self.keys.stream);
                        self.cursors[slot] = e.id.clone();
                    }
                }
                entries
            }
            Err(e) => {
                ctx.health.down(&ctx.metrics, &e);
                self.conn = None;
                Vec::new()
            }
        }
    }
}

/// What the pipeline asks of its [`ReadAhead`].
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// Read up to this many entries (waiting for them if none are there).
    Read(usize),
    /// Read the pending list again from the start (entries were given back).
    Rewind,
}

/// The reader on a task of its own, so the next read (its round trip, and parsing its reply)
/// overlaps with starting and running the events of the previous one. It reads only when
/// asked, and only as many entries as asked: the pipeline asks for what its bound (one read
/// of `read.count` not yet started) leaves room for. Entries are taken into this host's
/// hands ([`InFlight`]) as soon as they arrive, so the housekeeper keeps them alive.
pub struct ReadAhead {
    asks: mpsc::UnboundedSender<Ask>,
    batches: mpsc::Receiver<Vec<Entry>>,
    task: tokio::task::JoinHandle<()>,
    /// A read was asked for and its entries have not been taken yet.
    pub asked: bool,
}

impl ReadAhead {
    /// Start `reader` on its own task until `stop` turns true.
    pub fn start(reader: Reader, ctx: Arc<Context>, in_flight: InFlight, stop: Stop) -> Self {
        let (asks, asks_rx) = mpsc::unbounded_channel();
        let (batches_tx, batches) = mpsc::channel(1);
        let task = tokio::spawn(read_when_asked(reader, ctx, in_flight, asks_rx, batches_tx, stop));
        Self { asks, batches, task, asked: false }
    }

    /// Ask for the next read of at most `count` entries, unless one is already asked for.
    pub fn ask(&mut self, count: usize) {
        if !self.asked && count > 0 {
            self.asked = self.asks.send(Ask::Read(count)).is_ok();
        }
    }

    /// Read the pending list again from the start on the next read.
    pub fn rewind(&self) {
        let _ = self.asks.send(Ask::Rewind);
    }

    /// The entries of the read asked for (already in this host's hands); `None` once the
    /// reader stopped.
    pub async fn next(&mut self) -> Option<Vec<Entry>> {
        let entries = self.batches.recv().await;
        self.asked = false;
        entries
    }

    /// Stop reading.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The read-ahead task: one read per ask, repeated until entries arrive.
async fn read_when_asked(
    mut reader: Reader,
    ctx: Arc<Context>,
    in_flight: InFlight,
    mut asks: mpsc::UnboundedReceiver<Ask>,
    batches: mpsc::Sender<Vec<Entry>>,
    stop: Stop,
) {
    loop {
        let count = tokio::select! {
            ask = asks.recv() => match ask {
                Some(Ask::Read(count)) => count,
                Some(Ask::Rewind) => { reader.rewind(); continue }
                None => return,
            },
            _ = stop.stopped() => return,
        };
        loop {
            // A rewind asked for while reading applies to the next read.
            while let Ok(Ask::Rewind) = asks.try_recv() {
                reader.rewind();
            }
            // A read is never cancelled but by stopping (a cancelled XREADGROUP still
            // delivers its entries into this consumer's pending list).
            let entries = tokio::select! {
                read = reader.next(&ctx, count) => in_flight.admit(read),
                _ = stop.stopped() => return,
            };
            if !entries.is_empty() {
                if batches.send(entries).await.is_err() {
                    return;
                }
                break;
            }
            if stop.is_stopped() {
                return;
            }
        }
    }
}

/// New entries (`>`) of the source and the retry stream for `consumer` under per-key order,
/// through `read.lua`: each source entry with a partition key takes its key or is parked
/// behind it as it is delivered, so a key's events keep stream order across hosts.
pub async fn read_fresh_ordered<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Fresh> {
    let args = [group.to_string(), consumer.to_string(), count.to_string(), now_ms().to_string()];
    let reply = scripts::call(conn, &READ, &scripts::read_keys(keys), &args).await?;
    read::parse_fresh(reply).map_err(|reply| scripts::unexpected(&READ, &reply))
}
