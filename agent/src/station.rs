//! The station state machine: what a command does, decided without any I/O.
//!
//! A station records one order at a time. [`Station::handle`] takes a parsed command, the
//! conditions the rest of the agent observed (is the disk full, which cameras deliver frames)
//! and the time, and returns a [`Decision`]: the [`Action`]s to carry out, in order, and the
//! reply outcome. [`Station::tick`] closes a recording that ran past its `max_secs`. The
//! caller (the daemon) owns the I/O: it records the command in the spool first, then carries
//! out the actions through the capture engine, then publishes the reply.
//!
//! The rules are DESIGN.md section 3, the contract with the warehouse line:
//!
//! | command | station idle | recording order A |
//! | --- | --- | --- |
//! | `start A` | start A: one clip per selected camera | rescan: the same clips again, no action |
//! | `start B` | start B | `stop_previous`: stop A, start B; `reject`: `busy` |
//! | `stop A` / `abort A` | `not_recording` | stop (upload follows) / abort (discarded) |
//! | `stop B` / `abort B` | `not_recording` | `not_recording` |
//! | `snapshot A` | one photo per selected camera | the same, recording goes on |
//! | `ping` | ok | ok |
//!
//! A refused command never changes the state: `disk_full` and `camera_unavailable` are
//! decided before anything is stopped or started.
//!
//! Size: about 340 lines of rules; the rest of the file is their unit and property tests,
//! kept beside the table they hold to.

use std::num::NonZeroU32;

use capture_protocol::{
    CameraName, Capture, ClipId, Command, ErrorCode, Meta, Op, OrderId, Timestamp,
};

/// What `start` does while another order is recording (`on_new_start` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNewStart {
    /// Stop the current recording normally (it is uploaded) and start the new one.
    #[default]
    StopPrevious,
    /// Refuse the new start with `busy`.
    Reject,
}

/// The station's fixed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationPolicy {
    /// Every camera of the station, in config order: the default selection.
    pub cameras: Vec<CameraName>,
    pub on_new_start: OnNewStart,
    /// `max_secs` for a `start` that does not give one.
    pub default_max_secs: NonZeroU32,
}

/// What the rest of the agent knows right now that decides whether a capture can begin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    /// The spool is over its quota and nothing can be evicted.
    pub disk_full: bool,
    /// Cameras whose pipeline is not delivering frames.
    pub unavailable: &'a [CameraName],
}

/// One clip of a recording or one photo: which camera, which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub camera: CameraName,
    pub clip_id: ClipId,
}

/// The recording in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub order: OrderId,
    pub takes: Vec<Take>,
    pub since: Timestamp,
    pub max_secs: NonZeroU32,
    pub meta: Option<Meta>,
}

impl Recording {
    pub fn clip_ids(&self) -> Vec<ClipId> {
        self.takes.iter().map(|t| t.clip_id.clone()).collect()
    }

    /// Whether `now` is at or past the recording's `max_secs`.
    fn expired(&self, now: &Timestamp) -> bool {
        let elapsed_ms = now.unix_millis() - self.since.unix_millis();
        elapsed_ms >= i128::from(self.max_secs.get()) * 1000
    }
}

/// Something the daemon must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Begin a clip per take, pre-roll included, tagged with `order`.
    Start(Recording),
    /// Finalize these clips (post-roll included) and queue them for upload. `truncated` when
    /// `max_secs` closed the recording rather than a `stop`.
    Stop {
        recording: Recording,
        truncated: bool,
    },
    /// Discard these clips; they are never uploaded.
    Abort {
        recording: Recording,
        reason: Option<String>,
    },
    /// Take one JPEG per take from the running pipelines.
    Snapshot {
        order: OrderId,
        takes: Vec<Take>,
        meta: Option<Meta>,
    },
}

/// The reply to send: the clip ids, or why the command was refused.
pub type Outcome = Result<Vec<ClipId>, (ErrorCode, String)>;

/// What one command does.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub outcome: Outcome,
}

impl Decision {
    fn refuse(code: ErrorCode, message: String) -> Decision {
        Decision {
            actions: Vec::new(),
            outcome: Err((code, message)),
        }
    }
}

