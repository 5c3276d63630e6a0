//! HLS, RTMP and SRT through real GStreamer into real receivers on loopback: `nginx` with
//! Debian's RTMP module (it records what it receives to FLV), `srt-live-transmit` as an SRT
//! listener; plus the supervisor against sinks that never start or get stuck.

mod support;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aic_egress::{Egress, EgressConfig, OutputSpec, State};
use support::*;

/// One AAC frame at 48 kHz: the granularity of the HLS/RTMP/SRT outputs.
const AAC_FRAME_S: f64 = 1024.0 / 48_000.0;

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn twice() -> Vec<i16> {
    let x = speech();
    [x.clone(), x].concat()
}

#[test]
fn hls_segments_last_what_their_extinf_says_and_sum_to_the_media_time() {
    let dir = tempfile::tempdir().unwrap();
    let x = twice();
    let frames = (x.len() / 320) as u64;
    let spec = OutputSpec::parse(dir.path().join("live/").to_str().unwrap(), None)
        .unwrap()
        .with_segment_s(2)
        .unwrap();
    let st = record(vec![spec], &x, 0, &|_| false);
    let o = &st.outputs[0];
    assert_eq!(o.state, State::Stopped, "{o:?}");
    let playlist = PathBuf::from(&o.location);
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.starts_with("#EXTM3U"), "{text}");
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    let mut sum = 0.0;
    let mut segments = 0;
    let mut lines = text.lines();
    let mut all = Vec::new();
    while let Some(l) = lines.next() {
        let Some(d) = l.strip_prefix("#EXTINF:") else {
            continue;
        };
        let extinf: f64 = d
            .trim_end_matches(',')
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let seg = playlist.parent().unwrap().join(lines.next().unwrap());
        let y = decode(&seg);
        all.extend_from_slice(&y);
        let (_, probed) = probe(&seg);
        eprintln!(
            "{}: EXTINF {extinf:.3} s, ffprobe {probed:.3} s",
            seg.display()
        );
        assert!(
            (probed - extinf).abs() <= AAC_FRAME_S + 1e-3,
            "{}: EXTINF {extinf} s but the segment lasts {probed} s",
            seg.display()
        );
        sum += extinf;
        segments += 1;
    }
    let media = frames as f64 * 0.020;
    eprintln!("{segments} segments, EXTINF sum {sum:.3} s, media {media:.3} s");
    assert!(segments >= 3, "{text}");
    assert!(
        (sum - media).abs() <= AAC_FRAME_S + 1e-3,
        "EXTINF sum {sum} s, media {media} s"
    );
    let s = stoi_aligned(&x, &all);
    eprintln!("HLS STOI {s:.3}");
    assert!(s > 0.85, "HLS STOI {s:.3}");
}

