//! docs/lab.md, walked through with its own files: `docs/lab/garage.toml`, `ingest.toml` and
//! `agent.toml` as they are, except for what a test must own (free ports, a temporary
//! directory for `/var/tmp/capture-lab`, a database and an exchange of its own, a private
//! Mosquitto instead of the machine's on 1883). Every replacement must find its text, so a
//! change to a file that the page's commands no longer fit fails here. The secrets are the
//! ones the page's `printf` lines write; the Garage and HTTP steps are the page's commands.
//!
//! What it proves: both configurations validate, Garage takes the page's layout, key and
//! bucket, the ingest migrates and gets ready, the station records one order from its two test
//! cameras, both clips are confirmed on the station, and the API lists them with presigned
//! URLs whose bytes have the catalogued sha256.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use capture_tests::fixtures::{
    Agent, Ingest, Mosquitto, MqttClient, PgDatabase, RabbitMq, ServerProcess, find_program,
    free_port, repo_root, unique_name, wait_until,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const LAB_DIR: &str = "/var/tmp/capture-lab";
const STATION: &str = "lab-pack-01";
const ORDER: &str = "SO-LAB-0001";

/// `text` with every `(from, to)` replaced; each `from` must occur.
fn replace_all(file: &str, text: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        ensure!(
            out.contains(from),
            "docs/lab/{file} no longer holds {from:?}: update docs/lab.md and this test together"
        );
        out = out.replace(from, to);
    }
    Ok(out)
}

/// The value a `printf VALUE > NAME` line of docs/lab.md writes.
fn printed_secret(page: &str, name: &str) -> Result<String> {
    page.lines()
        .filter_map(|line| line.trim().strip_prefix("printf "))
        .find_map(|rest| {
            let (value, target) = rest.split_once(" > ")?;
            (target.split_whitespace().next() == Some(name)).then(|| value.trim().to_owned())
        })
        .with_context(|| format!("docs/lab.md has no `printf ... > {name}` line"))
}

/// Runs a program to its end; its stdout, or an error with both streams.
async fn run(program: &Path, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}):\n{}{}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A PostgreSQL URL split as the page's ingest.toml wants it: without its password, and the
/// password (if any) for `password_file`.
fn without_password(url: &str) -> Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("a PostgreSQL URL without ://")?;
    let (userinfo, host) = rest
        .split_once('@')
        .context("a PostgreSQL URL without a user")?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    Ok((format!("{scheme}://{user}@{host}"), password.to_owned()))
}

