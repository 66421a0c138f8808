//! The error answer of the HTTP API: a status, a stable code and a message, as JSON
//! (`{"error":{"code":"bad_order","message":"..."}}`), with a `WWW-Authenticate` challenge on
//! a 401 or 403. Both [`crate::api`] (its routes) and [`crate::auth`] (its refusals) answer with
//! it; the codes are listed in docs/api.md.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::catalog::CatalogError;

/// An error answer: status, code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `WWW-Authenticate` of a 401 or 403.
    challenge: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
            challenge: None,
        }
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: String) -> ApiError {
        self.challenge = Some(challenge);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(challenge) = self
            .challenge
            .and_then(|c| header::HeaderValue::from_str(&c).ok())
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
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
        ApiError::new(status, code, error.to_string())
    }
}
