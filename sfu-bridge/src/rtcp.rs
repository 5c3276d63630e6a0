//! RTCP sender and receiver reports (RFC 3550 §6.4), sans-IO.
//!
//! * Parsing: [`Compound::new`] walks a compound packet without copying or allocating;
//!   [`Packet::SenderReport`] / [`Packet::ReceiverReport`] give their fields and an iterator of
//!   [`ReportBlock`]s; the video feedback messages come back as [`Packet::Pli`] (RFC 4585
//!   §6.3.1), [`Packet::Fir`] (RFC 5104 §4.3.1) and [`Packet::Nack`] (generic NACK, RFC 4585
//!   §6.2.1); every other packet type (SDES, BYE, APP, other feedback) as [`Packet::Other`]
//!   with its bytes. Malformed input is a typed error, never a panic (fuzz targets `rtcp`,
//!   `video_rtp`).
//! * Writing: [`write_sender_report`], [`write_receiver_report`], [`write_pli`], [`write_fir`]
//!   into a caller's buffer; [`SenderStats`] counts what the SR reports. A PLI or FIR may be
//!   sent alone (reduced-size RTCP, RFC 5506), which is what browsers and Janus do.
//! * [`ReceiverStats`]: the receiver-side state machine of RFC 3550 appendix A.1/A.3/A.8, fed
//!   `now` and each RTP arrival: extended highest sequence number, cumulative and fraction
//!   lost, interarrival jitter, and LSR/DLSR from the last sender report.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("RTCP packet of {0} bytes is shorter than its 4-byte header")]
    TooShort(usize),
    #[error("RTCP version {0} (expected 2)")]
    Version(u8),
    #[error("RTCP length field says {declared} bytes, {available} are there")]
    Length { declared: usize, available: usize },
    #[error("{count} report blocks do not fit a {pt} packet of {len} bytes")]
    Blocks { pt: u8, count: u8, len: usize },
    #[error("padding of {0} bytes is invalid")]
    Padding(u8),
    #[error("output buffer of {have} bytes, the packet needs {need}")]
    Buffer { have: usize, need: usize },
    #[error("{0} report blocks, at most 31")]
    TooManyBlocks(usize),
    #[error("feedback packet (PT {pt}, FMT {fmt}) of {len} bytes is too short")]
    Feedback { pt: u8, fmt: u8, len: usize },
}

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
/// Transport-layer feedback (RFC 4585): FMT 1 = generic NACK.
pub const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585): FMT 1 = PLI, FMT 4 = FIR (RFC 5104).
pub const PT_PSFB: u8 = 206;
pub const FMT_NACK: u8 = 1;
pub const FMT_PLI: u8 = 1;
pub const FMT_FIR: u8 = 4;
const BLOCK: usize = 24;

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s (0: none).
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Self {
        let u = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Sign-extend 24 bits.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Self {
            ssrc: u(0),
            fraction_lost: b[4],
            cumulative_lost,
            extended_highest_seq: u(8),
            jitter: u(12),
            last_sr: u(16),
            delay_since_last_sr: u(20),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4] = self.fraction_lost;
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0xFF_FFFF;
        b[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        b[8..12].copy_from_slice(&self.extended_highest_seq.to_be_bytes());
        b[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        b[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        b[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The sender-info part of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ssrc: u32,
    /// NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32).
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// Report blocks of an SR or RR, parsed lazily.
#[derive(Debug, Clone)]
pub struct Blocks<'a> {
    data: &'a [u8],
}

impl Iterator for Blocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        if self.data.len() < BLOCK {
            return None;
        }
        let (b, rest) = self.data.split_at(BLOCK);
        self.data = rest;
        Some(ReportBlock::parse(b))
    }
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone)]
pub enum Packet<'a> {
    SenderReport {
        info: SenderInfo,
        blocks: Blocks<'a>,
        /// Profile-specific extension bytes after the blocks.
        extension: &'a [u8],
    },
    ReceiverReport {
        ssrc: u32,
        blocks: Blocks<'a>,
        extension: &'a [u8],
    },
    /// Picture loss indication (PSFB, FMT 1): `sender_ssrc` asks `media_ssrc` for a keyframe.
    Pli { sender_ssrc: u32, media_ssrc: u32 },
    /// Full intra request (PSFB, FMT 4), its first FCI entry: `media_ssrc` is the entry's SSRC
    /// (the header's media SSRC is 0 in a FIR), `seq_nr` the request's sequence number (a
    /// repeated number is a retransmission of the same request).
    Fir {
        sender_ssrc: u32,
        media_ssrc: u32,
        seq_nr: u8,
    },
    /// Generic NACK (RTPFB, FMT 1): the sequence numbers `media_ssrc`'s receiver misses.
    Nack {
        sender_ssrc: u32,
        media_ssrc: u32,
        items: NackItems<'a>,
    },
    /// Any other packet type: its payload type, count field and body (after the 4-byte
    /// header, padding removed).
    Other { pt: u8, count: u8, body: &'a [u8] },
}

/// The FCI entries of a generic NACK: each a packet id (PID) and a bitmask of the 16 following
/// sequence numbers (BLP). [`NackItems::sequences`] lists every missing sequence number.
#[derive(Debug, Clone)]
pub struct NackItems<'a> {
    data: &'a [u8],
}

