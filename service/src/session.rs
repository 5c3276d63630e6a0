//! Streaming sessions (`EncodeStream`, `DecodeStream`): each gRPC session is one pipeline
//! stream. The async side only parses, converts sample rates and forwards: pushing into the
//! pipeline never blocks, and each session's outputs are forwarded by a blocking task. Flow
//! control: at most [`IN_FLIGHT`] frames inside the pipeline, then the session stops reading its
//! request stream. Bounded waits: the first message ([`Svc::open_session`]), each next message
//! (idle timeout), a frame inside the pipeline ([`STALL`]), and the shutdown cut.

use std::sync::Arc;
use std::time::Duration;

use aic_codec::codec::{Decoder as _, Encoder as _};
use aic_codec::resample::FrameResampler;
use aic_control::policy::{KeyGrant, Want};
use aic_pipeline::driver::StreamSender;
use aic_pipeline::engine::{Output, Payload, StreamConfig};
use aic_proto::v1::{
    DecodeRequest, DecodeResponse, EncodeRequest, EncodeResponse, decode_request, encode_request,
};
use tonic::{Request, Response, Status, Streaming};

use crate::models::Slot;
use crate::svc::{
    IN_FLIGHT, RespStream, STALL, Svc, budget, check_rate, code_name, encode_response_of, ex,
    meter_encoded, opus_info, opus_kbps, pcm_from_s16le, reference_frame_bytes, s16le_from_pcm,
};

/// Frames a session may have on their way back to the client before the forwarder waits.
const RESPONSE_QUEUE: usize = 64;
/// RFC 6716 §3.2.1: no Opus packet is longer.
const MAX_OPUS_PACKET: usize = 1275;

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

/// Forwards one stream's pipeline outputs to its gRPC response channel until either side ends.
/// `slot`: the session's share of the server's slot (the reader holds the other).
fn forward<T: Send + 'static>(
    outputs: std::sync::mpsc::Receiver<Output>,
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    credits: Arc<tokio::sync::Semaphore>,
    slot: Arc<Slot>,
    mut convert: impl FnMut(Output) -> Result<T, Status> + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        while let Ok(o) = outputs.recv() {
            credits.add_permits(1);
            if tx.blocking_send(convert(o)).is_err() {
                break; // the client went away; dropping `outputs` is enough
            }
        }
        drop(slot);
    });
}

impl Svc {
    /// What every streaming session does first: authenticate, then wait (bounded by the
    /// first-message timeout, and by the shutdown cut) for the first message.
    pub(crate) async fn open_session<T>(
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

    pub(crate) async fn encode_stream_inner(
        &self,
        req: Request<Streaming<EncodeRequest>>,
    ) -> Result<Response<RespStream<EncodeResponse>>, Status> {
        let (grant, mut inbound, mut cut, first) = self.open_session(req).await?;
        let Some(encode_request::Msg::Open(open)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be `open`"));
        };
        let (served, level) = self.check_encode_open(&open, &grant)?;
        let mut cfg = StreamConfig::encode(level as u8);
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(&grant, Want::Encode { level })?;
        let counters = ticket.meter.counters.clone();
        // A named session can be recorded (EgressService): its input PCM and AIC frames go
        // to the egresses attached to it.
        let tap = if open.egress_key.is_empty() {
            None
        } else {
            let m = &served.model.manifest;
            Some(self.egress.register(
                &grant.tenant_id,
                &open.egress_key,
                aic_codec::CodecInfo {
                    codec: "aic".into(),
                    model_id: m.model_id.clone(),
                    sample_rate: m.sample_rate,
                    frame_samples: m.frame_samples,
                    delay_samples: m.decoder_delay_samples,
                    point: aic_codec::OperatingPoint::Level(level as u8),
                },
            )?)
        };
        let reader_tap = tap.clone();
        let (sender, outputs, slot) = self.slots.open_status(&served.pipeline, cfg)?;
        let model_label = served.id().to_owned();
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
        let reader_slot = slot.clone();
        forward(outputs, tx.clone(), credits, slot, move |o: Output| {
            let (kind, n) = match &o.payload {
                Payload::Aic(b) => ("aic", b.len()),
                Payload::OpusFallback(b) => ("opus_fallback", b.len()),
                _ => ("other", 0),
            };
            metrics::counter!("aic_frames_total", "direction" => "encode", "kind" => kind,
                "model" => model_label.clone())
            .increment(1);
            metrics::counter!("aic_bytes_out_total", "method" => "EncodeStream")
                .increment(n as u64);
            // The ticket lives as long as this forwarder: the session ends when its last
            // output is through (or the client is gone).
            meter_encoded(&ticket, n, ref_bytes);
            if let Some(t) = &tap {
                t.tap.frame(o.seq, &o.payload);
            }
            encode_response_of(o)
        });
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            let sender: StreamSender = sender;
            let _slot = reader_slot;
            let mut guard = guard;
            let mut mid = Vec::with_capacity(320);
            let mut opus_in: Option<aic_codec::opus::OpusDecoder> = None;
            let tap = reader_tap;
            let mut seq = 0u64;
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
                if !wait_for_room(&reader_credits, &tx, &mut guard).await {
                    break;
                }
                if let Some(t) = &tap {
                    t.tap.pcm(seq, &pcm);
                }
                seq += 1;
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

    pub(crate) async fn decode_stream_inner(
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
        let served = self.models.pick(&open.model_id)?;
        let mut check = self.models.frame_check(served);
        check_rate(open.sample_rate)?;
        let mut cfg = StreamConfig::decode();
        cfg.budget = budget(open.latency_budget_ms)?;
        let ticket = self.gate.admit(&grant, Want::Decode)?;
        let counters = ticket.meter.counters.clone();
        let (sender, outputs, slot) = self.slots.open_status(&served.pipeline, cfg)?;
        let model_label = served.id().to_owned();
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
        let reader_slot = slot.clone();
        forward(outputs, tx.clone(), credits, slot, move |o: Output| {
            let kind = if matches!(o.payload, Payload::Concealed(_)) {
                "concealed"
            } else {
                "pcm"
            };
            metrics::counter!("aic_frames_total", "direction" => "decode", "kind" => kind,
                "model" => model_label.clone())
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
            let _slot = reader_slot;
            let mut guard = guard;
            let mut n = 0u64;
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
                // Frames of another served model end the stream with its name, rather than
                // being concealed one by one.
                if let Err(st) = check.check(n, &frame) {
                    guard.code = "invalid_argument";
                    let _ = tx.send(Err(st)).await;
                    break;
                }
                n += 1;
                // A corrupt frame is not a protocol error: the pipeline conceals it.
                let frame = (!frame.is_empty()).then_some(frame);
                if !wait_for_room(&reader_credits, &tx, &mut guard).await {
                    break;
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

/// Waits for room in the pipeline (flow control), bounded: every frame inside comes back
/// (model output or fallback) within its budget. False when the session must end: the
/// credits are gone, or the pipeline stalled (the client is told UNAVAILABLE).
async fn wait_for_room<T>(
    credits: &tokio::sync::Semaphore,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
    guard: &mut SessionGuard,
) -> bool {
    match tokio::time::timeout(STALL, credits.acquire()).await {
        Ok(Ok(p)) => {
            p.forget();
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            guard.code = "unavailable";
            let _ = tx.send(Err(Status::unavailable("pipeline stalled"))).await;
            false
        }
    }
}
