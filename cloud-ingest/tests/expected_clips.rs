//! Expected clips against real servers (Mosquitto, Garage, PostgreSQL, RabbitMQ): the ingest
//! follows the stations' events, commands and replies and knows which clips it is owed.
//! `expected.overdue_after` is a few seconds here; the tests wait for states with deadlines.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use capture_protocol::{ClipId, OverdueEvent, Uploaded, Verdict};
use capture_tests::fixtures::{
    CoreSystem, Garage, IngestOptions, Mosquitto, MqttClient, PgDatabase, RabbitMq, free_port,
    unique_name, wait_until,
};
use cloud_ingest::config::Config;
use common::{DEADLINE, Device, ENV, Ingest, Servers, clip, http_get, put};
use serde_json::{Value, json};

struct Stack {
    broker: Mosquitto,
    /// Only for the scenarios in which clips are uploaded.
    garage: Option<Garage>,
    db: PgDatabase,
    rabbit: RabbitMq,
    secrets: tempfile::TempDir,
}

impl Stack {
    /// Mosquitto, PostgreSQL, RabbitMQ, and Garage when clips are to be uploaded.
    async fn start(with_store: bool) -> Result<Stack> {
        let garage = async {
            match with_store {
                true => Garage::start().await.map(Some),
                false => Ok(None),
            }
        };
        let (broker, garage, db) =
            tokio::try_join!(Mosquitto::start(), garage, PgDatabase::create())?;
        Ok(Stack {
            broker,
            garage,
            db,
            rabbit: RabbitMq::shared(),
            secrets: tempfile::tempdir()?,
        })
    }

    fn garage(&self) -> &Garage {
        self.garage.as_ref().expect("a stack with a store")
    }

    /// A replica whose clips are overdue after `overdue_after` and starts unanswered after 2 s.
    fn config(&self, exchange: &str, overdue_after: Duration) -> Result<Config> {
        let mut config = match &self.garage {
            Some(garage) => Servers {
                broker: &self.broker,
                garage,
                pg_url: self.db.url(),
                amqp_url: self.rabbit.url(),
                exchange,
                secrets: &self.secrets,
            }
            .config("")?,
            None => {
                // Nothing is uploaded: the store is never asked.
                let options = IngestOptions {
                    env: ENV.to_owned(),
                    client_id: unique_name("ingest"),
                    mqtt_host: self.broker.host().to_owned(),
                    mqtt_port: self.broker.port(),
                    store: capture_objstore::StoreSettings::new(
                        "http://127.0.0.1:9",
                        "garage",
                        "GK0",
                        "-",
                    )
                    .with_path_style(true),
                    bucket: "factory-media".to_owned(),
                    postgres_url: self.db.url().to_owned(),
                    amqp_url: self.rabbit.url().to_owned(),
                    exchange: exchange.to_owned(),
                };
                let secret = common::secret_file(&self.secrets, "s3-secret", "-")?;
                Config::parse(&options.config_text(free_port()?, &secret, "", ""), &[])?
            }
        };
        config.expected.overdue_after = overdue_after;
        config.expected.max_recording = Duration::from_secs(600);
        config.expected.reply_timeout = Duration::from_secs(2);
        config.expected.sweep_interval = Duration::from_millis(200);
        Ok(config)
    }

    /// An ingest with a token for every scope, ready, and the core system's queue.
    async fn ingest(&self, overdue_after: Duration) -> Result<(Ingest, CoreSystem)> {
        let core = CoreSystem::bind(&self.rabbit, self.rabbit.names()).await?;
        let config = self.config(&core.names.exchange, overdue_after)?;
        let mut ingest = Ingest::start(config.clone()).await?;
        ingest.authorize(&config).await?;
        ingest.wait_ready().await?;
        Ok((ingest, core))
    }

    async fn state(&self, clip_id: &ClipId) -> Result<Option<String>> {
        let db = self.db.connect().await?;
        Ok(db
            .query_opt(
                "SELECT state FROM expected_clips WHERE clip_id = $1",
                &[&clip_id.as_str()],
            )
            .await?
            .map(|row| row.get(0)))
    }

