//! Model execution and the neural AIC codec.
//!
//! * [`runtime`] — ONNX Runtime, loaded dynamically from the library the set-up script installs;
//!   graphs checked against the model manifest.
//! * [`model`] — a loaded AIC model: manifest, codebooks, entropy tables, encoder/decoder graphs.
//! * [`aic`] — the streaming AIC [`Encoder`](aic_codec::Encoder)/[`Decoder`](aic_codec::Decoder)
//!   (one stream at a time) and its registry entry.
//!
//! The batched many-stream pipeline (slot table, batcher, fallback) is the next issue; the
//! graphs already take a batch dimension and explicit per-stream state for it.

pub mod aic;
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
