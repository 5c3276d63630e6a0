//! The AIC control sidecar: tenants, API keys and their per-key policy, usage metering and the
//! audit log, kept in SQLite (default: one embedded file) or PostgreSQL (one schema, versioned
//! migrations in `migrations/`), and served as the `aic.v1.ControlService` gRPC API.
//!
//! The pieces, from pure to I/O:
//! - [`key`]: API key and admin token formats (generate, parse, hash) — pure, fuzzed.
//! - [`policy`]: what a key may do ([`policy::Policy`], [`policy::decide`]) and the key cache
//!   ([`policy::KeyCache`], fed `now`) — pure.
//! - [`meter`]: per-session usage counters (atomics; no store write per frame) and the pending
//!   totals that a flush writes.
//! - [`store`]: the SQL store (sqlx `Any`: `sqlite:` or `postgres:` URL).
//! - [`gate`]: what the codec API calls when a session opens (key check, policy, per-key stream
//!   limit) and what meters it until it ends.
//! - [`service`]: the `ControlService` gRPC implementation (admin token, audit).

#[cfg(feature = "server")]
pub mod gate;
pub mod key;
pub mod meter;
pub mod policy;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("malformed API key: {0}")]
    MalformedKey(&'static str),
    #[error("unknown API key")]
    UnknownKey,
    #[error("API key {0} was revoked")]
    Revoked(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[cfg(feature = "server")]
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[cfg(feature = "server")]
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch (the store's time unit).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
