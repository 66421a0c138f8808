//! `capture-agent run`: the daemon that serves one station.
//!
//! ```text
//!  broker ──cmd──▶ link ──▶ [daemon loop] ──▶ spool: inbox, decision, clips, outbox ──▶ link ──reply/event──▶ broker
//!                               │  ▲
//!                               ▼  │ sealed clips, photos
//!                            cameras (one actor each)            uploader ◀── wake ── sealed
//! ```
//!
//! One loop owns the station state machine and handles, one at a time: commands from the
//! line, scans from the packer's barcode scanner (`[scanner]`, `scans.rs`: the same steps
//! as a command, with an event in place of the reply), confirmations from the ingest, a
//! one-second tick (`max_secs`, `idle_stop`, disk, status) and the shutdown signal. The order of work for a command is what makes it survive a crash:
//!
//! 1. the command is recorded in the spool's inbox by id (a redelivery gets its stored reply
//!    again and does nothing else);
//! 2. the state machine decides; the reply, the clip rows it creates and the messages that
//!    announce them are committed in one transaction;
//! 3. only then is the MQTT packet acknowledged and the reply published;
//! 4. then the cameras act (start, stop and seal, abort, snapshot), and each result is
//!    committed as it comes. A stop only hands the stop to the cameras: post-roll, EOS and
//!    the seal (hashing, for a cut file a remux; minutes for an hour-long clip on a Pi) run
//!    on a task of their own, so the loop, and with it the watchdog, never waits for them;
//!    the sealed clip is committed when its task ends. A start right after a stop waits for
//!    the camera to end the previous clip (its post-roll and EOS), not for its seal.
//!
//! A crash between 1 and 2 leaves an unanswered inbox row, decided at the next start before
//! the link opens; a crash after 2 leaves clip rows that start-up reconciliation
//! ([`reconcile`]) settles from the files on disk: a cut recording is sealed and queued
//! (truncated), a recording that never reached the disk is marked failed with an event.

mod actions;
mod commands;
mod http;
pub mod reconcile;
mod scans;
mod status;
pub mod systemd;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use capture_protocol::{CameraName, DeviceId, Env, StationId, topic};
use rumqttc::Publish;
use tokio::sync::{Notify, mpsc};

use crate::capture::{Camera, CameraHandle, CameraState};
use crate::config::{Config, Secrets};
use crate::disk::Quota;
use crate::link::{Link, LinkHandle, LinkSettings};
use crate::spool::Spool;
use crate::station::{Station, StationPolicy};
use crate::telemetry::Metrics;
use crate::uploader::{Uploader, UploaderSettings};

/// The name of the directory inside `spool_dir` that holds clip and photo files.
pub const CLIP_DIR: &str = "clips";

/// Who this agent is, parsed once from the config.
#[derive(Debug, Clone)]
pub struct Identity {
    pub env: Env,
    pub device: DeviceId,
    pub station: StationId,
}

impl Identity {
    pub fn from_config(config: &Config) -> anyhow::Result<Identity> {
        Ok(Identity {
            env: Env::from_str(&config.agent.env).context("agent.env")?,
            device: DeviceId::from_str(&config.agent.device).context("agent.device")?,
            station: StationId::from_str(&config.agent.station).context("agent.station")?,
        })
    }
}

/// The running daemon's state, owned by its loop.
struct Daemon {
    identity: Identity,
    clip_dir: PathBuf,
    spool_dir: PathBuf,
    quota: Quota,
    spool: Spool,
    link: LinkHandle,
    station: Station,
    cameras: Vec<CameraHandle>,
    metrics: Arc<Metrics>,
    /// Notified when a clip is sealed, so the uploader looks at once.
    wake_uploader: Arc<Notify>,
    uploader_settings: UploaderSettings,
    /// The spool is over its limits with nothing left to evict.
    disk_full: bool,
    clock_synced: bool,
    /// When the loop last went round (for the watchdog).
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
    /// Stops in progress: post-roll, EOS and the seal (hashing, a remux) of each clip run
    /// here, off the loop, however long a clip is; the loop commits each result as it
    /// comes (`on_sealed`).
    sealing: tokio::task::JoinSet<actions::SealOutcome>,
    /// The packer's barcode scanner, when `[scanner]` is configured.
    scanner: Option<scans::ScannerState>,
}

