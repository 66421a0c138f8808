//! The one error type of the capture module.
//!
//! Every variant names what failed and with which input (camera name, device, file), so a
//! message read in the journal or printed by the CLI says what to check. The type is `Clone`
//! because the last error of a camera is kept in its status (a `watch` channel) while the
//! pipeline is restarted with backoff; I/O errors are therefore held in an `Arc`.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong in capture, typed so that the daemon can map it to a reply
/// code (`camera_unavailable`, `disk_full`, `internal`) and an operator can act on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaptureError {
    /// The camera configuration is inconsistent (bad value, impossible combination).
    #[error("camera {camera:?}: invalid configuration: {reason}")]
    InvalidSpec { camera: String, reason: String },

    /// A GStreamer element the configuration needs is not installed.
    #[error("GStreamer element {element:?} is not installed: {hint}")]
    MissingElement { element: String, hint: String },

    /// The camera device does not exist (unplugged, wrong path, wrong name).
    #[error(
        "camera {camera:?}: device {device} not found (is it plugged in? check `capture-agent cameras`)"
    )]
    DeviceNotFound { camera: String, device: String },

    /// The device exists but another process holds it.
    #[error(
        "camera {camera:?}: device {device} is busy (another process is using it; check `fuser {device}`)"
    )]
    DeviceBusy { camera: String, device: String },

    /// The device was streaming and went away, or stopped delivering frames.
    #[error("camera {camera:?}: device {device} stopped delivering frames: {detail}")]
    DeviceLost {
        camera: String,
        device: String,
        detail: String,
    },

    /// The pipeline failed for another reason (negotiation, encoder, network for RTSP).
    #[error("camera {camera:?} ({device}): pipeline failed: {detail}")]
    Pipeline {
        camera: String,
        device: String,
        detail: String,
    },

    /// The camera's pipeline is not running right now (it is being restarted).
    #[error("camera {camera:?} is not running{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Unavailable {
        camera: String,
        cause: Option<Box<CaptureError>>,
    },

    /// A recording was requested while one is already in progress on this camera.
    #[error("camera {camera:?} is already recording to {path}")]
    AlreadyRecording { camera: String, path: PathBuf },

    /// A stop or abort was requested while the camera is not recording.
    #[error("camera {camera:?} is not recording")]
    NotRecording { camera: String },

    /// Something did not happen within its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },

    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    /// A file holds no complete video fragment (nothing can be recovered from it).
    #[error("{path} holds no playable video: {reason}")]
    Unplayable { path: PathBuf, reason: String },

    /// The camera's actor has shut down; the handle is no longer usable.
    #[error("camera {camera:?} has shut down")]
    Closed { camera: String },

    /// GStreamer itself failed (initialisation, pipeline construction, state change).
    #[error("GStreamer: {0}")]
    Gst(String),
}

impl CaptureError {
    /// Wraps an I/O error with what was being done and to which file.
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True when the error is about the camera device itself (missing, busy, unplugged): the
    /// daemon replies `camera_unavailable` for these.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::DeviceNotFound { .. }
                | Self::DeviceBusy { .. }
                | Self::DeviceLost { .. }
                | Self::Unavailable { .. }
        )
    }

    /// True when the underlying cause is a full disk (ENOSPC): the daemon replies `disk_full`.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

impl From<gstreamer::glib::Error> for CaptureError {
    fn from(e: gstreamer::glib::Error) -> Self {
        Self::Gst(e.to_string())
    }
}

impl From<gstreamer::glib::BoolError> for CaptureError {
    fn from(e: gstreamer::glib::BoolError) -> Self {
        Self::Gst(e.to_string())
    }
}

impl From<gstreamer::StateChangeError> for CaptureError {
    fn from(e: gstreamer::StateChangeError) -> Self {
        Self::Gst(e.to_string())
    }
}
