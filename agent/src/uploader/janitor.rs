//! The janitor: aborts multipart uploads this agent left behind.
//!
//! OBS never expires an unfinished multipart upload, and its parts are billed storage. An
//! agent leaves one behind when it crashes between `CreateMultipartUpload` and the spool
//! commit, or when an upload was started over. The janitor runs when the uploader starts and
//! then every `janitor_interval`: it lists the multipart uploads under `{env}/` and aborts
//!
//! - an upload of one of **this spool's clips** (the clip id is the object key's file name)
//!   that is not the upload the spool records for that clip: an orphan of this agent;
//! - with `stale_upload_age` set and the clock synchronised, an upload older than that,
//!   whoever started it.
//!
//! Every other upload is left alone: the bucket is shared by every station of the
//! environment, and an upload of another agent's clip is that agent's to resume. (An agent
//! whose upload was aborted as stale finds out by `NoSuchUpload` and starts it over.)
//!
//! The sweep holds the store's creation lock, so an upload that was just created but is not
//! in the spool yet is never mistaken for an orphan.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use capture_protocol::Env;

use super::UploadError;
use super::client::{ListedUpload, Store};
use crate::spool::{Spool, clips, multipart};

/// What to do with one listed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Abort(String),
}

/// What the spool knows, for [`judge`].
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Upload ids the spool records.
    pub upload_ids: HashSet<String>,
    /// Clip ids of the listed keys that are clips of this spool.
    pub own_clips: HashSet<String>,
}

/// The clip id an object key names: its file name without the extension.
pub fn clip_id_of_key(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let (stem, _extension) = name.rsplit_once('.')?;
    (!stem.is_empty()).then_some(stem)
}

/// Decides on one upload. `stale_after` applies only when given (the clock is trusted).
pub fn judge(
    upload: &ListedUpload,
    known: &Known,
    now: SystemTime,
    stale_after: Option<Duration>,
) -> Verdict {
    if known.upload_ids.contains(&upload.upload_id) {
        return Verdict::Keep;
    }
    if let Some(clip_id) = clip_id_of_key(&upload.key)
        && known.own_clips.contains(clip_id)
    {
        return Verdict::Abort(format!(
            "orphan of clip {clip_id}: the spool does not record this upload"
        ));
    }
    if let (Some(limit), Some(initiated)) = (stale_after, upload.initiated)
        && let Ok(age) = now.duration_since(initiated)
        && age > limit
    {
        return Verdict::Abort(format!(
            "stale: started {} ago",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        ));
    }
    Verdict::Keep
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    pub listed: usize,
    /// `(key, upload_id)` of each upload aborted.
    pub aborted: Vec<(String, String)>,
}

/// Lists the multipart uploads under `{env}/` and aborts the orphans (see the module
/// documentation). `stale_after` is applied only when `clock_synced`.
pub async fn sweep(
    store: &Store,
    spool: &Spool,
    env: &Env,
    stale_after: Option<Duration>,
    clock_synced: bool,
) -> Result<Sweep, UploadError> {
    let _creating = store.creation_lock().lock().await;
    let prefix = format!("{env}/");
    let uploads = store
        .list_uploads(&prefix)
        .await
        .map_err(|source| UploadError::Store {
            request: "ListMultipartUploads",
            key: prefix.clone(),
            source,
        })?;
    let clip_ids: Vec<String> = uploads
        .iter()
        .filter_map(|u| clip_id_of_key(&u.key).map(str::to_owned))
        .collect();
    let known = spool
        .call(move |c| {
            let upload_ids = multipart::uploads(c)?
                .into_iter()
                .map(|(_, upload_id)| upload_id)
                .collect();
            let mut own_clips = HashSet::new();
            for clip_id in clip_ids {
                if clips::get(c, &clip_id)?.is_some() {
                    own_clips.insert(clip_id);
                }
            }
            Ok(Known {
                upload_ids,
                own_clips,
            })
        })
        .await?;
    let now = SystemTime::now();
    let stale_after = stale_after.filter(|_| clock_synced);
    let mut sweep = Sweep {
        listed: uploads.len(),
        aborted: Vec::new(),
    };
    for upload in uploads {
        let Verdict::Abort(reason) = judge(&upload, &known, now, stale_after) else {
            continue;
        };
        match store.abort(&upload.key, &upload.upload_id).await {
            Ok(()) => {
                tracing::info!(key = %upload.key, upload_id = %upload.upload_id, %reason, "aborted a multipart upload");
                sweep.aborted.push((upload.key, upload.upload_id));
            }
            Err(e) => {
                tracing::warn!(key = %upload.key, upload_id = %upload.upload_id, error = %e, "aborting a multipart upload failed; the next sweep tries again");
            }
        }
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str, upload_id: &str, initiated: Option<SystemTime>) -> ListedUpload {
        ListedUpload {
            key: key.into(),
            upload_id: upload_id.into(),
            initiated,
        }
    }

    #[test]
    fn the_clip_id_is_the_file_name_of_the_key() {
        assert_eq!(
            clip_id_of_key("prod/2026/11/23/SO-1/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4"),
            Some("01JDQ3Z8M4X5V6W7Y8Z9A0B1C2")
        );
        assert_eq!(clip_id_of_key("prod/x/.mp4"), None);
        assert_eq!(clip_id_of_key("prod/noextension"), None);
    }

    #[test]
    fn only_own_orphans_and_stale_uploads_are_aborted() {
        let now = SystemTime::now();
        let hour_ago = now - Duration::from_secs(3600);
        let week_ago = now - Duration::from_secs(8 * 24 * 3600);
        let known = Known {
            upload_ids: HashSet::from(["mine".to_owned()]),
            own_clips: HashSet::from(["A".to_owned()]),
        };
        let week = Some(Duration::from_secs(7 * 24 * 3600));
        // The spool's own upload, even when old.
        assert_eq!(
            judge(
                &upload("dev/x/A.mp4", "mine", Some(week_ago)),
                &known,
                now,
                week
            ),
            Verdict::Keep
        );
        // Another upload of one of our clips: an orphan.
        assert!(matches!(
            judge(&upload("dev/x/A.mp4", "old", Some(hour_ago)), &known, now, week),
            Verdict::Abort(reason) if reason.contains("orphan of clip A")
        ));
        // Another agent's clip: left alone while young, aborted once stale.
        assert_eq!(
            judge(
                &upload("dev/x/B.mp4", "theirs", Some(hour_ago)),
                &known,
                now,
                week
            ),
            Verdict::Keep
        );
        assert!(matches!(
            judge(&upload("dev/x/B.mp4", "theirs", Some(week_ago)), &known, now, week),
            Verdict::Abort(reason) if reason.starts_with("stale")
        ));
        // Without a trusted clock (no limit given) age decides nothing.
        assert_eq!(
            judge(
                &upload("dev/x/B.mp4", "theirs", Some(week_ago)),
                &known,
                now,
                None
            ),
            Verdict::Keep
        );
    }
}
