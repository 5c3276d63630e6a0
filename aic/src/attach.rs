//! `aic attach janus`: the bridge process between a Janus SFU and the AIC pipeline.
//!
//! Control (Janus HTTP API, [`crate::janus`]): find the publisher's audio stream in the
//! VideoRoom, `rtp_forward` it to this process' UDP socket, create a Streaming mountpoint
//! (RTP, Opus, PT 111) that any WebRTC client can watch, keep the session alive, and on exit
//! or SIGINT/SIGTERM stop the forward and destroy what was created.
//!
//! Media (one thread, the sans-IO pieces of `aic-sfu-bridge` driven by the real clock):
//! RTP in → [`Ingest`] (jitter buffer, Opus decode to 16 kHz, FEC/PLC) → the pipeline
//! ([`PipelineLink`]: AIC encode, then AIC decode) → [`OpusEgress`] (the AIC-decoded speech as
//! Opus into the mountpoint) and, optionally, [`AicEgress`] (the AIC frames as AIC RTP to a
//! UDP destination).
//!
//! The pipeline is reached through [`PipelineLink`]: in this process (`--pipeline inproc`, the
//! single-box deployment) or, with the shm link, another process (`aic serve --bridge-socket`).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineConfig, Payload, StreamConfig};
use aic_pipeline::model::AicModel;
use aic_sfu_bridge::egress::{AicEgress, OpusEgress, RtpStreamParams};
use aic_sfu_bridge::ingest::{Ingest, IngestConfig, IngestStats};
use aic_sfu_bridge::jitter::JitterConfig;
use aic_sfu_bridge::link;
use aic_sfu_bridge::media::{FRAME_16K, f32_to_i16, i16_to_f32};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::janus::Janus;

/// What `aic attach janus` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Janus HTTP API root, e.g. `http://127.0.0.1:8088/janus`.
    pub url: String,
    pub room: u64,
    pub publisher: u64,
    /// The publisher's audio mid; found through the room when absent.
    pub mid: Option<String>,
    /// `inproc`, or the `aic serve --bridge-socket` path.
    pub pipeline: String,
    /// Sent when opening the shm link's stream (`--api-key`, `AIC_API_KEY`); `Debug` hides it.
    pub api_key: link::LinkKey,
    pub model_dir: PathBuf,
    pub level: u8,
    pub budget_ms: u32,
    /// Streaming mountpoint to create (id).
    pub mountpoint: u64,
    /// Where the AIC RTP goes (plain UDP), if anywhere.
    pub aic_dest: Option<SocketAddr>,
    pub aic_pt: u8,
    pub aic_ext_id: u8,
    pub opus_kbps: u32,
    pub jitter_ms: u32,
    /// How long to wait for the publisher to appear.
    pub wait: Duration,
    /// Stop after this long (None: until a signal).
    pub duration: Option<Duration>,
    pub summary: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// The pipeline link.

/// One processed frame back from the pipeline (reused by the caller): the link's own type, so
/// the shm link receives straight into it.
pub use aic_sfu_bridge::link::FrameOut;

#[derive(Debug)]
pub enum LinkFailure {
    /// The pipeline is behind (its queue is full): this frame is dropped.
    Full,
    /// The pipeline ended or died: the bridge detaches.
    PeerGone,
    Other(String),
}

impl std::fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkFailure::Full => f.write_str("the pipeline is behind (its queue is full)"),
            LinkFailure::PeerGone => f.write_str("the pipeline is gone"),
            LinkFailure::Other(e) => f.write_str(e),
        }
    }
}

/// A pipeline stream: 20 ms frames of 16 kHz PCM in, AIC frames + their decoded PCM out.
pub trait PipelineLink {
    fn try_send(&mut self, seq: u64, pcm16k: &[i16], concealed: bool) -> Result<(), LinkFailure>;
    /// The next output, waiting at most `timeout`; false on timeout.
    fn recv_into(&mut self, out: &mut FrameOut, timeout: Duration) -> Result<bool, LinkFailure>;
    fn model_id(&self) -> &str;
}

