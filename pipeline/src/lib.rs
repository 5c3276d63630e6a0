//! Model execution and the neural AIC codec.
//!
//! * [`runtime`] — ONNX Runtime, loaded dynamically from the library the set-up script installs;
//!   graphs checked against the model manifest.
//! * [`model`] — a loaded AIC model: manifest, codebooks, entropy tables, encoder/decoder graphs.
//! * [`aic`] — the streaming AIC [`Encoder`](aic_codec::Encoder)/[`Decoder`](aic_codec::Decoder)
//!   (one stream at a time) and its registry entry.
//!
//! * [`conceal`] — the one AIC packet-loss concealment, used by [`aic`] and [`engine`].
//! * [`engine`] — the batched many-stream pipeline as a sans-IO state machine: slot table,
//!   batcher with deadlines, encode / decode / transcode streams, Opus fallback, bounded queues.
//! * [`driver`] — the thin real-time driver: one worker thread, channels in and out.
//! * [`hints`] — level/Opus recommendations from the model's measured rate–quality table.
//! * [`metrics`] — histograms and counters the engine keeps.

pub mod aic;
pub mod conceal;
pub mod driver;
pub mod engine;
pub mod hints;
pub mod metrics;
pub mod model;
pub mod runtime;

pub use aic::register_aic;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error("ONNX Runtime unavailable: {0}")]
    RuntimeUnavailable(String),
    #[error("model {dir}: {why}")]
    Model { dir: String, why: String },
    #[error("execution provider {provider} unavailable: {why}")]
    Provider {
        provider: runtime::Provider,
        why: String,
    },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Codec(#[from] aic_codec::CodecError),
}

impl From<PipelineError> for aic_codec::CodecError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Codec(c) => c,
            other => aic_codec::CodecError::Backend(other.to_string()),
        }
    }
}
