//! `aic serve --bridge-socket PATH`: the pipeline side of the bridge ↔ pipeline link
//! (`aic_sfu_bridge::link`). Each link stream is one transcode stream of the pipeline
//! (`StreamConfig::transcode`): PCM in, and per frame one output with the AIC frame and its
//! decoded PCM, so the bridge gets back both the frame to send and what an AIC receiver hears.
//! Frames the model cannot serve in time come back as the engine's Opus fallback, with the
//! Opus-decoded PCM (decoded by the engine).
//!
//! Who gets in, in order: the socket file's mode (0660, set by `LinkListener::bind`); the
//! peer's uid (`SO_PEERCRED`) against [`Limits::allowed_uids`]; the number of connections being
//! served ([`Limits::max_conns`]: over it a connection is refused on the accept thread, no
//! thread is started); then, for a stream, the API key of its open message through the same
//! `aic_control` gate as gRPC sessions (key, policy, per-key session limit, metering). A refused
//! connection or stream gets `Refused` with a code and a reason, and takes no pipeline slot.
//!
//! Metering: a link stream is one session of its key. Every frame is encoded and decoded, so
//! it counts 20 ms encoded *and* 20 ms decoded (the store's existing columns, not a new "bridge
//! seconds" one: that would need a migration on both SQLite and PostgreSQL, the proto and the
//! admin CLI), its PCM in as bytes in, the AIC (or fallback Opus) frame as bytes out, and the
//! saving against Opus at the stream's reference bitrate as bytes saved.
//!
//! Logs go through `tracing` (text or JSON, as configured); what a peer causes (refusals, bad
//! frames, a client not reading) is rate-limited per peer uid ([`LogLimiter`]).
//!
//! Threads per stream (both blocking, none polling): the *reader* (ring → the stream's
//! `push_pcm`, at most [`IN_FLIGHT`] frames inside the pipeline, so a bridge sending faster
//! than real time is paced by its ring filling up instead of overflowing the engine's bounded
//! queue) and the *writer* (the stream's outputs → ring). Per frame that is one hop into the
//! pipeline and one out; beside it the reader hands the writer the frame's client seq and
//! arrival through a bounded channel (which is also the credit), and the writer hands the
//! spent PCM vector back, so nothing is allocated per frame. A client that closes or dies
//! ends its stream's threads; the listener and other streams carry on.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::{Context as _, Result};
use aic_control::gate::{Gate, Ticket};
use aic_control::meter::SessionCounters;
use aic_control::policy::{KeyGrant, Want};
use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineError, Output, Payload, StreamConfig};
use aic_sfu_bridge::link::{
    FRAME_16K, FrameOut, LinkConfig, LinkConn, LinkError, LinkKey, LinkListener, PeerCred,
    RefusalCode, Request,
};

/// Frames one link stream may have inside the pipeline (the engine queues at most 4).
const IN_FLIGHT: usize = 3;
/// How long the writer waits for ring space before dropping a frame (the bridge stopped
/// reading but is still connected).
const WRITE_WAIT: Duration = Duration::from_millis(500);
/// How long a new connection may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Default of [`Limits::max_conns`] (`bridge_max_conns`).
pub const DEFAULT_MAX_CONNS: usize = 64;
/// Log lines one peer may cause per [`LOG_WINDOW`]; the rest are counted and summarised.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Stand-in uid for a peer whose credentials could not be read.
const UNKNOWN_UID: u32 = u32::MAX;

/// Who may use the bridge socket, and how many at once (`bridge_allowed_uids`,
/// `bridge_max_conns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Peer uids allowed to connect (`SO_PEERCRED`); empty: any uid the socket's mode (0660)
    /// lets in.
    pub allowed_uids: Vec<u32>,
    /// Connections served at once (hello probes and streams; a stream is two threads). More
    /// are refused with a message.
    pub max_conns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            allowed_uids: Vec::new(),
            max_conns: DEFAULT_MAX_CONNS,
        }
    }
}

