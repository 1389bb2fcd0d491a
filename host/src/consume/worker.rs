//! The invoke step: run one event's handler and turn its outcome into a disposition.
//!
//! A worker is one task per event, started when a permit of the subscriber's `concurrency`
//! is free; it hands its settlement to the settler the moment it finishes, so one slow event
//! never holds back the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Tally;
use super::dispatch::Work;
use super::letters::Failure;
use super::settle::{Disposition, Settlement, StateFallbacks};
use super::{Active, dead_letter_fields, now_ms, retry, retry_fields};
use crate::backoff::Backoff;
use crate::handler::{FailureKind, Job, Outcome};

/// Run `work` on `active`'s handler; the settlement for its entry.
pub async fn run(
    active: Arc<Active>,
    work: Work,
    contracts: Option<&crate::contract::Registry>,
    metrics: &super::Counters,
) -> Settlement {
    let started = Instant::now();
    metrics.in_flight.inc();
    let outcome = match upcast(&work, contracts).await {
        Ok(job) => handle(&active, job).await,
        Err(reason) => Outcome::Failed { kind: FailureKind::UpcastFailed, reason, delay_hint: None },
    };
    metrics.in_flight.dec();
    metrics.duration.observe(started.elapsed().as_secs_f64());
    let job = work.job.clone();
    dispose(&active, &job.stream, work, outcome)
}

/// Run `job` on `active`'s handler. A host-side failure (instantiation, a full pool) is not
/// the event's: try a few more times before giving the entry back.
async fn handle(active: &Active, job: Arc<Job>) -> Outcome {
    let mut outcome = active.runner.handle(job.clone()).await;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(160));
    for _ in 0..4 {
        if !matches!(outcome, Outcome::HostError(_)) {
            break;
        }
        backoff.wait().await;
        outcome = active.runner.handle(job.clone()).await;
    }
    outcome
}

/// The job the handler gets: `work`'s, or its event converted along its upcast chain (and
/// checked against the target version's schema); the stored entry stays as it is.
async fn upcast(work: &Work, contracts: Option<&crate::contract::Registry>) -> Result<Arc<Job>, String> {
    let Some(plan) = &work.upcast else { return Ok(work.job.clone()) };
    let event = plan.apply(&work.job.event, contracts).await?;
    Ok(Arc::new(Job { event, ..(*work.job).clone() }))
}

/// The disposition of `work` after `outcome`.
pub fn dispose(active: &Active, stream: &str, work: Work, outcome: Outcome) -> Settlement {
    let settings = &active.settings;
    let name = active.runner.name();
    let job = &work.job;
    let now = now_ms();
    let mut fallback = None;
    let mut state_fallbacks = None;
    let (disposition, tally) = match outcome {
        Outcome::Handled { effects } => {
            if !effects.follow_ups.is_empty() {
                let reason = "a follow-up's stream holds another type of key";
                let failure = Failure { kind: FailureKind::Trap, reason, attempts: job.attempt, host: &work.host };
                fallback = Some(dead_letter_fields(&work.entry, active, stream, &failure, now));
            }
            if effects.state.is_some() {
                state_fallbacks = Some(Box::new(state_fallbacks_of(active, stream, &work, now)));
            }
            (Disposition::Ack { record: !settings.dedupe_window.is_zero(), effects }, Tally::Handled)
        }
        Outcome::Failed { kind, reason, delay_hint } => failed(active, stream, &work, kind, &reason, delay_hint, now),
        Outcome::HostError(e) => {
            tracing::error!(subscriber = %name, event_id = %job.event.id, "cannot run the handler: {e}; the event stays pending and is not charged an attempt");
            (Disposition::GiveBack { charged: true }, Tally::None)
        }
    };
    // The entry's names move into the settlement: nothing is copied per event but the id.
    let Work { entry, job, owner, hand_on, .. } = work;
    Settlement {
        key: entry.key,
        id: entry.id,
        event_id: job.event.id.clone(),
        owner,
        hand_on,
        disposition,
        fallback,
        state_fallbacks,
        tally,
    }
}

