//! Retention of the catalog's side tables: a periodic job that deletes sent events from the
//! outbox and old poison rows, so that neither grows without bound.
//!
//! Every replica runs the job (at start, then every `retention.interval`); the deletes are
//! idempotent and chunked ([`catalog::prune`]), so replicas pruning at once only share the
//! work. Unsent events are never deleted, whatever their age: they are the relay's. The clips
//! table is the catalog itself and is never pruned. Poison payloads are capped when they are
//! stored ([`catalog::Poison::new`], `retention.poison_payload_max_bytes`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::catalog::{self, Pool};
use crate::config::RetentionConfig;
use crate::shutdown::sleep_or_shutdown;
use crate::telemetry::Metrics;

/// The pruning job of one replica.
#[derive(Debug, Clone)]
pub struct Pruner {
    pub pool: Arc<Pool>,
    pub config: RetentionConfig,
    pub metrics: Arc<Metrics>,
}

impl Pruner {
    /// Prunes now, then every `interval`, until `shutdown`. A failed round (PostgreSQL down)
    /// is logged and tried again at the next interval.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.round().await;
            if sleep_or_shutdown(self.config.interval, &mut shutdown).await {
                break;
            }
        }
        tracing::debug!("retention job stopped");
    }

    /// One round: deletes what is older than the configured ages.
    pub async fn round(&self) {
        match catalog::prune(&self.pool, self.config.sent_events, self.config.poison).await {
            Ok(pruned) => {
                self.metrics
                    .pruned_outbox
                    .fetch_add(pruned.outbox, Ordering::Relaxed);
                self.metrics
                    .pruned_poison
                    .fetch_add(pruned.poison, Ordering::Relaxed);
                if pruned != catalog::Pruned::default() {
                    tracing::info!(
                        outbox = pruned.outbox,
                        poison = pruned.poison,
                        "pruned sent events and poison rows past their retention"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, retry_in = ?self.config.interval, "pruning the outbox and poison tables failed");
            }
        }
    }
}
