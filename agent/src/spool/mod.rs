//! The spool: the agent's durable memory, one SQLite database beside the clip files.
//!
//! Everything the agent must not forget across a crash, a power cut or a broker outage is
//! written here before it is acted on or acknowledged:
//!
//! - **inbox** ([`inbox`]): every command by id, with the reply once decided. The MQTT packet
//!   is acknowledged only after the command is here; a redelivered command finds its stored
//!   reply and has no second effect.
//! - **clips** ([`clips`]): each clip or photo and its life
//!   (`recording → sealed → uploading → uploaded → accepted`, or `failed` / `aborted`), with
//!   size, sha256, timing and the last upload error.
//! - **multipart** and **parts** ([`multipart`]): an upload in progress (upload id, each
//!   completed part's ETag), so that a restarted agent sends only the missing parts.
//! - **outbox** ([`outbox`]): every MQTT message still to publish (replies, events, status,
//!   uploaded notifications), deleted only after the broker acknowledged it.
//!
//! # Durability
//!
//! WAL journal with `synchronous=FULL`: a transaction that returned is on disk, power cut or
//! not. Decisions that belong together commit together ([`Decided`]): the reply, the clips a
//! command created and the messages announcing them are one transaction, so a crash leaves
//! all of them or none.
//!
//! # Threading
//!
//! One thread owns the only read-write connection and runs jobs one after the other; the
//! async side holds a cloneable [`Spool`] handle that sends closures over a bounded channel
//! and awaits their result. SQLite work never blocks a tokio worker, and there is exactly one
//! writer. The functions that do the SQL take a `&Connection` and are unit-tested directly.

pub mod clips;
pub mod inbox;
pub mod multipart;
pub mod outbox;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::{mpsc, oneshot};

pub use clips::{ClipItem, ClipRow, ClipState, NewClip, Sealed};
pub use inbox::Received;
pub use multipart::{MultipartRow, PartRow};
pub use outbox::{OutboxMessage, Pending};

/// The database's file name inside the agent's `spool_dir`.
pub const DATABASE_FILE: &str = "spool.db";

/// Where the spool database of `spool_dir` is.
pub fn database_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(DATABASE_FILE)
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("opening the spool database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migrating the spool database to version {version}: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error(
        "the spool database is at version {found}, newer than this agent knows ({known}); \
         run the newer agent or restore a backup"
    )]
    TooNew { found: usize, known: usize },
    #[error("spool database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("spool row for clip {clip_id} is corrupt: {what}")]
    Corrupt { clip_id: String, what: String },
    #[error("the spool thread has stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the spool thread; clone it freely.
#[derive(Debug, Clone)]
pub struct Spool {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Spool {
    /// Opens (creating if needed) and migrates the database at `path`, and starts the thread
    /// that owns it. Fails, without starting anything, when the file cannot be opened or
    /// migrated.
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let mut connection = open_read_write(path)?;
        schema::migrate(&mut connection)?;
        let (jobs, mut queue) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || {
                while let Some(job) = queue.blocking_recv() {
                    job(&mut connection);
                }
            })
            .map_err(|e| SpoolError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Spool {
            jobs,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on the spool thread and returns its result.
    pub async fn call<T, F>(&self, job: F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, SpoolError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = done.send(job(connection));
        });
        self.jobs.send(job).await.map_err(|_| SpoolError::Stopped)?;
        result.await.map_err(|_| SpoolError::Stopped)?
    }
}

