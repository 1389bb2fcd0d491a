//! Consuming one stream for one subscriber: read → dispatch → invoke → settle.
//!
//! Each (subscriber, stream) pair runs one reader loop on a Redis connection of its own (a
//! blocking `XREADGROUP` would stall a shared multiplexed connection). The loop reads the
//! source stream and the subscriber's own retry stream in one `XREADGROUP`, first this
//! consumer's pending entries (id `0`, after a restart), then new ones (`>`). Each batch is
//! handed to a task that invokes the plugin on a blocking thread and settles the batch on the
//! shared connection, while the loop already reads the next batch: reads, handling and acks
//! overlap, bounded by `concurrency` batches in flight.
//!
//! Due retries are promoted into the retry stream by the same loop, and entries left pending
//! by dead consumers are taken over with `XAUTOCLAIM` after `claim_idle`.

pub mod read;
pub mod retry;
pub mod settle;
pub mod trim;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use self::read::Entry;
use self::settle::{Disposition, Settlement, meta};
use crate::config::{Effective, ReadConfig, Start};
use crate::event::Event;
use crate::keys::SubscriberKeys;
use crate::metrics::{FailureLabels, Metrics};
use crate::plugin::Subscription;
use crate::plugin::invoke::{FailureKind, Invoke, Job, Outcome};

/// The version of a subscriber that new batches use. Swapped atomically on reload; batches
/// already running keep the version they started with.
pub struct Active {
    /// Runs the handler (a plugin runner, or a native handler in the benchmark).
    pub runner: Arc<dyn Invoke>,
    /// Subscriptions with their stream resolved.
    pub subscriptions: Vec<(String, Subscription)>,
    /// Effective settings.
    pub settings: Effective,
}

impl Active {
    /// The streams this version reads.
    pub fn streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self.subscriptions.iter().map(|(s, _)| s.clone()).collect();
        streams.sort();
        streams.dedup();
        streams
    }

    /// Whether an event read from `stream` is wanted.
    pub fn wants(&self, stream: &str, event: &Event) -> bool {
        self.subscriptions.iter().any(|(s, sub)| s == stream && sub.matches(event))
    }
}

/// A subscriber: a plugin bound to its consumer groups.
pub struct Subscriber {
    /// Subscriber (plugin) name, also the consumer group name.
    pub name: String,
    active: RwLock<Arc<Active>>,
}

impl Subscriber {
    /// A subscriber running `active`.
    pub fn new(name: String, active: Active) -> Self {
        Self { name, active: RwLock::new(Arc::new(active)) }
    }

    /// The version new batches use.
    pub fn active(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the version new batches use; returns the old one.
    pub fn swap(&self, active: Active) -> Arc<Active> {
        std::mem::replace(&mut *self.active.write().unwrap_or_else(|p| p.into_inner()), Arc::new(active))
    }
}

/// Whether Redis is reachable, logged once per change.
#[derive(Default)]
pub struct RedisHealth {
    down: Mutex<bool>,
}

impl RedisHealth {
    /// Record a failure; logs only on the change from up to down.
    pub fn down(&self, metrics: &Metrics, err: &dyn std::fmt::Display) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !*down {
            *down = true;
            metrics.redis_up.set(0);
            tracing::error!("redis unavailable: {err}; retrying with backoff");
        }
    }

