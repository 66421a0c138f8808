//! The path of one notification through a real stack: Mosquitto, Garage, PostgreSQL, RabbitMQ.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use capture_protocol::{ClipEvent, ClipEventType, Verdict};
use capture_tests::fixtures::{
    CoreSystem, Garage, Mosquitto, PgDatabase, RabbitMq, free_port, unique_name, wait_until,
};
use cloud_ingest::config::Config;
use common::binary::IngestBinary;
use common::{DEADLINE, Device, Ingest, Servers, clip, http_get, put};
use serde_json::json;

struct Stack {
    broker: Mosquitto,
    garage: Garage,
    db: PgDatabase,
    rabbit: RabbitMq,
    secrets: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Result<Stack> {
        let (broker, garage, db) =
            tokio::try_join!(Mosquitto::start(), Garage::start(), PgDatabase::create())?;
        Ok(Stack {
            broker,
            garage,
            db,
            rabbit: RabbitMq::shared(),
            secrets: tempfile::tempdir()?,
        })
    }

    fn config(&self, exchange: &str, extra_store: &str) -> Result<Config> {
        Servers {
            broker: &self.broker,
            garage: &self.garage,
            pg_url: self.db.url(),
            amqp_url: self.rabbit.url(),
            exchange,
            secrets: &self.secrets,
        }
        .config(extra_store)
    }

    async fn row_count(&self, clip_id: &str) -> Result<i64> {
        let client = self.db.connect().await?;
        Ok(client
            .query_one("SELECT count(*) FROM clips WHERE clip_id = $1", &[&clip_id])
            .await?
            .get(0))
    }
}

