//! AV1 in RTP (AOMedia "RTP Payload Format for AV1", v1.0.0): a packetizer for temporal units
//! in the low-overhead bitstream format (what libaom, SVT-AV1 and FFmpeg hand out) and a
//! depacketizer that gives one back.
//!
//! ```text
//!  aggregation header     OBU elements
//!   0 1 2 3 4 5 6 7
//!  +-+-+-+-+-+-+-+-+------------------+-----------+------------------+-----------+--
//!  |Z|Y| W |N|-|-|-| LEB128 length    | OBU ...   | LEB128 length    | OBU ...   |
//!  +-+-+-+-+-+-+-+-+------------------+-----------+------------------+-----------+--
//! ```
//! * Z: the first element continues an OBU fragment of the previous packet; Y: the last one
//!   continues in the next; N: first packet of a coded video sequence (the temporal unit holds
//!   a sequence header and a key frame); W: 0 = every element has a LEB128 length, 1..=3 = that
//!   many elements, the last one without a length.
//! * OBUs travel without their `obu_size` field (`obu_has_size_field` = 0), as the format
//!   recommends; temporal delimiters and tile-list OBUs are not sent.
//!
//! Choices of this implementation:
//! * the packetizer always writes **W = 0** (every element with its length: one or two bytes
//!   per element, and a packet can be closed at any point without rewriting its header); the
//!   depacketizer reads every W;
//! * payloads are at most `mtu` bytes (aggregation header included; 1200 by default, what
//!   browsers use), packed greedily: OBUs are aggregated while they fit and fragmented
//!   (Y/Z) when they do not;
//! * no dependency descriptor extension (one spatial and temporal layer; an SFU forwarding
//!   layers would need it).
//!
//! The depacketizer writes a temporal delimiter (`0x12 0x00`), then every OBU with
//! `obu_has_size_field` = 1 and its size, so libdav1d and libaom decode the result directly.
//! An OBU that arrives with its size field keeps it (the field must then match the element).

use super::{FrameInfo, VideoRtpError};

/// The default payload size limit (aggregation header included).
pub const DEFAULT_MTU: usize = 1200;
/// The smallest MTU [`Av1Packetizer::new`] takes (a smaller one is raised to it).
pub const MIN_MTU: usize = 16;

pub const OBU_SEQUENCE_HEADER: u8 = 1;
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;
pub const OBU_FRAME_HEADER: u8 = 3;
pub const OBU_TILE_GROUP: u8 = 4;
pub const OBU_METADATA: u8 = 5;
pub const OBU_FRAME: u8 = 6;
pub const OBU_TILE_LIST: u8 = 8;
pub const OBU_PADDING: u8 = 15;

/// The temporal delimiter the depacketizer starts each temporal unit with.
pub const TEMPORAL_DELIMITER: [u8; 2] = [0x12, 0x00];

/// Reads an unsigned LEB128 number (at most 8 bytes, value < 2^32 as AV1 requires):
/// `(value, bytes read)`.
pub fn read_leb128(b: &[u8]) -> Option<(usize, usize)> {
    let mut v: u64 = 0;
    for (i, &x) in b.iter().take(8).enumerate() {
        v |= u64::from(x & 0x7F) << (7 * i);
        if x & 0x80 == 0 {
            return (v <= u64::from(u32::MAX)).then_some((v as usize, i + 1));
        }
    }
    None
}

