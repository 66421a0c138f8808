//! The MQTT side: the link to the broker, and the worker that turns uploaded notifications
//! into catalog rows, events and confirmations.
//!
//! # Data flow
//!
//! ```text
//! broker ──$share/ingest/cap/{env}/ingest/uploaded──> link task ──unbounded chan──> worker
//!        ──cap/{env}/station/+/status (retained)───> link task ──> Stations (for the API)
//!        ──$share/ingest/cap/{env}/station/+/{event,cmd,reply}──> link task ──> Tracker
//!          (crate::expected: the clips the stations announced, the starts they answered)
//! worker: batch ─> decode + check ─> verify (HEAD, concurrent) ─> catalog::commit (one tx,
//!         clips + outbox + poison) ─> wake relay ─> ack every publish ─> confirm to devices
//! ```
//!
//! # Invariants
//!
//! - **Acknowledged only after the commit.** The client runs with manual acks and
//!   `clean_session = false`: a notification not yet committed when the process dies is
//!   redelivered by the broker (to this client when it comes back, or, on a shared
//!   subscription, possibly to another replica). The upsert makes redelivery harmless.
//! - **Every message is acknowledged once decided**, including ones that cannot be read
//!   (recorded in `poison`) and rejections: nothing blocks the queue, and no payload can crash
//!   the service (every failure is a value, logged and counted).
//! - **Transient failures are retried, never decided**: a store or database outage holds the
//!   batch (with backoff) instead of rejecting clips that are fine.
//! - **The event loop is only polled**, in its own task: it never awaits a publish or ack
//!   (rumqttc can deadlock otherwise). Subscriptions are renewed on every ConnAck (rumqttc
//!   does not restore them), from a spawned task. The in-flight window the broker grants
//!   bounds the channel to the worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capture_protocol::{ClipId, Confirm, DeviceId, Env, Uploaded, UploadedError, decode, topic};
use futures::StreamExt;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{Notify, mpsc, watch};

use crate::catalog::{self, Decision, Entry, Poison, Pool, Recorded};
pub use crate::config::MAX_PACKET_BYTES;
use crate::config::MqttConfig;
use crate::shutdown::{Backoff, next_batch, sleep_or_shutdown};
use crate::stations::Stations;
use crate::telemetry::Metrics;
use crate::verify::Verifier;

/// First and longest wait before the link reconnects or the worker retries a verification or
/// a commit.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// The MQTT client options of the ingest.
pub fn mqtt_options(config: &MqttConfig, password: Option<&str>) -> MqttOptions {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(1000)
        // Well above the protocol's 64 KiB limit, so that an oversized notification reaches
        // the decoder (and the poison table) instead of failing the connection, which would
        // make the broker redeliver it forever. Cap the broker's message size below this.
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_request_channel_capacity(10_000);
    if let Some(username) = &config.username {
        options.set_credentials(username, password.unwrap_or_default());
    }
    options
}

/// Where the link sends what it receives.
#[derive(Debug)]
pub struct Routes {
    /// Uploaded notifications.
    pub to_worker: mpsc::UnboundedSender<Publish>,
    /// Station events, commands and replies ([`crate::expected::Tracker`]).
    pub to_tracker: mpsc::UnboundedSender<Publish>,
    /// Kept current from the retained statuses.
    pub stations: Arc<Stations>,
}

/// The subscriptions of every replica: the shared ones (each message to one replica) and
/// every station's retained status (to every replica).
pub fn subscriptions(env: &Env) -> Vec<SubscribeFilter> {
    [
        topic::uploaded_shared(env),
        topic::every_status(env),
        topic::ingest_shared(&topic::every_event(env)),
        topic::ingest_shared(&topic::every_command(env)),
        topic::ingest_shared(&topic::every_reply(env)),
    ]
    .into_iter()
    .map(|filter| SubscribeFilter::new(filter, QoS::AtLeastOnce))
    .collect()
}

