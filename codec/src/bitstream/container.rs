//! The `.aic` file container (spec: `docs/bitstream.md`, "Container").
//!
//! ```text
//!  "AICF"  u8 version=1  u16le header_len  header[header_len]  u32le crc32(everything before)
//!  header: u8 n + codec name[n] · u8 m + model id[m] · u32le sample_rate · u16le frame_samples
//!          · u8 point kind (0 bitrate, 1 level) · u32le point value · u32le delay_samples
//!          · u64le total_samples
//!  then packets: u16le len + bytes[len]; len = 0 marks a lost/absent frame (decoder conceals)
//! ```
//! The header makes a file self-describing: `aic decode` needs nothing but the file. A reader
//! delivers every complete packet before reporting a truncated or corrupt tail.

use crate::codec::{CodecInfo, OperatingPoint};

pub const MAGIC: &[u8; 4] = b"AICF";
pub const VERSION: u8 = 1;
/// Bounds for untrusted files: nothing larger is ever allocated or believed.
pub const MAX_HEADER_BYTES: usize = 512;
pub const MAX_PACKET_BYTES: usize = 4000;
pub const MAX_NAME_BYTES: usize = 64;
const MAX_TOTAL_SAMPLES: u64 = 1 << 40;
const MAX_DELAY_SAMPLES: u32 = 48_000;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("not an .aic file (bad magic)")]
    Magic,
    #[error("unsupported .aic container version {0} (this build reads version 1)")]
    Version(u8),
    #[error("file ends inside the header")]
    TruncatedHeader,
    #[error("header length {0} exceeds {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong(usize),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("bad header field {field}: {why}")]
    Field { field: &'static str, why: String },
    #[error("packet {index}: length {len} exceeds {MAX_PACKET_BYTES} bytes")]
    PacketTooLong { index: u64, len: usize },
    #[error("file ends inside packet {index}")]
    TruncatedPacket { index: u64 },
}

/// The container header: everything a decoder needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub info: CodecInfo,
    /// Length of the original input, so decoding can trim the last frame's padding.
    pub total_samples: u64,
}

fn field(field: &'static str, why: impl Into<String>) -> ContainerError {
    ContainerError::Field {
        field,
        why: why.into(),
    }
}

