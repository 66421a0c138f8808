//! Decisions of the uploader that need no I/O: how long to wait before a retry, and how
//! long to hold bytes back under a bandwidth cap. Time and randomness come in as arguments,
//! so that every rule is tested with plain numbers.

use std::time::{Duration, Instant};

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
        self.delay(failures, rand::random::<f64>())
    }
}

/// A token bucket shared by every request body the uploader sends: bytes may leave at
/// `rate` bytes per second on average, with bursts of at most `burst` bytes.
///
/// The bucket may go into debt: [`Pacer::take`] always grants the bytes and answers how long
/// the caller must wait before sending them, so concurrent bodies queue up fairly and the
/// total stays at the cap.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer for `kbps` kilobits per second (1 kbit = 1000 bit), full at `now`; `None` for
    /// 0, which means unlimited.
    pub fn new(kbps: u64, now: Instant) -> Option<Pacer> {
        if kbps == 0 {
            return None;
        }
        let rate = kbps as f64 * 1000.0 / 8.0;
        // Half a second of traffic may go at once.
        let burst = rate / 2.0;
        Some(Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The largest slice a body should hand over at once: a tenth of a second of traffic
    /// (at least 1 KiB), so that a paced body keeps making visible progress.
    pub fn slice(&self) -> usize {
        ((self.rate / 10.0) as usize).max(1024)
    }

    /// Takes `bytes` at `now`: how long to wait before sending them.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
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
    fn no_cap_means_no_pacer() {
        assert!(Pacer::new(0, Instant::now()).is_none());
    }

    #[test]
    fn pacing_lets_a_burst_through_then_holds_to_the_rate() {
        let start = Instant::now();
        // 1000 kbit/s = 125,000 bytes/s, bursts of 62,500 bytes.
        let mut pacer = Pacer::new(1000, start).unwrap();
        assert_eq!(pacer.rate(), 125_000.0);
        assert_eq!(pacer.slice(), 12_500);
        assert_eq!(pacer.take(62_500, start), Duration::ZERO);
        // The bucket is empty: 12,500 more bytes wait a tenth of a second.
        assert_eq!(pacer.take(12_500, start), Duration::from_millis(100));
        // Debt accumulates for a second taker at the same moment.
        assert_eq!(pacer.take(12_500, start), Duration::from_millis(200));
        // After 200 ms the debt is paid; an idle second refills the burst but no more.
        let later = start + Duration::from_millis(1200);
        assert_eq!(pacer.take(62_500, later), Duration::ZERO);
        assert!(pacer.take(1, later) > Duration::ZERO);
    }

    #[test]
    fn a_paced_transfer_averages_the_cap() {
        let start = Instant::now();
        let mut pacer = Pacer::new(8_000, start).unwrap(); // 1,000,000 bytes/s
        let mut now = start;
        let total = 10_000_000usize;
        let mut sent = 0;
        while sent < total {
            let slice = pacer.slice().min(total - sent);
            now += pacer.take(slice, now);
            sent += slice;
        }
        // 10 MB at 1 MB/s, less the initial burst of half a second.
        let elapsed = now.duration_since(start).as_secs_f64();
        assert!((elapsed - 9.5).abs() < 0.01, "{elapsed}");
    }
}
