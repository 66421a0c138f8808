//! Multipart upload of one clip, resumable across crashes.
//!
//! ```text
//! spool has an upload id? ──no──▶ CreateMultipartUpload ─▶ spool: multipart row, clip
//!                                                            `uploading` (one transaction)
//!        │yes                                                   │
//!        ▼                                                      ▼
//!   ListParts ──NoSuchUpload──▶ object already complete? ──yes──▶ done
//!        │                         │no: forget, start over
//!        ▼
//!   reconcile spool parts with listed parts
//!        ▼
//!   UploadPart for each missing part (a few at a time), each one's ETag into the spool
//!   as soon as the store answered  ─▶  CompleteMultipartUpload with the spool's parts
//! ```
//!
//! Part boundaries are fixed by the part size the seal planned with, stored with the part
//! MD5s ([`crate::digest::PartDigests`]), and the same `part_size` is stored with the
//! upload: a changed configuration never changes them. Each part is sent with the MD5 the
//! seal computed (`Content-MD5`); nothing is read from the file but the body itself. On
//! resume, a part counts as sent only when the spool and the store agree on it
//! ([`reconcile`]); a part the store has but the spool missed (a crash between the store's
//! answer and the spool commit) is adopted when its ETag is the seal's MD5 of that part, so
//! not even that part is sent twice.

use std::collections::HashMap;
use std::path::Path;

use futures::StreamExt as _;
use md5::{Digest as _, Md5};

use super::client::{Body, ListedPart, ObjectSpec, StoreErrorKind};
use super::{Context, UploadError, refused_body};
use crate::digest::{PartDigests, PartPlan};
use crate::spool::{ClipState, PartRow, multipart};
use crate::telemetry::Metrics;

/// What resuming an upload found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Parts the spool recorded and the store holds with the same ETag and size.
    pub confirmed: Vec<PartRow>,
    /// Parts the store holds that the spool did not record: adopt them when the local MD5
    /// matches their ETag.
    pub unrecorded: Vec<ListedPart>,
    /// Part numbers the spool recorded that the store does not hold as recorded: to forget
    /// and send again.
    pub stale: Vec<i64>,
}

/// Compares the spool's parts with the store's `ListParts` for the planned parts.
pub fn reconcile(plan: &[PartPlan], recorded: &[PartRow], listed: &[ListedPart]) -> Resume {
    let planned: HashMap<i64, u64> = plan.iter().map(|p| (p.number, p.length)).collect();
    let listed_by_number: HashMap<i64, &ListedPart> =
        listed.iter().map(|p| (p.part_number, p)).collect();
    let mut resume = Resume::default();
    for part in recorded {
        let fits = planned.get(&part.part_number) == u64::try_from(part.size).ok().as_ref();
        let held = listed_by_number
            .get(&part.part_number)
            .is_some_and(|l| same_etag(&l.etag, &part.etag) && l.size == part.size);
        if fits && held {
            resume.confirmed.push(part.clone());
        } else {
            resume.stale.push(part.part_number);
        }
    }
    for part in listed {
        let recorded_here = recorded.iter().any(|r| r.part_number == part.part_number);
        let fits = planned.get(&part.part_number) == u64::try_from(part.size).ok().as_ref();
        if !recorded_here && fits {
            resume.unrecorded.push(part.clone());
        }
    }
    resume
}

/// ETags compared without their quotes and case.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"')
        .eq_ignore_ascii_case(b.trim_matches('"'))
}

/// The ETag S3 gives an object completed from `parts`: the MD5 of the parts' binary MD5s,
/// a dash, and the number of parts.
pub fn multipart_etag(parts: &[PartRow]) -> Option<String> {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(hex::decode(part.etag.trim_matches('"')).ok()?);
    }
    Some(format!(
        "\"{}-{}\"",
        hex::encode(hasher.finalize()),
        parts.len()
    ))
}

