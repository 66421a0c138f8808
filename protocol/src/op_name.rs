//! The names of the operations (`"op":"start"`), shared by commands and replies: a reply
//! names the op of the command it answers, when that could be read.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of an operation, as in the `op` field of commands and replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpName {
    /// `start`
    Start,
    /// `stop`
    Stop,
    /// `abort`
    Abort,
    /// `snapshot`
    Snapshot,
    /// `ping`
    Ping,
}

impl OpName {
    /// Every operation, in protocol order.
    pub const ALL: [OpName; 5] = [
        OpName::Start,
        OpName::Stop,
        OpName::Abort,
        OpName::Snapshot,
        OpName::Ping,
    ];

    /// The `op` field.
    pub fn as_str(self) -> &'static str {
        match self {
            OpName::Start => "start",
            OpName::Stop => "stop",
            OpName::Abort => "abort",
            OpName::Snapshot => "snapshot",
            OpName::Ping => "ping",
        }
    }

    /// The operation named `text`, if any.
    pub fn from_name(text: &str) -> Option<OpName> {
        OpName::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// Whether commands of this operation must carry an `order`.
    pub fn takes_order(self) -> bool {
        self != OpName::Ping
    }
}

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn op_names_parse_back() {
        for op in OpName::ALL {
            assert_eq!(OpName::from_name(op.as_str()), Some(op));
            assert_eq!(serde_json::to_value(op).unwrap(), json!(op.as_str()));
        }
        assert_eq!(OpName::from_name("record"), None);
    }
}
