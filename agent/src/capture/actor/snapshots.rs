//! Snapshots in the actor: a request opens the pipeline's snapshot branch and waits for a
//! JPEG of a frame captured no earlier than one frame before it; that JPEG answers every
//! waiting request and the branch closes again. A request not answered within
//! [`SNAPSHOT_TIMEOUT`] fails with a timeout. A passthrough camera has no raw frames: its
//! newest keyframe from the ring is converted on a thread of its own. (See
//! `capture/snapshot.rs` for the branch in the pipeline.)

use std::thread;
use std::time::{Duration, Instant};

use gstreamer as gst;
use time::OffsetDateTime;

use super::lifecycle::running_time_of;
use super::{Actor, Reply};
use crate::capture::encoder::EncoderKind;
use crate::capture::error::CaptureError;
use crate::capture::snapshot::{SNAPSHOT_TIMEOUT, Snapshot};

#[derive(Debug)]
pub(super) struct PendingSnapshot {
    /// Frames captured before this running time are too old for the request.
    not_before: gst::ClockTime,
    deadline: Instant,
    pub(super) reply: Reply<Snapshot>,
}

impl Actor {
    pub(super) fn on_jpeg(&mut self, sample: &gst::Sample) {
        let Some(pts) = running_time_of(sample) else {
            return;
        };
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.snapshots.drain(..).partition(|p| pts >= p.not_before);
        self.snapshots = waiting;
        if !ready.is_empty() {
            let captured_at = self.utc_of(pts);
            let snapshot = Snapshot::from_jpeg_sample(sample, captured_at);
            for pending in ready {
                let _ = pending.reply.send(snapshot.clone());
            }
        }
        if self.snapshots.is_empty() {
            self.close_snapshot_branch();
        }
    }

    /// The UTC time of a running time, from the overlay's anchor (or now, before the first).
    fn utc_of(&self, running: gst::ClockTime) -> OffsetDateTime {
        match self.epoch {
            Some(epoch) => epoch + time::Duration::nanoseconds(running.nseconds() as i64),
            None => OffsetDateTime::now_utc(),
        }
    }

    pub(super) fn snapshot(&mut self, reply: Reply<Snapshot>) {
        let pipeline = match self.running_pipeline() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let now = pipeline.running_time().unwrap_or(gst::ClockTime::ZERO);
        if self.kind == EncoderKind::Passthrough {
            let keyframe = self.ring.newest_keyframe().cloned();
            let sample = keyframe
                .zip(self.caps.clone())
                .map(|(b, c)| gst::Sample::builder().buffer(&b).caps(&c).build());
            let captured_at = self.utc_of(keyframe_pts(&sample).unwrap_or(now));
            thread::spawn(move || {
                let result = match sample {
                    Some(sample) => Snapshot::from_keyframe(&sample, captured_at),
                    None => Err(CaptureError::Gst("no keyframe received yet".into())),
                };
                let _ = reply.send(result);
            });
            return;
        }
        let frame = Duration::from_secs_f64(1.0 / f64::from(self.spec.fps));
        let not_before = now.saturating_sub(gst::ClockTime::from_nseconds(frame.as_nanos() as u64));
        self.snapshots.push(PendingSnapshot {
            not_before,
            deadline: Instant::now() + SNAPSHOT_TIMEOUT,
            reply,
        });
        if !self.snapshot_branch_open
            && let Some(pipeline) = &self.pipeline
        {
            self.snapshot_branch_open = pipeline.set_snapshot_branch(true);
        }
    }

    /// Fails the requests that waited [`SNAPSHOT_TIMEOUT`]; closes the branch once none waits.
    pub(super) fn tick_snapshots(&mut self, now: Instant) {
        let (expired, waiting): (Vec<_>, Vec<_>) =
            self.snapshots.drain(..).partition(|p| now >= p.deadline);
        self.snapshots = waiting;
        for pending in expired {
            let _ = pending.reply.send(Err(CaptureError::Timeout {
                what: format!("a frame for a snapshot of camera {:?}", self.spec.name),
                waited: SNAPSHOT_TIMEOUT,
            }));
        }
        if self.snapshots.is_empty() && self.snapshot_branch_open {
            self.close_snapshot_branch();
        }
    }

    fn close_snapshot_branch(&mut self) {
        if let Some(pipeline) = &self.pipeline {
            pipeline.set_snapshot_branch(false);
        }
        self.snapshot_branch_open = false;
    }
}

fn keyframe_pts(sample: &Option<gst::Sample>) -> Option<gst::ClockTime> {
    sample
        .as_ref()
        .and_then(|s| s.buffer())
        .and_then(|b| b.pts())
}
