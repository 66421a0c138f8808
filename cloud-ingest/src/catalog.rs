//! The catalog in PostgreSQL: clips, the event outbox, poison messages, the API's service
//! tokens ([`crate::auth::tokens`]), and the migrations that create them (`migrations/*.sql`,
//! embedded in the binary).
//!
//! # Invariants
//!
//! - **One row per clip**, keyed by the clip's ULID. [`commit`] inserts with
//!   `ON CONFLICT DO NOTHING`; a duplicate notification changes nothing and emits nothing. The
//!   only transition is `rejected -> accepted` (the agent re-uploaded a clip that failed
//!   verification; the key is the same, the object was overwritten). An accepted clip is final.
//! - **Catalog row and event in one transaction.** Every row written or changed by [`commit`]
//!   puts its CloudEvent into `outbox` in the same transaction, so that an event is never lost
//!   (RabbitMQ may be down: the relay publishes it later) and never exists for a clip that is
//!   not in the catalog. Event ids are unique (`{clip_id}:{routing key}`), a second insert of the
//!   same event is a no-op.
//! - **A batch is one transaction.** The consumer commits many notifications at once and only
//!   then acknowledges them to the broker; a crash before the commit means redelivery, which
//!   the upsert makes harmless.
//!
//! # Connections
//!
//! [`Pool`] is a small fixed set of connections, each created lazily and replaced when it is
//! found closed, so a PostgreSQL restart costs failed attempts (retried by the callers with
//! backoff) and nothing else. Statements of one batch are pipelined on one connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capture_protocol::{ClipEvent, ClipId, Env, Timestamp, Uploaded};
use futures::future::try_join_all;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::{Client, NoTls};

use crate::clip_state::{self, ClipState, StateChange};
use crate::config::PostgresConfig;

/// Embedded migrations, applied in order, each once (`schema_migrations` keeps count).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_catalog.sql")),
    (2, include_str!("../migrations/0002_api_tokens.sql")),
    (
        3,
        include_str!("../migrations/0003_unroutable_and_retention.sql"),
    ),
    (4, include_str!("../migrations/0004_expected_clips.sql")),
    (5, include_str!("../migrations/0005_clip_items.sql")),
];

/// Advisory lock key that serializes migrations of concurrently starting replicas.
const MIGRATION_LOCK: i64 = 0x0CA9_7001;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("connecting to PostgreSQL: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("invalid PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("stored notification of clip {clip_id} is unreadable: {message}")]
    Corrupt { clip_id: String, message: String },
    #[error("serializing a CloudEvent: {0}")]
    Json(#[from] serde_json::Error),
}

/// A fixed set of lazily (re)connected PostgreSQL connections.
#[derive(Debug)]
pub struct Pool {
    config: tokio_postgres::Config,
    slots: Vec<Arc<Mutex<Option<Client>>>>,
    next: AtomicUsize,
}

/// A connection borrowed from the [`Pool`]; returned when dropped.
#[derive(Debug)]
pub struct Conn {
    guard: OwnedMutexGuard<Option<Client>>,
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Conn is only built after the slot was filled.
        self.guard.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.guard.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Pool {
    /// A pool for `url` (password given separately, from its secret file).
    pub fn new(
        url: &str,
        password: Option<&str>,
        size: usize,
        connect_timeout: Duration,
    ) -> Result<Pool, CatalogError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(CatalogError::Url)?;
        if let Some(password) = password {
            config.password(password);
        }
        config.connect_timeout(connect_timeout);
        config.application_name("cloud-ingest");
        Ok(Pool {
            config,
            slots: (0..size.max(1))
                .map(|_| Arc::new(Mutex::new(None)))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The pool the configuration describes (`[postgres]`), with the password from its
    /// secret file.
    pub fn from_config(
        config: &PostgresConfig,
        password: Option<&str>,
    ) -> Result<Pool, CatalogError> {
        Pool::new(
            &config.url,
            password,
            config.pool_size,
            config.connect_timeout,
        )
        .map(|pool| pool.with_statement_timeout(config.statement_timeout))
    }

    /// The same pool with PostgreSQL's `statement_timeout` set on every connection it opens:
    /// a statement running longer is cancelled by the server (SQLSTATE 57014) and fails like
    /// any other database error, which the callers retry.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Pool {
        let millis = timeout.as_millis().max(1);
        self.config
            .options(format!("-c statement_timeout={millis}").as_str());
        self
    }

    /// A connection: a free one if any, else waits for one; reconnects a closed one.
    pub async fn get(&self) -> Result<Conn, CatalogError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.slots[(start + i) % n].clone().try_lock_owned() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % n].clone().lock_owned().await,
        };
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let timeout = self
                .config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5));
            let (client, connection) = tokio::time::timeout(timeout, self.config.connect(NoTls))
                .await
                .map_err(|_| CatalogError::ConnectTimeout(timeout))?
                .map_err(CatalogError::Connect)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "PostgreSQL connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(Conn { guard })
    }
}