#[tokio::test]
async fn an_uploaded_clip_is_cataloged_announced_and_confirmed() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    let (content, mut uploaded) = clip("SO-2026-000123", 70_000);
    put(&stack.garage, &mut uploaded, content).await?;
    device.notify(&uploaded).await?;

    let (topic, confirm) = device.next_confirm().await?;
    assert_eq!(topic, "cap/test/device/pi-07/confirm");
    assert_eq!(confirm.clip_id, uploaded.clip_id);
    assert_eq!(confirm.verdict, Verdict::Accepted);

    let delivery = core.next_delivery(DEADLINE).await?;
    assert_eq!(delivery.routing_key.as_str(), "clip.completed");
    let properties = &delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/cloudevents+json")
    );
    let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
    let clip_id = uploaded.clip_id.to_string();
    assert_eq!(event["specversion"], json!("1.0"));
    assert_eq!(event["type"], json!("com.factory.capture.clip.completed"));
    assert_eq!(event["source"], json!("cloud-ingest/test"));
    assert_eq!(event["id"], json!(format!("{clip_id}:clip.completed")));
    assert_eq!(event["subject"], json!("SO-2026-000123"));
    assert_eq!(event["datacontenttype"], json!("application/json"));
    let data = &event["data"];
    assert_eq!(data["clip_id"], json!(clip_id));
    assert_eq!(data["order"], json!("SO-2026-000123"));
    assert_eq!(data["station"], json!("pack-03"));
    assert_eq!(data["camera"], json!("top"));
    assert_eq!(data["kind"], json!("video"));
    assert_eq!(data["bucket"], json!(stack.garage.bucket()));
    assert_eq!(data["key"], json!(uploaded.key));
    assert_eq!(data["size"], json!(70_000));
    assert_eq!(data["sha256"], json!(uploaded.sha256.as_str()));
    assert_eq!(data["duration_ms"], json!(1000));
    assert_eq!(data["truncated"], json!(false));
    assert_eq!(data["meta"], json!({"sku":"JERSEY-9","operator":"ana"}));
    assert!(data.get("reason").is_none());

    assert_eq!(stack.row_count(&clip_id).await?, 1);
    let db = stack.db.connect().await?;
    let unsent: i64 = db
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
        .await?
        .get(0);
    wait_until("outbox marked sent", DEADLINE, || async {
        let unsent: i64 = db
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await?
            .get(0);
        Ok((unsent == 0).then_some(()))
    })
    .await?;
    assert!(unsent <= 1);
    assert_eq!(
        ingest
            .metric("ingest_notifications_total{outcome=\"accepted\"}")
            .await?,
        1.0
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn item_scans_reach_the_catalog_the_api_and_the_event_and_old_notifications_still_work()
-> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let config = stack.config(&core.names.exchange, "")?;
    let mut ingest = Ingest::start(config.clone()).await?;
    ingest.wait_ready().await?;
    ingest.authorize(&config).await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;
    let items = json!([
        {"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"},
        {"code":"ITEM-2","at":"2026-11-23T10:00:09Z"}
    ]);

    // A new agent's notification with items, and an old agent's without the field.
    let (content, mut scanned) = clip("SO-ITEMS-1", 2000);
    scanned.items = serde_json::from_value(items.clone())?;
    put(&stack.garage, &mut scanned, content).await?;
    let (content, mut old) = clip("SO-ITEMS-1", 3000);
    put(&stack.garage, &mut old, content).await?;
    // Without items the notification is exactly what agents before them send.
    let old_payload = serde_json::to_vec(&old)?;
    assert!(!String::from_utf8_lossy(&old_payload).contains("items"));
    for (uploaded, payload) in [
        (&scanned, serde_json::to_vec(&scanned)?),
        (&old, old_payload),
    ] {
        device.publish_raw(payload).await?;
        let confirm = device.confirm_of(&uploaded.clip_id).await?;
        assert_eq!(confirm.verdict, Verdict::Accepted, "{:?}", confirm);
    }

    let mut events = Vec::new();
    for _ in 0..2 {
        let (routing_key, event) = core.next_event_as::<serde_json::Value>(DEADLINE).await?;
        assert_eq!(routing_key, "clip.completed");
        events.push(event);
    }
    let data_of = |clip: &capture_protocol::Uploaded| {
        events
            .iter()
            .find(|e| e["data"]["clip_id"] == json!(clip.clip_id.as_str()))
            .map(|e| e["data"].clone())
            .unwrap_or_default()
    };
    assert_eq!(data_of(&scanned)["items"], items);
    let old_data = data_of(&old);
    assert_eq!(old_data["clip_id"], json!(old.clip_id.as_str()));
    assert!(old_data.get("items").is_none(), "{old_data}");

    let db = stack.db.connect().await?;
    for (clip, expected) in [(&scanned, items.clone()), (&old, json!([]))] {
        let stored: String = db
            .query_one(
                "SELECT items::text FROM clips WHERE clip_id = $1",
                &[&clip.clip_id.as_str()],
            )
            .await?
            .get(0);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&stored)?,
            expected
        );
    }

    let (code, body) = ingest.get_json("/v1/orders/SO-ITEMS-1/clips").await?;
    assert_eq!(code, 200, "{body}");
    let clips = body["clips"].as_array().cloned().unwrap_or_default();
    let view = |clip: &capture_protocol::Uploaded| {
        clips
            .iter()
            .find(|c| c["clip_id"] == json!(clip.clip_id.as_str()))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(view(&scanned)["items"], items, "{body}");
    assert_eq!(view(&old)["status"], json!("accepted"), "{body}");
    assert!(view(&old).get("items").is_none(), "{body}");
    let (_, one) = ingest
        .get_json(&format!("/v1/clips/{}", scanned.clip_id))
        .await?;
    assert_eq!(one["items"], items);
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_uploads_are_rejected_and_the_service_keeps_working() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    // Object missing: notified, never uploaded.
    let (_, mut missing) = clip("SO-MISSING", 1000);
    missing.bucket = stack.garage.bucket().to_owned();
    // Size mismatch: the notification says one byte more.
    let (content, mut short) = clip("SO-SIZE", 1000);
    put(&stack.garage, &mut short, content).await?;
    short.size += 1;
    // sha256 mismatch: the object's metadata is of other content.
    let (content, mut corrupt) = clip("SO-SHA", 1000);
    put(&stack.garage, &mut corrupt, content).await?;
    corrupt.sha256 = "0".repeat(64).parse()?;
    // Wrong environment: a prod key sent to the test ingest.
    let (content, mut foreign) = clip("SO-ENV", 1000);
    put(&stack.garage, &mut foreign, content).await?;
    foreign.key = foreign.key.replacen("test/", "prod/", 1);

    let cases = [
        (&missing, "object missing"),
        (&short, "size mismatch"),
        (&corrupt, "sha256 mismatch"),
        (&foreign, "wrong env"),
    ];
    for (uploaded, expected) in cases {
        device.notify(uploaded).await?;
        let (_, confirm) = device.next_confirm().await?;
        assert_eq!(confirm.clip_id, uploaded.clip_id);
        match confirm.verdict {
            Verdict::Rejected { reason } => {
                assert!(reason.starts_with(expected), "{expected}: {reason}")
            }
            Verdict::Accepted => panic!("{expected}: accepted"),
        }
        let (routing_key, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
        assert_eq!(routing_key, "clip.rejected");
        assert_eq!(event.event_type, ClipEventType::Rejected);
        assert_eq!(event.data.clip_id, uploaded.clip_id);
        assert!(
            event
                .data
                .reason
                .as_deref()
                .unwrap_or("")
                .starts_with(expected),
            "{:?}",
            event.data.reason
        );
    }

    // Malformed JSON: recorded as poison, acknowledged, nothing else.
    device.publish_raw(b"{this is not json".to_vec()).await?;
    // Over the protocol's 64 KiB limit: refused before parsing.
    device.publish_raw(vec![b' '; 70_000]).await?;
    // And one that names its clip and device but is otherwise broken gets a rejection.
    let (_, broken) = clip("SO-BROKEN", 10);
    device
        .publish_raw(serde_json::to_vec(
            &json!({"v": 1, "clip_id": broken.clip_id, "device": "pi-07"}),
        )?)
        .await?;
    let (_, confirm) = device.next_confirm().await?;
    assert_eq!(confirm.clip_id, broken.clip_id);
    assert!(matches!(confirm.verdict, Verdict::Rejected { .. }));

    // The service keeps working: a good clip after all that is accepted.
    let (content, mut good) = clip("SO-GOOD", 5000);
    put(&stack.garage, &mut good, content).await?;
    device.notify(&good).await?;
    let (_, confirm) = device.next_confirm().await?;
    assert_eq!(confirm.clip_id, good.clip_id);
    assert_eq!(confirm.verdict, Verdict::Accepted);
    let (routing_key, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(routing_key, "clip.completed");
    assert_eq!(event.data.clip_id, good.clip_id);

    let db = stack.db.connect().await?;
    let poison: i64 = db
        .query_one("SELECT count(*) FROM poison", &[])
        .await?
        .get(0);
    assert_eq!(poison, 3);
    let rejected: i64 = db
        .query_one("SELECT count(*) FROM clips WHERE status = 'rejected'", &[])
        .await?
        .get(0);
    assert_eq!(rejected, 4);
    assert_eq!(
        ingest
            .metric("ingest_notifications_total{outcome=\"poison\"}")
            .await?,
        3.0
    );
    // Each rejection under the kind of its reason; the broken one above is poison, not here.
    for (reason, count) in [
        ("object_missing", 1.0),
        ("size_mismatch", 1.0),
        ("sha256_mismatch", 1.0),
        ("wrong_env", 1.0),
        ("sha256_missing", 0.0),
        ("invalid", 0.0),
    ] {
        assert_eq!(
            ingest
                .metric(&format!("ingest_rejections_total{{reason=\"{reason}\"}}"))
                .await?,
            count,
            "{reason}"
        );
    }
    // Four notifications went to the object store (missing, size, sha256, good).
    assert_eq!(ingest.metric("ingest_verify_seconds_count").await?, 4.0);
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_notification_delivered_three_times_gives_one_row_and_one_event_id() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    let (content, mut uploaded) = clip("SO-2026-000777", 4096);
    put(&stack.garage, &mut uploaded, content).await?;
    for _ in 0..3 {
        device.notify(&uploaded).await?;
    }
    for _ in 0..3 {
        let (_, confirm) = device.next_confirm().await?;
        assert_eq!(confirm.clip_id, uploaded.clip_id);
        assert_eq!(
            confirm.verdict,
            Verdict::Accepted,
            "every delivery is confirmed"
        );
    }
    let (_, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    let expected_id = format!("{}:clip.completed", uploaded.clip_id);
    assert_eq!(event.id, expected_id);
    // Any further event (there should be none) would carry the same id.
    core.nothing_more_within(Duration::from_secs(2)).await?;
    assert_eq!(stack.row_count(uploaded.clip_id.as_str()).await?, 1);
    let db = stack.db.connect().await?;
    let ids: Vec<String> = db
        .query("SELECT event_id FROM outbox", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [expected_id]);
    assert_eq!(
        ingest
            .metric("ingest_notifications_total{outcome=\"duplicate\"}")
            .await?,
        2.0
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn full_verification_reads_the_object_and_catches_a_lying_digest() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, r#"verify = "full""#)?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    let (content, mut honest) = clip("SO-FULL", 100_000);
    put(&stack.garage, &mut honest, content).await?;
    // Metadata and notification agree, but the bytes in the store are different ones.
    let (_, mut liar) = clip("SO-FULL", 100_000);
    let other: Vec<u8> = vec![7u8; 100_000];
    put(&stack.garage, &mut liar, other).await?;

    device.notify(&honest).await?;
    let (_, confirm) = device.next_confirm().await?;
    assert_eq!(confirm.verdict, Verdict::Accepted);
    device.notify(&liar).await?;
    let (_, confirm) = device.next_confirm().await?;
    match confirm.verdict {
        Verdict::Rejected { reason } => assert!(
            reason.starts_with("sha256 mismatch: content hashes to"),
            "{reason}"
        ),
        Verdict::Accepted => panic!("a lying digest was accepted"),
    }
    let (key, _) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(key, "clip.completed");
    let (key, _) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(key, "clip.rejected");
    ingest.stop().await?;
    Ok(())
}

/// The default verification compares the object's ETag, the store's own digest of what it
/// holds, with the one the agent computed from the bytes it sealed: an object replaced
/// behind the agent's back with one of the same size and the same `sha256` metadata is
/// rejected without reading it. A notification from an agent that sends no ETag (a rollout
/// window) still gets the size and metadata check.
#[tokio::test]
async fn an_object_replaced_with_the_same_size_and_sha256_metadata_is_rejected_by_its_etag()
-> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    let (content, mut replaced) = clip("SO-REPLACED", 100_000);
    put(&stack.garage, &mut replaced, content.clone()).await?;
    // Someone overwrites the object: same size, same metadata (put() writes the
    // notification's sha256 and names), other bytes.
    let mut other = content;
    other[50_000] ^= 0x01;
    put(&stack.garage, &mut replaced, other).await?;
    let head = stack
        .garage
        .client()
        .head_object()
        .bucket(stack.garage.bucket())
        .key(&replaced.key)
        .send()
        .await?;
    assert_eq!(head.content_length(), Some(100_000));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("sha256"))
            .map(String::as_str),
        Some(replaced.sha256.as_str()),
        "the replacement carries the notified sha256 metadata"
    );

    device.notify(&replaced).await?;
    let (_, confirm) = device.next_confirm().await?;
    assert_eq!(confirm.clip_id, replaced.clip_id);
    match confirm.verdict {
        Verdict::Rejected { reason } => {
            assert!(reason.starts_with("etag mismatch"), "{reason}")
        }
        Verdict::Accepted => panic!("a replaced object was accepted"),
    }
    let (routing_key, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(routing_key, "clip.rejected");
    assert_eq!(event.data.clip_id, replaced.clip_id);

    // The honest object of an agent from before the etag (no etag sent): accepted on size
    // and sha256 metadata.
    let (content, mut old_agent) = clip("SO-OLD-AGENT", 10_000);
    old_agent.etag = None;
    put(&stack.garage, &mut old_agent, content).await?;
    device.notify(&old_agent).await?;
    let (_, confirm) = device.next_confirm().await?;
    assert_eq!(confirm.clip_id, old_agent.clip_id);
    assert_eq!(confirm.verdict, Verdict::Accepted);
    let (routing_key, _) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(routing_key, "clip.completed");
    assert_eq!(
        ingest
            .metric("ingest_rejections_total{reason=\"etag_mismatch\"}")
            .await?,
        1.0
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_api_lists_an_orders_clips_with_presigned_urls_that_download() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let config = stack.config(&core.names.exchange, "")?;
    let mut ingest = Ingest::start(config.clone()).await?;
    ingest.wait_ready().await?;
    let (code, _) = ingest.get_json("/v1/orders/SO-API-1/clips").await?;
    assert_eq!(code, 401, "the API needs a token");
    ingest.authorize(&config).await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    // A retained station status, as an agent publishes it.
    let status = json!({"v":1,"state":"online","device":"pi-07","station":"pack-03",
        "version":"0.3.1","recording":null,"queue":{"clips":2,"bytes":1234},
        "disk_free_bytes":12000000000u64,"clock_synced":true,"at":"2026-11-23T10:00:05Z"});
    device
        .client
        .publish_retained(
            "cap/test/station/pack-03/status",
            serde_json::to_vec(&status)?,
        )
        .await?;

    let mut contents = Vec::new();
    for size in [3000, 5000] {
        let (content, mut uploaded) = clip("SO-API-1", size);
        put(&stack.garage, &mut uploaded, content.clone()).await?;
        device.notify(&uploaded).await?;
        let (_, confirm) = device.next_confirm().await?;
        assert_eq!(confirm.verdict, Verdict::Accepted);
        core.next_event_as::<ClipEvent>(DEADLINE).await?;
        contents.push((uploaded, content));
    }

    let (status_code, body) = ingest.get_json("/v1/orders/SO-API-1/clips").await?;
    assert_eq!(status_code, 200, "{body}");
    assert_eq!(body["order"], json!("SO-API-1"));
    let clips = body["clips"].as_array().cloned().unwrap_or_default();
    assert_eq!(clips.len(), 2);
    for (clip, (uploaded, content)) in clips.iter().zip(&contents) {
        assert_eq!(clip["clip_id"], json!(uploaded.clip_id.as_str()));
        assert_eq!(clip["status"], json!("accepted"));
        let url = clip["url"].as_str().unwrap_or_default();
        let (status, downloaded) = http_get(url).await?;
        assert_eq!(status, 200, "{url}");
        assert_eq!(&downloaded, content, "the presigned URL gives the object");
    }

    let one = &contents[0].0;
    let (status_code, body) = ingest
        .get_json(&format!("/v1/clips/{}", one.clip_id))
        .await?;
    assert_eq!(status_code, 200);
    assert_eq!(body["key"], json!(one.key));

    let (code, body) = ingest.get_json("/v1/orders/..%2Fetc/clips").await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], json!("bad_order"));
    let (code, body) = ingest.get_json("/v1/orders/SO-NOBODY/clips").await?;
    assert_eq!(code, 404);
    assert_eq!(body["error"]["code"], json!("not_found"));
    let (code, body) = ingest.get_json("/v1/clips/not-a-ulid").await?;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], json!("bad_clip_id"));
    let (code, _) = ingest
        .get_json("/v1/clips/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2")
        .await?;
    assert_eq!(code, 404);

    let stations = wait_until("station status in the API", DEADLINE, || async {
        let (_, body) = ingest.get_json("/v1/stations").await?;
        let list = body["stations"].as_array().cloned().unwrap_or_default();
        Ok((!list.is_empty()).then_some(list))
    })
    .await?;
    assert_eq!(stations[0]["station"], json!("pack-03"));
    assert_eq!(stations[0]["state"], json!("online"));
    assert_eq!(stations[0]["queue"]["clips"], json!(2));

    let (code, metrics) = ingest.get("/metrics").await?;
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics)?;
    assert!(metrics.contains("ingest_notifications_total{outcome=\"accepted\"} 2"));
    assert!(metrics.contains("ingest_events_published_total 2"));
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_real_binary_serves_logs_json_and_drains_on_sigterm() -> Result<()> {
    let stack = Stack::start().await?;
    let mut core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let http_port = free_port()?;
    let text = common::config_text(
        &Servers {
            broker: &stack.broker,
            garage: &stack.garage,
            pg_url: stack.db.url(),
            amqp_url: stack.rabbit.url(),
            exchange: &core.names.exchange,
            secrets: &stack.secrets,
        },
        &unique_name("ingest-bin"),
        http_port,
        "",
        "",
    )?;
    let path = stack.secrets.path().join("ingest.toml");
    std::fs::write(&path, text)?;
    let mut binary = IngestBinary::start(&path, http_port, &[]).await?;

    let mut device = Device::connect(&stack.broker, "pi-07").await?;
    let (content, mut uploaded) = clip("SO-BINARY", 2048);
    put(&stack.garage, &mut uploaded, content).await?;
    device.notify(&uploaded).await?;
    assert_eq!(device.next_confirm().await?.1.verdict, Verdict::Accepted);
    assert_eq!(
        core.next_event_as::<ClipEvent>(DEADLINE)
            .await?
            .1
            .data
            .clip_id,
        uploaded.clip_id
    );

    let status = binary.terminate().await?;
    assert!(status.success(), "{status}");
    let stdout = binary.log()?;
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every log line is JSON")?;
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in [
        "cloud ingest running",
        "clip accepted",
        "cloud ingest stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected} not in {messages:?}"
        );
    }
    Ok(())
}

