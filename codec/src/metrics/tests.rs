//! Checks against the Python reference values in `datasets/fixtures/metrics/`
//! (`generate.py` there recreates the WAVs and `reference_values.json`).

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../datasets/fixtures/metrics/", $name)) as &[u8],
        )
    };
}

const FIXTURES: [(&str, &[u8]); 5] = [
    fixture!("ref.wav"),
    fixture!("noise15.wav"),
    fixture!("noise5.wav"),
    fixture!("lowpass.wav"),
    fixture!("opus6k.wav"),
];

const REFERENCE_VALUES: &str =
    include_str!("../../../datasets/fixtures/metrics/reference_values.json");

/// pystoi agreement asserted per pair. The port (resampler included) is exact up to rounding:
/// measured |diff| <= 2e-15 on every fixture; with rubato instead of pystoi's resampler it would
/// be ~4e-6. 1e-6 leaves room for libm/FMA differences across platforms.
const STOI_TOL: f64 = 1e-6;
const ESTOI_TOL: f64 = 1e-6;
const SI_SDR_TOL_DB: f64 = 1e-6;
/// Against the numpy port in generate.py (same algorithm, so only rounding differs).
const MEL_TOL: f64 = 1e-6;

/// Minimal RIFF/WAVE reader: 16-bit PCM mono only; returns (sample rate, samples / 32768).
fn parse_wav16(bytes: &[u8]) -> (u32, Vec<f32>) {
    assert!(
        bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "not a RIFF/WAVE file"
    );
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut pos = 12;
    let mut rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        match id {
            b"fmt " => {
                assert_eq!(u16_at(body), 1, "PCM");
                assert_eq!(u16_at(body + 2), 1, "mono");
                assert_eq!(u16_at(body + 14), 16, "16-bit");
                rate = Some(u32_at(body + 4));
            }
            b"data" => {
                let data = &bytes[body..(body + size).min(bytes.len())];
                let samples = data
                    .chunks_exact(2)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                    .collect();
                return (rate.expect("fmt chunk before data"), samples);
            }
            _ => {}
        }
        pos = body + size + (size & 1);
    }
    panic!("no data chunk");
}

fn load(name: &str) -> Vec<f32> {
    let (_, bytes) = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown fixture {name}"));
    let (rate, x) = parse_wav16(bytes);
    assert_eq!(rate, 16_000);
    x
}

struct Pair {
    name: String,
    reference: Vec<f32>,
    degraded: Vec<f32>,
    values: serde_json::Value,
}

fn pairs() -> Vec<Pair> {
    let doc: serde_json::Value = serde_json::from_str(REFERENCE_VALUES).unwrap();
    doc["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Pair {
            name: p["name"].as_str().unwrap().to_owned(),
            reference: load(p["reference"].as_str().unwrap()),
            degraded: load(p["degraded"].as_str().unwrap()),
            values: p.clone(),
        })
        .collect()
}

