//! The cloud ingest: verifies every upload the agents announce, keeps the catalog in
//! PostgreSQL and emits a completion CloudEvent to the core system over RabbitMQ.
//!
//! # The life of a notification
//!
//! ```text
//! agent ─MQTT uploaded─> consumer (shared subscription, manual acks)
//!       ─> verify (HEAD / full hash against the notification)
//!       ─> catalog::commit (clip row + outbox event, one transaction)
//!       ─> MQTT ack, confirm to cap/{env}/device/{device}/confirm
//! outbox relay ─> RabbitMQ exchange capture.events (persistent, confirmed) ─> row marked sent
//! station events, commands, replies ─> expected (shared subscription) ─> expected_clips
//!       ─> sweep: overdue clips (clip.overdue via the outbox), unanswered starts
//! api (axum) ─> auth (service tokens, OIDC JWTs, scopes) ─> catalog, presigned URLs (audited),
//!                station status; health, readiness, metrics (optionally on their own address)
//! ```
//!
//! The service is stateless: every replica consumes from the same shared subscription and
//! runs a relay; PostgreSQL is the only state. [`run`] takes the shutdown signal as a future
//! (the binary wires SIGTERM and ctrl-c to it); the library installs no signal handler.
//!
//! Modules, in groups that import only from the groups after them (within a group, only
//! `api_error` uses `catalog` and `telemetry` uses `rejection`; `scripts/module-graph
//! cloud-ingest/src` checks that there is no cycle): the tasks [`consumer`] (MQTT link and worker), [`outbox`]
//! (relay to AMQP), [`retention`] (pruning the outbox and poison tables), [`expected`] (the
//! clips the stations announced: their states, the overdue sweep, unanswered starts) and
//! [`api`]; what
//! they call, [`verify`] and [`auth`] (who may call the API: service tokens, OIDC; the `token`
//! CLI); the shared leaves [`catalog`] (+ `migrations/`), [`clip_state`] (how a clip's state
//! moves, for the catalog and [`expected`]), [`api_error`], [`stations`],
//! [`shutdown`], [`telemetry`] (metrics) and [`rejection`] (metric labels of rejection
//! reasons); and at the bottom [`config`] (file, environment overrides, validation, secrets),
//! [`principal`] (scopes, the authenticated caller) and [`jwa`] (signature algorithms).

#![forbid(unsafe_code)]

pub mod api;
pub mod api_error;
pub mod auth;
pub mod catalog;
pub mod clip_state;
pub mod config;
pub mod consumer;
pub mod expected;
pub mod jwa;
pub mod outbox;
pub mod principal;
pub mod rejection;
pub mod retention;
pub mod shutdown;
pub mod stations;
pub mod telemetry;
pub mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::{Notify, mpsc, watch};

use crate::auth::{AuthSetupError, Authenticator};
use crate::catalog::{CatalogError, Pool};
use crate::config::{Config, ConfigError, Secrets};
use crate::consumer::Worker;
use crate::outbox::Relay;
use crate::shutdown::{Backoff, sleep_or_shutdown};
use crate::stations::Stations;
use crate::telemetry::Metrics;
use crate::verify::Verifier;

#[cfg(test)]
pub(crate) mod testdata {
    /// The uploaded notification of the protocol documentation (env `prod`).
    pub(crate) const EXAMPLE: &str = r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","device":"pi-07","station":"pack-03","camera":"top","order":"SO-2026-000123","kind":"video","bucket":"factory-media","key":"prod/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4","size":73400320,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","content_type":"video/mp4","started_at":"2026-11-23T10:00:00Z","ended_at":"2026-11-23T10:00:45Z","duration_ms":45000,"preroll_ms":3000,"truncated":false,"clock_synced":true,"meta":{}}"#;
}

/// The ingest's version, as reported by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid env: {0}")]
    Env(#[from] capture_protocol::InvalidId),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("binding the HTTP listener on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Http(#[source] std::io::Error),
}

/// Applies the embedded migrations (`cloud-ingest migrate`); returns the versions applied.
pub async fn migrate(config: &Config) -> Result<Vec<i32>, RunError> {
    let secrets = config.secrets()?;
    let pool = Pool::from_config(&config.postgres, secrets.postgres_password.as_deref())?;
    Ok(catalog::migrate(&pool).await?)
}

/// The S3 client for a configuration.
pub fn store_client(config: &Config, secrets: &Secrets) -> aws_sdk_s3::Client {
    let settings = capture_objstore::StoreSettings::new(
        &config.store.endpoint,
        &config.store.region,
        config.store.access_key_id.clone().unwrap_or_default(),
        secrets.s3_secret_access_key.clone().unwrap_or_default(),
    )
    .with_path_style(config.store.path_style)
    .with_request_timeouts(config.store.attempt_timeout, config.store.operation_timeout);
    capture_objstore::client(&settings)
}

