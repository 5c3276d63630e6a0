//! `aic bench load`: many real-time streams through the real batched pipeline.
//!
//! Each stream is real speech (the shipped clips, looped, every stream at its own offset),
//! pushed every 20 ms at its own phase, like independent participants. Reported: frame latency
//! percentiles (arrival → output), batch sizes, fallbacks, drops, CPU use; a sweep for the
//! largest stream count this machine holds in real time; and how much of the raw model
//! throughput the pipeline keeps (its own overhead) next to what batching buys.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use aic_codec::codec::Encoder;
use aic_codec::resample::resample;
use aic_pipeline::aic::AicEncoder;
use aic_pipeline::driver::{Pipeline, StreamHandle, StreamSender};
use aic_pipeline::engine::{EngineConfig, Output, Payload, StreamConfig};
use aic_pipeline::metrics::Hist;
use aic_pipeline::model::{AicModel, Graph};
use anyhow::{Context, Result, bail};
use serde::Serialize;

const FRAME_MS: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PCM → AIC streams only.
    Encode,
    /// AIC → PCM streams only.
    Decode,
    /// N encode streams and N decode streams (a transcoding SFU does both).
    Both,
    /// N transcode streams: PCM → encoder → RVQ → AIC frame → decoder → PCM in one stream (the
    /// SFU bridge's path), outputs recycled. Latency is measured at the caller, push → output.
    Transcode,
    /// N encode streams each feeding a decode stream through a relay thread per stream, as the
    /// bridge did before transcode streams. Latency at the caller, PCM push → decoded output.
    Chain,
}

impl Mode {
    /// Transcode and chain runs are held in real time while at most 1 % of the frames miss
    /// their deadline (Opus fallback or concealment); the others need zero fallbacks.
    fn paired(self) -> bool {
        matches!(self, Mode::Transcode | Mode::Chain)
    }
}

/// Largest share of frames that may fall back in a held transcode or chain run.
const PAIRED_MAX_FALLBACK: f64 = 0.01;

#[derive(Debug, Clone)]
pub struct Options {
    pub streams: usize,
    pub duration: Duration,
    pub level: u8,
    pub mode: Mode,
    pub budget: Duration,
    pub sweep: bool,
    pub clips: PathBuf,
    /// Pipeline worker threads, each with its own model sessions.
    pub workers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The engine's overload window for these runs: `AIC_SHED_WINDOW_MS` (0 = no shedding, for
/// an A/B against it), else the engine's default.
fn shed_window() -> Duration {
    std::env::var("AIC_SHED_WINDOW_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(EngineConfig::default().shed_window, Duration::from_millis)
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub streams: usize,
    pub mode: Mode,
    pub engine_streams: usize,
    pub seconds: f64,
    pub frames_pushed: u64,
    pub frames_out: u64,
    pub fallbacks: u64,
    pub late: u64,
    pub dropped: u64,
    pub fallback_rate: f64,
    /// Times the engine shed a stream under sustained overload, and the frames shed streams
    /// sent as Opus (part of `fallbacks`).
    pub streams_shed: u64,
    pub shed_frames: u64,
    /// Arrival → output, ms.
    pub latency_ms: Percentiles,
    pub queue_wait_ms: Percentiles,
    pub model_call_ms: Percentiles,
    /// (batch size, model calls).
    pub batch_sizes: Vec<(u64, u64)>,
    pub mean_batch: f64,
    /// Process CPU time / wall time (100 = one full core).
    pub cpu_percent: f64,
    /// `cpu_percent` / streams: % of one core per stream (a transcode or chain stream counts
    /// once; for `both` an encode + decode pair counts once).
    pub cpu_percent_per_stream: f64,
    pub realtime: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub batch: usize,
    /// Streams' frames per second through encoder graph + RVQ + decoder graph, no pipeline.
    pub raw_frames_per_s: f64,
    /// Per-frame cost as a real-time factor (encode + decode of one 20 ms frame / 20 ms).
    pub rtf_per_stream: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Efficiency {
    pub batch: usize,
    pub pipeline_frames_per_s: f64,
    pub raw_frames_per_s: f64,
    /// Pipeline throughput / raw model throughput at the same batch size.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub cpu: String,
    pub workers: usize,
    pub budget_ms: f64,
    pub level: u8,
    pub run: Option<Run>,
    pub sweep: Vec<Run>,
    pub max_realtime_streams: Option<usize>,
    /// CPUs this process may use (`available_parallelism`).
    pub cores: usize,
    /// `max_realtime_streams` / `cores`.
    pub streams_per_core: Option<f64>,
    pub batching: Vec<Throughput>,
    pub efficiency: Vec<Efficiency>,
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (fields 14, 15 of /proc/self/stat).
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(h: &Hist) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50: ms(h.quantile(0.5)),
        p95: ms(h.quantile(0.95)),
        p99: ms(h.quantile(0.99)),
        max: ms(h.max()),
    }
}

/// All shipped clips at 16 kHz, concatenated: the material every stream loops over.
pub fn speech(dir: &Path) -> Result<Vec<f32>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        let (pcm, sr) = crate::audio::read_wav(&f)?;
        all.extend(resample(&pcm, sr, 16_000)?);
    }
    if all.len() < 16_000 {
        bail!("{} holds less than a second of speech", dir.display());
    }
    Ok(all)
}