/// The state of one station.
#[derive(Debug, Clone)]
pub struct Station {
    name: String,
    policy: StationPolicy,
    recording: Option<Recording>,
}

impl Station {
    /// An idle station. `name` is used in messages only.
    pub fn new(name: impl Into<String>, policy: StationPolicy) -> Station {
        Station {
            name: name.into(),
            policy,
            recording: None,
        }
    }

    /// A station resuming a recording the spool says was in progress.
    pub fn resume(mut self, recording: Recording) -> Station {
        self.recording = Some(recording);
        self
    }

    pub fn recording(&self) -> Option<&Recording> {
        self.recording.as_ref()
    }

    /// Decides what `command` does. `new_clip_id` is called once per clip or photo started.
    pub fn handle(
        &mut self,
        command: &Command,
        conditions: Conditions<'_>,
        now: Timestamp,
        mut new_clip_id: impl FnMut() -> ClipId,
    ) -> Decision {
        match &command.op {
            Op::Ping => Decision {
                actions: Vec::new(),
                outcome: Ok(Vec::new()),
            },
            Op::Start(capture) => self.start(capture, conditions, now, &mut new_clip_id),
            Op::Stop { order } => match self.take_recording_of(order) {
                Ok(recording) => Decision {
                    outcome: Ok(recording.clip_ids()),
                    actions: vec![Action::Stop {
                        recording,
                        truncated: false,
                    }],
                },
                Err(refusal) => refusal,
            },
            Op::Abort { order, reason } => match self.take_recording_of(order) {
                Ok(recording) => Decision {
                    outcome: Ok(recording.clip_ids()),
                    actions: vec![Action::Abort {
                        recording,
                        reason: reason.clone(),
                    }],
                },
                Err(refusal) => refusal,
            },
            Op::Snapshot(capture) => {
                let cameras = match self.select(capture, conditions) {
                    Ok(cameras) => cameras,
                    Err(refusal) => return refusal,
                };
                let takes = takes(cameras, &mut new_clip_id);
                Decision {
                    outcome: Ok(takes.iter().map(|t| t.clip_id.clone()).collect()),
                    actions: vec![Action::Snapshot {
                        order: capture.order.clone(),
                        takes,
                        meta: capture.meta.clone(),
                    }],
                }
            }
        }
    }

    /// Closes the recording when it ran past its `max_secs`; the clips are marked truncated.
    pub fn tick(&mut self, now: &Timestamp) -> Option<Action> {
        if !self.recording.as_ref()?.expired(now) {
            return None;
        }
        self.recording.take().map(|recording| Action::Stop {
            recording,
            truncated: true,
        })
    }

    /// Closes the recording because the agent is shutting down; the clips are marked
    /// truncated (the order did not end with a `stop`).
    pub fn close(&mut self) -> Option<Action> {
        self.recording.take().map(|recording| Action::Stop {
            recording,
            truncated: true,
        })
    }

    fn start(
        &mut self,
        capture: &Capture,
        conditions: Conditions<'_>,
        now: Timestamp,
        new_clip_id: &mut impl FnMut() -> ClipId,
    ) -> Decision {
        let mut actions = Vec::new();
        if let Some(current) = &self.recording {
            if current.order == capture.order {
                // A rescan: the same clips, nothing new.
                return Decision {
                    actions,
                    outcome: Ok(current.clip_ids()),
                };
            }
            if self.policy.on_new_start == OnNewStart::Reject {
                return Decision::refuse(
                    ErrorCode::Busy,
                    format!(
                        "station {} is recording order {}; stop it first",
                        self.name, current.order
                    ),
                );
            }
        }
        let cameras = match self.select(capture, conditions) {
            Ok(cameras) => cameras,
            Err(refusal) => return refusal,
        };
        if let Some(previous) = self.recording.take() {
            actions.push(Action::Stop {
                recording: previous,
                truncated: false,
            });
        }
        let recording = Recording {
            order: capture.order.clone(),
            takes: takes(cameras, new_clip_id),
            since: now,
            max_secs: capture.max_secs.unwrap_or(self.policy.default_max_secs),
            meta: capture.meta.clone(),
        };
        let outcome = Ok(recording.clip_ids());
        self.recording = Some(recording.clone());
        actions.push(Action::Start(recording));
        Decision { actions, outcome }
    }

