//! The operator subcommands: test a camera with the same engine the daemon uses.
//!
//! `main.rs` parses the command line and calls one function here per subcommand. Each prints
//! its progress and result on stdout; on failure it returns an error whose message says what
//! went wrong and what to check ([`crate::hint`]).

mod camera_args;
mod cameras;
mod clip;
mod config;
mod record;
mod run;
mod scanners;
mod snapshot;
mod spool;

pub use camera_args::CameraArgs;
pub use cameras::cameras;
pub use clip::{InspectArgs, SealArgs, inspect, seal};
pub use config::{ValidateArgs, generate_config, validate};
pub use record::{RecordArgs, record};
pub use run::{RunArgs, run};
pub use scanners::scanners;
pub use snapshot::{SnapshotArgs, snapshot};
pub use spool::{SpoolArgs, spool};

/// A small runtime for the async handle (the commands are short-lived and single-camera).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?)
}
