//! Frames → RTP out, sans-IO: the two tracks the bridge sends back into the SFU.
//!
//! * [`OpusEgress`] — the AIC-decoded 16 kHz PCM re-encoded as Opus (RFC 7587: 48 kHz clock,
//!   timestamp +960 per 20 ms frame), for every receiver that cannot decode AIC, and for
//!   checking by ear.
//! * [`AicEgress`] — the AIC frames themselves in the AIC RTP payload format
//!   (`docs/rtp-payload.md`) with the frame-meta header extension (model tag, level, fallback).
//!
//! Each track has its own SSRC and its own contiguous sequence numbers; the timestamp follows
//! the frame index, so a frame the bridge had to skip shows as a timestamp gap, not a shift.
//! Packets are written into the caller's buffer; nothing is allocated per packet.

use opusic_c::{Application, Bitrate, Channels, InbandFec, SampleRate};

use crate::aic_rtp::{self, FrameMeta};
use crate::media::{FRAME_16K, MediaError, TICKS_PER_FRAME, i16_to_f32};
use crate::rtp::{self, Header};

/// Where an outgoing RTP stream starts (pick them at random in production: RFC 3550 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpStreamParams {
    pub ssrc: u32,
    pub payload_type: u8,
    pub first_sequence: u16,
    pub first_timestamp: u32,
}

/// Sequence/timestamp bookkeeping of one outgoing stream.
#[derive(Debug, Clone)]
pub struct RtpSequencer {
    p: RtpStreamParams,
    next_seq: u16,
    /// Frame index of the first packet (timestamps are relative to it).
    first_frame: Option<u64>,
    /// The next packet starts a talkspurt (marker bit).
    discontinuity: bool,
    pub packets: u64,
    pub payload_bytes: u64,
}

impl RtpSequencer {
    pub fn new(p: RtpStreamParams) -> Self {
        Self {
            next_seq: p.first_sequence,
            p,
            first_frame: None,
            discontinuity: true,
            packets: 0,
            payload_bytes: 0,
        }
    }

    /// Marks the next packet as the start of a talkspurt (e.g. after a switch back from Opus
    /// fallback to AIC).
    pub fn mark_discontinuity(&mut self) {
        self.discontinuity = true;
    }

    /// The header of the packet carrying frame `index` (frame indices must not go back).
    pub fn header(&mut self, index: u64, payload_len: usize) -> Header {
        let first = *self.first_frame.get_or_insert(index);
        let ticks = index
            .saturating_sub(first)
            .wrapping_mul(u64::from(TICKS_PER_FRAME));
        let h = Header {
            marker: std::mem::take(&mut self.discontinuity),
            payload_type: self.p.payload_type,
            sequence: self.next_seq,
            timestamp: self.p.first_timestamp.wrapping_add(ticks as u32),
            ssrc: self.p.ssrc,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.packets += 1;
        self.payload_bytes += payload_len as u64;
        h
    }
}

/// PCM → Opus RTP.
pub struct OpusEgress {
    enc: opusic_c::Encoder,
    seq: RtpSequencer,
    pcm: [f32; FRAME_16K],
    packet: Vec<u8>,
}

impl std::fmt::Debug for OpusEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEgress")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl OpusEgress {
    /// An Opus encoder at 16 kHz (what the AIC decoder produces), VoIP, `bitrate_bps`, with
    /// in-band FEC on so receivers can recover single losses.
    pub fn new(p: RtpStreamParams, bitrate_bps: u32) -> Result<Self, MediaError> {
        let err = |e: opusic_c::ErrorCode| MediaError::Opus(format!("{e:?}"));
        let mut enc =
            opusic_c::Encoder::new(Channels::Mono, SampleRate::Hz16000, Application::Voip)
                .map_err(err)?;
        enc.set_bitrate(Bitrate::Value(bitrate_bps)).map_err(err)?;
        enc.set_inband_fec(InbandFec::Mode1).map_err(err)?;
        enc.set_packet_loss(5).map_err(err)?;
        Ok(Self {
            enc,
            seq: RtpSequencer::new(p),
            pcm: [0.0; FRAME_16K],
            packet: vec![0; 1275],
        })
    }

    pub fn stats(&self) -> &RtpSequencer {
        &self.seq
    }

    /// Encodes frame `index` ([`FRAME_16K`] samples) and writes its RTP packet to `out`
    /// (cleared first).
    pub fn packetize(
        &mut self,
        index: u64,
        pcm16k: &[i16],
        out: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        if pcm16k.len() != FRAME_16K {
            return Err(MediaError::FrameLen(pcm16k.len()));
        }
        i16_to_f32(pcm16k, &mut self.pcm);
        let n = self
            .enc
            .encode_float_to_slice(&self.pcm, &mut self.packet)
            .map_err(|e| MediaError::Opus(format!("{e:?}")))?;
        let h = self.seq.header(index, n);
        out.clear();
        rtp::write(&h, &[], &self.packet[..n], out)?;
        Ok(())
    }
}

