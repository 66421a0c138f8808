//! `capture-agent run` as a real process against a real Mosquitto, with videotestsrc
//! cameras: the station protocol of DESIGN.md section 3, bad input, redelivery, broker
//! restarts, crashes, the disk quota, the status, metrics and logs.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capture_agent::spool::{self, ClipRow, ClipState, clips};
use capture_tests::fixtures::{Agent, AgentOptions, Mosquitto, MqttClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);
const CMD: &str = "cap/test/station/pack-01/cmd";
const REPLY: &str = "cap/test/station/pack-01/reply";
const EVENT: &str = "cap/test/station/pack-01/event";
const STATUS: &str = "cap/test/station/pack-01/status";

/// A broker, an agent with `cameras`, and the line (subscribed to replies and events).
async fn station(
    cameras: &[&str],
    configure: impl FnOnce(&mut AgentOptions),
) -> (Mosquitto, Agent, MqttClient) {
    let broker = Mosquitto::start().await.expect("mosquitto");
    let mut options = AgentOptions::new(broker.host(), broker.port());
    options.cameras = cameras.iter().map(|c| (*c).to_owned()).collect();
    configure(&mut options);
    let agent = Agent::start(options).await.expect("the agent starts");
    let line = line(&broker).await;
    wait_online(&broker).await;
    (broker, agent, line)
}

async fn line(broker: &Mosquitto) -> MqttClient {
    MqttClient::connect(broker.host(), broker.port(), "line", &[REPLY, EVENT])
        .await
        .expect("the line connects")
}

/// Waits for a retained `online` status (the agent is connected and subscribed).
async fn wait_online(broker: &Mosquitto) -> Value {
    let mut observer = MqttClient::connect(
        broker.host(),
        broker.port(),
        &capture_tests::fixtures::unique_name("observer"),
        &[STATUS],
    )
    .await
    .expect("observer");
    observer
        .next_json("an online status", STATUS, WAIT, |s| s["state"] == "online")
        .await
        .expect("the agent reports online")
}

/// Sends a command and returns its reply.
async fn send(line: &mut MqttClient, command: Value) -> Value {
    let id = command["id"].clone();
    line.publish(CMD, command.to_string())
        .await
        .expect("publish");
    line.next_json(&format!("the reply to {id}"), REPLY, WAIT, |r| {
        r["id"] == id
    })
    .await
    .expect("a reply")
}

async fn send_raw(line: &mut MqttClient, payload: Vec<u8>, id: Value) -> Value {
    line.publish(CMD, payload).await.expect("publish");
    line.next_json(&format!("the reply to {id}"), REPLY, WAIT, |r| {
        r["id"] == id
    })
    .await
    .expect("a reply")
}