/// Whether the relay has dealt with the outbox row of `event_id`: RabbitMQ returned it as
/// unroutable (the metric says so), or the row was marked sent.
async fn relay_tried(
    ingest: &Ingest,
    db: &tokio_postgres::Client,
    event_id: &str,
) -> Result<Option<()>> {
    let returned = ingest
        .metric("ingest_events_returned_total")
        .await
        .unwrap_or(0.0);
    let sent: bool = db
        .query_one(
            "SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = $1",
            &[&event_id],
        )
        .await?
        .get(0);
    Ok((returned >= 1.0 || sent).then_some(()))
}

#[tokio::test]
async fn an_event_published_before_the_core_systems_queue_is_bound_arrives_once_it_is() -> Result<()>
{
    let stack = Stack::start().await?;
    // The exchange exists (the ingest declares it) but no queue is bound to it yet.
    let names = stack.rabbit.names();
    let ingest = Ingest::start(stack.config(&names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;

    let (content, mut uploaded) = clip("SO-UNBOUND-1", 4_000);
    put(&stack.garage, &mut uploaded, content).await?;
    device.notify(&uploaded).await?;
    assert_eq!(
        device.confirm_of(&uploaded.clip_id).await?.verdict,
        Verdict::Accepted
    );
    let event_id = format!("{}:clip.completed", uploaded.clip_id);
    let db = stack.db.connect().await?;
    wait_until("the relay publishing the event", DEADLINE, || {
        relay_tried(&ingest, &db, &event_id)
    })
    .await?;

    // Nobody could receive it: it is still owed, and the metrics say why.
    let sent: bool = db
        .query_one(
            "SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = $1",
            &[&event_id],
        )
        .await?
        .get(0);
    assert!(
        !sent,
        "the event was marked sent although no queue could receive it"
    );
    let returns: i32 = db
        .query_one(
            "SELECT returns FROM outbox WHERE event_id = $1",
            &[&event_id],
        )
        .await?
        .get(0);
    assert!(returns >= 1, "returns = {returns}");
    wait_until("the unroutable gauge", DEADLINE, || async {
        let unroutable = ingest.metric("ingest_outbox_unroutable").await?;
        Ok((unroutable == 1.0).then_some(()))
    })
    .await?;

    // The core system binds its queue: the next try delivers the event, with its stable id.
    let mut core = CoreSystem::bind(&stack.rabbit, names).await?;
    let (routing_key, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
    assert_eq!(routing_key, "clip.completed");
    assert_eq!(event.id, event_id);
    wait_until("the outbox drained", DEADLINE, || async {
        let unsent: i64 = db
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await?
            .get(0);
        let unroutable = ingest.metric("ingest_outbox_unroutable").await?;
        Ok((unsent == 0 && unroutable == 0.0).then_some(()))
    })
    .await?;
    assert!(ingest.metric("ingest_events_returned_total").await? >= 1.0);
    assert_eq!(ingest.metric("ingest_events_published_total").await?, 1.0);
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sent_events_and_poison_rows_past_their_retention_are_pruned_and_unsent_events_kept()
-> Result<()> {
    let stack = Stack::start().await?;
    let names = stack.rabbit.names();
    let config = stack.config(&names.exchange, "")?;
    // The default retention: sent events 7 days, poison rows 30 days.
    cloud_ingest::migrate(&config).await?;
    let db = stack.db.connect().await?;
    for (event_id, created_days, sent_days) in [
        ("old-sent", 9, Some(8)),
        ("recent-sent", 2, Some(1)),
        ("old-unsent", 40, None),
    ] {
        db.execute(
            "INSERT INTO outbox (event_id, routing_key, body, created_at, sent_at) \
             VALUES ($1, 'clip.completed', '{}', now() - $2 * interval '1 day', \
                     now() - $3 * interval '1 day')",
            &[
                &event_id,
                &f64::from(created_days),
                &sent_days.map(f64::from),
            ],
        )
        .await?;
    }
    for (topic, days) in [("old-poison", 31.0), ("recent-poison", 1.0)] {
        db.execute(
            "INSERT INTO poison (topic, payload, error, received_at) \
             VALUES ($1, 'x', 'unreadable', now() - $2 * interval '1 day')",
            &[&topic, &days],
        )
        .await?;
    }

    let ingest = Ingest::start(config).await?;
    wait_until("rows past their retention deleted", DEADLINE, || async {
        let outbox: i64 = db
            .query_one(
                "SELECT count(*) FROM outbox WHERE event_id = 'old-sent'",
                &[],
            )
            .await?
            .get(0);
        let poison: i64 = db
            .query_one(
                "SELECT count(*) FROM poison WHERE topic = 'old-poison'",
                &[],
            )
            .await?
            .get(0);
        // The job counts what it deleted once its round is over.
        let counted = ingest
            .metric("ingest_pruned_total{table=\"outbox\"}")
            .await
            .unwrap_or(0.0)
            + ingest
                .metric("ingest_pruned_total{table=\"poison\"}")
                .await
                .unwrap_or(0.0);
        Ok((outbox == 0 && poison == 0 && counted == 2.0).then_some(()))
    })
    .await?;
    let kept: Vec<String> = db
        .query("SELECT event_id FROM outbox ORDER BY event_id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        kept,
        ["old-unsent", "recent-sent"],
        "an unsent event is never pruned"
    );
    let kept: Vec<String> = db
        .query("SELECT topic FROM poison", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(kept, ["recent-poison"]);
    assert_eq!(
        ingest
            .metric("ingest_pruned_total{table=\"outbox\"}")
            .await?,
        1.0
    );
    assert_eq!(
        ingest
            .metric("ingest_pruned_total{table=\"poison\"}")
            .await?,
        1.0
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_oversized_unreadable_payload_is_stored_cut_to_the_cap_with_its_size() -> Result<()> {
    let stack = Stack::start().await?;
    let core = CoreSystem::bind(&stack.rabbit, stack.rabbit.names()).await?;
    let ingest = Ingest::start(stack.config(&core.names.exchange, "")?).await?;
    ingest.wait_ready().await?;
    let device = Device::connect(&stack.broker, "pi-07").await?;

    // 200 kB that are not JSON; the default cap is 64 KiB.
    device.publish_raw(vec![b'#'; 200_000]).await?;
    let db = stack.db.connect().await?;
    let stored: i32 = wait_until("the poison row", DEADLINE, || async {
        let row = db
            .query_opt("SELECT octet_length(payload) FROM poison", &[])
            .await?;
        Ok(row.map(|row| row.get(0)))
    })
    .await?;
    assert_eq!(stored, 65_536, "payload stored with {stored} bytes");
    let (size, error): (i64, String) = {
        let row = db
            .query_one("SELECT payload_size, error FROM poison", &[])
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(size, 200_000);
    assert!(!error.is_empty());
    ingest.stop().await?;
    Ok(())
}