    /// The cameras a capture selects, or the refusal when it cannot begin.
    fn select(
        &self,
        capture: &Capture,
        conditions: Conditions<'_>,
    ) -> Result<Vec<CameraName>, Decision> {
        if conditions.disk_full {
            return Err(Decision::refuse(
                ErrorCode::DiskFull,
                format!(
                    "station {}: the spool is full and holds no clip the cloud has accepted yet",
                    self.name
                ),
            ));
        }
        let selected = match &capture.cameras {
            None => self.policy.cameras.clone(),
            Some(cameras) => cameras.names().to_vec(),
        };
        if let Some(unknown) = selected.iter().find(|c| !self.policy.cameras.contains(c)) {
            return Err(Decision::refuse(
                ErrorCode::CameraUnavailable,
                format!("station {} has no camera {unknown}", self.name),
            ));
        }
        if let Some(down) = selected.iter().find(|c| conditions.unavailable.contains(c)) {
            return Err(Decision::refuse(
                ErrorCode::CameraUnavailable,
                format!("camera {down} of station {} delivers no frames", self.name),
            ));
        }
        Ok(selected)
    }

    fn take_recording_of(&mut self, order: &OrderId) -> Result<Recording, Decision> {
        match &self.recording {
            Some(current) if &current.order == order => {
                Ok(self.recording.take().expect("checked just above"))
            }
            _ => Err(Decision::refuse(
                ErrorCode::NotRecording,
                format!("station {} is not recording order {order}", self.name),
            )),
        }
    }
}

