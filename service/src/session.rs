//! `aic serve`: the gRPC codec API (`proto/aic/v1/codec.proto`) over the batched pipeline.
//!
//! Every gRPC session is one pipeline stream, so concurrent sessions share model calls. The
//! async side only parses, converts sample rates and forwards: pushing into the pipeline never
//! blocks, and each session's outputs are forwarded by a blocking task. One session's bad input
//! ends that session with a `Status`; the others never notice.
//!
//! In this build: `EncodeStream`, `DecodeStream`, unary `Encode`/`Decode` (≤ 60 s),
//! `ListModels`, `Hints` (from the model's measured rate–quality table), the standard health
//! service, server reflection and Prometheus `/metrics`; and, beside them on the same port, the
//! control sidecar `ControlService` (`aic-control`: tenants, API keys, policy, usage, audit).
//!
//! Every codec call shows an API key when it opens (`aic_control::gate`: checked through a
//! short-TTL cache, never per frame), is held to the key's policy and concurrent-session limit,
//! and is metered until it ends; usage is flushed to the store periodically and at shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Context as _, Result};
use aic_codec::codec::{Decoder as _, Encoder as _};
use aic_codec::resample::FrameResampler;
use aic_control::gate::{Auth, Gate, Ticket};
use aic_control::policy::{KeyGrant, Want};
use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineConfig, EngineError, Output, Payload, StreamConfig};
use aic_pipeline::hints::{Mode, NetState, RateQualityTable};
use aic_pipeline::model::AicModel;
use aic_proto::v1::codec_service_server::{CodecService, CodecServiceServer};
use aic_proto::v1::control_service_server::ControlServiceServer;
use aic_proto::v1::{
    DecodeClipRequest, DecodeClipResponse, DecodeRequest, DecodeResponse, EncodeClipRequest,
    EncodeClipResponse, EncodeRequest, EncodeResponse, HintMode, HintsRequest, HintsResponse,
    Level, ListModelsRequest, ListModelsResponse, ModelInfo, decode_request, encode_request,
    encode_response,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const DEFAULT_BUDGET_MS: u32 = 40;
/// Frames a session may have on their way back to the client before the forwarder waits.
const RESPONSE_QUEUE: usize = 64;
/// Frames a session may have inside the pipeline. The session stops reading its request stream
/// at this many (HTTP/2 flow control then slows the client), so a client sending faster than
/// real time is paced instead of overflowing the pipeline's bounded per-stream queue (4).
const IN_FLIGHT: usize = 3;
/// How long a session waits for a frame inside the pipeline to come back before it gives up
/// with UNAVAILABLE (every frame comes back within its latency budget, ≤ 1 s, normally).
const STALL: Duration = Duration::from_secs(10);
/// RFC 6716 §3.2.1: no Opus packet is longer.
const MAX_OPUS_PACKET: usize = 1275;
/// Opus' own bitrate range (kbps), for every client-given Opus bitrate.
const OPUS_KBPS: std::ops::RangeInclusive<u32> = 6..=510;

pub struct Options {
    pub listen: SocketAddr,
    pub max_streams: usize,
    /// Prometheus `/metrics` over HTTP (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Pipeline worker threads, each with its own model sessions.
    pub workers: usize,
    /// Serve the bridge link (`aic_sfu_bridge::link`) on this Unix socket (None: off).
    pub bridge_socket: Option<std::path::PathBuf>,
    /// Who may use the bridge socket and how many at once.
    pub bridge_limits: crate::bridge::Limits,
    /// Holds the SQLite store and the admin token file.
    pub data_dir: std::path::PathBuf,
    /// Control store: `sqlite://…` or `postgres://…`.
    pub store_url: String,
    pub auth: Auth,
    /// From the config file or `AIC_ADMIN_TOKEN`; else `<data_dir>/admin.token` (made if absent).
    pub admin_token: Option<String>,
    pub key_cache_ttl: Duration,
    pub meter_flush: Duration,
    /// How long open sessions may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// TLS on the gRPC port (None: plaintext, which the settings allow only on loopback or
    /// with `--insecure`).
    pub tls: Option<TlsFiles>,
    /// A new stream's `open` must arrive within this (DEADLINE_EXCEEDED otherwise).
    pub first_message_timeout: Duration,
    /// A stream silent for this long is ended (DEADLINE_EXCEEDED) and its slot freed.
    pub idle_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection.
    pub max_streams_per_connection: u32,
    /// Largest share of the slots one tenant's sessions may hold (auth on only).
    pub tenant_slot_share: f64,
    /// Failed authentications per client address and minute before it is refused.
    pub auth_failures_per_minute: u32,
}

/// The admin token is never shown, nor the store URL's password.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("max_streams", &self.max_streams)
            .field("metrics_listen", &self.metrics_listen)
            .field("workers", &self.workers)
            .field("bridge_socket", &self.bridge_socket)
            .field("bridge_limits", &self.bridge_limits)
            .field("data_dir", &self.data_dir)
            .field("store_url", &redact(&self.store_url))
            .field("auth", &self.auth)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("meter_flush", &self.meter_flush)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tls", &self.tls)
            .field("first_message_timeout", &self.first_message_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .field("tenant_slot_share", &self.tenant_slot_share)
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .finish()
    }
}

/// PEM files for TLS on the gRPC port.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

/// Per-session accounting: the open-sessions gauge, and the per-method request counter with the
/// final status code, recorded when the session ends however it ends.
struct SessionGuard {
    method: &'static str,
    code: &'static str,
}

impl SessionGuard {
    fn new(method: &'static str) -> Self {
        metrics::gauge!("aic_sessions_open", "method" => method).increment(1.0);
        Self { method, code: "ok" }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("aic_sessions_open", "method" => self.method).decrement(1.0);
        metrics::counter!("aic_rpc_requests_total", "method" => self.method, "code" => self.code)
            .increment(1);
    }
}

fn count_rpc(method: &'static str, code: &'static str) {
    metrics::counter!("aic_rpc_requests_total", "method" => method, "code" => code).increment(1);
}