/// Runs the service until `shutdown` resolves, then drains: the batch in hand is committed and
/// acknowledged (or left unacknowledged for redelivery), the relay finishes its round, the HTTP
/// server stops accepting. The caller bounds the drain with its grace period.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let env = config.env()?;
    let secrets = config.secrets()?;
    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(Pool::from_config(
        &config.postgres,
        secrets.postgres_password.as_deref(),
    )?);
    let stations = Arc::new(Stations::default());
    let s3 = store_client(&config, &secrets);
    let wake = Arc::new(Notify::new());

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // HTTP first, so that /healthz answers while the dependencies come up.
    let auth = Arc::new(Authenticator::new(&config, pool.clone(), metrics.clone())?);
    let state = api::ApiState {
        pool: pool.clone(),
        s3: s3.clone(),
        presign_ttl: config.store.presign_ttl,
        stations: stations.clone(),
        metrics: metrics.clone(),
        stalled_after: config.http.stalled_after,
        expected: config.expected.clone(),
    };
    let metrics_apart = config.http.metrics_listen.clone();
    let mut servers = vec![
        serve(
            &config.http.listen,
            api::router(state.clone(), auth.clone(), metrics_apart.is_none()),
            stop.clone(),
        )
        .await?,
    ];
    if let Some(listen) = &metrics_apart {
        servers.push(serve(listen, api::metrics_router(state), stop.clone()).await?);
    }
    tracing::info!(
        listen = %config.http.listen,
        metrics = %metrics_apart.as_deref().unwrap_or("on the API address"),
        service_tokens = true,
        oidc_issuer = %config.auth.oidc.as_ref().map_or("off", |o| o.issuer.as_str()),
        "HTTP API listening; every /v1/ route needs a bearer token"
    );
    tokio::spawn(async move { auth.prefetch().await });

    // The catalog schema, retried until PostgreSQL answers.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut waiting = stop.clone();
    loop {
        match catalog::migrate(&pool).await {
            Ok(applied) => {
                tracing::info!(?applied, "catalog schema is current");
                break;
            }
            Err(error) => {
                tracing::warn!(error = %error, retry_in = ?backoff.current(), "migrating the catalog failed");
                if sleep_or_shutdown(backoff.current(), &mut waiting).await {
                    for server in servers {
                        let _ = server.await;
                    }
                    return Ok(());
                }
                backoff.double();
            }
        }
    }

    let relay = Relay {
        pool: pool.clone(),
        url: secrets.amqp_url.clone(),
        exchange: config.amqp.exchange.clone(),
        batch: config.amqp.batch,
        poll_interval: config.amqp.poll_interval,
        unroutable_retry_max: config.amqp.unroutable_retry_max,
        wake: wake.clone(),
        metrics: metrics.clone(),
    };
    let relays: Vec<_> = (0..config.amqp.relays)
        .map(|_| tokio::spawn(relay.clone().run(stop.clone())))
        .collect();
    let pruner = retention::Pruner {
        pool: pool.clone(),
        config: config.retention.clone(),
        metrics: metrics.clone(),
    };
    let pruning = tokio::spawn(pruner.run(stop.clone()));
    let sweeper = expected::sweep::Sweeper {
        env: env.clone(),
        pool: pool.clone(),
        config: config.expected.clone(),
        stations: stations.clone(),
        metrics: metrics.clone(),
        wake: wake.clone(),
    };
    let sweeping = tokio::spawn(sweeper.run(stop.clone()));

    let options = consumer::mqtt_options(&config.mqtt, secrets.mqtt_password.as_deref());
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    let (to_worker, from_link) = mpsc::unbounded_channel();
    let (to_tracker, from_link_stations) = mpsc::unbounded_channel();
    let routes = consumer::Routes {
        to_worker,
        to_tracker,
        stations,
    };
    let link = tokio::spawn(consumer::drive_link(
        eventloop,
        client.clone(),
        env.clone(),
        routes,
        metrics.clone(),
        stop.clone(),
    ));
    let tracker = expected::Tracker {
        env: env.clone(),
        client: client.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        max_batch: config.mqtt.max_batch,
        poison_payload_max: config.retention.poison_payload_max_bytes,
    };
    let tracking = tokio::spawn(tracker.run(from_link_stations, stop.clone()));
    tracing::info!(
        env = %env,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        client_id = %config.mqtt.client_id,
        store = %config.store.endpoint,
        bucket = %config.store.bucket,
        exchange = %config.amqp.exchange,
        "cloud ingest running"
    );
    let worker = Worker {
        env,
        client: client.clone(),
        verifier: Verifier::new(s3, config.store.bucket.clone(), config.store.verify),
        pool,
        wake,
        metrics,
        max_batch: config.mqtt.max_batch,
        concurrency: config.store.concurrency,
        poison_payload_max: config.retention.poison_payload_max_bytes,
    };
    worker.run(from_link, stop.clone()).await;
    let _ = tracking.await;

    // Drain: the worker has finished its batch; let the link flush acks and confirms.
    let mut link = link;
    let flushed = async {
        let _ = client.disconnect().await;
        let _ = (&mut link).await;
    };
    if tokio::time::timeout(Duration::from_secs(2), flushed)
        .await
        .is_err()
    {
        link.abort();
    }
    for relay in relays {
        let _ = relay.await;
    }
    let _ = pruning.await;
    let _ = sweeping.await;
    for server in servers {
        if let Ok(Err(error)) = server.await {
            return Err(RunError::Http(error));
        }
    }
    tracing::info!("cloud ingest stopped");
    Ok(())
}

/// Binds `listen` and serves `app` on a task of its own until `stop`.
async fn serve(
    listen: &str,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, RunError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }))
}
