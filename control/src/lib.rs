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
//! - [`limit`]: per-address limit on failed authentications (fed `now`) — pure.
//! - [`store`]: the SQL store (sqlx `Any`: `sqlite:` or `postgres:` URL).
//! - [`gate`]: what the codec API calls when a session opens (key check, policy, per-key stream
//!   limit) and what meters it until it ends.
//! - [`service`]: the `ControlService` gRPC implementation (admin token, audit).

#[cfg(feature = "server")]
pub mod gate;
pub mod key;
pub mod limit;
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

/// A client-supplied string for an error message or a log line: at most `max` characters,
/// quoted with control characters escaped, and the full length named when it was cut. A 1 MB
/// name must not come back whole in an error, nor a newline forge a second log line.
pub fn excerpt(s: &str, max: usize) -> String {
    let mut it = s.chars();
    let head: String = it.by_ref().take(max).collect();
    if it.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}… ({} bytes)", s.len())
    }
}

/// Checks a name a client gives a tenant or key: 1..=64 characters, none of them a control
/// character (a newline would print as a fake second row in `aic admin … list`).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0 || n > 64 {
        return Err(Error::Invalid(format!(
            "{what} name must have 1..=64 characters (got {n}: {})",
            excerpt(name, 32)
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} name may not contain control characters: {}",
            excerpt(name, 32)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(super::excerpt("opus", 8), "\"opus\"");
        let long = "x".repeat(1 << 20);
        let e = super::excerpt(&long, 16);
        assert!(e.len() < 40, "{e}");
        assert!(e.ends_with("(1048576 bytes)"), "{e}");
        assert_eq!(super::excerpt("a\nb", 8), "\"a\\nb\"");
    }

    #[test]
    fn names_are_checked() {
        assert!(super::check_name("tenant", "acme").is_ok());
        assert!(super::check_name("tenant", "").is_err());
        assert!(super::check_name("tenant", "evil\nt_123 fake").is_err());
        assert!(super::check_name("tenant", &"a".repeat(65)).is_err());
    }
}
