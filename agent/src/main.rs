//! `capture-agent`: command-line entry point. Every subcommand lives in the library.

use std::process::ExitCode;

use capture_agent::cli;
use capture_agent::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # Run the daemon (what the systemd unit does); JSON logs on stderr
  capture-agent run --config /etc/capture-agent/agent.toml

  # Which cameras does this Pi have, and in which modes?
  capture-agent cameras
  # Which barcode scanners are attached?
  capture-agent scanners

  # Record 5 s from the test pattern (no camera needed), then check the file
  capture-agent record --source test --seconds 5 --out /tmp/clip.mp4
  capture-agent inspect /tmp/clip.mp4

  # Record a USB camera at 1280x720, 30 fps, MJPEG input, with 3 s of pre-roll
  capture-agent record --source v4l2:/dev/v4l/by-id/usb-046d_C920-video-index0 \\
      --size 1280x720 --fps 30 --input-format mjpeg --preroll 3s --seconds 10 --out top.mp4

  # One photo from a CSI camera
  capture-agent snapshot --source libcamera --size 1920x1080 --out shot.jpg

  # Start a configuration, then check it (exit code 78 lists every problem)
  capture-agent generate-config > /etc/capture-agent/agent.toml
  capture-agent validate --config /etc/capture-agent/agent.toml

  # Seal a clip left as .part by a crash (rewrites the container, no re-encoding)
  capture-agent seal /var/lib/capture-agent/spool/01JD.mp4.part";

/// Records order-tagged video and photos at a station and uploads them to object storage.
#[derive(Debug, Parser)]
#[command(name = "capture-agent", version, about, after_long_help = EXAMPLES)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info` or `capture_agent=debug`). Default: `info`
    /// for `run`, `warn` for the other commands.
    #[arg(long, global = true, env = "CAPTURE_AGENT_LOG")]
    log: Option<String>,
    /// Log format: `json` (one object per line), `text`, or `journald` (native journal
    /// fields). `run` defaults to `journald` under systemd (JOURNAL_STREAM set), else `json`;
    /// the other commands to `text`.
    #[arg(long, global = true, env = "CAPTURE_AGENT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: serve the station's commands, record, upload (systemd runs this).
    #[command(
        after_long_help = "Example:\n  capture-agent run --config /etc/capture-agent/agent.toml\n\n\
        Exits with code 78 and every problem listed when the configuration is bad. SIGTERM\n\
        seals the recording in progress (marked truncated) and exits within a few seconds.\n\
        Metrics: GET http://127.0.0.1:9464/metrics (metrics.listen)."
    )]
    Run(cli::RunArgs),
    /// Record one clip from a camera, as the daemon would (operator test).
    #[command(
        after_long_help = "Example:\n  capture-agent record --source test --size 1280x720 --seconds 5 --out clip.mp4\n\n\
        The clip is written as clip.mp4.part (fragmented MP4, one fragment per second) and\n\
        renamed to clip.mp4 once sealed. If the command is killed, seal the .part with\n\
        `capture-agent seal clip.mp4.part`."
    )]
    Record(cli::RecordArgs),
    /// Take one JPEG from a running camera pipeline.
    #[command(
        after_long_help = "Example:\n  capture-agent snapshot --source test --size 640x480 --out shot.jpg"
    )]
    Snapshot(cli::SnapshotArgs),
    /// List the cameras GStreamer can see (V4L2 and libcamera) with their formats and sizes.
    Cameras,
    /// List the barcode scanners attached (keyboard-mode input devices and serial ttys).
    Scanners,
    /// Seal `*.part` files left by a crash: rewrite the container from the complete frames.
    Seal(cli::SealArgs),
    /// Read every frame of MP4 files and report frames, duration and first keyframe.
    Inspect(cli::InspectArgs),
    /// Check a configuration file: every problem with its key; exit code 78 when invalid.
    Validate(cli::ValidateArgs),
    /// Print a commented default configuration to start from.
    GenerateConfig,
    /// Show what the spool holds: clips by state with bytes, and upload progress.
    Spool(cli::SpoolArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run(_));
    let filter = cli
        .log
        .unwrap_or_else(|| if daemon { "info" } else { "warn" }.to_owned());
    if !daemon {
        telemetry::init_logs(cli.log_format.unwrap_or(LogFormat::Text), &filter, &[]);
    }
    let result = match cli.command {
        Command::Run(args) => {
            // Logs start once the configuration says who this agent is.
            let format = cli.log_format.unwrap_or_else(LogFormat::daemon_default);
            return cli::run(args, format, &filter);
        }
        Command::Record(args) => cli::record(args),
        Command::Snapshot(args) => cli::snapshot(args),
        Command::Cameras => cli::cameras(),
        Command::Scanners => cli::scanners(),
        Command::Seal(args) => cli::seal(args),
        Command::Inspect(args) => cli::inspect(args),
        Command::Validate(args) => return cli::validate(args),
        Command::Spool(args) => cli::spool(args),
        Command::GenerateConfig => {
            cli::generate_config();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
