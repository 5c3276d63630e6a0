//! `aic bench grpc`: concurrent real-time `EncodeStream` sessions against a real `aic serve`
//! process on loopback, next to the same load run in process (`aic bench load`), so the gRPC
//! overhead is a measured ratio.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_pipeline::metrics::Hist;
use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::{EncodeOpen, EncodeRequest, encode_request, encode_response};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::load;

#[derive(Debug, Serialize)]
pub struct GrpcRun {
    pub streams: usize,
    pub frames_sent: u64,
    pub frames_back: u64,
    pub fallbacks: u64,
    /// Client send → client receive, ms.
    pub rtt_ms: load::Percentiles,
    pub realtime: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub grpc: GrpcRun,
    /// The same number of encode streams through the pipeline in process.
    pub in_process: load::Run,
    /// gRPC p99 / in-process p99 frame latency.
    pub p99_ratio: f64,
}

struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(model_dir: &Path, slots: usize) -> Result<(ServerProcess, String)> {
    let exe = std::env::current_exe().context("locating the aic binary")?;
    let mut child = Command::new(exe)
        .arg("--model")
        .arg(model_dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--max-streams",
            &slots.to_string(),
            // The bench measures the codec path on loopback: no keys, and a throwaway store.
            "--auth",
            "off",
            "--meter-flush-secs",
            "3600",
        ])
        .env(
            "AIC_DATA_DIR",
            std::env::temp_dir().join(format!("aic-bench-grpc-{}", std::process::id())),
        )
        .stderr(Stdio::piped())
        .spawn()
        .context("starting aic serve")?;
    let mut line = String::new();
    BufReader::new(child.stderr.take().context("server stderr")?).read_line(&mut line)?;
    let Some(addr) = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
    else {
        bail!("aic serve did not start: {line}");
    };
    Ok((ServerProcess(child), format!("http://{addr}")))
}

async fn session(
    addr: String,
    level: u32,
    frames: Arc<Vec<Vec<u8>>>,
    offset: usize,
    n: usize,
    phase: Duration,
    t0: Instant,
) -> Result<(Vec<Duration>, u64)> {
    let mut c = CodecServiceClient::connect(addr).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let open = EncodeOpen {
        codec: "aic".into(),
        level,
        sample_rate: 16_000,
        latency_budget_ms: 0,
        reference_opus_kbps: 0,
        model_id: String::new(),
        egress_key: String::new(),
    };
    tx.send(EncodeRequest {
        msg: Some(encode_request::Msg::Open(open)),
    })
    .await?;
    let mut resp = c
        .encode_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; n]));
    let stamps = sent_at.clone();
    let pusher = tokio::spawn(async move {
        for k in 0..n {
            tokio::time::sleep_until((t0 + phase + Duration::from_millis(20 * k as u64)).into())
                .await;
            let f = frames[(offset + k) % frames.len()].clone();
            if let Ok(mut s) = stamps.lock() {
                s[k] = Some(Instant::now());
            }
            if tx
                .send(EncodeRequest {
                    msg: Some(encode_request::Msg::PcmS16le(f)),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (mut rtts, mut fallbacks) = (Vec::with_capacity(n), 0u64);
    while let Some(r) = resp.next().await {
        let r = r?;
        let now = Instant::now();
        if let Some(Some(t)) = sent_at
            .lock()
            .ok()
            .and_then(|s| s.get(r.seq as usize).copied())
        {
            rtts.push(now - t);
        }
        fallbacks += u64::from(matches!(
            r.frame,
            Some(encode_response::Frame::OpusFallback(_))
        ));
        if rtts.len() == n {
            break;
        }
    }
    pusher.abort();
    Ok((rtts, fallbacks))
}

pub fn run(model_dir: &Path, opts: &load::Options) -> Result<Report> {
    let n = opts.streams;
    let (_server, addr) = start_server(model_dir, n)?;
    let audio = load::speech(&opts.clips)?;
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        audio
            .chunks_exact(320)
            .map(|f| {
                f.iter()
                    .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
                    .collect()
            })
            .collect(),
    );
    let count = (opts.duration.as_millis() / 20).max(1) as usize;
    eprintln!(
        "  {n} gRPC sessions for {:.0} s ...",
        opts.duration.as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let t0 = Instant::now() + Duration::from_millis(300);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let phase = Duration::from_micros(i as u64 * 20_000 / n as u64);
                tokio::spawn(session(
                    addr.clone(),
                    u32::from(opts.level),
                    frames.clone(),
                    i * 37,
                    count,
                    phase,
                    t0,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.context("session task")??);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let mut hist = Hist::default();
    let (mut back, mut fallbacks) = (0u64, 0u64);
    for (rtts, fb) in &results {
        back += rtts.len() as u64;
        fallbacks += fb;
        for d in rtts {
            hist.record(*d);
        }
    }
    let ms = |v: u64| v as f64 / 1000.0;
    let rtt = load::Percentiles {
        p50: ms(hist.quantile(0.5)),
        p95: ms(hist.quantile(0.95)),
        p99: ms(hist.quantile(0.99)),
        max: ms(hist.max()),
    };
    let sent = (n * count) as u64;
    let grpc = GrpcRun {
        streams: n,
        frames_sent: sent,
        frames_back: back,
        fallbacks,
        realtime: back == sent && fallbacks == 0 && rtt.p99 <= opts.budget.as_secs_f64() * 1000.0,
        rtt_ms: rtt,
    };
    drop(_server);
    eprintln!("  the same {n} streams in process ...");
    let in_process = load::run_in_process(
        model_dir,
        &load::Options {
            mode: load::Mode::Encode,
            ..opts.clone()
        },
    )?;
    let p99_ratio = grpc.rtt_ms.p99 / in_process.latency_ms.p99.max(1e-3);
    Ok(Report {
        grpc,
        in_process,
        p99_ratio,
    })
}

pub fn table(r: &Report) -> String {
    let g = &r.grpc;
    let i = &r.in_process;
    format!(
        "{:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}\n{:>8} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>8}\n{:>8} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>8}\ngRPC / in-process p99 latency: {:.2}\n",
        "path",
        "streams",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "fallback",
        "realtime",
        "gRPC",
        g.streams,
        g.rtt_ms.p50,
        g.rtt_ms.p95,
        g.rtt_ms.p99,
        g.fallbacks,
        if g.realtime { "yes" } else { "no" },
        "process",
        i.streams,
        i.latency_ms.p50,
        i.latency_ms.p95,
        i.latency_ms.p99,
        i.fallbacks,
        if i.realtime { "yes" } else { "no" },
        r.p99_ratio
    )
}
