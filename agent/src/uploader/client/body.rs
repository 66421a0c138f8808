//! Request bodies streamed from a clip's file: [`Metered`] marks progress for the stall
//! timeout and holds bytes back under the bandwidth cap; the MD5 helpers hash a region of a
//! file as the seal does.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::SdkBody;
use bytes::Bytes;
use md5::{Digest as _, Md5};

use crate::uploader::policy::Pacer;

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

    pub(super) fn touch(&self) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    pub(super) fn idle(&self) -> Duration {
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

#[cfg(test)]
mod tests {
    use md5::{Digest as _, Md5};

    use super::*;

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
