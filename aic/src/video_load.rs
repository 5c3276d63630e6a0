//! `aic bench load --video`: N published video streams in real time through
//! `aic_video::live` (VP8 as a browser sends it → decode → the receivers' encoder, AV1 libaom
//! realtime by default), the face detector batched across streams; per run: frames in/out,
//! drops, encode and end-to-end latency percentiles, detector batches, hints in time or late,
//! CPU; PASS when every frame came out at full rate and end-to-end p99 ≤ 50 ms. `--sweep`
//! adds streams (1, 2, 4, 6, …) until a run fails.
//!
//! The test picture: the talking-head clip `carphone` (QCIF, `datasets/prepare_video.sh`),
//! centre-cropped to the target's aspect and upscaled (smoother than a camera at that size:
//! easier to encode), or FFmpeg's `testsrc2` when no clip is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_pipeline::metrics::Hist;
use aic_video::live::{self, LiveConfig, LiveReport};
use aic_video::roi::{Detector, DetectorConfig};
use aic_video::{EncoderKind, Yuv420Frame};
use anyhow::{Context, Result, bail};
use serde::Serialize;

/// The real-time bar of issue #14: end-to-end p99 (publisher packet → receivers' packet).
pub const E2E_P99_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Roi {
    /// The face detector (MTCNN, batched across streams) every `--detect-every` frames; its
    /// maps go to the encoders (AV1: the pre-filter).
    Face,
    /// The detector and the hint timing as `face`, but no map goes to the encoders: what the
    /// AI costs without AV1's pre-filter.
    Detect,
    /// No detector: no hints.
    None,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub streams: usize,
    pub sweep: bool,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub duration: Duration,
    pub codec: EncoderKind,
    /// The receivers' target, kbit/s (default: what the browser sends for this size).
    pub kbps: Option<u32>,
    pub av1_speed: Option<u8>,
    pub encoder_threads: u32,
    pub roi: Roi,
    /// 0 = one worker thread per stream.
    pub workers: usize,
    pub clip: Option<PathBuf>,
    pub detect_every: u64,
    pub ai_deadline: Option<Duration>,
    pub detector_nice: i32,
}

/// `360p`, `720p`, `1080p`, or `WxH` (even sides).
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = match s {
        "180p" => (320, 180),
        "360p" => (640, 360),
        "540p" => (960, 540),
        "720p" => (1280, 720),
        "1080p" => (1920, 1080),
        _ => {
            let (w, h) = s
                .split_once(['x', 'X'])
                .with_context(|| format!("--size {s}: expected 360p, 720p or WxH"))?;
            (w.trim().parse()?, h.trim().parse()?)
        }
    };
    if !(16..=3840).contains(&w) || !(16..=2160).contains(&h) || w % 2 != 0 || h % 2 != 0 {
        bail!("--size {w}x{h}: even sides in 16..=3840 x 16..=2160");
    }
    Ok((w, h))
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
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

#[derive(Debug, Clone, Serialize)]
pub struct DetectorRun {
    pub runs: u64,
    pub frames: u64,
    pub mean_batch: f64,
    pub max_batch: u64,
    /// (batch size, runs).
    pub batch_sizes: Vec<(u64, u64)>,
    pub run_ms: Percentiles,
    pub superseded: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub streams: usize,
    pub workers: usize,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub codec: String,
    pub av1_speed: Option<u8>,
    pub encoder_threads: u32,
    pub roi: Roi,
    pub seconds: f64,
    pub frames_in: u64,
    pub frames_encoded: u64,
    pub frames_dropped: u64,
    pub packets_forwarded: u64,
    pub decode_errors: u64,
    pub streams_forwarded: usize,
    /// Frames in / out per stream per second (mean over streams; `fps_out_min`: the slowest).
    pub fps_in: f64,
    pub fps_out: f64,
    pub fps_out_min: f64,
    pub kbps_in: f64,
    pub kbps_out: f64,
    /// Frame handed to the encoder → packet out, ms, all streams.
    pub encode_ms: Percentiles,
    /// Publisher packet arrival → receivers' packet out, ms, all streams.
    pub e2e_ms: Percentiles,
    pub detector: Option<DetectorRun>,
    pub hints_fresh: u64,
    pub hints_pending: u64,
    /// Frames encoded without hints because the detector was late.
    pub hints_late: u64,
    pub frames_with_faces: u64,
    /// This process's CPU time / wall time / cores (100 = the whole machine).
    pub cpu_percent_machine: f64,
    /// The same in cores' worth (100 = one core).
    pub cpu_percent_of_core: f64,
    /// From /proc/stat over the run: the whole machine busy, and the share at nice > 0
    /// (the background training job).
    pub machine_busy_percent: f64,
    pub machine_nice_percent: f64,
    pub pass: bool,
    pub why: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub input: String,
    pub cores: usize,
    pub kbps_in_target: u32,
    pub kbps_out_target: u32,
    pub runs: Vec<Run>,
    pub max_realtime_streams: Option<usize>,
}

fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// (total, busy, nice) jiffies of the machine (`cpu` line of /proc/stat).
fn machine_jiffies() -> (f64, f64, f64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0, 0.0);
    };
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    let idle = get(3) + get(4);
    (total, total - idle, get(1))
}

fn default_clip() -> Option<PathBuf> {
    let dir = std::env::var_os("AIC_VIDEO_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/aic/video")))?;
    let p = dir.join("carphone.y4m");
    p.exists().then_some(p)
}

/// The frames every stream loops over, at `w × h`, and where they came from.
fn media(opts: &Options) -> Result<(Vec<Yuv420Frame>, String)> {
    let clip = opts.clip.clone().or_else(default_clip);
    if let Some(p) = clip {
        let c = aic_video::file::read_video(&p, Some(150))
            .with_context(|| format!("reading {}", p.display()))?;
        let Some(f) = c.frames.first() else {
            bail!("{}: no frames", p.display());
        };
        let what = format!(
            "{} ({}x{}, {} frames) centre-cropped to {}:{} and scaled (bicubic) to {}x{}",
            p.display(),
            f.width,
            f.height,
            c.frames.len(),
            opts.width,
            opts.height,
            opts.width,
            opts.height
        );
        let frames = aic_video::resize::resize_all(&c.frames, opts.width, opts.height)?;
        return Ok((frames, what));
    }
    // No clip: FFmpeg's testsrc2 at the target size (synthetic, no face).
    let tmp = std::env::temp_dir().join(format!("aic-video-load-{}.y4m", std::process::id()));
    let s = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size={}x{}:rate={}",
            opts.width, opts.height, opts.fps
        ))
        .args(["-t", "4", "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe"])
        .arg(&tmp)
        .status()
        .context("no clip, and ffmpeg (for testsrc2) did not run")?;
    if !s.success() {
        bail!("ffmpeg testsrc2 failed");
    }
    let c = aic_video::file::read_video(&tmp, None);
    let _ = std::fs::remove_file(&tmp);
    let c = c?;
    Ok((
        c.frames,
        format!(
            "FFmpeg testsrc2 {}x{} (synthetic, no face)",
            opts.width, opts.height
        ),
    ))
}

fn run_once(opts: &Options, n: usize, packets: &Arc<Vec<Vec<u8>>>, kbps_out: u32) -> Result<Run> {
    let mut cfg = LiveConfig::new(n, opts.codec, opts.fps, kbps_out * 1000);
    cfg.av1_speed = opts.av1_speed;
    cfg.encoder_threads = opts.encoder_threads;
    cfg.apply_maps = opts.roi == Roi::Face;
    cfg.duration = opts.duration;
    cfg.workers = opts.workers;
    cfg.detect_every = opts.detect_every;
    cfg.detector_nice = opts.detector_nice;
    if let Some(d) = opts.ai_deadline {
        cfg.ai_deadline = d;
    }
    let detector: Option<Box<dyn live::Detect>> = match opts.roi {
        Roi::None => None,
        Roi::Face | Roi::Detect => {
            let dir = Detector::default_dir();
            let d = Detector::open(&dir, DetectorConfig::default()).with_context(|| {
                format!(
                    "--roi face: the face detector in {} (ORT_DYLIB_PATH set?)",
                    dir.display()
                )
            })?;
            Some(Box::new(d))
        }
    };
    let cpu0 = cpu_seconds();
    let m0 = machine_jiffies();
    let t = Instant::now();
    let rep = live::run(&cfg, packets.clone(), detector)?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let m1 = machine_jiffies();
    Ok(summarise(opts, n, &rep, packets, cpu, wall, (m0, m1)))
}