fn value(p: &Pair, key: &str) -> f64 {
    p.values[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no {key}", p.name))
}

fn metric(pairs: &[Pair], name: &str, f: impl Fn(&Pair) -> f64) -> f64 {
    f(pairs.iter().find(|p| p.name == name).unwrap())
}

#[test]
fn stoi_matches_pystoi() {
    let mut worst = 0.0f64;
    for p in pairs() {
        let got = stoi(&p.reference, &p.degraded, 16_000).unwrap();
        let want = value(&p, "stoi");
        let dev = (got - want).abs();
        eprintln!(
            "STOI  {:<10} rust {got:.6} pystoi {want:.6} |diff| {dev:.2e}",
            p.name
        );
        assert!(dev <= STOI_TOL, "{}: STOI {got} vs pystoi {want}", p.name);
        worst = worst.max(dev);
    }
    eprintln!("STOI max |diff| {worst:.2e}");
}

#[test]
fn estoi_matches_pystoi() {
    for p in pairs() {
        let got = estoi(&p.reference, &p.degraded, 16_000).unwrap();
        let want = value(&p, "estoi");
        let dev = (got - want).abs();
        eprintln!(
            "ESTOI {:<10} rust {got:.6} pystoi {want:.6} |diff| {dev:.2e}",
            p.name
        );
        assert!(dev <= ESTOI_TOL, "{}: ESTOI {got} vs pystoi {want}", p.name);
    }
}

#[test]
fn stoi_orders_degradations() {
    let ps = pairs();
    let s = |n| metric(&ps, n, |p| stoi(&p.reference, &p.degraded, 16_000).unwrap());
    let (clean, n15, n5) = (s("identical"), s("noise15"), s("noise5"));
    assert!((clean - 1.0).abs() < 1e-9, "identical STOI {clean}");
    assert!(clean > n15 && n15 > n5, "{clean} > {n15} > {n5}");
    let e = |n| {
        metric(&ps, n, |p| {
            estoi(&p.reference, &p.degraded, 16_000).unwrap()
        })
    };
    assert!((e("identical") - 1.0).abs() < 1e-9);
    assert!(e("noise15") > e("noise5"));
}

#[test]
fn si_sdr_matches_numpy() {
    for p in pairs() {
        let got = si_sdr(&p.reference, &p.degraded).unwrap();
        match p.values["si_sdr_db"].as_f64() {
            // null in the JSON: identical signals, infinite SI-SDR.
            None => assert_eq!(got, f64::INFINITY, "{}", p.name),
            Some(want) => {
                eprintln!(
                    "SI-SDR {:<10} rust {got:.6} numpy {want:.6} dB |diff| {:.2e}",
                    p.name,
                    (got - want).abs()
                );
                assert!(
                    (got - want).abs() <= SI_SDR_TOL_DB,
                    "{}: SI-SDR {got} vs {want}",
                    p.name
                );
            }
        }
    }
}

#[test]
fn log_mel_distance_matches_numpy_and_orders() {
    let ps = pairs();
    for p in &ps {
        let got = log_mel_distance(&p.reference, &p.degraded, 16_000).unwrap();
        let want = value(p, "log_mel_distance");
        eprintln!(
            "log-mel {:<10} rust {got:.6} numpy {want:.6} |diff| {:.2e}",
            p.name,
            (got - want).abs()
        );
        assert!((got - want).abs() <= MEL_TOL, "{}: {got} vs {want}", p.name);
    }
    let d = |n| {
        metric(&ps, n, |p| {
            log_mel_distance(&p.reference, &p.degraded, 16_000).unwrap()
        })
    };
    assert_eq!(d("identical"), 0.0);
    assert!(0.0 < d("lowpass") && d("lowpass") < d("noise15") && d("noise15") < d("noise5"));
    assert!(d("opus6k") > 0.0);
}

#[test]
fn errors_are_reported() {
    let x = load("ref.wav");
    let short = &x[..x.len() - 1];
    assert!(matches!(
        stoi(&x, short, 16_000),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert!(matches!(
        si_sdr(&x, short),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert!(matches!(
        log_mel_distance(&x, short, 16_000),
        Err(MetricsError::LengthMismatch { .. })
    ));
    let (a, b) = trim_to_common_length(&x, short);
    assert_eq!(a.len(), b.len());
    assert!(stoi(a, b, 16_000).is_ok());

    let mut bad = x.clone();
    bad[1234] = f32::NAN;
    assert_eq!(
        stoi(&x, &bad, 16_000),
        Err(MetricsError::NonFinite {
            signal: Signal::Degraded,
            index: 1234
        })
    );
    assert!(matches!(
        si_sdr(&bad, &x),
        Err(MetricsError::NonFinite {
            signal: Signal::Reference,
            ..
        })
    ));

    assert_eq!(
        stoi(&x, &x, 4_000),
        Err(MetricsError::UnsupportedSampleRate(4_000))
    );
    assert_eq!(
        log_mel_distance(&x, &x, 0),
        Err(MetricsError::UnsupportedSampleRate(0))
    );

    // 0.3 s of speech is fewer than 30 STFT frames at 10 kHz.
    let clip = &x[8_000..12_800];
    let err = stoi(clip, clip, 16_000).unwrap_err();
    assert!(
        matches!(err, MetricsError::TooShort { needed: 30, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("STOI"), "{err}");
    assert!(matches!(
        stoi(&[], &[], 16_000),
        Err(MetricsError::TooShort { got: 0, .. })
    ));
    assert!(matches!(
        si_sdr(&[], &[]),
        Err(MetricsError::TooShort { .. })
    ));
    assert_eq!(
        si_sdr(&[0.5; 100], &[0.1; 100]),
        Err(MetricsError::SilentReference)
    );
}

#[test]
fn si_sdr_is_scale_invariant() {
    let x = load("ref.wav");
    let y = load("noise15.wav");
    let y_half: Vec<f32> = y.iter().map(|v| v * 0.5).collect();
    let (a, b) = (si_sdr(&x, &y).unwrap(), si_sdr(&x, &y_half).unwrap());
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    let x_half: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    assert_eq!(si_sdr(&x, &x_half).unwrap(), f64::INFINITY);
}

#[test]
fn stoi_accepts_other_rates() {
    // The same speech at 48 kHz (sample-and-hold upsampling is a crude but real signal) and 8 kHz
    // (decimation of the 16 kHz fixture) still scores ~1 against itself and orders noise.
    let x = load("ref.wav");
    let y = load("noise5.wav");
    let up = |s: &[f32]| s.iter().flat_map(|&v| [v; 3]).collect::<Vec<f32>>();
    assert!((stoi(&up(&x), &up(&x), 48_000).unwrap() - 1.0).abs() < 1e-9);
    let at48 = stoi(&up(&x), &up(&y), 48_000).unwrap();
    let at16 = stoi(&x, &y, 16_000).unwrap();
    assert!((at48 - at16).abs() < 0.05, "48 kHz {at48} vs 16 kHz {at16}");
    // 44.1 kHz rate label on 48 kHz data: only checks that the odd ratio runs.
    assert!(stoi(&up(&x), &up(&y), 44_100).is_ok());
    // A ratio whose exact filter would be huge takes the rubato fallback.
    let odd = stoi(&up(&x), &up(&y), 47_999).unwrap();
    assert!(
        (odd - at48).abs() < 0.01,
        "47 999 Hz {odd} vs 48 kHz {at48}"
    );
}

/// Timing on a 10 s clip; `cargo test --release -p aic-codec metrics::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing report, run in release mode"]
fn timing_10s() {
    let x = load("ref.wav");
    let y = load("noise5.wav");
    let n = 160_000;
    let xr: Vec<f32> = x.iter().cycle().take(n).copied().collect();
    let yr: Vec<f32> = y.iter().cycle().take(n).copied().collect();
    for (name, f) in [
        (
            "stoi",
            &(|a: &[f32], b: &[f32]| stoi(a, b, 16_000).unwrap()) as &dyn Fn(&[f32], &[f32]) -> f64,
        ),
        ("estoi", &|a: &[f32], b: &[f32]| {
            estoi(a, b, 16_000).unwrap()
        }),
        ("si_sdr", &|a: &[f32], b: &[f32]| si_sdr(a, b).unwrap()),
        ("log_mel", &|a: &[f32], b: &[f32]| {
            log_mel_distance(a, b, 16_000).unwrap()
        }),
    ] {
        let _ = f(&xr, &yr);
        let t = std::time::Instant::now();
        let reps = 5;
        let mut v = 0.0;
        for _ in 0..reps {
            v = f(&xr, &yr);
        }
        eprintln!(
            "{name:8} 10 s @ 16 kHz: {:.2} ms (value {v:.4})",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
    }
}
