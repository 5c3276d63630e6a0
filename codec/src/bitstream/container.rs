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
//!
//! Two readers share the same rules: [`read`]/[`Packets`] over a byte slice, and
//! [`PacketReader`] over any [`Read`] (header first, then one packet at a time through one
//! reused buffer of at most [`MAX_PACKET_BYTES`]), which is what `aic decode` uses so a file is
//! never held in memory whole. [`decode`] is the one packet → [`Decoder`] loop (`aic decode`,
//! `aic bench` and the `decode` fuzz target all run it); it is bounded by the header, not by
//! the file: see its documentation for the rules.

use std::io::Read;

pub use super::archive::ArchiveWriter;
use super::archive::{PageCursor, PageErr, parse_page};
use crate::codec::{CodecInfo, Decoder, OperatingPoint};
use crate::error::CodecError;

pub const MAGIC: &[u8; 4] = b"AICF";
pub const VERSION: u8 = 1;
/// The paged archive framing (see [`super::archive`]): same header, then CRC-checked pages.
pub const VERSION_2: u8 = 2;
/// Bounds for untrusted files: nothing larger is ever allocated or believed.
pub const MAX_HEADER_BYTES: usize = 512;
pub const MAX_PACKET_BYTES: usize = 4000;
pub const MAX_NAME_BYTES: usize = 64;
/// The longest clip a header may announce: 24 h (`total_samples ≤ 86 400 · sample_rate`).
/// A decoder trusts `total_samples` to bound its work and its output (see [`decode`]), so the
/// bound on it is what bounds a hostile header: 24 h is far past any speech file this codec is
/// for (a day-long recording still fits), and at most 86 400 · 48 000 ≈ 4.1·10⁹ samples.
pub const MAX_DURATION_SECS: u64 = 24 * 60 * 60;
const MAX_DELAY_SAMPLES: u32 = 48_000;
/// The most consecutive lost packets (`len = 0`) a file may hold: 50 = 1 s of concealment.
///
/// A lost packet is 2 bytes on disk but becomes a whole concealed 20 ms frame (a model call for
/// AIC), so an unbounded run would let a small file cost ~1000× its size in output and compute.
/// One second is past the point where concealment still carries audio: the AIC decoder fades
/// its latent by 0.8 per lost frame (0.8⁵⁰ ≈ 10⁻⁵, −97 dB) and libopus' PLC fades to silence
/// well within that, so frames beyond it are silence a writer should encode as silence (which
/// codes to a few bytes per frame). Nothing this project writes stores lost packets at all
/// (`aic encode` stores every frame); the run exists for recorders that log network loss.
pub const MAX_LOST_RUN: u32 = 50;

