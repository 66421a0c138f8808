//! Expected clips: what the stations say about their clips before the upload, so that the
//! cloud knows what it is owed.
//!
//! # Data flow
//!
//! ```text
//! broker ──$share/ingest/cap/{env}/station/+/event──> link task ──unbounded chan──> Tracker
//!        ──$share/ingest/cap/{env}/station/+/cmd────>
//!        ──$share/ingest/cap/{env}/station/+/reply──>
//! Tracker: batch ─> classify (no I/O) ─> store::commit (one tx: expected_clips,
//!          clip_transitions, station_commands, poison) ─> ack every publish
//! catalog::commit ─> the same expected_clips row moves to accepted/rejected (same tx as the clip)
//! Sweeper (every expected.sweep_interval): newly overdue clips ─> clip.overdue into the outbox
//!          (same tx as marking them) ─> wake relay; gauges; unanswered starts reported once
//! ```
//!
//! # Invariants
//!
//! - **Acknowledged only after the commit**, as for notifications ([`crate::consumer`]): a
//!   message in hand when the process dies is redelivered, and recording it twice changes
//!   nothing (states move forward only, each transition is keyed by clip and state, commands
//!   by station and id).
//! - **Nothing on these topics can stop the queue or crash the service.** A payload that cannot
//!   be read goes to `poison` and is acknowledged. An event of a kind this version does not know
//!   (stations may add kinds, DESIGN.md section 9) is counted and acknowledged, not poisoned.
//! - **Events arriving out of order never move a clip back** ([`crate::clip_state`]); the
//!   catalog's `accepted` is final.
//! - **`overdue` is derived, never stored as a state**: a clip recorded (or uploaded) and not
//!   accepted within `expected.overdue_after` of when it was first known recorded, or still
//!   recording `expected.max_recording` after that. It clears by itself when the clip is
//!   accepted. `overdue_at` only remembers that its `clip.overdue` event was emitted.

pub mod store;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use capture_protocol::{
    ClipId, Command, Env, Event, EventKind, MAX_PAYLOAD_BYTES, Op, OpName, Reply, decode, topic,
};
use rumqttc::{AsyncClient, Publish};
use tokio::sync::{mpsc, watch};

use crate::catalog::{Poison, Pool};
use crate::clip_state::{ClipState, StateChange};
use crate::shutdown::{Backoff, next_batch, sleep_or_shutdown};
use crate::telemetry::{Metrics, StationOutcome};

/// The event kinds of protocol v1; any other `"event"` is a kind added by a newer agent.
pub const KNOWN_EVENTS: [&str; 5] = [
    "recording_started",
    "recording_stopped",
    "clip_uploaded",
    "clip_confirmed",
    "clip_failed",
];

/// What one station message means for the expected clips. Decided without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A clip reached a state (an event).
    State(StateChange),
    /// An `abort` answered ok: the clips the reply names are discarded, even those not
    /// announced yet; a reply naming none discards the order's clips still recording there.
    Abort {
        station: String,
        order: String,
        clips: Vec<String>,
        at: String,
    },
    /// The line sent `start` to a station.
    Start {
        station: String,
        command_id: String,
        order: String,
        sent_at: Option<String>,
    },
    /// A station answered a `start`.
    Answer {
        station: String,
        command_id: String,
        order: Option<String>,
        ok: bool,
        code: Option<String>,
    },
    /// Nothing to record (a confirmation event, a `ping`, a reply to another op, an event
    /// kind this version does not know).
    Ignored(StationOutcome),
    /// Unreadable: recorded in `poison`.
    Poison(String),
}

impl Observation {
    /// The metric outcome of this message.
    pub fn outcome(&self) -> StationOutcome {
        match self {
            Observation::State(_) => StationOutcome::State,
            Observation::Abort { .. } => StationOutcome::Abort,
            Observation::Start { .. } => StationOutcome::Start,
            Observation::Answer { .. } => StationOutcome::Answer,
            Observation::Ignored(outcome) => *outcome,
            Observation::Poison(_) => StationOutcome::Poison,
        }
    }
}

/// Reads one message of `cap/{env}/station/{station}/{event,cmd,reply}`. Never panics.
pub fn classify(env: &Env, topic_name: &str, payload: &[u8]) -> Observation {
    let Some((station, kind)) = topic::station_topic(env, topic_name) else {
        return Observation::Ignored(StationOutcome::Ignored);
    };
    let station = station.to_string();
    match kind {
        "event" => classify_event(station, payload),
        "cmd" => match decode::<Command>(payload, "command") {
            Ok(Command {
                id,
                op: Op::Start(capture),
                sent_at,
                ..
            }) => Observation::Start {
                station,
                command_id: id.to_string(),
                order: capture.order.to_string(),
                sent_at: sent_at.map(|t| t.to_string()),
            },
            Ok(_) => Observation::Ignored(StationOutcome::Ignored),
            Err(error) => Observation::Poison(error.to_string()),
        },
        "reply" => match decode::<Reply>(payload, "reply") {
            Ok(reply) => classify_reply(station, reply),
            Err(error) => Observation::Poison(error.to_string()),
        },
        _ => Observation::Ignored(StationOutcome::Ignored),
    }
}

