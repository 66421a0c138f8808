//! Scans from the packer's barcode scanner: record, decide, commit, then act, like a command.
//!
//! A scan goes the way of a command from the line (`commands.rs`), with `scan-<ULID>` as its
//! command id:
//!
//! 1. classified ([`crate::scanner::Rules::classify`]); an empty line is nothing;
//! 2. recorded in the spool's inbox (the raw line and when it was read), so a scan read
//!    before a crash is decided at the next start ([`Daemon::decide_recorded_scan`]);
//! 3. decided by the station ([`crate::scanner::decide::decide`]); the decision (its
//!    [`ScanEvent`] in place of a reply, the clip rows, the clip events, and for an item scan
//!    the item on each clip recording, which its uploaded notification carries) is committed
//!    in one transaction;
//! 4. carried out through the cameras, and the outbox is flushed: the events reach the line
//!    now, or, while the broker is unreachable, in the order they were committed once the
//!    link is back.

use std::time::Duration;

use capture_protocol::{CommandId, Op, Reply, ScanEvent, ScanEventKind, Timestamp, topic};
use serde::{Deserialize, Serialize};

use super::Daemon;
use crate::scanner::{Rules, ScanEffect, Scanned, decide, idle_stop, shown};
use crate::spool::{self, ClipItem, Decided, OutboxMessage, inbox};
use crate::station::{Action, Conditions};

/// The prefix of the command ids the station gives its scans. A line command may use it too:
/// after a crash, an unanswered inbox row is decided as a scan only when its payload is a
/// [`ScanRecord`] (which no command of the line is: those carry `v`, `id` and `op`).
pub const SCAN_ID_PREFIX: &str = "scan-";

/// The scanner's part of the daemon's state.
#[derive(Debug)]
pub(super) struct ScannerState {
    pub rules: Rules,
    pub idle_stop: Duration,
    /// When the last scan of any kind was read (for `idle_stop`).
    pub last_scan: Option<Timestamp>,
    /// The programs telling the packer a scan did something, or was refused.
    pub feedback_ok: Vec<String>,
    pub feedback_error: Vec<String>,
}

/// A scan as the inbox keeps it (its payload). Unknown fields are refused, so that a line
/// command recorded under an id with [`SCAN_ID_PREFIX`] is never read as a scan.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRecord {
    /// The line as the scanner sent it.
    scan: String,
    at: Timestamp,
    /// Not a scan: the idle auto-stop.
    #[serde(default)]
    idle: bool,
}

impl Daemon {
    /// One line from the scanner.
    pub(super) async fn on_scan(&mut self, line: String) {
        let Some(scanner) = &mut self.scanner else {
            return;
        };
        let Some(scanned) = scanner.rules.classify(&line) else {
            return;
        };
        let at = Timestamp::now();
        scanner.last_scan = Some(at);
        let record = ScanRecord {
            scan: line,
            at,
            idle: false,
        };
        self.record_and_decide(record, scanned).await;
    }

    /// The idle auto-stop, once a second: a recording with no scan for `idle_stop` stops.
    pub(super) async fn check_idle(&mut self) {
        let Some(scanner) = &self.scanner else {
            return;
        };
        let now = Timestamp::now();
        if idle_stop(
            &self.station,
            scanner.last_scan.as_ref(),
            scanner.idle_stop,
            &now,
        )
        .is_none()
        {
            return;
        }
        tracing::info!(idle = ?scanner.idle_stop, "no scan for idle_stop: stopping the recording");
        let record = ScanRecord {
            scan: String::new(),
            at: now,
            idle: true,
        };
        self.record_and_decide(record, Scanned::Stop).await;
    }