fn summarise(
    opts: &Options,
    n: usize,
    rep: &LiveReport,
    packets: &Arc<Vec<Vec<u8>>>,
    cpu: f64,
    wall: f64,
    (m0, m1): ((f64, f64, f64), (f64, f64, f64)),
) -> Run {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let secs = rep.paced.as_secs_f64().max(1e-3);
    let (mut enc, mut e2e) = (Hist::default(), Hist::default());
    let sum = |f: fn(&live::StreamReport) -> u64| rep.streams.iter().map(f).sum::<u64>();
    for s in &rep.streams {
        enc.merge(&s.encode_us);
        e2e.merge(&s.e2e_us);
    }
    let frames_in = sum(|s| s.packets_in);
    let frames_encoded = sum(|s| s.frames_encoded);
    let fps_out_min = rep
        .streams
        .iter()
        .map(|s| s.frames_encoded as f64 / secs)
        .fold(f64::INFINITY, f64::min);
    let bytes_in: u64 = (0..frames_in / n.max(1) as u64)
        .map(|k| packets[(k % packets.len() as u64) as usize].len() as u64)
        .sum();
    let detector = rep.detector.as_ref().map(|d| DetectorRun {
        runs: d.runs,
        frames: d.frames,
        mean_batch: if d.batch.is_empty() {
            0.0
        } else {
            d.batch.mean()
        },
        max_batch: d.batch.max(),
        batch_sizes: d.batch.distribution(),
        run_ms: pct(&d.run_us),
        superseded: d.superseded,
        errors: d.errors,
    });
    let e2e_ms = pct(&e2e);
    let mut why = Vec::new();
    let dropped = sum(|s| s.frames_dropped);
    let forwarded = sum(|s| s.packets_forwarded);
    if frames_encoded < frames_in {
        why.push(format!(
            "{} of {frames_in} frames not encoded ({dropped} dropped, {forwarded} forwarded)",
            frames_in - frames_encoded
        ));
    }
    if e2e_ms.p99 > E2E_P99_MS {
        why.push(format!("e2e p99 {:.1} ms > {E2E_P99_MS} ms", e2e_ms.p99));
    }
    let (dt, db, dn) = (m1.0 - m0.0, m1.1 - m0.1, m1.2 - m0.2);
    let share = |x: f64| if dt > 0.0 { 100.0 * x / dt } else { 0.0 };
    Run {
        streams: n,
        workers: rep.workers,
        width: opts.width,
        height: opts.height,
        fps: opts.fps,
        codec: opts.codec.name().to_string(),
        av1_speed: opts.av1_speed,
        encoder_threads: opts.encoder_threads,
        roi: opts.roi,
        seconds: secs,
        frames_in,
        frames_encoded,
        frames_dropped: dropped,
        packets_forwarded: forwarded,
        decode_errors: sum(|s| s.decode_errors),
        streams_forwarded: rep.streams.iter().filter(|s| s.fallback.is_some()).count(),
        fps_in: frames_in as f64 / n as f64 / secs,
        fps_out: frames_encoded as f64 / n as f64 / secs,
        fps_out_min,
        kbps_in: bytes_in as f64 * 8.0 / 1000.0 / secs,
        kbps_out: sum(|s| s.bytes_out) as f64 * 8.0 / 1000.0 / n as f64 / secs,
        encode_ms: pct(&enc),
        e2e_ms,
        detector,
        hints_fresh: sum(|s| s.hints_fresh),
        hints_pending: sum(|s| s.hints_pending),
        hints_late: sum(|s| s.hints_late),
        frames_with_faces: sum(|s| s.frames_with_faces),
        cpu_percent_machine: 100.0 * cpu / wall / cores as f64,
        cpu_percent_of_core: 100.0 * cpu / wall,
        machine_busy_percent: share(db),
        machine_nice_percent: share(dn),
        pass: why.is_empty(),
        why,
    }
}

