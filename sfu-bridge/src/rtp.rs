//! RTP packets (RFC 3550) with RFC 8285 header extensions, parsed without copying or
//! allocating, and written into a caller's buffer.
//!
//! Browsers put one-byte extensions (`0xBEDE`) on their audio (audio level, abs-send-time,
//! mid); GStreamer's `webrtcbin` sends none. Both must parse. Every malformed packet is a
//! typed error; nothing here panics on hostile bytes (fuzz target `fuzz/fuzz_targets/rtp.rs`).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("packet of {0} bytes is shorter than the 12-byte RTP header")]
    TooShort(usize),
    #[error("RTP version {0} (expected 2)")]
    Version(u8),
    #[error("{0} CSRCs do not fit in the packet")]
    Csrc(u8),
    #[error("header extension does not fit in the packet")]
    Extension,
    #[error("padding length {pad} is invalid for a payload of {len} bytes")]
    Padding { pad: u8, len: usize },
    #[error("malformed RFC 8285 extension element at offset {0}")]
    ExtensionElement(usize),
    #[error("extension id {0} is outside 1..=14 (one-byte form)")]
    ExtensionId(u8),
    #[error("extension value of {0} bytes does not fit the one-byte form (1..=16)")]
    ExtensionLen(usize),
}

/// RFC 8285 profile values.
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
const TWO_BYTE_PROFILE: u16 = 0x1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

