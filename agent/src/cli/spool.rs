//! `capture-agent spool`: what the spool holds, by state, and where each waiting clip is.
//!
//! Reads the database with a read-only connection, so it is safe while the daemon runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::config::Config;
use crate::spool::{self, ClipRow, ClipState, clips};

/// Options of `spool`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// The agent's configuration file (its `agent.spool_dir` locates the spool).
    #[arg(long, default_value = "/etc/capture-agent/agent.toml")]
    pub config: PathBuf,
    /// Print JSON instead of a table (for scripts and monitoring).
    #[arg(long)]
    pub json: bool,
    /// How many clips to list, oldest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// List clips in every state (also recording, accepted and aborted), not only those
    /// still waiting for the cloud.
    #[arg(long)]
    pub all: bool,
}

/// Runs `spool`.
pub fn spool(args: SpoolArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config =
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let path = spool::database_path(&config.agent.spool_dir);
    if !path.exists() {
        anyhow::bail!(
            "no spool database at {}: the daemon has not run with this configuration yet",
            path.display()
        );
    }
    let connection = spool::open_read_only(&path)?;
    let totals = clips::totals(&connection)?;
    let mut waiting = Vec::new();
    let states: &[ClipState] = if args.all {
        &ClipState::ALL
    } else {
        &[
            ClipState::Uploading,
            ClipState::Sealed,
            ClipState::Uploaded,
            ClipState::Failed,
        ]
    };
    for &state in states {
        waiting.extend(clips::in_state(&connection, state, args.limit)?);
    }
    waiting.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    waiting.truncate(args.limit);

    if args.json {
        let totals: Vec<_> = totals
            .iter()
            .map(|(state, count, bytes)| json!({"state": state.as_str(), "clips": count, "bytes": bytes}))
            .collect();
        let clips: Vec<_> = waiting.iter().map(clip_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"spool": path, "totals": totals, "clips": clips})
            )?
        );
        return Ok(());
    }
    println!("spool {}", path.display());
    println!("{:<10} {:>7} {:>14}", "state", "clips", "bytes");
    for (state, count, bytes) in &totals {
        println!("{:<10} {count:>7} {bytes:>14}", state.as_str());
    }
    if totals.is_empty() {
        println!("(empty)");
    }
    if !waiting.is_empty() {
        println!(
            "\n{}, oldest first:",
            if args.all {
                "every clip"
            } else {
                "waiting for the cloud"
            }
        );
        for clip in &waiting {
            let size = clip.size.unwrap_or(0);
            println!(
                "  {} {:<9} order {} camera {} started {} sent {}/{} bytes{}{}",
                clip.clip_id,
                clip.state.as_str(),
                clip.order,
                clip.camera,
                clip.started_at,
                clip.bytes_sent,
                size,
                if clip.attempts > 0 {
                    format!(", {} failed attempt(s)", clip.attempts)
                } else {
                    String::new()
                },
                clip.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

fn clip_json(clip: &ClipRow) -> serde_json::Value {
    json!({
        "clip_id": clip.clip_id,
        "state": clip.state.as_str(),
        "order": clip.order,
        "camera": clip.camera,
        "kind": clip.kind,
        "started_at": clip.started_at,
        "size": clip.size,
        "bytes_sent": clip.bytes_sent,
        "attempts": clip.attempts,
        "last_error": clip.last_error,
    })
}
