//! Uploaded notifications that got no answer are sent again.
//!
//! The uploaded notification leaves the spool's outbox once the broker acknowledged it
//! (PUBACK), and that is not the end of its journey: the broker may hand it to an ingest
//! replica that dies before it answers, queue it for a shared-subscription session whose
//! replica never comes back, or forget it in a restart without persistence. The clip would
//! then stay `uploaded` on the station for good: never accepted, never evicted, perhaps never
//! in the catalog. So the uploader keeps a [`ConfirmWatch`] over the clips in `uploaded`:
//!
//! ```text
//!  clip enters `uploaded` ──wait confirm_timeout──▶ no confirm yet? ──▶ notification again
//!                                                   (not while the outbox still holds it)
//!                          ◀──wait doubles, with jitter, up to confirm_timeout_max──┘
//!  confirm accepted / rejected ──▶ the clip leaves `uploaded`, the watch forgets it
//! ```
//!
//! A notification sent again is the same message (rebuilt from the spool row, which the
//! first one was built from too). The ingest answers a duplicate with the verdict it stored,
//! and emits no second event; a re-send that reaches a live replica ends the wait.
//!
//! The watch is in memory: after a restart every clip in `uploaded` waits one
//! `confirm_timeout` from the start before its first re-send. [`ConfirmWatch`] is plain
//! code (time and randomness come in as arguments); [`resend`] is its I/O.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::UploaderSettings;
use super::object::{self, ClipObject, Origin};
use crate::backoff::Backoff;
use crate::spool::{ClipState, SpoolError, clips, outbox};

/// One clip waiting for its confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    /// Notifications sent again so far.
    resends: u32,
    due: Instant,
}

/// Which clips in `uploaded` are due for their notification again; see the module docs.
#[derive(Debug, Clone)]
pub struct ConfirmWatch {
    /// `first` is `store.confirm_timeout`, `max` is `store.confirm_timeout_max`.
    backoff: Backoff,
    waiting: HashMap<String, Waiting>,
}

impl ConfirmWatch {
    pub fn new(backoff: Backoff) -> Self {
        ConfirmWatch {
            backoff,
            waiting: HashMap::new(),
        }
    }

    /// Takes in the clips now in `uploaded`: a clip seen for the first time waits one
    /// `confirm_timeout` from `now`; a clip no longer there (confirmed, or re-queued) is
    /// forgotten. Returns the clips whose wait is over.
    pub fn due<'a>(
        &mut self,
        uploaded: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Vec<String> {
        let first = now + self.backoff.first;
        let mut current = HashMap::with_capacity(self.waiting.len());
        for clip_id in uploaded {
            let waiting = self.waiting.get(clip_id).copied().unwrap_or(Waiting {
                resends: 0,
                due: first,
            });
            current.insert(clip_id.to_owned(), waiting);
        }
        self.waiting = current;
        let mut due: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due
    }

    /// Books a notification sent again (or found still in the outbox) at `now`: the next
    /// wait is the backoff after `resends + 1` sends, `unit` a random number in `0.0..1.0`.
    pub fn resent(&mut self, clip_id: &str, now: Instant, unit: f64) {
        if let Some(waiting) = self.waiting.get_mut(clip_id) {
            waiting.resends += 1;
            waiting.due = now + self.backoff.delay(waiting.resends + 1, unit);
        }
    }

    /// When the next clip becomes due, if any clip is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.due).min()
    }

    /// How often `clip_id`'s notification was sent again.
    pub fn resends(&self, clip_id: &str) -> Option<u32> {
        self.waiting.get(clip_id).map(|w| w.resends)
    }
}