fn classify_event(station: String, payload: &[u8]) -> Observation {
    if payload.len() <= MAX_PAYLOAD_BYTES {
        // A kind this version does not know is a newer agent's, not garbage.
        let kind = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("event")?.as_str().map(str::to_owned));
        if kind.is_some_and(|k| !KNOWN_EVENTS.contains(&k.as_str())) {
            return Observation::Ignored(StationOutcome::UnknownEvent);
        }
    }
    let event = match decode::<Event>(payload, "station event") {
        Ok(event) => event,
        Err(error) => return Observation::Poison(error.to_string()),
    };
    let (state, reason) = match event.kind {
        EventKind::RecordingStarted => (ClipState::Recording, None),
        EventKind::RecordingStopped { .. } => (ClipState::Recorded, None),
        EventKind::ClipUploaded { .. } => (ClipState::Uploaded, None),
        EventKind::ClipFailed { reason } => (ClipState::Failed, Some(reason)),
        // The catalog's own decision is what counts; the station only repeats it.
        EventKind::ClipConfirmed => return Observation::Ignored(StationOutcome::Ignored),
    };
    Observation::State(StateChange {
        clip_id: event.clip_id.to_string(),
        order: event.order.to_string(),
        station,
        camera: event.camera.to_string(),
        state,
        reason,
        at: event.at.to_string(),
    })
}

fn classify_reply(station: String, reply: Reply) -> Observation {
    let Some(id) = reply.id else {
        return Observation::Ignored(StationOutcome::Ignored);
    };
    match reply.op {
        Some(OpName::Start) => Observation::Answer {
            station,
            command_id: id.to_string(),
            order: reply.order.map(|o| o.to_string()),
            ok: reply.outcome.is_ok(),
            code: reply.outcome.err().map(|e| e.code.as_str().to_owned()),
        },
        Some(OpName::Abort) => match (reply.order, reply.outcome) {
            (Some(order), Ok(clips)) => Observation::Abort {
                station,
                order: order.to_string(),
                clips: clips.iter().map(ClipId::to_string).collect(),
                at: reply
                    .at
                    .unwrap_or_else(capture_protocol::Timestamp::now)
                    .to_string(),
            },
            _ => Observation::Ignored(StationOutcome::Ignored),
        },
        _ => Observation::Ignored(StationOutcome::Ignored),
    }
}

/// First and longest wait before a failed commit is retried.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// The task that records station messages: one batch at a time, acknowledged after commit.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub env: Env,
    pub client: AsyncClient,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    pub poison_payload_max: usize,
}

