//! What the ingest's end-to-end tests share: a stack of real servers, the ingest run
//! in-process, a device that publishes notifications and hears confirmations, a core-system
//! stand-in that consumes the CloudEvents, and a minimal HTTP client.

#![allow(dead_code)]

pub mod binary;
pub mod idp;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_s3::primitives::ByteStream;
use capture_protocol::{
    ClipEvent, ClipKind, Confirm, Env, ProtocolV1, Timestamp, Uploaded, object_key,
};
use capture_tests::fixtures::{Garage, Mosquitto, RabbitMq, free_port, unique_name, wait_until};
use cloud_ingest::config::Config;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
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
        let text = config_text(self, &client_id("ingest"), port()?, extra_store, "")?;
        Ok(Config::parse(&text, &[])?)
    }
}

/// The TOML configuration of one ingest replica against the given servers; `extra_store` is
/// added to the `[store]` table, `extra_tables` (e.g. `[auth.oidc]`) at the end.
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
    let settings = garage.settings();
    let s3_secret = secret_file(secrets, "s3-secret", &settings.secret_access_key)?;
    Ok(format!(
        r#"
env = "{ENV}"

[mqtt]
host = "{host}"
port = {port}
client_id = "{client_id}"
keep_alive = "5s"

[store]
endpoint = "{endpoint}"
region = "{region}"
path_style = true
bucket = "{bucket}"
access_key_id = "{access_key}"
secret_access_key_file = "{s3_secret}"
presign_ttl = "10m"
{extra_store}

[postgres]
url = "{pg_url}"
pool_size = 8
connect_timeout = "2s"

[amqp]
url = "{amqp_url}"
exchange = "{exchange}"
poll_interval = "200ms"

[http]
listen = "127.0.0.1:{http_port}"

[shutdown]
grace = "5s"

{extra_tables}
"#,
        host = broker.host(),
        port = broker.port(),
        endpoint = settings.endpoint,
        region = settings.region,
        bucket = garage.bucket(),
        access_key = settings.access_key_id,
        s3_secret = s3_secret.display(),
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
    pub client: AsyncClient,
    confirms: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Device {
    pub async fn connect(broker: &Mosquitto, id: &str) -> Result<Device> {
        let mut options = MqttOptions::new(id, broker.host(), broker.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_inflight(1000);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let (tx, confirms) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe(format!("cap/{ENV}/device/+/confirm"), QoS::AtLeastOnce)
            .await?;
        tokio::time::timeout(DEADLINE, subscribed)
            .await
            .context("no SubAck")??;
        Ok(Device { client, confirms })
    }

    pub async fn notify(&self, uploaded: &Uploaded) -> Result<()> {
        self.publish_raw(serde_json::to_vec(uploaded)?).await
    }

    pub async fn publish_raw(&self, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(
                format!("cap/{ENV}/ingest/uploaded"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        Ok(())
    }

    /// The next confirmation: its topic and content.
    pub async fn next_confirm(&mut self) -> Result<(String, Confirm)> {
        let (topic, payload) = tokio::time::timeout(DEADLINE, self.confirms.recv())
            .await
            .context("no confirmation within the deadline")?
            .context("device link ended")?;
        Ok((topic, capture_protocol::parse_confirm(&payload)?))
    }
}

impl Device {
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

/// The core system's side: a queue bound to the ingest's exchange.
pub struct CoreSystem {
    _connection: lapin::Connection,
    consumer: lapin::Consumer,
    pub exchange: String,
    pub queue: String,
}

impl CoreSystem {
    /// Declares the exchange (as the ingest does) and a durable queue bound to `clip.*`.
    pub async fn bind(rabbit: &RabbitMq) -> Result<CoreSystem> {
        let names = rabbit.names();
        CoreSystem::bind_names(rabbit, &names.exchange, &names.queue).await
    }

    /// Binds (again) to the given exchange and queue, e.g. after a broker restart.
    pub async fn bind_names(rabbit: &RabbitMq, exchange: &str, queue: &str) -> Result<CoreSystem> {
        let names = capture_tests::fixtures::AmqpNames {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
        };
        let connection = rabbit.connect().await?;
        let channel = connection.create_channel().await?;
        names.declare(&channel, "clip.*").await?;
        let consumer = channel
            .basic_consume(
                names.queue.as_str().into(),
                unique_name("core").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(CoreSystem {
            _connection: connection,
            consumer,
            exchange: names.exchange,
            queue: names.queue,
        })
    }

    /// The next delivery, acknowledged.
    pub async fn next_delivery(&mut self) -> Result<Delivery> {
        let delivery = tokio::time::timeout(DEADLINE, self.consumer.next())
            .await
            .context("no event within the deadline")?
            .context("consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(delivery)
    }

    /// The next event and its routing key.
    pub async fn next_event(&mut self) -> Result<(String, ClipEvent)> {
        let delivery = self.next_delivery().await?;
        let event: ClipEvent = serde_json::from_slice(&delivery.data)?;
        Ok((delivery.routing_key.to_string(), event))
    }

    /// Whether another delivery arrives within `wait` (used after everything expected came).
    pub async fn nothing_more_within(&mut self, wait: Duration) -> Result<()> {
        if let Ok(Some(delivery)) = tokio::time::timeout(wait, self.consumer.next()).await {
            let delivery = delivery?;
            bail!(
                "unexpected event: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
        Ok(())
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

/// An answer of [`http_request`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header lines as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "JSON body (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A plain HTTP/1.1 GET (no TLS), with `Authorization: Bearer <bearer>` when given.
pub async fn http_request(url: &str, bearer: Option<&str>) -> Result<Reply> {
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let mut reply = Reply {
        status,
        head,
        body: response[split + 4..].to_vec(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body)?;
    }
    Ok(reply)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end])?.trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A unique client id.
pub fn client_id(prefix: &str) -> String {
    unique_name(prefix)
}

pub fn port() -> Result<u16> {
    free_port()
}
