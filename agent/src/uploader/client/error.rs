//! What a failed store request means for the uploader: [`StoreError`] classifies the SDK's
//! errors into the few cases the uploader acts on differently (credentials, a missing bucket
//! or upload, a bad digest, the store unreachable or stalled) and says what to check.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Why the store did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// The store's error code (`AccessDenied`, `NoSuchBucket`, ...), when it answered one.
    pub code: Option<String>,
    /// The HTTP status, when the store answered.
    pub status: Option<u16>,
    pub message: String,
}

/// What a store error means for the uploader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store refused the credentials or the signature (HTTP 403): every request will fail
    /// until the key files are fixed.
    Credentials,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The multipart upload id is unknown to the store (aborted, expired or completed).
    NoSuchUpload,
    /// No answer: connection refused or reset, DNS, connect timeout.
    Unreachable,
    /// The request made no progress for the stall timeout and was abandoned.
    Stalled,
    /// The store failed (HTTP 5xx, or an answer that could not be read).
    Server,
    /// The store refused the body because it does not match its `Content-MD5` (`BadDigest`,
    /// `InvalidDigest`): the bytes read from the file are not the ones the seal hashed, or
    /// they were damaged on the way (the uploader reads the region again to tell which).
    BadDigest,
    /// The store refused this request (another HTTP 4xx).
    Rejected,
}

impl StoreError {
    pub(super) fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            code: None,
            status: None,
            message: message.into(),
        }
    }

    /// Whether the error concerns the store as a whole rather than this one object: then
    /// every upload waits for the store's backoff instead of trying the next clip at once.
    pub fn is_store_wide(&self) -> bool {
        !matches!(
            self.kind,
            StoreErrorKind::Rejected | StoreErrorKind::NoSuchUpload | StoreErrorKind::BadDigest
        )
    }

    /// The store's error code, or the kind of failure when there was no answer (for logs and
    /// metrics labels).
    pub fn code(&self) -> &str {
        match (&self.code, self.kind) {
            (Some(code), _) => code,
            (None, StoreErrorKind::Unreachable) => "Unreachable",
            (None, StoreErrorKind::Stalled) => "Stalled",
            (None, StoreErrorKind::Credentials) => "AccessDenied",
            (None, StoreErrorKind::NoSuchBucket) => "NoSuchBucket",
            (None, StoreErrorKind::NoSuchUpload) => "NoSuchUpload",
            (None, StoreErrorKind::Server) => "ServerError",
            (None, StoreErrorKind::Rejected) => "Rejected",
            (None, StoreErrorKind::BadDigest) => "BadDigest",
        }
    }

    /// Classifies an SDK error.
    pub fn from_sdk<E>(error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match &error {
            SdkError::ServiceError(context) => {
                let status = context.raw().status().as_u16();
                let code = context.err().code().map(str::to_owned);
                let message = context
                    .err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| error_chain(&error));
                let kind = match (code.as_deref(), status) {
                    (Some("NoSuchUpload"), _) => StoreErrorKind::NoSuchUpload,
                    (Some("NoSuchBucket"), _) => StoreErrorKind::NoSuchBucket,
                    (Some("BadDigest" | "InvalidDigest"), _) => StoreErrorKind::BadDigest,
                    (
                        Some(
                            "InvalidAccessKeyId"
                            | "SignatureDoesNotMatch"
                            | "AccessDenied"
                            | "InvalidToken"
                            | "ExpiredToken"
                            | "InvalidSignature",
                        ),
                        _,
                    )
                    | (_, 401 | 403) => StoreErrorKind::Credentials,
                    (_, 500..) | (Some("SlowDown" | "RequestTimeout" | "InternalError"), _) => {
                        StoreErrorKind::Server
                    }
                    _ => StoreErrorKind::Rejected,
                };
                StoreError {
                    kind,
                    code,
                    status: Some(status),
                    message,
                }
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                StoreError::new(StoreErrorKind::Unreachable, error_chain(&error))
            }
            SdkError::ResponseError(context) => StoreError {
                status: Some(context.raw().status().as_u16()),
                ..StoreError::new(StoreErrorKind::Server, error_chain(&error))
            },
            _ => StoreError::new(StoreErrorKind::Rejected, error_chain(&error)),
        }
    }

    pub(super) fn stalled(timeout: Duration) -> StoreError {
        StoreError::new(
            StoreErrorKind::Stalled,
            format!(
                "no progress for {}s: request abandoned",
                timeout.as_secs_f64()
            ),
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} (HTTP {status}): {}", self.code(), self.message)?,
            None => write!(f, "{}: {}", self.code(), self.message)?,
        }
        match self.kind {
            StoreErrorKind::Credentials => f.write_str(
                "; the store refused the agent's credentials: check the key in \
                 store.access_key_id_file and store.secret_access_key_file, and that it may \
                 write to the bucket",
            ),
            StoreErrorKind::NoSuchBucket => {
                f.write_str("; check store.bucket and that the bucket exists in this store")
            }
            StoreErrorKind::Unreachable => f.write_str("; check store.endpoint and the network"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for StoreError {}

/// The error and its causes on one line (the SDK's own `Display` says only "dispatch
/// failure" and keeps the reason in its sources).
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_errors_say_which_files_to_check_and_are_store_wide() {
        let error = StoreError {
            kind: StoreErrorKind::Credentials,
            code: Some("InvalidAccessKeyId".into()),
            status: Some(403),
            message: "The access key does not exist".into(),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("InvalidAccessKeyId (HTTP 403): The access key does not exist; "),
            "{text}"
        );
        assert!(text.contains("store.secret_access_key_file"), "{text}");
        assert!(error.is_store_wide());
        let unreachable = StoreError::new(StoreErrorKind::Unreachable, "connection refused");
        assert_eq!(
            unreachable.to_string(),
            "Unreachable: connection refused; check store.endpoint and the network"
        );
        assert!(!StoreError::new(StoreErrorKind::NoSuchUpload, "x").is_store_wide());
    }
}
