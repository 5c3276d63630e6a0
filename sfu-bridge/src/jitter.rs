//! An adaptive jitter buffer, sans-IO: packets in with `now`, one playout decision per 20 ms
//! output slot out; no clock reads, no allocation per packet once the ring's buffers have grown,
//! memory bounded by `capacity` slots.
//!
//! # Target delay from measured jitter (NetEQ's idea)
//! Each packet (duplicates aside, late ones included) gets a *relative delay*: its arrival minus
//! the arrival its RTP timestamp predicts, `d = (arrival − epoch) − (ts − ts₀)/clock`, minus the
//! smallest `d` of the last ~2 s of arrivals (a ring of eight 250 ms minima: the fastest recent
//! packet is the reference, so sender clock drift and slow route changes move the reference, not
//! the jitter). Relative delays go into a histogram of [`BUCKETS`] × 5 ms (0–320 ms, larger ones
//! in the top bucket) with a forgetting factor of 0.99 per packet (the first packets are averaged
//! so an empty histogram does not dominate). The wanted delay is
//! `clamp(q95 + 5 ms, min_delay, max_delay)` (+ half a frame on a fixed grid, see
//! [`JitterConfig::slew`]) where q95 is the upper edge of the bucket holding the 95th
//! percentile. The **target** jumps up to the wanted delay at once (a spike of late
//! packets raises it within the spike), and to any packet's relative delay + the margin when
//! that packet came later than the target (peak hold: stalls too rare for the quantile, such as
//! a loaded machine's scheduling, still raise it); it decays towards the wanted delay by at most
//! 10 ms per second of playout. It starts at [`JitterConfig::delay`], before anything is measured.
//! While frames are being lost (one in the last [`LOSS_HOLD`] of playout) the lower bound is
//! [`JitterConfig::loss_delay`] (25 ms: a frame + the margin), so that the packet after a lost one
//! is in hand at its slot and its in-band FEC rebuilds the loss; on a clean quiet link the bound
//! is `min_delay` (10 ms), at which a lost frame's successor always comes too late.
//!
//! # Playout by RTP timestamp
//! Slots are a 20 ms grid on the receiver's clock. With [`JitterConfig::slew`] (the default,
//! 1 ms) each slot's due time moves by at most that much towards *reference arrival of its
//! audio + target*: the playout delay sits at the target within a millisecond instead of
//! anywhere in ±half a frame, and the grid follows the sender's clock (drift never piles up).
//! That suits a bridge, whose output goes to another jitter buffer: a 1 ms move per 20 ms is
//! jitter to it, not a glitch. With `slew = 0` the grid is fixed (a sound card's clock) and only
//! the whole-frame corrections below move the delay. The buffer keeps a playout timestamp
//! `play_ts` (which RTP time the next slot plays) and measures the *playout delay*
//! `p = slot time − reference arrival of play_ts` (how long after the fastest-path arrival the
//! audio plays; this is the buffer level the target is compared with — the instantaneous count of
//! waiting packets swings by a frame with every arrival). Packets are held by sequence number
//! (loss shows as a sequence gap; a DTX gap is a timestamp jump with contiguous sequence numbers).
//! For each slot:
//! * the next packet is here and on time → [`Playout::Frame`]; first, if `p` is above the target by
//!   more than the band (a frame with slew, half a frame on a fixed grid), the frame may be
//!   **dropped to shrink** ([`Playout::Dropped`]: not a
//!   slot, the caller decodes it to keep its decoder state and pops again) — only after the caller
//!   reported a quiet frame ([`JitterBuffer::set_quiet`]), or after a second above target, or at
//!   once above `max_delay`; at most one drop per 5 slots, and only when the frame after it is
//!   here. If `p` is below the target by more than the band the buffer **grows by
//!   concealment** ([`Playout::Conceal`], no packet consumed), after a quiet frame or when more than
//!   the band + a frame short, at most every other slot;
//! * the next packet is missing but a later one is here → [`Playout::Lost`] (each missing frame is
//!   reported once; the caller can use the later packet's FEC) — unless that frame's time already
//!   passed while the buffer was empty and concealing, then it is only counted in
//!   [`JitterStats::lost`] (its slot was the concealment);
//! * nothing is buffered → an underflow: [`Playout::Conceal`] for the first 3 slots, then
//!   [`Playout::Silence`]; the playout timestamp keeps running and no sequence number is consumed
//!   (a late packet is not declared lost: when it comes it is played, and the delay has grown by
//!   its lateness — that is how sustained lateness and a slow sender clock are absorbed).
//!
//! **Re-anchoring.** After an underflow or across a timestamp gap (DTX: the next packet's
//! timestamp is ahead of `play_ts`; the marker bit is not needed, the timestamp says it), the next
//! packet plays at the first slot where *its* playout delay reaches `target − frame/2`; the slots
//! before are [`Playout::Silence`]. So a talkspurt starts at the current target whatever happened
//! to the clocks during the gap, and a packet that comes after an underflow plays at once (never
//! late for good). A packet that would play more than `max_delay` + a frame after its reference
//! arrival is discarded as late instead.
//!
//! After re-anchoring `p` lies within ±frame/2 of the target; the slew brings it to the target
//! within ≤ 10 slots and keeps it there (on a fixed grid, shrink and grow keep it within the
//! band), which absorbs clock drift both ways.
//!
//! Late packets (behind the playout point), duplicates and packets beyond the window are counted
//! and dropped. A packet far ahead of the window while the buffer is empty (a long outage, or
//! the sender's sequence numbers jumped), or two in a row far behind it, restart the timeline
//! ([`JitterStats::resyncs`]; the frames skipped are not counted as lost).

use std::time::{Duration, Instant};

/// Width of one histogram bucket of relative delay, µs.
const BUCKET_US: i64 = 5_000;
/// Histogram buckets: 0–320 ms of relative delay.
pub const BUCKETS: usize = 64;
/// The quantile of relative delay the target covers.
const QUANTILE: f64 = 0.95;
/// Per-packet forgetting factor of the histogram (time constant ≈ 100 packets, 2 s of speech).
const FORGET: f64 = 0.99;
/// Added to the quantile. A fixed grid (no slew) adds half a frame more: its playout delay
/// wanders ±half a frame around the target, and the low side must still cover the jitter.
const MARGIN_US: i64 = 5_000;
/// How fast the target may fall, µs per second of playout.
const DECAY_US_PER_S: i64 = 10_000;
/// The reference (fastest recent packet) is the minimum over this many buckets of arrival time…
const REF_BUCKETS: usize = 8;
/// …of this many ms each.
const REF_BUCKET_MS: u128 = 250;
/// Empty-buffer slots reported as [`Playout::Conceal`] before [`Playout::Silence`].
const SILENCE_AFTER: u32 = 3;
/// Slots between two drops.
const SHRINK_SPACING: u32 = 5;
/// Slots above target after which a frame is dropped even if the caller never reported quiet.
const FORCE_SHRINK_AFTER: u32 = 50;
/// Slots between two concealments to grow.
const GROW_SPACING: u32 = 2;

