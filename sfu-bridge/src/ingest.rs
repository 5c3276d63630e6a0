//! RTP in → 20 ms frames of 16 kHz PCM, sans-IO: packets go in with `now`, frames come out
//! when the jitter buffer plays them.
//!
//! The publisher's Opus (RFC 7587: PT from SDP, 48 kHz clock, one 20 ms frame per packet as
//! WebRTC sends it) goes through the adaptive [`JitterBuffer`] (reorder, duplicates, late
//! packets, target delay from measured jitter, playout by RTP timestamp), then libopus decodes
//! straight to 16 kHz, the pipeline's rate. A frame that never arrived is rebuilt from the *next*
//! packet's in-band FEC when that packet is already buffered (libopus `decode_fec`), and concealed
//! by Opus PLC otherwise; an undecodable packet is concealed too. When the buffer grows or runs
//! empty ([`Playout::Conceal`]) the slot is Opus PLC; in a gap ([`Playout::Silence`]: DTX, a
//! stopped stream, waiting to re-anchor the next talkspurt) the first [`PLC_FADE`] concealed slots
//! in a row are Opus PLC (it fades out) and the rest are digital silence, without calling the
//! decoder ([`FrameSource::Silence`]). A frame the buffer drops to shrink ([`Playout::Dropped`])
//! is decoded to keep the decoder's state and its audio discarded. After each frame the ingest
//! tells the buffer whether it was quiet (RMS below −40 dBFS), so drops and insertions land in
//! quiet stretches. Every frame slot of the stream yields exactly one output frame: the pipeline
//! never sees a gap.
//!
//! No allocation per packet in the steady state: the jitter buffer's slots and the decode
//! buffer are reused. Hostile bytes are counted and dropped, never a panic.
//!
//! Not yet: DRED (deep redundancy) recovery of bursts longer than one frame; multi-frame
//! (40/60 ms) packets are concealed, not split.

use std::time::Instant;

use opusic_c::{Channels, SampleRate};

use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout, Push};
use crate::media::{FRAME_16K, MediaError, f32_to_i16};
use crate::rtp::RtpPacket;

/// Concealed slots in a row that are Opus PLC in a gap; after them, silence.
pub const PLC_FADE: u32 = 5;
/// A frame whose mean square is below this (−40 dBFS RMS) is quiet.
const QUIET_MEAN_SQUARE: f32 = 1e-4;

/// Consecutive packets from a new SSRC before the ingest follows it (the publisher
/// renegotiated); fewer are treated as strays and dropped.
const SSRC_SWITCH_AFTER: u32 = 5;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub jitter: JitterConfig,
    /// Only this payload type is Opus (the SDP's `opus/48000/2`, usually 111); others are
    /// counted and dropped. `None` accepts any.
    pub payload_type: Option<u8>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            jitter: JitterConfig::default(),
            payload_type: Some(111),
        }
    }
}

/// How an output frame was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    /// Decoded from its own packet.
    Decoded,
    /// Lost; rebuilt from the next packet's in-band FEC.
    Fec,
    /// Lost (or undecodable), or the jitter buffer grew / ran empty; Opus packet-loss
    /// concealment.
    Plc,
    /// A gap (DTX, a stopped stream, waiting for the next talkspurt): fading concealment, then
    /// digital silence.
    Silence,
}

/// One 20 ms frame out of [`Ingest::pop`]; its samples went to the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestFrame {
    /// 0, 1, 2, … over the stream's life (one per frame slot, lost ones included).
    pub index: u64,
    pub source: FrameSource,
    /// When the frame's packet arrived (None for concealed frames).
    pub arrived: Option<Instant>,
}