    async fn wait_state(&self, clip_id: &ClipId, state: &str) -> Result<()> {
        wait_until(&format!("clip {clip_id} {state}"), DEADLINE, || async {
            Ok((self.state(clip_id).await?.as_deref() == Some(state)).then_some(()))
        })
        .await
    }

    /// The states the clip entered, by the station's time, each with how often it is recorded.
    async fn transitions(&self, clip_id: &ClipId) -> Result<Vec<String>> {
        let db = self.db.connect().await?;
        let rows = db
            .query(
                "SELECT state FROM clip_transitions WHERE clip_id = $1 ORDER BY at, received_at",
                &[&clip_id.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn count(&self, sql: &str) -> Result<i64> {
        Ok(self.db.connect().await?.query_one(sql, &[]).await?.get(0))
    }
}

/// A station (its agent's events, replies and status) or the line (commands), on MQTT.
struct Sender {
    client: MqttClient,
}

impl Sender {
    async fn connect(broker: &Mosquitto) -> Result<Sender> {
        let client =
            MqttClient::connect(broker.host(), broker.port(), &unique_name("sender"), &[]).await?;
        Ok(Sender { client })
    }

    /// A clip event at `station`, `at` seconds after a fixed start (the station's clock).
    async fn event(&self, station: &str, kind: &str, clip: &Uploaded, at: u32) -> Result<()> {
        let extra = match kind {
            "recording_stopped" | "clip_uploaded" => r#","truncated":false"#,
            "clip_failed" => r#","reason":"disk""#,
            _ => "",
        };
        let payload = format!(
            r#"{{"v":1,"event":"{kind}"{extra},"clip_id":"{}","order":"{}","camera":"{}","at":"2026-11-23T10:00:{at:02}Z"}}"#,
            clip.clip_id, clip.order, clip.camera
        );
        self.raw(station, "event", payload.into_bytes()).await
    }

    async fn raw(&self, station: &str, kind: &str, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(&format!("cap/{ENV}/station/{station}/{kind}"), payload)
            .await
    }

    /// The retained status of `station`: `online` or `offline` (its last will).
    async fn status(&self, station: &str, state: &str, queued: u64) -> Result<()> {
        let status = json!({"v":1,"state":state,"device":"pi-07","station":station,
            "version":"0.3.1","recording":null,"queue":{"clips":queued,"bytes":queued * 1000},
            "disk_free_bytes":1_000_000_000u64,"clock_synced":true,"at":"2026-11-23T10:01:00Z"});
        self.client
            .publish_retained(
                &format!("cap/{ENV}/station/{station}/status"),
                serde_json::to_vec(&status)?,
            )
            .await
    }
}

/// A clip of `order` recorded at `station`.
fn clip_at(station: &str, order: &str) -> (Vec<u8>, Uploaded) {
    let (content, mut uploaded) = clip(order, 5_000);
    uploaded.station = station.parse().expect("station");
    (content, uploaded)
}

/// The next event of `routing_key` on the core system's queue, skipping others.
async fn next_event(core: &mut CoreSystem, routing_key: &str) -> Result<Value> {
    loop {
        let (key, event) = core.next_event(DEADLINE).await?;
        if key == routing_key {
            return Ok(event);
        }
    }
}

async fn overdue_gauge(ingest: &Ingest, station: &str, state: &str) -> Result<f64> {
    let sample = format!("ingest_clips_overdue{{station=\"{station}\",station_state=\"{state}\"}}");
    Ok(ingest.metric(&sample).await.unwrap_or(0.0))
}

#[tokio::test]
async fn the_normal_path_is_never_overdue_and_each_transition_is_recorded_once_in_order()
-> Result<()> {
    let stack = Stack::start(true).await?;
    let (ingest, mut core) = stack.ingest(Duration::from_secs(6)).await?;
    let station = Sender::connect(&stack.broker).await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;
    station.status("pack-03", "online", 1).await?;

    let (content, mut normal) = clip_at("pack-03", "SO-NORMAL");
    put(stack.garage(), &mut normal, content).await?;
    // Out of order and twice, as QoS 1 and reconnects allow.
    station
        .event("pack-03", "clip_uploaded", &normal, 2)
        .await?;
    station
        .event("pack-03", "recording_started", &normal, 0)
        .await?;
    station
        .event("pack-03", "recording_stopped", &normal, 1)
        .await?;
    station
        .event("pack-03", "recording_started", &normal, 0)
        .await?;
    station
        .event("pack-03", "clip_uploaded", &normal, 2)
        .await?;
    wait_until("three transitions", DEADLINE, || async {
        Ok((stack.transitions(&normal.clip_id).await?.len() == 3).then_some(()))
    })
    .await?;
    assert_eq!(
        stack.state(&normal.clip_id).await?.as_deref(),
        Some("uploaded"),
        "a late recording_started moved the clip back"
    );

    device.notify(&normal).await?;
    assert_eq!(
        device.confirm_of(&normal.clip_id).await?.verdict,
        Verdict::Accepted
    );
    stack.wait_state(&normal.clip_id, "accepted").await?;
    // A late duplicate after acceptance changes nothing.
    station
        .event("pack-03", "recording_started", &normal, 0)
        .await?;

    // A witness at another station, recorded and never uploaded: once it is overdue, the
    // normal clip has been through sweeps past its own deadline.
    let (_, witness) = clip_at("pack-09", "SO-WITNESS");
    station
        .event("pack-09", "recording_started", &witness, 3)
        .await?;
    station
        .event("pack-09", "recording_stopped", &witness, 4)
        .await?;
    let overdue = next_event(&mut core, "clip.overdue").await?;
    assert_eq!(
        overdue["data"]["clip_id"],
        json!(witness.clip_id.to_string())
    );

    assert_eq!(
        stack.transitions(&normal.clip_id).await?,
        ["recording", "recorded", "uploaded", "accepted"]
    );
    assert_eq!(
        stack.state(&normal.clip_id).await?.as_deref(),
        Some("accepted")
    );
    assert_eq!(overdue_gauge(&ingest, "pack-03", "online").await?, 0.0);
    let (status, order) = ingest.get_json("/v1/orders/SO-NORMAL/clips").await?;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["clips"][0]["state"], json!("accepted"));
    assert_eq!(order["clips"][0]["status"], json!("accepted"));
    assert_eq!(order["expected"], json!([]));
    let (status, one) = ingest
        .get_json(&format!("/v1/clips/{}", normal.clip_id))
        .await?;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["state"], json!("accepted"), "{one}");
    assert!(one["state_since"].is_string(), "{one}");
    let (_, overdue) = ingest.get_json("/v1/overdue").await?;
    let stations: Vec<&Value> = overdue["stations"]
        .as_array()
        .context("stations")?
        .iter()
        .collect();
    assert_eq!(stations.len(), 1, "{overdue}");
    assert_eq!(stations[0]["station"], json!("pack-09"));
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_clip_recorded_and_never_uploaded_becomes_overdue_once() -> Result<()> {
    let stack = Stack::start(false).await?;
    let (ingest, mut core) = stack.ingest(Duration::from_secs(2)).await?;
    let station = Sender::connect(&stack.broker).await?;
    station.status("pack-05", "online", 0).await?;

    // The spool is destroyed after recording: the clip is never uploaded.
    let (_, lost) = clip_at("pack-05", "SO-LOST");
    station
        .event("pack-05", "recording_started", &lost, 0)
        .await?;
    station
        .event("pack-05", "recording_stopped", &lost, 5)
        .await?;

    let event: OverdueEvent = serde_json::from_value(next_event(&mut core, "clip.overdue").await?)?;
    assert_eq!(event.id, format!("{}:clip.overdue", lost.clip_id));
    assert_eq!(event.source, "cloud-ingest/test");
    assert_eq!(event.data.clip_id, lost.clip_id);
    assert_eq!(event.data.state, "recorded");
    assert_eq!(event.data.station_state, "online");
    wait_until("the overdue gauge", DEADLINE, || async {
        Ok((overdue_gauge(&ingest, "pack-05", "online").await? == 1.0).then_some(()))
    })
    .await?;

    let (status, overdue) = ingest.get_json("/v1/overdue").await?;
    assert_eq!(status, 200);
    let row = &overdue["stations"][0];
    assert_eq!(row["station"], json!("pack-05"));
    assert_eq!(row["station_state"], json!("online"));
    let clip = &row["clips"][0];
    assert_eq!(clip["clip_id"], json!(lost.clip_id.to_string()));
    assert_eq!(clip["state"], json!("recorded"));
    assert_eq!(clip["overdue"], json!(true));
    assert_eq!(clip["location"]["at"], json!("station"));
    assert_eq!(clip["location"]["station_state"], json!("online"));

    let (status, order) = ingest.get_json("/v1/orders/SO-LOST/clips").await?;
    assert_eq!(status, 200, "an order known only from events is known");
    assert_eq!(order["clips"], json!([]));
    assert_eq!(
        order["expected"][0]["clip_id"],
        json!(lost.clip_id.to_string())
    );
    assert_eq!(order["expected"][0]["overdue"], json!(true));
    // The clip id of the overdue event leads to the clip, not to a 404.
    let (status, one) = ingest
        .get_json(&format!("/v1/clips/{}", lost.clip_id))
        .await?;
    assert_eq!(status, 200, "a clip known only from events is known: {one}");
    assert_eq!(one["clip_id"], json!(lost.clip_id.to_string()));
    assert_eq!(one["order"], json!("SO-LOST"));
    assert_eq!(one["state"], json!("recorded"));
    assert_eq!(one["overdue"], json!(true));
    assert_eq!(one["location"]["at"], json!("station"));
    assert_eq!(one["location"]["station"], json!("pack-05"));

    // Emitted once, however many sweeps see it overdue.
    core.nothing_more_within(Duration::from_secs(2)).await?;
    assert_eq!(
        ingest.metric("ingest_clips_overdue_found_total").await?,
        1.0
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_station_offline_with_queued_clips_is_waited_on_and_clears_when_they_arrive() -> Result<()>
{
    let stack = Stack::start(true).await?;
    let (ingest, mut core) = stack.ingest(Duration::from_secs(2)).await?;
    let station = Sender::connect(&stack.broker).await?;
    let mut device = Device::connect(&stack.broker, "pi-07").await?;
    station.status("pack-07", "online", 0).await?;

    let queued = [
        clip_at("pack-07", "SO-QUEUED"),
        clip_at("pack-07", "SO-QUEUED"),
    ];
    for (_, clip) in &queued {
        station
            .event("pack-07", "recording_started", clip, 0)
            .await?;
        station
            .event("pack-07", "recording_stopped", clip, 9)
            .await?;
    }
    // The Pi loses its network: the broker publishes its last will.
    station.status("pack-07", "offline", 2).await?;

    wait_until(
        "two clips waiting on an offline station",
        DEADLINE,
        || async { Ok((overdue_gauge(&ingest, "pack-07", "offline").await? == 2.0).then_some(())) },
    )
    .await?;
    let (_, overdue) = ingest.get_json("/v1/overdue").await?;
    let row = &overdue["stations"][0];
    assert_eq!(row["station"], json!("pack-07"));
    assert_eq!(row["station_state"], json!("offline"));
    assert_eq!(row["clips"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        row["clips"][0]["location"]["station_state"],
        json!("offline")
    );
    let event: OverdueEvent = serde_json::from_value(next_event(&mut core, "clip.overdue").await?)?;
    assert_eq!(event.data.station_state, "offline");

    // It comes back and uploads its queue.
    station.status("pack-07", "online", 2).await?;
    for (content, clip) in queued.clone() {
        let mut clip = clip;
        put(stack.garage(), &mut clip, content).await?;
        station.event("pack-07", "clip_uploaded", &clip, 20).await?;
        device.notify(&clip).await?;
        assert_eq!(
            device.confirm_of(&clip.clip_id).await?.verdict,
            Verdict::Accepted
        );
    }
    wait_until("the overdue state cleared", DEADLINE, || async {
        let (_, overdue) = ingest.get_json("/v1/overdue").await?;
        let cleared = overdue["stations"] == json!([])
            && overdue_gauge(&ingest, "pack-07", "online").await? == 0.0
            && overdue_gauge(&ingest, "pack-07", "offline").await? == 0.0;
        Ok(cleared.then_some(()))
    })
    .await?;
    let (_, order) = ingest.get_json("/v1/orders/SO-QUEUED/clips").await?;
    assert_eq!(order["expected"], json!([]));
    for clip in order["clips"].as_array().context("clips")? {
        assert_eq!(clip["state"], json!("accepted"));
    }
    for (_, clip) in &queued {
        assert_eq!(
            stack.transitions(&clip.clip_id).await?,
            ["recording", "recorded", "uploaded", "accepted"]
        );
    }
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_start_without_an_answer_from_the_station_is_reported() -> Result<()> {
    let stack = Stack::start(false).await?;
    let (ingest, _core) = stack.ingest(Duration::from_secs(60)).await?;
    let line = Sender::connect(&stack.broker).await?;

    // pack-12 answers; pack-13's answer arrives before the command (another replica, or
    // the broker's order across topics); pack-11 never answers.
    line.raw(
        "pack-12",
        "cmd",
        br#"{"v":1,"id":"c-12","op":"start","order":"SO-ANSWERED"}"#.to_vec(),
    )
    .await?;
    line.raw(
        "pack-12",
        "reply",
        br#"{"v":1,"id":"c-12","ok":true,"op":"start","order":"SO-ANSWERED","clips":[],"at":"2026-11-23T10:00:00Z"}"#.to_vec(),
    )
    .await?;
    line.raw(
        "pack-13",
        "reply",
        br#"{"v":1,"id":"c-13","ok":false,"op":"start","order":"SO-ANSWERED","error":{"code":"busy","message":"busy"}}"#.to_vec(),
    )
    .await?;
    line.raw(
        "pack-13",
        "cmd",
        br#"{"v":1,"id":"c-13","op":"start","order":"SO-ANSWERED"}"#.to_vec(),
    )
    .await?;
    line.raw(
        "pack-11",
        "cmd",
        br#"{"v":1,"id":"c-11","op":"start","order":"SO-SILENT","sent_at":"2026-11-23T10:00:00Z"}"#
            .to_vec(),
    )
    .await?;

    wait_until("the unanswered start reported", DEADLINE, || async {
        let count = ingest
            .metric("ingest_starts_unanswered_total{station=\"pack-11\"}")
            .await
            .unwrap_or(0.0);
        Ok((count == 1.0).then_some(()))
    })
    .await?;
    for answered in ["pack-12", "pack-13"] {
        let sample = format!("ingest_starts_unanswered_total{{station=\"{answered}\"}}");
        assert!(ingest.metric(&sample).await.is_err(), "{answered} reported");
    }
    let (status, order) = ingest.get_json("/v1/orders/SO-SILENT/clips").await?;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["clips"], json!([]));
    let start = &order["unanswered_starts"][0];
    assert_eq!(start["station"], json!("pack-11"));
    assert_eq!(start["command_id"], json!("c-11"));
    assert_eq!(start["station_state"], json!("unknown"));
    let (_, overdue) = ingest.get_json("/v1/overdue").await?;
    assert_eq!(overdue["stations"][0]["station"], json!("pack-11"));
    assert_eq!(
        overdue["stations"][0]["unanswered_starts"][0]["command_id"],
        json!("c-11")
    );
    assert_eq!(overdue["stations"].as_array().map(Vec::len), Some(1));
    let (status, _) = ingest.get_json("/v1/orders/SO-ANSWERED/clips").await?;
    assert_eq!(
        status, 404,
        "an answered start with no clips is nothing to show"
    );
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_abort_answered_before_its_clip_was_announced_keeps_the_clip_aborted() -> Result<()> {
    let stack = Stack::start(false).await?;
    let (ingest, _core) = stack.ingest(Duration::from_secs(60)).await?;
    let station = Sender::connect(&stack.broker).await?;

    // The reply reaches the ingest before the clip's recording_started (two replicas, or the
    // broker's order across topics).
    let (_, clip) = clip_at("pack-04", "SO-RESCAN");
    let reply = format!(
        r#"{{"v":1,"id":"c-4","ok":true,"op":"abort","order":"SO-RESCAN","clips":["{}"],"at":"2026-11-23T10:00:05Z"}}"#,
        clip.clip_id
    );
    station.raw("pack-04", "reply", reply.into_bytes()).await?;
    stack.wait_state(&clip.clip_id, "aborted").await?;
    station
        .event("pack-04", "recording_started", &clip, 0)
        .await?;
    wait_until("the late event recorded", DEADLINE, || async {
        Ok((stack.transitions(&clip.clip_id).await?.len() == 2).then_some(()))
    })
    .await?;
    assert_eq!(
        stack.state(&clip.clip_id).await?.as_deref(),
        Some("aborted")
    );
    assert_eq!(
        stack.transitions(&clip.clip_id).await?,
        ["recording", "aborted"]
    );
    let (_, order) = ingest.get_json("/v1/orders/SO-RESCAN/clips").await?;
    let expected = &order["expected"][0];
    assert_eq!(expected["state"], json!("aborted"));
    assert_eq!(
        expected["camera"],
        json!("top"),
        "the late event names the camera"
    );
    assert_eq!(expected["location"]["at"], json!("nowhere"));
    ingest.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_station_messages_are_poison_or_ignored_and_bad_ids_get_their_errors() -> Result<()> {
    let stack = Stack::start(false).await?;
    let (ingest, _core) = stack.ingest(Duration::from_secs(60)).await?;
    let station = Sender::connect(&stack.broker).await?;

    station
        .raw("pack-03", "event", b"{not json".to_vec())
        .await?;
    station
        .raw(
            "pack-03",
            "event",
            br#"{"v":1,"event":"recording_started","clip_id":"../../etc/passwd","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#.to_vec(),
        )
        .await?;
    station.raw("pack-03", "event", vec![b' '; 70_000]).await?;
    station
        .raw("pack-03", "cmd", br#"{"v":1,"op":"start"}"#.to_vec())
        .await?;
    station
        .raw("pack-03", "reply", b"\xff\xfe".to_vec())
        .await?;
    // A kind a newer agent may send: counted and ignored, not poison.
    for _ in 0..3 {
        station
            .raw(
                "pack-03",
                "event",
                br#"{"v":1,"event":"lens_cleaned","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#.to_vec(),
            )
            .await?;
    }
    let (_, marker) = clip_at("pack-03", "SO-MARKER");
    station
        .event("pack-03", "recording_started", &marker, 0)
        .await?;
    stack.wait_state(&marker.clip_id, "recording").await?;

    assert_eq!(
        stack
            .count("SELECT count(*) FROM poison WHERE topic LIKE 'cap/test/station/pack-03/%'")
            .await?,
        5
    );
    assert_eq!(stack.count("SELECT count(*) FROM expected_clips").await?, 1);
    assert_eq!(
        ingest
            .metric("ingest_station_messages_total{outcome=\"unknown_event\"}")
            .await?,
        3.0
    );
    assert_eq!(
        ingest
            .metric("ingest_station_messages_total{outcome=\"poison\"}")
            .await?,
        5.0
    );
    ingest.wait_ready().await?;

    for (path, status, code) in [
        ("/v1/orders/..%2F..%2Fetc/clips", 400, "bad_order"),
        ("/v1/orders/SO%20DROP%20TABLE/clips", 400, "bad_order"),
        ("/v1/orders/SO-NOBODY/clips", 404, "not_found"),
        ("/v1/clips/not-a-ulid", 400, "bad_clip_id"),
        ("/v1/clips/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2", 404, "not_found"),
    ] {
        let (got, body) = ingest.get_json(path).await?;
        assert_eq!(
            (got, &body["error"]["code"]),
            (status, &json!(code)),
            "{path}: {body}"
        );
    }
    let url = format!("http://127.0.0.1:{}/v1/overdue", ingest.http_port);
    let (status, _) = http_get(&url).await?;
    assert_eq!(status, 401, "GET /v1/overdue without a token");
    ingest.stop().await?;
    Ok(())
}
