//! Commands from the warehouse line to a station (`cap/{env}/station/{station}/cmd`).
//!
//! ```json
//! {"v":1,"id":"c-0001","op":"start","order":"SO-2026-000123","sent_at":"2026-11-23T10:00:00Z"}
//! {"v":1,"id":"c-0002","op":"stop","order":"SO-2026-000123"}
//! {"v":1,"id":"c-0003","op":"abort","order":"SO-2026-000123","reason":"rescan"}
//! {"v":1,"id":"c-0004","op":"snapshot","order":"SO-2026-000123"}
//! {"v":1,"id":"c-0005","op":"ping"}
//! ```
//!
//! `start` and `snapshot` may carry `cameras` (default: every camera of the station),
//! `max_secs` and `meta`; every command may carry `env` (refused with `wrong_env` when it is
//! not the agent's own) and `sent_at`. Unknown fields are ignored.
//!
//! An agent turns a raw payload into a [`Command`] with [`parse_command`], which never panics
//! and, on refusal, says which reply to send ([`Rejection::to_reply`]); a command it read it
//! answers with [`Reply::ok`] or [`Reply::error`]. Replies are made here, from what the command
//! holds: `reply` defines their wire shape and knows nothing of commands.

mod parse;
#[cfg(test)]
mod properties;

use std::num::NonZeroU32;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use parse::{CommandError, Rejection, parse_command};

use crate::{
    CameraName, ClipId, CommandId, Env, ErrorCode, Meta, OpName, OrderId, ProtocolV1, Reply,
    ReplyError, Timestamp,
};

/// One command from the line system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Command {
    /// Always 1.
    pub v: ProtocolV1,
    /// Chosen by the line system; a redelivery carries the same id and gets the same reply.
    pub id: CommandId,
    /// What to do (the `op` field and the fields that go with it).
    #[serde(flatten)]
    pub op: Op,
    /// The environment the sender means; when present and not the agent's own, the command is
    /// refused with `wrong_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    /// When the line system sent the command (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
}

impl Command {
    /// A command of this protocol version, without `env` and `sent_at`.
    pub fn new(id: CommandId, op: Op) -> Command {
        Command {
            v: ProtocolV1,
            id,
            op,
            env: None,
            sent_at: None,
        }
    }

    /// The order the command is about (`None` for `ping`).
    pub fn order(&self) -> Option<&OrderId> {
        self.op.order()
    }
}

/// The answers to a command that was read: the reply echoes its id, op and order. (A payload
/// refused before it was a command is answered with [`Rejection::to_reply`].)
impl Reply {
    /// `"ok":true` for `command`, with the clips it concerns (none for `ping`).
    pub fn ok(command: &Command, clips: Vec<ClipId>, at: Timestamp) -> Reply {
        Reply {
            id: Some(command.id.clone()),
            op: Some(command.op.name()),
            order: command.order().cloned(),
            outcome: Ok(clips),
            at: Some(at),
        }
    }

    /// `"ok":false` for `command`; `message` says what failed with which input.
    pub fn error(
        command: &Command,
        code: ErrorCode,
        message: impl Into<String>,
        at: Timestamp,
    ) -> Reply {
        Reply {
            id: Some(command.id.clone()),
            op: Some(command.op.name()),
            order: command.order().cloned(),
            outcome: Err(ReplyError {
                code,
                message: message.into(),
            }),
            at: Some(at),
        }
    }
}

/// The operation of a command and its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Begin one clip per selected camera, pre-roll included. A `start` for the order already
    /// recording is a rescan and gets the same reply.
    Start(Capture),
    /// Finalize the recording of this order (post-roll included); its clips are uploaded.
    Stop {
        /// The order being recorded.
        order: OrderId,
    },
    /// Discard the recording of this order; its clips are never uploaded.
    Abort {
        /// The order being recorded.
        order: OrderId,
        /// Why, for the logs (e.g. `rescan`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Take one JPEG per selected camera from the running pipelines, recording or not.
    Snapshot(Capture),
    /// Answer `ok`; nothing else.
    Ping,
}

impl Op {
    /// The `op` field of this operation.
    pub fn name(&self) -> OpName {
        match self {
            Op::Start(_) => OpName::Start,
            Op::Stop { .. } => OpName::Stop,
            Op::Abort { .. } => OpName::Abort,
            Op::Snapshot(_) => OpName::Snapshot,
            Op::Ping => OpName::Ping,
        }
    }

    /// The order the operation is about (`None` for `ping`).
    pub fn order(&self) -> Option<&OrderId> {
        match self {
            Op::Start(capture) | Op::Snapshot(capture) => Some(&capture.order),
            Op::Stop { order } | Op::Abort { order, .. } => Some(order),
            Op::Ping => None,
        }
    }
}

/// The fields of `start` and `snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capture {
    /// The order to record or photograph.
    pub order: OrderId,
    /// Which cameras; absent means every camera of the station.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cameras: Option<Cameras>,
    /// Close the recording after this many seconds without `stop` (marked truncated).
    /// Absent means the agent's default (600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_secs: Option<NonZeroU32>,
    /// Carried unchanged into the uploaded notification and the completion event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

