//! Transcode streams (PCM in → encoder → RVQ → AIC frame → decoder → PCM out, one `Output`
//! with both): the engine in virtual time, then the threaded driver. Real model through ONNX
//! Runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_codec::codec::{CodecInfo, Decoder, Encoder, OperatingPoint};
use aic_codec::opus::{OpusDecoder, OpusVariant};
use aic_pipeline::PipelineError;
use aic_pipeline::aic::{AicDecoder, AicEncoder, default_model_dir};
use aic_pipeline::driver::{Backend, Pipeline};
use aic_pipeline::engine::{Engine, EngineConfig, Output, Payload, Poll, StreamConfig, StreamId};
use aic_pipeline::model::{AicModel, Graph};

fn model() -> Arc<AicModel> {
    Arc::new(AicModel::load(&default_model_dir(), 1).expect("shipped model loads"))
}

fn speech(i: usize, frames: usize) -> Vec<f32> {
    let names = [
        "en_espeak.wav",
        "en_f_confbridge.wav",
        "ru_f_vm-helpexit.wav",
    ];
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech")
        .join(names[i % names.len()]);
    let mut r = hound::WavReader::open(p).unwrap();
    let x: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    x[..frames * 320].to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn opus_decoder() -> OpusDecoder {
    let info = CodecInfo {
        codec: "opus".into(),
        model_id: String::new(),
        sample_rate: 16_000,
        frame_samples: 320,
        delay_samples: 0,
        point: OperatingPoint::BitrateBps(16_000),
    };
    OpusDecoder::new(OpusVariant::Plain, &info).unwrap()
}

/// The frame bytes of a transcode output, and whether it is the Opus fallback.
fn frame_of(o: &Output) -> (&[u8], bool) {
    match &o.payload {
        Payload::Aic(b) => (b, false),
        Payload::OpusFallback(b) => (b, true),
        other => panic!("transcode output without a frame: {other:?}"),
    }
}

/// Checks one transcode stream's outputs (sorted by seq): the AIC frames decode (with
/// `AicDecoder`, skipping the Opus frames as a receiver's AIC decoder does) to `decoded`, and
/// the Opus frames decode (with libopus, in order) to `decoded`. Returns the number of each.
fn check_decoded(m: &Arc<AicModel>, outs: &[&Output]) -> (usize, usize) {
    let mut aic = AicDecoder::new(m.clone(), 12);
    let mut opus = opus_decoder();
    let (mut n_aic, mut n_opus) = (0, 0);
    for o in outs {
        assert_eq!(o.decoded.len(), 320, "seq {}: PCM always present", o.seq);
        let mut want = Vec::new();
        let (bytes, fallback) = frame_of(o);
        if fallback {
            n_opus += 1;
            opus.decode_frame(Some(bytes), &mut want).unwrap();
        } else {
            n_aic += 1;
            aic.decode_frame(Some(bytes), &mut want).unwrap();
        }
        let d = max_diff(&o.decoded, &want);
        assert!(
            d < 1e-3,
            "seq {} (fallback {fallback}): differs by {d}",
            o.seq
        );
    }
    (n_aic, n_opus)
}

/// Runs batches back to back until the 20 ms tick that starts at `at` is over, each taking
/// `step` of virtual time; `now` carries over (a batch may end in the next tick).
fn tick(
    e: &mut Engine,
    m: &AicModel,
    now: &mut Instant,
    at: Instant,
    step: Duration,
    runs: &mut Vec<(Graph, usize)>,
) {
    *now = (*now).max(at);
    let end = at + Duration::from_millis(20);
    while *now < end {
        match e.poll(*now) {
            Poll::Run(mut b) => {
                let g = b.graph;
                let (i, s, o, n) = b.buffers();
                runs.push((g, n));
                let r = m.step(g, n, i, s, o);
                *now += step;
                e.complete(*now, b, r);
            }
            Poll::WaitUntil(t) if t < end => *now = t.max(*now),
            _ => break,
        }
    }
}

fn collect(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.pop_output()).collect()
}

fn of(outs: &[Output], id: StreamId) -> Vec<&Output> {
    let mut v: Vec<&Output> = outs.iter().filter(|o| o.stream == id).collect();
    v.sort_by_key(|o| o.seq);
    v
}

