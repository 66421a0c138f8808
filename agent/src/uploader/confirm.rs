//! The ingest's answer to an uploaded notification, applied to the spool.
//!
//! | confirm | clip | outbox | then |
//! | --- | --- | --- | --- |
//! | `accepted` | `accepted` | `clip_confirmed` event | disk eviction may delete the file |
//! | `rejected`, integrity reason | `sealed`, nothing sent, multipart state dropped | - | uploaded again to the same key (overwrites) |
//! | `rejected`, any other reason | `failed`, reason as last error | `clip_failed` event | an operator looks |
//!
//! Integrity reasons are the ones the ingest's verification gives when the object does not
//! hold what the notification says ([`is_integrity_reason`]): a new upload repairs them. Any
//! other rejection (wrong bucket, a field the ingest refuses) would be rejected again.
//!
//! Only a clip in `uploaded` is changed: a confirm for an unknown clip, or a redelivered one
//! for a clip already decided, changes nothing and says so ([`ConfirmEffect`]).

use capture_protocol::{Confirm, EventKind, Verdict};
use rusqlite::Connection;

use super::UploaderSettings;
use crate::spool::{ClipRow, ClipState, OutboxMessage, SpoolError, clips, multipart, outbox};

/// What applying a confirm did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmEffect {
    /// The clip is `accepted`; a `clip_confirmed` event is in the outbox.
    Accepted,
    /// The object was rejected for its content: the clip is `sealed` again and will be
    /// uploaded anew (wake the uploader).
    Reupload { reason: String },
    /// The clip is `failed`; a `clip_failed` event is in the outbox.
    Failed { reason: String },
    /// No clip with this id in the spool: nothing changed.
    UnknownClip,
    /// The clip is not waiting for a confirm (already decided, or not uploaded yet):
    /// nothing changed.
    NotAwaiting { state: ClipState },
}

impl ConfirmEffect {
    /// Whether outbox rows were added (call the link's flush).
    pub fn queued_messages(&self) -> bool {
        matches!(self, ConfirmEffect::Accepted | ConfirmEffect::Failed { .. })
    }

    /// Whether the clip waits for the uploader again (notify its `wake`).
    pub fn needs_upload(&self) -> bool {
        matches!(self, ConfirmEffect::Reupload { .. })
    }
}

/// Whether a rejection means the object's content is wrong (a re-upload repairs it).
pub fn is_integrity_reason(reason: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "sha256 mismatch",
        "etag mismatch",
        "sha256 metadata missing",
        "size mismatch",
        "md5 mismatch",
        "object missing",
        "missing object",
    ];
    let reason = reason.trim_start().to_ascii_lowercase();
    PREFIXES.iter().any(|prefix| reason.starts_with(prefix))
}

/// Applies `confirm` in one transaction; see the module documentation.
pub fn apply_confirm(
    connection: &mut Connection,
    settings: &UploaderSettings,
    confirm: &Confirm,
) -> Result<ConfirmEffect, SpoolError> {
    let tx = connection.transaction()?;
    let clip_id = confirm.clip_id.as_str();
    let Some(clip) = clips::get(&tx, clip_id)? else {
        return Ok(ConfirmEffect::UnknownClip);
    };
    if clip.state != ClipState::Uploaded {
        return Ok(ConfirmEffect::NotAwaiting { state: clip.state });
    }
    let effect = match &confirm.verdict {
        Verdict::Accepted => {
            clips::set_state(&tx, clip_id, ClipState::Accepted)?;
            outbox::push(&tx, &event(&clip, settings, EventKind::ClipConfirmed)?)?;
            ConfirmEffect::Accepted
        }
        Verdict::Rejected { reason } if is_integrity_reason(reason) => {
            multipart::forget(&tx, clip_id)?;
            clips::reset_upload(&tx, clip_id)?;
            clips::record_failure(&tx, clip_id, &format!("rejected by the ingest: {reason}"))?;
            ConfirmEffect::Reupload {
                reason: reason.clone(),
            }
        }
        Verdict::Rejected { reason } => {
            clips::fail(&tx, clip_id, &format!("rejected by the ingest: {reason}"))?;
            let failed = EventKind::ClipFailed {
                reason: reason.clone(),
            };
            outbox::push(&tx, &event(&clip, settings, failed)?)?;
            ConfirmEffect::Failed {
                reason: reason.clone(),
            }
        }
    };
    tx.commit()?;
    Ok(effect)
}

