//! The threaded driver on the real clock: every frame pushed comes out exactly once (as AIC or
//! as a marked fallback), shutdown loses nothing, a failing backend degrades to Opus.

use std::sync::Arc;
use std::time::Duration;

use aic_pipeline::PipelineError;
use aic_pipeline::aic::default_model_dir;
use aic_pipeline::driver::{Backend, Pipeline};
use aic_pipeline::engine::{EngineConfig, Payload, StreamConfig};
use aic_pipeline::model::{AicModel, Graph};

fn model() -> Arc<AicModel> {
    Arc::new(AicModel::load(&default_model_dir(), 1).unwrap())
}

fn tone(i: usize) -> Vec<f32> {
    (0..320)
        .map(|k| 0.2 * ((i * 320 + k) as f32 * 0.05).sin())
        .collect()
}

#[test]
fn every_frame_comes_out_once_and_shutdown_drains() {
    let m = model();
    let p = Pipeline::start(
        m.clone(),
        EngineConfig {
            max_batch: 8,
            ..Default::default()
        },
    );
    let enc: Vec<_> = (0..6)
        .map(|_| p.open(StreamConfig::encode(4)).unwrap())
        .collect();
    let dec = p.open(StreamConfig::decode()).unwrap();
    let frames = 25;
    for t in 0..frames {
        for s in &enc {
            s.push_pcm(tone(t)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Everything pushed before shutdown is answered.
    let mut coded = Vec::new();
    for (i, s) in enc.iter().enumerate() {
        let mut outs: Vec<_> = (0..frames)
            .map(|_| s.outputs.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        outs.sort_by_key(|o| o.seq);
        assert_eq!(
            outs.iter().map(|o| o.seq).collect::<Vec<_>>(),
            (0..frames as u64).collect::<Vec<_>>(),
            "stream {i}"
        );
        if i == 0 {
            coded = outs
                .into_iter()
                .filter_map(|o| {
                    if let Payload::Aic(f) = o.payload {
                        Some(f)
                    } else {
                        None
                    }
                })
                .collect();
        }
    }
    // Real-time decode of stream 0's frames...
    for f in &coded[..20] {
        dec.push_aic(Some(f.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...then a burst that stays within the per-stream queue (4), and an immediate shutdown.
    dec.push_aic(Some(coded[20].clone())).unwrap();
    dec.push_aic(None).unwrap(); // a lost frame is concealed, still one output
    dec.push_aic(Some(coded[21].clone())).unwrap();
    let metrics = p.metrics().unwrap();
    assert_eq!(metrics.streams_opened, 7);
    drop(enc);
    p.shutdown();
    let mut outs: Vec<_> = dec.outputs.try_iter().collect();
    outs.sort_by_key(|o| o.seq);
    assert_eq!(outs.len(), 23, "shutdown must finish queued frames");
    assert!(matches!(outs[21].payload, Payload::Concealed(_)));
    assert!(matches!(
        outs[22].payload,
        Payload::Pcm(_) | Payload::Concealed(_)
    ));
}

struct Failing;
impl Backend for Failing {
    fn run(
        &mut self,
        _: Graph,
        _: usize,
        _: &[f32],
        _: &mut [f32],
        _: &mut [f32],
    ) -> Result<(), PipelineError> {
        Err(PipelineError::Inference("device lost".into()))
    }
}

#[test]
fn a_failing_backend_degrades_to_opus_not_silence() {
    let m = model();
    let p = Pipeline::with_backend(
        m,
        EngineConfig {
            max_batch: 2,
            ..Default::default()
        },
        Box::new(Failing),
    );
    let s = p.open(StreamConfig::encode(2)).unwrap();
    for t in 0..4 {
        s.push_pcm(tone(t)).unwrap();
    }
    for _ in 0..4 {
        let o = s.outputs.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(&o.payload, Payload::OpusFallback(b) if !b.is_empty()),
            "{:?}",
            o.payload
        );
    }
    let m = p.metrics().unwrap();
    assert_eq!(m.fallbacks, 4);
    assert!(m.backend_errors >= 1);
    assert_eq!(
        m.last_backend_error.as_deref(),
        Some("inference failed: device lost")
    );
}

#[test]
fn two_workers_share_the_streams_with_unique_ids() {
    let models = vec![model(), model()];
    let p = Pipeline::start_workers(
        models,
        EngineConfig {
            max_batch: 3,
            ..Default::default()
        },
    );
    assert_eq!(p.workers(), 2);
    // 6 streams fit (3 slots per worker); a 7th does not.
    let streams: Vec<_> = (0..6)
        .map(|_| p.open(StreamConfig::encode(2)).unwrap())
        .collect();
    assert!(matches!(
        p.open(StreamConfig::encode(2)),
        Err(aic_pipeline::engine::EngineError::Full(_))
    ));
    let mut ids: Vec<u64> = streams.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "stream ids are unique across workers");
    for t in 0..3 {
        for s in &streams {
            s.push_pcm(tone(t)).unwrap();
        }
    }
    for s in &streams {
        for _ in 0..3 {
            let o = s.outputs.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(o.stream, s.id, "outputs name the stream's pipeline-wide id");
        }
    }
    let m = p.metrics().unwrap();
    assert_eq!(m.streams_opened, 6);
    assert_eq!(m.frames_out, 18);
    // Closing frees a slot on that worker.
    drop(streams);
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.open(StreamConfig::encode(2)).is_ok());
}

/// Regression: a `Close` that reached an idle worker between two waits was only acted on at
/// the next command, so a stream's outputs did not end (and its slot stayed taken) until
/// something else happened in the pipeline.
#[test]
fn dropped_streams_end_without_another_command() {
    let p = Pipeline::start(model(), EngineConfig::default());
    for _ in 0..5 {
        let (a_tx, a_out) = p.open(StreamConfig::encode(4)).unwrap().split();
        let (b_tx, b_out) = p.open(StreamConfig::encode(4)).unwrap().split();
        a_tx.push_pcm(tone(0)).unwrap();
        b_tx.push_pcm(tone(0)).unwrap();
        a_out.recv_timeout(Duration::from_secs(10)).unwrap();
        b_out.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(a_tx);
        drop(b_tx);
        for out in [a_out, b_out] {
            assert!(
                matches!(
                    out.recv_timeout(Duration::from_secs(5)),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                ),
                "a dropped stream's outputs must end"
            );
        }
    }
}
