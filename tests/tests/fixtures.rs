//! The fixtures work for real: each test drives a real server through the client library the
//! project uses in production, and the fault-injection tests prove that a server killed
//! mid-test comes back on the same port with its data.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use capture_tests::fixtures::{
    Garage, Mosquitto, PgDatabase, PgServer, RabbitMq, unique_name, wait_until,
};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use md5::{Digest, Md5};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);

/// An MQTT client whose event loop runs on its own task; incoming publishes arrive on a
/// channel. This is the shape the agent's MQTT link uses: the loop is never blocked.
fn mqtt_client(
    broker: &Mosquitto,
    client_id: &str,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
) {
    let mut options = MqttOptions::new(client_id, broker.host(), broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(eventloop, tx));
    (client, rx)
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<(String, Vec<u8>, bool)>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = (
                    publish.topic.clone(),
                    publish.payload.to_vec(),
                    publish.retain,
                );
                if tx.send(message).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn next_message(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
) -> Result<(String, Vec<u8>, bool)> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .context("no MQTT message within the deadline")?
        .context("the MQTT event loop ended")
}

#[tokio::test]
async fn mosquitto_delivers_a_qos1_publish_to_a_subscriber() -> Result<()> {
    let broker = Mosquitto::start().await?;
    let (subscriber, mut inbox) = mqtt_client(&broker, "fixture-sub");
    let (publisher, _) = mqtt_client(&broker, "fixture-pub");
    subscriber
        .subscribe("cap/test/station/pack-01/cmd", QoS::AtLeastOnce)
        .await?;

    // The subscription is in place once a retained probe comes back to us.
    subscriber
        .publish("cap/test/probe", QoS::AtLeastOnce, true, "probe")
        .await?;
    subscriber
        .subscribe("cap/test/probe", QoS::AtLeastOnce)
        .await?;
    let (topic, _, _) = next_message(&mut inbox).await?;
    assert_eq!(topic, "cap/test/probe");

    publisher
        .publish(
            "cap/test/station/pack-01/cmd",
            QoS::AtLeastOnce,
            false,
            r#"{"v":1,"id":"c-1","op":"ping"}"#,
        )
        .await?;
    let (topic, payload, retained) = next_message(&mut inbox).await?;
    assert_eq!(topic, "cap/test/station/pack-01/cmd");
    assert_eq!(payload, br#"{"v":1,"id":"c-1","op":"ping"}"#);
    assert!(!retained);
    Ok(())
}

#[tokio::test]
async fn mosquitto_killed_comes_back_on_the_same_port_with_its_retained_messages() -> Result<()> {
    let mut broker = Mosquitto::start().await?;
    let port = broker.port();
    let (publisher, _) = mqtt_client(&broker, "fixture-status");
    publisher
        .publish(
            "cap/test/station/pack-02/status",
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online"}"#,
        )
        .await?;
    // Persistence is written after every change: wait until the database holds the message.
    let db = broker.database_path();
    wait_until(
        "mosquitto persisting the retained message",
        DEADLINE,
        || {
            let db = db.clone();
            async move {
                let bytes = std::fs::read(&db).unwrap_or_default();
                Ok(bytes
                    .windows(b"pack-02/status".len())
                    .any(|w| w == b"pack-02/status")
                    .then_some(()))
            }
        },
    )
    .await?;

    broker.kill().await?;
    broker.restart().await?;
    assert_eq!(broker.port(), port);

    let (subscriber, mut inbox) = mqtt_client(&broker, "fixture-after-crash");
    subscriber
        .subscribe("cap/test/station/+/status", QoS::AtLeastOnce)
        .await?;
    let (topic, payload, retained) = next_message(&mut inbox).await?;
    assert_eq!(topic, "cap/test/station/pack-02/status");
    assert_eq!(payload, br#"{"state":"online"}"#);
    assert!(retained, "a retained message is delivered as retained");
    Ok(())
}

#[tokio::test]
async fn garage_serves_put_get_and_a_resumable_multipart_upload() -> Result<()> {
    let garage = Garage::start().await?;
    let s3 = garage.client();
    let bucket = garage.bucket();

    // A single PUT with Content-MD5 and user metadata, read back.
    let photo = b"\xff\xd8\xff\xe0 not really a jpeg".to_vec();
    s3.put_object()
        .bucket(bucket)
        .key("test/2026/11/23/SO-1/photo.jpg")
        .content_type("image/jpeg")
        .content_md5(content_md5(&photo))
        .metadata("order", "SO-1")
        .body(ByteStream::from(photo.clone()))
        .send()
        .await?;
    let object = s3
        .get_object()
        .bucket(bucket)
        .key("test/2026/11/23/SO-1/photo.jpg")
        .send()
        .await?;
    assert_eq!(object.content_type(), Some("image/jpeg"));
    assert_eq!(
        object
            .metadata()
            .and_then(|m| m.get("order"))
            .map(String::as_str),
        Some("SO-1")
    );
    assert_eq!(
        object.body.collect().await?.into_bytes().as_ref(),
        &photo[..]
    );

    // A multipart upload of two 5 MiB parts and a short last one; ListParts reports the
    // parts already sent, which is what a resuming uploader relies on.
    let key = "test/2026/11/23/SO-1/clip.mp4";
    let parts: Vec<Vec<u8>> = vec![vec![1u8; 5 << 20], vec![2u8; 5 << 20], vec![3u8; 1000]];
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("video/mp4")
        .send()
        .await?;
    let upload_id = upload.upload_id().context("no upload id")?.to_owned();
    let mut completed = Vec::new();
    for (index, body) in parts.iter().enumerate().take(2) {
        let number = index as i32 + 1;
        let part = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .content_md5(content_md5(body))
            .body(ByteStream::from(body.clone()))
            .send()
            .await?;
        completed.push((number, part.e_tag().context("no ETag")?.to_owned()));
    }
    let listed = s3
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .send()
        .await?;
    let listed: Vec<(i32, String)> = listed
        .parts()
        .iter()
        .map(|p| {
            (
                p.part_number().unwrap_or(0),
                p.e_tag().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, completed, "ListParts returns the parts sent so far");

    let last = s3
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .part_number(3)
        .content_md5(content_md5(&parts[2]))
        .body(ByteStream::from(parts[2].clone()))
        .send()
        .await?;
    completed.push((3, last.e_tag().context("no ETag")?.to_owned()));
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(
                    completed
                        .iter()
                        .map(|(n, etag)| {
                            CompletedPart::builder().part_number(*n).e_tag(etag).build()
                        })
                        .collect(),
                ))
                .build(),
        )
        .send()
        .await?;
    let head = s3.head_object().bucket(bucket).key(key).send().await?;
    let total: usize = parts.iter().map(Vec::len).sum();
    assert_eq!(head.content_length(), Some(total as i64));
    assert_eq!(head.content_type(), Some("video/mp4"));
    Ok(())
}

#[tokio::test]
async fn garage_rejects_a_body_whose_content_md5_does_not_match() -> Result<()> {
    let garage = Garage::start().await?;
    let result = garage
        .client()
        .put_object()
        .bucket(garage.bucket())
        .key("corrupt")
        .content_md5(content_md5(b"what we meant to send"))
        .body(ByteStream::from_static(b"what arrived"))
        .send()
        .await;
    assert!(result.is_err(), "a corrupted body must not be stored");
    let head = garage
        .client()
        .head_object()
        .bucket(garage.bucket())
        .key("corrupt")
        .send()
        .await;
    assert!(head.is_err(), "nothing was stored under the key");
    Ok(())
}

#[tokio::test]
async fn garage_killed_comes_back_on_the_same_port_with_its_objects() -> Result<()> {
    let mut garage = Garage::start().await?;
    let port = garage.s3_port();
    garage
        .client()
        .put_object()
        .bucket(garage.bucket())
        .key("survivor")
        .body(ByteStream::from_static(b"still here"))
        .send()
        .await?;

    garage.kill().await?;
    let down = garage
        .client()
        .head_object()
        .bucket(garage.bucket())
        .key("survivor")
        .send()
        .await;
    assert!(down.is_err(), "a killed Garage answers nothing");

    garage.restart().await?;
    assert_eq!(garage.s3_port(), port);
    let object = garage
        .client()
        .get_object()
        .bucket(garage.bucket())
        .key("survivor")
        .send()
        .await?;
    assert_eq!(
        object.body.collect().await?.into_bytes().as_ref(),
        b"still here"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_gives_each_test_a_database_of_its_own() -> Result<()> {
    let first = PgDatabase::create().await?;
    let second = PgDatabase::create().await?;
    assert_ne!(first.name(), second.name());

    let a = first.connect().await?;
    a.batch_execute("CREATE TABLE clips (id text PRIMARY KEY); INSERT INTO clips VALUES ('c1')")
        .await?;
    let count: i64 = a.query_one("SELECT count(*) FROM clips", &[]).await?.get(0);
    assert_eq!(count, 1);

    let b = second.connect().await?;
    let missing = b.query_one("SELECT count(*) FROM clips", &[]).await;
    assert!(missing.is_err(), "the other test's table is not visible");

    let name = first.name().to_owned();
    drop(a);
    drop(first);
    let exists: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .get(0);
    assert_eq!(exists, 0, "a dropped fixture removes its database");
    Ok(())
}

#[tokio::test]
async fn postgres_killed_mid_test_restarts_on_the_same_port_with_committed_rows() -> Result<()> {
    let mut server = PgServer::start().await?;
    let port = server.port();
    let client = server.connect().await?;
    client
        .batch_execute("CREATE TABLE outbox (id bigint PRIMARY KEY); INSERT INTO outbox VALUES (1)")
        .await?;

    server.kill().await?;
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the old connection died with the server"
    );

    server.restart().await?;
    assert_eq!(server.port(), port);
    let client = server.connect().await?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    assert_eq!(rows, 1, "a committed row survives SIGKILL");

    server.stop().await?;
    server.restart().await?;
    let rows: i64 = server
        .connect()
        .await?
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    assert_eq!(rows, 1, "and a clean restart");
    Ok(())
}

/// Publishes a persistent message and waits for the broker's confirm.
async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/cloudevents+json".into()),
        )
        .await?
        .await?;
    assert!(
        confirm.is_ack(),
        "the broker confirmed the publish: {confirm:?}"
    );
    Ok(())
}

async fn consume_one(channel: &lapin::Channel, queue: &str) -> Result<Vec<u8>> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique_name("consumer").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .context("no delivery within the deadline")?
        .context("the consumer ended")??;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(delivery.data.clone())
}

