//! H.264 encoder choice.
//!
//! `auto` resolves once, when the pipeline is built, in this order:
//! 1. passthrough when the source already gives H.264 and no overlay is wanted (nothing to
//!    burn in, so no reason to decode and re-encode);
//! 2. hardware `v4l2h264enc` when the element exists (Pi 4; the v4l2 plugin registers it only
//!    when an encoder device is present). It gets explicit level caps
//!    `video/x-h264,level=(string)4`: without them it picks level 1.0 and fails above 128x96;
//! 3. software `x264enc speed-preset=ultrafast tune=zerolatency` (Pi 5 has no hardware encoder).
//!
//! Every encoder gets a keyframe every `keyframe_interval` (about 1 s), which bounds how much
//! extra pre-roll a clip may hold and how much video a crash can lose.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::CaptureError;
use super::spec::{CameraSpec, EncoderChoice};

/// What a running pipeline actually uses (reported in logs and the station status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// Hardware `v4l2h264enc`.
    V4l2H264,
    /// Software `x264enc`.
    X264,
    /// The camera's own H.264, parsed but not re-encoded.
    Passthrough,
}

impl EncoderKind {
    /// Picks the encoder for `spec`, checking that the needed element is installed.
    pub fn resolve(spec: &CameraSpec) -> Result<Self, CaptureError> {
        let kind = match spec.encoder {
            EncoderChoice::X264 => Self::X264,
            EncoderChoice::V4l2 => Self::V4l2H264,
            EncoderChoice::Passthrough => Self::Passthrough,
            EncoderChoice::Auto
                if !spec.overlay && spec.source.can_give_h264(spec.input_format) =>
            {
                Self::Passthrough
            }
            EncoderChoice::Auto if element_exists("v4l2h264enc") => Self::V4l2H264,
            EncoderChoice::Auto => Self::X264,
        };
        if let Some(element) = kind.element() {
            require_element(element)?;
        }
        Ok(kind)
    }

    /// The encoder element, if any.
    pub fn element(self) -> Option<&'static str> {
        match self {
            Self::V4l2H264 => Some("v4l2h264enc"),
            Self::X264 => Some("x264enc"),
            Self::Passthrough => None,
        }
    }

    /// The pipeline-description fragment from raw video to H.264 (empty for passthrough).
    pub(crate) fn launch_fragment(self, spec: &CameraSpec) -> Option<String> {
        let gop = spec.keyframe_distance();
        match self {
            Self::X264 => Some(format!(
                "x264enc name=encoder speed-preset=ultrafast tune=zerolatency key-int-max={gop} bitrate={}",
                spec.bitrate.kbps()
            )),
            Self::V4l2H264 => Some(format!(
                "videoconvert ! v4l2h264enc name=encoder \
                 extra-controls=\"controls,video_bitrate={},h264_i_frame_period={gop},repeat_sequence_header=1\" \
                 ! video/x-h264,level=(string)4",
                spec.bitrate.0
            )),
            Self::Passthrough => None,
        }
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4l2H264 => "v4l2h264enc (hardware)",
            Self::X264 => "x264enc (software)",
            Self::Passthrough => "passthrough (camera H.264)",
        })
    }
}

/// Whether GStreamer has a factory for `element`.
pub(crate) fn element_exists(element: &str) -> bool {
    gstreamer::ElementFactory::find(element).is_some()
}

/// Fails with an error that says which Debian package brings `element`.
pub(crate) fn require_element(element: &str) -> Result<(), CaptureError> {
    if element_exists(element) {
        return Ok(());
    }
    let package = match element {
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "v4l2h264enc" | "v4l2src" | "qtdemux" | "mp4mux" | "jpegdec" | "jpegenc" | "rtspsrc"
        | "rtph264depay" => "gstreamer1.0-plugins-good",
        "h264parse" => "gstreamer1.0-plugins-bad",
        "libcamerasrc" => "gstreamer1.0-libcamera",
        _ => "gstreamer1.0-plugins-base",
    };
    Err(CaptureError::MissingElement {
        element: element.to_string(),
        hint: format!(
            "install the Debian package {package} (gst-inspect-1.0 {element} shows whether it is found)"
        ),
    })
}
