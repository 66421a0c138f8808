//! What a classified scan does, decided by the station state machine, no I/O.
//!
//! A scan that changes the recording stands for a command and goes through
//! [`Station::handle`], so the line's commands and the scanner obey one set of rules
//! (DESIGN.md section 3):
//!
//! | scan | station idle | recording order A |
//! | --- | --- | --- |
//! | order A | `start A` | rescan: the same clips, nothing new (also when the line started A) |
//! | order B | `start B` | `start B` under `on_new_start`: stop A and start B, or `busy` |
//! | stop | refused `not_recording` | `stop A` |
//! | cancel | refused `not_recording` | `abort A` (reason `cancel barcode`) |
//! | item | refused `not_recording` | an item scan on A's clips, time-stamped |
//! | refused | nothing | nothing |
//!
//! [`idle_stop`] is the optional auto-stop: a recording with no scan for `idle_stop` is
//! stopped like a stop barcode.

use std::time::Duration;

use capture_protocol::{Capture, ClipId, Command, CommandId, Op, OrderId, Timestamp};

use super::rules::{Refusal, Scanned};
use crate::station::{Conditions, Decision, Station};

/// What one scan does.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanEffect {
    /// An order, stop or cancel scan: the command it stands for and the station's decision
    /// (which may be a refusal such as `busy`).
    Command {
        command: Command,
        decision: Decision,
    },
    /// An item scan on the recording in progress.
    Item {
        order: OrderId,
        clips: Vec<ClipId>,
        code: String,
    },
    /// Nothing happens; the packer is told.
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// The reason given to a scan that needs a recording while the station is idle.
pub const NOT_RECORDING: &str = "not_recording";

/// Decides what `scanned` does on `station`. `id` becomes the id of the command a scan
/// stands for (`scan-<ULID>`).
pub fn decide(
    station: &mut Station,
    scanned: &Scanned,
    id: CommandId,
    conditions: Conditions<'_>,
    now: Timestamp,
    new_clip_id: impl FnMut() -> ClipId,
) -> ScanEffect {
    let current = station.recording().map(|r| (r.order.clone(), r.clip_ids()));
    let op = match (scanned, current) {
        (Scanned::Refused(refusal), _) => return refused(refusal),
        (Scanned::Order(order), _) => Op::Start(Capture::of(order.clone())),
        (Scanned::Stop, Some((order, _))) => Op::Stop { order },
        (Scanned::Cancel, Some((order, _))) => Op::Abort {
            order,
            reason: Some("cancel barcode".to_owned()),
        },
        (Scanned::Item(code), Some((order, clips))) => {
            return ScanEffect::Item {
                order,
                clips,
                code: code.clone(),
            };
        }
        (Scanned::Stop | Scanned::Cancel | Scanned::Item(_), None) => {
            return ScanEffect::Refused {
                reason: NOT_RECORDING,
                message: "no order is recording; scan an order first".to_owned(),
            };
        }
    };
    let command = Command::new(id, op);
    let decision = station.handle(&command, conditions, now, new_clip_id);
    ScanEffect::Command { command, decision }
}

fn refused(refusal: &Refusal) -> ScanEffect {
    ScanEffect::Refused {
        reason: refusal.reason(),
        message: refusal.message(),
    }
}

