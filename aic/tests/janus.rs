//! The real SFU: Janus, a WebRTC publisher and a WebRTC subscriber (GStreamer webrtcbin) and
//! `aic attach janus` in a private network namespace. Asserts that the subscriber of the AIC
//! mountpoint hears the publisher's speech (STOI and envelope correlation against what was
//! sent), with no RTP gaps, that the AIC RTP track carries valid frames at a fraction of the
//! publisher's bitrate, and that detaching removes the forward and the mountpoint. A second
//! run drops 5 % of the Janus → bridge datagrams (nftables) and asserts the same, plus one
//! concealed frame (FEC or PLC) per dropped packet. A third run delays every Janus → bridge
//! datagram by a random 0–20 ms (a jittering UDP relay in this process, reached through an
//! nftables redirect) and asserts no sequence gaps at the subscriber.
//!
//! Every run measures the one-way latency the AIC path adds, RTP in → RTP out, two ways, and
//! prints both on a line starting `janus latency:` (the figures are for `docs/benchmarks.md`;
//! the test only asserts that they exist and are sane):
//! - on the packets: the bridge's own measure (`latency_rtp_in_to_rtp_out` in its summary,
//!   arrival of a packet from Janus to its frame's RTP sent to the mountpoint);
//! - on the signal: the subscriber process also subscribes to the publisher straight from the
//!   VideoRoom (the path through Janus without AIC) and stamps every RTP packet of both
//!   subscriptions with its arrival on one clock; the lag of the AIC recording's content behind
//!   the direct recording's, window by window, is the latency AIC adds (see [`signal_latency`]).
//!
//! Janus and libnice skip loopback interfaces for ICE, so the test re-runs itself under
//! `unshare -n` and gives a veth the address 127.0.0.2 (`../shared/notes/janus.md`). Where
//! namespaces cannot be created it says so loudly and skips; nowhere else.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

mod support;