impl<'a> NackItems<'a> {
    /// Every sequence number the NACK reports missing, in FCI order.
    pub fn sequences(self) -> impl Iterator<Item = u16> + 'a {
        self.flat_map(|(pid, blp)| {
            std::iter::once(pid).chain(
                (0..16u16)
                    .filter(move |i| blp >> i & 1 == 1)
                    .map(move |i| pid.wrapping_add(i + 1)),
            )
        })
    }
}

impl Iterator for NackItems<'_> {
    /// `(pid, blp)`.
    type Item = (u16, u16);
    fn next(&mut self) -> Option<(u16, u16)> {
        let [a, b, c, d, rest @ ..] = self.data else {
            return None;
        };
        self.data = rest;
        Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])))
    }
}

/// Iterator over the packets of a compound RTCP packet. Stops at the first malformed packet
/// (yielding its error once).
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    data: &'a [u8],
    failed: bool,
}

impl<'a> Compound<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            failed: false,
        }
    }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<Packet<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.data.is_empty() {
            return None;
        }
        let r = parse_one(self.data);
        match r {
            Ok((p, used)) => {
                self.data = &self.data[used..];
                Some(Ok(p))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_one(d: &[u8]) -> Result<(Packet<'_>, usize), RtcpError> {
    if d.len() < 4 {
        return Err(RtcpError::TooShort(d.len()));
    }
    let v = d[0] >> 6;
    if v != 2 {
        return Err(RtcpError::Version(v));
    }
    let padding = d[0] & 0x20 != 0;
    let count = d[0] & 0x1F;
    let pt = d[1];
    let len = (usize::from(u16::from_be_bytes([d[2], d[3]])) + 1) * 4;
    if len > d.len() {
        return Err(RtcpError::Length {
            declared: len,
            available: d.len(),
        });
    }
    let mut body = &d[4..len];
    if padding {
        let pad = *body.last().ok_or(RtcpError::Padding(0))?;
        if pad == 0 || usize::from(pad) > body.len() {
            return Err(RtcpError::Padding(pad));
        }
        body = &body[..body.len() - usize::from(pad)];
    }
    let blocks_err = RtcpError::Blocks { pt, count, len };
    let u = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let p = match pt {
        PT_SR => {
            let need = 24 + usize::from(count) * BLOCK;
            if body.len() < need {
                return Err(blocks_err);
            }
            let ntp = (u64::from(u(body, 4)) << 32) | u64::from(u(body, 8));
            Packet::SenderReport {
                info: SenderInfo {
                    ssrc: u(body, 0),
                    ntp,
                    rtp_timestamp: u(body, 12),
                    packet_count: u(body, 16),
                    octet_count: u(body, 20),
                },
                blocks: Blocks {
                    data: &body[24..need],
                },
                extension: &body[need..],
            }
        }
        PT_RR => {
            let need = 4 + usize::from(count) * BLOCK;
            if body.len() < need {
                return Err(blocks_err);
            }
            Packet::ReceiverReport {
                ssrc: u(body, 0),
                blocks: Blocks {
                    data: &body[4..need],
                },
                extension: &body[need..],
            }
        }
        PT_PSFB | PT_RTPFB
            if matches!(
                (pt, count),
                (PT_PSFB, FMT_PLI | FMT_FIR) | (PT_RTPFB, FMT_NACK)
            ) =>
        {
            let short = RtcpError::Feedback {
                pt,
                fmt: count,
                len: body.len(),
            };
            if body.len() < 8 {
                return Err(short);
            }
            let (sender_ssrc, media_ssrc) = (u(body, 0), u(body, 4));
            match (pt, count) {
                (PT_PSFB, FMT_PLI) => Packet::Pli {
                    sender_ssrc,
                    media_ssrc,
                },
                (PT_PSFB, _) => {
                    if body.len() < 16 {
                        return Err(short);
                    }
                    Packet::Fir {
                        sender_ssrc,
                        media_ssrc: u(body, 8),
                        seq_nr: body[12],
                    }
                }
                _ => Packet::Nack {
                    sender_ssrc,
                    media_ssrc,
                    items: NackItems {
                        data: &body[8..8 + (body.len() - 8) / 4 * 4],
                    },
                },
            }
        }
        _ => Packet::Other { pt, count, body },
    };
    Ok((p, len))
}

fn header(out: &mut [u8], count: usize, pt: u8, len: usize) {
    out[0] = 0x80 | count as u8;
    out[1] = pt;
    out[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

fn check(out: &[u8], blocks: usize, need: usize) -> Result<(), RtcpError> {
    if blocks > 31 {
        return Err(RtcpError::TooManyBlocks(blocks));
    }
    if out.len() < need {
        return Err(RtcpError::Buffer {
            have: out.len(),
            need,
        });
    }
    Ok(())
}

/// Writes an SR into `out`; returns its length. Append more packets after it for a compound.
pub fn write_sender_report(
    info: &SenderInfo,
    blocks: &[ReportBlock],
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let len = 28 + blocks.len() * BLOCK;
    check(out, blocks.len(), len)?;
    header(out, blocks.len(), PT_SR, len);
    out[4..8].copy_from_slice(&info.ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut out[28 + i * BLOCK..28 + (i + 1) * BLOCK]);
    }
    Ok(len)
}

/// Writes an RR into `out`; returns its length.
pub fn write_receiver_report(
    ssrc: u32,
    blocks: &[ReportBlock],
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let len = 8 + blocks.len() * BLOCK;
    check(out, blocks.len(), len)?;
    header(out, blocks.len(), PT_RR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut out[8 + i * BLOCK..8 + (i + 1) * BLOCK]);
    }
    Ok(len)
}

/// Writes a picture loss indication (RFC 4585 §6.3.1: PSFB, FMT 1, 12 bytes) into `out`:
/// `sender_ssrc` asks the source `media_ssrc` for a keyframe. Returns its length, or 0 (nothing
/// written) when `out` is shorter than 12 bytes.
pub fn write_pli(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32) -> usize {
    const LEN: usize = 12;
    if out.len() < LEN {
        return 0;
    }
    header(out, usize::from(FMT_PLI), PT_PSFB, LEN);
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    LEN
}

/// Writes a full intra request (RFC 5104 §4.3.1: PSFB, FMT 4, one FCI entry, 20 bytes) into
/// `out`. `seq_nr` must change with every new request (and stay for a retransmission). Returns
/// its length, or 0 when `out` is shorter than 20 bytes.
pub fn write_fir(out: &mut [u8], sender_ssrc: u32, media_ssrc: u32, seq_nr: u8) -> usize {
    const LEN: usize = 20;
    if out.len() < LEN {
        return 0;
    }
    header(out, usize::from(FMT_FIR), PT_PSFB, LEN);
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].fill(0); // media source SSRC: unused in a FIR
    out[12..16].copy_from_slice(&media_ssrc.to_be_bytes());
    out[16] = seq_nr;
    out[17..20].fill(0);
    LEN
}

/// NTP timestamp for a time since the Unix epoch (the caller reads the wall clock).
pub fn ntp_from_unix(since_epoch: Duration) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let secs = since_epoch.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (what LSR carries).
pub fn ntp_mid32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// What a sender counts for its SRs (RFC 3550 §6.4.1): packets and payload octets sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub ssrc: u32,
    pub packets: u32,
    pub octets: u32,
}

