//! The agent against the contract of its systemd unit, `systemd/capture-agent.service`.
//!
//! The build machines have no systemd as PID 1, so the test plays systemd's side: it binds
//! the `$NOTIFY_SOCKET` datagram socket, passes `WATCHDOG_USEC` and the unit's `GST_REGISTRY`
//! setting, starts the real `capture-agent run`, and stops it as the unit does (`KillSignal`,
//! then SIGKILL after `TimeoutStopSec`). The values it checks against are read from the unit
//! file itself, so the two cannot drift apart. `scripts/package` checks the unit's syntax
//! and hardening with `systemd-analyze`.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use capture_tests::fixtures::{Agent, AgentOptions, Mosquitto, MqttClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const CMD: &str = "cap/test/station/pack-01/cmd";
const REPLY: &str = "cap/test/station/pack-01/reply";
const WAIT: Duration = Duration::from_secs(40);
/// How long the agent's own shutdown may take: seal the recording, drain the outbox (3 s at
/// most), say offline. The unit's TimeoutStopSec must leave room beyond it.
const AGENT_DRAIN: Duration = Duration::from_secs(10);

/// `[Service]` settings of the unit file: key -> every value given (in order).
fn unit_settings() -> Result<HashMap<String, Vec<String>>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/capture-agent.service");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            settings
                .entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    Ok(settings)
}

fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> Result<&'a str> {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => Ok(value),
        other => bail!("the unit sets {key} {other:?}, expected exactly once"),
    }
}

/// A systemd time span as the unit writes them here: plain seconds, or `30s`, `2min`.
fn seconds(value: &str) -> Result<Duration> {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let number: u64 = number
        .parse()
        .with_context(|| format!("time span {value:?}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => number,
        "min" => number * 60,
        other => bail!("time span {value:?}: unit {other:?} not handled by this test"),
    }))
}

/// The notifications the agent sends, as systemd would receive them, with when they came.
fn notify_socket(path: &Path) -> Result<mpsc::UnboundedReceiver<(Instant, String)>> {
    let socket = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if tx.send((Instant::now(), text)).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn next_notification(
    rx: &mut mpsc::UnboundedReceiver<(Instant, String)>,
    wanted: &str,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (at, text) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("no {wanted} within {timeout:?}"))?
            .context("the notify socket closed")?;
        if text.lines().any(|line| line == wanted) {
            return Ok(at);
        }
    }
}

fn spool_json(agent: &Agent) -> Result<Value> {
    let output = Command::new(Agent::binary()?)
        .args(["spool", "--json", "--config"])
        .arg(agent.config_path())
        .output()?;
    ensure!(
        output.status.success(),
        "capture-agent spool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn clip_files(dir: &Path, clip_id: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in walk(dir)? {
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(clip_id))
        {
            found.push(entry);
        }
    }
    Ok(found)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