#[derive(Debug, Clone)]
pub struct JitterConfig {
    /// Audio per packet (one frame per packet: 20 ms Opus or AIC, as the SFU forwards them).
    pub frame: Duration,
    /// RTP clock rate (48 kHz for Opus and AIC).
    pub clock_rate: u32,
    /// Initial target delay, used until jitter has been measured (clamped to the bounds).
    pub delay: Duration,
    /// Lower bound of the target: on a clean link the audio plays this long after the fastest
    /// path's arrival, give or take half a frame.
    pub min_delay: Duration,
    /// Upper bound of the target; packets that would play later than this (+ a frame) are
    /// discarded as late.
    pub max_delay: Duration,
    /// Frames held at most (window for reordering and early packets).
    pub capacity: usize,
    /// How far the slot grid may move per slot towards *reference arrival + target*, so the
    /// playout delay follows the target with sub-frame precision and the slots follow the
    /// sender's clock. Right for a bridge, whose output is packets to another jitter buffer
    /// (a grid move of ≤ 1 ms per 20 ms is network jitter to that receiver, not a glitch).
    /// Zero: a fixed grid (a sound card's clock), corrected by whole frames only.
    pub slew: Duration,
    /// While frames are being lost (one lost in the last [`LOSS_HOLD`] of playout), the target
    /// is at least this: by default one frame + the 5 ms margin, so that at a lost frame's slot
    /// the packet after it is already here and its in-band FEC (Opus LBRR) rebuilds the lost
    /// frame instead of PLC guessing it. On a clean quiet link the floor stays `min_delay`
    /// (10 ms); the first loss is concealed, the ones after it get FEC — 15 ms more delay
    /// bought for far better audio under loss. Zero turns it off.
    pub loss_delay: Duration,
}

/// How long (of playout) after the last lost frame [`JitterConfig::loss_delay`] holds.
pub const LOSS_HOLD: Duration = Duration::from_secs(10);

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame: Duration::from_millis(20),
            clock_rate: 48_000,
            // Start one frame deep (a loaded machine's first packets jitter by its scheduling),
            // settle to what is measured, down to 10 ms on a quiet link.
            delay: Duration::from_millis(20),
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(300),
            capacity: 32,
            slew: Duration::from_millis(1),
            loss_delay: Duration::from_millis(25),
        }
    }
}

impl JitterConfig {
    /// A non-adaptive buffer: the target is pinned at `delay` (min = max = delay).
    pub fn fixed(delay: Duration) -> Self {
        Self {
            delay,
            min_delay: delay,
            max_delay: delay,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Accepted,
    Duplicate,
    /// Behind the playout point (its slot has passed), or too far behind to play.
    Late,
    /// Too far ahead of the playout point for the window.
    Overflow,
}

/// What [`JitterBuffer::pop`] decided. Every variant but [`Playout::Dropped`] is one 20 ms slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// The frame with this extended sequence number; its payload was written to `out`.
    Frame(u64),
    /// This frame never arrived (a later one did): conceal it (its successor may carry FEC).
    Lost(u64),
    /// No packet consumed: the buffer grows by one frame (below target) or is empty (underflow,
    /// the first slots of a gap): conceal.
    Conceal,
    /// A gap: DTX, a stream that stopped, or waiting to re-anchor the next talkspurt. Play
    /// comfort silence (fading out concealment).
    Silence,
    /// Not a slot: this frame is dropped to shrink the buffer; its payload was written to `out`
    /// (decode it to keep the decoder's state, discard the audio) and pop again.
    Dropped(u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub late: u64,
    pub overflow: u64,
    pub played: u64,
    /// Missing frames, each counted once (reported as [`Playout::Lost`] or concealed by an
    /// underflow while their time passed).
    pub lost: u64,
    /// Frames dropped to shrink.
    pub dropped: u64,
    /// Concealments to grow (the buffer was below target).
    pub grown: u64,
    /// Slots with an empty buffer reported as [`Playout::Conceal`].
    pub underflows: u64,
    /// Slots of [`Playout::Silence`].
    pub silence: u64,
    /// Packets played by the re-anchor rule (after an underflow or a timestamp gap).
    pub reanchors: u64,
    /// Timeline restarts on a sequence-number jump.
    pub resyncs: u64,
    /// Current target delay.
    pub target: Duration,
    /// Playout delay of the last played frame (after its reference arrival).
    pub delay: Duration,
    /// Audio buffered ahead of the playout point at the last slot.
    pub level: Duration,
    /// The measured jitter: the quantile of relative delay the target covers (before the
    /// margin and the bounds).
    pub measured: Duration,
    /// Total movement of the slot grid by [`JitterConfig::slew`], µs.
    pub slewed_us: u64,
    /// Packets later than the target, which raised it at once (peak hold).
    pub peaks: u64,
}

/// Relative-delay statistics and the target.
#[derive(Debug)]
struct Estimator {
    clock: i128,
    /// Arrival and extended timestamp of the first packet.
    epoch: Option<(Instant, i64)>,
    /// (arrival bucket id + 1, minimum raw delay µs); id 0 = unused.
    mins: [(u64, i64); REF_BUCKETS],
    /// Raw delay of the fastest recent packet, µs.
    reference: i64,
    hist: [f64; BUCKETS],
    packets: u64,
    /// Upper edge of the bucket holding the quantile, µs.
    measured_us: i64,
    /// Packets that raised the target by the peak hold.
    peaks: u64,
    margin_us: i64,
    want_us: i64,
    target_us: i64,
    min_us: i64,
    max_us: i64,
    /// [`JitterConfig::loss_delay`] within the bounds, µs.
    loss_us: i64,
    /// Playout left (µs) in which the loss floor holds.
    loss_hold_us: i64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4)
}

/// `a − b` in µs, signed.
fn signed_us(a: Instant, b: Instant) -> i64 {
    if a >= b {
        micros(a - b)
    } else {
        -micros(b - a)
    }
}

impl Estimator {
    fn new(cfg: &JitterConfig) -> Self {
        let min_us = micros(cfg.min_delay);
        let max_us = micros(cfg.max_delay).max(min_us);
        let target_us = micros(cfg.delay).clamp(min_us, max_us);
        Self {
            clock: i128::from(cfg.clock_rate.max(1)),
            epoch: None,
            mins: [(0, 0); REF_BUCKETS],
            reference: 0,
            hist: [0.0; BUCKETS],
            packets: 0,
            measured_us: 0,
            peaks: 0,
            margin_us: if cfg.slew.is_zero() {
                MARGIN_US + micros(cfg.frame) / 2
            } else {
                MARGIN_US
            },
            want_us: target_us,
            target_us,
            min_us,
            max_us,
            loss_us: micros(cfg.loss_delay).clamp(min_us, max_us),
            loss_hold_us: 0,
        }
    }

    /// The target's lower bound now: `min_delay`, raised to the loss floor while losses are
    /// recent.
    fn floor_us(&self) -> i64 {
        if self.loss_hold_us > 0 {
            self.min_us.max(self.loss_us)
        } else {
            self.min_us
        }
    }

    /// A frame was lost: the loss floor holds for the next [`LOSS_HOLD`] of playout, and the
    /// target rises to it at once (the slot grid then slews there).
    fn on_loss(&mut self) {
        self.loss_hold_us = micros(LOSS_HOLD);
        self.want_us = self.want_us.max(self.floor_us());
        self.target_us = self.target_us.max(self.want_us);
    }

    /// Starts a new timeline (first packet, or a resync): the histogram is kept.
    fn rebase(&mut self, now: Instant, ts: i64) {
        self.epoch = Some((now, ts));
        self.mins = [(0, 0); REF_BUCKETS];
        self.reference = 0;
    }