/// Applies the embedded migrations not yet applied. Safe to run from several replicas at once.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, CatalogError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied.push(*version);
        }
    }
    tx.commit().await?;
    Ok(applied)
}

/// What verification decided about one clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accepted,
    Rejected(String),
}

/// A verified notification to record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub uploaded: Uploaded,
    /// The notification as received.
    pub raw: String,
    pub decision: Decision,
}

/// A payload that could not be read as a notification.
#[derive(Debug, Clone)]
pub struct Poison {
    pub topic: String,
    /// The payload, cut to the configured maximum ([`Poison::new`]).
    pub payload: Vec<u8>,
    /// The size of the payload as received.
    pub payload_size: i64,
    pub error: String,
}

impl Poison {
    /// A poison row for `payload`, whose first `max_bytes` bytes are kept.
    pub fn new(topic: &str, payload: &[u8], max_bytes: usize, error: String) -> Poison {
        Poison {
            topic: topic.to_owned(),
            payload: payload[..payload.len().min(max_bytes)].to_vec(),
            payload_size: i64::try_from(payload.len()).unwrap_or(i64::MAX),
            error,
        }
    }
}

/// What [`commit`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Written (or changed from rejected to accepted), with its event in the outbox.
    New(Decision),
    /// Already in the catalog: nothing changed; the stored decision.
    Duplicate(Decision),
}

impl Recorded {
    /// The decision the device is told.
    pub fn decision(&self) -> &Decision {
        match self {
            Recorded::New(d) | Recorded::Duplicate(d) => d,
        }
    }
}

const INSERT_CLIP: &str = "INSERT INTO clips (clip_id, order_id, device, station, camera, kind, \
     bucket, object_key, size, sha256, started_at, ended_at, status, reason, notification, items) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::timestamptz, \
     $12::text::timestamptz, $13, $14, $15, $16::text::jsonb) \
     ON CONFLICT (clip_id) DO NOTHING RETURNING 1";

const LOCK_CLIP: &str = "SELECT status, reason FROM clips WHERE clip_id = $1 FOR UPDATE";

const ACCEPT_CLIP: &str = "UPDATE clips SET order_id = $2, device = $3, station = $4, \
     camera = $5, kind = $6, bucket = $7, object_key = $8, size = $9, sha256 = $10, \
     started_at = $11::text::timestamptz, ended_at = $12::text::timestamptz, status = $13, \
     reason = $14, notification = $15, items = $16::text::jsonb, updated_at = now() \
     WHERE clip_id = $1";

pub(crate) const INSERT_EVENT: &str = "INSERT INTO outbox (event_id, routing_key, body) VALUES ($1, $2, $3) \
     ON CONFLICT (event_id) DO NOTHING";

pub(crate) const INSERT_POISON: &str =
    "INSERT INTO poison (topic, payload, payload_size, error) VALUES ($1, $2, $3, $4)";