/// Runs the daemon until `shutdown` completes, then finalizes the recording in progress and
/// says goodbye to the broker.
pub async fn run(
    config: Config,
    secrets: Secrets,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = Identity::from_config(&config)?;
    let uploader_settings = UploaderSettings::from_config(&config)
        .map_err(|p| anyhow::anyhow!("{}: {}", p.key, p.message))?;
    let spool_dir = config.agent.spool_dir.clone();
    let clip_dir = spool_dir.join(CLIP_DIR);
    std::fs::create_dir_all(&clip_dir)
        .with_context(|| format!("creating the clip directory {}", clip_dir.display()))?;
    let spool = Spool::open(&crate::spool::database_path(&spool_dir))?;
    let metrics = Arc::new(Metrics::default());

    let report =
        reconcile::reconcile(&spool, &identity, &clip_dir, uploader_settings.part_size).await?;
    tracing::info!(
        sealed = report.sealed,
        failed = report.failed,
        "start-up reconciliation done"
    );

    let cameras = start_cameras(&config)?;
    let policy = StationPolicy {
        cameras: config
            .cameras
            .iter()
            .map(|c| CameraName::from_str(&c.name))
            .collect::<Result<_, _>>()
            .context("camera name")?,
        on_new_start: config.agent.on_new_start,
        default_max_secs: max_secs(config.agent.max_recording),
    };
    let station = Station::new(identity.station.as_str(), policy);

    let (inbound_tx, mut inbound) = mpsc::unbounded_channel::<Publish>();
    let clock_synced = status::clock_synced();
    let first_status = status::Snapshot::at_start(
        &identity,
        clock_synced,
        &spool,
        (&spool_dir, &clip_dir),
        &metrics,
    )
    .await
    .to_status();
    let link = Link::start(
        link_settings(&config, &secrets, &identity, &first_status)?,
        spool.clone(),
        inbound_tx,
    );
    let mut daemon = Daemon {
        identity,
        clip_dir,
        spool_dir,
        quota: Quota {
            max_bytes: config.disk.max_bytes.0,
            min_free_percent: config.disk.min_free_percent,
        },
        spool,
        link: link.handle(),
        station,
        cameras,
        metrics,
        wake_uploader: Arc::new(Notify::new()),
        uploader_settings: uploader_settings.clone(),
        disk_full: false,
        clock_synced,
        heartbeat: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        sealing: tokio::task::JoinSet::new(),
        scanner: None,
    };
    let mut scan_lines = daemon.open_scanner(&config);

    // Commands recorded before a crash but never decided come first, before new ones, once
    // the cameras deliver frames (a start decided earlier would find them unavailable).
    daemon.wait_for_cameras(Duration::from_secs(15)).await;
    daemon.decide_unanswered().await?;
    daemon.refresh().await;

    let flush = daemon.link.clone();
    let uploader = Uploader::start(
        uploader_settings,
        capture_objstore::client(&crate::uploader::store_settings(&config, &secrets)),
        daemon.spool.clone(),
        daemon.metrics.clone(),
        daemon.wake_uploader.clone(),
        Arc::new(move || flush.flush()),
    );

    let http = http::serve(&config.metrics.listen, daemon.metrics.clone())
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;
    let watchdog = systemd::watchdog(daemon.heartbeat.clone(), daemon.spool.clone());
    systemd::notify("READY=1\nSTATUS=serving station");
    tracing::info!(
        station = %daemon.identity.station,
        device = %daemon.identity.device,
        env = %daemon.identity.env,
        cameras = daemon.cameras.len(),
        "capture agent ready"
    );

    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            publish = inbound.recv() => match publish {
                Some(publish) => daemon.on_publish(publish).await,
                None => break,
            },
            line = next_scan(&mut scan_lines) => match line {
                Some(line) => daemon.on_scan(line).await,
                None => scan_lines = None,
            },
            Some(joined) = daemon.sealing.join_next(), if !daemon.sealing.is_empty() => {
                match joined {
                    Ok(outcome) => daemon.on_sealed(outcome).await,
                    Err(e) => tracing::error!(error = %e, "a seal task ended abnormally; start-up reconciliation will seal its clip"),
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                daemon.on_tick(ticks).await;
            }
        }
        daemon.beat();
    }

    systemd::notify("STOPPING=1\nSTATUS=finishing the recording in progress");
    daemon.shut_down().await;
    uploader.shutdown().await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    http.abort();
    link.shutdown();
    Ok(())
}

