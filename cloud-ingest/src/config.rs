//! Configuration: one TOML file, a documented set of environment overrides, secrets from files.
//!
//! # Loading, in order
//!
//! 1. The file is parsed as a TOML table.
//! 2. Every variable of [`ENV_OVERRIDES`] that is set replaces its key in that table (the value
//!    is read as an integer or boolean when it looks like one, else as a string), so that a
//!    Kubernetes Deployment can set `CLOUD_INGEST_MQTT_CLIENT_ID` from the pod name without a
//!    file per replica.
//! 3. The table is deserialized into [`Config`] with `deny_unknown_fields` everywhere: a typo
//!    is an error, not a silently ignored key. Durations are human ("30s", "15m").
//! 4. [`Config::validate`] lists *every* problem with its key (`validate` prints them all and
//!    exits 78, `EX_CONFIG`).
//!
//! Secrets (S3 secret key, PostgreSQL password, AMQP URL or password, MQTT password) are never
//! in the file: the `*_file` keys name files that are read by [`Config::secrets`] when the
//! service starts. [`DEFAULT_CONFIG`] is the commented default that `generate-config` prints;
//! a unit test proves it validates.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capture_protocol::Env;
use serde::{Deserialize, Deserializer};

/// The commented default configuration (`cloud-ingest generate-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Environment variables that override a key of the file: `(variable, dotted key)`.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CLOUD_INGEST_ENV", "env"),
    ("CLOUD_INGEST_MQTT_HOST", "mqtt.host"),
    ("CLOUD_INGEST_MQTT_PORT", "mqtt.port"),
    ("CLOUD_INGEST_MQTT_CLIENT_ID", "mqtt.client_id"),
    ("CLOUD_INGEST_MQTT_USERNAME", "mqtt.username"),
    ("CLOUD_INGEST_STORE_ENDPOINT", "store.endpoint"),
    ("CLOUD_INGEST_STORE_REGION", "store.region"),
    ("CLOUD_INGEST_STORE_BUCKET", "store.bucket"),
    ("CLOUD_INGEST_STORE_ACCESS_KEY_ID", "store.access_key_id"),
    ("CLOUD_INGEST_STORE_VERIFY", "store.verify"),
    ("CLOUD_INGEST_POSTGRES_URL", "postgres.url"),
    ("CLOUD_INGEST_AMQP_URL", "amqp.url"),
    ("CLOUD_INGEST_AMQP_EXCHANGE", "amqp.exchange"),
    ("CLOUD_INGEST_HTTP_LISTEN", "http.listen"),
    ("CLOUD_INGEST_HTTP_METRICS_LISTEN", "http.metrics_listen"),
    ("CLOUD_INGEST_AUTH_OIDC_ISSUER", "auth.oidc.issuer"),
    ("CLOUD_INGEST_AUTH_OIDC_AUDIENCE", "auth.oidc.audience"),
    ("CLOUD_INGEST_AUTH_OIDC_JWKS_URL", "auth.oidc.jwks_url"),
];

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

/// The longest `store.presign_ttl`: a presigned URL reaches a video of people at work
/// without further checks, by whoever holds it.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(24 * 3600);

