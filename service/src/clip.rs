//! Unary `Encode` and `Decode`: a whole clip (≤ 60 s) through one pipeline stream, with the
//! flow control of a streaming session.

use std::sync::Arc;

use aic_codec::resample::FrameResampler;
use aic_control::policy::{KeyGrant, Want};
use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{Output, Payload, StreamConfig};
use aic_proto::v1::{DecodeClipRequest, DecodeClipResponse, EncodeClipRequest, EncodeClipResponse};
use tonic::Status;

use crate::models::Slots;
use crate::svc::{
    IN_FLIGHT, STALL, Svc, budget, check_rate, encode_response_of, ex, meter_encoded, opus_kbps,
    pcm_from_s16le, reference_frame_bytes, s16le_from_pcm,
};

/// Longest clip the unary RPCs take; longer audio belongs on the streaming RPCs.
const MAX_CLIP_SECONDS: usize = 60;

/// Runs a whole clip through a pipeline stream with the same flow control as a streaming
/// session (at most `IN_FLIGHT` frames inside), on a blocking thread, holding one of the
/// server's slots; outputs in input order.
fn run_clip<T: Send + 'static>(
    pipeline: Arc<Pipeline>,
    slots: Arc<Slots>,
    cfg: StreamConfig,
    items: Vec<T>,
    push: impl Fn(&StreamSender, T) -> Result<(), aic_pipeline::driver::Closed> + Send + 'static,
) -> tokio::task::JoinHandle<Result<Vec<Output>, Status>> {
    tokio::task::spawn_blocking(move || {
        let (sender, outputs, _slot) = slots.open_status(&pipeline, cfg)?;
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
        // Until the engine has closed the stream (its output channel ends), its pipeline slot
        // is not free: the server's slot is given back after that, not before.
        drop(sender);
        let _ = outputs.recv_timeout(STALL);
        Ok(got)
    })
}

impl Svc {
    pub(crate) async fn encode_clip(
        &self,
        grant: &KeyGrant,
        r: EncodeClipRequest,
    ) -> Result<EncodeClipResponse, Status> {
        let open = r
            .open
            .ok_or_else(|| Status::invalid_argument("`open` is required"))?;
        let (served, level) = self.check_encode_open(&open, grant)?;
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
        let outs = run_clip(
            served.pipeline.clone(),
            self.slots.clone(),
            cfg,
            frames,
            |s, f| s.push_pcm(f),
        )
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
            model_id: served.id().to_owned(),
        })
    }

    pub(crate) async fn decode_clip(
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
        let served = self.models.pick(&open.model_id)?;
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
        // Frames of another served model are refused with its name, before any model work.
        let mut check = self.models.frame_check(served);
        for (n, f) in r.frames.iter().enumerate() {
            check.check(n as u64, f)?;
        }
        let mut cfg = StreamConfig::decode();
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(grant, Want::Decode)?;
        ticket
            .meter
            .counters
            .bytes_in(r.frames.iter().map(|f| f.len() as u64).sum());
        let outs = run_clip(
            served.pipeline.clone(),
            self.slots.clone(),
            cfg,
            r.frames,
            |s, f| s.push_aic((!f.is_empty()).then_some(f)),
        )
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
}
