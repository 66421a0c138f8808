//! The uploader: sends sealed clips and photos to the object store, resumably, and
//! announces each finished object.
//!
//! # Data flow
//!
//! ```text
//!  spool clips: sealed / uploading (oldest first, at most `concurrency` at once)
//!      │
//!      ▼
//!  size ≤ part_size ─▶ PutObject (Content-MD5)            ┐
//!  size > part_size ─▶ multipart (multipart.rs): upload   ├─ bodies streamed from the file,
//!                      id (state → uploading) and part    │  paced, under a stall timeout
//!                      ETags into the spool               ┘
//!      │
//!      ▼  one transaction: state → uploaded, bytes_sent = size, multipart rows dropped,
//!         outbox += `Uploaded` (cap/{env}/ingest/uploaded) + `clip_uploaded` event
//!  outbox_ready()   (the daemon flushes the MQTT link)
//!
//!  confirm from the ingest ─▶ apply_confirm (confirm.rs): accepted / re-upload / failed
//!  janitor (janitor.rs): at start and every `janitor_interval`, aborts orphaned uploads
//! ```
//!
//! # Object
//!
//! Key `{env}/{yyyy}/{mm}/{dd}/{order}/{clip_id}.{mp4|jpg}`, content type `video/mp4` or
//! `image/jpeg`, user metadata `sha256` (from the spool row: the file is hashed once, when it
//! is sealed), `order`, `station`, `camera`, `clip-id` ([`object`]). The same clip always
//! goes to the same key, so a repeated upload overwrites.
//!
//! # Failures
//!
//! Every failed attempt is counted in the clip's row (`attempts`, `last_error`, shown by
//! `capture-agent spool`), in `capture_upload_failures_total` and in one log line with the
//! store's error code; nothing is deleted and the clip keeps its state. The attempt is
//! retried after a backoff ([`policy::Backoff`]: exponential, jittered, 1 s .. 5 min by
//! default). A failure of the store as a whole (refused credentials, missing bucket,
//! unreachable, stalled, 5xx) pauses every upload for the backoff, so that a wrong key
//! gives one error per backoff period instead of one per clip; a failure of one object
//! pauses only that clip. A clip that cannot be uploaded at all (its file is gone or has
//! another size than sealed, its row is damaged) is marked `failed` with a `clip_failed`
//! event. A retry resumes: multipart uploads continue from the parts the store holds.
//!
//! The uploader never deletes a local file; disk eviction of accepted clips is the
//! daemon's.

mod client;
mod confirm;
pub mod janitor;
pub mod multipart;
mod object;
pub mod policy;
pub mod resend;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capture_protocol::{DeviceId, Env, EventKind, StationId};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use client::{
    Body, Head, ListedPart, ListedUpload, ObjectSpec, Store, StoreError, StoreErrorKind,
    md5_of_file, md5_of_region,
};
pub use confirm::{ConfirmEffect, apply_confirm, is_integrity_reason};
pub use object::{ClipObject, InvalidRow};
pub use policy::{Backoff, Pacer};
pub use resend::ConfirmWatch;

use crate::config::{Config, Problem, Secrets};
use crate::digest::{PartDigests, digest_file};
use crate::spool::{
    ClipRow, ClipState, Spool, SpoolError, clips, multipart as spool_multipart, outbox,
};
use crate::telemetry::Metrics;

/// How the uploader behaves.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    pub env: Env,
    pub device: DeviceId,
    pub station: StationId,
    pub bucket: String,
    /// Files larger than this go multipart, in parts of this size (raised for files that
    /// would need more than 10,000 parts).
    pub part_size: u64,
    /// Clips uploaded at the same time.
    pub concurrency: usize,
    /// Parts of one clip in flight at the same time.
    pub parts_in_flight: usize,
    /// Upload bandwidth cap for all requests together, kbit/s; 0 is unlimited.
    pub bandwidth_kbps: u64,
    pub backoff: Backoff,
    /// A request whose body has not moved (or that got no answer) for this long is
    /// abandoned and retried.
    pub stall_timeout: Duration,
    /// How often the janitor sweeps orphaned multipart uploads (it also sweeps at start).
    pub janitor_interval: Duration,
    /// Multipart uploads older than this are aborted by the janitor whoever started them,
    /// when the clock is synchronised; `None` leaves other agents' uploads alone whatever
    /// their age.
    pub stale_upload_age: Option<Duration>,
    /// How often the spool is looked at without a wake-up (a safety net).
    pub rescan_interval: Duration,
    /// How long an uploaded clip waits for its confirm before the notification is sent
    /// again (`first`), and how that wait grows (`resend.rs`).
    pub confirm_backoff: Backoff,
}