/// The pipeline in this process: one encode stream, and a thread that decodes each AIC frame
/// it produces on a decode stream (Opus fallback frames are decoded with libopus), so the
/// output is exactly what an AIC receiver hears.
pub struct InprocLink {
    enc: StreamSender,
    out: Receiver<FrameOut>,
    model_id: String,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    // Keeps the workers alive as long as the link.
    _pipeline: Arc<Pipeline>,
}

const INPROC_MAX_IN_FLIGHT: usize = 8;

impl InprocLink {
    pub fn open(model_dir: &std::path::Path, level: u8, budget_ms: u32) -> Result<Self> {
        let model = Arc::new(AicModel::load(model_dir, 1).context("loading the AIC model")?);
        let model_id = model.manifest.model_id.clone();
        let pipeline = Arc::new(Pipeline::start_workers(
            vec![model],
            EngineConfig {
                max_batch: 4,
                ..Default::default()
            },
        ));
        let budget = Duration::from_millis(u64::from(budget_ms.max(10)));
        let enc = pipeline
            .open(StreamConfig {
                budget,
                ..StreamConfig::encode(level)
            })
            .map_err(|e| anyhow!("opening the encode stream: {e}"))?;
        let dec = pipeline
            .open(StreamConfig {
                budget,
                ..StreamConfig::decode()
            })
            .map_err(|e| anyhow!("opening the decode stream: {e}"))?;
        let (enc_tx, enc_rx) = enc.split();
        let (dec_tx, dec_rx) = dec.split();
        let (tx, rx) = mpsc::sync_channel::<FrameOut>(64);
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut opus = opusic_fallback_decoder()?;
        std::thread::Builder::new()
            .name("aic-inproc-link".into())
            .spawn(move || {
                use aic_codec::Decoder as _;
                let mut pcm_f = Vec::with_capacity(FRAME_16K);
                // Ends when the encode stream ends (its sender dropped with the link).
                while let Ok(o) = enc_rx.recv() {
                    let mut f = FrameOut {
                        seq: o.seq,
                        level,
                        pcm16k: vec![0; FRAME_16K],
                        ..Default::default()
                    };
                    let mut us = o.latency.as_micros() as u32;
                    match o.payload {
                        Payload::Aic(frame) => {
                            if dec_tx.push_aic(Some(frame.clone())).is_err() {
                                break;
                            }
                            let Ok(d) = dec_rx.recv() else { break };
                            us += d.latency.as_micros() as u32;
                            if let Payload::Pcm(p) | Payload::Concealed(p) = d.payload {
                                f32_to_i16(&p, &mut f.pcm16k);
                            }
                            f.payload = frame;
                        }
                        Payload::OpusFallback(pkt) => {
                            f.fallback = true;
                            pcm_f.clear();
                            if opus.decode_frame(Some(&pkt), &mut pcm_f).is_ok() {
                                f32_to_i16(&pcm_f, &mut f.pcm16k);
                            }
                            f.payload = pkt;
                        }
                        Payload::Pcm(_) | Payload::Concealed(_) => continue,
                    }
                    f.pipeline_us = us;
                    if tx.send(f).is_err() {
                        break;
                    }
                }
            })
            .context("spawning the link thread")?;
        Ok(Self {
            enc: enc_tx,
            out: rx,
            model_id,
            in_flight,
            _pipeline: pipeline,
        })
    }
}

fn opusic_fallback_decoder() -> Result<aic_codec::opus::OpusDecoder> {
    let info = aic_codec::CodecInfo {
        codec: "opus".into(),
        model_id: String::new(),
        sample_rate: 16_000,
        frame_samples: FRAME_16K,
        delay_samples: 0,
        point: aic_codec::OperatingPoint::BitrateBps(16_000),
    };
    aic_codec::opus::OpusDecoder::new(aic_codec::opus::OpusVariant::Plain, &info)
        .map_err(|e| anyhow!("libopus: {e}"))
}

