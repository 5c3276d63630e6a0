//! `aic bench soak`: a reliability run against a running `aic serve` (started by
//! `scripts/soak.sh`, never in CI): `sessions` clients, each looping until the deadline over
//! real-time EncodeStream sessions of random length that end normally, vanish mid-stream, or
//! send a malformed frame (which must end the session with INVALID_ARGUMENT). It samples the
//! server's RSS, and reports what it sent so the script can compare with the metered usage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::{EncodeOpen, EncodeRequest, encode_request};
use anyhow::{Context, Result};
use serde::Serialize;
use tokio_stream::StreamExt;

pub struct Options {
    /// `http://host:port` of the server.
    pub url: String,
    pub key: Option<String>,
    pub sessions: usize,
    pub duration: Duration,
    /// The server's pid, for RSS samples from /proc (None: not sampled).
    pub server_pid: Option<u32>,
    /// 16 kHz speech to send, looped.
    pub speech: Vec<i16>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub sessions_opened: u64,
    pub sessions_completed: u64,
    pub sessions_vanished: u64,
    pub sessions_garbage: u64,
    /// Sessions that ended in a way the client did not cause (a bug or overload).
    pub unexpected_errors: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_back: u64,
    /// (seconds since start, server RSS in KiB).
    pub rss_kib: Vec<(u64, u64)>,
    /// RSS growth after the warm-up (first 20 % of the run), as a fraction.
    pub rss_growth_after_warmup: Option<f64>,
    pub first_unexpected: Option<String>,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    completed: AtomicU64,
    vanished: AtomicU64,
    garbage: AtomicU64,
    unexpected: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_back: AtomicU64,
}

/// A small deterministic generator per client (no dependency for a few random choices).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

enum Kind {
    Normal,
    Vanish,
    Garbage,
}

async fn session(
    c: &mut CodecServiceClient<tonic::transport::Channel>,
    key: Option<&str>,
    speech: &[i16],
    rng: &mut Rng,
    k: &Counters,
    first_err: &std::sync::Mutex<Option<String>>,
) {
    let kind = match rng.below(100) {
        0..80 => Kind::Normal,
        80..90 => Kind::Vanish,
        _ => Kind::Garbage,
    };
    let frames = 25 + rng.below(225) as usize;
    let cut_at = 1 + rng.below(frames as u64 - 1) as usize;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let open = EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level: 1 + rng.below(12) as u32,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: String::new(),
            egress_key: String::new(),
        })),
    };
    let _ = tx.send(open).await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(key) = key
        && let Ok(v) = format!("Bearer {key}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let mut resp = match c.encode_stream(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            k.unexpected.fetch_add(1, Ordering::Relaxed);
            first_err
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| format!("open: {e}"));
            return;
        }
    };
    k.opened.fetch_add(1, Ordering::Relaxed);
    let start = rng.below((speech.len() / 320) as u64) as usize;
    let reader = tokio::spawn(async move {
        let mut back = 0u64;
        let mut end = None;
        while let Some(r) = resp.next().await {
            match r {
                Ok(_) => back += 1,
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        (back, end)
    });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0..frames {
        tick.tick().await;
        if matches!(kind, Kind::Vanish) && i == cut_at {
            // Gone without a goodbye: both directions dropped.
            tokio::time::sleep(Duration::from_millis(100)).await;
            reader.abort();
            k.vanished.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if matches!(kind, Kind::Garbage) && i == cut_at {
            let _ = tx
                .send(EncodeRequest {
                    msg: Some(encode_request::Msg::PcmS16le(vec![0x55; 17])),
                })
                .await;
            break;
        }
        let f = (start + i) % (speech.len() / 320);
        let bytes: Vec<u8> = speech[f * 320..(f + 1) * 320]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        k.bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        k.frames_sent.fetch_add(1, Ordering::Relaxed);
        if tx
            .send(EncodeRequest {
                msg: Some(encode_request::Msg::PcmS16le(bytes)),
            })
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let (back, end) = reader.await.unwrap_or((0, None));
    k.frames_back.fetch_add(back, Ordering::Relaxed);
    match (kind, end) {
        (Kind::Garbage, Some(e)) if e.code() == tonic::Code::InvalidArgument => {
            k.garbage.fetch_add(1, Ordering::Relaxed);
        }
        (Kind::Normal, None) => {
            k.completed.fetch_add(1, Ordering::Relaxed);
        }
        (_, e) => {
            k.unexpected.fetch_add(1, Ordering::Relaxed);
            first_err
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| format!("session end: {e:?}"));
        }
    }
}

pub fn run(o: Options) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ch = tonic::transport::Channel::from_shared(o.url.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", o.url))?;
        let k = Arc::new(Counters::default());
        let first_err = Arc::new(std::sync::Mutex::new(None));
        let speech = Arc::new(o.speech);
        let deadline = Instant::now() + o.duration;
        let mut tasks = Vec::new();
        for i in 0..o.sessions {
            // Half the clients share one connection, half reconnect every session.
            let (ch, k, e, s, key) = (
                ch.clone(),
                k.clone(),
                first_err.clone(),
                speech.clone(),
                o.key.clone(),
            );
            let url = o.url.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x2545_F491));
                while Instant::now() < deadline {
                    let mut c = if i % 2 == 0 {
                        CodecServiceClient::new(ch.clone())
                    } else {
                        match CodecServiceClient::connect(url.clone()).await {
                            Ok(c) => c,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        }
                    };
                    session(&mut c, key.as_deref(), &s, &mut rng, &k, &e).await;
                }
            }));
        }
        let t0 = Instant::now();
        let mut rss = Vec::new();
        while Instant::now() < deadline {
            if let Some(kib) = o.server_pid.and_then(rss_kib) {
                rss.push((t0.elapsed().as_secs(), kib));
            }
            tokio::time::sleep(Duration::from_secs(5).min(o.duration)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(kib) = o.server_pid.and_then(rss_kib) {
            rss.push((t0.elapsed().as_secs(), kib));
        }
        let warm = o.duration.as_secs() / 5;
        let growth = rss
            .iter()
            .find(|(t, _)| *t >= warm)
            .zip(rss.last())
            .map(|(a, b)| (b.1 as f64 - a.1 as f64) / a.1 as f64);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let first_unexpected = first_err.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Report {
            sessions_opened: g(&k.opened),
            sessions_completed: g(&k.completed),
            sessions_vanished: g(&k.vanished),
            sessions_garbage: g(&k.garbage),
            unexpected_errors: g(&k.unexpected),
            frames_sent: g(&k.frames_sent),
            bytes_sent: g(&k.bytes_sent),
            frames_back: g(&k.frames_back),
            rss_kib: rss,
            rss_growth_after_warmup: growth,
            first_unexpected,
        })
    })
}
