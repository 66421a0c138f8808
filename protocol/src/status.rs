//! The retained status of a station (`cap/{env}/station/{station}/status`).
//!
//! The agent publishes it retained after every connection and whenever it changes, so that a
//! new subscriber learns at once what each station is doing. Its MQTT last will is the same
//! message with `"state":"offline"` ([`Status::last_will`]), published by the broker when the
//! agent vanishes.
//!
//! ```json
//! {"v":1,"state":"online","device":"pi-07","station":"pack-03","version":"0.3.1","recording":{"order":"SO-1","since":"..."},"queue":{"clips":2,"bytes":73400320},"disk_free_bytes":12000000000,"clock_synced":true,"at":"..."}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DeviceId, OrderId, ProtocolV1, StationId, Timestamp};

/// What a station is doing, as last published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// Always 1.
    pub v: ProtocolV1,
    /// Whether the agent is connected (`offline` is published by the broker as last will).
    pub state: Presence,
    /// The Pi.
    pub device: DeviceId,
    /// The station it serves.
    pub station: StationId,
    /// The agent's version.
    pub version: String,
    /// The recording in progress; `null` when the station is idle.
    pub recording: Option<Recording>,
    /// Clips sealed on the Pi and not yet accepted by the ingest.
    pub queue: Queue,
    /// Free bytes on the spool's file system.
    pub disk_free_bytes: u64,
    /// Whether the clock is NTP-synced (a Pi 4 has no RTC: times before sync are wrong).
    pub clock_synced: bool,
    /// When this status was made.
    pub at: Timestamp,
}

impl Status {
    /// The last will: this status with `"state":"offline"`.
    pub fn last_will(&self) -> Status {
        Status {
            state: Presence::Offline,
            ..self.clone()
        }
    }
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// The agent is connected.
    Online,
    /// The agent is gone (its last will).
    Offline,
}

/// The recording in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recording {
    /// The order being recorded.
    pub order: OrderId,
    /// When the recording started (the `start` command, not the pre-roll).
    pub since: Timestamp,
}

/// The upload queue of a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Queue {
    /// Number of clips waiting for upload or confirmation.
    pub clips: u64,
    /// Their total size.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// DESIGN.md section 3, with real times in place of "...".
    const ONLINE: &str = r#"{"v":1,"state":"online","device":"pi-07","station":"pack-03","version":"0.3.1","recording":{"order":"SO-1","since":"2026-11-23T10:00:00Z"},"queue":{"clips":2,"bytes":73400320},"disk_free_bytes":12000000000,"clock_synced":true,"at":"2026-11-23T10:00:05Z"}"#;

    #[test]
    fn design_example_round_trips_exactly() {
        let status: Status = serde_json::from_str(ONLINE).unwrap();
        assert_eq!(serde_json::to_string(&status).unwrap(), ONLINE);
        assert_eq!(status.recording.unwrap().order.as_str(), "SO-1");
    }

    #[test]
    fn idle_station_says_recording_null() {
        let mut status: Status = serde_json::from_str(ONLINE).unwrap();
        status.recording = None;
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value.get("recording"), Some(&Value::Null));
    }

    #[test]
    fn last_will_is_the_same_message_offline() {
        let status: Status = serde_json::from_str(ONLINE).unwrap();
        let will = serde_json::to_string(&status.last_will()).unwrap();
        assert_eq!(
            will,
            ONLINE.replace(r#""state":"online""#, r#""state":"offline""#)
        );
    }
}