struct Source {
    handle: StreamHandle,
    offset: usize,
    /// Encode streams: PCM frames; decode streams: AIC frames.
    aic: Option<Arc<Vec<Vec<u8>>>>,
}

fn run_once(
    models: &[Arc<AicModel>],
    opts: &Options,
    n: usize,
    audio: &Arc<Vec<f32>>,
    coded: &Arc<Vec<Vec<u8>>>,
) -> Result<Run> {
    if opts.mode.paired() {
        return run_paired(models, opts, n, audio);
    }
    let (enc_n, dec_n) = match opts.mode {
        Mode::Encode => (n, 0),
        Mode::Decode => (0, n),
        Mode::Both => (n, n),
        Mode::Transcode | Mode::Chain => unreachable!("paired modes returned above"),
    };
    let total = enc_n + dec_n;
    let cfg = EngineConfig {
        max_batch: total.div_ceil(models.len().max(1)).max(1),
        shed_window: shed_window(),
        ..Default::default()
    };
    let p = Pipeline::start_workers(models.to_vec(), cfg);
    let frames_in_clip = audio.len() / 320;
    let mut sources = Vec::with_capacity(total);
    for i in 0..total {
        let encode = i < enc_n;
        let mut sc = if encode {
            StreamConfig::encode(opts.level)
        } else {
            StreamConfig::decode()
        };
        sc.budget = opts.budget;
        let handle = p
            .open(sc)
            .map_err(|e| anyhow::anyhow!("opening stream {i}: {e}"))?;
        sources.push(Source {
            handle,
            offset: (i * 37) % frames_in_clip,
            aic: (!encode).then(|| coded.clone()),
        });
    }
    let frames = (opts.duration.as_millis() as u64 / FRAME_MS).max(1) as usize;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now() + Duration::from_millis(20);
    // Streams push at evenly spread phases within each 20 ms period, like independent callers.
    let phase = |i: usize| Duration::from_micros(i as u64 * FRAME_MS * 1000 / total as u64);
    let mut pushed = 0u64;
    for k in 0..frames {
        let tick = t0 + Duration::from_millis(k as u64 * FRAME_MS);
        for (i, s) in sources.iter().enumerate() {
            let at = tick + phase(i);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let f = (s.offset + k) % frames_in_clip;
            let r = match &s.aic {
                None => s.handle.push_pcm(audio[f * 320..(f + 1) * 320].to_vec()),
                Some(c) => s.handle.push_aic(Some(c[f % c.len()].clone())),
            };
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            pushed += 1;
        }
    }
    // Collect: every frame produces one output, unless the engine dropped it (counted); stop
    // as soon as every stream has all of its outputs, so the CPU share is not diluted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0u64;
    let mut fallbacks = 0u64;
    let mut missing = 0u64;
    for s in &sources {
        let mut n = 0usize;
        while n < frames {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.handle.outputs.recv_timeout(left) {
                Ok(o) => {
                    n += 1;
                    got += 1;
                    fallbacks += u64::from(matches!(
                        o.payload,
                        Payload::OpusFallback(_) | Payload::Concealed(_)
                    ));
                }
                Err(_) => {
                    missing += (frames - n) as u64; // dropped by the engine (or late past 5 s)
                    break;
                }
            }
        }
    }
    let _ = missing;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let m = p.metrics().context("pipeline stopped")?;
    drop(sources);
    p.shutdown();
    let lat = pct(&m.e2e_latency);
    let realtime =
        m.fallbacks == 0 && m.dropped == 0 && lat.p99 <= opts.budget.as_secs_f64() * 1000.0;
    Ok(Run {
        streams: n,
        mode: opts.mode,
        engine_streams: total,
        seconds: wall,
        frames_pushed: pushed,
        frames_out: got,
        fallbacks: fallbacks.max(m.fallbacks),
        late: m.late,
        dropped: m.dropped,
        streams_shed: m.streams_shed,
        shed_frames: m.shed_frames,
        fallback_rate: m.fallbacks as f64 / pushed.max(1) as f64,
        latency_ms: lat,
        queue_wait_ms: pct(&m.queue_wait),
        model_call_ms: pct(&m.model_time),
        batch_sizes: m.batch_size.distribution(),
        mean_batch: m.batch_size.mean(),
        cpu_percent: 100.0 * cpu / wall,
        cpu_percent_per_stream: 100.0 * cpu / wall / n as f64,
        realtime,
    })
}