impl UploaderSettings {
    /// Settings with the defaults: 8 MiB parts, 2 clips and 4 parts at once, no cap, 1 s ..
    /// 5 min backoff, 30 s stall timeout, janitor hourly, uploads older than 7 days stale.
    pub fn new(env: Env, device: DeviceId, station: StationId, bucket: impl Into<String>) -> Self {
        UploaderSettings {
            env,
            device,
            station,
            bucket: bucket.into(),
            part_size: 8 << 20,
            concurrency: 2,
            parts_in_flight: 4,
            bandwidth_kbps: 0,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(30),
            janitor_interval: Duration::from_secs(3600),
            stale_upload_age: Some(Duration::from_secs(7 * 24 * 3600)),
            rescan_interval: Duration::from_secs(30),
            confirm_backoff: Backoff {
                first: Duration::from_secs(120),
                max: Duration::from_secs(1800),
                jitter: 0.5,
            },
        }
    }

    /// The uploader's settings from the agent's configuration (`[agent]` and `[store]`).
    pub fn from_config(config: &Config) -> Result<UploaderSettings, Problem> {
        fn parse<T: FromStr>(key: &str, text: &str) -> Result<T, Problem>
        where
            T::Err: std::fmt::Display,
        {
            text.parse().map_err(|e: T::Err| Problem {
                key: key.to_owned(),
                message: e.to_string(),
            })
        }
        let store = &config.store;
        let mut settings = UploaderSettings::new(
            parse("agent.env", &config.agent.env)?,
            parse("agent.device", &config.agent.device)?,
            parse("agent.station", &config.agent.station)?,
            store.bucket.clone(),
        );
        settings.part_size = store.part_size.0;
        settings.concurrency = usize::try_from(store.concurrency).unwrap_or(1).max(1);
        settings.bandwidth_kbps = store.bandwidth_kbps;
        settings.backoff.max = store.retry_max;
        settings.confirm_backoff.first = store.confirm_timeout;
        settings.confirm_backoff.max = store.confirm_timeout_max;
        Ok(settings)
    }
}

/// The store settings of the uploader: the configured endpoint and credentials, without
/// the SDK's own retries (the uploader retries with its backoff).
pub fn store_settings(config: &Config, secrets: &Secrets) -> capture_objstore::StoreSettings {
    let mut settings = capture_objstore::StoreSettings::new(
        &config.store.endpoint,
        &config.store.region,
        &secrets.access_key_id,
        &secrets.secret_access_key,
    )
    .with_path_style(config.store.path_style)
    // A per-attempt bound would have to exceed the slowest legitimate part (8 MiB at
    // 256 kbit/s: 262 s); the uploader's stall timeout catches a hung store instead.
    .without_request_timeouts();
    settings.max_attempts = 1;
    settings
}

