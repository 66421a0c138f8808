//! The HTTP API (axum): the catalog for people and systems that need the videos of an order.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/orders/{order}/clips` | the clips of an order, each with a presigned GET URL |
//! | `GET /v1/clips/{id}` | one clip, with a presigned GET URL |
//! | `GET /v1/stations` | the last retained status of every station (online/offline, queue) |
//! | `GET /healthz` | 200 while the process serves (liveness) |
//! | `GET /readyz` | 200 when MQTT, PostgreSQL and RabbitMQ are reachable, else 503 |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON, `{"error":{"code":"bad_order","message":"..."}}`: `400` for an order or
//! clip id that breaks the id rules (`bad_order`, `bad_clip_id`), `404` (`not_found`) for an
//! id the catalog does not know, `503` (`unavailable`) when PostgreSQL cannot be reached,
//! `500` (`internal`) otherwise. Presigned URLs are signed locally (no request to the store)
//! and live `store.presign_ttl`; only accepted clips get one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use capture_protocol::{ClipId, OrderId, Status, Timestamp, Uploaded};
use serde::Serialize;
use serde_json::json;

use crate::catalog::{self, CatalogError, Decision, Pool, StoredClip};
use crate::consumer::Stations;
use crate::telemetry::Metrics;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub pool: Arc<Pool>,
    pub s3: aws_sdk_s3::Client,
    pub presign_ttl: Duration,
    pub stations: Arc<Stations>,
    pub metrics: Arc<Metrics>,
}

/// The router of the whole API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/orders/{order}/clips", get(order_clips))
        .route("/v1/clips/{id}", get(one_clip))
        .route("/v1/stations", get(stations))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error answer: status, code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        let (status, code) = match error {
            CatalogError::Connect(_) | CatalogError::ConnectTimeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        tracing::warn!(error = %error, "API request failed");
        ApiError {
            status,
            code,
            message: error.to_string(),
        }
    }
}

/// One clip in an answer.
#[derive(Debug, Serialize)]
pub struct ClipView {
    #[serde(flatten)]
    pub uploaded: Uploaded,
    pub status: &'static str,
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
    async fn view(&self, clip: StoredClip) -> Result<ClipView, ApiError> {
        let (status, reason) = match clip.decision {
            Decision::Accepted => ("accepted", None),
            Decision::Rejected(reason) => ("rejected", Some(reason)),
        };
        let (url, url_expires_at) = if status == "accepted" {
            let url = self.presign(&clip.uploaded).await?;
            let expires = time::OffsetDateTime::now_utc() + self.presign_ttl;
            (Some(url), Timestamp::try_from(expires).ok())
        } else {
            (None, None)
        };
        Ok(ClipView {
            uploaded: clip.uploaded,
            status,
            reason,
            received_at: clip.received_at,
            url,
            url_expires_at,
        })
    }

    async fn presign(&self, uploaded: &Uploaded) -> Result<String, ApiError> {
        let internal = |message: String| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        };
        let config = PresigningConfig::expires_in(self.presign_ttl)
            .map_err(|e| internal(format!("presigning: {e}")))?;
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
    Path(order): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let order: OrderId = order
        .parse()
        .map_err(|e: capture_protocol::InvalidId| ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_order",
            message: e.to_string(),
        })?;
    let clips = catalog::clips_of_order(&state.pool, order.as_str()).await?;
    if clips.is_empty() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no clips for order {order}"),
        });
    }
    let mut views = Vec::with_capacity(clips.len());
    for clip in clips {
        views.push(state.view(clip).await?);
    }
    Ok(axum::Json(json!({"order": order, "clips": views})))
}

async fn one_clip(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let clip_id: ClipId = id
        .parse()
        .map_err(|e: capture_protocol::InvalidId| ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_clip_id",
            message: e.to_string(),
        })?;
    let clip = catalog::clip(&state.pool, &clip_id)
        .await?
        .ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no clip {clip_id}"),
        })?;
    Ok(axum::Json(state.view(clip).await?))
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
    let ready = mqtt && amqp && postgres;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"ready": ready, "mqtt": mqtt, "postgres": postgres, "amqp": amqp})),
    )
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
