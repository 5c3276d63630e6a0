//! The one error type of `aic-codec`.
//!
//! Recoverability, in Symphonia's terms:
//! * [`CodecError::Bitstream`] on one frame is recoverable: drop that frame (the decoder conceals it).
//! * [`CodecError::Container`] / [`CodecError::Manifest`] are fatal for that file / model.
//! * [`CodecError::AtFrame`] wraps either kind with the index of the frame it came from.
//! * [`CodecError::InvalidConfig`] is a caller mistake, reported before anything runs.

use crate::bitstream::BitstreamError;
use crate::bitstream::container::ContainerError;
use crate::manifest::ManifestError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("invalid codec configuration: {0}")]
    InvalidConfig(String),
    #[error("unknown codec {name:?} (registered: {registered})")]
    UnknownCodec { name: String, registered: String },
    #[error("codec {name:?} is registered but not available: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("frame has {got} samples, codec {codec} takes exactly {expected}")]
    FrameSize {
        codec: String,
        expected: usize,
        got: usize,
    },
    #[error("corrupt frame: {0}")]
    Bitstream(#[from] BitstreamError),
    #[error("corrupt container: {0}")]
    Container(#[from] ContainerError),
    #[error("model manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("libopus: {0}")]
    Opus(String),
    #[error("resampler: {0}")]
    Resample(String),
    #[error("inference backend: {0}")]
    Backend(String),
    /// An error from one frame of a stream (`container::decode`), with the frame's index.
    /// `error` is shown inline, not as a `source`, so error chains do not print it twice.
    #[error("frame {index}: {error}")]
    AtFrame { index: u64, error: Box<CodecError> },
}
