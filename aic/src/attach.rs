//! `aic attach janus`: the bridge process between a Janus SFU and the AIC pipeline.
//!
//! Control (Janus HTTP API, [`crate::janus`]): find the publisher's audio stream in the
//! VideoRoom, `rtp_forward` it to this process' UDP socket, create a Streaming mountpoint
//! (RTP, Opus, PT 111) that any WebRTC client can watch, keep the session alive, and on exit
//! or SIGINT/SIGTERM stop the forward and destroy what was created.
//!
//! Media (one thread): [`MediaSession`], the stream's sans-IO state machine in `aic-sfu-bridge`
//! (RTP parsed once → adaptive jitter buffer and Opus decode to 16 kHz → one frame per 20 ms
//! slot to the pipeline; the pipeline's frames → Opus RTP into the mountpoint and, optionally,
//! AIC RTP to a UDP destination; receiver statistics, latency histograms), driven here by the
//! real clock: this file keeps only the sockets, the Janus HTTP client and the link.
//!
//! The pipeline is reached through [`PipelineLink`]: in this process (`--pipeline inproc`, the
//! single-box deployment) or, with the shm link, another process (`aic serve --bridge-socket`).

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineConfig, Output as PipelineOutput, Payload, StreamConfig};
use aic_pipeline::model::AicModel;
use aic_sfu_bridge::egress::RtpStreamParams;
use aic_sfu_bridge::ingest::IngestConfig;
use aic_sfu_bridge::jitter::JitterConfig;
use aic_sfu_bridge::link;
use aic_sfu_bridge::media::{FRAME_16K, f32_to_i16, i16_to_f32};
use aic_sfu_bridge::session::{
    AicTrack, Histogram, Input, MediaSession, Output, SessionConfig, Track,
};
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
    /// Also take the publisher's video through AIC (`--video`): see [`crate::video_attach`].
    pub video: Option<crate::video_attach::VideoOptions>,
    /// Record the stream (`--record`): files, HLS directories, RTMP/SRT URLs, `.aic` archives.
    pub record: Vec<String>,
    /// Opus/AAC bitrate of the recordings, b/s.
    pub record_bitrate_bps: u32,
}

// ---------------------------------------------------------------------------------------------
// Recording (`--record`, issue #13): the publisher's audio (the ingest PCM, before AIC) to the
// GStreamer outputs, and AIC's own frames (what receivers get) to `.aic` archives. Both are
// placed by frame sequence number, so gaps keep the timeline and nothing drifts; pushing never
// blocks the media path (a full queue drops and counts).

struct Recorder {
    egress: aic_egress::Egress,
    /// When the first PCM frame went to the egress (for the wall-clock check of the summary).
    first: std::cell::Cell<Option<Instant>>,
}

