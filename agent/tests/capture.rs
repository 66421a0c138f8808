//! The capture engine against real GStreamer, with `videotestsrc` as the camera.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use capture_agent::capture::{
    Camera, CameraState, CaptureError, RecordingRequest, Source, inspect, seal::part_path,
    seal_part_file,
};
use common::{decode, eventually, jpeg_size, running_camera, test_camera};

fn request(dir: &std::path::Path, clip_id: &str, order: &str) -> RecordingRequest {
    RecordingRequest {
        clip_id: clip_id.into(),
        order: order.into(),
        station: "pack-03".into(),
        dir: dir.to_path_buf(),
        preroll: None,
        postroll: None,
        part_size: capture_agent::digest::DEFAULT_PART_SIZE,
    }
}

#[tokio::test]
async fn a_clip_holds_preroll_recorded_time_and_postroll_and_starts_on_a_keyframe() {
    let dir = tempfile::tempdir().unwrap();
    let spec = test_camera("top"); // pre-roll 3 s, post-roll 1 s (the defaults)
    let camera = running_camera(spec.clone()).await;
    let preroll_full = spec.preroll + Duration::from_millis(300);
    eventually("the pre-roll to fill", Duration::from_secs(20), || {
        camera
            .status()
            .running_since
            .is_some_and(|t| t.elapsed() >= preroll_full)
    })
    .await;

    // The clip's bounds count from when the start and the stop were asked, however long the
    // camera took to get to them.
    let began = Instant::now();
    let started = camera
        .start_recording(request(dir.path(), "01CLIP", "SO-2026-000123"))
        .await
        .unwrap();
    assert_eq!(started.part, dir.path().join("01CLIP.mp4.part"));
    assert!(
        started.part.exists(),
        "the part file exists while recording"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // The recorded time under test.
    let recorded = began.elapsed();
    let clip = camera.stop_recording().await.unwrap();

    assert_eq!(clip.path, dir.path().join("01CLIP.mp4"));
    assert!(
        !started.part.exists(),
        "the part file is renamed when sealed"
    );
    assert!(!clip.truncated);
    // A clip starts on the keyframe at or before `start - preroll`: never less pre-roll than
    // asked, at most one keyframe interval more.
    assert!(
        clip.preroll >= spec.preroll - Duration::from_millis(40),
        "pre-roll {:?}",
        clip.preroll
    );
    assert!(
        clip.preroll <= spec.preroll + spec.keyframe_interval + Duration::from_millis(40),
        "pre-roll {:?}",
        clip.preroll
    );

    let decoded = decode(&clip.path);
    let expected = clip.preroll + recorded + spec.postroll;
    let diff = decoded.duration.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(500),
        "decoded {:?}, expected {expected:?}",
        decoded.duration
    );
    assert_eq!((decoded.width, decoded.height), (320, 240));
    assert_eq!(decoded.frames, clip.frames, "every frame muxed decodes");
    assert!(clip.duration.abs_diff(decoded.duration) <= Duration::from_millis(50));

    let info = inspect(&clip.path).unwrap();
    assert!(info.starts_on_keyframe, "the first frame is a keyframe");
    assert!(!info.cut);

    let bytes = fs::read(&clip.path).unwrap();
    assert_eq!(clip.size, bytes.len() as u64);
    assert_eq!(
        clip.sha256,
        capture_agent::capture::seal::digest_file(&clip.path, 8 << 20)
            .unwrap()
            .sha256
    );
    assert_eq!(
        clip.parts.etag(),
        hex::encode(capture_agent::uploader::md5_of_file(&clip.path).unwrap()),
        "a clip of one part: its MD5, from the seal's one read"
    );
    assert!(clip.started_at.is_some());
    camera.shutdown().await;
}