/// At most `burst` lines per peer per `window`; the lines past that are counted, and the count
/// is reported once ("suppressed K"), either with the peer's first line of a later window or by
/// [`due`](Self::due) once its window is over. Pure: fed `now`. At most `max_peers` peers are
/// tracked; lines of further peers are suppressed and counted as overflow.
#[derive(Debug)]
pub struct LogLimiter<K> {
    burst: u32,
    window: Duration,
    max_peers: usize,
    peers: HashMap<K, LogWindow>,
    /// Suppressed counts of windows evicted to make room, not yet reported.
    ended: Vec<(K, u64)>,
    overflow: u64,
}

#[derive(Debug, Clone, Copy)]
struct LogWindow {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDecision {
    /// Write the line.
    pub log: bool,
    /// Before it, report this many suppressed lines of the same peer (0: nothing to report).
    pub suppressed_before: u64,
}

impl<K: Eq + Hash + Clone> LogLimiter<K> {
    pub fn new(burst: u32, window: Duration, max_peers: usize) -> Self {
        Self {
            burst: burst.max(1),
            window,
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
            ended: Vec::new(),
            overflow: 0,
        }
    }

    /// One line from `peer` at `now`.
    pub fn check(&mut self, peer: &K, now: Instant) -> LogDecision {
        if let Some(w) = self.peers.get_mut(peer) {
            if now.saturating_duration_since(w.start) >= self.window {
                let s = w.suppressed;
                *w = LogWindow {
                    start: now,
                    logged: 1,
                    suppressed: 0,
                };
                return LogDecision {
                    log: true,
                    suppressed_before: s,
                };
            }
            if w.logged < self.burst {
                w.logged += 1;
                return LogDecision {
                    log: true,
                    suppressed_before: 0,
                };
            }
            w.suppressed += 1;
            return LogDecision {
                log: false,
                suppressed_before: 0,
            };
        }
        if self.peers.len() >= self.max_peers {
            self.evict(now);
        }
        if self.peers.len() >= self.max_peers {
            self.overflow += 1;
            return LogDecision {
                log: false,
                suppressed_before: 0,
            };
        }
        self.peers.insert(
            peer.clone(),
            LogWindow {
                start: now,
                logged: 1,
                suppressed: 0,
            },
        );
        LogDecision {
            log: true,
            suppressed_before: 0,
        }
    }

    /// Forgets the windows that are over, keeping their suppressed counts for [`due`].
    fn evict(&mut self, now: Instant) {
        let window = self.window;
        let mut ended = std::mem::take(&mut self.ended);
        self.peers.retain(|k, w| {
            let over = now.saturating_duration_since(w.start) >= window;
            if over && w.suppressed > 0 {
                ended.push((k.clone(), w.suppressed));
            }
            !over
        });
        // Bounded too: past `max_peers` pending summaries, counts merge into the overflow.
        while ended.len() > self.max_peers {
            self.overflow += ended.pop().map_or(0, |e| e.1);
        }
        self.ended = ended;
    }

    /// The summaries due at `now`: peers whose window is over with lines suppressed (each count
    /// reported once; the window is forgotten), and the overflow count (lines of peers beyond
    /// `max_peers`). Call about once per window.
    pub fn due(&mut self, now: Instant) -> (Vec<(K, u64)>, u64) {
        self.evict(now);
        (
            std::mem::take(&mut self.ended),
            std::mem::take(&mut self.overflow),
        )
    }
}

/// What every connection's threads share.
struct Shared {
    pipeline: Arc<Pipeline>,
    model_id: String,
    /// The server's slots (gRPC sessions of every model take them too).
    slots: Arc<crate::Slots>,
    gate: Arc<Gate>,
    rt: tokio::runtime::Handle,
    limits: Limits,
    conns: AtomicUsize,
    stopping: AtomicBool,
    log: Mutex<LogLimiter<u32>>,
}

#[derive(Debug, Clone, Copy)]
enum Level {
    Info,
    Warn,
}

impl Shared {
    /// A line caused by a peer, rate-limited per peer uid.
    fn peer_log(&self, level: Level, peer: &PeerCred, msg: std::fmt::Arguments<'_>) {
        let d = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&peer.uid, Instant::now());
        if d.suppressed_before > 0 {
            tracing::warn!(
                peer_uid = peer.uid,
                suppressed = d.suppressed_before,
                "bridge: suppressed {} more lines from this peer (at most {LOG_BURST} per {} s)",
                d.suppressed_before,
                LOG_WINDOW.as_secs()
            );
        }
        if d.log {
            match level {
                Level::Info => {
                    tracing::info!(peer_uid = peer.uid, peer_pid = peer.pid, "bridge: {msg}")
                }
                Level::Warn => {
                    tracing::warn!(peer_uid = peer.uid, peer_pid = peer.pid, "bridge: {msg}")
                }
            }
        }
    }