    /// Record a success; logs only on the change from down to up.
    pub fn up(&self, metrics: &Metrics) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        metrics.redis_up.set(1);
        if *down {
            *down = false;
            tracing::info!("redis reachable again");
        }
    }

    /// Whether the last operation reached Redis.
    pub fn is_up(&self) -> bool {
        !*self.down.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every stream consumer of a host shares.
pub struct Context {
    /// Redis client, for the per-reader connections.
    pub client: redis::Client,
    /// Shared connection for settling, promoting and claiming.
    pub shared: ConnectionManager,
    /// This host instance's consumer name.
    pub consumer: String,
    /// Read settings.
    pub read: ReadConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Redis reachability.
    pub health: RedisHealth,
    /// How long in-flight batches may finish on stop.
    pub grace: Duration,
    /// Retention of source streams.
    pub retention: Option<crate::config::RetentionConfig>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 of a Unix-ms instant.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Open a connection whose response timeout exceeds the blocking read time.
pub async fn reader_connection(client: &redis::Client, block: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Create the subscriber's groups on `keys` (idempotent).
pub async fn ensure_groups<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &SubscriberKeys,
    group: &str,
    start: Start,
) -> redis::RedisResult<()> {
    let start_id = match start {
        Start::New => "$",
        Start::Beginning => "0",
    };
    for (key, id) in [(&keys.stream, start_id), (&keys.retry, "0")] {
        let result: redis::RedisResult<()> =
            redis::cmd("XGROUP").arg("CREATE").arg(key).arg(group).arg(id).arg("MKSTREAM").query_async(conn).await;
        match result {
            Ok(()) => {}
            Err(e) if e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Entries of this stream consumer that are being handled now, so a re-read of the pending
/// list (after a reconnect) or a claim does not dispatch them twice.
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Run the consumer of `subscriber` on `stream` until `stop` turns true, then let in-flight
/// batches finish within the grace period (what does not finish stays pending).
pub async fn run_stream(
    ctx: Arc<Context>,
    subscriber: Arc<Subscriber>,
    stream: String,
    mut stop: watch::Receiver<bool>,
) {
    let keys = SubscriberKeys::new(&stream, &subscriber.name);
    let group = subscriber.name.clone();
    let active = subscriber.active();
    let concurrency = active.settings.concurrency;
    let claim_idle = ctx.read.claim_idle.unwrap_or(active.settings.limits.deadline * 2 + Duration::from_secs(10));
    let permits = Arc::new(Semaphore::new(concurrency));
    let in_flight: InFlight = Arc::default();
    let mut tasks = JoinSet::new();
    let block = ctx.read.block.min(ctx.read.poll).max(Duration::from_millis(1));
    let mut conn: Option<MultiplexedConnection> = None;
    let mut cursors = ["0".to_string(), "0".to_string()];
    let mut pending_phase = true;
    let mut backoff = Duration::from_millis(50);
    let mut last_poll = Instant::now() - ctx.read.poll;
    let mut last_claim = Instant::now();
    let mut last_trim = Instant::now();
    let trim_every = ctx.retention.as_ref().map_or(Duration::from_secs(10), |r| r.interval);
    tracing::info!(subscriber = %group, %stream, consumer = %ctx.consumer, "consumer started");

    loop {
        if *stop.borrow() {
            break;
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(subscriber = %group, "batch task failed: {e}");
            }
        }
        let Some(reader) = conn.as_mut() else {
            let connected = async {
                let mut c = reader_connection(&ctx.client, block).await?;
                ensure_groups(&mut c, &keys, &group, active.settings.start).await?;
                Ok::<_, redis::RedisError>(c)
            };
            match connected.await {
                Ok(c) => {
                    ctx.health.up(&ctx.metrics);
                    conn = Some(c);
                    cursors = ["0".to_string(), "0".to_string()];
                    pending_phase = true;
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    ctx.health.down(&ctx.metrics, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        };

        // Housekeeping between reads: promote due retries, take over entries of dead consumers.
        let mut claimed = Vec::new();
        if last_poll.elapsed() >= ctx.read.poll {
            last_poll = Instant::now();
            let mut shared = ctx.shared.clone();
            if let Err(e) = settle::promote(&mut shared, &keys, now_ms(), 1000).await {
                tracing::warn!(subscriber = %group, %stream, "promoting due retries failed: {e}");
            }
            if last_claim.elapsed() >= claim_idle / 4 {
                last_claim = Instant::now();
                match claim(&ctx, &keys, &group, claim_idle, &in_flight).await {
                    Ok(entries) => claimed = entries,
                    Err(e) => tracing::warn!(subscriber = %group, %stream, "reclaiming idle entries failed: {e}"),
                }
                if let Err(e) = remove_dead_consumers(&ctx, &keys, &group, claim_idle * 2).await {
                    tracing::warn!(subscriber = %group, %stream, "removing dead consumers failed: {e}");
                }
            }
            if last_trim.elapsed() >= trim_every {
                last_trim = Instant::now();
                let mut shared = ctx.shared.clone();
                let now = now_ms();
                let source = match &ctx.retention {
                    Some(r) => trim::trim(&mut shared, &keys.stream, Some(r), now).await,
                    None => Ok(0),
                };
                let retry = trim::trim(&mut shared, &keys.retry, None, now).await;
                match (source, retry) {
                    (Ok(a), Ok(b)) if a + b > 0 => {
                        tracing::debug!(subscriber = %group, %stream, source = a, retry = b, "trimmed settled entries")
                    }
                    (Err(e), _) | (_, Err(e)) => tracing::warn!(%stream, "trimming failed: {e}"),
                    _ => {}
                }
            }
        }

        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };

        let (entries, counts) = if !claimed.is_empty() {
            let counts = counts_for(&ctx, &group, &claimed).await;
            (claimed, counts)
        } else {
            let stream_keys = [keys.stream.as_str(), keys.retry.as_str()];
            let result = if pending_phase {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(&group).arg(&ctx.consumer).arg("COUNT").arg(ctx.read.count).arg("STREAMS");
                cmd.arg(&stream_keys).arg(&cursors);
                tokio::select! {
                    r = cmd.query_async::<redis::Value>(reader) => r.map(read::parse_read_reply),
                    _ = stop.changed() => break,
                }
            } else {
                tokio::select! {
                    r = read::read_group(reader, &group, &ctx.consumer, ctx.read.count, Some(block.as_millis() as u64), &stream_keys, ">") => r,
                    _ = stop.changed() => break,
                }
            };
            let entries = match result {
                Ok(entries) => entries,
                Err(e) => {
                    ctx.health.down(&ctx.metrics, &e);
                    conn = None;
                    continue;
                }
            };
            ctx.health.up(&ctx.metrics);
            if pending_phase {
                if entries.is_empty() {
                    pending_phase = false;
                    continue;
                }
                for e in &entries {
                    let slot = if e.key == keys.stream { 0 } else { 1 };
                    cursors[slot] = e.id.clone();
                }
                let counts = counts_for(&ctx, &group, &entries).await;
                (entries, counts)
            } else {
                (entries, HashMap::new())
            }
        };

        let mut entries: Vec<Entry> = {
            let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            entries.into_iter().filter(|e| set.insert(format!("{}/{}", e.key, e.id))).collect()
        };
        // Per-key order: claim partition keys here, in read order, before any batch runs.
        let mut holds = HashMap::new();
        if subscriber.active().settings.ordered {
            match claim_keys(&ctx, &subscriber, &keys, &group, &entries).await {
                Ok((parked, claimed)) => {
                    let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    entries.retain(|e| {
                        let keep = !parked.contains(&e.id);
                        if !keep {
                            set.remove(&format!("{}/{}", e.key, e.id));
                        }
                        keep
                    });
                    holds = claimed;
                }
                Err(e) => {
                    ctx.health.down(&ctx.metrics, &e);
                    let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    for e in &entries {
                        set.remove(&format!("{}/{}", e.key, e.id));
                    }
                    conn = None;
                    continue;
                }
            }
        }
        if entries.is_empty() {
            continue;
        }
        let batch = Batch {
            ctx: ctx.clone(),
            subscriber: subscriber.clone(),
            keys: keys.clone(),
            entries,
            counts,
            holds,
            in_flight: in_flight.clone(),
            stop: stop.clone(),
        };
        tasks.spawn(async move {
            batch.run().await;
            drop(permit);
        });
    }

    let waited = tokio::time::timeout(ctx.grace, async { while tasks.join_next().await.is_some() {} }).await;
    if waited.is_err() {
        tracing::warn!(subscriber = %group, %stream, "grace period over: unfinished events stay pending");
        tasks.abort_all();
    }
    tracing::info!(subscriber = %group, %stream, "consumer stopped");
}

async fn counts_for(ctx: &Context, group: &str, entries: &[Entry]) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in entries {
        by_key.entry(&e.key).or_default().push(&e.id);
    }
    let mut shared = ctx.shared.clone();
    for (key, ids) in by_key {
        if let Ok(found) = read::delivery_counts(&mut shared, key, group, &ids).await {
            counts.extend(found.into_iter().map(|(id, n)| (format!("{key}/{id}"), n)));
        }
    }
    counts
}

/// Claim the partition keys of the wanted, keyed events among `entries`. Returns the ids of
/// entries parked behind a held key and, for the others, their (key, owner).
async fn claim_keys(
    ctx: &Context,
    subscriber: &Subscriber,
    keys: &SubscriberKeys,
    group: &str,
    entries: &[Entry],
) -> redis::RedisResult<(HashSet<String>, HashMap<String, (String, String)>)> {
    let active = subscriber.active();
    let mut claims = Vec::new();
    for entry in entries {
        let Ok(event) = Event::from_fields(&entry.fields) else { continue };
        let is_retry = entry.key == keys.retry;
        if !is_retry && !active.wants(&keys.stream, &event) {
            continue;
        }
        let Some(key) = entry.field("partitionkey").and_then(|k| std::str::from_utf8(k).ok()) else { continue };
        let owner = String::from_utf8_lossy(&origin(entry, &keys.stream)).into_owned();
        claims.push(settle::Claim { entry, key, owner });
    }
    let mut shared = ctx.shared.clone();
    let results = settle::claim_keys(&mut shared, keys, group, &claims).await?;
    let mut parked = HashSet::new();
    let mut held = HashMap::new();
    for (claim, handle_now) in claims.iter().zip(results) {
        if handle_now {
            held.insert(claim.entry.id.clone(), (claim.key.to_string(), claim.owner.clone()));
        } else {
            parked.insert(claim.entry.id.clone());
        }
    }
    Ok((parked, held))
}

/// Remove consumers of this group that have nothing pending and were not seen for `idle`
/// (hosts that died or were replaced). A consumer with pending entries is kept until its
/// entries are claimed: deleting it would drop them from the group.
async fn remove_dead_consumers(
    ctx: &Context,
    keys: &SubscriberKeys,
    group: &str,
    idle: Duration,
) -> redis::RedisResult<()> {
    let mut shared = ctx.shared.clone();
    for key in [&keys.stream, &keys.retry] {
        let consumers: redis::Value =
            redis::cmd("XINFO").arg("CONSUMERS").arg(key).arg(group).query_async(&mut shared).await?;
        let redis::Value::Array(consumers) = consumers else { continue };
        for c in consumers {
            let c = read::pairs(c);
            let name = read::pair_str(&c, "name");
            let pending = read::pair_int(&c, "pending").unwrap_or(0);
            let idle_ms = read::pair_int(&c, "idle").unwrap_or(0);
            if let Some(name) = name
                && name != ctx.consumer
                && pending == 0
                && idle_ms as u128 > idle.as_millis()
            {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(key)
                    .arg(group)
                    .arg(&name)
                    .query_async(&mut shared)
                    .await?;
                tracing::info!(subscriber = %group, stream = %key, consumer = %name, "removed a dead consumer with nothing pending");
            }
        }
    }
    Ok(())
}

async fn claim(
    ctx: &Context,
    keys: &SubscriberKeys,
    group: &str,
    min_idle: Duration,
    in_flight: &InFlight,
) -> redis::RedisResult<Vec<Entry>> {
    let mut shared = ctx.shared.clone();
    let mut out = Vec::new();
    for key in [&keys.stream, &keys.retry] {
        let claimed =
            read::auto_claim(&mut shared, key, group, &ctx.consumer, min_idle.as_millis() as u64, ctx.read.count)
                .await?;
        let set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(claimed.into_iter().filter(|e| !set.contains(&format!("{}/{}", e.key, e.id))));
    }
    if !out.is_empty() {
        tracing::info!(subscriber = %group, stream = %keys.stream, count = out.len(), "took over idle pending entries");
    }
    Ok(out)
}

/// One batch of entries on its way through invoke and settle.
struct Batch {
    ctx: Arc<Context>,
    subscriber: Arc<Subscriber>,
    keys: SubscriberKeys,
    entries: Vec<Entry>,
    counts: HashMap<String, u32>,
    /// Under per-key order: entry id → (partition key, owner) of the keys this batch holds.
    holds: HashMap<String, (String, String)>,
    in_flight: InFlight,
    stop: watch::Receiver<bool>,
}

/// Per-batch tallies, added to the metrics once.
#[derive(Default)]
struct Tally {
    handled: u64,
    retried: u64,
    dead_lettered: u64,
    skipped: u64,
    deduplicated: u64,
    failures: HashMap<FailureKind, u64>,
}

impl Batch {
    async fn run(self) {
        let active = self.subscriber.active();
        let name = &self.subscriber.name;
        let stream = &self.keys.stream;
        let settings = &active.settings;
        let now = now_ms();
        let mut tally = Tally::default();
        let mut settlements: Vec<Settlement> = Vec::with_capacity(self.entries.len());
        let mut jobs: Vec<(usize, Job)> = Vec::new();

        for entry in &self.entries {
            let is_retry = entry.key == self.keys.retry;
            let deliveries = self.counts.get(&format!("{}/{}", entry.key, entry.id)).copied().unwrap_or(1).max(1);
            let base = if is_retry {
                entry.field(meta::ATTEMPT).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(1u32)
            } else {
                1
            };
            let attempt = base.saturating_add(deliveries - 1);
            let index = settlements.len();
            let disposition = match Event::from_fields(&entry.fields) {
                Err(invalid) => {
                    tracing::warn!(subscriber = %name, %stream, entry_id = %entry.id, "invalid event set aside: {invalid}");
                    let failure =
                        Failure { kind: FailureKind::InvalidEvent, reason: &invalid.to_string(), attempts: attempt };
                    self.dead_letter(&active, entry, failure, now, &mut tally)
                }
                Ok(event) if !is_retry && !active.wants(stream, &event) => {
                    tally.skipped += 1;
                    Disposition::Ack { dedupe: None, follow_ups: Vec::new() }
                }
                Ok(_) if attempt > settings.retry.max_attempts => {
                    let reason = format!(
                        "the host stopped while handling this event ({deliveries} deliveries); attempts exhausted"
                    );
                    let failure = Failure { kind: FailureKind::Crash, reason: &reason, attempts: attempt - 1 };
                    self.dead_letter(&active, entry, failure, now, &mut tally)
                }
                Ok(event) => {
                    jobs.push((index, Job { event, stream: stream.clone(), entry_id: entry.id.clone(), attempt }));
                    Disposition::Leave
                }
            };
            settlements.push(Settlement {
                key: entry.key.clone(),
                id: entry.id.clone(),
                disposition,
                release: self.holds.get(&entry.id).cloned(),
            });
        }

        let dedupe_ms = settings.dedupe_window.as_millis() as u64;
        if dedupe_ms > 0 && !jobs.is_empty() {
            let ids: Vec<&str> = jobs.iter().map(|(_, j)| j.event.id.as_str()).collect();
            let mut shared = self.ctx.shared.clone();
            let scores: redis::RedisResult<Vec<Option<f64>>> =
                redis::cmd("ZMSCORE").arg(&self.keys.seen).arg(&ids).query_async(&mut shared).await;
            match scores {
                Ok(scores) => {
                    let cutoff = now.saturating_sub(dedupe_ms) as f64;
                    let mut kept = Vec::with_capacity(jobs.len());
                    for ((index, job), score) in jobs.into_iter().zip(scores) {
                        if score.is_some_and(|s| s >= cutoff) {
                            tally.deduplicated += 1;
                            settlements[index].disposition = Disposition::Ack { dedupe: None, follow_ups: Vec::new() };
                        } else {
                            kept.push((index, job));
                        }
                    }
                    jobs = kept;
                }
                Err(e) => {
                    // Not knowing whether they were handled, leave them pending for later.
                    self.ctx.health.down(&self.ctx.metrics, &e);
                    jobs.clear();
                }
            }
        }

        if !jobs.is_empty() {
            let labels = Metrics::sub(name);
            let in_flight = self.ctx.metrics.in_flight.get_or_create(&labels).clone();
            in_flight.inc_by(jobs.len() as i64);
            let runner = active.runner.clone();
            let (indices, batch_jobs): (Vec<usize>, Vec<Job>) = jobs.into_iter().unzip();
            let started = Instant::now();
            let handled = tokio::spawn(async move {
                let outcomes = run_with_host_retries(runner.as_ref(), &batch_jobs).await;
                (batch_jobs, outcomes)
            })
            .await;
            in_flight.dec_by(indices.len() as i64);
            match handled {
                Ok((batch_jobs, outcomes)) => {
                    let per_event = started.elapsed().as_secs_f64() / indices.len() as f64;
                    let histogram = self.ctx.metrics.duration.get_or_create(&labels).clone();
                    for ((index, job), outcome) in indices.into_iter().zip(batch_jobs).zip(outcomes) {
                        histogram.observe(per_event);
                        let entry = &self.entries[index];
                        settlements[index].disposition = self.dispose(&active, entry, &job, outcome, now, &mut tally);
                    }
                }
                Err(e) => tracing::error!(subscriber = %name, "handler thread failed: {e}; events stay pending"),
            }
        }

        for s in &mut settlements {
            if matches!(s.disposition, Disposition::Retry { .. } | Disposition::Leave) {
                // The event keeps its partition key while it waits for its next attempt.
                s.release = None;
            }
        }
        self.settle_until_done(&settlements, dedupe_ms).await;
        {
            let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for e in &self.entries {
                set.remove(&format!("{}/{}", e.key, e.id));
            }
        }
        let m = &self.ctx.metrics;
        let labels = Metrics::sub(name);
        for (family, n) in [
            (&m.handled, tally.handled),
            (&m.retried, tally.retried),
            (&m.dead_lettered, tally.dead_lettered),
            (&m.skipped, tally.skipped),
            (&m.deduplicated, tally.deduplicated),
        ] {
            if n > 0 {
                family.get_or_create(&labels).inc_by(n);
            }
        }
        for (kind, n) in tally.failures {
            m.failures.get_or_create(&FailureLabels { subscriber: name.clone(), kind: kind.as_str().into() }).inc_by(n);
        }
    }

    fn dispose(
        &self,
        active: &Active,
        entry: &Entry,
        job: &Job,
        outcome: Outcome,
        now: u64,
        tally: &mut Tally,
    ) -> Disposition {
        let settings = &active.settings;
        match outcome {
            Outcome::Handled { follow_ups } => {
                tally.handled += 1;
                let dedupe = (!settings.dedupe_window.is_zero()).then(|| job.event.id.clone());
                Disposition::Ack { dedupe, follow_ups }
            }
            Outcome::Failed { kind, reason, delay_hint } => {
                let name = &self.subscriber.name;
                if kind.retryable() && job.attempt < settings.retry.max_attempts {
                    let wait = retry::delay(&settings.retry, job.attempt, delay_hint);
                    tracing::info!(
                        subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
                        "handler failed, retry in {}: {reason}", humantime::format_duration(wait)
                    );
                    tally.retried += 1;
                    *tally.failures.entry(kind).or_default() += 1;
                    Disposition::Retry {
                        due_ms: now + wait.as_millis() as u64,
                        fields: retry_fields(entry, &self.keys.stream, kind, &reason, job.attempt + 1, now),
                    }
                } else {
                    tracing::warn!(
                        subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
                        "event dead-lettered: {reason}"
                    );
                    let failure = Failure { kind, reason: &reason, attempts: job.attempt };
                    self.dead_letter(active, entry, failure, now, tally)
                }
            }
            Outcome::HostError(e) => {
                tracing::error!(subscriber = %self.subscriber.name, event_id = %job.event.id, "cannot run the handler: {e}; the event stays pending");
                Disposition::Leave
            }
        }
    }

    /// Count and build the dead-lettering of `entry`.
    fn dead_letter(
        &self,
        active: &Active,
        entry: &Entry,
        failure: Failure<'_>,
        now: u64,
        tally: &mut Tally,
    ) -> Disposition {
        tally.dead_lettered += 1;
        *tally.failures.entry(failure.kind).or_default() += 1;
        Disposition::DeadLetter { fields: dead_letter_fields(entry, active, &self.keys.stream, &failure, now) }
    }

    /// Settle, retrying through Redis outages. On stop the entries stay pending instead:
    /// they are delivered again, which at-least-once allows, and the guarded scripts make a
    /// repeated settle harmless.
    async fn settle_until_done(&self, settlements: &[Settlement], dedupe_ms: u64) {
        let mut backoff = Duration::from_millis(50);
        let mut stop = self.stop.clone();
        loop {
            let mut shared = self.ctx.shared.clone();
            match settle::settle(&mut shared, &self.keys, &self.subscriber.name, dedupe_ms, now_ms(), settlements).await
            {
                Ok(()) => {
                    self.ctx.health.up(&self.ctx.metrics);
                    return;
                }
                Err(e) => {
                    self.ctx.health.down(&self.ctx.metrics, &e);
                    if *stop.borrow() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Run the jobs; retry host-side failures (instantiation, a full pool) a few times without
/// charging an attempt to the event.
async fn run_with_host_retries(runner: &dyn Invoke, jobs: &[Job]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        outcomes.push(runner.handle(job.clone()).await);
    }
    for round in 0..5u32 {
        let failed: Vec<usize> =
            outcomes.iter().enumerate().filter(|(_, o)| matches!(o, Outcome::HostError(_))).map(|(i, _)| i).collect();
        if failed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20 << round)).await;
        for i in failed {
            outcomes[i] = runner.handle(jobs[i].clone()).await;
        }
    }
    outcomes
}

fn origin(entry: &Entry, stream: &str) -> Vec<u8> {
    entry.field(meta::ORIGIN).map(<[u8]>::to_vec).unwrap_or_else(|| format!("{stream}/{}", entry.id).into_bytes())
}

fn first_failure(entry: &Entry, now: u64) -> Vec<u8> {
    entry.field(meta::FIRST_FAILURE).map(<[u8]>::to_vec).unwrap_or_else(|| rfc3339_ms(now).into_bytes())
}

fn retry_fields(
    entry: &Entry,
    stream: &str,
    kind: FailureKind,
    reason: &str,
    next_attempt: u32,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = settle::original_fields(entry);
    fields.push((meta::ATTEMPT.into(), next_attempt.to_string().into_bytes()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields.push((meta::KIND.into(), kind.as_str().into()));
    fields.push((meta::REASON.into(), reason.as_bytes().to_vec()));
    fields
}

/// Why an event is dead-lettered.
struct Failure<'a> {
    kind: FailureKind,
    reason: &'a str,
    attempts: u32,
}

fn dead_letter_fields(
    entry: &Entry,
    active: &Active,
    stream: &str,
    failure: &Failure<'_>,
    now: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = settle::original_fields(entry);
    let runner = &active.runner;
    fields.push((meta::REASON.into(), failure.reason.as_bytes().to_vec()));
    fields.push((meta::KIND.into(), failure.kind.as_str().into()));
    fields.push((meta::ATTEMPTS.into(), failure.attempts.to_string().into_bytes()));
    fields.push((meta::SUBSCRIBER.into(), runner.name().as_bytes().to_vec()));
    fields.push((meta::VERSION.into(), runner.version().as_bytes().to_vec()));
    fields.push((meta::ORIGIN.into(), origin(entry, stream)));
    fields.push((meta::FIRST_FAILURE.into(), first_failure(entry, now)));
    fields.push((meta::LAST_FAILURE.into(), rfc3339_ms(now).into_bytes()));
    fields
}
