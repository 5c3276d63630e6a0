//! One concealment (`aic_pipeline::conceal`) for `AicDecoder` and the batched engine: the same
//! PCM for the same packet sequence with losses, output that is not a repeat of the last frame,
//! and a hand-back to the real stream without a click. Real model through ONNX Runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_codec::codec::{Decoder, Encoder};
use aic_pipeline::aic::{AicDecoder, AicEncoder, default_model_dir};
use aic_pipeline::conceal;
use aic_pipeline::engine::{Engine, EngineConfig, Output, Payload, Poll, StreamConfig, StreamId};
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

const FRAMES: usize = 150;

fn coded(m: &Arc<AicModel>, name: &str, level: u8) -> Vec<Vec<u8>> {
    let x = clip(name);
    let mut enc = AicEncoder::new(m.clone(), level).unwrap();
    let mut buf = Vec::new();
    x[..FRAMES * 320]
        .chunks_exact(320)
        .map(|f| {
            enc.encode_frame(f, &mut buf).unwrap();
            buf.clone()
        })
        .collect()
}

/// What each stream receives: `None` = lost in transit; a flipped byte = corrupt (which
/// `AicDecoder` callers treat as lost, and the engine does itself).
#[derive(Clone, Copy, PartialEq)]
enum Rx {
    Ok,
    Lost,
    Corrupt,
}

fn pattern(stream: usize) -> Vec<Rx> {
    let mut v = vec![Rx::Ok; FRAMES];
    let runs: &[(usize, usize)] = match stream {
        0 => &[(30, 1), (52, 3), (90, 8)],
        1 => &[(25, 2), (70, 5), (120, 12)],
        _ => &[(40, 1), (41, 1), (80, 20)],
    };
    for &(at, n) in runs {
        v[at..at + n].iter_mut().for_each(|r| *r = Rx::Lost);
    }
    if stream == 2 {
        v[41] = Rx::Corrupt;
        v[110] = Rx::Corrupt;
    }
    v
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rms(a: &[f32]) -> f32 {
    (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt()
}

/// `min_g ‖cur − g·prev‖ / ‖cur‖`: 0 when `cur` is a scaled copy of `prev`.
fn unexplained(cur: &[f32], prev: &[f32]) -> f32 {
    let dot: f32 = cur.iter().zip(prev).map(|(a, b)| a * b).sum();
    let (cc, pp): (f32, f32) = (
        cur.iter().map(|x| x * x).sum(),
        prev.iter().map(|x| x * x).sum(),
    );
    if pp == 0.0 {
        return 1.0;
    }
    (1.0 - dot * dot / (cc * pp)).max(0.0).sqrt()
}

fn drain(e: &mut Engine, m: &AicModel, now: &mut Instant, out: &mut Vec<Output>) {
    loop {
        match e.poll(*now) {
            Poll::Run(mut b) => {
                let g = b.graph;
                let (i, s, o, n) = b.buffers();
                let r = m.step(g, n, i, s, o);
                *now += Duration::from_millis(2);
                e.complete(*now, b, r);
            }
            Poll::WaitUntil(t) if t <= *now + Duration::from_millis(20) => *now = t.max(*now),
            _ => break,
        }
    }
    while let Some(o) = e.pop_output() {
        out.push(o);
    }
}

#[test]
fn engine_and_aic_decoder_conceal_alike_without_repeats_or_clicks() {
    let m = model();
    let names = [
        "en_espeak.wav",
        "en_f_confbridge.wav",
        "ru_f_vm-helpexit.wav",
    ];
    let level = 6;
    let frames: Vec<Vec<Vec<u8>>> = names.iter().map(|n| coded(&m, n, level)).collect();
    let rx: Vec<Vec<Rx>> = (0..3).map(pattern).collect();

    // The engine: three decode streams batched together.
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 3,
            ..Default::default()
        },
    );
    let ids: Vec<StreamId> = (0..3)
        .map(|_| e.open(StreamConfig::decode()).unwrap())
        .collect();
    let mut now = Instant::now();
    let mut outs = Vec::new();
    for t in 0..FRAMES {
        for (i, &id) in ids.iter().enumerate() {
            let mut f = frames[i][t].clone();
            match rx[i][t] {
                Rx::Ok => e.push_aic(now, id, Some(&f)).unwrap(),
                Rx::Lost => e.push_aic(now, id, None).unwrap(),
                Rx::Corrupt => {
                    f[1] ^= 0x5A;
                    e.push_aic(now, id, Some(&f)).unwrap()
                }
            }
        }
        drain(&mut e, &m, &mut now, &mut outs);
        now += Duration::from_millis(20);
    }
    assert_eq!(e.metrics.corrupt_frames, 2);

    let mut worst = 0.0f32;
    let mut worst_ratio = 0.0f32;
    let mut worst_repeat = f32::MAX;
    for (i, &id) in ids.iter().enumerate() {
        let mut v: Vec<&Output> = outs.iter().filter(|o| o.stream == id).collect();
        v.sort_by_key(|o| o.seq);
        assert_eq!(v.len(), FRAMES);
        // Reference: `AicDecoder` on the same sequence (a corrupt frame is a lost one), and on
        // the loss-free sequence for the decoder's own sample-to-sample steps.
        let mut dec = AicDecoder::new(m.clone(), level);
        let mut clean_dec = AicDecoder::new(m.clone(), level);
        let (mut want, mut clean) = (Vec::new(), Vec::new());
        for t in 0..FRAMES {
            let p = (rx[i][t] == Rx::Ok).then_some(frames[i][t].as_slice());
            dec.decode_frame(p, &mut want).unwrap();
            clean_dec
                .decode_frame(Some(&frames[i][t]), &mut clean)
                .unwrap();
        }
        let mut got = Vec::new();
        for (t, o) in v.iter().enumerate() {
            match (&o.payload, rx[i][t]) {
                (Payload::Pcm(p), Rx::Ok) | (Payload::Concealed(p), Rx::Lost | Rx::Corrupt) => {
                    got.extend_from_slice(p)
                }
                (p, r) => panic!(
                    "stream {i} frame {t}: {} for a {} frame",
                    match p {
                        Payload::Pcm(_) => "Pcm",
                        Payload::Concealed(_) => "Concealed",
                        _ => "other",
                    },
                    if r == Rx::Ok { "received" } else { "lost" }
                ),
            }
        }
        let d = max_diff(&got, &want);
        worst = worst.max(d);
        assert!(d < 1e-3, "stream {i}: engine and AicDecoder differ by {d}");

        // The decoder's own largest step on this clean speech: the yardstick for a click.
        let clean_step = clean
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        for t in 1..FRAMES {
            let (prev, cur) = (&want[(t - 1) * 320..t * 320], &want[t * 320..(t + 1) * 320]);
            if rx[i][t] != Rx::Ok && rms(cur) > 3e-3 {
                // Not the last frame again at any gain (the old engine's concealment was 0.5 ×
                // the last frame: 0 here): the part of this frame that no multiple of the
                // previous one explains, relative to this frame. Measured ≥ 0.08 (a steady
                // vowel decaying); below -50 dBFS a repeat would not be heard.
                let r = unexplained(cur, prev);
                worst_repeat = worst_repeat.min(r);
                assert!(
                    r > 0.05,
                    "stream {i} frame {t}: concealment repeats the last frame ({r})"
                );
            }
            if rx[i][t] == Rx::Ok && rx[i][t - 1] != Rx::Ok {
                let step = (cur[0] - prev[319]).abs();
                let ratio = step / clean_step;
                eprintln!(
                    "stream {i} hand-back at {t}: step {step:.4}, clean max step {clean_step:.4}, ratio {ratio:.3}"
                );
                worst_ratio = worst_ratio.max(ratio);
            }
        }
    }
    eprintln!(
        "max |engine - AicDecoder| = {worst:.2e}; worst hand-back step / clean max step = {worst_ratio:.3}; smallest distance from a repeat = {worst_repeat:.3}"
    );
    assert!(
        worst_ratio <= 1.0,
        "a click at the hand-back: {worst_ratio}"
    );
}

