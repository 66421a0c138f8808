//! Verification: does the object in the store match the notification?
//!
//! The consumer has already checked the notification itself (schema, version, environment,
//! key = the clip's key in this environment, content type, times) with
//! [`capture_protocol::Uploaded::check`]. Here the object is compared against it:
//!
//! 1. the bucket is the ingest's bucket (an agent cannot make the ingest read elsewhere);
//! 2. `HEAD` the object: it exists (`object missing` otherwise), its size is the notified
//!    size (`size mismatch`), its `sha256` user metadata is the notified digest (`sha256
//!    mismatch`, or `sha256 metadata missing`);
//! 3. with `verify = "etag"` (the default), the object's ETag from the same `HEAD` is the
//!    notification's `etag` (`etag mismatch`): the agent computed it from the bytes it
//!    sealed (the MD5 of the file, or of its part MD5s then `-N`), the store computed its own
//!    from the bytes it holds, so a replaced or damaged object is caught without reading it.
//!    The rule has two exceptions ([`judge_etag`]): a notification without `etag` (an agent
//!    from before it, during a rollout) gets the check of `head` only; an object stored with
//!    server-side encryption (the `HEAD` answer says so; S3 with SSE-KMS or SSE-C, and OBS
//!    with any SSE, give ETags that are no MD5 of the content) gets the check of `full`;
//! 4. with `verify = "full"`, the whole object is read and hashed, and the digest must match
//!    (`sha256 mismatch: content hashes to ...`).
//!
//! A mismatch is a [`Decision::Rejected`] with a reason that starts with the names above: the
//! reason goes to the device and into the `clip.rejected` event;
//! [`rejection::reason_label`](crate::rejection::reason_label) names its kind for the
//! `ingest_rejections_total{reason}` metric. A failure of the store itself
//! (network, 5xx, timeouts) is a [`VerifyError`]: nothing is decided, the caller retries.
//! The decision on the HEAD answer is the pure function [`judge`].

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use capture_protocol::Uploaded;
use sha2::{Digest, Sha256};

use crate::catalog::Decision;
use crate::config::VerifyMode;

/// The object store failed to answer; nothing is known about the object.
#[derive(Debug, thiserror::Error)]
#[error("object store request for {bucket}/{key}: {message}")]
pub struct VerifyError {
    pub bucket: String,
    pub key: String,
    pub message: String,
}

/// Checks objects against notifications.
#[derive(Debug, Clone)]
pub struct Verifier {
    client: aws_sdk_s3::Client,
    bucket: String,
    mode: VerifyMode,
}

