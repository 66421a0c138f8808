//! Service tokens: the credentials of machine callers (the core system, scripts), kept in the
//! catalog database (`api_tokens`, migration 0002).
//!
//! # Format
//!
//! `cit_{id}_{secret}`: `cit_` says what it is (and lets secret scanners find a leaked one),
//! `id` is 12 characters `[a-z0-9]` and public (it names the token in `token list`, `token
//! revoke` and the logs), `secret` is 32 random bytes in base64url (43 characters). Both come
//! from the operating system's random generator.
//!
//! # What is stored
//!
//! The id, the SHA-256 of the secret, the name, scopes, environments and expiry. The token
//! itself is printed once by `cloud-ingest token create` and exists nowhere else: a database
//! dump does not let anyone call the API. A random 256-bit secret needs no slow password hash.
//!
//! # Checking a token
//!
//! Look the row up by id, compare the SHA-256 of the presented secret with the stored one in
//! constant time ([`subtle`]), and only then tell revoked and expired tokens apart from valid
//! ones: without the secret a caller learns nothing about a token but "not recognized".

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::catalog::{CatalogError, Pool};
use crate::principal::{Principal, Scope, Via};

/// What every service token starts with.
pub const PREFIX: &str = "cit_";
const ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
const SECRET_LEN: usize = 43;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// The longest `--expires-in` (no expiry at all is `None`).
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("token name {0:?}: must match ^[A-Za-z0-9][A-Za-z0-9._@-]{{0,63}}$")]
    Name(String),
    #[error("a live token is already named {0:?}: revoke it first or pick another name")]
    NameTaken(String),
    #[error("a token needs at least one scope ({})", Scope::list())]
    NoScope,
    #[error("environment {0:?}: {1}")]
    Env(String, capture_protocol::InvalidId),
    #[error("a lifetime of {0:?} is longer than 10 years: leave the expiry out instead")]
    Expiry(Duration),
    #[error("no live token has the name or id {0:?}")]
    NotFound(String),
    #[error("{0:?} is the name of one live token and the id of another: revoke by id")]
    Ambiguous(String),
    #[error("the operating system's random generator failed")]
    Random,
}

impl From<tokio_postgres::Error> for TokenError {
    fn from(error: tokio_postgres::Error) -> Self {
        TokenError::Catalog(CatalogError::Db(error))
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    /// `None`: any environment.
    pub environments: Option<Vec<String>>,
    /// `None`: never expires.
    pub expires_in: Option<Duration>,
}

/// A token just created: the only time its text exists.
pub struct Created {
    pub id: String,
    /// `cit_{id}_{secret}`: print it once, never log it.
    pub token: String,
    pub expires_at: Option<String>,
}

impl fmt::Debug for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Created")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A token as `token list` shows it: everything but the secret (which is not stored).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub environments: Option<Vec<String>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

/// What a presented service token turned out to be.
#[derive(Debug)]
pub enum Checked {
    Valid(Principal),
    /// Not a token of ours, or the secret does not match.
    Unknown,
    Revoked {
        id: String,
    },
    Expired {
        id: String,
    },
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The id and secret of a well-formed token, or `None`.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| ID_ALPHABET.contains(&b));
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// A new token: `(id, token)`.
fn generate() -> Result<(String, String), TokenError> {
    let rng = SystemRandom::new();
    // Rejection sampling keeps every id character uniform.
    let mut id = String::with_capacity(ID_LEN);
    let limit = 256 - 256 % ID_ALPHABET.len();
    while id.len() < ID_LEN {
        let mut byte = [0u8; 1];
        rng.fill(&mut byte).map_err(|_| TokenError::Random)?;
        if usize::from(byte[0]) < limit {
            id.push(char::from(
                ID_ALPHABET[usize::from(byte[0]) % ID_ALPHABET.len()],
            ));
        }
    }
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut secret).map_err(|_| TokenError::Random)?;
    let token = format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    Ok((id, token))
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Text of a timestamptz column in UTC, RFC 3339.
fn utc(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

/// Creates a token; returns its text (the only time it exists).
pub async fn create(pool: &Pool, spec: &TokenSpec) -> Result<Created, TokenError> {
    if !valid_name(&spec.name) {
        return Err(TokenError::Name(spec.name.clone()));
    }
    if spec.scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    for env in spec.environments.iter().flatten() {
        env.parse::<capture_protocol::Env>()
            .map_err(|e| TokenError::Env(env.clone(), e))?;
    }
    let expires_in = match spec.expires_in {
        Some(lifetime) if lifetime > MAX_LIFETIME => return Err(TokenError::Expiry(lifetime)),
        Some(lifetime) => i64::try_from(lifetime.as_secs()).ok(),
        None => None,
    };
    let (id, token) = generate()?;
    let (_, secret) = split(&token).ok_or(TokenError::Random)?;
    let scopes: Vec<String> = spec.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            &format!(
                "INSERT INTO api_tokens (id, name, secret_sha256, scopes, environments, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, now() + $6::bigint * interval '1 second') \
                 ON CONFLICT DO NOTHING RETURNING {}",
                utc("expires_at")
            ),
            &[
                &id,
                &spec.name,
                &hash(secret),
                &scopes,
                &spec.environments,
                &expires_in,
            ],
        )
        .await?;
    // No row: the live name (or, never in practice, the random id) exists already.
    let row = row.ok_or_else(|| TokenError::NameTaken(spec.name.clone()))?;
    Ok(Created {
        id,
        token,
        expires_at: row.get(0),
    })
}

/// Every token, newest first.
pub async fn list(pool: &Pool) -> Result<Vec<TokenInfo>, TokenError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT id, name, scopes, environments, {}, {}, {}, {}, \
                 CASE WHEN revoked_at IS NOT NULL THEN 'revoked' \
                      WHEN expires_at <= now() THEN 'expired' ELSE 'active' END \
                 FROM api_tokens ORDER BY created_at DESC, id",
                utc("created_at"),
                utc("expires_at"),
                utc("revoked_at"),
                utc("last_used_at"),
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let state: String = row.get(8);
            TokenInfo {
                id: row.get(0),
                name: row.get(1),
                scopes: row.get(2),
                environments: row.get(3),
                created_at: row.get(4),
                expires_at: row.get(5),
                revoked_at: row.get(6),
                last_used_at: row.get(7),
                state: match state.as_str() {
                    "revoked" => "revoked",
                    "expired" => "expired",
                    _ => "active",
                },
            }
        })
        .collect())
}

