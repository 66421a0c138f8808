//! `run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, EXIT_BAD_CONFIG};
use crate::telemetry::{self, LogFormat};

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (check it first with `capture-agent validate`).
    #[arg(long, default_value = "/etc/capture-agent/agent.toml")]
    pub config: PathBuf,
}

/// Runs the daemon until SIGTERM or SIGINT. A bad configuration exits with code 78 and every
/// problem listed (on stderr), before anything starts; then logs begin, in `format`, each
/// line carrying the agent's device, station and env.
pub fn run(args: RunArgs, format: LogFormat, filter: &str) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            match e {
                ConfigError::Read { path, source } => {
                    eprintln!("error: reading {}: {source}", path.display());
                }
                e => eprintln!("error: {e}"),
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let secrets = match config.secrets() {
        Ok(secrets) => secrets,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    telemetry::init_logs(
        format,
        filter,
        &[
            ("device", &config.agent.device),
            ("station", &config.agent.station),
            ("env", &config.agent.env),
        ],
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(crate::daemon::run(config, secrets, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "capture agent failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
