//! Ingest throughput and latency on this machine (not a timed test; prints numbers).
//!
//! Starts Mosquitto, Garage, a fresh PostgreSQL database and uses the shared RabbitMQ (the
//! test fixtures), pre-creates N objects in Garage, runs one ingest in-process, then publishes
//! N uploaded notifications as fast as the MQTT client takes them and consumes the resulting
//! CloudEvents from a queue bound to the ingest's exchange. Reported:
//!
//! - sustained notifications/s: N / (last event received - first notification published);
//! - p50 / p99 / max latency notification published -> event received by the consumer (the
//!   whole path: MQTT, HEAD, catalog commit, outbox, relay, RabbitMQ confirm and delivery).
//!
//! Run: `cargo bench -p cloud-ingest --bench ingest -- [N] [RATE]` (default 5000, all at
//! once; with RATE, notifications are offered at RATE per second, which shows the latency of
//! a steady load rather than of draining a backlog). The publisher,
//! the consumer and the ingest share this process and the machine with the servers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use capture_protocol::{ClipEvent, ClipKind, ProtocolV1, Timestamp, Uploaded, object_key};
use capture_tests::fixtures::{Garage, Mosquitto, PgDatabase, RabbitMq, free_port, unique_name};
use cloud_ingest::config::Config;
use futures::{StreamExt, TryStreamExt};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sha2::{Digest, Sha256};