    /// Refuses `conn` (logged, counted) with a reason the client sees.
    fn refuse(
        &self,
        conn: LinkConn,
        peer: &PeerCred,
        code: RefusalCode,
        why: &str,
    ) -> Result<(), LinkError> {
        metrics::counter!("aic_bridge_refused_total", "reason" => code.name()).increment(1);
        let level = match code {
            RefusalCode::Unauthenticated | RefusalCode::Forbidden => Level::Warn,
            _ => Level::Info,
        };
        self.peer_log(level, peer, format_args!("refused ({code}): {why}"));
        conn.refuse(code, why)
    }

    /// The stream's API key through the control gate (as a gRPC `x-api-key` would be).
    fn authenticate(&self, key: &LinkKey) -> Result<KeyGrant, (RefusalCode, String)> {
        let mut md = tonic::metadata::MetadataMap::new();
        if !key.is_empty() {
            match tonic::metadata::MetadataValue::try_from(key.as_str()) {
                Ok(v) => {
                    md.insert("x-api-key", v);
                }
                Err(_) => {
                    return Err((
                        RefusalCode::Unauthenticated,
                        "invalid API key: not printable ASCII".into(),
                    ));
                }
            }
        }
        match self.rt.block_on(self.gate.authenticate(&md)) {
            Ok(g) => Ok(g),
            Err(st) if key.is_empty() && st.code() == tonic::Code::Unauthenticated => Err((
                RefusalCode::Unauthenticated,
                "missing API key: the bridge must send one (`aic attach janus --api-key`, or \
                 AIC_API_KEY)"
                    .into(),
            )),
            Err(st) => Err((code_of(&st), st.message().to_owned())),
        }
    }
}

fn code_of(st: &tonic::Status) -> RefusalCode {
    match st.code() {
        tonic::Code::Unauthenticated => RefusalCode::Unauthenticated,
        tonic::Code::PermissionDenied => RefusalCode::Forbidden,
        tonic::Code::ResourceExhausted => RefusalCode::Limit,
        tonic::Code::InvalidArgument => RefusalCode::Invalid,
        tonic::Code::Unavailable => RefusalCode::Unavailable,
        _ => RefusalCode::Other,
    }
}

fn engine_code(e: &EngineError) -> RefusalCode {
    match e {
        EngineError::Full(_) => RefusalCode::Limit,
        EngineError::Level { .. } => RefusalCode::Invalid,
        _ => RefusalCode::Other,
    }
}

/// One served connection; the count drops when its last thread is done.
struct ConnSlot(Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let n = self.0.conns.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("aic_bridge_connections").set(n as f64);
    }
}

/// The running link server. Dropping it stops accepting and removes the socket file.
pub struct BridgeServer {
    listener: Arc<LinkListener>,
    shared: Arc<Shared>,
    summaries: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BridgeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeServer")
            .field("path", &self.listener.path())
            .finish_non_exhaustive()
    }
}

impl Drop for BridgeServer {
    fn drop(&mut self) {
        // Wakes the accept thread (it exits, dropping its clone); the socket file goes now, not
        // with the last clone, so a new server may bind the path at once.
        self.shared.stopping.store(true, Ordering::Release);
        self.summaries.abort();
        self.listener.shutdown();
        let _ = std::fs::remove_file(self.listener.path());
    }
}

