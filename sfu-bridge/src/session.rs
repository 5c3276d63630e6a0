//! One bridged stream's media logic, sans-IO: RTP datagrams from the SFU in, 20 ms frames to
//! the pipeline out, the pipeline's frames back in, RTP to the SFU out. The driver (sockets, the
//! pipeline link, the clock) feeds [`MediaSession::handle_input`] and then calls
//! [`MediaSession::poll_output`] until it returns [`Output::Timeout`] — str0m's shape. Nothing
//! here reads the clock, so tests run the whole RTP-in → RTP-out path on virtual time.
//!
//! Per datagram: parsed once ([`RtpPacket`]); the header feeds the RFC 3550 receiver statistics
//! of the ingest's source, the packet the [`Ingest`] (adaptive jitter buffer, Opus decode to
//! 16 kHz, FEC/PLC). Each frame slot the jitter buffer plays becomes one [`Output::Process`]
//! (every slot, lost ones concealed: the pipeline sees no gap). Each frame the pipeline hands
//! back ([`Input::Processed`]) becomes an Opus RTP packet (its decoded PCM, for every
//! receiver) and, when configured, an AIC RTP packet (its AIC or fallback bytes), both
//! timestamped by frame index. Latency (arrival of the frame's packet → its RTP out) and the
//! pipeline's own time go to bounded histograms; no allocation per packet or frame in the
//! steady state (packet buffers are recycled).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The histogram type of [`SessionStats`].
pub use hdrhistogram::Histogram;

use crate::egress::{AicEgress, OpusEgress, RtpStreamParams};
use crate::ingest::{Accepted, Ingest, IngestConfig, IngestStats};
use crate::jitter::JitterStats;
use crate::link::{FrameIn, FrameOut};
use crate::media::{FRAME_16K, MediaError};
use crate::rtcp::ReceiverStats;
use crate::rtp::RtpPacket;

/// Longest [`Output::Timeout`] when no frame is scheduled (before the first packet).
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Frames remembered between [`Output::Process`] and [`Input::Processed`] (their arrival
/// times); a frame back later than this many slots loses its latency sample, nothing else.
const IN_FLIGHT_RING: usize = 64;
/// Histogram range, µs: 1 µs to 60 s at 3 significant digits (values above are clamped).
const HIST_MAX_US: u64 = 60_000_000;

/// The AIC RTP track (sent only when configured).
#[derive(Debug, Clone, Copy)]
pub struct AicTrack {
    pub params: RtpStreamParams,
    /// The id negotiated for the frame-meta extension (1..=14).
    pub ext_id: u8,
    pub model_tag: [u8; 4],
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ingest: IngestConfig,
    /// The Opus track (the pipeline's decoded PCM re-encoded, for every receiver).
    pub opus: RtpStreamParams,
    pub opus_bitrate_bps: u32,
    pub aic: Option<AicTrack>,
}

/// What the driver hands the session.
#[derive(Debug)]
pub enum Input<'a> {
    /// Time has passed (the driver woke at the last [`Output::Timeout`]).
    Timeout(Instant),
    /// A UDP datagram from the SFU, received at this instant.
    Receive(Instant, &'a [u8]),
    /// A frame back from the pipeline at this instant (`seq` = the [`FrameIn::seq`] it was
    /// sent with).
    Processed(Instant, &'a FrameOut),
    /// The pipeline did not take frame `seq` (its queue was full): dropped, counted; its slot
    /// shows as a timestamp gap on the tracks.
    NotTaken(u64),
}

/// Which outgoing track a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Opus,
    Aic,
}

/// What the session asks of the driver.
#[derive(Debug)]
pub enum Output<'a> {
    /// Give this frame to the pipeline.
    Process(FrameIn<'a>),
    /// Send this RTP packet on `Track`'s destination.
    Transmit(Track, &'a [u8]),
    /// Nothing more until this instant, or the next input.
    Timeout(Instant),
}

/// Counters and latency histograms (µs) of one session.
#[derive(Debug, Clone)]
pub struct SessionStats {
    /// Frames back from the pipeline and sent.
    pub frames_out: u64,
    /// Of those, Opus fallback frames.
    pub fallback: u64,
    /// AIC (or fallback) payload bytes of those frames.
    pub aic_bytes: u64,
    /// Frames the pipeline did not take ([`Input::NotTaken`]).
    pub not_taken: u64,
    /// Frames back out of order (behind one already sent): dropped.
    pub stale: u64,
    /// When the first datagram arrived.
    pub first_in: Option<Instant>,
    /// From the arrival of a frame's RTP packet to its RTP out (frames decoded from their own
    /// packet; concealed ones have no arrival). Taken when the pipeline's frame comes back:
    /// the Opus re-encode after it (≈ 0.1 ms) is not in it.
    pub latency_us: Histogram<u64>,
    /// Inside the pipeline, as it reports ([`FrameOut::pipeline_us`]).
    pub pipeline_us: Histogram<u64>,
}

impl Default for SessionStats {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static bounds");
        Self {
            frames_out: 0,
            fallback: 0,
            aic_bytes: 0,
            not_taken: 0,
            stale: 0,
            first_in: None,
            latency_us: h(),
            pipeline_us: h(),
        }
    }
}

pub struct MediaSession {
    ingest: Ingest,
    opus: OpusEgress,
    aic: Option<AicEgress>,
    /// Receiver statistics of the ingest's source (the latest SSRC it follows).
    rtcp: Option<(u32, ReceiverStats)>,
    /// The latest instant fed in.
    now: Instant,
    /// The frame handed out last by [`Output::Process`].
    pcm: [i16; FRAME_16K],
    /// Padded copy of a short frame from the pipeline.
    pcm_out: [i16; FRAME_16K],
    /// (frame index, arrival of its packet) by index modulo the ring.
    arrivals: [(u64, Option<Instant>); IN_FLIGHT_RING],
    last_out: Option<u64>,
    /// Packets waiting for [`Output::Transmit`], the one handed out last, spare buffers.
    queued: VecDeque<(Track, Vec<u8>)>,
    current: Option<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    pub stats: SessionStats,
}

impl std::fmt::Debug for MediaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSession")
            .field("ingest", &self.ingest)
            .field("last_out", &self.last_out)
            .finish_non_exhaustive()
    }
}