    fn ts_us(&self, ts: i64) -> i64 {
        let ts0 = self.epoch.map_or(0, |e| e.1);
        let dt = i128::from(ts) - i128::from(ts0);
        (dt * 1_000_000 / self.clock).clamp(-(1 << 60), 1 << 60) as i64
    }

    /// Arrival at `at` minus the arrival timestamp `ts` predicts (µs, offset by the epoch).
    fn raw_delay(&self, at: Instant, ts: i64) -> i64 {
        let Some((t0, _)) = self.epoch else { return 0 };
        signed_us(at, t0).saturating_sub(self.ts_us(ts))
    }

    /// How long after its reference arrival timestamp `ts` plays if it plays at `at`.
    fn delay_us(&self, at: Instant, ts: i64) -> i64 {
        self.raw_delay(at, ts).saturating_sub(self.reference)
    }

    fn observe(&mut self, now: Instant, ts: i64) {
        let Some((t0, _)) = self.epoch else { return };
        let d = self.raw_delay(now, ts);
        let id = u64::try_from(now.saturating_duration_since(t0).as_millis() / REF_BUCKET_MS)
            .unwrap_or(u64::MAX - 1)
            + 1;
        let k = (id % REF_BUCKETS as u64) as usize;
        if self.mins[k].0 == id {
            self.mins[k].1 = self.mins[k].1.min(d);
        } else {
            self.mins[k] = (id, d);
        }
        self.reference = self
            .mins
            .iter()
            .filter(|(i, _)| *i != 0 && i.abs_diff(id) < REF_BUCKETS as u64)
            .map(|m| m.1)
            .min()
            .unwrap_or(d);
        let r = d.saturating_sub(self.reference).max(0);
        let b = usize::try_from(r / BUCKET_US)
            .unwrap_or(BUCKETS)
            .min(BUCKETS - 1);
        // Average the first packets, then forget at FORGET per packet.
        let f = FORGET.min(1.0 - 1.0 / (self.packets as f64 + 1.0));
        for h in &mut self.hist {
            *h *= f;
            if *h < 1e-12 {
                *h = 0.0;
            }
        }
        self.hist[b] += 1.0 - f;
        self.packets = self.packets.saturating_add(1);
        let total: f64 = self.hist.iter().sum();
        let mut acc = 0.0;
        let mut q = BUCKETS;
        for (i, h) in self.hist.iter().enumerate() {
            acc += h;
            if acc >= QUANTILE * total {
                q = i + 1;
                break;
            }
        }
        self.measured_us = q as i64 * BUCKET_US;
        self.want_us = (self.measured_us + self.margin_us).clamp(self.floor_us(), self.max_us);
        self.target_us = self.target_us.max(self.want_us);
        // Peak hold: a packet later than the target (it missed, or would have missed, its
        // slot) raises the target to cover it at once, even when such packets are too rare
        // for the quantile (a loaded machine's scheduling stalls); the decay brings it down.
        if r > self.target_us {
            self.target_us = (r + self.margin_us).clamp(self.floor_us(), self.max_us);
            self.peaks += 1;
        }
    }

    /// One slot of playout passed: the target decays towards the wanted delay.
    fn decay(&mut self, frame_us: i64) {
        if self.loss_hold_us > 0 {
            self.loss_hold_us -= frame_us;
            if self.loss_hold_us <= 0 {
                self.want_us = (self.measured_us + self.margin_us).clamp(self.min_us, self.max_us);
            }
        }
        let step = (DECAY_US_PER_S * frame_us / 1_000_000).max(1);
        if self.target_us > self.want_us {
            self.target_us = (self.target_us - step).max(self.want_us);
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    seq: Option<u64>,
    ts: i64,
    arrived: Option<Instant>,
    payload: Vec<u8>,
}

#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    /// RTP ticks per frame.
    ticks: i64,
    frame_us: i64,
    slots: Vec<Slot>,
    est: Estimator,
    /// Packets in `slots`.
    buffered: usize,
    /// Extended sequence number of the next packet to play.
    next: u64,
    highest: u64,
    /// Extended timestamp of the highest packet (for extending the next one).
    last_ts: i64,
    /// The RTP time the next slot plays.
    play_ts: i64,
    /// When the next slot is due; None before the first packet.
    slot_due: Option<Instant>,
    /// The next packet is to be placed by the re-anchor rule.
    resume: bool,
    empty_run: u32,
    /// Packets in a row far behind the playout point.
    far_behind_run: u8,
    since_drop: u32,
    since_grow: u32,
    over_run: u32,
    quiet: bool,
    /// Arrival time of the packet the last [`Playout::Frame`] came from.
    last_arrival: Option<Instant>,
    pub stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(mut cfg: JitterConfig) -> Self {
        cfg.frame = cfg.frame.max(Duration::from_millis(1));
        cfg.clock_rate = cfg.clock_rate.max(1);
        cfg.capacity = cfg.capacity.max(1);
        let frame_us = micros(cfg.frame);
        let ticks = (i128::from(frame_us) * i128::from(cfg.clock_rate) / 1_000_000).max(1) as i64;
        let est = Estimator::new(&cfg);
        Self {
            slots: (0..cfg.capacity).map(|_| Slot::default()).collect(),
            ticks,
            frame_us,
            stats: JitterStats {
                target: Duration::from_micros(est.target_us as u64),
                ..Default::default()
            },
            est,
            cfg,
            buffered: 0,
            next: 0,
            highest: 0,
            last_ts: 0,
            play_ts: 0,
            slot_due: None,
            resume: true,
            empty_run: 0,
            far_behind_run: 0,
            since_drop: u32::MAX,
            since_grow: u32::MAX,
            over_run: 0,
            quiet: false,
            last_arrival: None,
        }
    }

    /// Extends a 16-bit sequence number to the one nearest the highest seen so far.
    fn extend(&self, seq: u16) -> u64 {
        if self.slot_due.is_none() {
            return u64::from(seq) + (1 << 16); // room below for early reordering
        }
        let h = self.highest;
        let cand = (h & !0xFFFF) | u64::from(seq);
        let up = cand + (1 << 16);
        let down = cand.checked_sub(1 << 16);
        [Some(cand), Some(up), down]
            .into_iter()
            .flatten()
            .min_by_key(|&c| c.abs_diff(h))
            .unwrap_or(cand)
    }

    /// Extends a 32-bit timestamp to the one nearest the highest packet's.
    fn extend_ts(&self, ts: u32) -> i64 {
        if self.slot_due.is_none() {
            return i64::from(ts);
        }
        let delta = i64::from(ts.wrapping_sub(self.last_ts as u32) as i32);
        self.last_ts.saturating_add(delta)
    }

    fn index(&self, ext: u64) -> usize {
        (ext % self.slots.len() as u64) as usize
    }

    fn ts_of(&self, ext: u64) -> Option<i64> {
        let s = &self.slots[self.index(ext)];
        (s.seq == Some(ext)).then_some(s.ts)
    }

    /// The lowest buffered packet after `ext`: (extended seq, extended ts).
    fn lowest_after(&self, ext: u64) -> Option<(u64, i64)> {
        if self.buffered == 0 {
            return None;
        }
        (ext + 1..ext + 1 + self.slots.len() as u64).find_map(|e| self.ts_of(e).map(|ts| (e, ts)))
    }

    fn resync(&mut self, now: Instant, ext: u64, ts: i64) {
        for s in &mut self.slots {
            s.seq = None;
        }
        self.buffered = 0;
        self.next = ext;
        self.highest = ext;
        self.last_ts = ts;
        self.play_ts = ts;
        self.resume = true;
        self.empty_run = 0;
        self.est.rebase(now, ts);
        self.stats.resyncs += 1;
    }

    /// One packet (sequence number, RTP timestamp, payload) as received at `now`.
    pub fn push(&mut self, now: Instant, seq: u16, timestamp: u32, payload: &[u8]) -> Push {
        let ext = self.extend(seq);
        let ts = self.extend_ts(timestamp);
        if self.slot_due.is_none() {
            self.next = ext;
            self.highest = ext;
            self.last_ts = ts;
            self.play_ts = ts;
            self.est.rebase(now, ts);
            // The first packet plays after the initial target.
            self.slot_due = Some(now + Duration::from_micros(self.est.target_us as u64));
        }
        let n = self.slots.len() as u64;
        let far_ahead = ext >= self.next.saturating_add(n);
        let far_behind = ext.saturating_add(n) <= self.next;
        // A stray old packet (far behind) must not rewind the timeline: two in a row do.
        self.far_behind_run = if far_behind {
            self.far_behind_run.saturating_add(1)
        } else {
            0
        };
        if self.buffered == 0 && (far_ahead || self.far_behind_run >= 2) {
            // The sender's numbering jumped (or a long outage): start over from this packet.
            self.resync(now, ext, ts);
            self.far_behind_run = 0;
        }
        if ext < self.next {
            self.est.observe(now, ts);
            self.stats.late += 1;
            return Push::Late;
        }
        if ext >= self.next + n {
            self.est.observe(now, ts);
            self.stats.overflow += 1;
            return Push::Overflow;
        }
        let i = self.index(ext);
        let slot = &mut self.slots[i];
        if slot.seq == Some(ext) {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        }
        if slot.seq.is_none() {
            self.buffered += 1;
        }
        slot.seq = Some(ext);
        slot.ts = ts;
        slot.arrived = Some(now);
        slot.payload.clear();
        slot.payload.extend_from_slice(payload);
        if ext >= self.highest {
            self.highest = ext;
            self.last_ts = ts;
        }
        self.est.observe(now, ts);
        self.stats.target = Duration::from_micros(self.est.target_us as u64);
        self.stats.measured = Duration::from_micros(self.est.measured_us.max(0) as u64);
        self.stats.peaks = self.est.peaks;
        self.stats.accepted += 1;
        Push::Accepted
    }

    /// The caller's verdict on the frame it just played: quiet (low energy) or not. The buffer
    /// drops and inserts frames after quiet ones.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// When the next slot is due (for the driver's sleep), if the stream has started.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slot_due
    }

