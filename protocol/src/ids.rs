//! Identifiers and the rules they obey on the wire.
//!
//! Each identifier is a newtype over `String` that can only be built through its rule, so a
//! value of type [`OrderId`] is safe to put into an object key or a file name, and a
//! [`StationId`] safe to put into an MQTT topic. The rules:
//!
//! | type | rule | why |
//! | --- | --- | --- |
//! | [`OrderId`] | `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, never `..` | goes into object keys and file names |
//! | [`StationId`], [`DeviceId`], [`Env`] | `^[a-z0-9][a-z0-9-]{0,31}$` | go into MQTT topics |
//! | [`CameraName`] | `^[a-z0-9][a-z0-9-]{0,31}$` | goes into object metadata and logs |
//! | [`CommandId`] | 1..=64 printable ASCII characters (0x20..=0x7E) | chosen by the line system |
//! | [`ClipId`] | a ULID: 26 Crockford base32 characters, upper case | time-sortable, one object key per clip |
//! | [`Sha256Hex`] | 64 lower-case hex digits | compared with the object's metadata |
//!
//! Every refusal is an [`InvalidId`] whose message names the kind of identifier, the input
//! (quoted, escaped, shortened when long) and the rule, e.g.
//! `order id "../x": must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::str::FromStr;

/// What kind of identifier was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// [`OrderId`].
    Order,
    /// [`StationId`].
    Station,
    /// [`DeviceId`].
    Device,
    /// [`Env`].
    Env,
    /// [`CameraName`].
    Camera,
    /// [`CommandId`].
    Command,
    /// [`ClipId`].
    Clip,
    /// [`Sha256Hex`].
    Sha256,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Order => "order id",
            IdKind::Station => "station id",
            IdKind::Device => "device id",
            IdKind::Env => "env",
            IdKind::Camera => "camera name",
            IdKind::Command => "command id",
            IdKind::Clip => "clip id",
            IdKind::Sha256 => "sha256",
        })
    }
}

/// An identifier that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {}: {rule}", Shown(input))]
pub struct InvalidId {
    kind: IdKind,
    input: String,
    rule: &'static str,
}

impl InvalidId {
    fn new(kind: IdKind, input: &str, rule: &'static str) -> Self {
        InvalidId {
            kind,
            input: input.to_owned(),
            rule,
        }
    }

    /// Which kind of identifier was refused.
    pub fn kind(&self) -> IdKind {
        self.kind
    }

    /// The refused input, in full.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The rule it broke, e.g. `must match ^[a-z0-9][a-z0-9-]{0,31}$`.
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

/// Shows an input quoted and escaped, cut to [`Shown::MAX_CHARS`] characters so that a
/// hostile 64 KiB value does not end up in full in a reply or a log line.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl Shown<'_> {
    const MAX_CHARS: usize = 80;
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(Self::MAX_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let rest = self.0[cut..].chars().count();
                write!(f, "{:?}... ({rest} more characters)", &self.0[..cut])
            }
        }
    }
}

const ORDER_RULE: &str = "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// The order rule as one ECMA-262 regular expression, for the JSON Schema.
const ORDER_SCHEMA_PATTERN: &str = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
const NAME_RULE: &str = "must match ^[a-z0-9][a-z0-9-]{0,31}$";
const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,31}$";
const COMMAND_RULE: &str = "must be 1 to 64 printable ASCII characters";
const COMMAND_SCHEMA_PATTERN: &str = r"^[\x20-\x7E]{1,64}$";
const CLIP_RULE: &str = "must be a ULID: 26 upper-case Crockford base32 characters (0-9 A-Z without I L O U), the first 0-7";
const CLIP_SCHEMA_PATTERN: &str = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$";

fn check_order(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let first_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
    let rest_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !(first_ok && rest_ok && bytes.len() <= 64) {
        return Err(ORDER_RULE);
    }
    if text.contains("..") {
        return Err("must not contain \"..\"");
    }
    Ok(())
}