fn takes(cameras: Vec<CameraName>, new_clip_id: &mut impl FnMut() -> ClipId) -> Vec<Take> {
    cameras
        .into_iter()
        .map(|camera| Take {
            camera,
            clip_id: new_clip_id(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_protocol::{Cameras, CommandId};
    use proptest::prelude::*;

    fn cam(name: &str) -> CameraName {
        CameraName::try_from(name).unwrap()
    }

    fn order(name: &str) -> OrderId {
        OrderId::try_from(name).unwrap()
    }

    fn station(on_new_start: OnNewStart) -> Station {
        Station::new(
            "pack-03",
            StationPolicy {
                cameras: vec![cam("top"), cam("side")],
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

    fn command(op: Op) -> Command {
        Command::new(CommandId::try_from("c-1").unwrap(), op)
    }

    fn start(o: &str) -> Command {
        command(Op::Start(Capture::of(order(o))))
    }

    /// Clip ids 1, 2, 3, ... so tests can name them.
    fn ids() -> impl FnMut() -> ClipId {
        let mut next = 0u128;
        move || {
            next += 1;
            ClipId::from_u128(next)
        }
    }

    fn run(station: &mut Station, command: &Command, ids: &mut impl FnMut() -> ClipId) -> Decision {
        station.handle(command, Conditions::default(), at(0), ids)
    }

    #[test]
    fn start_while_idle_begins_one_clip_per_camera() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let decision = run(&mut s, &start("SO-1"), &mut ids);
        assert_eq!(
            decision.outcome,
            Ok(vec![ClipId::from_u128(1), ClipId::from_u128(2)])
        );
        let [Action::Start(recording)] = decision.actions.as_slice() else {
            panic!("{:?}", decision.actions)
        };
        assert_eq!(recording.order, order("SO-1"));
        assert_eq!(recording.takes[0].camera, cam("top"));
        assert_eq!(recording.takes[1].camera, cam("side"));
        assert_eq!(recording.max_secs.get(), 600);
    }

    #[test]
    fn a_rescan_gets_the_same_clips_and_does_nothing() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let first = run(&mut s, &start("SO-1"), &mut ids);
        let again = run(&mut s, &start("SO-1"), &mut ids);
        assert_eq!(again.outcome, first.outcome);
        assert!(again.actions.is_empty());
    }

    #[test]
    fn start_for_another_order_stops_the_previous_one_by_default() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        run(&mut s, &start("SO-1"), &mut ids);
        let decision = run(&mut s, &start("SO-2"), &mut ids);
        assert_eq!(
            decision.outcome,
            Ok(vec![ClipId::from_u128(3), ClipId::from_u128(4)])
        );
        match decision.actions.as_slice() {
            [
                Action::Stop {
                    recording: stopped,
                    truncated: false,
                },
                Action::Start(started),
            ] => {
                assert_eq!(stopped.order, order("SO-1"));
                assert_eq!(started.order, order("SO-2"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-2")));
    }

    #[test]
    fn start_for_another_order_is_busy_when_configured_to_reject() {
        let mut s = station(OnNewStart::Reject);
        let mut ids = ids();
        run(&mut s, &start("SO-1"), &mut ids);
        let decision = run(&mut s, &start("SO-2"), &mut ids);
        let Err((code, message)) = decision.outcome else {
            panic!()
        };
        assert_eq!(code, ErrorCode::Busy);
        assert!(message.contains("SO-1"), "{message}");
        assert!(decision.actions.is_empty());
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-1")));
    }

    #[test]
    fn stop_and_abort_of_an_order_not_recording_are_refused() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let stop = command(Op::Stop {
            order: order("SO-1"),
        });
        let decision = run(&mut s, &stop, &mut ids);
        assert_eq!(
            decision.outcome,
            Err((
                ErrorCode::NotRecording,
                "station pack-03 is not recording order SO-1".to_owned()
            ))
        );
        run(&mut s, &start("SO-2"), &mut ids);
        let abort = command(Op::Abort {
            order: order("SO-1"),
            reason: None,
        });
        assert!(matches!(
            run(&mut s, &abort, &mut ids).outcome,
            Err((ErrorCode::NotRecording, _))
        ));
        assert!(s.recording().is_some(), "the other order keeps recording");
    }

    #[test]
    fn stop_finalizes_and_abort_discards() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        run(&mut s, &start("SO-1"), &mut ids);
        let stop = command(Op::Stop {
            order: order("SO-1"),
        });
        let decision = run(&mut s, &stop, &mut ids);
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::Stop {
                truncated: false,
                ..
            }]
        ));
        assert!(s.recording().is_none());

        run(&mut s, &start("SO-2"), &mut ids);
        let abort = command(Op::Abort {
            order: order("SO-2"),
            reason: Some("rescan".into()),
        });
        let decision = run(&mut s, &abort, &mut ids);
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::Abort { reason: Some(r), .. }] if r == "rescan"
        ));
        assert!(s.recording().is_none());
    }

    #[test]
    fn snapshot_works_idle_and_while_recording_without_touching_the_recording() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        let mut snap = Capture::of(order("SO-9"));
        snap.cameras = Some(Cameras::try_from(vec![cam("side")]).unwrap());
        let decision = run(&mut s, &command(Op::Snapshot(snap.clone())), &mut ids);
        assert_eq!(decision.outcome, Ok(vec![ClipId::from_u128(1)]));
        run(&mut s, &start("SO-1"), &mut ids);
        let decision = run(&mut s, &command(Op::Snapshot(snap)), &mut ids);
        assert!(
            matches!(decision.actions.as_slice(), [Action::Snapshot { takes, .. }] if takes.len() == 1)
        );
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-1")));
    }

    #[test]
    fn a_full_disk_or_a_dead_camera_refuses_a_start_and_changes_nothing() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut ids = ids();
        run(&mut s, &start("SO-1"), &mut ids);
        let full = Conditions {
            disk_full: true,
            unavailable: &[],
        };
        let decision = s.handle(&start("SO-2"), full, at(1), &mut ids);
        assert!(matches!(decision.outcome, Err((ErrorCode::DiskFull, _))));
        assert!(decision.actions.is_empty());
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-1")));

        let down = [cam("top")];
        let dead = Conditions {
            disk_full: false,
            unavailable: &down,
        };
        let decision = s.handle(&start("SO-2"), dead, at(1), &mut ids);
        assert!(matches!(
            decision.outcome,
            Err((ErrorCode::CameraUnavailable, ref m)) if m.contains("top")
        ));
        assert_eq!(s.recording().map(|r| &r.order), Some(&order("SO-1")));
    }

    #[test]
    fn a_camera_the_station_does_not_have_is_unavailable() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut capture = Capture::of(order("SO-1"));
        capture.cameras = Some(Cameras::try_from(vec![cam("ceiling")]).unwrap());
        let decision = run(&mut s, &command(Op::Start(capture)), &mut ids());
        assert!(matches!(
            decision.outcome,
            Err((ErrorCode::CameraUnavailable, ref m)) if m.contains("ceiling")
        ));
    }

    #[test]
    fn max_secs_closes_the_recording_as_truncated() {
        let mut s = station(OnNewStart::StopPrevious);
        let mut capture = Capture::of(order("SO-1"));
        capture.max_secs = NonZeroU32::new(30);
        s.handle(
            &command(Op::Start(capture)),
            Conditions::default(),
            at(0),
            ids(),
        );
        assert_eq!(s.tick(&at(29)), None);
        assert!(matches!(
            s.tick(&at(30)),
            Some(Action::Stop {
                truncated: true,
                ..
            })
        ));
        assert!(s.recording().is_none());
        assert_eq!(s.tick(&at(31)), None);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Start(u8),
        Stop(u8),
        Abort(u8),
        Snapshot(u8),
        Ping,
        Tick(u16),
        DiskFull(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3).prop_map(Step::Start),
            (0u8..3).prop_map(Step::Stop),
            (0u8..3).prop_map(Step::Abort),
            (0u8..3).prop_map(Step::Snapshot),
            Just(Step::Ping),
            (0u16..400).prop_map(Step::Tick),
            any::<bool>().prop_map(Step::DiskFull),
        ]
    }

    proptest! {
        /// Against any sequence of commands: a clip is started at most once and ended at most
        /// once, every refusal changes nothing, and the station records at most one order.
        #[test]
        fn any_command_sequence_keeps_the_station_consistent(
            steps in proptest::collection::vec(step(), 1..60),
            reject in any::<bool>(),
        ) {
            let policy = if reject { OnNewStart::Reject } else { OnNewStart::StopPrevious };
            let mut s = station(policy);
            s.policy.default_max_secs = NonZeroU32::new(120).unwrap();
            let mut ids = ids();
            let mut clock = 0i64;
            let mut disk_full = false;
            let mut started = std::collections::HashSet::new();
            let mut ended = std::collections::HashSet::new();
            let orders = ["SO-A", "SO-B", "SO-C"];
            for step in steps {
                let before = s.recording().cloned();
                let cmd = match step {
                    Step::Start(o) => start(orders[o as usize]),
                    Step::Stop(o) => command(Op::Stop { order: order(orders[o as usize]) }),
                    Step::Abort(o) => command(Op::Abort { order: order(orders[o as usize]), reason: None }),
                    Step::Snapshot(o) => command(Op::Snapshot(Capture::of(order(orders[o as usize])))),
                    Step::Ping => command(Op::Ping),
                    Step::DiskFull(full) => { disk_full = full; continue; }
                    Step::Tick(secs) => {
                        clock += i64::from(secs);
                        if let Some(Action::Stop { recording, truncated }) = s.tick(&at(clock)) {
                            prop_assert!(truncated);
                            for take in recording.takes {
                                prop_assert!(ended.insert(take.clip_id));
                            }
                        }
                        continue;
                    }
                };
                let conditions = Conditions { disk_full, unavailable: &[] };
                let decision = s.handle(&cmd, conditions, at(clock), &mut ids);
                if decision.outcome.is_err() {
                    prop_assert!(decision.actions.is_empty());
                    prop_assert_eq!(s.recording(), before.as_ref());
                }
                for action in decision.actions {
                    match action {
                        Action::Start(recording) => for take in recording.takes {
                            prop_assert!(started.insert(take.clip_id));
                        },
                        Action::Stop { recording, .. } | Action::Abort { recording, .. } => {
                            for take in recording.takes {
                                prop_assert!(started.contains(&take.clip_id));
                                prop_assert!(ended.insert(take.clip_id));
                            }
                        }
                        Action::Snapshot { .. } => {}
                    }
                }
                // Exactly the clips started and not yet ended are the ones recording.
                let open: std::collections::HashSet<_> = started.difference(&ended).cloned().collect();
                let recording: std::collections::HashSet<_> = s
                    .recording()
                    .map(|r| r.clip_ids().into_iter().collect())
                    .unwrap_or_default();
                prop_assert_eq!(open, recording);
            }
        }
    }
}
