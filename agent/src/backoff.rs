//! The agent's one retry policy: exponential backoff, optionally jittered. Pure logic, no I/O;
//! randomness comes in as an argument where a rule is tested.
//!
//! | who | first | max | jitter | resets |
//! | --- | --- | --- | --- | --- |
//! | uploads ([`crate::uploader`]) | 1 s | 5 min (`store.retry_max`) | 0.5 | the spool counts failures per clip |
//! | confirmations ([`crate::uploader`]) | `store.confirm_timeout` | `store.confirm_timeout_max` | 0.5 | per notification |
//! | camera restarts ([`crate::capture`]) | 1 s | 30 s | none | after 10 s of frames |
//! | MQTT reconnects ([`crate::link`]) | 100 ms | 10 s | none | on every ConnAck |
//!
//! [`Backoff`] is the policy: the delay after `n` consecutive failures, for callers that keep
//! the count themselves (the uploader keeps it in the spool, so it survives a restart).
//! [`Retries`] is a policy with its own count, for loops that only need "the next delay" and
//! "it worked".

use std::time::Duration;

/// Exponential backoff with jitter, bounded by `first` and `max`.
///
/// After the `n`-th consecutive failure the nominal delay is `first * 2^(n-1)`, capped at
/// `max`; the delay taken is the nominal one shortened by a random share of up to `jitter`
/// (so that agents that failed together do not retry together), and never below `first`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Share of the nominal delay that is randomized, within 0..=1.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, doubling up to 5 min, half of it randomized.
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// `first`, doubled per failure up to `max`, without jitter.
    pub const fn exact(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: 0.0,
        }
    }

    /// The delay after `failures` consecutive failures (at least 1), with `unit` a random
    /// number in `0.0..1.0`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let nominal = self
            .first
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.first);
        let shortened = nominal.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0));
        shortened.max(self.first).min(nominal)
    }

    /// [`Backoff::delay`] with a fresh random number.
    pub fn random_delay(&self, failures: u32) -> Duration {
        if self.jitter == 0.0 {
            return self.delay(failures, 0.0);
        }
        self.delay(failures, rand::random::<f64>())
    }

    /// This policy with a count of consecutive failures, starting at none.
    pub fn retries(self) -> Retries {
        Retries {
            policy: self,
            failures: 0,
        }
    }
}

/// A [`Backoff`] that counts the consecutive failures itself.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    failures: u32,
}

impl Retries {
    /// Counts one more failure and returns the delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.random_delay(self.failures)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The attempt worked (or ran long enough to count as healthy): the next failure waits
    /// `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_first_to_max_without_jitter() {
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let secs: Vec<u64> = (1..=12).map(|n| backoff.delay(n, 0.7).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_secs(300));
        assert_eq!(backoff.delay(0, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_shortens_by_at_most_its_share_and_stays_within_bounds() {
        let backoff = Backoff::default();
        for failures in 1..40 {
            let nominal = backoff.delay(failures, 0.0);
            for step in 0..=100 {
                let unit = f64::from(step) / 100.0;
                let delay = backoff.delay(failures, unit);
                assert!(
                    delay <= nominal,
                    "{failures}/{unit}: {delay:?} > {nominal:?}"
                );
                assert!(
                    delay >= nominal.mul_f64(0.5).max(backoff.first),
                    "{failures}/{unit}: {delay:?}"
                );
                assert!((backoff.first..=backoff.max).contains(&delay));
            }
        }
        // Half of 4 s randomized: 2 s .. 4 s.
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(3, 0.5), Duration::from_secs(3));
        // Random delays spread over the range instead of all landing on one value.
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.random_delay(5)).collect();
        assert!(delays.len() > 10, "{delays:?}");
        assert!(
            delays
                .iter()
                .all(|d| (Duration::from_secs(8)..=Duration::from_secs(16)).contains(d))
        );
    }

    #[test]
    fn retries_double_up_to_the_cap_and_reset() {
        let mut retries =
            Backoff::exact(Duration::from_millis(500), Duration::from_secs(30)).retries();
        let delays: Vec<u128> = (0..9).map(|_| retries.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(retries.failures(), 9);
        retries.reset();
        assert_eq!(retries.failures(), 0);
        assert_eq!(retries.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn the_reconnect_policy_is_the_link_s_former_sequence() {
        // 100 ms doubling to 10 s, as the MQTT link waited before this type existed.
        let mut retries =
            Backoff::exact(Duration::from_millis(100), Duration::from_secs(10)).retries();
        let delays: Vec<u128> = (0..9).map(|_| retries.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }
}