fn code_name(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "error",
    }
}

type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Svc {
    pipeline: Arc<Pipeline>,
    /// The pipeline's slots, all workers together: the one number startup and errors name.
    slots: usize,
    first_message_timeout: Duration,
    idle_timeout: Duration,
    /// Becomes true when the shutdown grace period is over: open sessions are cut.
    cut: tokio::sync::watch::Receiver<bool>,
    model: Arc<AicModel>,
    /// The model's measured rate–quality table (`rate_quality.json` beside the manifest).
    table: Result<RateQualityTable, String>,
    gate: Arc<Gate>,
}

fn pcm_from_s16le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect()
}

fn s16le_from_pcm(p: &[f32]) -> Vec<u8> {
    p.iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect()
}

/// Opus at the model's rate (16 kHz), 20 ms frames: the server's Opus side of a session.
pub(crate) fn opus_info() -> aic_codec::CodecInfo {
    aic_codec::CodecInfo {
        codec: "opus".into(),
        model_id: String::new(),
        sample_rate: 16_000,
        frame_samples: 320,
        delay_samples: 0,
        point: aic_codec::OperatingPoint::BitrateBps(24_000),
    }
}

fn check_rate(rate: u32) -> Result<(), Status> {
    match rate {
        16_000 | 48_000 => Ok(()),
        r => Err(Status::invalid_argument(format!(
            "sample_rate {r} not supported (16000 or 48000)"
        ))),
    }
}

fn budget(ms: u32) -> Result<Duration, Status> {
    match ms {
        0 => Ok(Duration::from_millis(u64::from(DEFAULT_BUDGET_MS))),
        20..=1000 => Ok(Duration::from_millis(u64::from(ms))),
        _ => Err(Status::invalid_argument(format!(
            "latency_budget_ms {ms} not in 20..=1000 (0 = default)"
        ))),
    }
}

/// A client-given string, bounded and escaped, for an error message.
fn ex(s: &str) -> String {
    aic_control::excerpt(s, 32)
}

/// An Opus bitrate a client gave (kbps; 0 = `default`), checked against Opus' range.
fn opus_kbps(field: &str, v: u32, default: u32) -> Result<u32, Status> {
    match v {
        0 => Ok(default),
        v if OPUS_KBPS.contains(&v) => Ok(v),
        v => Err(Status::invalid_argument(format!(
            "{field} {v} not in {}..={} (0 = {default})",
            OPUS_KBPS.start(),
            OPUS_KBPS.end()
        ))),
    }
}

/// What a failed read of the request stream becomes: gRPC's conventions for size limits
/// (RESOURCE_EXHAUSTED; tonic reports OUT_OF_RANGE) and undecodable messages
/// (INVALID_ARGUMENT; tonic reports INTERNAL); a vanished client stays what it is.
fn inbound_status(s: Status) -> Status {
    match s.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(format!(
            "request message too large: {}",
            aic_control::excerpt(s.message(), 200)
        )),
        tonic::Code::Internal => Status::invalid_argument(format!(
            "undecodable request message: {}",
            aic_control::excerpt(s.message(), 200)
        )),
        _ => s,
    }
}

/// The next message of a session's request stream, or why there is none.
enum Next<T> {
    Msg(T),
    /// The client closed its side.
    End,
    /// The session ends with this status (it is sent to the client when it can still hear it).
    Fail(Status),
}

async fn next_message<T>(
    inbound: &mut Streaming<T>,
    wait: Duration,
    what: &str,
    cut: &mut tokio::sync::watch::Receiver<bool>,
) -> Next<T> {
    tokio::select! {
        biased;
        _ = cut.wait_for(|c| *c) => Next::Fail(Status::unavailable(
            "the server is shutting down: the session was cut at the end of the grace period",
        )),
        r = tokio::time::timeout(wait, inbound.message()) => match r {
            Err(_) => Next::Fail(Status::deadline_exceeded(format!(
                "no {what} within {} s; session ended", wait.as_secs()
            ))),
            Ok(Ok(Some(m))) => Next::Msg(m),
            Ok(Ok(None)) => Next::End,
            Ok(Err(e)) => Next::Fail(inbound_status(e)),
        },
    }
}

fn open_error(e: EngineError, slots: usize) -> Status {
    match e {
        EngineError::Full(_) => {
            metrics::counter!("aic_slots_exhausted_total").increment(1);
            tracing::warn!(slots, "all pipeline slots in use; session refused");
            Status::resource_exhausted(format!(
                "all {slots} pipeline slots are in use; retry later"
            ))
        }
        EngineError::Level { .. } => Status::invalid_argument(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

/// Forwards one stream's pipeline outputs to its gRPC response channel until either side ends.
/// One encoder output as the response message (AIC frame, or the Opus frame it fell back to).
fn encode_response_of(o: Output) -> Result<EncodeResponse, Status> {
    let frame = match o.payload {
        Payload::Aic(b) => encode_response::Frame::Aic(b),
        Payload::OpusFallback(b) => encode_response::Frame::OpusFallback(b),
        other => {
            return Err(Status::internal(format!(
                "unexpected pipeline output {other:?}"
            )));
        }
    };
    Ok(EncodeResponse {
        seq: o.seq,
        frame: Some(frame),
        server_latency_us: o.latency.as_micros() as u32,
    })
}

fn forward<T: Send + 'static>(
    outputs: std::sync::mpsc::Receiver<Output>,
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    credits: Arc<tokio::sync::Semaphore>,
    mut convert: impl FnMut(Output) -> Result<T, Status> + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        while let Ok(o) = outputs.recv() {
            credits.add_permits(1);
            if tx.blocking_send(convert(o)).is_err() {
                break; // the client went away; dropping `outputs` is enough
            }
        }
    });
}

#[tonic::async_trait]
impl CodecService for Svc {
    type EncodeStreamStream = RespStream<EncodeResponse>;
    type DecodeStreamStream = RespStream<DecodeResponse>;

