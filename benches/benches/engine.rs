//! The batcher's own cost per step, without the model: push a frame for every stream, close the
//! batch, complete it (gather, scatter, RVQ search + entropy coding for encode batches; frame
//! parsing + codeword sums for decode batches; both for transcode). Needs the shipped model (its codebooks and
//! entropy tables) and ONNX Runtime (`scripts/setup.sh`), though the graphs are not run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_pipeline::aic::default_model_dir;
use aic_pipeline::engine::{Engine, EngineConfig, Poll, StreamConfig};
use aic_pipeline::model::AicModel;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench_engine(c: &mut Criterion) {
    let model =
        Arc::new(AicModel::load(&default_model_dir(), 1).expect("model (run scripts/setup.sh)"));
    let mut g = c.benchmark_group("engine_step");
    for streams in [1usize, 8, 32] {
        g.throughput(Throughput::Elements(streams as u64));
        let mut e = Engine::new(
            model.clone(),
            EngineConfig {
                max_batch: streams,
                ..Default::default()
            },
        );
        let ids: Vec<_> = (0..streams)
            .map(|_| e.open(StreamConfig::encode(12)).unwrap())
            .collect();
        let pcm: Vec<f32> = (0..320).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        let mut now = Instant::now();
        g.bench_function(format!("encode_{streams}"), |b| {
            b.iter(|| {
                for &id in &ids {
                    e.push_pcm(now, id, &pcm).unwrap();
                }
                let Poll::Run(batch) = e.poll(now) else {
                    panic!("full batch expected")
                };
                e.complete(now, batch, Ok::<(), String>(()));
                while e.pop_output().is_some() {}
                now += Duration::from_millis(20);
            })
        });
        let mut tr = Engine::new(
            model.clone(),
            EngineConfig {
                max_batch: streams,
                ..Default::default()
            },
        );
        let tids: Vec<_> = (0..streams)
            .map(|_| tr.open(StreamConfig::transcode(12)).unwrap())
            .collect();
        // Transcode: an encoder batch then a decoder batch per frame, outputs recycled.
        g.bench_function(format!("transcode_{streams}"), |b| {
            b.iter(|| {
                for &id in &tids {
                    tr.push_pcm(now, id, &pcm).unwrap();
                }
                for _ in 0..2 {
                    let Poll::Run(batch) = tr.poll(now) else {
                        panic!("full batch expected")
                    };
                    tr.complete(now, batch, Ok::<(), String>(()));
                }
                while let Some(o) = tr.pop_output() {
                    tr.recycle(o);
                }
                now += Duration::from_millis(20);
            })
        });
        let mut d = Engine::new(
            model.clone(),
            EngineConfig {
                max_batch: streams,
                ..Default::default()
            },
        );
        let ids: Vec<_> = (0..streams)
            .map(|_| d.open(StreamConfig::decode()).unwrap())
            .collect();
        let mut frame = Vec::new();
        let ix: Vec<u16> = (0..12).map(|i| (i * 37 % 1024) as u16).collect();
        model.entropy.write_frame(0, &ix, &mut frame).unwrap();
        g.bench_function(format!("decode_{streams}"), |b| {
            b.iter(|| {
                for &id in &ids {
                    d.push_aic(now, id, Some(&frame)).unwrap();
                }
                let Poll::Run(batch) = d.poll(now) else {
                    panic!("full batch expected")
                };
                d.complete(now, batch, Ok::<(), String>(()));
                while d.pop_output().is_some() {}
                now += Duration::from_millis(20);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_engine);

fn bench_hints(c: &mut Criterion) {
    use aic_pipeline::hints::{Mode, NetState, RateQualityTable};
    let path = default_model_dir().join("rate_quality.json");
    let table = RateQualityTable::from_json(
        &std::fs::read_to_string(path).expect("rate_quality.json ships with the model"),
    )
    .unwrap();
    let mut g = c.benchmark_group("hints");
    g.throughput(Throughput::Elements(1));
    let mut k = 0.0f64;
    g.bench_function("hint", |b| {
        b.iter(|| {
            k = (k + 0.37) % 40.0;
            table
                .hint(
                    &NetState {
                        bandwidth_kbps: 1.0 + k,
                        loss: 0.02,
                        rtt_ms: 50.0,
                        jitter_ms: 8.0,
                    },
                    Mode::Adaptive,
                )
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(hint_benches, bench_hints);
criterion_main!(benches, hint_benches);