#[test]
fn a_transcode_frame_is_an_encoder_batch_then_a_decoder_batch_in_one_output() {
    let m = model();
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 4,
            ..Default::default()
        },
    );
    let frames = 40;
    let level = 6;
    let ids: Vec<StreamId> = (0..3)
        .map(|_| e.open(StreamConfig::transcode(level)).unwrap())
        .collect();
    let audio: Vec<Vec<f32>> = (0..3).map(|i| speech(i, frames)).collect();
    let t0 = Instant::now();
    let mut now = t0;
    let mut outs = Vec::new();
    let mut runs = Vec::new();
    for t in 0..frames {
        let at = t0 + Duration::from_millis(20 * t as u64);
        for (i, &id) in ids.iter().enumerate() {
            e.push_pcm(at, id, &audio[i][t * 320..(t + 1) * 320])
                .unwrap();
        }
        tick(
            &mut e,
            &m,
            &mut now,
            at,
            Duration::from_millis(2),
            &mut runs,
        );
        outs.extend(collect(&mut e));
    }
    // Each tick: one encoder batch of the three streams, then one decoder batch of them.
    let want: Vec<(Graph, usize)> = (0..frames)
        .flat_map(|_| [(Graph::Encoder, 3), (Graph::Decoder, 3)])
        .collect();
    assert_eq!(runs, want);
    assert_eq!(e.metrics.fallbacks, 0);
    for (i, &id) in ids.iter().enumerate() {
        let v = of(&outs, id);
        assert_eq!(v.len(), frames);
        assert!(v.iter().all(|o| o.latency <= Duration::from_millis(4)));
        // The frames are the single-stream encoder's...
        let mut enc = AicEncoder::new(m.clone(), level).unwrap();
        let mut buf = Vec::new();
        let same = (0..frames)
            .filter(|&t| {
                enc.encode_frame(&audio[i][t * 320..(t + 1) * 320], &mut buf)
                    .unwrap();
                frame_of(v[t]).0 == buf.as_slice()
            })
            .count();
        assert!(
            same * 100 >= frames * 95,
            "stream {i}: {same}/{frames} frames as solo"
        );
        // ...and the PCM is what a receiver decodes from them.
        assert_eq!(check_decoded(&m, &v), (frames, 0));
    }
}

#[test]
fn one_budget_for_both_model_calls_and_opus_fallback_comes_with_pcm() {
    let m = model();
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 2,
            ..Default::default()
        },
    );
    let frames = 120;
    let ids: Vec<StreamId> = (0..2)
        .map(|_| e.open(StreamConfig::transcode(4)).unwrap())
        .collect();
    let audio: Vec<Vec<f32>> = (0..2).map(|i| speech(i, frames)).collect();
    let t0 = Instant::now();
    let mut now = t0;
    let mut outs = Vec::new();
    let mut runs = Vec::new();
    // Model calls of 8 ms fit the 40 ms budget twice (8 + 8 + 1 margin). Calls of 22 ms would
    // fit it once (22 + 1) but not twice: with one budget for the frame, such frames go as Opus
    // before the encoder, instead of being encoded and then missing the deadline in the decoder.
    let step = |t: usize| match t {
        0..10 => 8,
        10..30 => 22,
        _ => 3,
    };
    for t in 0..frames {
        let at = t0 + Duration::from_millis(20 * t as u64);
        for (i, &id) in ids.iter().enumerate() {
            e.push_pcm(at, id, &audio[i][t * 320..(t + 1) * 320])
                .unwrap();
        }
        let step = Duration::from_millis(step(t));
        tick(&mut e, &m, &mut now, at, step, &mut runs);
        outs.extend(collect(&mut e));
    }
    let _ = e.poll(now + Duration::from_millis(100));
    outs.extend(collect(&mut e));
    let mut n_aic_all = 0;
    let mut kept_any = false;
    for &id in &ids {
        let v = of(&outs, id);
        assert_eq!(v.len(), frames, "every frame comes out once");
        let fell = |r: std::ops::Range<usize>| r.filter(|&t| frame_of(v[t]).1).count();
        assert_eq!(fell(0..10), 0, "8 ms calls fit the budget");
        // Once the slow calls are measured, frames go as Opus, except the probes that
        // re-measure the model every `probe_interval` (100 ms: one frame in five).
        let slow = fell(20..30);
        assert!(slow >= 6, "slow model: {slow} of 10 as Opus");
        // Recovered: the stream the engine kept once a probe has re-measured the model (within
        // 100 ms), and a stream it shed for the slow spell (both calls did not fit) after five
        // overload windows (200 ms each) without a miss.
        let kept = fell(35..50) == 0;
        kept_any |= kept;
        assert_eq!(fell(110..120), 0, "recovered");
        assert!(
            v.iter()
                .filter(|o| frame_of(o).1)
                .all(|o| o.latency <= Duration::from_millis(40)),
            "Opus fallbacks are in time"
        );
        let (n_aic, n_opus) = check_decoded(&m, &v);
        assert!(n_opus >= 6, "{n_aic} AIC, {n_opus} Opus");
        n_aic_all += n_aic;
    }
    assert!(kept_any, "the stream the engine kept recovers at once");
    // Encoder calls wasted on frames that then miss the deadline in the decoder: only while the
    // step-time estimates catch up with the slowdown (measured: 4 frames a stream, in the
    // first 100 ms), none once they know both calls do not fit.
    let count = |g: Graph| runs.iter().filter(|r| r.0 == g).map(|r| r.1).sum::<usize>();
    assert_eq!(
        count(Graph::Decoder),
        n_aic_all,
        "every decoder row went out as AIC"
    );
    let wasted = count(Graph::Encoder) - count(Graph::Decoder);
    eprintln!("encoder rows {}, wasted {wasted}", count(Graph::Encoder));
    assert!(wasted <= 2 * 5, "{wasted} encoder rows wasted");
}

