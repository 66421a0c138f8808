//! The capture agent: the daemon that runs on every station's Raspberry Pi.
//!
//! See `ARCHITECTURE.md` at the repository root for how a clip travels from the line's
//! command to the core system's event.

pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod disk;
pub mod hint;
pub mod link;
pub mod spool;
pub mod station;
pub mod telemetry;
pub mod uploader;

/// The agent's version, as reported by `--version` and in the station status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
