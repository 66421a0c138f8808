//! Carrying out a decision: the station's actions (start, stop, abort, photos) through the
//! cameras, each result committed to the spool with the event announcing it (recording
//! stopped and sealed, photo taken, clip failed). Sealing runs off the daemon loop; its
//! outcome comes back to [`Daemon::on_sealed`].

use std::time::Duration;

use capture_protocol::{EventKind, Timestamp};

use super::{Daemon, clip_path};
use crate::capture::{CaptureError, RecordingRequest, SealedClip, seal};
use crate::spool::{self, Sealed, clips};
use crate::station::{Action, Recording, Take};
use crate::telemetry::Metrics;

impl Daemon {
    /// Carries out the actions of a decision, in order, committing each result.
    pub(super) async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(recording) => self.start_recording(&recording).await,
                Action::Stop {
                    recording,
                    truncated,
                } => self.stop_recording(&recording, truncated).await,
                Action::Abort { recording, reason } => {
                    self.abort_recording(&recording, reason.as_deref()).await;
                }
                Action::Snapshot { order, takes, .. } => {
                    self.take_photos(order.as_str(), &takes).await;
                }
            }
        }
    }

    async fn start_recording(&mut self, recording: &Recording) {
        Metrics::add(&self.metrics.recordings, 1);
        Metrics::flag(&self.metrics.recording, true);
        // A camera still ending the previous clip (a start right after a stop) takes the new
        // one once its post-roll and EOS are over; that clip's seal goes on meanwhile.
        for take in &recording.takes {
            if let Some(camera) = self.camera(&take.camera)
                && !camera.wait_until_not_recording(PREVIOUS_CLIP_END).await
            {
                tracing::warn!(camera = %take.camera, waited = ?PREVIOUS_CLIP_END, "the camera is still ending its previous clip");
            }
        }
        let starts = recording.takes.iter().map(|take| {
            let request = RecordingRequest {
                clip_id: take.clip_id.as_str().to_owned(),
                order: recording.order.as_str().to_owned(),
                station: self.identity.station.as_str().to_owned(),
                dir: self.clip_dir.clone(),
                preroll: None,
                postroll: None,
                part_size: self.uploader_settings.part_size,
            };
            let camera = self.camera(&take.camera).cloned();
            async move {
                let result = match camera {
                    Some(camera) => camera.start_recording(request).await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                (take, result)
            }
        });
        for (take, result) in futures::future::join_all(starts).await {
            match result {
                Ok(started) => {
                    let first_frame = started.at - started.preroll;
                    let started_at = Timestamp::try_from(first_frame)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    let preroll_ms = i64::try_from(started.preroll.as_millis()).unwrap_or(0);
                    let clip_id = take.clip_id.as_str().to_owned();
                    tracing::info!(
                        order = %recording.order,
                        clip_id = %take.clip_id,
                        camera = %take.camera,
                        preroll_ms,
                        "recording started"
                    );
                    if !started_at.is_empty()
                        && let Err(e) = self
                            .spool
                            .call(move |c| clips::set_start(c, &clip_id, &started_at, preroll_ms))
                            .await
                    {
                        tracing::warn!(error = %e, clip_id = %take.clip_id, "recording the clip's start time");
                    }
                }
                Err(e) => {
                    let reason = format!("camera {} could not start recording: {e}", take.camera);
                    tracing::error!(order = %recording.order, clip_id = %take.clip_id, camera = %take.camera, error = %e, "recording did not start");
                    self.fail_clip(take, &recording.order, reason).await;
                }
            }
        }
    }

    /// Hands the stop to each camera and leaves the rest (post-roll, EOS, hashing, a remux)
    /// to a task of [`Daemon::sealing`]: the loop goes on serving commands and the watchdog
    /// while a long clip seals; [`Daemon::on_sealed`] commits each result.
    async fn stop_recording(&mut self, recording: &Recording, truncated: bool) {
        Metrics::flag(&self.metrics.recording, false);
        for take in &recording.takes {
            // The stop reaches the camera now, before anything this loop asks it later.
            let stop = self.camera(&take.camera).map(|c| c.stop_recording());
            let part = seal::part_path(&clip_path(&self.clip_dir, take.clip_id.as_str(), false));
            let part_size = self.uploader_settings.part_size;
            let (take, order) = (take.clone(), recording.order.clone());
            self.sealing.spawn(async move {
                let stopped = match stop {
                    Some(stop) => stop.await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                let result = match stopped {
                    Ok(sealed) => Ok(sealed),
                    Err(e) => {
                        // The camera could not finish the file (it failed, or it was never
                        // started): seal whatever part file it left, as after a crash.
                        tracing::warn!(clip_id = %take.clip_id, camera = %take.camera, error = %e, "stopping the recording failed; sealing what is on disk");
                        tokio::task::spawn_blocking(move || seal::seal_part_file(&part, part_size))
                            .await
                            .unwrap_or_else(|e| Err(CaptureError::Gst(e.to_string())))
                    }
                };
                SealOutcome {
                    take,
                    order,
                    truncated,
                    result,
                }
            });
        }
    }

    /// Commits a clip that finished sealing (or failed to), and wakes the uploader.
    pub(super) async fn on_sealed(&mut self, outcome: SealOutcome) {
        let SealOutcome {
            take,
            order,
            truncated,
            result,
        } = outcome;
        match result {
            Ok(sealed) => {
                self.commit_sealed(&take, &order, &sealed, truncated).await;
            }
            Err(e) => {
                let reason = format!("the recording could not be sealed: {e}");
                tracing::error!(order = %order, clip_id = %take.clip_id, error = %e, "clip lost");
                self.fail_clip(&take, &order, reason).await;
            }
        }
        self.wake_uploader.notify_one();
        // The queue changed: the sealed clip now waits for the cloud.
        self.publish_status().await;
    }

    /// Waits for every seal in progress and commits it (at shutdown).
    pub(super) async fn finish_sealing(&mut self) {
        while let Some(joined) = self.sealing.join_next().await {
            match joined {
                Ok(outcome) => self.on_sealed(outcome).await,
                Err(e) => {
                    tracing::error!(error = %e, "a seal task ended abnormally; start-up reconciliation will seal its clip")
                }
            }
        }
    }

    /// Records a sealed clip (ready for upload) and its `recording_stopped` event.
    pub(super) async fn commit_sealed(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        clip: &SealedClip,
        truncated: bool,
    ) {
        let truncated = truncated || clip.truncated;
        let duration_ms = i64::try_from(clip.duration.as_millis()).unwrap_or(i64::MAX);
        let ended_at = clip
            .started_at
            .and_then(|start| Timestamp::try_from(start + clip.duration).ok())
            .unwrap_or_else(Timestamp::now);
        let row = Sealed {
            path: clip.path.display().to_string(),
            size: i64::try_from(clip.size).unwrap_or(i64::MAX),
            sha256: clip.sha256.clone(),
            parts: clip.parts.clone(),
            duration_ms,
            ended_at: ended_at.to_string(),
            truncated,
        };
        let event = self.event_message(EventKind::RecordingStopped { truncated }, take, order);
        let clip_id = take.clip_id.as_str().to_owned();
        let result = self
            .spool
            .call(move |c| spool::announce(c, [&event], |tx| clips::seal(tx, &clip_id, &row)))
            .await;
        match result {
            Ok(()) => tracing::info!(
                order = %order,
                clip_id = %take.clip_id,
                camera = %take.camera,
                size = clip.size,
                duration_ms,
                truncated,
                "clip sealed and queued for upload"
            ),
            Err(e) => {
                tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a sealed clip; start-up reconciliation will")
            }
        }
        self.link.flush();
    }

    async fn abort_recording(&mut self, recording: &Recording, reason: Option<&str>) {
        Metrics::flag(&self.metrics.recording, false);
        for take in &recording.takes {
            if let Some(camera) = self.camera(&take.camera)
                && let Err(e) = camera.abort_recording().await
            {
                tracing::warn!(clip_id = %take.clip_id, error = %e, "aborting the recording");
            }
            let path = clip_path(&self.clip_dir, take.clip_id.as_str(), false);
            for file in [seal::part_path(&path), path] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "removing an aborted clip")
                    }
                }
            }
            tracing::info!(order = %recording.order, clip_id = %take.clip_id, reason = reason.unwrap_or(""), "recording aborted; the clip is discarded");
        }
    }

    async fn take_photos(&mut self, order: &str, takes: &[Take]) {
        let Ok(order_id) = order.parse::<capture_protocol::OrderId>() else {
            return;
        };
        let shots = takes.iter().map(|take| {
            let camera = self.camera(&take.camera).cloned();
            let path = clip_path(&self.clip_dir, take.clip_id.as_str(), true);
            let part_size = self.uploader_settings.part_size;
            async move {
                let result = match camera {
                    Some(camera) => camera.snapshot().await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                let written = match result {
                    Ok(snapshot) => tokio::task::spawn_blocking(move || {
                        snapshot.write_to(&path)?;
                        let digests = seal::digest_file(&path, part_size)?;
                        Ok(SealedClip {
                            path,
                            size: digests.size,
                            sha256: digests.sha256,
                            parts: digests.parts,
                            duration: Duration::ZERO,
                            frames: 1,
                            preroll: Duration::ZERO,
                            truncated: false,
                            started_at: Some(snapshot.captured_at),
                        })
                    })
                    .await
                    .unwrap_or_else(|e| Err(CaptureError::Gst(e.to_string()))),
                    Err(e) => Err(e),
                };
                (take, written)
            }
        });
        for (take, written) in futures::future::join_all(shots).await {
            match written {
                Ok(photo) => {
                    if let Some(at) = photo.started_at.and_then(|t| Timestamp::try_from(t).ok()) {
                        let clip_id = take.clip_id.as_str().to_owned();
                        let at = at.to_string();
                        let _ = self
                            .spool
                            .call(move |c| clips::set_start(c, &clip_id, &at, 0))
                            .await;
                    }
                    self.commit_photo(take, &order_id, &photo).await;
                }
                Err(e) => {
                    let reason = format!("camera {} could not take the photo: {e}", take.camera);
                    tracing::error!(order, clip_id = %take.clip_id, error = %e, "snapshot failed");
                    self.fail_clip(take, &order_id, reason).await;
                }
            }
        }
        self.wake_uploader.notify_one();
    }

    async fn commit_photo(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        photo: &SealedClip,
    ) {
        let row = Sealed {
            path: photo.path.display().to_string(),
            size: i64::try_from(photo.size).unwrap_or(i64::MAX),
            sha256: photo.sha256.clone(),
            parts: photo.parts.clone(),
            duration_ms: 0,
            ended_at: photo
                .started_at
                .and_then(|t| Timestamp::try_from(t).ok())
                .unwrap_or_else(Timestamp::now)
                .to_string(),
            truncated: false,
        };
        let clip_id = take.clip_id.as_str().to_owned();
        match self
            .spool
            .call(move |c| clips::seal(c, &clip_id, &row))
            .await
        {
            Ok(()) => {
                tracing::info!(order = %order, clip_id = %take.clip_id, camera = %take.camera, size = photo.size, "photo taken and queued for upload")
            }
            Err(e) => {
                tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a photo; start-up reconciliation will")
            }
        }
    }

    /// Marks a clip failed for good and announces it with a `clip_failed` event.
    pub(super) async fn fail_clip(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        reason: String,
    ) {
        let event = self.event_message(
            EventKind::ClipFailed {
                reason: reason.clone(),
            },
            take,
            order,
        );
        let clip_id = take.clip_id.as_str().to_owned();
        let result = self
            .spool
            .call(move |c| spool::announce(c, [&event], |tx| clips::fail(tx, &clip_id, &reason)))
            .await;
        if let Err(e) = result {
            tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a failed clip");
        }
        self.link.flush();
    }
}

/// The longest a start waits for a camera to end its previous clip: the longest post-roll
/// (60 s), the camera's grace for the last frames and its default EOS timeout.
const PREVIOUS_CLIP_END: Duration = Duration::from_secs(70);

/// A clip's seal, done off the daemon loop, for [`Daemon::on_sealed`].
#[derive(Debug)]
pub(super) struct SealOutcome {
    take: Take,
    order: capture_protocol::OrderId,
    truncated: bool,
    result: Result<SealedClip, CaptureError>,
}
