//! Container version 2: the paged archive framing (spec: `docs/bitstream.md`, §3.2).
//!
//! ```text
//!  file header as in version 1, with version = 2 (total_samples = 0: live, length unknown)
//!  then pages:
//!    u8 0xA5 sync · u8 n (1..=250 frames) · varint first_frame · varint min_len · u8 bits (0..=12)
//!    · n × bits packed (len − min_len), LSB first · frames[Σ len] · u32le crc32(page before it)
//! ```
//! A page is checked whole (CRC-32) before any of its frames is delivered, so a reader that hits
//! a torn or damaged page has delivered exactly the complete pages before it. The writer,
//! [`ArchiveWriter`], appends and flushes one page at a time: whatever it last flushed is a
//! valid file, which is what a live recorder that may be killed needs.
//!
//! The readers are those of version 1 ([`super::container::read`],
//! [`super::container::PacketReader`]), which pick the framing from the header's version; this
//! module holds the page codec they share with the writer.

use std::io::Write;

use super::container::{CRC32, ContainerError, Header, LostRun, MAX_PACKET_BYTES};

/// First byte of every page.
pub const PAGE_SYNC: u8 = 0xA5;
/// The most frames one page may hold: 250 = 5 s.
pub const MAX_PAGE_FRAMES: usize = 250;
/// The most frame bytes one page may hold (a stream reader buffers one page).
pub const MAX_PAGE_BYTES: usize = 65_536;
/// Frames per page [`ArchiveWriter`] writes unless told otherwise: 50 = 1 s.
pub const DEFAULT_PAGE_FRAMES: usize = 50;
/// The largest frame index a page may name (u32: over two years of 20 ms frames).
pub const MAX_FRAME_INDEX: u64 = u32::MAX as u64;
/// The widest packed length field: 12 bits cover `MAX_PACKET_BYTES` (4000 < 4096).
const MAX_LEN_BITS: u8 = 12;

/// A parsed, checksum-verified page: where its pieces are in the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// Timeline index of the page's first frame.
    pub first: u64,
    /// Frame lengths (0 = lost frame).
    pub lens: Vec<u16>,
    /// Offset of the first frame's bytes.
    pub data_at: usize,
    /// Bytes the whole page takes, CRC included.
    pub len: usize,
}

/// Why a page could not be parsed yet or at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageErr {
    /// The bytes end early: the page needs at least this many (more than given).
    Need(usize),
    Bad(ContainerError),
}

fn bad(index: u64, why: impl Into<String>) -> PageErr {
    PageErr::Bad(ContainerError::Page {
        index,
        why: why.into(),
    })
}