#[test]
fn the_unit_gives_the_agent_more_time_to_stop_than_its_drain_takes() -> Result<()> {
    let unit = unit_settings()?;
    assert_eq!(one(&unit, "Type")?, "notify");
    assert_eq!(one(&unit, "KillSignal")?, "SIGTERM");
    assert_eq!(one(&unit, "Restart")?, "always");
    let stop = seconds(one(&unit, "TimeoutStopSec")?)?;
    assert!(
        stop >= AGENT_DRAIN * 2,
        "TimeoutStopSec={stop:?} leaves too little room beyond the agent's drain ({AGENT_DRAIN:?})"
    );
    let watchdog = seconds(one(&unit, "WatchdogSec")?)?;
    assert!(
        watchdog >= Duration::from_secs(10),
        "WatchdogSec={watchdog:?}: the agent pings every half interval from a loop that may be busy for seconds"
    );
    // The settings the cameras and GStreamer need, and the ones that would break them.
    assert!(
        unit.contains_key("DeviceAllow"),
        "cameras need DeviceAllow="
    );
    assert_eq!(one(&unit, "SupplementaryGroups")?, "video");
    assert!(
        unit["Environment"]
            .iter()
            .any(|e| e.starts_with("GST_REGISTRY=/var/cache/capture-agent/")),
        "GST_REGISTRY must point into the CacheDirectory: {:?}",
        unit["Environment"]
    );
    for absent in [
        "PrivateDevices",
        "MemoryDenyWriteExecute",
        "ProcSubset",
        "PrivateUsers",
    ] {
        assert!(
            !unit.contains_key(absent),
            "{absent}= breaks cameras or GStreamer (systemd/README.md)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_systemd_runs_it_the_agent_notifies_ready_pings_the_watchdog_and_sigterm_seals_the_recording_in_time()
-> Result<()> {
    let unit = unit_settings()?;
    let stop_timeout = seconds(one(&unit, "TimeoutStopSec")?)?;
    let dir = tempfile::Builder::new().prefix("systemd-").tempdir()?;
    let socket = dir.path().join("notify.sock");
    let mut notifications = notify_socket(&socket)?;
    // The unit's registry location, moved into this test's directory.
    let registry = dir.path().join("cache/gstreamer-registry.bin");
    std::fs::create_dir_all(registry.parent().context("registry path")?)?;

    let broker = Mosquitto::start().await?;
    let mut options = AgentOptions::new(broker.host(), broker.port());
    // A short watchdog so that the test sees several pings; the unit's is 30 s.
    let watchdog = Duration::from_secs(2);
    options.env_vars = vec![
        ("NOTIFY_SOCKET".into(), socket.display().to_string()),
        ("WATCHDOG_USEC".into(), watchdog.as_micros().to_string()),
        ("GST_REGISTRY".into(), registry.display().to_string()),
    ];
    let launched = Instant::now();
    let mut agent = Agent::start(options).await?;
    let ready = next_notification(&mut notifications, "READY=1", Duration::from_secs(60)).await?;
    eprintln!("READY=1 after {:.1?}", ready - launched);
    // Ready means the cameras deliver frames and the spool is open.
    assert_eq!(
        agent.metric("capture_camera_up{camera=\"top\"}").await?,
        1.0
    );
    spool_json(&agent).context("the spool is open (capture-agent spool reads it)")?;
    assert!(
        registry.is_file(),
        "GStreamer did not write its registry to GST_REGISTRY"
    );

    // WATCHDOG=1 every half interval while every actor answers.
    let first = next_notification(&mut notifications, "WATCHDOG=1", watchdog * 2).await?;
    let second = next_notification(&mut notifications, "WATCHDOG=1", watchdog * 2).await?;
    let gap = second - first;
    assert!(
        gap >= watchdog / 4 && gap <= watchdog,
        "watchdog pings {gap:?} apart, expected about {:?}",
        watchdog / 2
    );

    // A recording is in progress when systemd stops the service.
    let mut line =
        MqttClient::connect(broker.host(), broker.port(), "line-systemd", &[REPLY]).await?;
    line.publish(
        CMD,
        json!({"v":1,"id":"sd-1","op":"start","order":"SO-SYSTEMD"}).to_string(),
    )
    .await?;
    let reply = line
        .next_json("the start reply", REPLY, WAIT, |r| r["id"] == "sd-1")
        .await?;
    assert_eq!(reply["ok"], true, "{reply}");
    let clip_id = reply["clips"][0].as_str().context("a clip id")?.to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let took = agent.terminate()?;
    let stopping =
        next_notification(&mut notifications, "STOPPING=1", Duration::from_secs(1)).await;
    eprintln!("stopped in {took:.1?}");
    assert!(stopping.is_ok(), "no STOPPING=1 on SIGTERM");
    assert!(
        took < AGENT_DRAIN,
        "the agent took {took:?} to stop, more than its drain ({AGENT_DRAIN:?}); log:\n{}",
        agent.log()
    );
    assert!(
        took < stop_timeout,
        "systemd would have killed it ({stop_timeout:?})"
    );
    assert!(
        agent.log().contains("capture agent stopped"),
        "no clean stop in the log:\n{}",
        agent.log()
    );

    // The clip that was recording is sealed (a complete file, no .part) and queued for upload.
    let spool = spool_json(&agent)?;
    let queued = spool["clips"]
        .as_array()
        .context("clips in the spool listing")?
        .iter()
        .find(|c| c["clip_id"] == clip_id.as_str())
        .with_context(|| format!("clip {clip_id} is not waiting for upload: {spool:#}"))?;
    assert_eq!(queued["state"], "sealed", "{queued}");
    assert!(queued["size"].as_u64().unwrap_or(0) > 0, "{queued}");
    let files = clip_files(agent.spool_dir(), &clip_id)?;
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "mp4")),
        "no sealed file for {clip_id}: {files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "part")),
        "a .part file is left: {files:?}"
    );
    let mp4 = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "mp4"))
        .context("the mp4")?;
    let inspect = Command::new(Agent::binary()?)
        .arg("inspect")
        .arg(mp4)
        .output()?;
    assert!(
        inspect.status.success(),
        "the sealed clip does not decode: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    Ok(())
}

