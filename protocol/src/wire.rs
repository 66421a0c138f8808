//! What every message shares: the `"v":1` field, the payload size limit and one way to decode.
//!
//! Every MQTT payload is one UTF-8 JSON object. A payload over [`MAX_PAYLOAD_BYTES`] is refused
//! before any parsing, so that a hostile or broken sender cannot make a receiver allocate or
//! recurse on its behalf. Unknown fields are ignored (a v1 receiver tolerates additive fields);
//! a different `"v"` is refused.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the MQTT protocol this crate implements (the `"v"` field of every message).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest payload, in bytes, that any receiver of this protocol parses (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The `"v":1` field at the head of every MQTT message.
///
/// It serializes as `1` and deserializes only from `1`, so a message of another protocol
/// version can never be mistaken for a v1 message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ProtocolV1;

impl Serialize for ProtocolV1 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(PROTOCOL_VERSION)
    }
}

impl<'de> Deserialize<'de> for ProtocolV1 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u64::deserialize(deserializer)?;
        if version == u64::from(PROTOCOL_VERSION) {
            Ok(ProtocolV1)
        } else {
            Err(D::Error::custom(format_args!(
                "protocol version {version} is not supported (expected {PROTOCOL_VERSION})"
            )))
        }
    }
}

impl JsonSchema for ProtocolV1 {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("ProtocolVersion")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Protocol version: always 1.",
            "type": "integer",
            "const": PROTOCOL_VERSION,
        })
    }
}

/// A boolean field whose value is fixed by the type: `Flag<true>` only (de)serializes `true`.
///
/// Used to tell the two forms of a message apart by a JSON boolean (`"ok":true|false`),
/// which serde's tagged enums cannot do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct Flag<const B: bool>;

impl<const B: bool> Serialize for Flag<B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(B)
    }
}

impl<'de, const B: bool> Deserialize<'de> for Flag<B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if bool::deserialize(deserializer)? == B {
            Ok(Flag)
        } else {
            Err(D::Error::custom(format_args!("expected {B}")))
        }
    }
}

impl<const B: bool> JsonSchema for Flag<B> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        Cow::Owned(format!("Flag_{B}"))
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "boolean", "const": B })
    }
}

/// Defines a unit struct that (de)serializes as one fixed string, e.g. `"specversion":"1.0"`.
macro_rules! literal_string {
    ($(#[$doc:meta])* $name:ident = $value:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name;

        impl $name {
            /// The only value of this field.
            pub const VALUE: &'static str = $value;
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str($value)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                if text == $value {
                    Ok($name)
                } else {
                    Err(<D::Error as serde::de::Error>::custom(format_args!(
                        "expected {:?}, got {:?}",
                        $value, text
                    )))
                }
            }
        }

        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "const": $value })
            }
        }
    };
}
pub(crate) use literal_string;

/// Why a payload could not be decoded into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is over [`MAX_PAYLOAD_BYTES`]; it was not parsed.
    #[error("{what} of {size} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge {
        /// The message that was expected.
        what: &'static str,
        /// Size of the refused payload.
        size: usize,
    },
    /// The payload is not JSON, or not the JSON of that message.
    #[error("invalid {what}: {source}")]
    Json {
        /// The message that was expected.
        what: &'static str,
        /// What serde_json found wrong, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes one message from a raw payload, refusing payloads over [`MAX_PAYLOAD_BYTES`] before
/// parsing. `what` names the message in errors ("uploaded notification", "status", ...).
pub fn decode<T: DeserializeOwned>(payload: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            what,
            size: payload.len(),
        });
    }
    serde_json::from_slice(payload).map_err(|source| DecodeError::Json { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_field_accepts_only_one() {
        assert_eq!(serde_json::to_string(&ProtocolV1).unwrap(), "1");
        assert!(serde_json::from_str::<ProtocolV1>("1").is_ok());
        for other in ["0", "2", "-1", "1.0", "\"1\"", "null"] {
            assert!(
                serde_json::from_str::<ProtocolV1>(other).is_err(),
                "{other}"
            );
        }
    }

    #[test]
    fn flag_accepts_only_its_value() {
        assert_eq!(serde_json::to_string(&Flag::<true>).unwrap(), "true");
        assert!(serde_json::from_str::<Flag<true>>("true").is_ok());
        assert!(serde_json::from_str::<Flag<true>>("false").is_err());
        assert!(serde_json::from_str::<Flag<false>>("false").is_ok());
    }

    #[test]
    fn decode_refuses_oversized_payloads_before_parsing() {
        let payload = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let error = decode::<serde_json::Value>(&payload, "status").unwrap_err();
        assert!(
            matches!(error, DecodeError::TooLarge { size, .. } if size == MAX_PAYLOAD_BYTES + 1)
        );
        assert_eq!(
            error.to_string(),
            "status of 65537 bytes is over the limit of 65536 bytes"
        );
    }

    #[test]
    fn decode_accepts_a_payload_of_exactly_the_limit() {
        let mut payload = b"{}".to_vec();
        payload.resize(MAX_PAYLOAD_BYTES, b' ');
        assert!(decode::<serde_json::Value>(&payload, "status").is_ok());
    }
}
