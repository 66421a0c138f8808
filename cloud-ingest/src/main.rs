//! `cloud-ingest`: command-line entry point. Every subcommand lives in the library.

use clap::Parser;

/// Verifies uploaded clips, catalogs them and emits completion events to the core system.
#[derive(Debug, Parser)]
#[command(name = "cloud-ingest", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
