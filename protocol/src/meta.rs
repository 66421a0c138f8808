//! `meta`: free-form context from the line system (operator, SKU, batch).
//!
//! A JSON object of at most [`MAX_META_BYTES`] when serialized compactly. The agent carries it
//! unchanged, key order included, from the `start`/`snapshot` command into the uploaded
//! notification, and the ingest from there into the completion event.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest `meta` object, in bytes of its compact JSON serialization (1 KiB).
pub const MAX_META_BYTES: usize = 1024;

/// A JSON object of at most [`MAX_META_BYTES`] serialized; `{}` by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
#[schemars(description = "JSON object of at most 1024 bytes serialized (compact).")]
pub struct Meta(Map<String, Value>);

/// Why a `meta` object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The object is over [`MAX_META_BYTES`] when serialized compactly.
    #[error("meta of {size} bytes serialized is over the limit of {MAX_META_BYTES} bytes")]
    TooLarge {
        /// Its serialized size.
        size: usize,
    },
}

impl Meta {
    /// The fields of the object.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Whether the object has no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Map<String, Value>> for Meta {
    type Error = MetaError;

    fn try_from(fields: Map<String, Value>) -> Result<Self, Self::Error> {
        let size = compact_size(&fields);
        if size > MAX_META_BYTES {
            return Err(MetaError::TooLarge { size });
        }
        Ok(Meta(fields))
    }
}

impl From<Meta> for Map<String, Value> {
    fn from(meta: Meta) -> Self {
        meta.0
    }
}

/// Size of the compact JSON serialization of `fields`, counted without allocating it.
fn compact_size(fields: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Map` of `Value`s into an infallible writer cannot fail; count what was written.
    let _ = serde_json::to_writer(&mut counter, fields);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(fields) => fields,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn carries_key_order_unchanged() {
        let text = r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#;
        let meta: Meta = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&meta).unwrap(), text);
    }

    #[test]
    fn accepts_exactly_one_kib_and_refuses_one_byte_more() {
        // {"k":"…"} is 8 bytes of syntax around the value.
        let fits = object(json!({ "k": "x".repeat(MAX_META_BYTES - 8) }));
        assert_eq!(compact_size(&fits), MAX_META_BYTES);
        assert!(Meta::try_from(fits).is_ok());

        let over = object(json!({ "k": "x".repeat(MAX_META_BYTES - 7) }));
        assert_eq!(
            Meta::try_from(over),
            Err(MetaError::TooLarge { size: 1025 })
        );
    }

    #[test]
    fn size_is_measured_compact_not_as_sent() {
        let spaced = format!("{{ \"k\" :   \"{}\" }}", "x".repeat(MAX_META_BYTES - 8));
        assert!(serde_json::from_str::<Meta>(&spaced).is_ok());
    }

    #[test]
    fn refuses_anything_but_an_object() {
        for text in ["[]", "\"operator\"", "1", "null", "true"] {
            assert!(serde_json::from_str::<Meta>(text).is_err(), "{text}");
        }
    }
}
