//! The bridge ↔ pipeline link: the bridge process sends 20 ms frames of 16 kHz PCM to the
//! pipeline process (`aic serve --bridge-socket PATH`) and gets back, per frame, the AIC frame
//! (or an Opus fallback frame) and the PCM an AIC receiver hears.
//!
//! * **Control** goes over a Unix-domain `SOCK_SEQPACKET` socket, one connection per stream:
//!   the client sends [`Control::Open`] (stream config and the caller's API key), the server
//!   answers [`Control::OpenOk`] (model id, ring geometry) with five file descriptors attached
//!   (`SCM_RIGHTS`: the sealed memfd holding both rings, then the eventfds *to-server data*,
//!   *to-server space*, *to-client data*, *to-client space*), or [`Control::Refused`] with a
//!   [`RefusalCode`] and a reason. [`Control::Close`] (or just closing the connection) ends the
//!   stream.
//! * **Who may connect**: the socket file is made mode 0660 between `bind` and `listen` (no
//!   window in which the umask's mode applies to a listening socket); the server can read the
//!   peer's uid/gid/pid ([`LinkConn::peer`], `SO_PEERCRED`) and check the key it sent.
//! * **Data** goes over the two rings of that memfd ([`crate::shm`]): ring 0 carries
//!   [`FrameIn`]s to the server, ring 1 [`FrameOut`]s back, each one slot.
//! * **A dead peer** is the connection closing, which the kernel reports even after `SIGKILL`:
//!   every wait polls the socket beside its eventfd, so the other side learns at once
//!   ([`LinkError::PeerGone`]); other streams are other connections and keep going.
//!
//! The byte layouts (all little-endian) are written by the `encode_*` functions and checked by
//! the `decode_*` ones, which never panic on hostile input (fuzz target `link`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::shm::{self, MapHeader, Mapping, Notifier, RingReceiver, RingSender, ShmError, Wake};

/// One 20 ms frame at 16 kHz.
pub const FRAME_16K: usize = 320;
/// Largest payload a [`FrameOut`] carries (an Opus packet's maximum).
pub const MAX_PAYLOAD: usize = 1275;
/// Ring geometry the server offers: 2 KiB slots (a frame out is at most 24 + 1275 + 640 bytes),
/// 64 slots = 1.28 s of audio per direction.
pub const SLOT_SIZE: u32 = 2048;
pub const SLOTS: u32 = 64;
/// Bytes of a control message's fixed header.
const CTRL_HEADER: usize = 8;
const CTRL_MAGIC: [u8; 4] = *b"AICL";
/// 2: `Open` carries an API key, `Refused` a [`RefusalCode`] (1 had neither).
pub const PROTOCOL_VERSION: u16 = 2;
/// Mode of the listening socket's file: owner and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;
/// Largest control message (an `OpenOk` or `Refused` with a 255-byte string).
pub const MAX_CONTROL: usize = 512;
const FDS: usize = 5;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The stream's ring toward the server is full: the server is behind; drop or retry later.
    #[error("the ring to the pipeline is full")]
    Full,
    /// The other process closed the stream, ended, or died.
    #[error("the peer closed the link or died")]
    PeerGone,
    /// The peer said or wrote something this side cannot accept.
    #[error("link protocol: {0}")]
    Protocol(String),
    /// The server refused the connection or the stream: why, as a code and in words.
    #[error("the pipeline refused the stream ({code}): {reason}")]
    Refused { code: RefusalCode, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Shm(#[from] ShmError),
}

impl From<rustix::io::Errno> for LinkError {
    fn from(e: rustix::io::Errno) -> Self {
        LinkError::Io(e.into())
    }
}

/// Why the server refused a connection or a stream (the first byte of a `Refused` body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// Anything else.
    Other = 0,
    /// Missing, malformed, unknown or revoked API key.
    Unauthenticated = 1,
    /// The key's policy does not allow it, or the peer's uid may not use this socket.
    Forbidden = 2,
    /// A limit is reached: the key's concurrent streams, the pipeline's slots, or the server's
    /// bridge connections. Retrying later may work.
    Limit = 3,
    /// The stream config is invalid.
    Invalid = 4,
    /// The server cannot decide now (its control store is unreachable); retry.
    Unavailable = 5,
}

impl RefusalCode {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Other,
            1 => Self::Unauthenticated,
            2 => Self::Forbidden,
            3 => Self::Limit,
            4 => Self::Invalid,
            5 => Self::Unavailable,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Limit => "limit",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An API key as the link carries it (at most 255 bytes of UTF-8; empty = none). `Debug` never
/// shows it, so the key cannot leak into a log line through an error or a `{:?}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LinkKey(String);

impl LinkKey {
    /// Largest key the open message can carry.
    pub const MAX_LEN: usize = 255;

    pub fn new(key: &str) -> Result<Self, LinkError> {
        if key.len() > Self::MAX_LEN {
            return Err(LinkError::Protocol(format!(
                "an API key of {} bytes; the link carries at most {}",
                key.len(),
                Self::MAX_LEN
            )));
        }
        Ok(Self(key.to_owned()))
    }

    /// No key.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("LinkKey(none)")
        } else {
            write!(f, "LinkKey(<{} bytes, redacted>)", self.0.len())
        }
    }
}

/// What the bridge asks for when it opens a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// AIC level (codebooks sent).
    pub level: u8,
    /// Arrival-to-output budget inside the pipeline, ms (0: the server's default).
    pub latency_budget_ms: u32,
    /// Bitrate of Opus fallback frames, kbps (0: the server's default).
    pub reference_opus_kbps: u32,
}

/// One frame into the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct FrameIn<'a> {
    pub seq: u64,
    /// [`FRAME_16K`] samples.
    pub pcm16k: &'a [i16],
    /// The bridge concealed this frame (packet lost); passed through for accounting.
    pub concealed: bool,
}