impl MediaSession {
    /// A session starting at `now`.
    pub fn new(cfg: SessionConfig, now: Instant) -> Result<Self, MediaError> {
        Ok(Self {
            ingest: Ingest::new(cfg.ingest)?,
            opus: OpusEgress::new(cfg.opus, cfg.opus_bitrate_bps)?,
            aic: cfg
                .aic
                .map(|t| AicEgress::new(t.params, t.ext_id, t.model_tag)),
            rtcp: None,
            now,
            pcm: [0; FRAME_16K],
            pcm_out: [0; FRAME_16K],
            arrivals: [(u64::MAX, None); IN_FLIGHT_RING],
            last_out: None,
            queued: VecDeque::with_capacity(4),
            current: None,
            spare: (0..4).map(|_| Vec::with_capacity(1500)).collect(),
            stats: SessionStats::default(),
        })
    }

    /// Feeds one input; then call [`poll_output`](Self::poll_output) until it returns
    /// [`Output::Timeout`]. Errors are libopus failing to encode a frame (that frame is lost).
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), MediaError> {
        match input {
            Input::Timeout(now) => self.advance(now),
            Input::Receive(now, datagram) => {
                self.advance(now);
                self.stats.first_in.get_or_insert(now);
                self.receive(now, datagram);
            }
            Input::Processed(now, frame) => {
                self.advance(now);
                return self.processed(now, frame);
            }
            Input::NotTaken(_) => self.stats.not_taken += 1,
        }
        Ok(())
    }

    /// The next thing to do: packets to send first, then frames due for the pipeline, then
    /// the instant to wake at.
    pub fn poll_output(&mut self) -> Output<'_> {
        if let Some(b) = self.current.take() {
            self.spare.push(b);
        }
        if let Some((track, b)) = self.queued.pop_front() {
            let b = self.current.insert(b);
            return Output::Transmit(track, b);
        }
        let now = self.now;
        if let Some(f) = self.ingest.pop(now, &mut self.pcm) {
            self.arrivals[(f.index % IN_FLIGHT_RING as u64) as usize] = (f.index, f.arrived);
            return Output::Process(FrameIn {
                seq: f.index,
                pcm16k: &self.pcm,
                concealed: f.concealed(),
            });
        }
        let idle = now + IDLE_WAIT;
        Output::Timeout(self.ingest.next_deadline().map_or(idle, |d| d.min(idle)))
    }

    pub fn ingest_stats(&self) -> IngestStats {
        self.ingest.stats
    }

    pub fn jitter_stats(&self) -> JitterStats {
        self.ingest.jitter_stats()
    }

    /// RFC 3550 reception statistics of the stream followed (SSRC and state): what an RR
    /// block would carry.
    pub fn receiver_stats(&mut self) -> Option<(u32, &mut ReceiverStats)> {
        self.rtcp.as_mut().map(|(s, r)| (*s, r))
    }

    /// (packets, payload bytes) sent on the Opus track.
    pub fn opus_sent(&self) -> (u64, u64) {
        let s = self.opus.stats();
        (s.packets, s.payload_bytes)
    }

    /// Packets sent on the AIC track.
    pub fn aic_sent(&self) -> u64 {
        self.aic.as_ref().map_or(0, |a| a.stats().packets)
    }

    fn advance(&mut self, now: Instant) {
        // Time never goes back, even if the driver's inputs interleave.
        self.now = self.now.max(now);
    }

    fn receive(&mut self, now: Instant, datagram: &[u8]) {
        let p = match RtpPacket::parse(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.ingest.stats.malformed += 1;
                return;
            }
        };
        match self.ingest.push_packet(now, &p) {
            Accepted::WrongPayloadType | Accepted::ForeignSsrc => {}
            // The ingest's stream (late and duplicate packets included, as RFC 3550 counts).
            Accepted::Buffered | Accepted::Duplicate | Accepted::Late | Accepted::Overflow => {
                if self.rtcp.as_ref().is_none_or(|(s, _)| *s != p.ssrc) {
                    self.rtcp = Some((p.ssrc, ReceiverStats::new(p.ssrc, 48_000)));
                }
                if let Some((_, r)) = self.rtcp.as_mut() {
                    r.on_rtp(now, p.sequence, p.timestamp);
                }
            }
        }
    }

    fn processed(&mut self, now: Instant, f: &FrameOut) -> Result<(), MediaError> {
        if self.last_out.is_some_and(|l| f.seq <= l) {
            self.stats.stale += 1;
            return Ok(());
        }
        self.last_out = Some(f.seq);
        // The link allows short frames; the packetizer takes exactly one 20 ms frame.
        let pcm: &[i16] = if f.pcm16k.len() == FRAME_16K {
            &f.pcm16k
        } else {
            let n = f.pcm16k.len().min(FRAME_16K);
            self.pcm_out[..n].copy_from_slice(&f.pcm16k[..n]);
            self.pcm_out[n..].fill(0);
            &self.pcm_out
        };
        let mut b = self.spare.pop().unwrap_or_default();
        self.opus.packetize(f.seq, pcm, &mut b)?;
        self.queued.push_back((Track::Opus, b));
        if let Some(aic) = self.aic.as_mut() {
            let mut b = self.spare.pop().unwrap_or_default();
            aic.packetize(f.seq, &f.payload, f.level, f.fallback, &mut b)?;
            self.queued.push_back((Track::Aic, b));
        }
        let (idx, arrived) = self.arrivals[(f.seq % IN_FLIGHT_RING as u64) as usize];
        if idx == f.seq
            && let Some(a) = arrived
        {
            let us = now.saturating_duration_since(a).as_micros() as u64;
            self.stats.latency_us.saturating_record(us.max(1));
        }
        self.stats
            .pipeline_us
            .saturating_record(u64::from(f.pipeline_us).max(1));
        self.stats.frames_out += 1;
        self.stats.fallback += u64::from(f.fallback);
        self.stats.aic_bytes += f.payload.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aic_rtp;
    use crate::jitter::JitterConfig;
    use crate::media::TICKS_PER_FRAME;
    use crate::rtp::{self, Header};
    use opusic_c::{Application, Channels, SampleRate};

    const MS: Duration = Duration::from_millis(1);
    /// The stand-in pipeline's time per frame.
    const PIPE: Duration = Duration::from_millis(7);

    fn params(ssrc: u32, pt: u8) -> RtpStreamParams {
        RtpStreamParams {
            ssrc,
            payload_type: pt,
            first_sequence: 65_530, // wraps within the test
            first_timestamp: u32::MAX - 3 * 960,
        }
    }

    fn session(t0: Instant, jitter: JitterConfig) -> MediaSession {
        MediaSession::new(
            SessionConfig {
                ingest: IngestConfig {
                    jitter,
                    payload_type: Some(111),
                },
                opus: params(0x0A05_0001, 111),
                opus_bitrate_bps: 24_000,
                aic: Some(AicTrack {
                    params: params(0x0A1C_0002, 120),
                    ext_id: 5,
                    model_tag: *b"tag!",
                }),
            },
            t0,
        )
        .unwrap()
    }

    /// A tiny seeded generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// `n` Opus RTP packets of a voiced-ish signal (seq from 100, ts 960 apart, SSRC 42);
    /// `dtx` = (after packet k, frames of silence not sent): the timestamp jumps, the
    /// sequence does not.
    fn publisher(n: usize, dtx: Option<(usize, u32)>) -> Vec<Vec<u8>> {
        let mut enc =
            opusic_c::Encoder::new(Channels::Mono, SampleRate::Hz16000, Application::Voip).unwrap();
        enc.set_inband_fec(opusic_c::InbandFec::Mode1).unwrap();
        enc.set_packet_loss(10).unwrap();
        let mut buf = vec![0u8; 1275];
        let mut ts = 0u32;
        (0..n)
            .map(|k| {
                let f: Vec<f32> = (0..FRAME_16K)
                    .map(|i| {
                        let t = (k * FRAME_16K + i) as f32 / 16_000.0;
                        0.3 * (t * 2.0 * std::f32::consts::PI * 200.0).sin()
                    })
                    .collect();
                let len = enc.encode_float_to_slice(&f, &mut buf).unwrap();
                let mut p = Vec::new();
                rtp::write(
                    &Header {
                        marker: k == 0,
                        payload_type: 111,
                        sequence: 100 + k as u16,
                        timestamp: ts,
                        ssrc: 42,
                    },
                    &[],
                    &buf[..len],
                    &mut p,
                )
                .unwrap();
                ts = ts.wrapping_add(TICKS_PER_FRAME);
                if let Some((after, gap)) = dtx
                    && k == after
                {
                    ts = ts.wrapping_add(gap * TICKS_PER_FRAME);
                }
                p
            })
            .collect()
    }

    /// The stand-in pipeline: the frame's own PCM back, some bytes, every 13th frame a
    /// fallback.
    fn stand_in(f: &FrameIn<'_>) -> FrameOut {
        let fallback = f.seq % 13 == 12;
        FrameOut {
            seq: f.seq,
            level: 6,
            fallback,
            payload: vec![0xA0 | (f.seq % 16) as u8; if fallback { 40 } else { 12 }],
            pcm16k: f.pcm16k.to_vec(),
            pipeline_us: PIPE.as_micros() as u32,
        }
    }

    /// What came out of a run.
    #[derive(Default)]
    struct Run {
        /// (sent at, track, packet)
        sent: Vec<(Instant, Track, Vec<u8>)>,
        /// Frames handed to the pipeline: (seq, concealed).
        processed: Vec<(u64, bool)>,
        /// Frames still inside the stand-in pipeline when the run stopped.
        in_flight: usize,
    }

    /// Drives `s` on virtual time: `arrivals` (instant, datagram) in time order; the stand-in
    /// pipeline answers each frame `PIPE` later, except frames `refuse` says it did not take.
    fn drive(
        s: &mut MediaSession,
        arrivals: &[(Instant, Vec<u8>)],
        until: Instant,
        refuse: impl Fn(u64) -> bool,
    ) -> Run {
        let mut run = Run::default();
        let mut pipeline: VecDeque<(Instant, FrameOut)> = VecDeque::new();
        let mut next = 0;
        let mut wake = s.now;
        loop {
            let t_in = arrivals.get(next).map(|a| a.0);
            let t_pipe = pipeline.front().map(|p| p.0);
            let now = [Some(wake), t_in, t_pipe]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if now > until {
                run.in_flight = pipeline.len();
                return run;
            }
            if t_pipe == Some(now) {
                let (_, f) = pipeline.pop_front().unwrap();
                s.handle_input(Input::Processed(now, &f)).unwrap();
            } else if t_in == Some(now) {
                s.handle_input(Input::Receive(now, &arrivals[next].1))
                    .unwrap();
                next += 1;
            } else {
                s.handle_input(Input::Timeout(now)).unwrap();
            }
            let mut refused = Vec::new();
            wake = loop {
                match s.poll_output() {
                    Output::Timeout(t) => break t.max(now),
                    Output::Transmit(track, b) => run.sent.push((now, track, b.to_vec())),
                    Output::Process(f) => {
                        run.processed.push((f.seq, f.concealed));
                        if refuse(f.seq) {
                            refused.push(f.seq);
                        } else {
                            pipeline.push_back((now + PIPE, stand_in(&f)));
                        }
                    }
                }
                for seq in refused.drain(..) {
                    s.handle_input(Input::NotTaken(seq)).unwrap();
                }
            };
            // A waker that does not move forward would spin: the session must not ask for it.
            assert!(
                wake > now || pipeline.front().is_some_and(|p| p.0 == now) || t_in == Some(now)
            );
        }
    }

    /// (seq, ts, marker) of one track's packets, and for AIC the meta's fallback flag.
    fn track(run: &Run, which: Track) -> Vec<(u16, u32, bool, bool)> {
        run.sent
            .iter()
            .filter(|(_, t, _)| *t == which)
            .map(|(_, _, b)| {
                let (p, meta) = aic_rtp::depacketize(b, 5).unwrap();
                let fb = meta.is_some_and(|m| m.fallback);
                (p.sequence, p.timestamp, p.marker, fb)
            })
            .collect()
    }

    fn contiguous(pkts: &[(u16, u32, bool, bool)]) {
        for w in pkts.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence gap at {w:?}");
            assert_eq!(w[1].1, w[0].1.wrapping_add(960), "timestamp gap at {w:?}");
        }
    }

    #[test]
    fn jitter_loss_and_dtx_in_contiguous_rtp_out_with_latency_accounted() {
        let t0 = Instant::now();
        let mut rng = Rng(0x5eed_1234);
        // 30 s: DTX for 2 s after packet 700, 5 % random loss, 0–20 ms of jitter.
        let pkts = publisher(1500, Some((700, 100)));
        let mut lost = 0;
        let mut arrivals: Vec<(Instant, Vec<u8>)> = Vec::new();
        for (k, p) in pkts.into_iter().enumerate() {
            if rng.below(100) < 5 {
                lost += 1;
                continue;
            }
            let slot = if k <= 700 { k } else { k + 100 } as u32;
            let at = t0 + 20 * MS * slot + MS * rng.below(21) as u32;
            arrivals.push((at, p));
        }
        arrivals.sort_by_key(|a| a.0);
        let received = arrivals.len() as u64;
        let mut s = session(t0, JitterConfig::default());
        let run = drive(&mut s, &arrivals, t0 + Duration::from_secs(33), |_| false);

        // One frame per slot to the pipeline, in order; every one back on both tracks.
        let n = run.processed.len();
        assert!(
            run.processed
                .iter()
                .enumerate()
                .all(|(k, (seq, _))| *seq == k as u64)
        );
        let (opus, aic) = (track(&run, Track::Opus), track(&run, Track::Aic));
        assert_eq!(opus.len() + run.in_flight, n);
        assert_eq!(aic.len(), opus.len());
        assert_eq!(s.stats.frames_out, opus.len() as u64);
        // Contiguous in sequence and timestamp: the subscriber sees no gap, DTX included
        // (the gap's slots are silence frames, still one packet each).
        contiguous(&opus);
        contiguous(&aic);
        assert!(
            opus[0].2 && opus[1..].iter().all(|p| !p.2),
            "marker on the first only"
        );
        // AIC meta follows the stand-in's fallback frames; back from fallback marks a new
        // talkspurt.
        for (k, p) in aic.iter().enumerate() {
            assert_eq!(p.3, k % 13 == 12, "fallback flag of frame {k}");
            assert_eq!(p.2, k == 0 || k % 13 == 0, "marker of frame {k}");
        }
        assert_eq!(s.stats.fallback, (opus.len() / 13) as u64);
        let i = s.ingest_stats();
        let j = s.jitter_stats();
        assert!(i.silence >= 90, "{i:?}");
        assert_eq!(i.packets + i.late, received, "{i:?}");
        assert!(
            i.fec + i.plc >= lost - j.late.min(lost),
            "{i:?} {j:?}, {lost} lost"
        );
        // Latency: every frame decoded from its own packet has a sample: at least the
        // pipeline's time, at most the largest playout delay + a frame + the pipeline.
        let l = &s.stats.latency_us;
        assert_eq!(l.len(), i.decoded);
        assert!(l.min() >= PIPE.as_micros() as u64, "min {} µs", l.min());
        let bound = j.target.max(300 * MS) + 20 * MS + PIPE;
        assert!(l.max() <= bound.as_micros() as u64, "max {} µs", l.max());
        let p50 = l.value_at_quantile(0.5) as f64 / 1000.0;
        assert!((20.0..100.0).contains(&p50), "p50 {p50} ms");
        assert_eq!(s.stats.pipeline_us.len(), opus.len() as u64);
        // The receiver report: every packet that arrived, the lost ones missing.
        let (ssrc, rr) = s.receiver_stats().unwrap();
        assert_eq!(ssrc, 42);
        assert_eq!(u64::from(rr.received()), received);
        assert_eq!(rr.cumulative_lost(), lost as i32);
    }

    #[test]
    fn a_clean_stream_plays_at_the_jitter_target_plus_the_pipeline() {
        let t0 = Instant::now();
        let arrivals: Vec<_> = publisher(250, None)
            .into_iter()
            .enumerate()
            .map(|(k, p)| (t0 + 20 * MS * k as u32, p))
            .collect();
        let mut s = session(t0, JitterConfig::fixed(40 * MS));
        let run = drive(&mut s, &arrivals, t0 + Duration::from_secs(6), |_| false);
        contiguous(&track(&run, Track::Opus));
        let l = &s.stats.latency_us;
        assert_eq!(l.len(), 250);
        // 40 ms in the buffer + 7 ms in the pipeline, for every frame.
        let want = (40 * MS + PIPE).as_micros() as u64;
        assert!(
            l.min() + 1000 >= want && l.max() <= want + 1000,
            "{}..{} µs",
            l.min(),
            l.max()
        );
        // Sent as soon as the pipeline answered.
        assert!(
            run.sent
                .iter()
                .all(|(at, _, _)| (*at - t0).as_micros() % 20_000 == 7_000)
        );
    }

    #[test]
    fn a_frame_not_taken_is_a_timestamp_gap_and_a_stale_one_is_dropped() {
        let t0 = Instant::now();
        let arrivals: Vec<_> = publisher(50, None)
            .into_iter()
            .enumerate()
            .map(|(k, p)| (t0 + 20 * MS * k as u32, p))
            .collect();
        let mut s = session(t0, JitterConfig::fixed(40 * MS));
        let run = drive(&mut s, &arrivals, t0 + Duration::from_secs(2), |seq| {
            seq == 10
        });
        let opus = track(&run, Track::Opus);
        assert_eq!(s.stats.not_taken, 1);
        assert_eq!(opus.len() + run.in_flight, run.processed.len() - 1);
        for w in opus.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence stays contiguous");
        }
        assert_eq!(
            opus[10].1.wrapping_sub(opus[9].1),
            2 * 960,
            "frame 10's slot"
        );
        // A frame back behind one already sent is dropped, not sent out of order.
        let late = FrameOut {
            seq: 3,
            pcm16k: vec![0; FRAME_16K],
            ..Default::default()
        };
        s.handle_input(Input::Processed(t0 + Duration::from_secs(3), &late))
            .unwrap();
        while !matches!(s.poll_output(), Output::Timeout(_)) {} // concealed slots, no packet
        assert_eq!(s.opus_sent().0, opus.len() as u64);
        assert_eq!(s.stats.stale, 1);
    }

    #[test]
    fn every_datagram_is_parsed_once_and_hostile_ones_are_counted() {
        let t0 = Instant::now();
        let mut s = session(t0, JitterConfig::default());
        let good = publisher(3, None);
        let mut stray = good[1].clone();
        stray[8..12].copy_from_slice(&7u32.to_be_bytes()); // another SSRC
        let mut cn = good[2].clone();
        cn[1] = 13; // comfort noise
        for d in [&[0x80u8, 1, 2][..], &good[0], &stray, &cn, &[][..]] {
            s.handle_input(Input::Receive(t0, d)).unwrap();
        }
        let i = s.ingest_stats();
        assert_eq!(
            (i.packets, i.malformed, i.foreign_ssrc, i.wrong_payload_type),
            (1, 2, 1, 1)
        );
        // Only the followed stream's packets are in the receiver statistics.
        assert_eq!(s.receiver_stats().map(|(_, r)| r.received()), Some(1));
        assert_eq!(s.stats.first_in, Some(t0));
        // Short PCM from the pipeline is padded, not refused.
        let f = FrameOut {
            seq: 0,
            pcm16k: vec![100; 10],
            ..Default::default()
        };
        s.handle_input(Input::Processed(t0, &f)).unwrap();
        assert!(matches!(s.poll_output(), Output::Transmit(Track::Opus, _)));
        assert!(matches!(s.poll_output(), Output::Transmit(Track::Aic, _)));
    }
}