fn check_name(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if first_ok && rest_ok && bytes.len() <= 32 {
        Ok(())
    } else {
        Err(NAME_RULE)
    }
}

fn check_command(text: &str) -> Result<(), &'static str> {
    let printable = text.bytes().all(|b| (0x20..=0x7E).contains(&b));
    if printable && (1..=64).contains(&text.len()) {
        Ok(())
    } else {
        Err(COMMAND_RULE)
    }
}

/// Crockford's base32 alphabet, as used by ULIDs.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn crockford_value(b: u8) -> Option<u8> {
    CROCKFORD
        .iter()
        .position(|&c| c == b)
        .and_then(|i| u8::try_from(i).ok())
}

const SHA256_RULE: &str = "must be 64 lower-case hex digits";
const SHA256_SCHEMA_PATTERN: &str = "^[0-9a-f]{64}$";

fn check_sha256(text: &str) -> Result<(), &'static str> {
    let hex = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && text.len() == 64 {
        Ok(())
    } else {
        Err(SHA256_RULE)
    }
}

fn check_clip(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    // 26 x 5 bits = 130 bits: the first character carries only 3 bits of the 128.
    let first_ok = bytes.first().is_some_and(|b| (b'0'..=b'7').contains(b));
    let all_ok = bytes.iter().all(|&b| crockford_value(b).is_some());
    if bytes.len() == 26 && first_ok && all_ok {
        Ok(())
    } else {
        Err(CLIP_RULE)
    }
}

macro_rules! identifier {
    (
        $(#[$doc:meta])*
        $name:ident, $kind:expr, $check:path, $pattern:expr, $description:literal
    ) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                match $check(&text) {
                    Ok(()) => Ok($name(text)),
                    Err(rule) => Err(InvalidId::new($kind, &text, rule)),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;

            fn try_from(text: &str) -> Result<Self, Self::Error> {
                match $check(text) {
                    Ok(()) => Ok($name(text.to_owned())),
                    Err(rule) => Err(InvalidId::new($kind, text, rule)),
                }
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $name::try_from(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $description,
                    "type": "string",
                    "pattern": $pattern,
                })
            }
        }
    };
}

identifier! {
    /// A production order, e.g. `SO-2026-000123`: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$` and
    /// never `..`. Safe as a path segment of an object key and as a file name.
    OrderId, IdKind::Order, check_order, ORDER_SCHEMA_PATTERN,
    "Order id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, never \"..\"."
}

identifier! {
    /// A pack/production station, e.g. `pack-03`: `^[a-z0-9][a-z0-9-]{0,31}$`.
    StationId, IdKind::Station, check_name, NAME_PATTERN,
    "Station id: ^[a-z0-9][a-z0-9-]{0,31}$."
}

identifier! {
    /// A Raspberry Pi, e.g. `pi-07` (also its MQTT client id): `^[a-z0-9][a-z0-9-]{0,31}$`.
    DeviceId, IdKind::Device, check_name, NAME_PATTERN,
    "Device id: ^[a-z0-9][a-z0-9-]{0,31}$."
}

identifier! {
    /// A deployment environment, e.g. `dev`, `prod`: `^[a-z0-9][a-z0-9-]{0,31}$`. First
    /// segment of every topic and object key.
    Env, IdKind::Env, check_name, NAME_PATTERN,
    "Deployment environment: ^[a-z0-9][a-z0-9-]{0,31}$."
}

identifier! {
    /// A camera of a station, e.g. `top`: `^[a-z0-9][a-z0-9-]{0,31}$`. (The contract does not
    /// constrain camera names; this crate gives them the station rule because they go into
    /// object metadata, log fields and file names.)
    CameraName, IdKind::Camera, check_name, NAME_PATTERN,
    "Camera name: ^[a-z0-9][a-z0-9-]{0,31}$."
}

