//! The pipeline of one (subscriber, stream): wires reader → dispatcher → workers → settler,
//! starts the housekeeper (and on a cluster the forwarder) beside them, and owns shutdown.
//!
//! Backpressure: a read's events are started one permit at a time; the next read is asked
//! for once half of them are started, for as many entries as the rest leaves room for, and
//! runs on the reader's own task meanwhile (its round trip and reply parsing overlap with the
//! events). So what this host holds is bounded by `concurrency` plus one read's worth of
//! events not yet started. Everything it holds is kept alive by the housekeeper.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::dispatch::{Dispatcher, Plan, Undecided, Work};
use super::forward::Forwarder;
use super::housekeeping::Housekeeper;
use super::read::Entry;
use super::reader::{ReadAhead, Reader};
use super::scripts::Start;
use super::settle::{Settlement, Settler};
use super::start::{Starter, Starting};
use super::{Active, Context, Counters, InFlight, Subscriber, worker};
use crate::handler::Prefetched;
use crate::keys::SubscriberKeys;
use crate::stop::Stop;

/// Run the consumer of `subscriber` on `stream` until `stop` turns true. Then stop taking
/// work, let running events finish within the grace period, interrupt what still runs at
/// its end, and give those entries back (pending, not charged).
pub async fn run_stream(ctx: Arc<Context>, subscriber: Arc<Subscriber>, stream: String, stop: Stop) {
    let mut pipeline = Pipeline::start(ctx, subscriber, stream, stop);
    while let Some(entries) = pipeline.next_entries().await {
        let active = pipeline.subscriber.active();
        let plan = pipeline.dispatch(&active, entries).await;
        if !pipeline.start_work(&active, plan).await {
            break;
        }
    }
    pipeline.shutdown().await;
}

/// The stages of one (subscriber, stream) and what they share.
struct Pipeline {
    ctx: Arc<Context>,
    subscriber: Arc<Subscriber>,
    stream: String,
    stop: Stop,
    in_flight: InFlight,
    counters: Arc<Counters>,
    read_ahead: ReadAhead,
    dispatcher: Dispatcher,
    permits: Arc<Semaphore>,
    /// The size `permits` was given: the active version's `concurrency`, followed on reload.
    concurrency: usize,
    starter: Starter,
    workers: JoinSet<()>,
    settle_tx: mpsc::UnboundedSender<Settlement>,
    settler: JoinHandle<()>,
    claimed_rx: mpsc::Receiver<Vec<Entry>>,
    housekeeper: JoinHandle<()>,
    /// On a cluster: forwards follow-ups to other slots.
    forwarder: Option<JoinHandle<()>>,
    /// Entries waiting for another delivery of their event to settle, and when to look again.
    waiting: Vec<Entry>,
    recheck: Instant,
}

impl Pipeline {
    fn start(ctx: Arc<Context>, subscriber: Arc<Subscriber>, stream: String, stop: Stop) -> Self {
        let keys = SubscriberKeys::new(&stream, &subscriber.name);
        let name = subscriber.name.clone();
        let first = subscriber.active();
        let in_flight = InFlight::default();
        let counters = Arc::new(Counters::new(&ctx.metrics, &name));
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let (claimed_tx, claimed_rx) = mpsc::channel(4);
        let settler = Settler {
            ctx: ctx.clone(),
            keys: keys.clone(),
            subscriber: subscriber.clone(),
            in_flight: in_flight.clone(),
            counters: (*counters).clone(),
        };
        let settler = tokio::spawn(settler.run(settle_rx, stop.clone()));
        let housekeeper = Housekeeper {
            ctx: ctx.clone(),
            keys: keys.clone(),
            subscriber: subscriber.clone(),
            in_flight: in_flight.clone(),
            claimed: claimed_tx,
        };
        let housekeeper = tokio::spawn(housekeeper.run(stop.clone()));
        let forwarder = ctx.redis.is_cluster().then(|| {
            let forwarder = Forwarder { ctx: ctx.clone(), keys: keys.clone(), subscriber: subscriber.clone() };
            tokio::spawn(forwarder.run(stop.clone()))
        });
        let block = ctx.read.block.max(Duration::from_millis(1));
        tracing::info!(subscriber = %name, %stream, consumer = %ctx.consumer, "consumer started");
        Self {
            read_ahead: ReadAhead::start(
                Reader::new(keys.clone(), subscriber.clone(), first.settings.start, block),
                ctx.clone(),
                in_flight.clone(),
                stop.clone(),
            ),
            starter: Starter::spawn(ctx.clone(), keys.clone(), subscriber.clone()),
            dispatcher: Dispatcher {
                keys,
                subscriber: name,
                host: ctx.consumer.as_str().into(),
                claim_idle: ctx.read.claim_idle,
                contracts: ctx.contracts.clone(),
                upcasters: ctx.upcasters.clone(),
            },
            permits: Arc::new(Semaphore::new(first.settings.concurrency)),
            concurrency: first.settings.concurrency,
            workers: JoinSet::new(),
            ctx,
            subscriber,
            stream,
            stop,
            in_flight,
            counters,
            settle_tx,
            settler,
            claimed_rx,
            housekeeper,
            forwarder,
            waiting: Vec::new(),
            recheck: Instant::now(),
        }
    }

