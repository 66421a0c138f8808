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
//!
//! A station with a barcode scanner also publishes one [`ScanEvent`] per scan on the same
//! topic, before the clip events the scan causes. Its `scan_id` (`scan-<ULID>`) plays the part
//! of a command id; `order` and `clips` are there when the scan concerns a recording:
//!
//! ```json
//! {"v":1,"event":"scan_started","rescan":false,"scan_id":"scan-01JD...","code":"SO-1","order":"SO-1","clips":["01JD..."],"at":"..."}
//! {"v":1,"event":"item_scanned","scan_id":"scan-01JD...","code":"4006381333931","order":"SO-1","clips":["01JD..."],"at":"..."}
//! {"v":1,"event":"scan_stopped","idle":false,"scan_id":"scan-01JD...","code":"CTL-STOP","order":"SO-1","clips":["01JD..."],"at":"..."}
//! {"v":1,"event":"scan_aborted","scan_id":"scan-01JD...","code":"CTL-CANCEL","order":"SO-1","clips":["01JD..."],"at":"..."}
//! {"v":1,"event":"scan_refused","reason":"not_recording","message":"...","scan_id":"scan-01JD...","code":"CTL-STOP","at":"..."}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CameraName, ClipId, CommandId, OrderId, ProtocolV1, Timestamp};

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

/// What one scan of the station's barcode scanner did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScanEvent {
    /// Always 1.
    pub v: ProtocolV1,
    /// What the scan did (the `event` field and the fields that go with it).
    #[serde(flatten)]
    pub kind: ScanEventKind,
    /// The station's id for the scan, `scan-<ULID>`: unique, time-sortable.
    pub scan_id: CommandId,
    /// The barcode; in `scan_refused` with control characters escaped and cut to 64
    /// characters.
    pub code: String,
    /// The order the scan started, marked, stopped or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderId>,
    /// That order's clips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clips: Vec<ClipId>,
    /// When the scan was read.
    pub at: Timestamp,
}

/// What a scan did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScanEventKind {
    /// An order barcode started its order (or, `rescan`, found it recording already: one
    /// recording, nothing new).
    ScanStarted { rescan: bool },
    /// An item barcode was recorded on the clips of the order recording.
    ItemScanned,
    /// The stop barcode stopped the order (or, `idle`, no scan came for `idle_stop`).
    ScanStopped { idle: bool },
    /// The cancel barcode aborted the order: its clips are discarded.
    ScanAborted,
    /// The scan changed nothing.
    ScanRefused {
        /// `too_long`, `control_characters`, `not_valid`, `not_recording`, or the error code
        /// the station gave the order's start (`busy`, `disk_full`, `camera_unavailable`).
        reason: String,
        /// For people.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scan_event_round_trips_exactly() {
        for example in [
            r#"{"v":1,"event":"scan_started","rescan":false,"scan_id":"scan-01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","code":"SO-1","order":"SO-1","clips":["01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"],"at":"2026-11-23T10:00:00Z"}"#,
            r#"{"v":1,"event":"item_scanned","scan_id":"scan-01JDQ3Z8M4X5V6W7Y8Z9A0B1C3","code":"4006381333931","order":"SO-1","clips":["01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"],"at":"2026-11-23T10:00:05Z"}"#,
            r#"{"v":1,"event":"scan_stopped","idle":true,"scan_id":"scan-01JDQ3Z8M4X5V6W7Y8Z9A0B1C4","code":"","order":"SO-1","clips":["01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"],"at":"2026-11-23T10:01:05Z"}"#,
            r#"{"v":1,"event":"scan_aborted","scan_id":"scan-01JDQ3Z8M4X5V6W7Y8Z9A0B1C5","code":"CTL-CANCEL","order":"SO-1","clips":["01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"],"at":"2026-11-23T10:01:05Z"}"#,
            r#"{"v":1,"event":"scan_refused","reason":"control_characters","message":"the barcode holds control characters","scan_id":"scan-01JDQ3Z8M4X5V6W7Y8Z9A0B1C6","code":"A\\u{1b}B","at":"2026-11-23T10:02:00Z"}"#,
        ] {
            let event: ScanEvent = serde_json::from_str(example).unwrap();
            assert_eq!(serde_json::to_string(&event).unwrap(), example);
        }
    }

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
