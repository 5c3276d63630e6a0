//! The batched engine on virtual time (faster than real time), with the real model through
//! ONNX Runtime as the backend.

// Frame loops index several parallel per-stream arrays by time; iterators would obscure that.
#![allow(clippy::needless_range_loop)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_codec::codec::{Decoder, Encoder};
use aic_pipeline::aic::{AicDecoder, AicEncoder, default_model_dir};
use aic_pipeline::engine::{
    Engine, EngineConfig, EngineError, Output, Payload, Poll, StreamConfig, StreamId,
};
use aic_pipeline::model::AicModel;

fn model() -> Arc<AicModel> {
    Arc::new(AicModel::load(&default_model_dir(), 1).expect("shipped model loads"))
}

fn clip(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech")
        .join(name);
    let mut r = hound::WavReader::open(p).unwrap();
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

/// Distinct speech for stream `i`: a different clip and offset each.
fn stream_audio(i: usize, frames: usize) -> Vec<f32> {
    let names = [
        "en_espeak.wav",
        "en_f_confbridge.wav",
        "it_m_speed-dial.wav",
        "ru_f_vm-helpexit.wav",
    ];
    let x = clip(names[i % names.len()]);
    let off = (i / names.len()) * 320 * 7;
    x[off..off + frames * 320].to_vec()
}

/// Runs every batch the engine hands out, pretending each takes `step` of virtual time.
fn drain(e: &mut Engine, m: &AicModel, now: &mut Instant, step: Duration, out: &mut Vec<Output>) {
    loop {
        match e.poll(*now) {
            Poll::Run(mut b) => {
                let g = b.graph;
                let (i, s, o, n) = b.buffers();
                let r = m.step(g, n, i, s, o);
                *now += step;
                e.complete(*now, b, r);
            }
            Poll::WaitUntil(t) if t <= *now + Duration::from_millis(20) => *now = t.max(*now),
            _ => break,
        }
        while let Some(o) = e.pop_output() {
            out.push(o);
        }
    }
    while let Some(o) = e.pop_output() {
        out.push(o);
    }
}

fn solo_frames(m: &Arc<AicModel>, level: u8, x: &[f32]) -> Vec<Vec<u8>> {
    let mut enc = AicEncoder::new(m.clone(), level).unwrap();
    let mut buf = Vec::new();
    x.chunks_exact(320)
        .map(|f| {
            enc.encode_frame(f, &mut buf).unwrap();
            buf.clone()
        })
        .collect()
}

fn frames_of(outs: &[Output], id: StreamId) -> Vec<Vec<u8>> {
    let mut v: Vec<&Output> = outs.iter().filter(|o| o.stream == id).collect();
    v.sort_by_key(|o| o.seq);
    v.iter()
        .map(|o| match &o.payload {
            Payload::Aic(f) => f.clone(),
            other => panic!("stream {id} seq {}: unexpected {other:?}", o.seq),
        })
        .collect()
}

fn agreement(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn batch_closes_when_full_or_when_the_oldest_frame_must_go() {
    let m = model();
    let cfg = EngineConfig {
        max_batch: 4,
        max_queue_delay: Duration::from_millis(8),
        ..Default::default()
    };
    let mut e = Engine::new(m.clone(), cfg);
    let ids: Vec<StreamId> = (0..4)
        .map(|_| e.open(StreamConfig::encode(4)).unwrap())
        .collect();
    let t0 = Instant::now();
    let f = vec![0.01f32; 320];
    // Two of four streams have frames: the batcher waits for companions...
    e.push_pcm(t0, ids[0], &f).unwrap();
    e.push_pcm(t0 + Duration::from_millis(1), ids[1], &f)
        .unwrap();
    let wake = match e.poll(t0 + Duration::from_millis(1)) {
        Poll::WaitUntil(t) => t,
        other => panic!("expected to wait, got {other:?}"),
    };
    assert!(
        wake <= t0 + Duration::from_millis(8),
        "must not wait past max_queue_delay"
    );
    // ...and closes at the wake-up time with what it has.
    let Poll::Run(b) = e.poll(wake) else {
        panic!("batch due")
    };
    assert_eq!(b.size, 2);
    e.complete(wake, b, Ok::<(), String>(()));
    assert_eq!(std::iter::from_fn(|| e.pop_output()).count(), 2);
    // Four ready frames fill the batch at once.
    let t1 = t0 + Duration::from_millis(20);
    for &id in &ids[..4] {
        e.push_pcm(t1, id, &f).unwrap();
    }
    let Poll::Run(b) = e.poll(t1) else {
        panic!("a full batch runs immediately")
    };
    assert_eq!(b.size, 4);
}

#[test]
fn streams_never_leak_into_each_other_even_across_slot_reuse() {
    let m = model();
    let cfg = EngineConfig {
        max_batch: 4,
        ..Default::default()
    };
    let mut e = Engine::new(m.clone(), cfg);
    let frames = 40;
    let level = 8;
    let audio: Vec<Vec<f32>> = (0..5).map(|i| stream_audio(i, frames)).collect();
    let mut ids: Vec<StreamId> = (0..4)
        .map(|_| e.open(StreamConfig::encode(level)).unwrap())
        .collect();
    let mut now = Instant::now();
    let mut outs = Vec::new();
    // Streams arrive with different phases; the batcher forms mixed batches.
    for t in 0..frames {
        for (i, &id) in ids.iter().enumerate().take(4) {
            if i == 3 && t >= 20 {
                continue;
            }
            let at = now + Duration::from_millis(3 * i as u64);
            e.push_pcm(at, id, &audio[i][t * 320..(t + 1) * 320])
                .unwrap();
        }
        if t == 20 {
            // Stream 3 leaves while a batch holding its previous frame is out; stream 4 takes
            // the slot. The late result for stream 3 must be dropped, stream 4 starts clean.
            e.push_pcm(now, ids[3], &audio[3][t * 320..(t + 1) * 320])
                .unwrap();
            let Poll::Run(mut b) = e.poll(now + Duration::from_millis(12)) else {
                panic!("batch due")
            };
            let g = b.graph;
            let (i, s, o, n) = b.buffers();
            let r = m.step(g, n, i, s, o);
            e.close(ids[3]).unwrap();
            let new = e.open(StreamConfig::encode(level)).unwrap();
            e.complete(now, b, r);
            ids.push(new);
            assert_eq!(e.metrics.stale_results, 1);
        }
        drain(&mut e, &m, &mut now, Duration::from_millis(2), &mut outs);
        if t >= 21 {
            e.push_pcm(now, ids[4], &audio[4][(t - 21) * 320..(t - 20) * 320])
                .unwrap();
            drain(&mut e, &m, &mut now, Duration::from_millis(2), &mut outs);
        }
        now += Duration::from_millis(20);
    }
    assert_eq!(e.metrics.fallbacks, 0, "no deadline pressure in this test");
    assert_eq!(
        e.metrics.backend_errors, 0,
        "{:?}",
        e.metrics.last_backend_error
    );
    let batch_sizes = e.metrics.batch_size.distribution();
    assert!(
        batch_sizes.iter().any(|&(b, _)| b >= 3),
        "streams must share model calls: {batch_sizes:?}"
    );
    for i in [0usize, 1, 2] {
        let got = frames_of(&outs, ids[i]);
        let want = solo_frames(&m, level, &audio[i]);
        let a = agreement(&got, &want);
        assert!(
            a >= 0.95,
            "stream {i}: only {:.0}% of frames equal its single-stream result",
            a * 100.0
        );
        let other = solo_frames(&m, level, &audio[(i + 1) % 3]);
        assert!(
            agreement(&got, &other) < 0.2,
            "stream {i} looks like stream {}",
            (i + 1) % 3
        );
    }
    // The newcomer in the reused slot: identical to a fresh single-stream run of its own audio.
    let got = frames_of(&outs, ids[4]);
    let want = solo_frames(&m, level, &audio[4][..got.len() * 320]);
    assert!(got.len() >= 15);
    assert!(
        agreement(&got, &want) >= 0.95,
        "reused slot carried state over"
    );
}

#[test]
fn decode_streams_match_single_stream_decoding_and_conceal_bad_frames() {
    let m = model();
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 3,
            ..Default::default()
        },
    );
    let frames = 20;
    let coded: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|i| solo_frames(&m, 6, &stream_audio(i, frames)))
        .collect();
    let ids: Vec<StreamId> = (0..3)
        .map(|_| e.open(StreamConfig::decode()).unwrap())
        .collect();
    let mut now = Instant::now();
    let mut outs = Vec::new();
    for t in 0..frames {
        for (i, &id) in ids.iter().enumerate() {
            let mut f = coded[i][t].clone();
            if i == 2 && t == 10 {
                f[1] ^= 0xFF; // corrupt
            }
            e.push_aic(now, id, Some(&f)).unwrap();
        }
        drain(&mut e, &m, &mut now, Duration::from_millis(2), &mut outs);
        now += Duration::from_millis(20);
    }
    assert_eq!(e.metrics.corrupt_frames, 1);
    for (i, &id) in ids.iter().enumerate() {
        let mut dec = AicDecoder::new(m.clone(), 6);
        let mut v: Vec<&Output> = outs.iter().filter(|o| o.stream == id).collect();
        v.sort_by_key(|o| o.seq);
        assert_eq!(v.len(), frames);
        for (t, o) in v.iter().enumerate().take(10) {
            let mut want = Vec::new();
            dec.decode_frame(Some(&coded[i][t]), &mut want).unwrap();
            let Payload::Pcm(got) = &o.payload else {
                panic!("stream {i} frame {t}: {:?}", o.payload)
            };
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-3, "stream {i} frame {t} differs by {diff}");
        }
        if i == 2 {
            assert!(matches!(v[10].payload, Payload::Concealed(_)));
        }
    }
}