/// AIC frames → AIC RTP with the frame-meta extension.
#[derive(Debug, Clone)]
pub struct AicEgress {
    seq: RtpSequencer,
    ext_id: u8,
    model_tag: [u8; 4],
    last_fallback: bool,
}

impl AicEgress {
    /// `ext_id`: the id negotiated for `urn:auralink:aic:frame-meta:v1` (1..=14).
    pub fn new(p: RtpStreamParams, ext_id: u8, model_tag: [u8; 4]) -> Self {
        Self {
            seq: RtpSequencer::new(p),
            ext_id,
            model_tag,
            last_fallback: false,
        }
    }

    pub fn stats(&self) -> &RtpSequencer {
        &self.seq
    }

    /// Writes the packet for frame `index` to `out` (cleared first): `payload` is an AIC frame
    /// of `level` codebooks, or an Opus packet when `fallback`.
    pub fn packetize(
        &mut self,
        index: u64,
        payload: &[u8],
        level: u8,
        fallback: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        if self.last_fallback && !fallback {
            self.seq.mark_discontinuity();
        }
        self.last_fallback = fallback;
        let meta = FrameMeta {
            fallback,
            truncated: false,
            level: if fallback { 0 } else { level.min(15) },
            model_tag: self.model_tag,
        };
        let h = self.seq.header(index, payload.len());
        out.clear();
        aic_rtp::packetize(&h, self.ext_id, meta, payload, out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;

    fn params(pt: u8) -> RtpStreamParams {
        RtpStreamParams {
            ssrc: 0xA1C0_0001,
            payload_type: pt,
            first_sequence: 65_534,
            first_timestamp: u32::MAX - 959,
        }
    }

    #[test]
    fn opus_track_is_contiguous_decodable_and_timestamped_by_frame() {
        let mut eg = OpusEgress::new(params(111), 24_000).unwrap();
        let mut dec = opusic_c::Decoder::new(Channels::Mono, SampleRate::Hz48000).unwrap();
        let mut out = Vec::new();
        let mut pcm48 = vec![0f32; 960];
        let mut seen = Vec::new();
        for k in 0..50u64 {
            let pcm: Vec<i16> = (0..FRAME_16K)
                .map(|i| {
                    let t = (k as usize * FRAME_16K + i) as f32 / 16_000.0;
                    (8000.0 * (t * 2.0 * std::f32::consts::PI * 300.0).sin()) as i16
                })
                .collect();
            // Frame 20 never reached the bridge's output: a timestamp gap, not a sequence gap.
            if k == 20 {
                continue;
            }
            eg.packetize(k, &pcm, &mut out).unwrap();
            let p = RtpPacket::parse(&out).unwrap();
            // A receiver decodes it at 48 kHz: one 20 ms frame per packet.
            assert_eq!(
                dec.decode_float_to_slice(p.payload, &mut pcm48, false)
                    .unwrap(),
                960
            );
            seen.push((p.sequence, p.timestamp, p.marker, p.ssrc, p.payload_type));
        }
        assert!(
            seen[0].2 && seen[1..].iter().all(|s| !s.2),
            "marker on the first only"
        );
        for w in seen.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0.wrapping_add(1),
                "sequence wraps contiguously"
            );
        }
        assert_eq!(seen[1].1, 0, "timestamp wraps: first + 960");
        assert_eq!(
            seen[20].1.wrapping_sub(seen[19].1),
            2 * 960,
            "skipped frame 20"
        );
        assert_eq!(eg.stats().packets, 49);
        let kbps = eg.stats().payload_bytes as f64 * 8.0 / 0.98 / 1000.0;
        assert!((12.0..40.0).contains(&kbps), "{kbps} kbps");
        assert!(eg.packetize(50, &[0; 100], &mut out).is_err());
    }

    #[test]
    fn aic_track_carries_meta_and_marks_return_from_fallback() {
        let mut eg = AicEgress::new(params(120), 5, *b"tag!");
        let mut out = Vec::new();
        let mut got = Vec::new();
        for (k, fallback) in [false, false, true, false].into_iter().enumerate() {
            eg.packetize(k as u64, &[0x50, k as u8], 6, fallback, &mut out)
                .unwrap();
            let (p, m) = aic_rtp::depacketize(&out, 5).unwrap();
            let m = m.unwrap();
            assert_eq!(p.payload, &[0x50, k as u8]);
            assert_eq!(m.model_tag, *b"tag!");
            got.push((p.marker, m.fallback, m.level));
        }
        assert_eq!(
            got,
            [
                (true, false, 6),
                (false, false, 6),
                (false, true, 0),
                (true, false, 6)
            ]
        );
    }
}
