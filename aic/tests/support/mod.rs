//! Shared by the end-to-end tests: start the real `aic serve`, read its address, keep its log,
//! and run a test body under a deadline that fails with that log instead of hanging. Every
//! server also has a watchdog: a test that still holds it after `AIC_TEST_DEADLINE_SECS`
//! (default 300) is failed with the server's log, so no e2e test can hang the test command.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long one test may keep one `aic serve` (`AIC_TEST_DEADLINE_SECS`, default 300 s).
pub fn deadline() -> Duration {
    let secs = std::env::var("AIC_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Fails the whole test binary (exit status 101, like a panic) with the server's log if the
/// server outlives [`deadline`]; disarmed when the [`Server`] is dropped.
struct Watchdog(Arc<(Mutex<bool>, Condvar)>);

impl Watchdog {
    fn arm(pid: u32, log: Arc<Mutex<String>>) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d2 = done.clone();
        std::thread::spawn(move || {
            let limit = deadline();
            let (m, cv) = &*d2;
            let g = m.lock().unwrap_or_else(|p| p.into_inner());
            let (g, _) = cv
                .wait_timeout_while(g, limit, |done| !*done)
                .unwrap_or_else(|p| p.into_inner());
            if *g {
                return;
            }
            eprintln!(
                "TEST DEADLINE: a test held aic serve (pid {pid}) for more than {} s \
                 (AIC_TEST_DEADLINE_SECS); failing the test binary. The server's log:\n{}",
                limit.as_secs(),
                log.lock().unwrap_or_else(|p| p.into_inner())
            );
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            std::process::exit(101);
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

pub struct Server {
    pub child: Child,
    /// `host:port` the server printed.
    pub addr: String,
    pub log: Arc<Mutex<String>>,
    /// The server's data dir (store, admin token).
    pub dir: std::path::PathBuf,
    /// Removes the data dir at the end when the server made it ([`Server::start`]).
    _owned: Option<tempfile::TempDir>,
    _watchdog: Watchdog,
}

impl Server {
    /// `aic serve` on 127.0.0.1:0 with its own data dir, metrics off unless `args` says
    /// otherwise, and `args` after.
    pub fn start(args: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut s = Self::start_at(data.path(), args);
        s._owned = Some(data);
        s
    }

    /// `aic serve` on a data dir the caller keeps (a restart sees the same store).
    pub fn start_at(dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aic"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if !args.contains(&"--metrics-listen") {
            cmd.args(["--metrics-listen", "off"]);
        }
        let mut child = cmd
            .args(args)
            .env("AIC_DATA_DIR", dir)
            // Settings the test's own environment must not change.
            .env_remove("AIC_ADMIN_TOKEN")
            .env_remove("AIC_BRIDGE_ALLOWED_UIDS")
            .env_remove("AIC_BRIDGE_MAX_CONNS")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aic serve");
        let mut r = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let watchdog = Watchdog::arm(child.id(), log.clone());
        let mut addr = None;
        for _ in 0..50 {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            log.lock().unwrap().push_str(&line);
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = a.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        let addr =
            addr.unwrap_or_else(|| panic!("aic serve did not start:\n{}", log.lock().unwrap()));
        // Keep reading: the server never writes into a full or closed pipe, and tests can look.
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in r.lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self {
            child,
            addr,
            log,
            dir: dir.to_owned(),
            _owned: None,
            _watchdog: watchdog,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (at most `secs`) until the server's log holds `needle` `times` times: log lines
    /// arrive through a pipe and a reader thread, a little after the call that caused them.
    pub fn wait_log(&self, needle: &str, times: usize, secs: u64) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            if self.log().matches(needle).count() >= times {
                return true;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `fut`; past `secs` the test fails with the server's log rather than hanging.
    pub async fn within<T>(&self, secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
        match tokio::time::timeout(Duration::from_secs(secs), fut).await {
            Ok(v) => v,
            Err(_) => panic!(
                "{what}: not done within {secs} s; server log:\n{}",
                self.log()
            ),
        }
    }

    /// Waits for the server to exit by itself (at most `secs`); its exit status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    /// Kills the server; a failing test shows what it said first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("aic serve log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `frames` 20 ms frames of the shipped English speech fixture, 16 kHz s16le.
pub fn speech_frames(frames: usize) -> Vec<Vec<u8>> {
    speech_pcm(frames)
        .chunks(320)
        .map(|c| c.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect()
}

/// The fixture's first `frames` × 320 samples.
pub fn speech_pcm(frames: usize) -> Vec<i16> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech/en_f_confbridge.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    let x: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    assert!(x.len() >= frames * 320, "fixture too short");
    x[..frames * 320].to_vec()
}

/// STOI of `decoded` (16 kHz) against `reference`, both as i16, after removing `delay`
/// samples of codec delay from the decoded side.
pub fn stoi_i16(reference: &[i16], decoded: &[i16], delay: usize) -> f64 {
    let r: Vec<f32> = reference.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let d: Vec<f32> = decoded
        .iter()
        .skip(delay)
        .map(|&s| f32::from(s) / 32768.0)
        .collect();
    let n = r.len().min(d.len());
    aic_codec::metrics::stoi(&r[..n], &d[..n], 16_000).expect("stoi")
}

/// The model card's measured STOI of `codec` at `point` (`"L6"`, `"16k"`, …), from the shipped
/// model's `rate_quality.json`: what a round trip in a test is held to (minus a margin).
pub fn card_stoi(codec: &str, point: &str) -> f64 {
    let p = aic_pipeline::aic::default_model_dir().join("rate_quality.json");
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["codec"] == codec && r["point"] == point)
        .and_then(|r| r["stoi"].as_f64())
        .unwrap_or_else(|| panic!("no {codec} {point} row with STOI in {}", p.display()))
}

/// `x` at `rate` (16 or 48 kHz) as 16 kHz f32: 48 kHz is averaged over 3 samples and
/// decimated (enough for STOI, which looks below 5 kHz).
pub fn to_16k(x: &[i16], rate: u32) -> Vec<f32> {
    let k = (rate / 16_000).max(1) as usize;
    x.chunks_exact(k)
        .map(|c| c.iter().map(|&s| f32::from(s)).sum::<f32>() / (k as f32 * 32768.0))
        .collect()
}

/// Best STOI of `decoded` against `reference` (both 16 kHz) over delays 0..=max_lag samples
/// (step 4): codec delay plus resampler delays, which tests should not have to know exactly.
pub fn best_lag_stoi(reference: &[f32], decoded: &[f32], max_lag: usize) -> (f64, usize) {
    let mut best = (f64::MIN, 0);
    for lag in (0..=max_lag).step_by(4) {
        if lag >= decoded.len() {
            break;
        }
        let d = &decoded[lag..];
        let n = reference.len().min(d.len());
        if n < 16_000 / 2 {
            break;
        }
        let s = aic_codec::metrics::stoi(&reference[..n], &d[..n], 16_000).expect("stoi");
        if s > best.0 {
            best = (s, lag);
        }
    }
    best
}
