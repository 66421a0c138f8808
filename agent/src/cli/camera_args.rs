//! Command-line options that describe a camera (shared by `record` and `snapshot`).

use std::time::Duration;

use clap::Args;

use crate::capture::{Bitrate, CameraSpec, EncoderChoice, InputFormat, Resolution, Source};

/// Which camera, and how to capture it.
#[derive(Debug, Clone, Args)]
pub struct CameraArgs {
    /// Camera: `test`, `v4l2:/dev/v4l/by-id/...`, `libcamera[:NAME]` or `rtsp://...`.
    #[arg(long, default_value = "test")]
    pub source: Source,
    /// Frame size.
    #[arg(long, default_value = "640x480")]
    pub size: Resolution,
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// H.264 bitrate (e.g. 4Mbps, 2500kbps).
    #[arg(long, default_value = "2Mbps")]
    pub bitrate: Bitrate,
    /// Encoder: auto (hardware if present, else x264), x264, v4l2, passthrough.
    #[arg(long, value_enum, default_value = "auto")]
    pub encoder: EncoderArg,
    /// What a V4L2 camera is asked for: raw, mjpeg, h264.
    #[arg(long, value_enum, default_value = "mjpeg")]
    pub input_format: InputArg,
    /// Camera name (shown in the overlay).
    #[arg(long, default_value = "cam")]
    pub name: String,
    /// Do not burn order, station, camera and time into the picture.
    #[arg(long)]
    pub no_overlay: bool,
}

/// `--encoder` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EncoderArg {
    Auto,
    X264,
    V4l2,
    Passthrough,
}

/// `--input-format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InputArg {
    Raw,
    Mjpeg,
    H264,
}

impl CameraArgs {
    /// The engine's configuration for these options.
    pub fn spec(&self) -> CameraSpec {
        let mut spec = CameraSpec::new(self.name.clone(), self.source.clone());
        spec.resolution = self.size;
        spec.fps = self.fps;
        spec.bitrate = self.bitrate;
        spec.overlay = !self.no_overlay;
        spec.encoder = match self.encoder {
            EncoderArg::Auto => EncoderChoice::Auto,
            EncoderArg::X264 => EncoderChoice::X264,
            EncoderArg::V4l2 => EncoderChoice::V4l2,
            EncoderArg::Passthrough => EncoderChoice::Passthrough,
        };
        spec.input_format = match self.input_format {
            InputArg::Raw => InputFormat::Raw,
            InputArg::Mjpeg => InputFormat::Mjpeg,
            InputArg::H264 => InputFormat::H264,
        };
        spec
    }
}

/// Parses `3s`, `500ms`, `0`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 3s or 500ms)"))
}
