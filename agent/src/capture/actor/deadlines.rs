//! The camera actor's deadlines, decided without any I/O: no GStreamer, no runtime, no clock
//! of its own. The actor tells [`Deadlines`] what happened and when (a pipeline started, a
//! frame arrived, the pipeline failed, a stop began, EOS went to the writer), and asks
//! [`Deadlines::due`] at each tick what is due at that instant. It then does the I/O itself.
//!
//! The deadlines, all measured from the event that sets them:
//!
//! | phase / state | deadline | due |
//! | --- | --- | --- |
//! | starting | [`FIRST_FRAME_TIMEOUT`] after the start, without a frame | [`Due::NoFirstFrame`]: fail the pipeline |
//! | running | [`stall_timeout`] after the last frame | [`Due::Stalled`]: fail the pipeline |
//! | running | [`REANCHOR_EVERY`] after the last anchor of the overlay clock | [`Due::Reanchor`] |
//! | running | [`HEALTHY_AFTER`] after the first frame | (none: the restart backoff starts over) |
//! | down | the backoff delay after the failure (1 s, doubled per failure, at most 30 s) | [`Due::Restart`] |
//! | stopping | post-roll + [`STOP_GRACE`] after the stop, with no frame past the post-roll | [`Due::PostrollOver`]: send EOS now |
//! | EOS sent | `eos_timeout` after the EOS | [`Due::EosOverdue`]: seal what is on disk |
//!
//! A stop normally ends on a frame past its post-roll (`super::super::recorder`), long before
//! its deadline here; and a writer normally answers EOS at once. These deadlines are the
//! fallbacks for a source that stopped and a writer that hangs. The pending snapshots' own
//! deadlines ([`super::super::snapshot::SNAPSHOT_TIMEOUT`]) are kept with their replies.

use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Retries};

/// A starting pipeline must deliver its first frame within this (RTSP connects, USB enumerates).
pub(super) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the overlay's UTC clock is re-anchored to the wall clock.
pub(super) const REANCHOR_EVERY: Duration = Duration::from_secs(10);
/// Grace after `stop + postroll` for the last frames to come out of the encoder.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);
/// A pipeline that ran at least this long before failing starts its restart backoff over.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The first restart's delay; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest delay between restarts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How long a running source may be silent before it counts as stalled: three keyframe
/// intervals (an encoder may hold frames that long), and at least 5 s.
pub(super) fn stall_timeout(keyframe_interval: Duration) -> Duration {
    (keyframe_interval * 3).max(Duration::from_secs(5))
}

/// Where the camera pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Built and set to playing at `since`; no frame yet.
    Starting { since: Instant },
    /// Delivering frames since `since`.
    Running { since: Instant },
    /// Torn down after a failure; the next attempt is at `retry_at`.
    Down { retry_at: Instant },
}

/// The recording's stop deadline: what the actor waits for, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A frame past the post-roll.
    Frames { until: Instant },
    /// The writer's EOS.
    Eos { until: Instant },
}

/// Something due now, for the actor to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// The starting pipeline gave no frame within `waited`.
    NoFirstFrame { waited: Duration },
    /// The running pipeline gave no frame for `waited`.
    Stalled { waited: Duration },
    /// The pipeline is down and its backoff delay is over: build it again.
    Restart,
    /// Time to re-anchor the overlay's clock.
    Reanchor,
    /// No frame reached the end of the post-roll in time: send EOS to the writer now.
    PostrollOver,
    /// The writer did not finish within `eos_timeout`: seal what is on disk.
    EosOverdue,
}

/// The actor's deadlines and its restart backoff.
#[derive(Debug)]
pub(super) struct Deadlines {
    phase: Phase,
    /// When the last frame arrived: a running source silent for `stall` has stalled.
    last_frame: Instant,
    /// When the overlay clock was last anchored.
    last_anchor: Instant,
    stall: Duration,
    eos_timeout: Duration,
    /// Restart delays; reset once a pipeline ran for [`HEALTHY_AFTER`].
    backoff: Retries,
    /// Set while the recording is stopping.
    stop: Option<Stop>,
}