impl Tracker {
    /// Records messages until shutdown or until the link ends. A batch whose commit is still
    /// failing at shutdown is left unacknowledged (the broker redelivers it).
    pub async fn run(
        self,
        mut from_link: mpsc::UnboundedReceiver<Publish>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let Some(batch) = next_batch(&mut from_link, self.max_batch, &mut shutdown).await
            else {
                break;
            };
            if !self.handle(&batch, &mut shutdown).await {
                break;
            }
        }
        tracing::info!("station message tracker stopped");
    }

    /// One batch: classify, commit (retried), acknowledge. `false` when shutdown came first.
    async fn handle(&self, batch: &[Publish], shutdown: &mut watch::Receiver<bool>) -> bool {
        let observations: Vec<Observation> = batch
            .iter()
            .map(|p| classify(&self.env, &p.topic, &p.payload))
            .collect();
        let poison: Vec<Poison> = observations
            .iter()
            .zip(batch)
            .filter_map(|(o, p)| match o {
                Observation::Poison(error) => Some(Poison::new(
                    &p.topic,
                    &p.payload,
                    self.poison_payload_max,
                    error.clone(),
                )),
                _ => None,
            })
            .collect();
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
        loop {
            match store::commit(&self.pool, &observations, &poison).await {
                Ok(()) => break,
                Err(error) => {
                    Metrics::inc(&self.metrics.retries_catalog);
                    tracing::warn!(error = %error, batch = batch.len(), retry_in = ?backoff.current(), "recording station messages failed; retrying");
                    if sleep_or_shutdown(backoff.current(), shutdown).await {
                        return false;
                    }
                    backoff.double();
                }
            }
        }
        for publish in batch {
            if let Err(error) = self.client.ack(publish).await {
                tracing::warn!(error = %error, "acknowledging a station message failed");
            }
        }
        for (observation, publish) in observations.iter().zip(batch) {
            self.metrics.station_message(observation.outcome());
            match observation {
                Observation::Poison(error) => {
                    tracing::warn!(topic = %publish.topic, error = %error, "unreadable station message recorded and acknowledged");
                }
                Observation::Ignored(StationOutcome::UnknownEvent) => {
                    tracing::debug!(topic = %publish.topic, "station event of an unknown kind ignored");
                }
                _ => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Env {
        "prod".parse().unwrap()
    }

    const CLIP: &str = "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2";

    #[test]
    fn every_event_of_the_protocol_maps_to_a_state() {
        let cases = [
            ("recording_started", "", Some(ClipState::Recording)),
            (
                "recording_stopped",
                r#","truncated":false"#,
                Some(ClipState::Recorded),
            ),
            (
                "clip_uploaded",
                r#","truncated":false"#,
                Some(ClipState::Uploaded),
            ),
            (
                "clip_failed",
                r#","reason":"disk""#,
                Some(ClipState::Failed),
            ),
            ("clip_confirmed", "", None),
        ];
        for (kind, extra, state) in cases {
            assert!(KNOWN_EVENTS.contains(&kind));
            let payload = format!(
                r#"{{"v":1,"event":"{kind}"{extra},"clip_id":"{CLIP}","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}}"#
            );
            let seen = classify(
                &prod(),
                "cap/prod/station/pack-03/event",
                payload.as_bytes(),
            );
            match (seen, state) {
                (Observation::State(change), Some(state)) => {
                    assert_eq!(change.state, state);
                    assert_eq!(change.station, "pack-03");
                    assert_eq!(change.clip_id, CLIP);
                }
                (Observation::Ignored(_), None) => {}
                (other, _) => panic!("{kind}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_kinds_are_ignored_and_garbage_is_poison() {
        let unknown = format!(
            r#"{{"v":1,"event":"lens_cleaned","clip_id":"{CLIP}","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}}"#
        );
        let topic = "cap/prod/station/pack-03/event";
        assert_eq!(
            classify(&prod(), topic, unknown.as_bytes()),
            Observation::Ignored(StationOutcome::UnknownEvent)
        );
        for garbage in [
            &b"{not json"[..],
            br#"{"v":1,"event":"recording_started","order":"SO-1"}"#,
            br#"{"v":1,"event":"recording_started","clip_id":"../../etc","order":"SO-1","camera":"top","at":"2026-11-23T10:00:00Z"}"#,
            br#"{"v":1,"event":42}"#,
            &[0xff, 0xfe, 0x00][..],
        ] {
            assert!(
                matches!(classify(&prod(), topic, garbage), Observation::Poison(_)),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
        assert!(matches!(
            classify(&prod(), topic, &vec![b' '; MAX_PAYLOAD_BYTES + 1]),
            Observation::Poison(_)
        ));
    }

    #[test]
    fn starts_and_their_answers_are_tracked_other_commands_are_not() {
        let start = br#"{"v":1,"id":"c-1","op":"start","order":"SO-1"}"#;
        assert_eq!(
            classify(&prod(), "cap/prod/station/pack-03/cmd", start),
            Observation::Start {
                station: "pack-03".to_owned(),
                command_id: "c-1".to_owned(),
                order: "SO-1".to_owned(),
                sent_at: None,
            }
        );
        let ping = br#"{"v":1,"id":"c-2","op":"ping"}"#;
        assert!(matches!(
            classify(&prod(), "cap/prod/station/pack-03/cmd", ping),
            Observation::Ignored(_)
        ));
        let answer = br#"{"v":1,"id":"c-1","ok":false,"op":"start","order":"SO-1","error":{"code":"busy","message":"busy"}}"#;
        assert_eq!(
            classify(&prod(), "cap/prod/station/pack-03/reply", answer),
            Observation::Answer {
                station: "pack-03".to_owned(),
                command_id: "c-1".to_owned(),
                order: Some("SO-1".to_owned()),
                ok: false,
                code: Some("busy".to_owned()),
            }
        );
        let abort = format!(
            r#"{{"v":1,"id":"c-3","ok":true,"op":"abort","order":"SO-1","clips":["{CLIP}"],"at":"2026-11-23T10:00:00Z"}}"#
        );
        assert!(matches!(
            classify(&prod(), "cap/prod/station/pack-03/reply", abort.as_bytes()),
            Observation::Abort { clips, .. } if clips == [CLIP]
        ));
        // Another environment's topic is not this ingest's.
        assert!(matches!(
            classify(&prod(), "cap/dev/station/pack-03/cmd", start),
            Observation::Ignored(_)
        ));
    }
}
