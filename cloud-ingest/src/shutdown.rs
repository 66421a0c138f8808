//! Waiting that shutdown cuts short. Every loop that waits, for a backoff before it retries
//! (the start-up migration, the MQTT link and worker, the outbox relay) or between rounds (the
//! pruner), sleeps through `sleep_or_shutdown`, so that a shutdown signal ends the wait at
//! once instead of after it.

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