/// The largest gap between consecutive times in `times` (sorted), `from` and `until`
/// included as the first and last.
fn largest_gap(from: Instant, times: &[Instant], until: Instant) -> Duration {
    let mut all: Vec<Instant> = std::iter::once(from)
        .chain(times.iter().copied().filter(|t| *t > from && *t < until))
        .chain(std::iter::once(until))
        .collect();
    all.sort();
    all.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// A long clip's seal (hashing a file of hundreds of MiB from a Pi's SD card, or remuxing
/// it) takes longer than the watchdog interval. The test cannot record for an hour, so it
/// slows the seal's read down to what a slow card gives (`CAPTURE_AGENT_SEAL_READ_BPS`): the
/// seal then lasts several watchdog intervals. systemd would kill an agent whose pings stop
/// meanwhile; the agent must keep pinging and keep answering commands while the clip seals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_longer_than_the_watchdog_interval_does_not_stop_the_pings_or_the_commands()
-> Result<()> {
    const EVENT: &str = "cap/test/station/pack-01/event";
    let dir = tempfile::Builder::new().prefix("systemd-").tempdir()?;
    let socket = dir.path().join("notify.sock");
    let mut notifications = notify_socket(&socket)?;
    let broker = Mosquitto::start().await?;
    let mut options = AgentOptions::new(broker.host(), broker.port());
    let watchdog = Duration::from_secs(2);
    // 256 KiB of clip at 32 KiB/s: a seal of about 8 s, four watchdog intervals.
    let clip_bytes: u64 = 256 << 10;
    let read_rate: u64 = 32 << 10;
    options.env_vars = vec![
        ("NOTIFY_SOCKET".into(), socket.display().to_string()),
        ("WATCHDOG_USEC".into(), watchdog.as_micros().to_string()),
        // agent/src/capture/seal.rs, SEAL_READ_BPS_VAR.
        ("CAPTURE_AGENT_SEAL_READ_BPS".into(), read_rate.to_string()),
    ];
    let mut agent = Agent::start(options).await?;
    next_notification(&mut notifications, "READY=1", Duration::from_secs(60)).await?;
    next_notification(&mut notifications, "WATCHDOG=1", watchdog * 2).await?;

    let mut line = MqttClient::connect(
        broker.host(),
        broker.port(),
        "line-long-seal",
        &[REPLY, EVENT],
    )
    .await?;
    line.publish(
        CMD,
        json!({"v":1,"id":"ls-1","op":"start","order":"SO-LONG"}).to_string(),
    )
    .await?;
    let reply = line
        .next_json("the start reply", REPLY, WAIT, |r| r["id"] == "ls-1")
        .await?;
    assert_eq!(reply["ok"], true, "{reply}");
    let clip_id = reply["clips"][0].as_str().context("a clip id")?.to_owned();
    let part = agent
        .spool_dir()
        .join("clips")
        .join(format!("{clip_id}.mp4.part"));
    capture_tests::fixtures::wait_until("a clip long enough to seal slowly", WAIT, || {
        let size = std::fs::metadata(&part).map_or(0, |m| m.len());
        async move { Ok((size >= clip_bytes).then_some(())) }
    })
    .await?;

    // Stop, then at once a ping: the ping's reply must not wait for the seal.
    let stop_sent = Instant::now();
    line.publish(
        CMD,
        json!({"v":1,"id":"ls-2","op":"stop","order":"SO-LONG"}).to_string(),
    )
    .await?;
    line.publish(CMD, json!({"v":1,"id":"ls-3","op":"ping"}).to_string())
        .await?;
    let is_ping_reply = |p: &rumqttc::Publish| {
        p.topic == REPLY
            && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|r| r["id"] == "ls-3")
    };
    let is_sealed = |p: &rumqttc::Publish| {
        p.topic == EVENT
            && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|e| {
                e["event"] == "recording_stopped" && e["clip_id"] == clip_id.as_str()
            })
    };
    let first = line
        .next_matching("the ping reply or the sealed clip", WAIT * 2, |p| {
            is_ping_reply(p) || is_sealed(p)
        })
        .await?;
    let ping_answered_first = is_ping_reply(&first);
    if ping_answered_first {
        line.next_matching("the sealed clip", WAIT * 2, is_sealed)
            .await?;
    } else {
        line.next_matching("the ping reply", WAIT, is_ping_reply)
            .await?;
    }
    let sealed_at = Instant::now();

    let mut pings = Vec::new();
    while let Ok((at, text)) = notifications.try_recv() {
        if text.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(at);
        }
    }
    let seal_took = sealed_at - stop_sent;
    let gap = largest_gap(stop_sent, &pings, sealed_at);
    eprintln!(
        "seal took {seal_took:.1?}; {} pings meanwhile, largest gap {gap:.1?}",
        pings.len()
    );
    assert!(
        seal_took > watchdog * 2,
        "the seal took {seal_took:?}: too short to test the watchdog ({watchdog:?})"
    );
    assert!(
        !agent.log().contains("withholding the watchdog ping"),
        "the agent withheld watchdog pings during the seal; log:\n{}",
        agent.log_tail(40)
    );
    assert!(
        gap <= watchdog,
        "no watchdog ping for {gap:?} during a seal of {seal_took:?}: systemd would have \
         killed the agent (WatchdogSec={watchdog:?})"
    );
    assert!(
        ping_answered_first,
        "the ping was answered only after the seal: the daemon loop waited for it"
    );
    let spool = spool_json(&agent)?;
    let sealed = spool["clips"]
        .as_array()
        .context("clips")?
        .iter()
        .find(|c| c["clip_id"] == clip_id.as_str())
        .with_context(|| format!("clip {clip_id} in {spool:#}"))?;
    assert_eq!(sealed["state"], "sealed", "{sealed}");
    agent.terminate()?;
    Ok(())
}
