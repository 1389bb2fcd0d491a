//! The relay loop: become the table's active relay, then move committed rows to their streams.
//!
//! One round: read up to `batch` rows below the oldest running transaction in (xid, seq) order,
//! `XADD` every valid one to its stream key (its partition, by partition key, when the stream
//! is partitioned), one pipeline per key so a pipeline stays in one hash slot on a cluster,
//! rows of a key in (xid, seq) order, each with its own event id; and only once Redis has
//! answered every pipeline (and under `durability = "replicated"` a replica has confirmed
//! each) mark them published (or delete them) and mark the invalid ones failed, in one
//! transaction. A crash between the `XADD` and the mark publishes the same event ids again
//! on the next round; consumers' dedupe absorbs them. Any PostgreSQL or Redis failure ends the
//! session: connections (and with them the lock) are dropped and the next session starts
//! after a short backoff, from what the table says, so nothing depends on in-memory state.

use std::future::Future;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedReceiver;

use super::row::{Row, StreamRules};
use super::{RelayError, Table};
use crate::backoff::Backoff;
use crate::config::{Config, RelayConfig};
use crate::connection::{Conn, OnMissingReplica, Redis, Replication, Target};
use crate::metrics::{RelayLabels, RelayMetrics};

/// What happens to a row once its event is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Delete it at once.
    Delete,
    /// Mark it published and delete it once older than this (`None`: keep it forever).
    Keep(Option<Duration>),
}

/// Everything one relay needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL URL.
    pub postgres: String,
    /// Where Redis is (a node or a cluster).
    pub target: Target,
    /// Partition counts of partitioned streams: a row goes to its partition.
    pub partitions: std::collections::BTreeMap<String, u32>,
    /// Whether a round waits for a replica before marking its rows.
    pub replication: Replication,
    /// When no replica confirms a round: `wait` leaves its rows unmarked (published again,
    /// same event ids, next round), `continue` marks them and counts them unconfirmed.
    pub on_missing_replica: OnMissingReplica,
    /// The outbox table.
    pub table: Table,
    /// Streams rows may name, and the default one.
    pub rules: StreamRules,
    /// Rows per round.
    pub batch: usize,
    /// Polling interval when no NOTIFY arrives.
    pub poll: Duration,
    /// How often a standby tries to take the lock.
    pub lock_retry: Duration,
    /// What happens to published rows.
    pub retention: Retention,
    /// The schema registry: a row whose event its contract refuses is marked failed with
    /// the reason (`None`: no registry).
    pub contracts: Option<std::sync::Arc<crate::contract::Registry>>,
}

impl Settings {
    /// Settings from the host configuration's `[relay]` section `section`: its Redis (node or
    /// cluster), default stream, stream partitions and durability.
    pub fn for_host(config: &Config, section: &RelayConfig) -> Result<Self, RelayError> {
        let mut settings = Self::from_config(section, &config.redis, &config.stream)?;
        settings.target = config.target();
        settings.partitions = config.partitions();
        settings.replication = config.replication();
        settings.on_missing_replica = config.durability_on_missing_replica;
        Ok(settings)
    }

    /// Settings from a `[relay]` section, a single Redis node's URL and the default stream
    /// (no partitions, primary durability; see [`Settings::for_host`]).
    pub fn from_config(config: &RelayConfig, redis: &str, default_stream: &str) -> Result<Self, RelayError> {
        if config.postgres.is_empty() {
            return Err(RelayError::Url("relay.postgres is empty".into()));
        }
        crate::keys::check_name("stream", default_stream).map_err(RelayError::Event)?;
        Ok(Self {
            postgres: config.postgres.clone(),
            target: Target::node(redis.to_string()),
            partitions: Default::default(),
            replication: Replication::PRIMARY,
            on_missing_replica: OnMissingReplica::Wait,
            table: Table::new(&config.table)?,
            rules: StreamRules { default_stream: default_stream.to_string(), allowed: config.streams.clone() },
            batch: config.batch.max(1),
            poll: config.poll.max(Duration::from_millis(10)),
            lock_retry: config.lock_retry.max(Duration::from_millis(10)),
            retention: if config.delete_published {
                Retention::Delete
            } else {
                Retention::Keep((!config.keep_published.is_zero()).then_some(config.keep_published))
            },
            contracts: None,
        })
    }
}

/// A relay of one outbox table.
pub struct Relay {
    settings: Settings,
    metrics: RelayMetrics,
    labels: RelayLabels,
    /// `application_name` of its sessions, so `pg_stat_activity` shows which process is active.
    name: String,
}