pub(crate) const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("not an .aic file (bad magic)")]
    Magic,
    #[error("unsupported .aic container version {0} (this build reads versions 1 and 2)")]
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
    #[error(
        "packet {index}: more than {MAX_LOST_RUN} consecutive lost packets (over 1 s of concealment); the file is damaged or hostile"
    )]
    TooManyLost { index: u64 },
    #[error(
        "{excess} packet(s) past the {expected} that the header's total_samples needs (not decoded); the file holds more than its header announces"
    )]
    ExcessPackets { expected: u64, excess: u64 },
    /// Version 2: a page that is not well formed (sync, frame count, order, bounds).
    #[error("bad page at frame {index}: {why}")]
    Page { index: u64, why: String },
    /// Version 2: a page whose CRC-32 does not match (damaged bytes).
    #[error("page at frame {index}: checksum mismatch (damaged)")]
    PageChecksum { index: u64 },
    /// Version 2: the file ends inside a page (a torn last page: the writer was stopped while
    /// writing it). Every complete page before it has been delivered.
    #[error("file ends inside the page at frame {index} (torn last page)")]
    TruncatedPage { index: u64 },
    /// The underlying reader failed (only from [`PacketReader`]).
    #[error("read error: {0}")]
    Io(String),
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
        // sample_rate is checked above, so this cannot overflow.
        let max_total = MAX_DURATION_SECS * u64::from(i.sample_rate);
        if self.total_samples > max_total {
            return Err(field(
                "total_samples",
                format!(
                    "{} > {max_total} (24 h at {} Hz)",
                    self.total_samples, i.sample_rate
                ),
            ));
        }
        Ok(())
    }

    /// How many packets a file with this header holds: enough to cover `total_samples` plus the
    /// codec delay the decoder drops (at least one). The encoder writes exactly this many; a
    /// decoder never decodes more (see [`decode`]). At most
    /// `(24 h · 48 kHz + 48 000) / 160` ≈ 2.6·10⁷.
    pub fn packets_needed(&self) -> u64 {
        let frame = (self.info.frame_samples as u64).max(1);
        (self.total_samples + self.info.delay_samples as u64)
            .div_ceil(frame)
            .max(1)
    }

    /// Appends the encoded header to `out` (container version 1).
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), ContainerError> {
        self.write_version(VERSION, out)
    }

    /// Appends the encoded header for container `version` (1 or 2) to `out`.
    pub fn write_version(&self, version: u8, out: &mut Vec<u8>) -> Result<(), ContainerError> {
        if !(VERSION..=VERSION_2).contains(&version) {
            return Err(ContainerError::Version(version));
        }
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
        out.push(version);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(&h);
        let crc = CRC32.checksum(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Parses the header (either container version); returns it and the number of bytes it took.
    pub fn read(bytes: &[u8]) -> Result<(Self, usize), ContainerError> {
        Self::read_versioned(bytes).map(|(h, _, n)| (h, n))
    }

    /// [`Header::read`], also returning the container version (1 or 2).
    pub fn read_versioned(bytes: &[u8]) -> Result<(Self, u8, usize), ContainerError> {
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
        if !(VERSION..=VERSION_2).contains(&version) {
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
        Ok((h, version, body_end + 4))
    }

    /// Reads the header from a stream, consuming exactly its bytes (at most
    /// `7 + MAX_HEADER_BYTES + 4`) and leaving the reader at the first packet. Verdicts are
    /// those of [`Header::read`] on the same bytes.
    pub fn read_from<R: Read>(r: &mut R) -> Result<Self, ContainerError> {
        Self::read_versioned_from(r).map(|(h, _)| h)
    }

    /// [`Header::read_from`], also returning the container version.
    pub fn read_versioned_from<R: Read>(r: &mut R) -> Result<(Self, u8), ContainerError> {
        let mut buf = [0u8; 7 + MAX_HEADER_BYTES + 4];
        let n = read_up_to(r, &mut buf[..7])?;
        if n == 7 && &buf[..4] == MAGIC && (VERSION..=VERSION_2).contains(&buf[4]) {
            let hlen = usize::from(u16::from_le_bytes([buf[5], buf[6]]));
            if hlen <= MAX_HEADER_BYTES {
                let got = read_up_to(r, &mut buf[7..7 + hlen + 4])?;
                return Header::read_versioned(&buf[..7 + got]).map(|(h, v, _)| (h, v));
            }
        }
        // Bad magic, version or length, or a short stream: `read` gives the verdict.
        // (A header needs more than 7 bytes, so `Ok` cannot happen here.)
        Header::read(&buf[..n]).and(Err(ContainerError::TruncatedHeader))
    }
}

/// Fills `buf` from `r` as far as the stream goes; returns how many bytes were read (fewer
/// than `buf.len()` only at the end of the stream).
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ContainerError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ContainerError::Io(e.to_string())),
        }
    }
    Ok(n)
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

/// Counts consecutive lost packets; the reader's bound on them ([`MAX_LOST_RUN`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LostRun(u32);

impl LostRun {
    pub(crate) fn check(&mut self, index: u64, lost: bool) -> Result<(), ContainerError> {
        if !lost {
            self.0 = 0;
            return Ok(());
        }
        self.0 += 1;
        if self.0 > MAX_LOST_RUN {
            return Err(ContainerError::TooManyLost { index });
        }
        Ok(())
    }
}

/// Iterates over the packets after the header. Yields `Ok(None)` for a lost frame and stops
/// after the first error (everything before it has been delivered). More than
/// [`MAX_LOST_RUN`] lost packets in a row is an error ([`ContainerError::TooManyLost`]).
///
/// Version 2 files (pages, [`super::archive`]) yield the same items: a page is verified whole
/// before its first frame is yielded, a gap in the frame indices yields lost frames, and a torn,
/// damaged or malformed page is an error after every frame of the pages before it.
#[derive(Debug)]
pub struct Packets<'a> {
    b: &'a [u8],
    pos: usize,
    index: u64,
    lost: LostRun,
    failed: bool,
    /// Version 2: the page being delivered (offsets relative to `page_at`).
    pages: Option<PageCursor>,
    page_at: usize,
}

