//! The camera actor: the thread that owns one camera's pipeline, its pre-roll ring, the
//! recording in progress and the pending snapshots, driven by one inbox.
//!
//! The loop (this file): receive a message (a command from a [`super::CameraHandle`], an
//! encoded frame, a JPEG, a bus message of the camera or of the clip writer) or time out after
//! [`TICK`]; handle it; ask [`Deadlines`] what is due (first frame, stalled source, overlay
//! anchor, restart, post-roll, EOS) and act on it; expire the snapshots that waited too long.
//! Every element state change happens here; GStreamer's callbacks only forward.
//!
//! The work is split by what it touches:
//!
//! - `lifecycle.rs`: the camera pipeline: build, frames in, bus errors, failure and restart;
//! - `recording.rs`: the clip: start, stop with post-roll, EOS, seal, abort, cut clips;
//! - `snapshots.rs`: JPEG requests and their replies;
//! - `deadlines.rs`: every timeout above as a pure struct, tested without GStreamer.

mod deadlines;
mod lifecycle;
mod recording;
mod snapshots;

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use gstreamer as gst;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use self::deadlines::{Deadlines, Due};
use self::recording::CutClip;
use self::snapshots::PendingSnapshot;
use super::encoder::EncoderKind;
use super::error::CaptureError;
use super::pipeline::CameraPipeline;
use super::recorder::{Recording, RecordingRequest, RecordingStarted};
use super::ring::PrerollRing;
use super::seal::SealedClip;
use super::snapshot::Snapshot;
use super::spec::CameraSpec;
use super::status::{CameraState, CameraStatus};

/// Messages the actor's inbox holds; bounded so a stuck actor cannot eat the memory.
pub(super) const INBOX_CAPACITY: usize = 1024;
/// How often deadlines are checked when nothing else happens.
const TICK: Duration = Duration::from_millis(100);

pub(super) type Reply<T> = oneshot::Sender<Result<T, CaptureError>>;

#[derive(Debug)]
pub(super) enum Command {
    /// A start, with the moment it was asked: the pre-roll is counted back from then.
    Start(Box<RecordingRequest>, Instant, Reply<RecordingStarted>),
    /// A stop, with the moment it was asked: the post-roll is counted on from then.
    Stop(Instant, Reply<SealedClip>),
    Abort(Reply<()>),
    Snapshot(Reply<Snapshot>),
    Shutdown(Option<oneshot::Sender<()>>),
    /// Tests only: behave as if the pipeline had failed with this error.
    #[cfg(test)]
    Fault(CaptureError),
    /// Tests only: keep the actor busy this long, as a slow Pi or a loaded machine would.
    #[cfg(test)]
    Stall(Duration),
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

pub(super) struct Actor {
    spec: CameraSpec,
    kind: EncoderKind,
    tx: SyncSender<Msg>,
    rx: Receiver<Msg>,
    status: watch::Sender<CameraStatus>,
    /// Incremented per pipeline built, so late messages of a torn-down pipeline are ignored.
    generation: u64,
    pipeline: Option<CameraPipeline>,
    /// The pipeline's phase, its restart backoff and every timeout of this camera.
    deadlines: Deadlines,
    /// Set when a pipeline failed to start before its bus said why: the next error message
    /// of that generation replaces the generic error in the status.
    refine_error_of: Option<u64>,
    ring: PrerollRing,
    caps: Option<gst::Caps>,
    /// UTC time of running time zero, from the overlay's last anchor.
    epoch: Option<OffsetDateTime>,
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
        let deadlines = Deadlines::new(now, spec.keyframe_interval, spec.eos_timeout);
        Self {
            spec,
            kind,
            tx,
            rx,
            status,
            generation: 0,
            pipeline: None,
            deadlines,
            refine_error_of: None,
            ring: PrerollRing::new(keep),
            caps: None,
            epoch: None,
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
            Msg::Cut(result) => self.on_cut(result),
            Msg::Encoded { .. } | Msg::Jpeg { .. } => {} // From a torn-down pipeline.
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(request, asked, reply) => {
                let result = self.start_recording(*request, asked);
                let _ = reply.send(result);
            }
            Command::Stop(asked, reply) => self.stop_recording(asked, reply),
            Command::Abort(reply) => {
                let result = self.abort_recording();
                let _ = reply.send(result);
            }
            Command::Snapshot(reply) => self.snapshot(reply),
            #[cfg(test)]
            Command::Fault(error) => self.fail_pipeline(error),
            #[cfg(test)]
            Command::Stall(busy) => std::thread::sleep(busy),
            Command::Shutdown(done) => {
                tracing::info!("camera shutting down");
                if self.shutdown.is_none() {
                    self.shutdown = Some(done);
                }
                self.end_recording_for_shutdown();
            }
        }
    }

    /// Acts on what is due now: the deadlines, then the snapshots that waited too long.
    fn tick(&mut self) {
        let now = Instant::now();
        for due in self.deadlines.due(now) {
            match due {
                Due::NoFirstFrame { waited } if self.pipeline.is_some() => {
                    self.fail_pipeline(CaptureError::DeviceLost {
                        camera: self.spec.name.clone(),
                        device: self.spec.source.device(),
                        detail: format!("no frame within {waited:?} of starting"),
                    });
                }
                Due::Stalled { waited } => {
                    self.fail_pipeline(CaptureError::DeviceLost {
                        camera: self.spec.name.clone(),
                        device: self.spec.source.device(),
                        detail: format!("no frame for {waited:?}"),
                    });
                }
                Due::Reanchor => self.anchor_overlay(),
                Due::Restart if self.shutdown.is_none() => {
                    tracing::info!("restarting camera pipeline");
                    self.start_pipeline();
                }
                Due::PostrollOver => {
                    tracing::warn!(
                        "no frame reached the end of the post-roll: ending the clip now"
                    );
                    self.end_clip();
                }
                Due::EosOverdue => {
                    tracing::warn!(timeout = ?self.spec.eos_timeout, "the clip writer did not finish: sealing what is on disk");
                    self.finalize(false);
                }
                Due::NoFirstFrame { .. } | Due::Restart => {}
            }
        }
        self.tick_snapshots(now);
    }
}
