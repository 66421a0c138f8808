//! The camera pipeline: one per camera, running continuously.
//!
//! ```text
//! source ─ (decode/convert) ─ timeoverlay ─ tee ─┬─ queue ─ encoder ─ h264parse ─ appsink "encoded"  -> actor: pre-roll ring, recording
//!                                                └─ valve ─ queue ─ jpegenc ─ appsink "jpeg"        -> actor: snapshots
//! passthrough:  source (H.264) ─ h264parse ─ appsink "encoded"
//! ```
//!
//! The pipeline never changes for a recording or a snapshot: recordings are separate small
//! muxing pipelines fed by the actor (`writer.rs`), and the snapshot branch is a valve
//! that the actor opens until one JPEG has come out (closed, it drops frames at once, holding
//! no buffer of the camera's pool).
//!
//! The overlay is a `timeoverlay` showing `text` followed by the UTC time of each frame, in
//! the top left corner: the order on the first line, then station, camera and time. Its font
//! and margins are sized from the frame's height (not GStreamer's `auto-resize`, which scales
//! with the width and drew unreadably small text that ran off the frame below 640 wide), and
//! lines wrap at the frame's width, so the whole label stays inside the frame at every
//! resolution the configuration accepts with an overlay. The clock renders the frame's running time as a date counted from `datetime-epoch`, which the actor
//! sets to "UTC now minus running time now" and re-anchors periodically (the Pi has no RTC, so
//! the wall clock can jump when NTP syncs after boot).
//!
//! Callbacks (appsinks, bus) run on GStreamer threads: they only forward to the actor's
//! channel. Every state change happens on the actor thread.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use time::OffsetDateTime;

use super::encoder::{EncoderKind, require_element};
use super::error::CaptureError;
use super::spec::{CameraSpec, Resolution};

/// `strftime` format of the burned-in time.
const OVERLAY_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S UTC";

/// Describes the pipeline from the source to H.264 in `gst-launch-1.0` syntax, ending with the
/// H.264 parser (no sink). Shared by the engine and the benchmark so both run the same elements.
pub fn encode_description(spec: &CameraSpec, kind: EncoderKind, overlay_text: &str) -> String {
    let raw_caps = format!(
        "video/x-raw,width={},height={},framerate={}/1",
        spec.resolution.width, spec.resolution.height, spec.fps
    );
    match kind.launch_fragment(spec) {
        None => format!(
            "{} ! video/x-h264,stream-format=avc,alignment=au",
            spec.source
                .launch_fragment(spec.input_format, &raw_caps, false)
        ),
        Some(encoder) => {
            let source = spec
                .source
                .launch_fragment(spec.input_format, &raw_caps, true);
            let overlay = if spec.overlay {
                format!(" ! {}", overlay_description(spec.resolution, overlay_text))
            } else {
                String::new()
            };
            format!(
                "{source}{overlay} ! tee name=split \
                 split. ! queue name=encode-queue max-size-buffers=4 max-size-bytes=0 max-size-time=0 leaky=downstream \
                 ! {encoder} ! h264parse config-interval=-1 ! video/x-h264,stream-format=avc,alignment=au"
            )
        }
    }
}

/// The overlay's text for a recording: the order alone on the first line (the one thing a
/// viewer looks for), then the station and the camera; the clock follows on that line.
pub(crate) fn overlay_label(order: &str, station: &str, camera: &str) -> String {
    format!("{order}\n{station} | {camera}")
}

/// How the overlay is laid out in a frame of one size. GStreamer wraps the text at the whole
/// frame's width whatever the margin, so the label is broken into lines here, at a width that
/// holds even the widest glyphs; the clock gets a line of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverlayLayout {
    font_px: u32,
    pad: u32,
    chars_per_line: usize,
}

impl OverlayLayout {
    /// The shaded box reaches this far around the text.
    const SHADE_PX: u32 = 6;

    pub(crate) fn for_frame(frame: Resolution) -> Self {
        // A line is 1/24 of the frame's height (30 px at 720p, 10 px at 240p), less on a
        // portrait frame so that the clock's line fits its width, never below 8 px.
        let font_px = (frame.height / 24).min(frame.width / 32).max(8);
        let pad = Self::SHADE_PX + 2 + font_px / 4;
        // The widest glyph an order, station or camera may use ('W') is one em.
        let usable = frame.width.saturating_sub(2 * (pad + Self::SHADE_PX));
        let chars_per_line = (usable / font_px).max(1) as usize;
        Self {
            font_px,
            pad,
            chars_per_line,
        }
    }

