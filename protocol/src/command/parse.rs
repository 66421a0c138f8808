//! From a raw MQTT payload to a [`Command`], or to the reason it is refused.
//!
//! The checks run in this order and the first failure decides the reply:
//!
//! 1. size: over 64 KiB is `bad_request`, refused before parsing;
//! 2. JSON: not JSON, or not an object, is `bad_request`;
//! 3. `v`: missing or not a number is `bad_request`, a number other than 1 is
//!    `unsupported_version`;
//! 4. `env`: a string other than the agent's own is `wrong_env` (absent or `null` is fine);
//! 5. `id`, then `op`: missing, mistyped, out of rule or unknown is `bad_request`;
//! 6. `order` (all ops but `ping`): missing or not a string is `bad_request`, a string that
//!    breaks the order rule is `bad_order`;
//! 7. every other field (`cameras`, `max_secs`, `meta`, `reason`, `sent_at`): `bad_request`.
//!
//! Whatever could be read before the failure (a valid `id`, a known `op`, a valid `order`) is
//! kept in the [`Rejection`] so that the reply can echo it; an unreadable id is `"id":null`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ids::Shown;
use crate::{
    Command, CommandId, Env, ErrorCode, InvalidId, MAX_PAYLOAD_BYTES, OpName, OrderId, Reply,
    ReplyError, Timestamp,
};

/// A command that was refused, with what could be read of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Rejection {
    /// The command's id, if it could be read and is valid.
    pub id: Option<CommandId>,
    /// The command's op, if it could be read and is known.
    pub op: Option<OpName>,
    /// The command's order, if it could be read and is valid.
    pub order: Option<OrderId>,
    /// What was wrong.
    pub error: CommandError,
}

impl Rejection {
    /// The reply error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        self.error.code()
    }

    /// The reply to publish for this refusal.
    pub fn to_reply(&self, at: Timestamp) -> Reply {
        Reply {
            id: self.id.clone(),
            op: self.op,
            order: self.order.clone(),
            outcome: Err(ReplyError {
                code: self.code(),
                message: self.error.to_string(),
            }),
            at: Some(at),
        }
    }
}

/// What was wrong with a command payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Over [`MAX_PAYLOAD_BYTES`]; not parsed.
    #[error("command of {size} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge {
        /// Size of the payload.
        size: usize,
    },
    /// Not JSON.
    #[error("command is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("command must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A required field is absent.
    #[error("command has no {0:?} field")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field {field:?} must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The JSON type it must have.
        expected: &'static str,
        /// The JSON type it has.
        got: &'static str,
    },
    /// `"v"` is a number other than 1.
    #[error("protocol version {0} is not supported; this agent speaks version 1")]
    UnsupportedVersion(String),
    /// `"env"` is not the agent's environment.
    #[error("command for env {} refused by an agent of env \"{own}\"", Shown(.command))]
    WrongEnv {
        /// The env the command names.
        command: String,
        /// The agent's env.
        own: Env,
    },
    /// `"id"` breaks the command id rule.
    #[error(transparent)]
    BadId(InvalidId),
    /// `"op"` is not one of the protocol's operations.
    #[error("unknown op {}; expected one of start, stop, abort, snapshot, ping", Shown(.0))]
    UnknownOp(String),
    /// `"order"` breaks the order rule.
    #[error(transparent)]
    BadOrder(InvalidId),
    /// Another field is wrong (`cameras`, `max_secs`, `meta`, `reason`, `sent_at`).
    #[error("invalid {op} command: {reason}")]
    Schema {
        /// The command's op.
        op: OpName,
        /// What serde found wrong.
        reason: String,
    },
}

impl CommandError {
    /// The reply error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            CommandError::WrongEnv { .. } => ErrorCode::WrongEnv,
            CommandError::BadOrder(_) => ErrorCode::BadOrder,
            CommandError::TooLarge { .. }
            | CommandError::Json(_)
            | CommandError::NotAnObject(_)
            | CommandError::MissingField(_)
            | CommandError::WrongType { .. }
            | CommandError::BadId(_)
            | CommandError::UnknownOp(_)
            | CommandError::Schema { .. } => ErrorCode::BadRequest,
        }
    }
}

