//! The `capture-agent` binary as an operator runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use capture_agent::capture::{inspect, seal_part_file};
use common::{decode, jpeg_size};

const BIN: &str = env!("CARGO_BIN_EXE_capture-agent");

#[test]
fn record_killed_with_sigkill_leaves_a_file_that_seals_and_plays() {
    const N: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.mp4");
    let mut child = Command::new(BIN)
        .args([
            "record",
            "--source",
            "test",
            "--size",
            "320x240",
            "--seconds",
            "120",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait (with a deadline) for the line that says the recording has begun.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("recording ") && tx.send(()).is_err() {
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the recording never started");
    std::thread::sleep(N); // The recording time under test, not a wait for a condition.
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let part = dir.path().join("killed.mp4.part");
    assert!(part.exists(), "the recording is left as a part file");
    assert!(!out.exists());
    let before = inspect(&part).unwrap();
    assert!(before.starts_on_keyframe);

    let sealed = seal_part_file(&part, 8 << 20).unwrap();
    assert_eq!(sealed.path, out);
    assert!(sealed.truncated);
    let decoded = decode(&out);
    assert!(
        decoded.duration >= N - Duration::from_millis(1500),
        "decoded only {:?} of {N:?}",
        decoded.duration
    );
    assert_eq!(decoded.frames, sealed.frames);
}

#[test]
fn record_and_snapshot_commands_print_what_they_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let output = Command::new(BIN)
        .args([
            "record",
            "--source",
            "test",
            "--size",
            "320x240",
            "--seconds",
            "1",
            "--postroll",
            "500ms",
            "--out",
        ])
        .arg(&clip)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("sealed {}", clip.display())),
        "{stdout}"
    );
    assert!(stdout.contains("sha256"), "{stdout}");
    assert!(decode(&clip).frames > 0);

    let shot = dir.path().join("shot.jpg");
    let output = Command::new(BIN)
        .args(["snapshot", "--source", "test", "--size", "320x240", "--out"])
        .arg(&shot)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(jpeg_size(&std::fs::read(&shot).unwrap()), Some((320, 240)));
}

#[test]
fn a_missing_camera_fails_with_a_message_that_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "record",
            "--source",
            "v4l2:/dev/v4l/by-id/usb-nothing-video-index0",
            "--seconds",
            "1",
            "--out",
        ])
        .arg(dir.path().join("x.mp4"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/dev/v4l/by-id/usb-nothing-video-index0 not found"),
        "{stderr}"
    );
    assert!(stderr.contains("capture-agent cameras"), "{stderr}");
}

#[test]
fn help_teaches_with_examples() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("capture-agent record --source test"),
        "{help}"
    );
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("capture-agent "));
}

#[test]
fn scanners_lists_what_is_attached_or_says_where_to_look() {
    let output = Command::new(BIN).arg("scanners").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let attached = std::path::Path::new("/dev/input/by-id").exists()
        || std::path::Path::new("/dev/serial/by-id").exists();
    if text.starts_with("No scanners found.") {
        assert!(text.contains("/dev/input/by-id/"), "{text}");
        assert!(text.contains("dialout"), "{text}");
    } else {
        assert!(attached, "{text}");
        assert!(text.contains("device = \"/dev/"), "{text}");
    }
}
