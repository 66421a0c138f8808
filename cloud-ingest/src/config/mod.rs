//! Configuration: one TOML file, a documented set of environment overrides, secrets from files.
//!
//! # Loading, in order ([`load`])
//!
//! 1. The file is parsed as a TOML table.
//! 2. Every variable of [`ENV_OVERRIDES`] that is set replaces its key in that table
//!    ([`overrides`]; the value is read as an integer or boolean when it looks like one, else
//!    as a string), so that a Kubernetes Deployment can set `CLOUD_INGEST_MQTT_CLIENT_ID` from
//!    the pod name without a file per replica.
//! 3. The table is deserialized into [`Config`] with `deny_unknown_fields` everywhere: a typo
//!    is an error, not a silently ignored key. Durations are human ("30s", "15m").
//! 4. [`Config::validate`] ([`validate`]) lists *every* problem with its key (`validate` prints
//!    them all and exits 78, `EX_CONFIG`).
//!
//! Secrets (S3 secret key, PostgreSQL password, AMQP URL or password, MQTT password) are never
//! in the file: the `*_file` keys name files that are read by [`Config::secrets`]
//! ([`secrets`]) when the service starts. [`DEFAULT_CONFIG`] is the commented default that
//! `generate-config` prints; a unit test proves it validates.
//!
//! This file holds the typed configuration itself: every section, its defaults and limits.

pub mod load;
pub mod overrides;
pub mod secrets;
pub mod validate;

use std::path::PathBuf;
use std::time::Duration;

use capture_protocol::Env;
use serde::{Deserialize, Deserializer};

pub use self::load::ConfigError;
pub use self::overrides::ENV_OVERRIDES;
pub use self::secrets::Secrets;
pub use self::validate::Problem;

/// The commented default configuration (`cloud-ingest generate-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// The whole configuration of one ingest replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Deployment environment: first level of every topic and object key.
    pub env: String,
    pub mqtt: MqttConfig,
    pub store: StoreConfig,
    pub postgres: PostgresConfig,
    pub amqp: AmqpConfig,
    pub http: HttpConfig,
    /// Who may call the HTTP API. Service tokens are always on; single sign-on when
    /// `[auth.oidc]` is present.
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// How long sent events and poison rows are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// When a clip the stations announced counts as overdue, and a start as unanswered.
    #[serde(default)]
    pub expected: ExpectedConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Stable per replica: with `clean_session=false` the broker keeps this client's session.
    pub client_id: String,
    #[serde(default = "default_keep_alive", deserialize_with = "human_duration")]
    pub keep_alive: Duration,
    /// Notifications verified and committed together.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub endpoint: String,
    pub region: String,
    #[serde(default)]
    pub path_style: bool,
    /// The only bucket a notification may name.
    pub bucket: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub verify: VerifyMode,
    /// The longest lifetime of a presigned GET URL, and the lifetime a caller gets when it
    /// asks for none (`?ttl=` asks for less).
    #[serde(default = "default_presign_ttl", deserialize_with = "human_duration")]
    pub presign_ttl: Duration,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The longest one attempt of a store request may take (connect, send, the answer's
    /// headers): a store that accepts and never answers fails the attempt instead of holding
    /// the batch.
    #[serde(
        default = "default_attempt_timeout",
        deserialize_with = "human_duration"
    )]
    pub attempt_timeout: Duration,
    /// The longest one store request may take with all its attempts; for a full-read
    /// verification this does not bound reading the body, which the SDK's stalled-stream
    /// protection watches instead.
    #[serde(
        default = "default_operation_timeout",
        deserialize_with = "human_duration"
    )]
    pub operation_timeout: Duration,
}