    async fn record_and_decide(&mut self, record: ScanRecord, scanned: Scanned) {
        let id = format!("{SCAN_ID_PREFIX}{}", ulid::Ulid::new());
        let Ok(command_id) = id.parse::<CommandId>() else {
            return;
        };
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        let recorded = self
            .spool
            .call(move |c| inbox::record(c, &id, &payload))
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, scan = %shown(&record.scan), "cannot record a scan in the spool; it is lost, scan again");
            return;
        }
        super::systemd::failpoint("scan-recorded");
        self.decide_scan(command_id, &record, scanned).await;
    }

    /// Decides a scan the inbox holds unanswered (read before a crash). False when the row is
    /// not a scan (a line command whose id happens to start with [`SCAN_ID_PREFIX`]).
    pub(super) async fn decide_recorded_scan(&mut self, id: &str, payload: &[u8]) -> bool {
        let Ok(record) = serde_json::from_slice::<ScanRecord>(payload) else {
            return false;
        };
        let Ok(command_id) = id.parse::<CommandId>() else {
            tracing::warn!(scan = %id, "an unanswered scan in the inbox has an id that no longer parses");
            return true;
        };
        let scanned = match (&self.scanner, record.idle) {
            (_, true) => Some(Scanned::Stop),
            (Some(scanner), false) => scanner.rules.classify(&record.scan),
            (None, false) => None,
        };
        let Some(scanned) = scanned else {
            tracing::warn!(scan = %id, "an unanswered scan in the inbox, but no [scanner] to decide it");
            return true;
        };
        tracing::info!(scan = %id, "deciding a scan read before a restart");
        self.decide_scan(command_id, &record, scanned).await;
        true
    }

    async fn decide_scan(&mut self, id: CommandId, record: &ScanRecord, scanned: Scanned) {
        if matches!(scanned, Scanned::Order(_)) {
            self.check_disk().await;
        }
        let unavailable = self.unavailable_cameras();
        let before = self.station.clone();
        let effect = decide::decide(
            &mut self.station,
            &scanned,
            id.clone(),
            Conditions {
                disk_full: self.disk_full,
                unavailable: &unavailable,
            },
            record.at,
            super::commands::new_clip_id,
        );
        let code = record.scan.trim_end_matches(['\r', '\n']);
        let mut event = ScanEvent {
            v: capture_protocol::ProtocolV1,
            kind: ScanEventKind::ItemScanned,
            scan_id: id.clone(),
            code: code.to_owned(),
            order: None,
            clips: Vec::new(),
            at: record.at,
        };
        let (mut decided, actions) = match effect {
            ScanEffect::Command { command, decision } => {
                event.order = command.order().cloned();
                let reply = match &decision.outcome {
                    Ok(clips) => {
                        event.clips.clone_from(clips);
                        event.kind = match &command.op {
                            Op::Start(_) => ScanEventKind::ScanStarted {
                                rescan: decision.actions.is_empty(),
                            },
                            Op::Abort { .. } => ScanEventKind::ScanAborted,
                            _ => ScanEventKind::ScanStopped { idle: record.idle },
                        };
                        Reply::ok(&command, clips.clone(), record.at)
                    }
                    Err((error, message)) => {
                        event.kind = refused(error.as_str(), message.clone());
                        event.code = shown(code);
                        Reply::error(&command, *error, message.clone(), record.at)
                    }
                };
                let decided = self.decided(&command, &reply, &decision.actions, record.at);
                (decided, decision.actions)
            }
            ScanEffect::Item { order, clips, .. } => {
                // Kept with every clip of the recording, in this decision's transaction.
                let mut decided = self.scan_decided(&id);
                decided.items = clips
                    .iter()
                    .map(|clip_id| ClipItem {
                        clip_id: clip_id.to_string(),
                        code: code.to_owned(),
                        at: record.at.to_string(),
                    })
                    .collect();
                event.order = Some(order);
                event.clips = clips;
                (decided, Vec::new())
            }
            ScanEffect::Refused { reason, message } => {
                event.kind = refused(reason, message);
                event.code = shown(code);
                (self.scan_decided(&id), Vec::new())
            }
        };
        // The scan's event takes the place of a reply: the line did not ask.
        let event_json = serde_json::to_string(&event).unwrap_or_default();
        decided.reply.clone_from(&event_json);
        let message = OutboxMessage::new(
            topic::event(&self.identity.env, &self.identity.station),
            event_json.into_bytes(),
            false,
        );
        match decided.messages.first_mut() {
            Some(first) => *first = message,
            None => decided.messages.push(message),
        }
        let result = self
            .spool
            .call(move |c| spool::commit_decision(c, &decided))
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, scan = %id, "cannot commit a scan's decision; it is decided again at the next start");
            self.station = before;
            return;
        }
        self.link.flush();
        log(&event);
        if let Some(scanner) = &self.scanner {
            let refused = matches!(event.kind, ScanEventKind::ScanRefused { .. });
            feedback(if refused {
                &scanner.feedback_error
            } else {
                &scanner.feedback_ok
            });
        }
        let changes_recording = actions.iter().any(|a| {
            matches!(
                a,
                Action::Start(_) | Action::Stop { .. } | Action::Abort { .. }
            )
        });
        self.execute(actions).await;
        if changes_recording {
            self.publish_status().await;
        }
    }

    /// The decision of a scan that stands for no command: only its event.
    fn scan_decided(&self, id: &CommandId) -> Decided {
        Decided {
            command_id: id.as_str().to_owned(),
            ..Decided::default()
        }
    }
}

fn refused(reason: &str, message: String) -> ScanEventKind {
    ScanEventKind::ScanRefused {
        reason: reason.to_owned(),
        message,
    }
}

fn log(event: &ScanEvent) {
    let order = event.order.as_ref().map(|o| o.as_str());
    match &event.kind {
        ScanEventKind::ScanRefused { reason, message } => tracing::warn!(
            scan = %event.scan_id,
            code = %event.code,
            order,
            reason = %reason,
            message = %message,
            "scan refused"
        ),
        kind => tracing::info!(
            scan = %event.scan_id,
            code = %event.code,
            order,
            clips = event.clips.len(),
            kind = ?kind,
            "scan decided"
        ),
    }
}

/// Runs a feedback program without waiting for it (a thread reaps it).
fn feedback(argv: &[String]) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let spawned = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => {
            tracing::warn!(program = %program, error = %e, "running the scanner's feedback program")
        }
    }
}
