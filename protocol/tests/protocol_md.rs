//! `docs/protocol.md` shows integrators real messages: every command it publishes must parse
//! as the docs say, and every JSON example must be a message of this crate that serializes
//! back to exactly what the docs show.

use capture_protocol::{
    ClipEvent, Confirm, Env, Event, OverdueEvent, Reply, ScanEvent, Status, Timestamp, Uploaded,
    parse_command,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The malformed command of the "When a command cannot be read" section.
const MALFORMED: &str = r#"{"v":1,"op":"start""#;

fn prod() -> Env {
    "prod".parse().expect("a valid env")
}

/// The payloads of every `mosquitto_pub ... -m '...'` in the docs.
fn published_commands() -> Vec<&'static str> {
    PROTOCOL_MD
        .split("-m '")
        .skip(1)
        .map(|rest| &rest[..rest.find('\'').expect("-m '...' closes its quote")])
        .collect()
}

/// Every JSON value in the docs' `json` blocks: one per line, or one per block when a value
/// spans lines.
fn json_examples() -> Vec<Value> {
    let mut examples = Vec::new();
    for block in PROTOCOL_MD.split("```json\n").skip(1) {
        let block = &block[..block.find("```").expect("json block closes")];
        match serde_json::from_str::<Value>(block) {
            Ok(value) => examples.push(value),
            Err(_) => {
                for line in block.lines().filter(|line| !line.trim().is_empty()) {
                    examples.push(
                        serde_json::from_str(line).unwrap_or_else(|e| {
                            panic!("not JSON in docs/protocol.md: {line}: {e}")
                        }),
                    );
                }
            }
        }
    }
    examples
}

fn assert_round_trips<T: Serialize + DeserializeOwned>(example: &Value) {
    let message: T = serde_json::from_value(example.clone())
        .unwrap_or_else(|e| panic!("docs/protocol.md example {example}: {e}"));
    let written = serde_json::to_value(&message).expect("messages serialize");
    assert_eq!(&written, example);
}

#[test]
fn every_published_command_is_accepted_except_the_malformed_one() {
    let commands = published_commands();
    assert!(commands.len() >= 6, "{commands:?}");
    for payload in commands {
        let parsed = parse_command(payload.as_bytes(), &prod());
        if payload == MALFORMED {
            assert!(parsed.is_err());
        } else {
            let command = parsed.unwrap_or_else(|r| panic!("{payload}: {r}"));
            let sent: Value = serde_json::from_str(payload).unwrap();
            assert_eq!(serde_json::to_value(&command).unwrap(), sent);
        }
    }
}

#[test]
fn the_malformed_command_gets_the_reply_the_docs_show() {
    let rejection = parse_command(MALFORMED.as_bytes(), &prod()).unwrap_err();
    let at: Timestamp = "2026-11-23T10:00:22Z".parse().unwrap();
    let reply = serde_json::to_value(rejection.to_reply(at)).unwrap();
    assert!(
        json_examples().contains(&reply),
        "docs/protocol.md should show {reply}"
    );
}

#[test]
fn every_json_example_is_a_message_that_round_trips() {
    let examples = json_examples();
    assert!(examples.len() >= 15);
    for example in &examples {
        let has = |field: &str| example.get(field).is_some();
        if example["type"] == "com.factory.capture.clip.overdue" {
            assert_round_trips::<OverdueEvent>(example);
        } else if has("specversion") {
            assert_round_trips::<ClipEvent>(example);
        } else if has("ok") {
            assert_round_trips::<Reply>(example);
        } else if has("state") {
            assert_round_trips::<Status>(example);
        } else if has("scan_id") {
            assert_round_trips::<ScanEvent>(example);
        } else if has("event") {
            assert_round_trips::<Event>(example);
        } else if has("status") {
            assert_round_trips::<Confirm>(example);
        } else if has("key") {
            assert_round_trips::<Uploaded>(example);
        } else {
            panic!("docs/protocol.md example of no known message: {example}");
        }
    }
}
