//! The rate model and the hint controller (`aic_video::rate`): pure, no encoder needed.

use std::time::{Duration, Instant};

use aic_video::rate::eval::{ShotCurve, curves, leave_one_group_out};
use aic_video::rate::{
    ControllerConfig, RateController, RateModel, RateReason, RateSample, ShotFeatures,
};
use aic_video::{EncoderKind, Yuv420Frame};
use proptest::prelude::*;

/// A model with known coefficients: `q = 60 − 4·ln(1+spatial) − 2·ln(1+temporal) + 4·ln(bpp)`.
fn model() -> RateModel {
    RateModel::from_json(
        r#"{"format":"aic-video-rate","encoder":"av1","metric":"psnr_y","features_version":1,
            "features":["1","ln_spatial","ln_temporal"],"a":[60.0,-4.0,-2.0],"b":[4.0,0.0,0.0],
            "b_min":0.5,"bpp_range":[0.001,2.0]}"#,
    )
    .unwrap()
}

fn shot(spatial: f64, temporal: f64) -> ShotFeatures {
    ShotFeatures {
        width: 640,
        height: 360,
        fps: 30.0,
        spatial,
        temporal,
        face_fraction: 0.0,
        frames: 30,
    }
}

fn av1() -> RateController {
    RateController::new(model(), ControllerConfig::for_encoder(EncoderKind::Av1))
}

const FRAME: Duration = Duration::from_nanos(33_333_333);

#[test]
fn the_curve_inverts() {
    let m = model();
    let f = shot(20.0, 5.0);
    for q in [30.0, 35.0, 40.0] {
        let bps = m.predict_bitrate(&f, q);
        assert!(
            (m.predict_quality(&f, bps) - q).abs() < 1e-9,
            "{q} dB: {bps}"
        );
    }
    // Busier content needs more bits for the same quality; more quality needs more bits.
    assert!(m.predict_bitrate(&shot(40.0, 5.0), 36.0) > m.predict_bitrate(&f, 36.0));
    assert!(m.predict_bitrate(&shot(20.0, 15.0), 36.0) > m.predict_bitrate(&f, 36.0));
    assert!(m.predict_bitrate(&f, 38.0) > m.predict_bitrate(&f, 36.0));
}

#[test]
fn bad_model_files_are_refused() {
    let ok = serde_json::to_value(model()).unwrap();
    for (key, value) in [
        ("format", serde_json::json!("x")),
        ("features_version", serde_json::json!(99)),
        (
            "features",
            serde_json::json!(["1", "colour", "ln_temporal"]),
        ),
        ("a", serde_json::json!([1.0])),
        ("bpp_range", serde_json::json!([0.5, 0.1])),
        ("b_min", serde_json::json!(0.0)),
    ] {
        let mut v = ok.clone();
        v[key] = value;
        assert!(RateModel::from_json(&v.to_string()).is_err(), "{key}");
    }
    assert!(RateModel::from_json(&ok.to_string()).is_ok());
}

#[test]
fn the_committed_av1_model_is_sane() {
    let m = RateModel::bundled(EncoderKind::Av1).expect("models/video-rate/av1.json");
    assert_eq!(m.encoder, "av1");
    let vga = ShotFeatures {
        width: 640,
        height: 360,
        fps: 30.0,
        spatial: 15.0,
        temporal: 2.0,
        face_fraction: 0.0,
        frames: 30,
    };
    let qcif = ShotFeatures {
        width: 176,
        height: 144,
        ..vga
    };
    let hd = ShotFeatures {
        width: 1280,
        height: 720,
        ..vga
    };
    let b = |f: &ShotFeatures, q| m.predict_bitrate(f, q);
    // More quality costs more; a bigger picture costs more in all but bits per pixel.
    assert!(
        b(&vga, 40.0) > 1.3 * b(&vga, 37.0),
        "{} {}",
        b(&vga, 40.0),
        b(&vga, 37.0)
    );
    assert!(b(&qcif, 37.0) < b(&vga, 37.0) && b(&vga, 37.0) < b(&hd, 37.0));
    assert!(b(&hd, 37.0) / hd.pixel_rate() < b(&qcif, 37.0) / qcif.pixel_rate());
    // What the measured clips need for 37 dB: tens of kbit/s at QCIF, hundreds at 360p.
    assert!(
        (20e3..200e3).contains(&b(&qcif, 37.0)),
        "{}",
        b(&qcif, 37.0)
    );
    assert!((100e3..2e6).contains(&b(&vga, 37.0)), "{}", b(&vga, 37.0));
    let bps = b(&vga, 37.0);
    assert!((m.predict_quality(&vga, bps) - 37.0).abs() < 1e-6);
}