/// Records a batch in one transaction: clips (idempotently), their events, their expected
/// state ([`clip_state`]), poison messages.
/// Returns one [`Recorded`] per entry, in order.
pub async fn commit(
    pool: &Pool,
    env: &Env,
    entries: &[Entry],
    poison: &[Poison],
) -> Result<Vec<Recorded>, CatalogError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let (insert, lock, accept, event, bad) = futures::try_join!(
        tx.prepare(INSERT_CLIP),
        tx.prepare(LOCK_CLIP),
        tx.prepare(ACCEPT_CLIP),
        tx.prepare(INSERT_EVENT),
        tx.prepare(INSERT_POISON),
    )?;

    let rows: Vec<ClipParams> = entries.iter().map(ClipParams::from).collect();
    // Pipelined: PostgreSQL runs them in order, so a clip twice in one batch is a duplicate
    // the second time.
    let inserted =
        try_join_all(rows.iter().map(|row| tx.execute_raw(&insert, row.params()))).await?;
    let mut recorded = Vec::with_capacity(entries.len());
    let mut changed = Vec::new();
    for ((entry, row), inserted) in entries.iter().zip(&rows).zip(inserted) {
        if inserted == 1 {
            recorded.push(Recorded::New(entry.decision.clone()));
            changed.push(entry);
            continue;
        }
        let stored = tx.query_one(&lock, &[&row.clip_id]).await?;
        let status: String = stored.get(0);
        let reason: Option<String> = stored.get(1);
        let stored = if status == "accepted" {
            Decision::Accepted
        } else {
            Decision::Rejected(reason.unwrap_or_default())
        };
        if stored != Decision::Accepted && entry.decision == Decision::Accepted {
            tx.execute_raw(&accept, row.params()).await?;
            recorded.push(Recorded::New(Decision::Accepted));
            changed.push(entry);
        } else {
            recorded.push(Recorded::Duplicate(stored));
        }
    }

    let now = Timestamp::now();
    let events = changed
        .iter()
        .map(|entry| {
            let event = match &entry.decision {
                Decision::Accepted => ClipEvent::completed(env, &entry.uploaded, now),
                Decision::Rejected(reason) => {
                    ClipEvent::rejected(env, &entry.uploaded, reason.clone(), now)
                }
            };
            Ok((
                event.id.clone(),
                event.routing_key(),
                serde_json::to_string(&event)?,
            ))
        })
        .collect::<Result<Vec<_>, CatalogError>>()?;
    try_join_all(events.iter().map(|(id, key, body)| {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [id, key, body];
        tx.execute_raw(&event, params)
    }))
    .await?;
    // The clip's expected state moves to the decision (forward only: accepted is final).
    let at = now.to_string();
    let states: Vec<StateChange> = changed
        .iter()
        .map(|entry| {
            let u = &entry.uploaded;
            let (state, reason) = match &entry.decision {
                Decision::Accepted => (ClipState::Accepted, None),
                Decision::Rejected(reason) => (ClipState::Rejected, Some(reason.clone())),
            };
            StateChange {
                clip_id: u.clip_id.to_string(),
                order: u.order.to_string(),
                station: u.station.to_string(),
                camera: u.camera.to_string(),
                state,
                reason,
                at: at.clone(),
            }
        })
        .collect();
    clip_state::record(&tx, &states).await?;
    try_join_all(poison.iter().map(|p| {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&p.topic, &p.payload, &p.payload_size, &p.error];
        tx.execute_raw(&bad, params)
    }))
    .await?;
    tx.commit().await?;
    Ok(recorded)
}

/// The parameters of one clip row, owned so the pipelined futures can borrow them.
struct ClipParams {
    clip_id: String,
    order: String,
    device: String,
    station: String,
    camera: String,
    kind: String,
    bucket: String,
    key: String,
    size: i64,
    sha256: String,
    started_at: String,
    ended_at: String,
    status: &'static str,
    reason: Option<String>,
    raw: String,
    /// The notification's `items`, as JSON text (`[]` when none).
    items: String,
}

impl From<&Entry> for ClipParams {
    fn from(entry: &Entry) -> Self {
        let u = &entry.uploaded;
        let (status, reason) = match &entry.decision {
            Decision::Accepted => ("accepted", None),
            Decision::Rejected(reason) => ("rejected", Some(reason.clone())),
        };
        ClipParams {
            clip_id: u.clip_id.to_string(),
            order: u.order.to_string(),
            device: u.device.to_string(),
            station: u.station.to_string(),
            camera: u.camera.to_string(),
            kind: u.kind.to_string(),
            bucket: u.bucket.clone(),
            key: u.key.clone(),
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            sha256: u.sha256.to_string(),
            started_at: u.started_at.to_string(),
            ended_at: u.ended_at.to_string(),
            status,
            reason,
            raw: entry.raw.clone(),
            items: serde_json::to_string(&u.items).unwrap_or_else(|_| "[]".to_owned()),
        }
    }
}

