//! One clip's upload, start to finish: a single PUT or a multipart upload (resumed from what
//! the spool and the store hold), then, in one transaction, the clip `uploaded` and its
//! notification and event queued. A clip that cannot be uploaded at all is failed here.

use std::path::{Path, PathBuf};

use capture_protocol::EventKind;

use super::*;
use crate::digest::{PartDigests, digest_file};
use crate::spool::{ClipRow, ClipState, SpoolError, clips, multipart as spool_multipart, outbox};

/// One attempt at one clip: upload the object, then commit `uploaded` with its
/// notification and event, and call `outbox_ready`.
#[tracing::instrument(level = "debug", skip_all, fields(clip_id = %clip.clip_id))]
pub(super) async fn upload_clip(
    context: &Context,
    clip: ClipRow,
    outbox_ready: &(dyn Fn() + Send + Sync),
) -> Result<(), UploadError> {
    let settings = &context.settings;
    let unusable = |problem: String| UploadError::Unusable {
        clip_id: clip.clip_id.clone(),
        problem,
    };
    let object = ClipObject::of(&clip, &settings.env).map_err(|e| unusable(e.to_string()))?;
    let origin = object::Origin {
        env: &settings.env,
        device: &settings.device,
        station: &settings.station,
        bucket: &settings.bucket,
    };
    let path = Path::new(&clip.path);
    match tokio::fs::metadata(path).await {
        Ok(file) if file.len() == object.size => {}
        Ok(file) => {
            return Err(unusable(format!(
                "{} has {} bytes, {} when it was sealed",
                path.display(),
                file.len(),
                object.size
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unusable(format!("{} does not exist", path.display())));
        }
        Err(source) => {
            return Err(UploadError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    let spec = object.spec(&settings.station);
    let id = clip.clip_id.clone();
    let existing = context
        .spool
        .call(move |c| spool_multipart::get(c, &id))
        .await?;
    let parts = match &clip.parts {
        Some(parts) => parts.clone(),
        None => digests_of_an_old_clip(context, &clip, &object, existing.as_ref()).await?,
    };
    let notification =
        object::uploaded(&clip, &object, &origin, &parts).map_err(|e| unusable(e.to_string()))?;
    if !parts.is_single() {
        multipart::upload(context, &clip.clip_id, path, object.size, &spec, &parts).await?;
    } else {
        if existing.is_some() {
            // The plan is one PutObject: an upload in parts is none of its (the janitor
            // aborts it in the store).
            let id = clip.clip_id.clone();
            context
                .spool
                .call(move |c| spool_multipart::forget(c, &id))
                .await?;
        }
        let body = Body {
            path: path.to_owned(),
            offset: 0,
            length: object.size,
            md5: parts.md5(1).unwrap_or_default(),
        };
        let put = context.store.put_object(&spec, &body).await;
        if let Err(source) = put {
            return Err(
                refused_body(&clip.clip_id, &body, 1, source, "PutObject", &spec.key).await,
            );
        }
        Metrics::add(&context.metrics.upload_bytes, object.size);
    }

    let messages = [
        object::uploaded_message(&settings.env, &notification),
        object.event(
            &settings.env,
            &settings.station,
            EventKind::ClipUploaded {
                truncated: clip.truncated,
            },
        ),
    ];
    let id = clip.clip_id.clone();
    let committed = context
        .spool
        .call(move |c| {
            let tx = c.transaction()?;
            // A single PUT goes from `sealed` straight to `uploaded`.
            let current = clips::get(&tx, &id)?.map(|clip| clip.state);
            if !matches!(current, Some(ClipState::Sealed | ClipState::Uploading)) {
                return Ok(false);
            }
            clips::set_uploaded(&tx, &id)?;
            spool_multipart::forget(&tx, &id)?;
            for message in &messages {
                outbox::push(&tx, message)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await?;
    if committed {
        Metrics::add(&context.metrics.uploads, 1);
        tracing::info!(clip_id = %clip.clip_id, key = %object.key, size = object.size, "clip uploaded");
        outbox_ready();
    } else {
        tracing::warn!(clip_id = %clip.clip_id, "clip changed state during its upload; not announced");
    }
    Ok(())
}

/// The part digests of a clip sealed before the spool kept them: computed now from the file
/// (the one read at upload time such a clip needs, as before), checked against the sha256
/// the seal recorded, and stored, so that from here on its upload is a new clip's. The plan
/// is the one of a multipart upload already in progress, else the configured part size's.
async fn digests_of_an_old_clip(
    context: &Context,
    clip: &ClipRow,
    object: &ClipObject,
    upload: Option<&spool_multipart::MultipartRow>,
) -> Result<PartDigests, UploadError> {
    let configured = upload
        .and_then(|u| u64::try_from(u.part_size).ok())
        .unwrap_or(context.settings.part_size);
    let path = PathBuf::from(&clip.path);
    let read = path.clone();
    let digests = tokio::task::spawn_blocking(move || digest_file(&read, configured))
        .await
        .map_err(|e| UploadError::Read {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| UploadError::Read {
            path: path.clone(),
            source,
        })?;
    if !digests.sha256.eq_ignore_ascii_case(object.sha256.as_str()) {
        return Err(UploadError::Unusable {
            clip_id: clip.clip_id.clone(),
            problem: format!(
                "{CORRUPT_ON_DISK}: {} hashes to sha256 {}, not the {} it had when it was sealed",
                path.display(),
                digests.sha256,
                object.sha256
            ),
        });
    }
    let (id, parts) = (clip.clip_id.clone(), digests.parts.clone());
    context
        .spool
        .call(move |c| clips::set_parts(c, &id, &parts))
        .await?;
    tracing::info!(clip_id = %clip.clip_id, parts = digests.parts.md5s.len(), "part digests computed for a clip sealed before the spool kept them");
    Ok(digests.parts)
}

/// How a clip whose file no longer holds what was sealed fails: its `clip_failed` reason
/// and last error start with this.
pub const CORRUPT_ON_DISK: &str = "corrupt on disk";

/// The error for a body the store refused. A refused `Content-MD5` (`BadDigest`) is told
/// apart by reading the region again: if its MD5 is no longer the seal's, the file changed
/// on disk after sealing, and the clip cannot be uploaded ([`CORRUPT_ON_DISK`]; the file is
/// kept for inspection); if it still is, the bytes were damaged on the way, and the attempt
/// is retried like any other.
pub(crate) async fn refused_body(
    clip_id: &str,
    body: &Body,
    part_number: i64,
    source: StoreError,
    request: &'static str,
    key: &str,
) -> UploadError {
    let store_error = |source| UploadError::Store {
        request,
        key: format!("{key} part {part_number}"),
        source,
    };
    if source.kind != StoreErrorKind::BadDigest {
        return store_error(source);
    }
    match md5_of_region(&body.path, body.offset, body.length).await {
        Ok(now) if now != body.md5 => {
            tracing::error!(
                clip_id,
                part_number,
                path = %body.path.display(),
                offset = body.offset,
                length = body.length,
                sealed_md5 = %hex::encode(body.md5),
                md5_now = %hex::encode(now),
                "the clip's file changed on disk since it was sealed"
            );
            UploadError::Unusable {
                clip_id: clip_id.to_owned(),
                problem: format!(
                    "{CORRUPT_ON_DISK}: part {part_number} of {} (bytes {}..{}) has MD5 {} now, \
                     {} when the clip was sealed; the store refused it ({}); the file is kept \
                     for inspection",
                    body.path.display(),
                    body.offset,
                    body.offset + body.length,
                    hex::encode(now),
                    hex::encode(body.md5),
                    source.code()
                ),
            }
        }
        Ok(_) => store_error(source),
        Err(read) => UploadError::Read {
            path: body.path.clone(),
            source: read,
        },
    }
}

/// Marks a clip that cannot be uploaded `failed`, with a `clip_failed` event.
pub(super) fn fail_clip(
    connection: &mut rusqlite::Connection,
    settings: &UploaderSettings,
    clip_id: &str,
    problem: &str,
) -> Result<(), SpoolError> {
    let tx = connection.transaction()?;
    let Some(clip) = clips::get(&tx, clip_id)? else {
        return Ok(());
    };
    clips::fail(&tx, clip_id, problem)?;
    spool_multipart::forget(&tx, clip_id)?;
    let failed = EventKind::ClipFailed {
        reason: problem.to_owned(),
    };
    // A row too damaged to name its clip in an event is still failed, without the event.
    if let Ok(event) = confirm::event(&clip, settings, failed) {
        outbox::push(&tx, &event)?;
    }
    tx.commit()?;
    Ok(())
}
