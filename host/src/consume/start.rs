//! The starter: records that a run starts, in batches (one `start.lua` call for every event
//! about to start), so the crash budget counts only runs that began or were about to: the
//! pipeline asks for an event's start when it is among the next `concurrency` events to get a
//! worker, so the round trip is done by the time the worker is free.
//!
//! An event is recorded at dispatch with a lease (its run marker), which the
//! housekeeper keeps alive while the event waits for a worker; its run is charged only here.
//! A host that dies with a read's worth of events queued behind busy workers therefore
//! charges only the events that were running and at most `concurrency` next ones, never the
//! whole read (docs/delivery.md).
//!
//! The same call reads ahead the state a run asks for (its event's partition key, for a
//! subscriber granted state): a handler that keeps its state under the partition key, as
//! docs/delivery.md advises, reads it without a round trip of its own.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Context, Subscriber, now_ms, scripts};
use crate::keys::SubscriberKeys;

/// The largest batch of starts sent in one call.
const MAX_BATCH: usize = 512;

struct Request {
    event_id: String,
    owner: String,
    /// The state key to read ahead, if any.
    state_key: Option<String>,
    reply: oneshot::Sender<scripts::Start>,
}

/// The starter's answer for one event: whether its start was recorded, and the state it
/// asked for.
pub type Starting = oneshot::Receiver<scripts::Start>;

/// A handle to the starter of one (subscriber, stream).
#[derive(Clone)]
pub struct Starter {
    tx: mpsc::UnboundedSender<Request>,
}

impl Starter {
    /// Start the starter's task; it ends when every handle is dropped.
    pub fn spawn(ctx: Arc<Context>, keys: SubscriberKeys, subscriber: Arc<Subscriber>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ctx, keys, subscriber, rx));
        Self { tx }
    }

    /// Record that the run of `event_id` (owned by `owner`) is about to start, reading the
    /// committed value of `state_key` with it; the answer comes when the batch it went with
    /// is written. `Refused` (or a dropped answer): it must not start (another delivery of
    /// the event holds its marker, or Redis could not be reached); the entry is given back
    /// uncharged.
    pub fn request(&self, event_id: &str, owner: &str, state_key: Option<&str>) -> Starting {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            event_id: event_id.to_string(),
            owner: owner.to_string(),
            state_key: state_key.map(str::to_string),
            reply,
        };
        // A starter that is gone drops the request, and with it the reply: the answer is an
        // error, read as "must not start".
        let _ = self.tx.send(request);
        answer
    }
}

async fn run(
    ctx: Arc<Context>,
    keys: SubscriberKeys,
    subscriber: Arc<Subscriber>,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        super::fill(&mut batch, &mut rx, MAX_BATCH);
        let lease = ctx.claim_idle_of(&subscriber).as_millis() as u64;
        let mut args = Vec::with_capacity(1 + 3 * batch.len());
        args.push((now_ms() + lease).to_string());
        for r in &mut batch {
            args.push(std::mem::take(&mut r.event_id));
            args.push(std::mem::take(&mut r.owner));
            args.push(r.state_key.take().unwrap_or_default());
        }
        let mut conn = ctx.shared.clone();
        let reply = scripts::call(&mut conn, &scripts::START, &[&keys.inflight, &keys.state], &args).await;
        match reply.and_then(|reply| scripts::Start::parse_all(reply, batch.len())) {
            Ok(answers) => {
                ctx.health.up(&ctx.metrics);
                for (r, answer) in batch.drain(..).zip(answers) {
                    let _ = r.reply.send(answer);
                }
            }
            Err(e) => {
                ctx.health.down(&ctx.metrics, &e);
                for r in batch.drain(..) {
                    let _ = r.reply.send(scripts::Start::Refused);
                }
            }
        }
    }
}
