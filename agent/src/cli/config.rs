//! `validate` and `generate-config`: check a configuration before the daemon uses it.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG, EXIT_BAD_CONFIG};

/// Options of `validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The configuration file to check.
    #[arg(long, default_value = "/etc/capture-agent/agent.toml")]
    pub config: PathBuf,
}

/// Checks a configuration file: prints every problem with its key and returns exit code 78,
/// or says it is valid.
pub fn validate(args: ValidateArgs) -> ExitCode {
    match Config::load(&args.config) {
        Ok(config) => {
            println!(
                "{}: valid (device {}, station {}, env {}, {} camera(s))",
                args.config.display(),
                config.agent.device,
                config.agent.station,
                config.agent.env,
                config.cameras.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Read { path, source }) => {
            eprintln!("error: reading {}: {source}", path.display());
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// Prints the commented default configuration.
pub fn generate_config() {
    print!("{DEFAULT_CONFIG}");
}