fn check_name(field_name: &'static str, s: &str, allow_empty: bool) -> Result<(), ContainerError> {
    if s.len() > MAX_NAME_BYTES || (!allow_empty && s.is_empty()) {
        return Err(field(
            field_name,
            format!(
                "length {} not in {}..={MAX_NAME_BYTES}",
                s.len(),
                u8::from(!allow_empty)
            ),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
    {
        return Err(field(
            field_name,
            "only ASCII letters, digits and -_.+ are allowed",
        ));
    }
    Ok(())
}

impl Header {
    fn validate(&self) -> Result<(), ContainerError> {
        let i = &self.info;
        check_name("codec", &i.codec, false)?;
        check_name("model_id", &i.model_id, true)?;
        if !(8000..=48_000).contains(&i.sample_rate) {
            return Err(field(
                "sample_rate",
                format!("{} Hz not in 8000..=48000", i.sample_rate),
            ));
        }
        if i.frame_samples == 0 || i.frame_samples as u32 * 50 != i.sample_rate {
            return Err(field(
                "frame_samples",
                format!("{} is not 20 ms at {} Hz", i.frame_samples, i.sample_rate),
            ));
        }
        if i.delay_samples as u32 > MAX_DELAY_SAMPLES {
            return Err(field(
                "delay_samples",
                format!("{} > {MAX_DELAY_SAMPLES}", i.delay_samples),
            ));
        }
        if self.total_samples > MAX_TOTAL_SAMPLES {
            return Err(field(
                "total_samples",
                format!("{} > 2^40", self.total_samples),
            ));
        }
        Ok(())
    }

    /// Appends the encoded header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), ContainerError> {
        self.validate()?;
        let i = &self.info;
        let mut h = Vec::with_capacity(64);
        h.push(i.codec.len() as u8);
        h.extend_from_slice(i.codec.as_bytes());
        h.push(i.model_id.len() as u8);
        h.extend_from_slice(i.model_id.as_bytes());
        h.extend_from_slice(&i.sample_rate.to_le_bytes());
        h.extend_from_slice(&(i.frame_samples as u16).to_le_bytes());
        let (kind, value) = i.point.to_raw();
        h.push(kind);
        h.extend_from_slice(&value.to_le_bytes());
        h.extend_from_slice(&(i.delay_samples as u32).to_le_bytes());
        h.extend_from_slice(&self.total_samples.to_le_bytes());
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        let crc = CRC32.checksum(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Parses the header; returns it and the number of bytes it took.
    pub fn read(bytes: &[u8]) -> Result<(Self, usize), ContainerError> {
        if bytes.len() < 4 {
            return Err(if MAGIC.starts_with(bytes) {
                ContainerError::TruncatedHeader
            } else {
                ContainerError::Magic
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(ContainerError::Magic);
        }
        let mut r = Reader { b: bytes, pos: 4 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(ContainerError::Version(version));
        }
        let hlen = usize::from(r.u16()?);
        if hlen > MAX_HEADER_BYTES {
            return Err(ContainerError::HeaderTooLong(hlen));
        }
        let body_end = 7 + hlen;
        if bytes.len() < body_end + 4 {
            return Err(ContainerError::TruncatedHeader);
        }
        let stored = u32::from_le_bytes(bytes[body_end..body_end + 4].try_into().expect("4 bytes"));
        if CRC32.checksum(&bytes[..body_end]) != stored {
            return Err(ContainerError::HeaderChecksum);
        }
        let mut r = Reader {
            b: &bytes[..body_end],
            pos: 7,
        };
        let codec = r.string("codec")?;
        let model_id = r.string("model_id")?;
        let sample_rate = r.u32()?;
        let frame_samples = usize::from(r.u16()?);
        let kind = r.u8()?;
        let value = r.u32()?;
        let point = OperatingPoint::from_raw(kind, value)
            .ok_or_else(|| field("point", format!("kind {kind} value {value}")))?;
        let delay_samples = r.u32()? as usize;
        let total_samples = r.u64()?;
        if r.pos != body_end {
            return Err(field(
                "header_len",
                format!("{} unparsed bytes", body_end - r.pos),
            ));
        }
        let h = Header {
            info: CodecInfo {
                codec,
                model_id,
                sample_rate,
                frame_samples,
                delay_samples,
                point,
            },
            total_samples,
        };
        h.validate()?;
        Ok((h, body_end + 4))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ContainerError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(ContainerError::TruncatedHeader)?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ContainerError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ContainerError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, ContainerError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ContainerError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, name: &'static str) -> Result<String, ContainerError> {
        let n = usize::from(self.u8()?);
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| field(name, "not UTF-8"))?
            .to_owned();
        check_name(name, &s, name != "codec")?;
        Ok(s)
    }
}

/// Appends one packet (`None` = lost frame) to `out`.
pub fn write_packet(packet: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), ContainerError> {
    let p = packet.unwrap_or(&[]);
    if p.len() > MAX_PACKET_BYTES {
        return Err(ContainerError::PacketTooLong {
            index: 0,
            len: p.len(),
        });
    }
    if packet.is_some() && p.is_empty() {
        return Err(field(
            "packet",
            "an empty packet cannot be stored (length 0 means lost)",
        ));
    }
    out.extend_from_slice(&(p.len() as u16).to_le_bytes());
    out.extend_from_slice(p);
    Ok(())
}

/// Iterates over the packets after the header. Yields `Ok(None)` for a lost frame and stops
/// after the first error (everything before it has been delivered).
#[derive(Debug)]
pub struct Packets<'a> {
    b: &'a [u8],
    pos: usize,
    index: u64,
    failed: bool,
}

impl<'a> Packets<'a> {
    pub fn new(after_header: &'a [u8]) -> Self {
        Self {
            b: after_header,
            pos: 0,
            index: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Option<&'a [u8]>, ContainerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.b.len() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let rest = &self.b[self.pos..];
        if rest.len() < 2 {
            self.failed = true;
            return Some(Err(ContainerError::TruncatedPacket { index }));
        }
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        if len > MAX_PACKET_BYTES {
            self.failed = true;
            return Some(Err(ContainerError::PacketTooLong { index, len }));
        }
        if rest.len() < 2 + len {
            self.failed = true;
            return Some(Err(ContainerError::TruncatedPacket { index }));
        }
        self.pos += 2 + len;
        Some(Ok((len > 0).then(|| &rest[2..2 + len])))
    }
}

/// Parses a whole file: header plus the packet iterator.
pub fn read(bytes: &[u8]) -> Result<(Header, Packets<'_>), ContainerError> {
    let (h, n) = Header::read(bytes)?;
    Ok((h, Packets::new(&bytes[n..])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            info: CodecInfo {
                codec: "aic".into(),
                model_id: "aic-speech-v1".into(),
                sample_rate: 16_000,
                frame_samples: 320,
                delay_samples: 240,
                point: OperatingPoint::Level(4),
            },
            total_samples: 12_345,
        }
    }

    fn file() -> Vec<u8> {
        let mut f = Vec::new();
        header().write(&mut f).unwrap();
        write_packet(Some(&[1, 2, 3]), &mut f).unwrap();
        write_packet(None, &mut f).unwrap();
        write_packet(Some(&[9; 40]), &mut f).unwrap();
        f
    }

    #[test]
    fn roundtrip() {
        let f = file();
        let (h, packets) = read(&f).unwrap();
        assert_eq!(h, header());
        let p: Vec<_> = packets.collect::<Result<_, _>>().unwrap();
        assert_eq!(p, vec![Some(&[1u8, 2, 3][..]), None, Some(&[9u8; 40][..])]);
    }

    #[test]
    fn truncation_delivers_complete_packets_then_errors() {
        let f = file();
        let cut = &f[..f.len() - 5];
        let (_, packets) = read(cut).unwrap();
        let p: Vec<_> = packets.collect();
        assert_eq!(p.len(), 3);
        assert!(p[0].is_ok() && p[1].is_ok());
        assert_eq!(p[2], Err(ContainerError::TruncatedPacket { index: 2 }));
    }

    #[test]
    fn header_damage_is_detected() {
        let mut f = file();
        f[10] ^= 0x20;
        assert!(read(&f).is_err());
        assert_eq!(read(b"RIFF....").unwrap_err(), ContainerError::Magic);
        assert_eq!(read(b"AIC").unwrap_err(), ContainerError::TruncatedHeader);
        let mut v = file();
        v[4] = 2;
        assert_eq!(read(&v).unwrap_err(), ContainerError::Version(2));
    }

    #[test]
    fn invalid_headers_are_refused_on_write() {
        let mut h = header();
        h.info.sample_rate = 44_100;
        assert!(h.write(&mut Vec::new()).is_err());
        let mut h = header();
        h.info.codec = "bad name".into();
        assert!(h.write(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok((_, packets)) = read(&bytes) {
                for p in packets { let _ = p; }
            }
        }

        #[test]
        fn mutated_files_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut f = file();
            let pos = pos % f.len();
            f[pos] = val;
            if let Ok((_, packets)) = read(&f) {
                for p in packets { let _ = p; }
            }
        }
    }
}