#[tokio::main]
async fn main() -> Result<()> {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = numbers.first().copied().unwrap_or(5000);
    // Optional offered rate (notifications/s); without it, all N are published at once.
    let rate = numbers.get(1).copied();
    // The fixture persists after every change (for crash tests); a production broker does not.
    let broker = Mosquitto::start_with(
        "allow_anonymous true\nautosave_on_changes false\nautosave_interval 1800\n\
         max_queued_messages 0\nmax_inflight_messages 0\n",
    )
    .await?;
    let (garage, db) = tokio::try_join!(Garage::start(), PgDatabase::create())?;
    let rabbit = RabbitMq::shared();
    let names = rabbit.names();
    let env: capture_protocol::Env = "bench".parse()?;

    // The core system's queue.
    let connection = rabbit.connect().await?;
    let channel = connection.create_channel().await?;
    names.declare(&channel, "clip.*").await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;

    // N objects, as agents would have uploaded them.
    eprintln!("creating {n} objects in Garage...");
    let content = vec![42u8; 1024];
    let sha256: capture_protocol::Sha256Hex = hex::encode(Sha256::digest(&content)).parse()?;
    // The ETag the store gives a single PutObject, as the agent sends it (verify = "etag").
    let etag = hex::encode(<md5::Md5 as md5::Digest>::digest(&content));
    let s3 = garage.client();
    let notifications: Vec<(String, Vec<u8>)> = futures::stream::iter(0..n)
        .map(|i| {
            let (s3, content, sha256, env, etag) = (&s3, &content, &sha256, &env, &etag);
            let bucket = garage.bucket().to_owned();
            async move {
                let clip_id: capture_protocol::ClipId = ulid::Ulid::new().to_string().parse()?;
                let order: capture_protocol::OrderId = format!("SO-BENCH-{}", i % 1000).parse()?;
                let started_at = Timestamp::now();
                let uploaded = Uploaded {
                    v: ProtocolV1,
                    key: object_key(env, started_at, &order, &clip_id, ClipKind::Video),
                    clip_id: clip_id.clone(),
                    device: format!("pi-{}", i % 100).parse()?,
                    station: format!("pack-{}", i % 100).parse()?,
                    camera: "top".parse()?,
                    order,
                    kind: ClipKind::Video,
                    bucket: bucket.clone(),
                    size: content.len() as u64,
                    sha256: sha256.clone(),
                    content_type: "video/mp4".to_owned(),
                    started_at,
                    ended_at: started_at,
                    duration_ms: 1000,
                    preroll_ms: 0,
                    truncated: false,
                    clock_synced: true,
                    meta: Default::default(),
                    etag: Some(etag.clone()),
                    items: Vec::new(),
                };
                let mut put = s3
                    .put_object()
                    .bucket(&bucket)
                    .key(&uploaded.key)
                    .body(ByteStream::from(content.clone()));
                for (key, value) in uploaded.object_metadata() {
                    put = put.metadata(key, value);
                }
                put.send().await?;
                anyhow::Ok((clip_id.to_string(), serde_json::to_vec(&uploaded)?))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;

    let secrets = tempfile::tempdir()?;
    let settings = garage.settings();
    let secret = secrets.path().join("s3");
    std::fs::write(&secret, &settings.secret_access_key)?;
    let http = free_port()?;
    let text = format!(
        r#"env = "bench"
[mqtt]
host = "{host}"
port = {port}
client_id = "{client}"
max_batch = 500
[store]
endpoint = "{endpoint}"
region = "{region}"
path_style = true
bucket = "{bucket}"
access_key_id = "{key}"
secret_access_key_file = "{secret}"
concurrency = 64
[postgres]
url = "{pg}"
pool_size = 8
[amqp]
url = "{amqp}"
exchange = "{exchange}"
batch = 1000
[http]
listen = "127.0.0.1:{http}"
"#,
        host = broker.host(),
        port = broker.port(),
        client = unique_name("bench-ingest"),
        endpoint = settings.endpoint,
        region = settings.region,
        bucket = garage.bucket(),
        key = settings.access_key_id,
        secret = secret.display(),
        pg = db.url(),
        amqp = rabbit.url(),
        exchange = names.exchange,
    );
    let config = Config::parse(&text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ingest = tokio::spawn(cloud_ingest::run(config, async move {
        let _ = stop_rx.await;
    }));
    // Ready when /readyz says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            if response.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "ingest not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut consumer = channel
        .basic_consume(
            names.queue.as_str().into(),
            "bench".into(),
            // Auto-ack: the core system's own acknowledgement work is not the ingest's.
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let receiver = tokio::spawn(async move {
        let mut received: HashMap<String, Instant> = HashMap::new();
        while received.len() < n {
            let delivery = tokio::time::timeout(Duration::from_secs(120), consumer.next())
                .await
                .context("no event for 120 s")?
                .context("consumer ended")??;
            let now = Instant::now();
            let event: ClipEvent = serde_json::from_slice(&delivery.data)?;
            received
                .entry(event.data.clip_id.to_string())
                .or_insert(now);
        }
        anyhow::Ok(received)
    });

    let mut options = MqttOptions::new(unique_name("bench-pub"), broker.host(), broker.port());
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 20_000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    eprintln!("publishing {n} notifications...");
    let mut published: HashMap<String, Instant> = HashMap::with_capacity(n);
    let start = Instant::now();
    for (i, (clip_id, payload)) in notifications.into_iter().enumerate() {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        published.insert(clip_id, Instant::now());
        client
            .publish(
                "cap/bench/ingest/uploaded",
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
    }
    let publish_done = start.elapsed();
    let received = receiver.await??;
    let last = received.values().max().copied().context("no events")?;
    let elapsed = last - start;

    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|(clip, at)| Some(*at - *published.get(clip)?))
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    match rate {
        Some(rate) => println!("ingest bench: {n} notifications offered at {rate}/s, 1 replica"),
        None => println!("ingest bench: {n} notifications published at once, 1 replica"),
    }
    println!("  published in      {publish_done:.2?}");
    println!("  all events in     {elapsed:.2?}");
    println!(
        "  sustained         {:.0} notifications/s",
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  latency p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), ingest).await;
    channel
        .queue_delete(names.queue.as_str().into(), Default::default())
        .await?;
    channel
        .exchange_delete(names.exchange.as_str().into(), Default::default())
        .await?;
    Ok(())
}