/// A failure of `work`'s event: a retry while the policy allows one, else its dead letter.
fn failed(
    active: &Active,
    stream: &str,
    work: &Work,
    kind: FailureKind,
    reason: &str,
    delay_hint: Option<std::time::Duration>,
    now: u64,
) -> (Disposition, Tally) {
    let (settings, name, job) = (&active.settings, active.runner.name(), &work.job);
    if kind.retryable() && job.attempt < settings.retry.max_attempts {
        let wait = retry::delay(&settings.retry, job.attempt, delay_hint);
        tracing::info!(
            subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
            "handler failed, retry in {}: {reason}", humantime::format_duration(wait)
        );
        let fields = retry_fields(&work.entry, stream, kind, reason, job.attempt + 1, now);
        (Disposition::Retry { due_ms: now + wait.as_millis() as u64, fields }, Tally::Retried(kind))
    } else {
        tracing::warn!(
            subscriber = %name, event_id = %job.event.id, attempt = job.attempt, kind = kind.as_str(),
            "event dead-lettered: {reason}"
        );
        let failure = Failure { kind, reason, attempts: job.attempt, host: &work.host };
        let fields = dead_letter_fields(&work.entry, active, stream, &failure, now);
        (Disposition::DeadLetter { fields }, Tally::DeadLettered(kind))
    }
}

/// What an ack with state writes becomes if its commit is refused: on a conflict the event
/// runs again at once on the same attempt; past the quota it failed.
fn state_fallbacks_of(active: &Active, stream: &str, work: &Work, now: u64) -> StateFallbacks {
    let attempt = work.job.attempt;
    let reason = "a state key it read changed before its commit: run again on the same attempt";
    let fields = retry_fields(&work.entry, stream, FailureKind::StateConflict, reason, attempt, now);
    let quota = "its state writes would pass the subscriber's state quota (state.quota_bytes)";
    let (over_quota, _) = failed(active, stream, work, FailureKind::StateQuota, quota, None, now);
    StateFallbacks { conflict: Disposition::Retry { due_ms: now, fields }, over_quota }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::letters::meta;
    use crate::consume::testing::{active, entry};
    use crate::event::Event;
    use crate::handler::{FailureKind, Job};

    fn work(attempt: u32) -> Work {
        let event = Event::new("A", "tests", "{}");
        let entry = entry("events", "1-0", &event);
        let job = Arc::new(Job { event, stream: "events".into(), entry_id: "1-0".into(), attempt, prefetched: None });
        Work { entry, job, owner: "events/1-0".into(), host: "host-1".into(), hand_on: false, upcast: None }
    }

    fn failed(kind: FailureKind) -> Outcome {
        Outcome::Failed { kind, reason: "no".into(), delay_hint: None }
    }

    #[test]
    fn a_handled_event_is_acked_and_recorded() {
        let s = dispose(&active("*"), "events", work(1), Outcome::Handled { effects: Default::default() });
        assert_eq!(s.disposition, Disposition::Ack { record: true, effects: Default::default() });
        assert_eq!(s.tally, Tally::Handled);
    }

    #[test]
    fn a_failure_retries_until_the_last_attempt_and_then_dead_letters() {
        let a = active("*");
        let s = dispose(&a, "events", work(1), failed(FailureKind::Trap));
        let Disposition::Retry { fields, .. } = &s.disposition else { panic!("retry: {s:?}") };
        assert!(fields.contains(&(meta::ATTEMPT.into(), b"2".to_vec())));
        let last = a.settings.retry.max_attempts;
        let s = dispose(&a, "events", work(last), failed(FailureKind::Trap));
        assert!(matches!(s.disposition, Disposition::DeadLetter { .. }), "{s:?}");
        let s = dispose(&a, "events", work(1), failed(FailureKind::HandlerReject));
        assert_eq!(s.tally, Tally::DeadLettered(FailureKind::HandlerReject), "a reject is never retried");
    }

    #[test]
    fn a_host_error_gives_the_event_back_without_a_verdict() {
        let s = dispose(&active("*"), "events", work(1), Outcome::HostError("pool full".into()));
        assert_eq!((s.disposition, s.tally), (Disposition::GiveBack { charged: true }, Tally::None));
    }
}
