//! Start-up reconciliation: the spool's rows and the files on disk are made to agree.
//!
//! At start nothing records, so every clip still in `recording` was cut by a crash, a power
//! cut or a kill. For each one, what is on disk decides:
//!
//! | on disk | what happens |
//! | --- | --- |
//! | `ID.mp4` (sealed, but the row was not updated) | hashed (sha256 and part MD5s, as a seal does), measured, row sealed |
//! | `ID.mp4.part` (cut mid-recording) | its complete fragments are remuxed into `ID.mp4` ([`seal_part_file`]), row sealed, `truncated` |
//! | `ID.jpg` (photo written, row not updated) | hashed, row sealed |
//! | nothing, or a part with no complete frame | row `failed` with the reason, `clip_failed` event |
//!
//! Sealed clips get their `recording_stopped` event, as after a normal stop, and are then
//! uploaded like any other. Nothing is deleted here: an unreadable part file stays where it
//! is for an operator to look at.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use capture_protocol::{CameraName, ClipId, Event, EventKind, OrderId, Timestamp, topic};

use super::Identity;
use crate::capture::{CaptureError, inspect, seal};
use crate::spool::{self, ClipRow, ClipState, OutboxMessage, Sealed, Spool, SpoolError, clips};

/// What reconciliation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Clips sealed from what was on disk.
    pub sealed: usize,
    /// Clips with nothing usable on disk, marked failed.
    pub failed: usize,
    /// Part files no row knows (left alone, logged for an operator).
    pub orphans: usize,
}

/// Settles every clip left in `recording`. `part_size` is the configured upload part size,
/// for the part MD5s that every seal stores.
pub async fn reconcile(
    spool: &Spool,
    identity: &Identity,
    clip_dir: &Path,
    part_size: u64,
) -> Result<Report, SpoolError> {
    let cut = spool
        .call(|c| clips::in_state(c, ClipState::Recording, usize::MAX >> 1))
        .await?;
    let mut report = Report::default();
    for clip in cut {
        let path = PathBuf::from(&clip.path);
        let photo = clip.kind == "photo";
        let found = tokio::task::spawn_blocking(move || recover(&path, photo, part_size))
            .await
            .unwrap_or_else(|e| Err(CaptureError::Gst(e.to_string())));
        let clip_id = clip.clip_id.clone();
        match found {
            Ok(recovered) => {
                let event = event(
                    identity,
                    &clip,
                    EventKind::RecordingStopped {
                        truncated: recovered.truncated,
                    },
                );
                let mut row = recovered;
                if let Ok(start) = Timestamp::from_str(&clip.started_at) {
                    let end =
                        start.as_offset_date_time() + time::Duration::milliseconds(row.duration_ms);
                    if let Ok(end) = Timestamp::try_from(end) {
                        row.ended_at = end.to_string();
                    }
                }
                spool
                    .call(move |c| spool::announce(c, &event, |tx| clips::seal(tx, &clip_id, &row)))
                    .await?;
                tracing::warn!(clip_id = %clip.clip_id, order = %clip.order, "a clip cut by a restart was sealed and queued");
                report.sealed += 1;
            }
            Err(e) => {
                let reason = format!(
                    "the agent stopped before the clip reached the disk in a usable state ({e})"
                );
                let event = event(
                    identity,
                    &clip,
                    EventKind::ClipFailed {
                        reason: reason.clone(),
                    },
                );
                spool
                    .call(move |c| {
                        spool::announce(c, &event, |tx| clips::fail(tx, &clip_id, &reason))
                    })
                    .await?;
                tracing::error!(clip_id = %clip.clip_id, order = %clip.order, error = %e, "a clip cut by a restart could not be recovered");
                report.failed += 1;
            }
        }
    }
    report.orphans = orphan_parts(spool, clip_dir).await?;
    Ok(report)
}

/// Part files in the clip directory that no clip row names. With the decision committed
/// before a camera starts, none should exist; if one does, it is reported, never deleted.
async fn orphan_parts(spool: &Spool, clip_dir: &Path) -> Result<usize, SpoolError> {
    let Ok(entries) = std::fs::read_dir(clip_dir) else {
        return Ok(0);
    };
    let mut orphans = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(clip_id) = name.split('.').next().map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(seal::PART_SUFFIX) {
            continue;
        }
        let known = spool.call(move |c| clips::get(c, &clip_id)).await?;
        if known.is_none() {
            tracing::warn!(file = %entry.path().display(), "a part file no clip row knows; left in place for an operator");
            orphans += 1;
        }
    }
    Ok(orphans)
}

/// What is on disk for a clip whose row says `recording`.
fn recover(path: &Path, photo: bool, part_size: u64) -> Result<Sealed, CaptureError> {
    let part = seal::part_path(path);
    if path.exists() {
        let digests = seal::digest_file(path, part_size)?;
        let duration_ms = if photo {
            0
        } else {
            i64::try_from(inspect(path)?.duration.as_millis()).unwrap_or(i64::MAX)
        };
        return Ok(Sealed {
            path: path.display().to_string(),
            size: i64::try_from(digests.size).unwrap_or(i64::MAX),
            sha256: digests.sha256,
            parts: digests.parts,
            duration_ms,
            ended_at: Timestamp::now().to_string(),
            truncated: false,
        });
    }
    if photo || !part.exists() {
        return Err(CaptureError::io(
            "looking for the clip's file",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let sealed = seal::seal_part_file(&part, part_size)?;
    Ok(Sealed {
        path: sealed.path.display().to_string(),
        size: i64::try_from(sealed.size).unwrap_or(i64::MAX),
        sha256: sealed.sha256,
        parts: sealed.parts,
        duration_ms: i64::try_from(sealed.duration.as_millis()).unwrap_or(i64::MAX),
        ended_at: Timestamp::now().to_string(),
        truncated: true,
    })
}

fn event(identity: &Identity, clip: &ClipRow, kind: EventKind) -> Option<OutboxMessage> {
    let event = Event::new(
        kind,
        ClipId::from_str(&clip.clip_id).ok()?,
        OrderId::from_str(&clip.order).ok()?,
        CameraName::from_str(&clip.camera).ok()?,
        Timestamp::now(),
    );
    Some(OutboxMessage::new(
        topic::event(&identity.env, &identity.station),
        serde_json::to_vec(&event).ok()?,
        false,
    ))
}
