//! `aic bench opens`: session-open rate against a running `aic serve` (driven by
//! `scripts/store-load.sh`, never in CI). Open loop: session `i` starts at `start + i / rate`
//! whether or not earlier ones finished, so a slow server shows up as latency and errors, not as
//! a politely lower rate. Each session sends `Open` and one 20 ms frame, then ends; keys are
//! taken round-robin from a list, so with many keys and a short key-cache TTL nearly every open
//! asks the control store.
//!
//! Measured per session: **open latency** (request sent → response headers; the server sends
//! them after authentication, admission and the first message, i.e. the whole gate) and **first
//! frame** (→ the first encoded frame back). Bounded: `rate × duration ≤ 100 000` sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::{EncodeOpen, EncodeRequest, encode_request};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio_stream::StreamExt;

pub struct Options {
    pub url: String,
    pub keys: Vec<String>,
    /// Session opens per second.
    pub rate: f64,
    pub duration: Duration,
    /// HTTP/2 connections the sessions are spread over.
    pub connections: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Some(Self {
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            max_ms: *v.last().expect("not empty"),
        })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rate_asked: f64,
    /// Opens started per second of the run (the schedule's rate unless the client fell behind).
    pub rate_started: f64,
    pub sessions: u64,
    pub ok: u64,
    /// Count by gRPC status code name, for the sessions that failed.
    pub errors: std::collections::BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub open: Option<Percentiles>,
    pub first_frame: Option<Percentiles>,
}

enum Outcome {
    Ok { open_ms: f64, first_ms: f64 },
    Err(tonic::Status),
}

async fn one(mut c: CodecServiceClient<tonic::transport::Channel>, key: String) -> Outcome {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let open = EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level: 6,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: String::new(),
            egress_key: String::new(),
        })),
    };
    let frame = EncodeRequest {
        msg: Some(encode_request::Msg::PcmS16le(vec![0; 640])),
    };
    let _ = tx.send(open).await;
    let _ = tx.send(frame).await;
    drop(tx);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Ok(v) = format!("Bearer {key}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    let t0 = Instant::now();
    let mut resp = match c.encode_stream(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Outcome::Err(e),
    };
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut first_ms = None;
    while let Some(r) = resp.next().await {
        match r {
            Ok(_) => {
                first_ms.get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => return Outcome::Err(e),
        }
    }
    match first_ms {
        Some(first_ms) => Outcome::Ok { open_ms, first_ms },
        None => Outcome::Err(tonic::Status::unknown("the stream ended without a frame")),
    }
}

pub fn run(o: Options) -> Result<Report> {
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    if o.keys.is_empty() || !(0.1..=5_000.0).contains(&o.rate) || !(1..=100_000).contains(&total) {
        bail!("need keys, a rate in 0.1..=5000/s and rate × duration in 1..=100000 sessions");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut chans = Vec::new();
        for _ in 0..o.connections.clamp(1, 64) {
            chans.push(
                tonic::transport::Channel::from_shared(o.url.clone())?
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {}", o.url))?,
            );
        }
        let keys = Arc::new(o.keys);
        let start = Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / o.rate);
            tokio::time::sleep_until(at.into()).await;
            let c = CodecServiceClient::new(chans[i as usize % chans.len()].clone());
            let key = keys[i as usize % keys.len()].clone();
            tasks.push(tokio::spawn(one(c, key)));
        }
        let started_over = start.elapsed().as_secs_f64();
        let mut rep = Report {
            rate_asked: o.rate,
            rate_started: total as f64 / started_over.max(1e-9),
            sessions: total,
            ..Report::default()
        };
        let (mut open, mut first) = (Vec::new(), Vec::new());
        for t in tasks {
            match t.await {
                Ok(Outcome::Ok { open_ms, first_ms }) => {
                    rep.ok += 1;
                    open.push(open_ms);
                    first.push(first_ms);
                }
                Ok(Outcome::Err(e)) => {
                    *rep.errors.entry(format!("{:?}", e.code())).or_default() += 1;
                    rep.first_error
                        .get_or_insert_with(|| aic_control::excerpt(e.message(), 200));
                }
                Err(e) => {
                    *rep.errors.entry("task".into()).or_default() += 1;
                    rep.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        rep.open = Percentiles::of(open);
        rep.first_frame = Percentiles::of(first);
        Ok(rep)
    })
}