/// Parses one command payload for an agent of environment `own_env`.
///
/// Never panics, whatever the bytes. On refusal, [`Rejection::to_reply`] gives the reply.
pub fn parse_command(payload: &[u8], own_env: &Env) -> Result<Command, Rejection> {
    let anonymous = |error| Rejection {
        id: None,
        op: None,
        order: None,
        error,
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(anonymous(CommandError::TooLarge {
            size: payload.len(),
        }));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|error| anonymous(CommandError::Json(error.to_string())))?;
    let Value::Object(fields) = value else {
        return Err(anonymous(CommandError::NotAnObject(json_type(&value))));
    };

    let readable = Readable::from(&fields);
    let reject = |error| Rejection {
        id: readable.id.clone(),
        op: readable.op,
        order: readable.order.clone(),
        error,
    };
    check_version(fields.get("v")).map_err(reject)?;
    check_env(fields.get("env"), own_env).map_err(reject)?;
    check_id(fields.get("id")).map_err(reject)?;
    let op = check_op(fields.get("op")).map_err(reject)?;
    if op.takes_order() {
        check_order(fields.get("order")).map_err(reject)?;
    }
    Command::deserialize(Value::Object(fields)).map_err(|error| {
        reject(CommandError::Schema {
            op,
            reason: error.to_string(),
        })
    })
}

/// What can be read of a command even when it is refused.
struct Readable {
    id: Option<CommandId>,
    op: Option<OpName>,
    order: Option<OrderId>,
}

impl From<&Map<String, Value>> for Readable {
    fn from(fields: &Map<String, Value>) -> Self {
        let text = |name| fields.get(name).and_then(Value::as_str);
        let op = text("op").and_then(OpName::from_name);
        let order = match op {
            Some(OpName::Ping) => None,
            _ => text("order").and_then(|order| OrderId::try_from(order).ok()),
        };
        Readable {
            id: text("id").and_then(|id| CommandId::try_from(id).ok()),
            op,
            order,
        }
    }
}

fn check_version(v: Option<&Value>) -> Result<(), CommandError> {
    match v {
        None => Err(CommandError::MissingField("v")),
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(crate::PROTOCOL_VERSION)) => Ok(()),
        Some(Value::Number(n)) => Err(CommandError::UnsupportedVersion(n.to_string())),
        Some(other) => Err(wrong_type("v", "a number", other)),
    }
}

fn check_env(env: Option<&Value>, own: &Env) -> Result<(), CommandError> {
    match env {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(env)) if env == own.as_str() => Ok(()),
        Some(Value::String(env)) => Err(CommandError::WrongEnv {
            command: env.clone(),
            own: own.clone(),
        }),
        Some(other) => Err(wrong_type("env", "a string", other)),
    }
}

fn check_id(id: Option<&Value>) -> Result<(), CommandError> {
    match id {
        None => Err(CommandError::MissingField("id")),
        Some(Value::String(id)) => CommandId::try_from(id.as_str())
            .map(drop)
            .map_err(CommandError::BadId),
        Some(other) => Err(wrong_type("id", "a string", other)),
    }
}

fn check_op(op: Option<&Value>) -> Result<OpName, CommandError> {
    match op {
        None => Err(CommandError::MissingField("op")),
        Some(Value::String(op)) => {
            OpName::from_name(op).ok_or_else(|| CommandError::UnknownOp(op.clone()))
        }
        Some(other) => Err(wrong_type("op", "a string", other)),
    }
}

fn check_order(order: Option<&Value>) -> Result<(), CommandError> {
    match order {
        None => Err(CommandError::MissingField("order")),
        Some(Value::String(order)) => OrderId::try_from(order.as_str())
            .map(drop)
            .map_err(CommandError::BadOrder),
        Some(other) => Err(wrong_type("order", "a string", other)),
    }
}

