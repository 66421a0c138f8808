//! The outbox relay: publishes the CloudEvents the catalog committed to RabbitMQ.
//!
//! # Data flow
//!
//! ```text
//! catalog::commit ──(same transaction)──> outbox row (sent_at NULL) ──wake──> Relay
//! Relay: BEGIN; SELECT .. FOR UPDATE SKIP LOCKED LIMIT batch; publish all (pipelined);
//!        await every publisher confirm; UPDATE sent_at = now(); COMMIT
//! ```
//!
//! # Invariants
//!
//! - A row is marked sent only after RabbitMQ **confirmed** its message (publisher confirms,
//!   persistent `delivery_mode = 2`, durable topic exchange). A nack, a lost connection or a
//!   crash leaves the row unsent; it is published again later: delivery is at least once, and
//!   the stable CloudEvent id (also the AMQP `message_id`) lets the core system deduplicate.
//! - **An event nobody can receive is not sent.** Messages are published `mandatory`: when no
//!   queue is bound for the routing key (the core system's queue is not declared or bound yet,
//!   a binding was removed), RabbitMQ returns the message (`basic.return`) before it confirms
//!   it, and lapin hands the returned message back with the confirmation. Such a row stays
//!   unsent: `returns` counts the returns, `retry_at` holds it back 1 s, 2 s, 4 s, ... up to
//!   `amqp.unroutable_retry_max`, so that unroutable rows never starve routable ones. The
//!   `ingest_outbox_unroutable` gauge counts them (alert `IngestEventsUnroutable`). Once a queue
//!   is bound the next try delivers the event, with the same id.
//! - `FOR UPDATE SKIP LOCKED` lets every replica run several relays without two of them publishing
//!   the same row in the same round.
//! - RabbitMQ being down only delays events: the relay reconnects with exponential backoff
//!   (capped) and finds every unsent row still in the table. PostgreSQL being down likewise.
//! - Rows are published in id order within a round; ordering across replicas is not promised
//!   (the core system must not need it: each event stands alone).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};

