//! The spool's schema and its migrations.
//!
//! `PRAGMA user_version` holds the number of migrations applied. Each migration runs in a
//! transaction of its own, so a crash mid-migration leaves the previous version intact. A
//! migration, once released, is never edited: a change to the schema is a new entry.

use rusqlite::Connection;

use super::SpoolError;

/// Every migration, in order. Index + 1 is the version it brings the database to.
const MIGRATIONS: &[&str] = &[
    // 1: inbox, clips, multipart progress, outbox.
    r#"
    CREATE TABLE inbox (
        command_id  TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        payload     BLOB NOT NULL,
        -- The reply as published; NULL while the command is not decided yet.
        reply       TEXT,
        replied_at  TEXT
    ) STRICT;

    CREATE TABLE clips (
        clip_id      TEXT PRIMARY KEY,
        order_id     TEXT NOT NULL,
        camera       TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('video', 'photo')),
        state        TEXT NOT NULL CHECK (state IN
                       ('recording', 'sealed', 'uploading', 'uploaded', 'accepted', 'failed', 'aborted')),
        path         TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        ended_at     TEXT,
        duration_ms  INTEGER,
        preroll_ms   INTEGER NOT NULL DEFAULT 0,
        size         INTEGER,
        sha256       TEXT,
        truncated    INTEGER NOT NULL DEFAULT 0,
        clock_synced INTEGER NOT NULL,
        -- The command's meta object, as JSON text, carried into the uploaded notification.
        meta         TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        bytes_sent   INTEGER NOT NULL DEFAULT 0,
        updated_at   TEXT NOT NULL
    ) STRICT;
    CREATE INDEX clips_by_state ON clips (state, started_at);
    CREATE INDEX clips_by_order ON clips (order_id);

    CREATE TABLE multipart (
        clip_id    TEXT PRIMARY KEY REFERENCES clips (clip_id) ON DELETE CASCADE,
        upload_id  TEXT NOT NULL,
        part_size  INTEGER NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE parts (
        clip_id     TEXT NOT NULL REFERENCES multipart (clip_id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        etag        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        PRIMARY KEY (clip_id, part_number)
    ) STRICT;

    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        retain     INTEGER NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;
    "#,
    // 2: the seal's part digests. The seal reads the file once for its sha256 and the MD5 of
    // every part of the upload plan; the uploader sends these (never the MD5 of the file as
    // it is at upload time), so the store refuses bytes that changed since the seal. NULL
    // for a clip sealed before this version: its digests are computed when its upload
    // begins.
    r#"
    -- The plan's part size: the file is cut every part_size bytes (one part when it fits).
    ALTER TABLE clips ADD COLUMN part_size INTEGER;
    -- One 16-byte MD5 per part of the plan, concatenated in part order.
    ALTER TABLE clips ADD COLUMN part_md5s BLOB;
    "#,
    // 3: the item scans of a clip (capture_protocol::item): a JSON array of
    // {"code": ..., "at": ...} in the order they were read, at most MAX_ITEMS, appended in the
    // transaction that commits the scan's decision. NULL: none.
    r#"
    ALTER TABLE clips ADD COLUMN items TEXT;
    "#,
];

/// Brings the database to the newest schema.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), SpoolError> {
    let current = check_version(connection)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        let migrate = |source| SpoolError::Migrate { version, source };
        let tx = connection.transaction().map_err(migrate)?;
        tx.execute_batch(sql).map_err(migrate)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(migrate)?;
        tx.commit().map_err(migrate)?;
    }
    Ok(())
}

/// The database's schema version; refuses a database newer than this agent.
pub(super) fn check_version(connection: &Connection) -> Result<usize, SpoolError> {
    let found: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let found = usize::try_from(found).unwrap_or(usize::MAX);
    if found > MIGRATIONS.len() {
        return Err(SpoolError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_gains_the_part_digests_and_keeps_its_clips() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = Connection::open(dir.path().join("spool.db")).unwrap();
        let tx = connection.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1i64).unwrap();
        tx.commit().unwrap();
        connection
            .execute(
                "INSERT INTO clips (clip_id, order_id, camera, kind, state, path, started_at,
                                    size, sha256, clock_synced, updated_at)
                 VALUES ('A', 'SO-1', 'top', 'video', 'sealed', '/spool/A.mp4',
                         '2026-11-23T10:00:00Z', 10, 'ab', 1, '2026-11-23T10:00:01Z')",
                [],
            )
            .unwrap();
        migrate(&mut connection).unwrap();
        assert_eq!(check_version(&connection).unwrap(), MIGRATIONS.len());
        let clip = crate::spool::clips::get(&connection, "A").unwrap().unwrap();
        assert_eq!((clip.size, clip.parts), (Some(10), None));
    }

    #[test]
    fn migrating_twice_is_a_no_op_and_a_newer_database_is_refused() {
        let (_dir, mut connection) = crate::spool::test_support::database();
        migrate(&mut connection).unwrap();
        assert_eq!(check_version(&connection).unwrap(), MIGRATIONS.len());
        connection
            .pragma_update(None, "user_version", 99i64)
            .unwrap();
        let err = migrate(&mut connection).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
