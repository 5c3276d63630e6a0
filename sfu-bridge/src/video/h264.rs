//! H.264 in RTP (RFC 6184), packetization-mode 0 and 1: single NAL unit packets, STAP-A and
//! FU-A. STAP-B, MTAP16/24 and FU-B (interleaved mode 2) are refused with
//! [`VideoRtpError::H264Unsupported`]. The depacketizer writes an Annex-B access unit (every NAL
//! unit after a `00 00 00 01` start code), which FFmpeg's H.264 decoder reads without
//! out-of-band parameters.
//!
//! ```text
//!  NAL unit header:  |F|NRI|  Type   |     FU-A:  |F|NRI| 28 | |S|E|R| Type | payload...
//!  STAP-A:           |F|NRI|   24    | size (16 bits) | NAL unit | size | NAL unit | ...
//! ```

use super::{FrameInfo, VideoRtpError};

pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;
pub const STAP_A: u8 = 24;
pub const FU_A: u8 = 28;
const START_CODE: [u8; 4] = [0, 0, 0, 1];

fn unsupported(t: u8) -> VideoRtpError {
    let name = match t {
        25 => "STAP-B",
        26 => "MTAP16",
        27 => "MTAP24",
        29 => "FU-B",
        _ => "reserved",
    };
    VideoRtpError::H264Unsupported { nal_type: t, name }
}

/// Turns one access unit's payloads (in sequence order) back into Annex B.
#[derive(Debug, Default)]
pub struct H264Depacketizer {
    /// An FU-A is open (its start seen, not its end).
    in_fu: bool,
    nals: usize,
    idr: bool,
    sps: bool,
    pps: bool,
}

impl H264Depacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the access unit in progress.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether `payload` can be taken as the start of an access unit after a loss: its first
    /// NAL unit is an access unit delimiter (always first in its unit) or a sequence parameter
    /// set (before every slice of its unit: what may be missing before it is an AUD or SEI,
    /// nothing a decoder needs).
    pub fn is_frame_start(payload: &[u8]) -> bool {
        let t = match payload {
            [h, rest @ ..] => match h & 0x1F {
                STAP_A => rest.get(2).map(|b| b & 0x1F),
                FU_A => rest
                    .first()
                    .filter(|&&fu| fu & 0x80 != 0)
                    .map(|fu| fu & 0x1F),
                t => Some(t),
            },
            [] => None,
        };
        matches!(t, Some(NAL_AUD | NAL_SPS))
    }

    fn note(&mut self, nal_type: u8) {
        self.nals += 1;
        match nal_type {
            NAL_IDR => self.idr = true,
            NAL_SPS => self.sps = true,
            NAL_PPS => self.pps = true,
            _ => {}
        }
    }

    fn nal(&mut self, nal: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        let &h = nal
            .first()
            .ok_or(VideoRtpError::H264Malformed("empty NAL unit"))?;
        self.note(h & 0x1F);
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
        Ok(())
    }

    /// Appends the NAL units of the next packet of the access unit to `out`.
    pub fn push(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        let &h = payload.first().ok_or(VideoRtpError::Empty)?;
        let t = h & 0x1F;
        if self.in_fu && t != FU_A {
            return Err(VideoRtpError::H264Malformed("FU-A not ended"));
        }
        match t {
            1..=23 => self.nal(payload, out),
            STAP_A => {
                let mut rest = &payload[1..];
                if rest.is_empty() {
                    return Err(VideoRtpError::H264Malformed("empty STAP-A"));
                }
                while !rest.is_empty() {
                    let [a, b, tail @ ..] = rest else {
                        return Err(VideoRtpError::H264Malformed("STAP-A size cut short"));
                    };
                    let n = usize::from(u16::from_be_bytes([*a, *b]));
                    if n == 0 || n > tail.len() {
                        return Err(VideoRtpError::H264Malformed("STAP-A size out of bounds"));
                    }
                    let (nal, more) = tail.split_at(n);
                    self.nal(nal, out)?;
                    rest = more;
                }
                Ok(())
            }
            FU_A => {
                let [_, fu, data @ ..] = payload else {
                    return Err(VideoRtpError::H264Malformed("FU-A without FU header"));
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if start {
                    if self.in_fu {
                        return Err(VideoRtpError::H264Malformed("FU-A not ended"));
                    }
                    self.note(fu & 0x1F);
                    out.extend_from_slice(&START_CODE);
                    out.push((h & 0xE0) | (fu & 0x1F));
                    self.in_fu = true;
                } else if !self.in_fu {
                    return Err(VideoRtpError::H264Malformed("FU-A without its start"));
                }
                out.extend_from_slice(data);
                if end {
                    self.in_fu = false;
                }
                Ok(())
            }
            t => Err(unsupported(t)),
        }
    }

    /// Ends the access unit: keyframe = an IDR slice is in it.
    pub fn finish(&mut self) -> Result<FrameInfo, VideoRtpError> {
        let s = std::mem::take(self);
        if s.in_fu {
            return Err(VideoRtpError::H264Malformed("FU-A not ended"));
        }
        if s.nals == 0 {
            return Err(VideoRtpError::Empty);
        }
        Ok(FrameInfo {
            keyframe: s.idr,
            parameter_sets: s.sps && s.pps,
        })
    }
}