#[test]
fn model_free_last_resort_fades_out_and_back_in_without_a_step() {
    let m = model();
    let frames = coded(&m, "en_f_confbridge.wav", 6);
    let mut e = Engine::new(
        m.clone(),
        EngineConfig {
            max_batch: 1,
            ..Default::default()
        },
    );
    let id = e.open(StreamConfig::decode()).unwrap();
    let mut now = Instant::now();
    let mut pcm: Vec<Vec<f32>> = Vec::new();
    let mut kinds = Vec::new();
    for (t, f) in frames.iter().enumerate().take(60) {
        e.push_aic(now, id, Some(f)).unwrap();
        let Poll::Run(mut b) = e.poll(now) else {
            panic!("a lone stream's frame runs at once")
        };
        // The backend fails on frames 40 and 41: the model cannot run for them.
        let r = if t == 40 || t == 41 {
            Err("device lost".to_string())
        } else {
            let g = b.graph;
            let (i, s, o, n) = b.buffers();
            m.step(g, n, i, s, o).map_err(|e| e.to_string())
        };
        e.complete(now + Duration::from_millis(2), b, r);
        let o = e.pop_output().unwrap();
        kinds.push(matches!(o.payload, Payload::Concealed(_)));
        let (Payload::Pcm(p) | Payload::Concealed(p)) = o.payload else {
            panic!()
        };
        pcm.push(p);
        now += Duration::from_millis(20);
    }
    assert_eq!(
        kinds.iter().filter(|&&c| c).count(),
        2,
        "the two frames are marked"
    );
    assert!(kinds[40] && kinds[41]);
    let (last, faded, silent, back) = (&pcm[39], &pcm[40], &pcm[41], &pcm[42]);
    assert!(rms(last) > 0.01, "the test needs speech at frame 39");
    // Continuous at the junction (the mirror image starts where the last output ended)...
    assert_eq!(faded[0], last[319]);
    // ...not a repeat of the last frame, and silent after the fade...
    assert!(unexplained(faded, last) > 0.5);
    assert!(faded[conceal::FADE_SAMPLES..].iter().all(|&x| x == 0.0));
    assert!(silent.iter().all(|&x| x == 0.0));
    // ...and the model's output comes back faded in from silence.
    assert_eq!(back[0], 0.0);
    let steps = |x: &[f32]| {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    };
    let clean_step = pcm.iter().map(|f| steps(f)).fold(0.0, f32::max);
    assert!(steps(faded) <= clean_step && steps(back) <= clean_step);
    assert_eq!(e.metrics.backend_errors, 2);
}
