//! `aic video bench|encode|decode` as a user runs them, on a tiny lavfi clip.

use std::path::Path;
use std::process::{Command, Output};

fn aic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .output()
        .expect("run aic")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "aic failed: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn clip(dir: &Path) -> String {
    let p = dir.join("tiny.y4m");
    let s = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
        ])
        .args([
            "-i",
            "testsrc2=size=176x144:rate=30",
            "-t",
            "0.5",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "yuv4mpegpipe",
        ])
        .arg(&p)
        .status()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(s.success());
    p.to_string_lossy().into_owned()
}

#[test]
fn video_bench_writes_a_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    let json = dir.path().join("bench.json");
    let svg = dir.path().join("bench.svg");
    let o = aic(&[
        "video",
        "bench",
        &input,
        "--codecs",
        "vp8,av1+roi",
        "--kbps",
        "150,400",
        "--no-vmaf",
        "--roi",
        "centre",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("PSNR-Y") && stdout.contains("av1+roi"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    for r in rows {
        assert_eq!(r["clip"], "tiny");
        assert_eq!(r["frames"], 15);
        assert_eq!(r["frames_decoded"], 15);
        assert_eq!(r["decode_errors"], 0);
        let kbps = r["kbps"].as_f64().unwrap();
        let target = r["target_kbps"].as_f64().unwrap();
        assert!(kbps > target / 4.0 && kbps < target * 4.0, "{r}");
        assert!(r["psnr_y"].as_f64().unwrap() > 22.0, "{r}");
        let ms = r["ms_ssim"].as_f64().unwrap();
        assert!(ms > 0.5 && ms <= 1.0, "{r}");
        assert!(
            r["psnr_y_roi"].as_f64().is_some() && r["psnr_y_outside"].as_f64().is_some(),
            "{r}"
        );
        assert!(r["encode_fps"].as_f64().unwrap() > 0.0);
        let (p50, p99) = (
            r["latency_p50_ms"].as_f64().unwrap(),
            r["latency_p99_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{r}");
        assert!(r["vmaf"].is_null());
    }
    // Same clip, same codec: the higher target spends more.
    assert!(rows[1]["kbps"].as_f64() > rows[0]["kbps"].as_f64(), "{v}");
    assert!(rows[2]["roi_map"].as_str().unwrap().contains("PLACEHOLDER"));
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("--no-vmaf"))
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("MS-SSIM"),
        "not an SVG plot"
    );
}

#[test]
fn video_encode_then_decode_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    for (codec, ext) in [("av1", "ivf"), ("vp8", "ivf"), ("x264", "h264")] {
        let coded = dir.path().join(format!("out-{codec}.{ext}"));
        let y4m = dir.path().join(format!("back-{codec}.y4m"));
        ok(&aic(&[
            "video",
            "encode",
            &input,
            "-o",
            coded.to_str().unwrap(),
            "--codec",
            codec,
            "--kbps",
            "300",
        ]));
        let o = aic(&[
            "video",
            "decode",
            coded.to_str().unwrap(),
            "-o",
            y4m.to_str().unwrap(),
        ]);
        ok(&o);
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            said.contains("15 frames 176x144, 0 decode errors"),
            "{codec}: {said}"
        );
        let bytes = std::fs::read(&y4m).unwrap();
        assert!(bytes.starts_with(b"YUV4MPEG2 W176 H144"));
        assert_eq!(
            bytes.len(),
            bytes.iter().position(|&b| b == b'\n').unwrap() + 1 + 15 * (6 + 176 * 144 * 3 / 2)
        );
    }
    let o = aic(&["video", "encode", &input, "-o", "x.ivf", "--codec", "nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown codec"));
}

#[test]
fn bench_load_video_runs_paced_streams_and_says_pass_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    let json = dir.path().join("load.json");
    let o = aic(&[
        "bench",
        "load",
        "--video",
        "--clip",
        &input,
        "--size",
        "96x54",
        "--streams",
        "2",
        "--duration",
        "1",
        "--roi",
        "none",
        "--av1-speed",
        "10",
        "--json",
        json.to_str().unwrap(),
    ]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("96x54") && (stdout.contains("PASS") || stdout.contains("FAIL")),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    let r = &runs[0];
    assert_eq!(r["streams"], 2);
    assert_eq!(r["codec"], "av1");
    // 1 s at 30 fps, 2 streams; every frame is encoded, dropped or forwarded.
    assert_eq!(r["frames_in"], 60, "{r}");
    let (enc, drop, fwd) = (
        r["frames_encoded"].as_u64().unwrap(),
        r["frames_dropped"].as_u64().unwrap(),
        r["packets_forwarded"].as_u64().unwrap(),
    );
    assert_eq!(enc + drop + fwd, 60, "{r}");
    assert!(enc > 0 && r["kbps_out"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["e2e_ms"]["p99"].as_f64().unwrap() >= r["e2e_ms"]["p50"].as_f64().unwrap());
    assert!(r["detector"].is_null());
    assert_eq!(
        r["pass"].as_bool().unwrap(),
        r["why"].as_array().unwrap().is_empty()
    );
    // Bad sizes are refused before anything runs.
    let o = aic(&["bench", "load", "--video", "--size", "97x54"]);
    assert!(!o.status.success());
}