/// How much of the object is checked against the notification (docs/ingest.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// HEAD: existence, size, the sha256 user metadata, and the object's ETag against the
    /// one the agent computed from the bytes it sealed (the store's own digest of what it
    /// holds, without reading the object). A notification without `etag` (an agent from
    /// before it) gets the `head` check; an object whose ETag is no MD5 (server-side
    /// encryption) gets the `full` check.
    #[default]
    Etag,
    /// HEAD: existence, size and the sha256 user metadata only.
    Head,
    /// HEAD, then read the whole object and hash it.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL without the password (that comes from `password_file`).
    pub url: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "human_duration"
    )]
    pub connect_timeout: Duration,
    /// PostgreSQL cancels any statement of the ingest's connections that runs longer
    /// (`statement_timeout`); the caller retries like any other failure.
    #[serde(
        default = "default_statement_timeout",
        deserialize_with = "human_duration"
    )]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the whole URL (credentials included); wins over `url`.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// A file holding the password to put into `url`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default = "default_amqp_batch")]
    pub batch: usize,
    /// Relay loops per process, each with its own connection (rounds overlap).
    #[serde(default = "default_relays")]
    pub relays: usize,
    #[serde(default = "default_poll_interval", deserialize_with = "human_duration")]
    pub poll_interval: Duration,
    /// An event RabbitMQ returns as unroutable (no queue bound for its routing key) stays in
    /// the outbox and is tried again after 1 s, 2 s, 4 s, ... up to this.
    #[serde(
        default = "default_unroutable_retry_max",
        deserialize_with = "human_duration"
    )]
    pub unroutable_retry_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Where `/metrics` is served instead of `listen`: an address only the cluster reaches.
    /// Unset: `/metrics` is served on `listen`, unauthenticated like `/healthz`.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// `/readyz` answers 503 when notifications are in hand and none has been decided (and
    /// no batch committed) for this long: the consumer is stuck (docs/ingest.md).
    #[serde(default = "default_stalled_after", deserialize_with = "human_duration")]
    pub stalled_after: Duration,
}

/// Authentication of API callers. Service tokens need no configuration: they live in the
/// catalog database (`cloud-ingest token create`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// Single sign-on: bearer JWTs issued by the company's OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// Must be one of the token's `aud`.
    pub audience: String,
    /// The provider's JSON Web Key Set: https, or http on a loopback address.
    pub jwks_url: String,
    /// Signature algorithms accepted (`RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384`, `EdDSA`). `none` and the HMAC algorithms never are.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance on `exp` and `nbf` for clocks that disagree.
    #[serde(default = "default_clock_skew", deserialize_with = "human_duration")]
    pub clock_skew: Duration,
    /// Keys are fetched again at least this often.
    #[serde(default = "default_jwks_max_age", deserialize_with = "human_duration")]
    pub jwks_max_age: Duration,
    /// A token with an unknown key id fetches the keys again, at most this often.
    #[serde(
        default = "default_jwks_min_refresh",
        deserialize_with = "human_duration"
    )]
    pub jwks_min_refresh: Duration,
    /// The claim holding scopes or roles (dotted path into nested objects): a string of
    /// space-separated values or an array of strings.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Claim values that grant scopes (e.g. a role `capture-viewer` -> `clips:read`). A value
    /// that is itself a scope name grants that scope.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// The claim naming the caller in the audit log; `sub` when the token lacks it.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Optional claim listing the environments the caller may use; unset: any.
    #[serde(default)]
    pub environments_claim: Option<String>,
    /// PEM file with extra CA certificates for the JWKS URL (a company CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(default = "default_grace", deserialize_with = "human_duration")]
    pub grace: Duration,
}

/// What the periodic pruning job keeps (docs/ingest.md, "Retention").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events confirmed by RabbitMQ are deleted from the outbox this long after they were
    /// sent. Unsent events are never deleted.
    #[serde(default = "default_sent_events", deserialize_with = "human_duration")]
    pub sent_events: Duration,
    /// Poison rows (unreadable notifications) are deleted this long after they arrived.
    #[serde(default = "default_poison_age", deserialize_with = "human_duration")]
    pub poison: Duration,
    /// How often the job runs (also once at start).
    #[serde(
        default = "default_prune_interval",
        deserialize_with = "human_duration"
    )]
    pub interval: Duration,
    /// A poison payload is stored cut to this many bytes (its size as received is kept).
    #[serde(default = "default_poison_payload_max_bytes")]
    pub poison_payload_max_bytes: usize,
}