    /// Follow the active version's `concurrency` (a reload may change it): permits are added
    /// at once; when it shrinks, the surplus is taken as workers finish and never given back.
    fn follow_concurrency(&mut self) {
        let wanted = self.subscriber.active().settings.concurrency;
        if wanted > self.concurrency {
            self.permits.add_permits(wanted - self.concurrency);
        } else if wanted < self.concurrency {
            let (permits, surplus) = (self.permits.clone(), (self.concurrency - wanted) as u32);
            tokio::spawn(async move {
                if let Ok(taken) = permits.acquire_many_owned(surplus).await {
                    taken.forget();
                }
            });
        }
        self.concurrency = wanted;
    }

    /// A worker's permit, following the active version's `concurrency` while it waits: a
    /// reload that raises it lets the events this host holds start at once. `None` once stopped.
    async fn permit(&mut self) -> Option<OwnedSemaphorePermit> {
        let subscriber = self.subscriber.clone();
        loop {
            let swapped = subscriber.swapped();
            self.follow_concurrency();
            tokio::select! {
                p = self.permits.clone().acquire_owned() => return p.ok(),
                _ = swapped => {}
                _ = self.stop.stopped() => return None,
            }
        }
    }

    /// The next entries to dispatch, taken into this host's hands; `None` once stopped.
    /// Taken-over and waiting entries come first; a read is never cancelled for them (a
    /// cancelled XREADGROUP still delivers its entries into this consumer's pending list).
    async fn next_entries(&mut self) -> Option<Vec<Entry>> {
        loop {
            while let Some(done) = self.workers.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(subscriber = %self.subscriber.name, "an event's task failed: {e}; its entry stays pending");
                }
            }
            // Read only when a worker is free: what is read waits in this host's hands.
            drop(self.permit().await?);
            if self.stop.is_stopped() {
                return None;
            }
            let entries = if !self.waiting.is_empty() && self.recheck <= Instant::now() {
                std::mem::take(&mut self.waiting)
            } else if let Ok(taken) = self.claimed_rx.try_recv() {
                self.in_flight.admit(taken)
            } else {
                self.read_ahead.ask(self.ctx.read.count);
                let recheck = tokio::time::Instant::from_std(self.recheck);
                tokio::select! {
                    _ = self.stop.stopped() => return None,
                    read = self.read_ahead.next() => read?,
                    Some(taken) = self.claimed_rx.recv() => self.in_flight.admit(taken),
                    _ = tokio::time::sleep_until(recheck), if !self.waiting.is_empty() => Vec::new(),
                }
            };
            if !entries.is_empty() {
                return Some(entries);
            }
        }
    }

    /// Dispatch `entries` under `active`: settlements go to the settler, waiting entries
    /// aside; the work to run is returned. What Redis could not decide is given back.
    async fn dispatch(&mut self, active: &Active, entries: Vec<Entry>) -> Plan {
        let mut conn = self.ctx.shared.clone();
        let mut plan = match self.dispatcher.plan(&mut conn, active, entries).await {
            Ok(plan) => plan,
            Err(undecided) => {
                // Not knowing what was recorded for them, give the undecided entries back: they
                // stay pending and are read again from this consumer's pending list.
                let Undecided { plan, entries, error } = *undecided;
                self.ctx.health.down(&self.ctx.metrics, &error);
                for entry in entries {
                    self.in_flight.remove(&entry.key, &entry.id);
                }
                self.read_ahead.rewind();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = self.stop.stopped() => {}
                }
                plan
            }
        };
        for entry in &plan.parked {
            self.in_flight.remove(&entry.key, &entry.id);
        }
        // Every event to run is leased from now on (the housekeeper keeps the lease alive while
        // it waits for a worker), and given back if the host stops before it runs.
        for work in &plan.run {
            self.in_flight.running(&work.entry.key, &work.entry.id, &work.job.event.id, &work.owner);
        }
        for s in std::mem::take(&mut plan.settle) {
            let _ = self.settle_tx.send(s);
        }
        if !plan.wait.is_empty() {
            self.waiting.append(&mut plan.wait);
            self.recheck = Instant::now() + self.ctx.read.poll;
        }
        plan
    }

    /// Start a worker for each event of `plan`, one permit at a time. Returns false once
    /// stopped (the events not started are given back uncharged).
    async fn start_work(&mut self, active: &Arc<Active>, plan: Plan) -> bool {
        let count = self.ctx.read.count;
        // Starts are recorded `ahead` events before their worker is free (grouped by the
        // starter), so a worker rarely waits on the round trip: a run is charged when its event
        // is among the next `concurrency` to start, never a whole read ahead of it.
        let ahead = self.concurrency.max(1);
        let mut run: VecDeque<Work> = plan.run.into();
        let read_ahead = active.settings.state.is_some_and(|s| s.prefetch);
        let mut starts: VecDeque<Starting> =
            run.iter().take(ahead).map(|w| self.request_start(w, read_ahead)).collect();
        while let Some(work) = run.pop_front() {
            // Read ahead once half the read is started, as many as the rest leaves room for:
            // still at most one read's worth of events waiting for a worker.
            if run.len() <= count / 2 {
                self.read_ahead.ask(count - run.len());
            }
            let start = starts.pop_front().unwrap_or_else(|| self.request_start(&work, read_ahead));
            let Some(permit) = self.permit().await else {
                // Given back: charged if its start was recorded, else not.
                let mut requested = std::iter::once(start).chain(starts);
                for w in std::iter::once(work).chain(run) {
                    let charged = match requested.next() {
                        Some(start) => matches!(start.await, Ok(Start::Started(_))),
                        None => false,
                    };
                    let _ = self.settle_tx.send(give_back(&w, charged));
                }
                return false;
            };
            if let Some(next) = run.get(ahead - 1) {
                starts.push_back(self.request_start(next, read_ahead));
            }
            let (active, tx, counters) = (active.clone(), self.settle_tx.clone(), self.counters.clone());
            let in_flight = self.in_flight.clone();
            let contracts = work.upcast.as_ref().and(self.dispatcher.contracts.clone());
            self.workers.spawn(async move {
                let settlement = if let Ok(Start::Started(read)) = start.await {
                    in_flight.started(&work.entry.key, &work.entry.id);
                    let mut work = work;
                    if let (Some((value, version)), Some(key)) = (read, &work.job.event.partitionkey) {
                        let prefetched = Prefetched { key: key.clone(), value, version };
                        Arc::make_mut(&mut work.job).prefetched = Some(Arc::new(prefetched));
                    }
                    worker::run(active, work, contracts.as_deref(), &counters).await
                } else {
                    give_back(&work, false)
                };
                let _ = tx.send(settlement);
                drop(permit);
            });
        }
        true
    }

    /// Ask the starter to record that `work` starts (answered later, grouped with others),
    /// reading ahead its partition key's state if `read_ahead` (a subscriber granted state).
    fn request_start(&self, work: &Work, read_ahead: bool) -> Starting {
        let key = work.job.event.partitionkey.as_deref().filter(|k| read_ahead && !k.is_empty());
        self.starter.request(&work.job.event.id, &work.owner, key)
    }

    /// No more reads. Running events may finish within the grace period; then they are
    /// interrupted, and every entry with a recorded run but no verdict is given back.
    async fn shutdown(mut self) {
        let (group, stream) = (self.subscriber.name.clone(), self.stream.clone());
        let workers = &mut self.workers;
        let finished = tokio::time::timeout(self.ctx.grace, async { while workers.join_next().await.is_some() {} });
        if finished.await.is_err() {
            tracing::warn!(subscriber = %group, %stream, "grace period over: interrupting running events; they stay pending");
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
        }
        // An entry whose settlement is already queued is settled first; its give-back then
        // finds nothing to give back.
        for held in self.in_flight.snapshot() {
            if !held.event_id.is_empty() {
                let _ = self.settle_tx.send(Settlement::give_back(
                    held.key,
                    held.id,
                    held.event_id,
                    held.owner,
                    held.started,
                ));
            }
        }
        drop(self.settle_tx);
        if tokio::time::timeout(Duration::from_millis(800), self.settler).await.is_err() {
            tracing::warn!(subscriber = %group, %stream, "settling at shutdown took too long; unsettled entries stay pending");
        }
        self.housekeeper.abort();
        if let Some(forwarder) = &self.forwarder {
            forwarder.abort();
        }
        self.read_ahead.abort();
        tracing::info!(subscriber = %group, %stream, "consumer stopped");
    }
}

/// The settlement that gives `work` back before it ran: no verdict; `charged` if its start
/// was recorded (it comes off the crash budget again).
fn give_back(work: &Work, charged: bool) -> Settlement {
    let Work { entry, job, owner, .. } = work;
    Settlement::give_back(entry.key.clone(), entry.id.clone(), job.event.id.clone(), owner.clone(), charged)
}