/// Polls the event loop until the client disconnects (or, while the broker is unreachable,
/// until shutdown): forwards notifications to the worker and station messages to the tracker,
/// keeps [`Stations`] current, resubscribes on every ConnAck.
pub async fn drive_link(
    mut eventloop: EventLoop,
    client: AsyncClient,
    env: Env,
    routes: Routes,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Routes {
        to_worker,
        to_tracker,
        stations,
    } = routes;
    let uploaded = topic::uploaded(&env);
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
    loop {
        // Not interrupted by shutdown: acks and confirms of the last batch still have to go
        // out. The loop ends when the client's Disconnect has been sent.
        match eventloop.poll().await {
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Ready only once the subscriptions are in place: before that, notifications
                // published to a shared subscription without members are dropped.
                metrics.mqtt_up.store(true, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                let client = client.clone();
                let filters = subscriptions(&env);
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe_many(filters).await {
                        tracing::warn!(error = %error, "subscribing failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic == uploaded {
                    metrics.progress.received();
                    if to_worker.send(publish).is_err() {
                        break;
                    }
                } else {
                    match topic::station_topic(&env, &publish.topic) {
                        Some((_, "event" | "cmd" | "reply")) => {
                            if to_tracker.send(publish).is_err() {
                                break;
                            }
                            continue;
                        }
                        Some((_, "status")) => stations.update(&publish.topic, &publish.payload),
                        _ => {
                            tracing::debug!(topic = %publish.topic, "ignoring a message on an unexpected topic")
                        }
                    }
                    if let Err(error) = client.try_ack(&publish) {
                        tracing::warn!(error = %error, "acknowledging a status failed");
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                metrics.mqtt_up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %error, retry_in = ?backoff.current(), "MQTT connection failed");
                if sleep_or_shutdown(backoff.current(), &mut shutdown).await {
                    break;
                }
                backoff.double();
            }
        }
    }
    metrics.mqtt_up.store(false, Ordering::Relaxed);
}

/// What the worker needs.
#[derive(Debug, Clone)]
pub struct Worker {
    pub env: Env,
    pub client: AsyncClient,
    pub verifier: Verifier,
    pub pool: Arc<Pool>,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    pub concurrency: usize,
    /// Bytes of an unreadable payload kept in `poison`.
    pub poison_payload_max: usize,
}

/// One received notification, classified.
enum Item {
    /// Unreadable: recorded in `poison`. The clip and device, when they could be read.
    Poison {
        error: String,
        reply_to: Option<(ClipId, DeviceId)>,
    },
    /// Readable: decided by the notification check, or to be verified against the store.
    Clip {
        uploaded: Box<Uploaded>,
        raw: String,
        decision: Option<Decision>,
    },
}

/// A batch whose every item is decided, waiting for its commit.
struct Verified {
    batch: Vec<Publish>,
    items: Vec<Item>,
    started: Instant,
}

/// The batch was abandoned unacknowledged because the service is shutting down.
struct Abandoned;

impl Worker {
    /// Handles notifications until shutdown or until the link ends.
    ///
    /// Two stages overlap: while one batch is being committed (and then acknowledged and
    /// confirmed), the next one is already being verified. Acks still follow the commit of
    /// their own batch; the bounded channel between the stages keeps at most two batches
    /// verified but uncommitted.
    pub async fn run(
        self,
        mut from_link: mpsc::UnboundedReceiver<Publish>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (to_commit, mut verified) = mpsc::channel::<Verified>(2);
        let committer = {
            let this = self.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                while let Some(batch) = verified.recv().await {
                    if this.finish(batch, &mut shutdown).await.is_err() {
                        break;
                    }
                }
            })
        };
        loop {
            let Some(batch) = next_batch(&mut from_link, self.max_batch, &mut shutdown).await
            else {
                break;
            };
            let Ok(verified) = self.prepare(batch, &mut shutdown).await else {
                break;
            };
            if to_commit.send(verified).await.is_err() {
                break;
            }
        }
        drop(to_commit);
        let _ = committer.await;
        tracing::info!("notification worker stopped");
    }

    /// Stage 1: classify and verify a batch.
    async fn prepare(
        &self,
        batch: Vec<Publish>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Verified, Abandoned> {
        let started = Instant::now();
        let mut items: Vec<Item> = batch.iter().map(|p| classify(&self.env, p)).collect();

        // Verify every clip not decided yet, concurrently.
        let pending: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, Item::Clip { decision: None, .. }))
            .map(|(i, _)| i)
            .collect();
        let decided: Vec<(usize, Option<Decision>)> = futures::stream::iter(pending)
            .map(|i| {
                let uploaded = match &items[i] {
                    Item::Clip { uploaded, .. } => Some(uploaded.as_ref().clone()),
                    Item::Poison { .. } => None,
                };
                let mut shutdown = shutdown.clone();
                async move {
                    match uploaded {
                        Some(uploaded) => (i, self.verify(&uploaded, &mut shutdown).await),
                        None => (i, None),
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (i, decision) in decided {
            let Some(decision) = decision else {
                return Err(Abandoned);
            };
            if let Item::Clip { decision: slot, .. } = &mut items[i] {
                *slot = Some(decision);
            }
        }
        Ok(Verified {
            batch,
            items,
            started,
        })
    }

    /// Stage 2: commit a verified batch, then acknowledge and confirm it.
    async fn finish(
        &self,
        verified: Verified,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Abandoned> {
        let Verified {
            batch,
            items,
            started,
        } = verified;
        let mut entries = Vec::new();
        let mut poison = Vec::new();
        for (item, publish) in items.iter().zip(&batch) {
            match item {
                Item::Clip {
                    uploaded,
                    raw,
                    decision,
                } => entries.push(Entry {
                    uploaded: uploaded.as_ref().clone(),
                    raw: raw.clone(),
                    decision: decision.clone().unwrap_or(Decision::Accepted),
                }),
                Item::Poison { error, .. } => poison.push(Poison::new(
                    &publish.topic,
                    &publish.payload,
                    self.poison_payload_max,
                    error.clone(),
                )),
            }
        }

        let recorded = self.commit(&entries, &poison, shutdown).await?;
        self.metrics.progress.advanced();
        // Every idle relay races for the new rows (SKIP LOCKED splits them); the stored permit
        // covers a relay that is busy right now.
        self.wake.notify_waiters();
        self.wake.notify_one();
        self.metrics
            .batch_micros_sum
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Metrics::inc(&self.metrics.batch_count);

        for publish in &batch {
            if let Err(error) = self.client.ack(publish).await {
                tracing::warn!(error = %error, "acknowledging a notification failed");
            }
        }
        self.metrics.progress.done(batch.len());
        for (entry, recorded) in entries.iter().zip(&recorded) {
            self.report(&entry.uploaded, recorded);
            let confirm = match recorded.decision() {
                Decision::Accepted => Confirm::accepted(entry.uploaded.clip_id.clone()),
                Decision::Rejected(reason) => {
                    Confirm::rejected(entry.uploaded.clip_id.clone(), reason.clone())
                }
            };
            self.send_confirm(&entry.uploaded.device, &confirm).await;
        }
        for item in &items {
            if let Item::Poison { error, reply_to } = item {
                Metrics::inc(&self.metrics.poison);
                tracing::warn!(error = %error, "unreadable notification recorded and acknowledged");
                if let Some((clip_id, device)) = reply_to {
                    let confirm = Confirm::rejected(clip_id.clone(), error.clone());
                    self.send_confirm(device, &confirm).await;
                }
            }
        }
        Ok(())
    }

    /// Verifies with retries; `None` when shutdown came first.
    async fn verify(
        &self,
        uploaded: &Uploaded,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Decision> {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
        loop {
            let started = Instant::now();
            match self.verifier.verify(uploaded).await {
                Ok(decision) => {
                    self.metrics.progress.advanced();
                    Metrics::observe(
                        &self.metrics.verify_micros_sum,
                        &self.metrics.verify_count,
                        started.elapsed(),
                    );
                    return Some(decision);
                }
                Err(error) => {
                    Metrics::inc(&self.metrics.retries_verify);
                    tracing::warn!(clip_id = %uploaded.clip_id, error = %error, retry_in = ?backoff.current(), "verification failed; retrying");
                    if sleep_or_shutdown(backoff.current(), shutdown).await {
                        return None;
                    }
                    backoff.double();
                }
            }
        }
    }

    /// Commits with retries (PostgreSQL may be restarting).
    async fn commit(
        &self,
        entries: &[Entry],
        poison: &[Poison],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<Recorded>, Abandoned> {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
        loop {
            match catalog::commit(&self.pool, &self.env, entries, poison).await {
                Ok(recorded) => {
                    self.metrics.postgres_up.store(true, Ordering::Relaxed);
                    return Ok(recorded);
                }
                Err(error) => {
                    self.metrics.postgres_up.store(false, Ordering::Relaxed);
                    Metrics::inc(&self.metrics.retries_catalog);
                    tracing::warn!(error = %error, batch = entries.len() + poison.len(), retry_in = ?backoff.current(), "catalog commit failed; retrying");
                    if sleep_or_shutdown(backoff.current(), shutdown).await {
                        return Err(Abandoned);
                    }
                    backoff.double();
                }
            }
        }
    }

    fn report(&self, uploaded: &Uploaded, recorded: &Recorded) {
        let (clip_id, order) = (&uploaded.clip_id, &uploaded.order);
        match recorded {
            Recorded::New(Decision::Accepted) => {
                Metrics::inc(&self.metrics.accepted);
                tracing::info!(%clip_id, %order, station = %uploaded.station, device = %uploaded.device, "clip accepted");
            }
            Recorded::New(Decision::Rejected(reason)) => {
                Metrics::inc(&self.metrics.rejected);
                self.metrics.rejected(reason);
                tracing::warn!(%clip_id, %order, station = %uploaded.station, device = %uploaded.device, %reason, "clip rejected");
            }
            Recorded::Duplicate(_) => {
                Metrics::inc(&self.metrics.duplicate);
                tracing::info!(%clip_id, %order, "duplicate notification; nothing changed");
            }
        }
    }

    async fn send_confirm(&self, device: &DeviceId, confirm: &Confirm) {
        let payload = match serde_json::to_vec(confirm) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(error = %error, "serializing a confirmation failed");
                return;
            }
        };
        let topic = topic::confirm(&self.env, device);
        if let Err(error) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(clip_id = %confirm.clip_id, error = %error, "publishing a confirmation failed");
        }
    }
}

/// Reads one publish as a notification and checks it against this environment.
fn classify(env: &Env, publish: &Publish) -> Item {
    let uploaded = match decode::<Uploaded>(&publish.payload, "uploaded notification") {
        Ok(uploaded) => uploaded,
        Err(error) => {
            return Item::Poison {
                error: error.to_string(),
                reply_to: reply_to(&publish.payload),
            };
        }
    };
    let raw = String::from_utf8_lossy(&publish.payload).into_owned();
    let decision = match uploaded.check(env) {
        Ok(()) => None,
        Err(UploadedError::KeyMismatch { key, expected, .. })
            if !key.starts_with(&format!("{env}/")) =>
        {
            Some(Decision::Rejected(format!(
                "wrong env: key {key:?} is not in environment {env:?} (expected {expected:?})"
            )))
        }
        Err(error) => Some(Decision::Rejected(error.to_string())),
    };
    Item::Clip {
        uploaded: Box::new(uploaded),
        raw,
        decision,
    }
}

/// The clip and device of an unreadable notification, when those two fields are readable.
fn reply_to(payload: &[u8]) -> Option<(ClipId, DeviceId)> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let clip_id = value.get("clip_id")?.as_str()?.parse().ok()?;
    let device = value.get("device")?.as_str()?.parse().ok()?;
    Some((clip_id, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::EXAMPLE;
    use bytes_for_test::publish;

    mod bytes_for_test {
        pub fn publish(payload: &str) -> rumqttc::Publish {
            rumqttc::Publish::new(
                "cap/prod/ingest/uploaded",
                rumqttc::QoS::AtLeastOnce,
                payload.as_bytes().to_vec(),
            )
        }
    }

    #[test]
    fn a_valid_notification_goes_to_verification() {
        let env: Env = "prod".parse().unwrap();
        assert!(matches!(
            classify(&env, &publish(EXAMPLE)),
            Item::Clip { decision: None, .. }
        ));
    }

    #[test]
    fn another_environment_is_rejected_as_wrong_env() {
        let env: Env = "dev".parse().unwrap();
        match classify(&env, &publish(EXAMPLE)) {
            Item::Clip {
                decision: Some(Decision::Rejected(reason)),
                ..
            } => assert!(reason.starts_with("wrong env"), "{reason}"),
            _ => panic!("not rejected"),
        }
    }

    #[test]
    fn garbage_is_poison_and_says_whom_to_tell_when_it_can() {
        let env: Env = "prod".parse().unwrap();
        assert!(matches!(
            classify(&env, &publish("{not json")),
            Item::Poison { reply_to: None, .. }
        ));
        let partial = r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","device":"pi-07"}"#;
        assert!(matches!(
            classify(&env, &publish(partial)),
            Item::Poison {
                reply_to: Some(_),
                ..
            }
        ));
    }
}