    /// `label` broken into lines that fit, ending with a line break so that the clock
    /// (which the element appends after a space) starts a line of its own.
    pub(crate) fn text(&self, label: &str) -> String {
        let mut out = String::with_capacity(label.len() + 8);
        for line in label.replace(['"', '\\'], "").lines() {
            let chars: Vec<char> = line.chars().collect();
            for chunk in chars.chunks(self.chars_per_line) {
                let piece: String = chunk.iter().collect();
                out.push_str(piece.trim_start());
                out.push('\n');
            }
        }
        out
    }

    fn description(&self, label: &str) -> String {
        let Self { font_px, pad, .. } = *self;
        format!(
            "timeoverlay name=overlay time-mode=running-time show-times-as-dates=true \
             datetime-format=\"{OVERLAY_TIME_FORMAT}\" halignment=left valignment=top \
             line-alignment=left wrap-mode=wordchar auto-resize=false xpad={pad} ypad={pad} \
             shaded-background=true font-desc=\"Sans {font_px}px\" text=\"{}\"",
            self.text(label)
        )
    }
}

fn overlay_description(frame: Resolution, text: &str) -> String {
    OverlayLayout::for_frame(frame).description(text)
}

/// The `gst-launch-1.0 -e` command line equivalent of recording `spec` to `out` (fragmented
/// MP4): the floor the benchmark compares the engine against.
pub fn launch_equivalent(
    spec: &CameraSpec,
    kind: EncoderKind,
    overlay_text: &str,
    out: &str,
) -> String {
    format!(
        "{} ! mp4mux fragment-duration=1000 ! filesink location=\"{out}\"",
        encode_description(spec, kind, overlay_text)
    )
}

/// The running camera pipeline and the elements the actor talks to.
#[derive(Debug)]
pub(crate) struct CameraPipeline {
    pub(crate) pipeline: gst::Pipeline,
    encoded: gst_app::AppSink,
    overlay: Option<(gst::Element, OverlayLayout)>,
    snapshot_valve: Option<gst::Element>,
}

/// Where a pipeline's callbacks send what they receive (each runs on a GStreamer thread).
pub(crate) struct PipelineCallbacks {
    pub(crate) on_encoded: Box<dyn Fn(gst::Sample) + Send + Sync>,
    pub(crate) on_jpeg: Box<dyn Fn(gst::Sample) + Send + Sync>,
    pub(crate) on_message: Box<dyn Fn(&gst::Message) + Send + Sync>,
}

