//! The requests the uploader sends to the object store, and what their failures mean.
//!
//! Every request runs under a **stall timeout**: a request whose body has not moved for
//! `stall_timeout` (or, without a body, that has not been answered within it) is dropped,
//! which closes its connection, and reported as [`StoreErrorKind::Stalled`]. A transfer that
//! is slow but moving is left alone, however long it takes.
//!
//! Request bodies are streamed from the clip's file
//! (`ByteStream::read_from().path().offset().length()`) through [`Metered`], which marks
//! progress for the stall timeout and holds bytes back under the bandwidth cap
//! ([`Pacer`]). Each body carries `Content-MD5`: the MD5 the seal computed for that region
//! and the spool keeps ([`crate::digest`]), never one computed from the file at upload
//! time. The store refuses a body that does not match it (`BadDigest`), so neither a part
//! corrupted in transit nor one whose bytes rotted on the SD card since the seal is stored. Payloads are not signed (`UNSIGNED-PAYLOAD`,
//! the SDK's choice for streamed bodies): the MD5 carries their integrity.
//!
//! The SDK's own retries are off (`max_attempts = 1`): the uploader retries whole steps with
//! its own backoff ([`super::policy::Backoff`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest as _, Md5};

use super::policy::Pacer;
use crate::spool::PartRow;

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
    fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
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

    fn stalled(timeout: Duration) -> StoreError {
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
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// When a request last made progress, for the stall timeout.
#[derive(Debug)]
pub(crate) struct Progress {
    origin: Instant,
    last_micros: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            origin: Instant::now(),
            last_micros: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// A streamed request body that marks progress as the connection takes its bytes and, under
/// a bandwidth cap, hands them over no faster than the shared [`Pacer`] allows.
pub(crate) struct Metered {
    inner: SdkBody,
    progress: Arc<Progress>,
    pacer: Option<Arc<Mutex<Pacer>>>,
    slice: usize,
    remaining: u64,
    /// Bytes read from the file but not handed over yet (a frame larger than one slice).
    rest: Option<Bytes>,
    /// A slice waiting for the pacer.
    held: Option<(Bytes, Pin<Box<tokio::time::Sleep>>)>,
}

impl Metered {
    /// `inner` of exactly `length` bytes.
    pub(crate) fn wrap(
        inner: SdkBody,
        length: u64,
        progress: Arc<Progress>,
        pacer: Option<Arc<Mutex<Pacer>>>,
    ) -> SdkBody {
        let slice = pacer
            .as_ref()
            .and_then(|p| p.lock().ok().map(|p| p.slice()))
            .unwrap_or(usize::MAX);
        SdkBody::from_body_1_x(Metered {
            inner,
            progress,
            pacer,
            slice,
            remaining: length,
            rest: None,
            held: None,
        })
    }

    fn hand_over(
        &mut self,
        data: Bytes,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.remaining = self.remaining.saturating_sub(data.len() as u64);
        self.progress.touch();
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }
}

type BodyError = aws_sdk_s3::primitives::ByteStreamError;

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some((_, sleep)) = &mut this.held {
            ready!(sleep.as_mut().poll(cx));
            let (data, _) = this.held.take().expect("held slice");
            return this.hand_over(data).map_err(Into::into);
        }
        let mut data = match this.rest.take() {
            Some(rest) => rest,
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            },
        };
        let Some(pacer) = &this.pacer else {
            return this.hand_over(data).map_err(Into::into);
        };
        if data.len() > this.slice {
            this.rest = Some(data.split_off(this.slice));
        }
        let wait = pacer
            .lock()
            .map(|mut p| p.take(data.len(), Instant::now()))
            .unwrap_or_default();
        if wait.is_zero() {
            return this.hand_over(data).map_err(Into::into);
        }
        let mut sleep = Box::pin(tokio::time::sleep(wait));
        // Register the waker; the sleep cannot be over already.
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => this.hand_over(data).map_err(Into::into),
            Poll::Pending => {
                this.held = Some((data, sleep));
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl fmt::Debug for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("remaining", &self.remaining)
            .field("paced", &self.pacer.is_some())
            .finish()
    }
}

