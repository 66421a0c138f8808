//! Snapshots: one JPEG of the current frame of a running camera, without reopening it.
//!
//! An encoding pipeline has a snapshot branch after the overlay (so a photo carries the same
//! burned-in text as the video): a valve, closed by default, in front of `jpegenc`. A request
//! opens the valve; the first JPEG of a frame captured at or after the request answers every
//! waiting request and closes it again. That takes one frame interval plus the JPEG encoding
//! (well under the 300 ms budget at 30 fps), and costs nothing between requests.
//!
//! A passthrough camera has no raw frames: its newest keyframe from the pre-roll ring is
//! decoded and encoded to JPEG (`gst_video::convert_sample`), so the picture may be up to one
//! keyframe interval old.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use time::OffsetDateTime;

use super::error::CaptureError;
use super::seal::{part_path, sync_dir};

/// One JPEG picture.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The JPEG file's bytes.
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// UTC time the frame was captured (from the pipeline clock and the overlay's anchor).
    pub captured_at: OffsetDateTime,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .field("captured_at", &self.captured_at)
            .finish()
    }
}

impl Snapshot {
    /// Builds a snapshot from a JPEG sample of the snapshot branch.
    pub(crate) fn from_jpeg_sample(
        sample: &gst::Sample,
        captured_at: OffsetDateTime,
    ) -> Result<Self, CaptureError> {
        let buffer = sample
            .buffer()
            .ok_or_else(|| CaptureError::Gst("JPEG sample without a buffer".into()))?;
        let map = buffer
            .map_readable()
            .map_err(|e| CaptureError::Gst(format!("mapping the JPEG: {e}")))?;
        let (width, height) = sample
            .caps()
            .and_then(|c| c.structure(0))
            .map(|s| {
                (
                    s.get::<i32>("width").unwrap_or(0),
                    s.get::<i32>("height").unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        Ok(Self {
            jpeg: map.as_slice().to_vec(),
            width: width.max(0) as u32,
            height: height.max(0) as u32,
            captured_at,
        })
    }

    /// Decodes one H.264 keyframe (a sample with its caps) and encodes it as JPEG.
    pub(crate) fn from_keyframe(
        sample: &gst::Sample,
        captured_at: OffsetDateTime,
    ) -> Result<Self, CaptureError> {
        let caps = gst::Caps::builder("image/jpeg").build();
        let jpeg = gstreamer_video::convert_sample(
            sample,
            &caps,
            Some(gst::ClockTime::from_mseconds(2000)),
        )
        .map_err(|e| CaptureError::Gst(format!("decoding a keyframe for a snapshot: {e}")))?;
        Self::from_jpeg_sample(&jpeg, captured_at)
    }

    /// Writes the JPEG crash-safely: `path.part`, fsync, rename, fsync the directory.
    pub fn write_to(&self, path: &Path) -> Result<(), CaptureError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| CaptureError::io("creating directory", dir, e))?;
        }
        let part = part_path(path);
        let mut file = File::create(&part).map_err(|e| CaptureError::io("creating", &part, e))?;
        file.write_all(&self.jpeg)
            .map_err(|e| CaptureError::io("writing", &part, e))?;
        file.sync_all()
            .map_err(|e| CaptureError::io("fsyncing", &part, e))?;
        fs::rename(&part, path).map_err(|e| CaptureError::io("renaming", &part, e))?;
        sync_dir(path)
    }
}

/// How long a snapshot request may wait for its frame before failing.
pub(crate) const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
