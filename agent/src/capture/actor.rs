//! The camera actor: the thread that owns one camera's pipeline, its pre-roll ring, the
//! recording in progress and the pending snapshots, driven by one inbox.
//!
//! The loop: receive a message (a command from a [`super::CameraHandle`], an encoded frame, a
//! JPEG, a bus message of the camera or of the clip writer) or time out after [`TICK`]; handle
//! it; check deadlines (first frame, stalled source, post-roll, EOS, snapshots, restart).
//! Every element state change happens here; GStreamer's callbacks only forward.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::backoff::{Backoff, HEALTHY_AFTER};
use super::camera::{CameraState, CameraStatus};
use super::encoder::EncoderKind;
use super::error::CaptureError;
use super::pipeline::{CameraPipeline, PipelineCallbacks, overlay_label};
use super::recorder::{Recording, RecordingRequest, RecordingStarted, Stopping};
use super::ring::PrerollRing;
use super::seal::{self, SealedClip, part_path};
use super::snapshot::{SNAPSHOT_TIMEOUT, Snapshot};
use super::spec::CameraSpec;
use super::writer::ClipWriter;

/// Messages the actor's inbox holds; bounded so a stuck actor cannot eat the memory.
pub(super) const INBOX_CAPACITY: usize = 1024;
/// How often deadlines are checked when nothing else happens.
const TICK: Duration = Duration::from_millis(100);
/// A starting pipeline must deliver its first frame within this (RTSP connects, USB enumerates).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the overlay's UTC clock is re-anchored to the wall clock.
const REANCHOR_EVERY: Duration = Duration::from_secs(10);
/// Grace after `stop + postroll` for the last frames to come out of the encoder.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub(super) type Reply<T> = oneshot::Sender<Result<T, CaptureError>>;

#[derive(Debug)]
pub(super) enum Command {
    Start(Box<RecordingRequest>, Reply<RecordingStarted>),
    Stop(Reply<SealedClip>),
    Abort(Reply<()>),
    Snapshot(Reply<Snapshot>),
    Shutdown(Option<oneshot::Sender<()>>),
    /// Tests only: behave as if the pipeline had failed with this error.
    #[cfg(test)]
    Fault(CaptureError),
}

#[derive(Debug)]
pub(super) enum Msg {
    Command(Command),
    /// An H.264 access unit from pipeline `generation`.
    Encoded {
        generation: u64,
        sample: gst::Sample,
    },
    /// A JPEG from the snapshot branch of pipeline `generation`.
    Jpeg {
        generation: u64,
        sample: gst::Sample,
    },
    /// A bus message of pipeline `generation`.
    Bus {
        generation: u64,
        message: gst::Message,
    },
    /// A bus message of recording `id`'s writer.
    Writer {
        id: u64,
        message: gst::Message,
    },
    /// A clip cut by a camera failure, sealed, for the next stop.
    Cut(Result<SealedClip, CaptureError>),
}

#[derive(Debug)]
enum Phase {
    Starting { since: Instant },
    Running { since: Instant },
    Down { retry_at: Instant },
}

/// A recording cut without a stop (camera failure, writer failure) on its way to the next stop.
#[derive(Debug)]
enum CutClip {
    None,
    /// Being sealed; a stop that arrives meanwhile waits here.
    Sealing {
        waiting: Option<Reply<SealedClip>>,
    },
    Ready(Result<SealedClip, CaptureError>),
}

#[derive(Debug)]
struct PendingSnapshot {
    /// Frames captured before this running time are too old for the request.
    not_before: gst::ClockTime,
    deadline: Instant,
    reply: Reply<Snapshot>,
}

pub(super) struct Actor {
    spec: CameraSpec,
    kind: EncoderKind,
    tx: SyncSender<Msg>,
    rx: Receiver<Msg>,
    status: watch::Sender<CameraStatus>,
    /// Incremented per pipeline built, so late messages of a torn-down pipeline are ignored.
    generation: u64,
    pipeline: Option<CameraPipeline>,
    phase: Phase,
    backoff: Backoff,
    /// Set when a pipeline failed to start before its bus said why: the next error message
    /// of that generation replaces the generic error in the status.
    refine_error_of: Option<u64>,
    ring: PrerollRing,
    caps: Option<gst::Caps>,
    last_frame: Instant,
    epoch: Option<OffsetDateTime>,
    last_anchor: Instant,
    last_tick: Instant,
    recording: Option<Recording>,
    next_recording_id: u64,
    /// A clip cut by a pipeline failure (or a failed writer), for the next stop.
    cut_clip: CutClip,
    snapshots: Vec<PendingSnapshot>,
    snapshot_branch_open: bool,
    shutdown: Option<Option<oneshot::Sender<()>>>,
}