impl IngestFrame {
    pub fn concealed(&self) -> bool {
        self.source != FrameSource::Decoded
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// RTP packets accepted into the jitter buffer.
    pub packets: u64,
    /// Opus payload bytes of those packets (the publisher's bitrate).
    pub payload_bytes: u64,
    pub malformed: u64,
    pub wrong_payload_type: u64,
    pub foreign_ssrc: u64,
    pub ssrc_switches: u64,
    pub duplicates: u64,
    pub late: u64,
    pub overflow: u64,
    pub decoded: u64,
    pub fec: u64,
    pub plc: u64,
    pub decode_errors: u64,
    /// Frames the jitter buffer dropped to shrink (decoded, not output).
    pub dropped: u64,
    /// Frames of [`FrameSource::Silence`].
    pub silence: u64,
}

/// What happened to one pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Buffered,
    Duplicate,
    Late,
    Overflow,
    WrongPayloadType,
    ForeignSsrc,
}

pub struct Ingest {
    cfg: IngestConfig,
    jitter: JitterBuffer,
    dec: opusic_c::Decoder,
    ssrc: Option<u32>,
    /// A different SSRC seen in a row, and how many times.
    candidate: Option<(u32, u32)>,
    payload: Vec<u8>,
    pcm: [f32; FRAME_16K],
    frames: u64,
    /// Concealed or silent frames in a row.
    concealed_run: u32,
    pub stats: IngestStats,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("ssrc", &self.ssrc)
            .field("frames", &self.frames)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    pub fn new(cfg: IngestConfig) -> Result<Self, MediaError> {
        let dec = opusic_c::Decoder::new(Channels::Mono, SampleRate::Hz16000)
            .map_err(|e| MediaError::Opus(format!("{e:?}")))?;
        Ok(Self {
            jitter: JitterBuffer::new(cfg.jitter.clone()),
            cfg,
            dec,
            ssrc: None,
            candidate: None,
            payload: Vec::with_capacity(opus_max_packet()),
            pcm: [0.0; FRAME_16K],
            frames: 0,
            concealed_run: 0,
            stats: IngestStats::default(),
        })
    }

    /// One RTP packet as received at `now`. Malformed packets are an error (and counted);
    /// everything else is an [`Accepted`] verdict.
    pub fn push(&mut self, now: Instant, packet: &[u8]) -> Result<Accepted, MediaError> {
        match RtpPacket::parse(packet) {
            Ok(p) => Ok(self.push_packet(now, &p)),
            Err(e) => {
                self.stats.malformed += 1;
                Err(e.into())
            }
        }
    }

    /// One RTP packet the caller already parsed (it looked at the header too: parse once).
    /// The caller counts the datagrams that did not parse ([`IngestStats::malformed`]).
    pub fn push_packet(&mut self, now: Instant, p: &RtpPacket<'_>) -> Accepted {
        if self.cfg.payload_type.is_some_and(|pt| pt != p.payload_type) {
            self.stats.wrong_payload_type += 1;
            return Accepted::WrongPayloadType;
        }
        match self.ssrc {
            None => self.ssrc = Some(p.ssrc),
            Some(s) if s == p.ssrc => self.candidate = None,
            Some(_) => {
                let n = match self.candidate {
                    Some((c, n)) if c == p.ssrc => n + 1,
                    _ => 1,
                };
                self.candidate = Some((p.ssrc, n));
                if n < SSRC_SWITCH_AFTER {
                    self.stats.foreign_ssrc += 1;
                    return Accepted::ForeignSsrc;
                }
                // The publisher's source changed for good: start a new timeline. Frame indices
                // keep counting so the stream downstream stays one stream.
                self.ssrc = Some(p.ssrc);
                self.candidate = None;
                self.jitter = JitterBuffer::new(self.cfg.jitter.clone());
                let _ = self.dec.reset();
                self.stats.ssrc_switches += 1;
            }
        }
        match self.jitter.push(now, p.sequence, p.timestamp, p.payload) {
            Push::Accepted => {
                self.stats.packets += 1;
                self.stats.payload_bytes += p.payload.len() as u64;
                Accepted::Buffered
            }
            Push::Duplicate => {
                self.stats.duplicates += 1;
                Accepted::Duplicate
            }
            Push::Late => {
                self.stats.late += 1;
                Accepted::Late
            }
            Push::Overflow => {
                self.stats.overflow += 1;
                Accepted::Overflow
            }
        }
    }

