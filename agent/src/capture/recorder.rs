//! One recording on one camera: from the start command (with its pre-roll) to the sealed clip.
//!
//! Timeline, in the camera pipeline's running time (the timestamps of its frames):
//!
//! ```text
//!   keyframe <= start - preroll        start command         stop command     stop + postroll
//!        |----------- pre-roll (ring) -----|------- recorded -------|--- post-roll ---|
//!        first frame of the clip                                          first frame not in the clip
//! ```
//!
//! The clip begins on the newest keyframe at or before `start - preroll` (so the pre-roll is
//! at least what was asked, up to one keyframe interval more, reported exactly in
//! [`super::SealedClip::preroll`]). With no pre-roll, the encoder is asked for a keyframe and
//! the clip begins on it. It ends with the last frame whose PTS is before `stop + postroll`;
//! then the writer gets EOS, and the clip is sealed once mp4mux has finished the file.

use std::path::PathBuf;
use std::time::Duration;

use gstreamer as gst;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::error::CaptureError;
use super::ring::is_keyframe;
use super::seal::{ClipFacts, SealedClip, part_path};
use super::writer::ClipWriter;

/// What the daemon asks for when an order starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRequest {
    /// The clip's id (a ULID in the daemon): the file is `dir/{clip_id}.mp4`.
    pub clip_id: String,
    /// The order, burned into the picture.
    pub order: String,
    /// The station, burned into the picture.
    pub station: String,
    /// Directory for the clip (the spool).
    pub dir: PathBuf,
    /// Pre-roll for this clip; `None` takes the camera's. Capped at the camera's (that is
    /// all the memory holds).
    pub preroll: Option<Duration>,
    /// Post-roll for this clip; `None` takes the camera's.
    pub postroll: Option<Duration>,
    /// The upload's configured part size (`store.part_size`): the seal computes the MD5 of
    /// every part of the upload plan in the same read as the sha256 ([`crate::digest`]).
    pub part_size: u64,
}

impl RecordingRequest {
    /// The final file of the clip.
    pub fn output(&self) -> PathBuf {
        self.dir.join(format!("{}.mp4", self.clip_id))
    }

    /// Refuses clip ids that could escape the directory.
    pub(crate) fn validate(&self, camera: &str) -> Result<(), CaptureError> {
        let id = &self.clip_id;
        let ok = !id.is_empty()
            && id.len() <= 64
            && !id.contains("..")
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(CaptureError::InvalidSpec {
                camera: camera.to_string(),
                reason: format!(
                    "clip id {id:?} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$ without \"..\""
                ),
            })
        }
    }
}

/// The answer to a start: where the clip is being written and how much pre-roll it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingStarted {
    /// The `*.part` file being written (renamed without `.part` when sealed).
    pub part: PathBuf,
    /// Video before the command that the clip holds (may be less than asked right after the
    /// camera started; zero while waiting for the first keyframe).
    pub preroll: Duration,
    /// UTC time of the command.
    pub at: OffsetDateTime,
}

/// A stop in progress. (Its deadlines, for the frames and then for the writer's EOS, are
/// the actor's: `actor/deadlines.rs`.)
#[derive(Debug)]
pub(crate) struct Stopping {
    /// Frames at or after this running time are not part of the clip.
    pub(crate) until: gst::ClockTime,
    /// EOS has been sent to the writer.
    pub(crate) eos_sent: bool,
    pub(crate) reply: Option<oneshot::Sender<Result<SealedClip, CaptureError>>>,
}

/// The state of the recording in progress on a camera.
#[derive(Debug)]
pub(crate) struct Recording {
    /// Distinguishes this recording's writer messages from a previous one's.
    pub(crate) id: u64,
    pub(crate) request: RecordingRequest,
    pub(crate) writer: ClipWriter,
    /// Running time of the start command.
    pub(crate) started: gst::ClockTime,
    /// UTC time of running time zero (to date the first frame).
    pub(crate) epoch: Option<OffsetDateTime>,
    /// No frame pushed yet: waiting for a keyframe.
    pub(crate) waiting_for_keyframe: bool,
    pub(crate) stopping: Option<Stopping>,
    /// The camera pipeline failed during the recording: the clip is cut.
    pub(crate) cut: bool,
}

impl Recording {
    pub(crate) fn new(
        id: u64,
        request: RecordingRequest,
        writer: ClipWriter,
        started: gst::ClockTime,
        epoch: Option<OffsetDateTime>,
    ) -> Self {
        Self {
            id,
            request,
            writer,
            started,
            epoch,
            waiting_for_keyframe: true,
            stopping: None,
            cut: false,
        }
    }

    pub(crate) fn part(&self) -> PathBuf {
        part_path(&self.request.output())
    }

    /// Offers a new frame. Returns true when the clip is complete (the frame is past the stop
    /// point) and the writer should get EOS.
    pub(crate) fn offer(&mut self, buffer: &gst::Buffer) -> Result<bool, CaptureError> {
        let Some(pts) = buffer.pts() else {
            return Ok(false);
        };
        if let Some(stop) = &self.stopping
            && pts >= stop.until
        {
            return Ok(true);
        }
        if self.waiting_for_keyframe {
            if !is_keyframe(buffer) {
                return Ok(false);
            }
            self.waiting_for_keyframe = false;
        }
        self.writer.push(buffer)?;
        Ok(false)
    }

    /// The facts of the clip for sealing.
    pub(crate) fn facts(&self, truncated: bool) -> ClipFacts {
        let first = self.writer.first_pts();
        let preroll = first.map_or(Duration::ZERO, |f| {
            Duration::from_nanos(self.started.saturating_sub(f).nseconds())
        });
        let started_at = match (self.epoch, first) {
            (Some(epoch), Some(first)) => {
                Some(epoch + time::Duration::nanoseconds(first.nseconds() as i64))
            }
            _ => None,
        };
        ClipFacts {
            duration: self.writer.duration(),
            frames: self.writer.frames(),
            preroll,
            truncated,
            started_at,
        }
    }
}
