//! `aic bench`: every codec and operating point side by side on the user's speech.
//!
//! For each point: bitrate from the real encoded bytes, STOI / SI-SDR / log-mel distance in
//! Rust, PESQ-WB and ViSQOL through an optional Python evaluator, encode and decode real-time
//! factors on this CPU, algorithmic latency. Output: a table, a JSON report, an SVG plot.

use std::path::{Path, PathBuf};
use std::process::Command;

use aic_codec::bitstream::container::PacketReader;
use aic_codec::metrics;
use aic_codec::resample::resample;
use aic_codec::{CodecRegistry, OperatingPoint};
use anyhow::{Context, Result, bail};

use serde::Serialize;

use crate::{external, transcode};

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
    /// DNSMOS P.835 overall MOS of the decoded audio alone (non-intrusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnsmos_ovrl: Option<f64>,
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

/// One row of the bench: a registered codec at a point, or an external command-line baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Codec(String, OperatingPoint),
    /// codec2 at this many bits per second (Debian's `c2enc`/`c2dec`).
    Codec2(u32),
}

/// `opus`, `opus@12k`, `aic@L3`, `codec2@3200`, comma separated. A bare name means the codec's
/// default ladder.
pub fn parse_specs(
    reg: &CodecRegistry,
    spec: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    let Some(spec) = spec else {
        for d in reg.iter() {
            match d.factory.availability() {
                Ok(()) => out.extend(d.ladder.iter().map(|p| Target::Codec(d.name.clone(), *p))),
                Err(why) => notes.push(format!("{} skipped: {why}", d.name)),
            }
        }
        match external::codec2_available() {
            Ok(()) => out.extend(external::CODEC2_MODES.iter().map(|&m| Target::Codec2(m))),
            Err(why) => notes.push(format!("codec2 skipped: {why}")),
        }
        return Ok(out);
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, point) = match item.split_once('@') {
            Some((n, p)) => (n, Some(parse_point(p)?)),
            None => (item, None),
        };
        if name == "codec2" {
            external::codec2_available()
                .map_err(|why| anyhow::anyhow!("codec2 is not available here: {why}"))?;
            match point {
                None => out.extend(external::CODEC2_MODES.iter().map(|&m| Target::Codec2(m))),
                Some(OperatingPoint::BitrateBps(b)) if external::CODEC2_MODES.contains(&b) => {
                    out.push(Target::Codec2(b))
                }
                Some(p) => bail!("codec2 runs at {:?} bps, not {p}", external::CODEC2_MODES),
            }
            continue;
        }
        let d = reg.get(name)?;
        if let Err(why) = d.factory.availability() {
            bail!("codec {name} is not available here: {why}");
        }
        match point {
            Some(p) => out.push(Target::Codec(name.to_owned(), p)),
            None => out.extend(d.ladder.iter().map(|p| Target::Codec(name.to_owned(), *p))),
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

pub(crate) fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
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

/// Mean over the clips where the metric is defined. Whether STOI is defined depends on the
/// reference alone (enough non-silent frames), so every codec is averaged over the same clips.
fn mean_opt(v: &[Option<f64>]) -> Option<f64> {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    (!xs.is_empty()).then(|| mean(xs.into_iter()))
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
    let mut evaluator = if opts.external {
        Evaluator::find(&mut notes)
    } else {
        None
    };
    if !opts.external {
        notes.push("PESQ-WB/ViSQOL not computed (--no-external)".into());
    }
    let total_secs: f64 = inputs.iter().map(|i| i.seconds).sum();
    let mut rows = Vec::new();
    for target in &specs {
        let mut per = Vec::new();
        let (mut enc_t, mut dec_t, mut bits, mut secs, mut concealed) = (0.0, 0.0, 0.0, 0.0, 0);
        let mut latency = 0.0;
        let (codec, point) = match target {
            Target::Codec(c, p) => (c.clone(), p.to_string()),
            Target::Codec2(m) => (
                "codec2".to_owned(),
                OperatingPoint::BitrateBps(*m).to_string(),
            ),
        };
        for (ci, clip) in clips.iter().enumerate() {
            let out = match target {
                Target::Codec(codec, point) => {
                    let d = reg.get(codec)?;
                    let input = resample(&clip.pcm16k, EVAL_RATE, d.sample_rate)?;
                    let e = transcode::encode(reg, codec, Some(*point), &input)
                        .with_context(|| format!("{codec}@{point}"))?;
                    latency = e.header.info.algorithmic_latency_ms();
                    let coded_secs = e.packets.len() as f64 * e.header.info.frame_samples as f64
                        / f64::from(d.sample_rate);
                    bits += transcode::bitrate_bps(&e) * coded_secs;
                    secs += coded_secs;
                    enc_t += e.encode_time.as_secs_f64();
                    // Through the container and the same bounded loop as `aic decode`.
                    let file = transcode::to_container(&e)?;
                    let mut packets = PacketReader::new(file.as_slice())?;
                    let dec = transcode::decode(reg, &mut packets, false)?;
                    dec_t += dec.decode_time.as_secs_f64();
                    concealed += dec.concealed;
                    resample(&dec.pcm, dec.sample_rate, EVAL_RATE)?
                }
                Target::Codec2(mode) => {
                    let r = external::codec2(&clip.pcm16k, *mode)?;
                    bits += r.bits as f64;
                    secs += r.coded_secs;
                    enc_t += r.encode_secs;
                    dec_t += r.decode_secs;
                    // One 20 ms frame plus the delay the alignment found.
                    latency = 20.0 + r.delay_ms;
                    r.pcm16k
                }
            };
            let n = out.len().min(clip.pcm16k.len());
            let (r, o) = (&clip.pcm16k[..n], &out[..n]);
            let stoi = metrics::stoi(r, o, EVAL_RATE).ok();
            if let Some(ev) = evaluator.as_mut() {
                ev.add(rows.len(), ci, r, o)?;
            }
            per.push((
                stoi,
                metrics::si_sdr(r, o).ok(),
                metrics::log_mel_distance(r, o, EVAL_RATE).ok(),
            ));
        }
        let stoi: Vec<Option<f64>> = per.iter().map(|p| p.0).collect();
        let row = Row {
            codec,
            point,
            bitrate_kbps: bits / secs / 1000.0,
            stoi: mean_opt(&stoi),
            si_sdr_db: mean_opt(&per.iter().map(|p| p.1).collect::<Vec<_>>()),
            log_mel_distance: mean_opt(&per.iter().map(|p| p.2).collect::<Vec<_>>()),
            pesq_wb: None,
            visqol: None,
            dnsmos_ovrl: None,
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
    if let Some(ev) = evaluator {
        eprintln!(
            "  scoring PESQ-WB and ViSQOL ({} pairs) ...",
            ev.pairs.len()
        );
        ev.finish(&mut rows, &mut notes);
    }
    let short = clips
        .iter()
        .filter(|c| metrics::stoi(&c.pcm16k, &c.pcm16k, EVAL_RATE).is_err())
        .count();
    if short > 0 {
        notes.push(format!("{short} of {} clips are too short for STOI (< 30 non-silent frames): STOI averages the others", clips.len()));
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

pub fn cpu_name() -> String {
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
        "{:<10} {:>6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>7}\n",
        "codec",
        "point",
        "kbps",
        "STOI",
        "SI-SDR",
        "mel",
        "PESQ",
        "ViSQOL",
        "DNSMOS",
        "enc RTF",
        "dec RTF",
        "lat ms"
    );
    for r in &rep.rows {
        s += &format!(
            "{:<10} {:>6} {:>7.2} {:>6} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8.4} {:>8.4} {:>7.1}\n",
            r.codec,
            r.point,
            r.bitrate_kbps,
            opt(r.stoi, 3),
            opt(r.si_sdr_db, 2),
            opt(r.log_mel_distance, 3),
            opt(r.pesq_wb, 2),
            opt(r.visqol, 2),
            opt(r.dnsmos_ovrl, 2),
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

/// The optional Python evaluator (`scripts/eval_quality.py`) for PESQ-WB and ViSQOL. Pairs are
/// written as WAV files during the bench and scored in one run of the script at the end, so its
/// start-up (loading ViSQOL's model) is paid once. `aic bench loss` uses it too, asking for
/// PLCMOS and DNSMOS only.
pub(crate) struct Evaluator {
    /// The venv's Python when there is one (`scripts/setup.sh` makes it), else `python3`.
    pub(crate) python: PathBuf,
    script: PathBuf,
    dir: PathBuf,
    /// (row, clip, reference path, degraded path)
    pairs: Vec<(usize, usize, PathBuf, PathBuf)>,
}

impl Evaluator {
    pub(crate) fn find(notes: &mut Vec<String>) -> Option<Self> {
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
        Some(Self {
            python,
            script,
            dir,
            pairs: Vec::new(),
        })
    }

    pub(crate) fn add(&mut self, row: usize, clip: usize, r: &[f32], o: &[f32]) -> Result<()> {
        let rp = self.dir.join(format!("ref-{clip}.wav"));
        if !rp.exists() {
            crate::audio::write_wav(&rp, r, EVAL_RATE)?;
        }
        let op = self.dir.join(format!("deg-{row}-{clip}.wav"));
        crate::audio::write_wav(&op, o, EVAL_RATE)?;
        self.pairs.push((row, clip, rp, op));
        Ok(())
    }

    /// One JSON object per pair, in order. `metrics`: the evaluator's `--metrics` (default:
    /// PESQ-WB, ViSQOL, DNSMOS).
    pub(crate) fn run(&self, metrics: Option<&str>) -> Result<Vec<serde_json::Value>> {
        let list = self.dir.join("pairs.tsv");
        let text: String = self
            .pairs
            .iter()
            .map(|(_, _, r, o)| format!("{}\t{}\n", r.display(), o.display()))
            .collect();
        std::fs::write(&list, text)?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script);
        if let Some(m) = metrics {
            cmd.arg("--metrics").arg(m);
        }
        let out = cmd
            .arg("--pairs")
            .arg(&list)
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
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l.trim()))
            .collect::<Result<_, _>>()
            .context("evaluator printed something other than JSON lines")?;
        if lines.len() != self.pairs.len() {
            bail!(
                "evaluator scored {} of {} pairs",
                lines.len(),
                self.pairs.len()
            );
        }
        Ok(lines)
    }

    /// Scores every pair and fills the rows' PESQ-WB/ViSQOL means (a row gets a value only when
    /// every clip was scored).
    fn finish(self, rows: &mut [Row], notes: &mut Vec<String>) {
        let results = match self.run(None) {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!(
                    "PESQ-WB/ViSQOL/DNSMOS not computed: evaluator failed: {e:#}"
                ));
                return;
            }
        };
        let mut reasons = std::collections::BTreeMap::new();
        let mut per_row: Vec<[Vec<Option<f64>>; 3]> =
            vec![[Vec::new(), Vec::new(), Vec::new()]; rows.len()];
        for ((row, _, _, _), v) in self.pairs.iter().zip(&results) {
            per_row[*row][0].push(v.get("pesq_wb").and_then(|x| x.as_f64()));
            per_row[*row][1].push(v.get("visqol").and_then(|x| x.as_f64()));
            per_row[*row][2].push(v.get("dnsmos_ovrl").and_then(|x| x.as_f64()));
            if let Some(errs) = v.get("errors").and_then(|e| e.as_object()) {
                for (k, why) in errs {
                    reasons
                        .entry(k.clone())
                        .or_insert_with(|| why.as_str().unwrap_or("failed").to_owned());
                }
            }
        }
        for (r, [p, v, d]) in rows.iter_mut().zip(per_row) {
            r.pesq_wb = mean_opt(&p);
            r.visqol = mean_opt(&v);
            r.dnsmos_ovrl = mean_opt(&d);
        }
        for (k, why) in reasons {
            notes.push(format!("{k} not computed for some clips: {why}"));
        }
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