impl Verifier {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, mode: VerifyMode) -> Self {
        Self {
            client,
            bucket,
            mode,
        }
    }

    /// Decides on one notification, or fails when the store does not answer.
    #[tracing::instrument(level = "debug", skip_all, fields(clip_id = %uploaded.clip_id))]
    pub async fn verify(&self, uploaded: &Uploaded) -> Result<Decision, VerifyError> {
        if uploaded.bucket != self.bucket {
            return Ok(Decision::Rejected(format!(
                "wrong bucket: {:?} is not the ingest's bucket {:?}",
                uploaded.bucket, self.bucket
            )));
        }
        let error = |message: String| VerifyError {
            bucket: uploaded.bucket.clone(),
            key: uploaded.key.clone(),
            message,
        };
        let head = self
            .client
            .head_object()
            .bucket(&uploaded.bucket)
            .key(&uploaded.key)
            .send()
            .await;
        let head = match head {
            Ok(head) => head,
            Err(SdkError::ServiceError(e)) if is_not_found(e.err(), e.raw().status().as_u16()) => {
                return Ok(Decision::Rejected(format!(
                    "object missing: {}/{}",
                    uploaded.bucket, uploaded.key
                )));
            }
            Err(e) => return Err(error(format!("HEAD failed: {}", error_text(&e)))),
        };
        let sha256 = head.metadata().and_then(|m| m.get("sha256"));
        let decision = judge(uploaded, head.content_length(), sha256.map(String::as_str));
        if decision != Decision::Accepted {
            return Ok(decision);
        }
        let full = match self.mode {
            VerifyMode::Head => false,
            VerifyMode::Full => true,
            VerifyMode::Etag => {
                let encryption = head
                    .server_side_encryption()
                    .map(|e| e.as_str())
                    .or(head.sse_customer_algorithm());
                match judge_etag(uploaded.etag.as_deref(), head.e_tag(), encryption) {
                    EtagCheck::Decided(decision) => return Ok(decision),
                    EtagCheck::NotSent => {
                        tracing::debug!(clip_id = %uploaded.clip_id, "no etag in the notification (an older agent): size and sha256 metadata checked");
                        false
                    }
                    EtagCheck::NotComparable(why) => {
                        tracing::info!(clip_id = %uploaded.clip_id, why, "the object's ETag is no digest of its content: reading the object to verify it");
                        true
                    }
                }
            }
        };
        if !full {
            return Ok(Decision::Accepted);
        }
        self.hash_content(uploaded).await.map_err(error)
    }

    /// Reads the whole object and compares its digest.
    async fn hash_content(&self, uploaded: &Uploaded) -> Result<Decision, String> {
        let object = self
            .client
            .get_object()
            .bucket(&uploaded.bucket)
            .key(&uploaded.key)
            .send()
            .await
            .map_err(|e| format!("GET failed: {}", error_text(&e)))?;
        let mut body = object.body;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("reading the object: {e}"))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if size != uploaded.size {
            return Ok(Decision::Rejected(format!(
                "size mismatch: object has {size} bytes, notification says {}",
                uploaded.size
            )));
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(uploaded.sha256.as_str()) {
            return Ok(Decision::Rejected(format!(
                "sha256 mismatch: content hashes to {digest}"
            )));
        }
        Ok(Decision::Accepted)
    }
}

fn is_not_found(error: &HeadObjectError, status: u16) -> bool {
    error.is_not_found() || status == 404
}

fn error_text<E: std::error::Error + 'static>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The decision on a HEAD answer: size and sha256 metadata against the notification.
pub fn judge(uploaded: &Uploaded, size: Option<i64>, sha256: Option<&str>) -> Decision {
    let size = size.and_then(|s| u64::try_from(s).ok());
    if size != Some(uploaded.size) {
        return Decision::Rejected(format!(
            "size mismatch: object has {} bytes, notification says {}",
            size.map_or_else(|| "an unknown number of".to_owned(), |s| s.to_string()),
            uploaded.size
        ));
    }
    match sha256 {
        None => Decision::Rejected("sha256 metadata missing on the object".to_owned()),
        Some(stored) if !stored.eq_ignore_ascii_case(uploaded.sha256.as_str()) => {
            Decision::Rejected(format!(
                "sha256 mismatch: object metadata says {stored}, notification says {}",
                uploaded.sha256
            ))
        }
        Some(_) => Decision::Accepted,
    }
}

/// What the ETag comparison of `verify = "etag"` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtagCheck {
    /// The ETags were compared: accepted, or rejected with `etag mismatch: ...`.
    Decided(Decision),
    /// The notification has no `etag` (an agent from before it): nothing to compare.
    NotSent,
    /// The object's ETag says nothing about its content (why): it must be read.
    NotComparable(&'static str),
}