/// An event about `clip` for the station's event topic.
pub(super) fn event(
    clip: &ClipRow,
    settings: &UploaderSettings,
    kind: EventKind,
) -> Result<OutboxMessage, SpoolError> {
    let corrupt = |what: String| SpoolError::Corrupt {
        clip_id: clip.clip_id.clone(),
        what,
    };
    let event = capture_protocol::Event::new(
        kind,
        clip.clip_id
            .parse()
            .map_err(|e| corrupt(format!("clip id: {e}")))?,
        clip.order
            .parse()
            .map_err(|e| corrupt(format!("order: {e}")))?,
        clip.camera
            .parse()
            .map_err(|e| corrupt(format!("camera: {e}")))?,
        capture_protocol::Timestamp::now(),
    );
    Ok(OutboxMessage::new(
        capture_protocol::topic::event(&settings.env, &settings.station),
        serde_json::to_vec(&event).expect("an event serializes"),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::outbox;
    use crate::spool::test_support::{database, sealed_video};

    const CLIP: &str = "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2";

    fn uploaded_clip(connection: &Connection) {
        sealed_video(connection, CLIP, [0; 16]);
        clips::set_uploaded(connection, CLIP).unwrap();
    }

    fn settings() -> UploaderSettings {
        UploaderSettings::new(
            "dev".parse().unwrap(),
            "pi-01".parse().unwrap(),
            "pack-01".parse().unwrap(),
            "bucket",
        )
    }

    fn events(connection: &Connection) -> Vec<serde_json::Value> {
        outbox::pending(connection, 100)
            .unwrap()
            .into_iter()
            .map(|p| {
                assert_eq!(p.message.topic, "cap/dev/station/pack-01/event");
                serde_json::from_slice(&p.message.payload).unwrap()
            })
            .collect()
    }

    fn confirm(json: &str) -> Confirm {
        capture_protocol::parse_confirm(json.as_bytes()).unwrap()
    }

    #[test]
    fn accepted_marks_the_clip_and_announces_it_once() {
        let (_dir, mut connection) = database();
        uploaded_clip(&connection);
        let accepted = confirm(&format!(
            r#"{{"v":1,"clip_id":"{CLIP}","status":"accepted"}}"#
        ));
        assert_eq!(
            apply_confirm(&mut connection, &settings(), &accepted).unwrap(),
            ConfirmEffect::Accepted
        );
        assert_eq!(
            clips::get(&connection, CLIP).unwrap().unwrap().state,
            ClipState::Accepted
        );
        let sent = events(&connection);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["event"], "clip_confirmed");
        assert_eq!(sent[0]["clip_id"], CLIP);
        // A redelivery changes nothing.
        assert_eq!(
            apply_confirm(&mut connection, &settings(), &accepted).unwrap(),
            ConfirmEffect::NotAwaiting {
                state: ClipState::Accepted
            }
        );
        assert_eq!(events(&connection).len(), 1);
    }

    #[test]
    fn an_integrity_rejection_queues_the_clip_for_a_new_upload() {
        let (_dir, mut connection) = database();
        uploaded_clip(&connection);
        multipart::begin(&connection, CLIP, "u-1", 5).unwrap();
        let rejected = confirm(&format!(
            r#"{{"v":1,"clip_id":"{CLIP}","status":"rejected","reason":"sha256 mismatch: content hashes to 00"}}"#
        ));
        let effect = apply_confirm(&mut connection, &settings(), &rejected).unwrap();
        assert!(effect.needs_upload(), "{effect:?}");
        let clip = clips::get(&connection, CLIP).unwrap().unwrap();
        assert_eq!((clip.state, clip.bytes_sent), (ClipState::Sealed, 0));
        assert!(clip.last_error.unwrap().contains("sha256 mismatch"));
        assert!(multipart::get(&connection, CLIP).unwrap().is_none());
        assert!(events(&connection).is_empty());
    }

    #[test]
    fn another_rejection_fails_the_clip_with_an_event() {
        let (_dir, mut connection) = database();
        uploaded_clip(&connection);
        let rejected = confirm(&format!(
            r#"{{"v":1,"clip_id":"{CLIP}","status":"rejected","reason":"wrong bucket: \"x\""}}"#
        ));
        let effect = apply_confirm(&mut connection, &settings(), &rejected).unwrap();
        assert!(matches!(effect, ConfirmEffect::Failed { .. }), "{effect:?}");
        assert_eq!(
            clips::get(&connection, CLIP).unwrap().unwrap().state,
            ClipState::Failed
        );
        let sent = events(&connection);
        assert_eq!(sent[0]["event"], "clip_failed");
        assert_eq!(sent[0]["reason"], "wrong bucket: \"x\"");
    }

    #[test]
    fn an_unknown_clip_changes_nothing() {
        let (_dir, mut connection) = database();
        let unknown =
            confirm(r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C9","status":"accepted"}"#);
        assert_eq!(
            apply_confirm(&mut connection, &settings(), &unknown).unwrap(),
            ConfirmEffect::UnknownClip
        );
        assert!(events(&connection).is_empty());
    }

    #[test]
    fn integrity_reasons_are_the_ingests_content_checks() {
        for reason in [
            "sha256 mismatch",
            "size mismatch: object has 1 bytes, notification says 2",
            "object missing: b/k",
            "sha256 metadata missing",
            "MD5 mismatch",
            "etag mismatch: the object's ETag is \"0f-2\", the agent sealed 1a-2",
        ] {
            assert!(is_integrity_reason(reason), "{reason}");
        }
        for reason in ["wrong bucket: \"x\"", "bad key", ""] {
            assert!(!is_integrity_reason(reason), "{reason}");
        }
    }
}
