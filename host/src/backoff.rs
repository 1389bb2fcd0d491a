//! [`Backoff`]: how long a loop waits before trying Redis or PostgreSQL again after a
//! failure (the reader's reconnect, the settler's settle, the relay's session, a worker's
//! host-side failure), in one helper instead of a doubling written at each place.
//!
//! Capped exponential with jitter: each wait doubles from `initial` up to `cap`, and is cut
//! by up to a fifth at random so hosts that lost Redis together do not come back in step. A
//! wait is never longer than the doubling alone would make it (the delays each place had
//! before the helper, at most).

use std::time::Duration;

use rand::Rng as _;

/// The share of a step that jitter may take off.
const JITTER: f64 = 0.2;

/// Waits between attempts: `initial`, doubling up to `cap`, each less up to 20% at random.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, doubling up to `cap`.
    pub const fn new(initial: Duration, cap: Duration) -> Self {
        Self { initial, cap, step: initial }
    }

    /// The next wait (the current step with its jitter); the step doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        step.mul_f64(1.0 - rand::rng().random_range(0.0..=JITTER))
    }

    /// Sleep for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Start again from `initial` (after a success).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn waits_double_up_to_the_cap_each_cut_by_at_most_a_fifth() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let steps = [50u64, 100, 200, 400, 800, 1600, 2000, 2000];
        for _ in 0..200 {
            backoff.reset();
            for step in steps {
                let wait = backoff.next_delay();
                let step = Duration::from_millis(step);
                assert!(wait <= step && wait >= step.mul_f64(0.8), "{wait:?} for a step of {step:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn reset_starts_again_from_the_first_wait() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
