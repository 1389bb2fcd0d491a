//! The reader: the first stage of an event's path. It owns the blocking connection of one
//! (subscriber, stream) and reads the source stream and the subscriber's retry stream in one
//! `XREADGROUP`: first this consumer's own pending entries (id `0`, left by a previous run of
//! this host), then new ones (`>`).

use std::time::Duration;

use super::read::{self, Entry};
use super::{Context, ensure_groups};
use crate::config::Start;
use crate::connection::Conn;
use crate::keys::SubscriberKeys;

/// Reads entries for one (subscriber, stream), reconnecting with backoff.
pub struct Reader {
    keys: SubscriberKeys,
    group: String,
    start: Start,
    block: Duration,
    conn: Option<Conn>,
    /// Per stream (source, retry): where the pending phase has got to.
    cursors: [String; 2],
    pending_phase: bool,
    backoff: Duration,
}

impl Reader {
    /// A reader of `keys` for `group`, creating the groups at `start` if they are missing.
    pub fn new(keys: SubscriberKeys, group: String, start: Start, block: Duration) -> Self {
        Self {
            keys,
            group,
            start,
            block,
            conn: None,
            cursors: ["0".into(), "0".into()],
            pending_phase: true,
            backoff: Duration::from_millis(50),
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
        let Some(conn) = self.conn.as_mut() else {
            let connected = async {
                let mut c = ctx.redis.dedicated(self.block).await?;
                ensure_groups(&mut c, &self.keys, &self.group, self.start).await?;
                Ok::<_, redis::RedisError>(c)
            };
            match connected.await {
                Ok(c) => {
                    ctx.health.up(&ctx.metrics);
                    self.conn = Some(c);
                    self.rewind();
                    self.backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    ctx.health.down(&ctx.metrics, &e);
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                }
            }
            return Vec::new();
        };
        let keys = [self.keys.stream.as_str(), self.keys.retry.as_str()];
        let result = if self.pending_phase {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&self.group).arg(&ctx.consumer).arg("COUNT").arg(count).arg("STREAMS");
            cmd.arg(&keys).arg(&self.cursors);
            cmd.query_async::<redis::Value>(conn).await.map(read::parse_read_reply)
        } else {
            let block = self.block.as_millis() as u64;
            read::read_group(conn, &self.group, &ctx.consumer, count, Some(block), &keys, ">").await
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
