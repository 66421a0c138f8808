//! Who may call the HTTP API, and what for.
//!
//! # Authentication: every `/v1/` request, two ways
//!
//! `Authorization: Bearer <token>`, where the token is either
//!
//! - a **service token** (`cit_...`, [`tokens`]) for machine callers: created, listed and
//!   revoked with `cloud-ingest token create|list|revoke`, looked up in the catalog database on
//!   every request (a revocation counts from the next request on); or
//! - an **OIDC JWT** ([`jwt`], [`jwks`]) issued to a person by the company's identity provider,
//!   when `[auth.oidc]` is configured: signature checked against the provider's published keys,
//!   `iss`, `aud`, `exp`/`nbf` checked, scopes taken from a configurable claim.
//!
//! There is no switch that turns authentication off. `/healthz`, `/readyz` and (unless it is
//! on its own address, `http.metrics_listen`) `/metrics` are open; they tell nothing about
//! orders.
//!
//! # Authorization
//!
//! Each route needs one [`Scope`]: `clips:read` for orders and clips (presigned URLs),
//! `stations:read` for the fleet view. A caller limited to some environments (a token created
//! with `--env`, or a JWT's `environments_claim`) is refused by an ingest of another one.
//!
//! # Answers
//!
//! | status | code | when |
//! | --- | --- | --- |
//! | 401 | `unauthenticated` | no bearer token |
//! | 401 | `invalid_token` | not recognized, revoked, expired, bad signature, wrong issuer or audience... |
//! | 403 | `insufficient_scope` | a valid caller without the route's scope |
//! | 403 | `env_not_allowed` | a valid caller not allowed in this ingest's environment |
//! | 503 | `unavailable` | PostgreSQL or the provider's keys cannot be reached |
//!
//! 401 and 403 carry `WWW-Authenticate: Bearer realm="cloud-ingest"` with the RFC 6750 `error`
//! (and `scope` for 403). Messages are fixed text; nothing the caller sent is echoed.
//!
//! # Hygiene
//!
//! Tokens and JWTs are never logged, never put into an error, and never `Debug`-printed
//! ([`tokens::Created`] redacts). Refusals are logged with their reason and, for a service token
//! whose secret matched, its public id. Secret comparison is constant-time.

pub mod cli;
pub mod jwks;
pub mod jwt;
pub mod tokens;

use std::sync::Arc;

use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use crate::principal::{Principal, Scope, UnknownScope, Via};

use crate::api_error::ApiError;
use crate::catalog::Pool;
use crate::config::{Config, OidcConfig};
use crate::jwa::Algorithm;
use crate::telemetry::Metrics;

use self::jwks::{Jwks, JwksError, NoKey};
use self::jwt::{ClaimMapping, ClaimRules, JwtError};
use self::tokens::Checked;

/// `realm` of every `WWW-Authenticate` challenge.
const REALM: &str = "cloud-ingest";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Invalid(&'static str),
    Scope(Scope),
    Env,
    Unavailable(&'static str),
}

impl Denied {
    fn into_error(self) -> ApiError {
        let challenge = |extra: String| format!("Bearer realm=\"{REALM}\"{extra}");
        match self {
            Denied::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this route needs Authorization: Bearer <token>".to_owned(),
            )
            .with_challenge(challenge(String::new())),
            Denied::Invalid(why) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", why.to_owned())
                    .with_challenge(challenge(format!(
                        ", error=\"invalid_token\", error_description=\"{why}\""
                    )))
            }
            Denied::Scope(scope) => ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this route needs the scope {scope}"),
            )
            .with_challenge(challenge(format!(
                ", error=\"insufficient_scope\", scope=\"{scope}\""
            ))),
            Denied::Env => ApiError::new(
                StatusCode::FORBIDDEN,
                "env_not_allowed",
                "the caller is not allowed in this environment".to_owned(),
            )
            .with_challenge(challenge(", error=\"insufficient_scope\"".to_owned())),
            Denied::Unavailable(what) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                what.to_owned(),
            ),
        }
    }
}

