//! Single-producer single-consumer rings of fixed-size slots in a shared mapping — the only
//! module of the workspace with `unsafe` (mapping memory, and copying slot bytes through raw
//! pointers).
//!
//! One mapping (a sealed memfd, created by the server and passed over the Unix socket with
//! `SCM_RIGHTS`) holds a [`MapHeader`] and [`RINGS`] rings, one per direction. Each ring has a
//! header of four shared words (see [`index`] for the protocol) and `slot_count` slots of
//! `slot_size` bytes; a slot holds a little-endian `u32` length and that many message bytes.
//! Wake-ups go through two eventfds per ring (data for the consumer, space for the producer),
//! written only when the other side announced it is about to sleep: an idle ring costs no CPU,
//! a busy one no syscalls. A waiter polls its eventfd together with a file descriptor of the
//! caller's choice (the link's Unix socket), so a peer that dies wakes it at once.
//!
//! # Trust model
//! The two processes run as the same user on one host; either may crash at any instant, and a
//! buggy (or hostile) peer may write anything anywhere in the mapping at any time. What holds
//! even then:
//! * the mapping's size cannot change under us: the creator seals the memfd (`F_SEAL_SHRINK`,
//!   `F_SEAL_GROW`, `F_SEAL_SEAL`) before sending it, and [`Mapping::open`] refuses one without
//!   those seals or smaller than its header says, so no access can fault (`SIGBUS`);
//! * the header is read once, validated ([`MapHeader::parse`]: magic, version, sizes, powers of
//!   two, bounds) and never re-read; the geometry in use is our own copy;
//! * each side keeps its own index privately; the peer's published index is range-checked
//!   before use ([`index::Corrupt`]), and a slot's length is bounded by the slot size, so every
//!   access stays inside our mapping;
//! * slot bytes are only ever copied through raw pointers (never borrowed as `&[u8]`) into
//!   private buffers, and decoded from there: a peer writing a slot while we copy it gives us
//!   garbage bytes that the message decoder rejects, never a torn view of our own memory. (The
//!   Rust memory model calls such a concurrent write a data race; we accept that the values
//!   read are then unspecified — the documented cost of sharing memory with another process.)
//! * a peer that lies about its `*_waiting` flag can only cost us a wake-up (we wait until our
//!   own timeout or the socket closes).
//!
//! What the peer *can* do: stall (we time out), fill a ring with garbage (decoder errors), send
//! eventfds that are some other kind of file (8-byte writes to them fail or are ignored).

#![allow(unsafe_code)]

pub mod index;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use index::{AtomicU32, Consumer, Producer, Words};

/// `"AICSHM\0\x01"` little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"AICSHM\0\x01");
pub const VERSION: u32 = 1;
/// Rings per mapping: 0 = bridge → pipeline, 1 = pipeline → bridge.
pub const RINGS: u32 = 2;
/// Bytes of the mapping header (one cache line).
pub const MAP_HEADER: usize = 64;
/// Bytes of a ring header: producer-written words and consumer-written words on separate
/// cache lines.
pub const RING_HEADER: usize = 128;
pub const MAX_SLOT_SIZE: u32 = 64 * 1024;
pub const MIN_SLOT_SIZE: u32 = 64;
pub const MAX_SLOTS: u32 = 4096;
/// Bytes of the length prefix in each slot.
const LEN_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    #[error("shared mapping header: {0}")]
    BadHeader(String),
    #[error("shared mapping is not sealed against shrinking (seals {0:?})")]
    NotSealed(SealFlags),
    #[error("shared mapping of {actual} bytes, its header needs {needed}")]
    TooSmall { actual: u64, needed: u64 },
    #[error("ring indices are corrupt (head {head}, tail {tail})")]
    Corrupt { head: u32, tail: u32 },
    #[error("slot holds a length of {len} bytes, slots carry at most {max}")]
    BadLength { len: u32, max: usize },
    #[error("message of {len} bytes does not fit a slot ({max})")]
    TooLong { len: usize, max: usize },
    #[error("shared memory: {0}")]
    Os(#[from] rustix::io::Errno),
}

impl From<index::Corrupt> for ShmError {
    fn from(c: index::Corrupt) -> Self {
        ShmError::Corrupt {
            head: c.head,
            tail: c.tail,
        }
    }
}

/// The mapping's geometry, as validated from its first [`MAP_HEADER`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapHeader {
    pub slot_size: u32,
    pub slot_count: u32,
}

impl MapHeader {
    /// Total bytes of a mapping with this geometry.
    pub fn total_len(&self) -> u64 {
        MAP_HEADER as u64 + u64::from(RINGS) * self.ring_stride() as u64
    }