impl ClipParams {
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 16] {
        [
            &self.clip_id,
            &self.order,
            &self.device,
            &self.station,
            &self.camera,
            &self.kind,
            &self.bucket,
            &self.key,
            &self.size,
            &self.sha256,
            &self.started_at,
            &self.ended_at,
            &self.status,
            &self.reason,
            &self.raw,
            &self.items,
        ]
    }
}

/// A clip as the catalog holds it.
#[derive(Debug, Clone)]
pub struct StoredClip {
    pub uploaded: Uploaded,
    pub decision: Decision,
    /// When the catalog first saw the clip (RFC 3339, UTC).
    pub received_at: String,
}

const SELECT_CLIP: &str = "SELECT clip_id, notification, status, reason, \
     to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM clips";

fn stored_clip(row: &tokio_postgres::Row) -> Result<StoredClip, CatalogError> {
    let clip_id: String = row.get(0);
    let raw: String = row.get(1);
    let status: String = row.get(2);
    let reason: Option<String> = row.get(3);
    let uploaded = capture_protocol::decode::<Uploaded>(raw.as_bytes(), "stored notification")
        .map_err(|e| CatalogError::Corrupt {
            clip_id,
            message: e.to_string(),
        })?;
    Ok(StoredClip {
        uploaded,
        decision: if status == "accepted" {
            Decision::Accepted
        } else {
            Decision::Rejected(reason.unwrap_or_default())
        },
        received_at: row.get(4),
    })
}

/// Every clip of an order, oldest first.
pub async fn clips_of_order(pool: &Pool, order: &str) -> Result<Vec<StoredClip>, CatalogError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            &format!("{SELECT_CLIP} WHERE order_id = $1 ORDER BY started_at, clip_id"),
            &[&order],
        )
        .await?;
    rows.iter().map(stored_clip).collect()
}

/// One clip, if the catalog has it.
pub async fn clip(pool: &Pool, clip_id: &ClipId) -> Result<Option<StoredClip>, CatalogError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            &format!("{SELECT_CLIP} WHERE clip_id = $1"),
            &[&clip_id.as_str()],
        )
        .await?;
    row.as_ref().map(stored_clip).transpose()
}

/// How many rows one [`prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub outbox: u64,
    pub poison: u64,
}

/// Rows deleted per statement: short transactions, no long lock on the tables.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes the outbox rows sent more than `sent_events` ago and the poison rows received
/// more than `poison` ago, in chunks. Unsent events are never deleted.
///
/// Deleting a sent event cannot make it go out again: an event row is only ever inserted
/// when its clip row is inserted or changes from rejected to accepted ([`commit`]), and clip
/// rows are kept, so a redelivered notification is a duplicate whether or not its event is
/// still in the outbox. Several replicas pruning at once only share the work.
pub async fn prune(
    pool: &Pool,
    sent_events: Duration,
    poison: Duration,
) -> Result<Pruned, CatalogError> {
    let conn = pool.get().await?;
    let mut pruned = Pruned::default();
    for (statement, age, count) in [
        (
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE sent_at IS NOT NULL AND sent_at < now() - $1::float8 * interval '1 second' LIMIT $2)",
            sent_events,
            &mut pruned.outbox,
        ),
        (
            "DELETE FROM poison WHERE id IN (SELECT id FROM poison \
             WHERE received_at < now() - $1::float8 * interval '1 second' LIMIT $2)",
            poison,
            &mut pruned.poison,
        ),
    ] {
        let seconds = age.as_secs_f64();
        loop {
            let deleted = conn.execute(statement, &[&seconds, &PRUNE_CHUNK]).await?;
            *count += deleted;
            if deleted < PRUNE_CHUNK as u64 {
                break;
            }
        }
    }
    Ok(pruned)
}

/// Whether PostgreSQL answers.
pub async fn ping(pool: &Pool) -> Result<(), CatalogError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}