#[tokio::test]
async fn rabbitmq_confirms_a_persistent_publish_and_delivers_it() -> Result<()> {
    let broker = RabbitMq::shared();
    let names = broker.names();
    let connection = broker.connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    names.declare(&channel, "clip.*").await?;

    publish_confirmed(
        &channel,
        &names.exchange,
        "clip.completed",
        br#"{"id":"e1"}"#,
    )
    .await?;
    assert_eq!(
        consume_one(&channel, &names.queue).await?,
        br#"{"id":"e1"}"#
    );

    channel
        .exchange_delete(names.exchange.as_str().into(), Default::default())
        .await?;
    channel
        .queue_delete(names.queue.as_str().into(), Default::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn rabbitmq_killed_mid_test_restarts_on_the_same_port_with_durable_messages() -> Result<()> {
    let mut broker = RabbitMq::start().await?;
    let port = broker.port();
    let names = broker.names();
    {
        let connection = broker.connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        names.declare(&channel, "clip.*").await?;
        publish_confirmed(&channel, &names.exchange, "clip.completed", b"kept").await?;
    }

    broker.kill().await?;
    assert!(
        broker.connect().await.is_err(),
        "a killed broker refuses connections"
    );

    broker.restart().await?;
    assert_eq!(broker.port(), port);
    let connection = broker.connect().await?;
    let channel = connection.create_channel().await?;
    assert_eq!(
        consume_one(&channel, &names.queue).await?,
        b"kept",
        "a confirmed persistent message survives SIGKILL"
    );
    Ok(())
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}
