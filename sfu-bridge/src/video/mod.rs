//! Video RTP payloads (issue #14): VP8 (RFC 7741) and H.264 (RFC 6184) in from publishers, AV1
//! (AOMedia RTP payload format v1.0) out to receivers; sans-IO, fed packets and `now`.
//!
//! * [`FrameAssembler`] — one incoming stream's packets → whole frames, in order: a reorder
//!   window ([`AssemblerConfig::window`] packets, [`AssemblerConfig::reorder_timeout`]),
//!   duplicates dropped, a frame with a missing packet or a malformed payload dropped (never
//!   handed on half), then nothing but a keyframe until one comes, with a keyframe request
//!   ([`FrameAssembler::poll_keyframe_request`], what the caller turns into an RTCP PLI:
//!   [`crate::rtcp::write_pli`]).
//! * Depacketizers per format ([`vp8::Vp8Depacketizer`], [`h264::H264Depacketizer`],
//!   [`av1::Av1Depacketizer`]) — the assembler drives them, one frame at a time; the frame comes
//!   out as a decoder wants it: a VP8 frame, an Annex-B H.264 access unit, an AV1 temporal unit
//!   in the low-overhead format.
//! * Packetizers ([`vp8::Vp8Packetizer`], [`h264::H264Packetizer`], [`av1::Av1Packetizer`]):
//!   one frame → RTP payloads, the last one to be sent with the marker bit. AV1 is what the
//!   bridge sends; the other two serve tests.
//!
//! ```text
//! let mut a = FrameAssembler::new(VideoPayload::Vp8);
//! // for each RTP packet of the stream (already parsed, payload type checked):
//! let _ = a.push(now, &pkt);                 // errors are counted in stats() too
//! while let Some(f) = a.poll_frame() { decode(&f.data); a.recycle(f.data); }
//! if a.poll_keyframe_request(now) { send(rtcp::write_pli(..)) }  // call it every few ms
//! ```
//! Keyframe requests: raised when a packet is declared lost (a gap not filled within
//! [`AssemblerConfig::reorder_timeout`], or pushed out of the window), when a frame's payload
//! is malformed, and when a complete frame is not a keyframe while the assembler waits for one
//! (at the start of a stream too). At most one per [`AssemblerConfig::keyframe_min_interval`]
//! (300 ms), repeated every [`AssemblerConfig::keyframe_repeat`] (1 s) while still waiting.
//!
//! Memory is bounded: the window's packets (each ≤ [`MAX_PACKET_PAYLOAD`]), one frame being
//! assembled (≤ [`AssemblerConfig::max_frame_bytes`]), ≤ [`AssemblerConfig::max_ready`] frames
//! waiting to be polled. `docs/rtp-payload.md` ("Video payloads") has the rules.

mod assembler;
pub mod av1;
pub mod h264;
pub mod vp8;

#[cfg(test)]
mod tests;

pub use assembler::{
    AssembledFrame, AssemblerConfig, AssemblerStats, FrameAssembler, RESYNC_DISTANCE,
    SSRC_SWITCH_PACKETS, SSRC_SWITCH_SILENCE,
};

/// Default cap on one frame's bytes being assembled.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;
/// Largest RTP payload the assembler takes (bigger ones are an error).
pub const MAX_PACKET_PAYLOAD: usize = 16 << 10;
/// RTP clock rate of all three video payload formats.
pub const CLOCK_RATE: u32 = 90_000;

/// The payload format of an incoming stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoPayload {
    Vp8,
    H264,
    Av1,
}

impl VideoPayload {
    /// The SDP encoding name (`a=rtpmap`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
            Self::H264 => "H264",
            Self::Av1 => "AV1",
        }
    }
}

/// Why a video payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VideoRtpError {
    #[error("empty payload or frame")]
    Empty,
    #[error("VP8 payload descriptor cut short")]
    Vp8Descriptor,
    #[error("VP8 frame does not start with S=1, PID=0")]
    Vp8NoStart,
    #[error("H.264 NAL unit type {nal_type} ({name}) is not supported (packetization-mode 0/1)")]
    H264Unsupported { nal_type: u8, name: &'static str },
    #[error("malformed H.264 payload: {0}")]
    H264Malformed(&'static str),
    #[error("malformed AV1 payload: {0}")]
    Av1(&'static str),
    #[error("malformed AV1 OBU: {0}")]
    Av1Obu(&'static str),
    #[error("frame over the {0}-byte limit")]
    FrameTooLarge(usize),
    #[error("RTP payload of {0} bytes, at most {MAX_PACKET_PAYLOAD}")]
    PacketTooLarge(usize),
}

impl VideoRtpError {
    /// Which counter of [`AssemblerStats`] this error goes to.
    fn kind(&self) -> ErrorKind {
        match self {
            Self::H264Unsupported { .. } => ErrorKind::Unsupported,
            Self::FrameTooLarge(_) | Self::PacketTooLarge(_) => ErrorKind::TooLarge,
            _ => ErrorKind::Malformed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Malformed,
    Unsupported,
    TooLarge,
}

/// What a depacketizer learnt about a complete frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameInfo {
    /// A decoder can start here: VP8 key frame, H.264 IDR, AV1 sequence header + key frame.
    pub keyframe: bool,
    /// The frame carries its parameter sets: H.264 SPS and PPS, an AV1 sequence header (VP8:
    /// same as `keyframe`).
    pub parameter_sets: bool,
}

/// The one depacketizer of a stream.
#[derive(Debug)]
enum Depacketizer {
    Vp8(vp8::Vp8Depacketizer),
    H264(h264::H264Depacketizer),
    Av1(av1::Av1Depacketizer),
}

impl Depacketizer {
    fn new(p: VideoPayload, max_frame_bytes: usize) -> Self {
        match p {
            VideoPayload::Vp8 => Self::Vp8(vp8::Vp8Depacketizer::new()),
            VideoPayload::H264 => Self::H264(h264::H264Depacketizer::new()),
            VideoPayload::Av1 => {
                let mut d = av1::Av1Depacketizer::new();
                d.set_limit(max_frame_bytes);
                Self::Av1(d)
            }
        }
    }

    fn reset(&mut self) {
        match self {
            Self::Vp8(d) => d.reset(),
            Self::H264(d) => d.reset(),
            Self::Av1(d) => d.reset(),
        }
    }

    fn is_frame_start(&self, payload: &[u8]) -> bool {
        match self {
            Self::Vp8(_) => vp8::Vp8Depacketizer::is_frame_start(payload),
            Self::H264(_) => h264::H264Depacketizer::is_frame_start(payload),
            Self::Av1(_) => av1::Av1Depacketizer::is_frame_start(payload),
        }
    }

    fn push(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        match self {
            Self::Vp8(d) => d.push(payload, out),
            Self::H264(d) => d.push(payload, out),
            Self::Av1(d) => d.push(payload, out),
        }
    }

    fn finish(&mut self, out: &[u8]) -> Result<FrameInfo, VideoRtpError> {
        match self {
            Self::Vp8(d) => d.finish(out),
            Self::H264(d) => d.finish(),
            Self::Av1(d) => d.finish(),
        }
    }
}

/// `out[i]`, cleared, growing `out` by one when `i == out.len()` (packetizers reuse the
/// caller's payload buffers).
fn slot(out: &mut Vec<Vec<u8>>, i: usize) -> &mut Vec<u8> {
    if i == out.len() {
        out.push(Vec::new());
    }
    let v = &mut out[i];
    v.clear();
    v
}
