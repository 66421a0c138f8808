//! A camera's public face: [`Camera::start`], the [`CameraHandle`] the daemon holds, and the
//! [`CameraStatus`] it publishes. The work is done by the camera's actor (`actor/`): one
//! OS thread per camera owns its pipeline, its pre-roll ring, the recording in progress and
//! the pending snapshots.
//!
//! Why a plain thread and not a tokio task: GStreamer is thread-based (its callbacks come from
//! streaming threads, state changes block), the actor must wake up for frames and deadlines
//! whether or not a runtime is around, and a blocked state change must never stall the
//! daemon's async executor. The handle is still async-friendly: requests go in over a bounded
//! `std::sync::mpsc` channel (`try_send`, never blocking the caller), answers come back on
//! `tokio::sync::oneshot` channels (awaitable), and the camera's status is a
//! `tokio::sync::watch`. The same inbox carries the frames, JPEGs and bus messages that the
//! pipeline's callbacks forward, so the actor sees everything in one order and is the only
//! consumer of each bus; callbacks never block (a full inbox drops a frame and logs).
//!
//! Faults: a pipeline error, an EOS from the source, or no frame for a few seconds tears the
//! pipeline down and schedules a restart with backoff (`backoff.rs`); the error, typed
//! and naming the device, is in the status. A recording in progress is cut: its file is
//! finalised, sealed as truncated, and handed to the next `stop_recording`. One camera's
//! failure touches no other camera: each has its own thread, pipeline and inbox.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread;
use std::time::Duration;

use gstreamer as gst;
use tokio::sync::{oneshot, watch};

use super::actor::{Actor, Command, INBOX_CAPACITY, Msg};
use super::encoder::{EncoderKind, require_element};
use super::error::CaptureError;
use super::recorder::{RecordingRequest, RecordingStarted};
use super::seal::SealedClip;
use super::snapshot::Snapshot;
use super::spec::CameraSpec;
use super::status::{CameraState, CameraStatus};

/// Entry point: starts cameras.
#[derive(Debug)]
pub struct Camera;

impl Camera {
    /// Checks `spec`, picks the encoder, and starts the camera's actor, which brings the
    /// pipeline up and keeps it up (restarting with backoff). Fails only for what a restart
    /// cannot fix: an invalid spec or a missing GStreamer element. A missing or busy device is
    /// reported by [`CameraHandle::wait_until_running`] and in the status.
    pub fn start(spec: CameraSpec) -> Result<CameraHandle, CaptureError> {
        gst::init()?;
        spec.validate()?;
        let kind = EncoderKind::resolve(&spec)?;
        for element in [
            "h264parse",
            "mp4mux",
            "qtdemux",
            "appsink",
            "appsrc",
            spec.source.element(),
        ] {
            require_element(element)?;
        }
        if kind != EncoderKind::Passthrough {
            require_element("jpegenc")?;
        }
        if spec.overlay {
            require_element("timeoverlay")?;
        }
        tracing::info!(camera = %spec.name, source = %spec.source, encoder = %kind, "camera encoder chosen");

        let (tx, rx) = sync_channel(INBOX_CAPACITY);
        let status = CameraStatus {
            camera: spec.name.clone(),
            device: spec.source.device(),
            encoder: kind,
            state: CameraState::Starting,
            last_error: None,
            restarts: 0,
            recording: None,
            running_since: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let name = spec.name.clone();
        let actor = Actor::new(spec, kind, tx.clone(), rx, status_tx);
        thread::Builder::new()
            .name(format!("camera-{name}"))
            .spawn(move || actor.run())
            .map_err(|e| CaptureError::Gst(format!("spawning the camera thread: {e}")))?;
        Ok(CameraHandle {
            name,
            encoder: kind,
            tx: tx.clone(),
            status: status_rx,
            _guard: Arc::new(ShutdownOnDrop(tx)),
        })
    }
}

/// A cloneable handle to one camera's actor. Dropping the last one shuts the camera down.
#[derive(Debug, Clone)]
pub struct CameraHandle {
    name: String,
    encoder: EncoderKind,
    tx: SyncSender<Msg>,
    status: watch::Receiver<CameraStatus>,
    _guard: Arc<ShutdownOnDrop>,
}

#[derive(Debug)]
struct ShutdownOnDrop(SyncSender<Msg>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.try_send(Msg::Command(Command::Shutdown(None)));
    }
}