identifier! {
    /// The line system's id of one command, e.g. `c-0001`: 1..=64 printable ASCII
    /// characters. A redelivered command carries the same id and gets the same reply.
    CommandId, IdKind::Command, check_command, COMMAND_SCHEMA_PATTERN,
    "Command id: 1 to 64 printable ASCII characters."
}

identifier! {
    /// One clip (a video or a photo from one camera): a ULID in its canonical upper-case
    /// form, e.g. `01JDQ3Z8M4X5V6W7Y8Z9A0B1C2`. Sorting clip ids sorts them by creation time.
    ClipId, IdKind::Clip, check_clip, CLIP_SCHEMA_PATTERN,
    "Clip id: a ULID, 26 upper-case Crockford base32 characters."
}

identifier! {
    /// A SHA-256 digest as 64 lower-case hex digits: of a clip's file, in the uploaded
    /// notification and in the object's `sha256` metadata.
    Sha256Hex, IdKind::Sha256, check_sha256, SHA256_SCHEMA_PATTERN,
    "SHA-256 digest: 64 lower-case hex digits."
}

impl Sha256Hex {
    /// The hex form of a digest.
    pub fn from_digest(digest: [u8; 32]) -> Sha256Hex {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let text = digest
            .iter()
            .flat_map(|byte| [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xF)]])
            .map(char::from)
            .collect();
        Sha256Hex(text)
    }
}

impl ClipId {
    /// The clip id of a ULID given as its 128-bit value (e.g. `ulid::Ulid::new().0`).
    pub fn from_u128(value: u128) -> ClipId {
        let text = (0..26)
            .rev()
            .map(|digit| {
                let index = (value >> (digit * 5)) & 0x1F;
                char::from(CROCKFORD[index as usize])
            })
            .collect();
        ClipId(text)
    }

    /// The 128-bit value of the ULID.
    pub fn to_u128(&self) -> u128 {
        self.0
            .bytes()
            .filter_map(crockford_value)
            .fold(0, |value, digit| (value << 5) | u128::from(digit))
    }

    /// Milliseconds since the Unix epoch at which the clip id was made (the ULID's first
    /// 48 bits).
    pub fn timestamp_ms(&self) -> u64 {
        u64::try_from(self.to_u128() >> 80).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE_ORDERS: &[&str] = &[
        "../etc", "a/b", "..", "", "SO-ß-1", "订单", ".hidden", "-dash", "a..b", "a b", "a\0b",
        "a\\b",
    ];

    #[test]
    fn orders_from_the_line_are_accepted() {
        for order in ["SO-2026-000123", "SO-1", "a", "A.b_c-9", &"x".repeat(64)] {
            let id: OrderId = order.parse().unwrap();
            assert_eq!(id.as_str(), order);
        }
    }

    #[test]
    fn hostile_orders_are_refused() {
        let long = "x".repeat(65);
        for order in HOSTILE_ORDERS.iter().copied().chain([long.as_str()]) {
            let error = order.parse::<OrderId>().unwrap_err();
            assert_eq!(error.kind(), IdKind::Order);
            assert_eq!(error.input(), order);
        }
    }

    #[test]
    fn refusal_says_what_failed_with_which_input() {
        assert_eq!(
            "../x".parse::<OrderId>().unwrap_err().to_string(),
            r#"order id "../x": must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#
        );
        assert_eq!(
            "a..b".parse::<OrderId>().unwrap_err().to_string(),
            r#"order id "a..b": must not contain "..""#
        );
        assert_eq!(
            "Pack-03".parse::<StationId>().unwrap_err().to_string(),
            r#"station id "Pack-03": must match ^[a-z0-9][a-z0-9-]{0,31}$"#
        );
        assert_eq!(NAME_RULE, format!("must match {NAME_PATTERN}"));
    }

    #[test]
    fn long_inputs_are_shortened_in_messages() {
        let error = "/".repeat(1000).parse::<OrderId>().unwrap_err();
        let message = error.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("(920 more characters)"), "{message}");
        assert_eq!(error.input().len(), 1000);
    }

