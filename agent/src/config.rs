//! The agent's configuration: one TOML file, typed, checked before anything starts.
//!
//! `agent/config/agent.toml` is the commented default (`capture-agent generate-config`).
//! Loading happens in three steps, each reporting with the key it concerns:
//!
//! 1. [`Config::parse`]: TOML syntax, unknown keys (`deny_unknown_fields` everywhere, so a
//!    typo is an error, not a silently ignored setting), types and units ("8MiB", "30s").
//!    serde stops at the first such error.
//! 2. [`Config::problems`]: every rule on values, all reported at once: identifiers, ranges,
//!    camera specs, duplicate camera names, OBS part-size limits.
//! 3. [`Config::file_problems`]: the files it names: secrets exist, are readable and are not
//!    readable by group or others.
//!
//! Secrets are read from files only ([`Config::secrets`]), so the config file itself holds
//! nothing secret and may be world-readable.
//!
//! Size: about 530 lines of sections and their checks; the rest is the tests of every
//! refusal, beside the keys they check.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use capture_protocol::{DeviceId, Env, StationId};
use serde::{Deserialize, Deserializer};

use crate::capture::CameraSpec;
use crate::capture::spec::human_duration;
use crate::scanner::ScannerSection;
use crate::station::OnNewStart;

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../config/agent.toml");

/// Exit code for a bad configuration (`EX_CONFIG` of sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 78;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub mqtt: MqttSection,
    pub store: StoreSection,
    #[serde(default)]
    pub disk: DiskSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(rename = "camera", default)]
    pub cameras: Vec<CameraSpec>,
    /// The packer's barcode scanner, when the station has one.
    pub scanner: Option<ScannerSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub device: String,
    pub station: String,
    pub env: String,
    pub spool_dir: PathBuf,
    #[serde(default)]
    pub on_new_start: OnNewStart,
    #[serde(default = "default_max_recording", with = "human_duration")]
    pub max_recording: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "human_duration")]
    pub keep_alive: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    #[serde(default)]
    pub path_style: bool,
    pub access_key_id_file: PathBuf,
    pub secret_access_key_file: PathBuf,
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub bandwidth_kbps: u64,
    /// The longest wait between two upload attempts after failures (the backoff doubles
    /// from 1 s up to this).
    #[serde(default = "default_retry_max", with = "human_duration")]
    pub retry_max: Duration,
    /// How long an uploaded clip waits for the ingest's confirm before its notification is
    /// sent again (then doubling, with jitter, up to `confirm_timeout_max`).
    #[serde(default = "default_confirm_timeout", with = "human_duration")]
    pub confirm_timeout: Duration,
    #[serde(default = "default_confirm_timeout_max", with = "human_duration")]
    pub confirm_timeout_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_min_free_percent")]
    pub min_free_percent: u8,
}

