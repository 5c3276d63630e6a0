//! The AIC RTP payload format (`docs/rtp-payload.md`): one AIC frame per packet, 48 kHz clock,
//! and the `urn:auralink:aic:frame-meta:v1` header extension.

use crate::rtp::{self, Header, RtpError, RtpPacket};

pub const FRAME_META_URI: &str = "urn:auralink:aic:frame-meta:v1";
/// RTP timestamp ticks per 20 ms frame at the 48 kHz clock.
pub const TICKS_PER_FRAME: u32 = 960;

/// What the header extension says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The payload is an Opus packet sent in place of the AIC frame.
    pub fallback: bool,
    /// A router lowered the frame's level.
    pub truncated: bool,
    pub level: u8,
    pub model_tag: [u8; 4],
}

impl FrameMeta {
    pub fn to_bytes(self) -> [u8; 6] {
        let flags = u8::from(self.fallback) | (u8::from(self.truncated) << 1);
        let t = self.model_tag;
        [flags, self.level, t[0], t[1], t[2], t[3]]
    }

    pub fn parse(v: &[u8]) -> Option<Self> {
        let [flags, level, a, b, c, d] = <[u8; 6]>::try_from(v).ok()?;
        (flags & !0b11 == 0 && level <= 15).then_some(Self {
            fallback: flags & 1 != 0,
            truncated: flags & 2 != 0,
            level,
            model_tag: [a, b, c, d],
        })
    }
}

/// Appends one RTP packet carrying `payload` (an AIC frame, or an Opus fallback packet as
/// `meta.fallback` says) to `out`. `ext_id` is the negotiated extension id (1..=14).
pub fn packetize(
    h: &Header,
    ext_id: u8,
    meta: FrameMeta,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RtpError> {
    let m = meta.to_bytes();
    rtp::write(h, &[(ext_id, &m)], payload, out)
}

/// The payload and, when present and well formed, the frame metadata.
pub fn depacketize(
    packet: &[u8],
    ext_id: u8,
) -> Result<(RtpPacket<'_>, Option<FrameMeta>), RtpError> {
    let p = RtpPacket::parse(packet)?;
    let meta = p.extension_value(ext_id).and_then(FrameMeta::parse);
    Ok((p, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_metadata() {
        let h = Header {
            marker: true,
            payload_type: 120,
            sequence: 7,
            timestamp: 960 * 3,
            ssrc: 0xA1C,
        };
        let meta = FrameMeta {
            fallback: false,
            truncated: true,
            level: 4,
            model_tag: *b"tag!",
        };
        let frame = [0x50u8, 0x12, 0xAB, 0xCD];
        let mut out = Vec::new();
        packetize(&h, 5, meta, &frame, &mut out).unwrap();
        let (p, m) = depacketize(&out, 5).unwrap();
        assert_eq!(p.payload, &frame);
        assert_eq!(m, Some(meta));
        assert_eq!((p.timestamp, p.payload_type, p.marker), (2880, 120, true));
        // The extension costs 12 bytes on the wire (4 header + 1 + 6, padded to 8).
        assert_eq!(out.len(), 12 + 4 + 8 + frame.len());
        // A different negotiated id: no metadata, the payload still parses.
        assert_eq!(depacketize(&out, 6).unwrap().1, None);
    }

    #[test]
    fn malformed_metadata_is_ignored_not_fatal() {
        assert_eq!(FrameMeta::parse(&[0xFF, 1, 0, 0, 0, 0]), None);
        assert_eq!(FrameMeta::parse(&[0, 16, 0, 0, 0, 0]), None);
        assert_eq!(FrameMeta::parse(&[0, 1, 0]), None);
    }
}