#[test]
fn a_failing_decoder_call_sends_the_frame_as_opus_and_a_closed_stream_drops_its_frame() {
    let m = model();
    let mut e = Engine::new(m.clone(), EngineConfig::default());
    let a = e.open(StreamConfig::transcode(8)).unwrap();
    let b = e.open(StreamConfig::transcode(8)).unwrap();
    let x = speech(0, 3);
    let now = Instant::now();
    for (t, f) in x.chunks_exact(320).enumerate() {
        let at = now + Duration::from_millis(20 * t as u64);
        e.push_pcm(at, a, f).unwrap();
        e.push_pcm(at, b, f).unwrap();
        let Poll::Run(mut enc) = e.poll(at) else {
            panic!("encoder batch due")
        };
        assert_eq!((enc.graph, enc.size), (Graph::Encoder, 2));
        let (i, s, o, n) = enc.buffers();
        let r = m.step(Graph::Encoder, n, i, s, o);
        e.complete(at, enc, r);
        assert!(
            e.pop_output().is_none(),
            "nothing out between the two calls"
        );
        if t == 2 {
            e.close(b).unwrap(); // its frame, between the two calls, is dropped
        }
        let Poll::Run(mut dec) = e.poll(at) else {
            panic!("decoder batch due")
        };
        assert_eq!(dec.graph, Graph::Decoder);
        let r = if t == 1 {
            Err("device lost".to_string())
        } else {
            let (i, s, o, n) = dec.buffers();
            m.step(Graph::Decoder, n, i, s, o)
                .map_err(|e| e.to_string())
        };
        e.complete(at, dec, r);
        let outs = collect(&mut e);
        assert_eq!(outs.len(), if t == 2 { 1 } else { 2 });
        for o in &outs {
            assert_eq!(o.decoded.len(), 320);
            assert_eq!(frame_of(o).1, t == 1, "frame {t}");
        }
    }
    assert_eq!(e.pending_frames(a), Some(0));
    assert_eq!(e.metrics.backend_errors, 1);
}

/// Fails every encoder call whose first input sample is exactly 0.25 (frames the test marks).
struct FailMarked(Arc<AicModel>);
impl Backend for FailMarked {
    fn run(
        &mut self,
        graph: Graph,
        batch: usize,
        input: &[f32],
        state: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), PipelineError> {
        if graph == Graph::Encoder && input[0] == 0.25 {
            return Err(PipelineError::Inference("marked".into()));
        }
        self.0.step(graph, batch, input, state, output)
    }
}