impl PipelineLink for InprocLink {
    fn try_send(&mut self, _seq: u64, pcm16k: &[i16], _concealed: bool) -> Result<(), LinkFailure> {
        if self.in_flight.load(Ordering::Relaxed) >= INPROC_MAX_IN_FLIGHT {
            return Err(LinkFailure::Full);
        }
        // The in-process pipeline API takes owned frames: one allocation per 20 ms frame.
        let mut v = vec![0f32; pcm16k.len()];
        i16_to_f32(pcm16k, &mut v);
        self.enc.push_pcm(v).map_err(|_| LinkFailure::PeerGone)?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn recv_into(&mut self, out: &mut FrameOut, timeout: Duration) -> Result<bool, LinkFailure> {
        let got = if timeout.is_zero() {
            self.out.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            self.out.recv_timeout(timeout)
        };
        match got {
            Ok(f) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                out.seq = f.seq;
                out.level = f.level;
                out.fallback = f.fallback;
                out.payload.clear();
                out.payload.extend_from_slice(&f.payload);
                out.pcm16k.clear();
                out.pcm16k.extend_from_slice(&f.pcm16k);
                out.pipeline_us = f.pipeline_us;
                Ok(true)
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err(LinkFailure::PeerGone),
        }
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }
}

/// The pipeline in another process (`aic serve --bridge-socket PATH`), over the shm link.
struct ShmLink {
    stream: link::LinkStream,
}

fn link_failure(e: link::LinkError) -> LinkFailure {
    match e {
        link::LinkError::Full => LinkFailure::Full,
        link::LinkError::PeerGone => LinkFailure::PeerGone,
        e => LinkFailure::Other(e.to_string()),
    }
}

impl PipelineLink for ShmLink {
    fn try_send(&mut self, seq: u64, pcm16k: &[i16], concealed: bool) -> Result<(), LinkFailure> {
        self.stream
            .try_send(link::FrameIn {
                seq,
                pcm16k,
                concealed,
            })
            .map_err(link_failure)
    }

    fn recv_into(&mut self, out: &mut FrameOut, timeout: Duration) -> Result<bool, LinkFailure> {
        let got = self.stream.recv_into(out, timeout).map_err(link_failure)?;
        // The link allows short frames; the packetizer takes exactly one 20 ms frame.
        out.pcm16k.resize(FRAME_16K, 0);
        Ok(got)
    }