impl<'a> Extension<'a> {
    /// The RFC 8285 elements, `(id, value)`; `None` for a profile that is not RFC 8285.
    pub fn elements(&self) -> Option<Elements<'a>> {
        let two_byte = self.profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE;
        (self.profile == ONE_BYTE_PROFILE || two_byte).then_some(Elements {
            data: self.data,
            pos: 0,
            two_byte,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Elements<'a> {
    data: &'a [u8],
    pos: usize,
    two_byte: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<(u8, &'a [u8]), RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let &b = self.data.get(self.pos)?;
            if b == 0 {
                self.pos += 1; // padding between elements
                continue;
            }
            let start = self.pos;
            let (id, len, hdr) = if self.two_byte {
                let Some(&l) = self.data.get(self.pos + 1) else {
                    self.pos = self.data.len();
                    return Some(Err(RtpError::ExtensionElement(start)));
                };
                (b, usize::from(l), 2)
            } else {
                let id = b >> 4;
                if id == 15 {
                    // Reserved: stop processing (RFC 8285 §4.2).
                    self.pos = self.data.len();
                    return None;
                }
                (id, usize::from(b & 0x0F) + 1, 1)
            };
            let end = self.pos + hdr + len;
            if end > self.data.len() {
                self.pos = self.data.len();
                return Some(Err(RtpError::ExtensionElement(start)));
            }
            let v = &self.data[self.pos + hdr..end];
            self.pos = end;
            return Some(Ok((id, v)));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    pub extension: Option<Extension<'a>>,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, RtpError> {
        if b.len() < 12 {
            return Err(RtpError::TooShort(b.len()));
        }
        let version = b[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = b[0] & 0x20 != 0;
        let has_ext = b[0] & 0x10 != 0;
        let cc = b[0] & 0x0F;
        let mut pos = 12 + 4 * usize::from(cc);
        if pos > b.len() {
            return Err(RtpError::Csrc(cc));
        }
        let extension = if has_ext {
            if pos + 4 > b.len() {
                return Err(RtpError::Extension);
            }
            let profile = u16::from_be_bytes([b[pos], b[pos + 1]]);
            let words = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
            let end = pos + 4 + 4 * words;
            if end > b.len() {
                return Err(RtpError::Extension);
            }
            let e = Extension {
                profile,
                data: &b[pos + 4..end],
            };
            pos = end;
            Some(e)
        } else {
            None
        };
        let mut end = b.len();
        if padding {
            let pad = b[b.len() - 1];
            if pad == 0 || usize::from(pad) > end - pos {
                return Err(RtpError::Padding {
                    pad,
                    len: end - pos,
                });
            }
            end -= usize::from(pad);
        }
        Ok(Self {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7F,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            csrc_count: cc,
            extension,
            payload: &b[pos..end],
        })
    }

    /// The value of one-byte/two-byte extension element `id`, if present and well formed.
    pub fn extension_value(&self, id: u8) -> Option<&'a [u8]> {
        self.extension?
            .elements()?
            .filter_map(Result::ok)
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
    }
}

/// Header fields for [`write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Appends an RTP packet to `out`: header, one-byte-form extension elements `(id, value)`
/// (ids 1..=14, values 1..=16 bytes), payload. No allocation beyond `out`'s growth.
pub fn write(
    h: &Header,
    extensions: &[(u8, &[u8])],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RtpError> {
    for &(id, v) in extensions {
        if !(1..=14).contains(&id) {
            return Err(RtpError::ExtensionId(id));
        }
        if !(1..=16).contains(&v.len()) {
            return Err(RtpError::ExtensionLen(v.len()));
        }
    }
    let has_ext = !extensions.is_empty();
    out.push(0x80 | if has_ext { 0x10 } else { 0 });
    out.push((h.payload_type & 0x7F) | if h.marker { 0x80 } else { 0 });
    out.extend_from_slice(&h.sequence.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    if has_ext {
        let body: usize = extensions.iter().map(|(_, v)| 1 + v.len()).sum();
        let words = body.div_ceil(4);
        out.extend_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
        out.extend_from_slice(&(words as u16).to_be_bytes());
        for &(id, v) in extensions {
            out.push((id << 4) | (v.len() as u8 - 1));
            out.extend_from_slice(v);
        }
        out.resize(out.len() + words * 4 - body, 0);
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_chromium_style_opus_packet() {
        // V=2, X=1, PT=111, seq 0x1234, ts 960, ssrc, 0xBEDE with audio-level (id 1) and id 4.
        let mut p = vec![
            0x90, 111, 0x12, 0x34, 0, 0, 3, 0xC0, 1, 2, 3, 4, 0xBE, 0xDE, 0, 2,
        ];
        p.extend_from_slice(&[0x10, 0xAA, 0x41, 1, 2, 0, 0, 0]);
        p.extend_from_slice(&[0xFC, 0xFF, 0xFE]);
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(
            (r.payload_type, r.sequence, r.timestamp, r.ssrc),
            (111, 0x1234, 960, 0x01020304)
        );
        assert_eq!(r.payload, &[0xFC, 0xFF, 0xFE]);
        assert_eq!(r.extension_value(1), Some(&[0xAA][..]));
        assert_eq!(r.extension_value(4), Some(&[1, 2][..]));
        assert_eq!(r.extension_value(2), None);
    }

    #[test]
    fn write_then_parse_roundtrips() {
        let h = Header {
            marker: true,
            payload_type: 120,
            sequence: 65535,
            timestamp: u32::MAX,
            ssrc: 7,
        };
        let mut out = Vec::new();
        write(&h, &[(3, b"aic-v1"), (5, &[9])], &[1, 2, 3], &mut out).unwrap();
        let r = RtpPacket::parse(&out).unwrap();
        assert!(r.marker);
        assert_eq!(
            (r.payload_type, r.sequence, r.timestamp, r.ssrc),
            (120, 65535, u32::MAX, 7)
        );
        assert_eq!(r.extension_value(3), Some(&b"aic-v1"[..]));
        assert_eq!(r.extension_value(5), Some(&[9][..]));
        assert_eq!(r.payload, &[1, 2, 3]);
        let mut plain = Vec::new();
        write(&h, &[], &[4], &mut plain).unwrap();
        assert_eq!(plain.len(), 13);
        assert!(write(&h, &[(15, b"x")], &[], &mut plain).is_err());
        assert!(write(&h, &[(1, &[0; 17])], &[], &mut plain).is_err());
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version(1)));
        assert_eq!(
            RtpPacket::parse(&[0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Csrc(15))
        );
        assert_eq!(
            RtpPacket::parse(&[0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 9]),
            Err(RtpError::Extension)
        );
        let mut pad = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        pad.push(9);
        assert!(matches!(
            RtpPacket::parse(&pad),
            Err(RtpError::Padding { .. })
        ));
        // An element that runs past the extension block.
        let bad = [
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 1, 0x1F, 0, 0, 0,
        ];
        let r = RtpPacket::parse(&bad).unwrap();
        assert!(r.extension.unwrap().elements().unwrap().any(|e| e.is_err()));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = RtpPacket::parse(&b) {
                prop_assert!(p.payload.len() <= b.len());
                if let Some(e) = p.extension.and_then(|e| e.elements()) {
                    for el in e.take(300) { let _ = el; }
                }
            }
        }
    }
}
