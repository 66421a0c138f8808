//! The capture agent: the daemon that runs on every station's Raspberry Pi.
//!
//! See `ARCHITECTURE.md` at the repository root for how a clip travels from the line's
//! command to the core system's event.
//!
//! # Modules
//!
//! Layered, each using only the layers below it (`scripts/module-graph agent/src` checks that
//! no imports go in a circle; `ARCHITECTURE.md` has the table):
//!
//! 1. [`cli`]: the operator's subcommands, `run` among them, which starts the [`daemon`].
//! 2. [`daemon`]: the loop that turns commands into the station's decisions and carries them
//!    out; it starts every task below.
//! 3. [`link`] (MQTT) and [`uploader`] (the object store): one task per external resource.
//! 4. [`config`], [`telemetry`] (logs, metrics) and [`hint`] (what an operator checks for a
//!    capture error, printed by the CLI and added by the daemon).
//! 5. [`capture`] (the cameras' pipelines and sealing), [`scanner`] (the packer's barcode
//!    scanner: reading and classifying scans) and [`spool`] (SQLite).
//! 6. Leaves: [`digest`] (the seal's hashes and the upload's part plan), [`station`] (the state
//!    machine, no I/O), [`disk`] (quota and eviction).

pub mod backoff;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod digest;
pub mod disk;
pub mod hint;
pub mod link;
pub mod scanner;
pub mod spool;
pub mod station;
pub mod telemetry;
pub mod uploader;

/// The agent's version, as reported by `--version` and in the station status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