#[test]
fn overload_falls_back_to_opus_bounded_and_recovers() {
    let m = model();
    let cfg = EngineConfig {
        max_batch: 8,
        max_pending_per_stream: 3,
        ..Default::default()
    };
    let mut e = Engine::new(m.clone(), cfg);
    let ids: Vec<StreamId> = (0..8)
        .map(|_| e.open(StreamConfig::encode(4)).unwrap())
        .collect();
    let audio: Vec<Vec<f32>> = (0..8).map(|i| stream_audio(i, 90)).collect();
    let mut now = Instant::now();
    let mut outs = Vec::new();
    let phase =
        |t: usize, step: Duration, e: &mut Engine, outs: &mut Vec<Output>, now: &mut Instant| {
            let tick = *now;
            let f = t % 90; // the clips loop
            for (i, &id) in ids.iter().enumerate() {
                e.push_pcm(tick, id, &audio[i][f * 320..(f + 1) * 320])
                    .unwrap();
            }
            // Run batches back to back while the tick lasts (a driver thread does the same):
            // a backend slower than real time falls behind.
            let mut t_now = tick;
            while t_now < tick + Duration::from_millis(20) {
                let Poll::Run(mut b) = e.poll(t_now) else {
                    break;
                };
                let g = b.graph;
                let (i, s, o, n) = b.buffers();
                let r = m.step(g, n, i, s, o);
                t_now += step;
                e.complete(t_now, b, r);
            }
            // The tick's last poll: its fallbacks (a batch it closes runs now: a batch is lent,
            // never dropped).
            if let Poll::Run(mut b) = e.poll(tick + Duration::from_millis(20)) {
                let g = b.graph;
                let (i, s, o, n) = b.buffers();
                let r = m.step(g, n, i, s, o);
                e.complete(t_now.max(tick + Duration::from_millis(20)) + step, b, r);
            }
            while let Some(o) = e.pop_output() {
                outs.push(o);
            }
            *now = tick + Duration::from_millis(20);
        };
    // Overload: each model call takes 50 ms of virtual time, more than the 40 ms budget.
    for t in 0..40 {
        phase(t, Duration::from_millis(50), &mut e, &mut outs, &mut now);
    }
    let fb = e.metrics.fallbacks;
    assert!(fb > 50, "overload must produce fallbacks, got {fb}");
    let opus: Vec<&Vec<u8>> = outs
        .iter()
        .filter_map(|o| {
            if let Payload::OpusFallback(p) = &o.payload {
                Some(p)
            } else {
                None
            }
        })
        .collect();
    assert!(
        opus.iter().all(|p| !p.is_empty()),
        "fallback frames carry real Opus"
    );
    // Every fallback packet decodes as 20 ms of Opus.
    let mut dec = aic_codec::opus::OpusDecoder::new(
        aic_codec::opus::OpusVariant::Plain,
        &aic_codec::CodecInfo {
            codec: "opus".into(),
            model_id: String::new(),
            sample_rate: 16_000,
            frame_samples: 320,
            delay_samples: 0,
            point: aic_codec::OperatingPoint::BitrateBps(16_000),
        },
    )
    .unwrap();
    let mut pcm = Vec::new();
    for p in opus.iter().take(20) {
        dec.decode_frame(Some(p), &mut pcm).unwrap();
    }
    assert_eq!(pcm.len(), 20.min(opus.len()) * 320);
    // Bounded: nothing queued beyond the per-stream limit, every frame accounted for.
    let m1 = e.metrics.clone();
    assert!(m1.frames_in - m1.frames_out - m1.dropped <= 8 * 3);
    // Recovery: the backend is fast again. The engine shed 7 of the 8 streams during the
    // overload; it takes them back one per 200 ms window after a calm second (2.4 s), then no
    // more fallbacks.
    for t in 40..180 {
        phase(t, Duration::from_millis(3), &mut e, &mut outs, &mut now);
    }
    assert_eq!(e.metrics.shed_now, 0, "{:?}", e.metrics);
    let settled = e.metrics.fallbacks;
    for t in 180..210 {
        phase(t, Duration::from_millis(3), &mut e, &mut outs, &mut now);
    }
    assert_eq!(
        e.metrics.fallbacks, settled,
        "fallbacks continued after load fell"
    );
    assert!(
        e.metrics.frames_out > m1.frames_out + 8 * 160,
        "{m1:?} then {:?}",
        e.metrics
    );
}