async fn event(line: &mut MqttClient, kind: &str, clip: &Value) -> Value {
    line.next_json(&format!("{kind} for {clip}"), EVENT, WAIT, |e| {
        e["event"] == kind && &e["clip_id"] == clip
    })
    .await
    .expect("an event")
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

fn clip(agent: &Agent, id: &Value) -> ClipRow {
    let id = id.as_str().expect("a clip id");
    spool_clips(agent)
        .into_iter()
        .find(|c| c.clip_id == id)
        .unwrap_or_else(|| panic!("clip {id} is in the spool"))
}

async fn wait_sealed(agent: &Agent, id: &Value) -> ClipRow {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let row = clip(agent, id);
        if row.state != ClipState::Recording {
            return row;
        }
        assert!(std::time::Instant::now() < until, "clip {id} never sealed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn clip_ids(reply: &Value) -> Vec<Value> {
    reply["clips"].as_array().expect("clips").clone()
}

fn assert_ok(reply: &Value) {
    assert_eq!(reply["ok"], true, "{reply}");
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_snapshot_abort_and_ping_over_a_real_broker() {
    let (_broker, agent, mut line) = station(&["top", "side"], |_| {}).await;

    let pong = send(&mut line, json!({"v":1,"id":"c-1","op":"ping"})).await;
    assert_ok(&pong);
    assert_eq!(pong["clips"], json!([]));

    let start = send(
        &mut line,
        json!({"v":1,"id":"c-2","op":"start","order":"SO-1","meta":{"sku":"TEE-42"}}),
    )
    .await;
    assert_ok(&start);
    let clips = clip_ids(&start);
    assert_eq!(clips.len(), 2, "one clip per camera: {start}");
    for id in &clips {
        let e = event(&mut line, "recording_started", id).await;
        assert_eq!(e["order"], "SO-1");
    }

    let photo = send(
        &mut line,
        json!({"v":1,"id":"c-3","op":"snapshot","order":"SO-1","cameras":["top"]}),
    )
    .await;
    assert_ok(&photo);
    let photo_id = clip_ids(&photo)[0].clone();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = send(
        &mut line,
        json!({"v":1,"id":"c-4","op":"stop","order":"SO-1"}),
    )
    .await;
    assert_ok(&stop);
    assert_eq!(clip_ids(&stop), clips, "stop names the clips of the start");
    for id in &clips {
        let e = event(&mut line, "recording_stopped", id).await;
        assert_eq!(e["truncated"], false);
        let row = wait_sealed(&agent, id).await;
        assert!(row.state.is_queued(), "{row:?}");
        assert_eq!(row.kind, "video");
        assert_eq!(row.meta.as_deref(), Some(r#"{"sku":"TEE-42"}"#));
        let decoded = capture_agent::capture::inspect(Path::new(&row.path)).expect("decodes");
        assert!(
            decoded.duration >= Duration::from_secs(2),
            "the clip holds the recorded time: {decoded:?}"
        );
        assert_eq!(row.duration_ms, Some(decoded.duration.as_millis() as i64));
    }
    let photo_row = wait_sealed(&agent, &photo_id).await;
    assert_eq!(photo_row.kind, "photo");
    assert!(photo_row.path.ends_with(".jpg"));
    let jpeg = std::fs::read(&photo_row.path).expect("the photo is on disk");
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    assert_eq!(photo_row.size, Some(jpeg.len() as i64));

    let stop_again = send(
        &mut line,
        json!({"v":1,"id":"c-5","op":"stop","order":"SO-1"}),
    )
    .await;
    assert_error(&stop_again, "not_recording");

    let start = send(
        &mut line,
        json!({"v":1,"id":"c-6","op":"start","order":"SO-2","cameras":["side"]}),
    )
    .await;
    assert_ok(&start);
    let aborted = clip_ids(&start);
    assert_eq!(aborted.len(), 1);
    let abort = send(
        &mut line,
        json!({"v":1,"id":"c-7","op":"abort","order":"SO-2","reason":"rescan"}),
    )
    .await;
    assert_ok(&abort);
    let row = clip(&agent, &aborted[0]);
    assert_eq!(row.state, ClipState::Aborted);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !Path::new(&row.path).exists(),
        "an aborted clip leaves no file"
    );
    assert!(!Path::new(&format!("{}.part", row.path)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_start_while_recording_and_max_secs() {
    let (_broker, agent, mut line) = station(&["top"], |_| {}).await;

    let first = send(
        &mut line,
        json!({"v":1,"id":"r-1","op":"start","order":"SO-A"}),
    )
    .await;
    assert_ok(&first);
    let rescan = send(
        &mut line,
        json!({"v":1,"id":"r-2","op":"start","order":"SO-A"}),
    )
    .await;
    assert_eq!(
        rescan["clips"], first["clips"],
        "a rescan answers the same clips"
    );
    assert_eq!(spool_clips(&agent).len(), 1, "a rescan starts nothing new");

    // Another order while recording: the default stops the current one normally.
    let second = send(
        &mut line,
        json!({"v":1,"id":"r-3","op":"start","order":"SO-B","max_secs":2}),
    )
    .await;
    assert_ok(&second);
    assert_ne!(second["clips"], first["clips"]);
    let previous = clip_ids(&first)[0].clone();
    let stopped = event(&mut line, "recording_stopped", &previous).await;
    assert_eq!(
        stopped["truncated"], false,
        "the previous order was stopped normally"
    );

    // No stop for SO-B: max_secs closes it, truncated, and an event says so.
    let current = clip_ids(&second)[0].clone();
    let truncated = event(&mut line, "recording_stopped", &current).await;
    assert_eq!(truncated["truncated"], true);
    let row = wait_sealed(&agent, &current).await;
    assert!(row.truncated);
    let late_stop = send(
        &mut line,
        json!({"v":1,"id":"r-4","op":"stop","order":"SO-B"}),
    )
    .await;
    assert_error(&late_stop, "not_recording");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_while_recording_is_busy_when_the_station_rejects() {
    let (_broker, agent, mut line) = station(&["top"], |o| {
        o.agent_extra = r#"on_new_start = "reject""#.into();
    })
    .await;
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"b-1","op":"start","order":"SO-A"}),
        )
        .await,
    );
    let busy = send(
        &mut line,
        json!({"v":1,"id":"b-2","op":"start","order":"SO-B"}),
    )
    .await;
    assert_error(&busy, "busy");
    assert_eq!(spool_clips(&agent).len(), 1, "busy changes nothing");
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"b-3","op":"stop","order":"SO-A"}),
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_error_and_changes_nothing() {
    let (_broker, mut agent, mut line) = station(&["top"], |_| {}).await;
    let cases: Vec<(Vec<u8>, Value, &str)> = vec![
        (b"{not json".to_vec(), Value::Null, "bad_request"),
        (
            br#"{"v":1,"op":"start","order":"SO-1"}"#.to_vec(),
            Value::Null,
            "bad_request",
        ),
        (
            br#"{"v":1,"id":"x-1","op":"start"}"#.to_vec(),
            json!("x-1"),
            "bad_request",
        ),
        (
            br#"{"v":1,"id":"x-2","op":"start","order":42}"#.to_vec(),
            json!("x-2"),
            "bad_request",
        ),
        (
            br#"{"v":1,"id":"x-3","op":"dance","order":"SO-1"}"#.to_vec(),
            json!("x-3"),
            "bad_request",
        ),
        (
            br#"{"v":2,"id":"x-4","op":"ping"}"#.to_vec(),
            json!("x-4"),
            "unsupported_version",
        ),
        (
            br#"{"v":1,"id":"x-5","op":"start","order":"SO-1","env":"prod"}"#.to_vec(),
            json!("x-5"),
            "wrong_env",
        ),
        (
            br#"{"v":1,"id":"x-6","op":"start","order":"../etc"}"#.to_vec(),
            json!("x-6"),
            "bad_order",
        ),
        (
            br#"{"v":1,"id":"x-7","op":"start","order":"a/b"}"#.to_vec(),
            json!("x-7"),
            "bad_order",
        ),
        (
            br#"{"v":1,"id":"x-8","op":"start","order":".."}"#.to_vec(),
            json!("x-8"),
            "bad_order",
        ),
        (
            format!(
                r#"{{"v":1,"id":"x-9","op":"start","order":"{}"}}"#,
                "A".repeat(65)
            )
            .into_bytes(),
            json!("x-9"),
            "bad_order",
        ),
        (
            r#"{"v":1,"id":"x-10","op":"start","order":"SO-ü"}"#
                .as_bytes()
                .to_vec(),
            json!("x-10"),
            "bad_order",
        ),
        (
            br#"{"v":1,"id":"x-11","op":"start","order":""}"#.to_vec(),
            json!("x-11"),
            "bad_order",
        ),
        (
            br#"{"v":1,"id":"x-12","op":"start","order":"SO-1","meta":"nope"}"#.to_vec(),
            json!("x-12"),
            "bad_request",
        ),
        (
            format!(
                r#"{{"v":1,"id":"x-13","op":"start","order":"SO-1","meta":{{"big":"{}"}}}}"#,
                "x".repeat(2000)
            )
            .into_bytes(),
            json!("x-13"),
            "bad_request",
        ),
        (
            br#"{"v":1,"id":"x-14","op":"start","order":"SO-1","cameras":["nope"]}"#.to_vec(),
            json!("x-14"),
            "camera_unavailable",
        ),
    ];
    for (payload, id, code) in cases {
        let reply = send_raw(&mut line, payload.clone(), id).await;
        assert_error(&reply, code);
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "a message for people: {reply}"
        );
    }
    // Over 64 KiB: refused before parsing, so no id can be echoed.
    let huge = format!(
        r#"{{"v":1,"id":"x-15","op":"ping","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let reply = send_raw(&mut line, huge.into_bytes(), Value::Null).await;
    assert_error(&reply, "bad_request");

    assert!(
        spool_clips(&agent).is_empty(),
        "no refused command created a clip"
    );
    assert!(agent.is_running(), "no bad input stops the agent");
    let status = wait_online(&_broker).await;
    assert_eq!(
        status["recording"],
        Value::Null,
        "the station is still idle"
    );
    assert!(!agent.log().contains("panicked"), "no panic in the log");
}

/// A `start` whose `meta` grew to `size` bytes of JSON (a bug in the line).
fn oversized_start(id: &str, size: usize) -> Vec<u8> {
    let mut command = json!({"v":1,"id":id,"op":"start","order":"SO-BIG","meta":{"notes":""}})
        .to_string()
        .into_bytes();
    let filler = size.saturating_sub(command.len());
    let at = command.len() - 3; // inside the empty "notes" string
    command.splice(at..at, std::iter::repeat_n(b'x', filler));
    assert_eq!(command.len(), size);
    command
}

/// Publishes `payload` to `topic` exactly as a line integrator would: `mosquitto_pub`, QoS 1,
/// the message from a file.
fn mosquitto_pub(broker: &Mosquitto, topic: &str, payload: &[u8]) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), payload).expect("the command file");
    std::process::Command::new("mosquitto_pub")
        .args(["-h", broker.host(), "-p", &broker.port().to_string()])
        .args(["-i", "line-integrator", "-q", "1", "-t", topic, "-f"])
        .arg(file.path())
        .output()
        .expect("mosquitto_pub runs")
}

