//! The frame assembler: one stream's RTP packets → whole frames, in order (see the module docs
//! of [`super`]).
//!
//! Packets are taken in sequence-number order. The next expected packet goes straight into the
//! depacketizer; a later one waits in a ring of [`AssemblerConfig::window`] slots. A gap is
//! declared lost when it has waited [`AssemblerConfig::reorder_timeout`] since a later packet
//! came, or when a packet arrives too far ahead for the ring. A jump of more than
//! [`RESYNC_DISTANCE`] (either way) is a stray packet, unless the next packet follows it: then,
//! as with a new SSRC, everything starts over.
//!
//! Frame boundaries: a frame is the run of packets with one RTP timestamp, ended by the marker
//! bit (or by the next timestamp). After a loss the assembler does not know where the next
//! frame starts, so it discards packets until one that surely starts a frame: the one after a
//! marker, after a timestamp change between consecutive packets, or one the format marks (VP8
//! S=1/PID=0, H.264 AUD/SPS, AV1 N=1 or a leading sequence header). Packets without payload
//! (padding-only, as browsers send to probe bandwidth) only fill their sequence number.
//!
//! One SSRC is followed: the first seen; another replaces it after [`SSRC_SWITCH_PACKETS`]
//! packets in a row or [`SSRC_SWITCH_SILENCE`] of the followed one (then everything starts
//! over, waiting for a keyframe); stray packets of another SSRC are counted and ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{DEFAULT_MAX_FRAME_BYTES, Depacketizer, ErrorKind, MAX_PACKET_PAYLOAD};
use super::{VideoPayload, VideoRtpError};
use crate::rtp::RtpPacket;

/// A sequence-number jump (forwards or backwards) beyond which a packet is stray, or, when
/// the next packet follows it, the stream is taken to have restarted.
pub const RESYNC_DISTANCE: u16 = 1000;

/// Packets in a row from another SSRC that make the assembler follow it.
pub const SSRC_SWITCH_PACKETS: u32 = 8;
/// Silence of the followed SSRC after which another one is followed at its first packet.
pub const SSRC_SWITCH_SILENCE: Duration = Duration::from_millis(500);

/// Tuning of a [`FrameAssembler`]; `Default` is what the bridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Packets held ahead of a gap (the reorder window), 1..=512.
    pub window: u16,
    /// How long a gap may wait for its packet once a later one has come.
    pub reorder_timeout: Duration,
    /// Cap on one frame's bytes; a bigger frame is an error and dropped.
    pub max_frame_bytes: usize,
    /// Complete frames waiting for [`FrameAssembler::poll_frame`]; the oldest is dropped beyond.
    pub max_ready: usize,
    /// At most one keyframe request per this interval.
    pub keyframe_min_interval: Duration,
    /// While still waiting for a keyframe, ask again after this long.
    pub keyframe_repeat: Duration,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            window: 64,
            reorder_timeout: Duration::from_millis(50),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_ready: 16,
            keyframe_min_interval: Duration::from_millis(300),
            keyframe_repeat: Duration::from_secs(1),
        }
    }
}

/// One complete frame, as its decoder wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledFrame {
    /// VP8: the frame; H.264: an Annex-B access unit; AV1: a temporal unit (low-overhead
    /// format, starting with a temporal delimiter).
    pub data: Vec<u8>,
    pub rtp_timestamp: u32,
    /// A decoder can start at this frame.
    pub keyframe: bool,
    /// It carries parameter sets (H.264 SPS+PPS, AV1 sequence header; VP8: a keyframe).
    pub parameter_sets: bool,
    /// Sequence number of its first packet, and how many packets it had.
    pub first_seq: u16,
    pub packets: u16,
    /// When its last packet was pushed.
    pub completed_at: Instant,
}