    fn model_id(&self) -> &str {
        self.stream.model_id()
    }
}

fn open_link(o: &Options) -> Result<Box<dyn PipelineLink>> {
    match o.pipeline.as_str() {
        "inproc" => Ok(Box::new(InprocLink::open(
            &o.model_dir,
            o.level,
            o.budget_ms,
        )?)),
        path => {
            let mut client = link::LinkClient::connect(std::path::Path::new(path))
                .with_context(|| format!("connecting to the pipeline at {path}"))?
                .with_api_key(o.api_key.as_str())?;
            let stream = client
                .open(link::LinkConfig {
                    level: o.level,
                    latency_budget_ms: o.budget_ms,
                    reference_opus_kbps: 0,
                })
                .context("opening a pipeline stream")?;
            Ok(Box::new(ShmLink { stream }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Janus control.

/// What this bridge created in Janus, so it can remove exactly that.
struct JanusSide {
    janus: Arc<Janus>,
    videoroom: u64,
    streaming: u64,
    forwarder: Option<u64>,
    mountpoint: Option<u64>,
}

impl JanusSide {
    fn teardown(&mut self, room: u64, publisher: u64) {
        if let Some(id) = self.forwarder.take() {
            let r = self.janus.request(
                self.videoroom,
                json!({"request": "stop_rtp_forward", "room": room, "publisher_id": publisher, "stream_id": id}),
            );
            report("stop_rtp_forward", r.map(|_| ()));
        }
        if let Some(id) = self.mountpoint.take() {
            let r = self
                .janus
                .request(self.streaming, json!({"request": "destroy", "id": id}));
            report("destroy mountpoint", r.map(|_| ()));
        }
        report("detach videoroom", self.janus.detach(self.videoroom));
        report("detach streaming", self.janus.detach(self.streaming));
        report("destroy session", self.janus.destroy());
    }
}

fn report(what: &str, r: Result<()>) {
    if let Err(e) = r {
        eprintln!("aic attach: {what}: {e:#}");
    }
}

/// The publisher's audio mid: join the room as a passive participant, read the publisher
/// list (`joined`, then `publishers` events), leave.
fn find_audio_mid(
    j: &Janus,
    handle: u64,
    room: u64,
    publisher: u64,
    wait: Duration,
) -> Result<String> {
    j.send_async(
        handle,
        json!({"request": "join", "ptype": "publisher", "room": room, "display": "aic-bridge"}),
    )?;
    let until = Instant::now() + wait;
    let found = loop {
        if Instant::now() > until {
            break None;
        }
        let Some(ev) = j.poll_event()? else { continue };
        let data = &ev["plugindata"]["data"];
        if let Some(e) = data.get("error") {
            bail!("joining room {room}: {e}");
        }
        let mid = data["publishers"].as_array().and_then(|ps| {
            ps.iter()
                .filter(|p| p["id"].as_u64() == Some(publisher))
                .flat_map(|p| p["streams"].as_array().cloned().unwrap_or_default())
                .find(|s| s["type"] == "audio" && s["disabled"] != true)
                .and_then(|s| s["mid"].as_str().map(str::to_owned))
        });
        if let Some(m) = mid {
            break Some(m);
        }
    };
    let _ = j.send_async(handle, json!({"request": "leave"}));
    found.ok_or_else(|| {
        anyhow!(
            "publisher {publisher} has no audio stream in room {room} (waited {:.0} s)",
            wait.as_secs_f64()
        )
    })
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn setup_janus(o: &Options, rtp_in: u16, side: &mut Option<JanusSide>) -> Result<u16> {
    let janus = Arc::new(Janus::connect(&o.url).with_context(|| format!("Janus at {}", o.url))?);
    let videoroom = janus.attach("janus.plugin.videoroom")?;
    let streaming = janus.attach("janus.plugin.streaming")?;
    let s = side.insert(JanusSide {
        janus: janus.clone(),
        videoroom,
        streaming,
        forwarder: None,
        mountpoint: None,
    });
    let mid = match &o.mid {
        Some(m) => m.clone(),
        None => find_audio_mid(&janus, videoroom, o.room, o.publisher, o.wait)?,
    };
    // The mountpoint Janus listens on for our Opus.
    let opus_port = free_udp_port()?;
    janus.request(
        streaming,
        json!({
            "request": "create", "type": "rtp", "id": o.mountpoint,
            "name": format!("aic-{}-{}", o.room, o.publisher),
            "description": "AIC: the publisher's speech through the AIC codec (Opus, decoded from AIC)",
            "media": [{"type": "audio", "mid": "a", "label": "aic", "port": opus_port,
                       "pt": 111, "codec": "opus"}],
        }),
    )?;
    s.mountpoint = Some(o.mountpoint);
    let r = janus.request(
        videoroom,
        json!({
            "request": "rtp_forward", "room": o.room, "publisher_id": o.publisher,
            "host": "127.0.0.1", "host_family": "ipv4",
            "streams": [{"mid": mid, "port": rtp_in}],
        }),
    )?;
    s.forwarder = r["forwarders"]
        .as_array()
        .and_then(|f| f.first())
        .and_then(|f| f["stream_id"].as_u64());
    if s.forwarder.is_none() {
        bail!("rtp_forward: no forwarder in the reply {r}");
    }
    eprintln!(
        "aic attach: forwarding room {} publisher {} (mid {mid}) to 127.0.0.1:{rtp_in}; mountpoint {} on port {opus_port}",
        o.room, o.publisher, o.mountpoint
    );
    // Keep the session alive (Janus drops it after 60 s without traffic).
    std::thread::Builder::new()
        .name("aic-janus-keepalive".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(20));
                if janus.keepalive().is_err() {
                    break;
                }
            }
        })?;
    Ok(opus_port)
}

// ---------------------------------------------------------------------------------------------
// The media loop and its measurements.

fn stop_on_signal(stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("aic-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            stop.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}

/// CPU seconds (user + system) from a `/proc/.../stat` line.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, k): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + k) / 100.0) // USER_HZ is 100 on Linux
}

#[derive(Debug, Default)]
struct Measure {
    latency_us: Vec<u32>,
    pipeline_us: Vec<u32>,
    frames_out: u64,
    fallback: u64,
    aic_bytes: u64,
    full: u64,
    first_in: Option<Instant>,
    /// RFC 3550 reception statistics of the forwarded stream (the latest SSRC seen): what an RR
    /// block would carry. Janus' `rtp_forward` takes no RTCP back for audio, so it is reported
    /// in the summary rather than sent.
    rtcp_rx: Option<(u32, aic_sfu_bridge::rtcp::ReceiverStats)>,
}

fn quantiles(v: &mut [u32]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    let q = |p: f64| f64::from(v[((v.len() - 1) as f64 * p).round() as usize]) / 1000.0;
    json!({"p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": q(1.0), "n": v.len()})
}

struct MediaResult {
    ingest: IngestStats,
    m: Measure,
    opus_out_packets: u64,
    opus_out_bytes: u64,
    aic_packets: u64,
    wall_s: f64,
    thread_cpu_s: f64,
    process_cpu_s: f64,
    ended_by: &'static str,
}

fn media_loop(
    o: &Options,
    sock: &UdpSocket,
    opus_dest: SocketAddr,
    link: &mut dyn PipelineLink,
    model_tag: [u8; 4],
    stop: &AtomicBool,
) -> Result<MediaResult> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0x5eed);
    let mut ingest = Ingest::new(IngestConfig {
        jitter: JitterConfig {
            delay: Duration::from_millis(u64::from(o.jitter_ms)),
            ..Default::default()
        },
        payload_type: Some(111),
    })?;
    let mut opus = OpusEgress::new(
        RtpStreamParams {
            ssrc: seed | 1,
            payload_type: 111,
            first_sequence: seed as u16,
            first_timestamp: seed.rotate_left(7),
        },
        o.opus_kbps * 1000,
    )?;
    let mut aic = AicEgress::new(
        RtpStreamParams {
            ssrc: seed.rotate_left(13) | 2,
            payload_type: o.aic_pt,
            first_sequence: (seed >> 16) as u16,
            first_timestamp: seed.rotate_left(3),
        },
        o.aic_ext_id,
        model_tag,
    );
    let mut m = Measure::default();
    // Arrival time of each frame in flight, by frame index (ring: the link holds few frames).
    let mut arrivals = [(u64::MAX, None::<Instant>); 64];
    let mut pcm = [0i16; FRAME_16K];
    let mut out = FrameOut {
        payload: Vec::with_capacity(1275),
        pcm16k: Vec::with_capacity(FRAME_16K),
        ..Default::default()
    };
    let mut buf = vec![0u8; 2048];
    let mut pkt = Vec::with_capacity(1500);
    let mut in_flight = 0usize;
    let t0 = Instant::now();
    let thread_cpu0 = cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0);
    let proc_cpu0 = cpu_seconds("/proc/self/stat").unwrap_or(0.0);
    let ended_by = loop {
        if stop.load(Ordering::SeqCst) {
            break "signal";
        }
        let now = Instant::now();
        if o.duration.is_some_and(|d| now - t0 >= d) {
            break "duration";
        }
        // 1. Frames whose playout time has come go to the pipeline.
        while let Some(f) = ingest.pop(now, &mut pcm) {
            arrivals[(f.index % 64) as usize] = (f.index, f.arrived);
            match link.try_send(f.index, &pcm, f.concealed()) {
                Ok(()) => in_flight += 1,
                Err(LinkFailure::Full) => m.full += 1,
                Err(LinkFailure::PeerGone) => {
                    return finish(
                        o,
                        ingest,
                        m,
                        &opus,
                        &aic,
                        t0,
                        thread_cpu0,
                        proc_cpu0,
                        "pipeline gone",
                    );
                }
                Err(e) => return Err(anyhow!("pipeline link: {e}")),
            }
        }
        // 2. Wait for the pipeline (frames in flight) or the network, never past the next
        //    playout deadline.
        let until_due = ingest
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        if in_flight > 0 {
            let wait = until_due.min(Duration::from_millis(2));
            match link.recv_into(&mut out, wait) {
                Ok(true) => {
                    in_flight -= 1;
                    let (idx, arrived) = arrivals[(out.seq % 64) as usize];
                    opus.packetize(out.seq, &out.pcm16k, &mut pkt)?;
                    let _ = sock.send_to(&pkt, opus_dest);
                    if let Some(dest) = o.aic_dest {
                        aic.packetize(out.seq, &out.payload, out.level, out.fallback, &mut pkt)?;
                        let _ = sock.send_to(&pkt, dest);
                    }
                    let sent = Instant::now();
                    if idx == out.seq
                        && let Some(a) = arrived
                    {
                        m.latency_us.push((sent - a).as_micros() as u32);
                    }
                    m.pipeline_us.push(out.pipeline_us);
                    m.frames_out += 1;
                    m.fallback += u64::from(out.fallback);
                    m.aic_bytes += out.payload.len() as u64;
                }
                Ok(false) => {}
                Err(LinkFailure::PeerGone) => {
                    return finish(
                        o,
                        ingest,
                        m,
                        &opus,
                        &aic,
                        t0,
                        thread_cpu0,
                        proc_cpu0,
                        "pipeline gone",
                    );
                }
                Err(e) => return Err(anyhow!("pipeline link: {e}")),
            }
            sock.set_nonblocking(true)?;
        } else {
            sock.set_nonblocking(false)?;
            sock.set_read_timeout(Some(until_due.max(Duration::from_millis(1))))?;
        }
        // 3. Packets from Janus.
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let now = Instant::now();
                    m.first_in.get_or_insert(now);
                    if let Ok(p) = aic_sfu_bridge::rtp::RtpPacket::parse(&buf[..n]) {
                        if m.rtcp_rx.as_ref().is_none_or(|(ssrc, _)| *ssrc != p.ssrc) {
                            m.rtcp_rx = Some((
                                p.ssrc,
                                aic_sfu_bridge::rtcp::ReceiverStats::new(p.ssrc, 48_000),
                            ));
                        }
                        if let Some((_, rx)) = m.rtcp_rx.as_mut() {
                            rx.on_rtp(now, p.sequence, p.timestamp);
                        }
                    }
                    let _ = ingest.push(now, &buf[..n]);
                    sock.set_nonblocking(true)?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // SIGTERM/SIGINT land here; the loop's stop flag handles them.
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e).context("receiving RTP"),
            }
        }
    };
    finish(
        o,
        ingest,
        m,
        &opus,
        &aic,
        t0,
        thread_cpu0,
        proc_cpu0,
        ended_by,
    )
}

