//! The real `cloud-ingest` binary as the tests run it: `run` as a child process whose whole
//! log (stdout and stderr) goes to a file the test can read at any time, and the `token`
//! subcommands.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};

use anyhow::{Context, Result};
use capture_tests::fixtures::{HttpReply, http_request, wait_until};
use tokio::process::{Child, Command};

use super::DEADLINE;

pub const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");

/// `cloud-ingest run` in a child process.
pub struct IngestBinary {
    pub http_port: u16,
    child: Child,
    log: PathBuf,
}

impl IngestBinary {
    /// Starts `run --config <config>` with extra environment variables (`RUST_LOG`,
    /// `CLOUD_INGEST_*` overrides) and waits until `/readyz` answers 200.
    pub async fn start(config: &Path, http_port: u16, env: &[(&str, &str)]) -> Result<Self> {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let binary = IngestBinary {
            http_port,
            child: command.spawn().context("starting cloud-ingest run")?,
            log,
        };
        let ready = format!("http://127.0.0.1:{http_port}/readyz");
        wait_until("the binary ready", DEADLINE, || async {
            Ok(http_request(&ready, None)
                .await
                .ok()
                .filter(|r| r.status == 200))
        })
        .await
        .with_context(|| format!("log so far:\n{}", binary.log().unwrap_or_default()))?;
        Ok(binary)
    }

    /// GET `path` on the API address, with `Authorization: Bearer <bearer>` when given.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Result<HttpReply> {
        http_request(
            &format!("http://127.0.0.1:{}{path}", self.http_port),
            bearer,
        )
        .await
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.log)?)
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.child.id().context("child pid")?;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(killed.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .context("the binary did not exit after SIGTERM")?
            .context("waiting for the binary")
    }
}

/// `cloud-ingest token <args> --config <config>`.
pub fn token_cli(config: &Path, args: &[&str]) -> Result<Output> {
    std::process::Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .context("running cloud-ingest token")
}

/// Creates a token with the CLI; returns it (the CLI's stdout, trimmed).
pub fn create_token(config: &Path, name: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["create", "--name", name];
    all.extend_from_slice(args);
    let output = token_cli(config, &all)?;
    anyhow::ensure!(
        output.status.success(),
        "token create {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
