//! `aic render` end to end: a real archive from `aic encode`, rendered through the real
//! GStreamer egress, read back with ffprobe/ffmpeg and compared with `aic decode`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn aic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .output()
        .expect("run aic")
}

fn ok(o: Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{e}");
    e
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fixtures/speech/en_f_confbridge.wav")
}

fn wav(p: &Path) -> Vec<i16> {
    hound::WavReader::open(p)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}

fn ffdecode(p: &Path) -> Vec<i16> {
    let o = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            s(p),
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn stoi(x: &[i16], y: &[i16]) -> f64 {
    // Best lag within ±40 ms, then STOI.
    let n = x.len().min(y.len());
    let corr = |d: i64| -> f64 {
        (0..n as i64)
            .step_by(2)
            .filter(|&i| i + d >= 0 && ((i + d) as usize) < y.len())
            .map(|i| x[i as usize] as f64 * y[(i + d) as usize] as f64)
            .sum()
    };
    let d = (-640i64..=640)
        .max_by(|a, b| corr(*a).total_cmp(&corr(*b)))
        .unwrap();
    let (x, y) = if d >= 0 {
        (x, &y[d as usize..])
    } else {
        (&x[(-d) as usize..], y)
    };
    let n = x.len().min(y.len());
    let f = |v: &[i16]| {
        v[..n]
            .iter()
            .map(|&s| s as f32 / 32768.0)
            .collect::<Vec<_>>()
    };
    aic_codec::metrics::stoi(&f(x), &f(y), 16_000).unwrap()
}

#[test]
fn an_archive_renders_to_every_file_format_as_aic_decode_hears_it() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("x.aic");
    ok(aic(&["encode", s(&fixture()), "-o", s(&a), "--level", "6"]));
    let reference = d.path().join("ref.wav");
    ok(aic(&["decode", s(&a), "-o", s(&reference)]));
    let r = wav(&reference);
    let frames = r.len().div_ceil(320);

    // WAV: the decoder's output itself, padded to a whole frame.
    let w = d.path().join("x.wav");
    ok(aic(&["render", s(&a), "-o", s(&w)]));
    let y = wav(&w);
    assert_eq!(y.len(), frames * 320);
    assert_eq!(&y[..r.len()], &r[..]);
    assert!(y[r.len()..].iter().all(|&v| v == 0));

    for (name, fmt) in [("x.ogg", "ogg"), ("x.webm", "matroska"), ("x.mp4", "mp4")] {
        let out = d.path().join(name);
        let log = ok(aic(&["render", s(&a), "-o", s(&out), "--bitrate", "48k"]));
        assert!(log.contains("stopped"), "{log}");
        let probe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=format_name",
                "-of",
                "default=nw=1",
                s(&out),
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&probe.stdout).contains(fmt),
            "{name}"
        );
        let y = ffdecode(&out);
        let dur = y.len() as f64 / 16_000.0;
        let st = stoi(&r, &y);
        eprintln!("{name}: {dur:.3} s for {frames} frames, STOI vs aic decode {st:.3}");
        assert!(
            (dur - frames as f64 * 0.02).abs() <= 0.02,
            "{name}: {dur} s"
        );
        assert!(st > 0.9, "{name}: STOI {st}");
    }

    // To a paged .aic (container v2), decoded again: the same audio.
    let v2 = d.path().join("v2.aic");
    ok(aic(&["render", s(&a), "-o", s(&v2)]));
    let again = d.path().join("again.wav");
    ok(aic(&["decode", s(&v2), "-o", s(&again)]));
    let y = wav(&again);
    assert!(y.len() >= r.len());
    assert_eq!(&y[..r.len()], &r[..]);
    assert!(std::fs::metadata(&v2).unwrap().len() < std::fs::metadata(&a).unwrap().len());
}

#[test]
fn a_killed_recording_renders_up_to_its_last_page_and_nothing_is_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("x.aic");
    ok(aic(&[
        "encode",
        s(&fixture()),
        "-o",
        s(&a),
        "--level",
        "2",
        "--container",
        "2",
    ]));
    // A v2 file from `aic encode` has its length in the header; a recording is "live"
    // (total_samples = 0): re-render it as an archive, then tear its last page as a recorder
    // killed mid-write leaves it.
    let live = d.path().join("live.aic");
    ok(aic(&["render", s(&a), "-o", s(&live)]));
    let lb = std::fs::read(&live).unwrap();
    std::fs::write(&live, &lb[..lb.len() - 7]).unwrap();
    let out = d.path().join("k.ogg");
    let log = ok(aic(&["render", s(&live), "-o", s(&out)]));
    assert!(log.contains("torn"), "{log}");
    let y = ffdecode(&out);
    // 191 frames in pages of 50: the torn last page (41 frames) is lost, 150 frames remain.
    assert!(
        (y.len() as i64 - 150 * 320).abs() <= 320,
        "{} samples",
        y.len()
    );

    // Rendering again to the same name writes k-2.ogg; k.ogg is untouched.
    let before = std::fs::read(&out).unwrap();
    let log = ok(aic(&["render", s(&live), "-o", s(&out)]));
    assert!(log.contains("k-2.ogg"), "{log}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn render_errors_are_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("x.aic");
    ok(aic(&["encode", s(&fixture()), "-o", s(&a), "--level", "2"]));
    for (args, want) in [
        (
            vec!["render", s(&a), "-o", "x.flac"],
            "cannot tell the format",
        ),
        (
            vec!["render", s(&fixture()), "-o", "x.ogg"],
            "not an .aic file",
        ),
        (
            vec!["render", s(&a), "-o", "x.ogg", "--bitrate", "1k"],
            "bitrate",
        ),
        (
            vec!["render", s(&a), "-o", "/nonexistent/dir/x.ogg"],
            "creating",
        ),
    ] {
        let o = aic(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(e.contains(want), "{args:?}: {e}");
    }
}