impl Default for DiskSection {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            min_free_percent: default_min_free_percent(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_max_recording() -> Duration {
    Duration::from_secs(600)
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_confirm_timeout_max() -> Duration {
    Duration::from_secs(1800)
}

fn default_concurrency() -> u32 {
    2
}
fn default_max_bytes() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_min_free_percent() -> u8 {
    10
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

/// OBS multipart limits: parts of 100 KiB to 5 GiB.
const MIN_PART: u64 = 100 << 10;
const MAX_PART: u64 = 5 << 30;

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `agent.station` or `camera[1].fps`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Parses TOML text; the first syntax, type or unknown-key error is reported.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Reads, parses and checks the file at `path`, files it names included.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let mut problems = config.problems();
        problems.extend(config.file_problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Every rule on values that this configuration breaks (no I/O).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let a = &self.agent;
        if let Err(e) = DeviceId::from_str(&a.device) {
            problems.push(problem("agent.device", e.to_string()));
        }
        if let Err(e) = StationId::from_str(&a.station) {
            problems.push(problem("agent.station", e.to_string()));
        }
        if let Err(e) = Env::from_str(&a.env) {
            problems.push(problem("agent.env", e.to_string()));
        }
        if a.max_recording.is_zero() {
            problems.push(problem("agent.max_recording", "must be more than 0s"));
        }
        if !a.spool_dir.is_absolute() {
            problems.push(problem(
                "agent.spool_dir",
                format!("{} must be an absolute path", a.spool_dir.display()),
            ));
        }

        let m = &self.mqtt;
        if m.host.trim().is_empty() {
            problems.push(problem("mqtt.host", "must not be empty"));
        }
        if m.port == 0 {
            problems.push(problem("mqtt.port", "must be 1..65535"));
        }
        if m.username.is_some() != m.password_file.is_some() {
            problems.push(problem(
                "mqtt.password_file",
                "username and password_file go together: give both, or neither",
            ));
        }
        if m.ca_file.is_some() && !m.tls {
            problems.push(problem("mqtt.ca_file", "is only used with tls = true"));
        }
        if m.keep_alive < Duration::from_secs(5) {
            problems.push(problem("mqtt.keep_alive", "must be at least 5s"));
        }

        let s = &self.store;
        if !(s.endpoint.starts_with("https://") || s.endpoint.starts_with("http://")) {
            problems.push(problem(
                "store.endpoint",
                format!("{:?} must start with https:// or http://", s.endpoint),
            ));
        }
        if s.region.trim().is_empty() {
            problems.push(problem("store.region", "must not be empty"));
        }
        if !valid_bucket(&s.bucket) {
            problems.push(problem(
                "store.bucket",
                format!(
                    "{:?} must be 3..63 lower-case letters, digits, dots and dashes",
                    s.bucket
                ),
            ));
        }
        if !(MIN_PART..=MAX_PART).contains(&s.part_size.0) {
            problems.push(problem(
                "store.part_size",
                format!("{} must be within 100KiB..5GiB (OBS limits)", s.part_size),
            ));
        }
        if !(1..=16).contains(&s.concurrency) {
            problems.push(problem("store.concurrency", "must be within 1..16"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.retry_max) {
            problems.push(problem("store.retry_max", "must be within 1s..1h"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.confirm_timeout) {
            problems.push(problem("store.confirm_timeout", "must be within 1s..1h"));
        }
        if !(s.confirm_timeout..=Duration::from_secs(24 * 3600)).contains(&s.confirm_timeout_max) {
            problems.push(problem(
                "store.confirm_timeout_max",
                "must be within store.confirm_timeout..24h",
            ));
        }

        if self.disk.min_free_percent > 90 {
            problems.push(problem("disk.min_free_percent", "must be within 0..90"));
        }
        if self.disk.max_bytes.0 < 1 << 20 {
            problems.push(problem("disk.max_bytes", "must be at least 1MiB"));
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(problem(
                "metrics.listen",
                format!(
                    "{:?} must be an address like 127.0.0.1:9464",
                    self.metrics.listen
                ),
            ));
        }

        if self.cameras.is_empty() {
            problems.push(problem("camera", "at least one [[camera]] table is needed"));
        }
        for (index, camera) in self.cameras.iter().enumerate() {
            if let Err(e) = camera.validate() {
                problems.push(problem(format!("camera[{index}]"), e.to_string()));
            }
            if self.cameras[..index].iter().any(|c| c.name == camera.name) {
                problems.push(problem(
                    format!("camera[{index}].name"),
                    format!("{:?} is used by another camera", camera.name),
                ));
            }
        }
        if let Some(scanner) = &self.scanner {
            for (key, message) in scanner.problems() {
                problems.push(problem(format!("scanner.{key}"), message));
            }
        }
        problems
    }

    /// Problems with the files this configuration names: missing, unreadable, or secrets
    /// readable by group or others.
    pub fn file_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut secret = |key: &str, path: &Path| {
            if let Err(message) = check_secret_file(path) {
                problems.push(problem(key, message));
            }
        };
        if let Some(path) = &self.mqtt.password_file {
            secret("mqtt.password_file", path);
        }
        secret("store.access_key_id_file", &self.store.access_key_id_file);
        secret(
            "store.secret_access_key_file",
            &self.store.secret_access_key_file,
        );
        if let Some(path) = &self.mqtt.ca_file
            && let Err(e) = std::fs::metadata(path)
        {
            problems.push(problem("mqtt.ca_file", format!("{}: {e}", path.display())));
        }
        problems
    }

    /// Reads the secrets. Call after [`Config::load`] succeeded.
    pub fn secrets(&self) -> Result<Secrets, Problem> {
        let read = |key: &str, path: &Path| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|e| problem(key, format!("{}: {e}", path.display())))
        };
        Ok(Secrets {
            mqtt_password: match &self.mqtt.password_file {
                Some(path) => Some(read("mqtt.password_file", path)?),
                None => None,
            },
            access_key_id: read("store.access_key_id_file", &self.store.access_key_id_file)?,
            secret_access_key: read(
                "store.secret_access_key_file",
                &self.store.secret_access_key_file,
            )?,
        })
    }
}

/// The secrets a running agent needs; `Debug` never shows them.
#[derive(Clone)]
pub struct Secrets {
    pub mqtt_password: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { <redacted> }")
    }
}

fn check_secret_file(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:04o}): run chmod 600 on it",
            path.display()
        ));
    }
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// S3 bucket naming rules (OBS applies the same).
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A size in bytes, written with a unit: `8MiB`, `20GiB`, `500KB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("size {text:?}: write e.g. \"8MiB\", \"20GiB\" or \"500KB\""))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "size {text:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                ));
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_parses_and_breaks_no_rule() {
        let config = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.problems(), Vec::<Problem>::new());
        assert_eq!(config.store.part_size, ByteSize(8 << 20));
        assert_eq!(config.disk.max_bytes, ByteSize(20 << 30));
        assert_eq!(config.agent.max_recording, Duration::from_secs(600));
        assert_eq!(config.cameras.len(), 1);
    }

    #[test]
    fn every_broken_rule_is_listed_with_its_key() {
        let text = DEFAULT_CONFIG
            .replace("station = \"pack-01\"", "station = \"Pack 01\"")
            .replace("env = \"dev\"", "env = \"../prod\"")
            .replace("part_size = \"8MiB\"", "part_size = \"10KiB\"")
            .replace("fps = 30", "fps = 0")
            .replace("bucket = \"factory-media\"", "bucket = \"Factory_Media\"")
            .replace("password_file = \"/etc/capture-agent/mqtt-password\"\n", "");
        let keys: Vec<String> = Config::parse(&text)
            .unwrap()
            .problems()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "agent.station",
                "agent.env",
                "mqtt.password_file",
                "store.bucket",
                "store.part_size",
                "camera[0]"
            ]
        );
    }

    #[test]
    fn a_scanner_section_is_checked_with_its_keys() {
        let scanner = "\n[scanner]\ndevice = \"/dev/ttyACM0\"\norder_pattern = \"^SO-\"\nstop = \"CTL-STOP\"\n";
        let config = Config::parse(&format!("{DEFAULT_CONFIG}{scanner}")).unwrap();
        assert_eq!(config.problems(), Vec::<Problem>::new());
        assert!(config.scanner.is_some());
        let broken = scanner
            .replace("^SO-", "^SO-(")
            .replace("CTL-STOP", "SO-STOP");
        let problems = Config::parse(&format!("{DEFAULT_CONFIG}{broken}"))
            .unwrap()
            .problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["scanner.order_pattern"], "{problems:?}");
        assert!(problems[0].message.contains("not a valid regex"));
        let typo = format!("{DEFAULT_CONFIG}{scanner}order_patern = \"x\"\n");
        assert!(Config::parse(&typo).unwrap_err().contains("order_patern"));
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let text = DEFAULT_CONFIG.replace("[disk]\n", "[disk]\nmax_bytez = \"1GiB\"\n");
        let message = Config::parse(&text).unwrap_err();
        assert!(message.contains("max_bytez"), "{message}");
    }

    #[test]
    fn sizes_take_units_and_say_what_is_wrong() {
        assert_eq!("8MiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 20));
        assert_eq!("500KB".parse::<ByteSize>().unwrap(), ByteSize(500_000));
        assert_eq!("1024".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!(ByteSize(20 << 30).to_string(), "20GiB");
        let err = "8 furlongs".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("unknown unit"), "{err}");
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn secret_files_must_exist_and_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let key_id = dir.path().join("key-id");
        let secret = dir.path().join("secret");
        std::fs::write(&key_id, "GK123\n").unwrap();
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&key_id, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = Config::parse(DEFAULT_CONFIG).unwrap();
        config.mqtt.username = None;
        config.mqtt.password_file = None;
        config.store.access_key_id_file = key_id;
        config.store.secret_access_key_file = secret.clone();
        let problems = config.file_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "store.secret_access_key_file");
        assert!(problems[0].message.contains("chmod 600"));

        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(config.file_problems().is_empty());
        let secrets = config.secrets().unwrap();
        assert_eq!(secrets.access_key_id, "GK123");
        assert_eq!(secrets.secret_access_key, "s3cr3t");
        assert!(!format!("{secrets:?}").contains("s3cr3t"));
    }
}