/// Uploads the clip's file as a multipart object in the parts the seal planned (`digests`):
/// resumes the spool's upload when the store still knows it, sends only what is missing
/// and completes it.
pub(super) async fn upload(
    context: &Context,
    clip_id: &str,
    path: &Path,
    size: u64,
    spec: &ObjectSpec,
    digests: &PartDigests,
) -> Result<(), UploadError> {
    let store = &context.store;
    let store_error = |request: &'static str| {
        let key = spec.key.clone();
        move |source| UploadError::Store {
            request,
            key,
            source,
        }
    };
    let id = clip_id.to_owned();
    let existing = context.spool.call(move |c| multipart::get(c, &id)).await?;

    let existing = match existing {
        Some(upload) if u64::try_from(upload.part_size).ok() != Some(digests.part_size) => {
            // An upload begun before the seal kept its plan, with another part size: its
            // parts do not match the seal's MD5s.
            tracing::warn!(clip_id, upload_id = %upload.upload_id, part_size = upload.part_size, planned = digests.part_size, "the upload in progress has another part size than the seal's plan: starting it over");
            let id = clip_id.to_owned();
            context
                .spool
                .call(move |c| multipart::forget(c, &id))
                .await?;
            None
        }
        other => other,
    };
    let mut resumed = None;
    if let Some(upload) = existing {
        let parts = digests.parts(size);
        match store.list_parts(&spec.key, &upload.upload_id).await {
            Ok(listed) => resumed = Some((upload, parts, listed)),
            Err(e) if e.kind == StoreErrorKind::NoSuchUpload => {
                if upload.parts.len() == parts.len()
                    && let Some(expected) = multipart_etag(&upload.parts)
                    && let Ok(Some(head)) = store.head(&spec.key).await
                    && head
                        .etag
                        .as_deref()
                        .is_some_and(|etag| same_etag(etag, &expected))
                    && u64::try_from(head.size).ok() == Some(size)
                {
                    tracing::info!(clip_id, key = %spec.key, "multipart upload was completed before a restart");
                    return Ok(());
                }
                tracing::warn!(
                    clip_id,
                    key = %spec.key,
                    upload_id = %upload.upload_id,
                    "the store no longer knows the multipart upload: starting it over"
                );
                let id = clip_id.to_owned();
                context
                    .spool
                    .call(move |c| multipart::forget(c, &id))
                    .await?;
            }
            Err(e) => return Err(store_error("ListParts")(e)),
        }
    }

    let (upload_id, parts, mut done) = match resumed {
        Some((upload, parts, listed)) => {
            let resume = reconcile(&parts, &upload.parts, &listed);
            let mut done = resume.confirmed.clone();
            for stale in resume.stale {
                let id = clip_id.to_owned();
                context
                    .spool
                    .call(move |c| multipart::forget_part(c, &id, stale))
                    .await?;
            }
            for part in resume.unrecorded {
                let Some(md5) = digests.md5(part.part_number) else {
                    continue;
                };
                if same_etag(&part.etag, &hex::encode(md5)) {
                    let row = PartRow {
                        part_number: part.part_number,
                        etag: part.etag.clone(),
                        size: part.size,
                    };
                    let (id, upload_id, recorded) =
                        (clip_id.to_owned(), upload.upload_id.clone(), row.clone());
                    context
                        .spool
                        .call(move |c| multipart::record_part(c, &id, &upload_id, &recorded))
                        .await?;
                    done.push(row);
                }
            }
            tracing::info!(
                clip_id,
                key = %spec.key,
                upload_id = %upload.upload_id,
                parts_done = done.len(),
                parts = parts.len(),
                "resuming multipart upload"
            );
            (upload.upload_id, parts, done)
        }
        None => {
            let part_size = digests.part_size;
            let upload_id = {
                // The janitor must not see this upload before the spool knows it.
                let _creating = store.creation_lock().lock().await;
                let upload_id = store
                    .create_multipart(spec)
                    .await
                    .map_err(store_error("CreateMultipartUpload"))?;
                let (id, recorded, part_size) = (
                    clip_id.to_owned(),
                    upload_id.clone(),
                    i64::try_from(part_size).unwrap_or(i64::MAX),
                );
                context
                    .spool
                    .call(move |c| {
                        // From here on the store holds part of the clip: `uploading`.
                        let tx = c.transaction()?;
                        multipart::begin(&tx, &id, &recorded, part_size)?;
                        crate::spool::clips::set_state(&tx, &id, ClipState::Uploading)?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await?;
                upload_id
            };
            tracing::debug!(clip_id, key = %spec.key, %upload_id, part_size, "multipart upload created");
            (upload_id, digests.parts(size), Vec::new())
        }
    };

    let mut sent: i64 = done.iter().map(|p| p.size).sum();
    let missing: Vec<PartPlan> = parts
        .iter()
        .filter(|p| !done.iter().any(|d| d.part_number == p.number))
        .copied()
        .collect();
    let mut results = futures::stream::iter(missing)
        .map(|part| send_part(context, clip_id, path, &spec.key, &upload_id, part, digests))
        .buffer_unordered(context.settings.parts_in_flight.max(1));
    while let Some(result) = results.next().await {
        let part = match result {
            Ok(part) => part,
            Err(error) => {
                if let UploadError::Store { source, .. } = &error
                    && source.kind == StoreErrorKind::NoSuchUpload
                {
                    let id = clip_id.to_owned();
                    context
                        .spool
                        .call(move |c| multipart::forget(c, &id))
                        .await?;
                }
                return Err(error);
            }
        };
        Metrics::add(
            &context.metrics.upload_bytes,
            u64::try_from(part.size).unwrap_or(0),
        );
        sent += part.size;
        let (id, recorded_upload, recorded) = (clip_id.to_owned(), upload_id.clone(), part.clone());
        context
            .spool
            .call(move |c| {
                if multipart::record_part(c, &id, &recorded_upload, &recorded)? {
                    crate::spool::clips::set_bytes_sent(c, &id, sent)?;
                }
                Ok(())
            })
            .await?;
        done.push(part);
    }
    drop(results);

    done.sort_by_key(|p| p.part_number);
    store
        .complete(&spec.key, &upload_id, &done)
        .await
        .map_err(store_error("CompleteMultipartUpload"))?;
    Ok(())
}

/// `UploadPart` with the seal's MD5 of the part.
async fn send_part(
    context: &Context,
    clip_id: &str,
    path: &Path,
    key: &str,
    upload_id: &str,
    part: PartPlan,
    digests: &PartDigests,
) -> Result<PartRow, UploadError> {
    let md5 = digests
        .md5(part.number)
        .ok_or_else(|| UploadError::Unusable {
            clip_id: clip_id.to_owned(),
            problem: format!("the seal's digests have no MD5 for part {}", part.number),
        })?;
    let body = Body {
        path: path.to_owned(),
        offset: part.offset,
        length: part.length,
        md5,
    };
    let number = i32::try_from(part.number).unwrap_or(i32::MAX);
    let etag = match context
        .store
        .upload_part(key, upload_id, number, &body)
        .await
    {
        Ok(etag) => etag,
        Err(source) => {
            return Err(refused_body(clip_id, &body, part.number, source, "UploadPart", key).await);
        }
    };
    Ok(PartRow {
        part_number: part.number,
        etag,
        size: i64::try_from(part.length).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::plan;

    fn recorded(number: i64, etag: &str, size: i64) -> PartRow {
        PartRow {
            part_number: number,
            etag: etag.into(),
            size,
        }
    }

    fn listed(number: i64, etag: &str, size: i64) -> ListedPart {
        ListedPart {
            part_number: number,
            etag: etag.into(),
            size,
        }
    }

    #[test]
    fn resume_trusts_only_parts_the_spool_and_the_store_agree_on() {
        let parts = plan(40, 10);
        let resume = reconcile(
            &parts,
            &[
                recorded(1, "\"aa\"", 10),
                recorded(2, "\"bb\"", 10), // the store has another body for part 2
                recorded(3, "\"cc\"", 10), // the store lost part 3
            ],
            &[
                listed(1, "\"AA\"", 10),
                listed(2, "\"xx\"", 10),
                listed(4, "\"dd\"", 10), // sent, but the crash came before the spool commit
                listed(5, "\"ee\"", 10), // not a part of this plan
            ],
        );
        assert_eq!(resume.confirmed, [recorded(1, "\"aa\"", 10)]);
        assert_eq!(resume.stale, [2, 3]);
        assert_eq!(resume.unrecorded, [listed(4, "\"dd\"", 10)]);
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s() {
        // Two parts whose MD5s are those of "a" and "b".
        let a = hex::encode(Md5::digest(b"a"));
        let b = hex::encode(Md5::digest(b"b"));
        let parts = [
            recorded(1, &format!("\"{a}\""), 1),
            recorded(2, &format!("\"{b}\""), 1),
        ];
        let mut joined = Md5::digest(b"a").to_vec();
        joined.extend_from_slice(&Md5::digest(b"b"));
        assert_eq!(
            multipart_etag(&parts).unwrap(),
            format!("\"{}-2\"", hex::encode(Md5::digest(&joined)))
        );
        assert!(multipart_etag(&[recorded(1, "\"not hex\"", 1)]).is_none());
    }
}