    fn ring_stride(&self) -> usize {
        RING_HEADER + self.slot_size as usize * self.slot_count as usize
    }

    pub fn validate(&self) -> Result<(), ShmError> {
        let bad = |m: String| Err(ShmError::BadHeader(m));
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&self.slot_size)
            || !self.slot_size.is_multiple_of(64)
        {
            return bad(format!(
                "slot size {} not a multiple of 64 in {MIN_SLOT_SIZE}..={MAX_SLOT_SIZE}",
                self.slot_size
            ));
        }
        if !self.slot_count.is_power_of_two() || self.slot_count > MAX_SLOTS {
            return bad(format!(
                "slot count {} not a power of two in 1..={MAX_SLOTS}",
                self.slot_count
            ));
        }
        Ok(())
    }

    pub fn write(&self) -> [u8; MAP_HEADER] {
        let mut b = [0u8; MAP_HEADER];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&RINGS.to_le_bytes());
        b[16..20].copy_from_slice(&self.slot_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.slot_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.total_len().to_le_bytes());
        b
    }

    /// Validates a header copied out of an untrusted mapping.
    pub fn parse(b: &[u8]) -> Result<Self, ShmError> {
        let bad = |m: String| Err(ShmError::BadHeader(m));
        if b.len() < MAP_HEADER {
            return bad(format!("{} bytes, need {MAP_HEADER}", b.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[0..8]);
        if u64::from_le_bytes(m) != MAGIC {
            return bad("wrong magic".into());
        }
        if u32_at(8) != VERSION {
            return bad(format!(
                "version {} (this build speaks {VERSION})",
                u32_at(8)
            ));
        }
        if u32_at(12) != RINGS {
            return bad(format!("{} rings (expected {RINGS})", u32_at(12)));
        }
        let h = MapHeader {
            slot_size: u32_at(16),
            slot_count: u32_at(20),
        };
        h.validate()?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[24..32]);
        if u64::from_le_bytes(t) != h.total_len() {
            return bad(format!(
                "total length {} does not match the geometry ({})",
                u64::from_le_bytes(t),
                h.total_len()
            ));
        }
        Ok(h)
    }
}

