//! Logs and metrics of the running agent.
//!
//! Logs: `capture-agent run` writes one flat JSON object per line to stderr: `timestamp`,
//! `level`, `message`, `target`, the event's structured fields (`order`, `clip_id`, `camera`,
//! `error`, ...) and on every line the agent's identity, `device`, `station` and `env`.
//! Under systemd (`JOURNAL_STREAM` set and journald's socket there) it writes native journal
//! entries instead: `MESSAGE`, `PRIORITY`, `TARGET` and every field upper-cased (`ORDER`,
//! `CLIP_ID`, `DEVICE`, `STATION`, `ENV`), which `journalctl -o json` and collectors read
//! without parsing. `--log-format` chooses explicitly. [`init_logs`] installs it; the library
//! only emits events. The fields are documented in docs/operations.md.
//!
//! Metrics: plain atomics, rendered in the Prometheus text format by the daemon's `/metrics`
//! endpoint ([`Metrics::render`]). Counters are bumped where the thing happens; gauges are set
//! by the daemon's status loop from the spool and the cameras.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `capture_recording` | gauge | 1 while the station records an order |
//! | `capture_recordings_total` | counter | recordings started (one per order start, not per camera) |
//! | `capture_commands_total{outcome}` | counter | commands answered: `ok`, `error`, `redelivered` |
//! | `capture_command_seconds` | summary | time from receiving a command to its reply being queued |
//! | `capture_clips{state}` | gauge | clips in the spool by state |
//! | `capture_spool_bytes` | gauge | bytes of clip files in the spool (every state) |
//! | `capture_disk_free_bytes` | gauge | free bytes on the spool's file system |
//! | `capture_disk_size_bytes` | gauge | size of the spool's file system (for the free share) |
//! | `capture_disk_full` | gauge | 1 when `start` is refused with `disk_full` |
//! | `capture_oldest_unconfirmed_seconds` | gauge | age of the oldest clip not yet accepted by the ingest |
//! | `capture_mqtt_connected` | gauge | 1 while the broker connection is up (after SUBACK) |
//! | `capture_clock_synced` | gauge | 1 when the system clock is NTP-synchronised |
//! | `capture_camera_up{camera}` | gauge | 1 while a camera's pipeline delivers frames |
//! | `capture_camera_restarts_total{camera}` | counter | pipeline restarts after a failure |
//! | `capture_upload_bytes_total` | counter | bytes the object store acknowledged |
//! | `capture_uploads_total` | counter | objects completed (clips and photos) |
//! | `capture_upload_failures_total` | counter | failed upload attempts (each is retried) |
//! | `capture_upload_retries_total` | counter | upload requests retried after a transient error |
//! | `capture_notification_resends_total` | counter | uploaded notifications sent again after no confirm came within `store.confirm_timeout` |
//! | `capture_evicted_total` | counter | accepted clips deleted to free space |

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::spool::ClipState;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One flat JSON object per line on stderr (for log collectors).
    Json,
    /// Human-readable lines on stderr.
    Text,
    /// Native journald entries with structured fields (needs journald's socket).
    Journald,
}

/// Where journald listens for native entries.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

impl LogFormat {
    /// The daemon's format when none is asked for: `journald` when systemd connected stderr
    /// to the journal (`JOURNAL_STREAM`) and journald's socket is there, else `json`.
    pub fn daemon_default() -> LogFormat {
        if std::env::var_os("JOURNAL_STREAM").is_some()
            && std::path::Path::new(JOURNALD_SOCKET).exists()
        {
            LogFormat::Journald
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the process's log subscriber. Call once, from `main` (or from `run` once the
/// configuration is read, with the agent's identity as `context`: fields on every line).
/// A journald socket that cannot be opened falls back to JSON on stderr, and says so.
pub fn init_logs(format: LogFormat, filter: &str, context: &[(&str, &str)]) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::new(filter);
    let journald = match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_custom_fields(context.iter().map(|(k, v)| (k.to_uppercase(), *v))),
            ),
            Err(e) => {
                eprintln!("journald unavailable ({e}): logging JSON lines to stderr");
                None
            }
        },
        LogFormat::Json | LogFormat::Text => None,
    };
    let registry = tracing_subscriber::registry().with(filter);
    if let Some(journald) = journald {
        registry.with(journald).init();
    } else if format == LogFormat::Text {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    } else {
        let lines = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLine::new(context))
            .with_writer(std::io::stderr);
        registry.with(lines).init();
    }
}

