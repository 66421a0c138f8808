//! Properties of [`parse_command`] over inputs nobody would write by hand: it never panics,
//! every refusal makes a valid reply, and every accepted command round-trips.

use std::num::NonZeroU32;

use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::{
    CameraName, Cameras, Capture, Command, CommandId, Env, Meta, Op, OrderId, Reply, Timestamp,
    parse_command,
};

fn own_env() -> Env {
    "prod".parse().unwrap()
}

/// Parses `payload`; checks what must hold whatever the outcome.
fn check(payload: &[u8]) -> Result<(), TestCaseError> {
    match parse_command(payload, &own_env()) {
        Ok(command) => {
            let again = parse_command(&serde_json::to_vec(&command).unwrap(), &own_env());
            prop_assert_eq!(again, Ok(command));
        }
        Err(rejection) => {
            let reply = rejection.to_reply(Timestamp::now());
            let text = serde_json::to_vec(&reply).unwrap();
            let parsed: Reply = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(parsed.id, rejection.id.clone());
            prop_assert!(!rejection.to_string().is_empty());
        }
    }
    Ok(())
}

/// Values a command field might plausibly hold, valid or not.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(null)),
        Just(json!("prod")),
        Just(json!("dev")),
        Just(json!("start")),
        Just(json!("stop")),
        Just(json!("abort")),
        Just(json!("snapshot")),
        Just(json!("ping")),
        Just(json!("SO-1")),
        Just(json!("../etc")),
        Just(json!(["top"])),
        Just(json!([])),
        Just(json!({"operator": "ana"})),
        Just(json!(300)),
        Just(json!("2026-11-23T10:00:00Z")),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<bool>().prop_map(Value::from),
        ".{0,70}".prop_map(Value::from),
    ]
}

/// JSON objects built from the command's field names and plausible values.
fn command_like_object() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("v"),
        Just("id"),
        Just("op"),
        Just("order"),
        Just("env"),
        Just("cameras"),
        Just("max_secs"),
        Just("meta"),
        Just("reason"),
        Just("sent_at"),
        Just("other"),
    ];
    vec((name, field_value()), 0..10).prop_map(|fields| {
        let object: Map<String, Value> = fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        serde_json::to_vec(&object).unwrap()
    })
}

fn order() -> impl Strategy<Value = OrderId> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
        .prop_filter("never ..", |order| !order.contains(".."))
        .prop_map(|order| order.parse().unwrap())
}

fn capture() -> impl Strategy<Value = Capture> {
    let cameras = btree_set("[a-z0-9][a-z0-9-]{0,31}", 1..4).prop_map(|names| {
        let names: Vec<CameraName> = names.iter().map(|name| name.parse().unwrap()).collect();
        Cameras::try_from(names).unwrap()
    });
    let meta = vec(
        (
            "[a-z_]{1,12}",
            prop_oneof![
                "[ -~]{0,20}".prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ],
        ),
        0..8,
    )
    .prop_map(|fields| Meta::try_from(fields.into_iter().collect::<Map<_, _>>()).unwrap());
    (
        order(),
        option::of(cameras),
        option::of((1..=u32::MAX).prop_map(|secs| NonZeroU32::new(secs).unwrap())),
        option::of(meta),
    )
        .prop_map(|(order, cameras, max_secs, meta)| Capture {
            order,
            cameras,
            max_secs,
            meta,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        capture().prop_map(Op::Start),
        order().prop_map(|order| Op::Stop { order }),
        (order(), option::of(".{0,40}")).prop_map(|(order, reason)| Op::Abort { order, reason }),
        capture().prop_map(Op::Snapshot),
        Just(Op::Ping),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let sent_at = (0_i64..253_402_300_800, 0_u32..1_000_000_000).prop_map(|(secs, nanos)| {
        let time = time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
            + time::Duration::nanoseconds(i64::from(nanos));
        Timestamp::try_from(time).unwrap()
    });
    (
        "[ -~]{1,64}".prop_map(|id| id.parse::<CommandId>().unwrap()),
        op(),
        any::<bool>(),
        option::of(sent_at),
    )
        .prop_map(|(id, op, with_env, sent_at)| Command {
            env: with_env.then(own_env),
            sent_at,
            ..Command::new(id, op)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(payload in vec(any::<u8>(), 0..512)) {
        check(&payload)?;
    }

    #[test]
    fn json_ish_text_never_panics(text in r#"[{}\[\]":,. 0-9a-z\\/-]{0,200}"#) {
        check(text.as_bytes())?;
    }

    #[test]
    fn command_like_objects_never_panic(payload in command_like_object()) {
        check(&payload)?;
    }

    #[test]
    fn every_valid_command_is_accepted_and_round_trips(command in command()) {
        let payload = serde_json::to_vec(&command).unwrap();
        prop_assert_eq!(parse_command(&payload, &own_env()), Ok(command));
    }
}
