//! The HTTP API (axum): the catalog for people and systems that need the videos of an order.
//!
//! | route | scope | answer |
//! | --- | --- | --- |
//! | `GET /v1/orders/{order}/clips` | `clips:read` | the clips of an order, each with a presigned GET URL and its state; the clips known only from the stations' events (`expected`, with where each is and since when); its unanswered starts |
//! | `GET /v1/overdue` | `clips:read` | overdue clips and unanswered starts, by station, with the station's presence |
//! | `GET /v1/clips/{id}` | `clips:read` | one clip, with a presigned GET URL and its state; a clip known only from the stations' events, with its order, where it is and since when |
//! | `GET /v1/stations` | `stations:read` | the last retained status of every station (online/offline, queue) |
//! | `GET /healthz` | open | 200 while the process serves (liveness) |
//! | `GET /readyz` | open | 200 when MQTT, PostgreSQL and RabbitMQ are reachable and the consumer is not stalled (`http.stalled_after`), else 503 |
//! | `GET /metrics` | open | Prometheus text; on `http.metrics_listen` when that is set |
//!
//! Every `/v1/` request, unknown paths included, goes through [`auth::authenticate`] first
//! (401 without valid credentials), then the route's [`auth::require_scope`] (403).
//!
//! Errors are JSON, `{"error":{"code":"bad_order","message":"..."}}`: `400` for an order or
//! clip id that breaks the id rules (`bad_order`, `bad_clip_id`) or a bad `ttl` (`bad_ttl`),
//! `401`/`403` (see [`auth`]), `404` (`not_found`) for an id the catalog does not know, `503`
//! (`unavailable`) when PostgreSQL cannot be reached, `500` (`internal`) otherwise.
//!
//! Presigned URLs are signed locally (no request to the store); only accepted clips get one.
//! They live `store.presign_ttl`, or less when the caller asks with `?ttl=` (e.g. `?ttl=2m`);
//! a longer wish is capped at `store.presign_ttl`. Every URL handed out is logged as an audit
//! event (target `audit`, message `clip URL issued`) with the caller's name, the order, the clip
//! and the object key, never with the URL or its signature.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use capture_protocol::{ClipId, OrderId, Status, Timestamp, Uploaded};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::api_error::ApiError;
use crate::auth::{self, Authenticator};
use crate::catalog::{self, Decision, Pool, StoredClip};
use crate::clip_state::ClipState;
use crate::config::ExpectedConfig;
use crate::expected::store::{self as expected, Deadlines, ExpectedClip, Unanswered};
use crate::principal::{Principal, Scope};
use crate::stations::Stations;
use crate::telemetry::Metrics;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub pool: Arc<Pool>,
    pub s3: aws_sdk_s3::Client,
    /// The lifetime of presigned URLs, and the longest a caller may ask for.
    pub presign_ttl: Duration,
    pub stations: Arc<Stations>,
    pub metrics: Arc<Metrics>,
    /// Not ready when notifications are in hand and the consumer made no progress for this
    /// long (see [`crate::telemetry::Progress`]).
    pub stalled_after: Duration,
    /// When a clip is overdue and a start unanswered.
    pub expected: ExpectedConfig,
}

/// The router of the whole API; `/metrics` only when `with_metrics` (else it is served by
/// [`metrics_router`] on its own address).
pub fn router(state: ApiState, auth: Arc<Authenticator>, with_metrics: bool) -> Router {
    let counters = state.metrics.clone();
    let scope = |scope: Scope| from_fn_with_state((scope, counters.clone()), auth::require_scope);
    let v1 = Router::new()
        .route(
            "/orders/{order}/clips",
            get(order_clips).route_layer(scope(Scope::ClipsRead)),
        )
        .route(
            "/clips/{id}",
            get(one_clip).route_layer(scope(Scope::ClipsRead)),
        )
        .route(
            "/overdue",
            get(overdue).route_layer(scope(Scope::ClipsRead)),
        )
        .route(
            "/stations",
            get(stations).route_layer(scope(Scope::StationsRead)),
        )
        // Unknown /v1/ paths answer 404 only to authenticated callers.
        .fallback(not_found)
        .layer(from_fn_with_state(auth, auth::authenticate));
    let router = Router::new()
        .nest("/v1", v1)
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready));
    let router = if with_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// `/metrics` alone, for `http.metrics_listen`.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route".to_owned(),
    )
}

/// Query parameters of the routes that hand out presigned URLs.
#[derive(Debug, Deserialize)]
pub struct UrlQuery {
    /// A shorter lifetime for the URLs, e.g. `2m` (capped at `store.presign_ttl`).
    ttl: Option<String>,
}

/// One clip in an answer.
#[derive(Debug, Serialize)]
pub struct ClipView {
    #[serde(flatten)]
    pub uploaded: Uploaded,
    pub status: &'static str,
    /// Its life's state ([`ClipState`]): `accepted` or `rejected` for a clip in the catalog.
    pub state: &'static str,
    /// Since when it has been in that state, when the expected clips know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub received_at: String,
    /// Presigned GET URL (accepted clips only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_expires_at: Option<Timestamp>,
}

