//! The confirmation, ingest -> agent (`cap/{env}/device/{device}/confirm`).
//!
//! ```json
//! {"v":1,"clip_id":"01JD...","status":"accepted"}
//! {"v":1,"clip_id":"01JD...","status":"rejected","reason":"sha256 mismatch"}
//! ```
//!
//! `accepted` means the clip is in the catalog: the agent may delete its local copy (and only
//! then). `rejected` means the object does not match the notification; the agent keeps the
//! clip and reports it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::decode;
use crate::{ClipId, DecodeError, ProtocolV1};

/// The ingest's answer to one uploaded notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Confirm {
    /// Always 1.
    pub v: ProtocolV1,
    /// The clip.
    pub clip_id: ClipId,
    /// Accepted, or rejected with a reason.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Confirm {
    /// `"status":"accepted"` for `clip_id`.
    pub fn accepted(clip_id: ClipId) -> Confirm {
        Confirm {
            v: ProtocolV1,
            clip_id,
            verdict: Verdict::Accepted,
        }
    }

    /// `"status":"rejected"` for `clip_id`, with what did not match.
    pub fn rejected(clip_id: ClipId, reason: impl Into<String>) -> Confirm {
        Confirm {
            v: ProtocolV1,
            clip_id,
            verdict: Verdict::Rejected {
                reason: reason.into(),
            },
        }
    }
}

/// Parses a confirmation received by an agent.
pub fn parse_confirm(payload: &[u8]) -> Result<Confirm, DecodeError> {
    decode(payload, "confirmation")
}

/// The `status` of a confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// The clip is in the catalog; the agent may delete its local copy.
    Accepted,
    /// The object does not match the notification.
    Rejected {
        /// What did not match, e.g. `sha256 mismatch`.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPTED: &str = r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","status":"accepted"}"#;
    const REJECTED: &str = r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","status":"rejected","reason":"sha256 mismatch"}"#;

    #[test]
    fn design_examples_round_trip_exactly() {
        for example in [ACCEPTED, REJECTED] {
            let confirm = parse_confirm(example.as_bytes()).unwrap();
            assert_eq!(serde_json::to_string(&confirm).unwrap(), example);
        }
        let clip_id: ClipId = "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2".parse().unwrap();
        assert_eq!(
            parse_confirm(ACCEPTED.as_bytes()).unwrap(),
            Confirm::accepted(clip_id.clone())
        );
        assert_eq!(
            parse_confirm(REJECTED.as_bytes()).unwrap(),
            Confirm::rejected(clip_id, "sha256 mismatch")
        );
    }

    #[test]
    fn rejected_needs_a_reason_and_status_must_be_known() {
        for text in [
            r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","status":"rejected"}"#,
            r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","status":"maybe"}"#,
            r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"}"#,
            r#"{"v":2,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","status":"accepted"}"#,
        ] {
            assert!(parse_confirm(text.as_bytes()).is_err(), "{text}");
        }
    }
}
