//! `capture-agent spool`: the operator's view of the spool, read while the daemon may run.

use std::process::Command;

use capture_agent::config::DEFAULT_CONFIG;
use capture_agent::spool::{self, ClipState, NewClip, Sealed, Spool, clips};

fn clip(clip_id: &str, started_at: &str) -> NewClip {
    NewClip {
        clip_id: clip_id.into(),
        order: "SO-1".into(),
        camera: "top".into(),
        kind: "video".into(),
        state: ClipState::Recording,
        path: format!("/spool/{clip_id}.mp4.part"),
        started_at: started_at.into(),
        preroll_ms: 3000,
        clock_synced: true,
        meta: None,
    }
}

/// The default configuration with its `spool_dir` set to `dir`, written into `dir`.
fn config_with_spool_in(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    let spool_dir = dir.to_str().expect("a UTF-8 temporary path");
    let text = DEFAULT_CONFIG.replace(
        "spool_dir = \"/var/lib/capture-agent\"",
        &format!("spool_dir = {spool_dir:?}"),
    );
    std::fs::write(&config, text).expect("writing the config");
    config
}

fn run(config: &std::path::Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capture-agent"));
    command.arg("spool").arg("--config").arg(config);
    if json {
        command.arg("--json");
    }
    command.output().expect("running capture-agent spool")
}

#[tokio::test]
async fn spool_lists_clips_by_state_with_bytes_and_the_last_upload_error() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&spool::database_path(dir.path())).unwrap();
    spool
        .call(|c| {
            clips::insert(c, &clip("A", "2026-11-23T10:00:00Z"))?;
            clips::insert(c, &clip("B", "2026-11-23T10:05:00Z"))?;
            clips::insert(c, &clip("C", "2026-11-23T10:10:00Z"))?;
            for (id, size) in [("A", 1000), ("B", 3000)] {
                let sealed = Sealed {
                    path: format!("/spool/{id}.mp4"),
                    size,
                    sha256: "00".repeat(32),
                    parts: capture_agent::digest::PartDigests {
                        part_size: 8 << 20,
                        md5s: vec![[0; 16]],
                    },
                    duration_ms: 5000,
                    ended_at: "2026-11-23T10:06:00Z".into(),
                    truncated: false,
                };
                clips::seal(c, id, &sealed)?;
            }
            clips::set_state(c, "A", ClipState::Uploading)?;
            clips::set_bytes_sent(c, "A", 400)?;
            clips::record_failure(c, "A", "connection refused")?;
            Ok(())
        })
        .await
        .unwrap();
    let config = config_with_spool_in(dir.path());

    let output = run(&config, true);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let totals = report["totals"].as_array().unwrap();
    let by_state = |state: &str| {
        totals
            .iter()
            .find(|t| t["state"] == state)
            .map(|t| (t["clips"].as_i64().unwrap(), t["bytes"].as_i64().unwrap()))
    };
    assert_eq!(by_state("uploading"), Some((1, 1000)));
    assert_eq!(by_state("sealed"), Some((1, 3000)));
    assert_eq!(by_state("recording"), Some((1, 0)));
    let waiting = report["clips"].as_array().unwrap();
    assert_eq!(
        waiting.len(),
        2,
        "the recording clip is not waiting for the cloud"
    );
    assert_eq!(waiting[0]["clip_id"], "A", "oldest first");
    assert_eq!(waiting[0]["bytes_sent"], 400);
    assert_eq!(waiting[0]["last_error"], "connection refused");

    let output = run(&config, false);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("uploading        1           1000"),
        "{table}"
    );
    assert!(
        table.contains("sent 400/1000 bytes, 1 failed attempt(s), last error: connection refused"),
        "{table}"
    );
}

#[test]
fn spool_says_when_the_daemon_has_not_run_yet() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_spool_in(dir.path());
    let output = run(&config, false);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the daemon has not run"), "{stderr}");
}
