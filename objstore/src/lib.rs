//! The S3 client of the capture system, configured once for every S3-compatible store it
//! talks to: Huawei Cloud OBS in production, Garage on-prem and in tests.
//!
//! The agent's uploader, the cloud ingest and the test fixtures all build their client here,
//! so that the settings that decide whether a request is accepted at all are set in one place:
//!
//! - **No environment probing.** The SDK's default chain reads `AWS_*` variables, profile
//!   files and instance metadata; on a Pi that is a source of surprises, so the endpoint,
//!   region and static credentials are given explicitly.
//! - **A pinned behavior version**, so an SDK upgrade cannot silently change defaults.
//! - **Checksums only when required.** Since aws-sdk-s3 1.69 the SDK sends aws-chunked bodies
//!   with CRC32 trailers by default; OBS answers `XAmzContentSHA256Mismatch` and other
//!   S3-compatible stores reject them too. Integrity is carried by `Content-MD5` on every
//!   request body and by the sha256 in the object's metadata instead.
//! - **Addressing style is a setting**: OBS refuses path-style requests on its regional
//!   endpoints (virtual-hosted style), Garage in tests is addressed path style.
//! - **rustls with ring**, which cross-compiles for the Pi without a C toolchain for aws-lc.
//! - **Nothing waits forever.** Besides the connect timeout, one attempt of a request
//!   (connect, send, the answer's headers) is bounded by `attempt_timeout` and the whole
//!   request with its retries by `operation_timeout`: a store that accepts connections and
//!   never answers fails the request. A per-attempt bound must exceed the slowest legitimate
//!   request: for a request with a large body under a bandwidth cap (an 8 MiB part at
//!   256 kbit/s takes 262 s) that is far too long to catch a hung store, so the agent's
//!   uploader switches both off ([`StoreSettings::without_request_timeouts`]) and abandons a
//!   request whose body has not moved, or that got no answer, for its stall timeout instead
//!   (docs/upload.md).

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

pub use aws_sdk_s3::Client;

/// Where the object store is and how to sign requests for it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Base URL of the S3 API, e.g. `https://obs.cn-north-4.myhuaweicloud.com` or
    /// `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Signing region, e.g. `cn-north-4` (OBS) or `garage`.
    pub region: String,
    /// `true` addresses buckets as `endpoint/bucket/key` (Garage, MinIO), `false` as
    /// `bucket.endpoint/key` (OBS, which rejects path style on its regional endpoints).
    pub path_style: bool,
    pub access_key_id: String,
    /// Never printed: the `Debug` implementation redacts it.
    pub secret_access_key: String,
    /// How many attempts the SDK makes for one request before it reports an error. Callers
    /// with their own retry policy (the uploader) set this to 1.
    pub max_attempts: u32,
    /// Connection timeout; a request that cannot connect in this time fails fast.
    pub connect_timeout: Duration,
    /// The longest one attempt may take (connect, send the request, receive the answer's
    /// headers); `None`: unbounded. Streaming a response body is not covered: the SDK's
    /// stalled-stream protection fails a body that stops moving.
    pub attempt_timeout: Option<Duration>,
    /// The longest one request may take with all its attempts and the pauses between them;
    /// `None`: unbounded.
    pub operation_timeout: Option<Duration>,
}

impl StoreSettings {
    /// Settings with the defaults the capture system uses: virtual-hosted style, three
    /// attempts, a 5 s connect timeout, 30 s per attempt, 2 min per request.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            region: region.into(),
            path_style: false,
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            max_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Some(Duration::from_secs(30)),
            operation_timeout: Some(Duration::from_secs(120)),
        }
    }

    /// The same settings with these per-attempt and per-request bounds.
    pub fn with_request_timeouts(mut self, attempt: Duration, operation: Duration) -> Self {
        self.attempt_timeout = Some(attempt);
        self.operation_timeout = Some(operation);
        self
    }

    /// The same settings without per-attempt and per-request bounds, for a caller that
    /// watches its requests' progress itself (the agent's uploader: see the crate
    /// documentation).
    pub fn without_request_timeouts(mut self) -> Self {
        self.attempt_timeout = None;
        self.operation_timeout = None;
        self
    }

    /// The same settings addressed path style (Garage, MinIO).
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = path_style;
        self
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// Builds the S3 client for `settings`. Building does no I/O; the first request connects.
pub fn client(settings: &StoreSettings) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let credentials = Credentials::new(
        settings.access_key_id.clone(),
        settings.secret_access_key.clone(),
        None,
        None,
        "capture-static",
    );
    let mut timeouts = TimeoutConfig::builder().connect_timeout(settings.connect_timeout);
    timeouts
        .set_operation_attempt_timeout(settings.attempt_timeout)
        .set_operation_timeout(settings.operation_timeout);
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::v2026_01_12())
        .http_client(http)
        .endpoint_url(settings.endpoint.clone())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(settings.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
        .timeout_config(timeouts.build())
        .build();
    Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let settings = StoreSettings::new("http://127.0.0.1:3900", "garage", "GKid", "s3cr3t");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn the_client_keeps_the_explicit_settings() {
        let settings = StoreSettings::new("http://127.0.0.1:3900", "garage", "GKid", "secret")
            .with_path_style(true);
        let client = client(&settings);
        let config = client.config();
        assert_eq!(config.region().map(|r| r.as_ref()), Some("garage"));
        assert_eq!(
            config.request_checksum_calculation(),
            Some(&RequestChecksumCalculation::WhenRequired)
        );
        assert_eq!(
            config.response_checksum_validation(),
            Some(&ResponseChecksumValidation::WhenRequired)
        );
        let timeouts = config.timeout_config().expect("timeouts");
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(120)));
    }

    #[test]
    fn a_caller_that_watches_progress_can_switch_the_request_bounds_off() {
        let settings = StoreSettings::new("http://127.0.0.1:3900", "garage", "GKid", "secret")
            .without_request_timeouts();
        let client = client(&settings);
        let timeouts = client.config().timeout_config().expect("timeouts");
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(timeouts.operation_attempt_timeout(), None);
        assert_eq!(timeouts.operation_timeout(), None);
    }
}