/// One command over 64 KiB must not take a station offline: each gets `bad_request` with
/// `"id": null` (it is refused without being read), the broker stops redelivering it, and a
/// `ping` right after is answered. 100 KiB is read whole and refused by size; 200 KiB and
/// 2 MiB are over the link's packet limit (128 KiB) and cut before they are read. The broker
/// is Mosquitto as Debian ships it: no `max_packet_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_64_kib_get_bad_request_and_the_station_stays_online() {
    let (broker, agent, mut line) = station(&["top"], |_| {}).await;
    let mut watcher = MqttClient::connect(broker.host(), broker.port(), "watcher-big", &[STATUS])
        .await
        .expect("watcher");
    watcher
        .next_json("the retained status", STATUS, WAIT, |s| {
            s["state"] == "online"
        })
        .await
        .expect("online");
    for (n, size) in [(1, 100 << 10), (2, 200 << 10), (3, 2 << 20)] {
        let command = oversized_start(&format!("big-{n}"), size);
        let published = mosquitto_pub(&broker, CMD, &command);
        assert!(
            published.status.success(),
            "mosquitto_pub of {size} bytes: {published:?}"
        );
        let refused = line
            .next_json(
                &format!("the reply to the {size}-byte start"),
                REPLY,
                WAIT,
                |r| r["id"].is_null(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
        assert_error(&refused, "bad_request");
        let message = refused["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains(&command.len().to_string()) && message.contains("65536"),
            "the message names the size and the limit: {refused}"
        );
        let pong = send(
            &mut line,
            json!({"v":1,"id":format!("ping-{n}"),"op":"ping"}),
        )
        .await;
        assert_ok(&pong);
    }
    let seen = watcher.drain(Duration::ZERO).await;
    let offline: Vec<_> = seen
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .filter(|p| p.contains("offline"))
        .collect();
    assert!(offline.is_empty(), "the station went offline: {offline:?}");
    assert!(
        !agent.log().contains("payload size limit exceeded"),
        "{}",
        agent.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_has_one_effect_and_the_same_reply() {
    let (_broker, agent, mut line) = station(&["top"], |_| {}).await;
    let command = json!({"v":1,"id":"d-1","op":"start","order":"SO-D"});
    let first = send(&mut line, command.clone()).await;
    let second = send(&mut line, command.clone()).await;
    assert_ok(&first);
    assert_eq!(
        first, second,
        "the stored reply, byte for byte the same JSON"
    );
    let stop = json!({"v":1,"id":"d-2","op":"stop","order":"SO-D"});
    assert_ok(&send(&mut line, stop.clone()).await);
    let again = send(&mut line, stop).await;
    assert_ok(&again);
    assert_eq!(spool_clips(&agent).len(), 1, "one clip for two deliveries");
    let events = line.drain(Duration::from_millis(500)).await;
    let started = events
        .iter()
        .filter(|p| p.topic == EVENT)
        .filter(|p| String::from_utf8_lossy(&p.payload).contains("recording_started"))
        .count();
    assert_eq!(
        started, 1,
        "one recording_started for two deliveries of the start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_survives_a_broker_restart_and_queued_commands_are_answered() {
    let (mut broker, agent, mut line) = station(&["top"], |_| {}).await;
    let start = send(
        &mut line,
        json!({"v":1,"id":"m-1","op":"start","order":"SO-M"}),
    )
    .await;
    assert_ok(&start);
    let id = clip_ids(&start)[0].clone();

    broker.kill().await.expect("kill mosquitto");
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().await.expect("restart mosquitto");
    // The line sends at once, whether or not the agent has reconnected yet: the broker
    // keeps the command for the agent's persistent session.
    let mut line = self::line(&broker).await;
    line.publish(
        CMD,
        json!({"v":1,"id":"m-2","op":"stop","order":"SO-M"}).to_string(),
    )
    .await
    .expect("publish");
    let reply = line
        .next_json("the reply to the stop", REPLY, WAIT, |r| r["id"] == "m-2")
        .await
        .expect("the reply reaches the line");
    assert_ok(&reply);
    let row = wait_sealed(&agent, &id).await;
    assert!(
        row.duration_ms.unwrap_or(0) >= 3000,
        "the recording went on through the outage: {row:?}"
    );
    assert!(!row.truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_recorded_but_not_acknowledged_before_a_crash_runs_exactly_once() {
    let (broker, mut agent, mut line) = station(&["top"], |o| {
        o.env_vars = vec![("CAPTURE_AGENT_FAILPOINT".into(), "command-recorded".into())];
    })
    .await;
    line.publish(
        CMD,
        json!({"v":1,"id":"k-1","op":"start","order":"SO-K"}).to_string(),
    )
    .await
    .expect("publish");
    agent
        .wait_exit(WAIT)
        .await
        .expect("the failpoint kills the agent after the inbox commit, before the ack");
    agent.restart_with_env(&[]).await.expect("restart");

    // Decided at start-up from the inbox, and the broker redelivers the unacknowledged
    // packet: two deliveries, two identical replies, one recording.
    let first = line
        .next_json("a reply to k-1", REPLY, WAIT, |r| r["id"] == "k-1")
        .await
        .expect("reply");
    assert_ok(&first);
    let second = line
        .next_json("the reply to the redelivery", REPLY, WAIT, |r| {
            r["id"] == "k-1"
        })
        .await
        .expect("reply to the redelivery");
    assert_eq!(first, second);
    let rows = spool_clips(&agent);
    assert_eq!(rows.len(), 1, "exactly one clip: {rows:?}");
    let id = clip_ids(&first)[0].clone();
    event(&mut line, "recording_started", &id).await;
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"k-2","op":"stop","order":"SO-K"}),
        )
        .await,
    );
    wait_sealed(&agent, &id).await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_cut_by_sigkill_is_sealed_truncated_and_queued_at_restart() {
    let (_broker, mut agent, mut line) = station(&["top"], |_| {}).await;
    let start = send(
        &mut line,
        json!({"v":1,"id":"p-1","op":"start","order":"SO-P"}),
    )
    .await;
    let id = clip_ids(&start)[0].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.kill().expect("SIGKILL");
    assert_eq!(clip(&agent, &id).state, ClipState::Recording);

    agent.restart().await.expect("restart");
    let stopped = event(&mut line, "recording_stopped", &id).await;
    assert_eq!(stopped["truncated"], true);
    let row = clip(&agent, &id);
    assert_eq!(row.state, ClipState::Sealed, "{row:?}");
    assert!(row.truncated);
    let decoded = capture_agent::capture::inspect(Path::new(&row.path)).expect("decodes");
    assert!(decoded.duration >= Duration::from_secs(2), "{decoded:?}");
    assert_eq!(
        row.size,
        Some(std::fs::metadata(&row.path).expect("file").len() as i64)
    );
    // The station is idle after the restart.
    assert_error(
        &send(
            &mut line,
            json!({"v":1,"id":"p-2","op":"stop","order":"SO-P"}),
        )
        .await,
        "not_recording",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_recording_seals_the_clip_and_says_offline() {
    let (broker, mut agent, mut line) = station(&["top"], |_| {}).await;
    let mut observer =
        MqttClient::connect(broker.host(), broker.port(), "observer-term", &[STATUS])
            .await
            .expect("observer");
    let start = send(
        &mut line,
        json!({"v":1,"id":"t-1","op":"start","order":"SO-T"}),
    )
    .await;
    let id = clip_ids(&start)[0].clone();
    observer
        .next_json("a status while recording", STATUS, WAIT, |s| {
            s["recording"]["order"] == "SO-T"
        })
        .await
        .expect("the status names the order being recorded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = agent.terminate().expect("SIGTERM");
    assert!(
        took < Duration::from_secs(20),
        "the agent drains within its stop timeout: {took:?}"
    );
    let row = clip(&agent, &id);
    assert_eq!(row.state, ClipState::Sealed);
    assert!(row.truncated, "closed by the shutdown, not by a stop");
    let stopped = event(&mut line, "recording_stopped", &id).await;
    assert_eq!(stopped["truncated"], true);
    observer
        .next_json("an offline status", STATUS, WAIT, |s| {
            s["state"] == "offline"
        })
        .await
        .expect("the agent says offline when it stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_start_with_disk_full_keeps_every_clip_and_recovers() {
    let (broker, agent, mut line) = station(&["top"], |o| o.max_bytes = "1MiB".into()).await;
    let start = send(
        &mut line,
        json!({"v":1,"id":"f-1","op":"start","order":"SO-F"}),
    )
    .await;
    let kept = clip_ids(&start)[0].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"f-2","op":"stop","order":"SO-F"}),
        )
        .await,
    );
    wait_sealed(&agent, &kept).await;

    // Something else fills the spool past its quota (a clip the cloud has not accepted
    // would do the same; this one is quicker to make).
    let filler = agent.spool_dir().join("clips").join("filler.bin");
    std::fs::write(&filler, vec![0u8; 2 << 20]).expect("filler");
    let refused = send(
        &mut line,
        json!({"v":1,"id":"f-3","op":"start","order":"SO-G"}),
    )
    .await;
    assert_error(&refused, "disk_full");
    let photo = send(
        &mut line,
        json!({"v":1,"id":"f-4","op":"snapshot","order":"SO-G"}),
    )
    .await;
    assert_error(&photo, "disk_full");
    let rows = spool_clips(&agent);
    assert_eq!(rows.len(), 1, "nothing new: {rows:?}");
    assert!(
        Path::new(&rows[0].path).exists(),
        "the unconfirmed clip is kept"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while agent.metric("capture_disk_full").await.expect("metric") != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "capture_disk_full never became 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut observer =
        MqttClient::connect(broker.host(), broker.port(), "observer-disk", &[STATUS])
            .await
            .expect("observer");
    let status = observer
        .next_json("a status", STATUS, WAIT, |s| s["state"] == "online")
        .await
        .expect("status");
    assert_eq!(status["queue"]["clips"], 1, "{status}");

    // Space returns: the next start records again.
    std::fs::remove_file(&filler).expect("remove filler");
    let start = send(
        &mut line,
        json!({"v":1,"id":"f-5","op":"start","order":"SO-G"}),
    )
    .await;
    assert_ok(&start);
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"f-6","op":"stop","order":"SO-G"}),
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_status_after_start_reports_the_measured_free_disk() {
    let broker = Mosquitto::start().await.expect("mosquitto");
    // Subscribed before the agent exists, so the first status it sees is the first one sent.
    let mut observer =
        MqttClient::connect(broker.host(), broker.port(), "observer-first", &[STATUS])
            .await
            .expect("observer");
    let mut options = AgentOptions::new(broker.host(), broker.port());
    options.cameras = vec!["top".to_owned()];
    let agent = Agent::start(options).await.expect("the agent starts");
    let first = observer
        .next_json("the first status", STATUS, WAIT, |_| true)
        .await
        .expect("a status");
    assert_eq!(first["state"], "online", "{first}");
    let free = first["disk_free_bytes"]
        .as_u64()
        .expect("disk_free_bytes is a number");
    assert!(
        free > 0,
        "the first retained status claims a full disk (disk_free_bytes {free}): {first}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_logs_describe_what_happened() {
    let (_broker, agent, mut line) = station(&["top"], |_| {}).await;
    let start = send(
        &mut line,
        json!({"v":1,"id":"o-1","op":"start","order":"SO-O"}),
    )
    .await;
    let id = clip_ids(&start)[0].clone();
    assert_ok(
        &send(
            &mut line,
            json!({"v":1,"id":"o-2","op":"stop","order":"SO-O"}),
        )
        .await,
    );
    send(
        &mut line,
        json!({"v":1,"id":"o-3","op":"stop","order":"SO-O"}),
    )
    .await;
    wait_sealed(&agent, &id).await;

    assert_eq!(
        agent
            .metric("capture_recordings_total")
            .await
            .expect("metric"),
        1.0
    );
    assert_eq!(
        agent
            .metric("capture_commands_total{outcome=\"ok\"}")
            .await
            .expect("metric"),
        2.0
    );
    assert_eq!(
        agent
            .metric("capture_commands_total{outcome=\"error\"}")
            .await
            .expect("metric"),
        1.0
    );
    // Gauges are sampled by the agent every second or so.
    let deadline = std::time::Instant::now() + WAIT;
    while agent
        .metric("capture_mqtt_connected")
        .await
        .expect("metric")
        != 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "capture_mqtt_connected never became 1"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        agent
            .metric("capture_camera_up{camera=\"top\"}")
            .await
            .expect("metric"),
        1.0
    );
    assert!(
        agent
            .metric("capture_command_seconds_count")
            .await
            .expect("metric")
            >= 3.0
    );
    // The spool's file system: its size beside the free bytes, for the free share alerts use.
    let deadline = std::time::Instant::now() + WAIT;
    while agent
        .metric("capture_disk_size_bytes")
        .await
        .expect("metric")
        == 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "capture_disk_size_bytes never measured"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let size = agent
        .metric("capture_disk_size_bytes")
        .await
        .expect("metric");
    let free = agent
        .metric("capture_disk_free_bytes")
        .await
        .expect("metric");
    assert!(0.0 < free && free <= size, "free {free} of {size} bytes");

    let log = agent.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON log line: {e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "the agent logs JSON lines:\n{log}");
    let started = lines
        .iter()
        .find(|l| l["message"] == "recording started")
        .unwrap_or_else(|| panic!("a 'recording started' line:\n{log}"));
    // The documented fields (docs/operations.md), flat: the event's own and the agent's
    // identity on every line.
    assert_eq!(started["order"], "SO-O");
    assert_eq!(started["clip_id"], id);
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string());
    assert!(
        started["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("capture_agent")),
        "{started}"
    );
    for line in &lines {
        assert_eq!(line["device"], "pi-01", "{line}");
        assert_eq!(line["station"], "pack-01", "{line}");
        assert_eq!(line["env"], "test", "{line}");
        assert!(line["message"].is_string(), "{line}");
        assert!(line.get("fields").is_none(), "{line}");
    }
}

#[test]
fn run_with_a_bad_config_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        capture_agent::config::DEFAULT_CONFIG
            .replace("device = \"pi-01\"", "device = \"PI 01\"")
            .replace("station = \"pack-01\"", "station = \"\""),
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_capture-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agent.device"), "{stderr}");
    assert!(stderr.contains("agent.station"), "{stderr}");
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command line.
fn tls_material(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=capture test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_connects_over_tls_with_a_username_and_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = tls_material(dir.path());
    let passwords = dir.path().join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["pi-01", "s3cret-pass"])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());
    let plain = capture_tests::fixtures::free_port().expect("port");
    // The fixture's listener speaks TLS; a second, plain listener serves the test's clients.
    // Both need a password.
    let broker = Mosquitto::start_with(&format!(
        "cafile {ca}\ncertfile {cert}\nkeyfile {key}\npassword_file {pw}\nallow_anonymous false\nlistener {plain} 127.0.0.1\n",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
        pw = passwords.display(),
    ))
    .await
    .expect("mosquitto with TLS");
    let mut options = AgentOptions::new(broker.host(), broker.port());
    options.mqtt_ca_file = Some(ca.clone());
    options.mqtt_credentials = Some(("pi-01".into(), "s3cret-pass".into()));
    let _agent = Agent::start(options).await.expect("the agent starts");
    let mut line = MqttClient::connect_with(
        broker.host(),
        plain,
        "line",
        &[REPLY, STATUS],
        Some(("pi-01", "s3cret-pass")),
    )
    .await
    .expect("the line connects");
    line.next_json("an online status", STATUS, WAIT, |s| s["state"] == "online")
        .await
        .expect("the agent is online over TLS");
    let pong = send(&mut line, json!({"v":1,"id":"tls-1","op":"ping"})).await;
    assert_ok(&pong);
}

/// journald's socket for native entries, which tracing-journald writes to.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Stands in for journald on a machine without it: binds its socket and keeps reading (a
/// full datagram queue would block the agent's logging), and removes the socket and the
/// directories it created when dropped.
struct FakeJournald {
    entries: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    stop: Arc<AtomicBool>,
    created: Vec<std::path::PathBuf>,
}

impl FakeJournald {
    fn bind() -> FakeJournald {
        let path = Path::new(JOURNAL_SOCKET);
        let mut created = Vec::new();
        let mut missing = path.parent();
        while let Some(dir) = missing.filter(|d| !d.exists()) {
            created.push(dir.to_owned());
            missing = dir.parent();
        }
        std::fs::create_dir_all(path.parent().expect("a directory"))
            .expect("creating /run/systemd/journal (the tests run as root)");
        let socket = UnixDatagram::bind(path).expect("binding the socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let entries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (entries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf)
                    && n > 0
                {
                    into.lock()
                        .expect("entries")
                        .push(journal_fields(&buf[..n]));
                }
            }
        });
        FakeJournald {
            entries,
            stop,
            created,
        }
    }

    /// The entries received so far, each as its fields.
    fn entries(&self) -> Vec<BTreeMap<String, String>> {
        self.entries.lock().expect("entries").clone()
    }
}

