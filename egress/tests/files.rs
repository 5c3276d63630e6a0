//! File outputs through real GStreamer, read back with ffprobe/ffmpeg: each plays, lasts the
//! media sent (to within a frame), sounds like the input, and keeps its timeline through gaps.

mod support;

use std::path::Path;

use aic_egress::{Format, OutputSpec, State};
use support::*;

const FRAME_S: f64 = 0.020;

fn check_file(path: &Path, want_format: &str, x: &[i16], media_frames: u64) {
    let (name, _) = probe(path);
    assert!(
        name.contains(want_format),
        "{}: ffprobe says {name}",
        path.display()
    );
    let y = decode(path);
    let want = media_frames as f64 * FRAME_S;
    let got = y.len() as f64 / 16_000.0;
    assert!(
        (got - want).abs() <= FRAME_S,
        "{}: decodes to {got:.3} s, media sent {want:.3} s",
        path.display()
    );
    let s = stoi_aligned(x, &y);
    eprintln!(
        "{}: {got:.3} s for {want:.3} s sent, STOI {s:.3}",
        path.display()
    );
    assert!(s > 0.9, "{}: STOI {s:.3} against the input", path.display());
}

#[test]
fn ogg_webm_mp4_and_wav_play_for_exactly_the_media_sent() {
    let dir = tempfile::tempdir().unwrap();
    let x = speech();
    let frames = (x.len() / 320) as u64;
    let outs = ["a.ogg", "a.webm", "a.mp4", "a.wav"]
        .map(|n| OutputSpec::parse(dir.path().join(n).to_str().unwrap(), None).unwrap());
    let st = record(outs.to_vec(), &x, 1000, &|_| false);
    assert!(st.done, "{st:?}");
    for (o, fmt) in st.outputs.iter().zip(["ogg", "webm", "mov,mp4", "wav"]) {
        assert_eq!(o.state, State::Stopped, "{o:?}");
        assert_eq!(o.media_ms, frames * 20);
        assert_eq!((o.frames, o.filled, o.dropped), (frames, 0, 0));
        assert!(o.start_latency_ms.is_some());
        check_file(Path::new(&o.location), fmt, &x, frames);
    }
    // The WAV is the input itself.
    assert_eq!(decode(&dir.path().join("a.wav")), x);
}

#[test]
fn gaps_keep_the_timeline_so_the_file_lasts_the_wall_clock_media_time() {
    let dir = tempfile::tempdir().unwrap();
    let x = speech();
    let frames = (x.len() / 320) as u64;
    let outs = ["g.ogg", "g.mp4"]
        .map(|n| OutputSpec::parse(dir.path().join(n).to_str().unwrap(), None).unwrap());
    // 5 % loss (every 20th frame) and a 1 s outage (frames 60..110): nothing is shortened.
    let skip = |i: u64| (i % 20 == 7) || (60..110).contains(&i);
    let st = record(outs.to_vec(), &x, 0, &skip);
    let sent = (0..frames).filter(|&i| !skip(i)).count() as u64;
    for o in &st.outputs {
        assert_eq!(o.state, State::Stopped, "{o:?}");
        assert_eq!(o.frames, sent);
        assert_eq!(o.filled, frames - sent);
        assert_eq!(o.media_ms, frames * 20);
        let y = decode(Path::new(&o.location));
        let got = y.len() as f64 / 16_000.0;
        assert!(
            (got - frames as f64 * FRAME_S).abs() <= FRAME_S,
            "{}: {got:.3} s",
            o.location
        );
        // The outage is silence at its place on the timeline (not closed up): aligned, the
        // decoded second 1.2..2.2 s is quiet.
        let d = lag(&x, &y, 4000).max(0) as usize;
        let hole = &y[d + 61 * 320..d + 109 * 320];
        let peak = hole.iter().map(|v| v.unsigned_abs()).max().unwrap();
        assert!(peak < 200, "{}: peak {peak} inside the outage", o.location);
    }
}

#[test]
fn a_restarted_egress_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let x = &speech()[..320 * 50];
    let spec = OutputSpec::parse(dir.path().join("r.ogg").to_str().unwrap(), None).unwrap();
    let a = record(vec![spec.clone()], x, 0, &|_| false);
    let b = record(vec![spec], x, 0, &|_| false);
    assert!(a.outputs[0].location.ends_with("r.ogg"));
    assert!(
        b.outputs[0].location.ends_with("r-2.ogg"),
        "{}",
        b.outputs[0].location
    );
    for s in [a, b] {
        let y = decode(Path::new(&s.outputs[0].location));
        assert!((y.len() as i64 - 320 * 50).abs() <= 320);
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (loc, fmt, want) in [
        ("x.flac", None, "cannot tell the format"),
        ("rtmp://h/a", Some(Format::Ogg), "needs a file path"),
        ("/x.ogg", Some(Format::Rtmp), "URL"),
        ("", None, "empty"),
    ] {
        let e = OutputSpec::parse(loc, fmt).unwrap_err().to_string();
        assert!(e.contains(want), "{loc}: {e}");
    }
    // A .aic output on a stream with no codec info, and a directory that does not exist.
    let aic = OutputSpec::parse(dir.path().join("a.aic").to_str().unwrap(), None).unwrap();
    let e = aic_egress::Egress::start(aic_egress::EgressConfig::new("x", vec![aic])).unwrap_err();
    assert!(e.to_string().contains("no AIC frames"), "{e}");
    let missing =
        OutputSpec::parse(dir.path().join("no/such/a.ogg").to_str().unwrap(), None).unwrap();
    let e =
        aic_egress::Egress::start(aic_egress::EgressConfig::new("x", vec![missing])).unwrap_err();
    assert!(e.to_string().contains("creating"), "{e}");
}
