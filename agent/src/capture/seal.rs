//! Sealing: turning a `*.part` file into the final clip the uploader may take.
//!
//! A sealed clip is durable and immutable: its data is fsynced, it is renamed from
//! `NAME.mp4.part` to `NAME.mp4` (atomic), and the directory is fsynced so the rename itself
//! survives a power cut. Its size, sha256 and part MD5s are computed from the final bytes.
//!
//! Two ways in:
//! - `finish`: a recording that ended cleanly (mp4mux saw EOS and wrote the true duration):
//!   fsync, hash, rename.
//!
//! "Hash" is one read of the final bytes ([`crate::digest`]): the sha256 and the MD5 of every
//! part of the upload plan, which the spool keeps and the uploader sends as `Content-MD5`.
//! - [`seal_part_file`]: a file cut by a crash, a power cut or a stuck writer. Its header's
//!   duration is stale, so the container is rewritten: every complete frame is demuxed and
//!   muxed again (no re-encoding) into `NAME.mp4.resealing`, which is then finished the same
//!   way; the cut original is removed last. Running it again after a crash at any step gives
//!   the same result (idempotent), so the daemon can simply call it for every `*.part` it
//!   finds at start-up.
//!
//! The hash is computed at seal time, from the file: mp4mux rewrites the header's duration
//! at EOS (a seek back to the start of the file), so a hash taken while writing would not be
//! the final file's. Reading back right after writing is served from the page cache.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use time::OffsetDateTime;

use crate::digest::{FileDigests, PartDigests};

use super::error::CaptureError;
use super::probe::{FrameReader, PtsSpan};
use super::writer::ClipWriter;

/// Suffix of a file being written.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of a cut file's rewrite in progress.
const RESEAL_SUFFIX: &str = ".resealing";

/// A finished clip, ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedClip {
    /// The final file (`NAME.mp4`).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
    /// The MD5 of every part of its upload plan, from the same read as the sha256.
    pub parts: PartDigests,
    /// Duration of the video in the file, from its frames (not from a header).
    pub duration: Duration,
    /// Number of frames.
    pub frames: u64,
    /// How much of the clip precedes the start command (0 when unknown, as after a crash).
    pub preroll: Duration,
    /// True when the clip was cut (crash, camera lost, writer stuck) rather than stopped.
    pub truncated: bool,
    /// UTC time of the first frame, when known (not for a clip recovered after a crash).
    pub started_at: Option<OffsetDateTime>,
}

/// What the recorder knows about a clip it wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClipFacts {
    pub(crate) duration: Duration,
    pub(crate) frames: u64,
    pub(crate) preroll: Duration,
    pub(crate) truncated: bool,
    pub(crate) started_at: Option<OffsetDateTime>,
}

/// `NAME.mp4.part` -> `NAME.mp4`.
pub fn final_path(part: &Path) -> Result<PathBuf, CaptureError> {
    let text = part.to_string_lossy();
    match text.strip_suffix(PART_SUFFIX) {
        Some(stem) if !stem.is_empty() => Ok(PathBuf::from(stem)),
        _ => Err(CaptureError::Unplayable {
            path: part.to_path_buf(),
            reason: format!("the name does not end in {PART_SUFFIX}"),
        }),
    }
}

/// `NAME.mp4` -> `NAME.mp4.part`.
pub fn part_path(output: &Path) -> PathBuf {
    let mut text = output.as_os_str().to_owned();
    text.push(PART_SUFFIX);
    PathBuf::from(text)
}

/// Seals a part file that a clean EOS finalised: fsync, hash (sha256 and the part MD5s of
/// the upload plan for `part_size`, in one read), rename, fsync the directory.
pub(crate) fn finish(
    part: &Path,
    output: &Path,
    facts: ClipFacts,
    part_size: u64,
) -> Result<SealedClip, CaptureError> {
    let file = File::open(part).map_err(|e| CaptureError::io("opening", part, e))?;
    file.sync_all()
        .map_err(|e| CaptureError::io("fsyncing", part, e))?;
    let digests = digest_file(part, part_size)?;
    fs::rename(part, output).map_err(|e| CaptureError::io("renaming", part, e))?;
    sync_dir(output)?;
    Ok(SealedClip {
        path: output.to_path_buf(),
        size: digests.size,
        sha256: digests.sha256,
        parts: digests.parts,
        duration: facts.duration,
        frames: facts.frames,
        preroll: facts.preroll,
        truncated: facts.truncated,
        started_at: facts.started_at,
    })
}