impl Daemon {
    /// Dispatches one incoming publish by topic.
    async fn on_publish(&mut self, publish: Publish) {
        let commands = topic::command(&self.identity.env, &self.identity.station);
        let confirms = topic::confirm(&self.identity.env, &self.identity.device);
        // Claimed for every delivery, whatever its topic, so none is left behind.
        let unread = self.link.unread_payload(&publish);
        if publish.topic == commands {
            self.on_command(publish, unread).await;
        } else if publish.topic == confirms {
            self.on_confirm(publish).await;
        } else {
            tracing::warn!(topic = %publish.topic, "message on a topic this agent does not serve; ignored");
            self.ack(&publish).await;
        }
    }

    /// Once a second: `max_secs`; every five seconds: disk, eviction, status, metrics.
    async fn on_tick(&mut self, ticks: u64) {
        if let Some(action) = self.station.tick(&capture_protocol::Timestamp::now()) {
            tracing::info!("a recording reached its max_secs: closing it as truncated");
            self.execute(vec![action]).await;
            self.publish_status().await;
        }
        self.check_idle().await;
        crate::telemetry::Metrics::flag(&self.metrics.mqtt_connected, self.link.is_connected());
        if ticks.is_multiple_of(5) {
            self.refresh().await;
        }
        if ticks.is_multiple_of(30) {
            self.clock_synced = status::clock_synced();
            self.publish_status().await;
        }
        if ticks.is_multiple_of(3600) {
            self.prune_inbox().await;
        }
    }

    /// Starts the reader of `[scanner]`: the lines it sends, or `None` without a scanner. A
    /// scanner that cannot be opened (yet) is retried by the reader; meanwhile the station
    /// serves the line's commands.
    fn open_scanner(&mut self, config: &Config) -> Option<mpsc::UnboundedReceiver<String>> {
        let section = config.scanner.as_ref()?;
        let rules = section.rules()?;
        let (lines_tx, lines) = mpsc::unbounded_channel();
        if let Err(e) = crate::scanner::spawn(section.clone(), lines_tx) {
            tracing::error!(error = %e, "starting the barcode scanner's reader");
            return None;
        }
        tracing::info!(device = %section.device.display(), mode = ?section.mode(), "reading the barcode scanner");
        self.scanner = Some(scans::ScannerState {
            rules,
            idle_stop: section.idle_stop,
            last_scan: None,
            feedback_ok: section.feedback_ok.clone(),
            feedback_error: section.feedback_error.clone(),
        });
        Some(lines)
    }

    /// Acknowledges an incoming packet (after what it carried is durable).
    async fn ack(&self, publish: &Publish) {
        if let Err(e) = self.link.ack(publish).await {
            tracing::warn!(error = %e, "acknowledging an MQTT message");
        }
    }

