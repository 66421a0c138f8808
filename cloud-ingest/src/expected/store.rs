//! The expected clips in PostgreSQL (migration 0004): recording station messages, and what
//! the API and the sweep read back.

use std::time::Duration;

use capture_protocol::{ClipId, Env, OverdueData, OverdueEvent, Timestamp};
use futures::future::try_join_all;
use tokio_postgres::types::ToSql;

use super::Observation;
use crate::catalog::{CatalogError, INSERT_EVENT, INSERT_POISON, Poison, Pool};
use crate::clip_state::{self, ClipState, StateChange};

type Param<'a> = &'a (dyn ToSql + Sync);

/// The clips of an `abort` answered ok that names none move from recording (or recorded) to
/// aborted.
const ABORT: &str = "WITH moved AS (UPDATE expected_clips SET state = 'aborted', since = now(), \
     state_at = $4::text::timestamptz, last_seen = now() \
     WHERE station = $1 AND order_id = $2 AND state IN ('recording', 'recorded') \
     AND (cardinality($3::text[]) = 0 OR clip_id = ANY($3::text[])) RETURNING clip_id) \
     INSERT INTO clip_transitions (clip_id, state, at) \
     SELECT clip_id, 'aborted', $4::text::timestamptz FROM moved ON CONFLICT DO NOTHING";

/// A `start` seen; a redelivery (or a reply that came first) keeps what is known.
const START: &str = "INSERT INTO station_commands AS c (station, command_id, order_id, sent_at) \
     VALUES ($1, $2, $3, $4::text::timestamptz) ON CONFLICT (station, command_id) DO UPDATE SET \
     order_id = COALESCE(c.order_id, EXCLUDED.order_id), sent_at = COALESCE(c.sent_at, EXCLUDED.sent_at)";

/// A `start` answered (the reply may arrive before the command, through another replica).
const ANSWER: &str = "INSERT INTO station_commands AS c \
     (station, command_id, order_id, answered_at, ok, error_code) \
     VALUES ($1, $2, $3, now(), $4, $5) ON CONFLICT (station, command_id) DO UPDATE SET \
     order_id = COALESCE(c.order_id, EXCLUDED.order_id), \
     answered_at = COALESCE(c.answered_at, EXCLUDED.answered_at), \
     ok = COALESCE(c.ok, EXCLUDED.ok), error_code = COALESCE(c.error_code, EXCLUDED.error_code)";

/// Records one batch of station messages in one transaction.
pub async fn commit(
    pool: &Pool,
    observations: &[Observation],
    poison: &[Poison],
) -> Result<(), CatalogError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let states: Vec<StateChange> = observations
        .iter()
        .filter_map(|o| match o {
            Observation::State(change) => Some(change.clone()),
            _ => None,
        })
        .collect();
    clip_state::record(&tx, &states).await?;
    for observation in observations {
        match observation {
            // The clips the reply names are aborted even when their `recording_started` has
            // not arrived yet (it will not move them back); a reply that names none aborts
            // what is recording of that order at that station.
            Observation::Abort {
                station,
                order,
                clips,
                at,
            } if !clips.is_empty() => {
                let aborted: Vec<StateChange> = clips
                    .iter()
                    .map(|clip_id| StateChange {
                        clip_id: clip_id.clone(),
                        order: order.clone(),
                        station: station.clone(),
                        camera: String::new(),
                        state: ClipState::Aborted,
                        reason: None,
                        at: at.clone(),
                    })
                    .collect();
                clip_state::record(&tx, &aborted).await?;
            }
            Observation::Abort {
                station,
                order,
                clips,
                at,
            } => {
                tx.execute(ABORT, &[station, order, clips, at]).await?;
            }
            Observation::Start {
                station,
                command_id,
                order,
                sent_at,
            } => {
                tx.execute(START, &[station, command_id, order, sent_at])
                    .await?;
            }
            Observation::Answer {
                station,
                command_id,
                order,
                ok,
                code,
            } => {
                tx.execute(ANSWER, &[station, command_id, order, ok, code])
                    .await?;
            }
            Observation::State(_) | Observation::Ignored(_) | Observation::Poison(_) => {}
        }
    }
    try_join_all(poison.iter().map(|p| {
        let params: [Param<'_>; 4] = [&p.topic, &p.payload, &p.payload_size, &p.error];
        tx.execute_raw(INSERT_POISON, params)
    }))
    .await?;
    tx.commit().await?;
    Ok(())
}

/// When a clip is overdue (`$1`: `overdue_after`, `$2`: `max_recording`, in seconds).
const OVERDUE: &str = "COALESCE((state IN ('recorded', 'uploaded') \
     AND pending_since < now() - $1::float8 * interval '1 second') \
     OR (state = 'recording' AND since < now() - ($1::float8 + $2::float8) * interval '1 second'), false)";

fn utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// What [`expected_clip`] reads.
fn select_clip() -> String {
    format!(
        "SELECT clip_id, order_id, station, camera, state, reason, {}, {}, {}, {OVERDUE}, {} \
         FROM expected_clips",
        utc("since"),
        utc("first_seen"),
        utc("last_seen"),
        utc("overdue_at"),
    )
}