/// A shared mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    header: MapHeader,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics (index words)
// or raw-pointer copies of slots owned by one endpoint at a time (see the trust model).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out atomics and raw-pointer copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a sealed memfd holding a fresh mapping with this geometry; returns the mapping
    /// and the fd to send to the peer.
    pub fn create(header: MapHeader) -> Result<(Arc<Self>, OwnedFd), ShmError> {
        header.validate()?;
        let fd =
            rustix::fs::memfd_create("aic-link", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, header.total_len())?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = Self::map(&fd, header)?;
        // SAFETY: the mapping is at least MAP_HEADER bytes (total_len > MAP_HEADER) and fresh:
        // no one else has it yet. Index words start at zero (ftruncate zero-fills).
        unsafe {
            std::ptr::copy_nonoverlapping(header.write().as_ptr(), map.ptr.as_ptr(), MAP_HEADER);
        }
        Ok((Arc::new(map), fd))
    }

    /// Maps a memfd received from the peer, after checking its seals, size and header.
    pub fn open(fd: &OwnedFd) -> Result<Arc<Self>, ShmError> {
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::SEAL) {
            return Err(ShmError::NotSealed(seals));
        }
        let size = rustix::fs::fstat(fd)?.st_size.max(0) as u64;
        if size < MAP_HEADER as u64 {
            return Err(ShmError::TooSmall {
                actual: size,
                needed: MAP_HEADER as u64,
            });
        }
        let mut raw = [0u8; MAP_HEADER];
        rustix::io::pread(fd, &mut raw, 0)?;
        let header = MapHeader::parse(&raw)?;
        if size < header.total_len() {
            return Err(ShmError::TooSmall {
                actual: size,
                needed: header.total_len(),
            });
        }
        Ok(Arc::new(Self::map(fd, header)?))
    }

    fn map(fd: &OwnedFd, header: MapHeader) -> Result<Self, ShmError> {
        let len = usize::try_from(header.total_len())
            .map_err(|_| ShmError::BadHeader("mapping larger than the address space".into()))?;
        // SAFETY: a fresh shared mapping of `len` bytes of a file that is at least that long and
        // sealed against shrinking; we do not alias any Rust object. Unmapped only in Drop.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| ShmError::BadHeader("mmap returned null".into()))?;
        Ok(Self { ptr, len, header })
    }

    pub fn header(&self) -> MapHeader {
        self.header
    }

    fn ring_base(&self, ring: u32) -> *mut u8 {
        debug_assert!(ring < RINGS);
        let off = MAP_HEADER + ring as usize * self.header.ring_stride();
        debug_assert!(off + self.header.ring_stride() <= self.len);
        // SAFETY: in bounds: `off + ring_stride <= len` for ring < RINGS by construction of
        // `total_len`, which `len` equals.
        unsafe { self.ptr.as_ptr().add(off) }
    }

    fn words(&self, ring: u32) -> Words<'_> {
        let base = self.ring_base(ring);
        // SAFETY: the ring header is 128 bytes inside the mapping, 64-byte aligned (MAP_HEADER
        // and ring_stride are multiples of 64, mmap is page aligned); u32 atomics there are
        // valid for the mapping's lifetime, which `&self` bounds. AtomicU32 has the size and
        // alignment of u32, and all processes access these words only atomically.
        unsafe {
            let w = |off: usize| &*base.add(off).cast::<AtomicU32>();
            Words {
                head: w(0),
                tx_waiting: w(4),
                tail: w(64),
                rx_waiting: w(68),
            }
        }
    }

    fn slot_ptr(&self, ring: u32, slot: u32) -> *mut u8 {
        let s = self.header.slot_size as usize;
        debug_assert!(slot < self.header.slot_count);
        // SAFETY: slot < slot_count (the index protocol returns `index % slot_count`), so the
        // slot lies inside this ring's region.
        unsafe { self.ring_base(ring).add(RING_HEADER + slot as usize * s) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` come from our mmap and nothing borrows from the mapping past the
        // lifetime of `&self` (endpoints hold an `Arc<Mapping>`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An eventfd used as a wake-up (nonblocking; its count is drained after a wake).
#[derive(Debug, Clone)]
pub struct Notifier(Arc<OwnedFd>);

impl Notifier {
    pub fn new() -> Result<Self, ShmError> {
        Ok(Self(Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?)))
    }
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    pub fn notify(&self) {
        // EAGAIN (counter saturated) still leaves it readable: the wake is not lost.
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }
    fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&*self.0, &mut b);
    }
}

/// Why a wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The ring may have data (consumer) or space (producer) now.
    Ready,
    /// The extra file descriptor given to the wait is readable or hung up.
    Other,
    Timeout,
}

/// Polls `evt` and optionally `other` until one is ready or `deadline` passes.
fn wait_fds(evt: &Notifier, other: Option<(BorrowedFd<'_>, PollFlags)>, deadline: Instant) -> Wake {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [
            PollFd::from_borrowed_fd(evt.as_fd(), PollFlags::IN),
            match other {
                Some((fd, ev)) => PollFd::from_borrowed_fd(fd, ev),
                None => PollFd::from_borrowed_fd(evt.as_fd(), PollFlags::empty()),
            },
        ];
        let n = if other.is_some() { 2 } else { 1 };
        match rustix::event::poll(&mut fds[..n], Some(&ts)) {
            Ok(0) => return Wake::Timeout,
            Ok(_) => {
                if n == 2 && !fds[1].revents().is_empty() {
                    return Wake::Other;
                }
                evt.drain();
                return Wake::Ready;
            }
            Err(rustix::io::Errno::INTR) => continue,
            // Polling valid fds does not fail otherwise; treat it as a spurious wake.
            Err(_) => return Wake::Ready,
        }
    }
}

/// The producing end of one ring.
#[derive(Debug)]
pub struct RingSender {
    map: Arc<Mapping>,
    ring: u32,
    p: Producer,
    /// Written when the consumer sleeps for data.
    data: Notifier,
    /// Waited on when the ring is full.
    space: Notifier,
}

impl RingSender {
    pub fn new(map: Arc<Mapping>, ring: u32, data: Notifier, space: Notifier) -> Self {
        assert!(ring < RINGS, "ring {ring} of {RINGS}");
        let slots = map.header.slot_count;
        Self {
            map,
            ring,
            p: Producer::new(slots),
            data,
            space,
        }
    }

    /// Largest message a slot carries.
    pub fn max_message(&self) -> usize {
        self.map.header.slot_size as usize - LEN_PREFIX
    }

    /// Copies `msg` into the next slot and publishes it. `Ok(false)`: the ring is full.
    pub fn try_send(&mut self, msg: &[u8]) -> Result<bool, ShmError> {
        let max = self.max_message();
        if msg.len() > max {
            return Err(ShmError::TooLong {
                len: msg.len(),
                max,
            });
        }
        let w = self.map.words(self.ring);
        let Some(slot) = self.p.reserve(w)? else {
            return Ok(false);
        };
        let dst = self.map.slot_ptr(self.ring, slot);
        // SAFETY: the slot is ours until `publish` (the consumer released it, `reserve`
        // acquired that); `LEN_PREFIX + msg.len() <= slot_size`, checked above; raw-pointer
        // copies only, no reference into shared memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (msg.len() as u32).to_le_bytes().as_ptr(),
                dst,
                LEN_PREFIX,
            );
            std::ptr::copy_nonoverlapping(msg.as_ptr(), dst.add(LEN_PREFIX), msg.len());
        }
        if self.p.publish(w) {
            self.data.notify();
        }
        Ok(true)
    }

    /// Waits until the ring has space, `other` is ready, or `timeout` passes.
    pub fn wait_space(
        &mut self,
        timeout: Duration,
        other: Option<(BorrowedFd<'_>, PollFlags)>,
    ) -> Result<Wake, ShmError> {
        let deadline = Instant::now() + timeout;
        let w = self.map.words(self.ring);
        if !self.p.prepare_wait(w)? {
            return Ok(Wake::Ready);
        }
        let r = wait_fds(&self.space, other, deadline);
        self.p.end_wait(w);
        Ok(r)
    }
}

/// The consuming end of one ring.
#[derive(Debug)]
pub struct RingReceiver {
    map: Arc<Mapping>,
    ring: u32,
    c: Consumer,
    data: Notifier,
    space: Notifier,
}

impl RingReceiver {
    pub fn new(map: Arc<Mapping>, ring: u32, data: Notifier, space: Notifier) -> Self {
        assert!(ring < RINGS, "ring {ring} of {RINGS}");
        let slots = map.header.slot_count;
        Self {
            map,
            ring,
            c: Consumer::new(slots),
            data,
            space,
        }
    }

    /// Copies the next message into `out` (cleared first; its capacity is reused).
    /// `Ok(false)`: the ring is empty.
    pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<bool, ShmError> {
        let w = self.map.words(self.ring);
        let Some(slot) = self.c.peek(w)? else {
            return Ok(false);
        };
        let src = self.map.slot_ptr(self.ring, slot);
        let max = self.map.header.slot_size as usize - LEN_PREFIX;
        let mut lb = [0u8; LEN_PREFIX];
        // SAFETY: the slot is published to us (`peek` acquired the producer's Release) and lies
        // inside the mapping; raw-pointer copy into a private buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, lb.as_mut_ptr(), LEN_PREFIX) };
        let len = u32::from_le_bytes(lb);
        if len as usize > max {
            // Release the slot anyway: the ring keeps flowing, the message is lost.
            if self.c.release(w) {
                self.space.notify();
            }
            return Err(ShmError::BadLength { len, max });
        }
        out.clear();
        out.reserve(len as usize);
        // SAFETY: `len <= slot_size - LEN_PREFIX` (checked), so the source is inside the slot;
        // `out` has capacity for `len` bytes, and `set_len` follows the copy that initialises
        // them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(LEN_PREFIX), out.as_mut_ptr(), len as usize);
            out.set_len(len as usize);
        }
        if self.c.release(w) {
            self.space.notify();
        }
        Ok(true)
    }

    /// Waits until the ring has data, `other` is ready, or `timeout` passes.
    pub fn wait_data(
        &mut self,
        timeout: Duration,
        other: Option<(BorrowedFd<'_>, PollFlags)>,
    ) -> Result<Wake, ShmError> {
        let deadline = Instant::now() + timeout;
        let w = self.map.words(self.ring);
        if !self.c.prepare_wait(w)? {
            return Ok(Wake::Ready);
        }
        let r = wait_fds(&self.data, other, deadline);
        self.c.end_wait(w);
        Ok(r)
    }
}

/// One ring with both ends in this process (tests and benches: two threads).
pub fn ring_pair(slot_size: u32, slot_count: u32) -> Result<(RingSender, RingReceiver), ShmError> {
    let (map, _fd) = Mapping::create(MapHeader {
        slot_size,
        slot_count,
    })?;
    let data = Notifier::new()?;
    let space = Notifier::new()?;
    Ok((
        RingSender::new(map.clone(), 0, data.clone(), space.clone()),
        RingReceiver::new(map, 0, data, space),
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_threads_in_order_with_blocking_waits() {
        let (mut tx, mut rx) = ring_pair(128, 4).unwrap();
        const N: u32 = 2000;
        let t = std::thread::spawn(move || {
            for i in 0..N {
                let msg = vec![(i % 251) as u8; (i % 100) as usize];
                while !tx.try_send(&msg).unwrap() {
                    tx.wait_space(Duration::from_secs(5), None).unwrap();
                }
            }
        });
        let mut buf = Vec::new();
        for i in 0..N {
            while !rx.try_recv(&mut buf).unwrap() {
                assert_ne!(
                    rx.wait_data(Duration::from_secs(5), None).unwrap(),
                    Wake::Timeout
                );
            }
            assert_eq!(
                buf,
                vec![(i % 251) as u8; (i % 100) as usize],
                "message {i}"
            );
        }
        t.join().unwrap();
    }

    #[test]
    fn full_ring_and_too_long_messages_are_reported() {
        let (mut tx, mut rx) = ring_pair(64, 2).unwrap();
        assert!(tx.try_send(&[1; 60]).unwrap());
        assert!(matches!(
            tx.try_send(&[1; 61]),
            Err(ShmError::TooLong { .. })
        ));
        assert!(tx.try_send(&[2]).unwrap());
        assert!(!tx.try_send(&[3]).unwrap(), "two slots: full");
        let mut b = Vec::new();
        assert!(rx.try_recv(&mut b).unwrap());
        assert_eq!(b, [1; 60]);
        assert!(tx.try_send(&[3]).unwrap());
        assert_eq!(
            rx.wait_data(Duration::from_millis(1), None).unwrap(),
            Wake::Ready
        );
    }

    #[test]
    fn idle_wait_times_out_and_a_closed_socket_wakes_it() {
        let (_tx, mut rx) = ring_pair(64, 2).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            rx.wait_data(Duration::from_millis(30), None).unwrap(),
            Wake::Timeout
        );
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(
            rx.wait_data(Duration::from_secs(10), Some((a.as_fd(), PollFlags::IN)))
                .unwrap(),
            Wake::Other
        );
    }

    #[test]
    fn open_checks_seals_size_and_header() {
        let (map, fd) = Mapping::create(MapHeader {
            slot_size: 256,
            slot_count: 8,
        })
        .unwrap();
        let peer = Mapping::open(&fd).unwrap();
        assert_eq!(peer.header(), map.header());
        // An unsealed memfd is refused: its creator could shrink it under us.
        let loose = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&loose, 4096).unwrap();
        assert!(matches!(Mapping::open(&loose), Err(ShmError::NotSealed(_))));
        // Sealed but with a corrupt header.
        let bad =
            rustix::fs::memfd_create("y", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&bad, 4096).unwrap();
        let mut h = MapHeader {
            slot_size: 64,
            slot_count: 4,
        }
        .write();
        h[20] = 3; // 3 slots: not a power of two
        rustix::io::pwrite(&bad, &h, 0).unwrap();
        rustix::fs::fcntl_add_seals(&bad, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .unwrap();
        assert!(matches!(Mapping::open(&bad), Err(ShmError::BadHeader(_))));
    }

    #[test]
    fn corrupt_length_is_an_error_not_an_overread() {
        let (map, _fd) = Mapping::create(MapHeader {
            slot_size: 64,
            slot_count: 2,
        })
        .unwrap();
        let (d, s) = (Notifier::new().unwrap(), Notifier::new().unwrap());
        let mut tx = RingSender::new(map.clone(), 1, d.clone(), s.clone());
        let mut rx = RingReceiver::new(map.clone(), 1, d, s);
        assert!(tx.try_send(&[7; 10]).unwrap());
        // A hostile peer rewrites the length after publishing.
        // SAFETY: test-only write of 4 bytes at the start of slot 0 of ring 1.
        unsafe {
            std::ptr::copy_nonoverlapping(1000u32.to_le_bytes().as_ptr(), map.slot_ptr(1, 0), 4)
        };
        let mut b = Vec::new();
        assert!(matches!(
            rx.try_recv(&mut b),
            Err(ShmError::BadLength { len: 1000, .. })
        ));
        assert!(!rx.try_recv(&mut b).unwrap(), "slot released, ring empty");
    }
}

#[cfg(all(test, not(loom)))]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(size in 1u32..=1024, count_log in 0u32..=12) {
            let h = MapHeader { slot_size: size * 64, slot_count: 1 << count_log };
            prop_assume!(h.validate().is_ok());
            prop_assert_eq!(MapHeader::parse(&h.write()).unwrap(), h);
        }

        #[test]
        fn parse_never_panics_and_accepts_only_valid(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(h) = MapHeader::parse(&b) {
                prop_assert!(h.validate().is_ok());
                prop_assert_eq!(&h.write()[..32], &b[..32]);
            }
        }
    }
}
