//! The clip writer: H.264 access units in, a crash-safe fragmented MP4 `*.part` file out.
//!
//! ```text
//! appsrc (caps of the encoder) ─ mp4mux fragment-duration=1000 ─ filesink buffer-mode=unbuffered
//! ```
//!
//! One small pipeline per file, fed by the camera actor (a recording) or by the demuxer of a
//! file being sealed ([`super::seal`]); one function serves both. The file on disk is, at
//! every moment, `ftyp` + `moov` (no samples) followed by complete-or-partial `moof`+`mdat`
//! fragments of at most one second: a crash loses at most the fragment being written. Writes
//! are unbuffered, and the file's data is `fdatasync`ed about once a second from the streaming
//! thread (I/O there is fine; state changes are not). At EOS mp4mux seeks back and writes the
//! true duration into the `mehd` box, then appends an `mfra` index.
//!
//! Timestamps are rebased so the file starts at zero.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::error::CaptureError;
use super::probe::PtsSpan;

/// How often the part file's data is flushed to the storage device.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Receives a pipeline's bus messages (on the posting thread: forward, never block).
pub(crate) type MessageHandler = Box<dyn Fn(&gst::Message) + Send + Sync>;

/// A running muxing pipeline writing one `*.part` file.
#[derive(Debug)]
pub(crate) struct ClipWriter {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    part: PathBuf,
    /// Subtracted from every timestamp (the first frame's DTS or PTS).
    base: Option<gst::ClockTime>,
    /// PTS span of what was pushed, for the clip's duration.
    span: PtsSpan,
    frames: u64,
    default_frame: gst::ClockTime,
}