fn nginx_rtmp(dir: &Path, port: u16) -> Option<Killed> {
    let module = Path::new("/usr/lib/nginx/modules/ngx_rtmp_module.so");
    if !module.exists() || !have("nginx") {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx with libnginx-mod-rtmp is not installed (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: nginx/libnginx-mod-rtmp missing");
        return None;
    }
    let d = dir.display();
    let conf = format!(
        "load_module {};\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 64; }}\nrtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; record audio; record_path {d}; }} }} }}\n",
        module.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "nginx did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Killed(child))
}

#[test]
fn rtmp_into_nginx_reads_back_as_the_media_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let Some(_nginx) = nginx_rtmp(dir.path(), port) else {
        return;
    };
    let x = twice();
    let frames = (x.len() / 320) as u64;
    let spec = OutputSpec::parse(&format!("rtmp://127.0.0.1:{port}/live/call1"), None).unwrap();
    let st = record(vec![spec], &x, 0, &|_| false);
    assert_eq!(st.outputs[0].state, State::Stopped, "{st:?}");
    // nginx closes the recording when the publisher disconnects.
    let flv = dir.path().join("call1.flv");
    let t = Instant::now();
    let y = loop {
        let y = decode(&flv);
        if y.len() as u64 >= frames * 320 - 2000 || t.elapsed() > Duration::from_secs(5) {
            break y;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (name, _) = probe(&flv);
    assert_eq!(name, "flv");
    let got = y.len() as f64 / 16_000.0;
    let media = frames as f64 * 0.020;
    let s = stoi_aligned(&x, &y);
    eprintln!("RTMP via nginx: {got:.3} s for {media:.3} s sent, STOI {s:.3}");
    assert!(
        (got - media).abs() <= 2.0 * AAC_FRAME_S,
        "{got} s vs {media} s"
    );
    assert!(s > 0.85, "STOI {s:.3}");
}

#[test]
fn srt_into_a_listener_reads_back_as_the_media_sent() {
    if !have("srt-live-transmit") {
        assert!(
            std::env::var_os("CI").is_none(),
            "srt-tools is not installed"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let ts = dir.path().join("in.ts");
    let out = std::fs::File::create(&ts).unwrap();
    let listener = Killed(
        Command::new("srt-live-transmit")
            .args([
                "-q",
                "-a:no",
                &format!("srt://127.0.0.1:{port}?mode=listener"),
                "file://con",
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let x = speech();
    let frames = (x.len() / 320) as u64;
    let spec = OutputSpec::parse(&format!("srt://127.0.0.1:{port}"), None).unwrap();
    let st = record(vec![spec], &x, 0, &|_| false);
    assert_eq!(st.outputs[0].state, State::Stopped, "{st:?}");
    let mut listener = listener;
    let t = Instant::now();
    while listener.0.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(listener);
    let (name, _) = probe(&ts);
    assert_eq!(name, "mpegts");
    let y = decode(&ts);
    let got = y.len() as f64 / 16_000.0;
    let media = frames as f64 * 0.020;
    let s = stoi_aligned(&x, &y);
    eprintln!("SRT: {got:.3} s for {media:.3} s sent, STOI {s:.3}");
    assert!(
        (got - media).abs() <= 2.0 * AAC_FRAME_S,
        "{got} s vs {media} s"
    );
    assert!(s > 0.85, "STOI {s:.3}");
}

#[test]
fn a_sink_that_never_starts_is_failed_and_never_blocks_the_media_path() {
    // A TCP peer that accepts and never answers the RTMP handshake.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let (mut s, _) = silent.accept().unwrap();
        let mut b = [0u8; 4096];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(12) {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = s.read(&mut b);
        }
    });
    let x = speech();
    let spec = OutputSpec::parse(&format!("rtmp://127.0.0.1:{port}/live/k"), None).unwrap();
    let e = Egress::start(EgressConfig::new("stuck", vec![spec])).unwrap();
    let mut rx = e.subscribe();
    // 10 s of media offered as fast as possible: every push returns at once.
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..500u64 {
        let f = &x[(i as usize % 190) * 320..][..320];
        let p = Instant::now();
        e.push_pcm(i, f);
        slowest = slowest.max(p.elapsed());
    }
    eprintln!("500 pushes in {:?}, slowest {slowest:?}", t.elapsed());
    // A push that blocked would wait for the sink: seconds (the start bound is 5 s).
    assert!(
        slowest < Duration::from_secs(1),
        "a push blocked for {slowest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let st = rx.borrow_and_update().clone();
        if let State::Failed(why) = &st.outputs[0].state {
            break (why.clone(), st);
        }
        assert!(Instant::now() < deadline, "still {:?}", st.outputs[0].state);
        let _ = tokio_free_wait(&mut rx);
    };
    // Whichever bound comes first: our 5 s start bound, or rtmp2sink's own handshake timeout
    // (also about 5 s): either way the start is reported failed, never left pending.
    eprintln!("failed: {}", failed.0);
    assert!(
        failed.0.contains("did not start recording") || failed.0.contains("timed out"),
        "{}",
        failed.0
    );
    assert!(
        failed.1.outputs[0].dropped > 0 || failed.1.queue_dropped > 0,
        "{:?}",
        failed.1
    );
    let st = e.stop();
    assert!(matches!(st.outputs[0].state, State::Failed(_)));
    hold.join().unwrap();
}

#[test]
fn an_unreachable_rtmp_server_is_a_clear_failure() {
    let port = free_tcp_port(); // nothing listens
    let spec = OutputSpec::parse(&format!("rtmp://127.0.0.1:{port}/live/k"), None).unwrap();
    let e = Egress::start(EgressConfig::new("refused", vec![spec])).unwrap();
    let x = speech();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut i = 0u64;
    let why = loop {
        e.push_pcm(i, &x[..320]);
        i += 1;
        if let State::Failed(why) = &e.status().outputs[0].state {
            break why.clone();
        }
        assert!(Instant::now() < deadline, "{:?}", e.status());
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("refused: {why}");
    assert!(!why.is_empty());
}

#[test]
fn a_stuck_rtmp_server_is_reported_stalled_and_recording_again_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let Some(nginx) = nginx_rtmp(dir.path(), port) else {
        return;
    };
    let pid = nginx.0.id().to_string();
    let x = speech();
    let spec = OutputSpec::parse(&format!("rtmp://127.0.0.1:{port}/live/s"), None)
        .unwrap()
        .with_bitrate(256_000)
        .unwrap();
    let e = Egress::start(EgressConfig::new("stall", vec![spec])).unwrap();
    let mut i = 0u64;
    let mut push_for = |e: &Egress, d: Duration, until: &dyn Fn(&str) -> bool| -> bool {
        let t = Instant::now();
        while t.elapsed() < d {
            // Ten times real time, so the socket buffers fill quickly while nginx is stopped.
            e.push_pcm(i, &x[(i as usize % 190) * 320..][..320]);
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
            if until(e.status().outputs[0].state.name()) {
                return true;
            }
        }
        false
    };
    assert!(
        push_for(&e, Duration::from_secs(5), &|s| s == "recording"),
        "{:?}",
        e.status()
    );
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let stalled = push_for(&e, Duration::from_secs(20), &|s| s == "stalled");
    let during = e.status();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(stalled, "{during:?}");
    assert!(during.outputs[0].dropped > 0, "{during:?}");
    let back = push_for(&e, Duration::from_secs(15), &|s| s == "recording");
    eprintln!("stalled then {:?}", e.status());
    assert!(back, "{:?}", e.status());
    drop(e);
}

/// Waits for the next status change (or a tick) without a tokio runtime.
fn tokio_free_wait(rx: &mut tokio::sync::watch::Receiver<aic_egress::EgressStatus>) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(200) {
        if rx.has_changed().unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
