//! Waiting that shutdown cuts short, and how long to wait before a retry. Every loop that
//! waits, for a backoff before it retries (the start-up migration, the MQTT link and worker,
//! the outbox relay) or between rounds (the pruner), sleeps through `sleep_or_shutdown`, so
//! that a shutdown signal ends the wait at once instead of after it. The retry loops take
//! their delays from a [`Backoff`]: it starts at an initial delay, doubles after every failed
//! attempt up to a cap, and goes back to the initial delay after a success.

use std::time::Duration;

use tokio::sync::watch;

/// Sleeps `duration` unless shutdown comes first; true when shutting down.
pub(crate) async fn sleep_or_shutdown(
    duration: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Exponential backoff of one retry loop: no I/O, the loop sleeps [`Backoff::current`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`; never waits longer than `cap`.
    pub(crate) fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap,
            current: initial.min(cap),
        }
    }

    /// How long to wait before the next attempt.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// After a failed attempt: the next wait is twice as long, up to the cap.
    pub(crate) fn double(&mut self) {
        self.current = self.current.saturating_mul(2).min(self.cap);
    }

    /// After a success: the next wait is the initial one again.
    pub(crate) fn reset(&mut self) {
        self.current = self.initial.min(self.cap);
    }
}

/// The next batch from `from`: waits for one message (or shutdown: `None`, as when the
/// channel closed), then takes what is already queued, up to `max` in all.
pub async fn next_batch<T>(
    from: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    max: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        message = from.recv() => message,
        _ = shutdown.changed() => None,
    }?;
    let mut batch = vec![first];
    while batch.len() < max {
        match from.try_recv() {
            Ok(message) => batch.push(message),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_backoff_starts_at_its_initial_delay_and_doubles() {
        let mut backoff = Backoff::new(100 * MS, Duration::from_secs(5));
        let mut waits = vec![backoff.current()];
        for _ in 0..5 {
            backoff.double();
            waits.push(backoff.current());
        }
        assert_eq!(
            waits,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS, 3200 * MS]
        );
    }

    #[test]
    fn a_backoff_stops_growing_at_its_cap() {
        let mut backoff = Backoff::new(200 * MS, Duration::from_secs(5));
        for _ in 0..100 {
            backoff.double();
        }
        assert_eq!(backoff.current(), Duration::from_secs(5));
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        huge.double();
        huge.double();
        assert_eq!(huge.current(), Duration::MAX);
    }

    #[test]
    fn a_reset_backoff_waits_its_initial_delay_again() {
        let mut backoff = Backoff::new(100 * MS, Duration::from_secs(5));
        backoff.double();
        backoff.double();
        backoff.reset();
        assert_eq!(backoff.current(), 100 * MS);
        backoff.double();
        assert_eq!(backoff.current(), 200 * MS);
    }
}
