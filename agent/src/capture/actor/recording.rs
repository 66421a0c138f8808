//! The recording in the actor: start (a writer fed with the pre-roll from the ring), frames
//! offered until the stop's post-roll is over, EOS into the writer, then the seal on a thread
//! of its own (hashing a long clip takes seconds; the camera must keep taking frames).
//!
//! A recording ends one of three ways:
//!
//! - a stop: post-roll, EOS, seal, the sealed clip to the stop's reply;
//! - a cut (the camera or the writer failed): EOS at once, the clip sealed as truncated and
//!   kept in [`CutClip`] for the next stop, which gets it instead of `not_recording`;
//! - a shutdown: EOS, the complete `*.part` left on disk for the seal at start-up (unless a
//!   stop is waiting for it);
//!
//! or is aborted: writer closed, file removed. The stop's and the EOS's deadlines are kept
//! by [`super::Deadlines`]; the frame that ends the post-roll is found by
//! [`Recording::offer`].

use std::thread;
use std::time::{Duration, Instant};

use gstreamer as gst;
use time::OffsetDateTime;

use super::{Actor, Msg, Reply};
use crate::capture::error::CaptureError;
use crate::capture::pipeline::overlay_label;
use crate::capture::recorder::{Recording, RecordingRequest, RecordingStarted, Stopping};
use crate::capture::seal::{self, SealedClip, part_path};
use crate::capture::writer::ClipWriter;

/// A recording cut without a stop (camera failure, writer failure) on its way to the next stop.
#[derive(Debug)]
pub(super) enum CutClip {
    None,
    /// Being sealed; a stop that arrives meanwhile waits here.
    Sealing {
        waiting: Option<Reply<SealedClip>>,
    },
    Ready(Result<SealedClip, CaptureError>),
}

impl Actor {
    /// A cut clip's seal finished: to the stop waiting for it, or kept for the next one.
    pub(super) fn on_cut(&mut self, result: Result<SealedClip, CaptureError>) {
        match std::mem::replace(&mut self.cut_clip, CutClip::None) {
            CutClip::Sealing {
                waiting: Some(reply),
            } => {
                let _ = reply.send(result);
            }
            _ => self.cut_clip = CutClip::Ready(result),
        }
    }

    /// Offers a frame (already in the ring) to the recording in progress.
    pub(super) fn record_frame(&mut self, buffer: &gst::Buffer) {
        let Some(rec) = &mut self.recording else {
            return;
        };
        if rec.cut || rec.stopping.as_ref().is_some_and(|s| s.eos_sent) {
            return;
        }
        match rec.offer(buffer) {
            Ok(false) => {}
            Ok(true) => self.end_clip(),
            Err(e) => {
                tracing::error!(error = %e, "recording failed");
                rec.cut = true;
                self.end_clip();
            }
        }
    }

