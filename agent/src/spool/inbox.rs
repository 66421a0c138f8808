//! The command inbox: every command delivery is recorded here, by command id, before the MQTT
//! packet is acknowledged.
//!
//! A command id seen before is a redelivery: the line gets the stored reply again and the
//! command has no second effect. A command recorded but never answered (the agent died
//! between recording and deciding) is decided at the next start-up or redelivery.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SpoolError, now_text};

/// What the inbox knew of a command id when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// First delivery: decide it.
    New,
    /// Recorded before but not decided (a crash in between): decide it now.
    Unanswered,
    /// Decided before: publish this reply again, do nothing else.
    Answered(String),
}

/// Records a delivery of `command_id`; see [`Received`].
pub fn record(
    connection: &Connection,
    command_id: &str,
    payload: &[u8],
) -> Result<Received, SpoolError> {
    let inserted = connection.execute(
        "INSERT INTO inbox (command_id, received_at, payload) VALUES (?1, ?2, ?3)
         ON CONFLICT (command_id) DO NOTHING",
        params![command_id, now_text(), payload],
    )?;
    if inserted == 1 {
        return Ok(Received::New);
    }
    let reply: Option<String> = connection.query_row(
        "SELECT reply FROM inbox WHERE command_id = ?1",
        [command_id],
        |row| row.get(0),
    )?;
    Ok(match reply {
        Some(reply) => Received::Answered(reply),
        None => Received::Unanswered,
    })
}

/// Stores the reply of a decided command (part of [`super::commit_decision`]).
pub(super) fn store_reply(
    connection: &Connection,
    command_id: &str,
    reply: &str,
) -> Result<(), SpoolError> {
    connection.execute(
        "UPDATE inbox SET reply = ?2, replied_at = ?3 WHERE command_id = ?1",
        params![command_id, reply, now_text()],
    )?;
    Ok(())
}

/// Commands recorded but not decided, oldest first, with their payloads.
pub fn unanswered(connection: &Connection) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
    let mut statement = connection.prepare(
        "SELECT command_id, payload FROM inbox WHERE reply IS NULL ORDER BY received_at",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored reply of a command, if it was decided.
pub fn reply_of(connection: &Connection, command_id: &str) -> Result<Option<String>, SpoolError> {
    Ok(connection
        .query_row(
            "SELECT reply FROM inbox WHERE command_id = ?1",
            [command_id],
            |row| row.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// Forgets commands answered before `cutoff` (RFC 3339): the line does not redeliver a
/// command days later, and the inbox should not grow without bound.
pub fn prune(connection: &Connection, cutoff: &str) -> Result<usize, SpoolError> {
    Ok(connection.execute(
        "DELETE FROM inbox WHERE reply IS NOT NULL AND replied_at < ?1",
        [cutoff],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::test_support::database;

    #[test]
    fn a_redelivered_command_gets_the_stored_reply() {
        let (_dir, connection) = database();
        assert_eq!(record(&connection, "c-1", b"{}").unwrap(), Received::New);
        assert_eq!(
            record(&connection, "c-1", b"{}").unwrap(),
            Received::Unanswered
        );
        assert_eq!(
            unanswered(&connection).unwrap(),
            vec![("c-1".to_owned(), b"{}".to_vec())]
        );
        store_reply(&connection, "c-1", r#"{"ok":true}"#).unwrap();
        assert_eq!(
            record(&connection, "c-1", b"{}").unwrap(),
            Received::Answered(r#"{"ok":true}"#.into())
        );
        assert!(unanswered(&connection).unwrap().is_empty());
        assert_eq!(
            reply_of(&connection, "c-1").unwrap().as_deref(),
            Some(r#"{"ok":true}"#)
        );
    }

    #[test]
    fn pruning_keeps_unanswered_and_recent_commands() {
        let (_dir, connection) = database();
        record(&connection, "old", b"{}").unwrap();
        store_reply(&connection, "old", "{}").unwrap();
        record(&connection, "open", b"{}").unwrap();
        assert_eq!(prune(&connection, "9999-01-01T00:00:00Z").unwrap(), 1);
        assert_eq!(prune(&connection, "2000-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(unanswered(&connection).unwrap().len(), 1);
    }
}