fn human_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format_args!("duration {text:?}: {e}")))
}

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
    #[error("reading secret {key} from {path}: {source}")]
    Secret {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Every problem, each with its key.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(problems) => problems.clone(),
            ConfigError::Read { path, .. } => vec![Problem {
                key: "(file)".to_owned(),
                message: self
                    .to_string()
                    .replace(&format!("{}: ", path.display()), ""),
            }],
            ConfigError::Secret { key, .. } => vec![Problem {
                key: (*key).to_owned(),
                message: self.to_string(),
            }],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Secrets read from their files at start.
#[derive(Clone, Default)]
pub struct Secrets {
    pub mqtt_password: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub postgres_password: Option<String>,
    /// The AMQP URL with its credentials.
    pub amqp_url: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Config {
    /// Reads, overrides from the process environment and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let vars: Vec<(String, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, _)| std::env::var(var).ok().map(|v| ((*var).to_owned(), v)))
            .collect();
        Config::parse(&text, &vars)
    }

    /// Parses TOML text with the given overrides (`(variable, value)`) and validates it.
    pub fn parse(text: &str, vars: &[(String, String)]) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| {
            ConfigError::Invalid(vec![Problem {
                key: key.to_owned(),
                message,
            }])
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid("(file)", e.message().to_owned()))?;
        for (var, value) in vars {
            let Some((_, key)) = ENV_OVERRIDES.iter().find(|(name, _)| name == var) else {
                continue;
            };
            set_dotted(&mut table, key, override_value(value));
        }
        let config: Config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e
                .message()
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "(file)".to_owned());
            invalid(&key, e.message().to_owned())
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem of a deserialized configuration, each with its key.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        if let Err(e) = self.env.parse::<Env>() {
            problem("env", e.to_string());
        }
        if self.mqtt.host.trim().is_empty() {
            problem("mqtt.host", "must not be empty".to_owned());
        }
        if self.mqtt.port == 0 {
            problem("mqtt.port", "must not be 0".to_owned());
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 128 {
            problem("mqtt.client_id", "must be 1..128 characters".to_owned());
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            problem("mqtt.keep_alive", "must be at least 1s".to_owned());
        }
        if !(1..=10_000).contains(&self.mqtt.max_batch) {
            problem("mqtt.max_batch", "must be 1..10000".to_owned());
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            problem(
                "mqtt.password_file",
                "needs mqtt.username as well".to_owned(),
            );
        }
        if !(self.store.endpoint.starts_with("http://")
            || self.store.endpoint.starts_with("https://"))
        {
            problem(
                "store.endpoint",
                format!("{:?} is not an http(s) URL", self.store.endpoint),
            );
        }
        if self.store.region.is_empty() {
            problem("store.region", "must not be empty".to_owned());
        }
        if self.store.bucket.is_empty() {
            problem("store.bucket", "must not be empty".to_owned());
        }
        if self.store.access_key_id.is_some() != self.store.secret_access_key_file.is_some() {
            problem(
                "store.secret_access_key_file",
                "store.access_key_id and store.secret_access_key_file go together".to_owned(),
            );
        }
        if self.store.presign_ttl < Duration::from_secs(1)
            || self.store.presign_ttl > MAX_PRESIGN_TTL
        {
            problem(
                "store.presign_ttl",
                "must be between 1s and 24h: anyone holding a URL can watch the video".to_owned(),
            );
        }
        if !(1..=1024).contains(&self.store.concurrency) {
            problem("store.concurrency", "must be 1..1024".to_owned());
        }
        if self.store.attempt_timeout < Duration::from_millis(100) {
            problem("store.attempt_timeout", "must be at least 100ms".to_owned());
        }
        if self.store.operation_timeout < self.store.attempt_timeout {
            problem(
                "store.operation_timeout",
                "must be at least store.attempt_timeout".to_owned(),
            );
        }
        if !(self.postgres.url.starts_with("postgres://")
            || self.postgres.url.starts_with("postgresql://"))
        {
            problem(
                "postgres.url",
                "must be a postgres:// or postgresql:// URL".to_owned(),
            );
        } else if let Err(e) = self.postgres.url.parse::<tokio_postgres::Config>() {
            problem("postgres.url", e.to_string());
        }
        if !(1..=64).contains(&self.postgres.pool_size) {
            problem("postgres.pool_size", "must be 1..64".to_owned());
        }
        if self.postgres.statement_timeout < Duration::from_millis(100) {
            problem(
                "postgres.statement_timeout",
                "must be at least 100ms (0, PostgreSQL's \"no limit\", is not allowed)".to_owned(),
            );
        }
        match (&self.amqp.url, &self.amqp.url_file) {
            (None, None) => problem("amqp.url", "amqp.url or amqp.url_file is needed".to_owned()),
            (Some(url), _) if !(url.starts_with("amqp://") || url.starts_with("amqps://")) => {
                problem("amqp.url", "must be an amqp:// or amqps:// URL".to_owned())
            }
            _ => {}
        }
        if self.amqp.exchange.is_empty() {
            problem("amqp.exchange", "must not be empty".to_owned());
        }
        if self.amqp.unroutable_retry_max < Duration::from_secs(1) {
            problem(
                "amqp.unroutable_retry_max",
                "must be at least 1s".to_owned(),
            );
        }
        if !(1..=10_000).contains(&self.amqp.batch) {
            problem("amqp.batch", "must be 1..10000".to_owned());
        }
        if !(1..=32).contains(&self.amqp.relays) {
            problem("amqp.relays", "must be 1..32".to_owned());
        } else if (1..=64).contains(&self.postgres.pool_size)
            && self.postgres.pool_size <= self.amqp.relays
        {
            problem(
                "postgres.pool_size",
                format!(
                    "must be above amqp.relays ({}): each relay holds a connection while \
                     RabbitMQ confirms, the consumer needs one to commit",
                    self.amqp.relays
                ),
            );
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            problem(
                "http.listen",
                format!("{:?} is not an address like 0.0.0.0:8080", self.http.listen),
            );
        }
        if let Some(metrics) = &self.http.metrics_listen {
            match metrics.parse::<SocketAddr>() {
                Err(_) => problem(
                    "http.metrics_listen",
                    format!("{metrics:?} is not an address like 0.0.0.0:9090"),
                ),
                Ok(addr) if self.http.listen.parse::<SocketAddr>().ok() == Some(addr) => problem(
                    "http.metrics_listen",
                    "must differ from http.listen".to_owned(),
                ),
                Ok(_) => {}
            }
        }
        if self.http.stalled_after < Duration::from_secs(1) {
            problem("http.stalled_after", "must be at least 1s".to_owned());
        }
        let retention = &self.retention;
        for (key, age) in [
            ("retention.sent_events", retention.sent_events),
            ("retention.poison", retention.poison),
            ("retention.interval", retention.interval),
        ] {
            if age < Duration::from_secs(1) {
                problem(key, "must be at least 1s".to_owned());
            }
        }
        if !(1024..=crate::consumer::MAX_PACKET_BYTES).contains(&retention.poison_payload_max_bytes)
        {
            problem(
                "retention.poison_payload_max_bytes",
                format!("must be 1024..{}", crate::consumer::MAX_PACKET_BYTES),
            );
        }
        if let Some(oidc) = &self.auth.oidc {
            oidc.validate(&mut problem);
        }
        let ca_file = self.auth.oidc.as_ref().and_then(|o| o.ca_file.clone());
        for (key, path) in [
            ("mqtt.password_file", &self.mqtt.password_file),
            (
                "store.secret_access_key_file",
                &self.store.secret_access_key_file,
            ),
            ("postgres.password_file", &self.postgres.password_file),
            ("amqp.url_file", &self.amqp.url_file),
            ("amqp.password_file", &self.amqp.password_file),
            ("auth.oidc.ca_file", &ca_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                problem(key, format!("{}: {e}", path.display()));
            }
        }
        problems
    }

    /// The environment, parsed (validation proved it parses).
    pub fn env(&self) -> Result<Env, capture_protocol::InvalidId> {
        self.env.parse()
    }

    /// Reads every secret file.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        let read = |key: &'static str, path: &Option<PathBuf>| -> Result<Option<String>, _> {
            path.as_ref()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|s| s.trim().to_owned())
                        .map_err(|source| ConfigError::Secret {
                            key,
                            path: path.clone(),
                            source,
                        })
                })
                .transpose()
        };
        let amqp_password = read("amqp.password_file", &self.amqp.password_file)?;
        let amqp_url = match read("amqp.url_file", &self.amqp.url_file)? {
            Some(url) => url,
            None => {
                let url = self.amqp.url.clone().unwrap_or_default();
                match amqp_password {
                    Some(password) => with_password(&url, &password),
                    None => url,
                }
            }
        };
        Ok(Secrets {
            mqtt_password: read("mqtt.password_file", &self.mqtt.password_file)?,
            s3_secret_access_key: read(
                "store.secret_access_key_file",
                &self.store.secret_access_key_file,
            )?,
            postgres_password: read("postgres.password_file", &self.postgres.password_file)?,
            amqp_url,
        })
    }
}

