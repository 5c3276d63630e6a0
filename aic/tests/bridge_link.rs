//! End to end: the real `aic serve --bridge-socket` process, driven through `LinkClient` (the
//! API the bridge uses) with real speech; dead peers on either side.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aic_sfu_bridge::link::{FRAME_16K, FrameIn, FrameOut, LinkClient, LinkConfig, LinkError};

struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(max_streams: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("aic-link.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
            ])
            .args(["--workers", "1", "--max-streams", &max_streams.to_string()])
            .arg("--bridge-socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aic serve");
        // Keep draining stderr (the server logs dropped streams there); wait for the link line.
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                let _ = tx.send(line);
            }
        });
        let t0 = Instant::now();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120).saturating_sub(t0.elapsed()))
                .expect("aic serve printed no bridge line in time");
            if line.contains("bridge link on") {
                break;
            }
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn speech(name: &str) -> Vec<i16> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech")
        .join(name);
    let mut r = hound::WavReader::open(p).unwrap();
    assert_eq!(r.spec().sample_rate, 16_000);
    r.samples::<i16>().map(|s| s.unwrap()).collect()
}

fn cfg(level: u8) -> LinkConfig {
    LinkConfig {
        level,
        latency_budget_ms: 200,
        reference_opus_kbps: 16,
    }
}

