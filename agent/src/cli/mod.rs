//! The operator subcommands: test a camera with the same engine the daemon uses.
//!
//! `main.rs` parses the command line and calls one function here per subcommand. Each prints
//! its progress and result on stdout; on failure it returns an error whose message says what
//! went wrong and what to check ([`hint`]).

mod camera_args;
mod cameras;
mod clip;
mod config;
mod record;
mod run;
mod snapshot;
mod spool;

pub use camera_args::CameraArgs;
pub use cameras::cameras;
pub use clip::{InspectArgs, SealArgs, inspect, seal};
pub use config::{ValidateArgs, generate_config, validate};
pub use record::{RecordArgs, record};
pub use run::{RunArgs, run};
pub use snapshot::{SnapshotArgs, snapshot};
pub use spool::{SpoolArgs, spool};

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

/// Wraps a capture error for the command line, adding the hint.
pub(crate) fn explain(error: CaptureError) -> anyhow::Error {
    match hint(&error) {
        Some(h) => anyhow::anyhow!("{error}\n  hint: {h}"),
        None => anyhow::Error::new(error),
    }
}

/// A small runtime for the async handle (the commands are short-lived and single-camera).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?)
}