#[test]
fn backend_failure_sends_opus_and_admission_is_bounded() {
    let m = model();
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 2,
            ..Default::default()
        },
    );
    let a = e.open(StreamConfig::encode(2)).unwrap();
    let b = e.open(StreamConfig::encode(2)).unwrap();
    assert_eq!(e.open(StreamConfig::encode(2)), Err(EngineError::Full(2)));
    assert_eq!(e.metrics.rejected_streams, 1);
    assert!(matches!(
        e.open(StreamConfig::encode(13)),
        Err(EngineError::Level { .. })
    ));
    let now = Instant::now();
    let x = stream_audio(0, 1);
    e.push_pcm(now, a, &x).unwrap();
    e.push_pcm(now, b, &x).unwrap();
    assert!(matches!(
        e.push_pcm(now, a, &x[..100]),
        Err(EngineError::FrameSize { .. })
    ));
    assert!(matches!(
        e.push_aic(now, a, Some(&[1, 2])),
        Err(EngineError::WrongDirection(..))
    ));
    let Poll::Run(batch) = e.poll(now) else {
        panic!()
    };
    e.complete(
        now + Duration::from_millis(1),
        batch,
        Err("CUDA device lost"),
    );
    let outs: Vec<Output> = std::iter::from_fn(|| e.pop_output()).collect();
    assert_eq!(outs.len(), 2);
    assert!(
        outs.iter()
            .all(|o| matches!(&o.payload, Payload::OpusFallback(p) if !p.is_empty()))
    );
    assert_eq!(e.metrics.backend_errors, 1);
    assert_eq!(
        e.metrics.last_backend_error.as_deref(),
        Some("CUDA device lost")
    );
    // Closing frees the slot for a newcomer.
    e.close(a).unwrap();
    assert!(e.open(StreamConfig::encode(2)).is_ok());
    assert_eq!(e.close(a), Err(EngineError::UnknownStream(a)));
}
