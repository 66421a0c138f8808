//! The fleet view: the last retained status of every station. The consumer's MQTT link
//! updates it from `cap/{env}/station/+/status`; the API's `GET /v1/stations` reads it, and the
//! expected clips ([`crate::expected`]) say from it whether an overdue clip waits on a station
//! that is offline or online and silent.

use std::collections::BTreeMap;
use std::sync::RwLock;

use capture_protocol::{Presence, Status, Timestamp, decode};

/// The last retained status of every station, by station id.
#[derive(Debug, Default)]
pub struct Stations {
    inner: RwLock<BTreeMap<String, Status>>,
}

impl Stations {
    /// Every known station, ordered by id.
    pub fn snapshot(&self) -> Vec<Status> {
        self.inner
            .read()
            .map(|map| map.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Where `station` is, from its last status: `online`, `offline` or `unknown` (no status
    /// seen), and the time of that status.
    pub fn presence(&self, station: &str) -> (&'static str, Option<Timestamp>) {
        let Ok(map) = self.inner.read() else {
            return ("unknown", None);
        };
        match map.get(station) {
            Some(status) => match status.state {
                Presence::Online => ("online", Some(status.at)),
                Presence::Offline => ("offline", Some(status.at)),
            },
            None => ("unknown", None),
        }
    }

    /// Records the retained status published on `topic`; an empty payload (the retained
    /// message cleared) forgets the station.
    pub(crate) fn update(&self, topic: &str, payload: &[u8]) {
        let station = topic.split('/').nth(3).unwrap_or_default().to_owned();
        let Ok(mut map) = self.inner.write() else {
            return;
        };
        if payload.is_empty() {
            map.remove(&station);
            return;
        }
        match decode::<Status>(payload, "station status") {
            Ok(status) => {
                map.insert(station, status);
            }
            Err(error) => tracing::warn!(%topic, error = %error, "ignoring unreadable status"),
        }
    }
}