const IN_NETNS: &str = "AIC_JANUS_TEST_IN_NETNS";
const ROOM: u64 = 1234;
const MOUNTPOINT: u64 = 77;
/// Seconds the subscriber records: 8 in the test command; `AIC_JANUS_RECORD_SECS` makes a long
/// run for the report (e.g. 600, with `AIC_TEST_DEADLINE_SECS` above it), never in CI.
fn record_s() -> f64 {
    std::env::var("AIC_JANUS_RECORD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| (4.0..=3600.0).contains(s))
        .unwrap_or(8.0)
}
/// Loss injected on the Janus → bridge path by the loss test.
const LOSS_PCT: u32 = 5;
/// Jitter injected on the Janus → bridge path by the jitter test: each datagram is held for a
/// uniformly random 0..=JITTER_MS ms.
const JITTER_MS: u64 = 20;

/// What the test does to the Janus → bridge datagrams.
#[derive(Clone, Copy, Debug)]
enum Impair {
    None,
    /// Drop this many percent (nftables `numgen random`).
    Loss(u32),
    /// Delay each by a random 0..=this many ms (a relay in the test process).
    Jitter(u64),
    /// The video run ([`video_goes_through_janus_and_aic`]): its own body.
    Video,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn speech_goes_through_janus_and_aic() {
    in_own_namespace("speech_goes_through_janus_and_aic", Impair::None);
}

/// The same path with packet loss injected between Janus and the bridge (Janus's rtp_forward
/// to `aic attach`, UDP on 127.0.0.1): an nftables rule drops a random `LOSS_PCT` % of the
/// forward's datagrams (`sch_netem` is not in every kernel; nf_tables' `numgen random` is, and
/// its counters say exactly how many were dropped). The bridge conceals every lost frame (Opus
/// in-band FEC from the next packet, else PLC), so the subscriber still sees no gaps.
#[test]
fn speech_survives_loss_between_janus_and_bridge() {
    in_own_namespace(
        "speech_survives_loss_between_janus_and_bridge",
        Impair::Loss(LOSS_PCT),
    );
}

/// The same path with `JITTER_MS` of jitter between Janus and the bridge. `sch_netem` is not in
/// this kernel, so the jitter is a UDP relay in the test process: an nftables rule in the
/// namespace's nat output chain redirects rtp_forward's datagrams for the bridge's port to the
/// relay (its own datagrams, from its port, are exempt), which sends each on to the bridge
/// after a random 0..=`JITTER_MS` ms. With delays below the 20 ms packet spacing nothing is
/// reordered; the bridge's adaptive jitter buffer absorbs the rest, and the subscriber must see
/// no sequence gaps.
#[test]
fn speech_survives_jitter_between_janus_and_bridge() {
    in_own_namespace(
        "speech_survives_jitter_between_janus_and_bridge",
        Impair::Jitter(JITTER_MS),
    );
}

/// Video through the real SFU (issue #14, done-when 3): a WebRTC publisher sends audio and a
/// 640×360 VP8 picture (libvpx realtime at 800 kbit/s, as a browser encodes it) into the
/// VideoRoom; `aic attach janus --video` takes the VP8 from `rtp_forward`, re-encodes it as AV1
/// (libaom realtime) and sends AV1 RTP into the Streaming mountpoint; a WebRTC subscriber
/// (webrtcbin) watches the mountpoint and keeps every AV1 RTP packet, which this test
/// depacketizes and decodes. Asserted:
/// - the subscriber negotiated AV1 and received it; frames decode (the first one thanks to the
///   subscriber's own keyframe request: AIC codes keyframes only when asked, so this proves the
///   PLI path subscriber → Janus → AIC);
/// - what arrived looks like what was sent: every source frame carries its index as a bar code,
///   so each decoded frame is compared with the frame it came from (PSNR-Y, and VMAF when
///   `vmaf-torch` is installed — `scripts/setup.sh` installs it);
/// - 5 % of the Janus → AIC video datagrams are dropped for two seconds: AIC never hands a
///   broken frame on, asks the publisher for a keyframe (PLI through the forwarder's RTCP port)
///   and the picture moves again within one second after the loss ends;
/// - AV1 is sent at a fraction of the publisher's VP8 bitrate; detaching removes everything.
#[test]
fn video_goes_through_janus_and_aic() {
    in_own_namespace("video_goes_through_janus_and_aic", Impair::Video);
}

/// Each test runs in its own network namespace, one at a time (two Janus + pipelines at once
/// would starve the CPU and turn into late packets).
fn in_own_namespace(test: &str, impair: Impair) {
    if std::env::var_os(IN_NETNS).is_some() {
        inside_namespace(test, impair);
        return;
    }
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let can = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        // Under CI the real-SFU test must run: a skip there would pass a broken product.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: cannot create a network namespace (`unshare -n` failed) and CI=true: \
             the real-SFU test must run in CI"
        );
        eprintln!(
            "\n*** SKIPPED {test}: cannot create a network namespace here (`unshare -n` failed; \
             needs root or CAP_SYS_ADMIN). The real-SFU test did NOT run. ***\n"
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let st = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status()
        .expect("run the test inside unshare -n");
    assert!(st.success(), "{test} failed inside its namespace");
    // scripts/test.sh greps for this under CI=true (as for the PostgreSQL test).
    // Straight to the stderr handle: libtest captures `eprintln!` of a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "janus: {test} ran against a real Janus");
}

/// Kills (SIGKILL) every child still running when dropped: no process outlives the test.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, c) in self.0.iter_mut().rev() {
            if c.try_wait().ok().flatten().is_none() {
                eprintln!("cleanup: killing {name}");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}

fn write_janus_config(dir: &Path) {
    let lib = Path::new("/usr/lib/x86_64-linux-gnu/janus");
    for sub in ["plugins", "transports", "events", "loggers"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // Only the two plugins and the HTTP transport are loaded: each gets its own folder.
    for (sub, so) in [
        ("plugins", "libjanus_videoroom.so"),
        ("plugins", "libjanus_streaming.so"),
        ("transports", "libjanus_http.so"),
    ] {
        std::os::unix::fs::symlink(lib.join(sub).join(so), dir.join(sub).join(so)).unwrap();
    }
    let d = dir.display();
    let files = [
        (
            "janus.jcfg",
            format!(
                "general: {{ configs_folder = \"{d}\" plugins_folder = \"{d}/plugins\" \
                 transports_folder = \"{d}/transports\" events_folder = \"{d}/events\" \
                 loggers_folder = \"{d}/loggers\" debug_level = 4 }}\n\
                 media: {{ rtp_port_range = \"20000-20999\" }}\n\
                 nat: {{ ice_enforce_list = \"127.0.0.2\" ignore_mdns = true nice_debug = false }}\n\
                 events: {{ broadcast = false }}\n"
            ),
        ),
        (
            "janus.transport.http.jcfg",
            "general: { json = \"plain\" base_path = \"/janus\" http = true port = 8088 \
             ip = \"127.0.0.1\" https = false }\nadmin: { admin_http = false }\n"
                .into(),
        ),
        (
            "janus.plugin.videoroom.jcfg",
            format!(
                "general: {{ }}\nroom-{ROOM}: {{ description = \"aic test\" publishers = 4 \
                 audiocodec = \"opus\" videocodec = \"vp8\" }}\n"
            ),
        ),
        ("janus.plugin.streaming.jcfg", "general: { }\n".into()),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Lines of a child's pipe, forwarded to a channel (and echoed for the test log).
fn lines(name: &'static str, r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if !l.contains("SSDP") && !l.trim().is_empty() {
                eprintln!("[{name}] {l}");
            }
            if tx.send(l).is_err() {
                // Receiver gone: keep draining so the child never blocks on a full pipe.
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, pat: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(pat) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line containing {pat:?} within {timeout:?}"),
        }
    }
}

fn janus_request(session_plugin: &str, body: serde_json::Value) -> serde_json::Value {
    let base = "http://127.0.0.1:8088/janus";
    let post = |url: &str, v: serde_json::Value| -> serde_json::Value {
        ureq::post(url)
            .send_json(&v)
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let s = post(
        base,
        serde_json::json!({"janus": "create", "transaction": "t1"}),
    );
    let sid = s["data"]["id"].as_u64().unwrap();
    let h = post(
        &format!("{base}/{sid}"),
        serde_json::json!({"janus": "attach", "plugin": session_plugin, "transaction": "t2"}),
    );
    let hid = h["data"]["id"].as_u64().unwrap();
    let r = post(
        &format!("{base}/{sid}/{hid}"),
        serde_json::json!({"janus": "message", "body": body, "transaction": "t3"}),
    );
    post(
        &format!("{base}/{sid}"),
        serde_json::json!({"janus": "destroy", "transaction": "t4"}),
    );
    r["plugindata"]["data"].clone()
}

fn read_wav_16k(p: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(p).unwrap();
    assert_eq!(r.spec().sample_rate, 16_000);
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

/// Short-time energy envelope in dB, 10 ms hops.
fn envelope(x: &[f32]) -> Vec<f32> {
    x.chunks(160)
        .map(|c| 10.0 * (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32 + 1e-9).log10())
        .collect()
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()) as f32;
    let (ma, mb) = (a.iter().sum::<f32>() / n, b.iter().sum::<f32>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt().max(1e-9)
}

/// Inside the test's namespace: loopback up, a veth with 127.0.0.2 (for ICE), and Janus
/// (VideoRoom, Streaming, HTTP) configured in `t` and answering; the returned `Procs` owns it.
fn start_janus(t: &Path) -> Procs {
    sh("ip", &["link", "set", "lo", "up"]);
    sh(
        "ip",
        &[
            "link", "add", "jlo0", "type", "veth", "peer", "name", "jlo1",
        ],
    );
    sh("ip", &["addr", "add", "127.0.0.2/32", "dev", "jlo0"]);
    sh("ip", &["link", "set", "jlo0", "up"]);
    sh("ip", &["link", "set", "jlo1", "up"]);
    let conf = t.join("janus");
    write_janus_config(&conf);
    let mut procs = Procs(Vec::new());
    let janus = Command::new("janus")
        .arg("-F")
        .arg(&conf)
        .arg("-C")
        .arg(conf.join("janus.jcfg"))
        .args(["-N", "-L"])
        .arg(t.join("janus.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start janus (installed by scripts/setup.sh)");
    procs.0.push(("janus".into(), janus));
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ureq::get("http://127.0.0.1:8088/janus/info").call().is_ok()
    });
    assert!(up, "Janus did not answer on 127.0.0.1:8088");
    procs
}

fn inside_namespace(test: &str, impair: Impair) {
    if let Impair::Video = impair {
        return inside_namespace_video();
    }
    let record_s = record_s();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut procs = start_janus(t);

    let client = repo().join("aic/tests/janus/webrtc_client.py");
    let speech = repo().join("datasets/fixtures/speech/en_espeak.wav");
    let mut publisher = Command::new("/usr/bin/python3")
        .arg(&client)
        .args(["publish", &ROOM.to_string()])
        .arg(&speech)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pub_out = lines("publisher", publisher.stdout.take().unwrap());
    let _pub_err = lines("publisher", publisher.stderr.take().unwrap());
    procs.0.push(("publisher".into(), publisher));
    let l = wait_line(&pub_out, "PUBLISHER", Duration::from_secs(30));
    let pid: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();

    // The AIC RTP track goes to a plain UDP socket here.
    let aic_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    aic_sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let aic_addr = aic_sock.local_addr().unwrap();
    let (aic_tx, aic_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut n, mut ok, mut bytes, mut tags) = (0u32, 0u32, 0u64, Vec::new());
        let end = Instant::now() + Duration::from_secs_f64(52.0 + record_s);
        while Instant::now() < end {
            match aic_sock.recv(&mut buf) {
                Ok(len) => {
                    n += 1;
                    if let Ok((p, Some(m))) = aic_sfu_bridge::aic_rtp::depacketize(&buf[..len], 5)
                        && p.payload_type == 120
                        && (m.fallback || m.level == 6)
                    {
                        ok += 1;
                        bytes += p.payload.len() as u64;
                        if tags.is_empty() {
                            tags.push(m.model_tag);
                        }
                    }
                }
                Err(_) if n > 0 && aic_tx.send((n, ok, bytes, tags.clone())).is_err() => return,
                Err(_) => {}
            }
        }
    });

    // The pipeline process: AIC encode + decode behind the shm link.
    let sock = t.join("bridge.sock");
    let serve = support::Server::start_at(
        &t.join("aic-data"),
        &["--bridge-socket", sock.to_str().expect("a UTF-8 temp path")],
    );
    let grpc = serve.addr.clone();
    // The socket is bound before the server names its address; the line comes after.
    assert!(
        serve.wait_log("bridge link on", 1, 30),
        "aic serve did not serve {}",
        sock.display()
    );
    // The bridge shows an API key when it opens its stream (AIC_API_KEY, like --api-key).
    let admin = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(["admin", "--server", &format!("http://{grpc}"), "--data-dir"])
            .arg(t.join("aic-data"))
            .args(args)
            .env_remove("AIC_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aic admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tenant = admin(&["tenant", "create", "janus-test"]);
    let tenant = tenant.split_whitespace().next().unwrap().to_owned();
    let api_key = admin(&["key", "create", "--tenant", &tenant])
        .lines()
        .find_map(|l| {
            l.split("store it now): ")
                .nth(1)
                .map(|k| k.trim().to_owned())
        })
        .expect("aic admin key create printed the key");

    let summary = t.join("summary.json");
    let mut attach = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["attach", "janus", "--room", &ROOM.to_string()])
        .args(["--publisher", &pid.to_string()])
        .args(["--mountpoint", &MOUNTPOINT.to_string(), "--level", "6"])
        .args(["--aic-dest", &aic_addr.to_string()])
        .arg("--pipeline")
        .arg(&sock)
        .env("AIC_API_KEY", &api_key)
        .arg("--summary")
        .arg(&summary)
        // Issue #13: record the publisher (Ogg/Opus) and AIC's own frames (.aic) meanwhile.
        .arg("--record")
        .arg(t.join("rec.ogg"))
        .arg("--record")
        .arg(t.join("rec.aic"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let att_err = lines("attach", attach.stderr.take().unwrap());
    let attach_pid = attach.id();
    procs.0.push(("aic attach".into(), attach));
    let ready = wait_line(&att_err, "ready", Duration::from_secs(30));
    let rtp_port = || -> u16 {
        ready
            .rsplit_once("rtp in 127.0.0.1:")
            .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no RTP port in {ready:?}"))
    };
    let loss = match impair {
        Impair::Loss(pct) => Some(inject_loss(t, rtp_port(), pct)),
        _ => None,
    };
    let relay = match impair {
        Impair::Jitter(ms) => Some(JitterRelay::start(t, rtp_port(), ms)),
        _ => None,
    };

    // The subscriber records the AIC mountpoint and, in the same process, the publisher
    // straight from the VideoRoom (for the signal latency).
    let rec = t.join("heard.wav");
    let direct_rec = t.join("direct.wav");
    let sub = Command::new("/usr/bin/python3")
        .arg(&client)
        .args(["subscribe", &MOUNTPOINT.to_string()])
        .arg(&rec)
        .arg(record_s.to_string())
        .args([ROOM.to_string(), pid.to_string()])
        .arg(&direct_rec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sub = sub;
    let sub_out = lines("subscriber", sub.stdout.take().unwrap());
    let _sub_err = lines("subscriber", sub.stderr.take().unwrap());
    procs.0.push(("subscriber".into(), sub));
    let stats_line = wait_line(&sub_out, "STATS", Duration::from_secs_f64(52.0 + record_s));
    let stats: serde_json::Value =
        serde_json::from_str(stats_line.trim_start_matches("STATS ")).unwrap();

    // Detach with SIGTERM, as an operator would; the bridge must clean up and summarise.
    sh("kill", &["-TERM", &attach_pid.to_string()]);
    let (_, attach) = procs.0.iter_mut().find(|(n, _)| n == "aic attach").unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = attach.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "aic attach did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "aic attach exited with {status}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    eprintln!("summary: {s:#}");
    eprintln!("subscriber: {stats}");
    check_recordings(t, &s["record"]);

    // Janus is back to what it was: no forwarder, no mountpoint.
    let fw = janus_request(
        "janus.plugin.videoroom",
        serde_json::json!({"request": "listforwarders", "room": ROOM}),
    );
    let n_fw: usize = fw["publishers"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| x["forwarders"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(n_fw, 0, "a forwarder was left behind: {fw}");
    let mp = janus_request(
        "janus.plugin.streaming",
        serde_json::json!({"request": "info", "id": MOUNTPOINT}),
    );
    assert!(
        mp.get("error").is_some(),
        "the mountpoint was left behind: {mp}"
    );

    // The subscriber got a continuous stream.
    let packets = stats["packets"].as_u64().unwrap();
    assert!(
        packets as f64 >= 0.9 * record_s * 50.0,
        "subscriber got {packets} packets in {record_s} s"
    );
    assert_eq!(
        stats["gaps"], 0,
        "sequence gaps seen by the subscriber (the bridge conceals losses): {stats}"
    );

    // The bridge: every frame through AIC, nothing malformed, AIC far below the publisher.
    assert_eq!(s["ended_by"], "signal");
    assert_eq!(s["rtp_in"]["malformed"], 0);
    let out = s["frames"]["out"].as_u64().unwrap();
    assert!(out as f64 >= 0.9 * record_s * 50.0, "{out} frames out");
    let fallback = s["frames"]["fallback"].as_u64().unwrap();
    assert!(
        fallback * 10 < out,
        "{fallback} of {out} frames fell back to Opus"
    );
    let ratio = s["bitrate_kbps"]["aic_vs_publisher"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && ratio < 0.5,
        "AIC/publisher bitrate ratio {ratio}"
    );
    assert!(s["latency_rtp_in_to_rtp_out"]["p50_ms"].as_f64().unwrap() > 0.0);

    // Loss: what nftables dropped shows up as concealed frames, one each.
    let fec = s["frames"]["fec"].as_u64().unwrap();
    let plc = s["frames"]["plc"].as_u64().unwrap();
    let rtp_in = s["rtp_in"]["packets"].as_u64().unwrap();
    // Packets that came after their playout time (jitter) are counted apart.
    let late = s["rtp_in"]["late"].as_u64().unwrap();
    // The RFC 3550 receiver statistics the bridge keeps (what its RR block would say).
    let rr = &s["rtcp_receiver_report"];
    let rr_lost = rr["cumulative_lost"].as_i64().unwrap();
    assert!(
        rr["received"].as_u64().unwrap().abs_diff(rtp_in + late) <= 2,
        "RR received count vs {rtp_in} RTP in + {late} late: {rr}"
    );
    if let Some(l) = &loss {
        let (forwarded, dropped) = l.counters();
        eprintln!(
            "loss: {dropped} of {forwarded} forwarded datagrams dropped ({:.1} %); bridge: \
             {rtp_in} RTP in, {fec} frames from FEC, {plc} by PLC",
            100.0 * dropped as f64 / forwarded.max(1) as f64
        );
        // Enough datagrams were dropped to mean something (5 % of ≥ 400: ~20; P(< 5) ≈ 1e-5).
        assert!(dropped >= 5, "only {dropped} of {forwarded} dropped");
        // Everything not dropped reached the bridge, give or take a few: some arrive before
        // the rule is in place (the forward starts before `ready`), some after the bridge
        // stopped reading.
        assert!(
            (rtp_in + dropped).abs_diff(forwarded) <= 5,
            "{rtp_in} RTP in, {forwarded} forwarded, {dropped} dropped"
        );
        // The RR's cumulative loss is the gaps the bridge saw: the dropped packets.
        assert!(
            rr_lost.abs_diff(dropped as i64) <= 5,
            "RR cumulative lost {rr_lost}, {dropped} dropped: {rr}"
        );
        // One concealed frame per dropped packet, give or take late packets and the edges.
        let concealed = fec + plc;
        let tol = 3 + dropped / 5;
        assert!(
            concealed + tol >= dropped && concealed <= dropped + tol,
            "{concealed} concealed frames ({fec} FEC + {plc} PLC) for {dropped} dropped packets"
        );
        // The publisher sends in-band FEC: isolated losses are rebuilt from the next packet.
        assert!(
            fec > 0,
            "no frame rebuilt from FEC ({plc} PLC, {dropped} dropped)"
        );
    } else {
        assert!(
            rr_lost.abs() <= 2,
            "RR cumulative lost {rr_lost} with no loss: {rr}"
        );
        if let Some(relay) = relay {
            // Jitter: packets the jitter buffer gives up on are concealed; the adaptive target
            // should keep that to a few (the bound catches a buffer that does not adapt).
            let r = relay.stop();
            eprintln!(
                "jitter: relay held {} datagrams for 0..={JITTER_MS} ms (held p50 {:.1} ms, p95 \
                 {:.1} ms, max {:.1} ms); bridge: {rtp_in} RTP in + {late} late, {fec} frames from \
                 FEC, {plc} by PLC",
                r.relayed, r.held_ms.0, r.held_ms.1, r.held_ms.2
            );
            assert!(
                r.relayed as f64 >= 0.9 * record_s * 50.0,
                "the relay saw only {} datagrams: the redirect did not take",
                r.relayed
            );
            assert!(
                (rtp_in + late).abs_diff(r.relayed) <= 5,
                "{rtp_in} RTP in + {late} late, {} relayed",
                r.relayed
            );
            assert!(
                (fec + plc) * 10 < out,
                "{fec} FEC + {plc} PLC frames of {out} with {JITTER_MS} ms jitter"
            );
        } else {
            // No packet was lost; what was concealed is the jitter buffer growing (or
            // underflowing) as it adapts, which a long run on a loaded machine does now and then.
            let jb = &s["jitter_buffer"];
            let adapt = jb["grown"].as_u64().unwrap_or(0) + jb["underflows"].as_u64().unwrap_or(0);
            assert_eq!(
                jb["lost"], 0,
                "the jitter buffer lost frames with no loss: {jb}"
            );
            assert!(
                fec + plc <= 3 + adapt,
                "{fec} FEC + {plc} PLC frames with no loss injected ({adapt} from adapting)"
            );
        }
    }

    // The AIC RTP track: valid packets with the frame-meta extension.
    let (n, ok, _bytes, _tags) = aic_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(n as f64 >= 0.9 * record_s * 50.0, "{n} AIC RTP packets");
    assert!(ok * 100 >= n * 99, "{ok} of {n} AIC packets valid");

    // What the subscriber heard is the publisher's speech (the clip loops: align the
    // energy envelopes first, then score).
    let heard = read_wav_16k(&rec);
    let src = read_wav_16k(&speech);
    assert!(
        heard.len() as f64 > 0.8 * record_s * 16_000.0,
        "{} samples",
        heard.len()
    );
    let heard = &heard[16_000..]; // skip the first second (decoder warm-up)
    let n_cmp = heard.len().min(src.len());
    let looped: Vec<f32> = src.iter().chain(&src).chain(&src).copied().collect();
    let (eh, el) = (envelope(&heard[..n_cmp]), envelope(&looped));
    let (mut best, mut lag) = (f32::MIN, 0);
    for k in 0..(src.len() / 160) {
        let c = pearson(&eh, &el[k..k + eh.len()]);
        if c > best {
            (best, lag) = (c, k);
        }
    }
    // The envelope lag is good to 10 ms; refine it to 1 ms (STOI is sensitive to a few ms).
    let n_cmp = n_cmp.min(looped.len() - lag * 160 - 160);
    let (mut stoi, mut fine) = (f64::MIN, 0usize);
    for f in (0..=320usize).step_by(16) {
        let Some(start) = (lag * 160 + f).checked_sub(160) else {
            continue;
        };
        let reference = &looped[start..start + n_cmp];
        let st = aic_codec::metrics::stoi(reference, &heard[..n_cmp], 16_000).unwrap();
        if st > stoi {
            (stoi, fine) = (st, start);
        }
    }
    // The standard of the other round-trip tests (0.05 below the codec's own STOI), with the
    // codec's STOI taken two ways, and the lower floor kept: AIC L6 alone on this very stretch
    // of speech (STOI depends on the content, and each run records a different part of the
    // looped clip), or the model card's L6 (less 0.03 more on the loss run, where 5 % of the
    // packets are rebuilt by FEC/PLC before AIC sees them). The 0.05 covers the publisher's
    // Opus, the network and the Opus re-encode for the mountpoint.
    let reference = &looped[fine..fine + n_cmp];
    let direct = aic_l6_stoi(reference);
    let card = model_card_stoi("L6");
    let allowance = if matches!(impair, Impair::None) {
        0.0
    } else {
        0.03
    };
    let floor = (direct - 0.05).min(card - 0.05 - allowance);
    eprintln!(
        "heard vs sent: envelope correlation {best:.3}, offset {fine} samples, STOI {stoi:.3} \
         (AIC L6 alone on the same speech: {direct:.3}; model card L6: {card:.3}; floor {floor:.3})"
    );
    // The bridge's adaptive jitter buffer grows (a concealed frame) and shrinks (a dropped
    // quiet frame), under jitter and under CPU load alike: the rest of the recording moves by
    // 20 ms, which one alignment for the whole recording scores as distortion (seen: 0.711 on
    // a clean run whose delay went from 80 to 57 ms). So STOI is taken per 2 s segment, each
    // aligned on its own.
    let stoi = segment_stoi(&heard[..n_cmp], &looped, fine);
    eprintln!("heard vs sent: STOI per 2 s segment, each aligned: {stoi:.3}");

    // Latency, RTP in → RTP out: on the packets (the bridge's measure) and on the signal (the
    // AIC recording against the direct one). Figures for docs/benchmarks.md; the bounds here
    // only catch a measurement that broke (issue #12's targets are not asserted in a test).
    let pkt = &s["latency_rtp_in_to_rtp_out"];
    let direct_stats = &stats["direct"];
    let sig = signal_latency(&read_recording(&rec), &read_recording(&direct_rec));
    let q = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // Straight to the stderr handle, one line, for grep.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "janus latency: {test} ({impair:?}): packets rtp-in->rtp-out p50 {:.1} ms p95 {:.1} ms \
         (n {}); signal AIC - direct p50 {:.1} ms p95 {:.1} ms over {} of {} 1 s windows \
         (per packet p50 {:.1} p95 {:.1} max {:.1} ms, n {}; {} windows refined on the waveform); \
         subscriber gaps {} (direct {}); bridge jitter buffer {}",
        q(pkt, "p50_ms"),
        q(pkt, "p95_ms"),
        pkt["n"],
        sig.window_p50_ms,
        sig.window_p95_ms,
        sig.windows_used,
        sig.windows,
        sig.packet_ms.0,
        sig.packet_ms.1,
        sig.packet_ms.2,
        sig.packets,
        sig.refined,
        stats["gaps"],
        direct_stats["gaps"],
        s["jitter_buffer"],
    );
    assert!(q(pkt, "p50_ms") > 0.0 && q(pkt, "p95_ms") < 1000.0, "{pkt}");
    assert!(
        sig.windows_used * 2 >= sig.windows && sig.windows_used >= 4,
        "signal latency: only {} of {} windows matched: {sig:?}",
        sig.windows_used,
        sig.windows
    );
    assert!(
        sig.window_p50_ms > 0.0 && sig.window_p95_ms < 200.0,
        "signal latency out of any sane range: {sig:?}"
    );
    assert!(best > 0.7, "envelope correlation {best}");
    assert!(stoi > floor, "STOI {stoi:.3} <= floor {floor:.3}");
    drop(procs);
}

/// `--record`: both recordings stopped cleanly, each file lasts exactly the media time on its
/// timeline (frame indices, so loss does not shorten it), and that media time is the wall-clock
/// time the recording ran (no drift; the .aic starts a pipeline trip later and the last frames
/// in flight at SIGTERM are not waited for, hence the allowance).
fn check_recordings(t: &Path, rec: &serde_json::Value) {
    eprintln!("record: {rec}");
    assert_eq!(rec["state"], "stopped", "{rec}");
    let wall_ms = rec["wall_ms_since_first_frame"].as_f64().unwrap();
    let outs = rec["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2, "{rec}");
    for o in outs {
        assert_eq!(o["state"]["state"], "stopped", "{o}");
        let media_ms = o["media_ms"].as_f64().unwrap();
        let path = PathBuf::from(o["location"].as_str().unwrap());
        let wav = t.join(format!("{}.wav", o["format"].as_str().unwrap()));
        let decoded_s = if o["format"] == "aic" {
            let st = Command::new(env!("CARGO_BIN_EXE_aic"))
                .arg("decode")
                .arg(&path)
                .arg("-o")
                .arg(&wav)
                .status()
                .unwrap();
            assert!(st.success(), "aic decode {}", path.display());
            read_wav_16k(&wav).len() as f64 / 16_000.0
        } else {
            let st = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(&path)
                .args(["-ac", "1", "-ar", "16000"])
                .arg(&wav)
                .status()
                .unwrap();
            assert!(st.success(), "ffmpeg could not read {}", path.display());
            let y = read_wav_16k(&wav);
            let rms = (y.iter().map(|v| v * v).sum::<f32>() / y.len().max(1) as f32).sqrt();
            assert!(
                rms > 0.005,
                "{}: silent recording (rms {rms})",
                path.display()
            );
            y.len() as f64 / 16_000.0
        };
        let codec_delay_s = 0.015; // the AIC decoder drops its delay (240 samples)
        eprintln!(
            "record {}: {decoded_s:.3} s decoded, {media_ms} ms on the timeline, {wall_ms} ms of wall clock",
            path.display()
        );
        assert!(
            (decoded_s * 1000.0 - media_ms).abs() <= 20.0 + codec_delay_s * 1000.0,
            "{}: decodes to {decoded_s} s, timeline {media_ms} ms",
            path.display()
        );
        assert!(
            (media_ms - wall_ms).abs() <= 300.0,
            "{}: timeline {media_ms} ms but it ran {wall_ms} ms (drift)",
            path.display()
        );
        assert!(media_ms > 4000.0, "{o}");
    }
}

/// Mean STOI of `heard` against `looped` (where `heard[0]` matches `looped[start]`) over 2 s
/// segments, each aligned on its own within ± 100 ms: first on the energy envelopes (5 ms
/// steps), then on STOI (1 ms steps, ± 5 ms).
fn segment_stoi(heard: &[f32], looped: &[f32], start: usize) -> f64 {
    const SEG: usize = 32_000;
    let fits = |s0: i64| s0 >= 0 && s0 as usize + SEG <= looped.len();
    let mut scores = Vec::new();
    let mut k = 0;
    while k + SEG <= heard.len() {
        let h = &heard[k..k + SEG];
        let eh = envelope(h);
        let mut best = (f32::MIN, 0i64);
        for lag in (-1600i64..=1600).step_by(80) {
            let s0 = (start + k) as i64 + lag;
            if !fits(s0) {
                continue;
            }
            let c = pearson(&eh, &envelope(&looped[s0 as usize..s0 as usize + SEG]));
            if c > best.0 {
                best = (c, lag);
            }
        }
        let mut st = f64::MIN;
        for d in (-80i64..=80).step_by(16) {
            let s0 = (start + k) as i64 + best.1 + d;
            if fits(s0) {
                let r = &looped[s0 as usize..s0 as usize + SEG];
                st = st.max(aic_codec::metrics::stoi(r, h, 16_000).unwrap());
            }
        }
        scores.push(st);
        k += SEG;
    }
    assert!(
        !scores.is_empty(),
        "no 2 s segment in {} samples",
        heard.len()
    );
    scores.iter().sum::<f64>() / scores.len() as f64
}

/// An nftables table in the test's namespace dropping `pct` % of the UDP datagrams to `port`
/// at random, with counters for all datagrams to that port and for the dropped ones.
struct Loss {
    table: &'static str,
}

fn inject_loss(dir: &Path, port: u16, pct: u32) -> Loss {
    let table = "aic_test_loss";
    let rules = format!(
        "table ip {table} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tudp dport {port} counter\n\
         \t\tudp dport {port} numgen random mod 100 < {pct} counter drop\n\
         \t}}\n}}\n"
    );
    let f = dir.join("loss.nft");
    std::fs::write(&f, rules).unwrap();
    let st = Command::new("nft")
        .arg("-f")
        .arg(&f)
        .status()
        .expect("run nft (nftables, installed by scripts/setup.sh)");
    assert!(st.success(), "nft -f {} failed", f.display());
    eprintln!("loss: dropping {pct} % of UDP to 127.0.0.1:{port} (nftables numgen)");
    Loss { table }
}

impl Loss {
    /// (datagrams to the port, datagrams dropped) so far.
    fn counters(&self) -> (u64, u64) {
        let out = Command::new("nft")
            .args(["-j", "list", "table", "ip", self.table])
            .output()
            .unwrap();
        assert!(out.status.success(), "nft list table {}", self.table);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (mut all, mut dropped) = (None, None);
        for item in v["nftables"].as_array().unwrap() {
            let Some(expr) = item["rule"]["expr"].as_array() else {
                continue;
            };
            let n = expr
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .unwrap();
            if expr.iter().any(|e| e.get("drop").is_some()) {
                dropped = Some(n);
            } else {
                all = Some(n);
            }
        }
        (all.unwrap(), dropped.unwrap())
    }
}

/// The shipped model card's STOI at `point` (`rate_quality.json`).
fn model_card_stoi(point: &str) -> f64 {
    let p = aic_pipeline::aic::default_model_dir().join("rate_quality.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["codec"] == "aic" && r["point"] == point)
        .and_then(|r| r["stoi"].as_f64())
        .unwrap_or_else(|| panic!("no aic {point} row in {}", p.display()))
}

/// STOI of `x` (16 kHz) through AIC level 6 alone, in process (encoder, decoder, delay removed).
fn aic_l6_stoi(x: &[f32]) -> f64 {
    aic_codec::metrics::stoi(x, &aic_l6(x), 16_000).unwrap()
}

/// A UDP relay that holds each datagram for a random 0..=`max_ms` ms before sending it on to
/// 127.0.0.1:`dest`, and the nftables rule (nat output chain of the test's namespace) that
/// sends it the datagrams for `dest`: every UDP datagram to `dest` not from the relay's own
/// port is redirected to the relay. Bounded: the thread stops when told or after 120 s.
struct JitterRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<RelayStats>,
}

#[derive(Debug)]
struct RelayStats {
    relayed: u64,
    /// How long datagrams were really held (p50, p95, max), in ms: the random delay plus the
    /// relay thread's own scheduling.
    held_ms: (f64, f64, f64),
}

impl JitterRelay {
    fn start(dir: &Path, dest: u16, max_ms: u64) -> Self {
        use std::collections::BinaryHeap;
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            // xorshift64*, seeded from the clock: the delays need no other randomness.
            let mut x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1;
            let mut rand_us = move || {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d) % (max_ms * 1000 + 1)
            };
            // (due, order, arrived, datagram); min-heap by due.
            type Held = std::cmp::Reverse<(Instant, u64, Instant, Vec<u8>)>;
            let mut held: BinaryHeap<Held> = BinaryHeap::new();
            let mut held_us = Vec::new();
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            let end = Instant::now() + Duration::from_secs_f64(112.0 + record_s());
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                let now = Instant::now();
                while let Some(std::cmp::Reverse((due, _, arrived, _))) = held.peek() {
                    if *due > now {
                        break;
                    }
                    let arrived = *arrived;
                    let std::cmp::Reverse((_, _, _, d)) = held.pop().unwrap();
                    let _ = sock.send_to(&d, ("127.0.0.1", dest));
                    held_us.push(arrived.elapsed().as_micros() as u64);
                }
                let wait = held
                    .peek()
                    .map(|std::cmp::Reverse((due, ..))| due.saturating_duration_since(now))
                    .unwrap_or(Duration::from_millis(50))
                    .clamp(Duration::from_micros(200), Duration::from_millis(50));
                sock.set_read_timeout(Some(wait)).unwrap();
                if let Ok(len) = sock.recv(&mut buf) {
                    let now = Instant::now();
                    let due = now + Duration::from_micros(rand_us());
                    n += 1;
                    // The order breaks ties between equal due times: first in, first out.
                    held.push(std::cmp::Reverse((due, n, now, buf[..len].to_vec())));
                    assert!(held.len() < 1000, "relay: {} datagrams held", held.len());
                }
            }
            held_us.sort_unstable();
            let q = |p: f64| {
                held_us
                    .get(((held_us.len().max(1) - 1) as f64 * p).round() as usize)
                    .map_or(f64::NAN, |&v| v as f64 / 1000.0)
            };
            RelayStats {
                relayed: held_us.len() as u64,
                held_ms: (q(0.5), q(0.95), q(1.0)),
            }
        });
        let rules = format!(
            "table ip aic_test_jitter {{\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tudp dport {dest} udp sport != {port} counter redirect to :{port}\n\
             \t}}\n}}\n"
        );
        let f = dir.join("jitter.nft");
        std::fs::write(&f, rules).unwrap();
        let st = Command::new("nft").arg("-f").arg(&f).status().unwrap();
        assert!(st.success(), "nft -f {} failed", f.display());
        eprintln!(
            "jitter: UDP to 127.0.0.1:{dest} goes through a relay on :{port} that holds each \
             datagram 0..={max_ms} ms"
        );
        Self { stop, thread }
    }

    fn stop(self) -> RelayStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the relay thread")
    }
}

const FS: f64 = 16_000.0;
/// Samples per RTP packet at 16 kHz (20 ms Opus packets on both subscriptions).
const PKT_SAMPLES: usize = 320;

/// One subscription as recorded by `webrtc_client.py subscribe ... DIRECT_OUT`.
struct Recording {
    /// 16 kHz, Opus-decoded in the subscriber.
    pcm: Vec<f32>,
    /// Per RTP packet: its index from the first packet (unwrapped sequence number) and its
    /// arrival (s, the subscriber process's monotonic clock, shared by both recordings).
    arrivals: Vec<(i64, f64)>,
}

fn read_recording(wav: &Path) -> Recording {
    let pcm = read_wav_16k(wav);
    let j = PathBuf::from(format!("{}.arrivals.json", wav.display()));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let seqs = v["seq"].as_array().unwrap();
    let ts = v["t"].as_array().unwrap();
    let (mut idx, mut prev) = (0i64, None::<u16>);
    let mut arrivals = Vec::with_capacity(seqs.len());
    for (s, t) in seqs.iter().zip(ts) {
        let s = s.as_u64().unwrap() as u16;
        if let Some(p) = prev {
            idx += i64::from(s.wrapping_sub(p) as i16);
        }
        prev = Some(s);
        arrivals.push((idx, t.as_f64().unwrap()));
    }
    Recording { pcm, arrivals }
}

impl Recording {
    /// Arrival of packet 0 on the stream's regular 20 ms grid: the median over packets of
    /// arrival − 20 ms × index.
    fn t0(&self) -> f64 {
        median(self.arrivals.iter().map(|&(i, t)| t - 0.02 * i as f64))
    }

    /// Arrival of packet `index`, if it came.
    fn arrival(&self, index: i64) -> Option<f64> {
        self.arrivals
            .binary_search_by_key(&index, |&(i, _)| i)
            .ok()
            .map(|k| self.arrivals[k].1)
    }
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[derive(Debug)]
struct SignalLatency {
    /// 1 s windows (hop 0.5 s) of the AIC recording that fit, and those whose content was found
    /// in the direct recording.
    windows: usize,
    windows_used: usize,
    /// Per-window latency (median over the window's packets), quantiles over windows.
    window_p50_ms: f64,
    window_p95_ms: f64,
    /// Per-packet latency (p50, p95, max) over the packets of the matched windows, each once.
    packet_ms: (f64, f64, f64),
    packets: usize,
    /// Windows whose envelope lag was refined on the waveform.
    refined: usize,
}

/// The latency the AIC path adds, from a recording of the AIC mountpoint (`aic`) and one of the
/// publisher straight from Janus (`direct`), both taken by one process on one clock.
///
/// Time base: every RTP packet of both subscriptions carries its arrival; packet `i` holds
/// samples `320 i ..` of its recording (20 ms packets, no gaps: the decoder's PLC fills any).
/// Each recording is put on its own regular 20 ms grid (`t0`, the median of arrival − 20 ms × i),
/// so `off` = (t0 of AIC − t0 of direct) samples maps an AIC sample to the direct sample that
/// arrived at the same moment.
///
/// Lag: for each 1 s window of the AIC recording (from 1 s on, hop 0.5 s), the direct content
/// it matches is searched for 0–400 ms (and 50 ms the other way) earlier: first by Pearson
/// correlation of the amplitude envelopes (10 ms RMS at every 1 ms), which a lossy codec
/// keeps; then, within ± 3 ms of that, on the waveform (normalised cross-correlation, 1 sample)
/// where the waveform agrees well enough (≥ 0.5), else the envelope's lag stands. A window is
/// used when its envelope correlation is ≥ 0.7 and its peak is not at the edge of the search.
///
/// Latency of AIC packet `i` in a window with content lag `L` (samples): its arrival minus the
/// arrival of the direct sample with the same content (`320 i + off − L`; its packet's arrival +
/// its place in the packet). The clock, the subscriber's decode, resampling and jitter buffer
/// are the same on both paths and cancel; what is left is rtp_forward + the bridge (jitter
/// buffer, Opus decode, AIC encode + decode, Opus encode) + the Streaming mountpoint.
fn signal_latency(aic: &Recording, direct: &Recording) -> SignalLatency {
    const WIN: usize = 16_000;
    const HOP: usize = 8_000;
    const ENV: usize = 160; // 10 ms RMS
    const STEP: usize = 16; // every 1 ms
    const LAG_MIN_MS: i64 = -50;
    const LAG_MAX_MS: i64 = 400;
    const FINE: i64 = 48; // ± 3 ms
    let cum = |x: &[f32]| -> Vec<f64> {
        let mut c = Vec::with_capacity(x.len() + 1);
        c.push(0.0);
        for v in x {
            c.push(c.last().unwrap() + f64::from(*v) * f64::from(*v));
        }
        c
    };
    let (ca, cd) = (cum(&aic.pcm), cum(&direct.pcm));
    let env = |c: &[f64], p: usize| ((c[p + ENV] - c[p]) / ENV as f64).max(0.0).sqrt();
    let pearson64 = |a: &[f64], b: &[f64]| -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            sab += (x - ma) * (y - mb);
            saa += (x - ma) * (x - ma);
            sbb += (y - mb) * (y - mb);
        }
        sab / (saa * sbb).sqrt().max(1e-12)
    };
    let (t0a, t0d) = (aic.t0(), direct.t0());
    let off = ((t0a - t0d) * FS).round() as i64;
    let (mut windows, mut used, mut refined) = (0, 0, 0);
    let (mut per_window, mut per_packet) = (Vec::new(), Vec::new());
    let mut last_packet = i64::MIN;
    let mut k0 = 16_000usize;
    while k0 + WIN + ENV <= aic.pcm.len() {
        // The direct samples this window may need, for every lag searched.
        let lo = k0 as i64 + off - LAG_MAX_MS * 16 - FINE;
        let hi = (k0 + WIN + ENV) as i64 + off - LAG_MIN_MS * 16 + FINE;
        if lo < 0 || hi > direct.pcm.len() as i64 {
            k0 += HOP;
            continue;
        }
        windows += 1;
        let ea: Vec<f64> = (0..WIN / STEP).map(|m| env(&ca, k0 + m * STEP)).collect();
        let mut best = (f64::MIN, 0i64);
        for lag_ms in LAG_MIN_MS..=LAG_MAX_MS {
            let start = (k0 as i64 + off - lag_ms * 16) as usize;
            let ed: Vec<f64> = (0..WIN / STEP)
                .map(|m| env(&cd, start + m * STEP))
                .collect();
            let r = pearson64(&ea, &ed);
            if r > best.0 {
                best = (r, lag_ms * 16);
            }
        }
        let (rho, coarse) = best;
        let edge = coarse == LAG_MIN_MS * 16 || coarse == LAG_MAX_MS * 16;
        if rho < 0.7 || edge {
            k0 += HOP;
            continue;
        }
        used += 1;
        let xa: Vec<f64> = aic.pcm[k0..k0 + WIN].iter().map(|&v| v.into()).collect();
        let mut fine = (f64::MIN, coarse);
        for lag in coarse - FINE..=coarse + FINE {
            let start = (k0 as i64 + off - lag) as usize;
            let xd: Vec<f64> = direct.pcm[start..start + WIN]
                .iter()
                .map(|&v| v.into())
                .collect();
            let r = pearson64(&xa, &xd);
            if r > fine.0 {
                fine = (r, lag);
            }
        }
        let lag = if fine.0 >= 0.5 {
            refined += 1;
            fine.1
        } else {
            coarse
        };
        let mut here = Vec::new();
        let first = k0.div_ceil(PKT_SAMPLES) as i64;
        for i in first..((k0 + WIN) / PKT_SAMPLES) as i64 {
            let Some(ta) = aic.arrival(i) else { continue };
            let kd = i * PKT_SAMPLES as i64 + off - lag;
            let j = kd.div_euclid(PKT_SAMPLES as i64);
            let Some(td) = direct.arrival(j) else {
                continue;
            };
            let l = ta - (td + (kd - j * PKT_SAMPLES as i64) as f64 / FS);
            here.push(l);
            if i > last_packet {
                per_packet.push(l);
                last_packet = i;
            }
        }
        if !here.is_empty() {
            per_window.push(median(here.into_iter()));
        }
        k0 += HOP;
    }
    SignalLatency {
        windows,
        windows_used: used,
        window_p50_ms: 1000.0 * quantile(&per_window, 0.5),
        window_p95_ms: 1000.0 * quantile(&per_window, 0.95),
        packet_ms: (
            1000.0 * quantile(&per_packet, 0.5),
            1000.0 * quantile(&per_packet, 0.95),
            1000.0 * quantile(&per_packet, 1.0),
        ),
        packets: per_packet.len(),
        refined,
    }
}

/// The estimator on a known shift: speech through AIC L6 in process (the codec's own delay
/// removed), recorded 47.3 ms after the same speech on a "direct" path, packets arriving with
/// ±1 ms of noise, the two recordings starting at unrelated points of the content. The signal
/// latency must come out within 1.5 ms of 47.3 ms. Runs without Janus.
#[test]
fn signal_latency_finds_a_known_shift_through_aic() {
    let src = read_wav_16k(&repo().join("datasets/fixtures/speech/en_espeak.wav"));
    let looped: Vec<f32> = src.iter().chain(&src).copied().collect();
    let coded = aic_l6(&looped);
    let shift = 0.0473;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 2001) as f64 / 1e6 - 0.001
    };
    // Direct: content from sample 0, packet i arrives at 100 s + 20 ms i.
    let n_direct = 9 * 16_000;
    let direct = Recording {
        pcm: looped[..n_direct].to_vec(),
        arrivals: (0..(n_direct / PKT_SAMPLES) as i64)
            .map(|i| (i, 100.0 + 0.02 * i as f64 + noise()))
            .collect(),
    };
    // AIC: content from sample c0 (not on a packet boundary), each packet `shift` after the
    // direct packet that carried the same content.
    let c0 = 12_345usize;
    let n_aic = 8 * 16_000 - c0;
    let aic = Recording {
        pcm: coded[c0..c0 + n_aic].to_vec(),
        arrivals: (0..(n_aic / PKT_SAMPLES) as i64)
            .map(|i| {
                let t = 100.0 + (c0 as f64 + (i * PKT_SAMPLES as i64) as f64) / FS;
                (i, t + shift + noise())
            })
            .collect(),
    };
    let sig = signal_latency(&aic, &direct);
    eprintln!("known shift {:.1} ms: {sig:?}", 1000.0 * shift);
    assert!(sig.windows_used >= sig.windows * 3 / 4, "{sig:?}");
    for v in [sig.window_p50_ms, sig.window_p95_ms, sig.packet_ms.0] {
        assert!(
            (v - 1000.0 * shift).abs() < 1.5,
            "{v} ms for {shift} s: {sig:?}"
        );
    }
}

