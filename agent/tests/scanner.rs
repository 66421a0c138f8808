//! The packer's barcode scanner in serial mode, driving a real `capture-agent run` with a
//! videotestsrc camera against a real Mosquitto: the scanner is a pseudo-terminal whose
//! slave end the agent opens as its `[scanner]` device.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use capture_agent::spool::{self, ClipRow, ClipState, clips};
use capture_tests::fixtures::{
    Agent, AgentOptions, Garage, Mosquitto, MqttClient, StoreOptions, unique_name,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);
const CMD: &str = "cap/test/station/pack-01/cmd";
const REPLY: &str = "cap/test/station/pack-01/reply";
const EVENT: &str = "cap/test/station/pack-01/event";
const STATUS: &str = "cap/test/station/pack-01/status";
const UPLOADED: &str = "cap/test/ingest/uploaded";

/// The scanner: the master end of a pty (what the test types into) and the slave, held open.
struct Scanner {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Scanner {
    fn new() -> Scanner {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
            .expect("the pty's path");
        Scanner {
            master: File::from(pty.master),
            _slave: pty.slave,
            path,
        }
    }

    /// Scans `code`: the scanner sends it with CR LF.
    fn scan(&mut self, code: &str) {
        self.master
            .write_all(format!("{code}\r\n").as_bytes())
            .expect("the scanner writes");
    }
}

/// A broker, an agent whose scanner is `scanner`, and the line (replies and events).
async fn station(
    scanner: &Scanner,
    configure: impl FnOnce(&mut AgentOptions),
) -> (Mosquitto, Agent, MqttClient) {
    let broker = Mosquitto::start().await.expect("mosquitto");
    let mut options = AgentOptions::new(broker.host(), broker.port());
    configure(&mut options);
    let scanner_extra = std::mem::take(&mut options.extra_toml);
    options.extra_toml = format!(
        r#"
[scanner]
device = "{}"
order_pattern = "^SO-[A-Z0-9-]+$"
stop = "CTL-STOP"
cancel = "CTL-CANCEL"
{scanner_extra}"#,
        scanner.path.display()
    );
    let agent = Agent::start(options).await.expect("the agent starts");
    let line = line(&broker).await;
    let mut observer = MqttClient::connect(
        broker.host(),
        broker.port(),
        &unique_name("observer"),
        &[STATUS],
    )
    .await
    .expect("observer");
    observer
        .next_json("an online status", STATUS, WAIT, |s| s["state"] == "online")
        .await
        .expect("the agent reports online");
    (broker, agent, line)
}

async fn line(broker: &Mosquitto) -> MqttClient {
    MqttClient::connect(broker.host(), broker.port(), "line", &[REPLY, EVENT])
        .await
        .expect("the line connects")
}

async fn event(line: &mut MqttClient, kind: &str) -> Value {
    line.next_json(&format!("a {kind} event"), EVENT, WAIT, |e| {
        e["event"] == kind
    })
    .await
    .expect("the event")
}

/// Every clip row of the agent's spool (read-only, while the agent runs).
fn spool_clips(agent: &Agent) -> Vec<ClipRow> {
    let connection = spool::open_read_only(&spool::database_path(agent.spool_dir()))
        .expect("the spool opens read-only");
    let mut all = Vec::new();
    for state in ClipState::ALL {
        all.extend(clips::in_state(&connection, state, 1000).expect("clips"));
    }
    all
}

async fn wait_sealed(agent: &Agent, clip_id: &Value) -> ClipRow {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = spool_clips(agent)
            .into_iter()
            .find(|c| Some(c.clip_id.as_str()) == clip_id.as_str());
        if let Some(row) = row.filter(|r| r.state != ClipState::Recording) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clip {clip_id} not sealed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_start_mark_items_and_stop_an_order_and_bad_scans_are_refused() {
    let mut scanner = Scanner::new();
    let feedback = tempfile::tempdir().unwrap();
    let signals = feedback.path().join("signals");
    let (_broker, agent, mut line) = station(&scanner, |o| {
        let program = |word: &str| {
            format!(
                r#"["/bin/sh", "-c", "echo {word} >> {}"]"#,
                signals.display()
            )
        };
        o.extra_toml = format!(
            "feedback_ok = {}\nfeedback_error = {}\n",
            program("ok"),
            program("error")
        );
    })
    .await;

    scanner.scan("SO-S1");
    let started = event(&mut line, "scan_started").await;
    assert_eq!(started["order"], "SO-S1");
    assert_eq!(started["rescan"], false);
    assert!(started["scan_id"].as_str().unwrap().starts_with("scan-"));
    let clips = started["clips"].as_array().unwrap().clone();
    assert_eq!(clips.len(), 1);
    let recording = event(&mut line, "recording_started").await;
    assert_eq!(recording["clip_id"], clips[0]);

    // The line commands the same order a moment later: one recording, the same clip.
    line.publish(
        CMD,
        json!({"v":1,"id":"l-1","op":"start","order":"SO-S1"}).to_string(),
    )
    .await
    .unwrap();
    let reply = line
        .next_json("the reply to l-1", REPLY, WAIT, |r| r["id"] == "l-1")
        .await
        .unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["clips"], json!(clips));

    scanner.scan("4006381333931");
    let item = event(&mut line, "item_scanned").await;
    assert_eq!(item["code"], "4006381333931");
    assert_eq!(item["order"], "SO-S1");
    assert_eq!(item["clips"], json!(clips));

    scanner.scan("CTL-STOP");
    let stopped = event(&mut line, "scan_stopped").await;
    assert_eq!(stopped["order"], "SO-S1");
    assert_eq!(stopped["idle"], false);
    let row = wait_sealed(&agent, &clips[0]).await;
    assert_eq!(row.state, ClipState::Sealed);
    assert!(!row.truncated);
    assert_eq!(
        spool_clips(&agent)
            .iter()
            .filter(|c| c.order == "SO-S1")
            .count(),
        1,
        "one recording for the scan and the command"
    );

    scanner.scan("SO-1\u{1b}[2J");
    let refused = event(&mut line, "scan_refused").await;
    assert_eq!(refused["reason"], "control_characters");
    assert_eq!(refused["code"], "SO-1\\u{1b}[2J");
    scanner.scan("CTL-STOP");
    let refused = event(&mut line, "scan_refused").await;
    assert_eq!(refused["reason"], "not_recording");
    scanner.scan(&"9".repeat(100));
    let refused = event(&mut line, "scan_refused").await;
    assert_eq!(refused["reason"], "too_long");
    assert_eq!(spool_clips(&agent).len(), 1, "refused scans start nothing");
    // The packer heard three good scans and three bad ones.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let heard = std::fs::read_to_string(&signals).unwrap_or_default();
        let count = |word: &str| heard.lines().filter(|l| *l == word).count();
        if (count("ok"), count("error")) == (3, 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "feedback signals: {heard:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_scans_during_a_recording_are_kept_with_its_clip_and_carried_by_its_uploaded_notification()
 {
    let mut scanner = Scanner::new();
    let garage = Garage::start().await.expect("garage");
    let settings = garage.settings();
    let (broker, agent, mut line) = station(&scanner, |o| {
        o.store = StoreOptions {
            endpoint: garage.endpoint(),
            region: settings.region.clone(),
            bucket: garage.bucket().into(),
            access_key_id: settings.access_key_id.clone(),
            secret_access_key: settings.secret_access_key.clone(),
        };
    })
    .await;
    let mut ingest = MqttClient::connect(
        broker.host(),
        broker.port(),
        &unique_name("ingest"),
        &[UPLOADED],
    )
    .await
    .expect("the ingest's observer connects");

    scanner.scan("SO-ITEMS");
    let started = event(&mut line, "scan_started").await;
    let clip_id = started["clips"][0].clone();
    let mut scanned = Vec::new();
    for code in ["4006381333931", "ITEM-2"] {
        scanner.scan(code);
        let item = event(&mut line, "item_scanned").await;
        assert_eq!(item["code"], code);
        scanned.push(json!({"code": code, "at": item["at"]}));
    }
    scanner.scan("CTL-STOP");
    event(&mut line, "scan_stopped").await;

    let row = wait_sealed(&agent, &clip_id).await;
    let kept: Value = serde_json::from_str(row.items.as_deref().expect("items in the spool"))
        .expect("the spool's items are JSON");
    assert_eq!(kept, json!(scanned));
    let notification = ingest
        .next_json("the clip's uploaded notification", UPLOADED, WAIT, |n| {
            n["clip_id"] == clip_id
        })
        .await
        .expect("the clip is uploaded and announced");
    assert_eq!(notification["order"], "SO-ITEMS");
    assert_eq!(notification["items"], json!(scanned), "{notification}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_during_a_broker_outage_are_recorded_and_published_in_order_once_it_is_back() {
    let mut scanner = Scanner::new();
    let (mut broker, agent, line) = station(&scanner, |_| {}).await;
    drop(line);

    broker.stop().await.expect("stop mosquitto");
    scanner.scan("SO-OUT1");
    scanner.scan("ITEM-1");
    scanner.scan("ITEM-2");
    scanner.scan("CTL-STOP");
    // The station records and seals while the broker is down.
    let deadline = tokio::time::Instant::now() + WAIT;
    let clip = loop {
        let sealed = spool_clips(&agent)
            .into_iter()
            .find(|c| c.order == "SO-OUT1" && c.state == ClipState::Sealed);
        if let Some(clip) = sealed {
            break clip;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sealed clip");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    broker.restart().await.expect("restart mosquitto");
    let mut line = self::line(&broker).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let publish = line
            .next_matching("the station's events", WAIT, |p| p.topic == EVENT)
            .await
            .expect("the events arrive after the outage");
        let event: Value = serde_json::from_slice(&publish.payload).unwrap();
        seen.push(event);
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "scan_started",
            "recording_started",
            "item_scanned",
            "item_scanned",
            "scan_stopped",
            "recording_stopped"
        ]
    );
    assert_eq!(seen[2]["code"], "ITEM-1");
    assert_eq!(seen[3]["code"], "ITEM-2");
    assert_eq!(seen[1]["clip_id"], clip.clip_id.as_str());
    // Once: nothing more comes.
    let more = line.drain(Duration::from_secs(2)).await;
    assert!(
        more.iter().all(|p| p.topic != EVENT),
        "events published twice: {more:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_recorded_before_a_crash_is_decided_once_at_the_restart() {
    let mut scanner = Scanner::new();
    let (_broker, mut agent, mut line) = station(&scanner, |o| {
        o.env_vars = vec![("CAPTURE_AGENT_FAILPOINT".into(), "scan-recorded".into())];
    })
    .await;
    scanner.scan("SO-K1");
    agent
        .wait_exit(WAIT)
        .await
        .expect("the failpoint kills the agent once the scan is in the inbox");
    agent.restart_with_env(&[]).await.expect("restart");
    let started = event(&mut line, "scan_started").await;
    assert_eq!(started["order"], "SO-K1");
    assert_eq!(started["rescan"], false);
    let more = line.drain(Duration::from_secs(2)).await;
    assert!(
        !more
            .iter()
            .any(|p| String::from_utf8_lossy(&p.payload).contains("scan_started")),
        "decided twice: {more:?}"
    );
    let rows = spool_clips(&agent);
    assert_eq!(rows.len(), 1, "one recording: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_without_a_scan_for_idle_stop_is_stopped() {
    let mut scanner = Scanner::new();
    let (_broker, agent, mut line) = station(&scanner, |o| {
        o.extra_toml = "idle_stop = \"5s\"\n".into();
    })
    .await;
    scanner.scan("SO-IDLE");
    let started = event(&mut line, "scan_started").await;
    let begun = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // An item scan holds the stop off.
    scanner.scan("ITEM-1");
    event(&mut line, "item_scanned").await;
    let stopped = event(&mut line, "scan_stopped").await;
    assert_eq!(stopped["idle"], true);
    assert_eq!(stopped["code"], "");
    assert_eq!(stopped["clips"], started["clips"]);
    assert!(
        begun.elapsed() >= Duration::from_secs(8),
        "stopped {:?} after the start, before 5 s without a scan",
        begun.elapsed()
    );
    let row = wait_sealed(&agent, &started["clips"][0]).await;
    assert!(!row.truncated);
}
