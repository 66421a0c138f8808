//! Clips and photos in the spool, and the states they go through.
//!
//! ```text
//! recording ──stop/seal──▶ sealed ──▶ uploading ──▶ uploaded ──confirm accepted──▶ accepted
//!     │                      ▲            │             │                              │
//!     └──abort──▶ aborted    └── retry ───┘             └──rejected (integrity)──▶ sealed
//!                                                        rejected (other) ──▶ failed   ▼
//!                                                                    evictable: file deleted
//! ```
//!
//! Only `accepted` clips may have their file deleted (disk eviction); every other state keeps
//! the file. A photo is inserted directly as `sealed`.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SpoolError, now_text};
use crate::digest::PartDigests;

/// Where a clip is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClipState {
    Recording,
    Sealed,
    Uploading,
    Uploaded,
    Accepted,
    Failed,
    Aborted,
}

impl ClipState {
    pub const ALL: [ClipState; 7] = [
        ClipState::Recording,
        ClipState::Sealed,
        ClipState::Uploading,
        ClipState::Uploaded,
        ClipState::Accepted,
        ClipState::Failed,
        ClipState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClipState::Recording => "recording",
            ClipState::Sealed => "sealed",
            ClipState::Uploading => "uploading",
            ClipState::Uploaded => "uploaded",
            ClipState::Accepted => "accepted",
            ClipState::Failed => "failed",
            ClipState::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<ClipState> {
        ClipState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the clip still waits for the cloud (counted in the status's queue).
    pub fn is_queued(self) -> bool {
        matches!(
            self,
            ClipState::Sealed | ClipState::Uploading | ClipState::Uploaded
        )
    }
}

/// A clip as it is created by a `start` (state `recording`) or a `snapshot` (state `sealed`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewClip {
    pub clip_id: String,
    pub order: String,
    pub camera: String,
    /// `video` or `photo`.
    pub kind: String,
    pub state: ClipState,
    pub path: String,
    pub started_at: String,
    pub preroll_ms: i64,
    pub clock_synced: bool,
    pub meta: Option<String>,
}

/// A clip as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipRow {
    pub clip_id: String,
    pub order: String,
    pub camera: String,
    pub kind: String,
    pub state: ClipState,
    pub path: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub preroll_ms: i64,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    /// The MD5 of every part of the upload plan, from the seal's read; `None` for a clip
    /// sealed before the spool kept them (schema version 1), until its upload computes them.
    pub parts: Option<PartDigests>,
    pub truncated: bool,
    pub clock_synced: bool,
    pub meta: Option<String>,
    /// The item scans recorded on the clip, as JSON text (an array of `{"code", "at"}`,
    /// [`capture_protocol::ItemScan`]); `None` when there are none.
    pub items: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub bytes_sent: i64,
    pub updated_at: String,
}

const COLUMNS: &str = "clip_id, order_id, camera, kind, state, path, started_at, ended_at, \
     duration_ms, preroll_ms, size, sha256, truncated, clock_synced, meta, attempts, last_error, \
     bytes_sent, updated_at, part_size, part_md5s, items";

/// A row as read: the clip, its state's name and its stored part digests, both checked by
/// [`with_state`].
type RawRow = (ClipRow, String, Option<(i64, Vec<u8>)>);

fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    let state: String = row.get(4)?;
    let part_size: Option<i64> = row.get(19)?;
    let part_md5s: Option<Vec<u8>> = row.get(20)?;
    Ok((
        ClipRow {
            clip_id: row.get(0)?,
            order: row.get(1)?,
            camera: row.get(2)?,
            kind: row.get(3)?,
            state: ClipState::Recording,
            path: row.get(5)?,
            started_at: row.get(6)?,
            ended_at: row.get(7)?,
            duration_ms: row.get(8)?,
            preroll_ms: row.get(9)?,
            size: row.get(10)?,
            sha256: row.get(11)?,
            parts: None,
            truncated: row.get(12)?,
            clock_synced: row.get(13)?,
            meta: row.get(14)?,
            items: row.get(21)?,
            attempts: row.get(15)?,
            last_error: row.get(16)?,
            bytes_sent: row.get(17)?,
            updated_at: row.get(18)?,
        },
        state,
        part_size.zip(part_md5s),
    ))
}

fn with_state((mut clip, state, parts): RawRow) -> Result<ClipRow, SpoolError> {
    clip.state = ClipState::parse(&state).ok_or_else(|| SpoolError::Corrupt {
        clip_id: clip.clip_id.clone(),
        what: format!("unknown state {state:?}"),
    })?;
    if let Some((part_size, md5s)) = parts {
        let size = clip.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        let parts =
            PartDigests::from_blob(part_size, &md5s, size).map_err(|what| SpoolError::Corrupt {
                clip_id: clip.clip_id.clone(),
                what: format!("part digests: {what}"),
            })?;
        clip.parts = Some(parts);
    }
    Ok(clip)
}

