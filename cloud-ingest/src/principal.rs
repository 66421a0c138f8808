//! Who a caller is and what it may do: the [`Scope`]s of the API and the authenticated
//! [`Principal`]. Plain data, no I/O: [`crate::auth`] produces principals (from service tokens
//! and OIDC JWTs) and checks them, [`crate::config`] validates the scopes a role grants, and
//! [`crate::api`] names the scope of each route.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A permission a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Orders and clips, with presigned URLs to the videos.
    ClipsRead,
    /// The fleet view: stations and their status.
    StationsRead,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::ClipsRead, Scope::StationsRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ClipsRead => "clips:read",
            Scope::StationsRead => "stations:read",
        }
    }

    /// Every scope, comma-separated, for messages.
    pub fn list() -> String {
        Scope::ALL.map(Scope::as_str).join(", ")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of [`Scope::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0:?} is not a scope (one of {list})", list = Scope::list())]
pub struct UnknownScope(String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A service token, by its public id.
    Token { id: String },
    /// A JWT of the identity provider.
    Oidc,
}

/// An authenticated caller: who, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name or the person's name claim: what the audit log records.
    pub name: String,
    pub via: Via,
    pub scopes: BTreeSet<Scope>,
    /// `None`: any environment.
    pub environments: Option<Vec<String>>,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Token { id } => write!(f, "token {id}"),
            Via::Oidc => f.write_str("oidc"),
        }
    }
}

impl Principal {
    /// Whether the caller may act in the ingest of `env`.
    pub(crate) fn allowed_in(&self, env: &str) -> bool {
        self.environments
            .as_ref()
            .is_none_or(|envs| envs.iter().any(|e| e == env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_their_names_only() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().ok(), Some(scope));
        }
        assert!("clips:write".parse::<Scope>().is_err());
        assert!("CLIPS:READ".parse::<Scope>().is_err());
    }

    #[test]
    fn environments_limit_a_caller_only_when_listed() {
        let mut principal = Principal {
            name: "core".into(),
            via: Via::Oidc,
            scopes: BTreeSet::new(),
            environments: None,
        };
        assert!(principal.allowed_in("prod"));
        principal.environments = Some(vec!["dev".into()]);
        assert!(principal.allowed_in("dev"));
        assert!(!principal.allowed_in("prod"));
        principal.environments = Some(vec![]);
        assert!(!principal.allowed_in("dev"));
    }
}
