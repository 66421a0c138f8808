//! Loading a configuration: the file, then the environment overrides ([`super::overrides`]),
//! then the typed [`Config`] with `deny_unknown_fields`, then validation
//! ([`super::validate`]). [`ConfigError`] is every way this, or reading the secrets, fails.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::overrides;
use super::{Config, Problem};

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

impl Config {
    /// Reads, overrides from the process environment and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &overrides::from_process())
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
        overrides::apply(&mut table, vars);
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
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DEFAULT_CONFIG};

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let typo = DEFAULT_CONFIG.replace("keep_alive", "keepalive");
        let problems = Config::parse(&typo, &[]).unwrap_err().problems();
        assert!(problems[0].message.contains("keepalive"), "{problems:?}");
        let bad = DEFAULT_CONFIG.replace(r#"presign_ttl = "15m""#, r#"presign_ttl = "soon""#);
        let problems = Config::parse(&bad, &[]).unwrap_err().problems();
        assert!(problems[0].message.contains("soon"), "{problems:?}");
    }
}