/// Starts the link server; call from inside the server's tokio runtime (key checks run on it).
pub fn start(
    path: &Path,
    pipeline: Arc<Pipeline>,
    model_id: String,
    slots: Arc<crate::Slots>,
    gate: Arc<Gate>,
    limits: Limits,
) -> Result<BridgeServer> {
    let rt = tokio::runtime::Handle::try_current()
        .context("the bridge server needs the server's tokio runtime")?;
    let listener = Arc::new(
        LinkListener::bind(path)
            .with_context(|| format!("cannot listen for the bridge on {}", path.display()))?,
    );
    let shared = Arc::new(Shared {
        pipeline,
        model_id,
        slots,
        gate,
        rt: rt.clone(),
        limits,
        conns: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        log: Mutex::new(LogLimiter::new(LOG_BURST, LOG_WINDOW, 1024)),
    });
    // Summaries of peers that went quiet while suppressed.
    let sh = shared.clone();
    let summaries = rt.spawn(async move {
        let mut tick = tokio::time::interval(LOG_WINDOW);
        loop {
            tick.tick().await;
            let (due, overflow) = sh
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .due(Instant::now());
            for (uid, n) in due {
                tracing::warn!(peer_uid = uid, suppressed = n,
                    "bridge: suppressed {n} more lines from this peer (at most {LOG_BURST} per {} s)",
                    LOG_WINDOW.as_secs());
            }
            if overflow > 0 {
                tracing::warn!(suppressed = overflow, "bridge: suppressed {overflow} lines from peers beyond the 1024 tracked");
            }
        }
    });
    let (l, sh) = (listener.clone(), shared.clone());
    std::thread::Builder::new()
        .name("aic-bridge-accept".into())
        .spawn(move || accept_loop(&l, &sh))?;
    Ok(BridgeServer {
        listener,
        shared,
        summaries,
    })
}

