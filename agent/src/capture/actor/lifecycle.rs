//! The camera pipeline's life in the actor: building it (a new generation each time, so late
//! messages of a torn-down one are ignored), its frames coming in (into the pre-roll ring and
//! the recording), its bus errors classified into typed errors naming the device, and its
//! failure: torn down, the recording cut, the restart scheduled with backoff by
//! [`super::Deadlines`].

use std::sync::mpsc::TrySendError;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{Actor, Msg};
use crate::capture::encoder::EncoderKind;
use crate::capture::error::CaptureError;
use crate::capture::pipeline::{CameraPipeline, PipelineCallbacks};
use crate::capture::status::CameraState;

impl Actor {
    pub(super) fn start_pipeline(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.deadlines.pipeline_started(Instant::now());
        self.status.send_modify(|s| s.state = CameraState::Starting);
        if let Some(device) = self.spec.source.missing_device() {
            let error = CaptureError::DeviceNotFound {
                camera: self.spec.name.clone(),
                device: device.display().to_string(),
            };
            self.fail_pipeline(error);
            return;
        }
        let forward = |make: fn(u64, gst::Sample) -> Msg, what: &'static str| {
            let tx = self.tx.clone();
            Box::new(move |sample: gst::Sample| {
                if let Err(TrySendError::Full(_)) = tx.try_send(make(generation, sample)) {
                    tracing::warn!(what, "camera inbox full: dropped a frame");
                }
            }) as Box<dyn Fn(gst::Sample) + Send + Sync>
        };
        let tx = self.tx.clone();
        let callbacks = PipelineCallbacks {
            on_encoded: forward(
                |generation, sample| Msg::Encoded { generation, sample },
                "encoded",
            ),
            on_jpeg: forward(
                |generation, sample| Msg::Jpeg { generation, sample },
                "jpeg",
            ),
            on_message: Box::new(move |message| {
                use gst::MessageView::{Eos, Error, Warning};
                if matches!(message.view(), Error(_) | Eos(_) | Warning(_)) {
                    let _ = tx.try_send(Msg::Bus {
                        generation,
                        message: message.clone(),
                    });
                }
            }),
        };
        let pipeline =
            match CameraPipeline::build(&self.spec, self.kind, &self.idle_label(), callbacks) {
                Ok(p) => p,
                Err(e) => {
                    self.fail_pipeline(e);
                    return;
                }
            };
        let started = pipeline.pipeline.set_state(gst::State::Playing);
        self.pipeline = Some(pipeline);
        if let Err(e) = started {
            self.refine_error_of = Some(generation);
            let error = CaptureError::Pipeline {
                camera: self.spec.name.clone(),
                device: self.spec.source.device(),
                detail: format!("could not start: {e}"),
            };
            self.fail_pipeline(error);
        }
    }

    /// Tears the pipeline down, cuts a recording in progress and schedules a restart.
    pub(super) fn fail_pipeline(&mut self, error: CaptureError) {
        tracing::error!(error = %error, "camera pipeline failed");
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.stop();
        }
        self.ring.clear();
        self.caps = None;
        self.snapshot_branch_open = false;
        for pending in self.snapshots.drain(..) {
            let _ = pending.reply.send(Err(CaptureError::Unavailable {
                camera: self.spec.name.clone(),
                cause: Some(Box::new(error.clone())),
            }));
        }
        if let Some(rec) = &mut self.recording {
            rec.cut = true;
            if rec.stopping.as_ref().is_none_or(|s| !s.eos_sent) {
                self.end_clip();
            }
        }
        let (delay, failures) = self.deadlines.pipeline_failed(Instant::now());
        self.status.send_modify(|s| {
            s.state = CameraState::Restarting {
                failures,
                retry_in: delay,
            };
            s.running_since = None;
            s.last_error = Some(error);
            s.restarts += 1;
        });
    }

    /// The pipeline, if frames flow; else why the camera is unavailable.
    pub(super) fn running_pipeline(&self) -> Result<&CameraPipeline, CaptureError> {
        match &self.pipeline {
            Some(p) if self.deadlines.is_running() => Ok(p),
            _ => Err(CaptureError::Unavailable {
                camera: self.spec.name.clone(),
                cause: self.status.borrow().last_error.clone().map(Box::new),
            }),
        }
    }

    pub(super) fn on_bus(&mut self, generation: u64, message: &gst::Message) {
        match message.view() {
            gst::MessageView::Error(err) => {
                let error = self.classify(err);
                if generation == self.generation && self.pipeline.is_some() {
                    self.fail_pipeline(error);
                } else if self.refine_error_of == Some(generation) {
                    self.refine_error_of = None;
                    tracing::error!(error = %error, "camera pipeline failed to start");
                    self.status.send_modify(|s| s.last_error = Some(error));
                }
            }
            gst::MessageView::Eos(_)
                if generation == self.generation && self.pipeline.is_some() =>
            {
                self.fail_pipeline(CaptureError::DeviceLost {
                    camera: self.spec.name.clone(),
                    device: self.spec.source.device(),
                    detail: "the source ended its stream".into(),
                });
            }
            gst::MessageView::Warning(w) => {
                tracing::warn!(warning = %w.error(), debug = ?w.debug(), "camera pipeline warning");
            }
            _ => {}
        }
    }

    /// Maps a GStreamer error to a typed error naming the device.
    fn classify(&self, err: &gst::message::Error) -> CaptureError {
        let camera = self.spec.name.clone();
        let device = self.spec.source.device();
        let detail = match err.debug() {
            Some(debug) => format!("{} ({debug})", err.error()),
            None => err.error().to_string(),
        };
        let running = self.deadlines.is_running();
        match err.error().kind::<gst::ResourceError>() {
            Some(gst::ResourceError::NotFound) => CaptureError::DeviceNotFound { camera, device },
            Some(gst::ResourceError::Busy) => CaptureError::DeviceBusy { camera, device },
            Some(
                gst::ResourceError::Read
                | gst::ResourceError::Failed
                | gst::ResourceError::NoSpaceLeft,
            ) if running => CaptureError::DeviceLost {
                camera,
                device,
                detail,
            },
            _ => CaptureError::Pipeline {
                camera,
                device,
                detail,
            },
        }
    }

    /// Re-anchors the overlay's UTC clock to the wall clock, and with it the actor's `epoch`.
    pub(super) fn anchor_overlay(&mut self) {
        self.deadlines.anchored(Instant::now());
        if let Some(pipeline) = &self.pipeline
            && let Some(epoch) = pipeline.anchor_overlay_clock()
        {
            self.epoch = Some(epoch);
        }
    }

    /// The overlay's text between recordings.
    pub(super) fn idle_label(&self) -> String {
        self.spec.name.clone()
    }

    /// An encoded frame: into the pre-roll ring, and into the recording if one takes it.
    pub(super) fn on_encoded(&mut self, sample: &gst::Sample) {
        if self.pipeline.is_none() {
            return;
        }
        let Some(buffer) = sample.buffer() else {
            return;
        };
        let Some(running) = running_time_of(sample) else {
            return;
        };
        // A hardware encoder's or camera's buffers come from a small pool: copy what is kept.
        let mut buffer = if self.kind == EncoderKind::X264 {
            buffer.to_owned()
        } else {
            match buffer.copy_deep() {
                Ok(b) => b,
                Err(_) => return,
            }
        };
        // Encoders shift timestamps (x264 by 1000 h, for negative DTS) and say so in the segment:
        // keep frames in running time, the clock of every command.
        if let Some(pts) = buffer.pts()
            && pts != running
        {
            let b = buffer.make_mut();
            let dts = b.dts().map(|dts| (dts + running).saturating_sub(pts));
            b.set_pts(running);
            b.set_dts(dts);
        }
        let caps_changed = match (sample.caps(), &self.caps) {
            (Some(new), Some(old)) => new.as_ptr() != old.as_ptr(),
            (Some(_), None) => true,
            _ => false,
        };
        if caps_changed {
            self.caps = sample.caps_owned();
        }
        if self.deadlines.frame(Instant::now()) {
            self.anchor_overlay();
            tracing::info!(encoder = %self.kind, "camera running");
            self.status.send_modify(|s| {
                s.state = CameraState::Running;
                s.running_since = Some(Instant::now());
            });
        }
        self.ring.push(buffer.clone());
        self.record_frame(&buffer);
    }
}

/// The running time of a sample's buffer (its PTS through its segment).
pub(super) fn running_time_of(sample: &gst::Sample) -> Option<gst::ClockTime> {
    let pts = sample.buffer()?.pts()?;
    match sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::format::Time>())
    {
        Some(segment) => segment.to_running_time(pts),
        None => Some(pts),
    }
}
