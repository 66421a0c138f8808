//! Replies from a station to the line (`cap/{env}/station/{station}/reply`).
//!
//! Every command delivery gets exactly one reply, with the command's `id` (`null` when none
//! could be read), its `op` and `order` when readable, and either `"ok":true` with the clip
//! ids, or `"ok":false` with an error code and a message saying what failed with which input:
//!
//! ```json
//! {"v":1,"id":"c-0001","ok":true,"op":"start","order":"SO-2026-000123","clips":["01JD...","01JD..."],"at":"..."}
//! {"v":1,"id":"c-0002","ok":false,"op":"stop","order":"SO-2026-000123","error":{"code":"not_recording","message":"station pack-03 is not recording order SO-2026-000123"}}
//! ```
//!
//! An ok reply always carries `clips` (empty for `ping`).
//!
//! A reply knows the command it answers only by its id, op name ([`OpName`]) and order; the
//! replies made from a command live with it (`Reply::ok` and `Reply::error` in `command`, and
//! `Rejection::to_reply` for a payload refused before it was a command).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::Flag;
use crate::{ClipId, CommandId, OpName, OrderId, ProtocolV1, Timestamp};

/// One reply to one command delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "WireReply", into = "WireReply")]
pub struct Reply {
    /// The command's id; `None` (`"id":null`) when it could not be read.
    pub id: Option<CommandId>,
    /// The command's op, when it could be read.
    pub op: Option<OpName>,
    /// The command's order, when it could be read and is valid.
    pub order: Option<OrderId>,
    /// The clip ids (`"ok":true`), or why the command was refused (`"ok":false`).
    pub outcome: Result<Vec<ClipId>, ReplyError>,
    /// When the reply was made.
    pub at: Option<Timestamp>,
}

impl Reply {
    /// Whether the command succeeded.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// The `error` object of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyError {
    /// What kind of failure; the line system decides what to do from this.
    pub code: ErrorCode,
    /// For people: what failed, with which input.
    pub message: String,
}

/// Why a command was refused (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, over 64 KiB, a missing or mistyped field, an unknown op.
    BadRequest,
    /// The order id breaks its rule.
    BadOrder,
    /// The command names another environment than the agent's.
    WrongEnv,
    /// `"v"` is not 1.
    UnsupportedVersion,
    /// `stop`/`abort` for an order the station is not recording.
    NotRecording,
    /// `start` for another order while recording, with `on_new_start = "reject"`.
    Busy,
    /// The spool is full and nothing can be evicted.
    DiskFull,
    /// A selected camera does not exist or does not deliver frames.
    CameraUnavailable,
    /// A fault of the agent; retrying may help.
    Internal,
}

impl ErrorCode {
    /// Every code, in protocol order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::BadOrder,
        ErrorCode::WrongEnv,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotRecording,
        ErrorCode::Busy,
        ErrorCode::DiskFull,
        ErrorCode::CameraUnavailable,
        ErrorCode::Internal,
    ];

    /// The code as on the wire, e.g. `not_recording`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadOrder => "bad_order",
            ErrorCode::WrongEnv => "wrong_env",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotRecording => "not_recording",
            ErrorCode::Busy => "busy",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::CameraUnavailable => "camera_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two shapes of a reply on the wire, told apart by `"ok"`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "Reply")]
enum WireReply {
    /// The command succeeded.
    Ok {
        v: ProtocolV1,
        id: Option<CommandId>,
        ok: Flag<true>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<OpName>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderId>,
        /// One clip id per selected camera (empty for `ping`).
        #[serde(default)]
        clips: Vec<ClipId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Timestamp>,
    },
    /// The command was refused.
    Refused {
        v: ProtocolV1,
        id: Option<CommandId>,
        ok: Flag<false>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<OpName>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderId>,
        error: ReplyError,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Timestamp>,
    },
}

impl From<WireReply> for Reply {
    fn from(wire: WireReply) -> Self {
        match wire {
            WireReply::Ok {
                id,
                op,
                order,
                clips,
                at,
                ..
            } => Reply {
                id,
                op,
                order,
                outcome: Ok(clips),
                at,
            },
            WireReply::Refused {
                id,
                op,
                order,
                error,
                at,
                ..
            } => Reply {
                id,
                op,
                order,
                outcome: Err(error),
                at,
            },
        }
    }
}

impl From<Reply> for WireReply {
    fn from(reply: Reply) -> Self {
        let Reply {
            id,
            op,
            order,
            outcome,
            at,
        } = reply;
        match outcome {
            Ok(clips) => WireReply::Ok {
                v: ProtocolV1,
                id,
                ok: Flag,
                op,
                order,
                clips,
                at,
            },
            Err(error) => WireReply::Refused {
                v: ProtocolV1,
                id,
                ok: Flag,
                op,
                order,
                error,
                at,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// DESIGN.md section 3 examples, with real clip ids and time in place of "01JD..." and "...".
    const OK_EXAMPLE: &str = r#"{"v":1,"id":"c-0001","ok":true,"op":"start","order":"SO-2026-000123","clips":["01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","01JDQ3Z8M4X5V6W7Y8Z9A0B1C3"],"at":"2026-11-23T10:00:01Z"}"#;
    const ERROR_EXAMPLE: &str = r#"{"v":1,"id":"c-0002","ok":false,"op":"stop","order":"SO-2026-000123","error":{"code":"not_recording","message":"station pack-03 is not recording order SO-2026-000123"}}"#;

    #[test]
    fn design_examples_round_trip_exactly() {
        for example in [OK_EXAMPLE, ERROR_EXAMPLE] {
            let reply: Reply = serde_json::from_str(example).unwrap();
            assert_eq!(serde_json::to_string(&reply).unwrap(), example);
        }
        let ok: Reply = serde_json::from_str(OK_EXAMPLE).unwrap();
        assert_eq!(ok.outcome.unwrap().len(), 2);
        let refused: Reply = serde_json::from_str(ERROR_EXAMPLE).unwrap();
        assert_eq!(refused.outcome.unwrap_err().code, ErrorCode::NotRecording);
    }

    #[test]
    fn a_reply_without_a_readable_id_says_null() {
        let reply = Reply {
            id: None,
            op: None,
            order: None,
            outcome: Err(ReplyError {
                code: ErrorCode::BadRequest,
                message: "command is not valid JSON".into(),
            }),
            at: Some("2026-11-23T10:00:00Z".parse().unwrap()),
        };
        let value = serde_json::to_value(&reply).unwrap();
        assert_eq!(value["id"], Value::Null);
        assert_eq!(value["ok"], json!(false));
        assert_eq!(value["error"]["code"], json!("bad_request"));
        assert_eq!(serde_json::from_value::<Reply>(value).unwrap(), reply);
    }

    #[test]
    fn ok_and_error_cannot_be_mixed() {
        for text in [
            r#"{"v":1,"id":"c","ok":true,"error":{"code":"busy","message":"m"},"clips":"x"}"#,
            r#"{"v":1,"id":"c","ok":false}"#,
            r#"{"v":1,"id":"c","ok":"yes","clips":[]}"#,
            r#"{"v":2,"id":"c","ok":true,"clips":[]}"#,
        ] {
            assert!(serde_json::from_str::<Reply>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn every_error_code_has_its_wire_name() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "bad_order",
                "wrong_env",
                "unsupported_version",
                "not_recording",
                "busy",
                "disk_full",
                "camera_unavailable",
                "internal"
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