impl ApiState {
    /// The lifetime of the URLs of one request: the caller's wish, capped by the config.
    fn url_ttl(&self, query: &UrlQuery) -> Result<Duration, ApiError> {
        let Some(text) = &query.ttl else {
            return Ok(self.presign_ttl);
        };
        let wish = humantime::parse_duration(text)
            .ok()
            .filter(|ttl| *ttl >= Duration::from_secs(1))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_ttl",
                    "ttl must be a duration of at least 1s, like 90s or 5m".to_owned(),
                )
            })?;
        Ok(wish.min(self.presign_ttl))
    }

    /// One clip as the API shows it; a presigned URL for an accepted clip, audited.
    async fn view(
        &self,
        clip: StoredClip,
        caller: &Principal,
        ttl: Duration,
    ) -> Result<ClipView, ApiError> {
        let (status, reason) = match clip.decision {
            Decision::Accepted => ("accepted", None),
            Decision::Rejected(reason) => ("rejected", Some(reason)),
        };
        let (url, url_expires_at) = if status == "accepted" {
            let url = self.presign(&clip.uploaded, ttl).await?;
            let expires = Timestamp::try_from(time::OffsetDateTime::now_utc() + ttl).ok();
            Metrics::inc(&self.metrics.clip_urls_issued);
            tracing::info!(
                target: "audit",
                caller = %caller.name,
                via = %caller.via,
                order = %clip.uploaded.order,
                clip_id = %clip.uploaded.clip_id,
                bucket = %clip.uploaded.bucket,
                key = %clip.uploaded.key,
                ttl_s = ttl.as_secs(),
                "clip URL issued"
            );
            (Some(url), expires)
        } else {
            (None, None)
        };
        Ok(ClipView {
            uploaded: clip.uploaded,
            status,
            state: status,
            state_since: None,
            reason,
            received_at: clip.received_at,
            url,
            url_expires_at,
        })
    }

    async fn presign(&self, uploaded: &Uploaded, ttl: Duration) -> Result<String, ApiError> {
        let internal =
            |message: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message);
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| internal(format!("presigning: {e}")))?;
        let request = self
            .s3
            .get_object()
            .bucket(&uploaded.bucket)
            .key(&uploaded.key)
            .presigned(config)
            .await
            .map_err(|e| internal(format!("presigning {}: {e}", uploaded.key)))?;
        Ok(request.uri().to_owned())
    }
}

async fn order_clips(
    State(state): State<ApiState>,
    Extension(caller): Extension<Principal>,
    Path(order): Path<String>,
    Query(query): Query<UrlQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let order: OrderId = order.parse().map_err(|e: capture_protocol::InvalidId| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_order", e.to_string())
    })?;
    let ttl = state.url_ttl(&query)?;
    let (clips, known, unanswered) = futures::try_join!(
        catalog::clips_of_order(&state.pool, order.as_str()),
        expected::clips_of_order(&state.pool, order.as_str(), state.deadlines()),
        expected::unanswered(
            &state.pool,
            Some(order.as_str()),
            state.expected.reply_timeout
        ),
    )?;
    if clips.is_empty() && known.is_empty() && unanswered.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no clips for order {order}"),
        ));
    }
    let mut known: std::collections::BTreeMap<String, ExpectedClip> = known
        .into_iter()
        .map(|clip| (clip.clip_id.clone(), clip))
        .collect();
    let mut views = Vec::with_capacity(clips.len());
    for clip in clips {
        let life = known.remove(clip.uploaded.clip_id.as_str());
        let mut view = state.view(clip, &caller, ttl).await?;
        if let Some(life) = life {
            view.state = life.state.as_str();
            view.state_since = Some(life.since);
        }
        views.push(view);
    }
    // Clips known only from the stations' events: not (or not yet) in the catalog.
    let pending: Vec<ExpectedView> = known
        .into_values()
        .map(|clip| state.expected_view(clip))
        .collect();
    let starts: Vec<serde_json::Value> = unanswered
        .iter()
        .map(|start| state.unanswered_view(start))
        .collect();
    Ok(axum::Json(json!({
        "order": order,
        "clips": views,
        "expected": pending,
        "unanswered_starts": starts,
    })))
}