/// Seals a `*.part` file left by a crash (or any cut recording): rewrites the container from
/// its complete frames, then fsyncs, hashes and renames it to the name without `.part`.
/// Fails with [`CaptureError::Unplayable`] when not one complete frame can be read; the caller
/// decides whether to delete such a file. `part_size` is the configured upload part size
/// (`store.part_size`), for the part MD5s.
#[tracing::instrument(skip_all, fields(part = %part.display()))]
pub fn seal_part_file(part: &Path, part_size: u64) -> Result<SealedClip, CaptureError> {
    let output = final_path(part)?;
    let mut temp = part.as_os_str().to_owned();
    temp.push(RESEAL_SUFFIX);
    let temp = PathBuf::from(temp);
    let _ = fs::remove_file(&temp); // A previous attempt that crashed.

    let remuxed = remux(part, &temp);
    let (span, frames, cut_reason) = match remuxed {
        Ok(facts) => facts,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    let facts = ClipFacts {
        duration: span.duration(),
        frames,
        preroll: Duration::ZERO,
        truncated: true,
        started_at: None,
    };
    let sealed = finish(&temp, &output, facts, part_size)?;
    fs::remove_file(part).map_err(|e| CaptureError::io("removing", part, e))?;
    sync_dir(&output)?;
    tracing::info!(
        path = %sealed.path.display(),
        duration_ms = sealed.duration.as_millis() as u64,
        frames,
        cut = cut_reason.as_deref().unwrap_or("no"),
        "sealed a cut clip"
    );
    Ok(sealed)
}

/// Copies every complete frame of `input` into a new fragmented MP4 at `output`.
fn remux(input: &Path, output: &Path) -> Result<(PtsSpan, u64, Option<String>), CaptureError> {
    let mut reader = FrameReader::open(input)?;
    let mut writer: Option<ClipWriter> = None;
    let mut span = PtsSpan::default();
    let mut frames = 0;
    while let Some(sample) = reader.next_frame() {
        let Some(buffer) = sample.buffer_owned() else {
            continue;
        };
        if writer.is_none() {
            let caps = sample
                .caps_owned()
                .ok_or_else(|| CaptureError::Unplayable {
                    path: input.to_path_buf(),
                    reason: "the video track has no caps".into(),
                })?;
            let frame = frame_duration(&caps);
            writer = Some(ClipWriter::create(output, &caps, frame, None)?);
        }
        if let Some(w) = writer.as_mut() {
            w.push(&buffer)?;
        }
        span.add(&buffer);
        frames += 1;
    }
    let Some(writer) = writer else {
        return Err(CaptureError::Unplayable {
            path: reader.path().to_path_buf(),
            reason: reader
                .stopped_early
                .clone()
                .unwrap_or_else(|| "no complete video frame".into()),
        });
    };
    writer.end();
    let waited = writer.wait_for_eos(Duration::from_secs(30));
    writer.close();
    waited?;
    Ok((span, frames, reader.stopped_early.clone()))
}

/// One frame's duration from caps (`framerate`), 1/30 s when unknown.
pub(crate) fn frame_duration(caps: &gst::CapsRef) -> Duration {
    caps.structure(0)
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map(|f| Duration::from_secs_f64(f64::from(f.denom()) / f64::from(f.numer())))
        .unwrap_or(Duration::from_nanos(33_333_333))
}

/// The sha256 and the part MD5s of a sealed file ([`crate::digest::digest_file`]), as a
/// capture error.
pub fn digest_file(path: &Path, part_size: u64) -> Result<FileDigests, CaptureError> {
    crate::digest::digest_file(path, part_size).map_err(|e| CaptureError::io("reading", path, e))
}

/// Fsyncs the directory holding `path`, so a rename or create in it is durable.
pub fn sync_dir(path: &Path) -> Result<(), CaptureError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CaptureError::io("fsyncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_map_to_final_names() {
        assert_eq!(
            part_path(Path::new("/spool/01JD.mp4")),
            PathBuf::from("/spool/01JD.mp4.part")
        );
        assert_eq!(
            final_path(Path::new("/spool/01JD.mp4.part")).unwrap(),
            PathBuf::from("/spool/01JD.mp4")
        );
        assert!(final_path(Path::new("/spool/01JD.mp4")).is_err());
    }

    #[test]
    fn hashing_matches_a_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        let digests = digest_file(&path, 8 << 20).unwrap();
        assert_eq!(digests.size, 3);
        assert_eq!(
            digests.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digests.parts.etag(), "900150983cd24fb0d6963f7d28e17f72");
    }
}