    pub(super) fn start_recording(
        &mut self,
        request: RecordingRequest,
        asked: Instant,
    ) -> Result<RecordingStarted, CaptureError> {
        request.validate(&self.spec.name)?;
        if let Some(rec) = &self.recording {
            return Err(CaptureError::AlreadyRecording {
                camera: self.spec.name.clone(),
                path: rec.part(),
            });
        }
        let now = self.running_pipeline()?.running_time_at(asked);
        let unavailable = || CaptureError::Unavailable {
            camera: self.spec.name.clone(),
            cause: None,
        };
        let caps = self.caps.clone().ok_or_else(unavailable)?;
        let now = now.ok_or_else(unavailable)?;
        if let CutClip::Ready(old) = std::mem::replace(&mut self.cut_clip, CutClip::None) {
            tracing::warn!(clip = ?old, "a cut clip was never collected by a stop");
        }

        let id = self.next_recording_id;
        self.next_recording_id += 1;
        let pipeline = self.running_pipeline()?;
        let part = part_path(&request.output());
        let tx = self.tx.clone();
        let on_message = Box::new(move |message: &gst::Message| {
            if matches!(
                message.view(),
                gst::MessageView::Eos(_) | gst::MessageView::Error(_)
            ) {
                let _ = tx.try_send(Msg::Writer {
                    id,
                    message: message.clone(),
                });
            }
        });
        let frame = Duration::from_secs_f64(1.0 / f64::from(self.spec.fps));
        let writer = ClipWriter::create(&part, &caps, frame, Some(on_message))?;
        let label = overlay_label(&request.order, &request.station, &self.spec.name);
        let preroll = request
            .preroll
            .unwrap_or(self.spec.preroll)
            .min(self.spec.preroll);
        let (order, clip_id) = (request.order.clone(), request.clip_id.clone());
        let mut rec = Recording::new(id, request, writer, now, self.epoch);
        if !preroll.is_zero() {
            let target =
                now.saturating_sub(gst::ClockTime::from_nseconds(preroll.as_nanos() as u64));
            if let Some(start) = self.ring.start_index(target) {
                for buffer in self.ring.frames_from(start) {
                    rec.offer(buffer)?;
                }
            }
        }
        if rec.waiting_for_keyframe {
            pipeline.request_keyframe();
        }
        pipeline.set_overlay_text(&label);
        let facts = rec.facts(false);
        tracing::info!(%order, %clip_id, part = %part.display(), preroll_ms = facts.preroll.as_millis() as u64, "recording started");
        self.recording = Some(rec);
        self.status
            .send_modify(|s| s.recording = Some(part.clone()));
        Ok(RecordingStarted {
            part,
            preroll: facts.preroll,
            at: OffsetDateTime::now_utc(),
        })
    }

    pub(super) fn stop_recording(&mut self, asked: Instant, reply: Reply<SealedClip>) {
        let camera = self.spec.name.clone();
        let now = self
            .pipeline
            .as_ref()
            .and_then(|p| p.running_time_at(asked));
        let Some(rec) = &mut self.recording else {
            match std::mem::replace(&mut self.cut_clip, CutClip::None) {
                CutClip::Ready(result) => {
                    let _ = reply.send(result);
                }
                CutClip::Sealing { waiting: None } => {
                    self.cut_clip = CutClip::Sealing {
                        waiting: Some(reply),
                    }
                }
                other => {
                    self.cut_clip = other;
                    let _ = reply.send(Err(CaptureError::NotRecording { camera }));
                }
            }
            return;
        };
        if let Some(stopping) = &mut rec.stopping {
            // Already ending: a cut (camera failure, shutdown) has no one waiting yet; a stop
            // in progress has.
            match stopping.reply {
                None => stopping.reply = Some(reply),
                Some(_) => {
                    let _ = reply.send(Err(CaptureError::NotRecording { camera }));
                }
            }
            return;
        }
        let postroll = rec.request.postroll.unwrap_or(self.spec.postroll);
        let until = now.unwrap_or(gst::ClockTime::ZERO)
            + gst::ClockTime::from_nseconds(postroll.as_nanos() as u64);
        tracing::info!(order = %rec.request.order, postroll_ms = postroll.as_millis() as u64, "recording stopping");
        rec.stopping = Some(Stopping {
            until,
            eos_sent: false,
            reply: Some(reply),
        });
        self.deadlines.stopping(Instant::now(), postroll);
        if rec.cut || now.is_none() || postroll.is_zero() {
            self.end_clip();
        }
    }

    /// At shutdown: a recording not yet stopping ends now, without post-roll.
    pub(super) fn end_recording_for_shutdown(&mut self) {
        if let Some(rec) = &mut self.recording
            && rec.stopping.is_none()
        {
            rec.stopping = Some(Stopping {
                until: gst::ClockTime::ZERO,
                eos_sent: false,
                reply: None,
            });
            self.end_clip();
        }
    }

