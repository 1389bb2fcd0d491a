//! The invoke step: run one event's handler and turn its outcome into a disposition.
//!
//! A worker is one task per event, started when a permit of the subscriber's `concurrency`
//! is free; it hands its settlement to the settler the moment it finishes, so one slow event
//! never holds back the others.

use std::sync::Arc;
use std::time::Instant;

use super::dispatch::{Failure, Work};
use super::settle::{Disposition, Settlement, Tally};
use super::{Active, dead_letter_fields, now_ms, retry, retry_fields};
use crate::plugin::invoke::Outcome;

/// Run `work` on `active`'s handler; the settlement for its entry.
pub async fn run(active: Arc<Active>, stream: &str, work: Work, metrics: &super::Counters) -> Settlement {
    let started = Instant::now();
    metrics.in_flight.inc();
    let mut outcome = active.runner.handle(work.job.clone()).await;
    // A host-side failure (instantiation, a full pool) is not the event's: try a few more
    // times before giving the entry back.
    for round in 0..4u32 {
        if !matches!(outcome, Outcome::HostError(_)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20 << round)).await;
        outcome = active.runner.handle(work.job.clone()).await;
    }
    metrics.in_flight.dec();
    metrics.duration.observe(started.elapsed().as_secs_f64());
    dispose(&active, stream, work, outcome)
}

/// The disposition of `work` after `outcome`.
pub fn dispose(active: &Active, stream: &str, work: Work, outcome: Outcome) -> Settlement {
    let settings = &active.settings;
    let name = active.runner.name();
    let job = &work.job;
    let now = now_ms();
    let mut settlement = Settlement {
        key: work.entry.key.clone(),
        id: work.entry.id.clone(),
        event_id: job.event.id.clone(),
        owner: work.owner.clone(),
        release: job.event.partitionkey.is_some(),
        disposition: Disposition::Release,
        fallback: None,
        tally: Tally::None,
    };
    match outcome {
        Outcome::Handled { follow_ups } => {
            if !follow_ups.is_empty() {
                let reason = "a follow-up's stream holds another type of key";
                let failure = Failure { kind: crate::plugin::invoke::FailureKind::Trap, reason, attempts: job.attempt };
                settlement.fallback = Some(dead_letter_fields(&work.entry, active, stream, &failure, now));
            }
            settlement.disposition = Disposition::Ack { record: !settings.dedupe_window.is_zero(), follow_ups };
            settlement.tally = Tally::Handled;
        }
        Outcome::Failed { kind, reason, delay_hint } => {
            if kind.retryable() && job.attempt < settings.retry.max_attempts {
                let wait = retry::delay(&settings.retry, job.attempt, delay_hint);
                tracing::info!(
                    subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
                    "handler failed, retry in {}: {reason}", humantime::format_duration(wait)
                );
                settlement.disposition = Disposition::Retry {
                    due_ms: now + wait.as_millis() as u64,
                    fields: retry_fields(&work.entry, stream, kind, &reason, job.attempt + 1, now),
                };
                settlement.tally = Tally::Retried(kind);
            } else {
                tracing::warn!(
                    subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
                    "event dead-lettered: {reason}"
                );
                let failure = Failure { kind, reason: &reason, attempts: job.attempt };
                settlement.disposition =
                    Disposition::DeadLetter { fields: dead_letter_fields(&work.entry, active, stream, &failure, now) };
                settlement.tally = Tally::DeadLettered(kind);
            }
        }
        Outcome::HostError(e) => {
            tracing::error!(subscriber = %name, event_id = %job.event.id, "cannot run the handler: {e}; the event stays pending and is not charged an attempt");
        }
    }
    settlement
}
