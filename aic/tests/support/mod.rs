//! Shared by the end-to-end tests: start the real `aic serve`, read its address, keep its log,
//! and run a test body under a deadline that fails with that log instead of hanging.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    /// `host:port` the server printed.
    pub addr: String,
    pub log: Arc<Mutex<String>>,
    /// The server's data dir (store, admin token).
    pub dir: std::path::PathBuf,
    /// Removes the data dir at the end when the server made it ([`Server::start`]).
    _owned: Option<tempfile::TempDir>,
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
        let mut seen = String::new();
        let mut addr = None;
        for _ in 0..50 {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = a.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("aic serve did not start:\n{seen}"));
        // Keep reading: the server never writes into a full or closed pipe, and tests can look.
        let log = Arc::new(Mutex::new(seen));
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