/// Compares the notification's `etag` with the object's ETag from `HEAD` (`object`,
/// quoted as stores send it), unless the object's server-side `encryption` (the `HEAD`
/// answer's `x-amz-server-side-encryption` or SSE-C algorithm) makes the ETag no MD5 of the
/// content. Case and quotes are ignored.
pub fn judge_etag(
    notified: Option<&str>,
    object: Option<&str>,
    encryption: Option<&str>,
) -> EtagCheck {
    let Some(notified) = notified else {
        return EtagCheck::NotSent;
    };
    if encryption.is_some() {
        return EtagCheck::NotComparable("the object is stored with server-side encryption");
    }
    let Some(object) = object else {
        return EtagCheck::NotComparable("the store gave no ETag");
    };
    let object = object.trim_matches('"');
    if object.eq_ignore_ascii_case(notified) {
        EtagCheck::Decided(Decision::Accepted)
    } else {
        EtagCheck::Decided(Decision::Rejected(format!(
            "etag mismatch: the object's ETag is {object}, the agent sealed {notified}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::{REASON_LABELS, reason_label};
    use crate::testdata::EXAMPLE;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn uploaded() -> Uploaded {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn matching_size_and_digest_are_accepted() {
        assert_eq!(
            judge(&uploaded(), Some(73400320), Some(SHA)),
            Decision::Accepted
        );
        let upper = SHA.to_uppercase();
        assert_eq!(
            judge(&uploaded(), Some(73400320), Some(&upper)),
            Decision::Accepted
        );
    }

    #[test]
    fn mismatches_are_rejected_with_their_reason() {
        let reason = |d: Decision| match d {
            Decision::Rejected(r) => r,
            Decision::Accepted => panic!("accepted"),
        };
        assert!(reason(judge(&uploaded(), Some(1), Some(SHA))).starts_with("size mismatch"));
        assert!(reason(judge(&uploaded(), None, Some(SHA))).starts_with("size mismatch"));
        assert!(
            reason(judge(&uploaded(), Some(73400320), Some(&"0".repeat(64))))
                .starts_with("sha256 mismatch")
        );
        assert!(
            reason(judge(&uploaded(), Some(73400320), None)).starts_with("sha256 metadata missing")
        );
    }

    #[test]
    fn the_etag_decides_unless_none_was_sent_or_encryption_makes_it_meaningless() {
        let sealed = "9b2cf535f27731c974343645a3985328-9";
        assert_eq!(
            judge_etag(
                Some(sealed),
                Some("\"9B2CF535F27731C974343645A3985328-9\""),
                None
            ),
            EtagCheck::Decided(Decision::Accepted)
        );
        let replaced = judge_etag(
            Some(sealed),
            Some("\"0f343b0931126a20f133d67c2b018a3b\""),
            None,
        );
        match replaced {
            EtagCheck::Decided(Decision::Rejected(reason)) => {
                assert_eq!(
                    reason,
                    "etag mismatch: the object's ETag is 0f343b0931126a20f133d67c2b018a3b, \
                     the agent sealed 9b2cf535f27731c974343645a3985328-9"
                );
                assert_eq!(reason_label(&reason), "etag_mismatch");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(judge_etag(None, Some("\"x\""), None), EtagCheck::NotSent);
        for encryption in ["aws:kms", "AES256", "aws:kms:dsse"] {
            assert!(matches!(
                judge_etag(Some(sealed), Some("\"anything\""), Some(encryption)),
                EtagCheck::NotComparable(_)
            ));
        }
        assert!(matches!(
            judge_etag(Some(sealed), None, None),
            EtagCheck::NotComparable(_)
        ));
    }

    #[test]
    fn every_reason_has_its_metric_label() {
        let label = |d: Decision| match d {
            Decision::Rejected(r) => reason_label(&r),
            Decision::Accepted => panic!("accepted"),
        };
        assert_eq!(
            label(judge(&uploaded(), Some(1), Some(SHA))),
            "size_mismatch"
        );
        assert_eq!(
            label(judge(&uploaded(), Some(73400320), Some(&"0".repeat(64)))),
            "sha256_mismatch"
        );
        assert_eq!(
            label(judge(&uploaded(), Some(73400320), None)),
            "sha256_missing"
        );
        assert_eq!(reason_label("object missing: b/k"), "object_missing");
        assert_eq!(reason_label("wrong bucket: \"x\""), "wrong_bucket");
        assert_eq!(
            reason_label("sha256 mismatch: content hashes to 00"),
            "sha256_mismatch"
        );
        assert_eq!(reason_label("wrong env: key \"prod/x\""), "wrong_env");
        assert_eq!(
            reason_label("clip c-1: ends at 2026-01-01T00:00:00Z, before it starts"),
            "invalid"
        );
        for reason in ["size mismatch", "object missing", "something new"] {
            assert!(REASON_LABELS.contains(&reason_label(reason)));
        }
    }
}
