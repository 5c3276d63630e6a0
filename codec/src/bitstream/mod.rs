//! The AIC wire formats (spec: `docs/bitstream.md`).
//!
//! * [`range`] — the range coder that entropy-codes codebook indices.
//! * [`frame`] — one 20 ms AIC frame: a 2-byte header and the coded indices.
//! * [`container`] — the `.aic` file: a self-describing header, then length-prefixed packets.
//!
//! Every parser here takes untrusted bytes: it returns a typed error, never panics, and never
//! allocates more than the bounded sizes its header allows. Each has a fuzz target in `fuzz/`.

pub mod archive;
pub mod container;
pub mod frame;
pub mod range;

pub use frame::{EntropyModel, FrameHeader};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BitstreamError {
    #[error("frame is empty")]
    Empty,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("unsupported AIC bitstream version {0} (this build reads version 1)")]
    Version(u8),
    #[error("frame level {level} is outside 1..={max} for this model")]
    Level { level: u8, max: u8 },
    #[error(
        "integrity check failed (crc {got:#04x}, expected {expected:#04x}): corrupt frame or a different model"
    )]
    Integrity { got: u8, expected: u8 },
    #[error("entropy-coded payload is corrupt")]
    CorruptPayload,
    #[error("symbol {symbol} is outside the alphabet of {alphabet}")]
    SymbolOutOfRange { symbol: usize, alphabet: usize },
    #[error("bad frequency table: {0}")]
    BadFreqTable(String),
    #[error("{got} indices given, level needs {expected}")]
    IndexCount { got: usize, expected: usize },
}
