//! End-to-end tests of the real `aic` binary: files in, files out, exit codes, error lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn aic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .output()
        .expect("run aic")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech")
        .join(name)
}

fn read_wav(p: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(p).unwrap();
    let sr = r.spec().sample_rate;
    (
        r.samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect(),
        sr,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure is one `aic: error:` line and a non-zero exit, never a panic.
fn assert_clean_failure(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "expected one error line, got: {e}"
    );
    assert!(e.starts_with("aic: error:"), "{e}");
    assert!(
        e.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {e}"
    );
}

#[test]
fn codecs_lists_the_opus_baselines() {
    let o = aic(&["codecs"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for name in ["opus ", "opus-osce", "aic "] {
        assert!(s.contains(name), "{name} missing from: {s}");
    }
}

#[test]
fn opus_roundtrip_through_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("en_f_confbridge.wav");
    let coded = dir.path().join("x.aic");
    let out = dir.path().join("x.wav");
    let o = aic(&[
        "encode",
        input.to_str().unwrap(),
        "-o",
        coded.to_str().unwrap(),
        "--codec",
        "opus",
        "--bitrate",
        "16k",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = aic(&[
        "decode",
        coded.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (x, sr_in) = read_wav(&input);
    let (y, sr_out) = read_wav(&out);
    assert_eq!((sr_in, sr_out), (16_000, 16_000));
    assert_eq!(
        x.len(),
        y.len(),
        "decoded clip is trimmed to the input length"
    );
    let stoi = aic_codec::metrics::stoi(&x, &y, 16_000).unwrap();
    assert!(stoi > 0.9, "STOI {stoi} after Opus 16 kbps");
    // Bitrate from the file size: header + 2-byte prefixes + ~16 kbps of packets.
    let bytes = std::fs::metadata(&coded).unwrap().len() as f64;
    let kbps = bytes * 8.0 / (x.len() as f64 / 16_000.0) / 1000.0;
    assert!((10.0..24.0).contains(&kbps), "{kbps} kbps");
}

#[test]
fn damaged_files_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("it_m_speed-dial.wav");
    let coded = dir.path().join("x.aic");
    let out = dir.path().join("x.wav");
    assert!(
        aic(&[
            "encode",
            input.to_str().unwrap(),
            "-o",
            coded.to_str().unwrap(),
            "--codec",
            "opus",
            "--bitrate",
            "8k"
        ])
        .status
        .success()
    );
    let good = std::fs::read(&coded).unwrap();

    let mut header_hit = good.clone();
    header_hit[9] ^= 0x01;
    std::fs::write(&coded, &header_hit).unwrap();
    assert_clean_failure(
        &aic(&[
            "decode",
            coded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "checksum",
    );

    std::fs::write(&coded, &good[..good.len() - 3]).unwrap();
    assert_clean_failure(
        &aic(&[
            "decode",
            coded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "ends inside packet",
    );
    // --lenient keeps everything before the damage.
    let o = aic(&[
        "decode",
        "--lenient",
        coded.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (y, _) = read_wav(&out);
    assert!(y.len() > 16_000 * 3, "only {} samples kept", y.len());

    std::fs::write(&coded, b"RIFF0000WAVEfmt ").unwrap();
    assert_clean_failure(
        &aic(&[
            "decode",
            coded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "not an .aic file",
    );
}

/// Hostile `.aic` files made here: decode is bounded by the header, not by the file. Before
/// the bound, a lost packet (2 bytes) became a concealed 20 ms frame (an AIC model call) with no
/// limit, and packets past `total_samples` were all decoded, then thrown away.
#[test]
fn hostile_files_are_bounded_by_their_header() {
    use aic_codec::bitstream::container::{self, Header, MAX_LOST_RUN};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let input = fixture("en_espeak.wav");
    let out = dir.path().join("x.wav");
    let decode = |file: &Path, lenient: bool| {
        let mut args = vec![
            "decode",
            file.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        if lenient {
            args.push("--lenient");
        }
        let _ = std::fs::remove_file(&out);
        let t0 = Instant::now();
        let o = aic(&args);
        let took = t0.elapsed();
        // Far below what the file would cost unbounded (a million model calls).
        assert!(took < Duration::from_secs(60), "decode took {took:?}");
        o
    };
    let header_of = |codec: &str, extra: &[&str]| -> Header {
        let coded = dir.path().join(format!("{codec}.aic"));
        let mut args = vec![
            "encode",
            input.to_str().unwrap(),
            "-o",
            coded.to_str().unwrap(),
            "--codec",
            codec,
        ];
        args.extend_from_slice(extra);
        let o = aic(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        container::read(&std::fs::read(&coded).unwrap()).unwrap().0
    };

    // 1. An AIC file of a million lost packets (2 MB) whose header claims an hour.
    let mut h = header_of("aic", &["--level", "2"]);
    h.total_samples = 3600 * u64::from(h.info.sample_rate);
    let mut f = Vec::new();
    h.write(&mut f).unwrap();
    for _ in 0..1_000_000 {
        container::write_packet(None, &mut f).unwrap();
    }
    let lost = dir.path().join("lost.aic");
    std::fs::write(&lost, &f).unwrap();
    let o = decode(&lost, false);
    assert_clean_failure(&o, "consecutive lost packets");
    assert!(stderr(&o).contains("packet 50"), "{}", stderr(&o));
    assert!(!out.exists(), "no output from a failed decode");
    // Lenient: stops at the bound, keeping the concealed second before it.
    let o = decode(&lost, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:"), "{}", stderr(&o));
    let (y, _) = read_wav(&out);
    assert!(y.len() <= MAX_LOST_RUN as usize * h.info.frame_samples);

    // 2. An Opus file whose header claims 1 s but which holds the whole clip (and more).
    let real = dir.path().join("opus.aic");
    let mut h = header_of("opus", &["--bitrate", "12k"]);
    let bytes = std::fs::read(&real).unwrap();
    let packets_at = Header::read(&bytes).unwrap().1;
    h.total_samples = u64::from(h.info.sample_rate);
    let mut f = Vec::new();
    h.write(&mut f).unwrap();
    for _ in 0..20 {
        f.extend_from_slice(&bytes[packets_at..]);
    }
    let long = dir.path().join("long.aic");
    std::fs::write(&long, &f).unwrap();
    let o = decode(&long, false);
    assert_clean_failure(&o, "past the");
    assert!(stderr(&o).contains("not decoded"), "{}", stderr(&o));
    assert!(!out.exists(), "no output from a failed decode");
    let o = decode(&long, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ignored"), "{}", stderr(&o));
    let (y, sr) = read_wav(&out);
    assert_eq!(
        (y.len() as u64, sr),
        (h.total_samples, h.info.sample_rate),
        "exactly what the header says"
    );
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.aic");
    let o = out.to_str().unwrap();
    assert_clean_failure(
        &aic(&["encode", "/nonexistent.wav", "-o", o, "--codec", "opus"]),
        "cannot read",
    );
    let not_wav = dir.path().join("text.wav");
    std::fs::write(&not_wav, "hello").unwrap();
    assert_clean_failure(
        &aic(&[
            "encode",
            not_wav.to_str().unwrap(),
            "-o",
            o,
            "--codec",
            "opus",
        ]),
        "as WAV",
    );
    let slow = dir.path().join("4k.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 4000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&slow, spec).unwrap();
    for _ in 0..4000 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    assert_clean_failure(
        &aic(&["encode", slow.to_str().unwrap(), "-o", o, "--codec", "opus"]),
        "sample rate",
    );
    let input = fixture("en_espeak.wav");
    assert_clean_failure(
        &aic(&["encode", input.to_str().unwrap(), "-o", o, "--codec", "mp3"]),
        "unknown codec",
    );
    assert_clean_failure(
        &aic(&[
            "encode",
            input.to_str().unwrap(),
            "-o",
            o,
            "--codec",
            "opus",
            "--bitrate",
            "1k",
        ]),
        "bitrate",
    );
}

#[test]
fn bench_writes_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let o = aic(&[
        "bench",
        fixture("en_f_confbridge.wav").to_str().unwrap(),
        fixture("en_espeak.wav").to_str().unwrap(),
        "--codecs",
        "opus@6k,opus@24k,opus-osce@6k",
        "--no-external",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("STOI") && table.contains("opus-osce"),
        "{table}"
    );
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let kbps: Vec<f64> = rows
        .iter()
        .map(|r| r["bitrate_kbps"].as_f64().unwrap())
        .collect();
    assert!(
        (4.5..8.0).contains(&kbps[0]) && (16.0..28.0).contains(&kbps[1]),
        "{kbps:?}"
    );
    let stoi: Vec<f64> = rows.iter().map(|r| r["stoi"].as_f64().unwrap()).collect();
    assert!(
        stoi[1] > stoi[0] && stoi[1] > 0.95,
        "more bits, better STOI: {stoi:?}"
    );
    assert!(rows.iter().all(|r| r["encode_rtf"].as_f64().unwrap() > 0.0));
    assert_eq!(rep["inputs"].as_array().unwrap().len(), 2);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("opus-osce"),
        "plot lacks the series"
    );
}

#[test]
fn aic_roundtrip_through_the_container_and_corruption_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("en_espeak.wav");
    let coded = dir.path().join("x.aic");
    let out = dir.path().join("x.wav");
    let o = aic(&[
        "encode",
        input.to_str().unwrap(),
        "-o",
        coded.to_str().unwrap(),
        "--codec",
        "aic",
        "--level",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = aic(&[
        "decode",
        coded.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (x, _) = read_wav(&input);
    let (y, sr) = read_wav(&out);
    assert_eq!((sr, y.len()), (16_000, x.len()));
    // Level 2: about 2 kbps of frames (plus the container's 2-byte prefixes).
    let bytes = std::fs::read(&coded).unwrap();
    let kbps = bytes.len() as f64 * 8.0 / (x.len() as f64 / 16_000.0) / 1000.0;
    assert!(kbps < 3.5, "{kbps} kbps at level 2");
    // Damage one frame's payload: the CRC catches it, decode fails with a clear line...
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x40;
    std::fs::write(&coded, &bad).unwrap();
    assert_clean_failure(
        &aic(&[
            "decode",
            coded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "integrity check failed",
    );
    // ...or is concealed with --lenient, keeping the full length.
    let o = aic(&[
        "decode",
        "--lenient",
        coded.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_wav(&out).0.len(), x.len());
    assert!(stderr(&o).contains("concealed"));
}

#[test]
fn bench_load_runs_real_streams_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let o = aic(&[
        "bench",
        "load",
        "--streams",
        "3",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("p99 ms") && table.contains("pipeline efficiency"),
        "{table}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let run = &r["run"];
    // 3 encode + 3 decode streams for 50 frames: every frame is answered or counted as dropped.
    assert_eq!(run["engine_streams"], 6);
    assert_eq!(run["frames_pushed"], 300);
    let out = run["frames_out"].as_u64().unwrap() + run["dropped"].as_u64().unwrap();
    assert_eq!(out, 300, "{run}");
    assert!(
        run["batch_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b[0].as_u64().unwrap() >= 2),
        "streams share calls"
    );
    assert!(!r["batching"].as_array().unwrap().is_empty());
    assert!(
        r["efficiency"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["ratio"].as_f64().unwrap() > 0.0)
    );
}

#[test]
fn bench_load_transcode_streams_report_cpu_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("transcode.json");
    let o = aic(&[
        "bench",
        "load",
        "--mode",
        "transcode",
        "--streams",
        "2",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("transcode") && table.contains("CPU%/str"),
        "{table}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let run = &r["run"];
    // 2 transcode streams (one engine stream each) for 50 frames: every frame comes back as
    // one output (frame + PCM), none falls back at this load.
    assert_eq!(run["mode"], "transcode");
    assert_eq!(run["engine_streams"], 2);
    assert_eq!(run["frames_pushed"], 100);
    assert_eq!(run["frames_out"], 100, "{run}");
    assert_eq!(run["fallbacks"], 0, "{run}");
    assert_eq!(run["dropped"], 0, "{run}");
    assert_eq!(run["realtime"], true, "{run}");
    let per_stream = run["cpu_percent_per_stream"].as_f64().unwrap();
    assert!(per_stream > 0.0 && per_stream <= 100.0, "{run}");
    let lat = &run["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() > 0.0, "{run}");
    assert!(lat["p99"].as_f64().unwrap() >= lat["p50"].as_f64().unwrap());
    assert!(r["cores"].as_u64().unwrap() >= 1);
}

#[test]
fn bench_grpc_compares_the_service_with_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("grpc.json");
    let o = aic(&[
        "bench",
        "grpc",
        "--streams",
        "2",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["grpc"]["frames_sent"], 100);
    assert_eq!(
        r["grpc"]["frames_back"], 100,
        "every frame sent over gRPC comes back"
    );
    assert_eq!(r["in_process"]["frames_pushed"], 100);
    assert!(r["p99_ratio"].as_f64().unwrap() > 0.0);
}

/// `aic bench loss` on one clip at 10 %: every method's rows, exactly 10 % of the clip's 20 ms
/// slots lost and the same slots for every method (and for a seed), FEC really used by the
/// 24 kbps Opus, and PLCMOS/DNSMOS scored when the project's venv is here.
#[test]
fn bench_loss_scores_concealment_on_the_same_lost_frames() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("loss.json");
    let tsv = dir.path().join("loss.tsv");
    let clip = fixture("en_f_confbridge.wav");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "loss",
            clip.to_str().unwrap(),
            "--rates",
            "10",
            "--opus-bitrate",
            "24k",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = aic(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let rep: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), rep)
    };
    // PLCMOS only: DNSMOS costs several seconds of CPU per clip.
    let (table, rep) = run(&[
        "--seed",
        "3",
        "--scores",
        "plcmos",
        "--tsv",
        tsv.to_str().unwrap(),
    ]);
    for col in ["PLCMOS", "DNSMOS", "STOI"] {
        assert!(table.contains(col), "{table}");
    }
    let rows = rep["rows"].as_array().unwrap();
    let key = |r: &serde_json::Value| {
        format!(
            "{} {} {}",
            r["pattern"].as_str().unwrap(),
            r["method"].as_str().unwrap(),
            r["point"].as_str().unwrap()
        )
    };
    let keys: Vec<String> = rows.iter().map(key).collect();
    let mut want = vec![
        "none original -".to_owned(),
        "none aic L6".into(),
        "none opus 24k".into(),
        "none opus-osce 24k".into(),
    ];
    for p in ["random", "bursty"] {
        for m in [
            "aic L6",
            "aic-repeat L6",
            "opus 24k",
            "opus-fec 24k",
            "opus-osce 24k",
        ] {
            want.push(format!("{p} {m}"));
        }
    }
    assert_eq!(keys, want, "{table}");
    assert_eq!(
        std::fs::read_to_string(&tsv).unwrap().lines().count(),
        rows.len() + 1
    );

    let (x, sr) = read_wav(&clip);
    assert_eq!(sr, 16_000);
    let frames = x.len().div_ceil(320) as u64;
    let expected = (0.10 * frames as f64).round() as u64;
    for r in rows {
        assert_eq!(r["frames"], frames, "{r}");
        let lost = if r["pattern"] == "none" { 0 } else { expected };
        assert_eq!(r["lost_frames"], lost, "{r}");
        if r["method"] == "opus-fec" {
            assert!(r["fec_frames"].as_u64().unwrap() > 0, "no FEC used: {r}");
        }
    }
    let masks = rep["masks"].clone();
    for m in masks.as_array().unwrap() {
        let lost: Vec<u64> = m["lost"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert_eq!(lost.len() as u64, expected, "{m}");
        assert!(lost.windows(2).all(|w| w[0] < w[1]) && lost[lost.len() - 1] < frames);
    }
    let (_, again) = run(&["--seed", "3", "--methods", "opus", "--no-external"]);
    assert_eq!(again["masks"], masks, "same seed, same lost slots");
    let (_, other) = run(&["--seed", "4", "--methods", "opus", "--no-external"]);
    assert_ne!(other["masks"], masks, "another seed, other slots");

    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        for r in rows {
            let p = r["plcmos"]
                .as_f64()
                .unwrap_or_else(|| panic!("no PLCMOS: {r}"));
            assert!((1.0..=5.0).contains(&p), "{r}");
        }
    } else {
        // Under CI the set-up makes the venv: a missing one there is a failure, not a skip.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no .venv: PLCMOS could not be checked (bash scripts/setup.sh makes it)"
        );
        eprintln!("PLCMOS not checked: no .venv (bash scripts/setup.sh makes it)");
        assert!(table.contains("no Python venv"), "{table}");
    }
}

/// `aic encode --container 2` writes the paged framing (docs/bitstream.md §3.2): smaller than
/// version 1, and `aic decode` gives the same samples from both.
#[test]
fn container_2_is_smaller_and_decodes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("en_espeak.wav");
    let mut sizes = Vec::new();
    let mut pcm = Vec::new();
    for v in ["1", "2"] {
        let coded = dir.path().join(format!("v{v}.aic"));
        let out = dir.path().join(format!("v{v}.wav"));
        let o = aic(&[
            "encode",
            input.to_str().unwrap(),
            "-o",
            coded.to_str().unwrap(),
            "--codec",
            "opus",
            "--bitrate",
            "12k",
            "--container",
            v,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let bytes = std::fs::read(&coded).unwrap();
        assert_eq!(bytes[4].to_string(), v, "container version byte");
        sizes.push(bytes.len());
        let o = aic(&[
            "decode",
            coded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        pcm.push(read_wav(&out));
    }
    assert_eq!(pcm[0], pcm[1]);
    assert!(sizes[1] < sizes[0], "{sizes:?}");
    let o = aic(&[
        "encode",
        input.to_str().unwrap(),
        "-o",
        dir.path().join("v3.aic").to_str().unwrap(),
        "--container",
        "3",
    ]);
    assert!(!o.status.success());
}