/// MD5 of `length` bytes of `path` from `offset`, read on a blocking thread.
pub async fn md5_of_region(path: &Path, offset: u64, length: u64) -> std::io::Result<[u8; 16]> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut hasher = Md5::new();
        let mut buffer = vec![0u8; 256 << 10];
        let mut position = offset;
        let end = offset + length;
        while position < end {
            let want =
                usize::try_from((end - position).min(buffer.len() as u64)).unwrap_or(buffer.len());
            let read = file.read_at(&mut buffer[..want], position)?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} ends at {position}, before {end}", path.display()),
                ));
            }
            hasher.update(&buffer[..read]);
            position += read as u64;
        }
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// MD5 of a whole small file, for tests and tools.
pub fn md5_of_file(path: &Path) -> std::io::Result<[u8; 16]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..read]);
    }
}

/// A part as `ListParts` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub part_number: i64,
    pub etag: String,
    pub size: i64,
}

/// A multipart upload as `ListMultipartUploads` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// What `HeadObject` tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: i64,
    pub etag: Option<String>,
    pub sha256: Option<String>,
}

/// What an object is stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub key: String,
    pub content_type: &'static str,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: HashMap<String, String>,
}

/// A body: `length` bytes of `path` from `offset`, with their MD5.
#[derive(Debug, Clone)]
pub struct Body {
    pub path: PathBuf,
    pub offset: u64,
    pub length: u64,
    pub md5: [u8; 16],
}

impl Body {
    fn content_md5(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.md5)
    }
}