/// The ids of every clip in `uploaded`.
pub fn uploaded_clips(connection: &Connection) -> Result<Vec<String>, SpoolError> {
    let mut statement =
        connection.prepare("SELECT clip_id FROM clips WHERE state = ?1 ORDER BY clip_id")?;
    let rows = statement.query_map([ClipState::Uploaded.as_str()], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What [`resend`] did for one clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resent {
    /// The notification is in the outbox again.
    Queued,
    /// The outbox still holds the notification (the broker has not taken it yet): sending
    /// it twice would not help.
    StillQueued,
    /// The clip left `uploaded` meanwhile, or its row cannot make a notification.
    Skipped(String),
}

/// Puts `clip_id`'s uploaded notification into the outbox again, in one transaction, unless
/// the clip is no longer `uploaded` or the same notification still waits there.
pub fn resend(
    connection: &mut Connection,
    settings: &UploaderSettings,
    clip_id: &str,
) -> Result<Resent, SpoolError> {
    let tx = connection.transaction()?;
    let Some(clip) = clips::get(&tx, clip_id)? else {
        return Ok(Resent::Skipped("the clip is no longer in the spool".into()));
    };
    if clip.state != ClipState::Uploaded {
        return Ok(Resent::Skipped(format!(
            "the clip is {}",
            clip.state.as_str()
        )));
    }
    let origin = Origin {
        env: &settings.env,
        device: &settings.device,
        station: &settings.station,
        bucket: &settings.bucket,
    };
    // An uploaded clip has its part digests: stored at seal, or when its upload began.
    let Some(parts) = clip.parts.clone() else {
        return Ok(Resent::Skipped(
            "the clip's part digests are missing".into(),
        ));
    };
    let message = ClipObject::of(&clip, &settings.env)
        .and_then(|object| object::uploaded(&clip, &object, &origin, &parts))
        .map(|notification| object::uploaded_message(&settings.env, &notification));
    let message = match message {
        Ok(message) => message,
        Err(e) => return Ok(Resent::Skipped(e.to_string())),
    };
    let still_queued: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE topic = ?1 AND payload = ?2)",
        params![message.topic, message.payload],
        |row| row.get(0),
    )?;
    if still_queued {
        return Ok(Resent::StillQueued);
    }
    outbox::push(&tx, &message)?;
    tx.commit()?;
    Ok(Resent::Queued)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn watch() -> ConfirmWatch {
        ConfirmWatch::new(Backoff {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            jitter: 0.5,
        })
    }

    #[test]
    fn a_clip_is_due_one_timeout_after_it_was_first_seen_uploaded() {
        let mut watch = watch();
        let t0 = Instant::now();
        assert!(watch.due(["A"], t0).is_empty());
        assert_eq!(watch.next_due(), Some(t0 + Duration::from_secs(60)));
        assert!(watch.due(["A"], t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(watch.due(["A"], t0 + Duration::from_secs(60)), ["A"]);
    }

    #[test]
    fn the_wait_doubles_after_each_resend_up_to_the_maximum_with_jitter_below_nominal() {
        let mut watch = watch();
        let t0 = Instant::now();
        watch.due(["A"], t0);
        let mut now = t0 + Duration::from_secs(60);
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert_eq!(watch.due(["A"], now), ["A"]);
            // unit 0.0: no jitter, the nominal wait.
            watch.resent("A", now, 0.0);
            let due = watch.next_due().unwrap();
            waits.push(due - now);
            now = due;
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [120, 240, 480, 600, 600, 600]);
        assert_eq!(watch.resends("A"), Some(6));
        // Full jitter shortens the wait, never below confirm_timeout.
        watch.resent("A", now, 0.999);
        let wait = watch.next_due().unwrap() - now;
        assert!(
            wait >= Duration::from_secs(60) && wait < Duration::from_secs(600),
            "{wait:?}"
        );
    }

    mod spool {
        use super::super::*;
        use crate::spool::test_support::{database, sealed_video};

        const CLIP: &str = "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2";

        fn settings() -> UploaderSettings {
            UploaderSettings::new(
                "dev".parse().unwrap(),
                "pi-01".parse().unwrap(),
                "pack-01".parse().unwrap(),
                "bucket",
            )
        }

        fn notifications(connection: &Connection) -> Vec<serde_json::Value> {
            outbox::pending(connection, 100)
                .unwrap()
                .into_iter()
                .filter(|p| p.message.topic == "cap/dev/ingest/uploaded")
                .map(|p| serde_json::from_slice(&p.message.payload).unwrap())
                .collect()
        }

        #[test]
        fn an_unconfirmed_clip_gets_its_notification_again_once_the_first_has_left() {
            let (_dir, mut connection) = database();
            sealed_video(&connection, CLIP, [7; 16]);
            // Not uploaded yet: nothing to send again.
            let skipped = resend(&mut connection, &settings(), CLIP).unwrap();
            assert!(matches!(skipped, Resent::Skipped(_)), "{skipped:?}");
            clips::set_uploaded(&connection, CLIP).unwrap();
            assert_eq!(uploaded_clips(&connection).unwrap(), [CLIP]);

            assert_eq!(
                resend(&mut connection, &settings(), CLIP).unwrap(),
                Resent::Queued
            );
            let sent = notifications(&connection);
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0]["clip_id"], CLIP);
            assert_eq!(sent[0]["device"], "pi-01");
            assert_eq!(sent[0]["key"], format!("dev/2026/11/23/SO-1/{CLIP}.mp4"));
            // The same notification as the first: the ETag the seal's digests give.
            assert_eq!(sent[0]["etag"], "07".repeat(16));
            // While that copy waits in the outbox, a second one is not added.
            assert_eq!(
                resend(&mut connection, &settings(), CLIP).unwrap(),
                Resent::StillQueued
            );
            assert_eq!(notifications(&connection).len(), 1);
            // The broker took it (PUBACK): the next re-send queues it again.
            let seq = outbox::pending(&connection, 10).unwrap()[0].seq;
            outbox::remove(&connection, seq).unwrap();
            assert_eq!(
                resend(&mut connection, &settings(), CLIP).unwrap(),
                Resent::Queued
            );
            // Accepted: the clip leaves `uploaded` and nothing more is sent.
            clips::set_state(&connection, CLIP, ClipState::Accepted).unwrap();
            assert!(uploaded_clips(&connection).unwrap().is_empty());
            let skipped = resend(&mut connection, &settings(), CLIP).unwrap();
            assert_eq!(skipped, Resent::Skipped("the clip is accepted".into()));
            assert_eq!(notifications(&connection).len(), 1);
        }
    }

    #[test]
    fn a_confirmed_clip_is_forgotten_and_a_new_one_waits_its_own_timeout() {
        let mut watch = watch();
        let t0 = Instant::now();
        watch.due(["A"], t0);
        let later = t0 + Duration::from_secs(30);
        assert!(watch.due(["A", "B"], later).is_empty());
        // A is confirmed (leaves `uploaded`); B came later and is due later.
        assert!(watch.due(["B"], t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(watch.resends("A"), None);
        assert_eq!(watch.due(["B"], later + Duration::from_secs(60)), ["B"]);
        assert!(watch.due([], later + Duration::from_secs(600)).is_empty());
        assert_eq!(watch.next_due(), None);
    }
}
