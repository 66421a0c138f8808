//! Commands from the line: record, decide, commit, acknowledge, then act.

use std::time::{Duration, Instant};

use capture_protocol::{
    ClipId, Command, CommandError, Event, EventKind, Op, Rejection, Reply, Timestamp,
    parse_command, topic,
};
use rumqttc::Publish;

use super::{Daemon, clip_path};
use crate::capture::{CaptureError, RecordingRequest, SealedClip, seal};
use crate::spool::{
    self, ClipState, Decided, NewClip, OutboxMessage, Received, Sealed, clips, inbox,
};
use crate::station::{Action, Conditions, Recording, Take};
use crate::telemetry::{CommandOutcome, Metrics};

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

    /// Carries out the actions of a decision, in order, committing each result.
    pub(super) async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(recording) => self.start_recording(&recording).await,
                Action::Stop {
                    recording,
                    truncated,
                } => self.stop_recording(&recording, truncated).await,
                Action::Abort { recording, reason } => {
                    self.abort_recording(&recording, reason.as_deref()).await;
                }
                Action::Snapshot { order, takes, .. } => {
                    self.take_photos(order.as_str(), &takes).await;
                }
            }
        }
    }

    async fn start_recording(&mut self, recording: &Recording) {
        Metrics::add(&self.metrics.recordings, 1);
        Metrics::flag(&self.metrics.recording, true);
        // A camera still ending the previous clip (a start right after a stop) takes the new
        // one once its post-roll and EOS are over; that clip's seal goes on meanwhile.
        for take in &recording.takes {
            if let Some(camera) = self.camera(&take.camera)
                && !camera.wait_until_not_recording(PREVIOUS_CLIP_END).await
            {
                tracing::warn!(camera = %take.camera, waited = ?PREVIOUS_CLIP_END, "the camera is still ending its previous clip");
            }
        }
        let starts = recording.takes.iter().map(|take| {
            let request = RecordingRequest {
                clip_id: take.clip_id.as_str().to_owned(),
                order: recording.order.as_str().to_owned(),
                station: self.identity.station.as_str().to_owned(),
                dir: self.clip_dir.clone(),
                preroll: None,
                postroll: None,
                part_size: self.uploader_settings.part_size,
            };
            let camera = self.camera(&take.camera).cloned();
            async move {
                let result = match camera {
                    Some(camera) => camera.start_recording(request).await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                (take, result)
            }
        });
        for (take, result) in futures::future::join_all(starts).await {
            match result {
                Ok(started) => {
                    let first_frame = started.at - started.preroll;
                    let started_at = Timestamp::try_from(first_frame)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    let preroll_ms = i64::try_from(started.preroll.as_millis()).unwrap_or(0);
                    let clip_id = take.clip_id.as_str().to_owned();
                    tracing::info!(
                        order = %recording.order,
                        clip_id = %take.clip_id,
                        camera = %take.camera,
                        preroll_ms,
                        "recording started"
                    );
                    if !started_at.is_empty()
                        && let Err(e) = self
                            .spool
                            .call(move |c| clips::set_start(c, &clip_id, &started_at, preroll_ms))
                            .await
                    {
                        tracing::warn!(error = %e, clip_id = %take.clip_id, "recording the clip's start time");
                    }
                }
                Err(e) => {
                    let reason = format!("camera {} could not start recording: {e}", take.camera);
                    tracing::error!(order = %recording.order, clip_id = %take.clip_id, camera = %take.camera, error = %e, "recording did not start");
                    self.fail_clip(take, &recording.order, reason).await;
                }
            }
        }
    }

    /// Hands the stop to each camera and leaves the rest (post-roll, EOS, hashing, a remux)
    /// to a task of [`Daemon::sealing`]: the loop goes on serving commands and the watchdog
    /// while a long clip seals; [`Daemon::on_sealed`] commits each result.
    async fn stop_recording(&mut self, recording: &Recording, truncated: bool) {
        Metrics::flag(&self.metrics.recording, false);
        for take in &recording.takes {
            // The stop reaches the camera now, before anything this loop asks it later.
            let stop = self.camera(&take.camera).map(|c| c.stop_recording());
            let part = seal::part_path(&clip_path(&self.clip_dir, take.clip_id.as_str(), false));
            let part_size = self.uploader_settings.part_size;
            let (take, order) = (take.clone(), recording.order.clone());
            self.sealing.spawn(async move {
                let stopped = match stop {
                    Some(stop) => stop.await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                let result = match stopped {
                    Ok(sealed) => Ok(sealed),
                    Err(e) => {
                        // The camera could not finish the file (it failed, or it was never
                        // started): seal whatever part file it left, as after a crash.
                        tracing::warn!(clip_id = %take.clip_id, camera = %take.camera, error = %e, "stopping the recording failed; sealing what is on disk");
                        tokio::task::spawn_blocking(move || seal::seal_part_file(&part, part_size))
                            .await
                            .unwrap_or_else(|e| Err(CaptureError::Gst(e.to_string())))
                    }
                };
                SealOutcome {
                    take,
                    order,
                    truncated,
                    result,
                }
            });
        }
    }

    /// Commits a clip that finished sealing (or failed to), and wakes the uploader.
    pub(super) async fn on_sealed(&mut self, outcome: SealOutcome) {
        let SealOutcome {
            take,
            order,
            truncated,
            result,
        } = outcome;
        match result {
            Ok(sealed) => {
                self.commit_sealed(&take, &order, &sealed, truncated).await;
            }
            Err(e) => {
                let reason = format!("the recording could not be sealed: {e}");
                tracing::error!(order = %order, clip_id = %take.clip_id, error = %e, "clip lost");
                self.fail_clip(&take, &order, reason).await;
            }
        }
        self.wake_uploader.notify_one();
        // The queue changed: the sealed clip now waits for the cloud.
        self.publish_status().await;
    }

    /// Waits for every seal in progress and commits it (at shutdown).
    pub(super) async fn finish_sealing(&mut self) {
        while let Some(joined) = self.sealing.join_next().await {
            match joined {
                Ok(outcome) => self.on_sealed(outcome).await,
                Err(e) => {
                    tracing::error!(error = %e, "a seal task ended abnormally; start-up reconciliation will seal its clip")
                }
            }
        }
    }

    /// Records a sealed clip (ready for upload) and its `recording_stopped` event.
    pub(super) async fn commit_sealed(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        clip: &SealedClip,
        truncated: bool,
    ) {
        let truncated = truncated || clip.truncated;
        let duration_ms = i64::try_from(clip.duration.as_millis()).unwrap_or(i64::MAX);
        let ended_at = clip
            .started_at
            .and_then(|start| Timestamp::try_from(start + clip.duration).ok())
            .unwrap_or_else(Timestamp::now);
        let row = Sealed {
            path: clip.path.display().to_string(),
            size: i64::try_from(clip.size).unwrap_or(i64::MAX),
            sha256: clip.sha256.clone(),
            parts: clip.parts.clone(),
            duration_ms,
            ended_at: ended_at.to_string(),
            truncated,
        };
        let event = self.event_message(EventKind::RecordingStopped { truncated }, take, order);
        let clip_id = take.clip_id.as_str().to_owned();
        let result = self
            .spool
            .call(move |c| spool::announce(c, [&event], |tx| clips::seal(tx, &clip_id, &row)))
            .await;
        match result {
            Ok(()) => tracing::info!(
                order = %order,
                clip_id = %take.clip_id,
                camera = %take.camera,
                size = clip.size,
                duration_ms,
                truncated,
                "clip sealed and queued for upload"
            ),
            Err(e) => {
                tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a sealed clip; start-up reconciliation will")
            }
        }
        self.link.flush();
    }

    async fn abort_recording(&mut self, recording: &Recording, reason: Option<&str>) {
        Metrics::flag(&self.metrics.recording, false);
        for take in &recording.takes {
            if let Some(camera) = self.camera(&take.camera)
                && let Err(e) = camera.abort_recording().await
            {
                tracing::warn!(clip_id = %take.clip_id, error = %e, "aborting the recording");
            }
            let path = clip_path(&self.clip_dir, take.clip_id.as_str(), false);
            for file in [seal::part_path(&path), path] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "removing an aborted clip")
                    }
                }
            }
            tracing::info!(order = %recording.order, clip_id = %take.clip_id, reason = reason.unwrap_or(""), "recording aborted; the clip is discarded");
        }
    }

    async fn take_photos(&mut self, order: &str, takes: &[Take]) {
        let Ok(order_id) = order.parse::<capture_protocol::OrderId>() else {
            return;
        };
        let shots = takes.iter().map(|take| {
            let camera = self.camera(&take.camera).cloned();
            let path = clip_path(&self.clip_dir, take.clip_id.as_str(), true);
            let part_size = self.uploader_settings.part_size;
            async move {
                let result = match camera {
                    Some(camera) => camera.snapshot().await,
                    None => Err(CaptureError::Closed {
                        camera: take.camera.as_str().to_owned(),
                    }),
                };
                let written = match result {
                    Ok(snapshot) => tokio::task::spawn_blocking(move || {
                        snapshot.write_to(&path)?;
                        let digests = seal::digest_file(&path, part_size)?;
                        Ok(SealedClip {
                            path,
                            size: digests.size,
                            sha256: digests.sha256,
                            parts: digests.parts,
                            duration: Duration::ZERO,
                            frames: 1,
                            preroll: Duration::ZERO,
                            truncated: false,
                            started_at: Some(snapshot.captured_at),
                        })
                    })
                    .await
                    .unwrap_or_else(|e| Err(CaptureError::Gst(e.to_string()))),
                    Err(e) => Err(e),
                };
                (take, written)
            }
        });
        for (take, written) in futures::future::join_all(shots).await {
            match written {
                Ok(photo) => {
                    if let Some(at) = photo.started_at.and_then(|t| Timestamp::try_from(t).ok()) {
                        let clip_id = take.clip_id.as_str().to_owned();
                        let at = at.to_string();
                        let _ = self
                            .spool
                            .call(move |c| clips::set_start(c, &clip_id, &at, 0))
                            .await;
                    }
                    self.commit_photo(take, &order_id, &photo).await;
                }
                Err(e) => {
                    let reason = format!("camera {} could not take the photo: {e}", take.camera);
                    tracing::error!(order, clip_id = %take.clip_id, error = %e, "snapshot failed");
                    self.fail_clip(take, &order_id, reason).await;
                }
            }
        }
        self.wake_uploader.notify_one();
    }

    async fn commit_photo(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        photo: &SealedClip,
    ) {
        let row = Sealed {
            path: photo.path.display().to_string(),
            size: i64::try_from(photo.size).unwrap_or(i64::MAX),
            sha256: photo.sha256.clone(),
            parts: photo.parts.clone(),
            duration_ms: 0,
            ended_at: photo
                .started_at
                .and_then(|t| Timestamp::try_from(t).ok())
                .unwrap_or_else(Timestamp::now)
                .to_string(),
            truncated: false,
        };
        let clip_id = take.clip_id.as_str().to_owned();
        match self
            .spool
            .call(move |c| clips::seal(c, &clip_id, &row))
            .await
        {
            Ok(()) => {
                tracing::info!(order = %order, clip_id = %take.clip_id, camera = %take.camera, size = photo.size, "photo taken and queued for upload")
            }
            Err(e) => {
                tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a photo; start-up reconciliation will")
            }
        }
    }

    /// Marks a clip failed for good and announces it with a `clip_failed` event.
    pub(super) async fn fail_clip(
        &self,
        take: &Take,
        order: &capture_protocol::OrderId,
        reason: String,
    ) {
        let event = self.event_message(
            EventKind::ClipFailed {
                reason: reason.clone(),
            },
            take,
            order,
        );
        let clip_id = take.clip_id.as_str().to_owned();
        let result = self
            .spool
            .call(move |c| spool::announce(c, [&event], |tx| clips::fail(tx, &clip_id, &reason)))
            .await;
        if let Err(e) = result {
            tracing::error!(clip_id = %take.clip_id, error = %e, "cannot record a failed clip");
        }
        self.link.flush();
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

/// The longest a start waits for a camera to end its previous clip: the longest post-roll
/// (60 s), the camera's grace for the last frames and its default EOS timeout.
const PREVIOUS_CLIP_END: Duration = Duration::from_secs(70);

/// A clip's seal, done off the daemon loop, for [`Daemon::on_sealed`].
#[derive(Debug)]
pub(super) struct SealOutcome {
    take: Take,
    order: capture_protocol::OrderId,
    truncated: bool,
    result: Result<SealedClip, CaptureError>,
}

/// A new clip id: a ULID, time-sortable.
pub(super) fn new_clip_id() -> ClipId {
    ClipId::from_u128(ulid::Ulid::new().0)
}
