//! The identity provider's signing keys (JWKS), fetched over HTTPS and cached.
//!
//! # When the keys are fetched
//!
//! - once at start ([`Jwks::refresh`], in the background: the API serves service tokens
//!   meanwhile);
//! - when the cached set is older than `jwks_max_age`;
//! - when a token names a key id the set does not hold (the provider rotated its keys), at most
//!   once per `jwks_min_refresh`, so that tokens with made-up key ids cannot make the ingest
//!   hammer the provider.
//!
//! One fetch at a time: concurrent requests that need one wait for it instead of starting their
//! own. A failed fetch keeps the keys already known (the provider being down must not lock
//! people out whose tokens it signed before) and is logged and counted
//! (`ingest_jwks_fetch_failures_total`).
//!
//! The client is hyper with rustls (ring): the system's CA certificates, plus `ca_file` for a
//! company CA. Answers are limited to 1 MiB and 10 s.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::jwt::{Key, KeySet};
use crate::jwa::Algorithm;
use crate::telemetry::Metrics;

const MAX_BODY: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading CA certificates from {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("building the TLS client: {0}")]
    Tls(#[from] rustls::Error),
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// The key set is known and holds no key that fits.
    Unknown,
    /// No key set could be fetched yet.
    Unavailable,
}

#[derive(Debug, Default)]
struct Cache {
    keys: Arc<KeySet>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

/// The cached key set of one provider.
#[derive(Debug)]
pub struct Jwks {
    url: Uri,
    client: HttpClient,
    max_age: Duration,
    min_refresh: Duration,
    cache: Mutex<Cache>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        max_age: Duration,
        min_refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Jwks, JwksError> {
        let fetch_error = |message: String| JwksError::Fetch {
            url: url.to_owned(),
            message,
        };
        let url: Uri = url.parse().map_err(|e| fetch_error(format!("{e}")))?;
        Ok(Jwks {
            url,
            client: client(ca_file)?,
            max_age,
            min_refresh,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    fn cached(&self) -> (Arc<KeySet>, bool, bool) {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age);
        (cache.keys.clone(), fresh, cache.fetched_at.is_some())
    }

    /// The key for a token's `kid` and `alg`, fetching the set again when it is stale or does
    /// not hold the key.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Key, NoKey> {
        let (keys, fresh, _) = self.cached();
        if fresh && let Some(key) = keys.find(kid, alg) {
            return Ok(key.clone());
        }
        self.refresh().await;
        let (keys, _, ever_fetched) = self.cached();
        match keys.find(kid, alg) {
            Some(key) => Ok(key.clone()),
            None if ever_fetched => Err(NoKey::Unknown),
            None => Err(NoKey::Unavailable),
        }
    }

    /// Fetches the set unless a fetch was attempted less than `jwks_min_refresh` ago.
    pub async fn refresh(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache
                .attempted_at
                .is_some_and(|at| at.elapsed() < self.min_refresh)
            {
                return;
            }
            cache.attempted_at = Some(Instant::now());
        }
        match self.fetch().await {
            Ok((keys, skipped)) => {
                tracing::info!(url = %self.url, keys = keys.len(), skipped, "identity provider keys fetched");
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                cache.keys = Arc::new(keys);
                cache.fetched_at = Some(Instant::now());
            }
            Err(error) => {
                Metrics::inc(&self.metrics.jwks_fetch_failures);
                tracing::warn!(error = %error, "fetching the identity provider's keys failed; keeping the keys known");
            }
        }
    }

    async fn fetch(&self) -> Result<(KeySet, usize), JwksError> {
        let fail = |message: String| JwksError::Fetch {
            url: self.url.to_string(),
            message,
        };
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let body = tokio::time::timeout(FETCH_TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| fail(format!("{e:#}")))?;
            if response.status() != StatusCode::OK {
                return Err(fail(format!("answered {}", response.status())));
            }
            Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| fail(format!("reading the answer: {e}")))
        })
        .await
        .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let (keys, skipped) =
            KeySet::from_json(&body).map_err(|e| fail(format!("not a JWKS document: {e}")))?;
        if keys.is_empty() {
            return Err(fail("no signature key the ingest can use".to_owned()));
        }
        Ok((keys, skipped))
    }
}

/// An HTTP(S) client trusting the system's CAs and those of `ca_file`.
fn client(ca_file: Option<&Path>) -> Result<HttpClient, JwksError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |message: String| JwksError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no certificate in the file".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
