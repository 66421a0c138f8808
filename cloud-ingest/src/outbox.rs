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
//! - `FOR UPDATE SKIP LOCKED` lets every replica run several relays without two of them publishing
//!   the same row in the same round.
//! - RabbitMQ being down only delays events: the relay reconnects with exponential backoff
//!   (capped) and finds every unsent row still in the table. PostgreSQL being down likewise.
//! - Rows are published in id order within a round; ordering across replicas is not promised
//!   (the core system must not need it: each event stands alone).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};

use crate::catalog::{CatalogError, Pool};
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
    /// Notified by the consumer after each commit.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Relay {
    /// Runs until `shutdown` turns true; the round in hand is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let (connection, channel) = match self.connect().await {
                Ok(link) => link,
                Err(error) => {
                    self.metrics.amqp_up.store(false, Ordering::Relaxed);
                    self.count_pending().await;
                    Metrics::inc(&self.metrics.retries_relay);
                    tracing::warn!(error = %error, retry_in = ?backoff, "connecting to RabbitMQ failed");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            tracing::info!(exchange = %self.exchange, "connected to RabbitMQ");
            self.metrics.amqp_up.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(100);
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
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
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
        let mut db_backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return None;
            }
            match self.round(channel).await {
                Ok(published) if published == self.batch => continue,
                Ok(_) => {
                    db_backoff = Duration::from_millis(100);
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
                    if sleep_or_shutdown(db_backoff, shutdown).await {
                        return None;
                    }
                    db_backoff = (db_backoff * 2).min(MAX_BACKOFF);
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
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await?;
        self.metrics.postgres_up.store(true, Ordering::Relaxed);
        if rows.is_empty() {
            tx.commit().await?;
            self.metrics.outbox_pending.store(0, Ordering::Relaxed);
            self.metrics.outbox_oldest_secs.store(0, Ordering::Relaxed);
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
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                )
                .await?;
            confirms.push((row.get::<_, i64>(0), event_id, confirm));
        }
        let mut sent = Vec::with_capacity(confirms.len());
        let mut nacked = None;
        for (id, event_id, confirm) in confirms {
            if confirm.await?.is_ack() {
                sent.push(id);
            } else {
                nacked.get_or_insert(event_id);
            }
        }
        tx.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)",
            &[&sent],
        )
        .await?;
        tx.commit().await?;
        drop(conn);
        self.metrics
            .events_published
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
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
                        COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
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
            self.metrics
                .outbox_pending
                .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
            self.metrics
                .outbox_oldest_secs
                .store(oldest.max(0.0) as u64, Ordering::Relaxed);
        }
    }
}

/// Sleeps `duration` unless shutdown comes first; true when shutting down.
pub(crate) async fn sleep_or_shutdown(
    duration: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