    #[test]
    fn names_follow_the_topic_rule() {
        for ok in ["pack-03", "pi-07", "0", "a-", &"a".repeat(32)] {
            assert!(ok.parse::<StationId>().is_ok(), "{ok}");
            assert!(ok.parse::<DeviceId>().is_ok(), "{ok}");
            assert!(ok.parse::<Env>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "Pack",
            "pack_03",
            "pack/03",
            "+",
            "#",
            "é",
            &"a".repeat(33),
        ] {
            assert!(bad.parse::<StationId>().is_err(), "{bad}");
            assert!(bad.parse::<DeviceId>().is_err(), "{bad}");
            assert!(bad.parse::<Env>().is_err(), "{bad}");
        }
    }

    #[test]
    fn command_ids_are_printable_ascii_up_to_64() {
        for ok in ["c-0001", " ", "~", &"x".repeat(64), "a b/c:d"] {
            assert!(ok.parse::<CommandId>().is_ok(), "{ok:?}");
        }
        for bad in ["", "\t", "a\nb", "é", "\u{7f}", &"x".repeat(65)] {
            let error = bad.parse::<CommandId>().unwrap_err();
            assert_eq!(error.rule(), COMMAND_RULE, "{bad:?}");
        }
    }

    #[test]
    fn clip_ids_are_canonical_ulids() {
        let ok = "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2";
        assert!(ok.parse::<ClipId>().is_ok());
        assert!("7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<ClipId>().is_ok());
        for bad in [
            "",
            "01JDQ3Z8M4X5V6W7Y8Z9A0B1C",   // 25
            "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2D", // 27
            "01jdq3z8m4x5v6w7y8z9a0b1c2",  // lower case: not canonical
            "01JDQ3Z8M4X5V6W7Y8Z9A0B1CI",  // I is not Crockford
            "01JDQ3Z8M4X5V6W7Y8Z9A0B1CU",  // nor U
            "81JDQ3Z8M4X5V6W7Y8Z9A0B1C2",  // over 128 bits
            "01JDQ3Z8M4X5V6W7Y8Z9A0B1/.",
        ] {
            assert!(bad.parse::<ClipId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn clip_ids_encode_and_decode_ulid_values() {
        assert_eq!(ClipId::from_u128(0).as_str(), "00000000000000000000000000");
        assert_eq!(
            ClipId::from_u128(u128::MAX).as_str(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
        let value = 0x0193_6E3F_A123_4567_89AB_CDEF_0123_4567_u128;
        let id = ClipId::from_u128(value);
        assert!(check_clip(id.as_str()).is_ok());
        assert_eq!(id.to_u128(), value);
        assert_eq!(id.timestamp_ms(), 0x0193_6E3F_A123);
    }

    #[test]
    fn clip_ids_sort_by_time() {
        let earlier = ClipId::from_u128(1_u128 << 80);
        let later = ClipId::from_u128(2_u128 << 80);
        assert!(earlier < later);
    }

    #[test]
    fn sha256_is_64_lower_case_hex() {
        let digest = Sha256Hex::from_digest([0xAB; 32]);
        assert_eq!(digest.as_str(), "ab".repeat(32));
        assert!(digest.as_str().parse::<Sha256Hex>().is_ok());
        for bad in [
            "",
            "<hex>",
            &"AB".repeat(32),
            &"a".repeat(63),
            &"g".repeat(64),
        ] {
            assert!(bad.parse::<Sha256Hex>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_goes_through_the_rule() {
        assert_eq!(
            serde_json::from_str::<OrderId>("\"SO-1\"")
                .unwrap()
                .as_str(),
            "SO-1"
        );
        let error = serde_json::from_str::<OrderId>("\"../etc\"").unwrap_err();
        assert!(
            error.to_string().contains(r#"order id "../etc""#),
            "{error}"
        );
        assert_eq!(
            serde_json::to_string(&"pi-07".parse::<DeviceId>().unwrap()).unwrap(),
            "\"pi-07\""
        );
    }
}