fn write_secret(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `garage -c CONFIG ARGS...`, as the page runs it.
async fn garage_cli(garage: &Path, config: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-c", config];
    all.extend_from_slice(args);
    run(garage, &all).await
}

/// The line's command `op` for the lab's order, as the page's `mosquitto_pub` sends it; its
/// reply, which must be ok.
async fn command(station: &mut MqttClient, id: &str, op: &str) -> Result<Value> {
    station
        .publish(
            &format!("cap/dev/station/{STATION}/cmd"),
            format!(r#"{{"v":1,"id":"{id}","op":"{op}","order":"{ORDER}"}}"#),
        )
        .await?;
    let reply = station
        .next_json(
            &format!("the reply to {id}"),
            &format!("cap/dev/station/{STATION}/reply"),
            Duration::from_secs(30),
            |r| r["id"] == id,
        )
        .await?;
    ensure!(reply["ok"] == true, "{op} answered {reply}");
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_page_records_an_order_with_its_own_files() -> Result<()> {
    let docs = repo_root().join("docs");
    let page = std::fs::read_to_string(docs.join("lab.md"))?;
    let read = |name: &str| std::fs::read_to_string(docs.join("lab").join(name));
    let (garage_toml, ingest_toml, agent_toml) = (
        read("garage.toml")?,
        read("ingest.toml")?,
        read("agent.toml")?,
    );

    let dir = tempfile::Builder::new().prefix("capture-lab-").tempdir()?;
    let lab = dir
        .path()
        .to_str()
        .context("a temporary directory that is not UTF-8")?;
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets)?;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))?;
    let key_id = printed_secret(&page, "s3-key-id")?;
    let key_secret = printed_secret(&page, "s3-secret")?;
    write_secret(&secrets.join("s3-key-id"), &key_id)?;
    write_secret(&secrets.join("s3-secret"), &key_secret)?;

    let mosquitto = Mosquitto::start().await?;
    let database = PgDatabase::create().await?;
    let (pg_url, pg_password) = without_password(database.url())?;
    write_secret(&secrets.join("postgres-password"), &pg_password)?;
    let amqp = RabbitMq::shared();
    let exchange = unique_name("capture.lab.events");
    let port = |p: u16| format!("127.0.0.1:{p}");
    let (s3, rpc, admin) = (port(free_port()?), port(free_port()?), port(free_port()?));
    let (http_port, ingest_metrics, agent_metrics) = (free_port()?, free_port()?, free_port()?);
    let (http, ingest_metrics, agent_metrics) =
        (port(http_port), port(ingest_metrics), port(agent_metrics));
    let broker_port = format!("port = {}", mosquitto.port());

    // The page's files, with what this test owns instead.
    let garage_config = dir.path().join("garage.toml");
    std::fs::write(
        &garage_config,
        replace_all(
            "garage.toml",
            &garage_toml,
            &[
                (LAB_DIR, lab),
                ("127.0.0.1:3900", &s3),
                ("127.0.0.1:3901", &rpc),
                ("127.0.0.1:3903", &admin),
            ],
        )?,
    )?;
    let ingest_config = dir.path().join("ingest.toml");
    std::fs::write(
        &ingest_config,
        replace_all(
            "ingest.toml",
            &ingest_toml,
            &[
                (LAB_DIR, lab),
                ("port = 1883", &broker_port),
                ("http://127.0.0.1:3900", &format!("http://{s3}")),
                ("postgres://capture@127.0.0.1:5432/capture_lab", &pg_url),
                ("amqp://guest:guest@127.0.0.1:5672/%2f", amqp.url()),
                ("capture.lab.events", &exchange),
                ("127.0.0.1:8480", &http),
                ("127.0.0.1:9465", &ingest_metrics),
            ],
        )?,
    )?;
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        replace_all(
            "agent.toml",
            &agent_toml,
            &[
                (LAB_DIR, lab),
                ("port = 1883", &broker_port),
                ("http://127.0.0.1:3900", &format!("http://{s3}")),
                ("127.0.0.1:9464", &agent_metrics),
            ],
        )?,
    )?;
    let path = |p: &PathBuf| p.to_str().expect("UTF-8 temporary paths").to_owned();
    let (garage_config, ingest_config, agent_config) = (
        path(&garage_config),
        path(&ingest_config),
        path(&agent_config),
    );

    // 2. The object store: the page's commands.
    let garage = find_program("garage", &[])?;
    let mut garage_server = ServerProcess::new("garage", &garage, &dir.path().join("garage.log"))
        .args_from(["-c", &garage_config, "server"])
        .env("RUST_LOG", "garage=warn");
    garage_server.start()?;
    let cli = |args: &'static [&'static str]| garage_cli(&garage, &garage_config, args);
    wait_until(
        "garage answering `status`",
        Duration::from_secs(30),
        || async { Ok(cli(&["status"]).await.ok().map(drop)) },
    )
    .await?;
    let node = cli(&["node", "id", "-q"]).await?;
    let node = node.trim().split('@').next().unwrap_or_default();
    garage_cli(
        &garage,
        &garage_config,
        &["layout", "assign", "-z", "lab", "-c", "1G", node],
    )
    .await?;
    cli(&["layout", "apply", "--version", "1"]).await?;
    garage_cli(
        &garage,
        &garage_config,
        &[
            "key",
            "import",
            "--yes",
            "-n",
            "capture-lab",
            &key_id,
            &key_secret,
        ],
    )
    .await?;
    cli(&["bucket", "create", "capture-lab"]).await?;
    cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        "capture-lab",
        "--key",
        "capture-lab",
    ])
    .await?;

    // 3. The ingest.
    let ingest = Ingest::binary()?;
    let validated = run(&ingest, &["validate", "--config", &ingest_config]).await?;
    ensure!(
        validated.contains("ok"),
        "cloud-ingest validate said {validated:?}"
    );
    run(&ingest, &["migrate", "--config", &ingest_config]).await?;
    let mut ingest_server =
        ServerProcess::new("cloud-ingest", &ingest, &dir.path().join("ingest.log")).args_from([
            "run",
            "--config",
            &ingest_config,
        ]);
    ingest_server.start()?;
    let readyz = format!("http://{http}/readyz");
    let curl = find_program("curl", &[])?;
    wait_until("the ingest ready", Duration::from_secs(60), || {
        let (curl, readyz) = (curl.clone(), readyz.clone());
        async move { Ok(run(&curl, &["-sf", &readyz]).await.ok()) }
    })
    .await
    .with_context(|| ingest_server.log_tail(20))?;

    // 4. The station.
    let agent = Agent::binary()?;
    let validated = run(&agent, &["validate", "--config", &agent_config]).await?;
    ensure!(
        validated.contains("valid (device lab-pi-01, station lab-pack-01, env dev, 2 camera(s))"),
        "capture-agent validate said {validated:?}"
    );
    let mut station = MqttClient::connect(
        mosquitto.host(),
        mosquitto.port(),
        &unique_name("lab-line"),
        &[&format!("cap/dev/station/{STATION}/#")],
    )
    .await?;
    let mut agent_process =
        ServerProcess::new("capture-agent", &agent, &dir.path().join("agent.log")).args_from([
            "run",
            "--config",
            &agent_config,
        ]);
    agent_process.start()?;
    let status = format!("cap/dev/station/{STATION}/status");
    station
        .next_json(
            "the station online",
            &status,
            Duration::from_secs(60),
            |s| s["state"] == "online",
        )
        .await
        .with_context(|| agent_process.log_tail(20))?;

    // 5. One order, as the page plays the line: stopped once both cameras record it.
    let event = format!("cap/dev/station/{STATION}/event");
    let started = command(&mut station, "lab-0001", "start").await?;
    let clips: Vec<String> = started["clips"]
        .as_array()
        .context("a start reply without clips")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    ensure!(clips.len() == 2, "two cameras, two clips: {started}");
    for clip in &clips {
        station
            .next_json(
                &format!("recording_started for {clip}"),
                &event,
                Duration::from_secs(30),
                |e| e["event"] == "recording_started" && e["clip_id"] == clip.as_str(),
            )
            .await?;
    }
    command(&mut station, "lab-0002", "stop").await?;
    for clip in &clips {
        station
            .next_json(
                &format!("clip_confirmed for {clip}"),
                &event,
                Duration::from_secs(90),
                |e| e["event"] == "clip_confirmed" && e["clip_id"] == clip.as_str(),
            )
            .await
            .with_context(|| {
                format!(
                    "agent:\n{}\ningest:\n{}",
                    agent_process.log_tail(20),
                    ingest_server.log_tail(20)
                )
            })?;
    }

    // 6. The order's video, through the page's token and curl commands.
    let created = run(
        &ingest,
        &[
            "token",
            "create",
            "--config",
            &ingest_config,
            "--name",
            "lab",
            "--scope",
            "clips:read",
        ],
    )
    .await?;
    let token = created
        .lines()
        .last()
        .context("token create printed nothing")?
        .trim();
    let listed = run(
        &curl,
        &[
            "-sf",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://{http}/v1/orders/{ORDER}/clips"),
        ],
    )
    .await?;
    let listed: Value = serde_json::from_str(&listed).context("the clips of the order")?;
    let catalogued = listed["clips"].as_array().context("no clips array")?;
    ensure!(catalogued.len() == 2, "two clips catalogued: {listed}");
    for clip in catalogued {
        ensure!(
            clips.iter().any(|c| clip["clip_id"] == c.as_str()),
            "a clip the station did not record: {clip}"
        );
        let url = clip["url"]
            .as_str()
            .context("a clip without a presigned url")?;
        let file = dir.path().join("clip.mp4");
        let file_arg = path(&file);
        run(&curl, &["-sf", "-o", &file_arg, url]).await?;
        let bytes = std::fs::read(&file)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        ensure!(
            clip["sha256"] == sha256.as_str() && clip["size"] == bytes.len(),
            "the presigned bytes ({} bytes, sha256 {sha256}) are not the catalogued clip {clip}",
            bytes.len()
        );
    }

    agent_process.stop(Duration::from_secs(20))?;
    ingest_server.stop(Duration::from_secs(20))?;
    garage_server.stop(Duration::from_secs(15))?;
    Ok(())
}