/// When a clip counts as overdue.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub overdue_after: Duration,
    pub max_recording: Duration,
}

impl Deadlines {
    fn seconds(&self) -> (f64, f64) {
        (
            self.overdue_after.as_secs_f64(),
            self.max_recording.as_secs_f64(),
        )
    }
}

/// One expected clip as stored.
#[derive(Debug, Clone)]
pub struct ExpectedClip {
    pub clip_id: String,
    pub order: String,
    pub station: String,
    pub camera: String,
    pub state: ClipState,
    pub reason: Option<String>,
    /// Since when it has been in `state` (RFC 3339, UTC).
    pub since: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Derived: recorded and not accepted in time.
    pub overdue: bool,
    /// When it was first found overdue (its `clip.overdue` event), if ever.
    pub overdue_at: Option<String>,
}

fn expected_clip(row: &tokio_postgres::Row) -> ExpectedClip {
    let state: String = row.get(4);
    ExpectedClip {
        clip_id: row.get(0),
        order: row.get(1),
        station: row.get(2),
        camera: row.get(3),
        // The table's CHECK allows only known states.
        state: ClipState::parse(&state).unwrap_or(ClipState::Recording),
        reason: row.get(5),
        since: row.get(6),
        first_seen: row.get(7),
        last_seen: row.get(8),
        overdue: row.get(9),
        overdue_at: row.get(10),
    }
}

/// Every expected clip of an order, oldest first.
pub async fn clips_of_order(
    pool: &Pool,
    order: &str,
    deadlines: Deadlines,
) -> Result<Vec<ExpectedClip>, CatalogError> {
    let conn = pool.get().await?;
    let (after, recording) = deadlines.seconds();
    let rows = conn
        .query(
            &format!(
                "{} WHERE order_id = $3 ORDER BY first_seen, clip_id",
                select_clip()
            ),
            &[&after, &recording, &order],
        )
        .await?;
    Ok(rows.iter().map(expected_clip).collect())
}

/// One expected clip by its id, if the stations' events announced it.
pub async fn clip(
    pool: &Pool,
    clip_id: &str,
    deadlines: Deadlines,
) -> Result<Option<ExpectedClip>, CatalogError> {
    let conn = pool.get().await?;
    let (after, recording) = deadlines.seconds();
    let row = conn
        .query_opt(
            &format!("{} WHERE clip_id = $3", select_clip()),
            &[&after, &recording, &clip_id],
        )
        .await?;
    Ok(row.as_ref().map(expected_clip))
}

/// Every overdue clip, by station, oldest first.
pub async fn overdue(pool: &Pool, deadlines: Deadlines) -> Result<Vec<ExpectedClip>, CatalogError> {
    let conn = pool.get().await?;
    let (after, recording) = deadlines.seconds();
    let rows = conn
        .query(
            &format!(
                "{} WHERE {OVERDUE} ORDER BY station, first_seen, clip_id LIMIT 10000",
                select_clip()
            ),
            &[&after, &recording],
        )
        .await?;
    Ok(rows.iter().map(expected_clip).collect())
}

/// The states one clip entered, in the order of its life (each once).
pub async fn transitions(
    pool: &Pool,
    clip_id: &ClipId,
) -> Result<Vec<(ClipState, String)>, CatalogError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT state, {} FROM clip_transitions WHERE clip_id = $1 \
                 ORDER BY expected_rank(state), at",
                utc("at")
            ),
            &[&clip_id.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((ClipState::parse(r.get(0))?, r.get(1))))
        .collect())
}

/// A `start` no station answered within `expected.reply_timeout`.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub station: String,
    pub command_id: String,
    pub order: Option<String>,
    /// When the ingest saw the command (RFC 3339, UTC).
    pub seen_at: String,
}

impl Unanswered {
    /// From a row of `station, command_id, order_id, seen_at` (UTC text).
    fn from_row(row: &tokio_postgres::Row) -> Unanswered {
        Unanswered {
            station: row.get(0),
            command_id: row.get(1),
            order: row.get(2),
            seen_at: row.get(3),
        }
    }
}

/// How far back `GET /v1/overdue` lists unanswered starts.
pub const UNANSWERED_SHOWN: Duration = Duration::from_secs(24 * 3600);

/// Unanswered starts: of one order, or (`order` `None`) of the last [`UNANSWERED_SHOWN`].
pub async fn unanswered(
    pool: &Pool,
    order: Option<&str>,
    reply_timeout: Duration,
) -> Result<Vec<Unanswered>, CatalogError> {
    let conn = pool.get().await?;
    let timeout = reply_timeout.as_secs_f64();
    let shown = UNANSWERED_SHOWN.as_secs_f64();
    let rows = conn
        .query(
            &format!(
                "SELECT station, command_id, order_id, {} FROM station_commands \
                 WHERE answered_at IS NULL AND seen_at < now() - $1::float8 * interval '1 second' \
                 AND (($2::text IS NULL AND seen_at > now() - $3::float8 * interval '1 second') \
                      OR order_id = $2::text) \
                 ORDER BY station, seen_at LIMIT 10000",
                utc("seen_at")
            ),
            &[&timeout, &order, &shown],
        )
        .await?;
    Ok(rows.iter().map(Unanswered::from_row).collect())
}