impl CameraPipeline {
    /// Builds (but does not start) the pipeline for `spec`.
    pub(crate) fn build(
        spec: &CameraSpec,
        kind: EncoderKind,
        overlay_text: &str,
        callbacks: PipelineCallbacks,
    ) -> Result<Self, CaptureError> {
        require_element(spec.source.element())?;
        let snapshots = kind != EncoderKind::Passthrough;
        let mut description = format!(
            "{} ! appsink name=encoded sync=false async=false max-buffers=64 drop=false",
            encode_description(spec, kind, overlay_text)
        );
        if snapshots {
            description.push_str(
                " split. ! valve name=snapshot-valve drop=true drop-mode=forward-sticky-events \
                 ! queue max-size-buffers=1 leaky=downstream ! jpegenc quality=85 \
                 ! appsink name=jpeg sync=false async=false max-buffers=2 drop=true",
            );
        }
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| CaptureError::Pipeline {
                camera: spec.name.clone(),
                device: spec.source.device(),
                detail: format!("building `{description}`: {e}"),
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| CaptureError::Gst("the description did not give a pipeline".into()))?;
        pipeline.set_property("name", format!("camera-{}", spec.name));

        let appsink = |name: &str| -> Result<gst_app::AppSink, CaptureError> {
            pipeline
                .by_name(name)
                .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
                .ok_or_else(|| {
                    CaptureError::Gst(format!("appsink {name} missing from the pipeline"))
                })
        };
        let PipelineCallbacks {
            on_encoded,
            on_jpeg,
            on_message,
        } = callbacks;
        let encoded = appsink("encoded")?;
        encoded.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    if let Ok(sample) = sink.pull_sample() {
                        on_encoded(sample);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let mut snapshot_valve = None;
        if snapshots {
            appsink("jpeg")?.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        if let Ok(sample) = sink.pull_sample() {
                            on_jpeg(sample);
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            snapshot_valve = pipeline.by_name("snapshot-valve");
        }
        // The only consumer of this bus: forward, never handle here.
        let bus = pipeline
            .bus()
            .ok_or_else(|| CaptureError::Gst("pipeline without a bus".into()))?;
        bus.set_sync_handler(move |_, message| {
            on_message(message);
            gst::BusSyncReply::Drop
        });
        let overlay = pipeline
            .by_name("overlay")
            .map(|element| (element, OverlayLayout::for_frame(spec.resolution)));
        // A live pipeline's running time starts at zero when it goes to PLAYING, a moment from
        // now: anchor the clock to now so that the very first frames (the pre-roll of the
        // first clip) show the right time; `anchor_overlay_clock` refines it once running.
        if let Some((overlay, _)) = &overlay {
            set_overlay_epoch(overlay, OffsetDateTime::now_utc());
        }
        Ok(Self {
            pipeline,
            encoded,
            overlay,
            snapshot_valve,
        })
    }

    /// The pipeline's running time now (the clock of every frame timestamp).
    pub(crate) fn running_time(&self) -> Option<gst::ClockTime> {
        self.pipeline.current_running_time()
    }

    /// Sets the overlay's text (no-op without overlay). Safe while playing.
    pub(crate) fn set_overlay_text(&self, text: &str) {
        if let Some((overlay, layout)) = &self.overlay {
            overlay.set_property("text", layout.text(text));
        }
    }

    /// The pipeline's running time at `asked` (an instant not after now): a start or a stop
    /// that waited in the camera's inbox behind frames still counts from when it was asked,
    /// so a busy camera (a slow Pi, a loaded machine) neither stretches nor shifts the clip.
    pub(crate) fn running_time_at(&self, asked: std::time::Instant) -> Option<gst::ClockTime> {
        let waited = gst::ClockTime::from_nseconds(asked.elapsed().as_nanos() as u64);
        Some(self.running_time()?.saturating_sub(waited))
    }

    /// Anchors the overlay's clock: a frame with running time `t` shows `epoch + t`, where
    /// `epoch` is UTC now minus the running time now. Returns the epoch.
    pub(crate) fn anchor_overlay_clock(&self) -> Option<OffsetDateTime> {
        let running = self.running_time()?;
        let epoch =
            OffsetDateTime::now_utc() - time::Duration::nanoseconds(running.nseconds() as i64);
        if let Some((overlay, _)) = &self.overlay {
            set_overlay_epoch(overlay, epoch);
        }
        Some(epoch)
    }

    /// Opens or closes the snapshot branch. Returns false when there is none (passthrough).
    pub(crate) fn set_snapshot_branch(&self, open: bool) -> bool {
        match &self.snapshot_valve {
            Some(valve) => {
                valve.set_property("drop", !open);
                true
            }
            None => false,
        }
    }

    /// Asks the encoder (upstream of the encoded appsink) for a keyframe as soon as possible.
    pub(crate) fn request_keyframe(&self) {
        let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        if !self.encoded.send_event(event) {
            tracing::debug!("the encoder ignored the keyframe request");
        }
    }

    /// Stops the pipeline and releases the device. Call from the actor thread only.
    pub(crate) fn stop(&self) {
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!(error = %e, "camera pipeline did not stop cleanly");
        }
    }
}

/// Makes the overlay show `epoch + running time` as each frame's UTC time.
fn set_overlay_epoch(overlay: &gst::Element, epoch: OffsetDateTime) {
    let whole = epoch.unix_timestamp();
    let frac = f64::from(epoch.nanosecond()) / 1e9;
    match gst::glib::DateTime::from_unix_utc(whole).and_then(|d| d.add_seconds(frac)) {
        Ok(date) => overlay.set_property("datetime-epoch", &date),
        Err(e) => tracing::warn!(error = %e, "cannot set the overlay clock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::source::Source;

    #[test]
    fn the_benchmark_runs_the_engines_elements() {
        let spec = CameraSpec::new("top", Source::Test);
        let engine = encode_description(&spec, EncoderKind::X264, "top");
        let floor = launch_equivalent(&spec, EncoderKind::X264, "top", "/tmp/x.mp4");
        assert!(floor.starts_with(&engine));
        assert!(engine.contains(
            "x264enc name=encoder speed-preset=ultrafast tune=zerolatency key-int-max=30"
        ));
        assert!(
            floor.ends_with("mp4mux fragment-duration=1000 ! filesink location=\"/tmp/x.mp4\"")
        );
    }

    #[test]
    fn the_overlay_clock_shows_utc_now_not_its_1900_default() {
        gst::init().unwrap();
        let overlay = gst::ElementFactory::make("timeoverlay").build().unwrap();
        let now = OffsetDateTime::now_utc();
        set_overlay_epoch(&overlay, now);
        let epoch: gst::glib::DateTime = overlay.property("datetime-epoch");
        assert_eq!(epoch.year(), now.year());
        assert_eq!(epoch.to_unix(), now.unix_timestamp());
    }
}

#[cfg(test)]
mod overlay_fit {
    use super::*;
    use crate::capture::spec::MIN_OVERLAY_FRAME;

    /// Renders `text` with the engine's overlay on one white frame; the bounding box of every
    /// pixel the overlay changed: (left, top, right, bottom).
    fn overlay_box(width: u32, height: u32, text: &str) -> Option<(u32, u32, u32, u32)> {
        gst::init().unwrap();
        let description = format!(
            "videotestsrc pattern=white num-buffers=1 ! video/x-raw,width={width},height={height} \
             ! {} ! videoconvert ! video/x-raw,format=RGB ! appsink name=out",
            overlay_description(Resolution { width, height }, text)
        );
        let pipeline = gst::parse::launch(&description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let sample = sink.pull_sample().unwrap();
        pipeline.set_state(gst::State::Null).unwrap();
        let info = gstreamer_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        let frame = sample.buffer().unwrap().map_readable().unwrap();
        let stride = info.stride()[0] as usize;
        let mut bbox: Option<(u32, u32, u32, u32)> = None;
        for y in 0..height {
            for x in 0..width {
                let at = y as usize * stride + x as usize * 3;
                if frame[at..at + 3] != [255, 255, 255] {
                    let (l, t, r, b) = bbox.unwrap_or((x, y, x, y));
                    bbox = Some((l.min(x), t.min(y), r.max(x), b.max(y)));
                }
            }
        }
        bbox
    }

    /// The longest label the protocol allows: a 64-character order, a 32-character station
    /// and a 32-character camera.
    fn longest_label() -> String {
        overlay_label(&"S".repeat(64), &"p".repeat(32), &"c".repeat(32))
    }

    #[test]
    fn the_label_is_broken_into_lines_that_fit_and_the_clock_starts_its_own() {
        let layout = OverlayLayout::for_frame(Resolution {
            width: 320,
            height: 240,
        });
        let text = layout.text(&overlay_label("SO-2026-000123", "pack-03", "top"));
        assert_eq!(text, "SO-2026-000123\npack-03 | top\n");
        let long = layout.text(&longest_label());
        assert!(
            long.lines()
                .all(|l| l.len() <= layout.chars_per_line && !l.is_empty())
        );
        let squeezed = |s: &str| s.replace(['\n', ' '], "");
        assert_eq!(
            squeezed(&long),
            squeezed(&longest_label()),
            "nothing dropped"
        );
    }

    #[test]
    fn the_overlay_stays_inside_the_frame_at_every_size_that_has_one() {
        let sizes = [
            (MIN_OVERLAY_FRAME.width, MIN_OVERLAY_FRAME.height),
            (320, 240),
            (640, 480),
            (1280, 720),
            (1920, 1080),
            (3840, 2160),
            (1080, 1920),
            (7680, 4320),
        ];
        let usual = overlay_label("SO-2026-000123", "pack-03", "top");
        for (width, height) in sizes {
            for text in [usual.as_str(), longest_label().as_str()] {
                let (left, top, right, bottom) =
                    overlay_box(width, height, text).expect("the overlay drew nothing");
                assert!(
                    left > 0 && top > 0 && right < width - 1 && bottom < height - 1,
                    "at {width}x{height} the overlay touches the frame's edge: box \
                     ({left},{top})-({right},{bottom}) for {text:?}"
                );
            }
            let (_, _, _, bottom) = overlay_box(width, height, &usual).unwrap();
            assert!(
                bottom < height / 2,
                "at {width}x{height} the usual label covers more than the top half: bottom {bottom}"
            );
        }
    }
}