impl Deadlines {
    /// The deadlines of a camera whose pipeline is about to start at `now`.
    pub(super) fn new(now: Instant, keyframe_interval: Duration, eos_timeout: Duration) -> Self {
        Self {
            phase: Phase::Starting { since: now },
            last_frame: now,
            last_anchor: now,
            stall: stall_timeout(keyframe_interval),
            eos_timeout,
            backoff: Backoff::exact(FIRST_RETRY, MAX_RETRY).retries(),
            stop: None,
        }
    }

    /// Whether frames are flowing (the pipeline delivered one and has not failed since).
    pub(super) fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// A pipeline was built and set to playing at `now`: its first frame is due.
    pub(super) fn pipeline_started(&mut self, now: Instant) {
        self.phase = Phase::Starting { since: now };
    }

    /// A frame arrived at `now`. Returns true for the first frame of a starting pipeline
    /// (it now counts as running).
    pub(super) fn frame(&mut self, now: Instant) -> bool {
        self.last_frame = now;
        if let Phase::Starting { .. } = self.phase {
            self.phase = Phase::Running { since: now };
            return true;
        }
        false
    }

    /// The overlay clock was anchored at `now`.
    pub(super) fn anchored(&mut self, now: Instant) {
        self.last_anchor = now;
    }

    /// The pipeline failed at `now`: it is down until the backoff delay has passed. Returns
    /// that delay and the consecutive failures so far (this one included).
    pub(super) fn pipeline_failed(&mut self, now: Instant) -> (Duration, u32) {
        let delay = self.backoff.next_delay();
        self.phase = Phase::Down {
            retry_at: now + delay,
        };
        (delay, self.backoff.failures())
    }

    /// A stop began at `now`: its frames are due within `postroll` and [`STOP_GRACE`].
    pub(super) fn stopping(&mut self, now: Instant, postroll: Duration) {
        self.stop = Some(Stop::Frames {
            until: now + postroll + STOP_GRACE,
        });
    }

    /// EOS went to the writer at `now`: its answer is due within `eos_timeout`.
    pub(super) fn eos_sent(&mut self, now: Instant) {
        self.stop = Some(Stop::Eos {
            until: now + self.eos_timeout,
        });
    }

    /// The recording is gone (finalised or aborted): no stop deadline.
    pub(super) fn recording_over(&mut self) {
        self.stop = None;
    }