/// One frame out of the pipeline. Reused by the caller: no per-frame allocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameOut {
    pub seq: u64,
    pub level: u8,
    /// True: `payload` is an Opus fallback frame, not AIC.
    pub fallback: bool,
    /// The AIC frame (cleared and refilled, capacity reused).
    pub payload: Vec<u8>,
    /// What an AIC receiver hears (decoded), [`FRAME_16K`] samples.
    pub pcm16k: Vec<i16>,
    /// Time inside the pipeline process, µs.
    pub pipeline_us: u32,
}

// ---------------------------------------------------------------------------------------------
// Slot messages.
//
// FrameIn:  kind=1 u8 | flags u8 (bit 0 concealed) | samples u16 | 0 u32 | seq u64 | pcm i16 × n
// FrameOut: kind=2 u8 | flags u8 (bit 0 fallback) | level u8 | 0 u8 | payload_len u16 |
//           samples u16 | pipeline_us u32 | 0 u32 | seq u64 | payload | pcm i16 × n

const KIND_IN: u8 = 1;
const KIND_OUT: u8 = 2;
const IN_HEADER: usize = 16;
const OUT_HEADER: usize = 24;

fn push_pcm(buf: &mut Vec<u8>, pcm: &[i16]) {
    for s in pcm {
        buf.extend_from_slice(&s.to_le_bytes());
    }
}

fn read_pcm(b: &[u8], out: &mut Vec<i16>) {
    out.clear();
    out.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
}

fn le_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Writes `f` into `buf` (cleared first).
pub fn encode_frame_in(f: &FrameIn<'_>, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    if f.pcm16k.len() > FRAME_16K {
        return Err(LinkError::Protocol(format!(
            "frame of {} samples, at most {FRAME_16K}",
            f.pcm16k.len()
        )));
    }
    buf.clear();
    buf.extend_from_slice(&[KIND_IN, u8::from(f.concealed)]);
    buf.extend_from_slice(&(f.pcm16k.len() as u16).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&f.seq.to_le_bytes());
    push_pcm(buf, f.pcm16k);
    Ok(())
}

/// A decoded [`FrameIn`] header; the samples went to the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInMeta {
    pub seq: u64,
    pub concealed: bool,
}

pub fn decode_frame_in(b: &[u8], pcm: &mut Vec<i16>) -> Result<FrameInMeta, LinkError> {
    if b.len() < IN_HEADER || b[0] != KIND_IN {
        return Err(LinkError::Protocol("not a frame-in message".into()));
    }
    let n = usize::from(le_u16(b, 2));
    if n > FRAME_16K || b.len() != IN_HEADER + 2 * n || b[1] > 1 || b[4..8] != [0; 4] {
        return Err(LinkError::Protocol(format!(
            "frame-in of {} bytes claims {n} samples",
            b.len()
        )));
    }
    read_pcm(&b[IN_HEADER..], pcm);
    Ok(FrameInMeta {
        seq: le_u64(b, 8),
        concealed: b[1] == 1,
    })
}

pub fn encode_frame_out(f: &FrameOut, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    if f.payload.len() > MAX_PAYLOAD || f.pcm16k.len() > FRAME_16K {
        return Err(LinkError::Protocol(format!(
            "frame-out with {} payload bytes and {} samples (at most {MAX_PAYLOAD}, {FRAME_16K})",
            f.payload.len(),
            f.pcm16k.len()
        )));
    }
    buf.clear();
    buf.extend_from_slice(&[KIND_OUT, u8::from(f.fallback), f.level, 0]);
    buf.extend_from_slice(&(f.payload.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(f.pcm16k.len() as u16).to_le_bytes());
    buf.extend_from_slice(&f.pipeline_us.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&f.seq.to_le_bytes());
    buf.extend_from_slice(&f.payload);
    push_pcm(buf, &f.pcm16k);
    Ok(())
}

/// Decodes into `out`, reusing its buffers.
pub fn decode_frame_out(b: &[u8], out: &mut FrameOut) -> Result<(), LinkError> {
    // The reserved bytes must be zero: one message, one encoding (they are free for a later
    // version only if today's readers reject what they do not understand).
    if b.len() < OUT_HEADER || b[0] != KIND_OUT || b[1] > 1 || b[3] != 0 || b[12..16] != [0; 4] {
        return Err(LinkError::Protocol("not a frame-out message".into()));
    }
    let plen = usize::from(le_u16(b, 4));
    let n = usize::from(le_u16(b, 6));
    if plen > MAX_PAYLOAD || n > FRAME_16K || b.len() != OUT_HEADER + plen + 2 * n {
        return Err(LinkError::Protocol(format!(
            "frame-out of {} bytes claims {plen} payload bytes and {n} samples",
            b.len()
        )));
    }
    out.fallback = b[1] == 1;
    out.level = b[2];
    out.pipeline_us = le_u32(b, 8);
    out.seq = le_u64(b, 16);
    out.payload.clear();
    out.payload
        .extend_from_slice(&b[OUT_HEADER..OUT_HEADER + plen]);
    read_pcm(&b[OUT_HEADER + plen..], &mut out.pcm16k);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Control messages: "AICL" | version u16 | kind u8 | 0 u8 | body.

/// A control message on the stream's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Client → server. Body: level u8 | 0 u8 ×3 | latency_budget_ms u32 |
    /// reference_opus_kbps u32 | key_len u8 | API key (UTF-8; empty = none).
    Open {
        config: LinkConfig,
        api_key: LinkKey,
    },
    /// Server → client, with [`FDS`] descriptors attached. Body: slot_size u32 | slot_count u32 |
    /// id_len u8 | model id (UTF-8).
    OpenOk {
        slot_size: u32,
        slot_count: u32,
        model_id: String,
    },
    /// Server → client. Body: code u8 ([`RefusalCode`]) | len u8 | reason (UTF-8).
    Refused { code: RefusalCode, reason: String },
    /// Either way: the stream ends. No body.
    Close,
    /// Client → server: is anyone there? No body.
    Hello,
    /// Server → client. Body: id_len u8 | model id.
    HelloOk { model_id: String },
}

const K_OPEN: u8 = 1;
const K_OPEN_OK: u8 = 2;
const K_REFUSED: u8 = 3;
const K_CLOSE: u8 = 4;
const K_HELLO: u8 = 5;
const K_HELLO_OK: u8 = 6;

fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Cut at a char boundary so the receiver's UTF-8 check passes.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.push(end as u8);
    buf.extend_from_slice(&s.as_bytes()[..end]);
}