pub fn insert(connection: &Connection, clip: &NewClip) -> Result<(), SpoolError> {
    connection.execute(
        "INSERT INTO clips (clip_id, order_id, camera, kind, state, path, started_at, preroll_ms,
                            clock_synced, meta, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            clip.clip_id,
            clip.order,
            clip.camera,
            clip.kind,
            clip.state.as_str(),
            clip.path,
            clip.started_at,
            clip.preroll_ms,
            clip.clock_synced,
            clip.meta,
            now_text(),
        ],
    )?;
    Ok(())
}

pub fn get(connection: &Connection, clip_id: &str) -> Result<Option<ClipRow>, SpoolError> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM clips WHERE clip_id = ?1"),
            [clip_id],
            from_row,
        )
        .optional()?
        .map(with_state)
        .transpose()
}

/// An item scan to record on a clip ([`add_item`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipItem {
    pub clip_id: String,
    /// The barcode.
    pub code: String,
    /// When it was read (RFC 3339).
    pub at: String,
}

/// Appends an item scan to its clip's items, unless the clip holds
/// [`capture_protocol::MAX_ITEMS`] already (or does not exist). False when it was not
/// appended.
pub fn add_item(connection: &Connection, item: &ClipItem) -> Result<bool, SpoolError> {
    let changed = connection.execute(
        "UPDATE clips SET items = json_insert(coalesce(items, '[]'), '$[#]',
                                              json_object('code', ?2, 'at', ?3)),
                          updated_at = ?4
         WHERE clip_id = ?1 AND json_array_length(coalesce(items, '[]')) < ?5",
        params![
            item.clip_id,
            item.code,
            item.at,
            now_text(),
            capture_protocol::MAX_ITEMS as i64
        ],
    )?;
    Ok(changed == 1)
}

pub fn set_state(
    connection: &Connection,
    clip_id: &str,
    state: ClipState,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET state = ?2, updated_at = ?3 WHERE clip_id = ?1",
        params![clip_id, state.as_str(), now_text()],
    )?;
    Ok(())
}

/// What sealing a file established about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub path: String,
    pub size: i64,
    pub sha256: String,
    /// The part MD5s from the same read as the sha256.
    pub parts: PartDigests,
    pub duration_ms: i64,
    pub ended_at: String,
    pub truncated: bool,
}

/// Records a sealed file and moves the clip to `sealed` (ready for upload).
pub fn seal(connection: &Connection, clip_id: &str, sealed: &Sealed) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET state = 'sealed', path = ?2, size = ?3, sha256 = ?4, duration_ms = ?5,
                          ended_at = ?6, truncated = ?7, updated_at = ?8, part_size = ?9,
                          part_md5s = ?10
         WHERE clip_id = ?1",
        params![
            clip_id,
            sealed.path,
            sealed.size,
            sealed.sha256,
            sealed.duration_ms,
            sealed.ended_at,
            sealed.truncated,
            now_text(),
            i64::try_from(sealed.parts.part_size).unwrap_or(i64::MAX),
            sealed.parts.to_blob(),
        ],
    )?;
    Ok(())
}

/// Records the part digests of a clip sealed before the spool kept them, computed when its
/// upload began.
pub fn set_parts(
    connection: &Connection,
    clip_id: &str,
    parts: &PartDigests,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET part_size = ?2, part_md5s = ?3, updated_at = ?4 WHERE clip_id = ?1",
        params![
            clip_id,
            i64::try_from(parts.part_size).unwrap_or(i64::MAX),
            parts.to_blob(),
            now_text()
        ],
    )?;
    Ok(())
}

/// Clips in `state`, oldest first (the upload order).
pub fn in_state(
    connection: &Connection,
    state: ClipState,
    limit: usize,
) -> Result<Vec<ClipRow>, SpoolError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM clips WHERE state = ?1 ORDER BY started_at, clip_id LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![state.as_str(), limit as i64], from_row)?;
    rows.map(|row| with_state(row?)).collect()
}

/// Clips the uploader has to send (`sealed`, or `uploading` when an upload was cut short),
/// oldest first.
pub fn awaiting_upload(connection: &Connection, limit: usize) -> Result<Vec<ClipRow>, SpoolError> {
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM clips WHERE state IN ('sealed', 'uploading')
         ORDER BY started_at, clip_id LIMIT ?1"
    ))?;
    let rows = statement.query_map(params![limit as i64], from_row)?;
    rows.map(|row| with_state(row?)).collect()
}

/// The object is complete in the store: `uploaded`, every byte sent, no error pending.
pub fn set_uploaded(connection: &Connection, clip_id: &str) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET state = 'uploaded', bytes_sent = coalesce(size, bytes_sent),
                          last_error = NULL, updated_at = ?2
         WHERE clip_id = ?1",
        params![clip_id, now_text()],
    )?;
    Ok(())
}

