//! Events of a station's clips (`cap/{env}/station/{station}/event`, not retained).
//!
//! For anyone who wants to follow what happens (dashboards, the line system). Every event has
//! `event`, `clip_id`, `order`, `camera` and `at`; some add a field:
//!
//! ```json
//! {"v":1,"event":"recording_started","clip_id":"01JD...","order":"SO-1","camera":"top","at":"..."}
//! {"v":1,"event":"recording_stopped","truncated":false,"clip_id":"01JD...","order":"SO-1","camera":"top","at":"..."}
//! {"v":1,"event":"clip_uploaded","truncated":false,"clip_id":"01JD...","order":"SO-1","camera":"top","at":"..."}
//! {"v":1,"event":"clip_confirmed","clip_id":"01JD...","order":"SO-1","camera":"top","at":"..."}
//! {"v":1,"event":"clip_failed","reason":"sha256 mismatch","clip_id":"01JD...","order":"SO-1","camera":"top","at":"..."}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CameraName, ClipId, OrderId, ProtocolV1, Timestamp};

/// Something that happened to one clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Always 1.
    pub v: ProtocolV1,
    /// What happened (the `event` field and the fields that go with it).
    #[serde(flatten)]
    pub kind: EventKind,
    /// The clip.
    pub clip_id: ClipId,
    /// Its order.
    pub order: OrderId,
    /// Its camera.
    pub camera: CameraName,
    /// When it happened.
    pub at: Timestamp,
}

impl Event {
    /// An event of this protocol version.
    pub fn new(
        kind: EventKind,
        clip_id: ClipId,
        order: OrderId,
        camera: CameraName,
        at: Timestamp,
    ) -> Event {
        Event {
            v: ProtocolV1,
            kind,
            clip_id,
            order,
            camera,
            at,
        }
    }
}

/// What happened to a clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The clip began recording (pre-roll included).
    RecordingStarted,
    /// The clip was sealed on the Pi.
    RecordingStopped {
        /// Closed by `max_secs` or by a crash instead of by `stop`.
        truncated: bool,
    },
    /// The clip is in the object store.
    ClipUploaded {
        /// As in `recording_stopped`.
        truncated: bool,
    },
    /// The ingest accepted the clip; the Pi may now evict it.
    ClipConfirmed,
    /// The upload failed for good or the ingest rejected it.
    ClipFailed {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: [&str; 5] = [
        r#"{"v":1,"event":"recording_started","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#,
        r#"{"v":1,"event":"recording_stopped","truncated":true,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:10:00Z"}"#,
        r#"{"v":1,"event":"clip_uploaded","truncated":true,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:10:09Z"}"#,
        r#"{"v":1,"event":"clip_confirmed","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:10:10Z"}"#,
        r#"{"v":1,"event":"clip_failed","reason":"sha256 mismatch","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:10:10Z"}"#,
    ];

    #[test]
    fn every_event_round_trips_exactly() {
        for example in EXAMPLES {
            let event: Event = serde_json::from_str(example).unwrap();
            assert_eq!(serde_json::to_string(&event).unwrap(), example);
        }
    }

    #[test]
    fn truncation_is_said_by_recording_stopped() {
        let event: Event = serde_json::from_str(EXAMPLES[1]).unwrap();
        assert_eq!(event.kind, EventKind::RecordingStopped { truncated: true });
    }

    #[test]
    fn unknown_events_and_missing_fields_are_refused() {
        for text in [
            r#"{"v":1,"event":"exploded","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#,
            r#"{"v":1,"event":"recording_stopped","clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#,
            r#"{"v":1,"event":"recording_started","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#,
        ] {
            assert!(serde_json::from_str::<Event>(text).is_err(), "{text}");
        }
    }
}