impl Actor {
    pub(super) fn new(
        spec: CameraSpec,
        kind: EncoderKind,
        tx: SyncSender<Msg>,
        rx: Receiver<Msg>,
        status: watch::Sender<CameraStatus>,
    ) -> Self {
        let keep = spec.preroll;
        let now = Instant::now();
        Self {
            spec,
            kind,
            tx,
            rx,
            status,
            generation: 0,
            pipeline: None,
            phase: Phase::Starting { since: now },
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            refine_error_of: None,
            ring: PrerollRing::new(keep),
            caps: None,
            last_frame: now,
            epoch: None,
            last_anchor: now,
            last_tick: now,
            recording: None,
            next_recording_id: 0,
            cut_clip: CutClip::None,
            snapshots: Vec::new(),
            snapshot_branch_open: false,
            shutdown: None,
        }
    }

    pub(super) fn run(mut self) {
        let _span = tracing::info_span!("camera", camera = %self.spec.name).entered();
        self.start_pipeline();
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.last_tick.elapsed() >= TICK / 2 {
                self.last_tick = Instant::now();
                self.tick();
            }
            if self.shutdown.is_some() && self.recording.is_none() {
                break;
            }
        }
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.stop();
        }
        self.status.send_modify(|s| {
            s.state = CameraState::Stopped;
            s.recording = None;
        });
        tracing::info!("camera stopped");
        if let Some(Some(done)) = self.shutdown.take() {
            let _ = done.send(());
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Command(command) => self.on_command(command),
            Msg::Encoded { generation, sample } if generation == self.generation => {
                self.on_encoded(&sample)
            }
            Msg::Jpeg { generation, sample } if generation == self.generation => {
                self.on_jpeg(&sample)
            }
            Msg::Bus {
                generation,
                message,
            } => self.on_bus(generation, &message),
            Msg::Writer { id, message } => self.on_writer_message(id, &message),
            Msg::Cut(result) => match std::mem::replace(&mut self.cut_clip, CutClip::None) {
                CutClip::Sealing {
                    waiting: Some(reply),
                } => {
                    let _ = reply.send(result);
                }
                _ => self.cut_clip = CutClip::Ready(result),
            },
            Msg::Encoded { .. } | Msg::Jpeg { .. } => {} // From a torn-down pipeline.
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(request, reply) => {
                let result = self.start_recording(*request);
                let _ = reply.send(result);
            }
            Command::Stop(reply) => self.stop_recording(reply),
            Command::Abort(reply) => {
                let result = self.abort_recording();
                let _ = reply.send(result);
            }
            Command::Snapshot(reply) => self.snapshot(reply),
            #[cfg(test)]
            Command::Fault(error) => self.fail_pipeline(error),
            Command::Shutdown(done) => {
                tracing::info!("camera shutting down");
                if self.shutdown.is_none() {
                    self.shutdown = Some(done);
                }
                if let Some(rec) = &mut self.recording
                    && rec.stopping.is_none()
                {
                    rec.stopping = Some(Stopping {
                        until: gst::ClockTime::ZERO,
                        deadline: Instant::now() + self.spec.eos_timeout,
                        eos_sent: false,
                        reply: None,
                    });
                    self.end_clip();
                }
            }
        }
    }

    // --- pipeline life -------------------------------------------------------------------

    fn start_pipeline(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.phase = Phase::Starting {
            since: Instant::now(),
        };
        self.status.send_modify(|s| s.state = CameraState::Starting);
        if let Some(device) = self.spec.source.missing_device() {
            let error = CaptureError::DeviceNotFound {
                camera: self.spec.name.clone(),
                device: device.display().to_string(),
            };
            self.fail_pipeline(error);
            return;
        }
        let forward = |make: fn(u64, gst::Sample) -> Msg, what: &'static str| {
            let tx = self.tx.clone();
            Box::new(move |sample: gst::Sample| {
                if let Err(TrySendError::Full(_)) = tx.try_send(make(generation, sample)) {
                    tracing::warn!(what, "camera inbox full: dropped a frame");
                }
            }) as Box<dyn Fn(gst::Sample) + Send + Sync>
        };
        let tx = self.tx.clone();
        let callbacks = PipelineCallbacks {
            on_encoded: forward(
                |generation, sample| Msg::Encoded { generation, sample },
                "encoded",
            ),
            on_jpeg: forward(
                |generation, sample| Msg::Jpeg { generation, sample },
                "jpeg",
            ),
            on_message: Box::new(move |message| {
                use gst::MessageView::{Eos, Error, Warning};
                if matches!(message.view(), Error(_) | Eos(_) | Warning(_)) {
                    let _ = tx.try_send(Msg::Bus {
                        generation,
                        message: message.clone(),
                    });
                }
            }),
        };
        let pipeline =
            match CameraPipeline::build(&self.spec, self.kind, &self.idle_label(), callbacks) {
                Ok(p) => p,
                Err(e) => {
                    self.fail_pipeline(e);
                    return;
                }
            };
        let started = pipeline.pipeline.set_state(gst::State::Playing);
        self.pipeline = Some(pipeline);
        if let Err(e) = started {
            self.refine_error_of = Some(generation);
            let error = CaptureError::Pipeline {
                camera: self.spec.name.clone(),
                device: self.spec.source.device(),
                detail: format!("could not start: {e}"),
            };
            self.fail_pipeline(error);
        }
    }

    /// Tears the pipeline down, cuts a recording in progress and schedules a restart.
    fn fail_pipeline(&mut self, error: CaptureError) {
        tracing::error!(error = %error, "camera pipeline failed");
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.stop();
        }
        self.ring.clear();
        self.caps = None;
        self.snapshot_branch_open = false;
        for pending in self.snapshots.drain(..) {
            let _ = pending.reply.send(Err(CaptureError::Unavailable {
                camera: self.spec.name.clone(),
                cause: Some(Box::new(error.clone())),
            }));
        }
        if let Some(rec) = &mut self.recording {
            rec.cut = true;
            if rec.stopping.as_ref().is_none_or(|s| !s.eos_sent) {
                self.end_clip();
            }
        }
        let delay = self.backoff.next_delay();
        let failures = self.backoff.failures();
        self.phase = Phase::Down {
            retry_at: Instant::now() + delay,
        };
        self.status.send_modify(|s| {
            s.state = CameraState::Restarting {
                failures,
                retry_in: delay,
            };
            s.running_since = None;
            s.last_error = Some(error);
            s.restarts += 1;
        });
    }

    fn running_pipeline(&self) -> Result<&CameraPipeline, CaptureError> {
        match (&self.phase, &self.pipeline) {
            (Phase::Running { .. }, Some(p)) => Ok(p),
            _ => Err(CaptureError::Unavailable {
                camera: self.spec.name.clone(),
                cause: self.status.borrow().last_error.clone().map(Box::new),
            }),
        }
    }

    fn on_bus(&mut self, generation: u64, message: &gst::Message) {
        match message.view() {
            gst::MessageView::Error(err) => {
                let error = self.classify(err);
                if generation == self.generation && self.pipeline.is_some() {
                    self.fail_pipeline(error);
                } else if self.refine_error_of == Some(generation) {
                    self.refine_error_of = None;
                    tracing::error!(error = %error, "camera pipeline failed to start");
                    self.status.send_modify(|s| s.last_error = Some(error));
                }
            }
            gst::MessageView::Eos(_)
                if generation == self.generation && self.pipeline.is_some() =>
            {
                self.fail_pipeline(CaptureError::DeviceLost {
                    camera: self.spec.name.clone(),
                    device: self.spec.source.device(),
                    detail: "the source ended its stream".into(),
                });
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(warning = %w.error(), debug = ?w.debug(), "camera pipeline warning");
            }
            _ => {}
        }
    }

    /// Maps a GStreamer error to a typed error naming the device.
    fn classify(&self, err: &gst::message::Error) -> CaptureError {
        let camera = self.spec.name.clone();
        let device = self.spec.source.device();
        let detail = match err.debug() {
            Some(debug) => format!("{} ({debug})", err.error()),
            None => err.error().to_string(),
        };
        let running = matches!(self.phase, Phase::Running { .. });
        match err.error().kind::<gst::ResourceError>() {
            Some(gst::ResourceError::NotFound) => CaptureError::DeviceNotFound { camera, device },
            Some(gst::ResourceError::Busy) => CaptureError::DeviceBusy { camera, device },
            Some(
                gst::ResourceError::Read
                | gst::ResourceError::Failed
                | gst::ResourceError::NoSpaceLeft,
            ) if running => CaptureError::DeviceLost {
                camera,
                device,
                detail,
            },
            _ => CaptureError::Pipeline {
                camera,
                device,
                detail,
            },
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        match self.phase {
            Phase::Starting { since }
                if self.pipeline.is_some() && now - since > FIRST_FRAME_TIMEOUT =>
            {
                self.fail_pipeline(CaptureError::DeviceLost {
                    camera: self.spec.name.clone(),
                    device: self.spec.source.device(),
                    detail: format!("no frame within {FIRST_FRAME_TIMEOUT:?} of starting"),
                });
            }
            Phase::Running { since } => {
                let stall = (self.spec.keyframe_interval * 3).max(Duration::from_secs(5));
                if now - self.last_frame > stall {
                    self.fail_pipeline(CaptureError::DeviceLost {
                        camera: self.spec.name.clone(),
                        device: self.spec.source.device(),
                        detail: format!("no frame for {stall:?}"),
                    });
                } else if now - since > HEALTHY_AFTER && self.backoff.failures() > 0 {
                    self.backoff.reset();
                }
                if now - self.last_anchor > REANCHOR_EVERY {
                    self.anchor_overlay();
                }
            }
            Phase::Down { retry_at } if now >= retry_at && self.shutdown.is_none() => {
                tracing::info!("restarting camera pipeline");
                self.start_pipeline();
            }
            _ => {}
        }
        self.tick_recording(now);
        self.tick_snapshots(now);
    }

    fn anchor_overlay(&mut self) {
        self.last_anchor = Instant::now();
        if let Some(pipeline) = &self.pipeline
            && let Some(epoch) = pipeline.anchor_overlay_clock()
        {
            self.epoch = Some(epoch);
        }
    }

    fn idle_label(&self) -> String {
        self.spec.name.clone()
    }

    // --- frames --------------------------------------------------------------------------

    fn on_encoded(&mut self, sample: &gst::Sample) {
        if self.pipeline.is_none() {
            return;
        }
        let Some(buffer) = sample.buffer() else {
            return;
        };
        let Some(running) = running_time_of(sample) else {
            return;
        };
        // A hardware encoder's or camera's buffers come from a small pool: copy what is kept.
        let mut buffer = if self.kind == EncoderKind::X264 {
            buffer.to_owned()
        } else {
            match buffer.copy_deep() {
                Ok(b) => b,
                Err(_) => return,
            }
        };
        // Encoders shift timestamps (x264 by 1000 h, for negative DTS) and say so in the segment:
        // keep frames in running time, the clock of every command.
        if let Some(pts) = buffer.pts()
            && pts != running
        {
            let b = buffer.make_mut();
            let dts = b.dts().map(|dts| (dts + running).saturating_sub(pts));
            b.set_pts(running);
            b.set_dts(dts);
        }
        let caps_changed = match (sample.caps(), &self.caps) {
            (Some(new), Some(old)) => new.as_ptr() != old.as_ptr(),
            (Some(_), None) => true,
            _ => false,
        };
        if caps_changed {
            self.caps = sample.caps_owned();
        }
        self.last_frame = Instant::now();
        if let Phase::Starting { .. } = self.phase {
            self.phase = Phase::Running {
                since: Instant::now(),
            };
            self.anchor_overlay();
            tracing::info!(encoder = %self.kind, "camera running");
            self.status.send_modify(|s| {
                s.state = CameraState::Running;
                s.running_since = Some(Instant::now());
            });
        }
        self.ring.push(buffer.clone());
        let Some(rec) = &mut self.recording else {
            return;
        };
        if rec.cut || rec.stopping.as_ref().is_some_and(|s| s.eos_sent) {
            return;
        }
        match rec.offer(&buffer) {
            Ok(false) => {}
            Ok(true) => self.end_clip(),
            Err(e) => {
                tracing::error!(error = %e, "recording failed");
                rec.cut = true;
                self.end_clip();
            }
        }
    }

    fn on_jpeg(&mut self, sample: &gst::Sample) {
        let Some(pts) = running_time_of(sample) else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.snapshots.drain(..).partition(|p| pts >= p.not_before);
        self.snapshots = waiting;
        if !ready.is_empty() {
            let captured_at = self.utc_of(pts);
            let snapshot = Snapshot::from_jpeg_sample(sample, captured_at);
            for pending in ready {
                let _ = pending.reply.send(snapshot.clone());
            }
        }
        if self.snapshots.is_empty() {
            self.close_snapshot_branch();
        }
    }

    fn utc_of(&self, running: gst::ClockTime) -> OffsetDateTime {
        match self.epoch {
            Some(epoch) => epoch + time::Duration::nanoseconds(running.nseconds() as i64),
            None => OffsetDateTime::now_utc(),
        }
    }

    // --- snapshots -------------------------------------------------------------------------

    fn snapshot(&mut self, reply: Reply<Snapshot>) {
        let pipeline = match self.running_pipeline() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let now = pipeline.running_time().unwrap_or(gst::ClockTime::ZERO);
        if self.kind == EncoderKind::Passthrough {
            let keyframe = self.ring.newest_keyframe().cloned();
            let sample = keyframe
                .zip(self.caps.clone())
                .map(|(b, c)| gst::Sample::builder().buffer(&b).caps(&c).build());
            let captured_at = self.utc_of(keyframe_pts(&sample).unwrap_or(now));
            thread::spawn(move || {
                let result = match sample {
                    Some(sample) => Snapshot::from_keyframe(&sample, captured_at),
                    None => Err(CaptureError::Gst("no keyframe received yet".into())),
                };
                let _ = reply.send(result);
            });
            return;
        }
        let frame = Duration::from_secs_f64(1.0 / f64::from(self.spec.fps));
        let not_before = now.saturating_sub(gst::ClockTime::from_nseconds(frame.as_nanos() as u64));
        self.snapshots.push(PendingSnapshot {
            not_before,
            deadline: Instant::now() + SNAPSHOT_TIMEOUT,
            reply,
        });
        if !self.snapshot_branch_open
            && let Some(pipeline) = &self.pipeline
        {
            self.snapshot_branch_open = pipeline.set_snapshot_branch(true);
        }
    }

    fn tick_snapshots(&mut self, now: Instant) {
        let (expired, waiting): (Vec<_>, Vec<_>) =
            self.snapshots.drain(..).partition(|p| now >= p.deadline);
        self.snapshots = waiting;
        for pending in expired {
            let _ = pending.reply.send(Err(CaptureError::Timeout {
                what: format!("a frame for a snapshot of camera {:?}", self.spec.name),
                waited: SNAPSHOT_TIMEOUT,
            }));
        }
        if self.snapshots.is_empty() && self.snapshot_branch_open {
            self.close_snapshot_branch();
        }
    }

    fn close_snapshot_branch(&mut self) {
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_snapshot_branch(false);
        }
        self.snapshot_branch_open = false;
    }

    // --- recordings ------------------------------------------------------------------------

    fn start_recording(
        &mut self,
        request: RecordingRequest,
    ) -> Result<RecordingStarted, CaptureError> {
        request.validate(&self.spec.name)?;
        if let Some(rec) = &self.recording {
            return Err(CaptureError::AlreadyRecording {
                camera: self.spec.name.clone(),
                path: rec.part(),
            });
        }
        let now = self.running_pipeline()?.running_time();
        let unavailable = || CaptureError::Unavailable {
            camera: self.spec.name.clone(),
            cause: None,
        };
        let caps = self.caps.clone().ok_or_else(unavailable)?;
        let now = now.ok_or_else(unavailable)?;
        if let CutClip::Ready(old) = std::mem::replace(&mut self.cut_clip, CutClip::None) {
            tracing::warn!(clip = ?old, "a cut clip was never collected by a stop");
        }

        let id = self.next_recording_id;
        self.next_recording_id += 1;
        let pipeline = self.running_pipeline()?;
        let part = part_path(&request.output());
        let tx = self.tx.clone();
        let on_message = Box::new(move |message: &gst::Message| {
            if matches!(
                message.view(),
                gst::MessageView::Eos(_) | gst::MessageView::Error(_)
            ) {
                let _ = tx.try_send(Msg::Writer {
                    id,
                    message: message.clone(),
                });
            }
        });
        let frame = Duration::from_secs_f64(1.0 / f64::from(self.spec.fps));
        let writer = ClipWriter::create(&part, &caps, frame, Some(on_message))?;
        let label = overlay_label(&request.order, &request.station, &self.spec.name);
        let preroll = request
            .preroll
            .unwrap_or(self.spec.preroll)
            .min(self.spec.preroll);
        let (order, clip_id) = (request.order.clone(), request.clip_id.clone());
        let mut rec = Recording::new(id, request, writer, now, self.epoch);
        if !preroll.is_zero() {
            let target =
                now.saturating_sub(gst::ClockTime::from_nseconds(preroll.as_nanos() as u64));
            if let Some(start) = self.ring.start_index(target) {
                for buffer in self.ring.frames_from(start) {
                    rec.offer(buffer)?;
                }
            }
        }
        if rec.waiting_for_keyframe {
            pipeline.request_keyframe();
        }
        pipeline.set_overlay_text(&label);
        let facts = rec.facts(false);
        tracing::info!(%order, %clip_id, part = %part.display(), preroll_ms = facts.preroll.as_millis() as u64, "recording started");
        self.recording = Some(rec);
        self.status
            .send_modify(|s| s.recording = Some(part.clone()));
        Ok(RecordingStarted {
            part,
            preroll: facts.preroll,
            at: OffsetDateTime::now_utc(),
        })
    }

    fn stop_recording(&mut self, reply: Reply<SealedClip>) {
        let camera = self.spec.name.clone();
        let now = self.pipeline.as_ref().and_then(|p| p.running_time());
        let Some(rec) = &mut self.recording else {
            match std::mem::replace(&mut self.cut_clip, CutClip::None) {
                CutClip::Ready(result) => {
                    let _ = reply.send(result);
                }
                CutClip::Sealing { waiting: None } => {
                    self.cut_clip = CutClip::Sealing {
                        waiting: Some(reply),
                    }
                }
                other => {
                    self.cut_clip = other;
                    let _ = reply.send(Err(CaptureError::NotRecording { camera }));
                }
            }
            return;
        };
        if let Some(stopping) = &mut rec.stopping {
            // Already ending: a cut (camera failure, shutdown) has no one waiting yet; a stop
            // in progress has.
            match stopping.reply {
                None => stopping.reply = Some(reply),
                Some(_) => {
                    let _ = reply.send(Err(CaptureError::NotRecording { camera }));
                }
            }
            return;
        }
        let postroll = rec.request.postroll.unwrap_or(self.spec.postroll);
        let until = now.unwrap_or(gst::ClockTime::ZERO)
            + gst::ClockTime::from_nseconds(postroll.as_nanos() as u64);
        tracing::info!(order = %rec.request.order, postroll_ms = postroll.as_millis() as u64, "recording stopping");
        rec.stopping = Some(Stopping {
            until,
            deadline: Instant::now() + postroll + STOP_GRACE,
            eos_sent: false,
            reply: Some(reply),
        });
        if rec.cut || now.is_none() || postroll.is_zero() {
            self.end_clip();
        }
    }

    /// Sends EOS to the recording's writer; sealing follows its EOS message.
    fn end_clip(&mut self) {
        let Some(rec) = &mut self.recording else {
            return;
        };
        let eos_timeout = self.spec.eos_timeout;
        let stopping = rec.stopping.get_or_insert_with(|| Stopping {
            until: gst::ClockTime::ZERO,
            deadline: Instant::now(),
            eos_sent: false,
            reply: None,
        });
        if stopping.eos_sent {
            return;
        }
        stopping.eos_sent = true;
        stopping.deadline = Instant::now() + eos_timeout;
        rec.writer.end();
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
    }

    fn tick_recording(&mut self, now: Instant) {
        let Some(rec) = &self.recording else { return };
        let Some(stopping) = &rec.stopping else {
            return;
        };
        if now < stopping.deadline {
            return;
        }
        if stopping.eos_sent {
            tracing::warn!(timeout = ?self.spec.eos_timeout, "the clip writer did not finish: sealing what is on disk");
            self.finalize(false);
        } else {
            tracing::warn!("no frame reached the end of the post-roll: ending the clip now");
            self.end_clip();
        }
    }

    fn on_writer_message(&mut self, id: u64, message: &gst::Message) {
        if self.recording.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        match message.view() {
            gst::MessageView::Eos(_) => self.finalize(true),
            gst::MessageView::Error(err) => {
                tracing::error!(error = %err.error(), "clip writer failed");
                self.finalize(false);
            }
            _ => {}
        }
    }

    /// Closes the writer and seals the clip on a separate thread (hashing a long clip takes
    /// seconds; the camera must keep taking frames). `clean`: mp4mux finished the file.
    fn finalize(&mut self, clean: bool) {
        let Some(rec) = self.recording.take() else {
            return;
        };
        rec.writer.close();
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
        self.status.send_modify(|s| s.recording = None);
        let part = rec.part();
        if self.shutdown.is_some() && rec.stopping.as_ref().is_none_or(|s| s.reply.is_none()) {
            tracing::info!(part = %part.display(), "shutdown: clip left as a part file to seal at start-up");
            return;
        }
        let facts = rec.facts(rec.cut || !clean);
        let output = rec.request.output();
        let part_size = rec.request.part_size;
        let reply = rec.stopping.and_then(|s| s.reply);
        let tx = self.tx.clone();
        let order = rec.request.order.clone();
        let no_frames = rec.writer.frames() == 0;
        drop(rec.writer);
        if reply.is_none() {
            self.cut_clip = CutClip::Sealing { waiting: None };
        }
        let spawned = thread::Builder::new()
            .name(format!("seal-{}", self.spec.name))
            .spawn(move || {
                let result = if no_frames {
                    let _ = std::fs::remove_file(&part);
                    Err(CaptureError::Unplayable {
                        path: part.clone(),
                        reason: "no frame was recorded".into(),
                    })
                } else if clean {
                    seal::finish(&part, &output, facts, part_size)
                } else {
                    seal::seal_part_file(&part, part_size).map(|sealed| SealedClip {
                        preroll: facts.preroll,
                        started_at: facts.started_at,
                        ..sealed
                    })
                };
                match &result {
                    Ok(clip) => tracing::info!(
                        %order,
                        path = %clip.path.display(),
                        size = clip.size,
                        duration_ms = clip.duration.as_millis() as u64,
                        truncated = clip.truncated,
                        "clip sealed"
                    ),
                    Err(e) => tracing::error!(%order, error = %e, "sealing the clip failed"),
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        let _ = tx.try_send(Msg::Cut(result));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn the sealing thread");
        }
    }

    fn abort_recording(&mut self) -> Result<(), CaptureError> {
        let Some(rec) = self.recording.take() else {
            if let CutClip::Ready(Ok(cut)) = std::mem::replace(&mut self.cut_clip, CutClip::None) {
                let _ = std::fs::remove_file(&cut.path);
                return Ok(());
            }
            return Err(CaptureError::NotRecording {
                camera: self.spec.name.clone(),
            });
        };
        rec.writer.close();
        let part = rec.part();
        std::fs::remove_file(&part).map_err(|e| CaptureError::io("removing", &part, e))?;
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
        self.status.send_modify(|s| s.recording = None);
        if let Some(Stopping {
            reply: Some(reply), ..
        }) = rec.stopping
        {
            let _ = reply.send(Err(CaptureError::NotRecording {
                camera: self.spec.name.clone(),
            }));
        }
        tracing::info!(order = %rec.request.order, "recording aborted: file removed");
        Ok(())
    }
}

/// The running time of a sample's buffer (its PTS through its segment).
fn running_time_of(sample: &gst::Sample) -> Option<gst::ClockTime> {
    let pts = sample.buffer()?.pts()?;
    match sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::format::Time>())
    {
        Some(segment) => segment.to_running_time(pts),
        None => Some(pts),
    }
}

fn keyframe_pts(sample: &Option<gst::Sample>) -> Option<gst::ClockTime> {
    sample
        .as_ref()
        .and_then(|s| s.buffer())
        .and_then(|b| b.pts())
}
