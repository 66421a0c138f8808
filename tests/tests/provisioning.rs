//! Fleet provisioning (`provisioning/provision`) for real: the script runs as an operator
//! would run it, against an OpenSSH server on 127.0.0.1 standing in for a Pi (the fixture's
//! own sshd, host key and client key), a Mosquitto that uses the password file and ACL the
//! script generates, and a Garage for the agent's store. The package it installs is built by
//! `scripts/package` from this workspace's `capture-agent` binary.
//!
//! The install test installs that package on this machine (through the SSH session, as root:
//! CI runs the tests as root), purges it at the end, and where systemd is not PID 1 starts the
//! installed binary with the installed configuration itself, as the script asks an operator to.
//!
//! The ACL test needs no SSH: `--broker-only` writes the broker's files, and real MQTT
//! clients with the generated credentials show what the broker lets each account do.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use capture_tests::fixtures::{
    Agent, Garage, Mosquitto, ServerProcess, Sshd, free_port, package_deb, repo_root,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a denied message has, after the marker that follows it, to show up anyway.
const QUIET_WINDOW: Duration = Duration::from_millis(700);

/// The inputs of one provisioning run, written into a directory of the test's own.
#[derive(Debug)]
struct FleetFiles {
    dir: tempfile::TempDir,
}

/// What the fleet configuration says about the broker and the store.
#[derive(Debug)]
struct FleetSettings {
    mqtt_port: u16,
    reload_pid: Option<u32>,
    store_endpoint: String,
    store_bucket: String,
    access_key_id: String,
    secret_access_key: String,
    package: Option<PathBuf>,
    ssh: Option<(PathBuf, PathBuf)>,
    metrics_port: u16,
    online_timeout: &'static str,
    /// Write the Prometheus target list (`[monitoring] targets_dir = "targets"`), with the
    /// metrics listening on every address as that needs.
    monitoring: bool,
}

impl FleetFiles {
    /// A directory with a private password file and an empty ACL for Mosquitto to start with.
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fleet-").tempdir()?;
        write_mode(&dir.path().join("passwd"), "", 0o600)?;
        write_mode(&dir.path().join("acl"), "", 0o644)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lines Mosquitto needs to use the files the script maintains, and the limits file
    /// it writes once it ran (what an operator's `include_dir` brings in).
    fn mosquitto_config(&self) -> String {
        let limits = std::fs::read_to_string(self.path("limits.conf")).unwrap_or_default();
        format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n{limits}",
            self.path("passwd").display(),
            self.path("acl").display()
        )
    }

    fn write_fleet(&self, s: &FleetSettings) -> Result<()> {
        write_mode(&self.path("secrets/key-id"), &s.access_key_id, 0o600)?;
        write_mode(&self.path("secrets/secret"), &s.secret_access_key, 0o600)?;
        let mut toml = String::from("state_dir = \"state\"\njobs = 2\n");
        toml += &format!("online_timeout = \"{}\"\n\n[ssh]\n", s.online_timeout);
        toml += "connect_timeout = \"5s\"\nextra_options = [\"-F\", \"/dev/null\"]\n";
        if let Some((key, known_hosts)) = &s.ssh {
            toml += &format!(
                "identity_file = \"{}\"\nknown_hosts = \"{}\"\n",
                key.display(),
                known_hosts.display()
            );
        }
        toml += "\n[package]\n";
        if let Some(deb) = &s.package {
            toml += &format!("{} = \"{}\"\n", host_arch()?, deb.display());
        }
        toml += &format!(
            r#"
[agent]
max_recording = "2m"

[disk]
max_bytes = "1GiB"
min_free_percent = 0

[metrics]
listen = "{metrics_host}:{metrics}"
{monitoring}

[camera]
resolution = "320x240"
fps = 15
bitrate = "500kbps"
preroll = "1s"
postroll = "0s"

[env.dev.broker]
host = "127.0.0.1"
port = {port}
password_file = "passwd"
acl_file = "acl"
{reload}

[env.dev.store]
endpoint = "{endpoint}"
region = "garage"
bucket = "{bucket}"
path_style = true
access_key_id_file = "secrets/key-id"
secret_access_key_file = "secrets/secret"

[[env.dev.account]]
user = "line-dev"
role = "line"

[[env.dev.account]]
user = "ingest-dev"
role = "ingest"
"#,
            metrics = s.metrics_port,
            metrics_host = if s.monitoring { "0.0.0.0" } else { "127.0.0.1" },
            monitoring = if s.monitoring {
                "[monitoring]\ntargets_dir = \"targets\"\n"
            } else {
                ""
            },
            port = s.mqtt_port,
            reload = match s.reload_pid {
                Some(pid) => format!("reload_command = [\"kill\", \"-HUP\", \"{pid}\"]"),
                None => String::new(),
            },
            endpoint = s.store_endpoint,
            bucket = s.store_bucket,
        );
        write_mode(&self.path("fleet.toml"), &toml, 0o644)
    }

    fn write_inventory(&self, rows: &[[&str; 5]]) -> Result<()> {
        let mut csv =
            String::from("# written by the provisioning test\nhost,device,station,env,cameras\n");
        for row in rows {
            csv += &row.join(",");
            csv.push('\n');
        }
        write_mode(&self.path("inventory.csv"), &csv, 0o644)
    }

    /// A generated password, read from the script's state directory.
    fn password(&self, user: &str) -> Result<String> {
        let path = self.path("state/credentials").join(user);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    fn command(&self, extra: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(repo_root().join("provisioning/provision"));
        command
            .arg("--fleet")
            .arg(self.path("fleet.toml"))
            .arg("--inventory")
            .arg(self.path("inventory.csv"))
            .args(extra)
            .kill_on_drop(true);
        command
    }

    /// Runs the script to the end; returns its exit code and everything it printed.
    async fn provision(&self, extra: &[&str]) -> Result<(i32, String)> {
        let output = tokio::time::timeout(Duration::from_secs(300), self.command(extra).output())
            .await
            .context("provisioning did not finish within 300 s")??;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text += &String::from_utf8_lossy(&output.stderr);
        Ok((output.status.code().unwrap_or(-1), text))
    }
}

fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn host_arch() -> Result<String> {
    let output = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The summary row of a host: everything after the host column.
fn summary_row<'a>(output: &'a str, host: &str) -> Result<&'a str> {
    output
        .lines()
        .rev()
        .find(|line| line.starts_with(&format!("{host} ")))
        .with_context(|| format!("no summary row for {host} in:\n{output}"))
}

/// A real MQTT client with the generated credentials, whose event loop runs on its own task;
/// publishes, SUBACKs and PUBACKs arrive on one channel in the order the broker sent them.
/// Unlike the fixtures' `MqttClient`, it reports a refused CONNECT, returns SUBACK codes and
/// waits for each PUBACK, which the ACL checks need: a denied publish is acknowledged and
/// dropped, so ordering against an authorized marker is the only way to see it.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Packet>,
    /// Publishes seen while waiting for something else.
    received: Vec<(String, String)>,
}

impl Client {
    async fn connect(port: u16, user: &str, password: &str) -> Result<Client> {
        let mut options = MqttOptions::new(
            format!("{user}-{}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_credentials(user, password);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // The first poll connects: a refused CONNECT is an error here, not in the task.
        let first = tokio::time::timeout(Duration::from_secs(10), connect(&mut eventloop))
            .await
            .with_context(|| format!("{user}: no CONNACK within 10 s"))?;
        first.with_context(|| format!("{user}: connecting"))?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(drive(eventloop, tx));
        Ok(Client {
            client,
            events,
            received: Vec::new(),
        })
    }

    async fn next(&mut self) -> Result<Packet> {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .context("no MQTT packet within 10 s")?
            .context("the MQTT connection ended")
    }

    /// Subscribes (QoS 1) and returns the SUBACK's return code.
    async fn subscribe(&mut self, topic: &str) -> Result<SubscribeReasonCode> {
        self.client.subscribe(topic, QoS::AtLeastOnce).await?;
        loop {
            match self.next().await? {
                Packet::SubAck(ack) => {
                    return ack
                        .return_codes
                        .first()
                        .copied()
                        .context("SUBACK without a return code");
                }
                Packet::Publish(p) => self.keep(&p.topic, &p.payload),
                _ => {}
            }
        }
    }

    /// Publishes (QoS 1) and waits for the PUBACK: the broker has handled the message (and,
    /// for a denied one, dropped it) before this returns.
    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await?;
        loop {
            match self.next().await? {
                Packet::PubAck(_) => return Ok(()),
                Packet::Publish(p) => self.keep(&p.topic, &p.payload),
                _ => {}
            }
        }
    }

    /// The next publish (or the oldest one kept while waiting for something else).
    async fn next_publish(&mut self) -> Result<(String, String)> {
        if !self.received.is_empty() {
            return Ok(self.received.remove(0));
        }
        loop {
            if let Packet::Publish(p) = self.next().await? {
                return Ok((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
        }
    }

    fn keep(&mut self, topic: &str, payload: &[u8]) {
        self.received.push((
            topic.to_owned(),
            String::from_utf8_lossy(payload).into_owned(),
        ));
    }

    /// Every publish up to and including the first with `marker` as payload, then whatever
    /// arrives in a short quiet window after it.
    async fn until_marker(&mut self, marker: &str) -> Result<Vec<(String, String)>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.received.iter().any(|(_, p)| p == marker) {
            ensure!(
                Instant::now() < deadline,
                "marker {marker:?} not received; got {:?}",
                self.received
            );
            if let Ok(Some(Packet::Publish(p))) =
                tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await
            {
                self.keep(&p.topic, &p.payload);
            }
        }
        let quiet_until = Instant::now() + QUIET_WINDOW;
        while let Ok(Some(packet)) =
            tokio::time::timeout_at(quiet_until.into(), self.events.recv()).await
        {
            if let Packet::Publish(p) = packet {
                self.keep(&p.topic, &p.payload);
            }
        }
        Ok(std::mem::take(&mut self.received))
    }
}

async fn connect(eventloop: &mut EventLoop) -> Result<()> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => bail!("{e}"),
        }
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Packet>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) => {
                if tx.send(packet).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn topics(messages: &[(String, String)]) -> Vec<&str> {
    messages.iter().map(|(t, _)| t.as_str()).collect()
}

#[tokio::test]
async fn a_device_account_reaches_only_its_own_station_and_device_topics() -> Result<()> {
    let fleet = FleetFiles::new()?;
    let mosquitto_port = free_port()?;
    fleet.write_fleet(&FleetSettings {
        mqtt_port: mosquitto_port,
        reload_pid: None,
        store_endpoint: "http://127.0.0.1:9".into(),
        store_bucket: "factory-media".into(),
        access_key_id: "GK0000".into(),
        secret_access_key: "not-a-real-secret".into(),
        package: None,
        ssh: None,
        metrics_port: 9464,
        online_timeout: "10s",
        monitoring: false,
    })?;
    // Hosts are never contacted with --broker-only.
    fleet.write_inventory(&[
        ["127.0.0.1:9", "pi-01", "pack-01", "dev", "top=test"],
        ["127.0.0.2:9", "pi-02", "pack-02", "dev", "top=test"],
    ])?;
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    ensure!(
        code == 0,
        "provision --broker-only exited {code}:\n{output}"
    );
    assert!(output.contains("no reload_command configured"), "{output}");
    let mut broker = Mosquitto::start_with(&fleet.mosquitto_config()).await?;
    // The fixture chose its own port; the fleet's broker port only matters to the agents.
    let port = broker.port();

    let wrong = Client::connect(port, "pi-01", "not-the-password").await;
    let refused = format!(
        "{:#}",
        wrong.err().context("a wrong password was accepted")?
    );
    assert!(
        refused.contains("NotAuthorized") || refused.contains("BadUserNamePassword"),
        "{refused}"
    );

    let mut pi01 = Client::connect(port, "pi-01", &fleet.password("pi-01")?).await?;
    let mut pi02 = Client::connect(port, "pi-02", &fleet.password("pi-02")?).await?;
    let mut line = Client::connect(port, "line-dev", &fleet.password("line-dev")?).await?;
    let mut ingest = Client::connect(port, "ingest-dev", &fleet.password("ingest-dev")?).await?;

    // What each account is there for works: the ACL is not simply "deny everything".
    let granted = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        pi01.subscribe("cap/dev/station/pack-01/cmd").await?,
        granted
    );
    assert_eq!(
        pi01.subscribe("cap/dev/device/pi-01/confirm").await?,
        granted
    );
    assert_eq!(
        pi02.subscribe("cap/dev/station/pack-02/cmd").await?,
        granted
    );
    assert_eq!(line.subscribe("cap/dev/station/+/reply").await?, granted);
    assert_eq!(line.subscribe("cap/dev/station/+/status").await?, granted);
    assert_eq!(
        ingest
            .subscribe("$share/ingest/cap/dev/ingest/uploaded")
            .await?,
        granted
    );
    line.publish("cap/dev/station/pack-01/cmd", "cmd-for-pack-01", false)
        .await?;
    ingest
        .publish("cap/dev/device/pi-01/confirm", "confirm-for-pi-01", false)
        .await?;
    pi01.publish("cap/dev/station/pack-01/status", "pi-01-online", true)
        .await?;
    pi01.publish("cap/dev/ingest/uploaded", "uploaded-by-pi-01", false)
        .await?;
    let got = pi01.until_marker("confirm-for-pi-01").await?;
    assert_eq!(
        topics(&got),
        [
            "cap/dev/station/pack-01/cmd",
            "cap/dev/device/pi-01/confirm"
        ]
    );
    assert_eq!(
        topics(&line.until_marker("pi-01-online").await?),
        ["cap/dev/station/pack-01/status"]
    );
    assert_eq!(
        topics(&ingest.until_marker("uploaded-by-pi-01").await?),
        ["cap/dev/ingest/uploaded"]
    );
    // The ingest also reads every station's events, the line's commands and the stations'
    // replies through its shared subscription (the expected clips); it may not command.
    for kind in ["event", "cmd", "reply"] {
        assert_eq!(
            ingest
                .subscribe(&format!("$share/ingest/cap/dev/station/+/{kind}"))
                .await?,
            granted
        );
    }

    // pi-01 cannot command another station, nor answer or report for it. Mosquitto drops a
    // denied publish after its PUBACK, so the proof is what the station's own readers get:
    // the authorized marker that follows, and nothing before or after it.
    pi01.publish("cap/dev/station/pack-02/cmd", "forged-cmd", false)
        .await?;
    line.publish("cap/dev/station/pack-02/cmd", "real-cmd-for-pack-02", false)
        .await?;
    let got = pi02.until_marker("real-cmd-for-pack-02").await?;
    assert_eq!(
        got,
        [(
            "cap/dev/station/pack-02/cmd".to_owned(),
            "real-cmd-for-pack-02".to_owned()
        )]
    );

    pi01.publish("cap/dev/station/pack-02/reply", "forged-reply", false)
        .await?;
    pi01.publish("cap/dev/station/pack-02/status", "forged-status", true)
        .await?;
    pi02.publish(
        "cap/dev/station/pack-02/reply",
        "real-reply-from-pack-02",
        false,
    )
    .await?;
    let got = line.until_marker("real-reply-from-pack-02").await?;
    assert_eq!(
        got,
        [(
            "cap/dev/station/pack-02/reply".to_owned(),
            "real-reply-from-pack-02".to_owned()
        )]
    );
    // The ingest got the real command and reply, not the forged ones.
    let got = ingest.until_marker("real-reply-from-pack-02").await?;
    assert_eq!(
        got,
        [
            (
                "cap/dev/station/pack-02/cmd".to_owned(),
                "real-cmd-for-pack-02".to_owned()
            ),
            (
                "cap/dev/station/pack-02/reply".to_owned(),
                "real-reply-from-pack-02".to_owned()
            )
        ]
    );

    // pi-01 cannot read pi-02's confirmations. Mosquitto's acl_file does not check the
    // SUBSCRIBE itself (the SUBACK grants it); it checks every delivery against the ACL.
    let code = pi01.subscribe("cap/dev/device/pi-02/confirm").await?;
    assert_eq!(code, SubscribeReasonCode::Success(QoS::AtLeastOnce));
    ingest
        .publish("cap/dev/device/pi-02/confirm", "confirm-for-pi-02", false)
        .await?;
    ingest
        .publish(
            "cap/dev/device/pi-01/confirm",
            "second-confirm-for-pi-01",
            false,
        )
        .await?;
    let got = pi01.until_marker("second-confirm-for-pi-01").await?;
    assert_eq!(topics(&got), ["cap/dev/device/pi-01/confirm"]);

    // `#` is granted the same way and delivers only what pi-01 may read: not another
    // station's commands, another device's confirmations, the uploaded notifications or the
    // retained status of any station (its own status is write-only).
    let code = pi01.subscribe("#").await?;
    assert_eq!(code, SubscribeReasonCode::Success(QoS::AtLeastOnce));
    line.publish("cap/dev/station/pack-02/cmd", "cmd-pack-02-again", false)
        .await?;
    ingest
        .publish("cap/dev/device/pi-02/confirm", "confirm-pi-02-again", false)
        .await?;
    pi02.publish("cap/dev/ingest/uploaded", "uploaded-by-pi-02", false)
        .await?;
    pi02.publish("cap/dev/station/pack-02/event", "event-from-pack-02", false)
        .await?;
    line.publish(
        "cap/dev/station/pack-01/cmd",
        "marker-cmd-for-pack-01",
        false,
    )
    .await?;
    let got = pi01.until_marker("marker-cmd-for-pack-01").await?;
    // Its own command arrives through both subscriptions (`cmd` and `#`), nothing else.
    assert!(
        got.iter()
            .all(|(t, p)| t == "cap/dev/station/pack-01/cmd" && p == "marker-cmd-for-pack-01"),
        "pi-01 received more than its own command through #: {got:?}"
    );
    assert!(!got.is_empty());

    // The forged retained status never replaced pack-02's: a new reader sees only the real one.
    pi02.publish("cap/dev/station/pack-02/status", "pack-02-online", true)
        .await?;
    let mut reader = Client::connect(port, "line-dev", &fleet.password("line-dev")?).await?;
    reader.subscribe("cap/dev/station/pack-02/status").await?;
    let got = reader.until_marker("pack-02-online").await?;
    assert_eq!(
        got,
        [(
            "cap/dev/station/pack-02/status".to_owned(),
            "pack-02-online".to_owned()
        )]
    );
    broker.stop().await?;
    Ok(())
}

/// The package as this machine knows it; purged (with the agent's state) when dropped, so
/// that a failed run leaves nothing behind and the next run starts from a clean machine.
#[derive(Debug)]
struct InstalledPackage;

impl InstalledPackage {
    fn purge() {
        let _ = std::process::Command::new("dpkg")
            .args(["--purge", "capture-agent"])
            .output();
        // The package keeps the spool on purge (clips may not be uploaded yet); this is the
        // test's own spool, from a previous run.
        let _ = std::fs::remove_dir_all("/var/lib/capture-agent");
        let _ = std::fs::remove_dir_all("/var/cache/capture-agent");
    }