/// Sends `frames` frames of `x`, reading outputs as they come; returns them in send order.
fn run_stream(s: &mut aic_sfu_bridge::link::LinkStream, x: &[i16], frames: usize) -> Vec<FrameOut> {
    let mut outs: Vec<Option<FrameOut>> = vec![None; frames];
    let mut got = 0;
    let mut sent = 0;
    let mut out = FrameOut::default();
    let t0 = Instant::now();
    while got < frames {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "stream stalled at {got}/{frames}"
        );
        while sent < frames {
            let f = FrameIn {
                seq: 1000 + sent as u64,
                pcm16k: &x[sent * FRAME_16K..(sent + 1) * FRAME_16K],
                concealed: false,
            };
            match s.try_send(f) {
                Ok(()) => sent += 1,
                Err(LinkError::Full) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        if s.recv_into(&mut out, Duration::from_secs(10)).unwrap() {
            let i = (out.seq - 1000) as usize;
            assert!(outs[i].is_none(), "frame {i} twice");
            outs[i] = Some(out.clone());
            got += 1;
        }
    }
    outs.into_iter().map(Option::unwrap).collect()
}

#[test]
fn speech_through_the_link_and_a_killed_client_frees_its_stream() {
    // Two pipeline slots: exactly one link stream (encode + decode). A second stream can only
    // open once the server has noticed that the first one's client died.
    let srv = Server::start(2);
    let mut client = LinkClient::connect(&srv.socket).unwrap();
    assert_eq!(client.model_id(), "aic-speech-v1");

    let x = speech("en_f_confbridge.wav");
    let frames = (x.len() / FRAME_16K).min(250);
    let mut s = client.open(cfg(6)).unwrap();
    assert_eq!(s.model_id(), "aic-speech-v1");
    let outs = run_stream(&mut s, &x, frames);

    let aic = outs.iter().filter(|o| !o.fallback).count();
    assert!(
        aic * 10 >= frames * 8,
        "only {aic} of {frames} frames were AIC"
    );
    for o in outs.iter().filter(|o| !o.fallback) {
        assert_eq!(o.level, 6);
        assert!(
            (3..200).contains(&o.payload.len()),
            "AIC frame of {} bytes",
            o.payload.len()
        );
        assert!(o.pipeline_us > 0);
    }
    let bits: usize = outs.iter().map(|o| o.payload.len() * 8).sum();
    let kbps = bits as f64 / (frames as f64 * 0.02) / 1000.0;
    let y: Vec<f32> = outs
        .iter()
        .flat_map(|o| {
            assert_eq!(o.pcm16k.len(), FRAME_16K);
            o.pcm16k.iter().map(|&s| f32::from(s) / 32768.0)
        })
        .collect();
    let xf: Vec<f32> = x[..frames * FRAME_16K]
        .iter()
        .map(|&s| f32::from(s) / 32768.0)
        .collect();
    // Compensate the decoder's delay (240 samples, from the manifest).
    let d = 240;
    let stoi = aic_codec::metrics::stoi(&xf[..xf.len() - d], &y[d..], 16_000).unwrap();
    // A different clip as the reference: the metric must tell the difference.
    let other: Vec<f32> = speech("it_m_speed-dial.wav")
        .iter()
        .map(|&s| f32::from(s) / 32768.0)
        .collect();
    let n = (xf.len() - d).min(other.len());
    let stoi_other = aic_codec::metrics::stoi(&other[..n], &y[d..d + n], 16_000).unwrap();
    let mut us: Vec<u32> = outs.iter().map(|o| o.pipeline_us).collect();
    us.sort_unstable();
    eprintln!(
        "link L6: {frames} frames, {aic} AIC, {kbps:.2} kbps, STOI {stoi:.3} (vs another clip \
         {stoi_other:.3}), pipeline_us p50 {} p95 {} (sent faster than real time)",
        us[us.len() / 2],
        us[us.len() * 95 / 100]
    );
    assert!(stoi > 0.65, "STOI {stoi} through the link at L6");
    assert!(
        stoi_other < stoi - 0.2,
        "STOI {stoi_other} against an unrelated clip"
    );
    assert!(kbps < 8.0, "{kbps} kbps at L6");

    // The only stream is open: a second is refused (no pipeline slot).
    let r = client.open(cfg(6));
    assert!(matches!(r, Err(LinkError::Refused(_))), "{r:?}");
    drop(s);

    // A client process that dies mid-stream (SIGKILL: no Close message, no clean shutdown).
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_client_streams_until_killed",
            "--nocapture",
        ])
        .env("AIC_LINK_CHILD_SOCKET", &srv.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("CHILD_STREAMING") {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "child ended before streaming"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The server notices, frees the slots, and serves a new client.
    let t0 = Instant::now();
    let mut s2 = loop {
        match client.open(cfg(4)) {
            Ok(s) => break s,
            Err(LinkError::Refused(why)) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = why;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("open after the client died: {e}"),
        }
    };
    eprintln!("slot freed {:?} after the client's SIGKILL", t0.elapsed());
    let outs = run_stream(&mut s2, &x, 25);
    assert!(outs.iter().any(|o| !o.fallback && o.level == 4));
}

/// Not a test on its own: the child process of the test above (does nothing without its env).
#[test]
fn child_client_streams_until_killed() {
    let Some(sock) = std::env::var_os("AIC_LINK_CHILD_SOCKET") else {
        return;
    };
    let mut c = LinkClient::connect(Path::new(&sock)).unwrap();
    let t0 = Instant::now();
    let mut s = loop {
        match c.open(cfg(6)) {
            Ok(s) => break s,
            Err(LinkError::Refused(_)) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("child open: {e}"),
        }
    };
    let x = speech("en_f_confbridge.wav");
    let _ = run_stream(&mut s, &x, 5);
    println!("CHILD_STREAMING");
    // Keep frames flowing until the parent kills us (bounded: 60 s).
    let mut out = FrameOut::default();
    for i in 0..3000 {
        let f = FrameIn {
            seq: i,
            pcm16k: &x[..FRAME_16K],
            concealed: false,
        };
        let _ = s.try_send(f);
        let _ = s.recv_into(&mut out, Duration::from_millis(20));
    }
}

#[test]
fn a_killed_server_gives_peer_gone_promptly() {
    let mut srv = Server::start(4);
    let mut client = LinkClient::connect(&srv.socket).unwrap();
    let mut s = client.open(cfg(6)).unwrap();
    let x = speech("en_f_confbridge.wav");
    let _ = run_stream(&mut s, &x, 5);
    srv.child.kill().unwrap(); // SIGKILL
    srv.child.wait().unwrap();
    let t0 = Instant::now();
    let mut out = FrameOut::default();
    let r = s.recv_into(&mut out, Duration::from_secs(30));
    assert!(matches!(r, Err(LinkError::PeerGone)), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "PeerGone after {:?}",
        t0.elapsed()
    );
    let f = FrameIn {
        seq: 0,
        pcm16k: &x[..FRAME_16K],
        concealed: false,
    };
    assert!(matches!(s.try_send(f), Err(LinkError::PeerGone)));
    // A new connection finds no server.
    assert!(matches!(
        LinkClient::connect(&srv.socket),
        Err(LinkError::PeerGone)
    ));
}
