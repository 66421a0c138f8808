//! MQTT messages still to publish, in the order they were decided.
//!
//! A message is written here in the same transaction as the state change it announces, and
//! deleted only after the broker acknowledged it (PUBACK). rumqttc keeps unacknowledged
//! publishes in memory only, so after a crash this table is what is left to send: a message
//! may be published twice (at-least-once), never lost. Receivers deduplicate by id.

use rusqlite::{Connection, params};

use super::{SpoolError, now_text};

/// One message to publish with QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, payload: Vec<u8>, retain: bool) -> Self {
        Self {
            topic: topic.into(),
            payload,
            retain,
        }
    }
}

/// A stored message and its sequence number (to delete it once acknowledged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub message: OutboxMessage,
}

pub fn push(connection: &Connection, message: &OutboxMessage) -> Result<i64, SpoolError> {
    connection.execute(
        "INSERT INTO outbox (topic, payload, retain, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![message.topic, message.payload, message.retain, now_text()],
    )?;
    Ok(connection.last_insert_rowid())
}

/// The oldest `limit` messages not yet acknowledged.
pub fn pending(connection: &Connection, limit: usize) -> Result<Vec<Pending>, SpoolError> {
    let mut statement = connection
        .prepare("SELECT seq, topic, payload, retain FROM outbox ORDER BY seq LIMIT ?1")?;
    let rows = statement.query_map([limit as i64], |row| {
        Ok(Pending {
            seq: row.get(0)?,
            message: OutboxMessage {
                topic: row.get(1)?,
                payload: row.get(2)?,
                retain: row.get(3)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes an acknowledged message.
pub fn remove(connection: &Connection, seq: i64) -> Result<(), SpoolError> {
    connection.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
    Ok(())
}

pub fn len(connection: &Connection) -> Result<i64, SpoolError> {
    Ok(connection.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::test_support::database;

    #[test]
    fn messages_come_out_in_order_and_leave_when_acknowledged() {
        let (_dir, connection) = database();
        let first = push(&connection, &OutboxMessage::new("a", b"1".to_vec(), false)).unwrap();
        push(&connection, &OutboxMessage::new("b", b"2".to_vec(), true)).unwrap();
        let pending_now = pending(&connection, 10).unwrap();
        assert_eq!(
            pending_now
                .iter()
                .map(|p| p.message.topic.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(pending_now[1].message.retain);
        remove(&connection, first).unwrap();
        assert_eq!(len(&connection).unwrap(), 1);
        assert_eq!(pending(&connection, 10).unwrap()[0].message.payload, b"2");
    }
}