/// Counters since the assembler was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Packets pushed (all of them, errors included).
    pub packets: u64,
    /// Frames handed out by `poll_frame`'s queue.
    pub frames: u64,
    pub keyframes: u64,
    /// Frames dropped because a packet of theirs was lost (or some packets before a known
    /// frame start were discarded after a loss).
    pub frames_dropped_incomplete: u64,
    /// Frames dropped because their payload was malformed, unsupported or too large.
    pub frames_dropped_error: u64,
    /// Complete frames dropped because they were not keyframes while waiting for one.
    pub frames_dropped_waiting_keyframe: u64,
    /// Frames dropped because the ready queue was full (`poll_frame` not called).
    pub frames_dropped_unpolled: u64,
    /// Keyframe requests handed out by `poll_keyframe_request`.
    pub keyframe_requests: u64,
    /// Sequence numbers declared lost.
    pub lost: u64,
    /// Packets that came after a later one and were still in time.
    pub reordered: u64,
    pub duplicates: u64,
    /// Packets that came after their sequence number was given up.
    pub late: u64,
    /// Payload errors by kind.
    pub errors_malformed: u64,
    pub errors_unsupported: u64,
    pub errors_too_large: u64,
    /// Restarts: a new SSRC, or a sequence-number jump beyond [`RESYNC_DISTANCE`] confirmed by
    /// the next packet.
    pub resyncs: u64,
    /// Packets beyond [`RESYNC_DISTANCE`] from the stream's sequence numbers, ignored.
    pub stray: u64,
    /// Packets of another SSRC than the one followed, ignored.
    pub foreign_ssrc: u64,
    /// Packets without payload (padding-only), skipped.
    pub padding: u64,
}

#[derive(Debug)]
struct Slot {
    present: bool,
    seq: u16,
    timestamp: u32,
    marker: bool,
    arrival: Instant,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum FrameState {
    Good,
    /// A packet of it was lost.
    Incomplete,
    /// Its payload was refused.
    Error,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    first_seq: u16,
    packets: u16,
    state: FrameState,
}

/// One incoming video stream's frame assembler (see the module docs).
#[derive(Debug)]
pub struct FrameAssembler {
    cfg: AssemblerConfig,
    depack: Depacketizer,
    ssrc: Option<u32>,
    /// When the followed SSRC last sent a packet.
    last_packet_at: Option<Instant>,
    /// Another SSRC and how many packets in a row it has sent.
    candidate: Option<(u32, u32)>,
    /// The next sequence number to take; `None` before the first packet.
    next_seq: Option<u16>,
    /// After a stray packet: the sequence number that would confirm a restart.
    bad_seq: Option<u16>,
    /// Bit i: sequence number `next_seq - 1 - i` was received (for duplicates vs late).
    history: u64,
    ring: Vec<Slot>,
    buffered: usize,
    /// Since when the head-of-line gap has been known.
    gap_since: Option<Instant>,
    cur: Option<Current>,
    frame: Vec<u8>,
    /// The previous packet taken had the marker bit: the next one starts a frame.
    boundary: bool,
    /// The previous packet taken was `next_seq - 1` (no loss between) and had this timestamp.
    prev_ts: Option<u32>,
    /// Packets are being discarded until a frame start (counted once as a dropped frame).
    discarding: bool,
    ready: VecDeque<AssembledFrame>,
    pool: Vec<Vec<u8>>,
    waiting_keyframe: bool,
    request_pending: bool,
    last_request: Option<Instant>,
    stats: AssemblerStats,
}

impl FrameAssembler {
    /// An assembler with the default configuration.
    pub fn new(payload: VideoPayload) -> Self {
        Self::with_config(payload, AssemblerConfig::default())
    }

    pub fn with_config(payload: VideoPayload, mut cfg: AssemblerConfig) -> Self {
        cfg.window = cfg.window.clamp(1, 512);
        cfg.max_ready = cfg.max_ready.max(1);
        let now = Instant::now();
        let ring = (0..cfg.window)
            .map(|_| Slot {
                present: false,
                seq: 0,
                timestamp: 0,
                marker: false,
                arrival: now,
                data: Vec::new(),
            })
            .collect();
        Self {
            depack: Depacketizer::new(payload, cfg.max_frame_bytes),
            cfg,
            ssrc: None,
            last_packet_at: None,
            candidate: None,
            next_seq: None,
            bad_seq: None,
            history: 0,
            ring,
            buffered: 0,
            gap_since: None,
            cur: None,
            frame: Vec::new(),
            boundary: false,
            prev_ts: None,
            discarding: false,
            ready: VecDeque::new(),
            pool: Vec::new(),
            waiting_keyframe: true,
            request_pending: false,
            last_request: None,
            stats: AssemblerStats::default(),
        }
    }

    pub fn config(&self) -> &AssemblerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Whether frames are being dropped until a keyframe.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_keyframe
    }

