//! Commands from the line: record, decide, commit, acknowledge, then act.

use std::time::Instant;

use capture_protocol::{
    ClipId, Command, CommandError, Event, EventKind, Op, Rejection, Reply, Timestamp,
    parse_command, topic,
};
use rumqttc::Publish;

use super::{Daemon, clip_path};
use crate::spool::{self, ClipState, Decided, NewClip, OutboxMessage, Received, inbox};
use crate::station::{Action, Conditions, Take};
use crate::telemetry::CommandOutcome;

impl Daemon {
    /// One command delivery: exactly one reply, at most one effect.
    ///
    /// `unread_payload`: the command was over the link's packet limit and was dropped unread
    /// (this publish carries none of it); it is refused by size, like any command over
    /// 64 KiB, with `"id": null`.
    pub(super) async fn on_command(&mut self, publish: Publish, unread_payload: Option<usize>) {
        let received_at = Instant::now();
        let parsed = match unread_payload {
            Some(size) => Err(Rejection {
                id: None,
                op: None,
                order: None,
                error: CommandError::TooLarge { size },
            }),
            None => parse_command(&publish.payload, &self.identity.env),
        };
        let command = match parsed {
            Ok(command) => command,
            Err(rejection) => {
                tracing::warn!(
                    code = rejection.code().as_str(),
                    error = %rejection.error,
                    "command refused"
                );
                let reply = rejection.to_reply(Timestamp::now());
                self.queue_and_ack(vec![self.reply_message(&reply)], &publish)
                    .await;
                self.metrics
                    .command_answered(CommandOutcome::Error, received_at.elapsed());
                return;
            }
        };
        let id = command.id.as_str().to_owned();
        let payload = publish.payload.to_vec();
        let received = match self
            .spool
            .call(move |c| inbox::record(c, &id, &payload))
            .await
        {
            Ok(received) => received,
            Err(e) => {
                // Not acknowledged: the broker delivers it again once the spool works.
                tracing::error!(error = %e, command = %command.id, "cannot record a command in the spool; it will be redelivered");
                return;
            }
        };
        super::systemd::failpoint("command-recorded");
        match received {
            Received::Answered(reply) => {
                tracing::info!(command = %command.id, "redelivered command: same reply, no effect");
                let message = OutboxMessage::new(self.reply_topic(), reply.into_bytes(), false);
                self.queue_and_ack(vec![message], &publish).await;
                self.metrics
                    .command_answered(CommandOutcome::Redelivered, received_at.elapsed());
            }
            Received::New | Received::Unanswered => {
                let outcome = self.decide(&command, Some(&publish)).await;
                if let Some(outcome) = outcome {
                    self.metrics
                        .command_answered(outcome, received_at.elapsed());
                }
            }
        }
    }

    /// Decides the commands a crash left recorded but unanswered, oldest first.
    pub(super) async fn decide_unanswered(&mut self) -> anyhow::Result<()> {
        let unanswered = self.spool.call(|c| inbox::unanswered(c)).await?;
        for (id, payload) in unanswered {
            if id.starts_with(super::scans::SCAN_ID_PREFIX)
                && self.decide_recorded_scan(&id, &payload).await
            {
                continue;
            }
            match parse_command(&payload, &self.identity.env) {
                Ok(command) => {
                    tracing::info!(command = %id, "deciding a command received before a restart");
                    self.decide(&command, None).await;
                }
                Err(rejection) => {
                    tracing::warn!(command = %id, error = %rejection.error, "an unanswered command in the inbox no longer parses");
                }
            }
        }
        Ok(())
    }