fn wrong_type(field: &'static str, expected: &'static str, got: &Value) -> CommandError {
    CommandError::WrongType {
        field,
        expected,
        got: json_type(got),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::DESIGN_EXAMPLES;
    use crate::{Capture, Op};
    use serde_json::json;

    fn prod() -> Env {
        "prod".parse().unwrap()
    }

    fn parse(value: Value) -> Result<Command, Rejection> {
        parse_command(&serde_json::to_vec(&value).unwrap(), &prod())
    }

    fn rejected(value: Value) -> Rejection {
        parse(value.clone()).expect_err(&value.to_string())
    }

    #[test]
    fn design_examples_are_accepted() {
        for example in DESIGN_EXAMPLES {
            let command = parse_command(example.as_bytes(), &prod()).unwrap();
            assert_eq!(serde_json::to_string(&command).unwrap(), example);
        }
    }

    #[test]
    fn own_env_is_accepted() {
        let command = parse(json!({"v":1,"id":"c-1","op":"ping","env":"prod"})).unwrap();
        assert_eq!(command.env, Some(prod()));
    }

    #[test]
    fn hostile_orders_are_bad_order_with_the_id_kept() {
        let long = "x".repeat(65);
        for order in ["../etc", "a/b", "..", long.as_str(), "SO-é", "", "a..b"] {
            for op in ["start", "stop", "abort", "snapshot"] {
                let rejection = rejected(json!({"v":1,"id":"c-9","op":op,"order":order}));
                assert_eq!(rejection.code(), ErrorCode::BadOrder, "{op} {order:?}");
                assert_eq!(rejection.id, Some("c-9".parse().unwrap()));
                assert_eq!(rejection.op, OpName::from_name(op));
                assert_eq!(rejection.order, None);
                let message = rejection.to_string();
                assert!(message.starts_with("order id \""), "{message}");
            }
        }
    }

    #[test]
    fn unreadable_payloads_are_bad_request_with_null_id() {
        let too_large = {
            let mut payload = br#"{"v":1,"id":"c-1","op":"ping"}"#.to_vec();
            payload.resize(MAX_PAYLOAD_BYTES + 1, b' ');
            payload
        };
        for payload in [
            &b""[..],
            b"{",
            b"not json",
            b"\xff\xfe",
            b"[1,2]",
            b"\"start\"",
            b"null",
            &too_large,
        ] {
            let rejection = parse_command(payload, &prod()).unwrap_err();
            assert_eq!(rejection.code(), ErrorCode::BadRequest);
            assert_eq!(rejection.id, None);
            let reply = serde_json::to_value(rejection.to_reply(Timestamp::now())).unwrap();
            assert_eq!(reply["id"], Value::Null);
            assert_eq!(reply["ok"], json!(false));
            assert_eq!(reply["error"]["code"], json!("bad_request"));
        }
    }

    #[test]
    fn oversized_payloads_are_refused_by_size() {
        let rejection = parse_command(&vec![b'x'; MAX_PAYLOAD_BYTES + 1], &prod()).unwrap_err();
        assert_eq!(
            rejection.error,
            CommandError::TooLarge {
                size: MAX_PAYLOAD_BYTES + 1
            }
        );
    }

    #[test]
    fn schema_errors_are_bad_request_and_keep_what_was_readable() {
        let cases = [
            json!({"v":1,"op":"ping"}),
            json!({"v":1,"id":null,"op":"ping"}),
            json!({"v":1,"id":7,"op":"ping"}),
            json!({"v":1,"id":"x".repeat(65),"op":"ping"}),
            json!({"v":1,"id":"c\n1","op":"ping"}),
            json!({"id":"c-1","op":"ping"}),
            json!({"v":"1","id":"c-1","op":"ping"}),
            json!({"v":1,"id":"c-1"}),
            json!({"v":1,"id":"c-1","op":"record"}),
            json!({"v":1,"id":"c-1","op":["start"]}),
            json!({"v":1,"id":"c-1","op":"start"}),
            json!({"v":1,"id":"c-1","op":"stop","order":42}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","cameras":[]}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","cameras":["top","top"]}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","cameras":["../x"]}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","max_secs":0}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","max_secs":-5}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","max_secs":"300"}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","meta":[1]}),
            json!({"v":1,"id":"c-1","op":"start","order":"SO-1","meta":{"k":"x".repeat(2000)}}),
            json!({"v":1,"id":"c-1","op":"abort","order":"SO-1","reason":5}),
            json!({"v":1,"id":"c-1","op":"stop","order":"SO-1","sent_at":"yesterday"}),
            json!({"v":1,"id":"c-1","op":"ping","env":1}),
        ];
        for case in cases {
            let rejection = rejected(case.clone());
            assert_eq!(
                rejection.code(),
                ErrorCode::BadRequest,
                "{case}: {rejection}"
            );
            let id_readable = case["id"]
                .as_str()
                .is_some_and(|id| id.parse::<CommandId>().is_ok());
            assert_eq!(rejection.id.is_some(), id_readable, "{case}");
        }
    }

    #[test]
    fn schema_errors_say_which_field() {
        let rejection =
            rejected(json!({"v":1,"id":"c-1","op":"start","order":"SO-1","max_secs":0}));
        assert_eq!(rejection.op, Some(OpName::Start));
        assert_eq!(rejection.order, Some("SO-1".parse().unwrap()));
        assert!(
            rejection.to_string().starts_with("invalid start command: "),
            "{rejection}"
        );

        let rejection = rejected(json!({"v":1,"id":"c-1","op":"record"}));
        assert_eq!(
            rejection.to_string(),
            r#"unknown op "record"; expected one of start, stop, abort, snapshot, ping"#
        );
        let rejection = rejected(json!({"v":1,"id":"c-1","op":"start"}));
        assert_eq!(rejection.to_string(), r#"command has no "order" field"#);
    }

    #[test]
    fn other_versions_are_unsupported_version() {
        for v in [json!(0), json!(2), json!(-1), json!(1.5), json!(1.0)] {
            let rejection = rejected(json!({"v":v,"id":"c-1","op":"stop","order":"SO-1"}));
            assert_eq!(rejection.code(), ErrorCode::UnsupportedVersion, "{v}");
            assert_eq!(rejection.id, Some("c-1".parse().unwrap()));
            assert_eq!(rejection.op, Some(OpName::Stop));
            assert_eq!(rejection.order, Some("SO-1".parse().unwrap()));
        }
        assert_eq!(
            rejected(json!({"v":2,"id":"c-1","op":"ping"})).to_string(),
            "protocol version 2 is not supported; this agent speaks version 1"
        );
    }

    #[test]
    fn another_env_is_wrong_env() {
        for env in ["dev", "Prod", "prod ", ""] {
            let rejection = rejected(json!({"v":1,"id":"c-1","op":"ping","env":env}));
            assert_eq!(rejection.code(), ErrorCode::WrongEnv, "{env:?}");
            assert_eq!(rejection.op, Some(OpName::Ping));
        }
        assert_eq!(
            rejected(json!({"v":1,"id":"c-1","op":"ping","env":"dev"})).to_string(),
            r#"command for env "dev" refused by an agent of env "prod""#
        );
    }

    #[test]
    fn wrong_env_is_decided_before_the_order_is_looked_at() {
        let rejection = rejected(json!({"v":1,"id":"c-1","op":"start","order":"../x","env":"dev"}));
        assert_eq!(rejection.code(), ErrorCode::WrongEnv);
    }

    #[test]
    fn every_rejection_maps_to_its_code() {
        let cases = [
            (json!({"v":1,"id":"c-1","op":"nope"}), ErrorCode::BadRequest),
            (
                json!({"v":1,"id":"c-1","op":"stop","order":"a/b"}),
                ErrorCode::BadOrder,
            ),
            (
                json!({"v":1,"id":"c-1","op":"ping","env":"dev"}),
                ErrorCode::WrongEnv,
            ),
            (
                json!({"v":3,"id":"c-1","op":"ping"}),
                ErrorCode::UnsupportedVersion,
            ),
        ];
        for (case, code) in cases {
            let rejection = rejected(case);
            assert_eq!(rejection.code(), code);
            let reply = rejection.to_reply(Timestamp::now());
            assert_eq!(reply.outcome.unwrap_err().code, code);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_nulls_mean_absent() {
        let command = parse(json!({
            "v":1,"id":"c-1","op":"start","order":"SO-1","station":"pack-03",
            "env":null,"cameras":null,"max_secs":null,"meta":null,"sent_at":null
        }))
        .unwrap();
        assert_eq!(command.op, Op::Start(Capture::of("SO-1".parse().unwrap())));
    }

    #[test]
    fn ping_ignores_any_order_field() {
        let command = parse(json!({"v":1,"id":"c-1","op":"ping","order":"../x"})).unwrap();
        assert_eq!(command.op, Op::Ping);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let payload =
            format!(r#"{{"v":1,"id":"c-1","op":"start","order":"SO-1","meta":{{"k":{deep}}}}}"#);
        // Over 64 KiB: refused by size. The same nesting under the limit: refused by depth.
        assert_eq!(
            parse_command(payload.as_bytes(), &prod())
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let payload =
            format!(r#"{{"v":1,"id":"c-1","op":"start","order":"SO-1","meta":{{"k":{deep}}}}}"#);
        let rejection = parse_command(payload.as_bytes(), &prod()).unwrap_err();
        assert_eq!(rejection.code(), ErrorCode::BadRequest);
        assert_eq!(rejection.id, None);
    }
}