fn read_str(b: &[u8]) -> Result<String, LinkError> {
    let Some((&n, rest)) = b.split_first() else {
        return Err(LinkError::Protocol("missing string".into()));
    };
    if rest.len() != usize::from(n) {
        return Err(LinkError::Protocol(format!(
            "string of {n} bytes in {} bytes",
            rest.len()
        )));
    }
    String::from_utf8(rest.to_vec()).map_err(|_| LinkError::Protocol("string is not UTF-8".into()))
}

impl Control {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&CTRL_MAGIC);
        buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let kind = match self {
            Control::Open { .. } => K_OPEN,
            Control::OpenOk { .. } => K_OPEN_OK,
            Control::Refused { .. } => K_REFUSED,
            Control::Close => K_CLOSE,
            Control::Hello => K_HELLO,
            Control::HelloOk { .. } => K_HELLO_OK,
        };
        buf.extend_from_slice(&[kind, 0]);
        match self {
            Control::Open { config: c, api_key } => {
                buf.extend_from_slice(&[c.level, 0, 0, 0]);
                buf.extend_from_slice(&c.latency_budget_ms.to_le_bytes());
                buf.extend_from_slice(&c.reference_opus_kbps.to_le_bytes());
                // Never cut: `LinkKey` holds at most 255 bytes.
                push_str(buf, api_key.as_str());
            }
            Control::OpenOk {
                slot_size,
                slot_count,
                model_id,
            } => {
                buf.extend_from_slice(&slot_size.to_le_bytes());
                buf.extend_from_slice(&slot_count.to_le_bytes());
                push_str(buf, model_id);
            }
            Control::Refused { code, reason } => {
                buf.push(*code as u8);
                push_str(buf, reason);
            }
            Control::HelloOk { model_id } => push_str(buf, model_id),
            Control::Close | Control::Hello => {}
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, LinkError> {
        if b.len() < CTRL_HEADER || b[..4] != CTRL_MAGIC {
            return Err(LinkError::Protocol("not a link control message".into()));
        }
        let v = le_u16(b, 4);
        if v != PROTOCOL_VERSION {
            return Err(LinkError::Protocol(format!(
                "link protocol version {v}, this build speaks {PROTOCOL_VERSION}"
            )));
        }
        let body = &b[CTRL_HEADER..];
        let fixed = |n: usize| {
            if body.len() == n {
                Ok(())
            } else {
                Err(LinkError::Protocol(format!(
                    "control body of {} bytes, expected {n}",
                    body.len()
                )))
            }
        };
        Ok(match b[6] {
            K_OPEN => {
                if body.len() < 13 || body[1..4] != [0; 3] {
                    return Err(LinkError::Protocol("malformed open message".into()));
                }
                Control::Open {
                    config: LinkConfig {
                        level: body[0],
                        latency_budget_ms: le_u32(body, 4),
                        reference_opus_kbps: le_u32(body, 8),
                    },
                    api_key: LinkKey(read_str(&body[12..])?),
                }
            }
            K_OPEN_OK => {
                if body.len() < 9 {
                    return Err(LinkError::Protocol("short open reply".into()));
                }
                Control::OpenOk {
                    slot_size: le_u32(body, 0),
                    slot_count: le_u32(body, 4),
                    model_id: read_str(&body[8..])?,
                }
            }
            K_REFUSED => {
                let Some((&c, rest)) = body.split_first() else {
                    return Err(LinkError::Protocol("empty refusal".into()));
                };
                let code = RefusalCode::from_u8(c)
                    .ok_or_else(|| LinkError::Protocol(format!("unknown refusal code {c}")))?;
                Control::Refused {
                    code,
                    reason: read_str(rest)?,
                }
            }
            K_CLOSE => {
                fixed(0)?;
                Control::Close
            }
            K_HELLO => {
                fixed(0)?;
                Control::Hello
            }
            K_HELLO_OK => Control::HelloOk {
                model_id: read_str(body)?,
            },
            k => return Err(LinkError::Protocol(format!("unknown control kind {k}"))),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Socket plumbing.

fn send_control(sock: &OwnedFd, msg: &Control, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
    let mut buf = Vec::with_capacity(64);
    msg.encode(&mut buf);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(LinkError::Protocol("too many descriptors".into()));
    }
    match rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&buf)],
        &mut anc,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    ) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => Err(LinkError::PeerGone),
        Err(e) => Err(e.into()),
    }
}

/// Receives one control message (blocking unless `nonblocking`). `Ok(None)`: nothing there
/// (nonblocking only). End of stream is `PeerGone`.
fn recv_control(
    sock: &OwnedFd,
    nonblocking: bool,
    fds: &mut Vec<OwnedFd>,
) -> Result<Option<Control>, LinkError> {
    let mut buf = [0u8; MAX_CONTROL];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC
        | if nonblocking {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
    let mut reset = false;
    let r = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut anc, flags) {
            Err(rustix::io::Errno::INTR) => continue,
            // A peer that closed with our message unread makes the kernel report ECONNRESET
            // once, before the messages it sent: look (without waiting) for its last word,
            // typically a `Refused`.
            Err(rustix::io::Errno::CONNRESET) if !reset => {
                reset = true;
                flags |= RecvFlags::DONTWAIT;
            }
            r => break r,
        }
    };
    let r = match r {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN) if reset => return Err(LinkError::PeerGone),
        Err(rustix::io::Errno::AGAIN) if nonblocking => return Ok(None),
        Err(rustix::io::Errno::CONNRESET) => return Err(LinkError::PeerGone),
        Err(e) => return Err(e.into()),
    };
    fds.clear();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if r.bytes == 0 {
        return Err(LinkError::PeerGone);
    }
    if r.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(LinkError::Protocol("control message too long".into()));
    }
    Control::decode(&buf[..r.bytes]).map(Some)
}

