//! The AIC codec service that `aic serve` runs: the gRPC codec API over the batched pipeline,
//! the control sidecar beside it on the same port, and the SFU bridge link server.

pub mod bridge;
mod serve;

pub use serve::{Options, TlsFiles, run, shutdown_signal};

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