#[tokio::test]
async fn abort_discards_the_clip_and_the_camera_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_camera("side");
    spec.preroll = Duration::ZERO;
    spec.postroll = Duration::ZERO;
    let camera = running_camera(spec).await;

    let started = camera
        .start_recording(request(dir.path(), "gone", "SO-1"))
        .await
        .unwrap();
    assert!(matches!(
        camera
            .start_recording(request(dir.path(), "other", "SO-2"))
            .await,
        Err(CaptureError::AlreadyRecording { .. })
    ));
    camera.abort_recording().await.unwrap();
    assert!(!started.part.exists());
    assert!(matches!(
        camera.stop_recording().await,
        Err(CaptureError::NotRecording { .. })
    ));

    camera
        .start_recording(request(dir.path(), "kept", "SO-2"))
        .await
        .unwrap();
    eventually("a few frames", Duration::from_secs(10), || {
        fs::metadata(dir.path().join("kept.mp4.part")).is_ok_and(|m| m.len() > 0)
    })
    .await;
    let clip = camera.stop_recording().await.unwrap();
    assert!(clip.frames > 0);
    assert!(
        inspect(&clip.path).unwrap().starts_on_keyframe,
        "without pre-roll the clip starts on a forced keyframe"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the kept clip is on disk"
    );
    camera.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_is_a_jpeg_of_the_configured_size() {
    let camera = running_camera(test_camera("snap")).await;
    let shot = camera.snapshot().await.unwrap();
    assert_eq!((shot.width, shot.height), (320, 240));
    assert_eq!(jpeg_size(&shot.jpeg), Some((320, 240)));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.jpg");
    shot.write_to(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), shot.jpeg);
    assert!(!part_path(&path).exists());

    // Again, while recording: the pipeline is not reopened.
    camera
        .start_recording(request(dir.path(), "with-photo", "SO-9"))
        .await
        .unwrap();
    let second = camera.snapshot().await.unwrap();
    assert_eq!(jpeg_size(&second.jpeg), Some((320, 240)));
    camera.abort_recording().await.unwrap();
    camera.shutdown().await;
}

#[tokio::test]
async fn a_missing_v4l2_device_is_a_typed_error_and_the_other_camera_keeps_recording() {
    let dir = tempfile::tempdir().unwrap();
    let good = Camera::start(test_camera("good")).unwrap();
    let missing_path = "/dev/v4l/by-id/usb-no-such-camera-video-index0";
    let mut spec = test_camera("gone");
    spec.source = Source::V4l2(PathBuf::from(missing_path));
    let missing = Camera::start(spec).unwrap();

    match missing.wait_until_running(Duration::from_secs(20)).await {
        Err(CaptureError::DeviceNotFound { camera, device }) => {
            assert_eq!(camera, "gone");
            assert_eq!(device, missing_path);
        }
        other => panic!("expected DeviceNotFound, got {other:?}"),
    }
    let error = missing
        .start_recording(request(dir.path(), "nope", "SO-1"))
        .await
        .unwrap_err();
    assert!(error.is_device_fault(), "{error}");
    assert!(
        error.to_string().contains(missing_path),
        "the error names the device: {error}"
    );
    assert!(matches!(
        missing.status().state,
        CameraState::Restarting { .. } | CameraState::Starting
    ));

    good.wait_until_running(Duration::from_secs(20))
        .await
        .unwrap();
    good.start_recording(request(dir.path(), "fine", "SO-1"))
        .await
        .unwrap();
    // The failing camera keeps retrying (with backoff) while the good one records.
    eventually(
        "the failing camera to retry",
        Duration::from_secs(20),
        || missing.status().restarts >= 2,
    )
    .await;
    let clip = good.stop_recording().await.unwrap();
    assert!(clip.frames > 0 && !clip.truncated);
    assert!(decode(&clip.path).frames > 0);
    good.shutdown().await;
    missing.shutdown().await;
}

#[tokio::test]
async fn a_part_file_cut_mid_fragment_seals_to_its_complete_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_camera("cut");
    spec.preroll = Duration::ZERO;
    let camera = running_camera(spec).await;
    let started = camera
        .start_recording(request(dir.path(), "whole", "SO-7"))
        .await
        .unwrap();
    eventually("three fragments on disk", Duration::from_secs(20), || {
        fs::metadata(&started.part).is_ok_and(|m| m.len() > 40_000)
    })
    .await;
    // Shutdown finalises the file but leaves it as a part file, as after a daemon stop.
    camera.shutdown().await;
    let whole = fs::read(&started.part).unwrap();

    // Cut it at an arbitrary byte, as a power cut would.
    let cut_part = dir.path().join("cut.mp4.part");
    fs::write(&cut_part, &whole[..whole.len() * 2 / 3]).unwrap();
    let sealed = seal_part_file(&cut_part, 8 << 20).unwrap();
    assert!(sealed.truncated);
    assert_eq!(sealed.path, dir.path().join("cut.mp4"));
    assert!(!cut_part.exists());
    let decoded = decode(&sealed.path);
    assert_eq!(decoded.frames, sealed.frames);
    assert!(decoded.duration.abs_diff(sealed.duration) <= Duration::from_millis(50));
    let full = inspect(&started.part).unwrap();
    assert!(
        sealed.frames > 0 && sealed.frames < full.frames,
        "{} of {} frames",
        sealed.frames,
        full.frames
    );

    // Sealing again after a crash mid-seal is harmless: nothing left to seal.
    assert!(seal_part_file(&cut_part, 8 << 20).is_err());
}
