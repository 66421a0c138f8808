//! What the ingest's end-to-end tests share beyond the fixtures of `capture-tests`: the
//! configuration of a replica against a stack of real servers, the ingest run in-process, a
//! device that publishes notifications and hears confirmations, and clips as an agent
//! uploads them.

#![allow(dead_code)]

pub mod binary;
pub mod idp;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use capture_protocol::{ClipKind, Confirm, Env, ProtocolV1, Timestamp, Uploaded, object_key};
use capture_tests::fixtures::{
    Garage, IngestOptions, Mosquitto, MqttClient, free_port, http_request, unique_name, wait_until,
};
use cloud_ingest::config::Config;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const ENV: &str = "test";

pub fn env() -> Env {
    ENV.parse().expect("valid env")
}

/// Writes a secret into a file of its own and returns the path.
pub fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, value)?;
    Ok(path)
}

/// The servers one ingest replica talks to.
pub struct Servers<'a> {
    pub broker: &'a Mosquitto,
    pub garage: &'a Garage,
    pub pg_url: &'a str,
    pub amqp_url: &'a str,
    pub exchange: &'a str,
    pub secrets: &'a tempfile::TempDir,
}

impl Servers<'_> {
    /// The configuration of one replica (own client id and HTTP port); `extra_store` is added
    /// to the `[store]` table.
    pub fn config(&self, extra_store: &str) -> Result<Config> {
        let text = config_text(self, &unique_name("ingest"), free_port()?, extra_store, "")?;
        Ok(Config::parse(&text, &[])?)
    }
}

/// The TOML configuration of one ingest replica against the given servers (the shared
/// fixture's, with presigned URLs valid for 10 minutes); `extra_store` is added to the
/// `[store]` table, `extra_tables` (e.g. `[auth.oidc]`) at the end.
pub fn config_text(
    servers: &Servers<'_>,
    client_id: &str,
    http_port: u16,
    extra_store: &str,
    extra_tables: &str,
) -> Result<String> {
    let Servers {
        broker,
        garage,
        pg_url,
        amqp_url,
        exchange,
        secrets,
    } = servers;
    let store = garage.settings();
    let s3_secret = secret_file(secrets, "s3-secret", &store.secret_access_key)?;
    let options = IngestOptions {
        env: ENV.to_owned(),
        client_id: client_id.to_owned(),
        mqtt_host: broker.host().to_owned(),
        mqtt_port: broker.port(),
        store,
        bucket: garage.bucket().to_owned(),
        postgres_url: (*pg_url).to_owned(),
        amqp_url: (*amqp_url).to_owned(),
        exchange: (*exchange).to_owned(),
    };
    Ok(options.config_text(
        http_port,
        &s3_secret,
        &format!("presign_ttl = \"10m\"\n{extra_store}"),
        extra_tables,
    ))
}

/// An ingest running in this process.
pub struct Ingest {
    pub http_port: u16,
    /// Sent as `Authorization: Bearer` on `/v1/` requests (see [`Ingest::authorize`]).
    token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), cloud_ingest::RunError>>,
}

impl Ingest {
    /// Starts `cloud_ingest::run` and waits until `/healthz` answers.
    pub async fn start(config: Config) -> Result<Ingest> {
        let http_port: u16 = config
            .http
            .listen
            .rsplit(':')
            .next()
            .context("listen port")?
            .parse()?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(cloud_ingest::run(config, async move {
            let _ = stopped.await;
        }));
        let ingest = Ingest {
            http_port,
            token: None,
            stop: Some(stop),
            task,
        };
        wait_until("ingest /healthz", DEADLINE, || async {
            Ok(ingest.get("/healthz").await.ok().filter(|(s, _)| *s == 200))
        })
        .await?;
        Ok(ingest)
    }

    /// Waits until `/readyz` says MQTT, PostgreSQL and RabbitMQ are all reachable.
    pub async fn wait_ready(&self) -> Result<()> {
        wait_until("ingest /readyz", DEADLINE, || async {
            Ok(self.get("/readyz").await.ok().filter(|(s, _)| *s == 200))
        })
        .await?;
        Ok(())
    }

    /// Creates a service token with every scope in the ingest's catalog and sends it with
    /// every request from now on.
    pub async fn authorize(&mut self, config: &Config) -> Result<()> {
        let pool = cloud_ingest::catalog::Pool::new(
            &config.postgres.url,
            None,
            1,
            Duration::from_secs(5),
        )?;
        cloud_ingest::catalog::migrate(&pool).await?;
        let spec = cloud_ingest::auth::tokens::TokenSpec {
            name: unique_name("test-caller"),
            scopes: cloud_ingest::auth::Scope::ALL.into_iter().collect(),
            environments: None,
            expires_in: Some(Duration::from_secs(3600)),
        };
        self.token = Some(
            cloud_ingest::auth::tokens::create(&pool, &spec)
                .await?
                .token,
        );
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let url = format!("http://127.0.0.1:{}{path}", self.http_port);
        let reply = http_request(&url, self.token.as_deref()).await?;
        Ok((reply.status, reply.body))
    }