    /// What is due at `now`, in the order to act on it: the pipeline's deadline, the
    /// overlay's, then the recording's. A pipeline that ran for [`HEALTHY_AFTER`] without
    /// stalling resets the restart backoff here.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        match self.phase {
            Phase::Starting { since } if now - since > FIRST_FRAME_TIMEOUT => {
                due.push(Due::NoFirstFrame {
                    waited: FIRST_FRAME_TIMEOUT,
                });
            }
            Phase::Running { since } => {
                if now - self.last_frame > self.stall {
                    due.push(Due::Stalled { waited: self.stall });
                } else if now - since > HEALTHY_AFTER && self.backoff.failures() > 0 {
                    self.backoff.reset();
                }
                if now - self.last_anchor > REANCHOR_EVERY {
                    due.push(Due::Reanchor);
                }
            }
            Phase::Down { retry_at } if now >= retry_at => due.push(Due::Restart),
            _ => {}
        }
        match self.stop {
            Some(Stop::Frames { until }) if now >= until => due.push(Due::PostrollOver),
            Some(Stop::Eos { until }) if now >= until => due.push(Due::EosOverdue),
            _ => {}
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A camera with a 1 s keyframe interval (stall after 5 s) and a 5 s EOS timeout, whose
    /// pipeline started at `t0`.
    fn camera(t0: Instant) -> Deadlines {
        Deadlines::new(t0, secs(1), secs(5))
    }

    /// A camera whose pipeline started at `t0` and delivered its first frame at once.
    fn running(t0: Instant) -> Deadlines {
        let mut d = camera(t0);
        assert!(d.frame(t0), "the first frame makes the pipeline running");
        d.anchored(t0);
        d
    }

    /// Fails the pipeline at `at` and returns when it is due to restart.
    fn fail(d: &mut Deadlines, at: Instant) -> Instant {
        let (delay, _) = d.pipeline_failed(at);
        assert!(
            d.due(at).is_empty(),
            "no restart at the instant of the failure"
        );
        at + delay
    }

    #[test]
    fn a_starting_pipeline_gets_its_first_frame_timeout_and_no_more() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        assert!(d.due(t0 + FIRST_FRAME_TIMEOUT).is_empty());
        assert_eq!(
            d.due(t0 + FIRST_FRAME_TIMEOUT + MS),
            [Due::NoFirstFrame {
                waited: FIRST_FRAME_TIMEOUT
            }]
        );
    }

    #[test]
    fn a_first_frame_in_time_ends_the_first_frame_deadline() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        assert!(!d.is_running());
        assert!(d.frame(t0 + secs(14)));
        assert!(d.is_running());
        assert!(
            !d.frame(t0 + secs(14) + MS),
            "only the first frame starts it"
        );
        d.anchored(t0 + secs(14));
        assert!(d.due(t0 + secs(16)).is_empty());
    }

    #[test]
    fn a_silent_source_stalls_after_the_stall_timeout_not_before() {
        let t0 = Instant::now();
        let mut d = running(t0);
        let last = t0 + secs(3);
        d.frame(last);
        assert!(
            d.due(last + secs(5)).is_empty(),
            "5 s of silence is allowed"
        );
        assert_eq!(
            d.due(last + secs(5) + MS),
            [Due::Stalled { waited: secs(5) }]
        );
    }

    #[test]
    fn a_long_keyframe_interval_lengthens_the_stall_timeout() {
        assert_eq!(stall_timeout(Duration::from_millis(500)), secs(5));
        assert_eq!(stall_timeout(secs(4)), secs(12));
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, secs(4), secs(5));
        d.frame(t0);
        d.anchored(t0 + secs(10));
        assert!(d.due(t0 + secs(12)).is_empty());
        assert_eq!(
            d.due(t0 + secs(12) + MS),
            [Due::Stalled { waited: secs(12) }]
        );
    }

    #[test]
    fn frames_keep_a_running_pipeline_alive() {
        let t0 = Instant::now();
        let mut d = running(t0);
        for s in 1..=30 {
            let at = t0 + secs(s);
            d.frame(at);
            d.anchored(at);
            assert!(d.due(at).is_empty(), "at {s} s");
        }
    }

    #[test]
    fn the_overlay_clock_is_reanchored_every_ten_seconds() {
        let t0 = Instant::now();
        let mut d = running(t0);
        let at = t0 + REANCHOR_EVERY;
        d.frame(at);
        assert!(d.due(at).is_empty());
        let at = at + MS;
        d.frame(at);
        assert_eq!(d.due(at), [Due::Reanchor]);
        d.anchored(at);
        assert!(d.due(at).is_empty());
    }

    #[test]
    fn a_failed_pipeline_restarts_after_a_backoff_that_doubles() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        let mut at = t0;
        for (n, delay) in [1, 2, 4, 8, 16, 30, 30].into_iter().enumerate() {
            let (got, failures) = d.pipeline_failed(at);
            assert_eq!((got, failures), (secs(delay), n as u32 + 1));
            assert!(!d.is_running());
            assert!(d.due(at + secs(delay) - MS).is_empty(), "failure {n}");
            assert_eq!(d.due(at + secs(delay)), [Due::Restart], "failure {n}");
            at += secs(delay);
            d.pipeline_started(at);
            assert!(d.due(at).is_empty(), "a started pipeline is not restarted");
        }
    }

    #[test]
    fn a_restarted_pipeline_that_never_delivers_fails_again_after_its_first_frame_timeout() {
        let t0 = Instant::now();
        let mut d = running(t0);
        let restart = fail(&mut d, t0 + secs(1));
        d.pipeline_started(restart);
        assert!(d.due(restart + FIRST_FRAME_TIMEOUT).is_empty());
        assert_eq!(
            d.due(restart + FIRST_FRAME_TIMEOUT + MS),
            [Due::NoFirstFrame {
                waited: FIRST_FRAME_TIMEOUT
            }]
        );
    }

    #[test]
    fn a_pipeline_that_ran_healthy_starts_the_backoff_over() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        let mut at = t0;
        for _ in 0..3 {
            at = fail(&mut d, at);
            d.pipeline_started(at);
        }
        // Running for HEALTHY_AFTER, frames flowing: the next failure waits the first delay.
        d.frame(at);
        d.anchored(at);
        let healthy = at + HEALTHY_AFTER + MS;
        d.frame(healthy);
        d.anchored(healthy);
        assert!(d.due(healthy).is_empty());
        assert_eq!(d.pipeline_failed(healthy), (FIRST_RETRY, 1));
    }

    #[test]
    fn a_pipeline_that_fails_before_it_is_healthy_keeps_its_backoff() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        let at = fail(&mut d, t0);
        d.pipeline_started(at);
        d.frame(at);
        d.anchored(at);
        let short = at + HEALTHY_AFTER;
        d.frame(short);
        assert!(d.due(short).is_empty());
        assert_eq!(d.pipeline_failed(short), (secs(2), 2));
    }

    #[test]
    fn a_stalled_pipeline_does_not_count_as_healthy() {
        let t0 = Instant::now();
        let mut d = camera(t0);
        let at = fail(&mut d, t0);
        d.pipeline_started(at);
        d.frame(at);
        d.anchored(at);
        let stalled = at + HEALTHY_AFTER + MS;
        assert!(d.due(stalled).contains(&Due::Stalled { waited: secs(5) }));
        assert_eq!(d.pipeline_failed(stalled), (secs(2), 2));
    }

    #[test]
    fn a_stop_waits_for_the_post_roll_and_its_grace_before_ending_the_clip() {
        let t0 = Instant::now();
        let mut d = running(t0);
        let stop = t0 + secs(1);
        d.stopping(stop, secs(3));
        let end = stop + secs(3) + STOP_GRACE;
        d.frame(end - MS);
        d.anchored(end - MS);
        assert!(d.due(end - MS).is_empty(), "the post-roll is not cut short");
        assert_eq!(d.due(end), [Due::PostrollOver]);
    }

    #[test]
    fn a_stop_without_post_roll_still_gets_the_grace() {
        let t0 = Instant::now();
        let mut d = running(t0);
        d.stopping(t0, Duration::ZERO);
        assert!(d.due(t0 + STOP_GRACE - MS).is_empty());
        assert_eq!(d.due(t0 + STOP_GRACE), [Due::PostrollOver]);
    }

    #[test]
    fn eos_replaces_the_post_roll_deadline_with_the_eos_timeout() {
        let t0 = Instant::now();
        let mut d = running(t0);
        d.stopping(t0, secs(1));
        let eos = t0 + secs(1);
        d.eos_sent(eos);
        let after_postroll = t0 + secs(1) + STOP_GRACE;
        d.frame(after_postroll);
        assert!(d.due(after_postroll).is_empty(), "the post-roll is over");
        let overdue = eos + secs(5);
        d.frame(overdue - MS);
        assert!(
            d.due(overdue - MS).is_empty(),
            "the writer gets its eos_timeout"
        );
        d.frame(overdue);
        assert_eq!(d.due(overdue), [Due::EosOverdue]);
    }

    #[test]
    fn a_finished_recording_has_no_deadline() {
        let t0 = Instant::now();
        let mut d = running(t0);
        d.eos_sent(t0);
        d.recording_over();
        let later = t0 + secs(60);
        d.frame(later);
        d.anchored(later);
        assert!(d.due(later).is_empty());
    }

    #[test]
    fn a_camera_failure_during_a_stop_keeps_both_deadlines() {
        let t0 = Instant::now();
        let mut d = running(t0);
        d.eos_sent(t0);
        let restart = fail(&mut d, t0 + secs(1));
        assert!(d.due(restart - MS).is_empty());
        assert_eq!(d.due(restart), [Due::Restart]);
        assert_eq!(d.due(t0 + secs(5)), [Due::Restart, Due::EosOverdue]);
    }

    #[test]
    fn a_stall_and_a_reanchor_fall_due_together_in_that_order() {
        let t0 = Instant::now();
        let mut d = running(t0);
        let at = t0 + REANCHOR_EVERY + MS;
        assert_eq!(d.due(at), [Due::Stalled { waited: secs(5) }, Due::Reanchor]);
    }
}