    /// When the next frame is due (the driver sleeps until then); None before the first packet.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jitter.next_deadline()
    }

    /// The jitter buffer's statistics (target delay, level, drops, growth, re-anchors, …).
    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats
    }

    /// The next frame whose playout time has come: [`FRAME_16K`] samples written to `pcm`.
    pub fn pop(&mut self, now: Instant, pcm: &mut [i16; FRAME_16K]) -> Option<IngestFrame> {
        let played = loop {
            match self.jitter.pop(now, &mut self.payload)? {
                Playout::Dropped(_) => {
                    // Shrinking: decode to keep the decoder's state, discard the audio.
                    let _ = self
                        .dec
                        .decode_float_to_slice(&self.payload, &mut self.pcm, false);
                    self.stats.dropped += 1;
                }
                p => break p,
            }
        };
        let (source, arrived) = match played {
            Playout::Frame(_) => {
                match self
                    .dec
                    .decode_float_to_slice(&self.payload, &mut self.pcm, false)
                {
                    Ok(FRAME_16K) => {
                        self.stats.decoded += 1;
                        (FrameSource::Decoded, self.jitter.last_arrival())
                    }
                    _ => {
                        self.stats.decode_errors += 1;
                        self.conceal();
                        (FrameSource::Plc, None)
                    }
                }
            }
            Playout::Lost(ext) => {
                let fec = self.jitter.peek(ext + 1).is_some_and(|next| {
                    matches!(
                        self.dec.decode_float_to_slice(next, &mut self.pcm, true),
                        Ok(FRAME_16K)
                    )
                });
                if fec {
                    self.stats.fec += 1;
                    (FrameSource::Fec, None)
                } else {
                    self.conceal();
                    (FrameSource::Plc, None)
                }
            }
            // (`Dropped` never gets here: the loop above consumed it.)
            Playout::Conceal | Playout::Dropped(_) => {
                self.conceal();
                (FrameSource::Plc, None)
            }
            Playout::Silence => {
                if self.concealed_run < PLC_FADE {
                    if !matches!(
                        self.dec.decode_float_to_slice(&[], &mut self.pcm, false),
                        Ok(FRAME_16K)
                    ) {
                        self.pcm.fill(0.0);
                    }
                } else {
                    self.pcm.fill(0.0);
                }
                self.stats.silence += 1;
                (FrameSource::Silence, None)
            }
        };
        self.concealed_run = if source == FrameSource::Decoded {
            0
        } else {
            self.concealed_run.saturating_add(1)
        };
        let mean_square = self.pcm.iter().map(|v| v * v).sum::<f32>() / FRAME_16K as f32;
        self.jitter.set_quiet(mean_square < QUIET_MEAN_SQUARE);
        f32_to_i16(&self.pcm, pcm);
        let index = self.frames;
        self.frames += 1;
        Some(IngestFrame {
            index,
            source,
            arrived,
        })
    }

    fn conceal(&mut self) {
        self.stats.plc += 1;
        if !matches!(
            self.dec.decode_float_to_slice(&[], &mut self.pcm, false),
            Ok(FRAME_16K)
        ) {
            self.pcm.fill(0.0);
        }
    }
}