#[test]
fn fit_recovers_known_coefficients() {
    let truth = model();
    let mut samples = Vec::new();
    for (i, (s, t)) in [
        (5.0, 1.0),
        (12.0, 3.0),
        (25.0, 9.0),
        (40.0, 2.0),
        (18.0, 20.0),
    ]
    .into_iter()
    .enumerate()
    {
        for bpp in [0.02, 0.05, 0.1, 0.2] {
            let f = shot(s, t);
            let bps = bpp * f.pixel_rate();
            samples.push(RateSample {
                group: format!("g{i}"),
                clip: format!("c{i}"),
                shot: 1,
                features: f,
                target_bps: bps,
                bps,
                quality: truth.predict_quality(&f, bps),
            });
        }
    }
    let fit = RateModel::fit("av1", &["1", "ln_spatial", "ln_temporal"], &samples, 0.0).unwrap();
    for (got, want) in fit
        .a
        .iter()
        .chain(&fit.b)
        .zip(truth.a.iter().chain(&truth.b))
    {
        assert!((got - want).abs() < 1e-6, "{:?} {:?}", fit.a, fit.b);
    }
    // Leave-one-group-out on noiseless data predicts exactly.
    let ev = leave_one_group_out(
        "av1",
        &samples,
        &["1", "ln_spatial", "ln_temporal"],
        0.0,
        &[36.0, 40.0],
    )
    .unwrap();
    assert!(!ev.errors.is_empty());
    assert!(
        ev.errors.iter().all(|e| e.relative().abs() < 1e-6),
        "{ev:?}"
    );
    assert_eq!(curves(&samples).len(), 5);
}

#[test]
fn measured_curves_interpolate_in_log_rate() {
    let c = ShotCurve {
        group: "g".into(),
        clip: "c".into(),
        shot: 1,
        features: shot(1.0, 1.0),
        points: vec![(100e3, 30.0), (400e3, 36.0)],
    };
    assert!((c.rate_for(33.0).unwrap() - 200e3).abs() < 1e-6);
    assert!(c.rate_for(40.0).is_none());
    assert_eq!(c.quality_at(50e3), (30.0, false));
    let (q, inside) = c.quality_at(200e3);
    assert!(inside && (q - 33.0).abs() < 1e-9);
}

#[test]
fn a_static_shot_never_oscillates() {
    let mut c = av1();
    let t0 = Instant::now();
    // One minute of a still shot whose measured features wobble by ±8 % (noise, small motion).
    let mut rates = Vec::new();
    for i in 0..1800u32 {
        let wobble = 1.0 + 0.08 * ((i as f64) * 0.37).sin();
        let d = c.update(
            t0 + FRAME * i,
            &shot(20.0 * wobble, 3.0 / wobble),
            10_000_000,
            37.0,
        );
        rates.push(d.bitrate_bps);
    }
    assert_eq!(c.changes(), 0, "{:?}", &rates[..10]);
}

#[test]
fn a_bandwidth_drop_is_followed_at_once() {
    let mut c = av1();
    let t0 = Instant::now();
    let f = shot(20.0, 3.0);
    let first = c.update(t0, &f, 10_000_000, 38.0);
    assert_eq!(first.reason, RateReason::First);
    let want = first.bitrate_bps;
    // A quarter of what the shot wants, 10 ms later (well inside the 2 s hold).
    let bwe = want / 4;
    let d = c.update(t0 + Duration::from_millis(10), &f, bwe, 38.0);
    assert!(d.changed && d.bitrate_bps <= bwe, "{d:?}");
    assert_eq!(d.reason, RateReason::Bandwidth);
    assert_eq!(d.hint(), Some(d.bitrate_bps));
    // The estimate recovers: back up, but only after the hold.
    let d = c.update(t0 + Duration::from_millis(500), &f, 10_000_000, 38.0);
    assert!(!d.changed && d.hint().is_none(), "{d:?}");
    let d = c.update(t0 + Duration::from_millis(2100), &f, 10_000_000, 38.0);
    assert!(d.changed && d.bitrate_bps == want, "{d:?}");
}