/// The stop that `idle_stop` calls for: the recording in progress had no scan (and did not
/// start) for `after`. `last_scan` is the time of the last scan of any kind.
pub fn idle_stop(
    station: &Station,
    last_scan: Option<&Timestamp>,
    after: Duration,
    now: &Timestamp,
) -> Option<Op> {
    if after.is_zero() {
        return None;
    }
    let recording = station.recording()?;
    let since = match last_scan {
        Some(scan) if scan.unix_millis() > recording.since.unix_millis() => scan,
        _ => &recording.since,
    };
    let idle_ms = now.unix_millis() - since.unix_millis();
    (idle_ms >= i128::try_from(after.as_millis()).unwrap_or(i128::MAX)).then(|| Op::Stop {
        order: recording.order.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::str::FromStr;

    use capture_protocol::{CameraName, ErrorCode};
    use proptest::prelude::*;

    use super::*;
    use crate::station::{Action, OnNewStart, StationPolicy};

    fn station(on_new_start: OnNewStart) -> Station {
        Station::new(
            "pack-03",
            StationPolicy {
                cameras: vec![CameraName::from_str("top").unwrap()],
                on_new_start,
                default_max_secs: NonZeroU32::new(600).unwrap(),
            },
        )
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::try_from(
            time::OffsetDateTime::from_unix_timestamp(1_795_000_000 + secs).unwrap(),
        )
        .unwrap()
    }

    fn ids() -> impl FnMut() -> ClipId {
        let mut next = 0u128;
        move || {
            next += 1;
            ClipId::from_u128(next)
        }
    }

    fn order(name: &str) -> OrderId {
        OrderId::from_str(name).unwrap()
    }

    fn scan(s: &mut Station, scanned: Scanned, ids: &mut impl FnMut() -> ClipId) -> ScanEffect {
        decide(
            s,
            &scanned,
            CommandId::from_str("scan-1").unwrap(),
            Conditions::default(),
            at(0),
            ids,
        )
    }

    fn line_command(s: &mut Station, op: Op, ids: &mut impl FnMut() -> ClipId) -> Decision {
        let command = Command::new(CommandId::from_str("c-1").unwrap(), op);
        s.handle(&command, Conditions::default(), at(0), ids)
    }

    #[test]
    fn an_order_scan_starts_items_mark_it_and_stop_stops() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let ScanEffect::Command { command, decision } =
            scan(&mut s, Scanned::Order(order("SO-1")), &mut ids)
        else {
            panic!()
        };
        assert_eq!(command.op.name().as_str(), "start");
        assert!(matches!(decision.actions.as_slice(), [Action::Start(_)]));
        assert_eq!(
            scan(&mut s, Scanned::Item("4006381333931".into()), &mut ids),
            ScanEffect::Item {
                order: order("SO-1"),
                clips: vec![ClipId::from_u128(1)],
                code: "4006381333931".into()
            }
        );
        let ScanEffect::Command { command, decision } = scan(&mut s, Scanned::Stop, &mut ids)
        else {
            panic!()
        };
        assert_eq!(
            command.op,
            Op::Stop {
                order: order("SO-1")
            }
        );
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::Stop {
                truncated: false,
                ..
            }]
        ));
        assert!(s.recording().is_none());
    }

    #[test]
    fn cancel_aborts_the_recording_in_progress() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        scan(&mut s, Scanned::Order(order("SO-1")), &mut ids);
        let ScanEffect::Command { decision, .. } = scan(&mut s, Scanned::Cancel, &mut ids) else {
            panic!()
        };
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::Abort { reason: Some(r), .. }] if r == "cancel barcode"
        ));
    }

    #[test]
    fn stop_cancel_and_items_while_idle_are_refused() {
        let mut s = station(OnNewStart::StopPrevious);
        for scanned in [Scanned::Stop, Scanned::Cancel, Scanned::Item("X".into())] {
            assert!(matches!(
                scan(&mut s, scanned, &mut ids()),
                ScanEffect::Refused {
                    reason: NOT_RECORDING,
                    ..
                }
            ));
        }
    }

    #[test]
    fn another_order_follows_on_new_start() {
        let mut s = station(OnNewStart::Reject);
        let mut ids = ids();
        scan(&mut s, Scanned::Order(order("SO-1")), &mut ids);
        let ScanEffect::Command { decision, .. } =
            scan(&mut s, Scanned::Order(order("SO-2")), &mut ids)
        else {
            panic!()
        };
        assert!(matches!(decision.outcome, Err((ErrorCode::Busy, _))));
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-1")));

        let mut s = station(OnNewStart::StopPrevious);
        scan(&mut s, Scanned::Order(order("SO-1")), &mut ids);
        let ScanEffect::Command { decision, .. } =
            scan(&mut s, Scanned::Order(order("SO-2")), &mut ids)
        else {
            panic!()
        };
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::Stop { .. }, Action::Start(_)]
        ));
    }

    #[test]
    fn the_same_order_scanned_and_commanded_is_one_recording() {
        // Line first, then the scan.
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let by_line = line_command(&mut s, Op::Start(Capture::of(order("SO-1"))), &mut ids);
        let ScanEffect::Command { decision, .. } =
            scan(&mut s, Scanned::Order(order("SO-1")), &mut ids)
        else {
            panic!()
        };
        assert!(decision.actions.is_empty());
        assert_eq!(decision.outcome, by_line.outcome);
        // Scan first, then the line.
        let mut s = station(OnNewStart::Reject);
        let ScanEffect::Command {
            decision: by_scan, ..
        } = scan(&mut s, Scanned::Order(order("SO-2")), &mut ids)
        else {
            panic!()
        };
        let by_line = line_command(&mut s, Op::Start(Capture::of(order("SO-2"))), &mut ids);
        assert!(by_line.actions.is_empty());
        assert_eq!(by_line.outcome, by_scan.outcome);
    }

    #[test]
    fn a_refused_scan_changes_nothing() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        scan(&mut s, Scanned::Order(order("SO-1")), &mut ids);
        let before = s.recording().cloned();
        let effect = scan(
            &mut s,
            Scanned::Refused(Refusal::ControlCharacters),
            &mut ids,
        );
        assert!(matches!(
            effect,
            ScanEffect::Refused {
                reason: "control_characters",
                ..
            }
        ));
        assert_eq!(s.recording(), before.as_ref());
    }

    #[test]
    fn idle_stop_counts_from_the_last_scan_or_the_start() {
        let mut s = station(OnNewStart::StopPrevious);
        let after = Duration::from_secs(60);
        assert_eq!(idle_stop(&s, None, after, &at(1000)), None);
        scan(&mut s, Scanned::Order(order("SO-1")), &mut ids());
        assert_eq!(idle_stop(&s, None, after, &at(59)), None);
        let stop = Some(Op::Stop {
            order: order("SO-1"),
        });
        assert_eq!(idle_stop(&s, None, after, &at(60)), stop);
        // A scan at 30 s holds it off until 90 s; a scan from before the start does not.
        assert_eq!(idle_stop(&s, Some(&at(30)), after, &at(89)), None);
        assert_eq!(idle_stop(&s, Some(&at(30)), after, &at(90)), stop);
        assert_eq!(idle_stop(&s, Some(&at(-30)), after, &at(60)), stop);
        assert_eq!(idle_stop(&s, None, Duration::ZERO, &at(10_000)), None);
    }

    #[derive(Debug, Clone)]
    enum Input {
        Scan(Scanned),
        LineStart(u8),
        LineStop(u8),
    }

    fn input() -> impl Strategy<Value = Input> {
        let orders = ["SO-A", "SO-B"];
        prop_oneof![
            (0usize..2).prop_map(move |o| Input::Scan(Scanned::Order(order(orders[o])))),
            Just(Input::Scan(Scanned::Stop)),
            Just(Input::Scan(Scanned::Cancel)),
            "[0-9]{1,4}".prop_map(|c| Input::Scan(Scanned::Item(c))),
            Just(Input::Scan(Scanned::Refused(Refusal::ControlCharacters))),
            (0u8..2).prop_map(Input::LineStart),
            (0u8..2).prop_map(Input::LineStop),
        ]
    }

    proptest! {
        /// Scans mixed with the line's commands: an item always lands on the recording in
        /// progress, a refused or item scan never changes the recording, and an order is
        /// never recording twice at once (a rescan or a command for it starts nothing).
        #[test]
        fn scans_and_commands_together_keep_one_recording(
            inputs in proptest::collection::vec(input(), 1..50),
            reject in any::<bool>(),
        ) {
            let policy = if reject { OnNewStart::Reject } else { OnNewStart::StopPrevious };
            let mut s = station(policy);
            let mut ids = ids();
            let orders = ["SO-A", "SO-B"];
            for input in inputs {
                let before = s.recording().cloned();
                let actions = match input {
                    Input::Scan(scanned) => match scan(&mut s, scanned, &mut ids) {
                        ScanEffect::Command { decision, .. } => decision.actions,
                        ScanEffect::Item { order, clips, .. } => {
                            let current = before.as_ref().expect("an item needs a recording");
                            prop_assert_eq!(&order, &current.order);
                            prop_assert_eq!(clips, current.clip_ids());
                            prop_assert_eq!(s.recording(), before.as_ref());
                            Vec::new()
                        }
                        ScanEffect::Refused { .. } => {
                            prop_assert_eq!(s.recording(), before.as_ref());
                            Vec::new()
                        }
                    },
                    Input::LineStart(o) => {
                        line_command(&mut s, Op::Start(Capture::of(order(orders[o as usize]))), &mut ids).actions
                    }
                    Input::LineStop(o) => {
                        line_command(&mut s, Op::Stop { order: order(orders[o as usize]) }, &mut ids).actions
                    }
                };
                for action in &actions {
                    if let (Action::Start(started), Some(before)) = (action, &before) {
                        // Starting the order already recording would be a second recording.
                        prop_assert!(started.order != before.order);
                    }
                }
            }
        }
    }
}