    fn beat(&self) {
        self.heartbeat.store(
            systemd::monotonic_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Cameras whose pipeline is not delivering frames now.
    fn unavailable_cameras(&self) -> Vec<CameraName> {
        self.cameras
            .iter()
            .filter(|c| c.status().state != CameraState::Running)
            .filter_map(|c| CameraName::from_str(c.name()).ok())
            .collect()
    }

    fn camera(&self, name: &CameraName) -> Option<&CameraHandle> {
        self.cameras.iter().find(|c| c.name() == name.as_str())
    }

    async fn wait_for_cameras(&self, timeout: Duration) {
        let waits = self.cameras.iter().map(|camera| async move {
            if let Err(e) = camera.wait_until_running(timeout).await {
                tracing::warn!(camera = camera.name(), error = %e, "camera not delivering frames yet; commands for it answer camera_unavailable until it does");
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Shutdown: the recording in progress is stopped and sealed (truncated), the status
    /// says offline, and the outbox gets a moment to drain before the goodbye.
    async fn shut_down(&mut self) {
        let started = Instant::now();
        if let Some(action) = self.station.close() {
            tracing::info!("shutting down while recording: sealing the clips as truncated");
            self.execute(vec![action]).await;
        }
        self.finish_sealing().await;
        let mut offline = self.status_snapshot().await.to_status();
        offline.state = capture_protocol::Presence::Offline;
        self.link.set_presence(status::to_json(&offline));
        self.link.flush();
        // Give the broker a moment for the replies and events just committed; whatever is
        // left stays in the outbox for the next start.
        let drain = Duration::from_secs(3);
        while started.elapsed() < drain + Duration::from_secs(10) {
            let left = self
                .spool
                .call(|c| crate::spool::outbox::len(c))
                .await
                .unwrap_or(0);
            if left == 0 || !self.link.is_connected() {
                break;
            }
            if started.elapsed() > drain {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = self.link.disconnect().await;
        for camera in &self.cameras {
            camera.shutdown().await;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "capture agent stopped"
        );
    }

    async fn prune_inbox(&self) {
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(7);
        let Ok(cutoff) = capture_protocol::Timestamp::try_from(cutoff) else {
            return;
        };
        let cutoff = cutoff.to_string();
        match self
            .spool
            .call(move |c| crate::spool::inbox::prune(c, &cutoff))
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(pruned = n, "forgot answered commands older than 7 days")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning the command inbox"),
        }
    }
}

/// The next line of the scanner; never, without one.
async fn next_scan(lines: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match lines {
        Some(lines) => lines.recv().await,
        None => std::future::pending().await,
    }
}

fn start_cameras(config: &Config) -> anyhow::Result<Vec<CameraHandle>> {
    config
        .cameras
        .iter()
        .map(|spec| {
            Camera::start(spec.clone())
                .map_err(crate::hint::explain)
                .with_context(|| format!("starting camera {}", spec.name))
        })
        .collect()
}

fn max_secs(duration: Duration) -> std::num::NonZeroU32 {
    let secs = u32::try_from(duration.as_secs()).unwrap_or(u32::MAX).max(1);
    std::num::NonZeroU32::new(secs).unwrap_or(std::num::NonZeroU32::MIN)
}

fn link_settings(
    config: &Config,
    secrets: &Secrets,
    identity: &Identity,
    status: &capture_protocol::Status,
) -> anyhow::Result<LinkSettings> {
    let tls = tls_configuration(config)?;
    let status_topic = topic::status(&identity.env, &identity.station);
    Ok(LinkSettings {
        host: config.mqtt.host.clone(),
        port: config.mqtt.port,
        client_id: identity.device.as_str().to_owned(),
        keep_alive: config.mqtt.keep_alive,
        credentials: match (&config.mqtt.username, &secrets.mqtt_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(user), None) => Some((user.clone(), String::new())),
            _ => None,
        },
        tls,
        subscriptions: vec![
            topic::command(&identity.env, &identity.station),
            topic::confirm(&identity.env, &identity.device),
        ],
        online: (status_topic.clone(), status::to_json(status)),
        offline: (status_topic, status::to_json(&status.last_will())),
    })
}

/// TLS for the broker connection: rustls with ring, trusting `mqtt.ca_file` when given,
/// else the system's CA bundle.
fn tls_configuration(config: &Config) -> anyhow::Result<Option<rumqttc::TlsConfiguration>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    if !config.mqtt.tls {
        return Ok(None);
    }
    let bundle = config
        .mqtt
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(&bundle)
        .with_context(|| format!("reading the MQTT CA certificates {}", bundle.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", bundle.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate in {}", bundle.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no CA certificate", bundle.display());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))))
}

/// Where the spool keeps a clip's or photo's file.
pub fn clip_path(clip_dir: &Path, clip_id: &str, photo: bool) -> PathBuf {
    clip_dir.join(format!("{clip_id}.{}", if photo { "jpg" } else { "mp4" }))
}
