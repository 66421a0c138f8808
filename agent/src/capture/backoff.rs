//! Restart policy for a failing camera pipeline: exponential backoff, reset once the camera
//! has run long enough to count as healthy. Pure logic, no I/O.

use std::time::Duration;

/// Delays between restarts: `first`, doubled each failure, at most `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

/// A pipeline that ran at least this long before failing starts over from `first`.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(10);

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt, and counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The camera ran for [`HEALTHY_AFTER`]: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.failures(), 9);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
