//! The periodic sweep of every replica (every `expected.sweep_interval`, also at start): finds
//! clips that became overdue and emits their `clip.overdue` event through the outbox, refreshes
//! the overdue gauge, and reports each `start` no station answered within
//! `expected.reply_timeout` (a warning and a counter, once per command). Replicas sweeping at
//! once split the rows ([`store::mark_overdue`]); a failed round is retried at the next one.

use std::sync::Arc;

use capture_protocol::Env;
use tokio::sync::{Notify, watch};

use super::store::{self, Deadlines};
use crate::catalog::Pool;
use crate::config::ExpectedConfig;
use crate::shutdown::sleep_or_shutdown;
use crate::stations::Stations;
use crate::telemetry::Metrics;

/// The sweep of one replica.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub env: Env,
    pub pool: Arc<Pool>,
    pub config: ExpectedConfig,
    pub stations: Arc<Stations>,
    pub metrics: Arc<Metrics>,
    /// Wakes the outbox relays after new events were written.
    pub wake: Arc<Notify>,
}

impl Sweeper {
    /// Sweeps now, then every `sweep_interval`, until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.round().await;
            if sleep_or_shutdown(self.config.sweep_interval, &mut shutdown).await {
                break;
            }
        }
        tracing::debug!("expected-clip sweep stopped");
    }

    fn deadlines(&self) -> Deadlines {
        Deadlines {
            overdue_after: self.config.overdue_after,
            max_recording: self.config.max_recording,
        }
    }

    /// One round; failures are logged and left to the next round.
    pub async fn round(&self) {
        let presence = |station: &str| self.stations.presence(station);
        match store::mark_overdue(&self.pool, &self.env, self.deadlines(), presence).await {
            Ok(events) if !events.is_empty() => {
                for event in &events {
                    let d = &event.data;
                    Metrics::inc(&self.metrics.clips_overdue_found);
                    tracing::warn!(
                        clip_id = %d.clip_id,
                        order = %d.order,
                        station = %d.station,
                        camera = %d.camera,
                        state = %d.state,
                        since = %d.since,
                        station_state = %d.station_state,
                        "clip overdue: recorded and not accepted in time"
                    );
                }
                self.wake.notify_waiters();
                self.wake.notify_one();
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "marking overdue clips failed"),
        }
        match store::overdue_by_station(&self.pool, self.deadlines()).await {
            Ok(counts) => {
                let gauge = counts
                    .into_iter()
                    .map(|(station, count)| {
                        let (presence, _) = self.stations.presence(&station);
                        ((station, presence), count)
                    })
                    .collect();
                self.metrics.set_overdue(gauge);
            }
            Err(error) => tracing::warn!(error = %error, "counting overdue clips failed"),
        }
        match store::report_unanswered(&self.pool, self.config.reply_timeout).await {
            Ok(starts) => {
                for start in starts {
                    self.metrics.start_unanswered(&start.station);
                    let (presence, _) = self.stations.presence(&start.station);
                    tracing::warn!(
                        station = %start.station,
                        command_id = %start.command_id,
                        order = %start.order.as_deref().unwrap_or(""),
                        seen_at = %start.seen_at,
                        station_state = presence,
                        timeout = ?self.config.reply_timeout,
                        "start command without an answer from the station"
                    );
                }
            }
            Err(error) => tracing::warn!(error = %error, "reporting unanswered starts failed"),
        }
        match store::unanswered_by_station(&self.pool, self.config.reply_timeout).await {
            Ok(counts) => self.metrics.set_unanswered(counts.into_iter().collect()),
            Err(error) => tracing::warn!(error = %error, "counting unanswered starts failed"),
        }
    }
}
