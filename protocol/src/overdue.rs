//! The `clip.overdue` CloudEvent: a clip the stations announced (its events reached the
//! ingest) that the catalog has not accepted within the ingest's `expected.overdue_after`.
//!
//! Published like the completion event ([`crate::ClipEvent`]): same exchange, structured JSON
//! mode, routing key `clip.overdue`, at least once, with an id stable per clip
//! (`{clip_id}:clip.overdue`, [`crate::ClipEvent::event_id`]). The ingest emits it once per
//! clip, when the clip first becomes overdue; a later `clip.completed` for the same clip
//! tells that it arrived after all.
//!
//! ```json
//! {"specversion":"1.0","type":"com.factory.capture.clip.overdue","source":"cloud-ingest/prod",
//!  "id":"01JD...:clip.overdue","time":"...","subject":"SO-2026-000123",
//!  "datacontenttype":"application/json",
//!  "data":{"clip_id":"01JD...","order":"SO-2026-000123","station":"pack-03","camera":"top",
//!          "state":"recorded","since":"...","last_seen":"...","station_state":"offline",
//!          "station_since":"..."}}
//! ```
//!
//! `state` is where the clip was last known to be: `recording` or `recorded` (on the station),
//! `uploaded` (the station said the object is in the store; the notification never came or
//! was never accepted). `station_state` is `online` (connected and silent about the clip),
//! `offline` (its last will, since `station_since`) or `unknown` (no status seen).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    CameraName, ClipEvent, ClipEventType, ClipId, DataContentType, Env, OrderId, SpecVersion,
    StationId, Timestamp,
};

/// A clip overdue, as a CloudEvent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OverdueEvent {
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// Always `com.factory.capture.clip.overdue`.
    #[serde(rename = "type")]
    pub event_type: ClipEventType,
    /// `cloud-ingest/{env}`.
    pub source: String,
    /// `{clip_id}:clip.overdue`.
    pub id: String,
    /// When the ingest found the clip overdue.
    pub time: Timestamp,
    /// The order.
    pub subject: OrderId,
    /// Always `application/json`.
    pub datacontenttype: DataContentType,
    /// The clip and where it was last known to be.
    pub data: OverdueData,
}

/// The `data` of a `clip.overdue` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OverdueData {
    /// The clip.
    pub clip_id: ClipId,
    /// Its order.
    pub order: OrderId,
    /// The station that recorded it.
    pub station: StationId,
    /// Its camera.
    pub camera: CameraName,
    /// The clip's last known state: `recording`, `recorded` or `uploaded`.
    pub state: String,
    /// Since when the clip has been in that state (as the ingest received it).
    pub since: Timestamp,
    /// When the ingest last heard of the clip.
    pub last_seen: Timestamp,
    /// `online`, `offline` or `unknown`.
    pub station_state: String,
    /// When the station's status last changed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_since: Option<Timestamp>,
}

impl OverdueEvent {
    /// The overdue event of the ingest of `env`, found at `time`.
    pub fn new(env: &Env, data: OverdueData, time: Timestamp) -> OverdueEvent {
        OverdueEvent {
            specversion: SpecVersion,
            event_type: ClipEventType::Overdue,
            source: ClipEvent::source(env),
            id: ClipEvent::event_id(&data.clip_id, ClipEventType::Overdue),
            time,
            subject: data.order.clone(),
            datacontenttype: DataContentType,
            data,
        }
    }

    /// `clip.overdue`.
    pub fn routing_key(&self) -> &'static str {
        self.event_type.routing_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"specversion":"1.0","type":"com.factory.capture.clip.overdue","source":"cloud-ingest/prod","id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2:clip.overdue","time":"2026-11-23T11:00:00Z","subject":"SO-1","datacontenttype":"application/json","data":{"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","order":"SO-1","station":"pack-03","camera":"top","state":"recorded","since":"2026-11-23T10:00:45Z","last_seen":"2026-11-23T10:00:45Z","station_state":"offline","station_since":"2026-11-23T10:01:00Z"}}"#;

    #[test]
    fn the_overdue_event_matches_its_documentation_and_has_a_stable_id() {
        let data = OverdueData {
            clip_id: "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2".parse().unwrap(),
            order: "SO-1".parse().unwrap(),
            station: "pack-03".parse().unwrap(),
            camera: "top".parse().unwrap(),
            state: "recorded".to_owned(),
            since: "2026-11-23T10:00:45Z".parse().unwrap(),
            last_seen: "2026-11-23T10:00:45Z".parse().unwrap(),
            station_state: "offline".to_owned(),
            station_since: Some("2026-11-23T10:01:00Z".parse().unwrap()),
        };
        let prod: Env = "prod".parse().unwrap();
        let event = OverdueEvent::new(&prod, data.clone(), "2026-11-23T11:00:00Z".parse().unwrap());
        assert_eq!(serde_json::to_string(&event).unwrap(), EXAMPLE);
        assert_eq!(event.routing_key(), "clip.overdue");
        let later = OverdueEvent::new(&prod, data, Timestamp::now());
        assert_eq!(later.id, event.id);
        assert_eq!(
            serde_json::from_str::<OverdueEvent>(EXAMPLE).unwrap(),
            event
        );
    }
}
