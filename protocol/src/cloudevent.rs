//! The completion event to the core system: a CloudEvent 1.0 in structured JSON mode.
//!
//! Published by the ingest's outbox relay over AMQP 0.9.1 to the durable topic exchange
//! [`EXCHANGE`] (`capture.events`), persistent, with publisher confirms, content type
//! [`CONTENT_TYPE`], routing key `clip.completed` or `clip.rejected`:
//!
//! ```json
//! {"specversion":"1.0","type":"com.factory.capture.clip.completed","source":"cloud-ingest/prod",
//!  "id":"01JD...:clip.completed","time":"...","subject":"SO-2026-000123",
//!  "datacontenttype":"application/json",
//!  "data":{"clip_id":"...","order":"...","station":"...","camera":"...","kind":"video","bucket":"...","key":"...",
//!          "size":0,"sha256":"...","duration_ms":0,"started_at":"...","ended_at":"...","truncated":false,"meta":{}}}
//! ```
//!
//! # The event id
//!
//! Delivery is at least once, so the core system deduplicates on `id` (with `source`). The id
//! is derived from the clip alone, never from a clock or a random number:
//! `{clip_id}:{routing key}`, e.g. `01JDQ3Z8M4X5V6W7Y8Z9A0B1C2:clip.completed`
//! ([`ClipEvent::event_id`]). The same clip therefore always gives the same completion id,
//! whichever replica emits it and however often; its rejection has another id.
//!
//! A `clip.rejected` event has the same `data`, plus `reason`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::literal_string;
use crate::{
    CameraName, ClipId, ClipKind, Env, ItemScan, Meta, OrderId, Sha256Hex, StationId, Timestamp,
    Uploaded,
};

/// The AMQP topic exchange the events are published to (durable).
pub const EXCHANGE: &str = "capture.events";

/// AMQP `content-type` of a CloudEvent in structured JSON mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

literal_string! {
    /// `"specversion":"1.0"`.
    SpecVersion = "1.0"
}

literal_string! {
    /// `"datacontenttype":"application/json"`.
    DataContentType = "application/json"
}

/// A clip completed or rejected, as a CloudEvent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClipEvent {
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// `com.factory.capture.clip.completed` or `com.factory.capture.clip.rejected`.
    #[serde(rename = "type")]
    pub event_type: ClipEventType,
    /// `cloud-ingest/{env}`.
    pub source: String,
    /// `{clip_id}:{routing key}`: the same clip always gives the same id.
    pub id: String,
    /// When the ingest cataloged the clip.
    pub time: Timestamp,
    /// The order.
    pub subject: OrderId,
    /// Always `application/json`.
    pub datacontenttype: DataContentType,
    /// The clip.
    pub data: ClipData,
}

impl ClipEvent {
    /// The completion of a clip the ingest of `env` accepted at `time`.
    pub fn completed(env: &Env, uploaded: &Uploaded, time: Timestamp) -> ClipEvent {
        ClipEvent::new(
            env,
            ClipEventType::Completed,
            ClipData::from(uploaded),
            time,
        )
    }

    /// The rejection of a clip by the ingest of `env` at `time`, with what did not match.
    pub fn rejected(
        env: &Env,
        uploaded: &Uploaded,
        reason: impl Into<String>,
        time: Timestamp,
    ) -> ClipEvent {
        let data = ClipData {
            reason: Some(reason.into()),
            ..ClipData::from(uploaded)
        };
        ClipEvent::new(env, ClipEventType::Rejected, data, time)
    }

    fn new(env: &Env, event_type: ClipEventType, data: ClipData, time: Timestamp) -> ClipEvent {
        ClipEvent {
            specversion: SpecVersion,
            event_type,
            source: ClipEvent::source(env),
            id: ClipEvent::event_id(&data.clip_id, event_type),
            time,
            subject: data.order.clone(),
            datacontenttype: DataContentType,
            data,
        }
    }

    /// The event id of `clip_id` for `event_type`: `{clip_id}:{routing key}`.
    pub fn event_id(clip_id: &ClipId, event_type: ClipEventType) -> String {
        format!("{clip_id}:{}", event_type.routing_key())
    }

    /// The `source` of events from the ingest of `env`: `cloud-ingest/{env}`.
    pub fn source(env: &Env) -> String {
        format!("cloud-ingest/{env}")
    }

    /// The AMQP routing key of this event.
    pub fn routing_key(&self) -> &'static str {
        self.event_type.routing_key()
    }
}

/// The `type` of a clip event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ClipEventType {
    /// The clip is verified and cataloged.
    #[serde(rename = "com.factory.capture.clip.completed")]
    Completed,
    /// The clip failed verification.
    #[serde(rename = "com.factory.capture.clip.rejected")]
    Rejected,
    /// A clip the stations announced has not been accepted in time ([`crate::OverdueEvent`]).
    #[serde(rename = "com.factory.capture.clip.overdue")]
    Overdue,
}