    fn installed_version() -> Option<String> {
        let output = std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}|${Version}", "capture-agent"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (status, version) = text.split_once('|')?;
        (status == "install ok installed").then(|| version.to_owned())
    }
}

impl Drop for InstalledPackage {
    fn drop(&mut self) {
        Self::purge();
    }
}

/// Builds the .deb from this workspace's binary with scripts/package.
async fn build_package(out: &Path) -> Result<PathBuf> {
    let arch = host_arch()?;
    let binary = Agent::binary()?;
    package_deb(
        &[
            "--arch".as_ref(),
            arch.as_ref(),
            "--binary".as_ref(),
            binary.as_ref(),
        ],
        out,
    )
    .await
}

/// The content and modification time of files, to show a run changed none of them.
fn snapshot(paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, (Vec<u8>, SystemTime)>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.clone(), (bytes, std::fs::metadata(p)?.modified()?)))
        })
        .collect()
}

fn mode_and_uid(path: &str) -> Result<(u32, u32)> {
    let metadata = std::fs::metadata(path).with_context(|| format!("stat {path}"))?;
    Ok((metadata.mode() & 0o777, metadata.uid()))
}

/// The installed agent, started as its own user with the installed configuration: what the
/// script asks an operator to do where systemd is not PID 1.
fn start_installed_agent(log_dir: &Path) -> Result<ServerProcess> {
    let user = nix::unistd::User::from_name("capture-agent")?
        .context("the package did not create the capture-agent user")?;
    let mut agent = ServerProcess::new(
        "installed capture-agent",
        Path::new("/usr/bin/capture-agent"),
        &log_dir.join("agent.log"),
    )
    .args_from(["run", "--config", "/etc/capture-agent/agent.toml"])
    .env(
        "GST_REGISTRY",
        "/var/cache/capture-agent/gstreamer-registry.bin",
    )
    .env("HOME", "/var/lib/capture-agent")
    .env("CAPTURE_AGENT_LOG", "info")
    .run_as(user.uid.as_raw(), user.gid.as_raw());
    agent.start()?;
    Ok(agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_brings_a_pi_online_reports_an_unreachable_one_and_a_second_run_changes_nothing()
-> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CAPTURE_SKIP_INSTALL_TESTS").is_some() {
            eprintln!("skipped: CAPTURE_SKIP_INSTALL_TESTS is set");
            return Ok(());
        }
        bail!(
            "this test installs the capture-agent package on this machine through SSH as root: \
             run it as root (CI does), or set CAPTURE_SKIP_INSTALL_TESTS=1 to skip it"
        );
    }
    let systemd = Path::new("/run/systemd/system").exists();
    InstalledPackage::purge();
    let _installed = InstalledPackage;

    let fleet = FleetFiles::new()?;
    let garage = Garage::start().await?;
    let mut broker = Mosquitto::start_with(&fleet.mosquitto_config()).await?;
    let sshd = Sshd::start().await?;
    let deb = build_package(fleet.dir.path()).await?;
    let settings = garage.settings();
    let unreachable = format!("127.0.0.1:{}", free_port()?);
    fleet.write_fleet(&FleetSettings {
        mqtt_port: broker.port(),
        reload_pid: broker.pid(),
        store_endpoint: garage.endpoint(),
        store_bucket: garage.bucket().to_owned(),
        access_key_id: settings.access_key_id.clone(),
        secret_access_key: settings.secret_access_key.clone(),
        package: Some(deb),
        ssh: Some((sshd.client_key(), sshd.known_hosts())),
        metrics_port: free_port()?,
        online_timeout: "90s",
        monitoring: false,
    })?;
    let reachable = sshd.destination();
    fleet.write_inventory(&[
        [&reachable, "pi-01", "pack-01", "dev", "top=test"],
        [&unreachable, "pi-02", "pack-02", "dev", "top=test"],
    ])?;

    // A dry run says what it would do and does none of it.
    let (code, output) = fleet.provision(&["--dry-run"]).await?;
    assert_eq!(
        code, 1,
        "the unreachable host fails even a dry run:\n{output}"
    );
    assert!(
        summary_row(&output, &reachable)?.contains(&format!("would install {VERSION}-1")),
        "{output}"
    );
    assert!(
        summary_row(&output, &unreachable)?.contains("FAILED: unreachable"),
        "{output}"
    );
    assert!(output.contains("nothing was changed"), "{output}");
    assert!(
        !fleet.path("state").exists(),
        "a dry run generated credentials"
    );
    assert_eq!(std::fs::read_to_string(fleet.path("passwd"))?, "");
    assert_eq!(InstalledPackage::installed_version(), None);

    // The real run. Without systemd the script installs, configures and then waits for the
    // station to come online: the test starts the installed agent at that point.
    let started = Instant::now();
    let mut child = fleet
        .command(&[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut output = String::new();
    let mut agent = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(300), lines.next_line())
        .await
        .context("provisioning printed nothing for 300 s")??
    {
        if !systemd && agent.is_none() && line.contains("pi-01] waiting up to") {
            agent = Some(start_installed_agent(fleet.dir.path())?);
        }
        output += &line;
        output.push('\n');
    }
    let status = child.wait().await?;
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut rest).await?;
    output += &rest;
    let log = agent.as_ref().map(|a| a.log_tail(30)).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(1),
        "one host is unreachable:\n{output}\nagent log:\n{log}"
    );
    assert!(
        systemd || agent.is_some(),
        "the script never waited for pi-01:\n{output}"
    );
    let row = summary_row(&output, &reachable)?;
    assert!(
        row.contains(&format!("install {VERSION}-1")) && row.contains("online"),
        "{output}\nagent log:\n{log}"
    );
    let row = summary_row(&output, &unreachable)?;
    assert!(row.contains("FAILED: unreachable"), "{output}");
    assert!(
        output.contains(&format!("1 of 2 host(s) FAILED: {unreachable}")),
        "{output}"
    );
    eprintln!("provisioned in {:.1?}:\n{output}", started.elapsed());

    // Secrets: never printed, 0600 everywhere they are written.
    let state = fleet.path("state");
    assert_eq!(std::fs::metadata(&state)?.mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(state.join("credentials"))? {
        let entry = entry?;
        assert_eq!(
            entry.metadata()?.mode() & 0o777,
            0o600,
            "{:?}",
            entry.path()
        );
        let password = std::fs::read_to_string(entry.path())?;
        assert!(
            !output.contains(password.trim()),
            "{:?} was printed",
            entry.file_name()
        );
    }
    assert!(
        !output.contains(&settings.secret_access_key),
        "the S3 secret was printed"
    );
    let agent_uid = nix::unistd::User::from_name("capture-agent")?
        .context("no capture-agent user")?
        .uid
        .as_raw();
    for secret in [
        "mqtt-password",
        "obs-access-key-id",
        "obs-secret-access-key",
    ] {
        let path = format!("/etc/capture-agent/{secret}");
        assert_eq!(mode_and_uid(&path)?, (0o600, agent_uid), "{path}");
    }
    assert_eq!(mode_and_uid("/etc/capture-agent/agent.toml")?.0, 0o640);
    assert_eq!(
        std::fs::read_to_string("/etc/capture-agent/mqtt-password")?.trim(),
        fleet.password("pi-01")?
    );
    assert_eq!(
        InstalledPackage::installed_version().as_deref(),
        Some(format!("{VERSION}-1").as_str())
    );

    // The station is online, as anyone with a line account sees it.
    let mut line = Client::connect(broker.port(), "line-dev", &fleet.password("line-dev")?).await?;
    line.subscribe("cap/dev/station/pack-01/status").await?;
    let (_, status) = line.next_publish().await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(status["state"], "online", "{status}");
    assert_eq!(status["version"], VERSION, "{status}");

    // A second run changes nothing, says so, and still reports the unreachable host.
    let mut watched: Vec<PathBuf> = vec![fleet.path("passwd"), fleet.path("acl")];
    for entry in std::fs::read_dir("/etc/capture-agent")? {
        watched.push(entry?.path());
    }
    let before = snapshot(&watched)?;
    let (code, output) = fleet.provision(&[]).await?;
    assert_eq!(code, 1, "{output}");
    assert!(
        summary_row(&output, &reachable)?.contains("unchanged, online"),
        "{output}"
    );
    assert!(
        summary_row(&output, &unreachable)?.contains("FAILED: unreachable"),
        "{output}"
    );
    assert!(output.contains("nothing changed"), "{output}");
    let (code, output) = fleet.provision(&["--limit", "pi-01"]).await?;
    assert_eq!(code, 0, "{output}");
    assert!(
        !output.contains(&unreachable),
        "--limit pi-01 touched another host:\n{output}"
    );
    assert!(output.contains("nothing changed"), "{output}");
    assert_eq!(snapshot(&watched)?, before, "a second run changed a file");
    if let Some(agent) = agent.as_mut() {
        assert!(
            agent.is_running(),
            "the agent stopped:\n{}",
            agent.log_tail(30)
        );
        agent.stop(Duration::from_secs(30))?;
    }
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_inputs_are_listed_with_their_line_or_key_and_nothing_is_changed() -> Result<()> {
    let fleet = FleetFiles::new()?;
    let settings = FleetSettings {
        mqtt_port: 1883,
        reload_pid: None,
        store_endpoint: "http://127.0.0.1:9".into(),
        store_bucket: "factory-media".into(),
        access_key_id: "GK0000".into(),
        secret_access_key: "not-a-real-secret".into(),
        package: None,
        ssh: None,
        metrics_port: 9464,
        online_timeout: "10s",
        monitoring: false,
    };
    fleet.write_fleet(&settings)?;
    fleet.write_inventory(&[
        ["127.0.0.1:9", "pi-01", "pack-01", "dev", "top=test"],
        ["127.0.0.2:9", "Pi_02", "pack-02", "dev", "top=test"],
        ["127.0.0.3:9", "pi-01", "pack-03", "dev", "top=test"],
        ["127.0.0.4:9", "pi-04", "pack-01", "dev", "top=test"],
        ["127.0.0.5:9", "pi-05", "pack-05", "staging", "top=test"],
        ["127.0.0.6:9", "pi-06", "pack-06", "dev", "top"],
    ])?;
    let (code, output) = fleet.provision(&["--dry-run"]).await?;
    assert_eq!(code, 65, "{output}");
    for expected in [
        "line 4: device 'Pi_02' must match",
        "line 5: device pi-01 is already on line 3",
        "line 6: station pack-01 is already on line 3",
        "line 7: env 'staging' has no [env.staging]",
        "line 8: camera 'top': write name=source",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }

    // A secret readable by others is refused before anything happens.
    std::fs::set_permissions(
        fleet.path("secrets/secret"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    fleet.write_inventory(&[["127.0.0.1:9", "pi-01", "pack-01", "dev", "top=test"]])?;
    let (code, output) = fleet.provision(&[]).await?;
    assert_eq!(code, 78, "{output}");
    assert!(
        output.contains("env.dev.store.secret_access_key_file") && output.contains("chmod 600"),
        "{output}"
    );
    assert!(
        !fleet.path("state").exists(),
        "credentials were generated anyway"
    );
    assert_eq!(std::fs::read_to_string(fleet.path("acl"))?, "");
    Ok(())
}

#[tokio::test]
async fn the_inventory_becomes_a_prometheus_target_list_with_device_station_and_env() -> Result<()>
{
    let fleet = FleetFiles::new()?;
    let mut settings = FleetSettings {
        mqtt_port: 1883,
        reload_pid: None,
        store_endpoint: "http://127.0.0.1:9".into(),
        store_bucket: "factory-media".into(),
        access_key_id: "GK0000".into(),
        secret_access_key: "not-a-real-secret".into(),
        package: None,
        ssh: None,
        metrics_port: 9464,
        online_timeout: "10s",
        monitoring: true,
    };
    fleet.write_fleet(&settings)?;
    // Hosts are never contacted with --broker-only; the list names them as Prometheus
    // reaches them: without the SSH user and port, IPv6 in brackets.
    fleet.write_inventory(&[
        ["pi@10.20.0.11:2222", "pi-01", "pack-01", "dev", "top=test"],
        [
            "10.20.0.12",
            "pi-02",
            "pack-02",
            "dev",
            "top=test side=test",
        ],
        ["[fd00::13]:22", "pi-03", "pack-03", "dev", "top=test"],
    ])?;
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    ensure!(code == 0, "provision exited {code}:\n{output}");
    let list = fleet.path("targets/inventory.json");
    assert!(
        output.contains(&format!(
            "monitoring targets {}: wrote 3 target(s)",
            list.display()
        )),
        "{output}"
    );
    let targets: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&list)?)?;
    assert_eq!(
        targets,
        serde_json::json!([
            {"targets": ["10.20.0.11:9464"],
             "labels": {"device": "pi-01", "station": "pack-01", "env": "dev"}},
            {"targets": ["10.20.0.12:9464"],
             "labels": {"device": "pi-02", "station": "pack-02", "env": "dev"}},
            {"targets": ["[fd00::13]:9464"],
             "labels": {"device": "pi-03", "station": "pack-03", "env": "dev"}},
        ])
    );
    assert_eq!(
        std::fs::metadata(&list)?.permissions().mode() & 0o777,
        0o644,
        "Prometheus runs as another user"
    );

    // Prometheus accepts it: promtool reads every file_sd file a configuration names.
    write_mode(
        &fleet.path("prometheus.yml"),
        "scrape_configs:\n  - job_name: capture-agent\n    file_sd_configs:\n      - files: [targets/*.json]\n",
        0o644,
    )?;
    let checked = capture_tests::fixtures::promtool(
        &["check", "config", "prometheus.yml"],
        fleet.dir.path(),
    )?;
    assert!(checked.contains("SUCCESS"), "{checked}");

    // A second run changes nothing; a new Pi in the inventory is a change, shown by a dry run
    // and written by the next run.
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    ensure!(code == 0, "second run exited {code}:\n{output}");
    assert!(output.contains("monitoring targets"), "{output}");
    assert!(output.contains(": unchanged\nnothing changed"), "{output}");
    fleet.write_inventory(&[
        ["pi@10.20.0.11:2222", "pi-01", "pack-01", "dev", "top=test"],
        [
            "10.20.0.12",
            "pi-02",
            "pack-02",
            "dev",
            "top=test side=test",
        ],
        ["[fd00::13]:22", "pi-03", "pack-03", "dev", "top=test"],
        ["10.20.0.14", "pi-04", "pack-04", "dev", "top=test"],
    ])?;
    let before = std::fs::read(&list)?;
    let (code, output) = fleet.provision(&["--broker-only", "--dry-run"]).await?;
    ensure!(code == 0, "dry run exited {code}:\n{output}");
    assert!(output.contains("would write 4 target(s)"), "{output}");
    assert_eq!(std::fs::read(&list)?, before, "a dry run wrote the list");
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    ensure!(code == 0, "third run exited {code}:\n{output}");
    let targets: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&list)?)?;
    assert_eq!(targets[3]["labels"]["station"], "pack-04");

    // Metrics that only the Pi itself can reach cannot be scraped: refused before anything.
    settings.monitoring = false;
    fleet.write_fleet(&settings)?;
    let toml = std::fs::read_to_string(fleet.path("fleet.toml"))?.replace(
        "[camera]",
        "[monitoring]\ntargets_dir = \"targets\"\n\n[camera]",
    );
    write_mode(&fleet.path("fleet.toml"), &toml, 0o644)?;
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    assert_eq!(code, 78, "{output}");
    assert!(
        output.contains("monitoring.targets_dir: metrics.listen is '127.0.0.1:9464'"),
        "{output}"
    );
    Ok(())
}