/// LEB128 at `b[*pos..]`, at most `max_bytes` long.
fn varint(b: &[u8], pos: &mut usize, max_bytes: usize, index: u64) -> Result<u64, PageErr> {
    let mut v = 0u64;
    for k in 0..max_bytes {
        let Some(&byte) = b.get(*pos) else {
            return Err(PageErr::Need(*pos + 1));
        };
        *pos += 1;
        v |= u64::from(byte & 0x7F) << (7 * k);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad(index, format!("varint longer than {max_bytes} bytes")))
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Parses the page at the start of `b`. `index` is the reader's next timeline index: a page may
/// not start before it. Sequential: a verdict on a prefix of `b` is the verdict on `b`, so a
/// stream reader can feed it a growing buffer until it stops asking for more.
pub(crate) fn parse_page(b: &[u8], index: u64) -> Result<Page, PageErr> {
    let need = |n: usize| {
        if b.len() < n {
            Err(PageErr::Need(n))
        } else {
            Ok(())
        }
    };
    need(1)?;
    if b[0] != PAGE_SYNC {
        return Err(bad(
            index,
            format!("sync byte {:#04x}, not {PAGE_SYNC:#04x}", b[0]),
        ));
    }
    need(2)?;
    let n = usize::from(b[1]);
    if !(1..=MAX_PAGE_FRAMES).contains(&n) {
        return Err(bad(
            index,
            format!("{n} frames, not in 1..={MAX_PAGE_FRAMES}"),
        ));
    }
    let mut pos = 2;
    let first = varint(b, &mut pos, 5, index)?;
    if first > MAX_FRAME_INDEX - n as u64 {
        return Err(bad(
            index,
            format!("first frame {first} past {MAX_FRAME_INDEX}"),
        ));
    }
    if first < index {
        return Err(bad(
            index,
            format!("page starts at frame {first}, before frame {index} (out of order)"),
        ));
    }
    let min_len = varint(b, &mut pos, 2, index)?;
    if min_len > MAX_PACKET_BYTES as u64 {
        return Err(PageErr::Bad(ContainerError::PacketTooLong {
            index: first,
            len: min_len as usize,
        }));
    }
    need(pos + 1)?;
    let bits = b[pos];
    pos += 1;
    if bits > MAX_LEN_BITS {
        return Err(bad(
            index,
            format!("length width {bits} > {MAX_LEN_BITS} bits"),
        ));
    }
    let table = (n * usize::from(bits)).div_ceil(8);
    need(pos + table)?;
    let mut lens = Vec::with_capacity(n);
    let mut total = 0usize;
    let (mut acc, mut have, mut at) = (0u32, 0u8, pos);
    for i in 0..n {
        while have < bits {
            acc |= u32::from(b[at]) << have;
            at += 1;
            have += 8;
        }
        let delta = acc & ((1u32 << bits) - 1);
        acc = acc.checked_shr(u32::from(bits)).unwrap_or(0);
        have -= bits;
        let len = min_len as usize + delta as usize;
        if len > MAX_PACKET_BYTES {
            return Err(PageErr::Bad(ContainerError::PacketTooLong {
                index: first + i as u64,
                len,
            }));
        }
        total += len;
        lens.push(len as u16);
    }
    if total > MAX_PAGE_BYTES {
        return Err(bad(
            index,
            format!("{total} frame bytes > {MAX_PAGE_BYTES}"),
        ));
    }
    let data_at = pos + table;
    let end = data_at + total;
    need(end + 4)?;
    let stored = u32::from_le_bytes(b[end..end + 4].try_into().expect("4 bytes"));
    if CRC32.checksum(&b[..end]) != stored {
        return Err(PageErr::Bad(ContainerError::PageChecksum { index }));
    }
    Ok(Page {
        first,
        lens,
        data_at,
        len: end + 4,
    })
}

/// Appends one page holding `lens.len()` frames (`data` = their bytes, in order) to `out`.
fn encode_page(first: u64, lens: &[u16], data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!lens.is_empty() && lens.len() <= MAX_PAGE_FRAMES);
    let start = out.len();
    let min = lens.iter().copied().min().unwrap_or(0);
    let max = lens.iter().copied().max().unwrap_or(0);
    let bits = (16 - (max - min).leading_zeros()) as u8;
    out.push(PAGE_SYNC);
    out.push(lens.len() as u8);
    put_varint(first, out);
    put_varint(u64::from(min), out);
    out.push(bits);
    let (mut acc, mut have) = (0u32, 0u8);
    for &l in lens {
        acc |= u32::from(l - min) << have;
        have += bits;
        while have >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            have -= 8;
        }
    }
    if have > 0 {
        out.push(acc as u8);
    }
    out.extend_from_slice(data);
    let crc = CRC32.checksum(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Delivers the frames of one verified page: first the gap before it (lost frames), then its
/// own frames, as `(offset, len)` into the bytes it was parsed from (`len = 0`: lost).
#[derive(Debug, Default)]
pub(crate) struct PageCursor {
    gap: u64,
    lens: Vec<u16>,
    next: usize,
    at: usize,
}

impl PageCursor {
    /// Loads `page`, which the reader parsed when its next frame was `index`.
    pub fn load(&mut self, page: Page, index: u64) {
        self.gap = page.first - index;
        self.lens = page.lens;
        self.next = 0;
        self.at = page.data_at;
    }

    pub fn take(&mut self) -> Option<(usize, usize)> {
        if self.gap > 0 {
            self.gap -= 1;
            return Some((0, 0));
        }
        let len = usize::from(*self.lens.get(self.next)?);
        self.next += 1;
        let at = self.at;
        self.at += len;
        Some((at, len))
    }
}

/// Writes a version-2 `.aic` file page by page to any [`Write`] (a file, a pipe, a socket).
///
/// The header goes out (and is flushed) on [`ArchiveWriter::new`]; frames are collected with
/// [`ArchiveWriter::push`] and a page is written and flushed whenever it holds the configured
/// number of frames (default [`DEFAULT_PAGE_FRAMES`], 1 s), would exceed [`MAX_PAGE_BYTES`], or
/// the timeline jumps; [`ArchiveWriter::flush_page`] writes the pending frames now. Everything
/// flushed is a valid file: a writer killed at any point leaves a file that plays up to its last
/// flushed page (a torn page after it is reported, never half-delivered). Dropping the writer
/// writes nothing: call [`ArchiveWriter::finish`].
///
/// The writer refuses what its readers would refuse: packets over [`MAX_PACKET_BYTES`], empty
/// packets (`None` is a lost frame), indices that go backwards or past [`MAX_FRAME_INDEX`], and
/// more than [`super::container::MAX_LOST_RUN`] lost frames in a row (gaps included).
#[derive(Debug)]
pub struct ArchiveWriter<W: Write> {
    w: W,
    page_frames: usize,
    /// Index of the pending page's first frame.
    first: u64,
    lens: Vec<u16>,
    data: Vec<u8>,
    /// The index the next frame gets when it follows without a gap.
    next: u64,
    lost: LostRun,
    page: Vec<u8>,
    bytes_written: u64,
}

fn io(e: std::io::Error) -> ContainerError {
    ContainerError::Io(e.to_string())
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes `header` as a version-2 header and flushes it. A live recording whose length is
    /// not known yet sets `total_samples = 0`.
    pub fn new(mut w: W, header: &Header) -> Result<Self, ContainerError> {
        let mut h = Vec::new();
        header.write_version(2, &mut h)?;
        w.write_all(&h).map_err(io)?;
        w.flush().map_err(io)?;
        Ok(Self {
            w,
            page_frames: DEFAULT_PAGE_FRAMES,
            first: 0,
            lens: Vec::new(),
            data: Vec::new(),
            next: 0,
            lost: LostRun::default(),
            page: Vec::new(),
            bytes_written: h.len() as u64,
        })
    }

    /// Frames per page, clamped to `1..=MAX_PAGE_FRAMES`.
    pub fn with_page_frames(mut self, frames: usize) -> Self {
        self.page_frames = frames.clamp(1, MAX_PAGE_FRAMES);
        self
    }

    /// The index a frame pushed next without a gap gets.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Bytes handed to the underlying writer so far (header and written pages).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Adds frame `index` (`None`: lost, the decoder conceals it). `index` is at least
    /// [`Self::next_index`]; frames skipped over are lost frames.
    pub fn push(&mut self, index: u64, packet: Option<&[u8]>) -> Result<(), ContainerError> {
        let len = packet.map_or(0, <[u8]>::len);
        if len > MAX_PACKET_BYTES {
            return Err(ContainerError::PacketTooLong { index, len });
        }
        if packet.is_some_and(<[u8]>::is_empty) {
            return Err(ContainerError::Page {
                index,
                why: "an empty packet cannot be stored (length 0 means lost)".into(),
            });
        }
        if index < self.next || index > MAX_FRAME_INDEX - 1 {
            return Err(ContainerError::Page {
                index,
                why: format!(
                    "frame index not in {}..{MAX_FRAME_INDEX} (frames go forward only)",
                    self.next
                ),
            });
        }
        // The lost run this frame would make, checked before anything changes.
        let mut run = self.lost;
        for i in self.next..index {
            run.check(i, true)?;
        }
        run.check(index, packet.is_none())?;
        if index > self.next {
            self.write_page()?;
        }
        if self.lens.len() == self.page_frames || self.data.len() + len > MAX_PAGE_BYTES {
            self.write_page()?;
        }
        if self.lens.is_empty() {
            self.first = index;
        }
        self.lens.push(len as u16);
        self.data.extend_from_slice(packet.unwrap_or(&[]));
        self.lost = run;
        self.next = index + 1;
        if self.lens.len() == self.page_frames {
            self.write_page()?;
        }
        Ok(())
    }

    /// Writes the pending frames as a page (if there are any) and flushes the writer.
    pub fn flush_page(&mut self) -> Result<(), ContainerError> {
        self.write_page()
    }

    fn write_page(&mut self) -> Result<(), ContainerError> {
        if self.lens.is_empty() {
            return Ok(());
        }
        self.page.clear();
        encode_page(self.first, &self.lens, &self.data, &mut self.page);
        self.lens.clear();
        self.data.clear();
        self.w.write_all(&self.page).map_err(io)?;
        self.w.flush().map_err(io)?;
        self.bytes_written += self.page.len() as u64;
        Ok(())
    }

    /// Writes the last page, flushes, and hands the writer back.
    pub fn finish(mut self) -> Result<W, ContainerError> {
        self.write_page()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use proptest::prelude::*;

    use super::*;
    use crate::bitstream::container::{
        self, DecodeReport, MAX_LOST_RUN, PacketReader, write_packet,
    };
    use crate::codec::{CodecInfo, Decoder, OperatingPoint};
    use crate::error::CodecError;

    type Item = Result<Option<Vec<u8>>, ContainerError>;

    fn header(total_samples: u64) -> Header {
        Header {
            info: CodecInfo {
                codec: "aic".into(),
                model_id: "aic-speech-v1".into(),
                sample_rate: 16_000,
                frame_samples: 320,
                delay_samples: 0,
                point: OperatingPoint::Level(2),
            },
            total_samples,
        }
    }

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

    /// What the slice reader yields.
    fn slice_items(f: &[u8]) -> Vec<Item> {
        container::read(f)
            .unwrap()
            .1
            .map(|p| p.map(|p| p.map(<[u8]>::to_vec)))
            .collect()
    }

    /// What the stream reader yields, `max` bytes per read; asserts it agrees with the slice
    /// reader.
    fn items(f: &[u8], max: usize) -> Vec<Item> {
        let mut r = PacketReader::new(Trickle { b: f, max }).unwrap();
        assert_eq!(r.version(), 2);
        let mut v = Vec::new();
        while let Some(p) = r.next_packet() {
            v.push(p.map(|p| p.map(<[u8]>::to_vec)));
        }
        assert_eq!(v, slice_items(f), "stream and slice readers agree");
        v
    }

    /// Writes `frames` (index, packet) with pages of `per_page`; returns the file and the file
    /// length after each page.
    fn write(
        h: &Header,
        per_page: usize,
        frames: &[(u64, Option<Vec<u8>>)],
    ) -> (Vec<u8>, Vec<usize>) {
        let mut w = ArchiveWriter::new(Vec::new(), h)
            .unwrap()
            .with_page_frames(per_page);
        let mut ends = Vec::new();
        let mut last = w.bytes_written();
        for (i, p) in frames {
            w.push(*i, p.as_deref()).unwrap();
            if w.bytes_written() != last {
                last = w.bytes_written();
                ends.push(last as usize);
            }
        }
        let f = w.finish().unwrap();
        if f.len() != last as usize {
            ends.push(f.len());
        }
        (f, ends)
    }

    /// The timeline a reader must deliver for `frames`: gaps become lost frames.
    fn timeline(frames: &[(u64, Option<Vec<u8>>)]) -> Vec<Item> {
        let mut v = Vec::new();
        for (i, p) in frames {
            while (v.len() as u64) < *i {
                v.push(Ok(None));
            }
            v.push(Ok(p.clone()));
        }
        v
    }

    /// 7 s of frames at 10 per page, with lost frames and two index gaps.
    fn sample() -> Vec<(u64, Option<Vec<u8>>)> {
        let mut v = Vec::new();
        let mut i = 0u64;
        for k in 0..60u64 {
            if k == 17 || k == 40 {
                i += 3 + k % 5;
            }
            let p = (k % 9 != 4).then(|| vec![k as u8 ^ 0x5A; 3 + (k * 7 % 13) as usize]);
            v.push((i, p));
            i += 1;
        }
        v
    }

    #[test]
    fn roundtrip_with_lost_frames_and_gaps() {
        let frames = sample();
        let (f, ends) = write(&header(0), 10, &frames);
        assert!(ends.len() >= 7, "{ends:?}");
        for max in [1, 3, 64, usize::MAX] {
            assert_eq!(items(&f, max), timeline(&frames), "{max} bytes per read");
        }
    }

    #[test]
    fn v2_is_smaller_than_v1_and_reads_the_same() {
        let frames: Vec<_> = (0..500u64)
            .map(|i| (i, Some(vec![i as u8 | 1; 6 + (i % 5) as usize])))
            .collect();
        let h = header(500 * 320);
        let (v2, _) = write(&h, DEFAULT_PAGE_FRAMES, &frames);
        let mut v1 = Vec::new();
        h.write(&mut v1).unwrap();
        for (_, p) in &frames {
            write_packet(p.as_deref(), &mut v1).unwrap();
        }
        assert_eq!(slice_items(&v1), items(&v2, usize::MAX));
        let payload: usize = frames.iter().map(|(_, p)| p.as_ref().unwrap().len()).sum();
        let hdr = Header::read(&v1).unwrap().1;
        // v1: 2 bytes per frame; v2: 3 bits per frame here, plus ~10 bytes per 50-frame page.
        assert_eq!(v1.len() - hdr - payload, 1000);
        let v2_overhead = v2.len() - hdr - payload;
        assert!(
            v2_overhead < 400,
            "{v2_overhead} bytes of framing for 500 frames"
        );
    }

    #[test]
    fn truncation_at_every_offset_delivers_exactly_the_complete_pages() {
        let frames = sample();
        let (f, ends) = write(&header(0), 10, &frames);
        let hdr = Header::read(&f).unwrap().1;
        let all = timeline(&frames);
        // Timeline length delivered by the pages that end at each boundary.
        let mut delivered_at = Vec::new();
        for &end in &ends {
            let got = slice_items(&f[..end]);
            assert!(got.iter().all(Result::is_ok));
            delivered_at.push((end, got.len()));
        }
        for cut in hdr..=f.len() {
            let got = items(&f[..cut], 7);
            let (_, complete) = delivered_at
                .iter()
                .copied()
                .rfind(|&(end, _)| end <= cut)
                .unwrap_or((hdr, 0));
            let at_boundary = cut == hdr || ends.contains(&cut);
            assert_eq!(got.len(), complete + usize::from(!at_boundary), "cut {cut}");
            assert_eq!(got[..complete], all[..complete], "cut {cut}");
            if !at_boundary {
                assert_eq!(
                    got[complete],
                    Err(ContainerError::TruncatedPage {
                        index: complete as u64
                    }),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_caught_before_any_frame_of_its_page() {
        let frames = sample();
        let (f, ends) = write(&header(0), 10, &frames);
        let hdr = Header::read(&f).unwrap().1;
        let all = timeline(&frames);
        let mut starts = vec![hdr];
        starts.extend_from_slice(&ends[..ends.len() - 1]);
        for pos in hdr..f.len() {
            let page = starts.iter().rposition(|&s| s <= pos).unwrap();
            let before = slice_items(&f[..starts[page]]).len();
            for bit in [0x01u8, 0x80] {
                let mut g = f.clone();
                g[pos] ^= bit;
                let got = items(&g, usize::MAX);
                assert_eq!(got.len(), before + 1, "byte {pos} bit {bit:#x}");
                assert_eq!(got[..before], all[..before]);
                assert!(got[before].is_err(), "byte {pos}: {:?}", got[before]);
            }
        }
        // Damage in a frame's bytes is the checksum's to find.
        let mut g = f.clone();
        g[ends[1] - 5] ^= 0x10;
        let got = items(&g, usize::MAX);
        let before = slice_items(&f[..ends[0]]).len();
        assert_eq!(
            got[before],
            Err(ContainerError::PageChecksum {
                index: before as u64
            })
        );
    }

    fn file_of_pages(pages: &[(u64, Vec<u16>)]) -> Vec<u8> {
        let mut f = Vec::new();
        header(0).write_version(2, &mut f).unwrap();
        for (first, lens) in pages {
            let data: Vec<u8> = lens
                .iter()
                .flat_map(|&l| std::iter::repeat_n(7u8, usize::from(l)))
                .collect();
            encode_page(*first, lens, &data, &mut f);
        }
        f
    }

    #[test]
    fn bounds_are_enforced_by_reader_and_writer() {
        // Too many frames in a page: the count byte says 251 (CRC fixed up).
        let mut f = file_of_pages(&[(0, vec![1; 250])]);
        let hdr = Header::read(&f).unwrap().1;
        assert!(items(&f, usize::MAX).iter().all(Result::is_ok));
        f[hdr + 1] = 251;
        let n = f.len();
        let crc = CRC32.checksum(&f[hdr..n - 4]);
        f[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            items(&f, usize::MAX)[..],
            [Err(ContainerError::Page { index: 0, .. })]
        ));
        // A frame over MAX_PACKET_BYTES.
        let f = file_of_pages(&[(0, vec![1, 4001])]);
        assert_eq!(
            items(&f, usize::MAX),
            vec![Err(ContainerError::PacketTooLong {
                index: 1,
                len: 4001
            })]
        );
        // A page over MAX_PAGE_BYTES.
        let f = file_of_pages(&[(0, vec![4000; 17])]);
        assert!(matches!(
            items(&f, usize::MAX)[..],
            [Err(ContainerError::Page { index: 0, .. })]
        ));
        // Pages out of order (the second starts inside the first).
        let f = file_of_pages(&[(0, vec![3; 5]), (4, vec![3; 5])]);
        let got = items(&f, usize::MAX);
        assert_eq!(got.len(), 6);
        assert!(matches!(got[5], Err(ContainerError::Page { index: 5, .. })));
        // Lost runs: 50 lost then a frame is fine; 51 (a page of lost frames then a gap, or a
        // gap of 51) is refused at frame 50, after the 50 before it.
        let ok = file_of_pages(&[(0, vec![0; 30]), (50, vec![2])]);
        assert_eq!(items(&ok, usize::MAX).len(), 51);
        for f in [
            file_of_pages(&[(0, vec![0; 30]), (51, vec![2])]),
            file_of_pages(&[(0, vec![2]), (52, vec![2])]),
        ] {
            let got = items(&f, usize::MAX);
            let k = got.len() - 1;
            assert_eq!(got[k], Err(ContainerError::TooManyLost { index: k as u64 }));
            assert!(got[..k].iter().all(Result::is_ok));
            assert!(k >= MAX_LOST_RUN as usize);
        }
        // The writer refuses the same things before writing anything.
        let mut w = ArchiveWriter::new(Vec::new(), &header(0)).unwrap();
        assert!(matches!(
            w.push(0, Some(&[0; 4001])),
            Err(ContainerError::PacketTooLong { .. })
        ));
        assert!(w.push(0, Some(&[])).is_err());
        w.push(0, Some(&[1])).unwrap();
        assert!(w.push(0, Some(&[1])).is_err(), "index must go forward");
        assert!(matches!(
            w.push(52, Some(&[1])),
            Err(ContainerError::TooManyLost { .. })
        ));
        w.push(51, Some(&[1])).unwrap();
        for i in 52..52 + u64::from(MAX_LOST_RUN) {
            w.push(i, None).unwrap();
        }
        assert!(w.push(200, None).is_err());
        assert!(w.push(MAX_FRAME_INDEX, Some(&[1])).is_err());
        let f = w.finish().unwrap();
        assert_eq!(items(&f, 5).len(), 52 + MAX_LOST_RUN as usize);
    }

    /// Emits the call number per frame.
    struct Counting {
        info: CodecInfo,
        calls: u64,
    }

    impl Decoder for Counting {
        fn info(&self) -> &CodecInfo {
            &self.info
        }
        fn decode_frame(&mut self, _: Option<&[u8]>, out: &mut Vec<f32>) -> Result<(), CodecError> {
            self.calls += 1;
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

    fn decode_file(f: &[u8], lenient: bool) -> (Result<DecodeReport, CodecError>, Vec<f32>) {
        let mut r = PacketReader::new(f).unwrap();
        let mut dec = Counting {
            info: r.header().info.clone(),
            calls: 0,
        };
        let mut out = Vec::new();
        let rep = container::decode(&mut r, &mut dec, lenient, &mut out, |_, _| {});
        (rep, out)
    }

    #[test]
    fn a_killed_live_recording_decodes_to_its_last_flushed_page() {
        let mut h = header(0);
        h.info.delay_samples = 100;
        let frames: Vec<_> = (0..120u64).map(|i| (i, Some(vec![9; 5]))).collect();
        let (f, ends) = write(&h, 50, &frames);
        // Whole file: every frame, minus the delay; nothing to trim (length unknown).
        let (rep, out) = decode_file(&f, false);
        let rep = rep.unwrap();
        assert_eq!((rep.decoded_packets, rep.stopped_by), (120, None));
        assert_eq!(out.len(), 120 * 320 - 100);
        // Killed while writing the third page: strict decode keeps the two flushed pages.
        let (rep, out) = decode_file(&f[..ends[1] + 9], false);
        let rep = rep.unwrap();
        assert_eq!(rep.decoded_packets, 100);
        assert_eq!(
            rep.stopped_by,
            Some(ContainerError::TruncatedPage { index: 100 })
        );
        assert_eq!(out.len(), 100 * 320 - 100);
        // A damaged page is still an error in strict mode.
        let mut g = f.clone();
        g[ends[0] + 20] ^= 1;
        assert!(decode_file(&g, false).0.is_err());
        // A finished file with a known length reads like version 1: a torn tail is an error.
        let h = header(120 * 320);
        let (f, ends) = write(&h, 50, &frames);
        assert_eq!(decode_file(&f, false).1.len(), 120 * 320);
        assert!(decode_file(&f[..ends[1] + 9], false).0.is_err());
    }

    proptest! {
        #[test]
        fn random_streams_round_trip(
            ops in proptest::collection::vec((0u64..4, 0usize..4, 1usize..300, any::<u8>()), 1..200),
            per_page in 1usize..=MAX_PAGE_FRAMES,
            big in any::<bool>(),
            max in 1usize..64,
        ) {
            let mut frames = Vec::new();
            let mut next = 0u64;
            for (gap, lost, len, byte) in ops {
                next += gap;
                for _ in 0..lost {
                    frames.push((next, None));
                    next += 1;
                }
                let len = if big && byte < 8 { MAX_PACKET_BYTES - usize::from(byte) } else { len };
                frames.push((next, Some(vec![byte; len])));
                next += 1;
            }
            let (f, _) = write(&header(0), per_page, &frames);
            prop_assert_eq!(items(&f, max), timeline(&frames));
        }

        #[test]
        fn garbage_pages_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut f = Vec::new();
            header(0).write_version(2, &mut f).unwrap();
            f.push(PAGE_SYNC);
            f.extend_from_slice(&tail);
            let _ = items(&f, 3);
        }
    }
}
