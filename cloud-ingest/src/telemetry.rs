//! Logs and metrics.
//!
//! Logs are JSON lines on stdout, one flat object per event: `timestamp`, `level`, `message`,
//! `target` and the event's structured fields (`clip_id`, `order`, `station`, `device`,
//! `reason`, `error`, ...), ready for a cluster's log collector (which adds the pod's `env`
//! from its labels: docs/operations.md); the filter comes from `RUST_LOG` (default `info`).
//! [`init_logs`] is called once by `main`; the library only emits.
//!
//! Metrics are plain atomics rendered in the Prometheus text format by `/metrics`
//! ([`Metrics::render`]). Each counter sits beside the log event an operator would alert on:
//!
//! | metric | meaning |
//! | --- | --- |
//! | `ingest_notifications_total{outcome}` | notifications handled: `accepted`, `rejected`, `duplicate`, `poison` |
//! | `ingest_events_published_total` | CloudEvents confirmed by RabbitMQ |
//! | `ingest_rejections_total{reason}` | clips rejected, by kind of reason (`rejection::REASON_LABELS`) |
//! | `ingest_outbox_pending` | events in the outbox not yet confirmed (last relay round) |
//! | `ingest_outbox_oldest_seconds` | age of the oldest of those events (0 when none) |
//! | `ingest_events_returned_total` | publishes RabbitMQ returned as unroutable (the event stays in the outbox) |
//! | `ingest_outbox_unroutable` | events in the outbox that were returned as unroutable and not delivered since |
//! | `ingest_notifications_in_hand` | notifications received from the broker and not yet acknowledged |
//! | `ingest_consumer_idle_seconds` | time since the consumer last made progress (0 while nothing is in hand) |
//! | `ingest_pruned_total{table}` | rows deleted by the retention job: `outbox` (sent events), `poison` |
//! | `ingest_retries_total{stage}` | transient failures retried: `verify`, `catalog`, `relay` |
//! | `ingest_batch_seconds_sum/_count` | time from batch start to catalog commit |
//! | `ingest_verify_seconds_sum/_count` | time to decide on one clip against the object store |
//! | `ingest_up{dependency}` | 1 when MQTT, PostgreSQL (last use), RabbitMQ are connected |
//! | `ingest_api_denied_total{status}` | API requests refused: `401` (no or invalid credentials), `403` (scope or environment) |
//! | `ingest_clip_urls_issued_total` | presigned clip URLs handed out (each one also an audit log event) |
//! | `ingest_jwks_fetch_failures_total` | failed fetches of the identity provider's keys |
//! | `ingest_station_messages_total{outcome}` | station events, commands and replies handled ([`StationOutcome`]) |
//! | `ingest_clips_overdue{station,station_state}` | clips recorded and not accepted within `expected.overdue_after` (last sweep) |
//! | `ingest_clips_overdue_found_total` | clips found overdue (one `clip.overdue` event each) |
//! | `ingest_starts_unanswered_total{station}` | `start` commands no station answered within `expected.reply_timeout` (counted once each) |
//! | `ingest_starts_unanswered{station}` | those of them seen in the last hour (last sweep) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rejection::{REASON_LABELS, reason_label};

/// Installs the JSON log subscriber for the process. Call once, from `main`.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(filter)
        .with_current_span(false)
        .init();
}

/// Counters and gauges of one ingest process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicate: AtomicU64,
    pub poison: AtomicU64,
    pub events_published: AtomicU64,
    /// Per label of `rejection::REASON_LABELS`, in that order.
    pub rejections: [AtomicU64; REASON_LABELS.len()],
    pub outbox_pending: AtomicU64,
    pub outbox_oldest_secs: AtomicU64,
    pub events_returned: AtomicU64,
    pub outbox_unroutable: AtomicU64,
    /// Whether the consumer moves: see [`Progress`].
    pub progress: Progress,
    pub pruned_outbox: AtomicU64,
    pub pruned_poison: AtomicU64,
    pub retries_verify: AtomicU64,
    pub retries_catalog: AtomicU64,
    pub retries_relay: AtomicU64,
    pub batch_micros_sum: AtomicU64,
    pub batch_count: AtomicU64,
    pub verify_micros_sum: AtomicU64,
    pub verify_count: AtomicU64,
    pub mqtt_up: AtomicBool,
    pub postgres_up: AtomicBool,
    pub amqp_up: AtomicBool,
    pub api_unauthenticated: AtomicU64,
    pub api_forbidden: AtomicU64,
    pub clip_urls_issued: AtomicU64,
    pub jwks_fetch_failures: AtomicU64,
    /// Per [`StationOutcome`], in the order of [`StationOutcome::ALL`].
    pub station_messages: [AtomicU64; StationOutcome::ALL.len()],
    /// Overdue clips by (station, station state), replaced by every sweep.
    pub clips_overdue: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub clips_overdue_found: AtomicU64,
    /// Unanswered starts by station (a counter per station).
    pub starts_unanswered: Mutex<BTreeMap<String, u64>>,
    /// Unanswered starts of the last hour by station, replaced by every sweep.
    pub starts_unanswered_recent: Mutex<BTreeMap<String, u64>>,
}

