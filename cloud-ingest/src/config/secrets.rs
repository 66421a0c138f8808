//! Secrets: the S3 secret key, the PostgreSQL password, the AMQP URL or password and the MQTT
//! password are never in the file. The `*_file` keys name files that [`Config::secrets`]
//! reads when the service starts (trimmed); [`Secrets`] never prints them.

use std::fmt;
use std::path::PathBuf;

use super::{Config, ConfigError};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amqp_password_is_put_into_the_url() {
        assert_eq!(
            with_password("amqp://ingest@mq:5672/%2f", "p@ss word"),
            "amqp://ingest:p%40ss%20word@mq:5672/%2f"
        );
    }
}