    /// Takes one RTP packet of the stream (its payload type already checked by the caller).
    /// An `Err` says what was wrong with this packet's payload (the frame it belongs to is
    /// dropped); it is counted in [`stats`](Self::stats) either way, and the assembler stays
    /// usable. Errors of packets taken from the reorder window at the same time are counted
    /// only. Never panics.
    pub fn push(&mut self, now: Instant, pkt: &RtpPacket<'_>) -> Result<(), VideoRtpError> {
        self.stats.packets += 1;
        let mut err = None;
        self.advance(now, &mut err);
        if pkt.payload.len() > MAX_PACKET_PAYLOAD {
            let e = VideoRtpError::PacketTooLarge(pkt.payload.len());
            self.count_error(&e);
            // Its frame cannot be complete: the packet is as good as lost.
            return Err(e);
        }
        if self.ssrc != Some(pkt.ssrc) {
            if !self.switch_ssrc(now, pkt.ssrc) {
                self.stats.foreign_ssrc += 1;
                return first(err);
            }
        } else {
            self.candidate = None;
        }
        self.last_packet_at = Some(now);
        let seq = pkt.sequence;
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next);
        let back = next.wrapping_sub(seq);
        if ahead > RESYNC_DISTANCE && back > RESYNC_DISTANCE {
            // Far from the stream: a restart if the next packet follows this one (RFC 3550
            // A.1's probation), else a stray packet.
            if self.bad_seq != Some(seq) {
                self.bad_seq = Some(seq.wrapping_add(1));
                self.stats.stray += 1;
                return first(err);
            }
            self.resync();
            self.next_seq = Some(seq);
        } else if ahead >= 0x8000 {
            if back <= 64 && (self.history >> (back - 1)) & 1 == 1 {
                self.stats.duplicates += 1;
            } else {
                self.stats.late += 1;
            }
            return first(err);
        }
        self.bad_seq = None;
        // Make room: a packet too far ahead pushes the head-of-line gaps out.
        while seq.wrapping_sub(self.next_seq.unwrap_or(seq)) >= self.cfg.window {
            self.skip_gap(seq, &mut err);
        }
        let next = self.next_seq.unwrap_or(seq);
        if seq == next {
            if self.buffered > 0 {
                self.stats.reordered += 1;
            }
            let r = self.take(seq, pkt.timestamp, pkt.marker, pkt.payload, now);
            if let Err(e) = r {
                err.get_or_insert(e);
            }
            self.next_seq = Some(seq.wrapping_add(1));
            self.history = (self.history << 1) | 1;
            self.drain(&mut err);
        } else {
            let i = self.index(seq);
            let s = &mut self.ring[i];
            if s.present {
                self.stats.duplicates += 1;
                return first(err);
            }
            s.present = true;
            s.seq = seq;
            s.timestamp = pkt.timestamp;
            s.marker = pkt.marker;
            s.arrival = now;
            s.data.clear();
            s.data.extend_from_slice(pkt.payload);
            self.buffered += 1;
            self.gap_since.get_or_insert(now);
        }
        first(err)
    }

    /// The next complete frame, oldest first.
    pub fn poll_frame(&mut self) -> Option<AssembledFrame> {
        let f = self.ready.pop_front()?;
        self.stats.frames += 1;
        self.stats.keyframes += u64::from(f.keyframe);
        Some(f)
    }

    /// Hands a frame's buffer back for reuse (optional; a few are kept).
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.pool.len() < 4 {
            data.clear();
            self.pool.push(data);
        }
    }

    /// Whether to send a keyframe request (RTCP PLI) now. Call it regularly (every few ms or
    /// at least with every packet): it also gives up on gaps that waited too long.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> bool {
        let mut err = None;
        self.advance(now, &mut err);
        if !self.waiting_keyframe {
            return false;
        }
        let since = self.last_request.map(|t| now.saturating_duration_since(t));
        let due = match since {
            None => self.request_pending,
            Some(d) if self.request_pending => d >= self.cfg.keyframe_min_interval,
            Some(d) => d >= self.cfg.keyframe_repeat,
        };
        if due {
            self.request_pending = false;
            self.last_request = Some(now);
            self.stats.keyframe_requests += 1;
        }
        due
    }

    /// Whether to follow `ssrc` from now on: the first one; or another one once it has sent
    /// [`SSRC_SWITCH_PACKETS`] packets in a row, or once the followed one has been silent for
    /// [`SSRC_SWITCH_SILENCE`] (stray packets of another stream do not break this one).
    fn switch_ssrc(&mut self, now: Instant, ssrc: u32) -> bool {
        if self.ssrc.is_some() {
            let run = match self.candidate {
                Some((c, n)) if c == ssrc => n + 1,
                _ => 1,
            };
            self.candidate = Some((ssrc, run));
            let silent = self
                .last_packet_at
                .is_none_or(|t| now.saturating_duration_since(t) >= SSRC_SWITCH_SILENCE);
            if run < SSRC_SWITCH_PACKETS && !silent {
                return false;
            }
            self.resync();
        }
        self.candidate = None;
        self.ssrc = Some(ssrc);
        true
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) % self.ring.len()
    }

    /// Gives up on gaps that have waited long enough.
    fn advance(&mut self, now: Instant, err: &mut Option<VideoRtpError>) {
        while let Some(since) = self.gap_since {
            if now.saturating_duration_since(since) < self.cfg.reorder_timeout {
                return;
            }
            let target = self.next_seq.map_or(0, |n| n.wrapping_add(self.cfg.window));
            self.skip_gap(target, err);
        }
    }

    /// Declares the head-of-line gap lost: moves to the first buffered packet (or, with none,
    /// to `target`, the packet that did not fit the window) and takes what follows.
    fn skip_gap(&mut self, target: u16, err: &mut Option<VideoRtpError>) {
        let Some(next) = self.next_seq else {
            return;
        };
        let w = self.cfg.window;
        let to = if self.buffered > 0 {
            (1..w)
                .map(|k| next.wrapping_add(k))
                .find(|&s| {
                    let sl = &self.ring[self.index(s)];
                    sl.present && sl.seq == s
                })
                .unwrap_or(next.wrapping_add(1))
        } else {
            target
        };
        let lost = to.wrapping_sub(next).max(1);
        self.stats.lost += u64::from(lost);
        self.history = if lost >= 64 { 0 } else { self.history << lost };
        self.next_seq = Some(to);
        self.on_loss();
        self.drain(err);
    }

    /// Takes the buffered packets that now follow in order.
    fn drain(&mut self, err: &mut Option<VideoRtpError>) {
        while let Some(next) = self.next_seq {
            let i = self.index(next);
            if !(self.ring[i].present && self.ring[i].seq == next) {
                break;
            }
            let mut data = std::mem::take(&mut self.ring[i].data);
            let (ts, marker, arrival) = {
                let s = &mut self.ring[i];
                s.present = false;
                (s.timestamp, s.marker, s.arrival)
            };
            self.buffered -= 1;
            if let Err(e) = self.take(next, ts, marker, &data, arrival) {
                err.get_or_insert(e);
            }
            data.clear();
            self.ring[i].data = data;
            self.next_seq = Some(next.wrapping_add(1));
            self.history = (self.history << 1) | 1;
        }
        self.gap_since = if self.buffered == 0 {
            None
        } else {
            self.ring
                .iter()
                .filter(|s| s.present)
                .map(|s| s.arrival)
                .min()
        };
    }

    /// A loss: the frame in progress is broken, the next frame start is unknown, and only a
    /// keyframe can follow.
    fn on_loss(&mut self) {
        if let Some(c) = &mut self.cur {
            c.state = FrameState::Incomplete;
        }
        self.boundary = false;
        self.prev_ts = None;
        self.want_keyframe();
    }

    fn want_keyframe(&mut self) {
        self.waiting_keyframe = true;
        self.request_pending = true;
    }

    /// Starts over (new SSRC, big jump): everything buffered and in progress is dropped.
    fn resync(&mut self) {
        self.stats.resyncs += 1;
        for s in &mut self.ring {
            s.present = false;
        }
        self.buffered = 0;
        self.gap_since = None;
        self.next_seq = None;
        self.history = 0;
        self.discarding = false;
        if let Some(c) = self.cur.take()
            && !matches!(c.state, FrameState::Error)
        {
            self.stats.frames_dropped_incomplete += 1;
        }
        self.depack.reset();
        self.frame.clear();
        self.boundary = false;
        self.prev_ts = None;
        self.want_keyframe();
    }

    fn count_error(&mut self, e: &VideoRtpError) {
        match e.kind() {
            ErrorKind::Malformed => self.stats.errors_malformed += 1,
            ErrorKind::Unsupported => self.stats.errors_unsupported += 1,
            ErrorKind::TooLarge => self.stats.errors_too_large += 1,
        }
    }

    /// Takes the packet `seq` (the next in order).
    fn take(
        &mut self,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        arrival: Instant,
    ) -> Result<(), VideoRtpError> {
        if payload.is_empty() {
            // Padding-only (bandwidth probing): it holds a sequence number, nothing else.
            self.stats.padding += 1;
            return Ok(());
        }
        if self.cur.is_some_and(|c| c.timestamp != ts) {
            // The frame ended without its marker bit (a new frame starts here only if no packet
            // is missing in between: `prev_ts` says so).
            self.finish(arrival);
        }
        let mut result = Ok(());
        if self.cur.is_none() {
            let start = self.boundary
                || self.prev_ts.is_some_and(|p| p != ts)
                || self.depack.is_frame_start(payload);
            if start {
                self.discarding = false;
                self.depack.reset();
                self.frame.clear();
                self.cur = Some(Current {
                    timestamp: ts,
                    first_seq: seq,
                    packets: 0,
                    state: FrameState::Good,
                });
            } else if !self.discarding {
                self.discarding = true;
                self.stats.frames_dropped_incomplete += 1;
            }
        }
        if let Some(c) = &mut self.cur {
            c.packets = c.packets.saturating_add(1);
            if matches!(c.state, FrameState::Good) {
                let mut r = self.depack.push(payload, &mut self.frame);
                if r.is_ok() && self.frame.len() > self.cfg.max_frame_bytes {
                    r = Err(VideoRtpError::FrameTooLarge(self.cfg.max_frame_bytes));
                }
                if let Err(e) = r {
                    c.state = FrameState::Error;
                    self.frame.clear();
                    self.count_error(&e);
                    result = Err(e);
                }
            }
        }
        if marker && self.cur.is_some() {
            self.finish(arrival);
        }
        if marker {
            self.discarding = false;
        }
        self.boundary = marker;
        self.prev_ts = Some(ts);
        result
    }

    /// Ends the frame in progress: hands it on if it is whole, decodable and wanted.
    fn finish(&mut self, arrival: Instant) {
        let Some(c) = self.cur.take() else {
            return;
        };
        let info = match c.state {
            FrameState::Incomplete => {
                self.stats.frames_dropped_incomplete += 1;
                None
            }
            FrameState::Error => {
                self.stats.frames_dropped_error += 1;
                self.want_keyframe();
                None
            }
            FrameState::Good => match self.depack.finish(&self.frame) {
                Ok(i) => Some(i),
                Err(e) => {
                    self.count_error(&e);
                    self.stats.frames_dropped_error += 1;
                    self.want_keyframe();
                    None
                }
            },
        };
        self.depack.reset();
        let Some(info) = info else {
            self.frame.clear();
            return;
        };
        if self.waiting_keyframe && !info.keyframe {
            self.stats.frames_dropped_waiting_keyframe += 1;
            self.request_pending = true;
            self.frame.clear();
            return;
        }
        if info.keyframe {
            self.waiting_keyframe = false;
            self.request_pending = false;
        }
        if self.ready.len() >= self.cfg.max_ready {
            // The caller is not polling: the oldest goes, and what follows needs a keyframe.
            if let Some(old) = self.ready.pop_front() {
                self.recycle(old.data);
            }
            self.stats.frames_dropped_unpolled += 1;
            if !info.keyframe {
                // It needs the frame just dropped.
                self.stats.frames_dropped_waiting_keyframe += 1;
                self.want_keyframe();
                self.frame.clear();
                return;
            }
        }
        let fresh = self.pool.pop().unwrap_or_default();
        let data = std::mem::replace(&mut self.frame, fresh);
        self.ready.push_back(AssembledFrame {
            data,
            rtp_timestamp: c.timestamp,
            keyframe: info.keyframe,
            parameter_sets: info.parameter_sets,
            first_seq: c.first_seq,
            packets: c.packets,
            completed_at: arrival,
        });
    }
}

fn first(err: Option<VideoRtpError>) -> Result<(), VideoRtpError> {
    err.map_or(Ok(()), Err)
}
