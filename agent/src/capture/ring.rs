//! The pre-roll: the last seconds of encoded video, in memory.
//!
//! Invariant: the ring always starts on a keyframe and holds at least `keep` of video before
//! its newest frame (once that much has been produced). Frames are trimmed a whole GOP at a
//! time: the ring keeps the newest keyframe at or before `newest - keep`, so a recording that
//! asks for `keep` of pre-roll finds a keyframe at or before its start point. Memory is about
//! `(keep + keyframe interval) x bitrate` (4 s at 4 Mbit/s: 2 MB).
//!
//! Buffers are deep copies: a hardware encoder or a camera hands out buffers from a small
//! pool, and holding seconds of them would stall it.

use std::collections::VecDeque;

use gstreamer as gst;

/// Encoded frames of the last `keep` (plus up to one GOP), oldest first.
#[derive(Debug)]
pub(crate) struct PrerollRing {
    frames: VecDeque<gst::Buffer>,
    keep: gst::ClockTime,
}

/// Whether a buffer starts a GOP (decodable on its own).
pub(crate) fn is_keyframe(buffer: &gst::BufferRef) -> bool {
    !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)
}

impl PrerollRing {
    pub(crate) fn new(keep: std::time::Duration) -> Self {
        Self {
            frames: VecDeque::new(),
            keep: gst::ClockTime::from_nseconds(keep.as_nanos() as u64),
        }
    }

    /// Adds the newest frame (must carry a PTS) and drops what is no longer needed.
    pub(crate) fn push(&mut self, buffer: gst::Buffer) {
        if buffer.pts().is_none() {
            return;
        }
        if self.frames.is_empty() && !is_keyframe(&buffer) {
            return; // Never start on a frame that cannot be decoded alone.
        }
        self.frames.push_back(buffer);
        self.trim();
    }

    fn trim(&mut self) {
        let Some(newest) = self.frames.back().and_then(|b| b.pts()) else {
            return;
        };
        let horizon = newest.saturating_sub(self.keep);
        let cut = self
            .frames
            .iter()
            .enumerate()
            .filter(|(_, b)| is_keyframe(b) && b.pts().is_some_and(|pts| pts <= horizon))
            .map(|(i, _)| i)
            .next_back();
        if let Some(cut) = cut {
            self.frames.drain(..cut);
        }
    }

    /// Index of the frame a recording starting at `target` begins with: the newest keyframe at
    /// or before `target`, else the oldest keyframe (the ring is younger than asked).
    pub(crate) fn start_index(&self, target: gst::ClockTime) -> Option<usize> {
        let keyframes = || {
            self.frames
                .iter()
                .enumerate()
                .filter(|(_, b)| is_keyframe(b))
        };
        keyframes()
            .filter(|(_, b)| b.pts().is_some_and(|pts| pts <= target))
            .map(|(i, _)| i)
            .next_back()
            .or_else(|| keyframes().map(|(i, _)| i).next())
    }

    /// Frames from `index` on, oldest first.
    pub(crate) fn frames_from(&self, index: usize) -> impl Iterator<Item = &gst::Buffer> {
        self.frames.iter().skip(index)
    }

    /// The newest keyframe (for snapshots of a passthrough camera).
    pub(crate) fn newest_keyframe(&self) -> Option<&gst::Buffer> {
        self.frames.iter().rev().find(|b| is_keyframe(b))
    }

    /// Forgets everything (the pipeline restarted: its timestamps start over).
    pub(crate) fn clear(&mut self) {
        self.frames.clear();
    }

    #[cfg(test)]
    fn pts_list(&self) -> Vec<u64> {
        self.frames
            .iter()
            .filter_map(|b| b.pts())
            .map(|t| t.mseconds())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 10 fps, a keyframe every 10 frames (1 s).
    fn frame(ms: u64) -> gst::Buffer {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(ms));
        if !ms.is_multiple_of(1000) {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
        buffer
    }

    #[test]
    fn the_ring_keeps_the_preroll_from_a_keyframe() {
        gst::init().unwrap();
        let mut ring = PrerollRing::new(Duration::from_secs(3));
        for ms in (500..=10_000).step_by(100) {
            ring.push(frame(ms));
        }
        let pts = ring.pts_list();
        // Never started on the delta frames at 500..900.
        assert_eq!(
            pts.first(),
            Some(&7000),
            "newest keyframe at or before 10.0 - 3.0 s"
        );
        assert_eq!(pts.last(), Some(&10_000));

        ring.push(frame(10_900));
        assert_eq!(
            ring.pts_list().first(),
            Some(&7000),
            "7.9 s horizon: 7 s is still the keyframe before it"
        );
        ring.push(frame(11_000));
        assert_eq!(ring.pts_list().first(), Some(&8000));
    }

    #[test]
    fn a_recording_starts_on_the_keyframe_at_or_before_its_target() {
        gst::init().unwrap();
        let mut ring = PrerollRing::new(Duration::from_secs(3));
        for ms in (0..=5000).step_by(100) {
            ring.push(frame(ms));
        }
        let first = |target_ms| {
            let i = ring
                .start_index(gst::ClockTime::from_mseconds(target_ms))
                .unwrap();
            ring.frames_from(i)
                .next()
                .unwrap()
                .pts()
                .unwrap()
                .mseconds()
        };
        assert_eq!(first(2500), 2000);
        assert_eq!(first(3000), 3000);
        assert_eq!(first(100), 2000, "older than the ring: its oldest keyframe");
        assert_eq!(
            ring.newest_keyframe().unwrap().pts().unwrap().mseconds(),
            5000
        );
    }
}