/// `x` (16 kHz) through AIC level 6 alone, in process, the codec's delay removed.
fn aic_l6(x: &[f32]) -> Vec<f32> {
    let mut reg = aic_codec::CodecRegistry::with_builtin();
    aic_pipeline::register_aic(&mut reg, None);
    let mut enc = reg
        .new_encoder("aic", Some(aic_codec::OperatingPoint::Level(6)))
        .unwrap();
    let info = enc.info().clone();
    let mut dec = reg.new_decoder(&info).unwrap();
    let n = info.frame_samples;
    let (mut pkt, mut out, mut frame) = (Vec::new(), Vec::new(), vec![0.0f32; n]);
    let frames = (x.len() + info.delay_samples).div_ceil(n);
    for i in 0..frames {
        frame.fill(0.0);
        let (lo, hi) = ((i * n).min(x.len()), ((i + 1) * n).min(x.len()));
        frame[..hi - lo].copy_from_slice(&x[lo..hi]);
        pkt.clear();
        enc.encode_frame(&frame, &mut pkt).unwrap();
        dec.decode_frame(Some(&pkt), &mut out).unwrap();
    }
    out[info.delay_samples..info.delay_samples + x.len()].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Video.

const VW: u32 = 640;
const VH: u32 = 360;
const VFPS: u32 = 30;
/// Frames in the looped source (4 s).
const VFRAMES: u32 = 120;
/// Bits of the frame index bar code: one 32×32 block per bit along the top row.
const CODE_BITS: u32 = 8;
const CODE_BLOCK: u32 = 32;

/// Source frame `n`: a moving, textured picture (gradients, a drifting disc, fine noise) with
/// the frame index as a bar code of black/white blocks in the top row.
fn source_frame(n: u32) -> aic_video::Yuv420Frame {
    let (w, h) = (VW as usize, VH as usize);
    let mut y = vec![0u8; w * h];
    let (cx, cy) = (
        (160.0 + 3.0 * n as f32) % w as f32,
        180.0 + 60.0 * (n as f32 * 0.1).sin(),
    );
    let mut noise = 0x1234_5678u32;
    for r in 0..h {
        for c in 0..w {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let g = ((c + 2 * n as usize) % 256) as f32 * 0.5 + (r as f32 / h as f32) * 60.0;
            let d = ((c as f32 - cx).powi(2) + (r as f32 - cy).powi(2)).sqrt();
            let disc = if d < 70.0 { 70.0 } else { 0.0 };
            let tex = if r > h / 2 && c < w / 3 {
                (noise % 48) as f32
            } else {
                0.0
            };
            y[r * w + c] = (30.0 + g + disc + tex).clamp(0.0, 255.0) as u8;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    let mut u = vec![0u8; cw * ch];
    let mut v = vec![0u8; cw * ch];
    for r in 0..ch {
        for c in 0..cw {
            u[r * cw + c] = (100 + (c * 60 / cw) + (n as usize % 20)) as u8;
            v[r * cw + c] = (150 - (r * 60 / ch)) as u8;
        }
    }
    for bit in 0..CODE_BITS {
        let on = (n >> bit) & 1 == 1;
        for r in 0..CODE_BLOCK as usize {
            for c in 0..CODE_BLOCK as usize {
                y[r * w + bit as usize * CODE_BLOCK as usize + c] = if on { 235 } else { 16 };
            }
        }
        for r in 0..(CODE_BLOCK / 2) as usize {
            for c in 0..(CODE_BLOCK / 2) as usize {
                let i = r * cw + (bit * CODE_BLOCK / 2) as usize + c;
                u[i] = 128;
                v[i] = 128;
            }
        }
    }
    aic_video::Yuv420Frame::from_planes(VW, VH, y, u, v).unwrap()
}

/// The source index a decoded frame carries (modulo 2^CODE_BITS).
fn read_code(f: &aic_video::Yuv420Frame) -> u32 {
    let w = f.width as usize;
    (0..CODE_BITS).fold(0, |acc, bit| {
        let (x0, y0) = ((bit * CODE_BLOCK + 8) as usize, 8usize);
        let mut sum = 0u32;
        for r in y0..y0 + 16 {
            for c in x0..x0 + 16 {
                sum += u32::from(f.y[r * w + c]);
            }
        }
        acc | (u32::from(sum / 256 > 128) << bit)
    })
}

fn write_i420(path: &Path, frames: &[&aic_video::Yuv420Frame]) {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&f.y);
        out.extend_from_slice(&f.u);
        out.extend_from_slice(&f.v);
    }
    std::fs::write(path, out).unwrap();
}

/// CLOCK_MONOTONIC in seconds: the clock Python's `time.monotonic()` reads, so the test's
/// instants and the subscriber's arrival stamps compare.
fn monotonic_s() -> f64 {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import time; print(time.monotonic())"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Decoded frames of a mountpoint dump: (arrival of the frame's last packet, frame).
fn decode_dump(path: &Path) -> (Vec<(f64, aic_video::Yuv420Frame)>, u64) {
    use aic_sfu_bridge::rtp::RtpPacket;
    use aic_sfu_bridge::video::{FrameAssembler, VideoPayload};
    let bytes = std::fs::read(path).unwrap();
    let mut asm = FrameAssembler::new(VideoPayload::Av1);
    let mut dec = aic_video::VideoDecoder::new(aic_video::VideoCodec::Av1).unwrap();
    let base = Instant::now();
    let (mut out, mut frames, mut errors) = (Vec::new(), Vec::new(), 0u64);
    let mut i = 0;
    let mut t0 = None;
    while i + 10 <= bytes.len() {
        let t = f64::from_be_bytes(bytes[i..i + 8].try_into().unwrap());
        let n = u16::from_be_bytes([bytes[i + 8], bytes[i + 9]]) as usize;
        let p = &bytes[i + 10..(i + 10 + n).min(bytes.len())];
        i += 10 + n;
        let t0 = *t0.get_or_insert(t);
        let Ok(pkt) = RtpPacket::parse(p) else {
            errors += 1;
            continue;
        };
        let now = base + Duration::from_secs_f64((t - t0).max(0.0));
        if asm.push(now, &pkt).is_err() {
            errors += 1;
        }
        while let Some(f) = asm.poll_frame() {
            frames.clear();
            if dec.decode(&f.data, &mut frames).is_err() {
                errors += 1;
            }
            for fr in frames.drain(..) {
                out.push((t, fr));
            }
        }
    }
    (out, errors)
}

fn inside_namespace_video() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut procs = start_janus(t);

    let source: Vec<_> = (0..VFRAMES).map(source_frame).collect();
    for (n, f) in source.iter().enumerate() {
        assert_eq!(
            read_code(f),
            n as u32 % (1 << CODE_BITS),
            "bar code of frame {n}"
        );
    }
    let raw = t.join("source.i420");
    write_i420(&raw, &source.iter().collect::<Vec<_>>());
    let client = repo().join("aic/tests/janus/webrtc_client.py");
    let speech = repo().join("datasets/fixtures/speech/en_espeak.wav");
    const PUBLISHER_KBPS: u32 = 800;
    let mut publisher = Command::new("/usr/bin/python3")
        .arg(&client)
        .args(["publish", &ROOM.to_string()])
        .arg(&speech)
        .arg(&raw)
        .args([VW, VH, VFPS, PUBLISHER_KBPS].map(|v| v.to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pub_out = lines("publisher", publisher.stdout.take().unwrap());
    let _pub_err = lines("publisher", publisher.stderr.take().unwrap());
    procs.0.push(("publisher".into(), publisher));
    let l = wait_line(&pub_out, "PUBLISHER", Duration::from_secs(30));
    let pid: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();

    const AV1_KBPS: u32 = 400;
    let summary = t.join("summary.json");
    let mut attach = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["attach", "janus", "--room", &ROOM.to_string()])
        .args(["--publisher", &pid.to_string()])
        .args(["--mountpoint", &MOUNTPOINT.to_string(), "--level", "6"])
        .args(["--pipeline", "inproc", "--video"])
        .args(["--video-kbps", &AV1_KBPS.to_string()])
        .arg("--summary")
        .arg(&summary)
        // Issue #13: record the publisher (Ogg/Opus) and AIC's own frames (.aic) meanwhile.
        .arg("--record")
        .arg(t.join("rec.ogg"))
        .arg("--record")
        .arg(t.join("rec.aic"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let att_err = lines("attach", attach.stderr.take().unwrap());
    let attach_pid = attach.id();
    procs.0.push(("aic attach".into(), attach));
    let started = wait_line(&att_err, "video track started", Duration::from_secs(30));
    let video_port: u16 = started
        .rsplit_once("rtp in 127.0.0.1:")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no video RTP port in {started:?}"));
    wait_line(&att_err, "ready", Duration::from_secs(30));

    const RECORD_S: f64 = 9.0;
    let dump = t.join("mountpoint.rtp");
    let mut sub = Command::new("/usr/bin/python3")
        .arg(&client)
        .args(["subscribe-video", &MOUNTPOINT.to_string()])
        .arg(&dump)
        .arg(RECORD_S.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sub_out = lines("subscriber", sub.stdout.take().unwrap());
    let sub_err = lines("subscriber", sub.stderr.take().unwrap());
    procs.0.push(("subscriber".into(), sub));
    wait_line(&sub_err, "video started", Duration::from_secs(30));
    // Janus also records the mountpoint's AV1 (its own depacketizer, `janus-pp-rec`, reads it
    // back below: an independent check of AIC's AV1 RTP).
    let mjr = t.join("aic-av1");
    let r = janus_request(
        "janus.plugin.streaming",
        serde_json::json!({"request": "recording", "action": "start", "id": MOUNTPOINT,
                           "media": [{"mid": "v", "filename": mjr.to_str().unwrap()}]}),
    );
    assert_eq!(r["streaming"], "ok", "recording the mountpoint: {r}");
    // Clean for 3 s, 5 % loss on the Janus → AIC video for 2 s, clean again.
    std::thread::sleep(Duration::from_secs(3));
    let loss_start = monotonic_s();
    let loss = inject_loss(t, video_port, LOSS_PCT);
    std::thread::sleep(Duration::from_secs(2));
    let (forwarded, dropped) = loss.counters();
    sh("nft", &["delete", "table", "ip", loss.table]);
    let loss_end = monotonic_s();
    eprintln!(
        "video loss: {dropped} of {forwarded} datagrams dropped between {loss_start:.2} and {loss_end:.2}"
    );
    let vstats = wait_line(&sub_out, "VSTATS", Duration::from_secs_f64(40.0 + RECORD_S));
    let vstats: serde_json::Value =
        serde_json::from_str(vstats.trim_start_matches("VSTATS ")).unwrap();

    let r = janus_request(
        "janus.plugin.streaming",
        serde_json::json!({"request": "recording", "action": "stop", "id": MOUNTPOINT,
                           "media": [{"mid": "v"}]}),
    );
    assert_eq!(r["streaming"], "ok", "stopping the recording: {r}");
    sh("kill", &["-TERM", &attach_pid.to_string()]);
    let (_, attach) = procs.0.iter_mut().find(|(n, _)| n == "aic attach").unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = attach.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "aic attach did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "aic attach exited with {status}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let v = &s["video"];
    eprintln!("video summary: {v:#}");
    eprintln!("subscriber: {vstats}");

    // The subscriber negotiated AV1 and got it.
    let caps = vstats["caps"].as_str().unwrap_or_default();
    assert!(
        caps.contains("AV1"),
        "the subscriber's video is not AV1: {caps}"
    );
    assert!(
        dropped > 0,
        "the loss rule dropped nothing ({forwarded} datagrams)"
    );
    let (frames, errors) = decode_dump(&dump);
    assert_eq!(errors, 0, "AV1 packets that did not depacketize or decode");
    let first = frames.first().map(|f| f.0).unwrap_or(f64::NAN);
    let last = frames.last().map(|f| f.0).unwrap_or(f64::NAN);
    eprintln!(
        "video: {} AV1 frames decoded from {} RTP packets over {:.2} s",
        frames.len(),
        vstats["packets"],
        last - first
    );
    // Frames outside the loss window and its one-second recovery: the picture moves at the
    // publisher's rate (allowing for the start and the end of the recording).
    let clean = frames
        .iter()
        .filter(|(t, _)| *t < loss_start || *t > loss_end + 1.0)
        .count() as f64;
    let clean_s = (loss_start - first).max(0.0) + (last - loss_end - 1.0).max(0.0);
    assert!(
        clean >= 0.8 * f64::from(VFPS) * clean_s,
        "{clean} frames in {clean_s:.1} clean seconds (publisher: {VFPS} fps)"
    );
    // Recovery: after the loss ends, a frame within one second, and from then on no freeze.
    let after: Vec<f64> = frames
        .iter()
        .map(|f| f.0)
        .filter(|t| *t >= loss_end)
        .collect();
    let recovered = after.first().copied().unwrap_or(f64::INFINITY) - loss_end;
    let max_gap_after = after
        .windows(2)
        .filter(|w| w[0] > loss_end + 1.0)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    let longest_freeze = frames
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0f64, f64::max);
    eprintln!(
        "video recovery: first frame {:.0} ms after the loss ended; longest freeze {:.0} ms; \
         longest gap from 1 s after the loss {:.0} ms",
        recovered * 1000.0,
        longest_freeze * 1000.0,
        max_gap_after * 1000.0
    );
    assert!(recovered <= 1.0, "no frame within 1 s after the loss ended");
    assert!(max_gap_after < 0.5, "the picture froze after recovery");
    // Frames hit by the loss were dropped whole (never handed to the decoder half), and the
    // ones after them until the keyframe.
    let a = &v["assembler"];
    let lost_frames =
        a["dropped_incomplete"].as_u64().unwrap() + a["dropped_waiting_keyframe"].as_u64().unwrap();
    assert!(lost_frames >= 1, "no frame was dropped under loss: {a}");
    assert_eq!(
        v["frames"]["decode_errors"], 0,
        "a broken frame reached the decoder: {v}"
    );
    let plis = v["keyframes"]["plis_to_publisher"].as_u64().unwrap();
    assert!(plis >= 1, "no keyframe request reached the publisher: {v}");
    let from_receivers = v["keyframes"]["requests_from_receivers"].as_u64().unwrap();
    assert!(
        from_receivers >= 1,
        "the subscriber's keyframe request never reached AIC: {v}"
    );

    // What arrived against what was sent, frame by frame (by bar code).
    let mut psnr = Vec::new();
    let mut pairs: Vec<(&aic_video::Yuv420Frame, &aic_video::Yuv420Frame)> = Vec::new();
    for (_, f) in &frames {
        assert_eq!((f.width, f.height), (VW, VH));
        let code = read_code(f);
        // The index is modulo 2^CODE_BITS; the source loops every VFRAMES < 2^CODE_BITS.
        let Some(src) = source.get(code as usize) else {
            panic!("bar code {code} names no source frame");
        };
        psnr.push(aic_video::metrics::psnr_y(src, f));
        pairs.push((src, f));
    }
    let mean_psnr = psnr.iter().sum::<f64>() / psnr.len().max(1) as f64;
    let sorted = {
        let mut p = psnr.clone();
        p.sort_by(f64::total_cmp);
        p
    };
    let p05 = sorted.get(sorted.len() / 20).copied().unwrap_or(0.0);
    eprintln!("video quality: PSNR-Y mean {mean_psnr:.2} dB, 5th percentile {p05:.2} dB");
    assert!(
        mean_psnr > 30.0,
        "PSNR-Y {mean_psnr:.2} dB: not the picture that was sent"
    );
    assert!(
        p05 > 25.0,
        "5 % of frames below {p05:.2} dB: broken frames reached the subscriber"
    );
    // VMAF on up to 90 evenly spaced frames (vmaf-torch on the CPU).
    let step = pairs.len().div_ceil(90).max(1);
    let picked: Vec<_> = pairs.iter().step_by(step).collect();
    let (r, d) = (t.join("ref.i420"), t.join("dist.i420"));
    write_i420(&r, &picked.iter().map(|p| p.0).collect::<Vec<_>>());
    write_i420(&d, &picked.iter().map(|p| p.1).collect::<Vec<_>>());
    let list = t.join("pairs.tsv");
    std::fs::write(
        &list,
        format!("{}\t{}\t{VW}\t{VH}\n", r.display(), d.display()),
    )
    .unwrap();
    let py = repo().join(".venv/bin/python");
    let out = Command::new(&py)
        .arg(repo().join("video/eval_vmaf.py"))
        .arg("--pairs")
        .arg(&list)
        .output()
        .expect("run video/eval_vmaf.py");
    let line = String::from_utf8_lossy(&out.stdout);
    let vm: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    match vm["vmaf"].as_f64() {
        Some(x) => {
            eprintln!("video quality: VMAF {x:.2} over {} frames", picked.len());
            assert!(x > 60.0, "VMAF {x:.2}: not the picture that was sent");
        }
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "VMAF did not run under CI: {vm}"
            );
            eprintln!("video quality: VMAF not computed ({vm}); PSNR only");
        }
    }
    // Janus' own AV1 depacketizer (janus-pp-rec, Debian's janus-tools) reads the mountpoint's
    // recording of what AIC sent: it must find AV1 and the 640x360 of the sequence header
    // inside the OBUs it reassembles. (Its MP4 writer, its one AV1 target in 1.1.2, leaves
    // a file without a moov atom here, so the pictures are compared on the subscriber's copy.)
    let pp = Command::new("janus-pp-rec")
        .arg("-e")
        .arg(mjr.with_extension("mjr"))
        .output()
        .expect("run janus-pp-rec (janus-tools, installed by scripts/setup.sh)");
    let report = String::from_utf8_lossy(&pp.stdout);
    eprintln!("janus-pp-rec: {}", report.trim());
    let rep: serde_json::Value = serde_json::from_str(report.trim())
        .unwrap_or_else(|e| panic!("janus-pp-rec -e: {e}: {report}"));
    assert_eq!(rep["c"], "av1", "Janus recorded no AV1: {rep}");
    let res = &rep["extended"]["codec"]["resolution"][0];
    assert_eq!(
        (res["width"].as_u64(), res["height"].as_u64()),
        (Some(u64::from(VW)), Some(u64::from(VH))),
        "Janus' AV1 depacketizer found no {VW}x{VH} sequence header in AIC's RTP: {rep}"
    );
    let recorded = rep["extended"]["packets"].as_u64().unwrap_or(0);
    let got = vstats["packets"].as_u64().unwrap_or(0);
    assert!(
        recorded as f64 >= 0.8 * got as f64,
        "Janus recorded {recorded} AV1 packets, the subscriber got {got}"
    );

    let kin = v["bitrate_kbps"]["publisher"].as_f64().unwrap();
    let kout = v["bitrate_kbps"]["out"].as_f64().unwrap();
    eprintln!(
        "video bitrate: publisher VP8 {kin:.0} kbit/s, AV1 out {kout:.0} kbit/s ({:.0} %)",
        100.0 * kout / kin.max(1.0)
    );
    assert!(
        kout < 0.8 * kin,
        "AV1 out {kout:.0} kbit/s vs VP8 in {kin:.0}"
    );

    // Janus is back to what it was: no forwarder, no mountpoint.
    let fw = janus_request(
        "janus.plugin.videoroom",
        serde_json::json!({"request": "listforwarders", "room": ROOM}),
    );
    let n_fw: usize = fw["publishers"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| x["forwarders"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(n_fw, 0, "forwarders left after detach: {fw}");
    let mp = janus_request(
        "janus.plugin.streaming",
        serde_json::json!({"request": "info", "id": MOUNTPOINT}),
    );
    assert!(
        mp.get("error").is_some(),
        "the mountpoint was left behind: {mp}"
    );
}
