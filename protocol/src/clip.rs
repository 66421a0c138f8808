//! Where a clip lives in the object store, and what it is.
//!
//! Object key: `{env}/{yyyy}/{mm}/{dd}/{order}/{clip_id}.{mp4|jpg}`, the date being the UTC
//! date of the clip's start. The key is a function of the clip alone, so a re-upload
//! overwrites and never duplicates. Every segment comes from a validated type: no segment can
//! be empty, `.`, `..` or contain `/`.
//!
//! The object carries user metadata `sha256`, `order`, `station`, `camera`, `clip-id`
//! ([`OBJECT_METADATA_KEYS`]).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ClipId, Env, OrderId, Timestamp};

/// Names of the user metadata every clip object carries, in this order: its sha256, order,
/// station, camera and clip id.
pub const OBJECT_METADATA_KEYS: [&str; 5] = ["sha256", "order", "station", "camera", "clip-id"];

/// A video or a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClipKind {
    /// An MP4 recording (`start` .. `stop`).
    Video,
    /// A JPEG (`snapshot`).
    Photo,
}

impl ClipKind {
    /// File name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ClipKind::Video => "mp4",
            ClipKind::Photo => "jpg",
        }
    }

    /// The object's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            ClipKind::Video => "video/mp4",
            ClipKind::Photo => "image/jpeg",
        }
    }
}

impl fmt::Display for ClipKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClipKind::Video => "video",
            ClipKind::Photo => "photo",
        })
    }
}

/// The object key of a clip: `{env}/{yyyy}/{mm}/{dd}/{order}/{clip_id}.{mp4|jpg}`.
pub fn object_key(
    env: &Env,
    started_at: Timestamp,
    order: &OrderId,
    clip_id: &ClipId,
    kind: ClipKind,
) -> String {
    let date = started_at.as_offset_date_time().date();
    format!(
        "{env}/{:04}/{:02}/{:02}/{order}/{clip_id}.{}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        kind.extension()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_env_utc_date_order_and_clip() {
        let key = object_key(
            &"prod".parse().unwrap(),
            // 00:30 in Berlin on the 24th is still the 23rd in UTC.
            "2026-11-24T00:30:00+01:00".parse().unwrap(),
            &"SO-2026-000123".parse().unwrap(),
            &"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2".parse().unwrap(),
            ClipKind::Video,
        );
        assert_eq!(
            key,
            "prod/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4"
        );
    }

    #[test]
    fn photos_are_jpegs() {
        assert_eq!(ClipKind::Photo.extension(), "jpg");
        assert_eq!(ClipKind::Photo.content_type(), "image/jpeg");
        assert_eq!(ClipKind::Video.content_type(), "video/mp4");
    }
}