fn opus_max_packet() -> usize {
    1275
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{self, Header};
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// A fixed 60 ms delay: these tests check the frame ↔ packet mapping, which a drop to shrink
    /// would shift.
    fn fixed() -> IngestConfig {
        IngestConfig {
            jitter: JitterConfig::fixed(60 * MS),
            ..Default::default()
        }
    }

    /// 2 s of a voiced-ish signal (two harmonics with a slow envelope), Opus-encoded at 16 kHz
    /// with in-band FEC on, as RTP packets from seq `first`.
    fn opus_packets(first: u16, n: usize) -> (Vec<i16>, Vec<Vec<u8>>) {
        let mut enc = opusic_c::Encoder::new(
            Channels::Mono,
            SampleRate::Hz16000,
            opusic_c::Application::Voip,
        )
        .unwrap();
        enc.set_inband_fec(opusic_c::InbandFec::Mode1).unwrap();
        enc.set_packet_loss(20).unwrap();
        enc.set_bitrate(opusic_c::Bitrate::Value(24_000)).unwrap();
        let x: Vec<f32> = (0..n * FRAME_16K)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let env = 0.5 + 0.5 * (t * 3.0).sin();
                env * 0.3
                    * ((t * 2.0 * std::f32::consts::PI * 180.0).sin()
                        + 0.5 * (t * 2.0 * std::f32::consts::PI * 360.0).sin())
            })
            .collect();
        let mut pkts = Vec::new();
        let mut buf = vec![0u8; 1275];
        for (k, f) in x.chunks(FRAME_16K).enumerate() {
            let len = enc.encode_float_to_slice(f, &mut buf).unwrap();
            let mut p = Vec::new();
            rtp::write(
                &Header {
                    marker: k == 0,
                    payload_type: 111,
                    sequence: first.wrapping_add(k as u16),
                    timestamp: 960 * k as u32,
                    ssrc: 42,
                },
                &[(1, &[0x30])], // a browser's audio-level extension
                &buf[..len],
                &mut p,
            )
            .unwrap();
            pkts.push(p);
        }
        let mut xi = vec![0i16; x.len()];
        f32_to_i16(&x, &mut xi);
        (xi, pkts)
    }

    fn run(ingest: &mut Ingest, pkts: &[(usize, &[u8])], frames: usize) -> Vec<IngestFrame> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut pcm = [0i16; FRAME_16K];
        let mut i = 0;
        // Virtual time: packet k "arrives" at k × 20 ms (+ any reordering the caller made).
        for step in 0..(frames + 10) {
            let now = t0 + 20 * MS * step as u32;
            while i < pkts.len() && pkts[i].0 <= step {
                let _ = ingest.push(now, pkts[i].1);
                i += 1;
            }
            while let Some(f) = ingest.pop(now, &mut pcm) {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn clean_stream_decodes_every_frame_in_order() {
        let (_, pkts) = opus_packets(65_500, 100); // wraps the 16-bit sequence
        let mut ing = Ingest::new(fixed()).unwrap();
        let v: Vec<(usize, &[u8])> = pkts
            .iter()
            .enumerate()
            .map(|(k, p)| (k, p.as_slice()))
            .collect();
        let out = run(&mut ing, &v, 100);
        assert!(out.len() >= 100);
        assert!(
            out[..100]
                .iter()
                .enumerate()
                .all(|(k, f)| f.index == k as u64 && f.source == FrameSource::Decoded)
        );
        assert_eq!(ing.stats.packets, 100);
        assert!(ing.stats.payload_bytes > 100 * 20);
        assert_eq!(
            ing.stats.fec + ing.stats.plc + ing.stats.silence,
            (out.len() - 100) as u64
        );
    }

    #[test]
    fn loss_reorder_and_duplicates_yield_one_frame_per_slot() {
        let (_, pkts) = opus_packets(1000, 100);
        // Drop 10 and the burst 40–41, deliver 20 after 21 (40 ms late, inside the 60 ms
        // playout delay), duplicate 30.
        let mut v: Vec<(usize, &[u8])> = Vec::new();
        for (k, p) in pkts.iter().enumerate() {
            match k {
                10 | 40 | 41 => {}
                20 => v.push((22, p)),
                30 => {
                    v.push((30, p));
                    v.push((30, p));
                }
                _ => v.push((k, p)),
            }
        }
        v.sort_by_key(|e| e.0);
        let mut ing = Ingest::new(fixed()).unwrap();
        let out = run(&mut ing, &v, 100);
        let first: Vec<_> = out[..100].iter().map(|f| (f.index, f.source)).collect();
        for (k, (idx, src)) in first.iter().enumerate() {
            assert_eq!(*idx, k as u64);
            let want = match k {
                10 | 41 => FrameSource::Fec, // the next packet is there: its FEC rebuilds it
                40 => FrameSource::Plc,      // the next one is lost too
                _ => FrameSource::Decoded,
            };
            assert_eq!(*src, want, "frame {k}");
        }
        assert_eq!(ing.stats.duplicates, 1);
        assert_eq!((ing.stats.fec, ing.stats.plc.min(1)), (2, 1));
    }

    #[test]
    fn decoded_speech_matches_the_source_and_fec_beats_silence() {
        let (x, pkts) = opus_packets(7, 150);
        let lost = [30usize, 60, 90, 120];
        let v: Vec<(usize, &[u8])> = pkts
            .iter()
            .enumerate()
            .filter(|(k, _)| !lost.contains(k))
            .map(|(k, p)| (k, p.as_slice()))
            .collect();
        let mut ing = Ingest::new(fixed()).unwrap();
        let t0 = Instant::now();
        let mut y = Vec::new();
        let mut pcm = [0i16; FRAME_16K];
        let mut i = 0;
        for step in 0..160 {
            let now = t0 + 20 * MS * step as u32;
            while i < v.len() && v[i].0 <= step {
                ing.push(now, v[i].1).unwrap();
                i += 1;
            }
            while let Some(f) = ing.pop(now, &mut pcm) {
                if f.index < 150 {
                    y.extend_from_slice(&pcm);
                }
            }
        }
        assert_eq!(y.len(), x.len());
        assert_eq!(ing.stats.fec, lost.len() as u64);
        // Opus at 16 kHz delays by its lookahead (≈ 6.5 ms = 104 samples): find the best lag.
        let corr = |lag: usize| {
            let (a, b) = (&x[1000..x.len() - 400], &y[1000 + lag..y.len() - 400 + lag]);
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let na: f64 = a.iter().map(|p| f64::from(*p).powi(2)).sum();
            let nb: f64 = b.iter().map(|p| f64::from(*p).powi(2)).sum();
            dot / (na * nb).sqrt()
        };
        let best = (0..300).map(corr).fold(f64::MIN, f64::max);
        assert!(best > 0.9, "correlation {best}");
    }

    #[test]
    fn hostile_and_foreign_packets_are_counted_not_fatal() {
        let (_, pkts) = opus_packets(0, 20);
        let mut ing = Ingest::new(IngestConfig::default()).unwrap();
        let t0 = Instant::now();
        assert!(ing.push(t0, &[0x80, 1, 2]).is_err());
        ing.push(t0, &pkts[0]).unwrap();
        // Wrong payload type (e.g. comfort noise) and a stray SSRC.
        let mut cn = Vec::new();
        rtp::write(
            &Header {
                marker: false,
                payload_type: 13,
                sequence: 1,
                timestamp: 0,
                ssrc: 42,
            },
            &[],
            &[1],
            &mut cn,
        )
        .unwrap();
        assert_eq!(ing.push(t0, &cn).unwrap(), Accepted::WrongPayloadType);
        let mut stray = pkts[1].clone();
        stray[8..12].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(ing.push(t0, &stray).unwrap(), Accepted::ForeignSsrc);
        // Garbage Opus in a well-formed RTP packet: concealed, counted.
        let mut bad = Vec::new();
        rtp::write(
            &Header {
                marker: false,
                payload_type: 111,
                sequence: 1,
                timestamp: 960,
                ssrc: 42,
            },
            &[],
            &[0xFF, 0xFF, 0xFF, 0xFF],
            &mut bad,
        )
        .unwrap();
        assert_eq!(ing.push(t0, &bad).unwrap(), Accepted::Buffered);
        let mut pcm = [0i16; FRAME_16K];
        // Two slots: the default initial target (20 ms) and one frame later.
        let got: Vec<_> = std::iter::from_fn(|| ing.pop(t0 + 40 * MS, &mut pcm)).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].source, FrameSource::Plc);
        assert_eq!(
            (
                ing.stats.malformed,
                ing.stats.wrong_payload_type,
                ing.stats.foreign_ssrc
            ),
            (1, 1, 1)
        );
        assert_eq!(ing.stats.decode_errors, 1);
    }

    #[test]
    fn a_new_ssrc_is_followed_after_a_few_packets() {
        let (_, pkts) = opus_packets(0, 20);
        let mut ing = Ingest::new(IngestConfig::default()).unwrap();
        let t0 = Instant::now();
        ing.push(t0, &pkts[0]).unwrap();
        for (k, p) in pkts[1..].iter().enumerate() {
            let mut q = p.clone();
            q[8..12].copy_from_slice(&9u32.to_be_bytes());
            let r = ing.push(t0 + MS * k as u32, &q).unwrap();
            if k + 1 < SSRC_SWITCH_AFTER as usize {
                assert_eq!(r, Accepted::ForeignSsrc);
            } else {
                assert_eq!(r, Accepted::Buffered, "packet {k}");
            }
        }
        assert_eq!(ing.stats.ssrc_switches, 1);
    }

    #[test]
    fn adaptive_buffer_turns_a_dtx_gap_into_silence_and_re_anchors_after_it() {
        // 150 packets; after packet 49 the sender goes quiet for 2 s (DTX): the timestamp jumps
        // by 100 frames, the sequence numbers do not.
        let (_, mut pkts) = opus_packets(500, 150);
        for p in &mut pkts[50..] {
            let ts = u32::from_be_bytes(p[4..8].try_into().unwrap()) + 100 * 960;
            p[4..8].copy_from_slice(&ts.to_be_bytes());
        }
        let arrival = |k: usize| 20 * MS * (if k < 50 { k } else { k + 100 }) as u32;
        let mut ing = Ingest::new(IngestConfig::default()).unwrap(); // adaptive, 40 ms at first
        let t0 = Instant::now();
        let mut pcm = [0i16; FRAME_16K];
        let mut frames = Vec::new();
        let mut i = 0;
        for step in 0..1200u32 {
            let now = t0 + 5 * MS * step;
            while i < pkts.len() && t0 + arrival(i) <= now {
                assert_eq!(ing.push(now, &pkts[i]).unwrap(), Accepted::Buffered);
                i += 1;
            }
            while let Some(f) = ing.pop(now, &mut pcm) {
                frames.push((f, pcm.iter().all(|&x| x == 0)));
            }
        }
        let s = ing.stats;
        let j = ing.jitter_stats();
        // One frame per slot, every packet decoded once (kept, or dropped to shrink), no loss.
        assert!(
            frames
                .iter()
                .enumerate()
                .all(|(k, (f, _))| f.index == k as u64)
        );
        assert_eq!(s.decoded + s.dropped, 150, "{s:?}");
        assert_eq!((s.fec, j.lost, j.late), (0, 0, 0), "{s:?} {j:?}");
        // The gap: a few concealed frames, then silence — digital zeros after the PLC fade.
        let gap: Vec<_> = frames
            .iter()
            .filter(|(f, _)| f.source != FrameSource::Decoded)
            .collect();
        assert!(s.silence >= 90, "{s:?}");
        assert!(s.plc <= 6, "{s:?}"); // 3 at the gap's start, 3 at the stream's end
        let zeros = gap
            .iter()
            .filter(|(f, z)| f.source == FrameSource::Silence && *z)
            .count() as u64;
        assert!(zeros + PLC_FADE as u64 * 2 >= s.silence, "{zeros} of {s:?}");
        // The talkspurt after the gap re-anchored at the (decayed) target, below the initial
        // 40 ms.
        assert!(j.reanchors >= 2, "{j:?}");
        assert!(j.delay < 45 * MS, "{j:?}");
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(pkts in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..40)) {
            let mut ing = Ingest::new(IngestConfig { payload_type: None, ..Default::default() }).unwrap();
            let t0 = Instant::now();
            let mut pcm = [0i16; FRAME_16K];
            for (k, p) in pkts.iter().enumerate() {
                let now = t0 + 20 * MS * k as u32;
                let _ = ing.push(now, p);
                while ing.pop(now, &mut pcm).is_some() {}
            }
        }
    }
}