fn seqpacket() -> Result<OwnedFd, LinkError> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn connect_to(path: &Path) -> Result<OwnedFd, LinkError> {
    let s = seqpacket()?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&s, &addr) {
        Ok(()) => Ok(s),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED) => Err(LinkError::PeerGone),
        Err(e) => Err(e.into()),
    }
}

/// Events to poll the socket for beside a ring's eventfd: a message or a hang-up.
const SOCK_EVENTS: PollFlags = PollFlags::IN;

fn poll_readable(sock: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(sock, SOCK_EVENTS)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

// ---------------------------------------------------------------------------------------------
// Client (the bridge).

/// The bridge's handle on the pipeline process.
#[derive(Debug)]
pub struct LinkClient {
    path: PathBuf,
    model_id: String,
    api_key: LinkKey,
}

/// Sends a request and reads the reply. A server that refuses at once may close before the
/// request arrives (the send fails): its `Refused` is then already in this socket's queue.
fn request(
    sock: &OwnedFd,
    msg: &Control,
    fds: &mut Vec<OwnedFd>,
) -> Result<Option<Control>, LinkError> {
    match send_control(sock, msg, &[]) {
        Ok(()) => recv_control(sock, false, fds),
        Err(LinkError::PeerGone) => match recv_control(sock, true, fds) {
            Ok(Some(c @ Control::Refused { .. })) => Ok(Some(c)),
            _ => Err(LinkError::PeerGone),
        },
        Err(e) => Err(e),
    }
}

impl LinkClient {
    /// Checks that a server answers on `socket` (`PeerGone` if none does; `Refused` if it
    /// does not serve this process: uid not allowed, too many connections).
    pub fn connect(socket: &Path) -> Result<Self, LinkError> {
        let s = connect_to(socket)?;
        let mut fds = Vec::new();
        match request(&s, &Control::Hello, &mut fds)? {
            Some(Control::HelloOk { model_id }) => Ok(Self {
                path: socket.to_owned(),
                model_id,
                api_key: LinkKey::none(),
            }),
            Some(Control::Refused { code, reason }) => Err(LinkError::Refused { code, reason }),
            other => Err(LinkError::Protocol(format!(
                "expected a hello reply, got {other:?}"
            ))),
        }
    }

    /// The API key sent with every [`open`](Self::open) (`aick_…`; a server with keys off
    /// ignores it). At most [`LinkKey::MAX_LEN`] bytes.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, LinkError> {
        self.api_key = LinkKey::new(key)?;
        Ok(self)
    }

    /// The model the server runs (from the hello reply).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Opens one stream (its own connection and rings). `Refused` with
    /// [`RefusalCode::Unauthenticated`] for a missing or wrong key, `Forbidden`/`Limit` for the
    /// key's policy and limits, `Limit` when the pipeline is full.
    pub fn open(&mut self, cfg: LinkConfig) -> Result<LinkStream, LinkError> {
        let sock = connect_to(&self.path)?;
        let mut fds = Vec::new();
        let msg = Control::Open {
            config: cfg,
            api_key: self.api_key.clone(),
        };
        let reply = request(&sock, &msg, &mut fds)?;
        let (slot_size, slot_count, model_id) = match reply {
            Some(Control::OpenOk {
                slot_size,
                slot_count,
                model_id,
            }) => (slot_size, slot_count, model_id),
            Some(Control::Refused { code, reason }) => {
                return Err(LinkError::Refused { code, reason });
            }
            other => {
                return Err(LinkError::Protocol(format!(
                    "expected an open reply, got {other:?}"
                )));
            }
        };
        if fds.len() != FDS {
            return Err(LinkError::Protocol(format!(
                "open reply carried {} descriptors, expected {FDS}",
                fds.len()
            )));
        }
        let mut it = fds.into_iter();
        let memfd = it.next().expect("counted");
        let map = Mapping::open(&memfd)?;
        let h = map.header();
        if h.slot_size != slot_size || h.slot_count != slot_count {
            return Err(LinkError::Protocol(format!(
                "reply says {slot_count}×{slot_size}, mapping says {}×{}",
                h.slot_count, h.slot_size
            )));
        }
        if (h.slot_size as usize) < OUT_HEADER + MAX_PAYLOAD + 2 * FRAME_16K + 4 {
            return Err(LinkError::Protocol(format!(
                "slots of {slot_size} bytes are too small"
            )));
        }
        let mut n = || Notifier::from_fd(it.next().expect("counted"));
        let (to_srv_data, to_srv_space, to_cli_data, to_cli_space) = (n(), n(), n(), n());
        Ok(LinkStream {
            tx: RingSender::new(map.clone(), 0, to_srv_data, to_srv_space),
            rx: RingReceiver::new(map, 1, to_cli_data, to_cli_space),
            sock,
            model_id,
            buf: Vec::with_capacity(SLOT_SIZE as usize),
            gone: false,
        })
    }
}

/// One stream: push [`FrameIn`]s, read [`FrameOut`]s. Dropping it ends the stream on the server.
#[derive(Debug)]
pub struct LinkStream {
    tx: RingSender,
    rx: RingReceiver,
    sock: OwnedFd,
    model_id: String,
    buf: Vec<u8>,
    gone: bool,
}

