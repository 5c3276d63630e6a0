//! What the media path (ingest, egress) shares: the frame size, its error type, sample
//! conversion.

use crate::rtp::RtpError;

/// One 20 ms frame at 16 kHz (the pipeline's rate).
pub const FRAME_16K: usize = 320;
/// RTP timestamp ticks per 20 ms at the 48 kHz clock of Opus and AIC.
pub const TICKS_PER_FRAME: u32 = 960;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error(transparent)]
    Rtp(#[from] RtpError),
    #[error("libopus: {0}")]
    Opus(String),
    #[error("frame of {0} samples (expected {FRAME_16K})")]
    FrameLen(usize),
}

/// Float samples in [-1, 1] to 16-bit, saturating.
pub fn f32_to_i16(x: &[f32], out: &mut [i16]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16;
    }
}

pub fn i16_to_f32(x: &[i16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = f32::from(*v) / 32768.0;
    }
}
