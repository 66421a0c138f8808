//! Reading clips back frame by frame: what sealing and checks trust instead of headers.
//!
//! `filesrc ! qtdemux ! h264parse ! appsink` yields every complete access unit in the file;
//! a fragment cut by a crash ends the stream (qtdemux stops at the first sample it cannot
//! read in full). A clip's duration is the PTS span of the frames read, never the container's
//! duration field: a fragmented MP4 cut by SIGKILL still says "1 s" in its header.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::error::CaptureError;
use super::ring::is_keyframe;

/// How long one frame may take to come out of the demuxer before the file counts as ended.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The frames of an MP4 file, in order.
#[derive(Debug)]
pub(crate) struct FrameReader {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    path: PathBuf,
    /// Set when the demuxer stopped on an error (a cut file) rather than a clean EOS.
    pub(crate) stopped_early: Option<String>,
}

impl FrameReader {
    pub(crate) fn open(path: &Path) -> Result<Self, CaptureError> {
        gst::init()?;
        std::fs::metadata(path).map_err(|e| CaptureError::io("reading", path, e))?;
        let pipeline = gst::Pipeline::with_name("clip-reader");
        let src = gst::ElementFactory::make("filesrc")
            .property("location", path.to_string_lossy().as_ref())
            .build()?;
        let demux = gst::ElementFactory::make("qtdemux").build()?;
        let parse = gst::ElementFactory::make("h264parse").build()?;
        let sink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-h264")
                    .field("stream-format", "avc")
                    .field("alignment", "au")
                    .build(),
            )
            .sync(false)
            .max_buffers(16)
            .build();
        pipeline.add_many([&src, &demux, &parse, sink.upcast_ref()])?;
        src.link(&demux)?;
        parse.link(&sink)?;
        let parse_weak = parse.downgrade();
        demux.connect_pad_added(move |_, pad| {
            let Some(parse) = parse_weak.upgrade() else {
                return;
            };
            let is_video = pad.current_caps().is_some_and(|c| {
                c.structure(0)
                    .is_some_and(|s| s.name().starts_with("video/x-h264"))
            });
            if let Some(sinkpad) = parse.static_pad("sink")
                && is_video
                && !sinkpad.is_linked()
                && let Err(e) = pad.link(&sinkpad)
            {
                tracing::warn!(error = ?e, "cannot link the demuxer");
            }
        });
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let detail = first_error(&pipeline).unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(CaptureError::Unplayable {
                path: path.to_path_buf(),
                reason: detail,
            });
        }
        Ok(Self {
            pipeline,
            sink,
            path: path.to_path_buf(),
            stopped_early: None,
        })
    }

    /// The next access unit (with its caps), or `None` at the end of what can be read.
    pub(crate) fn next_frame(&mut self) -> Option<gst::Sample> {
        if self.stopped_early.is_some() {
            return None;
        }
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_nseconds(READ_TIMEOUT.as_nanos() as u64));
        if sample.is_none() && !self.sink.is_eos() {
            self.stopped_early = Some(
                first_error(&self.pipeline)
                    .unwrap_or_else(|| "the demuxer stopped without EOS".into()),
            );
        } else if sample.is_none()
            && let Some(error) = first_error(&self.pipeline)
        {
            self.stopped_early = Some(error);
        }
        sample
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn first_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = message.view() {
            return Some(err.error().to_string());
        }
    }
    None
}

/// What reading a clip frame by frame found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipInfo {
    /// Complete frames in the file.
    pub frames: u64,
    /// PTS span of those frames (first frame's start to last frame's end).
    pub duration: Duration,
    /// Whether the first frame is a keyframe (decodable on its own).
    pub starts_on_keyframe: bool,
    /// Frame size from the stream's caps.
    pub width: u32,
    pub height: u32,
    /// Whether the demuxer stopped on an error (a cut file) rather than a clean end.
    pub cut: bool,
}

/// Reads every frame of `path` (demuxing, not decoding) and reports what is really there.
pub fn inspect(path: &Path) -> Result<ClipInfo, CaptureError> {
    let mut reader = FrameReader::open(path)?;
    let mut span = PtsSpan::default();
    let mut info = ClipInfo {
        frames: 0,
        duration: Duration::ZERO,
        starts_on_keyframe: false,
        width: 0,
        height: 0,
        cut: false,
    };
    while let Some(sample) = reader.next_frame() {
        let Some(buffer) = sample.buffer() else {
            continue;
        };
        if info.frames == 0 {
            info.starts_on_keyframe = is_keyframe(buffer);
            if let Some(s) = sample.caps().and_then(|c| c.structure(0)) {
                info.width = s.get::<i32>("width").unwrap_or(0).max(0) as u32;
                info.height = s.get::<i32>("height").unwrap_or(0).max(0) as u32;
            }
        }
        span.add(buffer);
        info.frames += 1;
    }
    info.duration = span.duration();
    info.cut = reader.stopped_early.is_some();
    if info.frames == 0 {
        return Err(CaptureError::Unplayable {
            path: path.to_path_buf(),
            reason: reader
                .stopped_early
                .take()
                .unwrap_or_else(|| "no complete video frame".into()),
        });
    }
    Ok(info)
}

/// First start and last end of a run of frames.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PtsSpan {
    first: Option<gst::ClockTime>,
    end: Option<gst::ClockTime>,
}

impl PtsSpan {
    pub(crate) fn add(&mut self, buffer: &gst::BufferRef) {
        if let Some(pts) = buffer.pts() {
            self.add_times(pts, buffer.duration().unwrap_or(gst::ClockTime::ZERO));
        }
    }

    pub(crate) fn add_times(&mut self, pts: gst::ClockTime, duration: gst::ClockTime) {
        let end = pts + duration;
        self.first = Some(self.first.map_or(pts, |f| f.min(pts)));
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
    }

    /// The earliest PTS seen.
    pub(crate) fn first(&self) -> Option<gst::ClockTime> {
        self.first
    }

    pub(crate) fn duration(&self) -> Duration {
        match (self.first, self.end) {
            (Some(first), Some(end)) => Duration::from_nanos(end.saturating_sub(first).nseconds()),
            _ => Duration::ZERO,
        }
    }
}