    /// The current target delay.
    pub fn target(&self) -> Duration {
        Duration::from_micros(self.est.target_us as u64)
    }

    /// The payload of frame `ext` if it is buffered (not yet played): the packet after a loss
    /// carries the lost frame's Opus in-band FEC.
    pub fn peek(&self, ext: u64) -> Option<&[u8]> {
        let slot = &self.slots[self.index(ext)];
        (slot.seq == Some(ext)).then_some(slot.payload.as_slice())
    }

    /// When the packet of the last [`Playout::Frame`] arrived (for latency accounting).
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival
    }

    /// Removes packet `ext` (buffered), its payload to `out`.
    fn take(&mut self, ext: u64, out: &mut Vec<u8>) -> Option<Instant> {
        let i = self.index(ext);
        let slot = &mut self.slots[i];
        slot.seq = None;
        self.buffered -= 1;
        out.clear();
        out.extend_from_slice(&slot.payload);
        slot.arrived
    }

    fn end_slot(&mut self, due: Instant, p: Playout) -> Option<Playout> {
        let mut next = due + self.cfg.frame;
        let slew = micros(self.cfg.slew);
        if let (false, true, Some((t0, _))) = (self.resume, slew > 0, self.est.epoch) {
            // Move the grid towards the reference arrival of the next slot's audio + target.
            let ideal = self.est.ts_us(self.play_ts) + self.est.reference + self.est.target_us;
            let adj = (ideal - signed_us(next, t0)).clamp(-slew, slew);
            let d = Duration::from_micros(adj.unsigned_abs());
            next = if adj >= 0 {
                next + d
            } else {
                next.checked_sub(d).unwrap_or(next)
            };
            self.stats.slewed_us += adj.unsigned_abs();
        }
        self.slot_due = Some(next);
        self.since_drop = self.since_drop.saturating_add(1);
        self.since_grow = self.since_grow.saturating_add(1);
        self.est.decay(self.frame_us);
        let level = self.ts_of(self.highest).map_or(0, |ts| {
            self.est.ts_us(ts + self.ticks) - self.est.ts_us(self.play_ts)
        });
        self.stats.level = Duration::from_micros(level.max(0) as u64);
        self.stats.target = Duration::from_micros(self.est.target_us as u64);
        match p {
            Playout::Silence => self.stats.silence += 1,
            Playout::Lost(_) => {
                self.stats.lost += 1;
                self.est.on_loss();
            }
            Playout::Frame(_) => self.stats.played += 1,
            Playout::Conceal | Playout::Dropped(_) => {}
        }
        Some(p)
    }