    async fn encode_stream(
        &self,
        req: Request<Streaming<EncodeRequest>>,
    ) -> Result<Response<Self::EncodeStreamStream>, Status> {
        self.encode_stream_inner(req)
            .await
            .inspect_err(|e| count_rpc("EncodeStream", code_name(e)))
    }

    async fn decode_stream(
        &self,
        req: Request<Streaming<DecodeRequest>>,
    ) -> Result<Response<Self::DecodeStreamStream>, Status> {
        self.decode_stream_inner(req)
            .await
            .inspect_err(|e| count_rpc("DecodeStream", code_name(e)))
    }

    async fn encode(
        &self,
        req: Request<EncodeClipRequest>,
    ) -> Result<Response<EncodeClipResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let r = match self.gate.authenticate_from(req.metadata(), peer).await {
            Ok(grant) => self.encode_clip(&grant, req.into_inner()).await,
            Err(e) => Err(e),
        };
        count_rpc("Encode", r.as_ref().err().map_or("ok", code_name));
        r.map(Response::new)
    }

    async fn decode(
        &self,
        req: Request<DecodeClipRequest>,
    ) -> Result<Response<DecodeClipResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let r = match self.gate.authenticate_from(req.metadata(), peer).await {
            Ok(grant) => self.decode_clip(&grant, req.into_inner()).await,
            Err(e) => Err(e),
        };
        count_rpc("Decode", r.as_ref().err().map_or("ok", code_name));
        r.map(Response::new)
    }

    async fn hints(&self, req: Request<HintsRequest>) -> Result<Response<HintsResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let r = match self.gate.authenticate_from(req.metadata(), peer).await {
            Ok(grant) => self.hints_inner(&grant, req.into_inner()),
            Err(e) => Err(e),
        };
        count_rpc("Hints", r.as_ref().err().map_or("ok", code_name));
        r.map(Response::new)
    }

    async fn list_models(
        &self,
        req: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let grant = self
            .gate
            .authenticate_from(req.metadata(), req.remote_addr().map(|a| a.ip()))
            .await
            .inspect_err(|e| count_rpc("ListModels", code_name(e)))?;
        self.gate
            .admit(&grant, Want::ListModels)
            .inspect_err(|e| count_rpc("ListModels", code_name(e)))
            .map(drop)?;
        let m = &self.model.manifest;
        Ok(Response::new(ListModelsResponse {
            models: vec![ModelInfo {
                model_id: m.model_id.clone(),
                model_version: m.model_version.clone(),
                sample_rate: m.sample_rate,
                frame_ms: (m.frame_samples as u32 * 1000) / m.sample_rate,
                algorithmic_latency_ms: (m.frame_samples + m.decoder_delay_samples) as f64 * 1000.0
                    / f64::from(m.sample_rate),
                levels: m
                    .levels
                    .iter()
                    .map(|&l| Level {
                        level: u32::from(l),
                        bitrate_kbps: expected_kbps(&self.model, l),
                    })
                    .collect(),
            }],
        }))
    }
}

/// Longest clip the unary RPCs take; longer audio belongs on the streaming RPCs.
const MAX_CLIP_SECONDS: usize = 60;

/// Runs a whole clip through a pipeline stream with the same flow control as a streaming
/// session (at most `IN_FLIGHT` frames inside), on a blocking thread; outputs in input order.
fn run_clip<T: Send + 'static>(
    pipeline: Arc<Pipeline>,
    slots: usize,
    cfg: StreamConfig,
    items: Vec<T>,
    push: impl Fn(&StreamSender, T) -> Result<(), aic_pipeline::driver::Closed> + Send + 'static,
) -> tokio::task::JoinHandle<Result<Vec<Output>, Status>> {
    tokio::task::spawn_blocking(move || {
        let (sender, outputs) = pipeline
            .open(cfg)
            .map_err(|e| open_error(e, slots))?
            .split();
        let n = items.len();
        let mut got = Vec::with_capacity(n);
        for (sent, item) in items.into_iter().enumerate() {
            if sent - got.len() >= IN_FLIGHT {
                got.push(
                    outputs
                        .recv_timeout(STALL)
                        .map_err(|_| Status::unavailable("pipeline stalled"))?,
                );
            }
            push(&sender, item)
                .map_err(|_| Status::unavailable("the pipeline is shutting down"))?;
        }
        while got.len() < n {
            got.push(
                outputs
                    .recv_timeout(STALL)
                    .map_err(|_| Status::unavailable("pipeline stalled"))?,
            );
        }
        got.sort_by_key(|o| o.seq);
        Ok(got)
    })
}

impl Svc {
    /// Validates an encode session's parameters; returns the level to use (0 = the model's
    /// highest level).
    /// `cap`: the highest level the caller's key allows (level 0 asks for it).
    fn check_encode_open(&self, open: &aic_proto::v1::EncodeOpen, cap: u32) -> Result<u32, Status> {
        if open.codec != "aic" {
            return Err(Status::invalid_argument(format!(
                "codec {} not served (\"aic\")",
                ex(&open.codec)
            )));
        }
        check_rate(open.sample_rate)?;
        opus_kbps("reference_opus_kbps", open.reference_opus_kbps, 32)?;
        let m = &self.model.manifest;
        let k = m.num_codebooks as u32;
        let level = if open.level == 0 {
            u32::from(*m.levels.last().unwrap_or(&1)).min(cap.max(1))
        } else {
            open.level
        };
        if level > k {
            return Err(Status::invalid_argument(format!(
                "level {level} not in 1..={k}"
            )));
        }
        Ok(level)
    }

    /// The level cap of a key for this model.
    fn cap(&self, grant: &KeyGrant) -> u32 {
        grant
            .policy
            .level_cap(self.model.manifest.num_codebooks as u32)
    }

