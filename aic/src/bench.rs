//! `aic bench`: every codec and operating point side by side on the user's speech.
//!
//! For each point: bitrate from the real encoded bytes, STOI / SI-SDR / log-mel distance in
//! Rust, PESQ-WB and ViSQOL through an optional Python evaluator, encode and decode real-time
//! factors on this CPU, algorithmic latency. Output: a table, a JSON report, an SVG plot.

use std::path::{Path, PathBuf};
use std::process::Command;

use aic_codec::metrics;
use aic_codec::resample::resample;
use aic_codec::{CodecRegistry, OperatingPoint};
use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::transcode;

/// Metrics are computed on 16 kHz wideband speech, the band every compared codec covers.
pub const EVAL_RATE: u32 = 16_000;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub codec: String,
    pub point: String,
    pub bitrate_kbps: f64,
    pub stoi: Option<f64>,
    pub si_sdr_db: Option<f64>,
    pub log_mel_distance: Option<f64>,
    pub pesq_wb: Option<f64>,
    pub visqol: Option<f64>,
    pub encode_rtf: f64,
    pub decode_rtf: f64,
    pub algorithmic_latency_ms: f64,
    pub concealed_frames: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub aic_version: &'static str,
    pub cpu: String,
    pub eval_sample_rate: u32,
    pub inputs: Vec<InputInfo>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct InputInfo {
    pub path: String,
    pub seconds: f64,
}

pub struct Options {
    pub inputs: Vec<PathBuf>,
    pub codecs: Option<String>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub external: bool,
}

/// `opus`, `opus@12k`, `aic@L3`, comma separated. A bare name means the codec's default ladder.
pub fn parse_specs(
    reg: &CodecRegistry,
    spec: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, OperatingPoint)>> {
    let mut out = Vec::new();
    let Some(spec) = spec else {
        for d in reg.iter() {
            match d.factory.availability() {
                Ok(()) => out.extend(d.ladder.iter().map(|p| (d.name.clone(), *p))),
                Err(why) => notes.push(format!("{} skipped: {why}", d.name)),
            }
        }
        return Ok(out);
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, point) = match item.split_once('@') {
            Some((n, p)) => (n, Some(parse_point(p)?)),
            None => (item, None),
        };
        let d = reg.get(name)?;
        if let Err(why) = d.factory.availability() {
            bail!("codec {name} is not available here: {why}");
        }
        match point {
            Some(p) => out.push((name.to_owned(), p)),
            None => out.extend(d.ladder.iter().map(|p| (name.to_owned(), *p))),
        }
    }
    if out.is_empty() {
        bail!("no codecs selected");
    }
    Ok(out)
}

/// `12k`, `12000`, `L3`.
pub fn parse_point(s: &str) -> Result<OperatingPoint> {
    let s = s.trim();
    if let Some(l) = s.strip_prefix(['L', 'l']) {
        let v: u8 = l
            .parse()
            .with_context(|| format!("bad level {s:?} (expected e.g. L3)"))?;
        return Ok(OperatingPoint::Level(v));
    }
    if let Some(k) = s.strip_suffix(['k', 'K']) {
        let v: f64 = k
            .parse()
            .with_context(|| format!("bad bitrate {s:?} (expected e.g. 12k)"))?;
        return Ok(OperatingPoint::BitrateBps((v * 1000.0).round() as u32));
    }
    let v: u32 = s
        .parse()
        .with_context(|| format!("bad operating point {s:?} (expected 12k, 12000 or L3)"))?;
    Ok(OperatingPoint::BitrateBps(v))
}

fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")))
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("{} holds no .wav files", p.display());
            }
            files.extend(v);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            bail!("{}: no such file or directory", p.display());
        }
    }
    Ok(files)
}