async fn one_clip(
    State(state): State<ApiState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<UrlQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let clip_id: ClipId = id.parse().map_err(|e: capture_protocol::InvalidId| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_clip_id", e.to_string())
    })?;
    let ttl = state.url_ttl(&query)?;
    let (clip, life) = futures::try_join!(
        catalog::clip(&state.pool, &clip_id),
        expected::clip(&state.pool, clip_id.as_str(), state.deadlines()),
    )?;
    match (clip, life) {
        (Some(clip), life) => {
            let mut view = state.view(clip, &caller, ttl).await?;
            if let Some(life) = life {
                view.state = life.state.as_str();
                view.state_since = Some(life.since);
            }
            Ok(axum::Json(serde_json::to_value(view).map_err(internal)?))
        }
        // Known only from the stations' events: where it is and since when, as in the order's
        // `expected` list, with its order.
        (None, Some(life)) => {
            let order = life.order.clone();
            let mut view = serde_json::to_value(state.expected_view(life)).map_err(internal)?;
            view["order"] = json!(order);
            Ok(axum::Json(view))
        }
        (None, None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no clip {clip_id}"),
        )),
    }
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// A clip the stations announced that is not in the catalog: its state, where it is and
/// since when.
#[derive(Debug, Serialize)]
pub struct ExpectedView {
    pub clip_id: String,
    pub station: String,
    pub camera: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when it has been in `state`.
    pub since: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Recorded and not accepted within `expected.overdue_after`.
    pub overdue: bool,
    /// When it was first found overdue (its `clip.overdue` event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overdue_since: Option<String>,
    pub location: Location,
}

/// Where a clip not in the catalog is.
#[derive(Debug, Serialize)]
pub struct Location {
    /// `station` (recording, queued, failed or rejected: the station keeps it until it is
    /// accepted), `store` (uploaded, its notification not yet decided) or `nowhere` (aborted).
    pub at: &'static str,
    pub station: String,
    /// `online`, `offline` or `unknown`, from the station's retained status.
    pub station_state: &'static str,
    /// The time of that status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station_since: Option<Timestamp>,
    /// Since when the clip has been there.
    pub since: String,
}

impl ApiState {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            overdue_after: self.expected.overdue_after,
            max_recording: self.expected.max_recording,
        }
    }

    fn expected_view(&self, clip: ExpectedClip) -> ExpectedView {
        let at = match clip.state {
            ClipState::Uploaded => "store",
            ClipState::Aborted => "nowhere",
            _ => "station",
        };
        let (station_state, station_since) = self.stations.presence(&clip.station);
        ExpectedView {
            location: Location {
                at,
                station: clip.station.clone(),
                station_state,
                station_since,
                since: clip.since.clone(),
            },
            clip_id: clip.clip_id,
            station: clip.station,
            camera: clip.camera,
            state: clip.state.as_str(),
            reason: clip.reason,
            since: clip.since,
            first_seen: clip.first_seen,
            last_seen: clip.last_seen,
            overdue: clip.overdue,
            overdue_since: clip.overdue_at,
        }
    }

    fn unanswered_view(&self, start: &Unanswered) -> serde_json::Value {
        let (station_state, _) = self.stations.presence(&start.station);
        json!({
            "station": start.station,
            "command_id": start.command_id,
            "order": start.order,
            "seen_at": start.seen_at,
            "station_state": station_state,
        })
    }
}

/// `GET /v1/overdue`: overdue clips and unanswered starts, by station.
async fn overdue(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let (clips, starts) = futures::try_join!(
        expected::overdue(&state.pool, state.deadlines()),
        expected::unanswered(&state.pool, None, state.expected.reply_timeout),
    )?;
    let mut by_station: std::collections::BTreeMap<String, (Vec<ExpectedView>, Vec<_>)> =
        std::collections::BTreeMap::new();
    for clip in clips {
        let station = clip.station.clone();
        by_station
            .entry(station)
            .or_default()
            .0
            .push(state.expected_view(clip));
    }
    for start in &starts {
        by_station
            .entry(start.station.clone())
            .or_default()
            .1
            .push(state.unanswered_view(start));
    }
    let stations: Vec<serde_json::Value> = by_station
        .into_iter()
        .map(|(station, (clips, starts))| {
            let (station_state, station_since) = state.stations.presence(&station);
            json!({
                "station": station,
                "station_state": station_state,
                "station_since": station_since,
                "clips": clips,
                "unanswered_starts": starts,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "overdue_after": humantime::format_duration(state.expected.overdue_after).to_string(),
        "stations": stations,
    })))
}

async fn stations(State(state): State<ApiState>) -> impl IntoResponse {
    let stations: Vec<Status> = state.stations.snapshot();
    axum::Json(json!({"stations": stations}))
}

async fn ready(State(state): State<ApiState>) -> impl IntoResponse {
    let mqtt = state.metrics.mqtt_up.load(Ordering::Relaxed);
    let amqp = state.metrics.amqp_up.load(Ordering::Relaxed);
    let postgres = matches!(
        tokio::time::timeout(Duration::from_secs(2), catalog::ping(&state.pool)).await,
        Ok(Ok(()))
    );
    let idle = state.metrics.progress.idle();
    let consuming = idle < state.stalled_after;
    let ready = mqtt && amqp && postgres && consuming;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "ready": ready,
            "mqtt": mqtt,
            "postgres": postgres,
            "amqp": amqp,
            "consumer": {
                "progressing": consuming,
                "in_hand": state.metrics.progress.in_hand(),
                "idle_seconds": idle.as_secs(),
            },
        })),
    )
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