/// The one read-write connection: WAL, `synchronous=FULL`, foreign keys on.
fn open_read_write(path: &Path) -> Result<Connection, SpoolError> {
    let open = |source| SpoolError::Open {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open(path).map_err(open)?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(open)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(open)?;
    connection
        .pragma_update(None, "foreign_keys", "ON")
        .map_err(open)?;
    Ok(connection)
}

/// A read-only connection for inspection (`capture-agent spool`) while the daemon runs.
pub fn open_read_only(path: &Path) -> Result<Connection, SpoolError> {
    let open = |source| SpoolError::Open {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(open)?;
    schema::check_version(&connection)?;
    Ok(connection)
}

/// What handling one command leaves behind, committed in one transaction: the reply (also
/// kept in the inbox for redeliveries), the clips it created and the messages to publish.
#[derive(Debug, Clone, Default)]
pub struct Decided {
    pub command_id: String,
    pub reply: String,
    pub new_clips: Vec<NewClip>,
    /// Clips whose state the command changed (stop seals them later; abort ends them).
    pub clip_states: Vec<(String, ClipState)>,
    /// Item scans to record on the clips recording (a scan that is no command).
    pub items: Vec<ClipItem>,
    pub messages: Vec<OutboxMessage>,
}

/// Commits a decision atomically; see [`Decided`].
pub fn commit_decision(connection: &mut Connection, decided: &Decided) -> Result<(), SpoolError> {
    announce(connection, &decided.messages, |tx| {
        inbox::store_reply(tx, &decided.command_id, &decided.reply)?;
        for clip in &decided.new_clips {
            clips::insert(tx, clip)?;
        }
        for (clip_id, state) in &decided.clip_states {
            clips::set_state(tx, clip_id, *state)?;
        }
        for item in &decided.items {
            if !clips::add_item(tx, item)? {
                tracing::warn!(
                    clip_id = %item.clip_id,
                    code = %item.code,
                    max = capture_protocol::MAX_ITEMS,
                    "the clip holds the most item scans it carries; this one is only in its item_scanned event"
                );
            }
        }
        Ok(())
    })
}

/// Makes `change` and queues the `messages` that announce it, in one transaction: after a
/// crash both are on disk or neither is, so no state change goes unannounced and no message
/// announces a change that did not happen. An error from `change` rolls everything back.
pub fn announce<'m, T>(
    connection: &mut Connection,
    messages: impl IntoIterator<Item = &'m OutboxMessage>,
    change: impl FnOnce(&Transaction<'_>) -> Result<T, SpoolError>,
) -> Result<T, SpoolError> {
    let tx = connection.transaction()?;
    let value = change(&tx)?;
    for message in messages {
        outbox::push(&tx, message)?;
    }
    tx.commit()?;
    Ok(value)
}

/// The current time as stored in the spool (RFC 3339, UTC, milliseconds).
pub(crate) fn now_text() -> String {
    capture_protocol::Timestamp::now().to_string()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A migrated database in a temporary directory.
    pub fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = open_read_write(&dir.path().join("spool.db")).unwrap();
        schema::migrate(&mut connection).unwrap();
        (dir, connection)
    }

    /// A 10-byte video clip of order `SO-1`, camera `top`, sealed with one part whose MD5 is
    /// `part_md5`.
    pub fn sealed_video(connection: &Connection, clip_id: &str, part_md5: [u8; 16]) {
        clips::insert(
            connection,
            &NewClip {
                clip_id: clip_id.into(),
                order: "SO-1".into(),
                camera: "top".into(),
                kind: "video".into(),
                state: ClipState::Recording,
                path: format!("/spool/clips/{clip_id}.mp4"),
                started_at: "2026-11-23T10:00:00Z".into(),
                preroll_ms: 0,
                clock_synced: true,
                meta: None,
            },
        )
        .unwrap();
        let sealed = Sealed {
            path: format!("/spool/clips/{clip_id}.mp4"),
            size: 10,
            sha256: "ab".repeat(32),
            parts: crate::digest::PartDigests {
                part_size: 8 << 20,
                md5s: vec![part_md5],
            },
            duration_ms: 1000,
            ended_at: "2026-11-23T10:00:01Z".into(),
            truncated: false,
        };
        clips::seal(connection, clip_id, &sealed).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_opened_in_wal_mode_with_full_sync() {
        let (_dir, connection) = test_support::database();
        let mode: String = connection
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = connection
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[tokio::test]
    async fn the_handle_runs_jobs_on_the_spool_thread_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let decided = Decided {
            command_id: "c-1".into(),
            reply: r#"{"ok":true}"#.into(),
            messages: vec![OutboxMessage::new("cap/t/x", b"hello".to_vec(), false)],
            ..Decided::default()
        };
        spool
            .call(move |c| {
                inbox::record(c, "c-1", b"{}")?;
                commit_decision(c, &decided)
            })
            .await
            .unwrap();
        drop(spool);

        let spool = Spool::open(&path).unwrap();
        let received = spool
            .call(|c| inbox::record(c, "c-1", b"{}"))
            .await
            .unwrap();
        assert_eq!(received, Received::Answered(r#"{"ok":true}"#.into()));
        let pending = spool.call(|c| outbox::pending(c, 10)).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message.payload, b"hello");
    }

    #[test]
    fn an_item_scan_is_committed_with_its_decision_on_every_clip_recording() {
        let (_dir, mut connection) = test_support::database();
        for clip_id in ["01JD0000000000000000000001", "01JD0000000000000000000002"] {
            clips::insert(&connection, &clips::tests::new_clip(clip_id)).unwrap();
        }
        inbox::record(&connection, "scan-1", b"{}").unwrap();
        let decided = Decided {
            command_id: "scan-1".into(),
            reply: r#"{"event":"item_scanned"}"#.into(),
            items: ["01JD0000000000000000000001", "01JD0000000000000000000002"]
                .map(|clip_id| ClipItem {
                    clip_id: clip_id.into(),
                    code: "4006381333931".into(),
                    at: "2026-11-23T10:00:05Z".into(),
                })
                .to_vec(),
            messages: vec![OutboxMessage::new("t", b"m".to_vec(), false)],
            ..Decided::default()
        };
        commit_decision(&mut connection, &decided).unwrap();
        for clip_id in ["01JD0000000000000000000001", "01JD0000000000000000000002"] {
            let row = clips::get(&connection, clip_id).unwrap().unwrap();
            assert_eq!(
                row.items.as_deref(),
                Some(r#"[{"code":"4006381333931","at":"2026-11-23T10:00:05Z"}]"#)
            );
        }
    }

    #[test]
    fn a_failed_decision_leaves_nothing_behind() {
        let (_dir, mut connection) = test_support::database();
        inbox::record(&connection, "c-1", b"{}").unwrap();
        let clip = clips::tests::new_clip("01JD0000000000000000000001");
        let decided = Decided {
            command_id: "c-1".into(),
            reply: "{}".into(),
            // The same clip twice violates the primary key: the transaction must roll back.
            new_clips: vec![clip.clone(), clip],
            messages: vec![OutboxMessage::new("t", b"m".to_vec(), false)],
            ..Decided::default()
        };
        assert!(commit_decision(&mut connection, &decided).is_err());
        assert_eq!(outbox::pending(&connection, 10).unwrap().len(), 0);
        assert_eq!(
            inbox::record(&connection, "c-1", b"{}").unwrap(),
            Received::Unanswered
        );
        assert!(
            clips::get(&connection, "01JD0000000000000000000001")
                .unwrap()
                .is_none()
        );
    }
}