    /// Sends EOS to the recording's writer; sealing follows its EOS message.
    pub(super) fn end_clip(&mut self) {
        let Some(rec) = &mut self.recording else {
            return;
        };
        let stopping = rec.stopping.get_or_insert_with(|| Stopping {
            until: gst::ClockTime::ZERO,
            eos_sent: false,
            reply: None,
        });
        if stopping.eos_sent {
            return;
        }
        stopping.eos_sent = true;
        self.deadlines.eos_sent(Instant::now());
        rec.writer.end();
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
    }

    pub(super) fn on_writer_message(&mut self, id: u64, message: &gst::Message) {
        if self.recording.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        match message.view() {
            gst::MessageView::Eos(_) => self.finalize(true),
            gst::MessageView::Error(err) => {
                tracing::error!(error = %err.error(), "clip writer failed");
                self.finalize(false);
            }
            _ => {}
        }
    }

    /// Closes the writer and seals the clip on a separate thread (hashing a long clip takes
    /// seconds; the camera must keep taking frames). `clean`: mp4mux finished the file.
    pub(super) fn finalize(&mut self, clean: bool) {
        let Some(rec) = self.recording.take() else {
            return;
        };
        self.deadlines.recording_over();
        rec.writer.close();
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
        self.status.send_modify(|s| s.recording = None);
        let part = rec.part();
        if self.shutdown.is_some() && rec.stopping.as_ref().is_none_or(|s| s.reply.is_none()) {
            tracing::info!(part = %part.display(), "shutdown: clip left as a part file to seal at start-up");
            return;
        }
        let facts = rec.facts(rec.cut || !clean);
        let output = rec.request.output();
        let part_size = rec.request.part_size;
        let reply = rec.stopping.and_then(|s| s.reply);
        let tx = self.tx.clone();
        let order = rec.request.order.clone();
        let no_frames = rec.writer.frames() == 0;
        drop(rec.writer);
        if reply.is_none() {
            self.cut_clip = CutClip::Sealing { waiting: None };
        }
        let spawned = thread::Builder::new()
            .name(format!("seal-{}", self.spec.name))
            .spawn(move || {
                let result = if no_frames {
                    let _ = std::fs::remove_file(&part);
                    Err(CaptureError::Unplayable {
                        path: part.clone(),
                        reason: "no frame was recorded".into(),
                    })
                } else if clean {
                    seal::finish(&part, &output, facts, part_size)
                } else {
                    seal::seal_part_file(&part, part_size).map(|sealed| SealedClip {
                        preroll: facts.preroll,
                        started_at: facts.started_at,
                        ..sealed
                    })
                };
                match &result {
                    Ok(clip) => tracing::info!(
                        %order,
                        path = %clip.path.display(),
                        size = clip.size,
                        duration_ms = clip.duration.as_millis() as u64,
                        truncated = clip.truncated,
                        "clip sealed"
                    ),
                    Err(e) => tracing::error!(%order, error = %e, "sealing the clip failed"),
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        let _ = tx.try_send(Msg::Cut(result));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn the sealing thread");
        }
    }

    pub(super) fn abort_recording(&mut self) -> Result<(), CaptureError> {
        let Some(rec) = self.recording.take() else {
            if let CutClip::Ready(Ok(cut)) = std::mem::replace(&mut self.cut_clip, CutClip::None) {
                let _ = std::fs::remove_file(&cut.path);
                return Ok(());
            }
            return Err(CaptureError::NotRecording {
                camera: self.spec.name.clone(),
            });
        };
        self.deadlines.recording_over();
        rec.writer.close();
        let part = rec.part();
        std::fs::remove_file(&part).map_err(|e| CaptureError::io("removing", &part, e))?;
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_overlay_text(&self.idle_label());
        }
        self.status.send_modify(|s| s.recording = None);
        if let Some(Stopping {
            reply: Some(reply), ..
        }) = rec.stopping
        {
            let _ = reply.send(Err(CaptureError::NotRecording {
                camera: self.spec.name.clone(),
            }));
        }
        tracing::info!(order = %rec.request.order, "recording aborted: file removed");
        Ok(())
    }
}
