//! Streaming through ONNX Runtime equals PyTorch's whole-sequence run.
//!
//! The default model's `reference.json` (`models/aic-speech-v2/`) is written by the export script from the same
//! checkpoint as the graphs: PyTorch runs encoder, RVQ and decoder over a whole clip at once.
//! Here the exported graphs run one 20 ms frame at a time with explicit state, and the RVQ
//! search is the Rust kernel. Tolerance: 1e-3 absolute on latents and samples (float32
//! kernels differ in summation order; observed differences are ~1e-5).

use aic_pipeline::aic::default_model_dir;
use aic_pipeline::model::{AicModel, Graph};

#[derive(serde::Deserialize)]
struct Reference {
    frames: usize,
    level: usize,
    pcm_in: Vec<f32>,
    latent: Vec<f32>,
    codes: Vec<u16>,
    pcm_out: Vec<f32>,
}

const TOL: f32 = 1e-3;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn frame_by_frame_onnx_matches_whole_sequence_pytorch() {
    let dir = default_model_dir();
    let r: Reference = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json"))
            .expect("reference.json ships with the model"),
    )
    .unwrap();
    let m = AicModel::load(&dir, 1).unwrap();
    let (n, d, k) = (m.manifest.frame_samples, m.manifest.latent_dim, r.level);
    assert_eq!(r.pcm_in.len(), r.frames * n);

    // Encoder, one frame at a time, state carried.
    let mut state = vec![0.0; m.state_size(Graph::Encoder)];
    let mut latent = vec![0.0; r.frames * d];
    for t in 0..r.frames {
        m.step(
            Graph::Encoder,
            1,
            &r.pcm_in[t * n..(t + 1) * n],
            &mut state,
            &mut latent[t * d..(t + 1) * d],
        )
        .unwrap();
    }
    let diff = max_abs_diff(&latent, &r.latent);
    assert!(diff < TOL, "encoder latents differ by {diff}");

    // RVQ search in Rust picks the same codewords (near-ties may flip; allow 2 %).
    let (mut codes, mut residual) = (vec![0u16; r.frames * k], vec![0.0; d]);
    for t in 0..r.frames {
        m.codebooks
            .encode(
                &latent[t * d..(t + 1) * d],
                &mut codes[t * k..(t + 1) * k],
                &mut residual,
            )
            .unwrap();
    }
    let same = codes.iter().zip(&r.codes).filter(|(a, b)| a == b).count();
    assert!(
        same * 100 >= codes.len() * 98,
        "only {same}/{} codes agree",
        codes.len()
    );
    // And the first stage, which dominates the signal, agrees exactly.
    assert!(
        (0..r.frames).all(|t| codes[t * k] == r.codes[t * k]),
        "first-stage codes differ"
    );

    // Decoder on PyTorch's codes, one frame at a time.
    let mut state = vec![0.0; m.state_size(Graph::Decoder)];
    let mut zq = vec![0.0; d];
    let mut out = vec![0.0; r.frames * n];
    for t in 0..r.frames {
        m.codebooks
            .decode(&r.codes[t * k..(t + 1) * k], &mut zq)
            .unwrap();
        m.step(
            Graph::Decoder,
            1,
            &zq,
            &mut state,
            &mut out[t * n..(t + 1) * n],
        )
        .unwrap();
    }
    let diff = max_abs_diff(&out, &r.pcm_out);
    assert!(diff < TOL, "decoded samples differ by {diff}");
}

#[test]
fn a_batch_of_streams_equals_each_stream_alone() {
    // Frames of different streams in one call must not interact (what the batched pipeline
    // relies on): run 3 streams batched and compare with 3 single-stream runs.
    let m = AicModel::load(&default_model_dir(), 1).unwrap();
    let (n, d, s) = (
        m.manifest.frame_samples,
        m.manifest.latent_dim,
        m.state_size(Graph::Encoder),
    );
    let r: Reference = serde_json::from_str(
        &std::fs::read_to_string(default_model_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    let streams: Vec<&[f32]> = vec![&r.pcm_in[..], &r.pcm_in[n * 5..], &r.pcm_in[n * 11..]];
    let frames = 10;
    let mut batched_state = vec![0.0; 3 * s];
    let mut solo_states = vec![vec![0.0; s]; 3];
    let (mut inp, mut out) = (vec![0.0; 3 * n], vec![0.0; 3 * d]);
    let mut solo = vec![0.0; d];
    for t in 0..frames {
        for (i, x) in streams.iter().enumerate() {
            inp[i * n..(i + 1) * n].copy_from_slice(&x[t * n..(t + 1) * n]);
        }
        m.step(Graph::Encoder, 3, &inp, &mut batched_state, &mut out)
            .unwrap();
        for (i, x) in streams.iter().enumerate() {
            m.step(
                Graph::Encoder,
                1,
                &x[t * n..(t + 1) * n],
                &mut solo_states[i],
                &mut solo,
            )
            .unwrap();
            let diff = max_abs_diff(&out[i * d..(i + 1) * d], &solo);
            assert!(
                diff < 1e-4,
                "stream {i} frame {t}: batched differs from solo by {diff}"
            );
        }
    }
}