/// Setting up authentication failed (the provider's CA file).
#[derive(Debug, thiserror::Error)]
#[error("setting up OIDC authentication: {0}")]
pub struct AuthSetupError(#[from] JwksError);

/// Single sign-on: the provider's keys and the rules for its tokens.
#[derive(Debug)]
struct Oidc {
    jwks: Jwks,
    algorithms: Vec<Algorithm>,
    rules: ClaimRules,
    mapping: ClaimMapping,
}

impl Oidc {
    fn new(config: &OidcConfig, metrics: Arc<Metrics>) -> Result<Oidc, AuthSetupError> {
        Ok(Oidc {
            jwks: Jwks::new(
                &config.jwks_url,
                config.ca_file.as_deref(),
                config.jwks_max_age,
                config.jwks_min_refresh,
                metrics,
            )?,
            // Validation proved every name parses.
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|name| Algorithm::from_name(name))
                .collect(),
            rules: ClaimRules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway: i64::try_from(config.clock_skew.as_secs()).unwrap_or(300),
            },
            mapping: ClaimMapping {
                scopes_claim: config.scopes_claim.clone(),
                roles: config
                    .roles
                    .iter()
                    .map(|(role, scopes)| {
                        (
                            role.clone(),
                            scopes.iter().filter_map(|s| s.parse().ok()).collect(),
                        )
                    })
                    .collect(),
                name_claim: config.name_claim.clone(),
                environments_claim: config.environments_claim.clone(),
            },
        })
    }

    async fn principal(&self, token: &str) -> Result<Principal, Denied> {
        let unverified = jwt::parse(token, &self.algorithms).map_err(invalid)?;
        let key = self
            .jwks
            .key(unverified.kid.as_deref(), unverified.alg)
            .await
            .map_err(|no_key| match no_key {
                NoKey::Unknown => invalid(JwtError::UnknownKey),
                NoKey::Unavailable => {
                    Denied::Unavailable("the identity provider's keys cannot be fetched")
                }
            })?;
        let claims = unverified.verify(&key).map_err(invalid)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.rules.check(&claims, now).map_err(invalid)?;
        self.mapping.principal(&claims).map_err(invalid)
    }
}

fn invalid(error: JwtError) -> Denied {
    Denied::Invalid(error.reason())
}

/// Authenticates API requests: service tokens always, JWTs when OIDC is configured.
#[derive(Debug)]
pub struct Authenticator {
    pool: Arc<Pool>,
    oidc: Option<Oidc>,
    env: String,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(
        config: &Config,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
    ) -> Result<Authenticator, AuthSetupError> {
        let oidc = config
            .auth
            .oidc
            .as_ref()
            .map(|oidc| Oidc::new(oidc, metrics.clone()))
            .transpose()?;
        Ok(Authenticator {
            pool,
            oidc,
            env: config.env.clone(),
            metrics,
        })
    }

    /// Fetches the provider's keys now rather than on the first request (no-op without OIDC).
    pub async fn prefetch(&self) {
        if let Some(oidc) = &self.oidc {
            oidc.jwks.refresh().await;
        }
    }

