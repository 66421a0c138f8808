//! What an operator should check when a camera fails: the hint under a capture error.
//!
//! The CLI prints it below the error of a subcommand; the daemon adds it to the error when a
//! camera does not start. Both take it from here, so the daemon does not import the CLI.

use crate::capture::CaptureError;

/// What an operator should check for an error, if there is something specific.
pub fn hint(error: &CaptureError) -> Option<String> {
    Some(match error {
        CaptureError::DeviceNotFound { device, .. } => format!(
            "list the cameras with `capture-agent cameras` and `ls -l /dev/v4l/by-id/`; check the cable and that {device} is the by-id path of the camera"
        ),
        CaptureError::DeviceBusy { device, .. } => format!(
            "another process holds the camera: `fuser -v {device}`; stop the daemon first (`systemctl stop capture-agent`)"
        ),
        CaptureError::DeviceLost { .. } => "check the cable and power (`dmesg | tail`), then try again".into(),
        CaptureError::Pipeline { detail, .. } if detail.contains("negotiat") => {
            "the camera does not offer this size/rate/format: see its modes with `capture-agent cameras` and adjust --size, --fps or --input-format".into()
        }
        CaptureError::Pipeline { .. } => "run with --log debug (or GST_DEBUG=3) for GStreamer's details".into(),
        CaptureError::Io { .. } => "check that the output directory exists, is writable, and has free space (`df -h`)".into(),
        CaptureError::MissingElement { .. } => "install the package named above, then check with gst-inspect-1.0".into(),
        CaptureError::Unavailable { cause: Some(cause), .. } => return hint(cause),
        _ => return None,
    })
}

/// Wraps a capture error for the operator (the CLI's answer, the daemon's start-up error),
/// adding the hint.
pub(crate) fn explain(error: CaptureError) -> anyhow::Error {
    match hint(&error) {
        Some(h) => anyhow::anyhow!("{error}\n  hint: {h}"),
        None => anyhow::Error::new(error),
    }
}