impl Recorder {
    fn start(o: &Options, model_id: &str) -> Result<Option<Recorder>> {
        if o.record.is_empty() {
            return Ok(None);
        }
        let outputs = o
            .record
            .iter()
            .map(|loc| {
                aic_egress::OutputSpec::parse(loc, None)
                    .and_then(|s| s.with_bitrate(o.record_bitrate_bps))
                    .with_context(|| format!("--record {loc}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cfg =
            aic_egress::EgressConfig::new(format!("{}-{}", o.room, o.publisher), outputs.clone());
        if outputs.iter().any(|s| s.format == aic_egress::Format::Aic) {
            let m = std::fs::read_to_string(o.model_dir.join("manifest.json"))
                .ok()
                .and_then(|t| aic_codec::manifest::Manifest::from_json(&t).ok())
                .filter(|m| m.model_id == model_id)
                .ok_or_else(|| {
                    anyhow!(
                        "--record *.aic: the pipeline runs model {model_id}, whose manifest is not in {} (pass --model)",
                        o.model_dir.display()
                    )
                })?;
            cfg.aic_info = Some(aic_codec::CodecInfo {
                codec: "aic".into(),
                model_id: m.model_id.clone(),
                sample_rate: m.sample_rate,
                frame_samples: m.frame_samples,
                delay_samples: m.decoder_delay_samples,
                point: aic_codec::OperatingPoint::Level(o.level),
            });
        }
        let egress = aic_egress::Egress::start(cfg).context("--record")?;
        for out in &egress.status().outputs {
            eprintln!(
                "aic attach: recording to {} ({})",
                out.location,
                out.format.name()
            );
        }
        Ok(Some(Recorder {
            egress,
            first: std::cell::Cell::new(None),
        }))
    }

    fn pcm(&self, seq: u64, pcm: &[i16]) {
        if self.first.get().is_none() {
            self.first.set(Some(Instant::now()));
        }
        self.egress.push_pcm(seq, pcm);
    }

    fn frame(&self, out: &FrameOut) {
        let packet = (!out.fallback && !out.payload.is_empty()).then_some(&out.payload[..]);
        // A packet whose decoded frame is silent codes silence: the archive fills gaps with it.
        let quiet = out.pcm16k.iter().all(|s| s.unsigned_abs() < 16);
        self.egress.push_frame(out.seq, packet, quiet);
    }

    /// Finishes every output; the summary's `record` object.
    fn stop(self) -> Value {
        let end = Instant::now();
        let wall_ms = self.first.get().map(|f| (end - f).as_millis() as u64);
        let st = self.egress.stop();
        json!({"state": st.state(), "outputs": st.outputs, "queue_dropped": st.queue_dropped,
               "wall_ms_since_first_frame": wall_ms})
    }
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

/// The pipeline in this process: one transcode stream (PCM in; per frame one output with the
/// AIC frame, or its Opus fallback, and its decoded PCM), so the output is exactly what an AIC
/// receiver hears. One hop in, one out, no thread of its own; spent outputs go back to the
/// pipeline and their PCM vectors carry the next frames in (nothing allocated per frame).
pub struct InprocLink {
    push: StreamSender,
    outputs: Receiver<PipelineOutput>,
    /// (position in the pipeline stream, the caller's seq) of the frames inside, in order:
    /// transcode outputs come in input order.
    in_flight: VecDeque<(u64, u64)>,
    pushed: u64,
    spare: Vec<Vec<f32>>,
    level: u8,
    model_id: String,
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
        let stream = pipeline
            .open(StreamConfig {
                budget: Duration::from_millis(u64::from(budget_ms.max(10))),
                ..StreamConfig::transcode(level)
            })
            .map_err(|e| anyhow!("opening the pipeline stream: {e}"))?;
        let (push, outputs) = stream.split();
        Ok(Self {
            push,
            outputs,
            in_flight: VecDeque::with_capacity(INPROC_MAX_IN_FLIGHT),
            pushed: 0,
            spare: Vec::with_capacity(INPROC_MAX_IN_FLIGHT),
            level,
            model_id,
            _pipeline: pipeline,
        })
    }
}

impl PipelineLink for InprocLink {
    fn try_send(&mut self, seq: u64, pcm16k: &[i16], _concealed: bool) -> Result<(), LinkFailure> {
        if self.in_flight.len() >= INPROC_MAX_IN_FLIGHT {
            return Err(LinkFailure::Full);
        }
        let mut v = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_16K));
        v.clear();
        v.resize(pcm16k.len(), 0.0);
        i16_to_f32(pcm16k, &mut v);
        self.push.push_pcm(v).map_err(|_| LinkFailure::PeerGone)?;
        self.in_flight.push_back((self.pushed, seq));
        self.pushed += 1;
        Ok(())
    }

    fn recv_into(&mut self, out: &mut FrameOut, timeout: Duration) -> Result<bool, LinkFailure> {
        let got = if timeout.is_zero() {
            self.outputs.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            self.outputs.recv_timeout(timeout)
        };
        let mut o = match got {
            Ok(o) => o,
            Err(RecvTimeoutError::Timeout) => return Ok(false),
            Err(RecvTimeoutError::Disconnected) => return Err(LinkFailure::PeerGone),
        };
        // A frame the engine refused has no output: skip its entry.
        while self.in_flight.front().is_some_and(|&(p, _)| p < o.seq) {
            self.in_flight.pop_front();
        }
        let Some((_, seq)) = self.in_flight.pop_front() else {
            return Err(LinkFailure::Other(format!(
                "pipeline output {} matches no frame sent",
                o.seq
            )));
        };
        let (fallback, bytes) = match &o.payload {
            Payload::Aic(b) => (false, b.as_slice()),
            Payload::OpusFallback(b) => (true, b.as_slice()),
            Payload::Pcm(_) | Payload::Concealed(_) => (true, &[][..]),
        };
        out.seq = seq;
        out.level = if fallback { 0 } else { self.level };
        out.fallback = fallback;
        out.payload.clear();
        out.payload.extend_from_slice(bytes);
        out.pcm16k.clear();
        out.pcm16k.resize(o.decoded.len(), 0);
        f32_to_i16(&o.decoded, &mut out.pcm16k);
        out.pipeline_us = o.latency.as_micros().min(u128::from(u32::MAX)) as u32;
        self.spare.push(std::mem::take(&mut o.decoded));
        self.push.recycle(o);
        Ok(true)
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
        // Short frames (the link allows them) are padded by the session.
        self.stream.recv_into(out, timeout).map_err(link_failure)
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
    forwarders: Vec<u64>,
    mountpoint: Option<u64>,
}

impl JanusSide {
    fn teardown(&mut self, room: u64, publisher: u64) {
        for id in std::mem::take(&mut self.forwarders) {
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

/// The publisher's streams this bridge takes.
struct PublisherMids {
    audio: String,
    /// (mid, codec) of its first video stream, if it has one.
    video: Option<(String, String)>,
}

/// The publisher's audio mid (and its video's): join the room as a passive participant, read
/// the publisher list (`joined`, then `publishers` events), leave.
fn find_mids(
    j: &Janus,
    handle: u64,
    room: u64,
    publisher: u64,
    wait: Duration,
    want_video: bool,
) -> Result<PublisherMids> {
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
        let streams: Vec<Value> = data["publishers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["id"].as_u64() == Some(publisher))
                    .flat_map(|p| p["streams"].as_array().cloned().unwrap_or_default())
                    .filter(|s| s["disabled"] != true)
                    .collect()
            })
            .unwrap_or_default();
        let mid_of = |kind: &str| {
            streams.iter().find(|s| s["type"] == kind).and_then(|s| {
                Some((
                    s["mid"].as_str()?.to_owned(),
                    s["codec"].as_str()?.to_owned(),
                ))
            })
        };
        if let Some((audio, _)) = mid_of("audio") {
            let video = mid_of("video");
            // Its video may be announced a moment after its audio.
            if !want_video || video.is_some() || Instant::now() + wait / 2 > until {
                break Some(PublisherMids { audio, video });
            }
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

/// The video track's sockets made by [`setup_janus`].
struct VideoSetup {
    rtp_in: UdpSocket,
    rtcp: UdpSocket,
}

/// What [`setup_janus`] made: the mountpoint's Opus port, and the video track's ports.
struct Setup {
    opus_port: u16,
    video: Option<crate::video_attach::VideoPorts>,
}

fn setup_janus(
    o: &Options,
    rtp_in: u16,
    video: Option<VideoSetup>,
    side: &mut Option<JanusSide>,
) -> Result<Setup> {
    let janus = Arc::new(Janus::connect(&o.url).with_context(|| format!("Janus at {}", o.url))?);
    let videoroom = janus.attach("janus.plugin.videoroom")?;
    let streaming = janus.attach("janus.plugin.streaming")?;
    let s = side.insert(JanusSide {
        janus: janus.clone(),
        videoroom,
        streaming,
        forwarders: Vec::new(),
        mountpoint: None,
    });
    let mids = match (&o.mid, o.video.is_some()) {
        (Some(m), false) => PublisherMids {
            audio: m.clone(),
            video: None,
        },
        _ => {
            let mut found = find_mids(
                &janus,
                videoroom,
                o.room,
                o.publisher,
                o.wait,
                o.video.is_some(),
            )?;
            if let Some(m) = &o.mid {
                found.audio = m.clone();
            }
            found
        }
    };
    let mid = mids.audio.clone();
    let video = match (video, &mids.video, &o.video) {
        (Some(v), Some((vmid, codec)), Some(vo)) => {
            let input = match codec.as_str() {
                "vp8" => aic_video::VideoCodec::Vp8,
                "h264" => aic_video::VideoCodec::H264,
                c => bail!("the publisher's video is {c}: AIC takes VP8 or H.264"),
            };
            Some((v, vmid.clone(), input, vo))
        }
        (Some(_), None, _) => bail!(
            "--video: publisher {} has no video stream in room {}",
            o.publisher,
            o.room
        ),
        _ => None,
    };
    // The mountpoint Janus listens on for our Opus (and AV1).
    let opus_port = free_udp_port()?;
    let mut media = vec![
        json!({"type": "audio", "mid": "a", "label": "aic", "port": opus_port,
                                "pt": 111, "codec": "opus"}),
    ];
    let (vport, vrtcp) = (free_udp_port()?, free_udp_port()?);
    if let Some((_, _, _, vo)) = &video {
        media.push(
            json!({"type": "video", "mid": "v", "label": "aic-video", "port": vport,
                          "rtcpport": vrtcp, "pt": vo.pt, "codec": vo.encoder.codec().name()}),
        );
    }
    janus.request(
        streaming,
        json!({
            "request": "create", "type": "rtp", "id": o.mountpoint,
            "name": format!("aic-{}-{}", o.room, o.publisher),
            "description": "AIC: the publisher's speech through the AIC codec (Opus, decoded from AIC), and its video through AIC's encoder",
            "media": media,
        }),
    )?;
    s.mountpoint = Some(o.mountpoint);
    let mut streams = vec![json!({"mid": mid, "port": rtp_in})];
    if let Some((v, vmid, _, _)) = &video {
        streams.push(json!({"mid": vmid, "port": v.rtp_in.local_addr()?.port(),
                            "rtcp_port": v.rtcp.local_addr()?.port()}));
    }
    let r = janus.request(
        videoroom,
        json!({
            "request": "rtp_forward", "room": o.room, "publisher_id": o.publisher,
            "host": "127.0.0.1", "host_family": "ipv4",
            "streams": streams,
        }),
    )?;
    let forwarders = r["forwarders"].as_array().cloned().unwrap_or_default();
    s.forwarders = forwarders
        .iter()
        .filter_map(|f| f["stream_id"].as_u64())
        .collect();
    if s.forwarders.len() != 1 + usize::from(video.is_some()) {
        bail!("rtp_forward: not every stream got a forwarder in the reply {r}");
    }
    let video = video.map(|(v, vmid, input, _)| {
        let forwarder_rtcp = forwarders
            .iter()
            .find(|f| f["type"] == "video")
            .and_then(|f| f["local_rtcp_port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        eprintln!(
            "aic attach: forwarding video (mid {vmid}, {}) to 127.0.0.1:{}; AV1 into the mountpoint on port {vport}",
            input.name(),
            v.rtp_in.local_addr().map(|a| a.port()).unwrap_or(0)
        );
        crate::video_attach::VideoPorts {
            rtp_in: v.rtp_in,
            rtcp: v.rtcp,
            forwarder_rtcp,
            mount_rtp: SocketAddr::from(([127, 0, 0, 1], vport)),
            mount_rtcp: SocketAddr::from(([127, 0, 0, 1], vrtcp)),
            input,
        }
    });
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
    Ok(Setup { opus_port, video })
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

/// p50/p95/p99/max in ms and the count, from a histogram of µs.
pub(crate) fn quantiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    json!({"p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": h.max() as f64 / 1000.0,
           "n": h.len()})
}

struct MediaResult {
    session: MediaSession,
    wall_s: f64,
    thread_cpu_s: f64,
    process_cpu_s: f64,
    ended_by: &'static str,
}

/// Hands the session's outputs to the sockets and the link until it asks to wait; the instant
/// it wants to be woken at, or why the media path ended.
fn pump(
    o: &Options,
    s: &mut MediaSession,
    sock: &UdpSocket,
    opus_dest: SocketAddr,
    link: &mut dyn PipelineLink,
    in_flight: &mut usize,
    rec: Option<&Recorder>,
) -> Result<std::result::Result<Instant, &'static str>> {
    loop {
        let sent = match s.poll_output() {
            Output::Timeout(t) => return Ok(Ok(t)),
            Output::Transmit(Track::Opus, b) => {
                let _ = sock.send_to(b, opus_dest);
                continue;
            }
            Output::Transmit(Track::Aic, b) => {
                if let Some(dest) = o.aic_dest {
                    let _ = sock.send_to(b, dest);
                }
                continue;
            }
            Output::Process(f) => {
                if let Some(r) = rec {
                    r.pcm(f.seq, f.pcm16k);
                }
                (f.seq, link.try_send(f.seq, f.pcm16k, f.concealed))
            }
        };
        match sent {
            (_, Ok(())) => *in_flight += 1,
            (seq, Err(LinkFailure::Full)) => s.handle_input(Input::NotTaken(seq))?,
            (_, Err(LinkFailure::PeerGone)) => return Ok(Err("pipeline gone")),
            (_, Err(e)) => bail!("pipeline link: {e}"),
        }
    }
}

/// The I/O around [`MediaSession`]: Janus' RTP from `sock`, the link, the clock.
fn media_loop(
    o: &Options,
    sock: &UdpSocket,
    opus_dest: SocketAddr,
    link: &mut dyn PipelineLink,
    model_tag: [u8; 4],
    stop: &AtomicBool,
    rec: Option<&Recorder>,
) -> Result<MediaResult> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0x5eed);
    let t0 = Instant::now();
    let mut s = MediaSession::new(
        SessionConfig {
            ingest: IngestConfig {
                jitter: JitterConfig {
                    // The initial target only: the buffer adapts to the measured jitter.
                    delay: Duration::from_millis(u64::from(o.jitter_ms)),
                    ..Default::default()
                },
                payload_type: Some(111),
            },
            opus: RtpStreamParams {
                ssrc: seed | 1,
                payload_type: 111,
                first_sequence: seed as u16,
                first_timestamp: seed.rotate_left(7),
            },
            opus_bitrate_bps: o.opus_kbps * 1000,
            aic: o.aic_dest.map(|_| AicTrack {
                params: RtpStreamParams {
                    ssrc: seed.rotate_left(13) | 2,
                    payload_type: o.aic_pt,
                    first_sequence: (seed >> 16) as u16,
                    first_timestamp: seed.rotate_left(3),
                },
                ext_id: o.aic_ext_id,
                model_tag,
            }),
        },
        t0,
    )?;
    let mut out = FrameOut {
        payload: Vec::with_capacity(1275),
        pcm16k: Vec::with_capacity(FRAME_16K),
        ..Default::default()
    };
    let mut buf = vec![0u8; 2048];
    let mut in_flight = 0usize;
    let thread_cpu0 = cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0);
    let proc_cpu0 = cpu_seconds("/proc/self/stat").unwrap_or(0.0);
    let ended_by = 'media: loop {
        if stop.load(Ordering::SeqCst) {
            break "signal";
        }
        let now = Instant::now();
        if o.duration.is_some_and(|d| now - t0 >= d) {
            break "duration";
        }
        // 1. Due frames to the pipeline, packets to Janus.
        s.handle_input(Input::Timeout(now))?;
        let wake = match pump(o, &mut s, sock, opus_dest, link, &mut in_flight, rec)? {
            Ok(t) => t,
            Err(why) => break why,
        };
        // 2. Wait for the pipeline (frames in flight) or the network, never past the next
        //    playout deadline.
        let until_due = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        if in_flight > 0 {
            let wait = until_due.min(Duration::from_millis(2));
            match link.recv_into(&mut out, wait) {
                Ok(true) => {
                    in_flight -= 1;
                    s.handle_input(Input::Processed(Instant::now(), &out))?;
                    if let Some(r) = rec {
                        r.frame(&out);
                    }
                    if let Err(why) = pump(o, &mut s, sock, opus_dest, link, &mut in_flight, rec)? {
                        break why;
                    }
                }
                Ok(false) => {}
                Err(LinkFailure::PeerGone) => break "pipeline gone",
                Err(e) => bail!("pipeline link: {e}"),
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
                    s.handle_input(Input::Receive(Instant::now(), &buf[..n]))?;
                    if let Err(why) = pump(o, &mut s, sock, opus_dest, link, &mut in_flight, rec)? {
                        break 'media why;
                    }
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
    let wall_s = s
        .stats
        .first_in
        .map(|f| f.elapsed())
        .unwrap_or_else(|| t0.elapsed())
        .as_secs_f64();
    Ok(MediaResult {
        session: s,
        wall_s,
        thread_cpu_s: cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0) - thread_cpu0,
        process_cpu_s: cpu_seconds("/proc/self/stat").unwrap_or(0.0) - proc_cpu0,
        ended_by,
    })
}

fn summary(o: &Options, model_id: &str, r: &mut MediaResult) -> Value {
    let i = r.session.ingest_stats();
    let j = r.session.jitter_stats();
    let (opus_packets, opus_bytes) = r.session.opus_sent();
    let aic_packets = r.session.aic_sent();
    // Bitrates over the frames each side carried (20 ms each): payload bytes only, so Opus and
    // AIC are compared on what their codecs spend; RTP/UDP/IP headers are the same for both.
    let kbps = |bytes: u64, frames: u64| {
        if frames == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / (frames as f64 * 0.02) / 1000.0
        }
    };
    let m = &r.session.stats;
    let publisher_kbps = kbps(i.payload_bytes, i.packets);
    let aic_kbps = kbps(m.aic_bytes, m.frames_out);
    let (frames_out, fallback, not_taken, stale) = (m.frames_out, m.fallback, m.not_taken, m.stale);
    let latency = quantiles(&m.latency_us);
    let pipeline = quantiles(&m.pipeline_us);
    // Janus' `rtp_forward` takes no RTCP back for audio, so the receiver report of the
    // forwarded stream is reported here rather than sent.
    let rtcp_rr = match r.session.receiver_stats() {
        None => Value::Null,
        Some((ssrc, rx)) => {
            let b = rx.report(Instant::now());
            json!({"ssrc": ssrc, "expected": rx.expected(), "received": rx.received(),
                   "cumulative_lost": b.cumulative_lost, "fraction_lost_256": b.fraction_lost,
                   "extended_highest_seq": b.extended_highest_seq,
                   "jitter_ms": f64::from(b.jitter) / 48.0})
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    json!({
        "room": o.room, "publisher": o.publisher, "mountpoint": o.mountpoint,
        "model": model_id, "level": o.level, "pipeline": o.pipeline,
        "ended_by": r.ended_by,
        "seconds": r.wall_s,
        "rtp_in": {"packets": i.packets, "payload_bytes": i.payload_bytes, "malformed": i.malformed,
                   "wrong_payload_type": i.wrong_payload_type, "foreign_ssrc": i.foreign_ssrc,
                   "duplicates": i.duplicates, "late": i.late, "overflow": i.overflow},
        "frames": {"decoded": i.decoded, "fec": i.fec, "plc": i.plc, "decode_errors": i.decode_errors,
                   "silence": i.silence, "out": frames_out, "fallback": fallback,
                   "link_full_dropped": not_taken, "stale_dropped": stale},
        "rtp_out": {"opus_packets": opus_packets, "aic_packets": aic_packets},
        "bitrate_kbps": {"publisher_opus": publisher_kbps, "aic": aic_kbps,
                         "opus_out": kbps(opus_bytes, opus_packets),
                         "aic_vs_publisher": if publisher_kbps > 0.0 { aic_kbps / publisher_kbps } else { 0.0 }},
        "latency_rtp_in_to_rtp_out": latency,
        "latency_inside_pipeline": pipeline,
        "jitter_buffer": {"initial_target_ms": o.jitter_ms, "target_ms": ms(j.target),
                          "delay_ms": ms(j.delay), "level_ms": ms(j.level),
                          "measured_jitter_ms": ms(j.measured), "slewed_ms": j.slewed_us as f64 / 1000.0, "peaks": j.peaks,
                          "dropped": j.dropped,
                          "grown": j.grown, "reanchors": j.reanchors, "silence": j.silence,
                          "underflows": j.underflows, "lost": j.lost, "late": j.late},
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
    // Outputs are claimed (and checked) before Janus is touched: a bad --record fails fast.
    let recorder = Recorder::start(o, link.model_id())?;
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding the RTP socket")?;
    let rtp_in = sock.local_addr()?.port();
    let mut side = None;
    let video_socks = match &o.video {
        Some(_) => Some(VideoSetup {
            rtp_in: UdpSocket::bind("127.0.0.1:0").context("binding the video RTP socket")?,
            rtcp: UdpSocket::bind("127.0.0.1:0").context("binding the video RTCP socket")?,
        }),
        None => None,
    };
    let setup = setup_janus(o, rtp_in, video_socks, &mut side);
    let video_stop = Arc::new(AtomicBool::new(false));
    let mut video_thread = None;
    let result = setup.and_then(|setup| {
        let dest = SocketAddr::from(([127, 0, 0, 1], setup.opus_port));
        if let (Some(vo), Some(ports)) = (&o.video, setup.video) {
            let vrtp = ports.rtp_in.local_addr()?.port();
            video_thread = Some(crate::video_attach::spawn(
                vo.clone(),
                ports,
                video_stop.clone(),
            )?);
            eprintln!("aic attach: video track started (rtp in 127.0.0.1:{vrtp})");
        }
        eprintln!(
            "aic attach: ready (model {}, rtp in 127.0.0.1:{rtp_in})",
            link.model_id()
        );
        media_loop(
            o,
            &sock,
            dest,
            link.as_mut(),
            model_tag(o),
            &stop,
            recorder.as_ref(),
        )
    });
    video_stop.store(true, Ordering::SeqCst);
    let video_summary = video_thread.map(|h| match h.join() {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"error": format!("{e:#}")}),
        Err(_) => json!({"error": "the video thread panicked"}),
    });
    if let Some(s) = side.as_mut() {
        s.teardown(o.room, o.publisher);
        eprintln!("aic attach: detached (forward stopped, mountpoint removed)");
    }
    let record = recorder.map(Recorder::stop);
    let mut r = result?;
    let mut s = summary(o, link.model_id(), &mut r);
    if let Some(rec) = record {
        s["record"] = rec;
    }
    if let Some(v) = video_summary {
        s["video"] = v;
    }
    eprintln!("aic attach: summary {s}");
    if let Some(p) = &o.summary {
        std::fs::write(p, serde_json::to_string_pretty(&s)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