    async fn encode_clip(
        &self,
        grant: &KeyGrant,
        r: EncodeClipRequest,
    ) -> Result<EncodeClipResponse, Status> {
        let open = r
            .open
            .ok_or_else(|| Status::invalid_argument("`open` is required"))?;
        let level = self.check_encode_open(&open, self.cap(grant))?;
        let ticket = self.gate.admit(grant, Want::Encode { level })?;
        let samples = r.pcm_s16le.len() / 2;
        if samples > MAX_CLIP_SECONDS * open.sample_rate as usize {
            return Err(Status::resource_exhausted(format!(
                "clip of {:.1} s exceeds the {MAX_CLIP_SECONDS} s limit of Encode; use EncodeStream",
                samples as f64 / f64::from(open.sample_rate)
            )));
        }
        if !r.pcm_s16le.len().is_multiple_of(2) {
            return Err(Status::invalid_argument(
                "pcm_s16le has an odd number of bytes",
            ));
        }
        let mut pcm = pcm_from_s16le(&r.pcm_s16le);
        let frame_in = (open.sample_rate / 50) as usize;
        pcm.resize(pcm.len().div_ceil(frame_in).max(1) * frame_in, 0.0);
        let mut frames = Vec::with_capacity(pcm.len() / frame_in);
        let mut rs = if open.sample_rate == 16_000 {
            None
        } else {
            Some(
                FrameResampler::new(open.sample_rate, 16_000, frame_in)
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
        };
        let mut mid = Vec::new();
        for f in pcm.chunks_exact(frame_in) {
            match rs.as_mut() {
                None => frames.push(f.to_vec()),
                Some(r) => {
                    r.process(f, &mut mid)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    frames.push(mid.clone());
                }
            }
        }
        let mut cfg = StreamConfig::encode(level as u8);
        cfg.budget = budget(open.latency_budget_ms)?;
        metrics::counter!("aic_bytes_in_total", "method" => "Encode")
            .increment(r.pcm_s16le.len() as u64);
        ticket.meter.counters.bytes_in(r.pcm_s16le.len() as u64);
        let outs = run_clip(self.pipeline.clone(), self.slots, cfg, frames, |s, f| {
            s.push_pcm(f)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let ref_bytes = reference_frame_bytes(opus_kbps(
            "reference_opus_kbps",
            open.reference_opus_kbps,
            32,
        )?);
        for o in &outs {
            let n = match &o.payload {
                Payload::Aic(b) | Payload::OpusFallback(b) => b.len(),
                _ => 0,
            };
            meter_encoded(&ticket, n, ref_bytes);
        }
        let frames = outs
            .into_iter()
            .map(encode_response_of)
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(EncodeClipResponse {
            frames,
            model_id: self.model.manifest.model_id.clone(),
        })
    }

    async fn decode_clip(
        &self,
        grant: &KeyGrant,
        r: DecodeClipRequest,
    ) -> Result<DecodeClipResponse, Status> {
        let open = r
            .open
            .ok_or_else(|| Status::invalid_argument("`open` is required"))?;
        if open.codec != "aic" {
            return Err(Status::invalid_argument(format!(
                "codec {} not served (\"aic\")",
                ex(&open.codec)
            )));
        }
        if !open.model_id.is_empty() && open.model_id != self.model.manifest.model_id {
            return Err(Status::failed_precondition(format!(
                "clip was encoded with model {}; this server has {:?}",
                ex(&open.model_id),
                self.model.manifest.model_id
            )));
        }
        check_rate(open.sample_rate)?;
        if r.frames.len() > MAX_CLIP_SECONDS * 50 {
            return Err(Status::resource_exhausted(format!(
                "{} frames exceed the {MAX_CLIP_SECONDS} s limit of Decode; use DecodeStream",
                r.frames.len()
            )));
        }
        let max = aic_codec::bitstream::frame::MAX_FRAME_BYTES;
        if let Some(f) = r.frames.iter().find(|f| f.len() > max) {
            return Err(Status::invalid_argument(format!(
                "AIC frame of {} bytes exceeds {max}",
                f.len()
            )));
        }
        let mut cfg = StreamConfig::decode();
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(grant, Want::Decode)?;
        ticket
            .meter
            .counters
            .bytes_in(r.frames.iter().map(|f| f.len() as u64).sum());
        let outs = run_clip(self.pipeline.clone(), self.slots, cfg, r.frames, |s, f| {
            s.push_aic((!f.is_empty()).then_some(f))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let mut rs = if open.sample_rate == 16_000 {
            None
        } else {
            Some(
                FrameResampler::new(16_000, open.sample_rate, 320)
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
        };
        let (mut pcm, mut up, mut concealed) = (Vec::new(), Vec::new(), 0u32);
        let n_frames = outs.len() as u64;
        for o in outs {
            let p = match o.payload {
                Payload::Pcm(p) => p,
                Payload::Concealed(p) => {
                    concealed += 1;
                    p
                }
                other => {
                    return Err(Status::internal(format!(
                        "unexpected pipeline output {other:?}"
                    )));
                }
            };
            match rs.as_mut() {
                None => pcm.extend_from_slice(&p),
                Some(r) => {
                    r.process(&p, &mut up)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    pcm.extend_from_slice(&up);
                }
            }
        }
        let pcm_s16le = s16le_from_pcm(&pcm);
        ticket.meter.counters.decoded_ms(20 * n_frames);
        ticket.meter.counters.bytes_out(pcm_s16le.len() as u64);
        Ok(DecodeClipResponse {
            pcm_s16le,
            concealed_frames: concealed,
        })
    }

    fn hints_inner(&self, grant: &KeyGrant, r: HintsRequest) -> Result<HintsResponse, Status> {
        let table = self
            .table
            .as_ref()
            .map_err(|why| Status::failed_precondition(why.clone()))?;
        let mode = match HintMode::try_from(r.mode) {
            Ok(HintMode::Conservative) => Mode::Conservative,
            Ok(HintMode::Aggressive) => Mode::Aggressive,
            Ok(HintMode::Adaptive | HintMode::Unspecified) => Mode::Adaptive,
            Err(_) => return Err(Status::invalid_argument(format!("unknown mode {}", r.mode))),
        };
        let pmode = match mode {
            Mode::Conservative => aic_control::policy::Mode::Conservative,
            Mode::Adaptive => aic_control::policy::Mode::Adaptive,
            Mode::Aggressive => aic_control::policy::Mode::Aggressive,
        };
        drop(self.gate.admit(grant, Want::Hints { mode: pmode })?);
        for (name, v, max) in [
            ("bandwidth_kbps", r.bandwidth_kbps, 1e6),
            ("loss", r.loss, 1.0),
            ("rtt_ms", r.rtt_ms, 60_000.0),
            ("jitter_ms", r.jitter_ms, 60_000.0),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(Status::invalid_argument(format!(
                    "{name} {v} not in 0..={max}"
                )));
            }
        }
        let net = NetState {
            bandwidth_kbps: r.bandwidth_kbps,
            loss: r.loss,
            rtt_ms: r.rtt_ms,
            jitter_ms: r.jitter_ms,
        };
        let mut h = table
            .hint(&net, mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cap = self.cap(grant);
        if h.use_aic && u32::from(h.level) > cap {
            // Never recommend a level the key may not encode at.
            h.level = cap as u8;
            // The measured row of the capped level, when the table has one.
            match table
                .rows
                .iter()
                .find(|r| r.codec == "aic" && r.point == format!("L{cap}"))
            {
                Some(row) => {
                    h.bitrate_kbps = row.bitrate_kbps;
                    h.expected = row.clone();
                }
                None => {
                    h.bitrate_kbps = expected_kbps(&self.model, h.level);
                    h.expected.stoi = None;
                    h.expected.pesq_wb = None;
                    h.expected.visqol = None;
                }
            }
            h.reason = format!("{} (capped at this API key's max level {cap})", h.reason);
        }
        Ok(HintsResponse {
            use_aic: h.use_aic,
            level: u32::from(h.level),
            bitrate_kbps: h.bitrate_kbps,
            expected_stoi: h.expected.stoi,
            expected_pesq_wb: h.expected.pesq_wb,
            expected_visqol: h.expected.visqol,
            reason: h.reason,
        })
    }

    /// What every streaming session does first: authenticate, then wait (bounded by the
    /// first-message timeout, and by the shutdown cut) for the first message.
    async fn open_session<T>(
        &self,
        req: Request<Streaming<T>>,
    ) -> Result<
        (
            KeyGrant,
            Streaming<T>,
            tokio::sync::watch::Receiver<bool>,
            T,
        ),
        Status,
    > {
        let grant = self
            .gate
            .authenticate_from(req.metadata(), req.remote_addr().map(|a| a.ip()))
            .await?;
        let mut inbound = req.into_inner();
        let mut cut = self.cut.clone();
        match next_message(&mut inbound, self.first_message_timeout, "`open`", &mut cut).await {
            Next::Msg(m) => Ok((grant, inbound, cut, m)),
            Next::End => Err(Status::invalid_argument(
                "empty stream: the first message must be `open`",
            )),
            Next::Fail(s) => Err(s),
        }
    }

    async fn encode_stream_inner(
        &self,
        req: Request<Streaming<EncodeRequest>>,
    ) -> Result<Response<RespStream<EncodeResponse>>, Status> {
        let (grant, mut inbound, mut cut, first) = self.open_session(req).await?;
        let Some(encode_request::Msg::Open(open)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be `open`"));
        };
        let level = self.check_encode_open(&open, self.cap(&grant))?;
        let mut cfg = StreamConfig::encode(level as u8);
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(&grant, Want::Encode { level })?;
        let counters = ticket.meter.counters.clone();
        let (sender, outputs) = self
            .pipeline
            .open(cfg)
            .map_err(|e| open_error(e, self.slots))?
            .split();
        let guard = SessionGuard::new("EncodeStream");
        let ref_bytes = reference_frame_bytes(opus_kbps(
            "reference_opus_kbps",
            open.reference_opus_kbps,
            32,
        )?);
        let frame_in = (open.sample_rate / 50) as usize;
        let mut resampler = if open.sample_rate == 16_000 {
            None
        } else {
            Some(
                FrameResampler::new(open.sample_rate, 16_000, frame_in)
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
        };
        let (tx, rx) = tokio::sync::mpsc::channel(RESPONSE_QUEUE);
        let credits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let reader_credits = credits.clone();
        forward(outputs, tx.clone(), credits, move |o: Output| {
            let (kind, n) = match &o.payload {
                Payload::Aic(b) => ("aic", b.len()),
                Payload::OpusFallback(b) => ("opus_fallback", b.len()),
                _ => ("other", 0),
            };
            metrics::counter!("aic_frames_total", "direction" => "encode", "kind" => kind)
                .increment(1);
            metrics::counter!("aic_bytes_out_total", "method" => "EncodeStream")
                .increment(n as u64);
            // The ticket lives as long as this forwarder: the session ends when its last
            // output is through (or the client is gone).
            meter_encoded(&ticket, n, ref_bytes);
            encode_response_of(o)
        });
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            let sender: StreamSender = sender;
            let mut guard = guard;
            let mut mid = Vec::with_capacity(320);
            let mut opus_in: Option<aic_codec::opus::OpusDecoder> = None;
            loop {
                let msg = match next_message(&mut inbound, idle, "message", &mut cut).await {
                    Next::Msg(m) => m,
                    Next::End => break,
                    Next::Fail(st) => {
                        guard.code = code_name(&st);
                        let _ = tx.send(Err(st)).await;
                        break;
                    }
                };
                let pcm = match msg.msg {
                    Some(encode_request::Msg::PcmS16le(bytes)) => {
                        if bytes.len() != 2 * frame_in {
                            let why = format!(
                                "pcm_s16le has {} bytes; one 20 ms frame at this rate is {}",
                                bytes.len(),
                                2 * frame_in
                            );
                            guard.code = "invalid_argument";
                            let _ = tx.send(Err(Status::invalid_argument(why))).await;
                            break;
                        }
                        metrics::counter!("aic_bytes_in_total", "method" => "EncodeStream")
                            .increment(bytes.len() as u64);
                        counters.bytes_in(bytes.len() as u64);
                        let pcm = pcm_from_s16le(&bytes);
                        match resampler.as_mut() {
                            None => pcm,
                            Some(r) => {
                                if let Err(e) = r.process(&pcm, &mut mid) {
                                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                    break;
                                }
                                mid.clone()
                            }
                        }
                    }
                    Some(encode_request::Msg::Opus(packet)) => {
                        if packet.len() > MAX_OPUS_PACKET {
                            guard.code = "invalid_argument";
                            let why = format!(
                                "Opus packet of {} bytes; none is longer than {MAX_OPUS_PACKET} \
                                 (RFC 6716)",
                                packet.len()
                            );
                            let _ = tx.send(Err(Status::invalid_argument(why))).await;
                            break;
                        }
                        metrics::counter!("aic_bytes_in_total", "method" => "EncodeStream")
                            .increment(packet.len() as u64);
                        counters.bytes_in(packet.len() as u64);
                        // libopus decodes straight to the model's 16 kHz; a damaged packet is
                        // concealed (Opus PLC) rather than ending the session.
                        let dec = match opus_in.as_mut() {
                            Some(d) => d,
                            None => match aic_codec::opus::OpusDecoder::new(
                                aic_codec::opus::OpusVariant::Plain,
                                &opus_info(),
                            ) {
                                Ok(d) => opus_in.insert(d),
                                Err(e) => {
                                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                    break;
                                }
                            },
                        };
                        let mut out = Vec::with_capacity(320);
                        // An empty packet is a loss (libopus conceals it), and is counted as
                        // one, like a packet that does not decode to one 20 ms frame.
                        if packet.is_empty() {
                            metrics::counter!("aic_opus_in_concealed_total").increment(1);
                        }
                        if dec.decode_frame(Some(&packet), &mut out).is_err() {
                            metrics::counter!("aic_opus_in_concealed_total").increment(1);
                            out.clear();
                            if dec.decode_frame(None, &mut out).is_err() {
                                out = vec![0.0; 320];
                            }
                        }
                        out
                    }
                    Some(encode_request::Msg::Open(_)) | None => {
                        guard.code = "invalid_argument";
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "`open` may only be the first message",
                            )))
                            .await;
                        break;
                    }
                };
                // Wait for room in the pipeline (flow control), bounded: every frame inside
                // comes back (model output or fallback) within its budget.
                match tokio::time::timeout(STALL, reader_credits.acquire()).await {
                    Ok(Ok(p)) => p.forget(),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        guard.code = "unavailable";
                        let _ = tx.send(Err(Status::unavailable("pipeline stalled"))).await;
                        break;
                    }
                }
                if sender.push_pcm(pcm).is_err() {
                    let _ = tx
                        .send(Err(Status::unavailable("the pipeline is shutting down")))
                        .await;
                    break;
                }
            }
            // Dropping `sender` closes the stream after its queued frames; the forwarder then
            // ends and the response stream completes.
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn decode_stream_inner(
        &self,
        req: Request<Streaming<DecodeRequest>>,
    ) -> Result<Response<RespStream<DecodeResponse>>, Status> {
        let (grant, mut inbound, mut cut, first) = self.open_session(req).await?;
        let Some(decode_request::Msg::Open(open)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be `open`"));
        };
        if open.codec != "aic" {
            return Err(Status::invalid_argument(format!(
                "codec {} not served (\"aic\")",
                ex(&open.codec)
            )));
        }
        let m = &self.model.manifest;
        if !open.model_id.is_empty() && open.model_id != m.model_id {
            return Err(Status::failed_precondition(format!(
                "stream was encoded with model {}; this server has {:?}",
                ex(&open.model_id),
                m.model_id
            )));
        }
        check_rate(open.sample_rate)?;
        let mut cfg = StreamConfig::decode();
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(&grant, Want::Decode)?;
        let counters = ticket.meter.counters.clone();
        let (sender, outputs) = self
            .pipeline
            .open(cfg)
            .map_err(|e| open_error(e, self.slots))?
            .split();
        let guard = SessionGuard::new("DecodeStream");
        let mut resampler = if open.sample_rate == 16_000 {
            None
        } else {
            Some(
                FrameResampler::new(16_000, open.sample_rate, 320)
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
        };
        let (tx, rx) = tokio::sync::mpsc::channel(RESPONSE_QUEUE);
        let credits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let reader_credits = credits.clone();
        let mut up = Vec::new();
        let mut opus_out = match aic_proto::v1::DecodeOutput::try_from(open.output) {
            Ok(aic_proto::v1::DecodeOutput::PcmS16le) => None,
            Ok(aic_proto::v1::DecodeOutput::Opus) => {
                let kbps = opus_kbps("opus_bitrate_kbps", open.opus_bitrate_kbps, 24)?;
                Some(
                    aic_codec::opus::OpusEncoder::new(
                        aic_codec::opus::OpusVariant::Plain,
                        16_000,
                        kbps * 1000,
                    )
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                )
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown output {}",
                    open.output
                )));
            }
        };
        forward(outputs, tx.clone(), credits, move |o: Output| {
            let kind = if matches!(o.payload, Payload::Concealed(_)) {
                "concealed"
            } else {
                "pcm"
            };
            metrics::counter!("aic_frames_total", "direction" => "decode", "kind" => kind)
                .increment(1);
            ticket.meter.counters.decoded_ms(20);
            let (pcm, concealed) = match o.payload {
                Payload::Pcm(p) => (p, false),
                Payload::Concealed(p) => (p, true),
                other => {
                    return Err(Status::internal(format!(
                        "unexpected pipeline output {other:?}"
                    )));
                }
            };
            if let Some(enc) = opus_out.as_mut() {
                // Legacy receivers: the decoded frame re-encoded as Opus.
                let mut pkt = Vec::new();
                enc.encode_frame(&pcm, &mut pkt)
                    .map_err(|e| Status::internal(e.to_string()))?;
                ticket.meter.counters.bytes_out(pkt.len() as u64);
                return Ok(DecodeResponse {
                    seq: o.seq,
                    pcm_s16le: Vec::new(),
                    opus: pkt,
                    concealed,
                    server_latency_us: o.latency.as_micros() as u32,
                });
            }
            let pcm = match resampler.as_mut() {
                None => pcm,
                Some(r) => {
                    r.process(&pcm, &mut up)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    up.clone()
                }
            };
            let pcm_s16le = s16le_from_pcm(&pcm);
            ticket.meter.counters.bytes_out(pcm_s16le.len() as u64);
            Ok(DecodeResponse {
                seq: o.seq,
                pcm_s16le,
                opus: Vec::new(),
                concealed,
                server_latency_us: o.latency.as_micros() as u32,
            })
        });
        let max = aic_codec::bitstream::frame::MAX_FRAME_BYTES;
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            let sender: StreamSender = sender;
            let mut guard = guard;
            loop {
                let msg = match next_message(&mut inbound, idle, "message", &mut cut).await {
                    Next::Msg(m) => m,
                    Next::End => break,
                    Next::Fail(st) => {
                        guard.code = code_name(&st);
                        let _ = tx.send(Err(st)).await;
                        break;
                    }
                };
                let frame = match msg.msg {
                    Some(decode_request::Msg::Aic(b)) => b,
                    Some(decode_request::Msg::Open(_)) | None => {
                        guard.code = "invalid_argument";
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "`open` may only be the first message",
                            )))
                            .await;
                        break;
                    }
                };
                if frame.len() > max {
                    guard.code = "invalid_argument";
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "AIC frame of {} bytes exceeds {max}",
                            frame.len()
                        ))))
                        .await;
                    break;
                }
                metrics::counter!("aic_bytes_in_total", "method" => "DecodeStream")
                    .increment(frame.len() as u64);
                counters.bytes_in(frame.len() as u64);
                // A corrupt frame is not a protocol error: the pipeline conceals it.
                let frame = (!frame.is_empty()).then_some(frame);
                // Wait for room in the pipeline (flow control), bounded: every frame inside
                // comes back (model output or fallback) within its budget.
                match tokio::time::timeout(STALL, reader_credits.acquire()).await {
                    Ok(Ok(p)) => p.forget(),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        guard.code = "unavailable";
                        let _ = tx.send(Err(Status::unavailable("pipeline stalled"))).await;
                        break;
                    }
                }
                if sender.push_aic(frame).is_err() {
                    let _ = tx
                        .send(Err(Status::unavailable("the pipeline is shutting down")))
                        .await;
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What Opus at the stream's reference bitrate (kbps, already checked by [`opus_kbps`]; 32 by
/// default, a typical WebRTC speech rate) would send per 20 ms frame: the baseline of "bytes
/// saved".
fn reference_frame_bytes(kbps: u32) -> f64 {
    f64::from(kbps) * 1000.0 / 8.0 * 0.02
}

/// Meters one encoded frame of `n` bytes: 20 ms of media, bytes out, and bytes saved against the
/// reference Opus. Savings are metered on the encode side only, where the smaller frame is made;
/// counting them again when the same frames are decoded would bill them twice.
fn meter_encoded(ticket: &Ticket, n: usize, ref_bytes: f64) {
    let saved = (ref_bytes - n as f64).max(0.0) as u64;
    metrics::counter!("aic_bytes_saved_total").increment(saved);
    let c = &ticket.meter.counters;
    c.encoded_ms(20);
    c.bytes_out(n as u64);
    c.bytes_saved(saved);
}

/// Expected bitrate of a level from the model's code statistics: the entropy of each sent
/// codebook's symbol distribution, plus the 16-bit frame header and about one byte of range-coder
/// termination per frame, at 50 frames/s.
fn expected_kbps(model: &AicModel, level: u8) -> f64 {
    let bits: f64 = model.manifest.entropy.frequencies[..usize::from(level)]
        .iter()
        .map(|f| {
            let total: f64 = f.iter().map(|&x| f64::from(x)).sum();
            f.iter()
                .map(|&x| f64::from(x) / total)
                .map(|p| -p * p.log2())
                .sum::<f64>()
        })
        .sum();
    (16.0 + bits + 6.0) * 50.0 / 1000.0
}

/// Serves until `shutdown` completes (then: no new sessions, open ones get the grace period),
/// and returns once usage is flushed. `aic serve` passes [`shutdown_signal`].
pub fn run(
    model_dir: &Path,
    opts: &Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let models: Vec<Arc<AicModel>> = (0..opts.workers.max(1))
        .map(|_| AicModel::load(model_dir, 1).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("loading the AIC model")?;
    let model = models[0].clone();
    // One blocking thread per open session forwards its outputs (plus a few for unary clips
    // and the store): bounded by the slot count, so a flood of sessions cannot make threads
    // without limit (the slots refuse them first).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(opts.max_streams + 32)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The control plane first: a server that cannot check keys or meter must not serve.
        aic_control::service::ensure_data_dir(&opts.data_dir)?;
        let store = aic_control::store::Store::open(&opts.store_url)
            .await
            .with_context(|| format!("opening the control store {}", redact(&opts.store_url)))?;
        let (admin_token, token_made) = match &opts.admin_token {
            Some(t) => (t.clone(), false),
            None => aic_control::service::admin_token_in(&opts.data_dir)?,
        };
        // One number for the slot count: `max_streams` split evenly over the workers (each
        // worker's engine has its own slots), never more in total than asked for.
        let workers = models.len().min(opts.max_streams).max(1);
        let models: Vec<_> = models.into_iter().take(workers).collect();
        let per_worker = opts.max_streams / workers;
        let slots = per_worker * workers;
        let tenant_cap = ((slots as f64 * opts.tenant_slot_share).ceil() as u32).max(1);
        let gate = Arc::new(
            Gate::new(store.clone(), opts.auth, opts.key_cache_ttl)
                .with_tenant_cap(tenant_cap)
                .with_failure_limit(opts.auth_failures_per_minute),
        );
        let flusher = tokio::spawn(gate.clone().run_flusher(opts.meter_flush));
        let control = aic_control::service::Control::new(store.clone(), &admin_token)
            .with_max_level(model.manifest.num_codebooks as u32);
        let pipeline = Arc::new(Pipeline::start_workers(
            models,
            EngineConfig {
                max_batch: per_worker,
                ..Default::default()
            },
        ));
        let bridge = match &opts.bridge_socket {
            Some(path) => {
                let b = crate::bridge::start(
                    path,
                    pipeline.clone(),
                    model.manifest.model_id.clone(),
                    gate.clone(),
                    opts.bridge_limits.clone(),
                )?;
                Some(b)
            }
            None => None,
        };
        if let Some(addr) = opts.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("cannot serve /metrics on {addr}"))?;
            tokio::spawn(publish_pipeline_metrics(pipeline.clone()));
        }
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CodecServiceServer<Svc>>()
            .await;
        health_reporter
            .set_serving::<ControlServiceServer<aic_control::service::Control>>()
            .await;
        // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection and older
        // tools only v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aic_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aic_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        // The first line on stderr names the address (tests and scripts read it; port 0 works).
        eprintln!(
            "aic serve: listening on {addr} (model {} {}, {slots} slots, {}; tenant share {tenant_cap})",
            model.manifest.model_id,
            model.manifest.model_version,
            if opts.tls.is_some() { "TLS" } else { "plaintext" }
        );
        let table_path = model_dir.join("rate_quality.json");
        let table = std::fs::read_to_string(&table_path)
            .map_err(|e| {
                format!(
                    "no measured rate-quality table ({}: {e})",
                    table_path.display()
                )
            })
            .and_then(|t| {
                RateQualityTable::from_json(&t)
                    .map_err(|e| format!("{}: {e}", table_path.display()))
            });
        if let Err(why) = &table {
            eprintln!("aic serve: Hints unavailable: {why}");
        }
        if let Some(path) = &opts.bridge_socket {
            eprintln!("aic serve: bridge link on {}", path.display());
        }
        if token_made {
            tracing::info!(
                path = %opts.data_dir.join("admin.token").display(),
                "made a new admin token (mode 0600)"
            );
        }
        if opts.auth == Auth::Off {
            tracing::warn!("API keys are OFF (--auth off): every caller is served as `anonymous`");
        }
        tracing::info!(
            %addr,
            store = %redact(&opts.store_url),
            auth = ?opts.auth,
            "serving CodecService and ControlService"
        );
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let svc = Svc {
            pipeline: pipeline.clone(),
            slots,
            first_message_timeout: opts.first_message_timeout,
            idle_timeout: opts.idle_timeout,
            cut: cut_rx,
            model,
            table,
            gate: gate.clone(),
        };
        let signalled = Arc::new(tokio::sync::Notify::new());
        let on_signal = signalled.clone();
        let mut builder = tonic::transport::Server::builder()
            // Dead peers are found (and their sessions freed) even when they send nothing.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .max_concurrent_streams(Some(opts.max_streams_per_connection));
        if let Some(tls) = &opts.tls {
            builder = builder
                .tls_config(tls_config(tls)?)
                .context("TLS configuration")?;
        }
        let server = builder
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(CodecServiceServer::new(svc).max_decoding_message_size(8 << 20))
            .add_service(ControlServiceServer::new(control))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    shutdown.await;
                    tracing::info!("shutting down: no new sessions; open ones finish");
                    on_signal.notify_one();
                },
            );
        // Open sessions finish their in-flight frames; past the grace period they are cut.
        let grace = opts.shutdown_grace;
        tokio::select! {
            r = server => r.context("gRPC server")?,
            _ = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_s = grace.as_secs(), "grace period over; cutting open sessions");
            }
        }
        // Sessions still open stop reading now and end with UNAVAILABLE.
        let _ = cut_tx.send(true);
        flusher.abort();
        drop(bridge); // stops accepting and removes the socket file
        let p = pipeline.clone();
        drop(pipeline);
        // Joins the workers after their queued frames are done.
        tokio::task::spawn_blocking(move || drop(p)).await.ok();
        // Sessions end as their forwarders finish; wait briefly, then flush everything metered
        // (live sessions' progress included), so nothing is lost.
        for _ in 0..20 {
            if gate.meter.live_sessions() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match gate.flush().await {
            Ok(n) => tracing::info!(accounts = n, "usage flushed"),
            Err(e) => tracing::error!(error = %e, "final usage flush failed"),
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Reads the PEM files of `--tls-cert`/`--tls-key` (and `--tls-client-ca` for mutual TLS).
fn tls_config(t: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut c = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?),
    );
    if let Some(ca) = &t.client_ca {
        c = c.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(c)
}

/// A store URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Copies the pipeline's own metrics (histograms and counters kept by the engine) into the
/// Prometheus registry once a second.
async fn publish_pipeline_metrics(p: Arc<Pipeline>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p2 = p.clone();
        let Ok(Some(m)) = tokio::task::spawn_blocking(move || p2.metrics()).await else {
            return;
        };
        for (name, v) in [
            ("aic_pipeline_frames_in_total", m.frames_in),
            ("aic_pipeline_frames_out_total", m.frames_out),
            ("aic_pipeline_fallbacks_total", m.fallbacks),
            ("aic_pipeline_dropped_total", m.dropped),
            ("aic_pipeline_late_total", m.late),
            ("aic_pipeline_corrupt_frames_total", m.corrupt_frames),
            ("aic_pipeline_backend_errors_total", m.backend_errors),
            ("aic_pipeline_rejected_streams_total", m.rejected_streams),
        ] {
            metrics::counter!(name).absolute(v);
        }
        for (name, h) in [
            ("aic_pipeline_frame_latency_seconds", &m.e2e_latency),
            ("aic_pipeline_queue_wait_seconds", &m.queue_wait),
            ("aic_pipeline_model_call_seconds", &m.model_time),
        ] {
            for (q, label) in [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")] {
                metrics::gauge!(name, "quantile" => label).set(h.quantile(q) as f64 / 1e6);
            }
        }
        metrics::gauge!("aic_pipeline_batch_size_mean").set(m.batch_size.mean());
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
