//! How the uploader behaves: [`UploaderSettings`] from the agent's config, and the object
//! store's connection settings.

use std::str::FromStr;
use std::time::Duration;

use capture_protocol::{DeviceId, Env, StationId};

use super::Backoff;
use crate::config::{Config, Problem, Secrets};

/// How the uploader behaves.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    pub env: Env,
    pub device: DeviceId,
    pub station: StationId,
    pub bucket: String,
    /// Files larger than this go multipart, in parts of this size (raised for files that
    /// would need more than 10,000 parts).
    pub part_size: u64,
    /// Clips uploaded at the same time.
    pub concurrency: usize,
    /// Parts of one clip in flight at the same time.
    pub parts_in_flight: usize,
    /// Upload bandwidth cap for all requests together, kbit/s; 0 is unlimited.
    pub bandwidth_kbps: u64,
    pub backoff: Backoff,
    /// A request whose body has not moved (or that got no answer) for this long is
    /// abandoned and retried.
    pub stall_timeout: Duration,
    /// How often the janitor sweeps orphaned multipart uploads (it also sweeps at start).
    pub janitor_interval: Duration,
    /// Multipart uploads older than this are aborted by the janitor whoever started them,
    /// when the clock is synchronised; `None` leaves other agents' uploads alone whatever
    /// their age.
    pub stale_upload_age: Option<Duration>,
    /// How often the spool is looked at without a wake-up (a safety net).
    pub rescan_interval: Duration,
    /// How long an uploaded clip waits for its confirm before the notification is sent
    /// again (`first`), and how that wait grows (`resend.rs`).
    pub confirm_backoff: Backoff,
}

impl UploaderSettings {
    /// Settings with the defaults: 8 MiB parts, 2 clips and 4 parts at once, no cap, 1 s ..
    /// 5 min backoff, 30 s stall timeout, janitor hourly, uploads older than 7 days stale.
    pub fn new(env: Env, device: DeviceId, station: StationId, bucket: impl Into<String>) -> Self {
        UploaderSettings {
            env,
            device,
            station,
            bucket: bucket.into(),
            part_size: 8 << 20,
            concurrency: 2,
            parts_in_flight: 4,
            bandwidth_kbps: 0,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(30),
            janitor_interval: Duration::from_secs(3600),
            stale_upload_age: Some(Duration::from_secs(7 * 24 * 3600)),
            rescan_interval: Duration::from_secs(30),
            confirm_backoff: Backoff {
                first: Duration::from_secs(120),
                max: Duration::from_secs(1800),
                jitter: 0.5,
            },
        }
    }

    /// The uploader's settings from the agent's configuration (`[agent]` and `[store]`).
    pub fn from_config(config: &Config) -> Result<UploaderSettings, Problem> {
        fn parse<T: FromStr>(key: &str, text: &str) -> Result<T, Problem>
        where
            T::Err: std::fmt::Display,
        {
            text.parse().map_err(|e: T::Err| Problem {
                key: key.to_owned(),
                message: e.to_string(),
            })
        }
        let store = &config.store;
        let mut settings = UploaderSettings::new(
            parse("agent.env", &config.agent.env)?,
            parse("agent.device", &config.agent.device)?,
            parse("agent.station", &config.agent.station)?,
            store.bucket.clone(),
        );
        settings.part_size = store.part_size.0;
        settings.concurrency = usize::try_from(store.concurrency).unwrap_or(1).max(1);
        settings.bandwidth_kbps = store.bandwidth_kbps;
        settings.backoff.max = store.retry_max;
        settings.confirm_backoff.first = store.confirm_timeout;
        settings.confirm_backoff.max = store.confirm_timeout_max;
        Ok(settings)
    }
}

/// The store settings of the uploader: the configured endpoint and credentials, without
/// the SDK's own retries (the uploader retries with its backoff).
pub fn store_settings(config: &Config, secrets: &Secrets) -> capture_objstore::StoreSettings {
    let mut settings = capture_objstore::StoreSettings::new(
        &config.store.endpoint,
        &config.store.region,
        &secrets.access_key_id,
        &secrets.secret_access_key,
    )
    .with_path_style(config.store.path_style)
    // A per-attempt bound would have to exceed the slowest legitimate part (8 MiB at
    // 256 kbit/s: 262 s); the uploader's stall timeout catches a hung store instead.
    .without_request_timeouts();
    settings.max_attempts = 1;
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG;

    #[test]
    fn settings_come_from_the_config_and_the_store_gets_one_attempt_per_request() {
        let mut config = Config::parse(DEFAULT_CONFIG).unwrap();
        config.store.part_size = crate::config::ByteSize(16 << 20);
        config.store.concurrency = 3;
        config.store.bandwidth_kbps = 2000;
        config.store.retry_max = Duration::from_secs(20);
        let settings = UploaderSettings::from_config(&config).unwrap();
        assert_eq!(
            (settings.env.as_str(), settings.device.as_str()),
            ("dev", "pi-01")
        );
        assert_eq!(settings.station.as_str(), "pack-01");
        assert_eq!(settings.bucket, "factory-media");
        assert_eq!(
            (
                settings.part_size,
                settings.concurrency,
                settings.bandwidth_kbps
            ),
            (16 << 20, 3, 2000)
        );
        assert_eq!(settings.backoff.max, Duration::from_secs(20));
        let defaults = UploaderSettings::from_config(&Config::parse(DEFAULT_CONFIG).unwrap());
        assert_eq!(defaults.unwrap().backoff.max, Duration::from_secs(300));

        let secrets = Secrets {
            mqtt_password: None,
            access_key_id: "GK1".into(),
            secret_access_key: "s3cr3t-value".into(),
        };
        let store = store_settings(&config, &secrets);
        assert_eq!(store.max_attempts, 1);
        // The stall timeout watches requests; SDK bounds would cut slow capped parts.
        assert_eq!(
            (store.attempt_timeout, store.operation_timeout),
            (None, None)
        );
        assert!(!store.path_style, "OBS is addressed virtual-hosted style");
        assert!(!format!("{store:?}").contains("s3cr3t-value"));
        let client = capture_objstore::client(&store);
        let uploader_store =
            crate::uploader::Store::new(client, "b".into(), Duration::from_secs(1), 0);
        assert!(!format!("{uploader_store:?}").contains("s3cr3t-value"));
    }
}