impl Capture {
    /// A capture of every camera with the agent's defaults.
    pub fn of(order: OrderId) -> Capture {
        Capture {
            order,
            cameras: None,
            max_secs: None,
            meta: None,
        }
    }
}

/// A non-empty list of distinct camera names (`"cameras":["top","side"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<CameraName>", into = "Vec<CameraName>")]
pub struct Cameras(Vec<CameraName>);

impl Cameras {
    /// The names, in the order given.
    pub fn names(&self) -> &[CameraName] {
        &self.0
    }
}

/// Why a `cameras` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CamerasError {
    /// `"cameras":[]` selects nothing; omit the field to select every camera.
    #[error("cameras must not be empty (omit the field to use every camera)")]
    Empty,
    /// A camera is named twice.
    #[error("camera {0:?} is listed twice")]
    Duplicate(CameraName),
}

impl TryFrom<Vec<CameraName>> for Cameras {
    type Error = CamerasError;

    fn try_from(names: Vec<CameraName>) -> Result<Self, Self::Error> {
        if names.is_empty() {
            return Err(CamerasError::Empty);
        }
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                return Err(CamerasError::Duplicate(name.clone()));
            }
        }
        Ok(Cameras(names))
    }
}

impl From<Cameras> for Vec<CameraName> {
    fn from(cameras: Cameras) -> Self {
        cameras.0
    }
}

impl JsonSchema for Cameras {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Cameras")
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "array",
            "items": generator.subschema_for::<CameraName>(),
            "minItems": 1,
            "uniqueItems": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The command examples of DESIGN.md section 3, verbatim.
    pub(crate) const DESIGN_EXAMPLES: [&str; 5] = [
        r#"{"v":1,"id":"c-0001","op":"start","order":"SO-2026-000123","sent_at":"2026-11-23T10:00:00Z"}"#,
        r#"{"v":1,"id":"c-0002","op":"stop","order":"SO-2026-000123"}"#,
        r#"{"v":1,"id":"c-0003","op":"abort","order":"SO-2026-000123","reason":"rescan"}"#,
        r#"{"v":1,"id":"c-0004","op":"snapshot","order":"SO-2026-000123"}"#,
        r#"{"v":1,"id":"c-0005","op":"ping"}"#,
    ];

    #[test]
    fn design_examples_round_trip_exactly() {
        for example in DESIGN_EXAMPLES {
            let command: Command = serde_json::from_str(example).unwrap();
            assert_eq!(serde_json::to_string(&command).unwrap(), example);
        }
    }

    #[test]
    fn design_examples_mean_what_they_say() {
        let commands: Vec<Command> = DESIGN_EXAMPLES
            .iter()
            .map(|example| serde_json::from_str(example).unwrap())
            .collect();
        let order: OrderId = "SO-2026-000123".parse().unwrap();
        assert_eq!(commands[0].op, Op::Start(Capture::of(order.clone())));
        assert_eq!(
            commands[0].sent_at,
            Some("2026-11-23T10:00:00Z".parse().unwrap())
        );
        assert_eq!(
            commands[1].op,
            Op::Stop {
                order: order.clone()
            }
        );
        assert_eq!(
            commands[2].op,
            Op::Abort {
                order: order.clone(),
                reason: Some("rescan".into())
            }
        );
        assert_eq!(commands[3].op, Op::Snapshot(Capture::of(order)));
        assert_eq!(commands[4].op, Op::Ping);
        assert_eq!(commands[4].order(), None);
    }

    #[test]
    fn start_with_every_option_round_trips() {
        let value = json!({
            "v": 1, "id": "c-0006", "op": "start", "order": "SO-1",
            "cameras": ["top", "side"], "max_secs": 300,
            "meta": {"operator": "ana", "sku": "JERSEY-9", "batch": 7},
            "env": "prod", "sent_at": "2026-11-23T10:00:00Z"
        });
        let command: Command = serde_json::from_value(value.clone()).unwrap();
        let Op::Start(capture) = &command.op else {
            panic!("not a start: {command:?}")
        };
        assert_eq!(capture.cameras.as_ref().unwrap().names().len(), 2);
        assert_eq!(capture.max_secs, NonZeroU32::new(300));
        assert_eq!(serde_json::to_value(&command).unwrap(), value);
    }

    #[test]
    fn camera_lists_must_be_non_empty_and_distinct() {
        let with = |cameras: Value| {
            serde_json::from_value::<Command>(
                json!({"v":1,"id":"c","op":"start","order":"SO-1","cameras":cameras}),
            )
        };
        assert!(with(json!(["top"])).is_ok());
        assert!(with(json!([])).is_err());
        assert!(with(json!(["top", "top"])).is_err());
        assert!(with(json!(["Top"])).is_err());
        assert!(with(json!("top")).is_err());
    }

    #[test]
    fn ok_replies_always_carry_clips() {
        let ping: Command = serde_json::from_str(r#"{"v":1,"id":"c-0005","op":"ping"}"#).unwrap();
        let at = "2026-11-23T10:00:00Z".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&Reply::ok(&ping, vec![], at)).unwrap(),
            r#"{"v":1,"id":"c-0005","ok":true,"op":"ping","clips":[],"at":"2026-11-23T10:00:00Z"}"#
        );
    }
}