use crate::catalog::{CatalogError, Pool};
use crate::shutdown::{Backoff, sleep_or_shutdown};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ connection is no longer open")]
    Disconnected,
    #[error("RabbitMQ refused event {event_id} (nack)")]
    Nacked { event_id: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl From<tokio_postgres::Error> for RelayError {
    fn from(e: tokio_postgres::Error) -> Self {
        RelayError::Catalog(CatalogError::Db(e))
    }
}

/// Publishes committed events. A process runs `amqp.relays` of them, each with its own AMQP
/// connection: while one waits for RabbitMQ's confirms (which come after RabbitMQ's disk
/// sync), another publishes the next rows; `SKIP LOCKED` keeps their rows apart.
#[derive(Debug, Clone)]
pub struct Relay {
    pub pool: Arc<Pool>,
    /// AMQP URL with credentials.
    pub url: String,
    pub exchange: String,
    pub batch: usize,
    pub poll_interval: Duration,
    /// Backoff cap of an event RabbitMQ returned as unroutable.
    pub unroutable_retry_max: Duration,
    /// Notified by the consumer after each commit.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

/// First and longest wait before the relay retries RabbitMQ or the outbox.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

impl Relay {
    /// Runs until `shutdown` turns true; the round in hand is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
        while !*shutdown.borrow() {
            let (connection, channel) = match self.connect().await {
                Ok(link) => link,
                Err(error) => {
                    self.metrics.amqp_up.store(false, Ordering::Relaxed);
                    self.count_pending().await;
                    Metrics::inc(&self.metrics.retries_relay);
                    tracing::warn!(error = %error, retry_in = ?backoff.current(), "connecting to RabbitMQ failed");
                    if sleep_or_shutdown(backoff.current(), &mut shutdown).await {
                        break;
                    }
                    backoff.double();
                    continue;
                }
            };
            tracing::info!(exchange = %self.exchange, "connected to RabbitMQ");
            self.metrics.amqp_up.store(true, Ordering::Relaxed);
            backoff.reset();
            let error = self
                .publish_until_broken(&connection, &channel, &mut shutdown)
                .await;
            self.metrics.amqp_up.store(false, Ordering::Relaxed);
            let _ = connection.close(200, "cloud-ingest relay".into()).await;
            match error {
                None => break,
                Some(error) => {
                    Metrics::inc(&self.metrics.retries_relay);
                    tracing::warn!(error = %error, "RabbitMQ link lost; reconnecting");
                    if sleep_or_shutdown(backoff.current(), &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes rounds until the AMQP link breaks (`Some(error)`) or shutdown (`None`).
    async fn publish_until_broken(
        &self,
        connection: &Connection,
        channel: &Channel,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<RelayError> {
        let mut db_backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP);
        loop {
            if *shutdown.borrow() {
                return None;
            }
            match self.round(channel).await {
                Ok(published) if published == self.batch => continue,
                Ok(_) => {
                    db_backoff.reset();
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.poll_interval) => {}
                        _ = shutdown.changed() => {}
                    }
                    if !connection.status().connected() {
                        return Some(RelayError::Disconnected);
                    }
                }
                Err(RelayError::Catalog(error)) => {
                    Metrics::inc(&self.metrics.retries_relay);
                    self.metrics.postgres_up.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %error, "reading the outbox failed; retrying");
                    if sleep_or_shutdown(db_backoff.current(), shutdown).await {
                        return None;
                    }
                    db_backoff.double();
                }
                Err(error) => return Some(error),
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, Channel), RelayError> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((connection, channel))
    }

    /// One round: publish up to `batch` unsent rows, mark the confirmed ones sent.
    /// Returns how many were published.
    async fn round(&self, channel: &Channel) -> Result<usize, RelayError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let limit = i64::try_from(self.batch).unwrap_or(i64::MAX);
        let rows = tx
            .query(
                "SELECT id, event_id, routing_key, body FROM outbox WHERE sent_at IS NULL \
                 AND (retry_at IS NULL OR retry_at <= now()) \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await?;
        self.metrics.postgres_up.store(true, Ordering::Relaxed);
        if rows.is_empty() {
            tx.commit().await?;
            drop(conn);
            // Rows held back after a return are still pending.
            self.count_pending().await;
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let event_id: String = row.get(1);
            let routing_key: String = row.get(2);
            let body: String = row.get(3);
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(capture_protocol::CONTENT_TYPE.into())
                .with_message_id(event_id.as_str().into());
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body.as_bytes(),
                    properties,
                )
                .await?;
            confirms.push((row.get::<_, i64>(0), event_id, confirm));
        }
        // lapin attaches a returned message to the next confirmation it resolves, which need
        // not be the returned message's own (acks may cover several messages): returned
        // messages are matched to their rows by message id, never by position.
        let mut acked = Vec::with_capacity(confirms.len());
        let mut returned_ids = HashSet::new();
        let mut nacked = None;
        for (id, event_id, confirm) in confirms {
            let confirmation = confirm.await?;
            let ack = confirmation.is_ack();
            if let Some(message) = confirmation.take_message() {
                let returned_id = message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    event_id = %returned_id,
                    routing_key = %message.delivery.routing_key,
                    exchange = %self.exchange,
                    reply = %message.reply_text,
                    "RabbitMQ returned an event as unroutable (no queue bound); it stays in the outbox"
                );
                returned_ids.insert(returned_id);
            }
            if ack {
                acked.push((id, event_id));
            } else {
                nacked.get_or_insert(event_id);
            }
        }
        let (returned, sent): (Vec<_>, Vec<_>) = acked
            .into_iter()
            .partition(|(_, event_id)| returned_ids.contains(event_id));
        let sent: Vec<i64> = sent.into_iter().map(|(id, _)| id).collect();
        let returned: Vec<i64> = returned.into_iter().map(|(id, _)| id).collect();
        tx.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)",
            &[&sent],
        )
        .await?;
        if !returned.is_empty() {
            let cap = self.unroutable_retry_max.as_secs_f64();
            tx.execute(
                "UPDATE outbox SET returns = returns + 1, \
                 retry_at = now() + least(power(2::float8, least(returns, 30)), $2::float8) \
                 * interval '1 second' WHERE id = ANY($1)",
                &[&returned, &cap],
            )
            .await?;
        }
        tx.commit().await?;
        drop(conn);
        self.metrics
            .events_published
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
        self.metrics
            .events_returned
            .fetch_add(returned.len() as u64, Ordering::Relaxed);
        self.count_pending().await;
        tracing::debug!(published = sent.len(), "outbox round");
        if let Some(event_id) = nacked {
            return Err(RelayError::Nacked { event_id });
        }
        Ok(rows.len())
    }
}

impl Relay {
    /// Updates the `ingest_outbox_pending` and `ingest_outbox_oldest_seconds` gauges, and
    /// whether PostgreSQL answers (best effort: it may be down too).
    async fn count_pending(&self) {
        let Ok(conn) = self.pool.get().await else {
            self.metrics.postgres_up.store(false, Ordering::Relaxed);
            return;
        };
        let counted = conn
            .query_one(
                "SELECT count(*), \
                        COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8, \
                        count(*) FILTER (WHERE returns > 0) \
                 FROM outbox WHERE sent_at IS NULL",
                &[],
            )
            .await;
        self.metrics
            .postgres_up
            .store(counted.is_ok(), Ordering::Relaxed);
        if let Ok(row) = counted {
            let pending: i64 = row.get(0);
            let oldest: f64 = row.get(1);
            let unroutable: i64 = row.get(2);
            self.metrics
                .outbox_unroutable
                .store(u64::try_from(unroutable).unwrap_or(0), Ordering::Relaxed);
            self.metrics
                .outbox_pending
                .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
            self.metrics
                .outbox_oldest_secs
                .store(oldest.max(0.0) as u64, Ordering::Relaxed);
        }
    }
}
