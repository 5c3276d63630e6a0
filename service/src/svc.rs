//! [`Svc`], the `CodecService` implementation: each RPC authenticates through the control gate
//! and is counted (`aic_rpc_requests_total`) here, then runs in its module (`session`, `clip`,
//! `hints`); and what those share: the checks of client-given numbers and strings, PCM
//! conversion, the Opus side of a session, encode metering.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aic_control::gate::{Gate, Ticket};
use aic_control::policy::KeyGrant;
use aic_pipeline::engine::{EngineError, Output, Payload};
use aic_proto::v1::codec_service_server::CodecService;
use aic_proto::v1::{
    DecodeClipRequest, DecodeClipResponse, DecodeRequest, DecodeResponse, EncodeClipRequest,
    EncodeClipResponse, EncodeRequest, EncodeResponse, HintsRequest, HintsResponse,
    ListModelsRequest, ListModelsResponse, encode_response,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::models::{Models, Served, Slots};

const DEFAULT_BUDGET_MS: u32 = 40;
/// Frames a session may have inside the pipeline. The session stops reading its request stream
/// at this many (HTTP/2 flow control then slows the client), so a client sending faster than
/// real time is paced instead of overflowing the pipeline's bounded per-stream queue (4).
pub(crate) const IN_FLIGHT: usize = 3;
/// How long a session waits for a frame inside the pipeline to come back before it gives up
/// with UNAVAILABLE (every frame comes back within its latency budget, ≤ 1 s, normally).
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// Opus' own bitrate range (kbps), for every client-given Opus bitrate.
const OPUS_KBPS: std::ops::RangeInclusive<u32> = 6..=510;

pub(crate) fn count_rpc(method: &'static str, code: &'static str) {
    metrics::counter!("aic_rpc_requests_total", "method" => method, "code" => code).increment(1);
}

pub(crate) fn code_name(s: &Status) -> &'static str {
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

pub(crate) type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(crate) struct Svc {
    /// Every served model (its pipeline, its table), the default first.
    pub(crate) models: Arc<Models>,
    /// The server's slots, every model and the bridge together: the one number startup and
    /// errors name.
    pub(crate) slots: Arc<Slots>,
    pub(crate) first_message_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Becomes true when the shutdown grace period is over: open sessions are cut.
    pub(crate) cut: tokio::sync::watch::Receiver<bool>,
    pub(crate) gate: Arc<Gate>,
    /// Recordable sessions and their egresses (`EgressService`).
    pub(crate) egress: Arc<crate::egress::Hub>,
}

pub(crate) fn pcm_from_s16le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect()
}

pub(crate) fn s16le_from_pcm(p: &[f32]) -> Vec<u8> {
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

pub(crate) fn check_rate(rate: u32) -> Result<(), Status> {
    match rate {
        16_000 | 48_000 => Ok(()),
        r => Err(Status::invalid_argument(format!(
            "sample_rate {r} not supported (16000 or 48000)"
        ))),
    }
}

pub(crate) fn budget(ms: u32) -> Result<Duration, Status> {
    match ms {
        0 => Ok(Duration::from_millis(u64::from(DEFAULT_BUDGET_MS))),
        20..=1000 => Ok(Duration::from_millis(u64::from(ms))),
        _ => Err(Status::invalid_argument(format!(
            "latency_budget_ms {ms} not in 20..=1000 (0 = default)"
        ))),
    }
}

/// A client-given string, bounded and escaped, for an error message.
pub(crate) fn ex(s: &str) -> String {
    aic_control::excerpt(s, 32)
}

/// An Opus bitrate a client gave (kbps; 0 = `default`), checked against Opus' range.
pub(crate) fn opus_kbps(field: &str, v: u32, default: u32) -> Result<u32, Status> {
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

pub(crate) fn open_error(e: EngineError, slots: usize) -> Status {
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

/// One encoder output as the response message (AIC frame, or the Opus frame it fell back to).
pub(crate) fn encode_response_of(o: Output) -> Result<EncodeResponse, Status> {
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
        self.list_models_inner(req).await
    }
}

impl Svc {
    /// Validates an encode session's parameters; returns its model (`open.model_id`, empty =
    /// the default) and the level to use (0 = the model's highest level the key allows).
    pub(crate) fn check_encode_open(
        &self,
        open: &aic_proto::v1::EncodeOpen,
        grant: &KeyGrant,
    ) -> Result<(&Served, u32), Status> {
        if open.codec != "aic" {
            return Err(Status::invalid_argument(format!(
                "codec {} not served (\"aic\")",
                ex(&open.codec)
            )));
        }
        check_rate(open.sample_rate)?;
        opus_kbps("reference_opus_kbps", open.reference_opus_kbps, 32)?;
        let served = self.models.pick(&open.model_id)?;
        let cap = cap(served, grant);
        let m = &served.model.manifest;
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
        Ok((served, level))
    }
}

/// The level cap of a key for a model.
pub(crate) fn cap(served: &Served, grant: &KeyGrant) -> u32 {
    grant
        .policy
        .level_cap(served.model.manifest.num_codebooks as u32)
}

/// What Opus at the stream's reference bitrate (kbps, already checked by [`opus_kbps`]; 32 by
/// default, a typical WebRTC speech rate) would send per 20 ms frame: the baseline of "bytes
/// saved".
pub(crate) fn reference_frame_bytes(kbps: u32) -> f64 {
    f64::from(kbps) * 1000.0 / 8.0 * 0.02
}

/// Meters one encoded frame of `n` bytes: 20 ms of media, bytes out, and bytes saved against the
/// reference Opus. Savings are metered on the encode side only, where the smaller frame is made;
/// counting them again when the same frames are decoded would bill them twice.
pub(crate) fn meter_encoded(ticket: &Ticket, n: usize, ref_bytes: f64) {
    let saved = (ref_bytes - n as f64).max(0.0) as u64;
    metrics::counter!("aic_bytes_saved_total").increment(saved);
    let c = &ticket.meter.counters;
    c.encoded_ms(20);
    c.bytes_out(n as u64);
    c.bytes_saved(saved);
}
