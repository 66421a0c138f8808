//! The cloud ingest: verifies every upload the agents announce, keeps the catalog in
//! PostgreSQL and emits a completion CloudEvent to the core system over RabbitMQ.

/// The ingest's version, as reported by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