struct Clip {
    pcm16k: Vec<f32>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

fn mean_opt(v: &[Option<f64>]) -> Option<f64> {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    (!xs.is_empty() && xs.len() == v.len()).then(|| mean(xs.into_iter()))
}

pub fn run(reg: &CodecRegistry, opts: &Options) -> Result<Report> {
    let mut notes = Vec::new();
    let specs = parse_specs(reg, opts.codecs.as_deref(), &mut notes)?;
    let files = collect_inputs(&opts.inputs)?;
    let mut clips = Vec::new();
    let mut inputs = Vec::new();
    for f in &files {
        let (pcm, sr) = crate::audio::read_wav(f)?;
        if pcm.len() < sr as usize / 2 {
            bail!(
                "{}: {:.2} s is too short to measure (need at least 0.5 s)",
                f.display(),
                pcm.len() as f64 / f64::from(sr)
            );
        }
        let pcm16k = resample(&pcm, sr, EVAL_RATE)?;
        inputs.push(InputInfo {
            path: f.display().to_string(),
            seconds: pcm16k.len() as f64 / f64::from(EVAL_RATE),
        });
        clips.push(Clip { pcm16k });
    }
    let evaluator = if opts.external {
        Evaluator::find(&mut notes)
    } else {
        None
    };
    if !opts.external {
        notes.push("PESQ-WB/ViSQOL not computed (--no-external)".into());
    }
    let total_secs: f64 = inputs.iter().map(|i| i.seconds).sum();
    let mut rows = Vec::new();
    for (codec, point) in &specs {
        let d = reg.get(codec)?;
        let mut per = Vec::new();
        let (mut enc_t, mut dec_t, mut bits, mut secs, mut concealed) = (0.0, 0.0, 0.0, 0.0, 0);
        let mut latency = 0.0;
        for clip in &clips {
            let input = resample(&clip.pcm16k, EVAL_RATE, d.sample_rate)?;
            let e = transcode::encode(reg, codec, Some(*point), &input)
                .with_context(|| format!("{codec}@{point}"))?;
            latency = e.header.info.algorithmic_latency_ms();
            let coded_secs = e.packets.len() as f64 * e.header.info.frame_samples as f64
                / f64::from(d.sample_rate);
            bits += transcode::bitrate_bps(&e) * coded_secs;
            secs += coded_secs;
            enc_t += e.encode_time.as_secs_f64();
            let dec = transcode::decode(
                reg,
                &e.header.info,
                e.header.total_samples,
                e.packets.iter().map(|p| Ok(Some(p.as_slice()))),
                false,
            )?;
            dec_t += dec.decode_time.as_secs_f64();
            concealed += dec.concealed;
            let out = resample(&dec.pcm, dec.sample_rate, EVAL_RATE)?;
            let n = out.len().min(clip.pcm16k.len());
            let (r, o) = (&clip.pcm16k[..n], &out[..n]);
            let stoi = metrics::stoi(r, o, EVAL_RATE).ok();
            let ext = evaluator
                .as_ref()
                .map(|ev| ev.score(r, o))
                .unwrap_or_default();
            per.push((
                stoi,
                metrics::si_sdr(r, o).ok(),
                metrics::log_mel_distance(r, o, EVAL_RATE).ok(),
                ext,
            ));
        }
        let stoi: Vec<Option<f64>> = per.iter().map(|p| p.0).collect();
        let pesq: Vec<Option<f64>> = per.iter().map(|p| p.3.0).collect();
        let visqol: Vec<Option<f64>> = per.iter().map(|p| p.3.1).collect();
        let row = Row {
            codec: codec.clone(),
            point: point.to_string(),
            bitrate_kbps: bits / secs / 1000.0,
            stoi: mean_opt(&stoi),
            si_sdr_db: mean_opt(&per.iter().map(|p| p.1).collect::<Vec<_>>()),
            log_mel_distance: mean_opt(&per.iter().map(|p| p.2).collect::<Vec<_>>()),
            pesq_wb: mean_opt(&pesq),
            visqol: mean_opt(&visqol),
            encode_rtf: enc_t / total_secs,
            decode_rtf: dec_t / total_secs,
            algorithmic_latency_ms: latency,
            concealed_frames: concealed,
        };
        eprintln!(
            "  {:<10} {:>6}  {:>6.2} kbps",
            row.codec, row.point, row.bitrate_kbps
        );
        rows.push(row);
    }
    if rows.iter().any(|r| r.stoi.is_none()) {
        notes.push(
            "STOI needs ≥ 30 non-silent 25.6 ms frames per clip; shorter clips show '-'".into(),
        );
    }
    Ok(Report {
        aic_version: env!("CARGO_PKG_VERSION"),
        cpu: cpu_name(),
        eval_sample_rate: EVAL_RATE,
        inputs,
        rows,
        notes,
    })
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
        + &format!(
            " ({} logical CPUs)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        )
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

pub fn table(rep: &Report) -> String {
    let mut s = format!(
        "{:<10} {:>6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8} {:>8} {:>7}\n",
        "codec",
        "point",
        "kbps",
        "STOI",
        "SI-SDR",
        "mel",
        "PESQ",
        "ViSQOL",
        "enc RTF",
        "dec RTF",
        "lat ms"
    );
    for r in &rep.rows {
        s += &format!(
            "{:<10} {:>6} {:>7.2} {:>6} {:>7} {:>6} {:>6} {:>6} {:>8.4} {:>8.4} {:>7.1}\n",
            r.codec,
            r.point,
            r.bitrate_kbps,
            opt(r.stoi, 3),
            opt(r.si_sdr_db, 2),
            opt(r.log_mel_distance, 3),
            opt(r.pesq_wb, 2),
            opt(r.visqol, 2),
            r.encode_rtf,
            r.decode_rtf,
            r.algorithmic_latency_ms
        );
    }
    for n in &rep.notes {
        s += &format!("note: {n}\n");
    }
    s
}

/// The optional Python evaluator (`scripts/eval_quality.py`) for PESQ-WB and ViSQOL.
struct Evaluator {
    python: PathBuf,
    script: PathBuf,
    dir: PathBuf,
}

impl Evaluator {
    fn find(notes: &mut Vec<String>) -> Option<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = std::env::var_os("AIC_EVAL_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("scripts/eval_quality.py"));
        let venv = root.join(".venv/bin/python");
        let python = std::env::var_os("AIC_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if venv.exists() {
                    venv
                } else {
                    PathBuf::from("python3")
                }
            });
        if !script.exists() {
            notes.push(format!(
                "PESQ-WB/ViSQOL not computed: evaluator {} not found",
                script.display()
            ));
            return None;
        }
        let dir = std::env::temp_dir().join(format!("aic-bench-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            notes.push(format!("PESQ-WB/ViSQOL not computed: {e}"));
            return None;
        }
        let ev = Self {
            python,
            script,
            dir,
        };
        // Probe once with a short tone so a missing package is reported once, clearly.
        let probe: Vec<f32> = (0..32_000)
            .map(|i| 0.3 * (i as f32 * 0.07).sin() * (i as f32 * 0.0005).sin())
            .collect();
        match ev.run(&probe, &probe) {
            Ok(v) => {
                if let Some(errs) = v
                    .get("errors")
                    .and_then(|e| e.as_object())
                    .filter(|e| !e.is_empty())
                {
                    for (k, why) in errs {
                        notes.push(format!(
                            "{k} not computed: {}",
                            why.as_str().unwrap_or("unavailable")
                        ));
                    }
                }
                Some(ev)
            }
            Err(e) => {
                notes.push(format!(
                    "PESQ-WB/ViSQOL not computed: evaluator failed: {e:#}"
                ));
                None
            }
        }
    }

    fn run(&self, r: &[f32], o: &[f32]) -> Result<serde_json::Value> {
        let (rp, op) = (self.dir.join("ref.wav"), self.dir.join("deg.wav"));
        crate::audio::write_wav(&rp, r, EVAL_RATE)?;
        crate::audio::write_wav(&op, o, EVAL_RATE)?;
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg(&rp)
            .arg(&op)
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !out.status.success() {
            bail!(
                "{}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("exit status non-zero")
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim()).context("evaluator printed no JSON")
    }

    fn score(&self, r: &[f32], o: &[f32]) -> (Option<f64>, Option<f64>) {
        match self.run(r, o) {
            Ok(v) => (
                v.get("pesq_wb").and_then(|x| x.as_f64()),
                v.get("visqol").and_then(|x| x.as_f64()),
            ),
            Err(_) => (None, None),
        }
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
