//! Multipart uploads in progress: the upload id the store gave a clip, and each completed
//! part's ETag.
//!
//! ```text
//! multipart (clip_id PK, upload_id, part_size, created_at)
//!   └── parts (clip_id, part_number PK, etag, size)   deleted with their multipart row
//! ```
//!
//! A row is written as soon as the store answered `CreateMultipartUpload`, and a part as
//! soon as the store acknowledged it, so that an agent restarted after a crash knows which
//! upload to resume and which parts it already sent (the uploader checks them against the
//! store's `ListParts`). The `part_size` is the one the upload started with: a changed
//! configuration never changes the part boundaries of an upload in progress. The rows are
//! deleted when the object is complete (in the transaction that marks the clip `uploaded`)
//! and when the upload must start over (an upload id the store no longer knows, a rejected
//! object).

use rusqlite::{Connection, OptionalExtension, params};

use super::{SpoolError, now_text};

/// One part the store acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRow {
    /// 1-based, as S3 numbers parts.
    pub part_number: i64,
    /// The ETag the store answered, quotes included, as `CompleteMultipartUpload` wants it.
    pub etag: String,
    pub size: i64,
}

/// A clip's multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartRow {
    pub clip_id: String,
    pub upload_id: String,
    pub part_size: i64,
    pub created_at: String,
    /// Ordered by part number.
    pub parts: Vec<PartRow>,
}

impl MultipartRow {
    /// Bytes the store holds in acknowledged parts.
    pub fn bytes_done(&self) -> i64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// Records the upload id the store gave `clip_id`, forgetting any earlier upload of it.
pub fn begin(
    connection: &Connection,
    clip_id: &str,
    upload_id: &str,
    part_size: i64,
) -> Result<(), SpoolError> {
    connection.execute("DELETE FROM multipart WHERE clip_id = ?1", [clip_id])?;
    connection.execute(
        "INSERT INTO multipart (clip_id, upload_id, part_size, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![clip_id, upload_id, part_size, now_text()],
    )?;
    Ok(())
}

/// The upload in progress for `clip_id`, with its parts.
pub fn get(connection: &Connection, clip_id: &str) -> Result<Option<MultipartRow>, SpoolError> {
    let Some((upload_id, part_size, created_at)) = connection
        .query_row(
            "SELECT upload_id, part_size, created_at FROM multipart WHERE clip_id = ?1",
            [clip_id],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut statement = connection.prepare(
        "SELECT part_number, etag, size FROM parts WHERE clip_id = ?1 ORDER BY part_number",
    )?;
    let parts = statement
        .query_map([clip_id], |row| {
            Ok(PartRow {
                part_number: row.get(0)?,
                etag: row.get(1)?,
                size: row.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(MultipartRow {
        clip_id: clip_id.to_owned(),
        upload_id,
        part_size,
        created_at,
        parts,
    }))
}

/// Records a part the store acknowledged for the upload `upload_id` of `clip_id`. Returns
/// `false` (and records nothing) when that upload is no longer the clip's current one, so
/// that a late answer for a dropped upload cannot mix into a new one.
pub fn record_part(
    connection: &Connection,
    clip_id: &str,
    upload_id: &str,
    part: &PartRow,
) -> Result<bool, SpoolError> {
    let current: Option<String> = connection
        .query_row(
            "SELECT upload_id FROM multipart WHERE clip_id = ?1",
            [clip_id],
            |row| row.get(0),
        )
        .optional()?;
    if current.as_deref() != Some(upload_id) {
        return Ok(false);
    }
    connection.execute(
        "INSERT INTO parts (clip_id, part_number, etag, size) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (clip_id, part_number) DO UPDATE SET etag = excluded.etag, size = excluded.size",
        params![clip_id, part.part_number, part.etag, part.size],
    )?;
    Ok(true)
}

/// Forgets one part (the store does not hold it as recorded).
pub fn forget_part(
    connection: &Connection,
    clip_id: &str,
    part_number: i64,
) -> Result<(), SpoolError> {
    connection.execute(
        "DELETE FROM parts WHERE clip_id = ?1 AND part_number = ?2",
        params![clip_id, part_number],
    )?;
    Ok(())
}

/// Forgets the clip's upload and its parts (completed, or to be started over).
pub fn forget(connection: &Connection, clip_id: &str) -> Result<(), SpoolError> {
    connection.execute("DELETE FROM multipart WHERE clip_id = ?1", [clip_id])?;
    Ok(())
}

/// Every upload in progress: `(clip_id, upload_id)`, for the janitor.
pub fn uploads(connection: &Connection) -> Result<Vec<(String, String)>, SpoolError> {
    let mut statement =
        connection.prepare("SELECT clip_id, upload_id FROM multipart ORDER BY clip_id")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::clips;
    use crate::spool::test_support::database;

    fn part(part_number: i64, etag: &str) -> PartRow {
        PartRow {
            part_number,
            etag: etag.into(),
            size: 100,
        }
    }

    #[test]
    fn parts_are_kept_per_upload_and_a_new_upload_starts_empty() {
        let (_dir, connection) = database();
        clips::insert(&connection, &clips::tests::new_clip("A")).unwrap();
        begin(&connection, "A", "u-1", 100).unwrap();
        assert!(record_part(&connection, "A", "u-1", &part(2, "\"b\"")).unwrap());
        assert!(record_part(&connection, "A", "u-1", &part(1, "\"a\"")).unwrap());
        // The same part again (a resend) replaces the first answer.
        assert!(record_part(&connection, "A", "u-1", &part(1, "\"a2\"")).unwrap());
        let upload = get(&connection, "A").unwrap().unwrap();
        assert_eq!(upload.upload_id, "u-1");
        assert_eq!(upload.parts, vec![part(1, "\"a2\""), part(2, "\"b\"")]);
        assert_eq!(upload.bytes_done(), 200);
        assert_eq!(uploads(&connection).unwrap(), [("A".into(), "u-1".into())]);

        begin(&connection, "A", "u-2", 100).unwrap();
        assert!(get(&connection, "A").unwrap().unwrap().parts.is_empty());
        assert!(
            !record_part(&connection, "A", "u-1", &part(3, "\"late\"")).unwrap(),
            "an answer for the dropped upload is not recorded"
        );
        assert!(get(&connection, "A").unwrap().unwrap().parts.is_empty());
    }

    #[test]
    fn forgetting_drops_the_upload_and_its_parts() {
        let (_dir, connection) = database();
        clips::insert(&connection, &clips::tests::new_clip("A")).unwrap();
        begin(&connection, "A", "u-1", 100).unwrap();
        record_part(&connection, "A", "u-1", &part(1, "\"a\"")).unwrap();
        record_part(&connection, "A", "u-1", &part(2, "\"b\"")).unwrap();
        forget_part(&connection, "A", 1).unwrap();
        assert_eq!(
            get(&connection, "A").unwrap().unwrap().parts,
            [part(2, "\"b\"")]
        );
        forget(&connection, "A").unwrap();
        assert!(get(&connection, "A").unwrap().is_none());
        let orphans: i64 = connection
            .query_row("SELECT count(*) FROM parts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(orphans, 0);
    }
}
