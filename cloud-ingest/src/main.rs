//! `cloud-ingest`: command-line entry point. Every subcommand lives in the library.
//!
//! `run` reads and validates the config, runs the service until SIGTERM or ctrl-c, then drains
//! within the configured grace period. `validate` prints every problem of a config and exits
//! 78 (`EX_CONFIG`) when there is one. `generate-config` prints the commented default.
//! `token create|list|revoke` manages the API's service tokens in the catalog database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloud_ingest::auth::cli::TokenCommand;
use cloud_ingest::config::{Config, DEFAULT_CONFIG};

/// `EX_CONFIG` from sysexits.h: the configuration is wrong.
const EX_CONFIG: u8 = 78;

/// Verifies uploaded clips, catalogs them and emits completion events to the core system.
#[derive(Debug, Parser)]
#[command(name = "cloud-ingest", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Run {
        #[arg(long, short, env = "CLOUD_INGEST_CONFIG")]
        config: PathBuf,
    },
    /// Apply the catalog migrations, then exit.
    Migrate {
        #[arg(long, short, env = "CLOUD_INGEST_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration; print every problem; exit 78 if there is one.
    Validate {
        #[arg(long, short, env = "CLOUD_INGEST_CONFIG")]
        config: PathBuf,
    },
    /// Print the commented default configuration.
    GenerateConfig,
    /// Create, list or revoke the service tokens of the HTTP API.
    #[command(subcommand)]
    Token(TokenCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match cli.command {
        Command::GenerateConfig => {
            print!("{DEFAULT_CONFIG}");
            return ExitCode::SUCCESS;
        }
        Command::Run { ref config }
        | Command::Migrate { ref config }
        | Command::Validate { ref config } => config.clone(),
        Command::Token(ref command) => command.config().to_owned(),
    };
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: invalid configuration", config_path.display());
            for problem in error.problems() {
                eprintln!("  {problem}");
            }
            return ExitCode::from(EX_CONFIG);
        }
    };
    let command = match cli.command {
        Command::Validate { .. } => {
            println!("{}: ok", config_path.display());
            return ExitCode::SUCCESS;
        }
        Command::Token(command) => return token(&config, command),
        command => command,
    };
    cloud_ingest::telemetry::init_logs();
    match serve(command, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cloud-ingest failed");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(command: Command, config: Config) -> anyhow::Result<()> {
    if let Command::Migrate { .. } = command {
        let applied = cloud_ingest::migrate(&config).await?;
        tracing::info!(?applied, "migrations applied");
        return Ok(());
    }
    let grace = config.shutdown.grace;
    let (signalled_tx, signalled) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(?grace, "shutdown requested; draining");
        let _ = signalled_tx.send(true);
    });
    let mut on_signal = signalled.clone();
    let service = cloud_ingest::run(config, async move {
        let _ = on_signal.wait_for(|s| *s).await;
    });
    let mut after_grace = signalled;
    tokio::select! {
        result = service => result.context("running the ingest"),
        _ = async { let _ = after_grace.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over; exiting with work in hand (it will be redelivered)");
            Ok(())
        }
    }
}

/// `token ...`: errors on stderr, exit 1.
#[tokio::main(flavor = "current_thread")]
async fn token(config: &Config, command: TokenCommand) -> ExitCode {
    match cloud_ingest::auth::cli::run(config, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cloud-ingest token: {:#}", anyhow::Error::new(error));
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes, systemd, docker stop) or ctrl-c.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