#[allow(clippy::too_many_arguments)] // the loop's state, handed over once
fn finish(
    _o: &Options,
    ingest: Ingest,
    m: Measure,
    opus: &OpusEgress,
    aic: &AicEgress,
    t0: Instant,
    thread_cpu0: f64,
    proc_cpu0: f64,
    ended_by: &'static str,
) -> Result<MediaResult> {
    let wall_s = m
        .first_in
        .map(|f| f.elapsed())
        .unwrap_or_else(|| t0.elapsed())
        .as_secs_f64();
    Ok(MediaResult {
        ingest: ingest.stats,
        opus_out_packets: opus.stats().packets,
        opus_out_bytes: opus.stats().payload_bytes,
        aic_packets: aic.stats().packets,
        m,
        wall_s,
        thread_cpu_s: cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0) - thread_cpu0,
        process_cpu_s: cpu_seconds("/proc/self/stat").unwrap_or(0.0) - proc_cpu0,
        ended_by,
    })
}

fn summary(o: &Options, model_id: &str, r: &mut MediaResult) -> Value {
    let i = &r.ingest;
    // Bitrates over the frames each side carried (20 ms each): payload bytes only, so Opus and
    // AIC are compared on what their codecs spend; RTP/UDP/IP headers are the same for both.
    let kbps = |bytes: u64, frames: u64| {
        if frames == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / (frames as f64 * 0.02) / 1000.0
        }
    };
    let publisher_kbps = kbps(i.payload_bytes, i.packets);
    let aic_kbps = kbps(r.m.aic_bytes, r.m.frames_out);
    let rtcp_rr = match r.m.rtcp_rx.as_mut() {
        None => Value::Null,
        Some((ssrc, rx)) => {
            let b = rx.report(Instant::now());
            json!({"ssrc": ssrc, "expected": rx.expected(), "received": rx.received(),
                   "cumulative_lost": b.cumulative_lost, "fraction_lost_256": b.fraction_lost,
                   "extended_highest_seq": b.extended_highest_seq,
                   "jitter_ms": f64::from(b.jitter) / 48.0})
        }
    };
    json!({
        "room": o.room, "publisher": o.publisher, "mountpoint": o.mountpoint,
        "model": model_id, "level": o.level, "pipeline": o.pipeline,
        "ended_by": r.ended_by,
        "seconds": r.wall_s,
        "rtp_in": {"packets": i.packets, "payload_bytes": i.payload_bytes, "malformed": i.malformed,
                   "wrong_payload_type": i.wrong_payload_type, "foreign_ssrc": i.foreign_ssrc,
                   "duplicates": i.duplicates, "late": i.late, "overflow": i.overflow},
        "frames": {"decoded": i.decoded, "fec": i.fec, "plc": i.plc, "decode_errors": i.decode_errors,
                   "out": r.m.frames_out, "fallback": r.m.fallback, "link_full_dropped": r.m.full},
        "rtp_out": {"opus_packets": r.opus_out_packets, "aic_packets": r.aic_packets},
        "bitrate_kbps": {"publisher_opus": publisher_kbps, "aic": aic_kbps,
                         "opus_out": kbps(r.opus_out_bytes, r.opus_out_packets),
                         "aic_vs_publisher": if publisher_kbps > 0.0 { aic_kbps / publisher_kbps } else { 0.0 }},
        "latency_rtp_in_to_rtp_out": quantiles(&mut r.m.latency_us),
        "latency_inside_pipeline": quantiles(&mut r.m.pipeline_us),
        "jitter_buffer_ms": o.jitter_ms,
        "rtcp_receiver_report": rtcp_rr,
        "cpu": {"media_thread_pct_of_core": 100.0 * r.thread_cpu_s / r.wall_s.max(1e-3),
                "process_pct_of_core": 100.0 * r.process_cpu_s / r.wall_s.max(1e-3),
                "note": "media thread = the bridge's work for this one stream; process includes the in-process pipeline when --pipeline inproc"},
    })
}

