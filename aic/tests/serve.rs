//! End to end: the real `aic serve` process on loopback, driven by the generated tonic client.
//! Every codec round trip is held to the model card's STOI at its level, less 0.05: a server
//! that answered with silence or noise of the right size would fail.

mod support;

use std::path::Path;

use std::time::Duration;

use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::{
    DecodeOpen, DecodeRequest, EncodeOpen, EncodeRequest, ListModelsRequest, decode_request,
    encode_request, encode_response,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// `aic serve` with keys off (tests/control.rs tests them), through the shared test support
/// (own data dir, the server's log kept).
struct Server(support::Server);

impl Server {
    fn start(max_streams: usize) -> Self {
        Self::start_with(max_streams, "off")
    }

    fn start_with(max_streams: usize, metrics: &str) -> Self {
        let n = max_streams.to_string();
        Self(support::Server::start(&[
            "--max-streams",
            &n,
            "--metrics-listen",
            metrics,
            "--auth",
            "off",
        ]))
    }

    async fn client(&self) -> CodecServiceClient<Channel> {
        CodecServiceClient::connect(self.0.url()).await.unwrap()
    }
}

fn speech_s16le(frames: usize, rate: u32) -> Vec<Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech/en_f_confbridge.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    let x: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let up = (rate / 16_000) as usize;
    let n = 320 * up;
    (0..frames)
        .map(|f| {
            (0..n)
                .flat_map(|i| x[f * 320 + i / up].to_le_bytes())
                .collect()
        })
        .collect()
}

fn enc_open(level: u32, rate: u32) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level,
            sample_rate: rate,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: String::new(),
            egress_key: String::new(),
        })),
    }
}

fn pcm(b: Vec<u8>) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::PcmS16le(b)),
    }
}

/// Runs one encode session to completion; returns the AIC (or Opus-fallback) frames in order.
async fn encode_session(
    c: &mut CodecServiceClient<Channel>,
    level: u32,
    rate: u32,
    frames: usize,
) -> Vec<encode_response::Frame> {
    try_encode_session(c, level, rate, frames).await.unwrap()
}