impl ClipEventType {
    /// The CloudEvent `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClipEventType::Completed => "com.factory.capture.clip.completed",
            ClipEventType::Rejected => "com.factory.capture.clip.rejected",
            ClipEventType::Overdue => "com.factory.capture.clip.overdue",
        }
    }

    /// The AMQP routing key: `clip.completed`, `clip.rejected` or `clip.overdue`.
    pub fn routing_key(self) -> &'static str {
        match self {
            ClipEventType::Completed => "clip.completed",
            ClipEventType::Rejected => "clip.rejected",
            ClipEventType::Overdue => "clip.overdue",
        }
    }
}

/// The `data` of a clip event: the clip as cataloged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClipData {
    /// The clip.
    pub clip_id: ClipId,
    /// The order.
    pub order: OrderId,
    /// The station it was recorded at.
    pub station: StationId,
    /// The camera.
    pub camera: CameraName,
    /// Video or photo.
    pub kind: ClipKind,
    /// The bucket holding the object.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
    /// SHA-256 of the object.
    pub sha256: Sha256Hex,
    /// Duration measured by decoding (0 for photos).
    pub duration_ms: u64,
    /// Start of the clip, pre-roll included.
    pub started_at: Timestamp,
    /// End of the clip.
    pub ended_at: Timestamp,
    /// Closed by `max_secs` or a crash instead of by `stop`.
    pub truncated: bool,
    /// The `meta` of the command, unchanged.
    pub meta: Meta,
    /// The item scans recorded on the clip (barcodes scanned at the station while it
    /// recorded), as in its uploaded notification. Optional: omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemScan>,
    /// Why the clip was rejected (`clip.rejected` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&Uploaded> for ClipData {
    fn from(uploaded: &Uploaded) -> Self {
        ClipData {
            clip_id: uploaded.clip_id.clone(),
            order: uploaded.order.clone(),
            station: uploaded.station.clone(),
            camera: uploaded.camera.clone(),
            kind: uploaded.kind,
            bucket: uploaded.bucket.clone(),
            key: uploaded.key.clone(),
            size: uploaded.size,
            sha256: uploaded.sha256.clone(),
            duration_ms: uploaded.duration_ms,
            started_at: uploaded.started_at,
            ended_at: uploaded.ended_at,
            truncated: uploaded.truncated,
            meta: uploaded.meta.clone(),
            items: uploaded.items.clone(),
            reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uploaded::tests::example;
    use serde_json::json;

    fn prod() -> Env {
        "prod".parse().unwrap()
    }

    fn at() -> Timestamp {
        "2026-11-23T10:00:47Z".parse().unwrap()
    }

    /// DESIGN.md section 4, filled in from the uploaded example.
    const COMPLETED: &str = r#"{"specversion":"1.0","type":"com.factory.capture.clip.completed","source":"cloud-ingest/prod","id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2:clip.completed","time":"2026-11-23T10:00:47Z","subject":"SO-2026-000123","datacontenttype":"application/json","data":{"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-2026-000123","station":"pack-03","camera":"top","kind":"video","bucket":"factory-media","key":"prod/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4","size":73400320,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","duration_ms":45000,"started_at":"2026-11-23T10:00:00Z","ended_at":"2026-11-23T10:00:45Z","truncated":false,"meta":{}}}"#;

    #[test]
    fn completion_matches_the_contract_exactly() {
        let event = ClipEvent::completed(&prod(), &example(), at());
        assert_eq!(serde_json::to_string(&event).unwrap(), COMPLETED);
        assert_eq!(event.routing_key(), "clip.completed");
        let parsed: ClipEvent = serde_json::from_str(COMPLETED).unwrap();
        assert_eq!(parsed, event);
    }

    #[test]
    fn the_same_clip_always_gives_the_same_id() {
        let first = ClipEvent::completed(&prod(), &example(), at());
        let later = ClipEvent::completed(&prod(), &example(), Timestamp::now());
        assert_eq!(first.id, later.id);
        let rejected = ClipEvent::rejected(&prod(), &example(), "sha256 mismatch", at());
        assert_ne!(first.id, rejected.id);
        assert_eq!(rejected.id, "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2:clip.rejected");
    }

    #[test]
    fn item_scans_are_carried_into_the_data_and_omitted_when_none() {
        let mut uploaded = example();
        uploaded.items = vec![crate::ItemScan {
            code: "4006381333931".into(),
            at: "2026-11-23T10:00:05.123Z".parse().unwrap(),
        }];
        let event = ClipEvent::completed(&prod(), &uploaded, at());
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value["data"]["items"],
            json!([{"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"}])
        );
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<ClipEvent>(&text).unwrap(), event);
        let none = serde_json::to_value(ClipEvent::completed(&prod(), &example(), at())).unwrap();
        assert!(none["data"].get("items").is_none(), "{none}");
    }

    #[test]
    fn rejection_carries_its_reason() {
        let event = ClipEvent::rejected(&prod(), &example(), "sha256 mismatch", at());
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], json!("com.factory.capture.clip.rejected"));
        assert_eq!(value["data"]["reason"], json!("sha256 mismatch"));
        assert_eq!(event.routing_key(), "clip.rejected");
    }

    #[test]
    fn other_spec_versions_are_refused() {
        let other = COMPLETED.replace(r#""specversion":"1.0""#, r#""specversion":"0.3""#);
        assert!(serde_json::from_str::<ClipEvent>(&other).is_err());
    }
}