/// Clips per station that are overdue now.
pub async fn overdue_by_station(
    pool: &Pool,
    deadlines: Deadlines,
) -> Result<Vec<(String, u64)>, CatalogError> {
    let conn = pool.get().await?;
    let (after, recording) = deadlines.seconds();
    let rows = conn
        .query(
            &format!(
                "SELECT station, count(*) FROM expected_clips WHERE {OVERDUE} GROUP BY station"
            ),
            &[&after, &recording],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect())
}

/// How far back the gauge `ingest_starts_unanswered` counts unanswered starts.
pub const UNANSWERED_GAUGE_WINDOW: Duration = Duration::from_secs(3600);

/// Unanswered starts per station seen within [`UNANSWERED_GAUGE_WINDOW`].
pub async fn unanswered_by_station(
    pool: &Pool,
    reply_timeout: Duration,
) -> Result<Vec<(String, u64)>, CatalogError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT station, count(*) FROM station_commands WHERE answered_at IS NULL \
             AND seen_at < now() - $1::float8 * interval '1 second' \
             AND seen_at > now() - $2::float8 * interval '1 second' GROUP BY station",
            &[
                &reply_timeout.as_secs_f64(),
                &UNANSWERED_GAUGE_WINDOW.as_secs_f64(),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
        .collect())
}

/// Rows one sweep takes at most of each kind (the next sweep takes the rest).
const SWEEP_CHUNK: i64 = 1000;

/// Marks the clips that became overdue and puts one `clip.overdue` event per clip into the
/// outbox, in one transaction; `presence` says where each station is (`station_state`,
/// `station_since`). Several replicas sweeping at once split the rows (SKIP LOCKED), and a
/// clip once marked is never emitted again. Returns the events written.
pub async fn mark_overdue(
    pool: &Pool,
    env: &Env,
    deadlines: Deadlines,
    presence: impl Fn(&str) -> (&'static str, Option<Timestamp>),
) -> Result<Vec<OverdueEvent>, CatalogError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let (after, recording) = deadlines.seconds();
    let rows = tx
        .query(
            &format!(
                "UPDATE expected_clips SET overdue_at = now() WHERE clip_id IN \
                 (SELECT clip_id FROM expected_clips WHERE overdue_at IS NULL AND {OVERDUE} \
                  LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING clip_id, order_id, station, camera, state, {}, {}",
                utc("since"),
                utc("last_seen")
            ),
            &[&after, &recording, &SWEEP_CHUNK],
        )
        .await?;
    let now = Timestamp::now();
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let clip_id: String = row.get(0);
        let corrupt = |what: &str| CatalogError::Corrupt {
            clip_id: clip_id.clone(),
            message: format!("expected clip has an invalid {what}"),
        };
        let station: String = row.get(2);
        let (station_state, station_since) = presence(&station);
        let data = OverdueData {
            clip_id: clip_id.parse().map_err(|_| corrupt("clip id"))?,
            order: row
                .get::<_, String>(1)
                .parse()
                .map_err(|_| corrupt("order"))?,
            station: station.parse().map_err(|_| corrupt("station"))?,
            camera: row
                .get::<_, String>(3)
                .parse()
                .map_err(|_| corrupt("camera"))?,
            state: row.get(4),
            since: row
                .get::<_, String>(5)
                .parse()
                .map_err(|_| corrupt("since"))?,
            last_seen: row
                .get::<_, String>(6)
                .parse()
                .map_err(|_| corrupt("last_seen"))?,
            station_state: station_state.to_owned(),
            station_since,
        };
        events.push(OverdueEvent::new(env, data, now));
    }
    let bodies = events
        .iter()
        .map(|e| Ok((e.id.clone(), e.routing_key(), serde_json::to_string(e)?)))
        .collect::<Result<Vec<_>, CatalogError>>()?;
    try_join_all(bodies.iter().map(|(id, key, body)| {
        let params: [Param<'_>; 3] = [id, key, body];
        tx.execute_raw(INSERT_EVENT, params)
    }))
    .await?;
    tx.commit().await?;
    Ok(events)
}

/// Marks the starts left unanswered for `reply_timeout` as reported and returns them (each
/// once, whichever replica sweeps).
pub async fn report_unanswered(
    pool: &Pool,
    reply_timeout: Duration,
) -> Result<Vec<Unanswered>, CatalogError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            &format!(
                "UPDATE station_commands SET reported_at = now() WHERE (station, command_id) IN \
                 (SELECT station, command_id FROM station_commands WHERE answered_at IS NULL \
                  AND reported_at IS NULL AND seen_at < now() - $1::float8 * interval '1 second' \
                  LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING station, command_id, order_id, {}",
                utc("seen_at")
            ),
            &[&reply_timeout.as_secs_f64(), &SWEEP_CHUNK],
        )
        .await?;
    Ok(rows.iter().map(Unanswered::from_row).collect())
}
