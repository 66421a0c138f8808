//! Environment overrides: the documented variables ([`ENV_OVERRIDES`]) that replace a key of
//! the file before it is deserialized, so that a Kubernetes Deployment can set, say, the MQTT
//! client id from the pod name. A value that parses as an integer or a boolean is one;
//! anything else is a string. Variables not in the list are ignored.

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

/// The overrides set in the process environment, as `(variable, value)`.
pub(super) fn from_process() -> Vec<(String, String)> {
    ENV_OVERRIDES
        .iter()
        .filter_map(|(var, _)| std::env::var(var).ok().map(|v| ((*var).to_owned(), v)))
        .collect()
}

/// Replaces, in the parsed file, the key of every variable of `vars` that [`ENV_OVERRIDES`]
/// names.
pub(super) fn apply(table: &mut toml::Table, vars: &[(String, String)]) {
    for (var, value) in vars {
        let Some((_, key)) = ENV_OVERRIDES.iter().find(|(name, _)| name == var) else {
            continue;
        };
        set_dotted(table, key, override_value(value));
    }
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
    use crate::config::{Config, DEFAULT_CONFIG};

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
}