    /// The caller a request's `Authorization` header stands for.
    async fn principal(&self, headers: &HeaderMap) -> Result<Principal, Denied> {
        let token = bearer(headers)?;
        if let Some((id, secret)) = tokens::split(token) {
            return match tokens::check(&self.pool, id, secret).await {
                Ok(Checked::Valid(principal)) => {
                    let (pool, id) = (self.pool.clone(), id.to_owned());
                    tokio::spawn(async move {
                        if let Err(error) = tokens::touch(&pool, &id).await {
                            tracing::debug!(error = %error, token_id = %id, "noting token use failed");
                        }
                    });
                    Ok(principal)
                }
                Ok(Checked::Unknown) => Err(Denied::Invalid("token not recognized")),
                Ok(Checked::Revoked { id }) => {
                    tracing::info!(token_id = %id, "revoked service token presented");
                    Err(Denied::Invalid("token revoked"))
                }
                Ok(Checked::Expired { id }) => {
                    tracing::info!(token_id = %id, "expired service token presented");
                    Err(Denied::Invalid("token expired"))
                }
                Err(error) => {
                    tracing::warn!(error = %error, "checking a service token failed");
                    Err(Denied::Unavailable("the token store cannot be reached"))
                }
            };
        }
        match &self.oidc {
            Some(oidc) if !token.starts_with(tokens::PREFIX) => oidc.principal(token).await,
            _ => Err(Denied::Invalid("token not recognized")),
        }
    }
}

/// The bearer token of a request: exactly one `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, Denied> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            Denied::Invalid("more than one Authorization header")
        } else {
            Denied::Missing
        });
    };
    let value = value
        .to_str()
        .map_err(|_| Denied::Invalid("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Err(Denied::Missing)
            } else {
                Ok(token)
            }
        }
        _ => Err(Denied::Invalid("only Bearer authorization is accepted")),
    }
}

/// Middleware on every `/v1/` route: authenticates the caller, checks the environment and puts
/// the [`Principal`] into the request's extensions.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let refused = match auth.principal(request.headers()).await {
        Ok(principal) if principal.allowed_in(&auth.env) => {
            request.extensions_mut().insert(principal);
            return next.run(request).await;
        }
        Ok(principal) => {
            tracing::info!(caller = %principal.name, via = %principal.via, env = %auth.env,
                "API caller refused: not allowed in this environment");
            Denied::Env
        }
        Err(denied) => {
            if let Denied::Invalid(reason) = &denied {
                // The path as requested (inside /v1 the router sees it without the prefix).
                let path = request
                    .extensions()
                    .get::<OriginalUri>()
                    .map_or_else(|| request.uri().path(), |uri| uri.path());
                tracing::info!(reason, path, "API request refused: invalid credentials");
            }
            denied
        }
    };
    count_denied(&auth.metrics, &refused);
    refused.into_error().into_response()
}

/// Middleware of one route: the authenticated caller must hold `scope`.
pub async fn require_scope(
    State((scope, metrics)): State<(Scope, Arc<Metrics>)>,
    request: Request,
    next: Next,
) -> Response {
    match request.extensions().get::<Principal>() {
        Some(principal) if principal.scopes.contains(&scope) => next.run(request).await,
        principal => {
            if let Some(principal) = principal {
                tracing::info!(caller = %principal.name, via = %principal.via, scope = %scope,
                    "API caller refused: scope missing");
            }
            let denied = match principal {
                Some(_) => Denied::Scope(scope),
                // Only reachable if a route were mounted outside `authenticate`.
                None => Denied::Missing,
            };
            count_denied(&metrics, &denied);
            denied.into_error().into_response()
        }
    }
}

fn count_denied(metrics: &Metrics, denied: &Denied) {
    match denied {
        Denied::Missing | Denied::Invalid(_) => Metrics::inc(&metrics.api_unauthenticated),
        Denied::Scope(_) | Denied::Env => Metrics::inc(&metrics.api_forbidden),
        Denied::Unavailable(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
        }
        map
    }

    #[test]
    fn the_bearer_token_is_read_from_exactly_one_header() {
        assert_eq!(bearer(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer(&headers(&["bearer  abc "])), Ok("abc"));
        assert_eq!(bearer(&headers(&[])), Err(Denied::Missing));
        assert_eq!(bearer(&headers(&["Bearer "])), Err(Denied::Missing));
        assert!(matches!(
            bearer(&headers(&["Basic YTpi"])),
            Err(Denied::Invalid(_))
        ));
        assert!(matches!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(Denied::Invalid(_))
        ));
    }
}
