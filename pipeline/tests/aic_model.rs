//! The shipped AIC model through the real ONNX Runtime: loading, validation, the streaming
//! codec, level ladder, corruption and loss handling.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aic_codec::bitstream::BitstreamError;
use aic_codec::codec::{Decoder, Encoder};
use aic_codec::{CodecError, CodecRegistry, OperatingPoint};
use aic_pipeline::aic::{AicDecoder, AicEncoder, default_model_dir};
use aic_pipeline::model::AicModel;

fn model() -> Arc<AicModel> {
    Arc::new(
        AicModel::load(&default_model_dir(), 1)
            .expect("the shipped model loads (run scripts/setup.sh first)"),
    )
}

fn speech() -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fixtures/speech/en_espeak.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

fn run(model: &Arc<AicModel>, level: u8, x: &[f32]) -> (Vec<Vec<u8>>, Vec<f32>) {
    let mut enc = AicEncoder::new(model.clone(), level).unwrap();
    let mut dec = AicDecoder::new(model.clone(), level);
    let (mut packets, mut y, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    for f in x.chunks_exact(320) {
        enc.encode_frame(f, &mut buf).unwrap();
        dec.decode_frame(Some(&buf), &mut y).unwrap();
        packets.push(buf.clone());
    }
    (packets, y)
}

#[test]
fn ladder_rates_and_quality_order() {
    let m = model();
    let x = speech();
    let secs = (x.len() / 320) as f64 * 0.02;
    let mut last_kbps = 0.0;
    let mut mel = Vec::new();
    for &level in &m.manifest.levels {
        let (packets, y) = run(&m, level, &x);
        let kbps = packets.iter().map(Vec::len).sum::<usize>() as f64 * 8.0 / secs / 1000.0;
        assert!(
            kbps > last_kbps,
            "level {level}: {kbps} kbps not above {last_kbps}"
        );
        last_kbps = kbps;
        if level == 1 {
            assert!(kbps <= 1.6, "lowest level must stay ≤ 1.6 kbps, got {kbps}");
        }
        assert!(y.iter().all(|v| v.is_finite()));
        let d = m.manifest.decoder_delay_samples;
        let n = y.len() - d;
        mel.push(aic_codec::metrics::log_mel_distance(&x[..n], &y[d..], 16_000).unwrap());
    }
    assert!(
        mel.last().unwrap() < mel.first().unwrap(),
        "all codebooks must beat one: {mel:?}"
    );
}

#[test]
fn frames_decode_at_any_lower_level_and_reject_foreign_models() {
    let m = model();
    let x = speech();
    let (packets, _) = run(&m, 12, &x[..320 * 20]);
    let mut dec = AicDecoder::new(m.clone(), 12);
    let mut y = Vec::new();
    let mut cut = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        // A router lowers every other frame to level 2; the decoder takes both.
        if i % 2 == 0 {
            m.entropy.truncate_frame(p, 2, &mut cut).unwrap();
            assert!(cut.len() < p.len());
            dec.decode_frame(Some(&cut), &mut y).unwrap();
        } else {
            dec.decode_frame(Some(p), &mut y).unwrap();
        }
    }
    assert_eq!(y.len(), 20 * 320);
    // A frame made for a different model fails its integrity check and changes nothing.
    let mut forged = packets[3].clone();
    forged[1] ^= 0x5A;
    let before = y.len();
    let e = dec.decode_frame(Some(&forged), &mut y).unwrap_err();
    assert!(
        matches!(e, CodecError::Bitstream(BitstreamError::Integrity { .. })),
        "{e}"
    );
    assert_eq!(y.len(), before);
    // Loss is concealed with exactly one frame of audio each.
    dec.decode_frame(None, &mut y).unwrap();
    dec.decode_frame(None, &mut y).unwrap();
    assert_eq!(y.len(), before + 640);
}

#[test]
fn state_is_per_stream_and_reset_restarts_it() {
    let m = model();
    let x = speech();
    let a = &x[..320 * 10];
    let mut e1 = AicEncoder::new(m.clone(), 8).unwrap();
    let mut e2 = AicEncoder::new(m.clone(), 8).unwrap();
    let (mut p1, mut p2) = (Vec::new(), Vec::new());
    // Interleave two encoders on the same input: identical output proves no shared state.
    let mut first = Vec::new();
    for f in a.chunks_exact(320) {
        e1.encode_frame(f, &mut p1).unwrap();
        e2.encode_frame(f, &mut p2).unwrap();
        assert_eq!(p1, p2);
        first.push(p1.clone());
    }
    e1.reset().unwrap();
    for (f, want) in a.chunks_exact(320).zip(&first) {
        e1.encode_frame(f, &mut p1).unwrap();
        assert_eq!(&p1, want, "reset must restore the initial state");
    }
}

fn copy_model(to: &Path) -> PathBuf {
    let from = default_model_dir();
    for f in std::fs::read_dir(&from).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    to.to_owned()
}

#[test]
fn damaged_models_fail_at_load_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = copy_model(dir.path());
    // Truncated graph: checksum.
    let enc = d.join("encoder.onnx");
    let bytes = std::fs::read(&enc).unwrap();
    std::fs::write(&enc, &bytes[..bytes.len() / 2]).unwrap();
    let e = AicModel::load(&d, 1).unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");
    std::fs::write(&enc, &bytes).unwrap();
    // A manifest that disagrees with the graphs: caught by the I/O check.
    let mpath = d.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
    j["encoder"]["state_size"] =
        serde_json::json!(j["encoder"]["state_size"].as_u64().unwrap() + 1);
    std::fs::write(&mpath, j.to_string()).unwrap();
    let e = AicModel::load(&d, 1).unwrap_err().to_string();
    assert!(e.contains("state"), "{e}");
    std::fs::write(&mpath, "{ not json").unwrap();
    let e = AicModel::load(&d, 1).unwrap_err().to_string();
    assert!(e.contains("JSON"), "{e}");
    // The registry reports the missing model instead of failing later.
    let mut reg = CodecRegistry::with_builtin();
    aic_pipeline::register_aic(&mut reg, Some(&dir.path().join("nowhere")));
    let e = reg
        .new_encoder("aic", Some(OperatingPoint::Level(1)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not available") && e.contains("manifest.json"),
        "{e}"
    );
}