/// Frames' push instants, matched to outputs by sequence number (outputs of encode and decode
/// streams come in completion order; a fallback may overtake its predecessor).
struct Arrivals<T> {
    rx: mpsc::Receiver<(u64, T)>,
    waiting: VecDeque<(u64, T)>,
}

impl<T> Arrivals<T> {
    fn new(rx: mpsc::Receiver<(u64, T)>) -> Self {
        Self {
            rx,
            waiting: VecDeque::new(),
        }
    }
    fn take(&mut self, seq: u64) -> Option<T> {
        loop {
            if let Some(i) = self.waiting.iter().position(|a| a.0 == seq) {
                return self.waiting.remove(i).map(|a| a.1);
            }
            self.waiting.push_back(self.rx.recv().ok()?);
        }
    }
}

/// When a frame was pushed, and whether it already fell back on the way (chain: the encode
/// stream sent it as Opus).
type Stamp = (Instant, bool);

/// What one stream's collector saw at the end of the path.
#[derive(Default)]
struct Collected {
    outputs: u64,
    fallbacks: u64,
    latency: Hist,
}

/// Longest wait for a stream's next output before its remaining frames count as dropped.
const OUTPUT_WAIT: Duration = Duration::from_secs(3);

/// Transcode or chain streams: one pacing thread pushes PCM, one thread per stream takes the
/// outputs as they come (chain: one more per stream relays encode outputs into the decode
/// stream). Latency is push → final output at the caller, so both paths pay their channel hops.
fn run_paired(
    models: &[Arc<AicModel>],
    opts: &Options,
    n: usize,
    audio: &Arc<Vec<f32>>,
) -> Result<Run> {
    let chain = opts.mode == Mode::Chain;
    let engine_streams = if chain { 2 * n } else { n };
    let cfg = EngineConfig {
        max_batch: engine_streams.div_ceil(models.len().max(1)).max(1),
        shed_window: shed_window(),
        ..Default::default()
    };
    let p = Pipeline::start_workers(models.to_vec(), cfg);
    let frames = (opts.duration.as_millis() as u64 / FRAME_MS).max(1) as usize;
    let frames_in_clip = audio.len() / 320;
    let open = |sc: StreamConfig| -> Result<StreamHandle> {
        p.open(StreamConfig {
            budget: opts.budget,
            ..sc
        })
        .map_err(|e| anyhow::anyhow!("opening a stream: {e}"))
    };
    // Per stream: the pushing half and the channel of push instants (to the relay or collector).
    let mut inputs = Vec::with_capacity(n);
    let mut collectors = Vec::with_capacity(n);
    for _ in 0..n {
        let (at_tx, at_rx) = mpsc::channel::<(u64, Stamp)>();
        if chain {
            let (enc_tx, enc_out) = open(StreamConfig::encode(opts.level))?.split();
            let (dec_tx, dec_out) = open(StreamConfig::decode())?.split();
            let (meta_tx, meta_rx) = mpsc::channel::<(u64, Stamp)>();
            std::thread::Builder::new()
                .name("load-relay".into())
                .spawn(move || relay(enc_out, dec_tx, Arrivals::new(at_rx), meta_tx, frames))?;
            collectors.push(
                std::thread::Builder::new()
                    .name("load-out".into())
                    .spawn(move || collect(dec_out, None, Arrivals::new(meta_rx), frames))?,
            );
            inputs.push((Arc::new(enc_tx), at_tx));
        } else {
            let (tx, rx) = open(StreamConfig::transcode(opts.level))?.split();
            let tx = Arc::new(tx);
            let (tx2, meta) = (tx.clone(), Arrivals::new(at_rx));
            collectors.push(
                std::thread::Builder::new()
                    .name("load-out".into())
                    .spawn(move || collect(rx, Some(tx2), meta, frames))?,
            );
            inputs.push((tx, at_tx));
        }
    }
    let cpu0 = cpu_seconds();
    let t0 = Instant::now() + Duration::from_millis(20);
    let phase = |i: usize| Duration::from_micros(i as u64 * FRAME_MS * 1000 / n as u64);
    let mut pushed = 0u64;
    for k in 0..frames {
        let tick = t0 + Duration::from_millis(k as u64 * FRAME_MS);
        for (i, (tx, at_tx)) in inputs.iter().enumerate() {
            let at = tick + phase(i);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let f = ((i * 37) % frames_in_clip + k) % frames_in_clip;
            let _ = at_tx.send((k as u64, (Instant::now(), false)));
            tx.push_pcm(audio[f * 320..(f + 1) * 320].to_vec())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            pushed += 1;
        }
    }
    drop(inputs); // the chain relays' push-instant channels end with them
    let mut seen = Collected::default();
    for c in collectors {
        let c = c
            .join()
            .map_err(|_| anyhow::anyhow!("a collector panicked"))?;
        seen.outputs += c.outputs;
        seen.fallbacks += c.fallbacks;
        seen.latency.merge(&c.latency);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let m = p.metrics().context("pipeline stopped")?;
    p.shutdown();
    let fallback_rate = seen.fallbacks as f64 / pushed.max(1) as f64;
    Ok(Run {
        streams: n,
        mode: opts.mode,
        engine_streams,
        seconds: wall,
        frames_pushed: pushed,
        frames_out: seen.outputs,
        fallbacks: seen.fallbacks,
        late: m.late,
        dropped: m.dropped,
        streams_shed: m.streams_shed,
        shed_frames: m.shed_frames,
        fallback_rate,
        latency_ms: pct(&seen.latency),
        queue_wait_ms: pct(&m.queue_wait),
        model_call_ms: pct(&m.model_time),
        batch_sizes: m.batch_size.distribution(),
        mean_batch: m.batch_size.mean(),
        cpu_percent: 100.0 * cpu / wall,
        cpu_percent_per_stream: 100.0 * cpu / wall / n as f64,
        realtime: m.dropped == 0 && seen.outputs == pushed && fallback_rate <= PAIRED_MAX_FALLBACK,
    })
}

/// Chain mode: encode outputs into the decode stream, as the bridge's relay thread did. An Opus
/// fallback frame reaches the AIC decoder as a lost frame (concealed), keeping the two streams
/// one-to-one; the collector hears of it through `meta`.
fn relay(
    enc_out: mpsc::Receiver<Output>,
    dec_tx: StreamSender,
    mut arrivals: Arrivals<Stamp>,
    meta: mpsc::Sender<(u64, Stamp)>,
    frames: usize,
) {
    for dec_seq in 0..frames as u64 {
        let Ok(o) = enc_out.recv_timeout(OUTPUT_WAIT) else {
            return;
        };
        let Some((at, _)) = arrivals.take(o.seq) else {
            return;
        };
        let (fallback, frame) = match o.payload {
            Payload::Aic(b) => (false, Some(b)),
            _ => (true, None),
        };
        if dec_tx.push_aic(frame).is_err() || meta.send((dec_seq, (at, fallback))).is_err() {
            return;
        }
    }
}

/// Takes one stream's final outputs: latency from the push, fallbacks (an Opus fallback or a
/// concealed frame on the way), and hands transcode outputs back for reuse.
fn collect(
    rx: mpsc::Receiver<Output>,
    recycle: Option<Arc<StreamSender>>,
    mut arrivals: Arrivals<Stamp>,
    frames: usize,
) -> Collected {
    let mut c = Collected::default();
    while c.outputs < frames as u64 {
        let Ok(o) = rx.recv_timeout(OUTPUT_WAIT) else {
            break; // dropped by the engine (counted there)
        };
        let now = Instant::now();
        let Some((at, fell_back)) = arrivals.take(o.seq) else {
            break;
        };
        c.outputs += 1;
        c.latency.record(now - at);
        c.fallbacks += u64::from(fell_back || o.payload.is_fallback());
        if let Some(tx) = &recycle {
            tx.recycle(o);
        }
    }
    c
}

/// Raw throughput of the model at one batch size: encoder graph + batched RVQ search (level
/// 12) + codeword sums + decoder graph, called back to back with no pipeline around them. The
/// RVQ search is part of the model (it runs outside the graph only so it can become a GPU
/// kernel), so it is counted here, not as pipeline overhead. Frames per second of one direction.
fn raw_throughput(model: &AicModel, batch: usize, min_time: Duration) -> Result<f64> {
    let m = &model.manifest;
    let (f, d, k) = (m.frame_samples, m.latent_dim, m.num_codebooks);
    let pcm: Vec<f32> = (0..batch * f)
        .map(|i| 0.1 * (i as f32 * 0.01).sin())
        .collect();
    let mut es = vec![0.0; batch * model.state_size(Graph::Encoder)];
    let mut ds = vec![0.0; batch * model.state_size(Graph::Decoder)];
    let (mut z, mut zq, mut y) = (
        vec![0.0; batch * d],
        vec![0.0; batch * d],
        vec![0.0; batch * f],
    );
    let mut ix = vec![0u16; batch * k];
    let mut scratch = aic_kernels::rvq::BatchScratch::default();
    let mut step = || -> Result<()> {
        model.step(Graph::Encoder, batch, &pcm, &mut es, &mut z)?;
        model
            .codebooks
            .encode_batch(&z, batch, k, &mut ix, &mut scratch)?;
        for b in 0..batch {
            model
                .codebooks
                .decode(&ix[b * k..(b + 1) * k], &mut zq[b * d..(b + 1) * d])?;
        }
        model.step(Graph::Decoder, batch, &zq, &mut ds, &mut y)?;
        Ok(())
    };
    step()?; // warm-up
    let t0 = Instant::now();
    let mut calls = 0u64;
    while t0.elapsed() < min_time || calls < 3 {
        step()?;
        calls += 1;
    }
    Ok(calls as f64 * batch as f64 / t0.elapsed().as_secs_f64())
}

/// The pipeline saturated next to raw calls at the same batch size. Every stream keeps two
/// frames queued (it pushes frame k+1 before collecting frame k), so the worker never waits for
/// the feeding thread and each model call carries all `n` streams of a direction.
fn efficiency(
    model: &Arc<AicModel>,
    n: usize,
    audio: &[f32],
    coded: &[Vec<u8>],
    rounds: usize,
) -> Result<Efficiency> {
    let p = Pipeline::start(
        model.clone(),
        EngineConfig {
            max_batch: 2 * n,
            ..Default::default()
        },
    );
    let enc: Vec<StreamHandle> = (0..n)
        .map(|_| p.open(StreamConfig::encode(12)))
        .collect::<Result<_, _>>()?;
    let dec: Vec<StreamHandle> = (0..n)
        .map(|_| p.open(StreamConfig::decode()))
        .collect::<Result<_, _>>()?;
    let frames = audio.len() / 320;
    let push = |k: usize| -> Result<()> {
        for (i, s) in enc.iter().enumerate() {
            let f = (i * 37 + k) % frames;
            s.push_pcm(audio[f * 320..(f + 1) * 320].to_vec())?;
        }
        for (i, s) in dec.iter().enumerate() {
            s.push_aic(Some(coded[(i * 37 + k) % coded.len()].clone()))?;
        }
        Ok(())
    };
    let collect = || -> Result<()> {
        for s in enc.iter().chain(&dec) {
            s.outputs
                .recv_timeout(Duration::from_secs(5))
                .context("pipeline output")?;
        }
        Ok(())
    };
    push(0)?;
    push(1)?;
    collect()?; // warm-up round
    let t0 = Instant::now();
    for k in 2..rounds + 2 {
        push(k)?;
        collect()?;
    }
    let pipeline = (rounds * 2 * n) as f64 / t0.elapsed().as_secs_f64();
    collect()?;
    let m = p.metrics().context("pipeline stopped")?;
    drop((enc, dec));
    p.shutdown();
    if m.fallbacks > 0 {
        eprintln!(
            "  note: {} fallbacks during the saturation run (deadlines of queued frames)",
            m.fallbacks
        );
    }
    // One raw "frame" per direction: encoder and decoder frames both count, as in the pipeline.
    let raw = 2.0 * raw_throughput(model, n, Duration::from_secs(2))?;
    Ok(Efficiency {
        batch: n,
        pipeline_frames_per_s: pipeline,
        raw_frames_per_s: raw,
        ratio: pipeline / raw,
    })
}

/// One paced run of `opts.streams` streams (no sweep, no throughput tables).
/// The model loaded once per worker (each worker needs its own sessions).
fn load_models(model_dir: &Path, workers: usize) -> Result<Vec<Arc<AicModel>>> {
    (0..workers.max(1))
        .map(|_| Ok(Arc::new(AicModel::load(model_dir, 1)?)))
        .collect()
}

/// The speech the streams loop over, and the same speech as AIC frames (for decode streams).
type Material = (Arc<Vec<f32>>, Arc<Vec<Vec<u8>>>);

fn material(model: &Arc<AicModel>, opts: &Options) -> Result<Material> {
    let audio = Arc::new(speech(&opts.clips)?);
    let mut enc = AicEncoder::new(model.clone(), opts.level)?;
    let mut buf = Vec::new();
    let mut coded = Vec::new();
    for f in audio.chunks_exact(320) {
        enc.encode_frame(f, &mut buf)?;
        coded.push(buf.clone());
    }
    Ok((audio, Arc::new(coded)))
}

pub fn run_in_process(model_dir: &Path, opts: &Options) -> Result<Run> {
    let models = load_models(model_dir, opts.workers)?;
    let model = models[0].clone();
    let (audio, coded) = material(&model, opts)?;
    run_once(&models, opts, opts.streams, &audio, &coded)
}

pub fn run(model_dir: &Path, opts: &Options) -> Result<Report> {
    let models = load_models(model_dir, opts.workers)?;
    let model = models[0].clone();
    let (audio, coded) = material(&model, opts)?;
    let mut report = Report {
        model: format!(
            "{} {}",
            model.manifest.model_id, model.manifest.model_version
        ),
        cpu: crate::bench::cpu_name(),
        workers: models.len(),
        budget_ms: opts.budget.as_secs_f64() * 1000.0,
        level: opts.level,
        run: None,
        sweep: Vec::new(),
        max_realtime_streams: None,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        streams_per_core: None,
        batching: Vec::new(),
        efficiency: Vec::new(),
    };
    if opts.sweep {
        // Double until a run fails, then bisect; every trial is bounded in streams and time.
        let trial = Options {
            duration: opts.duration.min(Duration::from_secs(4)),
            ..opts.clone()
        };
        let (mut good, mut bad) = (0usize, None::<usize>);
        let mut n = 2usize;
        while n <= 512 {
            eprintln!("  sweep: {n} streams ...");
            let r = run_once(&models, &trial, n, &audio, &coded)?;
            let ok = r.realtime;
            report.sweep.push(r);
            if ok {
                good = n;
                n *= 2;
            } else {
                bad = Some(n);
                break;
            }
        }
        if let Some(mut hi) = bad {
            while hi - good > 1 && hi - good > good / 8 {
                let mid = (good + hi) / 2;
                eprintln!("  sweep: {mid} streams ...");
                let r = run_once(&models, &trial, mid, &audio, &coded)?;
                let ok = r.realtime;
                report.sweep.push(r);
                if ok { good = mid } else { hi = mid }
            }
        }
        report.max_realtime_streams = (good > 0).then_some(good);
        report.streams_per_core = report
            .max_realtime_streams
            .map(|n| n as f64 / report.cores as f64);
    } else {
        eprintln!(
            "  {} streams for {:.0} s ...",
            opts.streams,
            opts.duration.as_secs_f64()
        );
        report.run = Some(run_once(&models, opts, opts.streams, &audio, &coded)?);
    }
    eprintln!("  raw model throughput by batch size ...");
    let top = report.max_realtime_streams.unwrap_or(opts.streams).max(1);
    let mut b = 1;
    while b <= top.next_power_of_two().min(64) {
        let fps = raw_throughput(&model, b, Duration::from_millis(800))?;
        report.batching.push(Throughput {
            batch: b,
            raw_frames_per_s: fps,
            rtf_per_stream: 50.0 / fps,
        });
        b *= 2;
    }
    if opts.mode.paired() {
        // The saturation run measures encode + decode streams, the same whatever the mode; a
        // paired sweep is about the per-stream cost of its own path.
        return Ok(report);
    }
    eprintln!("  pipeline overhead (saturated pipeline vs raw calls) ...");
    for n in [1usize, top.min(32)] {
        if report.efficiency.iter().any(|e| e.batch == n) {
            continue;
        }
        report
            .efficiency
            .push(efficiency(&model, n, &audio, &coded, 60)?);
    }
    Ok(report)
}

pub fn table(r: &Report) -> String {
    let mut s = format!(
        "model {} | CPU {} | budget {} ms | level L{}\n",
        r.model, r.cpu, r.budget_ms, r.level
    );
    let runs: Vec<&Run> = r.run.iter().chain(&r.sweep).collect();
    if !runs.is_empty() {
        s += &format!(
            "{:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5} {:>7} {:>7} {:>6} {:>8} {:>8}\n",
            "streams",
            "mode",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "fallback",
            "shed",
            "drops",
            "batch",
            "CPU%",
            "CPU%/str",
            "realtime"
        );
        for x in &runs {
            s += &format!(
                "{:>7} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}% {:>5} {:>7} {:>7.1} {:>6.0} {:>8.2} {:>8}\n",
                x.streams,
                format!("{:?}", x.mode).to_lowercase(),
                x.latency_ms.p50,
                x.latency_ms.p95,
                x.latency_ms.p99,
                x.latency_ms.max,
                x.fallback_rate * 100.0,
                x.streams_shed,
                x.dropped,
                x.mean_batch,
                x.cpu_percent,
                x.cpu_percent_per_stream,
                if x.realtime { "yes" } else { "no" }
            );
        }
    }
    let paired = runs.iter().any(|x| x.mode.paired());
    if paired {
        s += "transcode/chain: latency is PCM push → final output at the caller; held in real \
              time = no drop and ≤ 1 % fallbacks (deadlines the engine gave up on)\n";
    }
    if let Some(n) = r.max_realtime_streams {
        let rule = if paired {
            "≤ 1 % fallback, no drop"
        } else {
            "p99 ≤ budget, no fallback, no drop"
        };
        s += &format!(
            "largest stream count held in real time ({rule}): {n} = {:.1} per core ({} cores)\n",
            n as f64 / r.cores as f64,
            r.cores
        );
    }
    s += "raw model throughput (encoder + RVQ L12 + decoder, one ONNX Runtime thread):\n";
    for t in &r.batching {
        s += &format!(
            "  batch {:>3}: {:>8.0} frames/s  = RTF {:.4} per stream\n",
            t.batch, t.raw_frames_per_s, t.rtf_per_stream
        );
    }
    if let (Some(a), Some(b)) = (
        r.batching.first(),
        r.batching
            .iter()
            .max_by(|a, b| a.raw_frames_per_s.total_cmp(&b.raw_frames_per_s)),
    ) {
        s += &format!(
            "  batching buys x{:.2} (batch {} vs batch 1)\n",
            b.raw_frames_per_s / a.raw_frames_per_s,
            b.batch
        );
    }
    for e in &r.efficiency {
        s += &format!(
            "pipeline efficiency at batch {}: {:.0} / {:.0} frames/s = {:.3}\n",
            e.batch, e.pipeline_frames_per_s, e.raw_frames_per_s, e.ratio
        );
    }
    s
}