/// `mosquitto_pub` as the line's integrator runs it: QoS 1, the message from a file.
fn line_publish(
    port: u16,
    password: &str,
    topic: &str,
    payload: &[u8],
) -> Result<std::process::Output> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), payload)?;
    Ok(std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "line-dev",
            "-P",
            password,
        ])
        .args(["-i", "line-integrator", "-q", "1", "-t", topic, "-f"])
        .arg(file.path())
        .output()?)
}

/// A `start` of exactly `size` bytes: its `meta` grew (a bug in the line).
fn oversized_start(id: &str, size: usize) -> Vec<u8> {
    let mut command = serde_json::json!(
        {"v":1,"id":id,"op":"start","order":"SO-BIG","meta":{"notes":""}}
    )
    .to_string()
    .into_bytes();
    let at = command.len() - 3;
    let filler = size - command.len();
    command.splice(at..at, std::iter::repeat_n(b'x', filler));
    command
}

/// The broker as provisioning configures it: a packet over its `max_packet_size` (1 MiB) is
/// refused by the broker, which disconnects the sender, and never reaches the station; one
/// over 64 KiB but under it reaches the station, which answers `bad_request` and stays
/// online; a `ping` after either is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_broker_bounds_commands_and_an_oversized_one_leaves_the_station_online()
-> Result<()> {
    let fleet = FleetFiles::new()?;
    fleet.write_fleet(&FleetSettings {
        mqtt_port: free_port()?,
        reload_pid: None,
        store_endpoint: "http://127.0.0.1:9".into(),
        store_bucket: "factory-media".into(),
        access_key_id: "GK0000".into(),
        secret_access_key: "not-a-real-secret".into(),
        package: None,
        ssh: None,
        metrics_port: 9464,
        online_timeout: "10s",
        monitoring: false,
    })?;
    fleet.write_inventory(&[["127.0.0.1:9", "pi-01", "pack-01", "dev", "top=test"]])?;
    let (code, output) = fleet.provision(&["--broker-only"]).await?;
    ensure!(
        code == 0,
        "provision --broker-only exited {code}:\n{output}"
    );
    let limits = std::fs::read_to_string(fleet.path("limits.conf"))
        .with_context(|| format!("provisioning wrote no limits file:\n{output}"))?;
    assert!(limits.contains("\nmax_packet_size 1048576\n"), "{limits}");
    let broker = Mosquitto::start_with(&fleet.mosquitto_config()).await?;

    let mut options = capture_tests::fixtures::AgentOptions::new(broker.host(), broker.port());
    options.env = "dev".into();
    options.mqtt_credentials = Some(("pi-01".into(), fleet.password("pi-01")?));
    let agent = Agent::start(options).await?;
    let line_password = fleet.password("line-dev")?;
    let mut line = Client::connect(broker.port(), "line-dev", &line_password).await?;
    line.subscribe("cap/dev/station/pack-01/reply").await?;
    let mut watcher = Client::connect(broker.port(), "line-dev", &line_password).await?;
    watcher.subscribe("cap/dev/station/pack-01/status").await?;
    let (_, status) = watcher.next_publish().await?;
    assert!(status.contains(r#""state":"online""#), "{status}");

    let cmd = "cap/dev/station/pack-01/cmd";
    let big = oversized_start("big-1", 200 << 10);
    let published = line_publish(broker.port(), &line_password, cmd, &big)?;
    ensure!(
        published.status.success(),
        "mosquitto_pub of 200 KiB: {published:?}"
    );
    let (_, reply) = line
        .next_publish()
        .await
        .with_context(|| agent.log_tail(30))?;
    let reply: serde_json::Value = serde_json::from_str(&reply)?;
    assert_eq!(reply["id"], serde_json::Value::Null, "{reply}");
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");

    let huge = oversized_start("huge-1", 2 << 20);
    let refused = line_publish(broker.port(), &line_password, cmd, &huge)?;
    assert!(
        !refused.status.success(),
        "the broker took a 2 MiB packet over its max_packet_size: {refused:?}"
    );

    let ping = serde_json::json!({"v":1,"id":"ping-1","op":"ping"}).to_string();
    let published = line_publish(broker.port(), &line_password, cmd, ping.as_bytes())?;
    ensure!(
        published.status.success(),
        "mosquitto_pub of a ping: {published:?}"
    );
    let (_, pong) = line
        .next_publish()
        .await
        .with_context(|| agent.log_tail(30))?;
    let pong: serde_json::Value = serde_json::from_str(&pong)?;
    assert_eq!(
        pong["id"], "ping-1",
        "the 2 MiB command reached the station: {pong}"
    );
    assert_eq!(pong["ok"], true, "{pong}");
    // The 2 MiB command never reached the station, and it never went offline.
    while let Ok(packet) = watcher.events.try_recv() {
        if let Packet::Publish(p) = packet {
            watcher.keep(&p.topic, &p.payload);
        }
    }
    let seen = std::mem::take(&mut watcher.received);
    assert!(
        seen.iter()
            .all(|(_, p)| !p.contains(r#""state":"offline""#)),
        "{seen:?}"
    );
    Ok(())
}
