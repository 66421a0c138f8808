//! MQTT topics of protocol v1. QoS 1 everywhere.
//!
//! | topic | direction | retained |
//! | --- | --- | --- |
//! | `cap/{env}/station/{station}/cmd` | line -> agent | no |
//! | `cap/{env}/station/{station}/reply` | agent -> line | no |
//! | `cap/{env}/station/{station}/event` | agent -> anyone | no |
//! | `cap/{env}/station/{station}/status` | agent -> anyone (LWT offline) | yes |
//! | `cap/{env}/ingest/uploaded` | agent -> ingest (shared subscription `$share/ingest/...`) | no |
//! | `cap/{env}/device/{device}/confirm` | ingest -> agent | no |
//!
//! Every segment comes from a validated identifier, so no topic built here can contain a
//! wildcard (`+`, `#`), an empty level or a stray `/`. The environment is the first level, so
//! a dev client subscribed to `cap/dev/...` never sees prod traffic.

use crate::{DeviceId, Env, StationId};

/// QoS of every message of the protocol (at least once).
pub const QOS: u8 = 1;

/// The shared-subscription group of the ingest replicas.
pub const INGEST_SHARE_GROUP: &str = "ingest";

/// `cap/{env}/station/{station}/cmd`: commands, line -> agent.
pub fn command(env: &Env, station: &StationId) -> String {
    format!("cap/{env}/station/{station}/cmd")
}

/// `cap/{env}/station/{station}/reply`: replies, agent -> line.
pub fn reply(env: &Env, station: &StationId) -> String {
    format!("cap/{env}/station/{station}/reply")
}

/// `cap/{env}/station/{station}/event`: clip events, agent -> anyone.
pub fn event(env: &Env, station: &StationId) -> String {
    format!("cap/{env}/station/{station}/event")
}

/// `cap/{env}/station/{station}/status`: retained status and last will, agent -> anyone.
pub fn status(env: &Env, station: &StationId) -> String {
    format!("cap/{env}/station/{station}/status")
}

/// `cap/{env}/station/+/status`: the status of every station of `env` (subscription filter).
pub fn every_status(env: &Env) -> String {
    format!("cap/{env}/station/+/status")
}

/// `cap/{env}/station/+/event`: the clip events of every station of `env` (subscription
/// filter).
pub fn every_event(env: &Env) -> String {
    format!("cap/{env}/station/+/event")
}

/// `cap/{env}/station/+/cmd`: the commands to every station of `env` (subscription filter).
pub fn every_command(env: &Env) -> String {
    format!("cap/{env}/station/+/cmd")
}

/// `cap/{env}/station/+/reply`: the replies of every station of `env` (subscription filter).
pub fn every_reply(env: &Env) -> String {
    format!("cap/{env}/station/+/reply")
}

/// `$share/ingest/{filter}`: `filter` as a shared subscription of the ingest replicas, so that
/// each message goes to one replica (e.g. `$share/ingest/cap/prod/station/+/event`).
pub fn ingest_shared(filter: &str) -> String {
    format!("$share/{INGEST_SHARE_GROUP}/{filter}")
}

/// What a topic of a station (`cap/{env}/station/{station}/{kind}`) is: its station and its
/// last level (`cmd`, `reply`, `event`, `status`). `None` for any other topic, another
/// environment or a station id that breaks its rule.
pub fn station_topic<'t>(env: &Env, topic: &'t str) -> Option<(StationId, &'t str)> {
    let rest = topic.strip_prefix("cap/")?.strip_prefix(env.as_str())?;
    let rest = rest.strip_prefix("/station/")?;
    let (station, kind) = rest.split_once('/')?;
    if kind.contains('/') {
        return None;
    }
    Some((station.parse().ok()?, kind))
}

/// `cap/{env}/ingest/uploaded`: uploaded notifications, agent -> ingest (publish here).
pub fn uploaded(env: &Env) -> String {
    format!("cap/{env}/ingest/uploaded")
}

/// `$share/ingest/cap/{env}/ingest/uploaded`: what each ingest replica subscribes to, so that
/// each notification goes to one replica.
pub fn uploaded_shared(env: &Env) -> String {
    ingest_shared(&uploaded(env))
}

/// `cap/{env}/device/{device}/confirm`: confirmations, ingest -> agent.
pub fn confirm(env: &Env, device: &DeviceId) -> String {
    format!("cap/{env}/device/{device}/confirm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_of_the_contract() {
        let env: Env = "prod".parse().unwrap();
        let station: StationId = "pack-03".parse().unwrap();
        let device: DeviceId = "pi-07".parse().unwrap();
        assert_eq!(command(&env, &station), "cap/prod/station/pack-03/cmd");
        assert_eq!(reply(&env, &station), "cap/prod/station/pack-03/reply");
        assert_eq!(event(&env, &station), "cap/prod/station/pack-03/event");
        assert_eq!(status(&env, &station), "cap/prod/station/pack-03/status");
        assert_eq!(every_status(&env), "cap/prod/station/+/status");
        assert_eq!(uploaded(&env), "cap/prod/ingest/uploaded");
        assert_eq!(
            uploaded_shared(&env),
            "$share/ingest/cap/prod/ingest/uploaded"
        );
        assert_eq!(confirm(&env, &device), "cap/prod/device/pi-07/confirm");
        assert_eq!(every_event(&env), "cap/prod/station/+/event");
        assert_eq!(every_command(&env), "cap/prod/station/+/cmd");
        assert_eq!(every_reply(&env), "cap/prod/station/+/reply");
        assert_eq!(
            ingest_shared(&every_event(&env)),
            "$share/ingest/cap/prod/station/+/event"
        );
    }

    #[test]
    fn a_station_topic_names_its_station_and_kind() {
        let env: Env = "prod".parse().unwrap();
        let (station, kind) = station_topic(&env, "cap/prod/station/pack-03/event").unwrap();
        assert_eq!((station.as_str(), kind), ("pack-03", "event"));
        for other in [
            "cap/dev/station/pack-03/event",
            "cap/prod/station/pack-03/event/x",
            "cap/prod/station/PACK/event",
            "cap/prod/ingest/uploaded",
            "cap/prodx/station/pack-03/event",
        ] {
            assert!(station_topic(&env, other).is_none(), "{other}");
        }
    }
}