/// [`encode_session`], with the error of the open call returned instead of panicking.
async fn try_encode_session(
    c: &mut CodecServiceClient<Channel>,
    level: u32,
    rate: u32,
    frames: usize,
) -> Result<Vec<encode_response::Frame>, tonic::Status> {
    let mut reqs = vec![enc_open(level, rate)];
    reqs.extend(speech_s16le(frames, rate).into_iter().map(pcm));
    let mut out: Vec<_> = c
        .encode_stream(tokio_stream::iter(reqs))
        .await?
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    out.sort_by_key(|r| r.seq);
    assert_eq!(
        out.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..frames as u64).collect::<Vec<_>>()
    );
    Ok(out.into_iter().map(|r| r.frame.unwrap()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_and_decode_sessions_at_16_and_48_khz() {
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = Server::start_with(8, &metrics_addr.to_string());
    let mut c = s.client().await;
    let models = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    // The repository's models by default: v2 (the default, first) and v1 beside it.
    let ids: Vec<_> = models.iter().map(|m| m.model_id.as_str()).collect();
    assert_eq!(ids, ["aic-speech-v2", "aic-speech-v1"]);
    assert_eq!(models[0].levels.len(), 8);
    assert!(
        models[0]
            .levels
            .windows(2)
            .all(|w| w[0].bitrate_kbps < w[1].bitrate_kbps)
    );

    let frames = encode_session(&mut c, 4, 16_000, 50).await;
    // Fallback frames become losses on the decode side, keeping the timeline.
    let aic: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| match f {
            encode_response::Frame::Aic(b) => b.clone(),
            encode_response::Frame::OpusFallback(_) => Vec::new(),
        })
        .collect();
    let through_model = aic.iter().filter(|b| !b.is_empty()).count();
    assert!(
        through_model >= 40,
        "most frames go through the model ({through_model} of 50)"
    );
    assert_eq!(encode_session(&mut c, 2, 48_000, 30).await.len(), 30);

    for rate in [16_000u32, 48_000] {
        let mut reqs = vec![DecodeRequest {
            msg: Some(decode_request::Msg::Open(DecodeOpen {
                codec: "aic".into(),
                model_id: models[0].model_id.clone(),
                sample_rate: rate,
                latency_budget_ms: 0,
                ..Default::default()
            })),
        }];
        reqs.extend(aic.iter().map(|b| DecodeRequest {
            msg: Some(decode_request::Msg::Aic(b.clone())),
        }));
        reqs.push(DecodeRequest {
            msg: Some(decode_request::Msg::Aic(Vec::new())),
        }); // lost frame
        let out: Vec<_> = c
            .decode_stream(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
        assert_eq!(out.len(), aic.len() + 1);
        let want = 2 * 320 * (rate / 16_000) as usize;
        assert!(
            out.iter().all(|r| r.pcm_s16le.len() == want),
            "{rate} Hz frames are {want} bytes"
        );
        assert!(
            out.iter()
                .find(|r| r.seq == aic.len() as u64)
                .unwrap()
                .concealed
        );
        // It is the input speech, not just frames of the right size.
        let mut out = out;
        out.sort_by_key(|r| r.seq);
        let pcm: Vec<i16> = out
            .iter()
            .flat_map(|r| {
                r.pcm_s16le
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
            })
            .collect();
        let reference = support::to_16k(&support::speech_pcm(50), 16_000);
        let (stoi, lag) = support::best_lag_stoi(&reference, &support::to_16k(&pcm, rate), 1200);
        let card = support::card_stoi("aic", "L4");
        eprintln!("decode at {rate} Hz: STOI {stoi:.3} at lag {lag} (card L4 {card:.3})");
        assert!(
            stoi > card - 0.05,
            "{rate} Hz: STOI {stoi:.3}, card L4 {card:.3}"
        );
    }

    let channel = Channel::from_shared(s.0.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "aic.v1.CodecService".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        st.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Prometheus metrics: per-RPC counts, metering, and the pipeline's own numbers (the
    // pipeline publishes its histograms on a timer: scrape until they are there, ≤ 20 s).
    let needles = [
        "aic_rpc_requests_total",
        "method=\"EncodeStream\"",
        "aic_bytes_saved_total",
        "aic_pipeline_frames_out_total",
        "aic_pipeline_frame_latency_seconds",
        "aic_frames_total",
    ];
    let t0 = std::time::Instant::now();
    loop {
        let text = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(metrics_addr).unwrap();
            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            c.read_to_string(&mut body).unwrap();
            body
        })
        .await
        .unwrap();
        let missing: Vec<_> = needles.iter().filter(|n| !text.contains(**n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{missing:?} missing from /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sessions_get_clear_statuses_and_do_not_disturb_others() {
    let s = Server::start(2);
    let mut c = s.client().await;
    // First message not `open`.
    let e = c
        .encode_stream(tokio_stream::iter(vec![pcm(vec![0; 640])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Bad parameters.
    for (level, rate) in [(99, 16_000), (2, 44_100)] {
        let e = c
            .encode_stream(tokio_stream::iter(vec![enc_open(level, rate)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    }
    // A good session held open while bad ones come and go.
    let (good_tx, good_rx) = mpsc::channel(64);
    good_tx.send(enc_open(4, 16_000)).await.unwrap();
    let mut good = c
        .encode_stream(ReceiverStream::new(good_rx))
        .await
        .unwrap()
        .into_inner();
    let speech = speech_s16le(20, 16_000);
    for f in &speech[..10] {
        good_tx.send(pcm(f.clone())).await.unwrap();
    }
    // A frame of the wrong size ends only its own session, with INVALID_ARGUMENT.
    let mut c2 = s.client().await;
    let mut bad = c2
        .encode_stream(tokio_stream::iter(vec![
            enc_open(4, 16_000),
            pcm(speech[0].clone()),
            pcm(vec![0; 100]),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut saw = None;
    while let Some(r) = bad.next().await {
        if let Err(e) = r {
            saw = Some(e.code());
        }
    }
    assert_eq!(saw, Some(Code::InvalidArgument));
    // A client that vanishes mid-stream: the server cleans up and keeps serving.
    {
        let (tx, rx) = mpsc::channel(8);
        tx.send(enc_open(4, 16_000)).await.unwrap();
        tx.send(pcm(speech[0].clone())).await.unwrap();
        let mut c3 = s.client().await;
        let _resp = c3.encode_stream(ReceiverStream::new(rx)).await.unwrap();
        drop(tx);
        drop(c3);
    }
    // With 2 slots, one held by `good`: once the others' slots are freed (the server notices
    // the vanished client asynchronously; a loaded machine may take a while) a new session
    // fits...
    let mut tries = 0;
    let frames = loop {
        match try_encode_session(&mut c2, 2, 16_000, 5).await {
            Ok(f) => break f,
            Err(e) if e.code() == Code::ResourceExhausted && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the vanished client's slot was not freed: {e}"),
        }
    };
    assert_eq!(frames.len(), 5);
    // ...and a third concurrent one is refused with RESOURCE_EXHAUSTED.
    let (hold_tx, hold_rx) = mpsc::channel(8);
    hold_tx.send(enc_open(2, 16_000)).await.unwrap();
    let _hold = c2
        .encode_stream(ReceiverStream::new(hold_rx))
        .await
        .unwrap();
    let e = s
        .client()
        .await
        .encode_stream(tokio_stream::iter(vec![enc_open(2, 16_000)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // The long-lived session got every frame answered.
    for f in &speech[10..] {
        good_tx.send(pcm(f.clone())).await.unwrap();
    }
    drop(good_tx);
    let mut n = 0;
    while let Some(r) = good.next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_come_from_the_measured_table() {
    use aic_proto::v1::{HintMode, HintsRequest};
    let s = Server::start(2);
    let mut c = s.client().await;
    let ask = |kbps: f64, loss: f64, mode: HintMode| HintsRequest {
        bandwidth_kbps: kbps,
        loss,
        rtt_ms: 40.0,
        jitter_ms: 5.0,
        mode: mode as i32,
        model_id: String::new(),
    };
    let low = c
        .hints(ask(3.0, 0.0, HintMode::Adaptive))
        .await
        .unwrap()
        .into_inner();
    assert!(low.use_aic && low.level >= 1, "{low:?}");
    assert!(low.bitrate_kbps <= 3.0, "{low:?}");
    assert!(low.expected_stoi.is_some());
    let lossy = c
        .hints(ask(3.0, 0.3, HintMode::Adaptive))
        .await
        .unwrap()
        .into_inner();
    assert!(lossy.bitrate_kbps <= low.bitrate_kbps, "{lossy:?}");
    let wide = c
        .hints(ask(64.0, 0.0, HintMode::Conservative))
        .await
        .unwrap()
        .into_inner();
    assert!(wide.bitrate_kbps > low.bitrate_kbps, "{wide:?}");
    let e = c
        .hints(ask(-1.0, 0.0, HintMode::Adaptive))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_clips_round_trip_and_respect_the_size_limit() {
    use aic_proto::v1::{DecodeClipRequest, EncodeClipRequest};
    let s = Server::start(4);
    let mut c = s.client().await;
    let pcm: Vec<u8> = speech_s16le(40, 16_000).concat();
    let open = EncodeOpen {
        codec: "aic".into(),
        level: 3,
        sample_rate: 16_000,
        latency_budget_ms: 0,
        reference_opus_kbps: 0,
        model_id: String::new(),
        egress_key: String::new(),
    };
    let enc = c
        .encode(EncodeClipRequest {
            open: Some(open.clone()),
            pcm_s16le: pcm.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enc.frames.len(), 40);
    assert!(
        enc.frames
            .iter()
            .enumerate()
            .all(|(i, f)| f.seq == i as u64)
    );
    let frames: Vec<Vec<u8>> = enc
        .frames
        .into_iter()
        .map(|f| match f.frame.unwrap() {
            encode_response::Frame::Aic(b) => b,
            encode_response::Frame::OpusFallback(_) => Vec::new(), // decode side conceals it
        })
        .collect();
    let dec = c
        .decode(DecodeClipRequest {
            open: Some(DecodeOpen {
                codec: "aic".into(),
                model_id: enc.model_id,
                sample_rate: 48_000,
                latency_budget_ms: 0,
                ..Default::default()
            }),
            frames,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dec.pcm_s16le.len(), 40 * 960 * 2);
    let pcm48: Vec<i16> = dec
        .pcm_s16le
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let reference = support::to_16k(&support::speech_pcm(40), 16_000);
    let (stoi, lag) = support::best_lag_stoi(&reference, &support::to_16k(&pcm48, 48_000), 1200);
    let card = support::card_stoi("aic", "L3");
    eprintln!("unary round trip: STOI {stoi:.3} at lag {lag} (card L3 {card:.3})");
    assert!(stoi > card - 0.05, "STOI {stoi:.3}, card L3 {card:.3}");
    // 61 s of audio is over the unary limit: RESOURCE_EXHAUSTED, with the way out in the message.
    let long = vec![0u8; 61 * 16_000 * 2];
    let e = c
        .encode(EncodeClipRequest {
            open: Some(open),
            pcm_s16le: long,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("EncodeStream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_in_and_opus_out_for_legacy_endpoints() {
    use aic_codec::codec::{Decoder, Encoder};
    use aic_proto::v1::DecodeOutput;
    let s = Server::start(4);
    let mut c = s.client().await;
    // A WebRTC publisher's side: 48 kHz Opus packets.
    let mut opus =
        aic_codec::opus::OpusEncoder::new(aic_codec::opus::OpusVariant::Plain, 48_000, 32_000)
            .unwrap();
    let mut reqs = vec![enc_open(6, 16_000)];
    for f in speech_s16le(30, 48_000) {
        let pcm: Vec<f32> = f
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        let mut pkt = Vec::new();
        opus.encode_frame(&pcm, &mut pkt).unwrap();
        reqs.push(EncodeRequest {
            msg: Some(encode_request::Msg::Opus(pkt)),
        });
    }
    reqs.push(EncodeRequest {
        msg: Some(encode_request::Msg::Opus(vec![0xFF, 0x00])),
    }); // garbage: concealed, not fatal
    let mut out: Vec<_> = c
        .encode_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(out.len(), 31);
    out.sort_by_key(|r| r.seq);
    let frames: Vec<Vec<u8>> = out
        .into_iter()
        .map(|r| match r.frame {
            Some(encode_response::Frame::Aic(b)) => b,
            _ => Vec::new(), // a fallback frame is a loss on the decode side
        })
        .collect();
    // And back as Opus for a receiver that only speaks Opus.
    let mut reqs = vec![DecodeRequest {
        msg: Some(decode_request::Msg::Open(DecodeOpen {
            codec: "aic".into(),
            sample_rate: 16_000,
            output: DecodeOutput::Opus as i32,
            opus_bitrate_kbps: 16,
            ..Default::default()
        })),
    }];
    reqs.extend(frames.iter().map(|b| DecodeRequest {
        msg: Some(decode_request::Msg::Aic(b.clone())),
    }));
    let out: Vec<_> = c
        .decode_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(out.len(), frames.len());
    let info = aic_codec::CodecInfo {
        codec: "opus".into(),
        model_id: String::new(),
        sample_rate: 48_000,
        frame_samples: 960,
        delay_samples: 0,
        point: aic_codec::OperatingPoint::BitrateBps(16_000),
    };
    let mut dec =
        aic_codec::opus::OpusDecoder::new(aic_codec::opus::OpusVariant::Plain, &info).unwrap();
    let mut pcm = Vec::new();
    for r in &out {
        assert!(r.pcm_s16le.is_empty() && !r.opus.is_empty());
        dec.decode_frame(Some(&r.opus), &mut pcm).unwrap();
    }
    assert_eq!(pcm.len(), out.len() * 960, "every packet is 20 ms of Opus");
    // Opus 32k in, AIC L6, Opus 16k out: still the speech that went in.
    let pcm48: Vec<i16> = pcm
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
        .collect();
    let reference = support::to_16k(&support::speech_pcm(30), 16_000);
    let (stoi, lag) = support::best_lag_stoi(&reference, &support::to_16k(&pcm48, 48_000), 1600);
    let card = support::card_stoi("aic", "L6");
    eprintln!("Opus in, AIC L6, Opus out: STOI {stoi:.3} at lag {lag} (card L6 {card:.3})");
    assert!(stoi > card - 0.05, "STOI {stoi:.3}, card L6 {card:.3}");
}

/// A copy of the shipped model under another `model_id` (the manifest's sha256 fields are the
/// graph files', so only the id changes): a second model to serve beside the first. Frames of
/// the two differ in their CRC key (the model tag covers the id).
fn model_copy(into: &Path, id: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/aic-speech-v1");
    let dst = into.join(id);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let path = dst.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["model_id"] = id.into();
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    dst
}

fn enc_open_for(model_id: &str, level: u32) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: model_id.into(),
            egress_key: String::new(),
        })),
    }
}

/// Encodes `frames` of speech with `model_id` in a session; the frames (fallbacks as losses).
async fn encode_with(
    c: &mut CodecServiceClient<Channel>,
    model_id: &str,
    frames: usize,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut reqs = vec![enc_open_for(model_id, 4)];
    reqs.extend(speech_s16le(frames, 16_000).into_iter().map(pcm));
    let mut out: Vec<_> = c
        .encode_stream(tokio_stream::iter(reqs))
        .await?
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await?;
    out.sort_by_key(|r| r.seq);
    assert_eq!(out.len(), frames);
    Ok(out
        .into_iter()
        .map(|r| match r.frame.unwrap() {
            encode_response::Frame::Aic(b) => b,
            encode_response::Frame::OpusFallback(_) => Vec::new(),
        })
        .collect())
}

/// Decodes `frames` under `model_id` in a session; the 16 kHz PCM, or the status that ended it.
async fn decode_with(
    c: &mut CodecServiceClient<Channel>,
    model_id: &str,
    frames: &[Vec<u8>],
) -> Result<Vec<i16>, tonic::Status> {
    let mut reqs = vec![DecodeRequest {
        msg: Some(decode_request::Msg::Open(DecodeOpen {
            codec: "aic".into(),
            model_id: model_id.into(),
            sample_rate: 16_000,
            ..Default::default()
        })),
    }];
    reqs.extend(frames.iter().map(|b| DecodeRequest {
        msg: Some(decode_request::Msg::Aic(b.clone())),
    }));
    let mut out: Vec<_> = c
        .decode_stream(tokio_stream::iter(reqs))
        .await?
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await?;
    out.sort_by_key(|r| r.seq);
    Ok(out
        .iter()
        .flat_map(|r| {
            r.pcm_s16le
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_side_by_side_picked_by_model_id_share_one_slot_count() {
    use aic_proto::v1::{DecodeClipRequest, EncodeClipRequest, HintMode, HintsRequest};
    const COPY: &str = "aic-speech-v1-copy";
    let tmp = tempfile::tempdir().unwrap();
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/aic-speech-v1");
    let copy = model_copy(tmp.path(), COPY);
    let (v1s, copys) = (v1.to_str().unwrap(), copy.to_str().unwrap());

    // Two directories with one model_id: refused at startup, naming both.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .args(["--auth", "off", "--model-dir", v1s, "--model-dir", copys])
        .args(["--model-dir", v1s])
        .env("AIC_DATA_DIR", tmp.path().join("data-dup"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.matches(v1s).count() >= 2 && err.contains("aic-speech-v1"),
        "the error names the id and both directories: {err}"
    );

    // One slot for the whole server, two models.
    let s = Server(support::Server::start(&[
        "--model-dir",
        v1s,
        "--model-dir",
        copys,
        "--max-streams",
        "1",
        "--workers",
        "1",
        "--auth",
        "off",
    ]));
    assert!(s.0.log().contains(COPY), "{}", s.0.log());
    let mut c = s.client().await;
    let models = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let ids: Vec<_> = models.iter().map(|m| m.model_id.as_str()).collect();
    assert_eq!(ids, ["aic-speech-v1", COPY], "the default first");
    assert!(models.iter().all(|m| m.levels.len() == 8), "{models:?}");

    // Each model round-trips speech in sessions named by its id.
    let frames = 30;
    let reference = support::to_16k(&support::speech_pcm(frames), 16_000);
    let card = support::card_stoi("aic", "L4");
    let mut encoded = Vec::new();
    for id in ["aic-speech-v1", COPY] {
        let aic = encode_with(&mut c, id, frames).await.unwrap();
        assert!(aic.iter().filter(|b| !b.is_empty()).count() >= frames * 3 / 4);
        let pcm = decode_with(&mut c, id, &aic).await.unwrap();
        let (stoi, lag) = support::best_lag_stoi(&reference, &support::to_16k(&pcm, 16_000), 800);
        eprintln!("{id}: STOI {stoi:.3} at lag {lag} (card L4 {card:.3})");
        assert!(
            stoi > card - 0.05,
            "{id}: STOI {stoi:.3}, card L4 {card:.3}"
        );
        encoded.push(aic);
    }

    // No model_id: the first model.
    let clip = |model_id: &str| EncodeClipRequest {
        open: Some(EncodeOpen {
            codec: "aic".into(),
            level: 2,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: model_id.into(),
            egress_key: String::new(),
        }),
        pcm_s16le: speech_s16le(3, 16_000).concat(),
    };
    let enc = c.encode(clip("")).await.unwrap().into_inner();
    assert_eq!(enc.model_id, "aic-speech-v1");
    let enc = c.encode(clip(COPY)).await.unwrap().into_inner();
    assert_eq!(enc.model_id, COPY);
    // The default model's frames decode without a model_id.
    decode_with(&mut c, "", &encoded[0]).await.unwrap();

    // An unknown id: INVALID_ARGUMENT naming the served ones, for every kind of call.
    let e = encode_with(&mut c, "aic-speech-v9", 2).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains(COPY), "{e}");
    let e = decode_with(&mut c, "aic-speech-v9", &encoded[0][..2])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = c.encode(clip("aic-speech-v9")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let hints = |model_id: &str| HintsRequest {
        bandwidth_kbps: 3.0,
        loss: 0.0,
        rtt_ms: 40.0,
        jitter_ms: 5.0,
        mode: HintMode::Adaptive as i32,
        model_id: model_id.into(),
    };
    let e = c.hints(hints("aic-speech-v9")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Each model's own table answers Hints.
    for id in ["", "aic-speech-v1", COPY] {
        let h = c.hints(hints(id)).await.unwrap().into_inner();
        assert!(h.use_aic && h.expected_stoi.is_some(), "{id}: {h:?}");
    }

    // Frames of one model sent to the other: a clear error naming the model, not concealment.
    let e = decode_with(&mut c, COPY, &encoded[0]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("\"aic-speech-v1\""), "{e}");
    let e = c
        .decode(DecodeClipRequest {
            open: Some(DecodeOpen {
                codec: "aic".into(),
                model_id: "aic-speech-v1".into(),
                sample_rate: 16_000,
                ..Default::default()
            }),
            frames: encoded[1].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains(COPY), "{e}");

    // The slot count is the server's: a session open on one model leaves none for the other.
    let (hold_tx, hold_rx) = mpsc::channel(8);
    hold_tx.send(enc_open_for("", 4)).await.unwrap();
    hold_tx
        .send(pcm(speech_s16le(1, 16_000).remove(0)))
        .await
        .unwrap();
    let mut hold = c
        .encode_stream(ReceiverStream::new(hold_rx))
        .await
        .unwrap()
        .into_inner();
    hold.next().await.unwrap().unwrap(); // open, and through the pipeline
    let mut c2 = s.client().await;
    let e = encode_with(&mut c2, COPY, 2).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("all 1 pipeline slots"), "{e}");
    // Given back when the session ends.
    drop(hold_tx);
    while hold.next().await.is_some() {}
    let mut tries = 0;
    loop {
        match encode_with(&mut c2, COPY, 2).await {
            Ok(f) => break assert_eq!(f.len(), 2),
            Err(e) if e.code() == Code::ResourceExhausted && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the slot was not given back: {e}"),
        }
    }
}