fn model_tag(o: &Options) -> [u8; 4] {
    std::fs::read_to_string(o.model_dir.join("manifest.json"))
        .ok()
        .and_then(|t| aic_codec::manifest::Manifest::from_json(&t).ok())
        .map(|m| m.model_tag())
        .unwrap_or_default()
}

pub fn run(o: &Options) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone())?;
    let mut link = open_link(o)?;
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding the RTP socket")?;
    let rtp_in = sock.local_addr()?.port();
    let mut side = None;
    let setup = setup_janus(o, rtp_in, &mut side);
    let result = setup.and_then(|opus_port| {
        let dest = SocketAddr::from(([127, 0, 0, 1], opus_port));
        eprintln!(
            "aic attach: ready (model {}, rtp in 127.0.0.1:{rtp_in})",
            link.model_id()
        );
        media_loop(o, &sock, dest, link.as_mut(), model_tag(o), &stop)
    });
    if let Some(s) = side.as_mut() {
        s.teardown(o.room, o.publisher);
        eprintln!("aic attach: detached (forward stopped, mountpoint removed)");
    }
    let mut r = result?;
    let s = summary(o, link.model_id(), &mut r);
    eprintln!("aic attach: summary {s}");
    if let Some(p) = &o.summary {
        std::fs::write(p, serde_json::to_string_pretty(&s)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
