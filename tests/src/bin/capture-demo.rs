//! `capture-demo`: the whole system on one machine, for `scripts/demo`.
//!
//! Starts every real part on free ports (Mosquitto, Garage, a fresh PostgreSQL database on
//! the local server, RabbitMQ names on the local broker), then the ingest and an agent with
//! two test cameras as real processes. It plays the warehouse line (a start and a stop for a
//! sample order over MQTT) and the core system (a queue bound to the completion events),
//! prints what each side sees, downloads the clips through presigned URLs and checks them
//! against the events. Everything it started stops when it ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::presigning::PresigningConfig;
use capture_tests::fixtures::{
    Agent, AgentOptions, CoreSystem, Garage, Ingest, IngestOptions, Mosquitto, MqttClient,
    PgDatabase, RabbitMq, StoreOptions,
};
use serde_json::json;

const ENV: &str = "demo";
const STATION: &str = "pack-01";
const WAIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\ndemo failed: {e:#}");
        std::process::exit(1);
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn run() -> Result<()> {
    let out = PathBuf::from(std::env::var("DEMO_OUT").unwrap_or_else(|_| "demo-output".into()));
    std::fs::create_dir_all(&out)?;
    let seconds: u64 = std::env::var("DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);

    step("starting Mosquitto, Garage, a PostgreSQL database and RabbitMQ names (free ports)");
    let broker = Mosquitto::start().await?;
    let garage = Garage::start().await?;
    let database = PgDatabase::create().await?;
    let rabbit = RabbitMq::shared();
    let mut core = CoreSystem::bind(&rabbit, rabbit.names()).await?;
    println!("    mqtt      127.0.0.1:{}", broker.port());
    println!(
        "    s3        {} bucket {}",
        garage.endpoint(),
        garage.bucket()
    );
    println!("    postgres  database {}", database.name());
    println!("    rabbitmq  exchange {}", core.names.exchange);

    step("starting cloud-ingest");
    let settings = garage.settings();
    let ingest = Ingest::start(IngestOptions {
        env: ENV.into(),
        client_id: "ingest-demo".into(),
        mqtt_host: broker.host().into(),
        mqtt_port: broker.port(),
        store: settings.clone(),
        bucket: garage.bucket().into(),
        postgres_url: database.url().into(),
        amqp_url: rabbit.url().into(),
        exchange: core.names.exchange.clone(),
    })
    .await?;
    println!("    API on http://127.0.0.1:{}", ingest.http_port());

    step("starting capture-agent with two test cameras (top, side)");
    let mut options = AgentOptions::new(broker.host(), broker.port());
    options.env = ENV.into();
    options.cameras = vec!["top".into(), "side".into()];
    options.store = StoreOptions {
        endpoint: garage.endpoint(),
        region: settings.region.clone(),
        bucket: garage.bucket().into(),
        access_key_id: settings.access_key_id.clone(),
        secret_access_key: settings.secret_access_key.clone(),
    };
    let agent = Agent::start(options).await?;
    println!("    spool in {}", agent.spool_dir().display());

    let cmd = format!("cap/{ENV}/station/{STATION}/cmd");
    let reply_topic = format!("cap/{ENV}/station/{STATION}/reply");
    let event_topic = format!("cap/{ENV}/station/{STATION}/event");
    let status_topic = format!("cap/{ENV}/station/{STATION}/status");
    let mut line = MqttClient::connect(
        broker.host(),
        broker.port(),
        "warehouse-line",
        &[&reply_topic, &event_topic, &status_topic],
    )
    .await?;
    let status = line
        .next_json("the station online", &status_topic, WAIT, |s| {
            s["state"] == "online"
        })
        .await?;
    println!("    station status: {status}");

    let order = format!("SO-DEMO-{}", time_tag(std::time::SystemTime::now()));
    step(&format!("the line starts order {order}"));
    let start = json!({"v":1,"id":format!("{order}-start"),"op":"start","order":order,
        "meta":{"operator":"demo","sku":"TEE-RED-M"}});
    println!("    -> {start}");
    line.publish(&cmd, start.to_string()).await?;
    let reply = line
        .next_json("the start reply", &reply_topic, WAIT, |r| {
            r["id"] == start["id"]
        })
        .await?;
    println!("    <- {reply}");
    if reply["ok"] != true {
        bail!("the start was refused: {reply}");
    }
    let clips: Vec<String> = reply["clips"]
        .as_array()
        .context("clips in the reply")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();

    for second in 1..=seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        print!("\r    recording {second}/{seconds} s");
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    println!();

    step("the line stops the order");
    let stop = json!({"v":1,"id":format!("{order}-stop"),"op":"stop","order":order});
    println!("    -> {stop}");
    line.publish(&cmd, stop.to_string()).await?;
    let reply = line
        .next_json("the stop reply", &reply_topic, WAIT, |r| {
            r["id"] == stop["id"]
        })
        .await?;
    println!("    <- {reply}");

    step("the core system receives the completion events (RabbitMQ)");
    let began = Instant::now();
    let mut completed = Vec::new();
    while completed.len() < clips.len() {
        let (key, event) = core.next_event(WAIT).await?;
        println!(
            "    routing key {key}, after {:.1} s:",
            began.elapsed().as_secs_f64()
        );
        println!("{}", indent(&serde_json::to_string_pretty(&event)?));
        if key != "clip.completed" {
            bail!("expected clip.completed, got {key}");
        }
        completed.push(event);
    }

    step("the station's events for these clips (MQTT)");
    for publish in line.drain(Duration::from_secs(2)).await {
        if publish.topic == event_topic {
            println!("    {}", String::from_utf8_lossy(&publish.payload));
        }
    }

    step("objects in the store, presigned URLs, and the clips read back");
    let client = garage.client();
    for event in &completed {
        let data = &event["data"];
        let key = data["key"].as_str().context("key")?;
        let url = client
            .get_object()
            .bucket(garage.bucket())
            .key(key)
            .presigned(PresigningConfig::expires_in(Duration::from_secs(3600))?)
            .await?;
        let object = client
            .get_object()
            .bucket(garage.bucket())
            .key(key)
            .send()
            .await?;
        let bytes = object.body.collect().await?.into_bytes();
        let sha = sha256_hex(&bytes);
        if sha != data["sha256"].as_str().unwrap_or_default()
            || bytes.len() as u64 != data["size"].as_u64().unwrap_or(0)
        {
            bail!("the object {key} does not match its event");
        }
        let file = out.join(format!(
            "{}-{}.mp4",
            data["order"].as_str().unwrap_or("order"),
            data["camera"].as_str().unwrap_or("camera")
        ));
        std::fs::write(&file, &bytes)?;
        println!("    key          {key}");
        println!("    camera       {}", data["camera"]);
        println!(
            "    size, sha256 {} bytes, {sha} (matches the event)",
            bytes.len()
        );
        println!("    presigned    {}", url.uri());
        println!("    saved as     {}", file.display());
    }
    println!(
        "\n    (the presigned URLs stop working when the demo ends: Garage runs only while it runs)"
    );

    step("done; stopping everything the demo started");
    drop(line);
    drop(agent);
    drop(ingest);
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn time_tag(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
