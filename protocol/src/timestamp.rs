//! Points in time on the wire: RFC 3339 strings in UTC, e.g. `"2026-11-23T10:00:00Z"`.
//!
//! Senders always write UTC with a `Z` suffix (fractional seconds only when non-zero).
//! Receivers accept any RFC 3339 offset and convert it to UTC, so a line system that writes
//! `+01:00` is understood; a time that would fall outside the years 0000..=9999 once in UTC is
//! refused, because it could not be written back.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A point in time, always held in UTC; on the wire an RFC 3339 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Why a time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The text is not an RFC 3339 date-time.
    #[error(
        "time {input:?}: must be an RFC 3339 date-time such as \"2026-11-23T10:00:00Z\" ({reason})"
    )]
    Syntax {
        /// The refused text.
        input: String,
        /// What the parser found wrong.
        reason: String,
    },
    /// The time is outside the years 0000..=9999 once converted to UTC.
    #[error("time {input}: must lie within the years 0000..=9999 in UTC")]
    OutOfRange {
        /// The refused time, as given.
        input: String,
    },
}

impl Timestamp {
    /// The current time from the system clock.
    ///
    /// On a Pi without RTC this may be far in the past until NTP syncs; messages carry
    /// `clock_synced` for that reason.
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// The time as a `time::OffsetDateTime` (offset UTC).
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }

    /// Whole milliseconds since the Unix epoch (negative before 1970).
    pub fn unix_millis(&self) -> i128 {
        self.0.unix_timestamp_nanos() / 1_000_000
    }
}

impl TryFrom<OffsetDateTime> for Timestamp {
    type Error = TimestampError;

    fn try_from(time: OffsetDateTime) -> Result<Self, Self::Error> {
        time.checked_to_offset(UtcOffset::UTC)
            .filter(|utc| (0..=9999).contains(&utc.year()))
            .map(Timestamp)
            .ok_or_else(|| TimestampError::OutOfRange {
                input: time.to_string(),
            })
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(timestamp: Timestamp) -> Self {
        timestamp.0
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let time =
            OffsetDateTime::parse(text, &Rfc3339).map_err(|error| TimestampError::Syntax {
                input: text.to_owned(),
                reason: error.to_string(),
            })?;
        Timestamp::try_from(time).map_err(|_| TimestampError::OutOfRange {
            input: text.to_owned(),
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cannot fail: the offset is UTC and the year within 0..=9999 (checked on entry).
        let text = self.0.format(&Rfc3339).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let time = time::serde::rfc3339::deserialize(deserializer)?;
        Timestamp::try_from(time).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "RFC 3339 date-time; senders write UTC with a Z suffix.",
            "type": "string",
            "format": "date-time",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn utc_round_trips_with_z_suffix() {
        assert_eq!(
            at("2026-11-23T10:00:00Z").to_string(),
            "2026-11-23T10:00:00Z"
        );
        assert_eq!(
            serde_json::to_string(&at("2026-11-23T10:00:00.250Z")).unwrap(),
            "\"2026-11-23T10:00:00.25Z\""
        );
    }

    #[test]
    fn a_space_for_the_t_is_rfc3339_too() {
        assert_eq!(
            at("2026-11-23 10:00:00Z").to_string(),
            "2026-11-23T10:00:00Z"
        );
    }

    #[test]
    fn other_offsets_are_converted_to_utc() {
        assert_eq!(
            at("2026-11-23T11:30:00+01:30").to_string(),
            "2026-11-23T10:00:00Z"
        );
    }

    #[test]
    fn refuses_what_cannot_be_written_back_in_utc() {
        for text in ["9999-12-31T23:00:00-02:00", "0000-01-01T00:30:00+01:00"] {
            let error = text.parse::<Timestamp>().unwrap_err();
            assert!(
                matches!(error, TimestampError::OutOfRange { .. }),
                "{text}: {error}"
            );
            let json = format!("\"{text}\"");
            assert!(serde_json::from_str::<Timestamp>(&json).is_err(), "{text}");
        }
    }

    #[test]
    fn refuses_non_rfc3339_text() {
        for text in [
            "",
            "2026-11-23",
            "yesterday",
            "2026-11-23T10:00:00",
            "2026-11-23T25:00:00Z",
        ] {
            let error = text.parse::<Timestamp>().unwrap_err();
            assert!(matches!(error, TimestampError::Syntax { .. }), "{text}");
        }
    }

    #[test]
    fn unix_millis_counts_from_the_epoch() {
        assert_eq!(at("1970-01-01T00:00:01.5Z").unix_millis(), 1500);
    }
}
