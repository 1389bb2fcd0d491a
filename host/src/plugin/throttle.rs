//! A subscriber's adaptive limit of calls in flight: a subscriber that keeps hitting its
//! deadline or trapping gets fewer calls at once, and its long calls pause between ticks.

use std::sync::Mutex;

/// A subscriber's adaptive limit of calls in flight: halved on every call that hits its
/// deadline, traps or hits a limit, raised by one on every healthy call, between 1 and the
/// subscriber's concurrency. While below its maximum (or right after a failure) the subscriber
/// is penalized: its long calls pause between ticks.
pub struct Throttle {
    max: usize,
    state: Mutex<ThrottleState>,
    changed: tokio::sync::Notify,
}

struct ThrottleState {
    limit: usize,
    running: usize,
    failing: bool,
}

/// A call's place under its subscriber's [`Throttle`]; released on drop.
pub struct Slot<'a>(&'a Throttle);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Throttle {
    /// A throttle allowing `max` calls in flight while healthy.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            state: Mutex::new(ThrottleState { limit: max, running: 0, failing: false }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a place under the limit.
    pub async fn acquire(&self) -> Slot<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.running < state.limit {
                    state.running += 1;
                    return Slot(self);
                }
            }
            changed.await;
        }
    }

    /// Adjust the limit after a call.
    pub fn record(&self, healthy: bool) {
        let mut state = self.lock();
        state.failing = !healthy;
        if healthy {
            if state.limit < self.max {
                state.limit += 1;
                drop(state);
                self.changed.notify_waiters();
            }
        } else {
            state.limit = (state.limit / 2).max(1);
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// The limit while healthy (the subscriber's concurrency).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the subscriber's long calls should pause between ticks.
    pub fn penalized(&self) -> bool {
        let state = self.lock();
        state.failing || state.limit < self.max
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_throttle_halves_on_failures_and_recovers_one_by_one() {
        let throttle = Throttle::new(8);
        assert!(!throttle.penalized());
        for expected in [4, 2, 1, 1] {
            throttle.record(false);
            assert_eq!(throttle.limit(), expected);
            assert!(throttle.penalized());
        }
        throttle.record(true);
        assert_eq!(throttle.limit(), 2, "one more per healthy call");
        for _ in 0..10 {
            throttle.record(true);
        }
        assert_eq!(throttle.limit(), 8, "never above the subscriber's concurrency");
        assert!(!throttle.penalized());
    }

    #[tokio::test]
    async fn a_throttled_subscriber_waits_for_its_slot() {
        let throttle = Arc::new(Throttle::new(2));
        throttle.record(false);
        let first = throttle.acquire().await;
        let waiting = {
            let throttle = throttle.clone();
            tokio::spawn(async move {
                let _slot = throttle.acquire().await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the limit is 1 and the slot is taken");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("task");
    }
}