impl SenderStats {
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            ..Self::default()
        }
    }

    /// One RTP packet with `payload_len` payload bytes (header and padding excluded) was sent.
    pub fn on_rtp_sent(&mut self, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
    }

    /// The SR sender info for wall-clock time `ntp` and the RTP timestamp of that same instant.
    pub fn sender_info(&self, ntp: u64, rtp_timestamp: u32) -> SenderInfo {
        SenderInfo {
            ssrc: self.ssrc,
            ntp,
            rtp_timestamp,
            packet_count: self.packets,
            octet_count: self.octets,
        }
    }
}

const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// Reception statistics of one source (RFC 3550 A.1, A.3, A.8), fed `now` and RTP arrivals.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    ssrc: u32,
    clock_rate: u32,
    started: Option<Instant>,
    max_seq: u16,
    /// Sequence-number wraps, shifted (count × 2^16).
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    transit: Option<i64>,
    /// Jitter × 16 (the RFC's integer form).
    jitter16: u64,
    last_sr: Option<(u32, Instant)>,
}

impl ReceiverStats {
    /// Statistics for the source `ssrc` with this RTP clock rate (48 000 for Opus and AIC).
    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        Self {
            ssrc,
            clock_rate: clock_rate.max(1),
            started: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter16: 0,
            last_sr: None,
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// One RTP packet of this source arrived at `now`. Returns false when the packet was not
    /// counted (a jump in sequence numbers not yet confirmed by a second packet).
    pub fn on_rtp(&mut self, now: Instant, seq: u16, rtp_timestamp: u32) -> bool {
        let Some(start) = self.started else {
            self.started = Some(now);
            self.init_seq(seq);
            self.received = 1;
            self.update_jitter(now, rtp_timestamp);
            return true;
        };
        let _ = start;
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if udelta as u32 <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: restart if the next packet follows this one.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
                self.transit = None;
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: duplicate or reordered packet; counted below.
        self.received = self.received.wrapping_add(1);
        self.update_jitter(now, rtp_timestamp);
        true
    }

    fn update_jitter(&mut self, now: Instant, rtp_timestamp: u32) {
        let Some(start) = self.started else {
            return;
        };
        // Arrival time in RTP units since the first packet (A.8: only differences matter).
        let arrival = (now.saturating_duration_since(start).as_nanos()
            * u128::from(self.clock_rate)
            / 1_000_000_000) as i64;
        // Both counters wrap at 2^32 in RTP units; compare modulo 2^32.
        let transit = i64::from((arrival as u32).wrapping_sub(rtp_timestamp) as i32);
        if let Some(prev) = self.transit {
            let d = i64::from((transit as i32).wrapping_sub(prev as i32)).unsigned_abs();
            // J += (|D| - J) / 16, in the ×16 integer form: J16 += |D| - ((J16 + 8) >> 4).
            self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// A sender report from this source arrived at `now` (for LSR/DLSR).
    pub fn on_sender_report(&mut self, now: Instant, ntp: u64) {
        self.last_sr = Some((ntp_mid32(ntp), now));
    }

    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    pub fn expected(&self) -> u32 {
        if self.started.is_none() {
            return 0;
        }
        self.extended_highest_seq()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    pub fn cumulative_lost(&self) -> i32 {
        (i64::from(self.expected()) - i64::from(self.received)).clamp(-0x80_0000, 0x7F_FFFF) as i32
    }

    /// Interarrival jitter, RTP units.
    pub fn jitter(&self) -> u32 {
        (self.jitter16 >> 4).min(u64::from(u32::MAX)) as u32
    }

    /// The report block for this source at `now`; starts a new interval for the fraction lost.
    pub fn report(&mut self, now: Instant) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            None => (0, 0),
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                let units = (d.as_nanos() * 65_536 / 1_000_000_000).min(u128::from(u32::MAX));
                (lsr, units as u32)
            }
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost(),
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_and_rr_compound_round_trip() {
        let info = SenderInfo {
            ssrc: 0x1122_3344,
            ntp: 0xE000_0001_8000_0000,
            rtp_timestamp: 960_000,
            packet_count: 500,
            octet_count: 40_000,
        };
        let blk = ReportBlock {
            ssrc: 0xAABB_CCDD,
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 42,
            last_sr: 0x0001_8000,
            delay_since_last_sr: 65_536,
        };
        let mut buf = [0u8; 256];
        let n = write_sender_report(&info, &[blk], &mut buf).unwrap();
        assert_eq!(n, 52);
        assert_eq!(&buf[..4], &[0x81, 200, 0, 12]);
        // -3 as 24-bit two's complement.
        assert_eq!(&buf[28 + 5..28 + 8], &[0xFF, 0xFF, 0xFD]);
        let m = write_receiver_report(7, &[blk, ReportBlock::default()], &mut buf[n..]).unwrap();
        assert_eq!(m, 56);
        // An SDES after them, with padding, passes through as Other.
        buf[n + m..n + m + 8].copy_from_slice(&[0xA1, 202, 0, 1, 1, 2, 0, 2]);
        let pkts: Vec<_> = Compound::new(&buf[..n + m + 8])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pkts.len(), 3);
        match &pkts[0] {
            Packet::SenderReport {
                info: i, blocks, ..
            } => {
                assert_eq!(*i, info);
                assert_eq!(blocks.clone().collect::<Vec<_>>(), vec![blk]);
            }
            p => panic!("{p:?}"),
        }
        match &pkts[1] {
            Packet::ReceiverReport { ssrc, blocks, .. } => {
                assert_eq!(*ssrc, 7);
                assert_eq!(blocks.clone().count(), 2);
            }
            p => panic!("{p:?}"),
        }
        match &pkts[2] {
            Packet::Other { pt, count, body } => {
                assert_eq!((*pt, *count, *body), (202, 1, &[1u8, 2][..]));
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert!(matches!(
            Compound::new(&[0x80]).next(),
            Some(Err(RtcpError::TooShort(1)))
        ));
        assert!(matches!(
            Compound::new(&[0x40, 200, 0, 0]).next(),
            Some(Err(RtcpError::Version(1)))
        ));
        // Length says 8 bytes, 4 there.
        assert!(matches!(
            Compound::new(&[0x80, 201, 0, 1]).next(),
            Some(Err(RtcpError::Length { .. }))
        ));
        // RR claiming one block with none there.
        assert!(matches!(
            Compound::new(&[0x81, 201, 0, 1, 0, 0, 0, 1]).next(),
            Some(Err(RtcpError::Blocks { .. }))
        ));
        let mut buf = [0u8; 10];
        assert!(write_receiver_report(1, &[ReportBlock::default()], &mut buf).is_err());
    }

    #[test]
    fn pli_fir_and_nack() {
        let mut buf = [0u8; 64];
        assert_eq!(write_pli(&mut buf[..11], 1, 2), 0);
        let n = write_pli(&mut buf, 0x0102_0304, 0x0A0B_0C0D);
        assert_eq!(
            buf[..n],
            [0x81, 206, 0, 2, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]
        );
        let m = write_fir(&mut buf[n..], 7, 0xCAFE_F00D, 9);
        assert_eq!(m, 20);
        assert_eq!(buf[n..n + 4], [0x84, 206, 0, 4]);
        assert_eq!(buf[n + 12..n + 17], [0xCA, 0xFE, 0xF0, 0x0D, 9]);
        assert_eq!(write_fir(&mut buf[..19], 1, 2, 3), 0);
        // A generic NACK: PID 100 with BLP bits 0 and 15 (101, 116), PID 65535 alone.
        let nack = [
            0x81, 205, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6, 0, 100, 0x80, 0x01, 0xFF, 0xFF, 0, 0,
        ];
        buf[n + m..n + m + 20].copy_from_slice(&nack);
        let pkts: Vec<_> = Compound::new(&buf[..n + m + 20])
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(matches!(
            pkts[0],
            Packet::Pli {
                sender_ssrc: 0x0102_0304,
                media_ssrc: 0x0A0B_0C0D
            }
        ));
        assert!(matches!(
            pkts[1],
            Packet::Fir {
                sender_ssrc: 7,
                media_ssrc: 0xCAFE_F00D,
                seq_nr: 9
            }
        ));
        match &pkts[2] {
            Packet::Nack {
                sender_ssrc: 5,
                media_ssrc: 6,
                items,
            } => {
                assert_eq!(
                    items.clone().sequences().collect::<Vec<_>>(),
                    [100, 101, 116, 65535]
                );
            }
            p => panic!("{p:?}"),
        }
        // Other feedback (REMB: PSFB FMT 15) stays Other; a cut-short PLI or FIR is an error.
        let remb = [0x8F, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            Compound::new(&remb).next(),
            Some(Ok(Packet::Other {
                pt: 206,
                count: 15,
                ..
            }))
        ));
        assert!(matches!(
            Compound::new(&[0x81, 206, 0, 1, 0, 0, 0, 1]).next(),
            Some(Err(RtcpError::Feedback { .. }))
        ));
        assert!(matches!(
            Compound::new(&[0x84, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]).next(),
            Some(Err(RtcpError::Feedback { .. }))
        ));
    }

    #[test]
    fn sender_stats_feed_the_sr() {
        let mut s = SenderStats::new(5);
        for _ in 0..3 {
            s.on_rtp_sent(40);
        }
        let info = s.sender_info(ntp_from_unix(Duration::from_secs(10)), 4800);
        let mut buf = [0u8; 28];
        write_sender_report(&info, &[], &mut buf).unwrap();
        match Compound::new(&buf).next() {
            Some(Ok(Packet::SenderReport { info: i, .. })) => {
                assert_eq!(
                    (i.packet_count, i.octet_count, i.rtp_timestamp),
                    (3, 120, 4800)
                );
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn ntp_conversion() {
        let n = ntp_from_unix(Duration::from_millis(1500));
        assert_eq!(n >> 32, 2_208_988_801);
        assert_eq!(n as u32, 0x8000_0000);
        assert_eq!(ntp_mid32(n), (2_208_988_801u32 << 16) | 0x8000);
    }

    /// Hand-computed: 20 ms packets at 48 kHz (960 units), seqs 65534..=65535 then 0..=7 with
    /// seq 3 lost: expected 10, received 9, one loss, wrap counted once.
    #[test]
    fn loss_wrap_and_fraction() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(9, 48_000);
        let seqs: Vec<u16> = [65534u16, 65535, 0, 1, 2, 4, 5, 6, 7].into();
        for (i, &q) in seqs.iter().enumerate() {
            let k = q.wrapping_sub(65534) as u64;
            let _ = i;
            assert!(s.on_rtp(t0 + Duration::from_millis(20 * k), q, (960 * k) as u32));
        }
        assert_eq!(s.expected(), 10);
        assert_eq!(s.received(), 9);
        assert_eq!(s.extended_highest_seq(), 65536 + 7);
        let r = s.report(t0 + Duration::from_millis(200));
        assert_eq!(r.cumulative_lost, 1);
        assert_eq!(r.fraction_lost, 25); // 1/10 × 256 = 25.6 → 25
        assert_eq!(r.jitter, 0, "perfectly paced");
        // Next interval: 10 more, none lost.
        for k in 10..20u64 {
            s.on_rtp(
                t0 + Duration::from_millis(20 * k),
                (k as u16).wrapping_sub(2),
                (960 * k) as u32,
            );
        }
        let r = s.report(t0 + Duration::from_millis(400));
        assert_eq!((r.fraction_lost, r.cumulative_lost), (0, 1));
        // A duplicate makes the cumulative loss go down (the RFC counts it as received).
        s.on_rtp(t0 + Duration::from_millis(400), 17, 960 * 19);
        assert_eq!(s.cumulative_lost(), 0);
    }

    /// One packet 10 ms late (480 units at 48 kHz): |D| = 480 for it, then 480 again for the
    /// next (back on time). J = 480/16 = 30, then 30 + (480 - 30)/16 = 58.125 → 58.
    #[test]
    fn jitter_by_hand() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(1, 48_000);
        s.on_rtp(t0, 0, 0);
        s.on_rtp(t0 + Duration::from_millis(20), 1, 960);
        assert_eq!(s.jitter(), 0);
        s.on_rtp(t0 + Duration::from_millis(50), 2, 1920);
        assert_eq!(s.jitter(), 30);
        s.on_rtp(t0 + Duration::from_millis(60), 3, 2880);
        assert_eq!(s.jitter(), 58);
    }

    #[test]
    fn lsr_dlsr_and_big_jumps() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(1, 48_000);
        s.on_rtp(t0, 100, 0);
        let ntp = ntp_from_unix(Duration::from_secs(1_700_000_000));
        s.on_sender_report(t0, ntp);
        let r = s.report(t0 + Duration::from_millis(250));
        assert_eq!(r.last_sr, ntp_mid32(ntp));
        assert_eq!(r.delay_since_last_sr, 16_384); // 0.25 s × 65536
        // A jump of 20 000 is not believed from one packet; two in a row restart the count.
        assert!(!s.on_rtp(t0, 20_100, 0));
        assert!(s.on_rtp(t0, 20_101, 960));
        assert_eq!(s.extended_highest_seq(), 20_101);
        assert_eq!(s.expected(), 1);
    }
}