    /// The decision for the slot due now, if its time has come: a frame (payload written to
    /// `out`, cleared), a loss, a concealment or silence — or a frame dropped to shrink, after
    /// which the caller pops again for the same slot.
    pub fn pop(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Playout> {
        let due = self.slot_due?;
        if now < due {
            return None;
        }
        let half = self.ticks / 2;
        let half_us = self.frame_us / 2;
        // With a slewing grid, deviations under a frame are the slew's; whole frames are
        // dropped or inserted only beyond a frame.
        let band_us = if self.cfg.slew > Duration::ZERO {
            self.frame_us
        } else {
            half_us
        };
        let max_us = self.est.max_us;
        loop {
            let target = self.est.target_us;
            let ext = self.next;
            if let Some(ts) = self.ts_of(ext) {
                let ahead = ts > self.play_ts.saturating_add(half);
                let behind = ts < self.play_ts.saturating_sub(half);
                let d = self.est.delay_us(due, ts);
                let anchor = ahead || behind || self.resume;
                if (ahead || self.resume) && d < target - half_us {
                    // Too early for this talkspurt's first packet: silence until its delay
                    // reaches the target.
                    self.play_ts = self.play_ts.saturating_add(self.ticks);
                    self.resume = true;
                    return self.end_slot(due, Playout::Silence);
                }
                if behind && d > max_us + self.frame_us {
                    // Would play too long after it should have arrived: discard as late.
                    self.take(ext, out);
                    self.next += 1;
                    self.stats.late += 1;
                    continue;
                }
                if !anchor {
                    let p = d;
                    self.over_run = if p > target + band_us {
                        self.over_run.saturating_add(1)
                    } else {
                        0
                    };
                    let successor = self
                        .ts_of(ext + 1)
                        .is_some_and(|t| (t - (ts + self.ticks)).abs() <= half);
                    if p > target + band_us
                        && self.since_drop >= SHRINK_SPACING
                        && successor
                        && (self.quiet
                            || self.over_run >= FORCE_SHRINK_AFTER
                            || p > max_us + half_us)
                    {
                        self.take(ext, out);
                        self.next += 1;
                        self.play_ts = ts + self.ticks;
                        self.since_drop = 0;
                        self.stats.dropped += 1;
                        return Some(Playout::Dropped(ext));
                    }
                    if p < target - band_us
                        && self.since_grow >= GROW_SPACING
                        && (self.quiet || p < target - band_us - self.frame_us)
                    {
                        self.since_grow = 0;
                        self.stats.grown += 1;
                        return self.end_slot(due, Playout::Conceal);
                    }
                } else {
                    self.stats.reanchors += 1;
                }
                self.last_arrival = self.take(ext, out);
                self.next += 1;
                self.play_ts = ts + self.ticks;
                self.resume = false;
                self.empty_run = 0;
                self.stats.delay = Duration::from_micros(d.max(0) as u64);
                return self.end_slot(due, Playout::Frame(ext));
            }
            if let Some((l, lts)) = self.lowest_after(ext) {
                // `ext` is missing; its timestamp, if the ones between were contiguous:
                let e = lts.saturating_sub((l - ext) as i64 * self.ticks);
                if e < self.play_ts.saturating_sub(half) {
                    // Its time passed while the buffer was empty and concealing.
                    self.stats.lost += 1;
                    self.est.on_loss();
                    self.next += 1;
                    continue;
                }
                let ahead = e > self.play_ts.saturating_add(half);
                if (ahead || self.resume) && self.est.delay_us(due, e) < target - half_us {
                    self.play_ts = self.play_ts.saturating_add(self.ticks);
                    self.resume = true;
                    return self.end_slot(due, Playout::Silence);
                }
                if ahead || self.resume {
                    self.stats.reanchors += 1;
                }
                self.next += 1;
                self.play_ts = e + self.ticks;
                self.resume = false;
                self.empty_run = 0;
                return self.end_slot(due, Playout::Lost(ext));
            }
            // Nothing buffered: underflow. The playout time runs on; no packet is consumed.
            self.play_ts = self.play_ts.saturating_add(self.ticks);
            self.resume = true;
            self.empty_run = self.empty_run.saturating_add(1);
            if self.empty_run <= SILENCE_AFTER {
                self.stats.underflows += 1;
                return self.end_slot(due, Playout::Conceal);
            }
            return self.end_slot(due, Playout::Silence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(j: &mut JitterBuffer, now: Instant) -> Vec<Playout> {
        let mut out = Vec::new();
        let mut v = Vec::new();
        while let Some(p) = j.pop(now, &mut out) {
            v.push(p);
        }
        v
    }

    #[test]
    fn reorders_drops_duplicates_and_reports_each_loss_once() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(JitterConfig::fixed(60 * MS));
        assert_eq!(j.push(t0, 100, 0, b"a"), Push::Accepted);
        assert!(
            drain(&mut j, t0 + 59 * MS).is_empty(),
            "nothing before the playout delay"
        );
        assert_eq!(j.push(t0 + 45 * MS, 102, 2 * 960, b"c"), Push::Accepted); // 101 is lost
        assert_eq!(j.push(t0 + 81 * MS, 104, 4 * 960, b"e"), Push::Accepted);
        assert_eq!(j.push(t0 + 82 * MS, 103, 3 * 960, b"d"), Push::Accepted); // reordered
        assert_eq!(j.push(t0 + 83 * MS, 103, 3 * 960, b"d"), Push::Duplicate);
        let got = drain(&mut j, t0 + 60 * MS + 4 * 20 * MS);
        let base = 100 + (1 << 16);
        assert_eq!(
            got,
            vec![
                Playout::Frame(base),
                Playout::Lost(base + 1),
                Playout::Frame(base + 2),
                Playout::Frame(base + 3),
                Playout::Frame(base + 4)
            ]
        );
        // 101 shows up after its playout time: late, not played twice.
        assert_eq!(j.push(t0 + 200 * MS, 101, 960, b"b"), Push::Late);
        let s = j.stats;
        assert_eq!(
            (
                s.accepted,
                s.duplicates,
                s.late,
                s.overflow,
                s.played,
                s.lost
            ),
            (4, 1, 1, 0, 4, 1)
        );
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for (k, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            let ts = (u32::MAX - 959).wrapping_add(960 * k as u32); // wraps after the first
            assert_eq!(
                j.push(t0 + MS * 20 * k as u32, seq, ts, &[k as u8]),
                Push::Accepted
            );
        }
        let mut payloads = Vec::new();
        for k in 0..4u32 {
            match j.pop(t0 + 60 * MS + 20 * MS * k, &mut out) {
                Some(Playout::Frame(_)) => payloads.push(out[0]),
                other => panic!("frame {k}: {other:?}"),
            }
        }
        assert_eq!(payloads, [0, 1, 2, 3]);
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(JitterConfig {
            capacity: 8,
            ..Default::default()
        });
        j.push(t0, 0, 0, b"x");
        assert_eq!(j.push(t0, 8, 8 * 960, b"far"), Push::Overflow);
        assert_eq!(j.push(t0, 7, 7 * 960, b"ok"), Push::Accepted);
        // Garbage sequence numbers never grow it.
        for s in (0..60000u16).step_by(7) {
            j.push(t0, s, u32::from(s) * 7919, &[0; 100]);
        }
        assert_eq!(j.slots.len(), 8);
        assert!(j.buffered <= 8);
    }

    #[test]
    fn a_sequence_jump_on_an_empty_buffer_restarts_the_timeline() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        j.push(t0, 10, 0, b"a");
        assert_eq!(
            j.pop(t0 + 60 * MS, &mut out),
            Some(Playout::Frame(10 + (1 << 16)))
        );
        // The sender restarts with new numbers, far behind: not late for good.
        let mut t = t0 + 80 * MS;
        for k in 0..10u16 {
            // (the first one alone could be a stray: late; the second restarts the timeline)
            let want = if k == 0 { Push::Late } else { Push::Accepted };
            assert_eq!(
                j.push(t, 40_000 + k, 5_000_000 + 960 * u32::from(k), b"b"),
                want
            );
            t += 20 * MS;
            drain(&mut j, t);
        }
        assert_eq!(j.stats.resyncs, 1);
        assert!(j.stats.played >= 7, "{:?}", j.stats);
        // One stray old packet during silence does not rewind the timeline.
        t += 200 * MS;
        drain(&mut j, t);
        assert_eq!(j.push(t, 39_000, 4_000_000, b"old"), Push::Late);
        assert_eq!(j.stats.resyncs, 1);
    }

    #[test]
    fn above_target_without_quiet_frames_still_shrinks_after_a_second() {
        // Initial target 200 ms, measured jitter ~0: the target decays. On a fixed grid the
        // caller never reports a quiet frame, so drops are forced (one per FORCE_SHRINK_AFTER
        // slots); a slewing grid follows the target down without dropping anything.
        for slew in [Duration::ZERO, MS] {
            let t0 = Instant::now();
            let mut j = JitterBuffer::new(JitterConfig {
                delay: 200 * MS,
                slew,
                ..Default::default()
            });
            let mut out = Vec::new();
            for k in 0..1500u32 {
                let now = t0 + 20 * MS * k;
                j.push(now, k as u16, 960 * k, &k.to_le_bytes());
                while j.pop(now, &mut out).is_some() {}
            }
            let s = j.stats;
            if slew.is_zero() {
                // No jitter measured: the first bucket's edge + 5 ms + half a frame.
                assert_eq!(j.target(), 20 * MS);
                assert!(s.dropped >= 8, "{s:?}");
                assert!(s.delay <= 30 * MS, "{s:?}");
            } else {
                assert_eq!(j.target(), 10 * MS); // the floor
                assert_eq!(s.dropped, 0, "{s:?}");
                assert!(s.slewed_us >= 190_000, "{s:?}");
                assert!(s.delay.abs_diff(10 * MS) <= MS, "{s:?}");
            }
            assert_eq!((s.lost, s.late), (0, 0));
        }
    }

    // ---- Virtual-time simulations -----------------------------------------------------------

    /// splitmix64: a seeded, deterministic generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        fn f(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// One simulated packet: `k` (its payload), seq, ts, arrival and its fastest-path arrival
    /// (send time + base network delay, no jitter), µs since the start.
    #[derive(Debug, Clone, Copy)]
    struct Pkt {
        k: u64,
        seq: u16,
        ts: u32,
        arrive_us: u64,
        ideal_us: u64,
    }

    /// What the simulation saw at one slot (or drop).
    #[derive(Debug, Clone, Copy)]
    struct Ev {
        at_us: u64,
        p: Playout,
        /// The packet index for frames and drops.
        k: Option<u64>,
        /// For frames: playout time − fastest-path arrival, µs.
        delay_us: i64,
        target: Duration,
    }

    /// Drives a buffer in virtual time (events: arrivals and slot deadlines) until `end_us`.
    /// `quiet(slot)` is what the caller reports after each slot.
    fn simulate(
        cfg: JitterConfig,
        mut pkts: Vec<Pkt>,
        end_us: u64,
        quiet: impl Fn(u64) -> bool,
    ) -> (JitterBuffer, Vec<Ev>) {
        pkts.sort_by_key(|p| p.arrive_us); // stable: equal arrivals keep send order
        let ideal: std::collections::HashMap<u64, u64> =
            pkts.iter().map(|p| (p.k, p.ideal_us)).collect();
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(cfg);
        let mut out = Vec::new();
        let mut evs = Vec::new();
        let (mut i, mut slots) = (0, 0u64);
        loop {
            let a = pkts.get(i).map(|p| p.arrive_us);
            let d = j
                .next_deadline()
                .map(|d| d.duration_since(t0).as_micros() as u64);
            let t = match (a, d) {
                (Some(a), Some(d)) => a.min(d),
                (Some(a), None) => a,
                (None, Some(d)) => d,
                (None, None) => break,
            };
            if t > end_us {
                break;
            }
            let now = t0 + Duration::from_micros(t);
            while let Some(p) = pkts.get(i).filter(|p| p.arrive_us <= t) {
                j.push(now, p.seq, p.ts, &p.k.to_le_bytes());
                i += 1;
            }
            while let Some(p) = j.pop(now, &mut out) {
                let k = matches!(p, Playout::Frame(_) | Playout::Dropped(_))
                    .then(|| u64::from_le_bytes(out[..8].try_into().unwrap()));
                let delay_us = k.map_or(0, |k| t as i64 - ideal[&k] as i64);
                evs.push(Ev {
                    at_us: t,
                    p,
                    k,
                    delay_us,
                    target: j.target(),
                });
                if !matches!(p, Playout::Dropped(_)) {
                    slots += 1;
                    j.set_quiet(quiet(slots));
                }
            }
        }
        (j, evs)
    }

    /// A talking sender: packet k sent at `send_us(k)`, with network delay base + U[0, jitter).
    fn stream(n: u64, rng: &mut Rng, period_us: f64, base_us: u64, jitter_us: u64) -> Vec<Pkt> {
        (0..n)
            .map(|k| {
                let send = (k as f64 * period_us) as u64;
                Pkt {
                    k,
                    seq: k as u16,
                    ts: (960 * k) as u32,
                    arrive_us: send + base_us + (rng.f() * jitter_us as f64) as u64,
                    ideal_us: send + base_us,
                }
            })
            .collect()
    }

    fn frames(evs: &[Ev]) -> impl Iterator<Item = &Ev> {
        evs.iter().filter(|e| matches!(e.p, Playout::Frame(_)))
    }

    /// The played packet indices are increasing (drops included): nothing played twice or
    /// out of order.
    fn assert_in_order(evs: &[Ev]) {
        let ks: Vec<u64> = evs.iter().filter_map(|e| e.k).collect();
        assert!(ks.windows(2).all(|w| w[0] < w[1]), "out of order");
    }

    #[test]
    fn sender_clock_drift_of_100_ppm_for_an_hour_is_absorbed_by_the_slewing_grid() {
        const HOUR_US: u64 = 3_600_000_000;
        for ppm in [100.0f64, -100.0] {
            let period = 20_000.0 / (1.0 + ppm * 1e-6);
            let n = (HOUR_US as f64 / period) as u64;
            let mut rng = Rng(7);
            let pkts = stream(n, &mut rng, period, 40_000, 8_000);
            let cfg = JitterConfig {
                delay: 40 * MS,
                ..Default::default()
            };
            let (j, evs) = simulate(cfg, pkts, HOUR_US, |s| s % 4 == 0);
            let s = j.stats;
            // The grid follows the sender's clock: after the initial 40 ms target has come
            // down to the measured 20 ms, every frame plays within 2 ms of it, with no frame
            // dropped or inserted for the 360 ms the clocks drift apart in the hour.
            let mut worst = 0i64;
            for e in frames(&evs).filter(|e| e.at_us > 10_000_000) {
                let dev = e.delay_us - e.target.as_micros() as i64;
                worst = worst.max(dev.abs());
            }
            eprintln!("{ppm:+} ppm, slewing: max |delay − target| {worst} µs; {s:?}");
            assert!(worst <= 2_000, "{ppm} ppm: deviation {worst} µs");
            // U[0, 8) ms of jitter: q95 in the 5–10 ms bucket, + the 5 ms margin.
            assert_eq!(j.target(), 15 * MS);
            assert_eq!(
                (s.lost, s.late, s.underflows, s.silence, s.dropped, s.grown),
                (0, 0, 0, 0, 0, 0),
                "{s:?}"
            );
            assert!(s.played + 3 >= n, "{s:?}");
            assert_in_order(&evs);
        }
    }

    #[test]
    fn sender_clock_drift_of_100_ppm_for_an_hour_is_absorbed_by_whole_frames_on_a_fixed_grid() {
        const HOUR_US: u64 = 3_600_000_000;
        for ppm in [100.0f64, -100.0] {
            let period = 20_000.0 / (1.0 + ppm * 1e-6); // a fast sender clock sends more often
            let n = (HOUR_US as f64 / period) as u64;
            let mut rng = Rng(7);
            let pkts = stream(n, &mut rng, period, 40_000, 8_000);
            let cfg = JitterConfig {
                delay: 40 * MS,
                slew: Duration::ZERO,
                ..Default::default()
            };
            let (j, evs) = simulate(cfg, pkts, HOUR_US, |s| s % 4 == 0);
            let s = j.stats;
            // After settling (the initial 40 ms target decays to the measured 20 ms), every
            // frame plays within ±10 ms of the target (+1 ms: the reference is the fastest
            // packet of the last 2 s, not the jitter-free path the test measures against).
            let mut worst = 0i64;
            for e in frames(&evs).filter(|e| e.at_us > 60_000_000) {
                let dev = e.delay_us - e.target.as_micros() as i64;
                worst = worst.max(dev.abs());
            }
            eprintln!("{ppm:+} ppm: max |delay − target| after settling {worst} µs; {s:?}");
            assert!(worst <= 11_000, "{ppm} ppm: deviation {worst} µs");
            // q95 in the 5–10 ms bucket + 5 ms + half a frame (the fixed grid's wander).
            assert_eq!(j.target(), 25 * MS);
            // Nothing that arrived in time was lost, nothing is late, and the whole hour played.
            assert_eq!(
                (s.lost, s.late, s.underflows, s.silence),
                (0, 0, 0, 0),
                "{s:?}"
            );
            assert!(s.played + s.dropped + 3 >= n, "{s:?}");
            assert_in_order(&evs);
            // 100 ppm of an hour is 360 ms = 18 frames: absorbed by drops (fast sender) or
            // insertions (slow sender), plus 1 drop from the initial 40 ms down to 20 ms. The
            // band has no hysteresis beyond the frame: when the reference (fastest packet of the
            // last 2 s) moves by a fraction of a ms right after a correction, the opposite
            // correction can follow once (a drop and an insertion, both in quiet frames).
            if ppm > 0.0 {
                assert!((18..=24).contains(&s.dropped), "{s:?}");
                assert!(s.grown <= 3, "{s:?}");
            } else {
                assert!((16..=22).contains(&s.grown), "{s:?}");
                assert!(s.dropped <= 5, "{s:?}");
            }
        }
    }

    #[test]
    fn dtx_gaps_re_anchor_the_next_talkspurt_at_the_target() {
        let mut rng = Rng(11);
        let mut pkts = Vec::new();
        let (mut k, mut ts, mut t_us, mut base) = (0u64, 0u32, 0u64, 40_000u64);
        let mut starts = Vec::new(); // first packet of each talkspurt after a gap
        let mut gaps = 0;
        let mut gap_slots = 0u64;
        for spurt in 0..40 {
            if spurt > 0 {
                // A DTX gap of 0.2–10 s: the timestamp jumps, sequence numbers do not.
                let gap = 10 + (rng.f() * 490.0) as u64; // frames
                ts = ts.wrapping_add(960 * gap as u32);
                t_us += 20_000 * gap;
                gaps += 1;
                gap_slots += gap;
                starts.push(k);
                // Across long gaps the route's delay changes too (±60 ms).
                if gap > 150 {
                    base = [20_000, 50_000, 80_000][(rng.next() % 3) as usize];
                }
            }
            let len = 25 + rng.next() % 125; // 0.5–3 s of talk
            for _ in 0..len {
                pkts.push(Pkt {
                    k,
                    seq: k as u16,
                    ts,
                    arrive_us: t_us + base + (rng.f() * 5_000.0) as u64,
                    ideal_us: t_us + base,
                });
                k += 1;
                ts = ts.wrapping_add(960);
                t_us += 20_000;
            }
        }
        let end = t_us + 500_000;
        let (j, evs) = simulate(JitterConfig::default(), pkts, end, |s| s % 3 == 0);
        let s = j.stats;
        eprintln!("{s:?}");
        // No gap turned into a run of losses, nothing late, every packet played (or dropped).
        assert!(!evs.iter().any(|e| matches!(e.p, Playout::Lost(_))));
        assert_eq!((s.lost, s.late), (0, 0), "{s:?}");
        assert_eq!(s.played + s.dropped, k, "{s:?}");
        assert_in_order(&evs);
        // Each gap: at most 3 concealed slots, then silence; the next talkspurt re-anchors.
        assert!(s.underflows <= 3 * (gaps + 1), "{s:?}"); // + the end of the stream
        assert!(s.silence + s.underflows + 40 >= gap_slots, "{s:?}");
        assert!(s.reanchors >= gaps, "{s:?}");
        // The first frame of every talkspurt plays near the target, whatever the delay did
        // during the gap (±10 ms of re-anchoring, + up to 5 ms of that packet's own jitter).
        let mut worst = 0i64;
        for &first in &starts {
            let e = evs.iter().find(|e| e.k == Some(first)).unwrap();
            assert!(matches!(e.p, Playout::Frame(_)));
            let dev = e.delay_us - e.target.as_micros() as i64;
            worst = worst.max(dev.abs());
        }
        eprintln!("talkspurt starts: max |delay − target| {worst} µs");
        assert!(worst <= 15_000, "{worst} µs");
    }

    #[test]
    fn a_200_ms_delay_spike_raises_the_target_which_then_decays() {
        let mut rng = Rng(3);
        let n = 6_000; // 120 s
        let mut pkts = stream(n, &mut rng, 20_000.0, 30_000, 4_000);
        // At 60 s the path stalls for 200 ms; what was sent meanwhile arrives in one burst.
        let release = 60_200_000 + 30_000;
        for p in &mut pkts {
            if (60_000_000..60_200_000).contains(&(p.ideal_us - 30_000)) {
                p.arrive_us = p.arrive_us.max(release);
            }
        }
        let (j, evs) = simulate(JitterConfig::default(), pkts, 120_000_000, |s| s % 3 == 0);
        let s = j.stats;
        let target_at = |us: u64| evs.iter().rev().find(|e| e.at_us <= us).unwrap().target;
        let before = target_at(59_900_000);
        let peak = evs
            .iter()
            .filter(|e| (60_000_000..61_000_000).contains(&e.at_us))
            .map(|e| e.target)
            .max()
            .unwrap();
        let back = evs
            .iter()
            .find(|e| e.at_us > 60_300_000 && e.target <= before + 5 * MS)
            .map(|e| e.at_us - 60_000_000);
        eprintln!("target {before:?} → peak {peak:?}, back after {back:?} µs; {s:?}");
        assert!(peak >= before + 60 * MS, "{before:?} → {peak:?}");
        let back = back.expect("target never came back");
        assert!(back <= 20_000_000, "{back} µs");
        // The spike was absorbed by growing (nothing lost or late), then the delay came down.
        assert_eq!((s.lost, s.late), (0, 0), "{s:?}");
        // Down again by dropping frames and by moving the grid (the 90 ms it grew by).
        assert!(s.dropped * 20_000 + s.slewed_us >= 80_000, "{s:?}");
        assert_in_order(&evs);
        let after: Vec<&Ev> = frames(&evs).filter(|e| e.at_us > 90_000_000).collect();
        assert!(after.len() > 1000);
        for e in after {
            let dev = e.delay_us - e.target.as_micros() as i64;
            assert!(dev.abs() <= 11_000, "{e:?}");
        }
    }

    #[test]
    fn reordering_within_the_target_loses_nothing() {
        let mut rng = Rng(5);
        // Jitter up to 30 ms: packets overtake each other often.
        let pkts = stream(3_000, &mut rng, 20_000.0, 40_000, 30_000);
        let inversions = pkts
            .windows(2)
            .filter(|w| w[1].arrive_us < w[0].arrive_us)
            .count();
        assert!(inversions > 100, "{inversions}");
        let (j, evs) = simulate(JitterConfig::default(), pkts, 70_000_000, |s| s % 3 == 0);
        let s = j.stats;
        eprintln!("{s:?}");
        assert_eq!((s.lost, s.late), (0, 0), "{s:?}");
        // The end of the stream (3), and one at the start: the buffer starts at its 10 ms floor
        // and meets 30 ms of jitter, which raises the target at once.
        assert!(s.underflows <= 4, "{s:?}");
        assert_eq!(s.played + s.dropped, 3_000);
        assert_in_order(&evs);
        assert!(
            j.target() >= 35 * MS && j.target() <= 50 * MS,
            "{:?}",
            j.target()
        );
    }

    /// Isolated losses on a quiet link (the target at its 10 ms floor): the first loss raises
    /// the target to `loss_delay` (25 ms), so from then on each lost frame's successor is here
    /// at its slot and the loss is reported as `Lost` (the caller rebuilds it from that packet's
    /// FEC) instead of surfacing as an underflow; ten seconds after the last loss the target
    /// is back at the floor. Without the floor the same stream gives no usable `Lost` at all.
    #[test]
    fn losses_raise_the_target_so_the_next_packet_carries_fec_in_time() {
        let run = |loss_delay: Duration| {
            let mut rng = Rng(21);
            let all = stream(1_500, &mut rng, 20_000.0, 20_000, 2_000);
            // One lost frame a second from 2 s to 14 s, then none.
            let removed: std::collections::HashSet<u64> = (2..15).map(|s| s * 50 + 7).collect();
            let pkts: Vec<Pkt> = all
                .into_iter()
                .filter(|p| !removed.contains(&p.k))
                .collect();
            let cfg = JitterConfig {
                loss_delay,
                ..JitterConfig::default()
            };
            let (j, evs) = simulate(cfg, pkts, 29_990_000, |s| s % 3 == 0);
            let reported = evs
                .iter()
                .filter(|e| matches!(e.p, Playout::Lost(_)))
                .count();
            let target_at = |t_us: u64| {
                evs.iter()
                    .rev()
                    .find(|e| e.at_us <= t_us)
                    .map(|e| e.target)
                    .unwrap()
            };
            (j.stats, reported, target_at(8_000_000), j.target())
        };
        let (s, reported, t_during, t_end) = run(Duration::from_millis(25));
        eprintln!("{s:?} reported {reported} {t_during:?} {t_end:?}");
        assert_eq!(s.lost, 13, "{s:?}");
        assert!(
            reported >= 12,
            "only {reported} of 13 losses reported with the packet after them"
        );
        assert!(t_during >= 25 * MS, "{t_during:?}");
        assert_eq!(
            t_end,
            10 * MS,
            "the floor did not release 10 s after the last loss"
        );
        assert_eq!(s.late, 0);
        let (s0, reported0, ..) = run(Duration::ZERO);
        eprintln!("without the floor: {s0:?} reported {reported0}");
        assert!(
            reported0 <= 2,
            "{reported0} losses reported in time without the floor: the test does not test it"
        );
    }

    #[test]
    fn burst_losses_are_each_reported_once_then_playout_recovers() {
        let mut rng = Rng(9);
        let all = stream(2_000, &mut rng, 20_000.0, 20_000, 3_000);
        // Bursts of 1–8 frames, one every 2 s from 5 s on.
        let mut removed = std::collections::HashSet::new();
        for (b, len) in (1..=8u64).chain(1..=8).enumerate() {
            let first = 250 + 100 * b as u64;
            removed.extend(first..first + len);
        }
        let pkts: Vec<Pkt> = all
            .iter()
            .copied()
            .filter(|p| !removed.contains(&p.k))
            .collect();
        // The loss floor off: this is about the grid and the reports, at a constant target.
        let cfg = JitterConfig {
            loss_delay: Duration::ZERO,
            ..JitterConfig::default()
        };
        let (j, evs) = simulate(cfg, pkts, 39_990_000, |s| s % 3 == 0);
        let s = j.stats;
        eprintln!("{s:?}");
        let lost: Vec<u64> = evs
            .iter()
            .filter_map(|e| match e.p {
                Playout::Lost(x) => Some(x),
                _ => None,
            })
            .collect();
        let unique: std::collections::HashSet<_> = lost.iter().collect();
        assert_eq!(unique.len(), lost.len(), "a loss reported twice");
        assert_eq!(s.lost, removed.len() as u64, "{s:?}");
        // One concealed slot per missing frame, no more: the delay did not grow.
        assert_eq!(
            lost.len() as u64 + s.underflows + s.silence,
            removed.len() as u64,
            "{s:?}"
        );
        assert_eq!(s.late, 0);
        assert_in_order(&evs);
        // Everything else played, at the target.
        assert!(
            s.played + s.dropped + removed.len() as u64 >= 2_000 - 3,
            "{s:?}"
        );
        for e in frames(&evs).filter(|e| e.at_us > 5_000_000) {
            let dev = e.delay_us - e.target.as_micros() as i64;
            assert!(dev.abs() <= 11_000, "{e:?}");
        }
    }

    #[test]
    fn a_clean_link_settles_at_one_frame_of_delay() {
        let mut rng = Rng(1);
        let pkts = stream(3_000, &mut rng, 20_000.0, 100, 1_000);
        let (j, evs) = simulate(JitterConfig::default(), pkts, 60_000_000, |s| s % 3 == 0);
        assert_eq!(j.target(), 10 * MS); // the floor

        let settled: Vec<i64> = frames(&evs)
            .filter(|e| e.at_us > 15_000_000)
            .map(|e| e.delay_us)
            .collect();
        let max = *settled.iter().max().unwrap();
        let mean = settled.iter().sum::<i64>() / settled.len() as i64;
        eprintln!(
            "loopback: delay mean {mean} µs, max {max} µs; {:?}",
            j.stats
        );
        assert!(max <= 11_000, "{max} µs"); // the slewing grid holds it at the target
        assert_eq!((j.stats.lost, j.stats.late), (0, 0));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_packets_and_times_never_panic_and_stay_bounded(
            cap in 1usize..40,
            delay_ms in 0u64..400,
            ops in proptest::collection::vec(
                (proptest::prelude::any::<u8>(), proptest::prelude::any::<i16>(),
                 proptest::prelude::any::<u32>(), 0usize..300),
                0..300),
        ) {
            let t0 = Instant::now();
            let mut j = JitterBuffer::new(JitterConfig {
                delay: Duration::from_millis(delay_ms),
                capacity: cap,
                ..Default::default()
            });
            let (mut now, mut seq, mut ts) = (t0, 0u16, 0u32);
            let mut out = Vec::new();
            let mut max_len = 0;
            for (op, a, b, len) in ops {
                match op % 4 {
                    0 => {
                        // Near-regular packets: small steps of seq and ts.
                        seq = seq.wrapping_add((a % 4) as u16);
                        ts = ts.wrapping_add(960 * (b % 8));
                    }
                    1 => {
                        seq = a as u16;
                        ts = b;
                    }
                    2 => {
                        now += Duration::from_millis(u64::from(b % 3000));
                        let elapsed = j.next_deadline().map_or(0, |d| now.saturating_duration_since(d).as_millis());
                        let mut n = 0u128;
                        while j.pop(now, &mut out).is_some() {
                            n += 1;
                            proptest::prop_assert!(n <= elapsed / 20 + 2 + cap as u128);
                        }
                        continue;
                    }
                    _ => {
                        now += Duration::from_millis(u64::from(op % 40));
                    }
                }
                max_len = max_len.max(len);
                j.push(now, seq, ts, &vec![0; len]);
                proptest::prop_assert_eq!(j.slots.len(), cap);
                proptest::prop_assert!(j.buffered <= cap);
                proptest::prop_assert_eq!(
                    j.slots.iter().filter(|s| s.seq.is_some()).count(), j.buffered);
                let bytes: usize = j.slots.iter().map(|s| s.payload.capacity()).sum();
                proptest::prop_assert!(bytes <= cap * max_len.max(8) * 2);
                proptest::prop_assert!(j.target() <= Duration::from_millis(300));
            }
        }
    }
}
