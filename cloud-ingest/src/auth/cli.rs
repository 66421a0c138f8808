//! `cloud-ingest token create|list|revoke`: service tokens, managed against the catalog
//! database the configuration names (migrations are applied first, so a fresh database works).
//!
//! `create` prints the token alone on stdout, once (`TOKEN=$(cloud-ingest token create ...)`),
//! and what was created on stderr. `list` shows ids, names, scopes, environments, dates and
//! state, never a secret (none is stored). `revoke` takes a name or an id.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::tokens::{self, TokenError, TokenInfo, TokenSpec};
use crate::catalog::{self, CatalogError};
use crate::config::{Config, ConfigError};
use crate::principal::Scope;

/// Why a `token` subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The configuration naming the catalog database.
#[derive(Debug, Args)]
pub struct ConfigPath {
    #[arg(long, short, env = "CLOUD_INGEST_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it. It is shown this once: only its hash is stored.
    Create {
        #[command(flatten)]
        config: ConfigPath,
        /// What the token is for, e.g. core-system: shown by `list` and in the audit log.
        #[arg(long)]
        name: String,
        /// A scope the token grants: clips:read, stations:read (repeat or comma-separate).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<Scope>,
        /// An environment the token may be used in (repeat); default: any.
        #[arg(long = "env", value_delimiter = ',')]
        environments: Vec<String>,
        /// Lifetime, e.g. "90d"; default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List every token (never a secret: none is stored).
    List {
        #[command(flatten)]
        config: ConfigPath,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a live token by name or id: refused from the next request on.
    Revoke {
        #[command(flatten)]
        config: ConfigPath,
        name_or_id: String,
    },
}

impl TokenCommand {
    /// The configuration file the command works with.
    pub fn config(&self) -> &Path {
        match self {
            TokenCommand::Create { config, .. }
            | TokenCommand::List { config, .. }
            | TokenCommand::Revoke { config, .. } => &config.config,
        }
    }
}

/// Runs one `token` subcommand.
pub async fn run(config: &Config, command: TokenCommand) -> Result<(), TokenCliError> {
    let secrets = config.secrets()?;
    let pool = catalog::Pool::from_config(&config.postgres, secrets.postgres_password.as_deref())?;
    catalog::migrate(&pool).await?;
    match command {
        TokenCommand::Create {
            config: _,
            name,
            scopes,
            environments,
            expires_in,
        } => {
            let spec = TokenSpec {
                name,
                scopes: scopes.into_iter().collect::<BTreeSet<_>>(),
                environments: (!environments.is_empty()).then_some(environments),
                expires_in,
            };
            let created = tokens::create(&pool, &spec).await?;
            println!("{}", created.token);
            eprintln!(
                "created token {name} (id {id}; scopes {scopes}; environments {envs}; expires {expires})\n\
                 it is shown only this once: put it into the caller's secret store now",
                name = spec.name,
                id = created.id,
                scopes = spec
                    .scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                envs = spec
                    .environments
                    .as_ref()
                    .map_or("any".to_owned(), |e| e.join(",")),
                expires = created.expires_at.as_deref().unwrap_or("never"),
            );
        }
        TokenCommand::List { json, .. } => {
            let list = tokens::list(&pool).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".to_owned())
                );
            } else {
                print!("{}", table(&list));
            }
        }
        TokenCommand::Revoke { name_or_id, .. } => {
            let (id, name) = tokens::revoke(&pool, &name_or_id).await?;
            eprintln!("revoked token {name} (id {id})");
        }
    }
    Ok(())
}

/// The tokens as an aligned text table.
fn table(list: &[TokenInfo]) -> String {
    let header = [
        "ID",
        "NAME",
        "SCOPES",
        "ENVIRONMENTS",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ];
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.name.clone(),
                t.scopes.join(","),
                t.environments
                    .as_ref()
                    .map_or("any".to_owned(), |e| e.join(",")),
                t.state.to_owned(),
                t.created_at.clone(),
                t.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
                t.last_used_at.clone().unwrap_or_else(|| "never".to_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