impl Drop for FakeJournald {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(JOURNAL_SOCKET);
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Parses one datagram of journald's native protocol: `NAME=value\n`, or `NAME\n`, a 64-bit
/// little-endian length, the value and `\n`.
fn journal_fields(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while let Some(end) = data.iter().position(|&b| b == b'\n' || b == b'=') {
        let name = String::from_utf8_lossy(&data[..end]).into_owned();
        let (value, rest) = if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            (&rest[..stop], rest.get(stop + 1..).unwrap_or_default())
        } else {
            let rest = &data[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            (&rest[8..8 + len], rest.get(9 + len..).unwrap_or_default())
        };
        fields.insert(name, String::from_utf8_lossy(value).into_owned());
        data = rest;
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_agent_writes_native_journal_fields() {
    if Path::new(JOURNAL_SOCKET).exists() {
        // A real journald runs here: the agent's entries go to it, not to this test.
        eprintln!("{JOURNAL_SOCKET} belongs to a running journald; checked where there is none");
        return;
    }
    let journald = FakeJournald::bind();
    // As systemd starts the unit: stderr connected to the journal (JOURNAL_STREAM), no
    // format asked for; the agent finds journald's socket and uses it.
    let (_broker, agent, mut line) = station(&["top"], |options| {
        options
            .env_vars
            .push(("JOURNAL_STREAM".into(), "8:1234".into()));
    })
    .await;
    let start = send(
        &mut line,
        json!({"v":1,"id":"j-1","op":"start","order":"SO-J"}),
    )
    .await;
    let id = clip_ids(&start)[0].clone();
    send(
        &mut line,
        json!({"v":1,"id":"j-2","op":"stop","order":"SO-J"}),
    )
    .await;
    wait_sealed(&agent, &id).await;

    let entries = journald.entries();
    let started = entries
        .iter()
        .find(|e| e.get("MESSAGE").map(String::as_str) == Some("recording started"))
        .unwrap_or_else(|| panic!("no 'recording started' entry in {entries:?}"));
    assert_eq!(started["ORDER"], "SO-J");
    assert_eq!(Some(started["CLIP_ID"].as_str()), id.as_str());
    assert_eq!(started["PRIORITY"], "5", "INFO is journald's notice");
    assert!(
        started["TARGET"].starts_with("capture_agent"),
        "{started:?}"
    );
    for entry in &entries {
        assert_eq!(entry["DEVICE"], "pi-01", "{entry:?}");
        assert_eq!(entry["STATION"], "pack-01", "{entry:?}");
        assert_eq!(entry["ENV"], "test", "{entry:?}");
    }
    // Nothing went to stderr as JSON: the journal is the only copy.
    assert!(
        !agent.log().lines().any(|l| l.starts_with('{')),
        "{}",
        agent.log()
    );
}
