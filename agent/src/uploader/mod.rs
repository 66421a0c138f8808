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
//! retried after a backoff ([`crate::backoff::Backoff`]: exponential, jittered, 1 s .. 5 min by
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
mod settings;
mod upload;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use crate::backoff::Backoff;
pub use client::{
    Body, Head, ListedPart, ListedUpload, ObjectSpec, Store, StoreError, StoreErrorKind,
    md5_of_file, md5_of_region,
};
pub use confirm::{ConfirmEffect, apply_confirm, is_integrity_reason};
pub use object::{ClipObject, InvalidRow};
pub use policy::Pacer;
pub use resend::ConfirmWatch;
pub use settings::{UploaderSettings, store_settings};
pub use upload::CORRUPT_ON_DISK;
pub(crate) use upload::refused_body;
use upload::{fail_clip, upload_clip};

use crate::spool::{Spool, SpoolError, clips};
use crate::telemetry::Metrics;

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
