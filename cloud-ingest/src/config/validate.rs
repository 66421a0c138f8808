//! Validation: every problem of a deserialized [`Config`], each with its dotted key, so that
//! `cloud-ingest validate` can print them all at once. Also checks that the secret files named
//! exist (their content is read only at start, [`super::secrets`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use capture_protocol::Env;

use super::{Config, MAX_PACKET_BYTES, MAX_PRESIGN_TTL, OidcConfig};

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

impl Config {
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
        if !(1024..=MAX_PACKET_BYTES).contains(&retention.poison_payload_max_bytes) {
            problem(
                "retention.poison_payload_max_bytes",
                format!("must be 1024..{}", MAX_PACKET_BYTES),
            );
        }
        let expected = &self.expected;
        for (key, value) in [
            ("expected.overdue_after", expected.overdue_after),
            ("expected.max_recording", expected.max_recording),
            ("expected.reply_timeout", expected.reply_timeout),
        ] {
            if value < Duration::from_secs(1) {
                problem(key, "must be at least 1s".to_owned());
            }
        }
        if expected.sweep_interval < Duration::from_millis(100) {
            problem(
                "expected.sweep_interval",
                "must be at least 100ms".to_owned(),
            );
        } else if expected.sweep_interval > expected.overdue_after {
            problem(
                "expected.sweep_interval",
                "must not exceed expected.overdue_after (overdue clips would be found late)"
                    .to_owned(),
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
            } else if crate::jwa::Algorithm::from_name(alg).is_none() {
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
                if scope.parse::<crate::principal::Scope>().is_err() {
                    problem(
                        "auth.oidc.roles",
                        format!(
                            "role {role:?} grants {scope:?}, which is not a scope ({})",
                            crate::principal::Scope::list()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;
    use crate::config::tests::default_with_sso;

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
        assert_eq!(config.expected.overdue_after, Duration::from_secs(3600));
        assert_eq!(config.expected.reply_timeout, Duration::from_secs(30));
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
                    "[expected]",
                    "overdue_after",
                    "max_recording",
                    "reply_timeout",
                    "sweep_interval",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let older = Config::parse(&without, &[]).unwrap();
        assert_eq!(older.retention.sent_events, config.retention.sent_events);
        assert_eq!(older.store.attempt_timeout, config.store.attempt_timeout);
        assert_eq!(older.expected.overdue_after, config.expected.overdue_after);

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
            )
            .replace(r#"reply_timeout = "30s""#, r#"reply_timeout = "0s""#)
            .replace(r#"sweep_interval = "30s""#, r#"sweep_interval = "2h""#);
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
                "expected.reply_timeout",
                "expected.sweep_interval",
            ],
            "{problems:?}"
        );
    }
}