impl<'a> Packets<'a> {
    /// The packets of a version-1 file (`after_header`: the bytes after its header).
    pub fn new(after_header: &'a [u8]) -> Self {
        Self {
            b: after_header,
            pos: 0,
            index: 0,
            lost: LostRun::default(),
            failed: false,
            pages: None,
            page_at: 0,
        }
    }

    /// The packets of a file of container `version` (1 or 2).
    pub fn with_version(after_header: &'a [u8], version: u8) -> Self {
        let mut p = Self::new(after_header);
        if version == VERSION_2 {
            p.pages = Some(PageCursor::default());
        }
        p
    }

    fn next_paged(&mut self) -> Option<Result<Option<&'a [u8]>, ContainerError>> {
        loop {
            let cur = self.pages.as_mut()?;
            if let Some((at, len)) = cur.take() {
                let index = self.index;
                self.index += 1;
                if let Err(e) = self.lost.check(index, len == 0) {
                    self.failed = true;
                    return Some(Err(e));
                }
                let b: &'a [u8] = self.b;
                let at = self.page_at + at;
                return Some(Ok((len > 0).then(|| &b[at..at + len])));
            }
            if self.pos == self.b.len() {
                return None;
            }
            match parse_page(&self.b[self.pos..], self.index) {
                Ok(page) => {
                    self.page_at = self.pos;
                    self.pos += page.len;
                    cur.load(page, self.index);
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(match e {
                        PageErr::Need(_) => ContainerError::TruncatedPage { index: self.index },
                        PageErr::Bad(e) => e,
                    }));
                }
            }
        }
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Option<&'a [u8]>, ContainerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.pages.is_some() {
            return self.next_paged();
        }
        if self.pos == self.b.len() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let rest = &self.b[self.pos..];
        let r = (|| {
            if rest.len() < 2 {
                return Err(ContainerError::TruncatedPacket { index });
            }
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            if len > MAX_PACKET_BYTES {
                return Err(ContainerError::PacketTooLong { index, len });
            }
            self.lost.check(index, len == 0)?;
            if rest.len() < 2 + len {
                return Err(ContainerError::TruncatedPacket { index });
            }
            Ok(len)
        })();
        match r {
            Ok(len) => {
                self.pos += 2 + len;
                Some(Ok((len > 0).then(|| &rest[2..2 + len])))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Parses a whole file (either container version): header plus the packet iterator.
pub fn read(bytes: &[u8]) -> Result<(Header, Packets<'_>), ContainerError> {
    let (h, version, n) = Header::read_versioned(bytes)?;
    Ok((h, Packets::with_version(&bytes[n..], version)))
}

/// Reads a `.aic` file from a stream: the header on [`PacketReader::new`], then one packet per
/// [`PacketReader::next_packet`], into one reused buffer (never more than
/// [`MAX_PACKET_BYTES`]). Same rules and errors as [`Packets`], plus [`ContainerError::Io`].
/// Give it a buffered reader (`BufReader<File>`): it reads 2 bytes, then one packet, at a time.
///
/// Version 2 files are read one page at a time into the same buffer (at most
/// [`MAX_PAGE_BYTES`](super::archive::MAX_PAGE_BYTES) of frames plus a bounded page header), and
/// a page's frames are delivered only once its CRC has been checked.
#[derive(Debug)]
pub struct PacketReader<R> {
    r: R,
    header: Header,
    version: u8,
    buf: Vec<u8>,
    index: u64,
    lost: LostRun,
    done: bool,
    pages: PageCursor,
}

impl<R: Read> PacketReader<R> {
    /// Reads and checks the header; the reader is then at the first packet.
    pub fn new(mut r: R) -> Result<Self, ContainerError> {
        let (header, version) = Header::read_versioned_from(&mut r)?;
        Ok(Self {
            r,
            header,
            version,
            buf: Vec::new(),
            index: 0,
            lost: LostRun::default(),
            done: false,
            pages: PageCursor::default(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's container version (1 or 2).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether the file is a live (version 2, `total_samples = 0`) recording whose length is
    /// not known: it is read to its last whole page.
    pub fn is_live(&self) -> bool {
        self.version == VERSION_2 && self.header.total_samples == 0
    }

    /// The most packets [`decode`] decodes: [`Header::packets_needed`], or for a live file
    /// the packets of 24 h ([`MAX_DURATION_SECS`]) plus the codec delay.
    pub fn packets_expected(&self) -> u64 {
        if self.is_live() {
            let mut h = self.header.clone();
            h.total_samples = MAX_DURATION_SECS * u64::from(h.info.sample_rate);
            h.packets_needed()
        } else {
            self.header.packets_needed()
        }
    }

    /// Packets delivered so far (lost ones included).
    pub fn delivered(&self) -> u64 {
        self.index
    }

    /// The next packet: `Some(Ok(None))` for a lost frame, `None` at the end of the stream or
    /// after an error (which is reported once; everything before it has been delivered).
    pub fn next_packet(&mut self) -> Option<Result<Option<&[u8]>, ContainerError>> {
        if self.done {
            return None;
        }
        let r = if self.version == VERSION_2 {
            self.read_paged()
        } else {
            self.read_packet().map(|p| p.map(|len| (0, len)))
        };
        match r {
            Ok(Some((at, len))) => {
                self.index += 1;
                Some(Ok((len > 0).then_some(&self.buf[at..at + len])))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Version 2: the next frame as `(offset, len)` in `buf`, reading (and checking) the next
    /// page into `buf` when the current one is used up; `Ok(None)` at a clean end of stream
    /// (between pages).
    fn read_paged(&mut self) -> Result<Option<(usize, usize)>, ContainerError> {
        let index = self.index;
        loop {
            if let Some((at, len)) = self.pages.take() {
                self.lost.check(index, len == 0)?;
                return Ok(Some((at, len)));
            }
            self.buf.clear();
            let page = loop {
                match parse_page(&self.buf, index) {
                    Ok(page) => break page,
                    Err(PageErr::Bad(e)) => return Err(e),
                    Err(PageErr::Need(n)) => {
                        let have = self.buf.len();
                        self.buf.resize(n, 0);
                        let got = read_up_to(&mut self.r, &mut self.buf[have..])?;
                        if got < n - have {
                            if have + got == 0 {
                                return Ok(None);
                            }
                            return Err(ContainerError::TruncatedPage { index });
                        }
                    }
                }
            };
            self.pages.load(page, index);
        }
    }

    /// Reads one packet into `buf`; `Ok(None)` at a clean end of stream.
    fn read_packet(&mut self) -> Result<Option<usize>, ContainerError> {
        let index = self.index;
        let mut prefix = [0u8; 2];
        match read_up_to(&mut self.r, &mut prefix)? {
            0 => return Ok(None),
            1 => return Err(ContainerError::TruncatedPacket { index }),
            _ => {}
        }
        let len = usize::from(u16::from_le_bytes(prefix));
        if len > MAX_PACKET_BYTES {
            return Err(ContainerError::PacketTooLong { index, len });
        }
        self.lost.check(index, len == 0)?;
        self.buf.resize(len, 0);
        if read_up_to(&mut self.r, &mut self.buf[..len])? < len {
            return Err(ContainerError::TruncatedPacket { index });
        }
        Ok(Some(len))
    }
}

/// What [`decode`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeReport {
    /// Packets the header calls for ([`Header::packets_needed`]): the most that are decoded.
    pub expected_packets: u64,
    /// Packets that went through the decoder (lost ones included).
    pub decoded_packets: u64,
    /// Frames concealed: lost packets, plus (lenient) packets the decoder refused.
    pub concealed: u64,
    /// Packets after the last one the header calls for: read and counted, never decoded.
    pub excess_packets: u64,
    /// Lenient mode: the container error reading stopped at. Everything before it was decoded;
    /// when `decoded_packets == expected_packets` the damage lies past the end and cost nothing.
    /// Also set in strict mode for a live file (version 2, `total_samples = 0`) whose last page
    /// is torn ([`ContainerError::TruncatedPage`]): that is how a recorder that was killed
    /// leaves its file, and everything up to its last flushed page is decoded.
    pub stopped_by: Option<ContainerError>,
}

/// Decodes the packets of `packets` with `dec` into `out` (cleared first), then drops the
/// codec delay and trims to `total_samples`, so `out` lines up with the encoder's input sample
/// for sample. The work and the output are bounded by the header, not by the file:
///
/// * At most [`Header::packets_needed`] packets are decoded (for a live version-2 file, whose
///   `total_samples` is 0, the packets of 24 h: [`PacketReader::packets_expected`]), so `out` never exceeds
///   `total_samples` (≤ 24 h) and the decoder runs at most that many times (twice that when
///   lenient and it refuses packets). Packets past that point are read and counted (I/O only,
///   one reused buffer) but never decoded. The encoder never writes them, so they mean a file
///   that is not what its header says (damage, concatenation, or a hostile file): strict mode
///   fails with [`ContainerError::ExcessPackets`] rather than silently dropping data; lenient
///   mode keeps the decoded clip and reports the count in [`DecodeReport::excess_packets`].
/// * More than [`MAX_LOST_RUN`] lost packets in a row is [`ContainerError::TooManyLost`] from
///   the reader, as is any other damage: strict mode fails; lenient mode stops there, keeping
///   everything decoded before it ([`DecodeReport::stopped_by`]).
/// * A packet the decoder refuses fails strict mode ([`CodecError::AtFrame`]); lenient mode
///   reports it to `on_concealed` and conceals the frame instead.
///
/// A live file's torn last page ends it like a clean end (reported in
/// [`DecodeReport::stopped_by`]); its output is everything decoded, minus the codec delay.
///
/// A stream that simply ends early is not an error here: `out` is then shorter than
/// `total_samples`, and the caller decides (`aic decode` fails unless `--lenient`).
/// This crate does not touch the clock: to time the decoder, wrap it.
pub fn decode<R: Read, D: Decoder + ?Sized>(
    packets: &mut PacketReader<R>,
    dec: &mut D,
    lenient: bool,
    out: &mut Vec<f32>,
    mut on_concealed: impl FnMut(u64, &CodecError),
) -> Result<DecodeReport, CodecError> {
    let expected = packets.packets_expected();
    let live = packets.is_live();
    let delay = packets.header().info.delay_samples;
    let total = if live {
        usize::MAX
    } else {
        usize::try_from(packets.header().total_samples).unwrap_or(usize::MAX)
    };
    let mut rep = DecodeReport {
        expected_packets: expected,
        ..DecodeReport::default()
    };
    out.clear();
    while rep.decoded_packets < expected {
        let index = rep.decoded_packets;
        let p = match packets.next_packet() {
            None => break,
            Some(Ok(p)) => p,
            Some(Err(e))
                if lenient || (live && matches!(e, ContainerError::TruncatedPage { .. })) =>
            {
                rep.stopped_by = Some(e);
                break;
            }
            Some(Err(e)) => return Err(e.into()),
        };
        if p.is_none() {
            rep.concealed += 1;
        }
        if let Err(e) = dec.decode_frame(p, out) {
            if !lenient {
                return Err(CodecError::AtFrame {
                    index,
                    error: Box::new(e),
                });
            }
            on_concealed(index, &e);
            rep.concealed += 1;
            dec.decode_frame(None, out)
                .map_err(|e| CodecError::AtFrame {
                    index,
                    error: Box::new(e),
                })?;
        }
        rep.decoded_packets += 1;
    }
    if rep.decoded_packets == expected {
        // Past the end: count what is there without decoding it.
        while let Some(p) = packets.next_packet() {
            match p {
                Ok(_) => rep.excess_packets += 1,
                Err(e) => {
                    if !lenient && rep.excess_packets == 0 {
                        return Err(e.into());
                    }
                    rep.stopped_by = Some(e);
                    break;
                }
            }
        }
        if !lenient && rep.excess_packets > 0 {
            return Err(ContainerError::ExcessPackets {
                expected,
                excess: rep.excess_packets,
            }
            .into());
        }
    }
    out.drain(..delay.min(out.len()));
    out.truncate(total);
    Ok(rep)
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
        v[4] = 3;
        assert_eq!(read(&v).unwrap_err(), ContainerError::Version(3));
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

    /// A test decoder: counts calls, refuses packets starting with 0xFF, emits the call number.
    struct Counting {
        info: CodecInfo,
        calls: u64,
    }

    impl Counting {
        fn new(h: &Header) -> Self {
            Self {
                info: h.info.clone(),
                calls: 0,
            }
        }
    }

    impl Decoder for Counting {
        fn info(&self) -> &CodecInfo {
            &self.info
        }
        fn decode_frame(
            &mut self,
            packet: Option<&[u8]>,
            out: &mut Vec<f32>,
        ) -> Result<(), CodecError> {
            self.calls += 1;
            if packet.is_some_and(|p| p[0] == 0xFF) {
                return Err(crate::bitstream::BitstreamError::CorruptPayload.into());
            }
            out.extend(std::iter::repeat_n(
                self.calls as f32,
                self.info.frame_samples,
            ));
            Ok(())
        }
        fn reset(&mut self) -> Result<(), CodecError> {
            Ok(())
        }
    }

    /// A reader that hands out at most `max` bytes per call (streams rarely fill a buffer).
    struct Trickle<'a> {
        b: &'a [u8],
        max: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.max).min(self.b.len());
            buf[..n].copy_from_slice(&self.b[..n]);
            self.b = &self.b[n..];
            Ok(n)
        }
    }

    fn file_with(h: &Header, packets: impl IntoIterator<Item = Option<Vec<u8>>>) -> Vec<u8> {
        let mut f = Vec::new();
        h.write(&mut f).unwrap();
        for p in packets {
            write_packet(p.as_deref(), &mut f).unwrap();
        }
        f
    }

    fn stream_packets(f: &[u8], max: usize) -> Vec<Result<Option<Vec<u8>>, ContainerError>> {
        let mut r = PacketReader::new(Trickle { b: f, max }).unwrap();
        let mut v = Vec::new();
        while let Some(p) = r.next_packet() {
            v.push(p.map(|p| p.map(<[u8]>::to_vec)));
        }
        v
    }

    fn decode_bytes(
        f: &[u8],
        lenient: bool,
    ) -> (Result<DecodeReport, CodecError>, Vec<f32>, u64, Vec<u64>) {
        let mut r = PacketReader::new(f).unwrap();
        let mut dec = Counting::new(r.header());
        let mut out = Vec::new();
        let mut refused = Vec::new();
        let rep = decode(&mut r, &mut dec, lenient, &mut out, |i, _| refused.push(i));
        (rep, out, dec.calls, refused)
    }

    /// A header for `frames` 20 ms frames at 16 kHz, no codec delay.
    fn header_frames(frames: u64) -> Header {
        let mut h = header();
        h.info.delay_samples = 0;
        h.total_samples = frames * 320;
        h
    }

    #[test]
    fn stream_reader_reads_what_the_slice_reader_reads() {
        let f = file();
        let want: Vec<_> = read(&f)
            .unwrap()
            .1
            .map(|p| p.map(|p| p.map(<[u8]>::to_vec)))
            .collect();
        for max in [1, 2, 3, 7, 4096] {
            assert_eq!(stream_packets(&f, max), want, "{max} bytes per read");
            let r = PacketReader::new(Trickle { b: &f, max }).unwrap();
            assert_eq!(r.header(), &header());
        }
    }

    #[test]
    fn stream_header_verdicts_match_the_slice_reader() {
        let f = file();
        let hlen = Header::read(&f).unwrap().1;
        for cut in 0..hlen {
            assert_eq!(
                PacketReader::new(&f[..cut]).unwrap_err(),
                Header::read(&f[..cut]).unwrap_err(),
                "cut at {cut}"
            );
        }
        let mut long = f.clone();
        long[5..7].copy_from_slice(&600u16.to_le_bytes());
        assert_eq!(
            PacketReader::new(long.as_slice()).unwrap_err(),
            ContainerError::HeaderTooLong(600)
        );
        assert_eq!(
            PacketReader::new(&b"RIFF0000WAVEfmt "[..]).unwrap_err(),
            ContainerError::Magic
        );
    }

    #[test]
    fn truncated_stream_delivers_every_complete_packet() {
        let h = header_frames(20);
        let packets: Vec<_> = (0..20u8).map(|i| Some(vec![i + 1; 10])).collect();
        let f = file_with(&h, packets.clone());
        // Cut inside the last packet (body, then length prefix), then inside the one before.
        for (cut, complete) in [(5, 19), (10, 19), (11, 19), (13, 18)] {
            let p = stream_packets(&f[..f.len() - cut], 3);
            assert_eq!(p.len(), complete + 1, "cut {cut}");
            for (i, got) in p[..complete].iter().enumerate() {
                assert_eq!(got.as_ref().unwrap(), &packets[i], "cut {cut}, packet {i}");
            }
            assert_eq!(
                p[complete],
                Err(ContainerError::TruncatedPacket {
                    index: complete as u64
                })
            );
            // Decoding: strict fails at the damage, lenient keeps every complete packet.
            let (rep, _, _, _) = decode_bytes(&f[..f.len() - cut], false);
            assert!(matches!(
                rep,
                Err(CodecError::Container(
                    ContainerError::TruncatedPacket { .. }
                ))
            ));
            let (rep, out, calls, _) = decode_bytes(&f[..f.len() - cut], true);
            let rep = rep.unwrap();
            assert_eq!(
                (rep.decoded_packets, calls),
                (complete as u64, complete as u64)
            );
            assert_eq!(out.len(), complete * 320);
            assert!(matches!(
                rep.stopped_by,
                Some(ContainerError::TruncatedPacket { .. })
            ));
        }
    }

    #[test]
    fn ten_thousand_lost_packets_are_refused_after_the_bound() {
        let h = header_frames(10_000);
        let f = file_with(&h, (0..10_000).map(|_| None));
        assert_eq!(f.len(), Header::read(&f).unwrap().1 + 20_000);
        // Both readers: MAX_LOST_RUN lost frames, then a typed error, then nothing.
        let p = stream_packets(&f, 4096);
        let slice: Vec<_> = read(&f).unwrap().1.collect();
        let n = MAX_LOST_RUN as usize;
        assert_eq!(p.len(), n + 1);
        assert_eq!(slice.len(), n + 1);
        assert!(p[..n].iter().all(|p| p == &Ok(None)));
        let err = ContainerError::TooManyLost { index: n as u64 };
        assert_eq!(p[n], Err(err.clone()));
        assert_eq!(slice[n], Err(err.clone()));
        // Strict decode fails there, having run the decoder MAX_LOST_RUN times, not 10 000.
        let (rep, _, calls, _) = decode_bytes(&f, false);
        assert!(
            matches!(&rep, Err(CodecError::Container(e)) if *e == err),
            "{rep:?}"
        );
        assert_eq!(calls, u64::from(MAX_LOST_RUN));
        // Lenient decode stops there and keeps what came before.
        let (rep, out, calls, _) = decode_bytes(&f, true);
        let rep = rep.unwrap();
        assert_eq!(calls, u64::from(MAX_LOST_RUN));
        assert_eq!(rep.decoded_packets, u64::from(MAX_LOST_RUN));
        assert_eq!(rep.concealed, u64::from(MAX_LOST_RUN));
        assert_eq!(rep.stopped_by, Some(err));
        assert_eq!(out.len(), n * 320);
    }

    #[test]
    fn runs_of_lost_packets_up_to_the_bound_are_fine() {
        let n = MAX_LOST_RUN as usize;
        let packets: Vec<_> = (0..3)
            .flat_map(|_| (0..n).map(|_| None).chain([Some(vec![1])]))
            .collect();
        let h = header_frames(packets.len() as u64);
        let f = file_with(&h, packets.clone());
        let p = stream_packets(&f, 4096);
        assert_eq!(p.len(), packets.len());
        assert!(p.iter().all(Result::is_ok));
        let (rep, out, calls, _) = decode_bytes(&f, false);
        let rep = rep.unwrap();
        assert_eq!(calls, packets.len() as u64);
        assert_eq!(rep.concealed, 3 * n as u64);
        assert_eq!(out.len() as u64, h.total_samples);
    }

    #[test]
    fn packets_past_total_samples_are_not_decoded() {
        // 3 200 samples + 240 delay = 10.75 frames: 11 packets are needed; the file has 100.
        let mut h = header();
        h.total_samples = 3_200;
        assert_eq!(h.packets_needed(), 11);
        let f = file_with(&h, (0..100u8).map(|i| Some(vec![i])));
        let (rep, out, calls, _) = decode_bytes(&f, true);
        let rep = rep.unwrap();
        assert_eq!(
            calls, 11,
            "the decoder ran only for the packets the header needs"
        );
        assert_eq!(rep.decoded_packets, 11);
        assert_eq!(rep.excess_packets, 89);
        assert_eq!(rep.stopped_by, None);
        assert_eq!(out.len(), 3_200, "output trimmed to total_samples");
        // The delay is dropped from the front: the first sample is from call 1, sample 240.
        assert_eq!(out[0], 1.0);
        assert_eq!(out[80], 2.0);
        // Strict: the same bounded work, then an error that says what is wrong.
        let (rep, _, calls, _) = decode_bytes(&f, false);
        assert_eq!(calls, 11);
        match rep {
            Err(CodecError::Container(ContainerError::ExcessPackets { expected, excess })) => {
                assert_eq!((expected, excess), (11, 89));
            }
            other => panic!("{other:?}"),
        }
        // Exactly the packets the encoder writes: no complaint.
        let exact = file_with(&h, (0..11u8).map(|i| Some(vec![i])));
        let (rep, out, _, _) = decode_bytes(&exact, false);
        assert_eq!(rep.unwrap().excess_packets, 0);
        assert_eq!(out.len(), 3_200);
        // A hostile tail of lost packets past the end costs no decoder call either.
        let lost_tail = file_with(
            &h,
            (0..11u8)
                .map(|i| Some(vec![i]))
                .chain((0..10_000).map(|_| None)),
        );
        let (rep, out, calls, _) = decode_bytes(&lost_tail, true);
        let rep = rep.unwrap();
        assert_eq!((calls, out.len()), (11, 3_200));
        assert_eq!(rep.excess_packets, u64::from(MAX_LOST_RUN));
        assert!(matches!(
            rep.stopped_by,
            Some(ContainerError::TooManyLost { .. })
        ));
        assert!(decode_bytes(&lost_tail, false).0.is_err());
    }

    #[test]
    fn refused_packets_fail_strict_and_are_concealed_when_lenient() {
        let h = header_frames(4);
        let f = file_with(&h, [Some(vec![1]), Some(vec![0xFF]), None, Some(vec![2])]);
        let (rep, _, _, _) = decode_bytes(&f, false);
        let e = rep.unwrap_err();
        assert!(matches!(e, CodecError::AtFrame { index: 1, .. }), "{e:?}");
        assert!(e.to_string().starts_with("frame 1: corrupt frame"), "{e}");
        let (rep, out, calls, refused) = decode_bytes(&f, true);
        let rep = rep.unwrap();
        assert_eq!(refused, vec![1]);
        assert_eq!((rep.concealed, calls, out.len()), (2, 5, 4 * 320));
    }

    #[test]
    fn total_samples_is_bounded_to_a_day() {
        let mut h = header();
        h.total_samples = MAX_DURATION_SECS * 16_000;
        let mut ok = Vec::new();
        h.write(&mut ok).unwrap();
        h.total_samples += 1;
        assert!(matches!(
            h.write(&mut Vec::new()),
            Err(ContainerError::Field {
                field: "total_samples",
                ..
            })
        ));
        // A file claiming more (CRC fixed up) is refused on read, by both readers.
        let n = ok.len();
        ok[n - 12..n - 4].copy_from_slice(&h.total_samples.to_le_bytes());
        let crc = CRC32.checksum(&ok[..n - 4]);
        ok[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            read(&ok),
            Err(ContainerError::Field {
                field: "total_samples",
                ..
            })
        ));
        assert!(matches!(
            PacketReader::new(ok.as_slice()),
            Err(ContainerError::Field {
                field: "total_samples",
                ..
            })
        ));
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

        #[test]
        fn stream_and_slice_readers_agree(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            max in 1usize..9,
        ) {
            let mut f = file();
            f.extend_from_slice(&tail);
            let slice: Vec<_> = read(&f)
                .unwrap()
                .1
                .map(|p| p.map(|p| p.map(<[u8]>::to_vec)))
                .collect();
            prop_assert_eq!(stream_packets(&f, max), slice);
        }
    }
}