impl OidcConfig {
    fn validate(&self, problem: &mut impl FnMut(&str, String)) {
        for (key, value) in [
            ("auth.oidc.issuer", &self.issuer),
            ("auth.oidc.audience", &self.audience),
            ("auth.oidc.scopes_claim", &self.scopes_claim),
            ("auth.oidc.name_claim", &self.name_claim),
        ] {
            if value.trim().is_empty() {
                problem(key, "must not be empty".to_owned());
            }
        }
        if let Err(message) = check_jwks_url(&self.jwks_url) {
            problem("auth.oidc.jwks_url", message);
        }
        if self.algorithms.is_empty() {
            problem("auth.oidc.algorithms", "must name at least one".to_owned());
        }
        for alg in &self.algorithms {
            if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
                problem(
                    "auth.oidc.algorithms",
                    format!(
                        "{alg:?} is never accepted: tokens must be signed by the provider's key"
                    ),
                );
            } else if crate::auth::jwt::Algorithm::from_name(alg).is_none() {
                problem(
                    "auth.oidc.algorithms",
                    format!(
                        "{alg:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, \
                         ES384, EdDSA"
                    ),
                );
            }
        }
        if self.clock_skew > Duration::from_secs(300) {
            problem("auth.oidc.clock_skew", "must be at most 5m".to_owned());
        }
        if self.jwks_max_age < Duration::from_secs(60)
            || self.jwks_max_age > Duration::from_secs(24 * 3600)
        {
            problem(
                "auth.oidc.jwks_max_age",
                "must be between 1m and 24h".to_owned(),
            );
        }
        if self.jwks_min_refresh < Duration::from_secs(1)
            || self.jwks_min_refresh > self.jwks_max_age
        {
            problem(
                "auth.oidc.jwks_min_refresh",
                "must be between 1s and auth.oidc.jwks_max_age".to_owned(),
            );
        }
        for (role, scopes) in &self.roles {
            for scope in scopes {
                if scope.parse::<crate::auth::Scope>().is_err() {
                    problem(
                        "auth.oidc.roles",
                        format!(
                            "role {role:?} grants {scope:?}, which is not a scope ({})",
                            crate::auth::Scope::list()
                        ),
                    );
                }
            }
        }
    }
}