/// Why an upload attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{request} {key}: {source}")]
    Store {
        request: &'static str,
        key: String,
        source: StoreError,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The clip cannot be uploaded at all; retrying would not help.
    #[error("clip {clip_id} cannot be uploaded: {problem}")]
    Unusable { clip_id: String, problem: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl UploadError {
    /// The store's error, if the store answered or failed to.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            UploadError::Store { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What every clip upload shares.
#[derive(Debug)]
pub(crate) struct Context {
    settings: UploaderSettings,
    store: Store,
    spool: Spool,
    metrics: Arc<Metrics>,
}

/// The running uploader; see the module documentation.
#[derive(Debug)]
pub struct Uploader;

/// Handle to the uploader task.
#[derive(Debug)]
pub struct UploaderHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Uploader {
    /// Spawns the uploader. `wake` is notified (`notify_one`) by the daemon when a clip was
    /// sealed or a confirm re-queued one; `outbox_ready` is called after the uploader
    /// committed outbox rows (the daemon passes the MQTT link's flush).
    pub fn start(
        settings: UploaderSettings,
        client: capture_objstore::Client,
        spool: Spool,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        outbox_ready: Arc<dyn Fn() + Send + Sync>,
    ) -> UploaderHandle {
        let store = Store::new(
            client,
            settings.bucket.clone(),
            settings.stall_timeout,
            settings.bandwidth_kbps,
        );
        let (stop, stopped) = watch::channel(false);
        let confirms = ConfirmWatch::new(settings.confirm_backoff);
        let scheduler = Scheduler {
            context: Arc::new(Context {
                settings,
                store,
                spool,
                metrics,
            }),
            wake,
            outbox_ready,
            stopped,
            running: JoinSet::new(),
            in_flight: HashSet::new(),
            clip_waits: HashMap::new(),
            store_wait: None,
            confirms,
            confirm_check_at: Instant::now(),
        };
        UploaderHandle {
            stop,
            task: tokio::spawn(scheduler.run()),
        }
    }
}

impl UploaderHandle {
    /// Stops the uploader: requests in flight are dropped (a part in flight is sent again by
    /// the next run; every acknowledged part is already in the spool). Returns when the task
    /// has ended.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Ends the uploader at once, as a crash would (for tests of resumption). (Dropping the
    /// handle without either stops the uploader as `shutdown` does, without waiting.)
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Consecutive failures and when the next attempt may start.
#[derive(Debug, Clone, Copy)]
struct Wait {
    failures: u32,
    until: Instant,
    /// When the failure that set this wait was recorded.
    since: Instant,
}

/// The task that owns the uploads: picks clips, runs them, schedules retries.
struct Scheduler {
    context: Arc<Context>,
    wake: Arc<Notify>,
    outbox_ready: Arc<dyn Fn() + Send + Sync>,
    stopped: watch::Receiver<bool>,
    running: JoinSet<(String, Instant, Result<(), UploadError>)>,
    in_flight: HashSet<String>,
    /// Clips waiting after a failure of their own.
    clip_waits: HashMap<String, Wait>,
    /// Every upload waits after a failure of the store as a whole.
    store_wait: Option<Wait>,
    /// Clips in `uploaded`, waiting for their confirm (resend.rs).
    confirms: ConfirmWatch,
    /// When the spool's `uploaded` clips are looked at next: the next confirm due, the
    /// periodic rescan, or at once after an upload finished.
    confirm_check_at: Instant,
}

impl Scheduler {
    async fn run(mut self) {
        let mut janitor = JoinSet::new();
        janitor.spawn(run_janitor(self.context.clone()));
        loop {
            self.start_uploads().await;
            self.resend_unconfirmed().await;
            let woken = self.wake.notified();
            let next = self.next_deadline();
            tokio::select! {
                _ = self.stopped.changed() => break,
                () = woken => {}
                Some(joined) = self.running.join_next() => match joined {
                    Ok((clip_id, started, result)) => self.finished(clip_id, started, result).await,
                    Err(e) => tracing::error!(error = %e, "an upload task ended abnormally"),
                },
                () = tokio::time::sleep_until(next) => {}
            }
        }
        self.running.shutdown().await;
        janitor.shutdown().await;
        tracing::info!("uploader stopped");
    }

    /// The next moment something may become due: a wait ending, a confirm overdue, or the
    /// periodic rescan.
    fn next_deadline(&self) -> Instant {
        let rescan = Instant::now() + self.context.settings.rescan_interval;
        self.store_wait
            .iter()
            .chain(self.clip_waits.values())
            .map(|w| w.until)
            .chain(std::iter::once(self.confirm_check_at))
            .filter(|until| *until > Instant::now())
            .fold(rescan, Instant::min)
    }

    /// Sends the uploaded notification again for every clip whose confirm is overdue.
    async fn resend_unconfirmed(&mut self) {
        if Instant::now() < self.confirm_check_at {
            return;
        }
        self.confirm_check_at = Instant::now() + self.context.settings.rescan_interval;
        let uploaded = match self.context.spool.call(|c| resend::uploaded_clips(c)).await {
            Ok(uploaded) => uploaded,
            Err(e) => {
                tracing::error!(error = %e, "reading the clips waiting for a confirm");
                return;
            }
        };
        let now = std::time::Instant::now();
        let due = self.confirms.due(uploaded.iter().map(String::as_str), now);
        if due.is_empty() {
            self.schedule_confirm_check();
            return;
        }
        let mut queued = false;
        for clip_id in due {
            let settings = self.context.settings.clone();
            let id = clip_id.clone();
            let result = self
                .context
                .spool
                .call(move |c| resend::resend(c, &settings, &id))
                .await;
            self.confirms.resent(&clip_id, now, rand::random::<f64>());
            let resends = self.confirms.resends(&clip_id).unwrap_or(0);
            match result {
                Ok(resend::Resent::Queued) => {
                    queued = true;
                    Metrics::add(&self.context.metrics.notification_resends, 1);
                    tracing::warn!(%clip_id, resends, "no confirm from the ingest in time; uploaded notification sent again");
                }
                Ok(resend::Resent::StillQueued) => {
                    tracing::info!(%clip_id, "no confirm yet, but the uploaded notification has not left the outbox");
                }
                Ok(resend::Resent::Skipped(why)) => {
                    tracing::debug!(%clip_id, %why, "no notification sent again");
                }
                Err(e) => {
                    tracing::error!(%clip_id, error = %e, "sending the uploaded notification again")
                }
            }
        }
        self.schedule_confirm_check();
        if queued {
            (self.outbox_ready)();
        }
    }

    /// The confirm watch's next check: its next due clip, or the periodic rescan.
    fn schedule_confirm_check(&mut self) {
        let rescan = Instant::now() + self.context.settings.rescan_interval;
        self.confirm_check_at = self
            .confirms
            .next_due()
            .map_or(rescan, |due| Instant::from_std(due).min(rescan));
    }

    /// Starts uploads of the oldest clips waiting, up to `concurrency`.
    async fn start_uploads(&mut self) {
        let now = Instant::now();
        if self.store_wait.is_some_and(|w| w.until > now) {
            return;
        }
        let concurrency = self.context.settings.concurrency.max(1);
        if self.in_flight.len() >= concurrency {
            return;
        }
        let limit = concurrency + self.in_flight.len() + self.clip_waits.len();
        let candidates = match self
            .context
            .spool
            .call(move |c| clips::awaiting_upload(c, limit))
            .await
        {
            Ok(candidates) => candidates,
            Err(e) => {
                tracing::error!(error = %e, "reading the upload queue from the spool");
                return;
            }
        };
        for clip in candidates {
            if self.in_flight.len() >= concurrency {
                break;
            }
            if self.in_flight.contains(&clip.clip_id)
                || self
                    .clip_waits
                    .get(&clip.clip_id)
                    .is_some_and(|w| w.until > now)
            {
                continue;
            }
            let retry = self.clip_waits.contains_key(&clip.clip_id) || self.store_wait.is_some();
            if retry {
                Metrics::add(&self.context.metrics.upload_retries, 1);
            }
            self.in_flight.insert(clip.clip_id.clone());
            let context = self.context.clone();
            let outbox_ready = self.outbox_ready.clone();
            self.running.spawn(async move {
                let clip_id = clip.clip_id.clone();
                let started = Instant::now();
                let result = upload_clip(&context, clip, outbox_ready.as_ref()).await;
                (clip_id, started, result)
            });
        }
    }

    /// Books the end of one upload attempt.
    async fn finished(
        &mut self,
        clip_id: String,
        started: Instant,
        result: Result<(), UploadError>,
    ) {
        self.in_flight.remove(&clip_id);
        let error = match result {
            Ok(()) => {
                self.clip_waits.remove(&clip_id);
                self.store_wait = None;
                // The clip now waits for its confirm: start its clock.
                self.confirm_check_at = Instant::now();
                return;
            }
            Err(error) => error,
        };
        let metrics = &self.context.metrics;
        Metrics::add(&metrics.upload_failures, 1);
        if let UploadError::Unusable { problem, .. } = &error {
            tracing::error!(clip_id, error = %error, "upload impossible: the clip is failed");
            // Should recording the failure fail, the clip is not retried at once.
            let failures = self.clip_waits.get(&clip_id).map_or(1, |w| w.failures + 1);
            let now = Instant::now();
            self.clip_waits.insert(
                clip_id.clone(),
                Wait {
                    failures,
                    until: now + self.context.settings.backoff.random_delay(failures),
                    since: now,
                },
            );
            let (id, problem) = (clip_id.clone(), problem.clone());
            let settings = self.context.settings.clone();
            let failed = self
                .context
                .spool
                .call(move |c| fail_clip(c, &settings, &id, &problem))
                .await;
            match failed {
                Ok(()) => (self.outbox_ready)(),
                Err(e) => tracing::error!(clip_id, error = %e, "recording the failed clip"),
            }
            return;
        }

        let text = error.to_string();
        let (id, recorded) = (clip_id.clone(), text.clone());
        if let Err(e) = self
            .context
            .spool
            .call(move |c| clips::record_failure(c, &id, &recorded))
            .await
        {
            tracing::error!(clip_id, error = %e, "recording the upload failure");
        }
        let backoff = self.context.settings.backoff;
        let now = Instant::now();
        let store_error = error.store_error();
        let store_wide = store_error.is_some_and(StoreError::is_store_wide);
        let wait = if store_wide {
            match self.store_wait {
                // Already running when the store's last failure was booked: not a new one.
                Some(wait) if started < wait.since => wait,
                previous => {
                    let failures = previous.map_or(1, |w| w.failures + 1);
                    let wait = Wait {
                        failures,
                        until: now + backoff.random_delay(failures),
                        since: now,
                    };
                    self.store_wait = Some(wait);
                    wait
                }
            }
        } else {
            let failures = self.clip_waits.get(&clip_id).map_or(1, |w| w.failures + 1);
            let wait = Wait {
                failures,
                until: now + backoff.random_delay(failures),
                since: now,
            };
            self.clip_waits.insert(clip_id.clone(), wait);
            wait
        };
        let retry_in = wait.until.saturating_duration_since(now);
        let code = store_error.map_or("local", StoreError::code);
        if store_error.is_some_and(|e| {
            matches!(
                e.kind,
                StoreErrorKind::Credentials | StoreErrorKind::NoSuchBucket
            )
        }) {
            tracing::error!(clip_id, code, failures = wait.failures, retry_in = ?retry_in, error = %text, "upload refused by the store; retrying after backoff");
        } else {
            tracing::warn!(clip_id, code, failures = wait.failures, retry_in = ?retry_in, error = %text, "upload attempt failed; retrying after backoff");
        }
    }
}

/// Sweeps at start and then every `janitor_interval`; a failed sweep is logged and tried
/// again at the next interval.
async fn run_janitor(context: Arc<Context>) {
    loop {
        let settings = &context.settings;
        let clock_synced = context.metrics.clock_synced.load(Ordering::Relaxed);
        match janitor::sweep(
            &context.store,
            &context.spool,
            &settings.env,
            settings.stale_upload_age,
            clock_synced,
        )
        .await
        {
            Ok(sweep) => tracing::debug!(
                listed = sweep.listed,
                aborted = sweep.aborted.len(),
                "janitor swept multipart uploads"
            ),
            Err(e) => tracing::warn!(error = %e, "janitor could not sweep multipart uploads"),
        }
        tokio::time::sleep(settings.janitor_interval).await;
    }
}

/// One attempt at one clip: upload the object, then commit `uploaded` with its
/// notification and event, and call `outbox_ready`.
#[tracing::instrument(level = "debug", skip_all, fields(clip_id = %clip.clip_id))]
async fn upload_clip(
    context: &Context,
    clip: ClipRow,
    outbox_ready: &(dyn Fn() + Send + Sync),
) -> Result<(), UploadError> {
    let settings = &context.settings;
    let unusable = |problem: String| UploadError::Unusable {
        clip_id: clip.clip_id.clone(),
        problem,
    };
    let object = ClipObject::of(&clip, &settings.env).map_err(|e| unusable(e.to_string()))?;
    let origin = object::Origin {
        env: &settings.env,
        device: &settings.device,
        station: &settings.station,
        bucket: &settings.bucket,
    };
    let path = Path::new(&clip.path);
    match tokio::fs::metadata(path).await {
        Ok(file) if file.len() == object.size => {}
        Ok(file) => {
            return Err(unusable(format!(
                "{} has {} bytes, {} when it was sealed",
                path.display(),
                file.len(),
                object.size
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unusable(format!("{} does not exist", path.display())));
        }
        Err(source) => {
            return Err(UploadError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    let spec = object.spec(&settings.station);
    let id = clip.clip_id.clone();
    let existing = context
        .spool
        .call(move |c| spool_multipart::get(c, &id))
        .await?;
    let parts = match &clip.parts {
        Some(parts) => parts.clone(),
        None => digests_of_an_old_clip(context, &clip, &object, existing.as_ref()).await?,
    };
    let notification =
        object::uploaded(&clip, &object, &origin, &parts).map_err(|e| unusable(e.to_string()))?;
    if !parts.is_single() {
        multipart::upload(context, &clip.clip_id, path, object.size, &spec, &parts).await?;
    } else {
        if existing.is_some() {
            // The plan is one PutObject: an upload in parts is none of its (the janitor
            // aborts it in the store).
            let id = clip.clip_id.clone();
            context
                .spool
                .call(move |c| spool_multipart::forget(c, &id))
                .await?;
        }
        let body = Body {
            path: path.to_owned(),
            offset: 0,
            length: object.size,
            md5: parts.md5(1).unwrap_or_default(),
        };
        let put = context.store.put_object(&spec, &body).await;
        if let Err(source) = put {
            return Err(
                refused_body(&clip.clip_id, &body, 1, source, "PutObject", &spec.key).await,
            );
        }
        Metrics::add(&context.metrics.upload_bytes, object.size);
    }

    let messages = [
        object::uploaded_message(&settings.env, &notification),
        object.event(
            &settings.env,
            &settings.station,
            EventKind::ClipUploaded {
                truncated: clip.truncated,
            },
        ),
    ];
    let id = clip.clip_id.clone();
    let committed = context
        .spool
        .call(move |c| {
            let tx = c.transaction()?;
            // A single PUT goes from `sealed` straight to `uploaded`.
            let current = clips::get(&tx, &id)?.map(|clip| clip.state);
            if !matches!(current, Some(ClipState::Sealed | ClipState::Uploading)) {
                return Ok(false);
            }
            clips::set_uploaded(&tx, &id)?;
            spool_multipart::forget(&tx, &id)?;
            for message in &messages {
                outbox::push(&tx, message)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await?;
    if committed {
        Metrics::add(&context.metrics.uploads, 1);
        tracing::info!(clip_id = %clip.clip_id, key = %object.key, size = object.size, "clip uploaded");
        outbox_ready();
    } else {
        tracing::warn!(clip_id = %clip.clip_id, "clip changed state during its upload; not announced");
    }
    Ok(())
}

/// The part digests of a clip sealed before the spool kept them: computed now from the file
/// (the one read at upload time such a clip needs, as before), checked against the sha256
/// the seal recorded, and stored, so that from here on its upload is a new clip's. The plan
/// is the one of a multipart upload already in progress, else the configured part size's.
async fn digests_of_an_old_clip(
    context: &Context,
    clip: &ClipRow,
    object: &ClipObject,
    upload: Option<&spool_multipart::MultipartRow>,
) -> Result<PartDigests, UploadError> {
    let configured = upload
        .and_then(|u| u64::try_from(u.part_size).ok())
        .unwrap_or(context.settings.part_size);
    let path = PathBuf::from(&clip.path);
    let read = path.clone();
    let digests = tokio::task::spawn_blocking(move || digest_file(&read, configured))
        .await
        .map_err(|e| UploadError::Read {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| UploadError::Read {
            path: path.clone(),
            source,
        })?;
    if !digests.sha256.eq_ignore_ascii_case(object.sha256.as_str()) {
        return Err(UploadError::Unusable {
            clip_id: clip.clip_id.clone(),
            problem: format!(
                "{CORRUPT_ON_DISK}: {} hashes to sha256 {}, not the {} it had when it was sealed",
                path.display(),
                digests.sha256,
                object.sha256
            ),
        });
    }
    let (id, parts) = (clip.clip_id.clone(), digests.parts.clone());
    context
        .spool
        .call(move |c| clips::set_parts(c, &id, &parts))
        .await?;
    tracing::info!(clip_id = %clip.clip_id, parts = digests.parts.md5s.len(), "part digests computed for a clip sealed before the spool kept them");
    Ok(digests.parts)
}

/// How a clip whose file no longer holds what was sealed fails: its `clip_failed` reason
/// and last error start with this.
pub const CORRUPT_ON_DISK: &str = "corrupt on disk";

/// The error for a body the store refused. A refused `Content-MD5` (`BadDigest`) is told
/// apart by reading the region again: if its MD5 is no longer the seal's, the file changed
/// on disk after sealing, and the clip cannot be uploaded ([`CORRUPT_ON_DISK`]; the file is
/// kept for inspection); if it still is, the bytes were damaged on the way, and the attempt
/// is retried like any other.
pub(crate) async fn refused_body(
    clip_id: &str,
    body: &Body,
    part_number: i64,
    source: StoreError,
    request: &'static str,
    key: &str,
) -> UploadError {
    let store_error = |source| UploadError::Store {
        request,
        key: format!("{key} part {part_number}"),
        source,
    };
    if source.kind != StoreErrorKind::BadDigest {
        return store_error(source);
    }
    match md5_of_region(&body.path, body.offset, body.length).await {
        Ok(now) if now != body.md5 => {
            tracing::error!(
                clip_id,
                part_number,
                path = %body.path.display(),
                offset = body.offset,
                length = body.length,
                sealed_md5 = %hex::encode(body.md5),
                md5_now = %hex::encode(now),
                "the clip's file changed on disk since it was sealed"
            );
            UploadError::Unusable {
                clip_id: clip_id.to_owned(),
                problem: format!(
                    "{CORRUPT_ON_DISK}: part {part_number} of {} (bytes {}..{}) has MD5 {} now, \
                     {} when the clip was sealed; the store refused it ({}); the file is kept \
                     for inspection",
                    body.path.display(),
                    body.offset,
                    body.offset + body.length,
                    hex::encode(now),
                    hex::encode(body.md5),
                    source.code()
                ),
            }
        }
        Ok(_) => store_error(source),
        Err(read) => UploadError::Read {
            path: body.path.clone(),
            source: read,
        },
    }
}

/// Marks a clip that cannot be uploaded `failed`, with a `clip_failed` event.
fn fail_clip(
    connection: &mut rusqlite::Connection,
    settings: &UploaderSettings,
    clip_id: &str,
    problem: &str,
) -> Result<(), SpoolError> {
    let tx = connection.transaction()?;
    let Some(clip) = clips::get(&tx, clip_id)? else {
        return Ok(());
    };
    clips::fail(&tx, clip_id, problem)?;
    spool_multipart::forget(&tx, clip_id)?;
    let failed = EventKind::ClipFailed {
        reason: problem.to_owned(),
    };
    // A row too damaged to name its clip in an event is still failed, without the event.
    if let Ok(event) = confirm::event(&clip, settings, failed) {
        outbox::push(&tx, &event)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;

    #[test]
    fn settings_come_from_the_config_and_the_store_gets_one_attempt_per_request() {
        let mut config = Config::parse(DEFAULT_CONFIG).unwrap();
        config.store.part_size = crate::config::ByteSize(16 << 20);
        config.store.concurrency = 3;
        config.store.bandwidth_kbps = 2000;
        config.store.retry_max = Duration::from_secs(20);
        let settings = UploaderSettings::from_config(&config).unwrap();
        assert_eq!(
            (settings.env.as_str(), settings.device.as_str()),
            ("dev", "pi-01")
        );
        assert_eq!(settings.station.as_str(), "pack-01");
        assert_eq!(settings.bucket, "factory-media");
        assert_eq!(
            (
                settings.part_size,
                settings.concurrency,
                settings.bandwidth_kbps
            ),
            (16 << 20, 3, 2000)
        );
        assert_eq!(settings.backoff.max, Duration::from_secs(20));
        let defaults = UploaderSettings::from_config(&Config::parse(DEFAULT_CONFIG).unwrap());
        assert_eq!(defaults.unwrap().backoff.max, Duration::from_secs(300));

        let secrets = Secrets {
            mqtt_password: None,
            access_key_id: "GK1".into(),
            secret_access_key: "s3cr3t-value".into(),
        };
        let store = store_settings(&config, &secrets);
        assert_eq!(store.max_attempts, 1);
        // The stall timeout watches requests; SDK bounds would cut slow capped parts.
        assert_eq!(
            (store.attempt_timeout, store.operation_timeout),
            (None, None)
        );
        assert!(!store.path_style, "OBS is addressed virtual-hosted style");
        assert!(!format!("{store:?}").contains("s3cr3t-value"));
        let client = capture_objstore::client(&store);
        let uploader_store = Store::new(client, "b".into(), Duration::from_secs(1), 0);
        assert!(!format!("{uploader_store:?}").contains("s3cr3t-value"));
    }
}
