//! A fixed-delay jitter buffer, sans-IO: packets in with `now`, frames (or losses) out when
//! their playout time comes.
//!
//! Playout time of a packet is `first arrival + delay + (seq - first seq) × frame`, one frame per
//! packet (20 ms Opus or AIC, as the SFU forwards them). It reorders within its window, drops
//! duplicates and packets that arrive after their playout time (counted), and reports each
//! missing frame exactly once as [`Playout::Lost`] so the decoder conceals it (Opus PLC/FEC, AIC
//! concealment). Memory is a fixed ring of `capacity` frames whose buffers are reused.
//!
//! Not yet: adaptive delay, RTP-timestamp-driven playout for DTX gaps.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct JitterConfig {
    pub frame: Duration,
    /// Playout delay after the first packet: how much jitter is absorbed.
    pub delay: Duration,
    /// Frames held at most (window for reordering and early packets).
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame: Duration::from_millis(20),
            delay: Duration::from_millis(60),
            capacity: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Accepted,
    Duplicate,
    /// Arrived after its playout time.
    Late,
    /// Too far ahead of the playout point for the window.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// The frame with this extended sequence number; its payload was written to `out`.
    Frame(u64),
    /// This frame never arrived in time: conceal it.
    Lost(u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub late: u64,
    pub overflow: u64,
    pub played: u64,
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Slot {
    seq: Option<u64>,
    arrived: Option<Instant>,
    payload: Vec<u8>,
}

#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    slots: Vec<Slot>,
    /// (extended seq, playout instant) of the first packet.
    base: Option<(u64, Instant)>,
    next: u64,
    highest: u64,
    /// Arrival time of the packet the last [`Playout::Frame`] came from.
    last_arrival: Option<Instant>,
    pub stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig) -> Self {
        let n = cfg.capacity.max(1);
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            cfg,
            base: None,
            next: 0,
            highest: 0,
            last_arrival: None,
            stats: JitterStats::default(),
        }
    }

    /// Extends a 16-bit sequence number to the one nearest the highest seen so far.
    fn extend(&self, seq: u16) -> u64 {
        if self.base.is_none() {
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

    fn due(&self, ext: u64) -> Option<Instant> {
        let (b, t) = self.base?;
        let k = u32::try_from(ext.checked_sub(b)?).ok()?;
        Some(t + self.cfg.frame * k)
    }

    pub fn push(&mut self, now: Instant, seq: u16, payload: &[u8]) -> Push {
        let ext = self.extend(seq);
        if self.base.is_none() {
            self.base = Some((ext, now + self.cfg.delay));
            self.next = ext;
            self.highest = ext;
        }
        if ext < self.next {
            self.stats.late += 1;
            return Push::Late;
        }
        let n = self.slots.len() as u64;
        if ext >= self.next + n {
            self.stats.overflow += 1;
            return Push::Overflow;
        }
        let slot = &mut self.slots[(ext % n) as usize];
        if slot.seq == Some(ext) {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        }
        slot.seq = Some(ext);
        slot.arrived = Some(now);
        slot.payload.clear();
        slot.payload.extend_from_slice(payload);
        self.highest = self.highest.max(ext);
        self.stats.accepted += 1;
        Push::Accepted
    }

    /// When the next frame is due (for the driver's sleep), if the stream has started.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due(self.next)
    }

    /// The payload of frame `ext` if it is buffered (not yet played): the packet after a loss
    /// carries the lost frame's Opus in-band FEC.
    pub fn peek(&self, ext: u64) -> Option<&[u8]> {
        let n = self.slots.len() as u64;
        let slot = &self.slots[(ext % n) as usize];
        (slot.seq == Some(ext)).then_some(slot.payload.as_slice())
    }

    /// When the packet of the last [`Playout::Frame`] arrived (for latency accounting).
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival
    }

    /// The next frame whose playout time has come, its payload written to `out` (cleared).
    pub fn pop(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Playout> {
        let due = self.due(self.next)?;
        if now < due {
            return None;
        }
        let ext = self.next;
        self.next += 1;
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(ext % n) as usize];
        if slot.seq == Some(ext) {
            slot.seq = None;
            self.last_arrival = slot.arrived;
            out.clear();
            out.extend_from_slice(&slot.payload);
            self.stats.played += 1;
            Some(Playout::Frame(ext))
        } else {
            self.stats.lost += 1;
            Some(Playout::Lost(ext))
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
        let mut j = JitterBuffer::new(JitterConfig::default());
        assert_eq!(j.push(t0, 100, b"a"), Push::Accepted);
        assert!(
            drain(&mut j, t0 + 59 * MS).is_empty(),
            "nothing before the playout delay"
        );
        assert_eq!(j.push(t0 + 5 * MS, 102, b"c"), Push::Accepted); // 101 is late/lost
        assert_eq!(j.push(t0 + 6 * MS, 104, b"e"), Push::Accepted);
        assert_eq!(j.push(t0 + 7 * MS, 103, b"d"), Push::Accepted); // reordered
        assert_eq!(j.push(t0 + 8 * MS, 103, b"d"), Push::Duplicate);
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
        assert_eq!(j.push(t0 + 200 * MS, 101, b"b"), Push::Late);
        assert_eq!(
            j.stats,
            JitterStats {
                accepted: 4,
                duplicates: 1,
                late: 1,
                overflow: 0,
                played: 4,
                lost: 1
            }
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut j = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for (k, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            assert_eq!(
                j.push(t0 + MS * 20 * k as u32, seq, &[k as u8]),
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
        j.push(t0, 0, b"x");
        assert_eq!(j.push(t0, 8, b"far"), Push::Overflow);
        assert_eq!(j.push(t0, 7, b"ok"), Push::Accepted);
        // Garbage sequence numbers never grow it.
        for s in (0..60000u16).step_by(7) {
            j.push(t0, s, &[0; 100]);
        }
        assert_eq!(j.slots.len(), 8);
    }
}
