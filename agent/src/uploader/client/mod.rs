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
//! its own backoff ([`crate::backoff::Backoff`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;

use super::policy::Pacer;
use crate::spool::PartRow;

mod body;
mod error;

pub(crate) use body::{Metered, Progress};
pub use body::{md5_of_file, md5_of_region};
use error::error_chain;
pub use error::{StoreError, StoreErrorKind};

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