#[test]
fn driver_transcode_matches_encode_then_decode_and_fallback_frames_carry_pcm() {
    let m = model();
    let frames = 60;
    let mut x = speech(1, frames);
    let cfg = EngineConfig {
        max_batch: 4,
        max_pending_per_stream: frames,
        ..Default::default()
    };
    // Generous budgets: this test is about what comes out, not about a busy machine's timing.
    let budget = Duration::from_secs(10);
    let open = |p: &Pipeline, c: StreamConfig| p.open(StreamConfig { budget, ..c }).unwrap();

    // One transcode stream vs an encode stream whose frames feed a decode stream.
    let p = Pipeline::start(m.clone(), cfg.clone());
    let tr = open(&p, StreamConfig::transcode(6));
    let enc = open(&p, StreamConfig::encode(6));
    let dec = open(&p, StreamConfig::decode());
    for f in x.chunks_exact(320) {
        tr.push_pcm(f.to_vec()).unwrap();
        enc.push_pcm(f.to_vec()).unwrap();
    }
    let mut got: Vec<Output> = (0..frames)
        .map(|_| tr.outputs.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    got.sort_by_key(|o| o.seq);
    let mut coded: Vec<Output> = (0..frames)
        .map(|_| enc.outputs.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    coded.sort_by_key(|o| o.seq);
    for o in &coded {
        let (bytes, fallback) = frame_of(o);
        assert!(!fallback);
        dec.push_aic(Some(bytes.to_vec())).unwrap();
    }
    let mut heard: Vec<Output> = (0..frames)
        .map(|_| dec.outputs.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    heard.sort_by_key(|o| o.seq);
    let mut worst = 0.0f32;
    let mut same = 0;
    for t in 0..frames {
        same += usize::from(frame_of(&got[t]) == frame_of(&coded[t]));
        let Payload::Pcm(want) = &heard[t].payload else {
            panic!("frame {t}: {:?}", heard[t].payload)
        };
        worst = worst.max(max_diff(&got[t].decoded, want));
    }
    eprintln!("transcode vs encode→decode: {same}/{frames} frames equal, PCM max diff {worst:.2e}");
    assert_eq!(same, frames, "the same frames as an encode stream");
    assert!(worst < 1e-3, "PCM differs by {worst}");
    // Spent outputs can be handed back (their vectors carry later outputs).
    for o in got {
        tr.recycle(o);
    }
    drop((tr, enc, dec));
    p.shutdown();

    // Opus fallback through the driver: marked frames fail in the encoder and come out as
    // Opus, with the PCM libopus makes of them.
    let marked = [10usize, 11, 30];
    for &t in &marked {
        x[t * 320] = 0.25;
    }
    let p = Pipeline::with_backend(m.clone(), cfg, Box::new(FailMarked(m.clone())));
    let tr = open(&p, StreamConfig::transcode(6));
    for f in x.chunks_exact(320) {
        tr.push_pcm(f.to_vec()).unwrap();
    }
    let mut got: Vec<Output> = (0..frames)
        .map(|_| tr.outputs.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    got.sort_by_key(|o| o.seq);
    let fell: Vec<usize> = (0..frames).filter(|&t| frame_of(&got[t]).1).collect();
    assert_eq!(fell, marked);
    let v: Vec<&Output> = got.iter().collect();
    assert_eq!(check_decoded(&m, &v), (frames - 3, 3));
    for &t in &marked {
        let e: f32 = got[t].decoded.iter().map(|s| s * s).sum();
        assert!(e > 0.0, "frame {t}: the Opus frame decodes to sound");
    }
    drop(tr);
    p.shutdown();
}

/// What [`overload_run`] saw.
#[derive(Debug)]
struct OverloadRun {
    /// Fraction of the frames sent as Opus.
    fell: f64,
    /// Share of the virtual time the model was busy.
    busy: f64,
    /// AIC ↔ Opus switches within streams after the first 2 s.
    switches: usize,
    metrics: String,
}

/// Overload in virtual time: 15 transcode streams at spread phases on one engine, each model
/// call costing `1 ms + per_row × n` of virtual time (the calls are not run: only the
/// scheduling is under test).
fn overload_run(per_row: Duration, frames: usize, shed_window: Duration) -> OverloadRun {
    const N: usize = 15;
    let m = model();
    let mut e = Engine::new(
        m,
        EngineConfig {
            max_batch: 16,
            shed_window,
            ..Default::default()
        },
    );
    let ids: Vec<StreamId> = (0..N)
        .map(|_| e.open(StreamConfig::transcode(6)).unwrap())
        .collect();
    let pcm = [0.01f32; 320];
    let t0 = Instant::now();
    let period = Duration::from_millis(20);
    let mut next: Vec<Instant> = (0..N).map(|i| t0 + period * i as u32 / N as u32).collect();
    let mut pushed = [0usize; N];
    let end = t0 + period * frames as u32;
    let mut now = t0;
    let (mut busy, mut outs) = (Duration::ZERO, Vec::new());
    while now < end {
        for i in 0..N {
            while next[i] <= now && pushed[i] < frames {
                e.push_pcm(now, ids[i], &pcm).unwrap();
                next[i] += period;
                pushed[i] += 1;
            }
        }
        let first = next.iter().copied().min().unwrap();
        match e.poll(now) {
            Poll::Run(b) => {
                let took = Duration::from_millis(1) + per_row * b.size as u32;
                now += took;
                busy += took;
                e.complete(now, b, Ok::<(), PipelineError>(()));
            }
            Poll::WaitUntil(t) => now = t.min(first).max(now + Duration::from_micros(10)),
            Poll::Idle => now = first.max(now + Duration::from_micros(10)),
        }
        outs.extend(collect(&mut e));
    }
    let _ = e.poll(now + Duration::from_secs(1));
    outs.extend(collect(&mut e));
    let fell = outs.iter().filter(|o| frame_of(o).1).count();
    let total = outs.len().max(1);
    let switches = ids
        .iter()
        .map(|&id| {
            let v = of(&outs, id);
            v.windows(2)
                .filter(|w| w[0].seq >= 100 && frame_of(w[0]).1 != frame_of(w[1]).1)
                .count()
        })
        .sum();
    let m = &e.metrics;
    OverloadRun {
        fell: fell as f64 / total as f64,
        busy: busy.as_secs_f64() / (now - t0).as_secs_f64(),
        switches,
        metrics: format!(
            "shed {} times, {} frames, {} now; batch mean {:.1}",
            m.streams_shed,
            m.shed_frames,
            m.shed_now,
            m.batch_size.mean()
        ),
    }
}

#[test]
fn overload_sheds_whole_streams_by_the_excess_instead_of_every_stream_flickering() {
    // Load = model time per 20 ms of audio for all 15 streams in full batches (two calls each):
    // 2 × (1 ms + 15 × per_row) / 20 ms. The model carries u streams while 2 (1 + u per_row)
    // ≤ 20 ms: all 15 at 0.7 and 1.0, 12 at 1.15 (3 shed = 20 %), 10 at 1.45 (5 = 33 %).
    let shed = Duration::from_millis(200);
    for (per_row_us, load, ideal) in [
        (400u64, 0.7, 0.0),
        (600, 1.0, 0.0),
        (700, 1.15, 0.2),
        (900, 1.45, 1.0 / 3.0),
    ] {
        let per_row = Duration::from_micros(per_row_us);
        let r = overload_run(per_row, 750, shed);
        let old = overload_run(per_row, 750, Duration::ZERO);
        eprintln!(
            "load {load:.2}: shedding {:.1} % as Opus ({} switches after 2 s), model busy {:.0} %, \
             {}; without: {:.1} % ({} switches), busy {:.0} %",
            100.0 * r.fell,
            r.switches,
            100.0 * r.busy,
            r.metrics,
            100.0 * old.fell,
            old.switches,
            100.0 * old.busy
        );
        if ideal == 0.0 {
            assert_eq!(r.fell, 0.0, "{r:?}");
            continue;
        }
        // Near the whole-stream ideal (the first windows, before anything is shed, and one
        // stream taken back now and then add a little), and no more than without shedding.
        assert!(r.fell <= ideal + 0.08, "{r:?}");
        assert!(r.fell <= old.fell + 0.01, "{r:?} vs {old:?}");
        // The point: a few streams carry the whole excess; the others keep a steady codec.
        assert!(r.switches * 10 <= old.switches, "{r:?} vs {old:?}");
        assert!(r.busy >= 0.85, "{r:?}");
    }
}