/// Appends `v` as minimal LEB128.
pub fn write_leb128(mut v: usize, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn leb128_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

fn obu_type(h: u8) -> u8 {
    (h >> 3) & 0x0F
}

/// Tracks what makes a temporal unit a keyframe: a sequence header, and a first frame (header)
/// that is a key frame.
#[derive(Debug, Default, Clone, Copy)]
struct KeyScan {
    seq_header: bool,
    reduced_still: bool,
    first_frame_key: Option<bool>,
}

impl KeyScan {
    fn obu(&mut self, ty: u8, body: &[u8]) {
        match ty {
            OBU_SEQUENCE_HEADER => {
                self.seq_header = true;
                // seq_profile (3), still_picture (1), reduced_still_picture_header (1).
                self.reduced_still = body.first().is_some_and(|b| b & 0x08 != 0);
            }
            OBU_FRAME | OBU_FRAME_HEADER if self.first_frame_key.is_none() => {
                // show_existing_frame (1), frame_type (2): KEY_FRAME = 0.
                let key = self.reduced_still
                    || body
                        .first()
                        .is_some_and(|b| b & 0x80 == 0 && (b >> 5) & 3 == 0);
                self.first_frame_key = Some(key);
            }
            _ => {}
        }
    }

    fn keyframe(&self) -> bool {
        self.seq_header && self.first_frame_key == Some(true)
    }
}

/// One OBU of the input: its header (size flag cleared) and where its payload is.
#[derive(Debug, Clone, Copy)]
struct Element {
    header: [u8; 2],
    header_len: usize,
    start: usize,
    end: usize,
}

impl Element {
    fn len(&self) -> usize {
        self.header_len + self.end - self.start
    }

    /// Appends bytes `from..to` of the element (header then payload) to `out`.
    fn copy(&self, tu: &[u8], from: usize, to: usize, out: &mut Vec<u8>) {
        let h = self.header_len;
        if from < h {
            out.extend_from_slice(&self.header[from..to.min(h)]);
        }
        let (a, b) = (from.max(h) - h, to.max(h) - h);
        out.extend_from_slice(&tu[self.start + a..self.start + b]);
    }
}

/// Splits temporal units (low-overhead format) into AV1 RTP payloads.
#[derive(Debug, Clone)]
pub struct Av1Packetizer {
    mtu: usize,
    elements: Vec<Element>,
    keyframes: u64,
}

impl Av1Packetizer {
    /// `mtu`: the largest payload in bytes, aggregation header included (e.g.
    /// [`DEFAULT_MTU`]); raised to [`MIN_MTU`] if smaller.
    pub fn new(mtu: usize) -> Self {
        Self {
            mtu: mtu.max(MIN_MTU),
            elements: Vec::new(),
            keyframes: 0,
        }
    }

    /// Temporal units packetized with N = 1 so far.
    pub fn keyframes(&self) -> u64 {
        self.keyframes
    }

    /// Replaces `out` with the payloads of one temporal unit (inner buffers are reused). The
    /// last payload is the one to send with the RTP marker bit; the first has N = 1 when the
    /// unit starts a coded video sequence (sequence header + key frame). A unit with nothing
    /// to send (only a temporal delimiter) gives no payload. Malformed OBUs are an error, and
    /// `out` is then empty.
    pub fn packetize(
        &mut self,
        temporal_unit: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), VideoRtpError> {
        let r = self.parse(temporal_unit);
        let keyframe = match r {
            Ok(k) => k,
            Err(e) => {
                out.clear();
                return Err(e);
            }
        };
        let mut n = 0;
        let mut p = super::slot(out, n);
        p.push(if keyframe { 0x08 } else { 0 });
        self.keyframes += u64::from(keyframe);
        for e in &self.elements {
            let len = e.len();
            let mut off = 0;
            while off < len {
                let room = self.mtu - p.len();
                let rem = len - off;
                if leb128_len(rem) + rem <= room {
                    write_leb128(rem, p);
                    e.copy(temporal_unit, off, len, p);
                    off = len;
                    continue;
                }
                // Fragment: as much as fits with its length.
                let mut f = room.saturating_sub(leb128_len(room));
                while f > 0 && f + leb128_len(f) > room {
                    f -= 1;
                }
                let fragmented = f > 0;
                if fragmented {
                    write_leb128(f, p);
                    e.copy(temporal_unit, off, off + f, p);
                    off += f;
                    p[0] |= 0x40; // Y
                }
                n += 1;
                p = super::slot(out, n);
                p.push(if fragmented { 0x80 } else { 0 }); // Z
            }
        }
        if p.len() > 1 {
            n += 1;
        }
        out.truncate(n);
        Ok(())
    }

    /// Fills `elements` with the OBUs to send; returns whether the unit is a keyframe.
    fn parse(&mut self, tu: &[u8]) -> Result<bool, VideoRtpError> {
        self.elements.clear();
        let mut scan = KeyScan::default();
        let mut pos = 0;
        while pos < tu.len() {
            let h = tu[pos];
            if h & 0x80 != 0 {
                return Err(VideoRtpError::Av1Obu("forbidden bit set"));
            }
            let ext = h & 0x04 != 0;
            let header_len = 1 + usize::from(ext);
            let mut start = pos + header_len;
            if start > tu.len() {
                return Err(VideoRtpError::Av1Obu("header cut short"));
            }
            let end = if h & 0x02 != 0 {
                let (size, n) =
                    read_leb128(&tu[start..]).ok_or(VideoRtpError::Av1Obu("bad obu_size"))?;
                start += n;
                if size > tu.len() - start {
                    return Err(VideoRtpError::Av1Obu("obu_size past the end"));
                }
                start + size
            } else {
                tu.len()
            };
            let ty = obu_type(h);
            scan.obu(ty, &tu[start..end]);
            if ty != OBU_TEMPORAL_DELIMITER && ty != OBU_TILE_LIST {
                let ext_byte = if ext { tu[pos + 1] } else { 0 };
                self.elements.push(Element {
                    header: [h & !0x02, ext_byte],
                    header_len,
                    start,
                    end,
                });
            }
            pos = end;
        }
        Ok(scan.keyframe())
    }
}

/// Gives back one temporal unit from its payloads (in sequence order).
#[derive(Debug)]
pub struct Av1Depacketizer {
    started: bool,
    n_bit: bool,
    /// An OBU fragment waiting for its continuation (Y = 1 on the last packet).
    in_fragment: bool,
    fragment: Vec<u8>,
    limit: usize,
    scan: KeyScan,
}

impl Default for Av1Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Av1Depacketizer {
    pub fn new() -> Self {
        Self {
            started: false,
            n_bit: false,
            in_fragment: false,
            fragment: Vec::new(),
            limit: super::DEFAULT_MAX_FRAME_BYTES,
            scan: KeyScan::default(),
        }
    }

    /// The largest OBU fragment kept across packets.
    pub fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes;
    }

    /// Forgets the temporal unit in progress (keeps the fragment buffer's capacity).
    pub fn reset(&mut self) {
        self.started = false;
        self.n_bit = false;
        self.in_fragment = false;
        self.fragment.clear();
        self.scan = KeyScan::default();
    }

    /// Whether `payload` surely starts a temporal unit: Z = 0 and N = 1, or its first OBU is a
    /// sequence header or temporal delimiter.
    pub fn is_frame_start(payload: &[u8]) -> bool {
        let Some((&a, rest)) = payload.split_first() else {
            return false;
        };
        if a & 0x80 != 0 {
            return false;
        }
        if a & 0x08 != 0 {
            return true;
        }
        let first = if (a >> 4) & 3 == 1 {
            rest.first()
        } else {
            read_leb128(rest).and_then(|(_, n)| rest.get(n))
        };
        first.is_some_and(|&h| matches!(obu_type(h), OBU_SEQUENCE_HEADER | OBU_TEMPORAL_DELIMITER))
    }

    /// Appends the complete OBUs of the next packet of the temporal unit to `out`.
    pub fn push(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        let (&a, mut rest) = payload.split_first().ok_or(VideoRtpError::Empty)?;
        let (z, y, w) = (a & 0x80 != 0, a & 0x40 != 0, usize::from((a >> 4) & 3));
        if !self.started {
            if z {
                return Err(VideoRtpError::Av1("first packet continues a fragment"));
            }
            self.started = true;
            self.n_bit = a & 0x08 != 0;
            out.extend_from_slice(&TEMPORAL_DELIMITER);
        } else if z != self.in_fragment {
            return Err(VideoRtpError::Av1(
                "Z does not match the previous packet's Y",
            ));
        }
        if rest.is_empty() {
            return Err(VideoRtpError::Av1("no OBU element"));
        }
        let mut i = 0;
        while !rest.is_empty() {
            let len = if w != 0 && i + 1 == w {
                rest.len()
            } else {
                let (len, n) = read_leb128(rest).ok_or(VideoRtpError::Av1("bad element length"))?;
                rest = &rest[n..];
                if len > rest.len() {
                    return Err(VideoRtpError::Av1("element length past the end"));
                }
                len
            };
            let (el, more) = rest.split_at(len);
            rest = more;
            let continues = i == 0 && z;
            let to_next = rest.is_empty() && y;
            if continues || to_next {
                if !continues {
                    self.fragment.clear();
                }
                if self.fragment.len() + el.len() > self.limit {
                    return Err(VideoRtpError::FrameTooLarge(self.limit));
                }
                self.fragment.extend_from_slice(el);
                if !to_next {
                    let frag = std::mem::take(&mut self.fragment);
                    let r = self.emit(&frag, out);
                    self.fragment = frag;
                    self.fragment.clear();
                    r?;
                }
            } else {
                self.emit(el, out)?;
            }
            self.in_fragment = to_next;
            i += 1;
        }
        if w != 0 && i < w {
            return Err(VideoRtpError::Av1("fewer elements than W says"));
        }
        Ok(())
    }

    fn emit(&mut self, obu: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        let &h = obu.first().ok_or(VideoRtpError::Av1Obu("empty OBU"))?;
        if h & 0x80 != 0 {
            return Err(VideoRtpError::Av1Obu("forbidden bit set"));
        }
        let header_len = 1 + usize::from(h & 0x04 != 0);
        if obu.len() < header_len {
            return Err(VideoRtpError::Av1Obu("header cut short"));
        }
        let body = if h & 0x02 != 0 {
            let (size, n) =
                read_leb128(&obu[header_len..]).ok_or(VideoRtpError::Av1Obu("bad obu_size"))?;
            if header_len + n + size != obu.len() {
                return Err(VideoRtpError::Av1Obu("obu_size disagrees with the element"));
            }
            &obu[header_len + n..]
        } else {
            &obu[header_len..]
        };
        let ty = obu_type(h);
        if ty == OBU_TEMPORAL_DELIMITER || ty == OBU_TILE_LIST {
            return Ok(());
        }
        self.scan.obu(ty, body);
        out.push(h | 0x02);
        out.extend_from_slice(&obu[1..header_len]);
        write_leb128(body.len(), out);
        out.extend_from_slice(body);
        Ok(())
    }

    /// Ends the temporal unit. Keyframe: a sequence header and a key frame (or N = 1 with a
    /// sequence header).
    pub fn finish(&mut self) -> Result<FrameInfo, VideoRtpError> {
        let (started, in_fragment, n_bit, scan) =
            (self.started, self.in_fragment, self.n_bit, self.scan);
        self.reset();
        if !started {
            return Err(VideoRtpError::Empty);
        }
        if in_fragment {
            return Err(VideoRtpError::Av1("OBU fragment not finished"));
        }
        Ok(FrameInfo {
            keyframe: scan.keyframe() || (n_bit && scan.seq_header),
            parameter_sets: scan.seq_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OBU with `obu_has_size_field` = 1.
    fn obu(ty: u8, ext: Option<u8>, body: &[u8]) -> Vec<u8> {
        let mut v = vec![(ty << 3) | 0x02 | if ext.is_some() { 0x04 } else { 0 }];
        v.extend(ext);
        write_leb128(body.len(), &mut v);
        v.extend_from_slice(body);
        v
    }

    fn depack(payloads: &[Vec<u8>]) -> Result<(Vec<u8>, FrameInfo), VideoRtpError> {
        let mut d = Av1Depacketizer::new();
        let mut out = Vec::new();
        for p in payloads {
            d.push(p, &mut out)?;
        }
        d.finish().map(|i| (out, i))
    }

    #[test]
    fn leb128() {
        for v in [0usize, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as usize] {
            let mut b = Vec::new();
            write_leb128(v, &mut b);
            assert_eq!(b.len(), leb128_len(v));
            assert_eq!(read_leb128(&b), Some((v, b.len())));
        }
        assert_eq!(read_leb128(&[0x80, 0x01]), Some((128, 2)));
        // Non-minimal forms are read too.
        assert_eq!(read_leb128(&[0x85, 0x80, 0x00]), Some((5, 3)));
        assert_eq!(read_leb128(&[0x80; 9]), None);
        assert_eq!(
            read_leb128(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            None,
            "2^35 - 1"
        );
    }

    #[test]
    fn hand_built_packets_of_the_spec() {
        // Packet 1: W=2 (two elements, the last without length), N=1: a sequence header
        // (reduced_still_picture_header = 0) and the first part of a key frame (Y=1).
        let p1 = vec![0b0110_1000, 2, 0x08, 0x00, 0x30, 0x10, 0xAA];
        // Packet 2: Z=1, W=1: the rest of the frame OBU.
        let p2 = vec![0b1001_0000, 0xBB, 0xCC];
        let (tu, info) = depack(&[p1, p2]).unwrap();
        let mut want = TEMPORAL_DELIMITER.to_vec();
        want.extend(obu(OBU_SEQUENCE_HEADER, None, &[0x00]));
        want.extend(obu(OBU_FRAME, None, &[0x10, 0xAA, 0xBB, 0xCC]));
        assert_eq!(tu, want);
        assert!(info.keyframe && info.parameter_sets);
        // W=0 with an OBU that kept its size field, an extension byte, and a temporal
        // delimiter that is dropped; frame_type = INTER (1): not a keyframe.
        let p = vec![0, 2, 0x12, 0x00, 4, 0x36, 0x28, 0x01, 0x30];
        let (tu, info) = depack(&[p]).unwrap();
        let mut want = TEMPORAL_DELIMITER.to_vec();
        want.extend(obu(OBU_FRAME, Some(0x28), &[0x30]));
        assert_eq!(tu, want);
        assert!(!info.keyframe && !info.parameter_sets);
    }

    #[test]
    fn malformed_payloads() {
        for bad in [
            vec![],
            vec![0x00],                   // no element
            vec![0x80, 1, 0x30],          // Z=1 on the first packet
            vec![0x00, 5, 0x30],          // length past the end
            vec![0x00, 1, 0xB0],          // forbidden bit
            vec![0x00, 0],                // empty OBU
            vec![0x30, 1, 0x30],          // W=3, one element
            vec![0x00, 3, 0x32, 5, 0],    // obu_size disagrees
            vec![0x00, 1, 0x34],          // extension byte missing
            vec![0x40, 2, 0x30, 0],       // Y=1 and the unit ends
            vec![0x00, 0x80, 0x80, 0x80], // bad length
        ] {
            assert!(depack(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        // Z=0 while a fragment is open.
        assert!(depack(&[vec![0x40, 2, 0x30, 0], vec![0x00, 1, 0x30]]).is_err());
    }

    #[test]
    fn packetizer_fragments_and_drops_what_the_spec_says() {
        let mut tu = obu(OBU_TEMPORAL_DELIMITER, None, &[]);
        tu.extend(obu(OBU_SEQUENCE_HEADER, None, &[0, 1, 2]));
        tu.extend(obu(OBU_TILE_LIST, None, &[9, 9]));
        let frame: Vec<u8> = (0..100).collect();
        tu.extend(obu(OBU_FRAME, Some(0x20), &frame));
        let mut p = Av1Packetizer::new(16);
        let mut out = vec![vec![1; 50]; 20];
        p.packetize(&tu, &mut out).unwrap();
        assert!(out.iter().all(|x| x.len() <= 16 && x.len() > 1));
        assert_eq!(out[0][0], 0x08 | 0x40, "N, Y");
        assert_eq!(
            &out[0][1..6],
            &[4, 0x08, 0, 1, 2],
            "sequence header without size"
        );
        assert_eq!(out[1][0], 0xC0, "Z, Y");
        assert_eq!(out.last().unwrap()[0], 0x80, "Z");
        assert_eq!(p.keyframes(), 1);
        let (back, info) = depack(&out).unwrap();
        let mut want = obu(OBU_TEMPORAL_DELIMITER, None, &[]);
        want.extend(obu(OBU_SEQUENCE_HEADER, None, &[0, 1, 2]));
        want.extend(obu(OBU_FRAME, Some(0x20), &frame));
        assert_eq!(back, want);
        assert!(info.keyframe);
        // Only a temporal delimiter: nothing to send.
        p.packetize(&TEMPORAL_DELIMITER, &mut out).unwrap();
        assert!(out.is_empty());
        // The last OBU may come without a size field.
        p.packetize(&[0x30, 0x40, 7], &mut out).unwrap();
        assert_eq!(out, [vec![0, 3, 0x30, 0x40, 7]]);
        for bad in [&[0x32, 5, 0][..], &[0x34], &[0xB0], &[0x32, 0xFF]] {
            assert!(p.packetize(bad, &mut out).is_err(), "{bad:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn frame_start_hint() {
        assert!(Av1Depacketizer::is_frame_start(&[0x08, 1, 0x30]));
        assert!(Av1Depacketizer::is_frame_start(&[0x00, 1, 0x08]));
        assert!(Av1Depacketizer::is_frame_start(&[0x10, 0x08, 0]));
        assert!(!Av1Depacketizer::is_frame_start(&[0x00, 1, 0x30]));
        assert!(!Av1Depacketizer::is_frame_start(&[0x88, 1, 0x08]));
        assert!(!Av1Depacketizer::is_frame_start(&[]));
    }
}