/// How often backlog and oldest-row age are counted, and published rows purged.
const STATS_EVERY: Duration = Duration::from_secs(1);
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Bound on any one statement or Redis reply, so a hung server ends the session.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl Relay {
    /// A relay with `settings`, reporting to `metrics`.
    pub fn new(settings: Settings, metrics: RelayMetrics) -> Self {
        let labels = RelayLabels { table: settings.table.name().to_string() };
        let name = format!("ferry relay {}", std::process::id());
        Self { settings, metrics, labels, name }
    }

    /// Relay until `shutdown` completes. Failures are logged and retried, never returned: a
    /// relay outlives outages of PostgreSQL and Redis.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.forever() => {}
        }
        self.metrics.active.get_or_create(&self.labels).set(0);
    }

    async fn forever(&self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let started = Instant::now();
            let result = self.session().await;
            self.metrics.active.get_or_create(&self.labels).set(0);
            if let Err(e) = result {
                tracing::warn!(table = %self.settings.table.name(), "relay session ended: {e}; starting again");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            backoff.wait().await;
        }
    }

    /// One session: wait for the lock, then relay until something fails.
    async fn session(&self) -> Result<(), RelayError> {
        let table = &self.settings.table;
        let (lock, mut notifications) = super::connect(&self.settings.postgres, &self.name).await?;
        let try_lock = format!("SELECT pg_try_advisory_lock({})", table.lock_key_sql());
        let mut said_standby = false;
        loop {
            let got: bool = within(lock.query_one(&try_lock, &[])).await?.try_get(0)?;
            if got {
                break;
            }
            if !said_standby {
                tracing::info!(table = %table.name(), "standby: another relay is active; waiting to take over");
                said_standby = true;
            }
            tokio::time::sleep(self.settings.lock_retry).await;
        }
        // Listen on the lock's session: it idles, and notifications arrive while a round runs.
        within(lock.batch_execute(&table.listen())).await?;
        let (mut work, _) = super::connect(&self.settings.postgres, &self.name).await?;
        // A connection of the relay's own: a `WAIT` blocks the connection it is sent on.
        let client = Redis::open(&self.settings.target).map_err(|e| RelayError::Url(format!("{e:#}")))?;
        let mut redis = client.dedicated(STATEMENT_TIMEOUT.saturating_sub(Duration::from_secs(5))).await?;
        tracing::info!(table = %table.name(), "active relay");
        self.metrics.active.get_or_create(&self.labels).set(1);

        // Prepared once per session: one round trip per statement instead of two.
        let statements = Statements {
            select: within(work.prepare(&table.select_ready(self.settings.batch))).await?,
            published: within(work.prepare(&match self.settings.retention {
                Retention::Delete => table.delete_published(),
                Retention::Keep(_) => table.mark_published(),
            }))
            .await?,
            failed: within(work.prepare(&table.mark_failed())).await?,
        };
        let mut last_stats: Option<Instant> = None;
        let mut last_purge: Option<Instant> = None;
        loop {
            if lock.is_closed() {
                return Err(RelayError::LockLost);
            }
            let rows = within(work.query(&statements.select, &[])).await?;
            let busy = !rows.is_empty();
            if busy {
                self.round(&mut work, &statements, &mut redis, &rows).await?;
            }
            if last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
                self.stats(&work).await?;
                last_stats = Some(Instant::now());
            }
            if let Retention::Keep(Some(keep)) = self.settings.retention
                && last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY)
            {
                let purged = within(work.execute(&table.purge_published(), &[&keep.as_secs_f64()])).await?;
                if purged > 0 {
                    tracing::debug!(table = %table.name(), "purged {purged} published rows");
                }
                last_purge = Some(Instant::now());
            }
            if !busy {
                wait(&mut notifications, self.settings.poll).await?;
            }
        }
    }

    /// Publish one batch of rows and record the outcome.
    async fn round(
        &self,
        work: &mut tokio_postgres::Client,
        statements: &Statements,
        redis: &mut Conn,
        rows: &[tokio_postgres::Row],
    ) -> Result<(), RelayError> {
        let batch = self.batch(rows)?;
        if !self.send(batch.by_key, redis).await? {
            // Not marked: the rows are published again (same event ids) next round.
            return Ok(());
        }
        let confirmed = OffsetDateTime::now_utc();
        mark(work, statements, &batch.published, &batch.failed).await?;
        self.metrics.relayed.get_or_create(&self.labels).inc_by(batch.published.len() as u64);
        self.metrics.failed.get_or_create(&self.labels).inc_by(batch.failed.len() as u64);
        let latency = self.metrics.latency.get_or_create(&self.labels);
        for at in batch.created {
            latency.observe((confirmed - at).as_seconds_f64().max(0.0));
        }
        Ok(())
    }

    /// Turn rows into `XADD`s, one pipeline per stream key in the order keys first appear;
    /// rows keep their order within a key (per-key order is per partition). A row that is not
    /// a valid event is set aside as failed.
    fn batch(&self, rows: &[tokio_postgres::Row]) -> Result<Batch, RelayError> {
        let mut batch = Batch {
            by_key: Vec::new(),
            published: Vec::with_capacity(rows.len()),
            created: Vec::with_capacity(rows.len()),
            failed: Vec::new(),
        };
        for pg_row in rows {
            let row = Row::from_pg(pg_row)?;
            let contracts = self.settings.contracts.as_deref();
            let checked = row.to_event(&self.settings.rules).and_then(|(stream, mut event)| {
                contracts.map_or(Ok(()), |c| c.prepare(&mut event)).map_err(|e| e.to_string())?;
                Ok((stream, event))
            });
            match checked {
                Ok((stream, event)) => {
                    let n = self.settings.partitions.get(&stream).copied().unwrap_or(1);
                    let key = crate::keys::route(&stream, n, event.partitionkey.as_deref(), &event.id);
                    let pipe = match batch.by_key.iter().position(|(k, _)| *k == key) {
                        Some(i) => &mut batch.by_key[i].1,
                        None => {
                            batch.by_key.push((key.clone(), redis::pipe()));
                            &mut batch.by_key.last_mut().expect("just pushed").1
                        }
                    };
                    let mut xadd = redis::cmd("XADD");
                    xadd.arg(&key).arg("*");
                    event.write_fields(&mut xadd);
                    pipe.add_command(xadd).ignore();
                    batch.published.push(row.id);
                    batch.created.push(row.created_at);
                }
                Err(reason) => {
                    tracing::warn!(table = %self.settings.table.name(), id = %row.id, "outbox row failed: {reason}");
                    batch.failed.push((row.id, reason));
                }
            }
        }
        Ok(batch)
    }

    /// Send each key's pipeline; false when a replica did not confirm one and the policy says
    /// to leave the rows unmarked.
    async fn send(&self, by_key: Vec<(String, redis::Pipeline)>, redis: &mut Conn) -> Result<bool, RelayError> {
        let replication = self.settings.replication;
        for (key, mut pipe) in by_key {
            let rows = pipe.len() as u64;
            // The WAIT rides on the pipeline, so it covers this very batch on the key's node.
            replication.append_wait(&mut pipe);
            let mut replies: Vec<redis::Value> = pipe.query_async(redis).await?;
            if let Err(e) = replication.take_wait(&mut replies) {
                crate::metrics::shortfall(&self.metrics.shortfalls, "relay");
                if self.settings.on_missing_replica == OnMissingReplica::Continue {
                    tracing::warn!(table = %self.settings.table.name(), stream = %key, "a relayed batch {e}; marked anyway (durability_on_missing_replica = \"continue\")");
                    let labels = crate::metrics::WriteLabels { write: "relay".into() };
                    self.metrics.unconfirmed.get_or_create(&labels).inc_by(rows);
                    continue;
                }
                tracing::warn!(table = %self.settings.table.name(), stream = %key, "a relayed batch {e}");
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn stats(&self, work: &tokio_postgres::Client) -> Result<(), RelayError> {
        let row = within(work.query_one(&self.settings.table.backlog(), &[])).await?;
        let backlog: i64 = row.try_get(0)?;
        let oldest: f64 = row.try_get(1)?;
        self.metrics.backlog.get_or_create(&self.labels).set(backlog);
        self.metrics.oldest_age.get_or_create(&self.labels).set(oldest);
        Ok(())
    }
}

/// One round's rows, turned into `XADD`s.
struct Batch {
    /// One pipeline per stream key.
    by_key: Vec<(String, redis::Pipeline)>,
    /// The rows published, and when each was inserted.
    published: Vec<uuid::Uuid>,
    created: Vec<OffsetDateTime>,
    /// The rows that are not valid events, with why.
    failed: Vec<(uuid::Uuid, String)>,
}

/// Mark a round's rows: published (deleted or marked, by the retention) and failed.
async fn mark(
    work: &mut tokio_postgres::Client,
    statements: &Statements,
    published: &[uuid::Uuid],
    failed: &[(uuid::Uuid, String)],
) -> Result<(), RelayError> {
    if failed.is_empty() {
        // The common round: one statement, its own transaction.
        within(work.execute(&statements.published, &[&published])).await?;
    } else {
        let tx = within(work.transaction()).await?;
        if !published.is_empty() {
            within(tx.execute(&statements.published, &[&published])).await?;
        }
        for (id, reason) in failed {
            within(tx.execute(&statements.failed, &[id, reason])).await?;
        }
        within(tx.commit()).await?;
    }
    Ok(())
}

/// The statements of one session's rounds.
struct Statements {
    select: tokio_postgres::Statement,
    published: tokio_postgres::Statement,
    failed: tokio_postgres::Statement,
}

/// Wait for a notification or the poll interval; coalesce notifications that piled up.
async fn wait(notifications: &mut UnboundedReceiver<String>, poll: Duration) -> Result<(), RelayError> {
    tokio::select! {
        n = notifications.recv() => {
            if n.is_none() {
                return Err(RelayError::LockLost);
            }
            while notifications.try_recv().is_ok() {}
        }
        _ = tokio::time::sleep(poll) => {}
    }
    Ok(())
}

/// Bound a PostgreSQL call by [`STATEMENT_TIMEOUT`].
async fn within<T>(call: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, RelayError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RelayError::Timeout(format!("no answer in {STATEMENT_TIMEOUT:?}"))),
    }
}