/// The JWKS URL must be https: whoever can change the keys can sign in as anyone. Plain http
/// is allowed to a loopback address only (a provider on the same host, tests).
fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        Some("http") => Err(format!(
            "{url:?}: must be https (plain http only to 127.0.0.1, localhost or [::1])"
        )),
        _ => Err(format!("{url:?} is not an https URL")),
    }
}

/// Puts `password` into the userinfo of `url` (`amqp://user@host` -> `amqp://user:pw@host`).
fn with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{scheme}://{user}:{encoded}@{host}")
}

fn override_value(text: &str) -> toml::Value {
    if let Ok(n) = text.parse::<i64>() {
        toml::Value::Integer(n)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(text.to_owned())
    }
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_dotted(inner, rest, value);
            }
        }
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

    #[test]
    fn environment_overrides_replace_keys() {
        let vars = [
            ("CLOUD_INGEST_ENV".to_owned(), "prod".to_owned()),
            ("CLOUD_INGEST_MQTT_PORT".to_owned(), "2883".to_owned()),
            (
                "CLOUD_INGEST_MQTT_CLIENT_ID".to_owned(),
                "ingest-7".to_owned(),
            ),
        ];
        let config = Config::parse(DEFAULT_CONFIG, &vars).unwrap();
        assert_eq!(config.env, "prod");
        assert_eq!(config.mqtt.port, 2883);
        assert_eq!(config.mqtt.client_id, "ingest-7");
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = DEFAULT_CONFIG
            .replace(r#"env = "dev""#, r#"env = "Dev!""#)
            .replace(r#"listen = "0.0.0.0:8080""#, r#"listen = "nowhere""#)
            .replace("pool_size = 8", "pool_size = 0");
        let problems = Config::parse(&text, &[]).unwrap_err().problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["env", "postgres.pool_size", "http.listen"],
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let typo = DEFAULT_CONFIG.replace("keep_alive", "keepalive");
        let problems = Config::parse(&typo, &[]).unwrap_err().problems();
        assert!(problems[0].message.contains("keepalive"), "{problems:?}");
        let bad = DEFAULT_CONFIG.replace(r#"presign_ttl = "15m""#, r#"presign_ttl = "soon""#);
        let problems = Config::parse(&bad, &[]).unwrap_err().problems();
        assert!(problems[0].message.contains("soon"), "{problems:?}");
    }

    /// The default with its commented `[auth.oidc]` example switched on (but `ca_file`, which
    /// names a file of the operator's).
    fn default_with_sso() -> String {
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

    #[test]
    fn sso_can_be_switched_on_from_the_environment() {
        let vars = [
            (
                "CLOUD_INGEST_AUTH_OIDC_ISSUER",
                "https://login.microsoftonline.com/t/v2.0",
            ),
            ("CLOUD_INGEST_AUTH_OIDC_AUDIENCE", "api://cloud-ingest"),
            (
                "CLOUD_INGEST_AUTH_OIDC_JWKS_URL",
                "https://login.microsoftonline.com/t/discovery/v2.0/keys",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::parse(DEFAULT_CONFIG, &vars).unwrap();
        assert_eq!(config.auth.oidc.unwrap().audience, "api://cloud-ingest");
        // Half of it is a problem with its key, not a silent "off".
        let problems = Config::parse(DEFAULT_CONFIG, &vars[..1])
            .unwrap_err()
            .problems();
        assert!(problems[0].message.contains("audience"), "{problems:?}");
    }

    #[test]
    fn sso_and_url_settings_are_validated_with_their_keys() {
        let text = default_with_sso()
            .replace(
                "jwks_url = \"https://login.factory.internal",
                "jwks_url = \"http://login.factory.internal",
            )
            .replace(
                r#"algorithms = ["RS256"]"#,
                r#"algorithms = ["RS256", "none", "HS256", "XS1"]"#,
            )
            .replace(r#"clock_skew = "60s""#, r#"clock_skew = "1h""#)
            .replace(
                r#""capture-fleet" = ["stations:read"]"#,
                r#""capture-fleet" = ["stations:write"]"#,
            )
            .replace(r#"presign_ttl = "15m""#, r#"presign_ttl = "2d""#)
            .replace(
                r#"metrics_listen = "0.0.0.0:9090""#,
                r#"metrics_listen = "0.0.0.0:8080""#,
            );
        let problems = Config::parse(&text, &[]).unwrap_err().problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "store.presign_ttl",
                "http.metrics_listen",
                "auth.oidc.jwks_url",
                "auth.oidc.algorithms",
                "auth.oidc.algorithms",
                "auth.oidc.algorithms",
                "auth.oidc.clock_skew",
                "auth.oidc.roles",
            ],
            "{problems:?}"
        );
        assert!(
            problems[3].message.contains("never accepted"),
            "{problems:?}"
        );
        assert!(check_jwks_url("http://127.0.0.1:8081/certs").is_ok());
        assert!(check_jwks_url("https://login.example/certs").is_ok());
        assert!(check_jwks_url("ftp://login.example/certs").is_err());
    }

    #[test]
    fn timeouts_and_retention_have_defaults_and_are_validated() {
        let config = Config::parse(DEFAULT_CONFIG, &[]).unwrap();
        assert_eq!(config.store.attempt_timeout, Duration::from_secs(30));
        assert_eq!(config.store.operation_timeout, Duration::from_secs(120));
        assert_eq!(config.postgres.statement_timeout, Duration::from_secs(30));
        assert_eq!(config.amqp.unroutable_retry_max, Duration::from_secs(60));
        assert_eq!(config.http.stalled_after, Duration::from_secs(120));
        assert_eq!(config.retention.sent_events, Duration::from_secs(7 * 86400));
        assert_eq!(config.retention.poison, Duration::from_secs(30 * 86400));
        assert_eq!(config.retention.poison_payload_max_bytes, 65536);
        // A file without the new keys (an older config) gets the same defaults.
        let without: String = DEFAULT_CONFIG
            .lines()
            .filter(|l| {
                ![
                    "attempt_timeout",
                    "operation_timeout",
                    "statement_timeout",
                    "unroutable_retry_max",
                    "stalled_after",
                    "[retention]",
                    "sent_events",
                    "poison =",
                    "interval =",
                    "poison_payload_max_bytes",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let older = Config::parse(&without, &[]).unwrap();
        assert_eq!(older.retention.sent_events, config.retention.sent_events);
        assert_eq!(older.store.attempt_timeout, config.store.attempt_timeout);

        let text = DEFAULT_CONFIG
            .replace(r#"attempt_timeout = "30s""#, r#"attempt_timeout = "3m""#)
            .replace(
                r#"statement_timeout = "30s""#,
                r#"statement_timeout = "0s""#,
            )
            .replace(
                r#"unroutable_retry_max = "1m""#,
                r#"unroutable_retry_max = "10ms""#,
            )
            .replace(r#"stalled_after = "2m""#, r#"stalled_after = "0s""#)
            .replace(r#"sent_events = "7d""#, r#"sent_events = "0s""#)
            .replace(
                "poison_payload_max_bytes = 65536",
                "poison_payload_max_bytes = 10",
            );
        let problems = Config::parse(&text, &[]).unwrap_err().problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "store.operation_timeout",
                "postgres.statement_timeout",
                "amqp.unroutable_retry_max",
                "http.stalled_after",
                "retention.sent_events",
                "retention.poison_payload_max_bytes",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn the_amqp_password_is_put_into_the_url() {
        assert_eq!(
            with_password("amqp://ingest@mq:5672/%2f", "p@ss word"),
            "amqp://ingest:p%40ss%20word@mq:5672/%2f"
        );
    }
}
