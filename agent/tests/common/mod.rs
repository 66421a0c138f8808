//! Helpers for the capture tests: a small test camera, polling with a deadline, and reading
//! clips back by decoding them (never by trusting the container's header).

#![allow(dead_code, clippy::unwrap_used)] // Test helpers: a failure is a test failure.

use std::path::Path;
use std::time::{Duration, Instant};

use capture_agent::capture::{Camera, CameraHandle, CameraSpec, Resolution, Source};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// A small, fast test-pattern camera (320x240 at 30 fps).
pub fn test_camera(name: &str) -> CameraSpec {
    let mut spec = CameraSpec::new(name, Source::Test);
    spec.resolution = Resolution {
        width: 320,
        height: 240,
    };
    spec.bitrate = "500kbps".parse().unwrap();
    spec
}

/// Starts a camera and waits until its pipeline delivers frames.
pub async fn running_camera(spec: CameraSpec) -> CameraHandle {
    let camera = Camera::start(spec).unwrap();
    camera
        .wait_until_running(Duration::from_secs(20))
        .await
        .unwrap();
    camera
}

/// Polls `condition` every 50 ms until it holds or `deadline` passes.
pub async fn eventually(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What decoding a file gave.
#[derive(Debug)]
pub struct Decoded {
    pub frames: u64,
    pub duration: Duration,
    pub width: i32,
    pub height: i32,
}

/// Decodes every frame of `path` (`filesrc ! decodebin ! appsink`) and measures the span of
/// the decoded frames' timestamps.
pub fn decode(path: &Path) -> Decoded {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut first, mut end, mut frames, mut size) =
        (None::<gst::ClockTime>, gst::ClockTime::ZERO, 0, (0, 0));
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        let buffer = sample.buffer().unwrap();
        let pts = buffer.pts().unwrap();
        first = Some(first.map_or(pts, |f| f.min(pts)));
        end = end.max(pts + buffer.duration().unwrap_or(gst::ClockTime::ZERO));
        frames += 1;
        if let Some(s) = sample.caps().and_then(|c| c.structure(0)) {
            size = (
                s.get::<i32>("width").unwrap(),
                s.get::<i32>("height").unwrap(),
            );
        }
    }
    let bus = pipeline.bus().unwrap();
    let error = bus.pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        error.is_none(),
        "decoding {} failed: {error:?}",
        path.display()
    );
    let duration = first.map_or(Duration::ZERO, |f| {
        Duration::from_nanos((end - f).nseconds())
    });
    Decoded {
        frames,
        duration,
        width: size.0,
        height: size.1,
    }
}

/// Width and height from a JPEG's start-of-frame marker.
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u16, u16)> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG starts with SOI");
    assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "JPEG ends with EOI");
    let mut i = 2;
    while i + 9 < jpeg.len() {
        if jpeg[i] != 0xFF {
            return None;
        }
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if (0xC0..=0xC3).contains(&marker) {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]);
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}
