//! The retry policy: how long an event waits before its next attempt.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// The delay before attempt `attempt + 1`, after attempt `attempt` (from 1) failed.
/// Exponential from `initial_delay`, capped at `max_delay`, spread by `jitter`. A handler's
/// hint replaces the exponential delay but is kept within `[0, max_delay]` too.
pub fn delay(policy: &RetryConfig, attempt: u32, hint: Option<Duration>) -> Duration {
    let base = match hint {
        Some(hint) => hint,
        None => {
            let exp = policy.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
            policy.initial_delay.mul_f64(exp.min(1e9))
        }
    };
    let base = base.min(policy.max_delay);
    if policy.jitter <= 0.0 || base.is_zero() || hint.is_some() {
        return base;
    }
    let spread = rand::rng().random_range(-policy.jitter..=policy.jitter);
    base.mul_f64((1.0 + spread).max(0.0)).min(policy.max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter,
            max_deliveries: 10,
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy(0.0);
        let got: Vec<u128> = (1..=6).map(|a| delay(&p, a, None).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn hints_are_honoured_within_bounds() {
        let p = policy(0.5);
        assert_eq!(delay(&p, 1, Some(Duration::from_millis(30))), Duration::from_millis(30));
        assert_eq!(delay(&p, 1, Some(Duration::from_secs(60))), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let p = policy(0.2);
        for _ in 0..1000 {
            let d = delay(&p, 2, None).as_millis();
            assert!((160..=240).contains(&d), "{d}");
        }
    }
}