/// The uploader's view of the store: one bucket, the stall timeout, the bandwidth cap.
#[derive(Clone)]
pub struct Store {
    client: capture_objstore::Client,
    bucket: String,
    stall_timeout: Duration,
    pacer: Option<Arc<Mutex<Pacer>>>,
    /// Read size of the file bodies.
    buffer_size: usize,
    /// Held from `CreateMultipartUpload` until the spool recorded the new upload id, and by
    /// the janitor while it sweeps: the janitor never sees an upload of this agent that the
    /// spool does not know yet.
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Store {
    /// Without the client, whose configuration holds the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.bucket)
            .field("stall_timeout", &self.stall_timeout)
            .field("paced", &self.pacer.is_some())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(
        client: capture_objstore::Client,
        bucket: String,
        stall_timeout: Duration,
        bandwidth_kbps: u64,
    ) -> Store {
        Store {
            client,
            bucket,
            stall_timeout,
            pacer: Pacer::new(bandwidth_kbps, Instant::now()).map(|p| Arc::new(Mutex::new(p))),
            buffer_size: 256 << 10,
            creating: Arc::default(),
        }
    }

    /// See the field `creating`.
    pub(crate) fn creation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.creating
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Runs `request`, abandoning it when `progress` shows no movement for the stall
    /// timeout.
    async fn guarded<T, E>(
        &self,
        progress: &Progress,
        request: impl Future<Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>>,
    ) -> Result<T, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        tokio::pin!(request);
        let check =
            (self.stall_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                result = &mut request => return result.map_err(StoreError::from_sdk),
                () = tokio::time::sleep(check) => {
                    if progress.idle() >= self.stall_timeout {
                        return Err(StoreError::stalled(self.stall_timeout));
                    }
                }
            }
        }
    }

    async fn stream(
        &self,
        body: &Body,
        progress: &Arc<Progress>,
    ) -> Result<ByteStream, StoreError> {
        let stream = ByteStream::read_from()
            .path(&body.path)
            .offset(body.offset)
            .length(aws_sdk_s3::primitives::Length::Exact(body.length))
            .buffer_size(self.buffer_size)
            .build()
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Rejected,
                    format!("opening {}: {}", body.path.display(), error_chain(&e)),
                )
            })?;
        let (progress, pacer, length) = (progress.clone(), self.pacer.clone(), body.length);
        Ok(stream.map(move |inner| Metered::wrap(inner, length, progress.clone(), pacer.clone())))
    }

    /// `PutObject` of a whole file.
    pub async fn put_object(&self, spec: &ObjectSpec, body: &Body) -> Result<(), StoreError> {
        let progress = Progress::new();
        let stream = self.stream(body, &progress).await?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&spec.key)
            .content_type(spec.content_type)
            .set_metadata(Some(spec.metadata.clone()))
            .content_length(i64::try_from(body.length).unwrap_or(i64::MAX))
            .content_md5(body.content_md5())
            .body(stream)
            .send();
        self.guarded(&progress, request).await.map(|_| ())
    }

    /// `CreateMultipartUpload`: the new upload id.
    pub async fn create_multipart(&self, spec: &ObjectSpec) -> Result<String, StoreError> {
        let progress = Progress::new();
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&spec.key)
            .content_type(spec.content_type)
            .set_metadata(Some(spec.metadata.clone()))
            .send();
        let output = self.guarded(&progress, request).await?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Server, "no upload id in the answer"))
    }

    /// `UploadPart`: the part's ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &Body,
    ) -> Result<String, StoreError> {
        let progress = Progress::new();
        let stream = self.stream(body, &progress).await?;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(i64::try_from(body.length).unwrap_or(i64::MAX))
            .content_md5(body.content_md5())
            .body(stream)
            .send();
        let output = self.guarded(&progress, request).await?;
        output
            .e_tag()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::new(StoreErrorKind::Server, "no ETag in the answer"))
    }

    /// `ListParts`, every page.
    pub async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<ListedPart>, StoreError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let progress = Progress::new();
            let request = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send();
            let output = self.guarded(&progress, request).await?;
            parts.extend(output.parts().iter().filter_map(|p| {
                Some(ListedPart {
                    part_number: i64::from(p.part_number()?),
                    etag: p.e_tag()?.to_owned(),
                    size: p.size()?,
                })
            }));
            match (output.is_truncated(), output.next_part_number_marker()) {
                (Some(true), Some(next)) if marker.as_deref() != Some(next) => {
                    marker = Some(next.to_owned());
                }
                _ => return Ok(parts),
            }
        }
    }

    /// `CompleteMultipartUpload` with `parts` in order.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartRow],
    ) -> Result<(), StoreError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(i32::try_from(p.part_number).unwrap_or(i32::MAX))
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let progress = Progress::new();
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send();
        self.guarded(&progress, request).await.map(|_| ())
    }

    /// `AbortMultipartUpload`.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let progress = Progress::new();
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send();
        self.guarded(&progress, request).await.map(|_| ())
    }

    /// `HeadObject`; `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        let progress = Progress::new();
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        match self.guarded(&progress, request).await {
            Ok(head) => Ok(Some(Head {
                size: head.content_length().unwrap_or(-1),
                etag: head.e_tag().map(str::to_owned),
                sha256: head.metadata().and_then(|m| m.get("sha256")).cloned(),
            })),
            Err(e) if e.status == Some(404) && e.kind != StoreErrorKind::NoSuchBucket => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ListMultipartUploads` under `prefix`, every page.
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<ListedUpload>, StoreError> {
        let mut uploads = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let progress = Progress::new();
            let request = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(markers.0.clone())
                .set_upload_id_marker(markers.1.clone())
                .send();
            let output = self.guarded(&progress, request).await?;
            uploads.extend(output.uploads().iter().filter_map(|u| {
                Some(ListedUpload {
                    key: u.key()?.to_owned(),
                    upload_id: u.upload_id()?.to_owned(),
                    initiated: u.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
                })
            }));
            let next = (
                output.next_key_marker().map(str::to_owned),
                output.next_upload_id_marker().map(str::to_owned),
            );
            if output.is_truncated() != Some(true) || next == markers || next.0.is_none() {
                return Ok(uploads);
            }
            markers = next;
        }
    }
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

    #[tokio::test]
    async fn md5_of_a_region_matches_the_digest_of_those_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let region = md5_of_region(&path, 123_456, 600_000).await.unwrap();
        assert_eq!(
            region,
            <[u8; 16]>::from(Md5::digest(&data[123_456..723_456]))
        );
        assert_eq!(
            md5_of_file(&path).unwrap(),
            <[u8; 16]>::from(Md5::digest(&data))
        );
        let past_the_end = md5_of_region(&path, 999_000, 2_000).await.unwrap_err();
        assert_eq!(past_the_end.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