    pub async fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let (status, body) = self.get(path).await?;
        Ok((status, serde_json::from_slice(&body).context("JSON body")?))
    }

    /// Value of an unlabelled or labelled sample of `/metrics`.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        let text = String::from_utf8(body)?;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no sample {sample}"))
    }

    /// Asks the ingest to stop and waits until it has drained.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .context("ingest did not stop")??
            .context("ingest run failed")?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An agent stand-in: publishes notifications, hears confirmations.
pub struct Device {
    pub client: MqttClient,
}

impl Device {
    pub async fn connect(broker: &Mosquitto, id: &str) -> Result<Device> {
        let confirms = format!("cap/{ENV}/device/+/confirm");
        let client = MqttClient::connect(broker.host(), broker.port(), id, &[&confirms]).await?;
        Ok(Device { client })
    }

    pub async fn notify(&self, uploaded: &Uploaded) -> Result<()> {
        self.publish_raw(serde_json::to_vec(uploaded)?).await
    }

    pub async fn publish_raw(&self, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(&format!("cap/{ENV}/ingest/uploaded"), payload)
            .await
    }

    /// The next confirmation: its topic and content.
    pub async fn next_confirm(&mut self) -> Result<(String, Confirm)> {
        let publish = self
            .client
            .next_matching("a confirmation", DEADLINE, |_| true)
            .await?;
        Ok((
            publish.topic,
            capture_protocol::parse_confirm(&publish.payload)?,
        ))
    }

    /// The next confirmation for `clip_id`, skipping repeated confirmations of other clips
    /// (QoS 1 and redelivery allow them; a real agent ignores them the same way).
    pub async fn confirm_of(&mut self, clip_id: &capture_protocol::ClipId) -> Result<Confirm> {
        loop {
            let (_, confirm) = self.next_confirm().await?;
            if &confirm.clip_id == clip_id {
                return Ok(confirm);
            }
        }
    }
}

/// Random content and the notification describing it, as the agent would send it.
pub fn clip(order: &str, size: usize) -> (Vec<u8>, Uploaded) {
    let content: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
    let clip_id: capture_protocol::ClipId = ulid::Ulid::new()
        .to_string()
        .parse()
        .expect("a ULID is a clip id");
    let order: capture_protocol::OrderId = order.parse().expect("valid order");
    let started_at = Timestamp::now();
    let uploaded = Uploaded {
        v: ProtocolV1,
        key: object_key(&env(), started_at, &order, &clip_id, ClipKind::Video),
        clip_id,
        device: "pi-07".parse().expect("device"),
        station: "pack-03".parse().expect("station"),
        camera: "top".parse().expect("camera"),
        order,
        kind: ClipKind::Video,
        bucket: String::new(),
        size: content.len() as u64,
        sha256: hex::encode(Sha256::digest(&content))
            .parse()
            .expect("hex digest"),
        content_type: "video/mp4".to_owned(),
        started_at,
        ended_at: started_at,
        duration_ms: 1000,
        preroll_ms: 0,
        truncated: false,
        clock_synced: true,
        meta: serde_json::from_str(r#"{"sku":"JERSEY-9","operator":"ana"}"#).expect("meta"),
        // What the store's ETag of a single PutObject of the content is (verify = "etag").
        etag: Some(hex::encode(<md5::Md5 as md5::Digest>::digest(&content))),
        items: Vec::new(),
    };
    (content, uploaded)
}

/// Uploads `content` under the notification's key with its sha256 metadata, as the agent does.
pub async fn put(garage: &Garage, uploaded: &mut Uploaded, content: Vec<u8>) -> Result<()> {
    uploaded.bucket = garage.bucket().to_owned();
    let mut request = garage
        .client()
        .put_object()
        .bucket(garage.bucket())
        .key(&uploaded.key)
        .content_type("video/mp4")
        .body(ByteStream::from(content));
    for (key, value) in uploaded.object_metadata() {
        request = request.metadata(key, value);
    }
    request.send().await?;
    Ok(())
}

/// A plain HTTP/1.1 GET (no TLS): status and body.
pub async fn http_get(url: &str) -> Result<(u16, Vec<u8>)> {
    let reply = http_request(url, None).await?;
    Ok((reply.status, reply.body))
}
