//! The AIC codec service that `aic serve` runs: the gRPC codec API
//! (`proto/aic/v1/codec.proto`) over the batched pipeline, the control sidecar beside it, and the
//! SFU bridge link server. [`run`] serves until its shutdown future completes.
//!
//! Every gRPC session is one pipeline stream, so concurrent sessions share model calls. One
//! session's bad input ends that session with a `Status`; the others never notice.
//!
//! In this build: `EncodeStream`, `DecodeStream`, unary `Encode`/`Decode` (≤ 60 s),
//! `ListModels`, `Hints` (from the model's measured rate–quality table), the standard health
//! service, server reflection and Prometheus `/metrics`; and, beside them on the same port, the
//! control sidecar `ControlService` (`aic-control`: tenants, API keys, policy, usage, audit).
//!
//! Every codec call shows an API key when it opens (`aic_control::gate`: checked through a
//! short-TTL cache, never per frame), is held to the key's policy and concurrent-session limit,
//! and is metered until it ends; usage is flushed to the store periodically and at shutdown.
//!
//! Several models may be served side by side (`aic serve --model-dir A --model-dir B`): each
//! has its own pipeline, requests pick one by `model_id` (empty: the first, the default), and
//! one slot count (`max_streams`) holds for all of them together.
//!
//! Modules, one concern each: `bootstrap` (models, control plane, pipelines, bridge; the
//! wind-down), `grpc` (the tonic server, TLS, limits, health, reflection, `/metrics`,
//! shutdown), `svc` (the `CodecService` implementation and the checks its RPCs share), `models`
//! (the served models, picked by `model_id`; the server's one slot count; frames of the wrong
//! model), `session` (streaming sessions), `clip` (unary Encode/Decode), `hints` (Hints,
//! ListModels), [`bridge`] (the bridge link server).

pub mod bridge;

mod bootstrap;
mod clip;
mod egress;
mod grpc;
mod hints;
mod models;
mod session;
mod svc;

pub use models::{Slot, Slots};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aic_control::gate::Auth;

/// Everything `aic serve` is configured with (`aic`'s settings: flag > `AIC_*` > file > default).
pub struct Options {
    pub listen: SocketAddr,
    /// Pipeline slots of the whole server: open sessions over every model (and the bridge).
    pub max_streams: usize,
    /// Prometheus `/metrics` over HTTP (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Pipeline worker threads per served model, each with its own model sessions.
    pub workers: usize,
    /// Serve the bridge link (`aic_sfu_bridge::link`) on this Unix socket (None: off).
    pub bridge_socket: Option<std::path::PathBuf>,
    /// Who may use the bridge socket and how many at once.
    pub bridge_limits: bridge::Limits,
    /// Holds the SQLite store and the admin token file.
    pub data_dir: std::path::PathBuf,
    /// Control store: `sqlite://…` or `postgres://…`.
    pub store_url: String,
    pub auth: Auth,
    /// From the config file or `AIC_ADMIN_TOKEN`; else `<data_dir>/admin.token` (made if absent).
    pub admin_token: Option<String>,
    pub key_cache_ttl: Duration,
    pub meter_flush: Duration,
    /// How long open sessions may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// TLS on the gRPC port (None: plaintext, which the settings allow only on loopback or
    /// with `--insecure`).
    pub tls: Option<TlsFiles>,
    /// A new stream's `open` must arrive within this (DEADLINE_EXCEEDED otherwise).
    pub first_message_timeout: Duration,
    /// A stream silent for this long is ended (DEADLINE_EXCEEDED) and its slot freed.
    pub idle_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
    pub max_streams_per_connection: u32,
    /// Largest share of the slots one tenant's sessions may hold (auth on only).
    pub tenant_slot_share: f64,
    /// Failed authentications per client address and minute before it is refused.
    pub auth_failures_per_minute: u32,
    /// EgressService may push to client-named rtmp:// and srt:// URLs.
    pub egress_network: bool,
}

/// The admin token is never shown, nor the store URL's password.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("max_streams", &self.max_streams)
            .field("metrics_listen", &self.metrics_listen)
            .field("workers", &self.workers)
            .field("bridge_socket", &self.bridge_socket)
            .field("bridge_limits", &self.bridge_limits)
            .field("data_dir", &self.data_dir)
            .field("store_url", &bootstrap::redact(&self.store_url))
            .field("auth", &self.auth)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("meter_flush", &self.meter_flush)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tls", &self.tls)
            .field("first_message_timeout", &self.first_message_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .field("tenant_slot_share", &self.tenant_slot_share)
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .field("egress_network", &self.egress_network)
            .finish()
    }
}

/// PEM files for TLS on the gRPC port.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

/// Serves every model in `model_dirs` side by side (the first is the default: requests that
/// name no `model_id`, and the bridge link) until `shutdown` completes (then: no new sessions,
/// open ones get the grace period), and returns once usage is flushed. `aic serve` passes
/// [`shutdown_signal`].
pub fn run(
    model_dirs: &[PathBuf],
    opts: &Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let models = bootstrap::load_models(model_dirs, opts.workers.min(opts.max_streams))?;
    // One blocking thread per open session forwards its outputs (plus a few for unary clips
    // and the store): bounded by the slot count, so a flood of sessions cannot make threads
    // without limit (the slots refuse them first).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(opts.max_streams + 32)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (started, control) = bootstrap::start(models, opts).await?;
        grpc::serve(opts, &started, control, shutdown).await?;
        started.stop().await;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Why the service could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// What was being done when it failed; the cause is the error's source.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Control(#[from] aic_control::Error),
    /// A setting or model set that cannot be served (the message says why).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names what was being done when an error happened (the error becomes the source).
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Failed {
            what: what.to_owned(),
            source: Box::new(e),
        })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Failed {
            what: what(),
            source: Box::new(e),
        })
    }
}