/// The NAL units of an Annex-B byte stream (3- or 4-byte start codes; the zero bytes before a
/// start code are not part of the NAL unit before it). Bytes before the first start code are
/// skipped.
pub fn annex_b_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = find_start(data, 0).map_or(data.len(), |(_, after)| after);
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let (end, next) = find_start(data, pos).unwrap_or((data.len(), data.len()));
        let mut nal = &data[pos..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        pos = next;
        Some(nal)
    })
    .filter(|n| !n.is_empty())
}

/// The next `00 00 01` at or after `from`: (its offset, the offset after it).
fn find_start(d: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= d.len() {
        if d[i + 2] > 1 {
            i += 3;
        } else if d[i] == 0 && d[i + 1] == 0 && d[i + 2] == 1 {
            return Some((i, i + 3));
        } else {
            i += 1;
        }
    }
    None
}

/// Splits Annex-B access units into RTP payloads (packetization-mode 1): NAL units that fit
/// go alone or, when several small ones fit together, in one STAP-A; larger ones in FU-As.
#[derive(Debug, Clone)]
pub struct H264Packetizer {
    mtu: usize,
}

impl H264Packetizer {
    /// `mtu`: the largest payload, at least 16 bytes (smaller is raised).
    pub fn new(mtu: usize) -> Self {
        Self { mtu: mtu.max(16) }
    }

