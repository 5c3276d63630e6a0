//! `aic video encode|decode|bench`: video files through the `aic-video` encoders and decoders,
//! and the rate–quality bench (table, JSON, SVG) that sets AV1 (with and without a
//! region-of-interest map) beside what browsers send (VP8 realtime) and x264.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use aic_video::file::{Clip, read_video, write_packets, write_y4m};
use aic_video::metrics::{ms_ssim_y, psnr_y, psnr_y_where};
use aic_video::{
    EncodedPacket, EncoderConfig, EncoderKind, FrameHints, QualityMap, VideoDecoder, VideoEncoder,
    Yuv420Frame,
};
use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use serde::Serialize;

#[derive(clap::Subcommand)]
pub enum VideoCmd {
    /// Encode a clip (Y4M, MP4, WebM, IVF, …) into IVF (AV1, VP9, VP8) or raw H.264 (x264).
    Encode {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// av1 (libaom realtime), av1-svt, vp9, vp8, x264.
        #[arg(long, default_value = "av1")]
        codec: String,
        /// Target bitrate, kbit/s.
        #[arg(long, default_value_t = 300)]
        kbps: u32,
        /// Region-of-interest map: `none`, `face` (the face detector every 5th frame, as in
        /// `bench`), or `centre` (a PLACEHOLDER: an ellipse over the middle half of the picture,
        /// −16 inside, +16 outside; no detection).
        #[arg(long, default_value = "none")]
        roi: String,
        /// Encode only the first N frames.
        #[arg(long)]
        frames: Option<usize>,
    },
    /// Decode a clip (IVF, WebM, MP4, raw H.264, …) into Y4M; bad packets are counted, not fatal.
    Decode {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Rate–quality of the video encoders on clips: bitrate, PSNR-Y, MS-SSIM, VMAF (optional,
    /// `video/eval_vmaf.py`), PSNR-Y inside the centre region, encode fps, per-frame latency.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Clips (Y4M, MP4, …); `datasets/prepare_video.sh` makes carphone, bikes, bigbuckbunny.
    #[arg(required = true)]
    clips: Vec<PathBuf>,
    /// Rows: any of vp8, vp9, x264, av1, av1-svt, each optionally with `+roi` (the centre
    /// placeholder map), comma-separated.
    #[arg(long, default_value = "vp8,x264,av1,av1+roi")]
    codecs: String,
    /// Target bitrates, kbit/s, comma-separated.
    #[arg(long, default_value = "100,200,300,500,800")]
    kbps: String,
    /// Use only the first N frames of each clip.
    #[arg(long)]
    frames: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Rate–quality plot (SVG): PSNR-Y, MS-SSIM and VMAF (when measured) against bitrate.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Skip VMAF (the optional Python evaluator).
    #[arg(long)]
    no_vmaf: bool,
    /// The quality map of the `+roi` rows: `face` (the face detector, `aic_video::roi`, every
    /// 5th frame through its tracker, boxes → map with its default style) or `centre` (a
    /// PLACEHOLDER ellipse, no detection). The ROI columns score the same map's better blocks.
    #[arg(long, default_value = "face")]
    roi: String,
}

pub fn run(cmd: VideoCmd) -> Result<()> {
    match cmd {
        VideoCmd::Encode {
            input,
            output,
            codec,
            kbps,
            roi,
            frames,
        } => encode(&input, &output, &codec, kbps, &roi, frames),
        VideoCmd::Decode { input, output } => {
            let clip = read_video(&input, None)?;
            if clip.frames.is_empty() {
                bail!(
                    "{}: no frame could be decoded ({} errors)",
                    input.display(),
                    clip.decode_errors
                );
            }
            write_y4m(&output, &clip.frames, clip.fps)?;
            println!(
                "{}: {} frames {}x{}, {} decode errors",
                output.display(),
                clip.frames.len(),
                clip.frames[0].width,
                clip.frames[0].height,
                clip.decode_errors
            );
            Ok(())
        }
        VideoCmd::Bench(a) => bench(a),
    }
}

/// The map the `+roi` rows use until the detector's maps exist: **a placeholder**, not a
/// detection (an ellipse over the middle half of the picture, better inside, worse outside).
fn centre_map(w: u32, h: u32) -> Result<QualityMap> {
    Ok(QualityMap::centre_weighted(w, h, 16, 0.5, -16, 16)?)
}

/// The pixels the ROI columns score: those whose block the map makes better.
fn in_roi(map: &QualityMap) -> impl Fn(u32, u32) -> bool + '_ {
    move |x, y| map.offset_at(x, y) < 0
}

/// One quality map per frame from the face detector: the tracker says which frames are due
/// (every 5th), the detector runs on those, the tracker's boxes make every frame's map.
fn face_maps(clip: &Clip) -> Result<(Vec<QualityMap>, String)> {
    use aic_video::roi::{
        Detector, DetectorConfig, FrameView, RoiTracker, TrackerConfig, quality_map,
    };
    let dir = Detector::default_dir();
    let mut det = Detector::open(&dir, DetectorConfig::default())
        .with_context(|| format!("--roi face: the face detector in {}", dir.display()))?;
    let tcfg = TrackerConfig::default();
    let mut tracker: RoiTracker<u64> = RoiTracker::new(tcfg);
    let (mut maps, mut detections, mut faces) = (Vec::with_capacity(clip.frames.len()), 0, 0usize);
    for (i, f) in clip.frames.iter().enumerate() {
        let i = i as u64;
        if tracker.due(0, i) {
            let found = det.detect(&[FrameView::yuv420(f.width, f.height, &f.y, &f.u, &f.v)])?;
            detections += 1;
            faces += found[0].len();
            tracker.update(0, i, &found[0]);
        }
        maps.push(quality_map(&tracker.boxes(0, i), f.width, f.height, 16));
    }
    let with_roi = maps
        .iter()
        .filter(|m| m.offsets.iter().any(|&o| o < 0))
        .count();
    let desc = format!(
        "face detector (MTCNN, aic_video::roi) every {} frames: {detections} detections, {faces} faces; \
         {with_roi} of {} frames have a face region; map style: roi::MapStyle::default()",
        tcfg.every,
        maps.len()
    );
    Ok((maps, desc))
}

fn kind(name: &str) -> Result<EncoderKind> {
    EncoderKind::from_name(name).ok_or_else(|| {
        let all: Vec<_> = EncoderKind::ALL.iter().map(|k| k.name()).collect();
        anyhow!(
            "unknown codec {name:?} (expected one of {})",
            all.join(", ")
        )
    })
}

fn load(path: &Path, frames: Option<usize>) -> Result<Clip> {
    let clip = read_video(path, frames).with_context(|| format!("reading {}", path.display()))?;
    let Some(f) = clip.frames.first() else {
        bail!("{}: no frames", path.display());
    };
    if !f.width.is_multiple_of(2) || !f.height.is_multiple_of(2) {
        bail!(
            "{}: {}x{} (the encoders need even sizes)",
            path.display(),
            f.width,
            f.height
        );
    }
    Ok(clip)
}

fn encode(
    input: &Path,
    output: &Path,
    codec: &str,
    kbps: u32,
    roi: &str,
    frames: Option<usize>,
) -> Result<()> {
    let kind = kind(codec)?;
    let clip = load(input, frames)?;
    let (w, h) = (clip.frames[0].width, clip.frames[0].height);
    let maps = match roi {
        "none" => None,
        "face" => Some(face_maps(&clip)?.0),
        "centre" | "center" => Some(vec![centre_map(w, h)?; clip.frames.len()]),
        other => bail!("--roi {other:?} (expected none, face or centre)"),
    };
    let mut cfg = EncoderConfig::new(kind, w, h, clip.fps_rounded(), kbps.saturating_mul(1000));
    cfg.roi = maps.is_some();
    let mut enc = VideoEncoder::new(cfg)?;
    let mut packets = Vec::new();
    let t0 = Instant::now();
    for (i, f) in clip.frames.iter().enumerate() {
        let hints = FrameHints {
            quality: maps.as_ref().map(|m| &m[i]),
            ..FrameHints::default()
        };
        enc.encode(f, &hints, &mut packets)?;
    }
    enc.flush(&mut packets)?;
    let secs = t0.elapsed().as_secs_f64();
    write_packets(output, &enc, &packets)?;
    let bytes: usize = packets.iter().map(|p| p.data.len()).sum();
    println!(
        "{}: {} frames, {} packets, {:.1} kbit/s, encode {:.1} fps ({})",
        output.display(),
        clip.frames.len(),
        packets.len(),
        bytes as f64 * 8.0 / clip.seconds() / 1000.0,
        clip.frames.len() as f64 / secs,
        kind.ffmpeg_name()
    );
    Ok(())
}

/// One bench row: an encoder, with or without the ROI map.
#[derive(Clone, Copy)]
struct RowSpec {
    kind: EncoderKind,
    roi: bool,
}

impl RowSpec {
    fn label(self) -> String {
        if self.roi {
            format!("{}+roi", self.kind.name())
        } else {
            self.kind.name().to_string()
        }
    }
}

fn parse_rows(s: &str) -> Result<Vec<RowSpec>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (name, roi) = match t.strip_suffix("+roi") {
                Some(n) => (n, true),
                None => (t, false),
            };
            Ok(RowSpec {
                kind: kind(name)?,
                roi,
            })
        })
        .collect()
}

