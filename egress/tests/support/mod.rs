//! Shared by the egress integration tests: the speech fixture, ffmpeg/ffprobe readers, delay
//! alignment and STOI.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use aic_egress::{Egress, EgressConfig, EgressStatus, FRAME_SAMPLES, OutputSpec};

pub fn speech() -> Vec<i16> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech/en_f_confbridge.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    assert_eq!(r.spec().sample_rate, 16_000);
    let mut x: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    x.truncate(x.len() / FRAME_SAMPLES * FRAME_SAMPLES);
    x
}

/// Decodes any file ffmpeg reads to 16 kHz mono s16.
pub fn decode(path: &Path) -> Vec<i16> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "16000", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg could not decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `ffprobe`'s format name and duration (seconds) of a file; panics if ffprobe cannot read it.
pub fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=format_name,duration",
            "-of",
            "default=nw=1",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.is_empty(),
        "ffprobe could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    let dur = field("duration").parse().unwrap_or(f64::NAN);
    (field("format_name"), dur)
}

/// The lag (samples, in -max..=max) by which `y` lags `x`, by cross-correlation.
pub fn lag(x: &[i16], y: &[i16], max: i64) -> i64 {
    let n = x.len().min(y.len()) as i64;
    let mut best = (f64::MIN, 0);
    for d in -max..=max {
        let mut acc = 0.0f64;
        let mut i = 0i64.max(-d);
        while i < n && i + d < n {
            acc += x[i as usize] as f64 * y[(i + d) as usize] as f64;
            i += 4;
        }
        if acc > best.0 {
            best = (acc, d);
        }
    }
    best.1
}

/// STOI of `y` against `x` after aligning `y` by its lag.
pub fn stoi_aligned(x: &[i16], y: &[i16]) -> f64 {
    let d = lag(x, y, 4000);
    let (x, y) = if d >= 0 {
        (x, &y[d as usize..])
    } else {
        (&x[(-d) as usize..], y)
    };
    let n = x.len().min(y.len());
    let f = |s: &[i16]| {
        s[..n]
            .iter()
            .map(|&v| v as f32 / 32768.0)
            .collect::<Vec<f32>>()
    };
    aic_codec::metrics::stoi(&f(x), &f(y), 16_000).unwrap()
}

/// Records `x` (whole frames) into `outputs`, frame `i` at index `first + i` except those in
/// `skip`, waiting for the outputs (offline), and returns the final status.
pub fn record(
    outputs: Vec<OutputSpec>,
    x: &[i16],
    first: u64,
    skip: &dyn Fn(u64) -> bool,
) -> EgressStatus {
    let mut cfg = EgressConfig::new("test", outputs);
    cfg.lossless = true;
    let e = Egress::start(cfg).unwrap();
    for (i, f) in x.chunks_exact(FRAME_SAMPLES).enumerate() {
        if !skip(i as u64) {
            e.push_pcm_blocking(first + i as u64, f).unwrap();
        }
    }
    e.stop()
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