    /// Replaces `out` with the payloads of one access unit (inner buffers are reused); the last
    /// carries the RTP marker bit.
    pub fn packetize(
        &mut self,
        access_unit: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), VideoRtpError> {
        let mut n = 0;
        // An open STAP-A (index in `out`) or single NAL packet that a next small NAL may join.
        let mut open: Option<usize> = None;
        for nal in annex_b_nals(access_unit) {
            let t = nal[0] & 0x1F;
            if matches!(t, 0 | 24..=31) {
                return Err(unsupported(t));
            }
            if nal.len() <= self.mtu {
                if let Some(i) = open {
                    let p = &mut out[i];
                    let single = p[0] & 0x1F != STAP_A;
                    let extra = if single { 3 + 2 } else { 2 };
                    if p.len() + extra + nal.len() <= self.mtu && nal.len() <= 0xFFFF {
                        if single {
                            // Turn the single NAL packet into a STAP-A holding it.
                            let [a, b] = (p.len() as u16).to_be_bytes();
                            let h = p[0];
                            p.splice(0..0, [h, a, b]);
                        }
                        // F: any NAL's F; NRI: the highest NRI (RFC 6184 §5.7.1).
                        p[0] = ((p[0] | nal[0]) & 0x80) | (p[0] & 0x60).max(nal[0] & 0x60) | STAP_A;
                        p.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                        p.extend_from_slice(nal);
                        continue;
                    }
                }
                super::slot(out, n).extend_from_slice(nal);
                open = Some(n);
                n += 1;
                continue;
            }
            open = None;
            let (h, body) = (nal[0], &nal[1..]);
            let room = self.mtu - 2;
            let chunks = body.len().div_ceil(room);
            for (i, chunk) in body.chunks(room).enumerate() {
                let p = super::slot(out, n);
                let s = if i == 0 { 0x80 } else { 0 };
                let e = if i + 1 == chunks { 0x40 } else { 0 };
                p.extend_from_slice(&[(h & 0xE0) | FU_A, s | e | t]);
                p.extend_from_slice(chunk);
                n += 1;
            }
        }
        out.truncate(n);
        if n == 0 {
            return Err(VideoRtpError::Empty);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depack(payloads: &[&[u8]]) -> Result<(Vec<u8>, FrameInfo), VideoRtpError> {
        let mut d = H264Depacketizer::new();
        let mut out = Vec::new();
        for p in payloads {
            d.push(p, &mut out)?;
        }
        d.finish().map(|i| (out, i))
    }

    #[test]
    fn single_stap_a_and_fu_a() {
        // STAP-A with SPS (3 bytes) and PPS (2 bytes), then an IDR in three FU-As.
        let stap = [0x78, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 9];
        let fu1 = [0x7C, 0x85, 0xA0, 0xA1];
        let fu2 = [0x7C, 0x05, 0xA2];
        let fu3 = [0x7C, 0x45, 0xA3];
        let sei = [0x06, 5, 5];
        let (au, info) = depack(&[&sei, &stap, &fu1, &fu2, &fu3]).unwrap();
        assert_eq!(
            au,
            [
                0, 0, 0, 1, 6, 5, 5, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65,
                0xA0, 0xA1, 0xA2, 0xA3
            ]
        );
        assert!(info.keyframe && info.parameter_sets);
        // A non-IDR slice alone.
        let (au, info) = depack(&[&[0x41, 0xE0]]).unwrap();
        assert_eq!(au, [0, 0, 0, 1, 0x41, 0xE0]);
        assert!(!info.keyframe && !info.parameter_sets);
        assert!(H264Depacketizer::is_frame_start(&stap));
        assert!(!H264Depacketizer::is_frame_start(&fu2));
        assert!(!H264Depacketizer::is_frame_start(&fu1));
        assert!(H264Depacketizer::is_frame_start(&[0x09, 0x10]));
    }

    #[test]
    fn refuses_what_mode_1_does_not_have_and_broken_units() {
        for t in [25u8, 26, 27, 29] {
            assert!(matches!(
                depack(&[&[t, 0, 0, 0, 0]]),
                Err(VideoRtpError::H264Unsupported { nal_type, .. }) if nal_type == t
            ));
        }
        for bad in [
            &[&[0x00, 1][..]][..],           // reserved type 0
            &[&[0x7C, 0x05, 1]],             // FU-A middle without start
            &[&[0x7C, 0x85, 1]],             // FU-A never ended
            &[&[0x7C, 0x85, 1], &[0x41, 1]], // a NAL inside an open FU-A
            &[&[0x78, 0, 5, 0x67]],          // STAP-A size past the end
            &[&[0x78, 0, 0]],                // STAP-A zero size
            &[&[0x78, 0, 1, 0x67, 0]],       // STAP-A size field cut short
            &[&[0x7C]],                      // FU-A without FU header
            &[&[]],                          // empty
        ] {
            assert!(depack(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn annex_b_splitting() {
        let s = [
            0xFF, 0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 0, 1, 0x65, 0, 3, 4, 0,
        ];
        let v: Vec<&[u8]> = annex_b_nals(&s).collect();
        assert_eq!(v, [&[0x67, 1][..], &[0x68, 2], &[0x65, 0, 3, 4]]);
        assert_eq!(annex_b_nals(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn packetizer_aggregates_and_fragments() {
        let mut p = H264Packetizer::new(16);
        let mut out = Vec::new();
        let mut au = vec![0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65];
        au.extend(1..=30u8);
        p.packetize(&au, &mut out).unwrap();
        assert_eq!(out[0], [0x78, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 3]);
        assert_eq!(out[1][..2], [0x7C, 0x85]);
        assert_eq!(out.last().unwrap()[1], 0x45);
        let mut d = H264Depacketizer::new();
        let mut back = Vec::new();
        for x in &out {
            assert!(x.len() <= 16);
            d.push(x, &mut back).unwrap();
        }
        assert!(d.finish().unwrap().keyframe);
        let mut want = vec![
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65,
        ];
        want.extend(1..=30u8);
        assert_eq!(back, want);
        assert!(p.packetize(&[1, 2, 3], &mut out).is_err());
    }
}
