//! Test clips made at test time with FFmpeg's lavfi sources (nothing large is committed).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use aic_video::file::{Clip, read_video};

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// A Y4M clip from a lavfi source, e.g. `testsrc2=size=176x144:rate=30`, `secs` long.
pub fn lavfi_clip(name: &str, source: &str, secs: f64) -> PathBuf {
    // Tests run in parallel and share clips: one maker at a time, written under a temporary
    // name and renamed, so nobody reads half a file.
    static MAKING: Mutex<()> = Mutex::new(());
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let out = dir().join(format!("{name}.y4m"));
    if out.exists() {
        return out;
    }
    let tmp = dir().join(format!("{name}.tmp.y4m"));
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            source,
        ])
        .args([
            "-t",
            &secs.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-f",
            "yuv4mpegpipe",
        ])
        .arg(&tmp)
        .status()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(status.success(), "ffmpeg failed to make {source}");
    std::fs::rename(&tmp, &out).expect("rename fixture");
    out
}

/// 176x144 (QCIF, carphone's size), 30 fps: a moving test pattern.
pub fn qcif(secs: f64) -> Clip {
    let p = lavfi_clip(
        &format!("testsrc2-{secs}"),
        "testsrc2=size=176x144:rate=30",
        secs,
    );
    let c = read_video(&p, None).expect("read fixture");
    assert_eq!(c.frames.len(), (secs * 30.0).round() as usize);
    c
}