/// Back to `sealed` with nothing sent, for an upload that starts over from the first byte.
pub fn reset_upload(connection: &Connection, clip_id: &str) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET state = 'sealed', bytes_sent = 0, updated_at = ?2 WHERE clip_id = ?1",
        params![clip_id, now_text()],
    )?;
    Ok(())
}

/// Number of clips and bytes per state, for the status, the metrics and `capture-agent spool`.
pub fn totals(connection: &Connection) -> Result<Vec<(ClipState, i64, i64)>, SpoolError> {
    let mut statement = connection.prepare(
        "SELECT state, count(*), coalesce(sum(size), 0) FROM clips GROUP BY state ORDER BY state",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut totals = Vec::new();
    for row in rows {
        let (state, count, bytes) = row?;
        let state = ClipState::parse(&state).ok_or_else(|| SpoolError::Corrupt {
            clip_id: "*".into(),
            what: format!("unknown state {state:?}"),
        })?;
        totals.push((state, count, bytes));
    }
    Ok(totals)
}

/// Counts an upload attempt that failed, with its error.
pub fn record_failure(
    connection: &Connection,
    clip_id: &str,
    error: &str,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET attempts = attempts + 1, last_error = ?2, updated_at = ?3
         WHERE clip_id = ?1",
        params![clip_id, error, now_text()],
    )?;
    Ok(())
}

/// Records upload progress (bytes the store has acknowledged).
pub fn set_bytes_sent(
    connection: &Connection,
    clip_id: &str,
    bytes: i64,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET bytes_sent = ?2, updated_at = ?3 WHERE clip_id = ?1",
        params![clip_id, bytes, now_text()],
    )?;
    Ok(())
}

/// Forgets a clip whose file was deleted (only `accepted` or `aborted` clips).
pub fn remove(connection: &Connection, clip_id: &str) -> Result<bool, SpoolError> {
    Ok(connection.execute(
        "DELETE FROM clips WHERE clip_id = ?1 AND state IN ('accepted', 'aborted')",
        [clip_id],
    )? == 1)
}

/// Records when a clip really began (its first frame, pre-roll included) and how much
/// pre-roll it holds, once the capture engine knows.
pub fn set_start(
    connection: &Connection,
    clip_id: &str,
    started_at: &str,
    preroll_ms: i64,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET started_at = ?2, preroll_ms = ?3, updated_at = ?4 WHERE clip_id = ?1",
        params![clip_id, started_at, preroll_ms, now_text()],
    )?;
    Ok(())
}

/// Marks a clip failed for good, with the reason kept as its last error.
pub fn fail(connection: &Connection, clip_id: &str, reason: &str) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE clips SET state = 'failed', last_error = ?2, updated_at = ?3 WHERE clip_id = ?1",
        params![clip_id, reason, now_text()],
    )?;
    Ok(())
}

