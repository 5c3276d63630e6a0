//! One published stream through AIC: the publisher's packets (VP8, H.264, …) in, the
//! receivers' packets (AV1, or a fallback encoder) out, with per-frame hints. Sans-IO like the
//! audio engine: no sockets, no clock, no threads — the caller feeds packets and reads what to
//! do (send these packets, forward the original, ask the publisher for a keyframe).
//!
//! Failure rules (issue #14): a publisher packet that does not decode is counted and answered
//! with a keyframe request; a hint that does not fit the frame (a stale quality map after a
//! resolution change) is dropped and the frame encoded without it; an encoder that fails turns
//! the stream into *forwarding* — the publisher's packets go to receivers as they came — so a
//! receiver never sees a frozen picture because of AIC.

use crate::decode::VideoDecoder;
use crate::encode::{
    EncodedPacket, EncoderConfig, EncoderKind, FrameHints, VideoCodec, VideoEncoder,
};
use crate::error::Result;
use crate::frame::Yuv420Frame;

/// How the transcoder is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscodeConfig {
    /// What the publisher sends.
    pub input: VideoCodec,
    /// The receivers' encoder.
    pub output: EncoderKind,
    pub fps: u32,
    /// Initial target (bit/s); [`FrameHints::bitrate_bps`] moves it.
    pub bitrate_bps: u32,
    /// Quality maps will come (see [`EncoderConfig::roi`]).
    pub roi: bool,
}

/// What one [`Transcoder::push`] asks the caller to do, besides sending the packets it appended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Send the publisher's packet to receivers unchanged (the stream is in fallback).
    pub forward: bool,
    /// Ask the publisher for a keyframe (RTCP PLI/FIR): its stream could not be decoded.
    pub request_keyframe: bool,
}

/// Counters since the transcoder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranscodeStats {
    pub packets_in: u64,
    pub frames_decoded: u64,
    pub frames_encoded: u64,
    pub decode_errors: u64,
    pub keyframe_requests: u64,
    /// Frames encoded without the hint they came with (it did not fit).
    pub hints_dropped: u64,
    /// Encoder (re)openings: the first frame, then each picture size change.
    pub encoder_opens: u64,
    /// Packets forwarded as the publisher sent them.
    pub forwarded: u64,
}

/// One published stream's transcoder.
#[derive(Debug)]
pub struct Transcoder {
    cfg: TranscodeConfig,
    decoder: VideoDecoder,
    encoder: Option<VideoEncoder>,
    /// Set when the encoder failed: from then on the stream is forwarded.
    failed: Option<String>,
    frames: Vec<Yuv420Frame>,
    stats: TranscodeStats,
}

impl Transcoder {
    pub fn new(cfg: TranscodeConfig) -> Result<Self> {
        let decoder = VideoDecoder::new(cfg.input)?;
        Ok(Self {
            cfg,
            decoder,
            encoder: None,
            failed: None,
            frames: Vec::new(),
            stats: TranscodeStats::default(),
        })
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    /// Why the stream is being forwarded, if it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Takes one publisher packet; appends the receivers' packets to `out`.
    pub fn push(
        &mut self,
        packet: &[u8],
        hints: &FrameHints<'_>,
        out: &mut Vec<EncodedPacket>,
    ) -> Step {
        self.stats.packets_in += 1;
        if self.failed.is_some() {
            self.stats.forwarded += 1;
            return Step {
                forward: true,
                request_keyframe: false,
            };
        }
        let mut step = Step::default();
        self.frames.clear();
        if self.decoder.decode(packet, &mut self.frames).is_err() {
            self.stats.decode_errors += 1;
            self.stats.keyframe_requests += 1;
            step.request_keyframe = true;
        }
        let frames = std::mem::take(&mut self.frames);
        for f in &frames {
            self.stats.frames_decoded += 1;
            if let Err(e) = self.encode(f, hints, out) {
                self.failed = Some(e.to_string());
                self.encoder = None;
                self.stats.forwarded += 1;
                step.forward = true;
                break;
            }
        }
        self.frames = frames;
        step
    }

    fn encode(
        &mut self,
        f: &Yuv420Frame,
        hints: &FrameHints<'_>,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<()> {
        let fits = |e: &VideoEncoder| e.config().width == f.width && e.config().height == f.height;
        if !self.encoder.as_ref().is_some_and(fits) {
            let mut cfg = EncoderConfig::new(
                self.cfg.output,
                f.width,
                f.height,
                self.cfg.fps,
                self.cfg.bitrate_bps,
            );
            cfg.roi = self.cfg.roi;
            if let Some(old) = self.encoder.take() {
                cfg.bitrate_bps = old.config().bitrate_bps;
            }
            self.encoder = Some(VideoEncoder::new(cfg)?);
            self.stats.encoder_opens += 1;
        }
        let enc = self.encoder.as_mut().expect("opened above");
        let mut h = *hints;
        if let Some(m) = h.quality
            && m.validate(f.width, f.height).is_err()
        {
            h.quality = None;
            self.stats.hints_dropped += 1;
        }
        if let Some(b) = h.bitrate_bps
            && !(EncoderConfig::MIN_BITRATE..=EncoderConfig::MAX_BITRATE).contains(&b)
        {
            h.bitrate_bps = None;
            self.stats.hints_dropped += 1;
        }
        enc.encode(f, &h, out)?;
        self.stats.frames_encoded += 1;
        Ok(())
    }
}