/// Revokes the live token with this name or id; returns its id and name. Takes effect on the
/// next request: tokens are looked up on every request, never cached.
pub async fn revoke(pool: &Pool, name_or_id: &str) -> Result<(String, String), TokenError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, name FROM api_tokens WHERE revoked_at IS NULL AND (id = $1 OR name = $1) \
             FOR UPDATE",
            &[&name_or_id],
        )
        .await?;
    let row = match rows.as_slice() {
        [] => return Err(TokenError::NotFound(name_or_id.to_owned())),
        [row] => row,
        _ => return Err(TokenError::Ambiguous(name_or_id.to_owned())),
    };
    let (id, name): (String, String) = (row.get(0), row.get(1));
    tx.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok((id, name))
}

/// Checks a presented token (already known to have the service-token format).
pub async fn check(pool: &Pool, id: &str, secret: &str) -> Result<Checked, CatalogError> {
    let conn = pool.get().await?;
    let row = conn
        .query_opt(
            "SELECT name, secret_sha256, scopes, environments, revoked_at IS NOT NULL, \
             expires_at IS NOT NULL AND expires_at <= now() FROM api_tokens WHERE id = $1",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Checked::Unknown);
    };
    let stored: Vec<u8> = row.get(1);
    if !bool::from(stored.as_slice().ct_eq(&hash(secret))) {
        return Ok(Checked::Unknown);
    }
    if row.get::<_, bool>(4) {
        return Ok(Checked::Revoked { id: id.to_owned() });
    }
    if row.get::<_, bool>(5) {
        return Ok(Checked::Expired { id: id.to_owned() });
    }
    let scopes: Vec<String> = row.get(2);
    Ok(Checked::Valid(Principal {
        name: row.get(0),
        via: Via::Token { id: id.to_owned() },
        scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        environments: row.get(3),
    }))
}

/// Notes that a token was used (at most once a minute per token, so that requests do not
/// turn into writes).
pub async fn touch(pool: &Pool, id: &str) -> Result<(), CatalogError> {
    pool.get()
        .await?
        .execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[&id],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape_and_differ() {
        let (id, token) = generate().expect("token");
        let (split_id, secret) = split(&token).expect("well formed");
        assert_eq!(split_id, id);
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(secret.len(), SECRET_LEN);
        assert!(token.starts_with("cit_"));
        assert_ne!(generate().expect("token").1, token);
    }

    #[test]
    fn only_well_formed_tokens_split() {
        let secret = "A".repeat(SECRET_LEN);
        assert!(split(&format!("cit_abcdefghij12_{secret}")).is_some());
        for bad in [
            format!("cit_abcdefghij1_{secret}"),
            format!("cit_ABCDEFGHIJ12_{secret}"),
            format!("cit_abcdefghij12-{secret}"),
            format!("cit_abcdefghij12_{secret}A"),
            format!("cit_abcdefghij12_{}", "+".repeat(SECRET_LEN)),
            format!("xit_abcdefghij12_{secret}"),
            "cit_".to_owned(),
            "cit_é".to_owned(),
        ] {
            assert!(split(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_are_safe_for_logs() {
        for good in ["core-system", "backup.script", "ana@factory", "a"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-x", "two words", "new\nline", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn created_tokens_do_not_show_in_debug_output() {
        let created = Created {
            id: "abc".into(),
            token: "cit_secret".into(),
            expires_at: None,
        };
        assert!(!format!("{created:?}").contains("cit_secret"));
    }
}
