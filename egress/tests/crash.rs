//! `kill -9` mid-recording: Ogg, WebM, fragmented MP4 and `.aic` each play up to within one
//! fragment (1 s) of the kill. The recording runs in a child process (this test binary run
//! again with `AIC_EGRESS_CRASH_CHILD` set) that records in real time and reports how many
//! frames it has pushed; the parent kills it with SIGKILL and reads what is on disk.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aic_codec::bitstream::container::PacketReader;
use aic_codec::codec::{CodecInfo, OperatingPoint};
use aic_egress::{Egress, EgressConfig, OutputSpec};
use support::*;

const CHILD: &str = "AIC_EGRESS_CRASH_CHILD";
const NAMES: [&str; 4] = ["c.ogg", "c.webm", "c.mp4", "c.aic"];

fn info() -> CodecInfo {
    CodecInfo {
        codec: "aic".into(),
        model_id: "aic-speech-v2".into(),
        sample_rate: 16_000,
        frame_samples: 320,
        delay_samples: 0,
        point: OperatingPoint::Level(2),
    }
}

/// The child: records until killed (bounded at 60 s in case the parent is gone).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let outputs = NAMES
        .iter()
        .map(|n| OutputSpec::parse(dir.join(n).to_str().unwrap(), None).unwrap())
        .collect();
    let mut cfg = EgressConfig::new("crash", outputs);
    cfg.aic_info = Some(info());
    let e = Egress::start(cfg).unwrap();
    let x = speech();
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    for i in 0..3000u64 {
        let at = t0 + Duration::from_millis(20 * i);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        e.push_pcm(i, &x[(i as usize % 190) * 320..][..320]);
        let packet = [(i % 251) as u8 + 1; 8];
        e.push_frame(i, Some(&packet), false);
        if i % 5 == 4 {
            writeln!(out, "pushed {}", i + 1).unwrap();
            out.flush().unwrap();
        }
    }
}

fn aic_frames(path: &Path) -> usize {
    let mut r = PacketReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        if p.is_err() {
            break; // the torn last page: everything before it was delivered
        }
        n += 1;
    }
    n
}

#[test]
fn kill_9_leaves_files_that_play_to_within_a_fragment_of_the_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pushed = loop {
        let line = lines.next().expect("the child reports").unwrap();
        if let Some(n) = line.strip_prefix("pushed ") {
            let n: u64 = n.parse().unwrap();
            if n >= 200 {
                break n;
            }
        }
        assert!(Instant::now() < deadline, "the child did not record");
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pushed_s = pushed as f64 * 0.020;
    for n in NAMES {
        let p = dir.path().join(n);
        let got_s = if n.ends_with(".aic") {
            aic_frames(&p) as f64 * 0.020
        } else {
            probe(&p); // ffprobe reads it
            decode(&p).len() as f64 / 16_000.0
        };
        eprintln!("{n}: {got_s:.3} s playable of {pushed_s:.3} s pushed before the kill");
        assert!(got_s <= pushed_s + 0.5, "{n}: {got_s} s");
        assert!(
            got_s >= pushed_s - 1.0 - 0.2,
            "{n}: only {got_s:.3} s of {pushed_s:.3} s"
        );
    }
}