pub fn run(opts: &Options) -> Result<Report> {
    let (frames, input) = media(opts)?;
    eprintln!("video load: input {input}");
    let packets = Arc::new(live::publish_vp8(&frames, opts.fps)?);
    let kbps_in = live::browser_vp8_bps(opts.width, opts.height) / 1000;
    let kbps_out = opts.kbps.unwrap_or(kbps_in);
    let counts: Vec<usize> = if opts.sweep {
        std::iter::once(1)
            .chain(std::iter::once(2))
            .chain((4..=opts.streams.max(4)).step_by(2))
            .collect()
    } else {
        vec![opts.streams]
    };
    let mut runs = Vec::new();
    let mut max_ok = None;
    for n in counts {
        let r = run_once(opts, n, &packets, kbps_out)?;
        eprintln!(
            "video load: {n} streams: {} (e2e p99 {:.1} ms, {} of {} frames out)",
            if r.pass { "PASS" } else { "FAIL" },
            r.e2e_ms.p99,
            r.frames_encoded,
            r.frames_in
        );
        let pass = r.pass;
        runs.push(r);
        if pass {
            max_ok = Some(n);
        } else if opts.sweep {
            break;
        }
    }
    Ok(Report {
        input,
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        kbps_in_target: kbps_in,
        kbps_out_target: kbps_out,
        runs,
        max_realtime_streams: max_ok,
    })
}

pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "input: {}", r.input);
    let _ = writeln!(
        s,
        "publisher: VP8 {} kbit/s (libwebrtc's cap for the size); receivers: {} kbit/s; {} cores",
        r.kbps_in_target, r.kbps_out_target, r.cores
    );
    let _ = writeln!(
        s,
        "{:>3} {:>3} {:>9} {:>5} {:>3} {:>3} {:>6} {:>6} {:>6} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>6} {:>9} {:>5} {:>5} {:>5} {:>5}  result",
        "n",
        "wrk",
        "size",
        "codec",
        "spd",
        "thr",
        "roi",
        "fpsIn",
        "fpsOut",
        "drop",
        "fwd",
        "kbOut",
        "enc50",
        "enc99",
        "e2e50",
        "e2e95",
        "e2e99",
        "batch",
        "det50",
        "det99",
        "hint f/p/l",
        "faces",
        "cpu%",
        "mach",
        "nice"
    );
    for x in &r.runs {
        let (batch, d50, d99) =
            x.detector
                .as_ref()
                .map_or(("-".to_string(), "-".to_string(), "-".to_string()), |d| {
                    (
                        format!("{:.2}", d.mean_batch),
                        format!("{:.1}", d.run_ms.p50),
                        format!("{:.1}", d.run_ms.p99),
                    )
                });
        let _ = writeln!(
            s,
            "{:>3} {:>3} {:>9} {:>5} {:>3} {:>3} {:>6} {:>6.2} {:>6.2} {:>5} {:>5} {:>6.0} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>5} {:>6} {:>6} {:>9} {:>5} {:>5.0} {:>5.0} {:>5.0}  {}",
            x.streams,
            x.workers,
            format!("{}x{}", x.width, x.height),
            x.codec,
            x.av1_speed.map_or("-".to_string(), |v| v.to_string()),
            x.encoder_threads,
            format!("{:?}", x.roi).to_lowercase(),
            x.fps_in,
            x.fps_out_min,
            x.frames_dropped,
            x.packets_forwarded,
            x.kbps_out,
            x.encode_ms.p50,
            x.encode_ms.p99,
            x.e2e_ms.p50,
            x.e2e_ms.p95,
            x.e2e_ms.p99,
            batch,
            d50,
            d99,
            format!("{}/{}/{}", x.hints_fresh, x.hints_pending, x.hints_late),
            x.frames_with_faces,
            x.cpu_percent_machine,
            x.machine_busy_percent,
            x.machine_nice_percent,
            if x.pass {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", x.why.join("; "))
            }
        );
    }
    if let Some(m) = r.max_realtime_streams {
        let _ = writeln!(s, "held in real time: {m} streams");
    }
    let _ = writeln!(
        s,
        "note: fpsOut = the slowest stream's encoded frames per second; enc = frame handed to the \
         encoder -> packet out; e2e = publisher packet arrival -> receivers' packet out (ms, all \
         streams); batch = mean frames per detector run, det = ms per run; hint f/p/l = frames \
         encoded with fresh hints / before the first detection / without hints because the \
         detector was late; faces = frames whose hints held a face; cpu% = this process, % of the \
         machine; mach / nice = the machine busy / at nice > 0 (background jobs), % of all cores; \
         PASS = every frame out at full rate and e2e p99 <= {E2E_P99_MS} ms"
    );
    s
}