    /// Decides `command`, commits the decision, acknowledges the delivery, then acts.
    /// Returns how it was answered, or `None` when the decision could not be committed (the
    /// delivery is then not acknowledged and comes again).
    async fn decide(
        &mut self,
        command: &Command,
        publish: Option<&Publish>,
    ) -> Option<CommandOutcome> {
        if matches!(command.op, Op::Start(_) | Op::Snapshot(_)) {
            self.check_disk().await;
        }
        let now = Timestamp::now();
        let unavailable = self.unavailable_cameras();
        let before = self.station.clone();
        let decision = self.station.handle(
            command,
            Conditions {
                disk_full: self.disk_full,
                unavailable: &unavailable,
            },
            now,
            new_clip_id,
        );
        let reply = match &decision.outcome {
            Ok(clips) => Reply::ok(command, clips.clone(), now),
            Err((code, message)) => Reply::error(command, *code, message.clone(), now),
        };
        let decided = self.decided(command, &reply, &decision.actions, now);
        let result = self
            .spool
            .call(move |c| spool::commit_decision(c, &decided))
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, command = %command.id, "cannot commit a decision; the command will be redelivered");
            self.station = before;
            return None;
        }
        if let Some(publish) = publish {
            self.ack(publish).await;
        }
        self.link.flush();
        match &reply.outcome {
            Ok(clips) => tracing::info!(
                command = %command.id,
                op = command.op.name().as_str(),
                order = command.order().map(|o| o.as_str()),
                clips = clips.len(),
                "command accepted"
            ),
            Err(error) => tracing::info!(
                command = %command.id,
                op = command.op.name().as_str(),
                order = command.order().map(|o| o.as_str()),
                code = error.code.as_str(),
                message = %error.message,
                "command refused"
            ),
        }
        let changes_recording = decision.actions.iter().any(|a| {
            matches!(
                a,
                Action::Start(_) | Action::Stop { .. } | Action::Abort { .. }
            )
        });
        self.execute(decision.actions).await;
        if changes_recording {
            self.publish_status().await;
        }
        Some(if reply.is_ok() {
            CommandOutcome::Ok
        } else {
            CommandOutcome::Error
        })
    }

    /// The transaction that records a decision: reply, new clip rows, aborted clips, and the
    /// messages announcing them.
    pub(super) fn decided(
        &self,
        command: &Command,
        reply: &Reply,
        actions: &[Action],
        now: Timestamp,
    ) -> Decided {
        let reply_json = serde_json::to_string(reply).unwrap_or_default();
        let mut decided = Decided {
            command_id: command.id.as_str().to_owned(),
            reply: reply_json.clone(),
            messages: vec![OutboxMessage::new(
                self.reply_topic(),
                reply_json.into_bytes(),
                false,
            )],
            ..Decided::default()
        };
        for action in actions {
            match action {
                Action::Start(recording) => {
                    for take in &recording.takes {
                        decided.new_clips.push(self.new_clip(
                            take,
                            recording.order.as_str(),
                            &recording.meta,
                            false,
                            now,
                        ));
                        decided.messages.push(self.event_message(
                            EventKind::RecordingStarted,
                            take,
                            &recording.order,
                        ));
                    }
                }
                Action::Abort { recording, .. } => {
                    for take in &recording.takes {
                        decided
                            .clip_states
                            .push((take.clip_id.as_str().to_owned(), ClipState::Aborted));
                    }
                }
                Action::Snapshot { order, takes, meta } => {
                    for take in takes {
                        decided.new_clips.push(self.new_clip(
                            take,
                            order.as_str(),
                            meta,
                            true,
                            now,
                        ));
                    }
                }
                Action::Stop { .. } => {}
            }
        }
        decided
    }

    fn new_clip(
        &self,
        take: &Take,
        order: &str,
        meta: &Option<capture_protocol::Meta>,
        photo: bool,
        now: Timestamp,
    ) -> NewClip {
        NewClip {
            clip_id: take.clip_id.as_str().to_owned(),
            order: order.to_owned(),
            camera: take.camera.as_str().to_owned(),
            kind: if photo { "photo" } else { "video" }.into(),
            state: ClipState::Recording,
            path: clip_path(&self.clip_dir, take.clip_id.as_str(), photo)
                .display()
                .to_string(),
            started_at: now.to_string(),
            preroll_ms: 0,
            clock_synced: self.clock_synced,
            meta: meta.as_ref().and_then(|m| serde_json::to_string(m).ok()),
        }
    }

    /// Commits messages to the outbox, then acknowledges the delivery and publishes.
    async fn queue_and_ack(&self, messages: Vec<OutboxMessage>, publish: &Publish) {
        let result = self
            .spool
            .call(move |c| spool::announce(c, &messages, |_| Ok(())))
            .await;
        match result {
            Ok(()) => {
                self.ack(publish).await;
                self.link.flush();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot queue a reply; the command will be redelivered")
            }
        }
    }

    fn reply_topic(&self) -> String {
        topic::reply(&self.identity.env, &self.identity.station)
    }

    fn reply_message(&self, reply: &Reply) -> OutboxMessage {
        OutboxMessage::new(
            self.reply_topic(),
            serde_json::to_vec(reply).unwrap_or_default(),
            false,
        )
    }

    pub(super) fn event_message(
        &self,
        kind: EventKind,
        take: &Take,
        order: &capture_protocol::OrderId,
    ) -> OutboxMessage {
        let event = Event::new(
            kind,
            take.clip_id.clone(),
            order.clone(),
            take.camera.clone(),
            Timestamp::now(),
        );
        OutboxMessage::new(
            topic::event(&self.identity.env, &self.identity.station),
            serde_json::to_vec(&event).unwrap_or_default(),
            false,
        )
    }

    /// A confirmation from the ingest: accepted clips become evictable, an integrity
    /// rejection re-queues the clip for upload, any other rejection fails it with an event.
    pub(super) async fn on_confirm(&mut self, publish: Publish) {
        let confirm = match capture_protocol::parse_confirm(&publish.payload) {
            Ok(confirm) => confirm,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable confirmation; dropped");
                self.ack(&publish).await;
                return;
            }
        };
        let settings = self.uploader_settings.clone();
        let applied = confirm.clone();
        let effect = match self
            .spool
            .call(move |c| crate::uploader::apply_confirm(c, &settings, &applied))
            .await
        {
            Ok(effect) => effect,
            Err(e) => {
                // Not acknowledged: the broker delivers it again.
                tracing::error!(clip_id = %confirm.clip_id, error = %e, "cannot record a confirmation; it will be redelivered");
                return;
            }
        };
        self.ack(&publish).await;
        tracing::info!(clip_id = %confirm.clip_id, effect = ?effect, "confirmation applied");
        if effect.queued_messages() {
            self.link.flush();
        }
        if effect.needs_upload() {
            self.wake_uploader.notify_one();
        }
    }
}

/// A new clip id: a ULID, time-sortable.
pub(super) fn new_clip_id() -> ClipId {
    ClipId::from_u128(ulid::Ulid::new().0)
}