fn parse_kbps(s: &str) -> Result<Vec<u32>> {
    let v: Vec<u32> = s
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .with_context(|| format!("--kbps: {t:?}"))
        })
        .collect::<Result<_>>()?;
    if v.is_empty() || v.iter().any(|k| !(10..=100_000).contains(k)) {
        bail!("--kbps: each target in 10..=100000");
    }
    Ok(v)
}

#[derive(Serialize)]
struct Report {
    /// How the rows were made, and what is a placeholder.
    notes: Vec<String>,
    clips: Vec<ClipInfo>,
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct ClipInfo {
    name: String,
    width: u32,
    height: u32,
    fps: f64,
    frames: usize,
}

#[derive(Serialize, Clone)]
struct Row {
    clip: String,
    codec: String,
    encoder: String,
    roi_map: Option<String>,
    target_kbps: u32,
    kbps: f64,
    frames: usize,
    frames_decoded: usize,
    keyframes: usize,
    decode_errors: u64,
    psnr_y: f64,
    /// PSNR-Y inside / outside the centre region (the same pixels for every row).
    psnr_y_roi: Option<f64>,
    psnr_y_outside: Option<f64>,
    ms_ssim: f64,
    vmaf: Option<f64>,
    vmaf_roi: Option<f64>,
    encode_fps: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

fn write_i420(path: &Path, frames: &[Yuv420Frame]) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for fr in frames {
        f.write_all(&fr.y)?;
        f.write_all(&fr.u)?;
        f.write_all(&fr.v)?;
    }
    f.flush()?;
    Ok(())
}

/// Encodes a clip with one row's encoder at one target; everything a row reports but VMAF.
fn run_row(
    clip: &Clip,
    name: &str,
    spec: RowSpec,
    target_kbps: u32,
    maps: &[QualityMap],
    map_desc: &str,
) -> Result<(Row, Vec<Yuv420Frame>)> {
    let (w, h) = (clip.frames[0].width, clip.frames[0].height);
    let mut cfg = EncoderConfig::new(spec.kind, w, h, clip.fps_rounded(), target_kbps * 1000);
    cfg.roi = spec.roi;
    let mut enc = VideoEncoder::new(cfg)?;
    let mut packets: Vec<EncodedPacket> = Vec::with_capacity(clip.frames.len());
    let mut sent = Vec::with_capacity(clip.frames.len());
    let mut latency = Vec::with_capacity(clip.frames.len());
    let start = Instant::now();
    for (f, map) in clip.frames.iter().zip(maps) {
        let hints = FrameHints {
            quality: spec.roi.then_some(map),
            ..FrameHints::default()
        };
        let before = packets.len();
        sent.push(Instant::now());
        enc.encode(f, &hints, &mut packets)?;
        let now = Instant::now();
        // Latency of a frame: from handing it in to its packet coming out (an encoder that
        // held frames back would show it here, not only in the call's time).
        for p in &packets[before..] {
            if let Some(t) = usize::try_from(p.pts).ok().and_then(|i| sent.get(i)) {
                latency.push((now - *t).as_secs_f64() * 1e3);
            }
        }
    }
    let before = packets.len();
    enc.flush(&mut packets)?;
    let now = Instant::now();
    for p in &packets[before..] {
        if let Some(t) = usize::try_from(p.pts).ok().and_then(|i| sent.get(i)) {
            latency.push((now - *t).as_secs_f64() * 1e3);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latency.sort_by(f64::total_cmp);

    let mut dec = VideoDecoder::new(spec.kind.codec())?;
    let mut decoded = Vec::with_capacity(clip.frames.len());
    for p in &packets {
        let _ = dec.decode(&p.data, &mut decoded);
    }
    let _ = dec.flush(&mut decoded);
    let n = decoded.len().min(clip.frames.len());
    let pairs = || clip.frames.iter().zip(&decoded).take(n);
    let triples = || pairs().zip(maps);
    let bytes: usize = packets.iter().map(|p| p.data.len()).sum();
    let row = Row {
        clip: name.to_string(),
        codec: spec.label(),
        encoder: spec.kind.ffmpeg_name().to_string(),
        roi_map: spec.roi.then(|| map_desc.to_string()),
        target_kbps,
        kbps: bytes as f64 * 8.0 / clip.seconds() / 1000.0,
        frames: clip.frames.len(),
        frames_decoded: decoded.len(),
        keyframes: packets.iter().filter(|p| p.keyframe).count(),
        decode_errors: dec.stats().errors,
        psnr_y: mean(pairs().map(|(a, b)| psnr_y(a, b))),
        psnr_y_roi: Some(mean(
            triples().filter_map(|((a, b), m)| psnr_y_where(a, b, in_roi(m))),
        ))
        .filter(|v| v.is_finite()),
        psnr_y_outside: Some(mean(triples().filter_map(|((a, b), m)| {
            let inside = in_roi(m);
            psnr_y_where(a, b, |x, y| !inside(x, y))
        })))
        .filter(|v| v.is_finite()),
        ms_ssim: mean(pairs().map(|(a, b)| ms_ssim_y(a, b))),
        vmaf: None,
        vmaf_roi: None,
        encode_fps: clip.frames.len() as f64 / secs,
        latency_p50_ms: percentile(&latency, 0.50),
        latency_p99_ms: percentile(&latency, 0.99),
    };
    decoded.truncate(n);
    Ok((row, decoded))
}

/// The bounding box of the maps' ROI blocks over all frames, in pixels (for VMAF on the crop).
fn roi_box(maps: &[QualityMap], w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
    let mut b: Option<(u32, u32, u32, u32)> = None;
    for map in maps {
        for r in 0..map.rows {
            for c in 0..map.cols {
                if map.offsets[(r * map.cols + c) as usize] < 0 {
                    let (x0, y0) = (c * map.block, r * map.block);
                    let (x1, y1) = ((x0 + map.block).min(w), (y0 + map.block).min(h));
                    b = Some(match b {
                        None => (x0, y0, x1, y1),
                        Some((a, bb, cc, d)) => (a.min(x0), bb.min(y0), cc.max(x1), d.max(y1)),
                    });
                }
            }
        }
    }
    b
}

fn bench(a: BenchArgs) -> Result<()> {
    let specs = parse_rows(&a.codecs)?;
    let targets = parse_kbps(&a.kbps)?;
    let mut notes = vec![
        "PSNR-Y: mean of per-frame PSNR of the luma plane (capped at 100 dB); MS-SSIM: luma, \
         Wang et al. 2003, mean over frames; both computed in Rust (aic-video metrics)."
            .to_string(),
        "psnr_y_roi / psnr_y_outside: per frame, the pixels of the blocks the +roi rows' map makes \
         better / the rest (frames without such blocks are left out), the same pixels for every \
         row, so rows without a map compare with the +roi rows."
            .to_string(),
        "latency: per frame, from handing the frame to the encoder to its packet coming out; one \
         encoder thread per stream."
            .to_string(),
    ];
    let dir = std::env::temp_dir().join(format!("aic-video-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut clips_info = Vec::new();
    let mut rows = Vec::new();
    let mut vmaf_pairs: Vec<VmafPair> = Vec::new();
    for (ci, path) in a.clips.iter().enumerate() {
        let clip = load(path, a.frames)?;
        let name = path
            .file_stem()
            .map_or_else(|| format!("clip{ci}"), |s| s.to_string_lossy().into_owned());
        let (w, h) = (clip.frames[0].width, clip.frames[0].height);
        clips_info.push(ClipInfo {
            name: name.clone(),
            width: w,
            height: h,
            fps: f64::from(clip.fps.0) / f64::from(clip.fps.1.max(1)),
            frames: clip.frames.len(),
        });
        let (maps, map_desc) = match a.roi.as_str() {
            "face" => face_maps(&clip)?,
            "centre" | "center" => (
                vec![centre_map(w, h)?; clip.frames.len()],
                "centre-weighted PLACEHOLDER (no detection): an ellipse over the middle half, \
                 -16 inside, +16 outside, 16-px blocks"
                    .to_string(),
            ),
            other => bail!("--roi {other:?} (expected face or centre)"),
        };
        notes.push(format!("{name}: +roi rows' map: {map_desc}"));
        let rbox = roi_box(&maps, w, h);
        let ref_path = dir.join(format!("ref-{ci}.yuv"));
        if !a.no_vmaf {
            write_i420(&ref_path, &clip.frames)?;
        }
        for &spec in &specs {
            for &t in &targets {
                eprintln!("[video bench] {name} {} {t} kbit/s", spec.label());
                let (row, decoded) = run_row(&clip, &name, spec, t, &maps, &map_desc)
                    .with_context(|| format!("{name}: {} at {t} kbit/s", spec.label()))?;
                if !a.no_vmaf {
                    let p = dir.join(format!("dist-{}.yuv", rows.len()));
                    write_i420(&p, &decoded)?;
                    vmaf_pairs.push((rows.len(), ref_path.clone(), p, w, h, rbox));
                }
                rows.push(row);
            }
        }
    }
    if a.no_vmaf {
        notes.push("VMAF not computed (--no-vmaf)".into());
    } else {
        match run_vmaf(&dir, &vmaf_pairs) {
            Ok(results) => {
                let mut errors = Vec::new();
                for ((ri, ..), r) in vmaf_pairs.iter().zip(results) {
                    rows[*ri].vmaf = r.get("vmaf").and_then(serde_json::Value::as_f64);
                    rows[*ri].vmaf_roi = r.get("vmaf_roi").and_then(serde_json::Value::as_f64);
                    if let Some(e) = r
                        .get("errors")
                        .and_then(|e| e.as_object())
                        .filter(|e| !e.is_empty())
                    {
                        errors.push(serde_json::Value::Object(e.clone()).to_string());
                    }
                }
                errors.dedup();
                if let Some(e) = errors.first() {
                    notes.push(format!("VMAF not computed for some rows: {e}"));
                } else {
                    notes.push(
                        "VMAF: v0.6.1 through vmaf-torch (video/eval_vmaf.py), mean over frames; \
                         vmaf_roi: both clips cropped to the bounding box of the map's better blocks over the clip; \
                         per-frame VMAF clipped to [0, 100]."
                            .into(),
                    );
                }
            }
            Err(e) => notes.push(format!("VMAF not computed: {e:#}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rep = Report {
        notes,
        clips: clips_info,
        rows,
    };
    print!("{}", table(&rep));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)?;
    }
    if let Some(p) = &a.svg {
        write_svg(&rep, p)?;
    }
    Ok(())
}

/// A VMAF job: (row index, reference I420, decoded I420, width, height, ROI box to crop to).
type VmafPair = (
    usize,
    PathBuf,
    PathBuf,
    u32,
    u32,
    Option<(u32, u32, u32, u32)>,
);

/// Runs `video/eval_vmaf.py` once over every pair (torch loads once).
fn run_vmaf(dir: &Path, pairs: &[VmafPair]) -> Result<Vec<serde_json::Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = std::env::var_os("AIC_VMAF_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("video/eval_vmaf.py"));
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
        bail!("evaluator {} not found", script.display());
    }
    let list = dir.join("vmaf-pairs.tsv");
    let text: String = pairs
        .iter()
        .map(|(_, r, d, w, h, b)| {
            let crop = b
                .map(|(x0, y0, x1, y1)| format!("\t{x0},{y0},{x1},{y1}"))
                .unwrap_or_default();
            format!("{}\t{}\t{w}\t{h}{crop}\n", r.display(), d.display())
        })
        .collect();
    std::fs::write(&list, text)?;
    let out = Command::new(&python)
        .arg(&script)
        .arg("--pairs")
        .arg(&list)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("evaluator output")?;
    if v.len() != pairs.len() {
        bail!(
            "evaluator gave {} results for {} pairs",
            v.len(),
            pairs.len()
        );
    }
    Ok(v)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

fn table(rep: &Report) -> String {
    let mut s = String::new();
    s += &format!(
        "{:<14} {:<9} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>7} {:>4}\n",
        "clip",
        "codec",
        "target",
        "kbps",
        "PSNR-Y",
        "ROI",
        "outside",
        "MS-SSIM",
        "VMAF",
        "VMAFr",
        "enc fps",
        "p50 ms",
        "p99 ms",
        "err"
    );
    for r in &rep.rows {
        s += &format!(
            "{:<14} {:<9} {:>6} {:>7.1} {:>7.2} {:>7} {:>7} {:>7.4} {:>6} {:>6} {:>7.1} {:>7.2} {:>7.2} {:>4}\n",
            r.clip,
            r.codec,
            r.target_kbps,
            r.kbps,
            r.psnr_y,
            opt(r.psnr_y_roi, 2),
            opt(r.psnr_y_outside, 2),
            r.ms_ssim,
            opt(r.vmaf, 2),
            opt(r.vmaf_roi, 2),
            r.encode_fps,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.decode_errors
        );
    }
    for n in &rep.notes {
        s += &format!("note: {n}\n");
    }
    s
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type Series = std::collections::BTreeMap<String, Vec<(f64, f64)>>;

fn series(rep: &Report, clip: &str, y: impl Fn(&Row) -> Option<f64>) -> Series {
    let mut s = Series::new();
    for r in rep.rows.iter().filter(|r| r.clip == clip) {
        if let Some(v) = y(r).filter(|v| v.is_finite()) {
            s.entry(r.codec.clone()).or_default().push((r.kbps, v));
        }
    }
    for v in s.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    s
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    s: &Series,
) -> Result<()> {
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in s.values().flatten() {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.1).max(0.001);
    let e = |e: &dyn std::fmt::Display| anyhow!("plot: {e}");
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..x1 * 1.08, (y0 - pad)..(y1 + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("kbit/s")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, v)) in s.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(v.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// One row of panels per clip: PSNR-Y, MS-SSIM, and VMAF (or PSNR-Y inside the ROI when VMAF
/// was not measured), each against the measured bitrate.
fn write_svg(rep: &Report, path: &Path) -> Result<()> {
    let n = rep.clips.len().max(1) as u32;
    let root = SVGBackend::new(path, (1350, 400 * n)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    for (area, c) in root.split_evenly((n as usize, 1)).iter().zip(&rep.clips) {
        let cols = area.split_evenly((1, 3));
        panel(
            &cols[0],
            &format!("{}: PSNR-Y (dB)", c.name),
            &series(rep, &c.name, |r| Some(r.psnr_y)),
        )?;
        panel(
            &cols[1],
            &format!("{}: MS-SSIM", c.name),
            &series(rep, &c.name, |r| Some(r.ms_ssim)),
        )?;
        let vmaf = series(rep, &c.name, |r| r.vmaf);
        if vmaf.is_empty() {
            panel(
                &cols[2],
                &format!("{}: PSNR-Y in the ROI (dB)", c.name),
                &series(rep, &c.name, |r| r.psnr_y_roi),
            )?;
        } else {
            panel(&cols[2], &format!("{}: VMAF", c.name), &vmaf)?;
        }
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}
