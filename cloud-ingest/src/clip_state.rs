//! The state of an expected clip (`expected_clips`, migration 0004) and the one statement
//! pair that moves it: shared by the catalog (which decides `accepted` and `rejected`) and
//! the station-message tracker ([`crate::expected`]), so both write states the same way.
//!
//! # Invariants
//!
//! - **Forward only.** [`ClipState::rank`] orders the states (`recording` < `recorded` <
//!   `uploaded` < `rejected` = `failed` = `aborted` < `accepted`); a message whose state does
//!   not rank above the stored one leaves the state, its reason and its times alone (it only
//!   refreshes `last_seen`). An event that arrives late or twice never moves a clip back, and
//!   `accepted` is final. The SQL function `expected_rank` is the same order.
//! - **Each state entered once.** `clip_transitions` is keyed by (clip, state): a QoS 1
//!   duplicate records nothing new.

use std::fmt;

use tokio_postgres::Transaction;

/// Where a clip is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClipState {
    /// `recording_started`: being recorded on the station.
    Recording,
    /// `recording_stopped`: sealed, queued for upload on the station.
    Recorded,
    /// `clip_uploaded`: in the object store, its notification not (yet) decided.
    Uploaded,
    /// The catalog rejected the upload (the station may upload it again).
    Rejected,
    /// `clip_failed`: the station gave up on it.
    Failed,
    /// Aborted by the line (`abort` answered ok): discarded, never uploaded.
    Aborted,
    /// In the catalog, verified. Final.
    Accepted,
}

impl ClipState {
    /// Every state, in the order of [`ClipState::rank`].
    pub const ALL: [ClipState; 7] = [
        ClipState::Recording,
        ClipState::Recorded,
        ClipState::Uploaded,
        ClipState::Rejected,
        ClipState::Failed,
        ClipState::Aborted,
        ClipState::Accepted,
    ];

    /// The name stored and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ClipState::Recording => "recording",
            ClipState::Recorded => "recorded",
            ClipState::Uploaded => "uploaded",
            ClipState::Rejected => "rejected",
            ClipState::Failed => "failed",
            ClipState::Aborted => "aborted",
            ClipState::Accepted => "accepted",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<ClipState> {
        ClipState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// How far along: a state replaces the stored one only when it ranks higher.
    pub fn rank(self) -> u8 {
        match self {
            ClipState::Recording => 1,
            ClipState::Recorded => 2,
            ClipState::Uploaded => 3,
            ClipState::Rejected | ClipState::Failed | ClipState::Aborted => 4,
            ClipState::Accepted => 5,
        }
    }

    /// Whether the clip is still owed to the cloud (recording, recorded or uploaded).
    pub fn is_open(self) -> bool {
        self.rank() <= 3
    }
}

impl fmt::Display for ClipState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message about one clip: which state it says the clip reached, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub clip_id: String,
    pub order: String,
    pub station: String,
    /// Empty when the message does not name it (an `abort` reply); a later event fills it in.
    pub camera: String,
    pub state: ClipState,
    pub reason: Option<String>,
    /// RFC 3339: the station's time of the event, or the catalog's of its decision.
    pub at: String,
}

/// Inserts the clip or moves it forward (never back); `last_seen` always.
const UPSERT: &str = "INSERT INTO expected_clips AS e \
     (clip_id, order_id, station, camera, state, reason, state_at, pending_since) \
     VALUES ($1, $2, $3, $4, $5::text, $6, $7::text::timestamptz, \
     CASE WHEN $5::text IN ('recorded', 'uploaded') THEN now() END) \
     ON CONFLICT (clip_id) DO UPDATE SET \
     last_seen = now(), \
     camera = CASE WHEN e.camera = '' THEN EXCLUDED.camera ELSE e.camera END, \
     pending_since = COALESCE(e.pending_since, EXCLUDED.pending_since), \
     state = CASE WHEN expected_rank(EXCLUDED.state) > expected_rank(e.state) \
         THEN EXCLUDED.state ELSE e.state END, \
     reason = CASE WHEN expected_rank(EXCLUDED.state) > expected_rank(e.state) \
         THEN EXCLUDED.reason ELSE e.reason END, \
     since = CASE WHEN expected_rank(EXCLUDED.state) > expected_rank(e.state) \
         THEN now() ELSE e.since END, \
     state_at = CASE WHEN expected_rank(EXCLUDED.state) > expected_rank(e.state) \
         THEN EXCLUDED.state_at ELSE e.state_at END";

const TRANSITION: &str = "INSERT INTO clip_transitions (clip_id, state, at) \
     VALUES ($1, $2, $3::text::timestamptz) ON CONFLICT (clip_id, state) DO NOTHING";

/// Records `changes` in `tx`, in order (pipelined).
pub async fn record(
    tx: &Transaction<'_>,
    changes: &[StateChange],
) -> Result<(), tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let (upsert, transition) = futures::try_join!(tx.prepare(UPSERT), tx.prepare(TRANSITION))?;
    let states: Vec<&str> = changes.iter().map(|c| c.state.as_str()).collect();
    futures::future::try_join_all(changes.iter().zip(&states).flat_map(|(c, state)| {
        let row: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &c.clip_id, &c.order, &c.station, &c.camera, state, &c.reason, &c.at,
        ];
        let step: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&c.clip_id, state, &c.at];
        [
            tx.execute_raw(&upsert, row.to_vec()),
            tx.execute_raw(&transition, step.to_vec()),
        ]
    }))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_rank_forward_and_accepted_is_last() {
        for state in ClipState::ALL {
            assert_eq!(ClipState::parse(state.as_str()), Some(state));
            assert!(state.rank() <= ClipState::Accepted.rank());
        }
        assert!(ClipState::Recording.rank() < ClipState::Recorded.rank());
        assert!(ClipState::Recorded.rank() < ClipState::Uploaded.rank());
        assert!(ClipState::Uploaded.rank() < ClipState::Rejected.rank());
        assert!(ClipState::Rejected.rank() < ClipState::Accepted.rank());
        assert!(ClipState::Uploaded.is_open() && !ClipState::Failed.is_open());
        assert_eq!(ClipState::parse("overdue"), None);
    }
}