/// When the oldest clip the ingest has not accepted yet began (sealed, uploading, uploaded).
pub fn oldest_unconfirmed(connection: &Connection) -> Result<Option<String>, SpoolError> {
    Ok(connection.query_row(
        "SELECT min(started_at) FROM clips WHERE state IN ('sealed', 'uploading', 'uploaded')",
        [],
        |row| row.get(0),
    )?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::test_support::database;

    #[test]
    fn item_scans_are_appended_in_order_up_to_the_most_a_clip_carries() {
        let (_dir, connection) = database();
        insert(&connection, &new_clip("A")).unwrap();
        assert_eq!(get(&connection, "A").unwrap().unwrap().items, None);
        let item = |i: usize| ClipItem {
            clip_id: "A".into(),
            code: format!("I-{i}"),
            at: "2026-11-23T10:00:05.123Z".into(),
        };
        for i in 0..capture_protocol::MAX_ITEMS {
            assert!(add_item(&connection, &item(i)).unwrap(), "item {i}");
        }
        assert!(!add_item(&connection, &item(1000)).unwrap(), "one too many");
        let nobody = ClipItem {
            clip_id: "B".into(),
            ..item(0)
        };
        assert!(!add_item(&connection, &nobody).unwrap());
        let row = get(&connection, "A").unwrap().unwrap();
        let items: Vec<capture_protocol::ItemScan> =
            serde_json::from_str(row.items.as_deref().unwrap()).unwrap();
        assert_eq!(items.len(), capture_protocol::MAX_ITEMS);
        assert_eq!(items[0].code, "I-0");
        assert_eq!(items[999].code, "I-999");
        assert_eq!(items[0].at.to_string(), "2026-11-23T10:00:05.123Z");
    }

    pub(crate) fn new_clip(clip_id: &str) -> NewClip {
        NewClip {
            clip_id: clip_id.into(),
            order: "SO-1".into(),
            camera: "top".into(),
            kind: "video".into(),
            state: ClipState::Recording,
            path: format!("/spool/{clip_id}.mp4.part"),
            started_at: "2026-11-23T10:00:00Z".into(),
            preroll_ms: 3000,
            clock_synced: true,
            meta: Some(r#"{"sku":"X"}"#.into()),
        }
    }

    #[test]
    fn a_clip_goes_from_recording_to_sealed_with_its_facts() {
        let (_dir, connection) = database();
        insert(&connection, &new_clip("A")).unwrap();
        let parts = PartDigests {
            part_size: 1000,
            md5s: vec![[1; 16], [2; 16]],
        };
        let sealed = Sealed {
            path: "/spool/A.mp4".into(),
            size: 1234,
            sha256: "ab".repeat(32),
            parts: parts.clone(),
            duration_ms: 45_000,
            ended_at: "2026-11-23T10:00:45Z".into(),
            truncated: true,
        };
        seal(&connection, "A", &sealed).unwrap();
        let clip = get(&connection, "A").unwrap().unwrap();
        assert_eq!(clip.state, ClipState::Sealed);
        assert_eq!(clip.size, Some(1234));
        assert_eq!(clip.duration_ms, Some(45_000));
        assert_eq!(clip.parts, Some(parts));
        assert!(clip.truncated);
        assert_eq!(clip.meta.as_deref(), Some(r#"{"sku":"X"}"#));
        assert_eq!(
            in_state(&connection, ClipState::Sealed, 10).unwrap().len(),
            1
        );
    }

    #[test]
    fn only_accepted_or_aborted_clips_can_be_removed() {
        let (_dir, connection) = database();
        insert(&connection, &new_clip("A")).unwrap();
        for state in [
            ClipState::Sealed,
            ClipState::Uploading,
            ClipState::Uploaded,
            ClipState::Failed,
        ] {
            set_state(&connection, "A", state).unwrap();
            assert!(!remove(&connection, "A").unwrap(), "{state:?} must be kept");
        }
        set_state(&connection, "A", ClipState::Accepted).unwrap();
        assert!(remove(&connection, "A").unwrap());
        assert!(get(&connection, "A").unwrap().is_none());
    }

    #[test]
    fn totals_count_clips_and_bytes_by_state_and_failures_are_recorded() {
        let (_dir, connection) = database();
        insert(&connection, &new_clip("A")).unwrap();
        insert(&connection, &new_clip("B")).unwrap();
        record_failure(&connection, "B", "connection refused").unwrap();
        let totals = totals(&connection).unwrap();
        assert_eq!(totals, vec![(ClipState::Recording, 2, 0)]);
        let b = get(&connection, "B").unwrap().unwrap();
        assert_eq!(
            (b.attempts, b.last_error.as_deref()),
            (1, Some("connection refused"))
        );
    }

    #[test]
    fn the_upload_queue_is_sealed_and_uploading_clips_oldest_first() {
        let (_dir, connection) = database();
        for (id, started_at, state) in [
            ("A", "2026-11-23T10:05:00Z", ClipState::Sealed),
            ("B", "2026-11-23T10:00:00Z", ClipState::Uploading),
            ("C", "2026-11-23T09:00:00Z", ClipState::Uploaded),
            ("D", "2026-11-23T09:30:00Z", ClipState::Recording),
            ("E", "2026-11-23T10:01:00Z", ClipState::Sealed),
        ] {
            let mut clip = new_clip(id);
            clip.started_at = started_at.into();
            clip.state = state;
            insert(&connection, &clip).unwrap();
        }
        let queue: Vec<String> = awaiting_upload(&connection, 10)
            .unwrap()
            .into_iter()
            .map(|c| c.clip_id)
            .collect();
        assert_eq!(queue, ["B", "E", "A"]);
        assert_eq!(awaiting_upload(&connection, 1).unwrap().len(), 1);

        connection
            .execute("UPDATE clips SET size = 500 WHERE clip_id = 'B'", [])
            .unwrap();
        record_failure(&connection, "B", "timed out").unwrap();
        set_uploaded(&connection, "B").unwrap();
        let b = get(&connection, "B").unwrap().unwrap();
        assert_eq!(
            (b.state, b.bytes_sent, b.last_error, b.attempts),
            (ClipState::Uploaded, 500, None, 1)
        );
        reset_upload(&connection, "B").unwrap();
        let b = get(&connection, "B").unwrap().unwrap();
        assert_eq!((b.state, b.bytes_sent), (ClipState::Sealed, 0));
    }

    #[test]
    fn every_state_round_trips_through_its_name() {
        for state in ClipState::ALL {
            assert_eq!(ClipState::parse(state.as_str()), Some(state));
        }
    }
}