/// One flat JSON object per event: tracing-subscriber's JSON with the event's fields at the
/// top level, plus `context` fields the event does not set itself.
struct JsonLine {
    inner: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    context: serde_json::Map<String, serde_json::Value>,
}

impl JsonLine {
    fn new(context: &[(&str, &str)]) -> JsonLine {
        JsonLine {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
            context: context
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        if self.context.is_empty() {
            return writer.write_str(&line);
        }
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(mut object)) => {
                for (key, value) in &self.context {
                    object.entry(key.clone()).or_insert_with(|| value.clone());
                }
                writeln!(writer, "{}", serde_json::Value::Object(object))
            }
            _ => writer.write_str(&line),
        }
    }
}

/// Counters and gauges of one agent process; shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub recording: AtomicBool,
    pub recordings: AtomicU64,
    pub commands_ok: AtomicU64,
    pub commands_error: AtomicU64,
    pub commands_redelivered: AtomicU64,
    pub command_micros_sum: AtomicU64,
    pub command_count: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub disk_free_bytes: AtomicU64,
    pub disk_size_bytes: AtomicU64,
    pub disk_full: AtomicBool,
    pub oldest_unconfirmed_secs: AtomicU64,
    pub mqtt_connected: AtomicBool,
    pub clock_synced: AtomicBool,
    pub upload_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_failures: AtomicU64,
    pub upload_retries: AtomicU64,
    pub notification_resends: AtomicU64,
    pub evicted: AtomicU64,
    /// Clips by state, as last counted from the spool.
    pub clips: Mutex<Vec<(ClipState, u64)>>,
    /// Per camera: name, delivering frames, pipeline restarts.
    pub cameras: Mutex<Vec<(String, bool, u32)>>,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Sets a 0/1 gauge.
    pub fn flag(gauge: &AtomicBool, value: bool) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Counts one answered command and how long it took.
    pub fn command_answered(&self, outcome: CommandOutcome, elapsed: std::time::Duration) {
        let counter = match outcome {
            CommandOutcome::Ok => &self.commands_ok,
            CommandOutcome::Error => &self.commands_error,
            CommandOutcome::Redelivered => &self.commands_redelivered,
        };
        Self::add(counter, 1);
        Self::add(
            &self.command_micros_sum,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        Self::add(&self.command_count, 1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let up = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed));
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v.to_string())];
        metric(
            "capture_recording",
            "gauge",
            "1 while the station records an order.",
            &plain(up(&self.recording).into()),
        );
        metric(
            "capture_recordings_total",
            "counter",
            "Recordings started.",
            &plain(get(&self.recordings)),
        );
        metric(
            "capture_commands_total",
            "counter",
            "Commands answered, by outcome.",
            &[
                (
                    "{outcome=\"ok\"}".into(),
                    get(&self.commands_ok).to_string(),
                ),
                (
                    "{outcome=\"error\"}".into(),
                    get(&self.commands_error).to_string(),
                ),
                (
                    "{outcome=\"redelivered\"}".into(),
                    get(&self.commands_redelivered).to_string(),
                ),
            ],
        );
        metric(
            "capture_command_seconds",
            "summary",
            "Time from receiving a command to its reply being queued.",
            &[
                (
                    "_sum".into(),
                    format!("{:.6}", get(&self.command_micros_sum) as f64 / 1e6),
                ),
                ("_count".into(), get(&self.command_count).to_string()),
            ],
        );
        let clips: Vec<(String, String)> = {
            let counted = self.clips.lock().map(|c| c.clone()).unwrap_or_default();
            ClipState::ALL
                .iter()
                .map(|state| {
                    let n = counted
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    (format!("{{state=\"{}\"}}", state.as_str()), n.to_string())
                })
                .collect()
        };
        metric(
            "capture_clips",
            "gauge",
            "Clips in the spool, by state.",
            &clips,
        );
        metric(
            "capture_spool_bytes",
            "gauge",
            "Bytes of clip files in the spool.",
            &plain(get(&self.spool_bytes)),
        );
        metric(
            "capture_disk_free_bytes",
            "gauge",
            "Free bytes on the spool's file system.",
            &plain(get(&self.disk_free_bytes)),
        );
        metric(
            "capture_disk_size_bytes",
            "gauge",
            "Size of the spool's file system.",
            &plain(get(&self.disk_size_bytes)),
        );
        metric(
            "capture_disk_full",
            "gauge",
            "1 when start is refused with disk_full.",
            &plain(up(&self.disk_full).into()),
        );
        metric(
            "capture_oldest_unconfirmed_seconds",
            "gauge",
            "Age of the oldest clip the ingest has not accepted yet.",
            &plain(get(&self.oldest_unconfirmed_secs)),
        );
        metric(
            "capture_mqtt_connected",
            "gauge",
            "1 while the broker connection is up.",
            &plain(up(&self.mqtt_connected).into()),
        );
        metric(
            "capture_clock_synced",
            "gauge",
            "1 when the system clock is NTP-synchronised.",
            &plain(up(&self.clock_synced).into()),
        );
        let cameras = self.cameras.lock().map(|c| c.clone()).unwrap_or_default();
        let per_camera = |value: &dyn Fn(bool, u32) -> u64| -> Vec<(String, String)> {
            cameras
                .iter()
                .map(|(name, running, restarts)| {
                    (
                        format!("{{camera=\"{name}\"}}"),
                        value(*running, *restarts).to_string(),
                    )
                })
                .collect()
        };
        metric(
            "capture_camera_up",
            "gauge",
            "1 while a camera's pipeline delivers frames.",
            &per_camera(&|running, _| running.into()),
        );
        metric(
            "capture_camera_restarts_total",
            "counter",
            "Camera pipeline restarts after a failure.",
            &per_camera(&|_, restarts| restarts.into()),
        );
        metric(
            "capture_upload_bytes_total",
            "counter",
            "Bytes the object store acknowledged.",
            &plain(get(&self.upload_bytes)),
        );
        metric(
            "capture_uploads_total",
            "counter",
            "Objects completed (clips and photos).",
            &plain(get(&self.uploads)),
        );
        metric(
            "capture_upload_failures_total",
            "counter",
            "Failed upload attempts (each is retried).",
            &plain(get(&self.upload_failures)),
        );
        metric(
            "capture_upload_retries_total",
            "counter",
            "Upload requests retried after a transient error.",
            &plain(get(&self.upload_retries)),
        );
        metric(
            "capture_notification_resends_total",
            "counter",
            "Uploaded notifications sent again after no confirm came in time.",
            &plain(get(&self.notification_resends)),
        );
        metric(
            "capture_evicted_total",
            "counter",
            "Accepted clips deleted to free space.",
            &plain(get(&self.evicted)),
        );
        out
    }
}

/// How a command was answered, for `capture_commands_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    Ok,
    Error,
    /// A redelivery answered with the stored reply.
    Redelivered,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text_with_every_state_and_camera() {
        let metrics = Metrics::default();
        metrics.command_answered(CommandOutcome::Ok, std::time::Duration::from_millis(3));
        Metrics::flag(&metrics.mqtt_connected, true);
        *metrics.clips.lock().unwrap() = vec![(ClipState::Sealed, 2)];
        *metrics.cameras.lock().unwrap() = vec![("top".into(), true, 1)];
        let text = metrics.render();
        assert!(
            text.contains("capture_commands_total{outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("capture_command_seconds_sum 0.003000\n"),
            "{text}"
        );
        assert!(text.contains("capture_command_seconds_count 1\n"), "{text}");
        assert!(text.contains("capture_mqtt_connected 1\n"), "{text}");
        assert!(
            text.contains("capture_clips{state=\"sealed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("capture_clips{state=\"accepted\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("capture_camera_restarts_total{camera=\"top\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE capture_uploads_total counter\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{name}: {value}");
        }
    }
}