impl ClipWriter {
    /// Creates `part` and a playing pipeline that muxes frames of `caps` into it. `on_message`
    /// receives the bus messages (it is the bus's only consumer); pass `None` to pop them with
    /// [`ClipWriter::wait_for_eos`] instead.
    pub(crate) fn create(
        part: &Path,
        caps: &gst::Caps,
        frame_duration: Duration,
        on_message: Option<MessageHandler>,
    ) -> Result<Self, CaptureError> {
        if let Some(dir) = part.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| CaptureError::io("creating directory", dir, e))?;
        }
        // Create the file ourselves so a bad path fails here with a clear error.
        File::create(part).map_err(|e| CaptureError::io("creating", part, e))?;

        let pipeline = gst::Pipeline::with_name("clip-writer");
        let appsrc = gst_app::AppSrc::builder()
            .caps(caps)
            .format(gst::Format::Time)
            .is_live(false)
            .max_bytes(64 * 1024 * 1024)
            .build();
        let mux = gst::ElementFactory::make("mp4mux")
            .property("fragment-duration", 1000u32)
            .build()?;
        let sink = gst::ElementFactory::make("filesink")
            .property("location", part.to_string_lossy().as_ref())
            .property_from_str("buffer-mode", "unbuffered")
            .property("async", false)
            .build()?;
        pipeline.add_many([appsrc.upcast_ref(), &mux, &sink])?;
        let video_pad = mux
            .request_pad_simple("video_%u")
            .ok_or_else(|| CaptureError::Gst("mp4mux gave no video pad".into()))?;
        let src_pad = appsrc
            .static_pad("src")
            .ok_or_else(|| CaptureError::Gst("appsrc without a src pad".into()))?;
        src_pad
            .link(&video_pad)
            .map_err(|e| CaptureError::Gst(format!("linking the writer: {e:?}")))?;
        mux.link(&sink)?;

        install_periodic_sync(&sink, part);
        if let Some(on_message) = on_message {
            let bus = pipeline
                .bus()
                .ok_or_else(|| CaptureError::Gst("writer without a bus".into()))?;
            bus.set_sync_handler(move |_, message| {
                on_message(message);
                gst::BusSyncReply::Drop
            });
        }
        pipeline.set_state(gst::State::Playing).map_err(|e| {
            let _ = pipeline.set_state(gst::State::Null);
            CaptureError::Gst(format!("starting the writer for {}: {e}", part.display()))
        })?;
        Ok(Self {
            pipeline,
            appsrc,
            part: part.to_path_buf(),
            base: None,
            span: PtsSpan::default(),
            frames: 0,
            default_frame: gst::ClockTime::from_nseconds(frame_duration.as_nanos() as u64),
        })
    }

    /// Queues one access unit. The first one must be a keyframe.
    pub(crate) fn push(&mut self, buffer: &gst::Buffer) -> Result<(), CaptureError> {
        let Some(pts) = buffer.pts() else {
            return Ok(());
        };
        let base = *self
            .base
            .get_or_insert_with(|| buffer.dts().map_or(pts, |dts| dts.min(pts)));
        let duration = buffer.duration().unwrap_or(self.default_frame);
        let mut copy = buffer.copy();
        {
            let b = copy.make_mut();
            b.set_pts(pts.saturating_sub(base));
            b.set_dts(buffer.dts().map(|dts| dts.saturating_sub(base)));
            b.set_duration(duration);
            if self.frames == 0 {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.appsrc
            .push_buffer(copy)
            .map_err(|e| CaptureError::Gst(format!("writing to {}: {e:?}", self.part.display())))?;
        self.span.add_times(pts, duration);
        self.frames += 1;
        Ok(())
    }

    /// Frames pushed so far.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// PTS of the first frame (in the source's timeline, before rebasing).
    pub(crate) fn first_pts(&self) -> Option<gst::ClockTime> {
        self.span.first()
    }

    /// Duration of the video pushed: last frame's end minus first frame's start.
    pub(crate) fn duration(&self) -> Duration {
        self.span.duration()
    }

    /// Signals the end of the clip: mp4mux writes its last fragment and the header's duration.
    /// Completion is the EOS message on the bus.
    pub(crate) fn end(&self) {
        if let Err(e) = self.appsrc.end_of_stream() {
            tracing::warn!(part = %self.part.display(), error = ?e, "writer refused EOS");
        }
    }

    /// Blocks until EOS (Ok) or an error, bounded by `timeout`. Only for writers created without
    /// `on_message`.
    pub(crate) fn wait_for_eos(&self, timeout: Duration) -> Result<(), CaptureError> {
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| CaptureError::Gst("writer without a bus".into()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) else {
                return Err(CaptureError::Timeout {
                    what: format!("the writer of {} to finish", self.part.display()),
                    waited: timeout,
                });
            };
            match message.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(err) => {
                    return Err(CaptureError::Gst(format!(
                        "writing {}: {}",
                        self.part.display(),
                        err.error()
                    )));
                }
                _ => {}
            }
        }
    }

    /// Stops the pipeline (closing the file). Call from the owning thread, never a streaming one.
    pub(crate) fn close(&self) {
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!(part = %self.part.display(), error = %e, "writer did not stop cleanly");
        }
    }
}

impl Drop for ClipWriter {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Flushes the file's data to the device about once a second, from filesink's streaming thread.
/// `fdatasync` applies to the file, whichever descriptor is used, so a read-only one does.
fn install_periodic_sync(sink: &gst::Element, part: &Path) {
    let Some(pad) = sink.static_pad("sink") else {
        return;
    };
    let part = part.to_path_buf();
    let state: Mutex<(Option<File>, Instant)> = Mutex::new((None, Instant::now()));
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, _| {
            let Ok(mut guard) = state.lock() else {
                return gst::PadProbeReturn::Ok;
            };
            let (file, last) = &mut *guard;
            if last.elapsed() >= SYNC_EVERY {
                *last = Instant::now();
                if file.is_none() {
                    *file = File::open(&part).ok();
                }
                if let Some(f) = file.as_ref()
                    && let Err(e) = f.sync_data()
                {
                    tracing::warn!(part = %part.display(), error = %e, "fdatasync failed");
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
}
