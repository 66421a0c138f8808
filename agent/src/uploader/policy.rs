//! How long the uploader holds bytes back under a bandwidth cap, decided without I/O: time
//! comes in as an argument, so that every rule is tested with plain numbers. (How long it
//! waits before a retry is [`crate::backoff::Backoff`], shared with the rest of the agent.)

use std::time::{Duration, Instant};

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