#[test]
fn a_complexity_jump_raises_the_rate() {
    let mut c = av1();
    let t0 = Instant::now();
    let calm = c.update(t0, &shot(8.0, 1.0), 10_000_000, 38.0).bitrate_bps;
    // A cut to a busy, moving shot 300 ms later: re-evaluated without waiting.
    let d = c.update(
        t0 + Duration::from_millis(300),
        &shot(35.0, 15.0),
        10_000_000,
        38.0,
    );
    assert!(d.changed && d.bitrate_bps > calm * 2, "{d:?} vs {calm}");
    assert_eq!(d.reason, RateReason::ShotChange);
    // And back down at the next cut.
    let d = c.update(
        t0 + Duration::from_millis(600),
        &shot(8.0, 1.0),
        10_000_000,
        38.0,
    );
    assert_eq!((d.bitrate_bps, d.reason), (calm, RateReason::ShotChange));
}

#[test]
fn a_slow_drift_waits_for_the_hold() {
    let mut c = av1();
    let t0 = Instant::now();
    let start = c.update(t0, &shot(20.0, 3.0), 10_000_000, 38.0).bitrate_bps;
    // Features creep (each step below the shot-change distance) until the prediction is
    // well over 15 % away; the first change may come only 2 s after the start.
    let mut first_change = None;
    for i in 1..150u32 {
        let s = 20.0 * (1.0 + 0.004 * f64::from(i));
        let now = t0 + FRAME * i;
        let d = c.update(now, &shot(s, 3.0), 10_000_000, 38.0);
        if d.changed && first_change.is_none() {
            first_change = Some((now - t0, d));
        }
    }
    let (at, d) = first_change.expect("a change");
    assert!(at >= Duration::from_secs(2), "{at:?}");
    assert!(
        d.bitrate_bps as f64 > start as f64 * 1.15,
        "{d:?} vs {start}"
    );
    assert!(matches!(
        d.reason,
        RateReason::Drift | RateReason::ShotChange
    ));
}

#[test]
fn x264_follows_small_changes_without_waiting() {
    let mut c = RateController::new(model(), ControllerConfig::for_encoder(EncoderKind::X264));
    let t0 = Instant::now();
    let a = c.update(t0, &shot(20.0, 3.0), 10_000_000, 38.0).bitrate_bps;
    let d = c.update(t0 + FRAME, &shot(22.0, 3.0), 10_000_000, 38.0);
    assert!(d.changed && d.bitrate_bps > a, "{d:?}");
}

#[test]
fn meter_features_follow_motion() {
    let mk = |shift: u32| {
        let mut f = Yuv420Frame::grey(160, 96).unwrap();
        for y in 0..96u32 {
            for x in 0..160u32 {
                f.y[(y * 160 + x) as usize] = if ((x + shift) / 12 + y / 12).is_multiple_of(2) {
                    40
                } else {
                    200
                };
            }
        }
        f
    };
    let still: Vec<_> = (0..10).map(|_| mk(0)).collect();
    let moving: Vec<_> = (0..10).map(|i| mk(i * 5)).collect();
    let s = ShotFeatures::from_frames(&still, 30.0).unwrap();
    let m = ShotFeatures::from_frames(&moving, 30.0).unwrap();
    assert_eq!(s.temporal, 0.0);
    assert!(m.temporal > 10.0, "{m:?}");
    assert!(
        s.spatial > 10.0 && (s.spatial - m.spatial).abs() < 0.35 * s.spatial,
        "{s:?} {m:?}"
    );
}

proptest! {
    /// Whatever the estimate and the content do, the target never exceeds the estimate (down
    /// to the encoder's floor) and never changes more than once per hold without a reason.
    #[test]
    fn never_above_the_estimate(steps in prop::collection::vec(
        (1u32..400, 20_000u32..3_000_000, 1.0f64..60.0, 0.0f64..30.0, 30.0f64..44.0), 1..60)) {
        let mut c = av1();
        let t0 = Instant::now();
        let mut now = t0;
        for (dt_ms, bwe, s, t, q) in steps {
            now += Duration::from_millis(u64::from(dt_ms));
            let d = c.update(now, &shot(s, t), bwe, q);
            prop_assert!(d.bitrate_bps <= bwe.max(10_000), "{:?} above {}", d, bwe);
            prop_assert!(d.changed == (d.hint().is_some()));
        }
    }
}