fn accept_loop(l: &LinkListener, sh: &Arc<Shared>) {
    loop {
        let conn = match l.accept() {
            Ok(c) => c,
            Err(_) if sh.stopping.load(Ordering::Acquire) => return,
            Err(e) => {
                // Out of descriptors or memory: keep serving the streams already open, retry.
                let p = PeerCred {
                    uid: UNKNOWN_UID,
                    gid: UNKNOWN_UID,
                    pid: 0,
                };
                sh.peer_log(Level::Warn, &p, format_args!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = match conn.peer() {
            Ok(p) => p,
            Err(e) => {
                let p = PeerCred {
                    uid: UNKNOWN_UID,
                    gid: UNKNOWN_UID,
                    pid: 0,
                };
                let why = format!("cannot read the peer's credentials: {e}");
                let _ = sh.refuse(conn, &p, RefusalCode::Other, &why);
                continue;
            }
        };
        let allowed = &sh.limits.allowed_uids;
        if !allowed.is_empty() && !allowed.contains(&peer.uid) {
            let why = format!("uid {} may not use this bridge socket", peer.uid);
            let _ = sh.refuse(conn, &peer, RefusalCode::Forbidden, &why);
            continue;
        }
        // Only this thread adds, so the check and the add cannot race past the cap.
        let n = sh.conns.load(Ordering::Acquire);
        if n >= sh.limits.max_conns {
            let why = format!(
                "the pipeline serves at most {} bridge connections at once; retry later",
                sh.limits.max_conns
            );
            let _ = sh.refuse(conn, &peer, RefusalCode::Limit, &why);
            continue;
        }
        sh.conns.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("aic_bridge_connections").set((n + 1) as f64);
        let slot = Arc::new(ConnSlot(sh.clone()));
        let sh2 = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("aic-bridge-conn".into())
            .spawn(move || match serve_conn(conn, &sh2, peer, &slot) {
                Ok(()) | Err(LinkError::PeerGone) => {}
                Err(e) => sh2.peer_log(Level::Warn, &peer, format_args!("stream ended: {e}")),
            });
        if let Err(e) = spawned {
            // The closure (and with it the connection and its slot) was dropped.
            tracing::error!(error = %e, "bridge: cannot start a connection thread");
        }
    }
}

/// Checks a link config and turns it into the pipeline stream's config.
fn stream_config(c: &LinkConfig) -> Result<StreamConfig, String> {
    let budget_ms = match c.latency_budget_ms {
        0 => 40,
        ms @ 20..=1000 => ms,
        ms => {
            return Err(format!(
                "latency_budget_ms {ms} not in 20..=1000 (0 = default)"
            ));
        }
    };
    let kbps = match c.reference_opus_kbps {
        0 => 16,
        k @ 6..=510 => k,
        k => {
            return Err(format!(
                "reference_opus_kbps {k} not in 6..=510 (0 = default)"
            ));
        }
    };
    let mut cfg = StreamConfig::transcode(c.level);
    cfg.budget = Duration::from_millis(u64::from(budget_ms));
    cfg.fallback_bitrate_bps = kbps * 1000;
    Ok(cfg)
}

fn serve_conn(
    mut conn: LinkConn,
    sh: &Arc<Shared>,
    peer: PeerCred,
    slot: &Arc<ConnSlot>,
) -> Result<(), LinkError> {
    let (cfg, key) = match conn.request(REQUEST_WAIT)? {
        Request::Hello => return conn.reply_hello(&sh.model_id),
        Request::Open { config, api_key } => (config, api_key),
    };
    // The key first: nothing else is said to a caller without a valid one.
    let grant = match sh.authenticate(&key) {
        Ok(g) => g,
        Err((code, why)) => return sh.refuse(conn, &peer, code, &why),
    };
    let stream_cfg = match stream_config(&cfg) {
        Ok(c) => c,
        Err(why) => return sh.refuse(conn, &peer, RefusalCode::Invalid, &why),
    };
    // Policy (AIC on, level cap) and the key's concurrent sessions: one link stream is one
    // session.
    let ticket = match sh.gate.admit(
        &grant,
        Want::Encode {
            level: u32::from(cfg.level),
        },
    ) {
        Ok(t) => t,
        Err(st) => {
            let why = format!("API key {}: {}", grant.key_id, st.message());
            return sh.refuse(conn, &peer, code_of(&st), &why);
        }
    };
    let ref_bytes = f64::from(stream_cfg.fallback_bitrate_bps) / 8.0 * 0.02;
    // One of the server's slots (shared with the gRPC sessions of every model), then the
    // pipeline's own; both are held until the reader and the writer are done.
    let (push, outputs, server_slot) = match sh.slots.open(&sh.pipeline, stream_cfg) {
        Ok(s) => s,
        Err(e) => return sh.refuse(conn, &peer, engine_code(&e), &e.to_string()),
    };
    let (mut rx, mut tx) = conn.accept_open(&sh.model_id)?;
    tracing::debug!(peer_uid = peer.uid, peer_pid = peer.pid, key = %ticket.key_id,
        level = cfg.level, "bridge: stream opened");
    let counters = ticket.meter.counters.clone();
    // The reader owns the stream (dropping it ends the stream once drained); the writer only
    // hands spent outputs back through it while it lives.
    let push = Arc::new(push);
    let recycle = Arc::downgrade(&push);
    // Reader → writer, one per frame pushed: the client's seq and the arrival. Bounded at
    // IN_FLIGHT, so it is also the credit: the reader blocks while IN_FLIGHT frames are inside.
    let (credit_tx, credit_rx) = mpsc::sync_channel::<InFlight>(IN_FLIGHT);
    // Writer → reader: the PCM vectors of spent outputs, for the next frames in.
    let (spare_tx, spare_rx) = mpsc::sync_channel::<Vec<f32>>(IN_FLIGHT + 1);
    let level = cfg.level;
    let (sh2, slot2, server_slot2) = (sh.clone(), slot.clone(), server_slot.clone());
    std::thread::Builder::new()
        .name("aic-bridge-writer".into())
        .spawn(move || {
            let w = Writer {
                level,
                ref_bytes,
                ticket: &ticket,
                sh: &sh2,
                peer: &peer,
            };
            w.run(outputs, credit_rx, &recycle, &spare_tx, &mut tx);
            // The session ends here: its key's slot is free, its usage pending for the flush.
            tracing::debug!(peer_uid = peer.uid, peer_pid = peer.pid, key = %ticket.key_id,
                "bridge: stream ended");
            drop(ticket);
            drop(slot2);
            drop(server_slot2);
        })?;
    // This thread is the reader.
    let mut pcm = Vec::with_capacity(FRAME_16K);
    let mut pushed = 0u64;
    loop {
        let meta = match rx.recv(&mut pcm, Duration::from_secs(3600)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(LinkError::PeerGone) => break,
            Err(e @ LinkError::Protocol(_)) => {
                sh.peer_log(Level::Warn, &peer, format_args!("dropped a frame: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let arrived = Instant::now();
        if pcm.len() != FRAME_16K {
            sh.peer_log(
                Level::Warn,
                &peer,
                format_args!(
                    "dropped frame {}: {} samples, not {FRAME_16K}",
                    meta.seq,
                    pcm.len()
                ),
            );
            continue;
        }
        let f = InFlight {
            stream_seq: pushed,
            client_seq: meta.seq,
            arrived,
        };
        if credit_tx.send(f).is_err() {
            break; // the writer ended: the client is gone
        }
        let mut x = spare_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FRAME_16K));
        x.clear();
        x.extend(pcm.iter().map(|&s| f32::from(s) / 32768.0));
        if push.push_pcm(x).is_err() {
            break;
        }
        pushed += 1;
        counters.bytes_in((2 * FRAME_16K) as u64);
    }
    Ok(()) // dropping `push` ends the pipeline stream once drained; the writer follows
}

/// One frame inside the pipeline.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Its position in the pipeline stream (`Output::seq`).
    stream_seq: u64,
    client_seq: u64,
    arrived: Instant,
}

/// One encoded frame of `n` bytes: 20 ms encoded, the bytes out, and the saving against Opus at
/// `ref_bytes` per frame (as the gRPC encode path meters it).
fn meter_encoded(c: &SessionCounters, n: usize, ref_bytes: f64) {
    let saved = (ref_bytes - n as f64).max(0.0) as u64;
    c.encoded_ms(20);
    c.bytes_out(n as u64);
    c.bytes_saved(saved);
}

fn to_i16(x: &[f32], out: &mut Vec<i16>) {
    out.clear();
    out.extend(
        x.iter()
            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16),
    );
}

/// Pipeline outputs → ring, one [`FrameOut`] per frame in.
struct Writer<'a> {
    level: u8,
    ref_bytes: f64,
    ticket: &'a Ticket,
    sh: &'a Shared,
    peer: &'a PeerCred,
}

impl Writer<'_> {
    fn run(
        &self,
        outputs: Receiver<Output>,
        credits: Receiver<InFlight>,
        recycle: &Weak<StreamSender>,
        spare: &mpsc::SyncSender<Vec<f32>>,
        tx: &mut aic_sfu_bridge::link::ServerSender,
    ) {
        let counters = &self.ticket.meter.counters;
        let mut out = FrameOut::default();
        // Ends when the stream is closed (the reader dropped it) and drained.
        for mut o in outputs {
            // Transcode outputs come in input order, one per frame pushed; a frame the engine
            // refused has no output, and its credit is skipped here.
            let f = loop {
                match credits.recv() {
                    Ok(f) if f.stream_seq < o.seq => continue,
                    Ok(f) => break Some(f),
                    Err(_) => break None,
                }
            };
            let Some(f) = f.filter(|f| f.stream_seq == o.seq) else {
                return;
            };
            let (fallback, bytes) = match &o.payload {
                Payload::Aic(b) => (false, b.as_slice()),
                Payload::OpusFallback(b) => (true, b.as_slice()),
                // Not produced by a transcode stream.
                Payload::Pcm(_) | Payload::Concealed(_) => (true, &[][..]),
            };
            meter_encoded(counters, bytes.len(), self.ref_bytes);
            counters.decoded_ms(20);
            out.seq = f.client_seq;
            out.level = if fallback { 0 } else { self.level };
            out.fallback = fallback;
            out.payload.clear();
            out.payload.extend_from_slice(bytes);
            // The frame's PCM: the AIC frame through the decoder, or the fallback through
            // libopus (both done by the engine).
            to_i16(&o.decoded, &mut out.pcm16k);
            out.pcm16k.resize(FRAME_16K, 0);
            out.pipeline_us = f.arrived.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            let _ = spare.try_send(std::mem::take(&mut o.decoded));
            if let Some(s) = recycle.upgrade() {
                s.recycle(o);
            }
            match tx.send(&out, WRITE_WAIT) {
                Ok(true) => {}
                Ok(false) => self.sh.peer_log(
                    Level::Warn,
                    self.peer,
                    format_args!("client not reading, dropped frame {}", out.seq),
                ),
                Err(_) => return, // gone: dropping our receivers ends the pipeline stream
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> (LogLimiter<u32>, Instant) {
        (
            LogLimiter::new(3, Duration::from_secs(10), 4),
            Instant::now(),
        )
    }

    #[test]
    fn a_burst_per_window_then_one_summary_with_the_next_line() {
        let (mut l, t0) = lim();
        let logged: Vec<bool> = (0..10)
            .map(|i| l.check(&7, t0 + Duration::from_millis(i * 100)).log)
            .collect();
        assert_eq!(
            logged,
            [
                true, true, true, false, false, false, false, false, false, false
            ]
        );
        // Another peer is not affected.
        assert!(l.check(&8, t0 + Duration::from_secs(1)).log);
        // The next window: the line is written, after a summary of the 7 suppressed.
        let d = l.check(&7, t0 + Duration::from_secs(10));
        assert_eq!(
            d,
            LogDecision {
                log: true,
                suppressed_before: 7
            }
        );
        // Reported once: the window after that starts clean.
        assert_eq!(
            l.check(&7, t0 + Duration::from_secs(11)).suppressed_before,
            0
        );
    }

    #[test]
    fn a_peer_that_goes_quiet_gets_its_summary_from_due_once() {
        let (mut l, t0) = lim();
        for i in 0..5 {
            l.check(&1, t0 + Duration::from_millis(i));
        }
        for i in 0..2 {
            l.check(&2, t0 + Duration::from_millis(i)); // within its burst: nothing to report
        }
        assert_eq!(
            l.due(t0 + Duration::from_secs(5)),
            (vec![], 0),
            "windows not over yet"
        );
        let (due, overflow) = l.due(t0 + Duration::from_secs(10));
        assert_eq!((due, overflow), (vec![(1, 2)], 0));
        assert_eq!(
            l.due(t0 + Duration::from_secs(30)),
            (vec![], 0),
            "only once"
        );
        // Forgotten: the peer starts a fresh window with no summary.
        assert_eq!(
            l.check(&1, t0 + Duration::from_secs(31)),
            LogDecision {
                log: true,
                suppressed_before: 0
            }
        );
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let (mut l, t0) = lim();
        for p in 0..4 {
            assert!(l.check(&p, t0).log);
        }
        // A fifth peer while the four windows run: suppressed, counted as overflow.
        assert!(!l.check(&99, t0 + Duration::from_secs(1)).log);
        assert!(!l.check(&98, t0 + Duration::from_secs(1)).log);
        // Once the windows are over there is room again.
        assert!(l.check(&99, t0 + Duration::from_secs(10)).log);
        let (due, overflow) = l.due(t0 + Duration::from_secs(10));
        assert!(due.is_empty());
        assert_eq!(overflow, 2);
    }

    #[test]
    fn refusal_codes_follow_the_grpc_status() {
        use tonic::Status;
        assert_eq!(
            code_of(&Status::unauthenticated("x")),
            RefusalCode::Unauthenticated
        );
        assert_eq!(
            code_of(&Status::permission_denied("x")),
            RefusalCode::Forbidden
        );
        assert_eq!(
            code_of(&Status::resource_exhausted("x")),
            RefusalCode::Limit
        );
        assert_eq!(code_of(&Status::unavailable("x")), RefusalCode::Unavailable);
        assert_eq!(engine_code(&EngineError::Full(4)), RefusalCode::Limit);
    }
}