/// Expected clips (docs/ingest.md, "Expected clips").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedConfig {
    /// A clip recorded (or uploaded) and not accepted this long after the ingest first knew it
    /// recorded is overdue: its `clip.overdue` event is emitted and the gauge counts it.
    #[serde(default = "default_overdue_after", deserialize_with = "human_duration")]
    pub overdue_after: Duration,
    /// A clip still recording after `overdue_after` plus this is overdue too (the station
    /// never said it stopped). Above the agents' `max_secs`.
    #[serde(default = "default_max_recording", deserialize_with = "human_duration")]
    pub max_recording: Duration,
    /// A `start` without an answer from its station for this long is reported.
    #[serde(default = "default_reply_timeout", deserialize_with = "human_duration")]
    pub reply_timeout: Duration,
    /// How often every replica sweeps (also once at start).
    #[serde(
        default = "default_sweep_interval",
        deserialize_with = "human_duration"
    )]
    pub sweep_interval: Duration,
}

impl Default for ExpectedConfig {
    fn default() -> Self {
        Self {
            overdue_after: default_overdue_after(),
            max_recording: default_max_recording(),
            reply_timeout: default_reply_timeout(),
            sweep_interval: default_sweep_interval(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sent_events: default_sent_events(),
            poison: default_poison_age(),
            interval: default_prune_interval(),
            poison_payload_max_bytes: default_poison_payload_max_bytes(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: default_grace(),
        }
    }
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}
fn default_max_batch() -> usize {
    200
}
fn default_presign_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_concurrency() -> usize {
    32
}
fn default_pool_size() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_exchange() -> String {
    capture_protocol::EXCHANGE.to_owned()
}
fn default_amqp_batch() -> usize {
    500
}
fn default_relays() -> usize {
    4
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_attempt_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_unroutable_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_stalled_after() -> Duration {
    Duration::from_secs(120)
}
fn default_sent_events() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_poison_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_prune_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_poison_payload_max_bytes() -> usize {
    64 << 10
}
fn default_overdue_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_recording() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_reply_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_scopes_claim() -> String {
    "scope".to_owned()
}
fn default_name_claim() -> String {
    "preferred_username".to_owned()
}

/// Largest MQTT packet the ingest accepts or sends (the consumer's client options; the
/// ceiling of `retention.poison_payload_max_bytes`).
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// The longest `store.presign_ttl`: a presigned URL reaches a video of people at work
/// without further checks, by whoever holds it.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(24 * 3600);

fn human_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format_args!("duration {text:?}: {e}")))
}

impl Config {
    /// The environment, parsed (validation proved it parses).
    pub fn env(&self) -> Result<Env, capture_protocol::InvalidId> {
        self.env.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_default_validates() {
        let config = Config::parse(DEFAULT_CONFIG, &[]).unwrap();
        assert_eq!(config.env, "dev");
        assert_eq!(config.store.presign_ttl, Duration::from_secs(900));
        assert_eq!(config.amqp.exchange, "capture.events");
        assert_eq!(config.store.verify, VerifyMode::Etag);
    }

    /// The default with its commented `[auth.oidc]` example switched on (but `ca_file`, which
    /// names a file of the operator's).
    pub(super) fn default_with_sso() -> String {
        let mut in_example = false;
        DEFAULT_CONFIG
            .lines()
            .map(|line| {
                if line.starts_with("# [auth.oidc]") {
                    in_example = true;
                } else if line.starts_with('[') {
                    in_example = false;
                }
                match line.strip_prefix("# ") {
                    Some(setting)
                        if in_example
                            && (setting.starts_with('[') || setting.contains(" = "))
                            && !setting.starts_with("ca_file") =>
                    {
                        setting.to_owned()
                    }
                    _ => line.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_default_serves_metrics_apart_and_its_sso_example_validates() {
        let config = Config::parse(DEFAULT_CONFIG, &[]).unwrap();
        assert_eq!(config.http.metrics_listen.as_deref(), Some("0.0.0.0:9090"));
        assert!(config.auth.oidc.is_none(), "SSO is off until configured");

        let config = Config::parse(&default_with_sso(), &[]).unwrap();
        let oidc = config.auth.oidc.unwrap();
        assert_eq!(oidc.audience, "cloud-ingest");
        assert_eq!(oidc.algorithms, ["RS256"]);
        assert_eq!(oidc.environments_claim.as_deref(), Some("capture_envs"));
        assert_eq!(oidc.roles["capture-viewer"], ["clips:read"]);
        assert_eq!(oidc.jwks_min_refresh, Duration::from_secs(30));
    }
}
