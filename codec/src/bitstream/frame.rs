//! One AIC frame, bitstream version 1 (spec: `docs/bitstream.md`, "Frame").
//!
//! ```text
//!  byte 0: VV LLLL CC   V = version (1), L = level (codebooks present, 1..=15), C = counter mod 4
//!  byte 1: CRC-8/SMBUS over (model tag[4] ‖ byte 0 ‖ payload)
//!  byte 2..: payload — the first L codebook indices, range coded with the model's tables
//! ```
//! Two header bytes is a deliberate budget: AIC's lowest level is ~10 bits of payload per 20 ms,
//! so every header byte costs 0.4 kbps. The model id is not sent per frame; it keys the CRC, so
//! a frame decoded against a different model fails its integrity check instead of decoding to
//! noise. The payload length is the transport's: the `.aic` container length-prefixes frames,
//! RTP carries one frame per packet, gRPC one per message.

use super::BitstreamError;
use super::range::{FreqTable, RangeDecoder, RangeEncoder};

pub const VERSION: u8 = 1;
pub const MAX_LEVEL: u8 = 15;
/// Header + the worst case of 15 indices at 15 bits each, rounded up generously.
pub const MAX_FRAME_BYTES: usize = 64;

const CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_SMBUS);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub level: u8,
    pub counter: u8,
}

