//! The kinds of rejection: the bounded set of labels of the `ingest_rejections_total{reason}`
//! metric ([`crate::telemetry`]), and the kind of each rejection reason. The reasons
//! themselves are written by [`crate::verify`] (and, for a key of another environment, by
//! [`crate::consumer`]); each starts with the name that [`reason_label`] looks for.

/// The kinds of rejection, as [`reason_label`] names them (a bounded set of metric labels).
pub const REASON_LABELS: [&str; 8] = [
    "wrong_env",
    "wrong_bucket",
    "object_missing",
    "size_mismatch",
    "sha256_mismatch",
    "sha256_missing",
    "etag_mismatch",
    "invalid",
];

/// The kind of a rejection reason, from the name it starts with (`size mismatch: ...` is
/// `size_mismatch`; `wrong env` is the consumer's, for a key of another environment);
/// `invalid` for the rest: a notification that failed its own checks
/// ([`capture_protocol::Uploaded::check`]: key, content type, times).
pub fn reason_label(reason: &str) -> &'static str {
    [
        ("wrong env", "wrong_env"),
        ("wrong bucket", "wrong_bucket"),
        ("object missing", "object_missing"),
        ("size mismatch", "size_mismatch"),
        ("sha256 mismatch", "sha256_mismatch"),
        ("sha256 metadata missing", "sha256_missing"),
        ("etag mismatch", "etag_mismatch"),
    ]
    .into_iter()
    .find(|(prefix, _)| reason.starts_with(prefix))
    .map_or("invalid", |(_, label)| label)
}
