//! What the line can ask for, through the whole system.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use capture_tests::system::{System, SystemOptions, reply_clips};

use super::audit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_a_rescan_and_a_new_order_while_recording_reach_the_core_system() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");

    let first = system.ok("start", "SO-E2E-1").await.expect("start");
    let first_clips = reply_clips(&first);
    assert_eq!(first_clips.len(), 2, "one clip per camera: {first}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rescan = system.ok("start", "SO-E2E-1").await.expect("rescan");
    assert_eq!(
        reply_clips(&rescan),
        first_clips,
        "a rescan names the same clips"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Another order while recording: the first is stopped normally, the new one starts.
    let second = system
        .ok("start", "SO-E2E-2")
        .await
        .expect("start while recording");
    let second_clips = reply_clips(&second);
    assert_eq!(second_clips.len(), 2);
    assert!(second_clips.iter().all(|c| !first_clips.contains(c)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = system.ok("stop", "SO-E2E-2").await.expect("stop");
    assert_eq!(reply_clips(&stop), second_clips);

    let figures = audit(
        &mut system,
        "paths: start, rescan, start while recording, stop",
    )
    .await;
    assert_eq!(
        (figures.orders, figures.clips, figures.completed),
        (2, 4, 4)
    );
    for clip in first_clips.iter().chain(&second_clips) {
        let record = &system.ledger.clips[clip];
        let (deliveries, data) = record.completed.values().next().expect("completed");
        assert!(*deliveries >= 1);
        assert_eq!(data["kind"], "video");
        assert_eq!(data["truncated"], false, "{clip}: {data}");
        assert!(
            data["duration_ms"].as_u64().expect("duration") >= 1000,
            "{data}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_leaves_no_event_and_no_object_and_a_snapshot_becomes_photos() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");

    let started = system.ok("start", "SO-E2E-ABORT").await.expect("start");
    let aborted = reply_clips(&started);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    system.ok("abort", "SO-E2E-ABORT").await.expect("abort");

    let snapshot = system
        .ok("snapshot", "SO-E2E-PHOTO")
        .await
        .expect("snapshot");
    let photos = reply_clips(&snapshot);
    assert_eq!(photos.len(), 2, "one photo per camera: {snapshot}");

    let figures = audit(&mut system, "paths: abort, snapshot").await;
    assert_eq!((figures.aborted, figures.completed), (2, 2));
    for clip in &aborted {
        assert!(system.ledger.clips[clip].aborted);
        assert!(system.ledger.clips[clip].completed.is_empty());
    }
    for clip in &photos {
        let (_, data) = system.ledger.clips[clip]
            .completed
            .values()
            .next()
            .expect("a photo completes");
        assert_eq!(data["kind"], "photo", "{data}");
        assert!(data["key"].as_str().expect("key").ends_with(".jpg"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_never_stopped_is_closed_at_max_secs_and_completes_as_truncated() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    let mut start = system.command_for("start", "SO-E2E-MAX");
    start["max_secs"] = 2.into();
    let reply = system.command(start).await.expect("start");
    assert_eq!(reply["ok"], true, "{reply}");

    let figures = audit(&mut system, "paths: max_secs").await;
    assert_eq!((figures.completed, figures.truncated), (2, 2));
    // The station is idle again: a stop finds nothing to stop.
    let stop = system.command_for("stop", "SO-E2E-MAX");
    let reply = system.command(stop).await.expect("stop");
    assert_eq!(reply["error"]["code"], "not_recording", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_start_mark_items_and_stop_an_order_whose_clips_complete_with_their_items() {
    // The packer's scanner in serial mode: a pseudo-terminal the agent reads.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let device = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .expect("the pty's path");
    let mut scanner = std::fs::File::from(pty.master);
    let mut scan = |code: &str| {
        scanner
            .write_all(format!("{code}\r\n").as_bytes())
            .expect("the scanner writes");
    };
    let mut system = System::start(SystemOptions {
        extra_toml: format!(
            "\n[scanner]\ndevice = \"{}\"\norder_pattern = \"^SO-[A-Z0-9-]+$\"\nstop = \"CTL-STOP\"\n",
            device.display()
        ),
        ..SystemOptions::default()
    })
    .await
    .expect("system");

    scan("SO-E2E-SCAN");
    tokio::time::sleep(Duration::from_secs(2)).await;
    scan("4006381333931");
    tokio::time::sleep(Duration::from_millis(500)).await;
    scan("4006381333948");
    tokio::time::sleep(Duration::from_secs(1)).await;
    scan("CTL-STOP");

    let figures = audit(
        &mut system,
        "paths: scans start, mark items and stop an order",
    )
    .await;
    assert_eq!(
        (figures.clips, figures.completed),
        (2, 2),
        "one clip per camera"
    );
    for (clip, record) in &system.ledger.clips {
        let (_, data) = record.completed.values().next().expect("completed");
        assert_eq!(data["order"], "SO-E2E-SCAN");
        let codes: Vec<&str> = data["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{clip}: no items in {data}"))
            .iter()
            .filter_map(|item| item["code"].as_str())
            .collect();
        assert_eq!(codes, ["4006381333931", "4006381333948"], "{clip}: {data}");
    }
    drop(pty.slave);
}