impl FrameHeader {
    /// Reads the header byte without any model: what a router needs (level, counter).
    pub fn peek(bytes: &[u8]) -> Result<Self, BitstreamError> {
        let b0 = *bytes.first().ok_or(BitstreamError::Empty)?;
        if bytes.len() < 2 {
            return Err(BitstreamError::Empty);
        }
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(BitstreamError::TooLong {
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let version = b0 >> 6;
        if version != VERSION {
            return Err(BitstreamError::Version(version));
        }
        let level = (b0 >> 2) & 0x0F;
        if level == 0 {
            return Err(BitstreamError::Level {
                level,
                max: MAX_LEVEL,
            });
        }
        Ok(Self {
            version,
            level,
            counter: b0 & 0x03,
        })
    }

    fn byte0(level: u8, counter: u8) -> u8 {
        (VERSION << 6) | ((level & 0x0F) << 2) | (counter & 0x03)
    }
}

/// What the frame coder needs from a model: one frequency table per codebook and a tag that
/// identifies the model (see [`crate::manifest::Manifest::model_tag`]).
#[derive(Debug, Clone)]
pub struct EntropyModel {
    tables: Vec<FreqTable>,
    tag: [u8; 4],
}

impl EntropyModel {
    pub fn new(tables: Vec<FreqTable>, tag: [u8; 4]) -> Result<Self, BitstreamError> {
        if tables.is_empty() || tables.len() > usize::from(MAX_LEVEL) {
            return Err(BitstreamError::BadFreqTable(format!(
                "{} codebooks (expected 1..={MAX_LEVEL})",
                tables.len()
            )));
        }
        Ok(Self { tables, tag })
    }

    pub fn num_codebooks(&self) -> u8 {
        self.tables.len() as u8
    }

    pub fn tag(&self) -> [u8; 4] {
        self.tag
    }

    fn crc(&self, b0: u8, payload: &[u8]) -> u8 {
        let mut d = CRC8.digest();
        d.update(&self.tag);
        d.update(&[b0]);
        d.update(payload);
        d.finalize()
    }

    /// Writes one frame carrying `indices` (its length is the level) into `out` (cleared).
    pub fn write_frame(
        &self,
        counter: u8,
        indices: &[u16],
        out: &mut Vec<u8>,
    ) -> Result<(), BitstreamError> {
        let level = indices.len();
        if level == 0 || level > self.tables.len() {
            return Err(BitstreamError::Level {
                level: level.min(255) as u8,
                max: self.num_codebooks(),
            });
        }
        out.clear();
        let b0 = FrameHeader::byte0(level as u8, counter);
        out.extend_from_slice(&[b0, 0]);
        let mut payload = std::mem::take(out);
        {
            // Code into the same buffer after the header; the encoder only appends.
            let mut enc = RangeEncoder::new(&mut payload);
            for (table, &ix) in self.tables.iter().zip(indices) {
                enc.encode(table, usize::from(ix))?;
            }
            enc.finish();
        }
        // `finish` strips trailing zeros; it must not eat into the header.
        payload.resize(payload.len().max(2), 0);
        payload[1] = self.crc(b0, &payload[2..]);
        *out = payload;
        Ok(())
    }

    /// Parses and checks one frame, writing its indices into `indices` (cleared).
    pub fn read_frame(
        &self,
        bytes: &[u8],
        indices: &mut Vec<u16>,
    ) -> Result<FrameHeader, BitstreamError> {
        let h = FrameHeader::peek(bytes)?;
        if h.level > self.num_codebooks() {
            return Err(BitstreamError::Level {
                level: h.level,
                max: self.num_codebooks(),
            });
        }
        let expected = self.crc(bytes[0], &bytes[2..]);
        if bytes[1] != expected {
            return Err(BitstreamError::Integrity {
                got: bytes[1],
                expected,
            });
        }
        indices.clear();
        let mut dec = RangeDecoder::new(&bytes[2..]);
        for table in &self.tables[..usize::from(h.level)] {
            indices.push(dec.decode(table)? as u16);
        }
        Ok(h)
    }

    /// Re-codes a frame at a lower level (what a router does to fit a receiver's bandwidth):
    /// no model inference, just entropy decode and re-encode of the first `level` indices.
    pub fn truncate_frame(
        &self,
        bytes: &[u8],
        level: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), BitstreamError> {
        let mut ix = Vec::with_capacity(usize::from(MAX_LEVEL));
        let h = self.read_frame(bytes, &mut ix)?;
        let keep = usize::from(level.min(h.level));
        self.write_frame(h.counter, &ix[..keep.max(1)], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model(n: usize) -> EntropyModel {
        EntropyModel::new(
            (0..n).map(|_| FreqTable::uniform(1024).unwrap()).collect(),
            *b"test",
        )
        .unwrap()
    }

    #[test]
    fn level_one_frame_is_four_bytes_or_less() {
        let m = model(12);
        let mut out = Vec::new();
        for ix in [0u16, 5, 1023] {
            m.write_frame(3, &[ix], &mut out).unwrap();
            assert!(out.len() <= 4, "{} bytes", out.len());
            let mut back = Vec::new();
            let h = m.read_frame(&out, &mut back).unwrap();
            assert_eq!((h.level, h.counter, back.as_slice()), (1, 3, &[ix][..]));
        }
    }

    #[test]
    fn other_model_fails_integrity() {
        let m = model(4);
        let other = EntropyModel::new(
            (0..4).map(|_| FreqTable::uniform(1024).unwrap()).collect(),
            *b"othr",
        )
        .unwrap();
        let mut out = Vec::new();
        m.write_frame(0, &[1, 2, 3, 4], &mut out).unwrap();
        assert!(matches!(
            other.read_frame(&out, &mut Vec::new()),
            Err(BitstreamError::Integrity { .. })
        ));
    }

    #[test]
    fn truncation_keeps_the_prefix() {
        let m = model(8);
        let ix = [10u16, 200, 300, 400, 500, 600, 700, 800];
        let (mut full, mut cut, mut back) = (Vec::new(), Vec::new(), Vec::new());
        m.write_frame(1, &ix, &mut full).unwrap();
        m.truncate_frame(&full, 3, &mut cut).unwrap();
        assert!(cut.len() < full.len());
        let h = m.read_frame(&cut, &mut back).unwrap();
        assert_eq!(h.level, 3);
        assert_eq!(back, &ix[..3]);
    }

    #[test]
    fn rejects_bad_headers() {
        let m = model(4);
        let mut ix = Vec::new();
        assert_eq!(m.read_frame(&[], &mut ix), Err(BitstreamError::Empty));
        assert_eq!(m.read_frame(&[0x44], &mut ix), Err(BitstreamError::Empty));
        assert!(matches!(
            m.read_frame(&[0x00, 0], &mut ix),
            Err(BitstreamError::Version(0))
        ));
        assert!(matches!(
            m.read_frame(&[0x40, 0], &mut ix),
            Err(BitstreamError::Level { .. })
        ));
        // level 5 > 4 codebooks
        assert!(matches!(
            m.read_frame(&[0x54, 0], &mut ix),
            Err(BitstreamError::Level { level: 5, .. })
        ));
        assert!(matches!(
            m.read_frame(&[0x44; 65], &mut ix),
            Err(BitstreamError::TooLong { .. })
        ));
        assert!(m.write_frame(0, &[], &mut Vec::new()).is_err());
        assert!(m.write_frame(0, &[1, 2, 3, 4, 5], &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(ix in proptest::collection::vec(0u16..1024, 1..=12), counter in 0u8..4) {
            let m = model(12);
            let (mut out, mut back) = (Vec::new(), Vec::new());
            m.write_frame(counter, &ix, &mut out).unwrap();
            let h = m.read_frame(&out, &mut back).unwrap();
            prop_assert_eq!(h.counter, counter);
            prop_assert_eq!(back, ix);
        }

        #[test]
        fn any_single_bit_flip_is_caught_or_harmless(ix in proptest::collection::vec(0u16..1024, 1..=12), bit in 0usize..512) {
            let m = model(12);
            let mut out = Vec::new();
            m.write_frame(0, &ix, &mut out).unwrap();
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            // CRC-8 detects every single-bit error.
            prop_assert!(m.read_frame(&out, &mut Vec::new()).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let m = model(12);
            let _ = m.read_frame(&bytes, &mut Vec::new());
        }
    }
}
