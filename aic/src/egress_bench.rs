//! `aic bench egress` (issue #13): what recording costs.
//!
//! * Capacity: `--streams` egresses at once, each recording its own copy of a speech loop in
//!   real time (one feeder pushes every egress its frame each 20 ms, as the media path does),
//!   for `--duration` seconds, per format (Ogg/Opus 32 kbit/s from PCM; the native `.aic` from
//!   the AIC frames, encoded once beforehand: encoding is the pipeline's cost, not the
//!   recorder's). The process' CPU time over the run gives CPU per recording and so recordings
//!   per core; the peak resident memory over the run, less the memory before, per egress;
//!   every egress must have kept up (no frame dropped or filled), else the run says so.
//! * Start latency: `--starts` egresses started one after another, each fed in real time
//!   until it reports `recording`; p50/p99 of that time, start call included.
//! * Storage per hour of speech: the bytes each format wrote per media second, × 3600.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aic_codec::{CodecRegistry, OperatingPoint};
use aic_egress::{Egress, EgressConfig, OutputSpec, State};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct EgressBenchArgs {
    /// Concurrent egresses per format.
    #[arg(long, default_value_t = 32)]
    pub streams: usize,
    /// Seconds each capacity run records (the memory figure wants a long run, e.g. 600).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Formats of the capacity runs (comma-separated: ogg, aic, webm, mp4, wav).
    #[arg(long, default_value = "ogg,aic")]
    pub formats: String,
    /// Egresses started one after another for the start latency.
    #[arg(long, default_value_t = 50)]
    pub starts: usize,
    /// AIC level of the `.aic` recordings.
    #[arg(long, default_value_t = 6)]
    pub level: u8,
    /// Ogg/Opus bitrate, b/s.
    #[arg(long, default_value_t = 32_000)]
    pub bitrate: u32,
    /// Record here (kept); default: a temporary directory, removed after.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the report (JSON) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn speech_loop() -> Result<Vec<f32>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fixtures/speech");
    let mut x = Vec::new();
    for name in [
        "en_f_confbridge.wav",
        "it_m_speed-dial.wav",
        "ru_f_vm-helpexit.wav",
        "en_espeak.wav",
    ] {
        let (pcm, sr) = crate::audio::read_wav(&dir.join(name))?;
        x.extend(aic_codec::resample::resample(&pcm, sr, 16_000)?);
    }
    x.truncate(x.len() / 320 * 320);
    Ok(x)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rfind(')').map(|i| &s[i + 2..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn quantile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Media {
    pcm: Vec<Vec<i16>>,
    packets: Vec<Vec<u8>>,
    info: aic_codec::CodecInfo,
}

fn capacity(a: &EgressBenchArgs, dir: &Path, format: &str, m: &Media) -> Result<Value> {
    let ext = format;
    let frames = (a.duration * 50.0).round() as u64;
    let mut egresses = Vec::with_capacity(a.streams);
    let rss0 = rss_kib();
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    for i in 0..a.streams {
        let loc = dir.join(format!("cap-{format}-{i}.{ext}"));
        let spec =
            OutputSpec::parse(loc.to_str().context("path")?, None)?.with_bitrate(a.bitrate)?;
        let mut cfg = EgressConfig::new(format!("{format}-{i}"), vec![spec]);
        cfg.aic_info = Some(m.info.clone());
        egresses.push(Egress::start(cfg)?);
    }
    let is_aic = format == "aic";
    let mut rss_peak = rss_kib();
    let mut late_ms = 0f64;
    let feed0 = Instant::now();
    for k in 0..frames {
        let due = feed0 + Duration::from_millis(20 * k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late_ms = late_ms.max((now - due).as_secs_f64() * 1000.0);
        }
        for (i, e) in egresses.iter().enumerate() {
            // Each egress at its own place in the loop, so they do not all encode one thing.
            let at = (k as usize + i * 37) % m.pcm.len();
            if is_aic {
                e.push_frame(k, Some(&m.packets[at]), false);
            } else {
                e.push_pcm(k, &m.pcm[at]);
            }
        }
        if k % 50 == 0 {
            rss_peak = rss_peak.max(rss_kib());
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu0;
    let statuses: Vec<_> = egresses.into_iter().map(Egress::stop).collect();
    let mut bytes = 0u64;
    let mut media_ms = 0u64;
    let (mut dropped, mut filled, mut failed) = (0u64, 0u64, 0usize);
    for s in &statuses {
        let o = &s.outputs[0];
        bytes += o.bytes;
        media_ms += o.media_ms;
        dropped += o.dropped + s.queue_dropped;
        filled += o.filled;
        failed += usize::from(matches!(o.state, State::Failed(_)));
    }
    let n = a.streams as f64;
    let cpu_pct = 100.0 * cpu / wall / n;
    let kept_up = dropped == 0 && filled == 0 && failed == 0;
    let r = json!({
        "format": format,
        "streams": a.streams,
        "seconds": wall,
        "cpu_pct_of_core_per_recording": cpu_pct,
        "recordings_per_core": 100.0 / cpu_pct,
        "rss_kib_before": rss0,
        "rss_kib_peak": rss_peak,
        "memory_kib_per_recording": (rss_peak.saturating_sub(rss0)) as f64 / n,
        "bytes_per_media_hour": bytes as f64 / (media_ms as f64 / 1000.0) * 3600.0,
        "kbps_on_disk": bytes as f64 * 8.0 / (media_ms as f64),
        "dropped_frames": dropped,
        "filled_frames": filled,
        "failed": failed,
        "feeder_max_late_ms": late_ms,
        "kept_up": kept_up,
    });
    eprintln!(
        "egress bench: {format}: {} recordings for {wall:.0} s: {cpu_pct:.2} % of a core each ({:.0} per core), {:.0} KiB each, {:.1} MB per hour of speech{}",
        a.streams,
        100.0 / cpu_pct,
        (rss_peak.saturating_sub(rss0)) as f64 / n,
        bytes as f64 / (media_ms as f64 / 1000.0) * 3600.0 / 1e6,
        if kept_up {
            ""
        } else {
            "  (DID NOT KEEP UP: frames dropped/filled)"
        }
    );
    Ok(r)
}

fn start_latency(a: &EgressBenchArgs, dir: &Path, m: &Media) -> Result<Value> {
    let mut lat = Vec::with_capacity(a.starts);
    let mut failed = 0;
    for i in 0..a.starts {
        let loc = dir.join(format!("start-{i}.ogg"));
        let spec = OutputSpec::parse(loc.to_str().context("path")?, None)?;
        let t0 = Instant::now();
        let e = Egress::start(EgressConfig::new(format!("start-{i}"), vec![spec]))?;
        let rx = e.subscribe();
        let mut k = 0u64;
        let got = loop {
            let st = rx.borrow().outputs[0].state.clone();
            match st {
                State::Recording => break Some(t0.elapsed()),
                State::Failed(_) => break None,
                _ => {}
            }
            if t0.elapsed() > Duration::from_secs(6) {
                break None;
            }
            let due = t0 + Duration::from_millis(20 * k);
            if Instant::now() >= due {
                e.push_pcm(k, &m.pcm[k as usize % m.pcm.len()]);
                k += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        match got {
            Some(d) => lat.push(d.as_secs_f64() * 1000.0),
            None => failed += 1,
        }
        e.stop();
    }
    let p50 = quantile(&mut lat, 0.5);
    let p99 = quantile(&mut lat, 0.99);
    eprintln!(
        "egress bench: start latency (Ogg) p50 {p50:.1} ms, p99 {p99:.1} ms over {} starts ({failed} failed)",
        a.starts
    );
    Ok(
        json!({"starts": a.starts, "failed": failed, "p50_ms": p50, "p99_ms": p99,
              "max_ms": lat.iter().copied().fold(0.0, f64::max)}),
    )
}

pub fn run(reg: &CodecRegistry, a: &EgressBenchArgs) -> Result<()> {
    if !(1..=2000).contains(&a.streams)
        || !(1.0..=7200.0).contains(&a.duration)
        || a.starts > 10_000
    {
        bail!("--streams 1..=2000, --duration 1..=7200 s, --starts ≤ 10000");
    }
    let x = speech_loop()?;
    let enc = crate::transcode::encode(reg, "aic", Some(OperatingPoint::Level(a.level)), &x)?;
    let m = Media {
        pcm: x
            .chunks_exact(320)
            .map(|f| {
                f.iter()
                    .map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16)
                    .collect()
            })
            .collect(),
        packets: enc.packets.clone(),
        info: enc.header.info.clone(),
    };
    let (dir, remove) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("aic-egress-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut runs = Vec::new();
    for f in a
        .formats
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        runs.push(capacity(a, &dir, f, &m)?);
    }
    let starts = start_latency(a, &dir, &m)?;
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = json!({
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "aic": {"model": m.info.model_id, "level": a.level},
        "ogg_bitrate_bps": a.bitrate,
        "capacity": runs,
        "start_latency": starts,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
