//! The uploader against a real Garage: objects arrive with their key, type and metadata;
//! multipart uploads resume after a crash, a forgotten upload id or a store outage; wrong
//! credentials are reported and nothing is lost; confirms accept, re-upload or fail a clip;
//! the janitor aborts only orphans.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use capture_agent::digest::digest_file;
use capture_agent::spool::{self, ClipRow, ClipState, NewClip, Sealed, Spool, clips, multipart};
use capture_agent::telemetry::Metrics;
use capture_agent::uploader::{
    self, ConfirmEffect, Store, Uploader, UploaderHandle, UploaderSettings, janitor,
};
use capture_protocol::{Confirm, Env};
use capture_tests::fixtures::{Garage, wait_until};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

const MIB: u64 = 1 << 20;
const PART: u64 = 8 * MIB;
const DEADLINE: Duration = Duration::from_secs(120);

/// A Garage, a spool in a temporary directory and the settings of one station.
struct Station {
    garage: Garage,
    dir: tempfile::TempDir,
    spool: Spool,
    wake: Arc<Notify>,
    outbox_flushes: Arc<AtomicUsize>,
}

impl Station {
    async fn start() -> Result<Station> {
        let garage = Garage::start().await?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("clips"))?;
        let spool = Spool::open(&spool::database_path(dir.path()))?;
        Ok(Station {
            garage,
            dir,
            spool,
            wake: Arc::new(Notify::new()),
            outbox_flushes: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn env(&self) -> Env {
        "dev".parse().expect("a valid env")
    }

    fn settings(&self) -> UploaderSettings {
        let mut settings = UploaderSettings::new(
            self.env(),
            "pi-07".parse().expect("a valid device"),
            "pack-03".parse().expect("a valid station"),
            self.garage.bucket(),
        );
        settings.part_size = PART;
        settings.backoff.first = Duration::from_millis(200);
        settings.backoff.max = Duration::from_secs(2);
        settings.stall_timeout = Duration::from_secs(10);
        settings
    }

    /// Starts an uploader with `settings` and the fixture's correct credentials.
    fn uploader(&self, settings: UploaderSettings) -> (UploaderHandle, Arc<Metrics>) {
        self.uploader_with(settings, self.garage.client())
    }

    fn uploader_with(
        &self,
        settings: UploaderSettings,
        client: capture_objstore::Client,
    ) -> (UploaderHandle, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let flushes = self.outbox_flushes.clone();
        let handle = Uploader::start(
            settings,
            client,
            self.spool.clone(),
            metrics.clone(),
            self.wake.clone(),
            Arc::new(move || {
                flushes.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (handle, metrics)
    }

    /// A sealed clip of `size` random bytes, as the capture engine leaves it: the file in
    /// `clips/`, the row `sealed` with size, sha256 and the part MD5s of the seal's read.
    async fn sealed_clip(&self, kind: &str, size: u64, meta: Option<&str>) -> Result<ClipRow> {
        let clip_id = ulid::Ulid::new().to_string();
        let extension = if kind == "photo" { "jpg" } else { "mp4" };
        let path = self
            .dir
            .path()
            .join("clips")
            .join(format!("{clip_id}.{extension}"));
        let sha256 = write_random_file(&path, size)?;
        let digests = digest_file(&path, PART)?;
        assert_eq!(digests.sha256, sha256);
        let clip = NewClip {
            clip_id: clip_id.clone(),
            order: "SO-2026-000123".into(),
            camera: "top".into(),
            kind: kind.into(),
            state: ClipState::Recording,
            path: path.display().to_string(),
            started_at: capture_protocol::Timestamp::now().to_string(),
            preroll_ms: 3000,
            clock_synced: true,
            meta: meta.map(str::to_owned),
        };
        let sealed = Sealed {
            path: path.display().to_string(),
            size: i64::try_from(size)?,
            sha256,
            parts: digests.parts,
            duration_ms: if kind == "photo" { 0 } else { 45_000 },
            ended_at: capture_protocol::Timestamp::now().to_string(),
            truncated: false,
        };
        let id = clip_id.clone();
        self.spool
            .call(move |c| {
                clips::insert(c, &clip)?;
                clips::seal(c, &id, &sealed)
            })
            .await?;
        self.clip(&clip_id).await
    }

    /// A sealed clip as a spool of schema version 1 holds it: no part digests.
    async fn sealed_before_the_digests(&self, kind: &str, size: u64) -> Result<ClipRow> {
        let clip = self.sealed_clip(kind, size, None).await?;
        let id = clip.clip_id.clone();
        self.spool
            .call(move |c| {
                c.execute(
                    "UPDATE clips SET part_size = NULL, part_md5s = NULL WHERE clip_id = ?1",
                    [&id],
                )?;
                Ok(())
            })
            .await?;
        let clip = self.clip(&clip.clip_id).await?;
        assert_eq!(clip.parts, None);
        Ok(clip)
    }

    /// Waits until the uploader is done with the clip, whatever the outcome.
    async fn wait_until_settled(&self, clip_id: &str) -> Result<ClipRow> {
        wait_until(&format!("clip {clip_id} settled"), DEADLINE, || async {
            let clip = self.clip(clip_id).await?;
            Ok((!matches!(clip.state, ClipState::Sealed | ClipState::Uploading)).then_some(clip))
        })
        .await
    }

    /// The object's ETag without quotes, `None` when there is no object.
    async fn object_etag(&self, key: &str) -> Result<Option<String>> {
        let head = self
            .garage
            .client()
            .head_object()
            .bucket(self.garage.bucket())
            .key(key)
            .send()
            .await;
        match head {
            Ok(head) => Ok(head.e_tag().map(|e| e.trim_matches('"').to_owned())),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn clip(&self, clip_id: &str) -> Result<ClipRow> {
        let id = clip_id.to_owned();
        self.spool
            .call(move |c| clips::get(c, &id))
            .await?
            .with_context(|| format!("clip {clip_id} is not in the spool"))
    }

    /// Waits until the clip reaches `state`.
    async fn wait_for_state(&self, clip_id: &str, state: ClipState) -> Result<ClipRow> {
        wait_until(
            &format!("clip {clip_id} {}", state.as_str()),
            DEADLINE,
            || async {
                let clip = self.clip(clip_id).await?;
                Ok((clip.state == state).then_some(clip))
            },
        )
        .await
    }

    /// Waits until the spool records at least `parts` parts of the clip's multipart upload.
    async fn wait_for_parts(&self, clip_id: &str, parts: usize) -> Result<multipart::MultipartRow> {
        wait_until(&format!("{parts} parts of {clip_id}"), DEADLINE, || async {
            let id = clip_id.to_owned();
            let upload = self.spool.call(move |c| multipart::get(c, &id)).await?;
            Ok(upload.filter(|u| u.parts.len() >= parts))
        })
        .await
    }

    async fn outbox(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let pending = self.spool.call(|c| spool::outbox::pending(c, 1000)).await?;
        pending
            .into_iter()
            .map(|p| Ok((p.message.topic, serde_json::from_slice(&p.message.payload)?)))
            .collect()
    }

    async fn confirm(&self, confirm: Confirm) -> Result<ConfirmEffect> {
        let settings = self.settings();
        Ok(self
            .spool
            .call(move |c| uploader::apply_confirm(c, &settings, &confirm))
            .await?)
    }

    /// The sha256 of the object's content, read back with GetObject.
    async fn object_sha256(&self, key: &str) -> Result<String> {
        let object = self
            .garage
            .client()
            .get_object()
            .bucket(self.garage.bucket())
            .key(key)
            .send()
            .await?;
        let mut body = object.body;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Fails unless the store holds `clip` under its key with the clip's own sha256.
    async fn assert_stored(&self, clip: &ClipRow) -> Result<()> {
        assert_eq!(
            self.object_sha256(&key_of(clip)).await?,
            clip.sha256.clone().context("sha256")?
        );
        Ok(())
    }

    /// Multipart uploads in progress under `dev/`: `(key, upload_id)`.
    async fn multipart_uploads(&self) -> Result<Vec<(String, String)>> {
        let listed = self
            .garage
            .client()
            .list_multipart_uploads()
            .bucket(self.garage.bucket())
            .prefix("dev/")
            .send()
            .await?;
        Ok(listed
            .uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default().to_owned(),
                    u.upload_id().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// Writes `size` random bytes to `path`; returns their sha256 (hex).
fn write_random_file(path: &Path, size: u64) -> Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MIB as usize];
    let mut left = size;
    let mut rng = rand::rng();
    while left > 0 {
        let n = usize::try_from(left.min(MIB))?;
        rng.fill_bytes(&mut buffer[..n]);
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn key_of(clip: &ClipRow) -> String {
    let object = uploader::ClipObject::of(clip, &"dev".parse().expect("a valid env"))
        .expect("a sealed clip has an object");
    object.key
}

fn file_sha256(path: &str) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn uploaded_notifications(outbox: &[(String, serde_json::Value)], clip_id: &str) -> usize {
    outbox
        .iter()
        .filter(|(topic, n)| topic == "cap/dev/ingest/uploaded" && n["clip_id"] == clip_id)
        .count()
}

#[tokio::test]
async fn a_photo_and_a_large_clip_arrive_with_their_key_type_and_metadata() -> Result<()> {
    let station = Station::start().await?;
    let photo = station
        .sealed_clip(
            "photo",
            300 << 10,
            Some(r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#),
        )
        .await?;
    let video = station.sealed_clip("video", 100 * MIB, None).await?;
    let (uploader, metrics) = station.uploader(station.settings());

    for (clip, content_type) in [(&photo, "image/jpeg"), (&video, "video/mp4")] {
        let done = station
            .wait_for_state(&clip.clip_id, ClipState::Uploaded)
            .await?;
        assert_eq!(done.bytes_sent, clip.size.context("size")?);
        assert_eq!(done.last_error, None);

        let key = key_of(clip);
        let extension = if clip.kind == "photo" { "jpg" } else { "mp4" };
        assert_eq!(
            key,
            format!(
                "dev/{}/SO-2026-000123/{}.{extension}",
                clip.started_at[..10].replace('-', "/"),
                clip.clip_id
            )
        );
        let head = station
            .garage
            .client()
            .head_object()
            .bucket(station.garage.bucket())
            .key(&key)
            .send()
            .await?;
        assert_eq!(head.content_length(), clip.size);
        assert_eq!(head.content_type(), Some(content_type));
        let metadata = head.metadata().context("no user metadata")?;
        let sha256 = clip.sha256.clone().context("sha256")?;
        assert_eq!(metadata.get("sha256"), Some(&sha256));
        assert_eq!(
            metadata.get("order").map(String::as_str),
            Some("SO-2026-000123")
        );
        assert_eq!(metadata.get("station").map(String::as_str), Some("pack-03"));
        assert_eq!(metadata.get("camera").map(String::as_str), Some("top"));
        assert_eq!(metadata.get("clip-id"), Some(&clip.clip_id));
        assert_eq!(metadata.len(), 5, "{metadata:?}");
        assert_eq!(
            station.object_sha256(&key).await?,
            sha256,
            "content read back"
        );
    }
    // The video went multipart (an ETag of a multipart object ends in -<parts>).
    let head = station
        .garage
        .client()
        .head_object()
        .bucket(station.garage.bucket())
        .key(key_of(&video))
        .send()
        .await?;
    assert!(
        head.e_tag().is_some_and(|e| e.ends_with("-13\"")),
        "{:?}",
        head.e_tag()
    );

    let outbox = station.outbox().await?;
    let notification = outbox
        .iter()
        .find(|(topic, n)| topic == "cap/dev/ingest/uploaded" && n["clip_id"] == photo.clip_id)
        .context("no uploaded notification for the photo")?;
    let parsed =
        capture_protocol::parse_uploaded(&serde_json::to_vec(&notification.1)?, &station.env())?;
    assert_eq!(parsed.kind, capture_protocol::ClipKind::Photo);
    assert_eq!(parsed.content_type, "image/jpeg");
    assert_eq!(parsed.bucket, station.garage.bucket());
    assert_eq!(parsed.size, 300 << 10);
    assert_eq!(
        serde_json::to_string(&parsed.meta)?,
        r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#
    );
    assert_eq!(uploaded_notifications(&outbox, &video.clip_id), 1);
    let events: Vec<_> = outbox
        .iter()
        .filter(|(topic, _)| topic == "cap/dev/station/pack-03/event")
        .map(|(_, e)| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["clip_id"].clone(),
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|(event, _)| event == "clip_uploaded"));
    assert!(station.outbox_flushes.load(Ordering::SeqCst) >= 2);

    assert_eq!(metrics.uploads.load(Ordering::Relaxed), 2);
    assert_eq!(
        metrics.upload_bytes.load(Ordering::Relaxed),
        100 * MIB + (300 << 10)
    );
    let video_id = video.clip_id.clone();
    assert!(
        station
            .spool
            .call(move |c| multipart::get(c, &video_id))
            .await?
            .is_none(),
        "multipart state is dropped once the object is complete"
    );
    assert!(station.multipart_uploads().await?.is_empty());
    // The uploader never deletes a local file.
    assert_eq!(
        file_sha256(&video.path)?,
        video.sha256.clone().context("sha256")?
    );
    uploader.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn agent_killed_mid_upload_resumes_without_resending_parts() -> Result<()> {
    let station = Station::start().await?;
    let size = 100 * MIB;
    let clip = station.sealed_clip("video", size, None).await?;
    // Slow enough (40 Mbit/s) that the upload is surely cut in the middle.
    let mut slow = station.settings();
    slow.bandwidth_kbps = 40_000;
    let started = std::time::Instant::now();
    let (first, first_metrics) = station.uploader(slow);
    station.wait_for_parts(&clip.clip_id, 3).await?;
    first.abort().await;
    // The cap holds against the real store: 3 parts (25.2 MB, less a burst of 2.5 MB) take
    // at least 4.5 s at 5 MB/s.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(4),
        "3 parts in {elapsed:?} under the cap"
    );
    let sent_before = first_metrics.upload_bytes.load(Ordering::Relaxed);

    let id = clip.clip_id.clone();
    let persisted = station
        .spool
        .call(move |c| multipart::get(c, &id))
        .await?
        .context("the multipart upload is in the spool")?;
    let done = u64::try_from(persisted.bytes_done())?;
    assert!(done >= 3 * PART && done < size, "{done} bytes persisted");
    assert_eq!(
        station.clip(&clip.clip_id).await?.state,
        ClipState::Uploading
    );

    let (second, second_metrics) = station.uploader(station.settings());
    station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    let sent_after = second_metrics.upload_bytes.load(Ordering::Relaxed);
    let missing = size - done;
    assert!(
        sent_after <= missing + PART,
        "after the restart {sent_after} bytes were sent; missing were {missing} (+ one part allowed)"
    );
    assert!(
        sent_after >= missing - PART.min(missing),
        "{sent_after} < {missing}"
    );
    eprintln!(
        "before the crash: {sent_before} bytes acknowledged, {done} persisted; after: {sent_after} sent of {missing} missing"
    );
    station.assert_stored(&clip).await?;
    assert!(station.multipart_uploads().await?.is_empty());
    second.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_multipart_upload_the_store_forgot_is_started_over() -> Result<()> {
    let station = Station::start().await?;
    let size = 40 * MIB;
    let clip = station.sealed_clip("video", size, None).await?;
    let mut slow = station.settings();
    slow.bandwidth_kbps = 40_000;
    let (first, _) = station.uploader(slow);
    let persisted = station.wait_for_parts(&clip.clip_id, 2).await?;
    first.abort().await;

    // Behind the agent's back, the upload is aborted (as an operator's lifecycle rule would).
    station
        .garage
        .client()
        .abort_multipart_upload()
        .bucket(station.garage.bucket())
        .key(key_of(&clip))
        .upload_id(&persisted.upload_id)
        .send()
        .await?;

    let (second, metrics) = station.uploader(station.settings());
    station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    assert_eq!(
        metrics.upload_bytes.load(Ordering::Relaxed),
        size,
        "every part is sent again to the new upload"
    );
    station.assert_stored(&clip).await?;
    assert!(station.multipart_uploads().await?.is_empty());
    second.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_upload_survives_the_store_going_away_for_a_while() -> Result<()> {
    let mut station = Station::start().await?;
    let size = 64 * MIB;
    let clip = station.sealed_clip("video", size, None).await?;
    let mut settings = station.settings();
    settings.bandwidth_kbps = 40_000;
    settings.stall_timeout = Duration::from_secs(5);
    let (uploader, metrics) = station.uploader(settings);
    station.wait_for_parts(&clip.clip_id, 2).await?;

    station.garage.stop().await?;
    // While the store is away, the failures show in the clip's row and the metrics.
    let failing = wait_until("a failed attempt recorded", DEADLINE, || async {
        let row = station.clip(&clip.clip_id).await?;
        Ok((row.attempts > 0).then_some(row))
    })
    .await?;
    assert_eq!(failing.state, ClipState::Uploading);
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("Unreachable") || error.contains("Stalled"),
        "{error}"
    );
    // The outage is the scenario: the store stays away for 15 s.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(metrics.upload_failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        station.clip(&clip.clip_id).await?.state,
        ClipState::Uploading
    );
    station.garage.restart().await?;

    station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    assert!(metrics.upload_retries.load(Ordering::Relaxed) >= 1);
    station.assert_stored(&clip).await?;
    uploader.shutdown().await;
    Ok(())
}

/// Sends SIGSTOP or SIGCONT to the Garage server of `garage` (found by its config file in
/// /proc), freezing it as a hung store would: connections are accepted by the kernel, nothing
/// is answered.
fn signal_garage(garage: &Garage, signal: &str) -> Result<()> {
    let config = garage.dir().join("garage.toml").display().to_string();
    let mut found = false;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.contains(&config) && args.iter().any(|a| a == "server") {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let status = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(&pid)
                .status()?;
            anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
            found = true;
        }
    }
    anyhow::ensure!(found, "no garage server process with {config}");
    Ok(())
}

#[tokio::test]
async fn a_hung_store_is_abandoned_after_the_stall_timeout_and_the_upload_resumes() -> Result<()> {
    let station = Station::start().await?;
    let clip = station.sealed_clip("video", 40 * MIB, None).await?;
    let mut settings = station.settings();
    settings.bandwidth_kbps = 40_000;
    settings.stall_timeout = Duration::from_secs(3);
    let (uploader, metrics) = station.uploader(settings);
    station.wait_for_parts(&clip.clip_id, 1).await?;

    signal_garage(&station.garage, "STOP")?;
    let stalled = wait_until("a stalled request recorded", DEADLINE, || async {
        let row = station.clip(&clip.clip_id).await?;
        Ok(row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Stalled"))
            .then_some(row))
    })
    .await;
    // Whatever happened, the store must run again before the test ends.
    signal_garage(&station.garage, "CONT")?;
    let stalled = stalled?;
    let error = stalled.last_error.unwrap_or_default();
    assert!(error.contains("no progress for 3s"), "{error}");
    assert_eq!(stalled.state, ClipState::Uploading);

    station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    assert!(metrics.upload_failures.load(Ordering::Relaxed) >= 1);
    station.assert_stored(&clip).await?;
    uploader.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_reported_and_nothing_is_lost_until_the_key_is_fixed() -> Result<()> {
    let station = Station::start().await?;
    let clip = station.sealed_clip("video", 20 * MIB, None).await?;
    let mut wrong = station.garage.settings();
    wrong.secret_access_key = "not-the-secret-0123456789abcdef".into();
    wrong.max_attempts = 1;
    let (uploader, metrics) =
        station.uploader_with(station.settings(), capture_objstore::client(&wrong));

    let failed = wait_until("the refusal recorded in the clip", DEADLINE, || async {
        let row = station.clip(&clip.clip_id).await?;
        Ok((row.attempts >= 2).then_some(row))
    })
    .await?;
    let error = failed.last_error.clone().context("no last_error")?;
    eprintln!("last_error with a wrong secret: {error}");
    assert!(error.contains("HTTP 403"), "{error}");
    assert!(error.contains("store.secret_access_key_file"), "{error}");
    assert!(
        !error.contains(&wrong.secret_access_key),
        "the secret is never shown"
    );
    assert_eq!(
        failed.state,
        ClipState::Sealed,
        "the state does not advance"
    );
    assert!(metrics.upload_failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(metrics.uploads.load(Ordering::Relaxed), 0);
    assert!(station.outbox().await?.is_empty(), "nothing is announced");
    assert!(Path::new(&clip.path).exists(), "the file is kept");
    uploader.shutdown().await;

    // The operator fixes the key and the agent restarts.
    let (uploader, _) = station.uploader(station.settings());
    let done = station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    assert_eq!(done.last_error, None);
    station.assert_stored(&clip).await?;
    uploader.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_missing_bucket_is_reported_by_name() -> Result<()> {
    let station = Station::start().await?;
    let clip = station.sealed_clip("photo", 10 << 10, None).await?;
    let mut settings = station.settings();
    settings.bucket = "no-such-bucket-here".into();
    let (uploader, _) = station.uploader(settings);
    let failed = wait_until("the refusal recorded in the clip", DEADLINE, || async {
        let row = station.clip(&clip.clip_id).await?;
        Ok((row.attempts >= 1).then_some(row))
    })
    .await?;
    let error = failed.last_error.context("no last_error")?;
    assert!(error.contains("NoSuchBucket"), "{error}");
    assert!(error.contains("store.bucket"), "{error}");
    uploader.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn confirms_accept_reupload_or_fail_a_clip() -> Result<()> {
    let station = Station::start().await?;
    let accepted = station.sealed_clip("photo", 50 << 10, None).await?;
    let corrupted = station.sealed_clip("video", 12 * MIB, None).await?;
    let refused = station.sealed_clip("photo", 50 << 10, None).await?;
    let (uploader, metrics) = station.uploader(station.settings());
    for clip in [&accepted, &corrupted, &refused] {
        station
            .wait_for_state(&clip.clip_id, ClipState::Uploaded)
            .await?;
    }
    let clip_id = |clip: &ClipRow| clip.clip_id.parse().expect("a ULID");

    // Accepted: the clip is accepted, a clip_confirmed event is queued.
    let effect = station
        .confirm(Confirm::accepted(clip_id(&accepted)))
        .await?;
    assert_eq!(effect, ConfirmEffect::Accepted);
    assert_eq!(
        station.clip(&accepted.clip_id).await?.state,
        ClipState::Accepted
    );

    // Rejected for its content: the object was damaged in the store; the clip is uploaded
    // again to the same key, which repairs it.
    let key = key_of(&corrupted);
    station
        .garage
        .client()
        .put_object()
        .bucket(station.garage.bucket())
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"damaged"))
        .send()
        .await?;
    let effect = station
        .confirm(Confirm::rejected(
            clip_id(&corrupted),
            "sha256 mismatch: content hashes to 00",
        ))
        .await?;
    assert!(effect.needs_upload(), "{effect:?}");
    station.wake.notify_one();
    station
        .wait_for_state(&corrupted.clip_id, ClipState::Uploaded)
        .await?;
    assert_eq!(
        station.object_sha256(&key).await?,
        corrupted.sha256.clone().context("sha256")?,
        "the re-upload overwrote the same key"
    );
    assert_eq!(
        uploaded_notifications(&station.outbox().await?, &corrupted.clip_id),
        2
    );
    assert_eq!(metrics.uploads.load(Ordering::Relaxed), 4);

    // Rejected for another reason: failed, with an event saying why.
    let effect = station
        .confirm(Confirm::rejected(clip_id(&refused), "wrong bucket: \"x\""))
        .await?;
    assert!(matches!(effect, ConfirmEffect::Failed { .. }), "{effect:?}");
    let row = station.clip(&refused.clip_id).await?;
    assert_eq!(row.state, ClipState::Failed);
    assert!(row.last_error.unwrap_or_default().contains("wrong bucket"));

    // Unknown clip: nothing changes.
    let before = station.outbox().await?.len();
    let effect = station
        .confirm(Confirm::accepted("01JDQ3Z8M4X5V6W7Y8Z9A0B1C9".parse()?))
        .await?;
    assert_eq!(effect, ConfirmEffect::UnknownClip);
    assert_eq!(station.outbox().await?.len(), before);

    let events: Vec<(String, String)> = station
        .outbox()
        .await?
        .into_iter()
        .filter(|(topic, _)| topic == "cap/dev/station/pack-03/event")
        .map(|(_, e)| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["clip_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .filter(|(event, _)| event != "clip_uploaded")
        .collect();
    assert_eq!(
        events,
        [
            ("clip_confirmed".to_owned(), accepted.clip_id.clone()),
            ("clip_failed".to_owned(), refused.clip_id.clone()),
        ]
    );
    uploader.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_janitor_aborts_orphans_and_leaves_the_spools_own_upload_alone() -> Result<()> {
    let station = Station::start().await?;
    let clip = station.sealed_clip("video", 20 * MIB, None).await?;
    let key = key_of(&clip);
    let s3 = station.garage.client();
    let create = |key: String| {
        let s3 = s3.clone();
        let bucket = station.garage.bucket().to_owned();
        async move {
            let upload = s3
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await?;
            upload
                .upload_id()
                .map(str::to_owned)
                .context("no upload id")
        }
    };
    // An upload of this clip the spool does not know (a crash before the spool commit).
    let orphan = create(key.clone()).await?;
    // The clip's upload as the spool records it.
    let own = create(key.clone()).await?;
    let (id, recorded) = (clip.clip_id.clone(), own.clone());
    station
        .spool
        .call(move |c| multipart::begin(c, &id, &recorded, i64::try_from(PART).unwrap_or(0)))
        .await?;
    // Another station's upload in the same bucket and environment.
    let foreign_key = "dev/2026/11/23/SO-9/01JDQ3Z8M4X5V6W7Y8Z9A0B1C9.mp4".to_owned();
    let foreign = create(foreign_key.clone()).await?;

    let store = Store::new(
        s3.clone(),
        station.garage.bucket().to_owned(),
        Duration::from_secs(10),
        0,
    );
    let sweep = janitor::sweep(
        &store,
        &station.spool,
        &station.env(),
        Some(Duration::from_secs(7 * 24 * 3600)),
        true,
    )
    .await?;
    assert_eq!(sweep.listed, 3);
    assert_eq!(sweep.aborted, [(key.clone(), orphan)]);
    let mut left = station.multipart_uploads().await?;
    left.sort();
    let mut expected = vec![(key.clone(), own), (foreign_key.clone(), foreign.clone())];
    expected.sort();
    assert_eq!(left, expected);

    // The uploader sweeps when it starts: a new orphan goes, the clip's own upload is
    // resumed and completed, the other station's upload stays.
    let second_orphan = create(key.clone()).await?;
    let (uploader, _) = station.uploader(station.settings());
    station
        .wait_for_state(&clip.clip_id, ClipState::Uploaded)
        .await?;
    let left = wait_until("only the other station's upload left", DEADLINE, || async {
        let left = station.multipart_uploads().await?;
        Ok((left.len() == 1).then_some(left))
    })
    .await?;
    assert_eq!(left, [(foreign_key, foreign)]);
    assert!(!left.iter().any(|(_, id)| *id == second_orphan));
    uploader.shutdown().await;
    Ok(())
}

/// Flips one bit of `path` at `offset`, as a failing SD card would after the seal.
fn flip_bit(path: &str, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset)?;
    file.sync_all()?;
    Ok(())
}

fn failed_events(outbox: &[(String, serde_json::Value)], clip_id: &str) -> Vec<String> {
    outbox
        .iter()
        .filter(|(topic, e)| {
            topic == "cap/dev/station/pack-03/event"
                && e["event"] == "clip_failed"
                && e["clip_id"] == clip_id
        })
        .map(|(_, e)| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A file that rots on the SD card after it was sealed must never be accepted: the uploader
/// sends the MD5s the seal computed, the store refuses the changed bytes (`BadDigest`), and
/// the clip ends `failed` with a `clip_failed` event saying so, the file kept for
/// inspection. Both ways in: a single PutObject (a photo) and one part of a multipart upload.
#[tokio::test]
async fn a_byte_flipped_in_a_sealed_file_fails_the_clip_as_corrupt_on_disk_and_keeps_the_file()
-> Result<()> {
    let station = Station::start().await?;
    let photo = station.sealed_clip("photo", 300 << 10, None).await?;
    let video = station.sealed_clip("video", 20 * MIB, None).await?;
    flip_bit(&photo.path, 1234)?;
    // In the second of three parts.
    flip_bit(&video.path, PART + 4321)?;
    let (uploader, _metrics) = station.uploader(station.settings());

    for clip in [&photo, &video] {
        let settled = station.wait_until_settled(&clip.clip_id).await?;
        assert_eq!(
            settled.state,
            ClipState::Failed,
            "clip {} ({}) ended {:?}, last error {:?}",
            clip.clip_id,
            clip.kind,
            settled.state,
            settled.last_error
        );
        let error = settled.last_error.unwrap_or_default();
        assert!(error.starts_with("corrupt on disk: "), "{error}");
        let outbox = station.outbox().await?;
        let reasons = failed_events(&outbox, &clip.clip_id);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("corrupt on disk: "), "{reasons:?}");
        assert_eq!(
            uploaded_notifications(&outbox, &clip.clip_id),
            0,
            "a corrupt clip is never announced"
        );
        assert_eq!(
            station.object_etag(&key_of(clip)).await?,
            None,
            "the store holds no object"
        );
        // Kept for inspection, with the damaged bytes.
        assert_ne!(
            file_sha256(&clip.path)?,
            clip.sha256.clone().context("sha256")?
        );
    }
    assert!(
        failed_events(&station.outbox().await?, &video.clip_id)[0].contains("part 2 of"),
        "the reason names the part"
    );
    uploader.shutdown().await;
    Ok(())
}

/// The notification's `etag` is what the store really computes (Garage as S3 does): the
/// MD5 of the file for a single PutObject, the MD5 of the part MD5s then `-N` for a
/// multipart upload. A clip sealed before the spool kept its digests gets them when its
/// upload begins (checked against the seal's sha256, so a file that rotted meanwhile is
/// failed as well) and then uploads the same way.
#[tokio::test]
async fn the_notified_etag_is_the_stores_for_a_put_a_multipart_upload_and_an_older_clip()
-> Result<()> {
    let station = Station::start().await?;
    let photo = station.sealed_clip("photo", 300 << 10, None).await?;
    let video = station.sealed_clip("video", 20 * MIB, None).await?;
    let older = station.sealed_before_the_digests("video", 10 * MIB).await?;
    let rotted = station
        .sealed_before_the_digests("photo", 100 << 10)
        .await?;
    flip_bit(&rotted.path, 777)?;
    let (uploader, _metrics) = station.uploader(station.settings());

    for (clip, parts) in [(&photo, 1), (&video, 3), (&older, 2)] {
        let done = station
            .wait_for_state(&clip.clip_id, ClipState::Uploaded)
            .await?;
        let outbox = station.outbox().await?;
        let (_, notification) = outbox
            .iter()
            .find(|(topic, n)| topic == "cap/dev/ingest/uploaded" && n["clip_id"] == clip.clip_id)
            .context("an uploaded notification")?;
        let notified = notification["etag"].as_str().context("an etag")?;
        let stored = station
            .object_etag(&key_of(clip))
            .await?
            .context("the object")?;
        assert_eq!(notified, stored, "{} of {} parts", clip.kind, parts);
        if parts == 1 {
            assert!(!stored.contains('-'), "{stored}");
        } else {
            assert!(stored.ends_with(&format!("-{parts}")), "{stored}");
        }
        let kept = done.parts.context("the digests are in the spool")?;
        assert_eq!(kept.etag(), stored);
        station.assert_stored(clip).await?;
    }
    let settled = station.wait_until_settled(&rotted.clip_id).await?;
    assert_eq!(settled.state, ClipState::Failed, "{:?}", settled.last_error);
    assert!(
        settled
            .last_error
            .unwrap_or_default()
            .starts_with("corrupt on disk: "),
    );
    uploader.shutdown().await;
    Ok(())
}
