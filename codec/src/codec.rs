//! The narrow traits every codec implements.
//!
//! Both work one 20 ms frame at a time, so the same objects serve files, gRPC streams and RTP.
//! Output buffers are passed in and reused: no allocation per frame in the steady state.

use crate::error::CodecError;

/// How hard a codec works: a target bitrate (Opus) or a number of residual-VQ codebooks (AIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperatingPoint {
    BitrateBps(u32),
    Level(u8),
}

impl OperatingPoint {
    /// The number stored in the `.aic` container's header for this point.
    pub fn to_raw(self) -> (u8, u32) {
        match self {
            OperatingPoint::BitrateBps(b) => (0, b),
            OperatingPoint::Level(l) => (1, u32::from(l)),
        }
    }

    pub fn from_raw(kind: u8, value: u32) -> Option<Self> {
        match kind {
            0 => Some(OperatingPoint::BitrateBps(value)),
            1 => u8::try_from(value).ok().map(OperatingPoint::Level),
            _ => None,
        }
    }
}

impl std::fmt::Display for OperatingPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatingPoint::BitrateBps(b) if b % 1000 == 0 => write!(f, "{}k", b / 1000),
            OperatingPoint::BitrateBps(b) => write!(f, "{b}bps"),
            OperatingPoint::Level(l) => write!(f, "L{l}"),
        }
    }
}

/// What a codec instance is, as far as callers need to know.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecInfo {
    /// Registry name (`opus`, `opus-osce`, `aic`).
    pub codec: String,
    /// Model id for model-based codecs, empty otherwise.
    pub model_id: String,
    pub sample_rate: u32,
    pub frame_samples: usize,
    /// How many samples the decoded output lags the input by (encoder look-ahead plus decoder
    /// overlap). Quality measurement compensates exactly this; latency reports add the frame.
    pub delay_samples: usize,
    pub point: OperatingPoint,
}

impl CodecInfo {
    /// Algorithmic latency: one frame of buffering plus the codec's delay.
    pub fn algorithmic_latency_ms(&self) -> f64 {
        (self.frame_samples + self.delay_samples) as f64 * 1000.0 / f64::from(self.sample_rate)
    }
}

pub trait Encoder: Send {
    fn info(&self) -> &CodecInfo;
    /// Encodes exactly `info().frame_samples` samples; `out` is cleared and receives one packet.
    fn encode_frame(&mut self, pcm: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Forgets all history, as for a new stream.
    fn reset(&mut self) -> Result<(), CodecError>;
}

pub trait Decoder: Send {
    fn info(&self) -> &CodecInfo;
    /// Decodes one packet, or conceals a lost one (`None`), appending exactly
    /// `info().frame_samples` samples to `out`. A corrupt packet is an error for that frame
    /// only: the caller may conceal it with `decode_frame(None, ..)` and carry on.
    fn decode_frame(&mut self, packet: Option<&[u8]>, out: &mut Vec<f32>)
    -> Result<(), CodecError>;
    fn reset(&mut self) -> Result<(), CodecError>;
}

pub(crate) fn check_frame_len(info: &CodecInfo, pcm: &[f32]) -> Result<(), CodecError> {
    if pcm.len() != info.frame_samples {
        return Err(CodecError::FrameSize {
            codec: info.codec.clone(),
            expected: info.frame_samples,
            got: pcm.len(),
        });
    }
    Ok(())
}