/// What a station message (event, command, reply) was, for `ingest_station_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StationOutcome {
    /// A clip event that moved (or repeated) a state.
    State,
    /// An `abort` answered ok.
    Abort,
    /// A `start` command.
    Start,
    /// An answer to a `start`.
    Answer,
    /// Nothing to record (confirmations, other commands and replies).
    Ignored,
    /// An event kind this version does not know (a newer agent's).
    UnknownEvent,
    /// Unreadable: recorded in `poison`.
    Poison,
}

impl StationOutcome {
    pub const ALL: [StationOutcome; 7] = [
        StationOutcome::State,
        StationOutcome::Abort,
        StationOutcome::Start,
        StationOutcome::Answer,
        StationOutcome::Ignored,
        StationOutcome::UnknownEvent,
        StationOutcome::Poison,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            StationOutcome::State => "state",
            StationOutcome::Abort => "abort",
            StationOutcome::Start => "start",
            StationOutcome::Answer => "answer",
            StationOutcome::Ignored => "ignored",
            StationOutcome::UnknownEvent => "unknown_event",
            StationOutcome::Poison => "poison",
        }
    }
}

/// Whether the consumer makes progress, for `/readyz` (definitions in docs/ingest.md,
/// "Readiness").
///
/// - **In hand**: notifications the MQTT link passed to the worker that the worker has not yet
///   acknowledged to the broker (being verified, waiting for or in the catalog commit).
/// - **Progress**: one notification decided (verified, or refused by its own checks) or one
///   batch committed. A retried failure (the store or PostgreSQL does not answer) is not
///   progress.
/// - **Stalled**: something is in hand, and the last progress, or the moment work arrived
///   when nothing was in hand before, is longer ago than `http.stalled_after`.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    in_hand: AtomicU64,
    /// Milliseconds since `epoch` of the last progress or of work arriving while idle.
    last_millis: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            in_hand: AtomicU64::new(0),
            last_millis: AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn now_millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A notification was handed to the worker.
    pub fn received(&self) {
        if self.in_hand.fetch_add(1, Ordering::AcqRel) == 0 {
            // The clock starts when work arrives, not at the last progress of long ago.
            self.last_millis.store(self.now_millis(), Ordering::Release);
        }
    }

    /// Something was decided or committed.
    pub fn advanced(&self) {
        self.last_millis.store(self.now_millis(), Ordering::Release);
    }

    /// `count` notifications were acknowledged (or abandoned at shutdown).
    pub fn done(&self, count: usize) {
        let count = count as u64;
        let _ = self
            .in_hand
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(count))
            });
        self.advanced();
    }

    pub fn in_hand(&self) -> u64 {
        self.in_hand.load(Ordering::Acquire)
    }

    /// How long the consumer has not moved while work is in hand; zero when nothing is.
    pub fn idle(&self) -> Duration {
        if self.in_hand() == 0 {
            return Duration::ZERO;
        }
        let last = self.last_millis.load(Ordering::Acquire);
        Duration::from_millis(self.now_millis().saturating_sub(last))
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one station message.
    pub fn station_message(&self, outcome: StationOutcome) {
        if let Some(i) = StationOutcome::ALL.iter().position(|o| *o == outcome) {
            Self::inc(&self.station_messages[i]);
        }
    }

    /// Replaces the overdue gauge with the last sweep's counts.
    pub fn set_overdue(&self, counts: BTreeMap<(String, &'static str), u64>) {
        if let Ok(mut gauge) = self.clips_overdue.lock() {
            *gauge = counts;
        }
    }

    /// Replaces the gauge of recent unanswered starts with the last sweep's counts.
    pub fn set_unanswered(&self, counts: BTreeMap<String, u64>) {
        if let Ok(mut gauge) = self.starts_unanswered_recent.lock() {
            *gauge = counts;
        }
    }

    /// Counts one unanswered start at `station`.
    pub fn start_unanswered(&self, station: &str) {
        if let Ok(mut counters) = self.starts_unanswered.lock() {
            *counters.entry(station.to_owned()).or_default() += 1;
        }
    }

    /// Counts one rejected clip under the kind of its reason.
    pub fn rejected(&self, reason: &str) {
        let label = reason_label(reason);
        if let Some(i) = REASON_LABELS.iter().position(|l| *l == label) {
            Self::inc(&self.rejections[i]);
        }
    }

    /// Adds one observation to a `_sum`/`_count` pair kept in microseconds.
    pub fn observe(sum: &AtomicU64, count: &AtomicU64, elapsed: Duration) {
        sum.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Self::inc(count);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let up = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ingest_notifications_total Uploaded notifications handled, by outcome.\n\
             # TYPE ingest_notifications_total counter"
        );
        for (outcome, counter) in [
            ("accepted", &self.accepted),
            ("rejected", &self.rejected),
            ("duplicate", &self.duplicate),
            ("poison", &self.poison),
        ] {
            let _ = writeln!(
                out,
                "ingest_notifications_total{{outcome=\"{outcome}\"}} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ingest_events_published_total CloudEvents confirmed by RabbitMQ.\n\
             # TYPE ingest_events_published_total counter\n\
             ingest_events_published_total {}",
            get(&self.events_published)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_rejections_total Clips rejected, by kind of reason.\n\
             # TYPE ingest_rejections_total counter"
        );
        for (reason, counter) in REASON_LABELS.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "ingest_rejections_total{{reason=\"{reason}\"}} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ingest_outbox_pending Events waiting in the outbox (last relay round).\n\
             # TYPE ingest_outbox_pending gauge\n\
             ingest_outbox_pending {}",
            get(&self.outbox_pending)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_outbox_oldest_seconds Age of the oldest event waiting in the outbox.\n\
             # TYPE ingest_outbox_oldest_seconds gauge\n\
             ingest_outbox_oldest_seconds {}",
            get(&self.outbox_oldest_secs)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_events_returned_total Publishes RabbitMQ returned as unroutable \
             (no queue bound; the event stays in the outbox).\n\
             # TYPE ingest_events_returned_total counter\n\
             ingest_events_returned_total {}",
            get(&self.events_returned)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_outbox_unroutable Outbox events returned as unroutable and not \
             delivered since.\n\
             # TYPE ingest_outbox_unroutable gauge\n\
             ingest_outbox_unroutable {}",
            get(&self.outbox_unroutable)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_notifications_in_hand Notifications received and not yet \
             acknowledged.\n\
             # TYPE ingest_notifications_in_hand gauge\n\
             ingest_notifications_in_hand {}",
            self.progress.in_hand()
        );
        let _ = writeln!(
            out,
            "# HELP ingest_consumer_idle_seconds Time since the consumer last made progress \
             while notifications are in hand.\n\
             # TYPE ingest_consumer_idle_seconds gauge\n\
             ingest_consumer_idle_seconds {:.3}",
            self.progress.idle().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP ingest_pruned_total Rows deleted by the retention job, by table.\n\
             # TYPE ingest_pruned_total counter\n\
             ingest_pruned_total{{table=\"outbox\"}} {}\n\
             ingest_pruned_total{{table=\"poison\"}} {}",
            get(&self.pruned_outbox),
            get(&self.pruned_poison)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_retries_total Transient failures retried, by stage.\n\
             # TYPE ingest_retries_total counter"
        );
        for (stage, counter) in [
            ("verify", &self.retries_verify),
            ("catalog", &self.retries_catalog),
            ("relay", &self.retries_relay),
        ] {
            let _ = writeln!(
                out,
                "ingest_retries_total{{stage=\"{stage}\"}} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ingest_batch_seconds Time from batch start to catalog commit.\n\
             # TYPE ingest_batch_seconds summary\n\
             ingest_batch_seconds_sum {:.6}\n\
             ingest_batch_seconds_count {}",
            get(&self.batch_micros_sum) as f64 / 1e6,
            get(&self.batch_count)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_verify_seconds Time to decide on one clip against the object store.\n\
             # TYPE ingest_verify_seconds summary\n\
             ingest_verify_seconds_sum {:.6}\n\
             ingest_verify_seconds_count {}",
            get(&self.verify_micros_sum) as f64 / 1e6,
            get(&self.verify_count)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_up Whether a dependency is connected.\n# TYPE ingest_up gauge"
        );
        for (dependency, flag) in [
            ("mqtt", &self.mqtt_up),
            ("postgres", &self.postgres_up),
            ("amqp", &self.amqp_up),
        ] {
            let _ = writeln!(out, "ingest_up{{dependency=\"{dependency}\"}} {}", up(flag));
        }
        let _ = writeln!(
            out,
            "# HELP ingest_api_denied_total API requests refused, by status.\n\
             # TYPE ingest_api_denied_total counter\n\
             ingest_api_denied_total{{status=\"401\"}} {}\n\
             ingest_api_denied_total{{status=\"403\"}} {}",
            get(&self.api_unauthenticated),
            get(&self.api_forbidden)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_clip_urls_issued_total Presigned clip URLs handed out (each audited).\n\
             # TYPE ingest_clip_urls_issued_total counter\n\
             ingest_clip_urls_issued_total {}",
            get(&self.clip_urls_issued)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_jwks_fetch_failures_total Failed fetches of the identity provider's keys.\n\
             # TYPE ingest_jwks_fetch_failures_total counter\n\
             ingest_jwks_fetch_failures_total {}",
            get(&self.jwks_fetch_failures)
        );
        self.render_expected(&mut out);
        out
    }

    /// The metrics of the expected clips ([`crate::expected`]). Station ids are safe label
    /// values (`^[a-z0-9][a-z0-9-]{0,31}$`).
    fn render_expected(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ingest_station_messages_total Station events, commands and replies handled, \
             by outcome.\n\
             # TYPE ingest_station_messages_total counter"
        );
        for (outcome, counter) in StationOutcome::ALL.iter().zip(&self.station_messages) {
            let _ = writeln!(
                out,
                "ingest_station_messages_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ingest_clips_overdue Clips recorded and not accepted within \
             expected.overdue_after, by station and its state (last sweep).\n\
             # TYPE ingest_clips_overdue gauge"
        );
        if let Ok(gauge) = self.clips_overdue.lock() {
            for ((station, presence), count) in gauge.iter() {
                let _ = writeln!(
                    out,
                    "ingest_clips_overdue{{station=\"{station}\",station_state=\"{presence}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ingest_clips_overdue_found_total Clips found overdue (one clip.overdue event each).\n\
             # TYPE ingest_clips_overdue_found_total counter\n\
             ingest_clips_overdue_found_total {}",
            self.clips_overdue_found.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ingest_starts_unanswered_total Start commands the station did not answer \
             within expected.reply_timeout, by station.\n\
             # TYPE ingest_starts_unanswered_total counter"
        );
        if let Ok(counters) = self.starts_unanswered.lock() {
            for (station, count) in counters.iter() {
                let _ = writeln!(
                    out,
                    "ingest_starts_unanswered_total{{station=\"{station}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ingest_starts_unanswered Start commands of the last hour the station did \
             not answer within expected.reply_timeout, by station (last sweep).\n\
             # TYPE ingest_starts_unanswered gauge"
        );
        if let Ok(gauge) = self.starts_unanswered_recent.lock() {
            for (station, count) in gauge.iter() {
                let _ = writeln!(
                    out,
                    "ingest_starts_unanswered{{station=\"{station}\"}} {count}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text() {
        let metrics = Metrics::default();
        Metrics::inc(&metrics.accepted);
        metrics.mqtt_up.store(true, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("ingest_notifications_total{outcome=\"accepted\"} 1\n"));
        assert!(text.contains("ingest_up{dependency=\"mqtt\"} 1\n"));
        assert!(text.contains("# TYPE ingest_events_published_total counter\n"));
    }

    #[test]
    fn expected_clip_metrics_are_labelled_by_station() {
        let metrics = Metrics::default();
        metrics.station_message(StationOutcome::UnknownEvent);
        metrics.set_overdue(BTreeMap::from([(("pack-03".to_owned(), "offline"), 2)]));
        metrics.start_unanswered("pack-04");
        metrics.start_unanswered("pack-04");
        let text = metrics.render();
        assert!(text.contains("ingest_station_messages_total{outcome=\"unknown_event\"} 1\n"));
        assert!(
            text.contains(
                "ingest_clips_overdue{station=\"pack-03\",station_state=\"offline\"} 2\n"
            )
        );
        assert!(text.contains("ingest_starts_unanswered_total{station=\"pack-04\"} 2\n"));
        metrics.set_overdue(BTreeMap::new());
        assert!(!metrics.render().contains("ingest_clips_overdue{"));
    }

    #[test]
    fn rejections_are_counted_by_kind_and_latency_as_a_summary() {
        let metrics = Metrics::default();
        metrics.rejected("size mismatch: object has 1 bytes, notification says 2");
        metrics.rejected("size mismatch: object has 3 bytes, notification says 2");
        metrics.rejected("clip c-1: content type \"image/jpeg\" does not match kind clip");
        Metrics::observe(
            &metrics.verify_micros_sum,
            &metrics.verify_count,
            Duration::from_millis(40),
        );
        metrics.outbox_oldest_secs.store(75, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("ingest_rejections_total{reason=\"size_mismatch\"} 2\n"));
        assert!(text.contains("ingest_rejections_total{reason=\"invalid\"} 1\n"));
        assert!(text.contains("ingest_rejections_total{reason=\"object_missing\"} 0\n"));
        assert!(text.contains("ingest_verify_seconds_sum 0.040000\n"));
        assert!(text.contains("ingest_verify_seconds_count 1\n"));
        assert!(text.contains("ingest_outbox_oldest_seconds 75\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{name}: {value}");
        }
    }
}