impl LinkStream {
    /// The model the server encodes with (from its open reply).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Notices a closed or dead server (one non-blocking `poll` of the socket).
    fn check_peer(&mut self) -> Result<(), LinkError> {
        if self.gone {
            return Err(LinkError::PeerGone);
        }
        if poll_readable(&self.sock) {
            let mut fds = Vec::new();
            match recv_control(&self.sock, true, &mut fds) {
                Ok(None) => {}
                // Anything the server says after the open reply means the stream is over.
                Ok(Some(_)) | Err(_) => {
                    self.gone = true;
                    return Err(LinkError::PeerGone);
                }
            }
        }
        Ok(())
    }

    /// Queues one frame for the pipeline without blocking. [`LinkError::Full`] when the ring is
    /// full (the pipeline is behind: the caller decides whether to drop the frame).
    pub fn try_send(&mut self, f: FrameIn<'_>) -> Result<(), LinkError> {
        self.check_peer()?;
        encode_frame_in(&f, &mut self.buf)?;
        if self.tx.try_send(&self.buf)? {
            Ok(())
        } else {
            Err(LinkError::Full)
        }
    }

    /// Waits up to `timeout` for the next frame out and decodes it into `out` (buffers reused).
    /// `Ok(false)`: timed out.
    pub fn recv_into(&mut self, out: &mut FrameOut, timeout: Duration) -> Result<bool, LinkError> {
        if self.gone {
            return Err(LinkError::PeerGone);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.rx.try_recv(&mut self.buf)? {
                decode_frame_out(&self.buf, out)?;
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .rx
                .wait_data(left, Some((self.sock.as_fd(), SOCK_EVENTS)))?
            {
                Wake::Ready => {}
                Wake::Other => self.check_peer()?,
                Wake::Timeout => {
                    // Frames may have raced the deadline.
                    if self.rx.try_recv(&mut self.buf)? {
                        decode_frame_out(&self.buf, out)?;
                        return Ok(true);
                    }
                    return Ok(false);
                }
            }
        }
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        if !self.gone {
            let _ = send_control(&self.sock, &Control::Close, &[]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server (the pipeline process). The binary's `bridge_server` maps streams onto the pipeline.

/// The listening socket. Removes its file on drop.
#[derive(Debug)]
pub struct LinkListener {
    sock: OwnedFd,
    path: PathBuf,
}

impl LinkListener {
    /// Binds `path`, mode [`SOCKET_MODE`] (0660, whatever the umask). A socket file left by a
    /// dead server is replaced; one a live server answers on is an error (`AddrInUse`).
    pub fn bind(path: &Path) -> Result<Self, LinkError> {
        if path.exists() {
            match connect_to(path) {
                Ok(_) => {
                    return Err(LinkError::Io(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("a server already answers on {}", path.display()),
                    )));
                }
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let sock = seqpacket()?;
        rustix::net::bind(&sock, &SocketAddrUnix::new(path)?)?;
        // The file is made with the umask's mode; set ours before `listen`, so no connection
        // is ever accepted under another mode (connecting needs write permission on the file).
        if let Err(e) = rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(SOCKET_MODE)) {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        rustix::net::listen(&sock, 64)?;
        Ok(Self {
            sock,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<LinkConn, LinkError> {
        loop {
            match rustix::net::accept_with(&self.sock, SocketFlags::CLOEXEC) {
                Ok(s) => return Ok(LinkConn { sock: s }),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes a blocked [`accept`](Self::accept) (on another thread) return an error.
    pub fn shutdown(&self) {
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
    }
}

impl Drop for LinkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a client asked for on a fresh connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello,
    Open {
        config: LinkConfig,
        api_key: LinkKey,
    },
}

/// The connecting process, as the kernel saw it at `connect` (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// An accepted connection, before its first request is answered.
#[derive(Debug)]
pub struct LinkConn {
    sock: OwnedFd,
}

impl LinkConn {
    /// Reads the client's request, waiting at most `timeout`.
    pub fn request(&mut self, timeout: Duration) -> Result<Request, LinkError> {
        let mut fds = [rustix::event::PollFd::new(&self.sock, SOCK_EVENTS)];
        let ts = rustix::event::Timespec::try_from(timeout)
            .map_err(|_| LinkError::Protocol("timeout out of range".into()))?;
        if rustix::event::poll(&mut fds, Some(&ts))? == 0 {
            return Err(LinkError::Protocol("no request before the timeout".into()));
        }
        let mut got = Vec::new();
        match recv_control(&self.sock, true, &mut got)? {
            Some(Control::Hello) => Ok(Request::Hello),
            Some(Control::Open { config, api_key }) => Ok(Request::Open { config, api_key }),
            other => Err(LinkError::Protocol(format!(
                "expected hello or open, got {other:?}"
            ))),
        }
    }

    pub fn reply_hello(self, model_id: &str) -> Result<(), LinkError> {
        send_control(
            &self.sock,
            &Control::HelloOk {
                model_id: model_id.into(),
            },
            &[],
        )
    }

    /// The connecting process's uid, gid and pid.
    pub fn peer(&self) -> Result<PeerCred, LinkError> {
        let c = rustix::net::sockopt::socket_peercred(&self.sock)?;
        Ok(PeerCred {
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
            pid: c.pid.as_raw_nonzero().get(),
        })
    }

    /// Refuses the connection (also before its request was read) and closes it. Requests
    /// already queued are read first: closing with unread messages would make the client's
    /// next read fail (`ECONNRESET`) instead of returning this refusal.
    pub fn refuse(self, code: RefusalCode, reason: &str) -> Result<(), LinkError> {
        let mut fds = Vec::new();
        for _ in 0..4 {
            if !matches!(recv_control(&self.sock, true, &mut fds), Ok(Some(_))) {
                break;
            }
        }
        send_control(
            &self.sock,
            &Control::Refused {
                code,
                reason: reason.into(),
            },
            &[],
        )
    }

    /// Creates the stream's rings, sends them to the client, and returns the server's ends.
    pub fn accept_open(self, model_id: &str) -> Result<(ServerReceiver, ServerSender), LinkError> {
        let (map, memfd) = Mapping::create(MapHeader {
            slot_size: SLOT_SIZE,
            slot_count: SLOTS,
        })?;
        let to_srv_data = Notifier::new()?;
        let to_srv_space = Notifier::new()?;
        let to_cli_data = Notifier::new()?;
        let to_cli_space = Notifier::new()?;
        send_control(
            &self.sock,
            &Control::OpenOk {
                slot_size: SLOT_SIZE,
                slot_count: SLOTS,
                model_id: model_id.into(),
            },
            &[
                memfd.as_fd(),
                to_srv_data.as_fd(),
                to_srv_space.as_fd(),
                to_cli_data.as_fd(),
                to_cli_space.as_fd(),
            ],
        )?;
        let sock = Arc::new(self.sock);
        Ok((
            ServerReceiver {
                rx: RingReceiver::new(map.clone(), 0, to_srv_data, to_srv_space),
                sock: sock.clone(),
                buf: Vec::with_capacity(SLOT_SIZE as usize),
                gone: false,
            },
            ServerSender {
                tx: RingSender::new(map, 1, to_cli_data, to_cli_space),
                sock,
                buf: Vec::with_capacity(SLOT_SIZE as usize),
            },
        ))
    }
}

/// The server's receiving end of one stream.
#[derive(Debug)]
pub struct ServerReceiver {
    rx: RingReceiver,
    sock: Arc<OwnedFd>,
    buf: Vec<u8>,
    gone: bool,
}

impl ServerReceiver {
    /// Waits up to `timeout` for the next frame; its samples go to `pcm`. `Ok(None)`: timed
    /// out. `PeerGone`: the client closed the stream or died (frames it had already queued
    /// are returned first).
    pub fn recv(
        &mut self,
        pcm: &mut Vec<i16>,
        timeout: Duration,
    ) -> Result<Option<FrameInMeta>, LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.rx.try_recv(&mut self.buf)? {
                return decode_frame_in(&self.buf, pcm).map(Some);
            }
            if self.gone {
                return Err(LinkError::PeerGone);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .rx
                .wait_data(left, Some((self.sock.as_fd(), SOCK_EVENTS)))?
            {
                Wake::Ready => {}
                Wake::Timeout => return Ok(None),
                Wake::Other => {
                    let mut fds = Vec::new();
                    match recv_control(&self.sock, true, &mut fds) {
                        Ok(None) => {}
                        Ok(Some(_)) | Err(_) => self.gone = true, // Close, EOF, or nonsense
                    }
                }
            }
        }
    }
}

/// The server's sending end of one stream.
#[derive(Debug)]
pub struct ServerSender {
    tx: RingSender,
    sock: Arc<OwnedFd>,
    buf: Vec<u8>,
}

impl ServerSender {
    /// Sends one frame out, waiting up to `timeout` for ring space (the client reads too
    /// slowly). `Ok(false)`: still full after `timeout`; `PeerGone`: the client hung up.
    pub fn send(&mut self, f: &FrameOut, timeout: Duration) -> Result<bool, LinkError> {
        encode_frame_out(f, &mut self.buf)?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.tx.try_send(&self.buf)? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Only a hang-up matters here (POLLHUP is always reported); the receiver half
            // reads the socket's messages.
            match self
                .tx
                .wait_space(left, Some((self.sock.as_fd(), PollFlags::empty())))?
            {
                Wake::Ready => {}
                Wake::Other => return Err(LinkError::PeerGone),
                Wake::Timeout => return Ok(false),
            }
        }
    }

    /// True once the client has hung up.
    pub fn peer_gone(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(&*self.sock, PollFlags::empty())];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

/// Re-exported for the fuzz target: validating an untrusted mapping header.
pub use shm::MapHeader as ShmHeader;

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(seed: i32) -> Vec<i16> {
        (0..FRAME_16K as i32)
            .map(|i| ((i * 97 + seed * 13) % 65_536 - 32_768) as i16)
            .collect()
    }

    /// Found by `cargo fuzz run link`: a frame-out with nonzero reserved bytes decoded, and
    /// re-encoded to different bytes. Reserved bytes must be zero, in both directions.
    #[test]
    fn reserved_bytes_must_be_zero() {
        let crash = [
            2, 1, 0, 122, 0, 0, 0, 0, 252, 0, 0, 0, 0, 0, 0, 28, 0, 0, 144, 0, 77, 0, 63, 0,
        ];
        let mut out = FrameOut::default();
        assert!(decode_frame_out(&crash, &mut out).is_err());
        let mut ok = crash;
        (ok[3], ok[15]) = (0, 0);
        decode_frame_out(&ok, &mut out).unwrap();
        let mut b = Vec::new();
        encode_frame_out(&out, &mut b).unwrap();
        assert_eq!(b, ok);

        encode_frame_in(
            &FrameIn {
                seq: 1,
                pcm16k: &[],
                concealed: false,
            },
            &mut b,
        )
        .unwrap();
        let mut pcm = Vec::new();
        assert!(decode_frame_in(&b, &mut pcm).is_ok());
        b[5] = 1;
        assert!(decode_frame_in(&b, &mut pcm).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let p = pcm(3);
        let mut b = Vec::new();
        encode_frame_in(
            &FrameIn {
                seq: 77,
                pcm16k: &p,
                concealed: true,
            },
            &mut b,
        )
        .unwrap();
        let mut back = Vec::new();
        let m = decode_frame_in(&b, &mut back).unwrap();
        assert_eq!(
            m,
            FrameInMeta {
                seq: 77,
                concealed: true
            }
        );
        assert_eq!(back, p);
        let f = FrameOut {
            seq: 9,
            level: 6,
            fallback: true,
            payload: vec![1, 2, 3],
            pcm16k: pcm(5),
            pipeline_us: 1234,
        };
        encode_frame_out(&f, &mut b).unwrap();
        let mut g = FrameOut::default();
        decode_frame_out(&b, &mut g).unwrap();
        assert_eq!(g, f);
        b.truncate(b.len() - 1);
        assert!(decode_frame_out(&b, &mut g).is_err());
    }

    #[test]
    fn control_round_trips_and_rejects_other_versions() {
        let mut b = Vec::new();
        for m in [
            Control::Open {
                config: LinkConfig {
                    level: 4,
                    latency_budget_ms: 60,
                    reference_opus_kbps: 24,
                },
                api_key: LinkKey::new("aick_0123456789abcdef_secret").unwrap(),
            },
            Control::Open {
                config: LinkConfig {
                    level: 1,
                    latency_budget_ms: 0,
                    reference_opus_kbps: 0,
                },
                api_key: LinkKey::none(),
            },
            Control::OpenOk {
                slot_size: 2048,
                slot_count: 64,
                model_id: "aic-speech-v1".into(),
            },
            Control::Refused {
                code: RefusalCode::Limit,
                reason: "no".into(),
            },
            Control::Close,
            Control::Hello,
            Control::HelloOk {
                model_id: "m".into(),
            },
        ] {
            m.encode(&mut b);
            assert_eq!(Control::decode(&b).unwrap(), m);
        }
        b[4] = 9;
        assert!(Control::decode(&b).is_err());
        // Strings longer than 255 bytes are cut at a char boundary, and still decode.
        Control::Refused {
            code: RefusalCode::Other,
            reason: "é".repeat(200),
        }
        .encode(&mut b);
        assert!(matches!(
            Control::decode(&b).unwrap(),
            Control::Refused { reason, .. } if reason.len() == 254
        ));
    }

    /// The v2 open message, byte for byte (`docs/link.md`), and what is not one.
    #[test]
    fn open_v2_layout_carries_the_key() {
        let mut b = Vec::new();
        Control::Open {
            config: LinkConfig {
                level: 6,
                latency_budget_ms: 40,
                reference_opus_kbps: 16,
            },
            api_key: LinkKey::new("aick_k").unwrap(),
        }
        .encode(&mut b);
        let want: Vec<u8> = [
            &b"AICL"[..],
            &[2, 0, 1, 0], // version 2, kind 1 (Open), 0
            &[6, 0, 0, 0], // level, reserved
            &40u32.to_le_bytes(),
            &16u32.to_le_bytes(),
            &[6], // key length
            &b"aick_k"[..],
        ]
        .concat();
        assert_eq!(b, want);
        // A version-1 open (no key) is refused as another version, not misread.
        let mut v1 = want[..20].to_vec();
        v1[4] = 1;
        let e = Control::decode(&v1).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
        // Without the key field, with a key longer than its length says, with reserved bytes set.
        assert!(Control::decode(&want[..20]).is_err());
        let mut long = want.clone();
        long.push(b'x');
        assert!(Control::decode(&long).is_err());
        let mut reserved = want.clone();
        reserved[10] = 1;
        assert!(Control::decode(&reserved).is_err());
        // An empty key is "no key".
        Control::Open {
            config: LinkConfig {
                level: 6,
                latency_budget_ms: 40,
                reference_opus_kbps: 16,
            },
            api_key: LinkKey::none(),
        }
        .encode(&mut b);
        assert_eq!(b.len(), 21);
        assert_eq!(b[20], 0);
    }

    #[test]
    fn refusal_codes_round_trip_and_unknown_ones_are_rejected() {
        let mut b = Vec::new();
        for c in 0..=5u8 {
            let code = RefusalCode::from_u8(c).unwrap();
            assert_eq!(code as u8, c);
            Control::Refused {
                code,
                reason: "why".into(),
            }
            .encode(&mut b);
            assert_eq!(&b[8..], &[c, 3, b'w', b'h', b'y']);
            assert!(
                matches!(Control::decode(&b), Ok(Control::Refused { code: d, .. }) if d == code)
            );
        }
        b[8] = 6;
        assert!(Control::decode(&b).is_err());
        b.truncate(8);
        assert!(Control::decode(&b).is_err(), "a refusal needs its code");
    }

    #[test]
    fn keys_are_bounded_and_never_shown() {
        let secret = format!("aick_{}_{}", "a".repeat(16), "b".repeat(64));
        let k = LinkKey::new(&secret).unwrap();
        assert_eq!(k.as_str(), secret);
        let shown = format!(
            "{:?}",
            Control::Open {
                config: LinkConfig {
                    level: 1,
                    latency_budget_ms: 0,
                    reference_opus_kbps: 0
                },
                api_key: k
            }
        );
        assert!(!shown.contains("bbbb"), "{shown}");
        assert!(LinkKey::new(&"x".repeat(255)).is_ok());
        assert!(LinkKey::new(&"x".repeat(256)).is_err());
        let c = LinkClient {
            path: PathBuf::new(),
            model_id: String::new(),
            api_key: LinkKey::none(),
        };
        assert!(c.with_api_key(&"x".repeat(256)).is_err());
    }

    /// The socket file is 0660 whatever the umask; the server sees who connected; a refusal
    /// sent before the request was read still reaches the client as `Refused`.
    #[test]
    fn socket_mode_peer_credentials_and_early_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        // (The umask is process-wide, so it is not changed here; the usual 022 would give 0755.)
        let l = LinkListener::bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        let me = meta.uid(); // the file's owner: this process
        let srv = std::thread::spawn(move || {
            for _ in 0..6 {
                let c = l.accept().unwrap();
                let p = c.peer().unwrap();
                assert_eq!(p.uid, me);
                assert_eq!(p.pid, std::process::id() as i32);
                c.refuse(RefusalCode::Forbidden, "not you").unwrap();
            }
        });
        for _ in 0..3 {
            let r = LinkClient::connect(&path);
            assert!(
                matches!(&r, Err(LinkError::Refused { code: RefusalCode::Forbidden, reason }) if reason == "not you"),
                "{r:?}"
            );
            let mut c = LinkClient {
                path: path.clone(),
                model_id: String::new(),
                api_key: LinkKey::none(),
            };
            let r = c.open(LinkConfig {
                level: 1,
                latency_budget_ms: 0,
                reference_opus_kbps: 0,
            });
            assert!(
                matches!(
                    &r,
                    Err(LinkError::Refused {
                        code: RefusalCode::Forbidden,
                        ..
                    })
                ),
                "{r:?}"
            );
        }
        srv.join().unwrap();
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A dead server's socket file (std does not remove it on drop).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = LinkListener::bind(&path).unwrap();
        let again = LinkListener::bind(&path);
        assert!(
            matches!(&again, Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse),
            "{again:?}"
        );
        drop(live);
        assert!(!path.exists(), "removed on drop");
    }

    /// A server end in a thread of this process, over a real socket: open, frames both ways,
    /// close seen by the server, server hang-up seen by the client.
    #[test]
    fn socket_link_end_to_end_and_hangups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("link.sock");
        let l = LinkListener::bind(&path).unwrap();
        let srv = std::thread::spawn(move || {
            let c = l.accept().unwrap();
            let mut c = c;
            assert_eq!(c.request(Duration::from_secs(5)).unwrap(), Request::Hello);
            c.reply_hello("echo").unwrap();
            let mut c = l.accept().unwrap();
            let Request::Open {
                config: cfg,
                api_key,
            } = c.request(Duration::from_secs(5)).unwrap()
            else {
                panic!("open expected");
            };
            assert_eq!(api_key.as_str(), "aick_test");
            let (mut rx, mut tx) = c.accept_open("echo-model").unwrap();
            let mut pcm = Vec::new();
            let mut out = FrameOut::default();
            loop {
                match rx.recv(&mut pcm, Duration::from_secs(5)) {
                    Ok(Some(m)) => {
                        out.seq = m.seq;
                        out.level = cfg.level;
                        out.payload.clear();
                        out.payload.push(m.seq as u8);
                        out.pcm16k.clone_from(&pcm);
                        assert!(tx.send(&out, Duration::from_secs(5)).unwrap());
                    }
                    Ok(None) => panic!("client went quiet"),
                    Err(LinkError::PeerGone) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            // Second stream: the server hangs up on it.
            let mut c = l.accept().unwrap();
            assert!(matches!(
                c.request(Duration::from_secs(5)).unwrap(),
                Request::Open { .. }
            ));
            let (rx, tx) = c.accept_open("echo-model").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            drop((rx, tx));
        });
        let mut client = LinkClient::connect(&path)
            .unwrap()
            .with_api_key("aick_test")
            .unwrap();
        assert_eq!(client.model_id(), "echo");
        let cfg = LinkConfig {
            level: 3,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
        };
        let mut s = client.open(cfg).unwrap();
        assert_eq!(s.model_id(), "echo-model");
        let mut out = FrameOut::default();
        for seq in 0..200u64 {
            let p = pcm(seq as i32);
            s.try_send(FrameIn {
                seq,
                pcm16k: &p,
                concealed: false,
            })
            .unwrap();
            assert!(s.recv_into(&mut out, Duration::from_secs(5)).unwrap());
            assert_eq!((out.seq, out.level, out.payload[0]), (seq, 3, seq as u8));
            assert_eq!(out.pcm16k, p);
        }
        drop(s); // the server sees PeerGone and moves on
        let mut s2 = client.open(cfg).unwrap();
        let t0 = Instant::now();
        let r = s2.recv_into(&mut out, Duration::from_secs(10));
        assert!(matches!(r, Err(LinkError::PeerGone)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            s2.try_send(FrameIn {
                seq: 0,
                pcm16k: &pcm(0),
                concealed: false
            }),
            Err(LinkError::PeerGone)
        ));
        srv.join().unwrap();
        // The listener was dropped with the server thread: its socket file is gone.
        assert!(matches!(
            LinkClient::connect(&path),
            Err(LinkError::PeerGone)
        ));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frame_in_round_trips(seq: u64, concealed: bool,
                                pcm in proptest::collection::vec(any::<i16>(), 0..=FRAME_16K)) {
            let mut b = Vec::new();
            encode_frame_in(&FrameIn { seq, pcm16k: &pcm, concealed }, &mut b).unwrap();
            prop_assert!(b.len() + 4 <= SLOT_SIZE as usize);
            let mut back = Vec::new();
            prop_assert_eq!(decode_frame_in(&b, &mut back).unwrap(), FrameInMeta { seq, concealed });
            prop_assert_eq!(back, pcm);
        }

        #[test]
        fn frame_out_round_trips(seq: u64, level: u8, fallback: bool, pipeline_us: u32,
                                 payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
                                 pcm in proptest::collection::vec(any::<i16>(), 0..=FRAME_16K)) {
            let f = FrameOut { seq, level, fallback, payload, pcm16k: pcm, pipeline_us };
            let mut b = Vec::new();
            encode_frame_out(&f, &mut b).unwrap();
            prop_assert!(b.len() + 4 <= SLOT_SIZE as usize, "fits a slot");
            let mut g = FrameOut::default();
            decode_frame_out(&b, &mut g).unwrap();
            prop_assert_eq!(g, f);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Control::decode(&b);
            let _ = decode_frame_in(&b, &mut Vec::new());
            let _ = decode_frame_out(&b, &mut FrameOut::default());
        }
    }
}