impl CameraHandle {
    /// The camera's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The encoder the pipeline uses (for the status).
    pub fn encoder_kind(&self) -> EncoderKind {
        self.encoder
    }

    /// The current status.
    pub fn status(&self) -> CameraStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<CameraStatus> {
        self.status.clone()
    }

    /// Waits until frames flow. Returns the failure (typed, naming the device) as soon as the
    /// pipeline fails, or at once if it is down (restarting) when called, or a timeout. To wait
    /// for a recovery, watch [`Self::subscribe`] instead.
    pub async fn wait_until_running(&self, timeout: Duration) -> Result<(), CaptureError> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                matches!(s.state, CameraState::Running | CameraState::Stopped)
                    || (matches!(s.state, CameraState::Restarting { .. }) && s.last_error.is_some())
            }),
        )
        .await;
        let status = self.status();
        match (waited, status.state) {
            (Ok(Ok(_)), CameraState::Running) => Ok(()),
            (Ok(Ok(_)), CameraState::Restarting { .. }) => {
                Err(status.last_error.unwrap_or(CaptureError::Unavailable {
                    camera: self.name.clone(),
                    cause: None,
                }))
            }
            (Err(_), _) => Err(status.last_error.unwrap_or(CaptureError::Timeout {
                what: format!("camera {:?} to deliver frames", self.name),
                waited: timeout,
            })),
            _ => Err(CaptureError::Closed {
                camera: self.name.clone(),
            }),
        }
    }

    /// Starts a clip, pre-roll included. Fails when already recording or not running.
    pub async fn start_recording(
        &self,
        request: RecordingRequest,
    ) -> Result<RecordingStarted, CaptureError> {
        let asked = std::time::Instant::now();
        self.call(|reply| Command::Start(Box::new(request), asked, reply))
            .await
    }

    /// Stops the clip after the post-roll, waits for the file to be finalised (bounded by
    /// `eos_timeout`) and returns it sealed. After a camera failure cut the recording, returns
    /// that cut clip (`truncated`).
    ///
    /// The stop is handed to the camera when this is called, not when the future is first
    /// polled: a request made after it (a start) reaches the camera after it, wherever the
    /// future is awaited. The future owns nothing of the handle, so it can be awaited on
    /// another task (the daemon does: sealing a long clip takes minutes on a Pi).
    pub fn stop_recording(
        &self,
    ) -> impl Future<Output = Result<SealedClip, CaptureError>> + Send + 'static {
        let asked = std::time::Instant::now();
        self.send(move |reply| Command::Stop(asked, reply))
    }

    /// Waits until the camera holds no recording (a stop's post-roll and EOS are over; its
    /// seal may still run), up to `timeout`; returns whether it is free for a new one.
    pub async fn wait_until_not_recording(&self, timeout: Duration) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.recording.is_none()))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Discards the clip in progress: nothing is kept on disk.
    pub async fn abort_recording(&self) -> Result<(), CaptureError> {
        self.call(Command::Abort).await
    }

    /// A JPEG of the current frame.
    pub async fn snapshot(&self) -> Result<Snapshot, CaptureError> {
        self.call(Command::Snapshot).await
    }

    /// Stops the camera and waits for it. An open recording is finalised (EOS) and left as a
    /// complete `*.part` for [`super::seal::seal_part_file`]; call [`Self::stop_recording`] first to
    /// get it sealed now.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .tx
            .try_send(Msg::Command(Command::Shutdown(Some(reply))))
            .is_ok()
        {
            let _ = done.await;
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, CaptureError>>) -> Command,
    ) -> Result<T, CaptureError> {
        self.send(command).await
    }

    /// Hands `command` to the actor now; the future resolves to its answer.
    fn send<T: Send + 'static>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, CaptureError>>) -> Command,
    ) -> impl Future<Output = Result<T, CaptureError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let camera = self.name.clone();
        let sent = match self.tx.try_send(Msg::Command(command(reply))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(CaptureError::Timeout {
                what: format!("camera {camera:?} to accept a request (its inbox is full)"),
                waited: Duration::ZERO,
            }),
            Err(TrySendError::Disconnected(_)) => Err(CaptureError::Closed {
                camera: camera.clone(),
            }),
        };
        async move {
            sent?;
            answer
                .await
                .unwrap_or_else(|_| Err(CaptureError::Closed { camera }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::capture::source::Source;

    impl CameraHandle {
        fn inject_fault(&self, error: CaptureError) {
            self.tx
                .try_send(Msg::Command(Command::Fault(error)))
                .unwrap();
        }

        fn stall(&self, busy: Duration) {
            self.tx
                .try_send(Msg::Command(Command::Stall(busy)))
                .unwrap();
        }
    }

    /// A 320x240 test camera with no pre-roll, running.
    async fn running_camera(name: &str, postroll: Duration) -> CameraHandle {
        let mut spec = CameraSpec::new(name, Source::Test);
        spec.resolution = "320x240".parse().unwrap();
        spec.preroll = Duration::ZERO;
        spec.postroll = postroll;
        let camera = Camera::start(spec).unwrap();
        camera
            .wait_until_running(Duration::from_secs(20))
            .await
            .unwrap();
        camera
    }

    fn request(dir: &tempfile::TempDir, clip_id: &str, order: &str) -> RecordingRequest {
        RecordingRequest {
            clip_id: clip_id.into(),
            order: order.into(),
            station: "pack-01".into(),
            dir: dir.path().to_path_buf(),
            preroll: None,
            postroll: None,
            part_size: crate::digest::DEFAULT_PART_SIZE,
        }
    }

    #[tokio::test]
    async fn a_stop_that_waits_behind_a_busy_camera_ends_the_clip_when_it_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let postroll = Duration::from_millis(500);
        let camera = running_camera("busy", postroll).await;
        let asked_start = std::time::Instant::now();
        camera
            .start_recording(request(&dir, "asked", "SO-6"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The camera is busy for 3 s; the stop asked now waits in its inbox behind the frames.
        let stall = Duration::from_secs(3);
        camera.stall(stall);
        let recorded = asked_start.elapsed();
        let clip = camera.stop_recording().await.unwrap();
        assert!(!clip.truncated);
        assert!(
            clip.duration <= recorded + postroll + Duration::from_millis(500),
            "the clip runs {:?}: it ends {postroll:?} after the stop was asked ({recorded:?} \
             after the start), not {stall:?} later when the camera got to it",
            clip.duration
        );
        assert!(
            clip.duration >= Duration::from_millis(500),
            "{:?}",
            clip.duration
        );
        camera.shutdown().await;
    }

    #[tokio::test]
    async fn a_camera_failure_cuts_the_clip_and_the_pipeline_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let camera = running_camera("flaky", CameraSpec::new("flaky", Source::Test).postroll).await;
        let started = camera
            .start_recording(request(&dir, "cut-by-fault", "SO-5"))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&started.part).map_or(0, |m| m.len()) < 20_000 {
            assert!(std::time::Instant::now() < deadline, "no fragment written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        camera.inject_fault(CaptureError::DeviceLost {
            camera: "flaky".into(),
            device: "videotestsrc".into(),
            detail: "unplugged (simulated)".into(),
        });
        let clip = camera.stop_recording().await.unwrap();
        assert!(
            clip.truncated,
            "a clip cut by a camera failure is marked truncated"
        );
        assert!(clip.frames > 0);
        assert_eq!(clip.path, dir.path().join("cut-by-fault.mp4"));
        assert!(matches!(
            camera.status().last_error,
            Some(CaptureError::DeviceLost { .. })
        ));

        // Restarted with backoff, the camera records again. (`wait_until_running` would return
        // the failure at once while the camera is down: watch the status instead.)
        let mut status = camera.subscribe();
        tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| s.state == CameraState::Running),
        )
        .await
        .expect("the camera came back")
        .unwrap();
        assert!(camera.status().restarts >= 1);
        camera
            .start_recording(request(&dir, "after-restart", "SO-5"))
            .await
            .unwrap();
        let clip = camera.stop_recording().await.unwrap();
        assert!(!clip.truncated && clip.frames > 0);
        camera.shutdown().await;
    }
}
