//! A camera's published status: where its pipeline is in its life, its last error, the
//! recording in progress. The camera's actor is the only writer (through a
//! `tokio::sync::watch`); the [`super::CameraHandle`]s and the daemon read it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::encoder::EncoderKind;
use super::error::CaptureError;

/// Where a camera's pipeline is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraState {
    /// Started, no frame yet.
    Starting,
    /// Frames are flowing.
    Running,
    /// Failed; the next attempt is `retry_in` after the failure.
    Restarting { failures: u32, retry_in: Duration },
    /// Shut down.
    Stopped,
}

/// A camera's status, for the station status and `capture-agent` output.
#[derive(Debug, Clone)]
pub struct CameraStatus {
    pub camera: String,
    /// The device or URL (credentials removed).
    pub device: String,
    pub encoder: EncoderKind,
    pub state: CameraState,
    /// The most recent failure (kept after recovery, for the operator).
    pub last_error: Option<CaptureError>,
    /// Pipeline restarts since the camera was started.
    pub restarts: u32,
    /// The `*.part` file being recorded, if any.
    pub recording: Option<PathBuf>,
    /// When frames started flowing (the pre-roll is full once `preroll` has passed).
    pub running_since: Option<Instant>,
}
