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
    /// Fit the rate model (`aic_video::rate`): cut clips into 1 s shots, encode each clip at
    /// ~5 rates, measure each shot's bits and PSNR-Y, compute its features, fit the curve's
    /// coefficients, evaluate leave-one-clip-out, write `models/video-rate/<codec>.json`.
    FitRate(FitRateArgs),
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
    /// Rate prediction instead of fixed targets: each encoder's bitrate follows
    /// `aic_video::rate`'s controller (per frame, 1 s feature window) towards this PSNR-Y (dB);
    /// prints one row per second with the predicted and the achieved quality, then a fixed-rate
    /// encode at the same mean rate. Needs a rate model (committed: av1).
    #[arg(long)]
    target_quality: Option<f64>,
    /// With `--target-quality`: the receiver's bandwidth estimate (the cap), kbit/s.
    #[arg(long, default_value_t = 100_000)]
    bandwidth_kbps: u32,
    /// With `--target-quality`: a rate model file instead of the committed
    /// `models/video-rate/<codec>.json`.
    #[arg(long)]
    rate_model: Option<PathBuf>,
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
        VideoCmd::FitRate(a) => fit_rate(a),
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
    if let Some(q) = a.target_quality {
        return bench_target(&a, q);
    }
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

// ---------------------------------------------------------------------------------------------
// `aic video fit-rate`: the data and the fit of `aic_video::rate::RateModel`.

/// The lavfi sources of the default fit: `name@WxH`, `+noise` adds temporal noise.
const DEFAULT_LAVFI: &str = "testsrc2@320x240,testsrc2@640x360+noise,mandelbrot@320x240,\
mandelbrot@640x360+noise,life@320x240,life@640x360,cellauto@320x240,cellauto@640x360";

/// Regressors of the committed model (besides the intercept): the picture size only; the
/// content features made leave-one-source-out worse on the fit data (`docs/video.md`).
const DEFAULT_FEATURES: &str = "ln_pixels";

#[derive(clap::Args)]
pub struct FitRateArgs {
    /// Clips; default: carphone, bikes and bigbuckbunny from `datasets/prepare_video.sh` in
    /// `${AIC_VIDEO_DIR:-$HOME/.cache/aic/video}`.
    clips: Vec<PathBuf>,
    /// The encoder (its settings as everywhere in `aic-video`).
    #[arg(long, default_value = "av1")]
    codec: String,
    /// Each clip is also scaled (centre crop, bicubic) to these sizes, only where that is a
    /// downscale; comma-separated `WxH`, empty for none.
    #[arg(long, default_value = "640x360,320x180")]
    resize: String,
    /// FFmpeg lavfi sources rendered with the `ffmpeg` command at 30 fps: `name@WxH`, with
    /// `+noise` for temporal noise; comma-separated, empty for none.
    #[arg(long, default_value = DEFAULT_LAVFI)]
    lavfi: String,
    /// Seconds of each clip used (from its start).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Encodes per clip, as bits per pixel (the target is `bpp × width × height × fps`).
    #[arg(long, default_value = "0.015,0.03,0.06,0.12,0.24")]
    bpp: String,
    /// Regressors besides the intercept (`aic_video::rate::FEATURE_NAMES`).
    #[arg(long, default_value = DEFAULT_FEATURES)]
    features: String,
    /// The model the evaluation compares with (regressors besides the intercept).
    #[arg(long, default_value = "ln_spatial,ln_temporal,ln_pixels")]
    compare_features: String,
    /// Sources (a clip's file stem, a lavfi source's name) the model is fitted on and
    /// evaluated leave-one-out; the others are scored out of domain with the model fitted on
    /// all of these. Empty: every source.
    #[arg(long, default_value = "carphone,bikes,bigbuckbunny")]
    fit_sources: String,
    /// Ridge on every coefficient but the intercepts.
    #[arg(long, default_value_t = 0.1)]
    lambda: f64,
    /// Shots above this PSNR-Y (near-lossless pictures, off the log curve) are left out.
    #[arg(long, default_value_t = 55.0)]
    max_quality: f64,
    /// Shots below this PSNR-Y (broken pictures no target would ask for) are left out.
    #[arg(long, default_value_t = 20.0)]
    min_quality: f64,
    /// Target qualities (PSNR-Y, dB) the evaluation predicts rates for.
    #[arg(long, default_value = "32,35,38,41")]
    targets: String,
    /// Read the measured shots from this file (written by `--samples-out`) instead of encoding.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Write the measured shots here (JSON).
    #[arg(long)]
    samples_out: Option<PathBuf>,
    /// Write the fitted model here (`models/video-rate/<codec>.json` is the committed one).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The clips `datasets/prepare_video.sh` makes.
fn default_clips() -> Vec<PathBuf> {
    let dir = std::env::var_os("AIC_VIDEO_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/aic/video")))
        .unwrap_or_else(|| PathBuf::from("."));
    ["carphone", "bikes", "bigbuckbunny"]
        .iter()
        .map(|n| dir.join(format!("{n}.y4m")))
        .collect()
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("size {s:?} (expected WxH)"))?;
    let (w, h): (u32, u32) = (w.trim().parse()?, h.trim().parse()?);
    if w < 16 || h < 16 || w % 2 == 1 || h % 2 == 1 {
        bail!("size {s:?} (even, at least 16x16)");
    }
    Ok((w, h))
}

fn parse_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_f64s(s: &str, what: &str) -> Result<Vec<f64>> {
    parse_list(s)
        .into_iter()
        .map(|t| t.parse::<f64>().with_context(|| format!("{what}: {t:?}")))
        .collect()
}

/// Renders one lavfi source (`name@WxH[+noise]`) to Y4M with the `ffmpeg` command.
fn render_lavfi(spec: &str, seconds: f64, dir: &Path) -> Result<(String, PathBuf)> {
    let (base, noise) = match spec.strip_suffix("+noise") {
        Some(b) => (b, true),
        None => (spec, false),
    };
    let (name, size) = base
        .split_once('@')
        .ok_or_else(|| anyhow!("--lavfi {spec:?} (expected name@WxH[+noise])"))?;
    let (w, h) = parse_size(size)?;
    let src = match name {
        "testsrc2" | "mandelbrot" | "life" | "cellauto" | "testsrc" | "rgbtestsrc" => {
            format!("{name}=size={w}x{h}:rate=30")
        }
        other => bail!("--lavfi: source {other:?} (expected testsrc2, mandelbrot, life, cellauto)"),
    };
    let mut vf = String::from("format=yuv420p");
    if noise {
        vf = format!("noise=alls=16:allf=t,{vf}");
    }
    let out = dir.join(format!("{}.y4m", spec.replace(['@', '+'], "_")));
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &src,
        ])
        .args([
            "-vf",
            &vf,
            "-t",
            &format!("{seconds}"),
            "-f",
            "yuv4mpegpipe",
        ])
        .arg(&out)
        .status()
        .context("running ffmpeg (the lavfi sources need the ffmpeg command)")?;
    if !st.success() {
        bail!("ffmpeg for {spec:?} exited with {st}");
    }
    Ok((name.to_string(), out))
}

/// Encodes `frames` once per target and cuts the result into shots of one second: each
/// shot's bits and mean PSNR-Y at each rate, with its features. The first shot (the
/// keyframe's) is left out: a live stream is mostly between keyframes.
fn measure_clip(
    kind: EncoderKind,
    group: &str,
    clip: &str,
    frames: &[Yuv420Frame],
    fps: u32,
    bpps: &[f64],
) -> Result<Vec<aic_video::rate::RateSample>> {
    use aic_video::rate::{FeatureMeter, RateSample};
    let (w, h) = (frames[0].width, frames[0].height);
    let shot_len = fps as usize;
    let shots = frames.len() / shot_len;
    // Features of each shot: a meter over the clip, read at each shot's last picture.
    let mut meter = FeatureMeter::new(shot_len);
    let mut feats = Vec::with_capacity(shots);
    for (i, f) in frames.iter().enumerate().take(shots * shot_len) {
        meter.push(f);
        if (i + 1) % shot_len == 0 {
            feats.push(meter.features(f64::from(fps)).expect("pictures pushed"));
        }
    }
    let mut out = Vec::new();
    for &bpp in bpps {
        let target = (bpp * f64::from(w) * f64::from(h) * f64::from(fps)).round();
        let target = (target as u32).clamp(EncoderConfig::MIN_BITRATE, EncoderConfig::MAX_BITRATE);
        let mut enc = VideoEncoder::new(EncoderConfig::new(kind, w, h, fps, target))?;
        let mut packets = Vec::with_capacity(frames.len());
        for f in frames {
            enc.encode(f, &FrameHints::default(), &mut packets)?;
        }
        enc.flush(&mut packets)?;
        let mut bytes = vec![0usize; frames.len()];
        for p in &packets {
            if let Some(b) = usize::try_from(p.pts).ok().and_then(|i| bytes.get_mut(i)) {
                *b += p.data.len();
            }
        }
        let mut dec = VideoDecoder::new(kind.codec())?;
        let mut decoded = Vec::with_capacity(frames.len());
        for p in &packets {
            let _ = dec.decode(&p.data, &mut decoded);
        }
        let _ = dec.flush(&mut decoded);
        if decoded.len() != frames.len() {
            bail!(
                "{clip}: {} of {} frames decoded at {target} bit/s",
                decoded.len(),
                frames.len()
            );
        }
        for (s, feat) in feats.iter().enumerate().skip(1) {
            let r = s * shot_len..(s + 1) * shot_len;
            let bits = bytes[r.clone()].iter().sum::<usize>() as f64 * 8.0;
            let q = mean(
                frames[r.clone()]
                    .iter()
                    .zip(&decoded[r])
                    .map(|(a, b)| psnr_y(a, b)),
            );
            out.push(RateSample {
                group: group.to_string(),
                clip: clip.to_string(),
                shot: s as u32,
                features: *feat,
                target_bps: f64::from(target),
                bps: bits * f64::from(fps) / shot_len as f64,
                quality: q,
            });
        }
        eprintln!(
            "[fit-rate] {clip} {w}x{h} target {:.0} kbit/s: {:.1} kbit/s, PSNR-Y {:.2}",
            f64::from(target) / 1000.0,
            bytes.iter().sum::<usize>() as f64 * 8.0 * f64::from(fps)
                / frames.len() as f64
                / 1000.0,
            mean(frames.iter().zip(&decoded).map(|(a, b)| psnr_y(a, b)))
        );
    }
    Ok(out)
}

/// Measures every clip (and its resized versions) and lavfi source.
fn collect_samples(a: &FitRateArgs, kind: EncoderKind) -> Result<Vec<aic_video::rate::RateSample>> {
    let bpps = parse_f64s(&a.bpp, "--bpp")?;
    if bpps.is_empty() || bpps.iter().any(|b| !(*b > 0.0 && *b < 10.0)) {
        bail!("--bpp: each in (0, 10)");
    }
    let sizes: Vec<(u32, u32)> = parse_list(&a.resize)
        .into_iter()
        .map(parse_size)
        .collect::<Result<_>>()?;
    let clips = if a.clips.is_empty() {
        default_clips()
    } else {
        a.clips.clone()
    };
    let mut samples = Vec::new();
    for path in &clips {
        if !path.exists() {
            bail!(
                "{}: missing (datasets/prepare_video.sh makes the default clips)",
                path.display()
            );
        }
        let probe = read_video(path, Some(1))?;
        let fps = probe.fps_rounded();
        let n = (a.seconds * f64::from(fps)).round() as usize;
        let clip = load(path, Some(n))?;
        let group = path
            .file_stem()
            .map_or_else(|| "clip".into(), |s| s.to_string_lossy().into_owned());
        let (w, h) = (clip.frames[0].width, clip.frames[0].height);
        if clip.frames.len() < 2 * fps as usize {
            bail!("{}: shorter than two seconds", path.display());
        }
        samples.extend(measure_clip(
            kind,
            &group,
            &format!("{group}@{w}x{h}"),
            &clip.frames,
            fps,
            &bpps,
        )?);
        for &(sw, sh) in &sizes {
            if u64::from(sw) * u64::from(sh) >= u64::from(w) * u64::from(h) {
                continue;
            }
            let frames = aic_video::resize::resize_all(&clip.frames, sw, sh)?;
            samples.extend(measure_clip(
                kind,
                &group,
                &format!("{group}@{sw}x{sh}"),
                &frames,
                fps,
                &bpps,
            )?);
        }
    }
    let lavfi = parse_list(&a.lavfi);
    if !lavfi.is_empty() {
        let dir = std::env::temp_dir().join(format!("aic-fit-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let r = (|| -> Result<()> {
            for spec in lavfi {
                let (group, path) = render_lavfi(spec, a.seconds, &dir)?;
                let clip = load(&path, None)?;
                samples.extend(measure_clip(
                    kind,
                    &group,
                    spec,
                    &clip.frames,
                    clip.fps_rounded(),
                    &bpps,
                )?);
                let _ = std::fs::remove_file(&path);
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        r?;
    }
    Ok(samples)
}

#[derive(Serialize, serde::Deserialize)]
struct SamplesFile {
    encoder: String,
    features_version: u32,
    command: String,
    samples: Vec<aic_video::rate::RateSample>,
}

fn pct(v: f64) -> String {
    format!("{:.1} %", 100.0 * v)
}

fn fit_rate(a: FitRateArgs) -> Result<()> {
    use aic_video::rate::eval::{abs_percentiles, leave_one_group_out};
    use aic_video::rate::{FEATURES_VERSION, RateModel};
    let kind = kind(&a.codec)?;
    let command = std::env::args()
        .skip(1)
        .map(|s| {
            if let Ok(home) = std::env::var("HOME")
                && !home.is_empty()
            {
                s.replace(&home, "$HOME")
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let all = match &a.samples {
        Some(p) => {
            let f: SamplesFile = serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{}: not a samples file", p.display()))?;
            if f.features_version != FEATURES_VERSION || f.encoder != kind.name() {
                bail!(
                    "{}: {} samples of features version {} (want {} and {FEATURES_VERSION})",
                    p.display(),
                    f.encoder,
                    f.features_version,
                    kind.name()
                );
            }
            f.samples
        }
        None => collect_samples(&a, kind)?,
    };
    if let Some(p) = &a.samples_out {
        let f = SamplesFile {
            encoder: kind.name().into(),
            features_version: FEATURES_VERSION,
            command: command.clone(),
            samples: all.clone(),
        };
        std::fs::write(p, serde_json::to_string_pretty(&f)?)?;
    }
    let kept: Vec<_> = all
        .iter()
        .filter(|s| (a.min_quality..=a.max_quality).contains(&s.quality) && s.bps > 0.0)
        .cloned()
        .collect();
    let fit_sources = parse_list(&a.fit_sources);
    let (samples, others): (Vec<_>, Vec<_>) = kept
        .iter()
        .cloned()
        .partition(|s| fit_sources.is_empty() || fit_sources.contains(&s.group.as_str()));
    let mut features = vec!["1"];
    features.extend(parse_list(&a.features));
    let mut compare = vec!["1"];
    compare.extend(parse_list(&a.compare_features));
    let targets = parse_f64s(&a.targets, "--targets")?;
    let model = RateModel::fit(kind.name(), &features, &samples, a.lambda)?;
    // In-sample residuals (dB) of the quality.
    let resid: Vec<f64> = samples
        .iter()
        .map(|s| model.predict_quality(&s.features, s.bps) - s.quality)
        .collect();
    let rmse = (resid.iter().map(|r| r * r).sum::<f64>() / resid.len() as f64).sqrt();

    let mut groups: Vec<&str> = samples.iter().map(|s| s.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut clips: Vec<String> = all.iter().map(|s| s.clip.clone()).collect();
    clips.dedup();

    // Leave one source out: the model, and the comparison model.
    let ev = leave_one_group_out(kind.name(), &samples, &features, a.lambda, &targets)?;
    let ev_base = leave_one_group_out(kind.name(), &samples, &compare, a.lambda, &targets)?;
    // The other sources, out of domain, with the models fitted on every fit source.
    let cmp_model = RateModel::fit(kind.name(), &compare, &samples, a.lambda)?;
    let od = aic_video::rate::eval::score(&model, &others, &targets);
    let od_base = aic_video::rate::eval::score(&cmp_model, &others, &targets);
    let mut other_groups: Vec<&str> = others.iter().map(|s| s.group.as_str()).collect();
    other_groups.sort_unstable();
    other_groups.dedup();

    println!(
        "{} samples ({} shots of 1 s, {} clips, {} sources; {} outside {}..{} dB left out); \
         features {:?}; in-sample RMSE {rmse:.2} dB",
        samples.len(),
        aic_video::rate::eval::curves(&samples).len(),
        clips.len(),
        groups.len(),
        all.len() - kept.len(),
        a.min_quality,
        a.max_quality,
        features
    );
    println!(
        "\nleave-one-source-out: |predicted/measured - 1| of the bitrate for a target PSNR-Y \
         ({:?}; bias = median signed error); cmp = the model with {:?}",
        targets, compare
    );
    println!(
        "{:<14} {:>5} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "held out", "n", "median", "p90", "bias", "cmp median", "cmp p90"
    );
    let mut rows = Vec::new();
    let row = |name: &str,
               e: &[&aic_video::rate::eval::RateError],
               b: &[&aic_video::rate::eval::RateError]| {
        let (m, p) =
            abs_percentiles(e.iter().map(|x| x.relative())).unwrap_or((f64::NAN, f64::NAN));
        let bias = {
            let mut v: Vec<f64> = e.iter().map(|x| x.relative()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let (bm, bp) =
            abs_percentiles(b.iter().map(|x| x.relative())).unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<14} {:>5} {:>10} {:>10} {:>10} {:>12} {:>12}",
            name,
            e.len(),
            pct(m),
            pct(p),
            pct(bias),
            pct(bm),
            pct(bp)
        );
        serde_json::json!({
            "held_out": name, "n": e.len(), "median_abs_error": m, "p90_abs_error": p,
            "median_signed_error": bias, "compare_median_abs_error": bm,
            "compare_p90_abs_error": bp,
        })
    };
    for g in &groups {
        let e: Vec<_> = ev.errors.iter().filter(|x| x.group == *g).collect();
        let b: Vec<_> = ev_base.errors.iter().filter(|x| x.group == *g).collect();
        rows.push(row(g, &e, &b));
    }
    let e: Vec<_> = ev.errors.iter().collect();
    let b: Vec<_> = ev_base.errors.iter().collect();
    rows.push(row("all", &e, &b));
    let mut od_rows = Vec::new();
    if !others.is_empty() {
        println!("\nout of domain (fitted on all of {fit_sources:?}):");
        for g in &other_groups {
            let e: Vec<_> = od.errors.iter().filter(|x| x.group == *g).collect();
            let b: Vec<_> = od_base.errors.iter().filter(|x| x.group == *g).collect();
            od_rows.push(row(g, &e, &b));
        }
    }

    println!(
        "\nper-shot targets from the model vs one fixed rate per clip at the same mean PSNR-Y \
         (leave-one-source-out; read off each shot's measured curve)"
    );
    println!(
        "{:<26} {:>6} {:>6} {:>9} {:>11} {:>11} {:>8}",
        "clip", "target", "shots", "mean dB", "model kbps", "fixed kbps", "saved"
    );
    let mut sav_rows = Vec::new();
    for s in &ev.savings {
        println!(
            "{:<26} {:>6.1} {:>6} {:>9.2} {:>11.1} {:>11.1} {:>8}{}",
            s.clip,
            s.target_quality,
            s.shots,
            s.mean_quality,
            s.predicted_bps / 1000.0,
            s.fixed_bps / 1000.0,
            pct(s.saved()),
            if s.clamped > 0 {
                format!("  ({} shots outside the measured rates)", s.clamped)
            } else {
                String::new()
            }
        );
        sav_rows.push(serde_json::to_value(s)?);
    }
    let (tot_m, tot_f) = ev.savings.iter().fold((0.0, 0.0), |(m, f), s| {
        (m + s.predicted_bps, f + s.fixed_bps)
    });
    let saved_med = {
        let mut v: Vec<f64> = ev.savings.iter().map(|s| s.saved()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "saved: median {} over {} clip x target rows; all rows together {}",
        pct(saved_med),
        ev.savings.len(),
        pct(1.0 - tot_m / tot_f)
    );

    let mut model = model;
    model.fit = serde_json::json!({
        "command": command,
        "metric": "PSNR-Y (dB): mean over a shot's pictures of the per-picture PSNR of the luma plane, against the source",
        "curve": "quality = a.x + (b.x) * ln(bits per pixel), x = the features; least squares with a ridge on all but the intercepts",
        "shots": "1 s cut from continuous encodes (one encoder per clip and rate, as live); the first second (the keyframe) left out",
        "clips": clips,
        "sources": groups,
        "features_compared": compare,
        "out_of_domain": od_rows,
        "bpp": parse_f64s(&a.bpp, "--bpp")?,
        "samples": samples.len(),
        "samples_kept_db": [a.min_quality, a.max_quality],
        "lambda": a.lambda,
        "in_sample_rmse_db": rmse,
        "leave_one_source_out": {
            "targets_db": targets,
            "bitrate_error": rows,
            "bits_saved_vs_fixed_rate": {
                "median": saved_med,
                "all_rows": 1.0 - tot_m / tot_f,
                "rows": sav_rows,
            },
        },
    });
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&model)? + "\n")?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `aic video bench --target-quality Q`: the rate controller in the loop.

#[derive(Serialize)]
struct TargetSecond {
    second: usize,
    spatial: f64,
    temporal: f64,
    target_kbps: f64,
    predicted_psnr_y: f64,
    kbps: f64,
    psnr_y: f64,
    keyframes: usize,
}

#[derive(Serialize)]
struct TargetRun {
    clip: String,
    codec: String,
    target_psnr_y: f64,
    bandwidth_kbps: u32,
    kbps: f64,
    psnr_y: f64,
    changes: u64,
    reopens: u64,
    seconds: Vec<TargetSecond>,
    /// The same clip at one fixed target equal to the controlled run's mean rate.
    fixed_kbps: f64,
    fixed_psnr_y: f64,
}

/// What [`encode_hinted`] gives: bytes and keyframe flag per frame, the decoded pictures, and
/// the encoder's re-opens.
type HintedRun = (Vec<usize>, Vec<bool>, Vec<Yuv420Frame>, u64);

/// Encodes `frames` with per-frame bitrate hints (`None` = keep); bytes per frame and the
/// decoded pictures.
fn encode_hinted(
    kind: EncoderKind,
    frames: &[Yuv420Frame],
    fps: u32,
    first_bps: u32,
    hints: &[Option<u32>],
) -> Result<HintedRun> {
    let (w, h) = (frames[0].width, frames[0].height);
    let mut enc = VideoEncoder::new(EncoderConfig::new(kind, w, h, fps, first_bps))?;
    let mut packets = Vec::with_capacity(frames.len());
    for (f, b) in frames.iter().zip(hints) {
        let hint = FrameHints {
            bitrate_bps: *b,
            ..FrameHints::default()
        };
        enc.encode(f, &hint, &mut packets)?;
    }
    enc.flush(&mut packets)?;
    let mut bytes = vec![0usize; frames.len()];
    let mut key = vec![false; frames.len()];
    for p in &packets {
        if let Some(i) = usize::try_from(p.pts).ok().filter(|&i| i < frames.len()) {
            bytes[i] += p.data.len();
            key[i] |= p.keyframe;
        }
    }
    let mut dec = VideoDecoder::new(kind.codec())?;
    let mut decoded = Vec::with_capacity(frames.len());
    for p in &packets {
        let _ = dec.decode(&p.data, &mut decoded);
    }
    let _ = dec.flush(&mut decoded);
    if decoded.len() != frames.len() {
        bail!("{} of {} frames decoded", decoded.len(), frames.len());
    }
    Ok((bytes, key, decoded, enc.stats().reopens))
}

fn bench_target(a: &BenchArgs, q: f64) -> Result<()> {
    use aic_video::rate::{ControllerConfig, FeatureMeter, RateController, RateModel};
    use std::time::Duration;
    let specs = parse_rows(&a.codecs)?;
    let bwe = a.bandwidth_kbps.saturating_mul(1000);
    let mut runs = Vec::new();
    for (ci, path) in a.clips.iter().enumerate() {
        let clip = load(path, a.frames)?;
        let name = path
            .file_stem()
            .map_or_else(|| format!("clip{ci}"), |s| s.to_string_lossy().into_owned());
        let fps = clip.fps_rounded();
        let frame_dur = Duration::from_secs_f64(1.0 / f64::from(fps));
        for spec in &specs {
            if spec.roi {
                bail!("--target-quality: rows without +roi only");
            }
            let model = match &a.rate_model {
                Some(p) => RateModel::from_json(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )?,
                None => RateModel::bundled(spec.kind).ok_or_else(|| {
                    anyhow!(
                        "--target-quality: no committed rate model for {} (models/video-rate/; \
                         `aic video fit-rate --codec {}` makes one)",
                        spec.kind.name(),
                        spec.kind.name()
                    )
                })?,
            };
            // The controller, per frame on a virtual clock, with the last second's features.
            let mut meter = FeatureMeter::new(fps as usize);
            let mut ctl =
                RateController::new(model.clone(), ControllerConfig::for_encoder(spec.kind));
            let t0 = std::time::Instant::now();
            let mut hints = Vec::with_capacity(clip.frames.len());
            let mut target = Vec::with_capacity(clip.frames.len());
            let mut predicted = Vec::with_capacity(clip.frames.len());
            let mut feats = Vec::with_capacity(clip.frames.len());
            let mut first = 0;
            for (i, f) in clip.frames.iter().enumerate() {
                meter.push(f);
                let ft = meter
                    .features(f64::from(fps))
                    .expect("a picture was pushed");
                let d = ctl.update(t0 + frame_dur * i as u32, &ft, bwe, q);
                if i == 0 {
                    first = d.bitrate_bps;
                    hints.push(None);
                } else {
                    hints.push(d.hint());
                }
                target.push(d.bitrate_bps);
                predicted.push(model.predict_quality(&ft, f64::from(d.bitrate_bps)));
                feats.push(ft);
            }
            eprintln!(
                "[video bench] {name} {} towards {q} dB PSNR-Y",
                spec.kind.name()
            );
            let (bytes, key, decoded, reopens) =
                encode_hinted(spec.kind, &clip.frames, fps, first, &hints)?;
            let psnr: Vec<f64> = clip
                .frames
                .iter()
                .zip(&decoded)
                .map(|(r, d)| psnr_y(r, d))
                .collect();
            let n = fps as usize;
            let seconds: Vec<TargetSecond> = (0..clip.frames.len().div_ceil(n))
                .map(|s| {
                    let r = s * n..((s + 1) * n).min(clip.frames.len());
                    let len = r.len() as f64;
                    let last = feats[r.end - 1];
                    TargetSecond {
                        second: s,
                        spatial: last.spatial,
                        temporal: last.temporal,
                        target_kbps: mean(target[r.clone()].iter().map(|&b| f64::from(b))) / 1000.0,
                        predicted_psnr_y: mean(predicted[r.clone()].iter().copied()),
                        kbps: bytes[r.clone()].iter().sum::<usize>() as f64 * 8.0 * f64::from(fps)
                            / len
                            / 1000.0,
                        psnr_y: mean(psnr[r.clone()].iter().copied()),
                        keyframes: key[r].iter().filter(|&&k| k).count(),
                    }
                })
                .collect();
            let kbps = bytes.iter().sum::<usize>() as f64 * 8.0 * f64::from(fps)
                / clip.frames.len() as f64
                / 1000.0;
            let fixed_bps = ((kbps * 1000.0).round() as u32)
                .clamp(EncoderConfig::MIN_BITRATE, EncoderConfig::MAX_BITRATE);
            let none = vec![None; clip.frames.len()];
            let (fb, _, fd, _) = encode_hinted(spec.kind, &clip.frames, fps, fixed_bps, &none)?;
            runs.push(TargetRun {
                clip: name.clone(),
                codec: spec.kind.name().into(),
                target_psnr_y: q,
                bandwidth_kbps: a.bandwidth_kbps,
                kbps,
                psnr_y: mean(psnr.iter().copied()),
                changes: ctl.changes(),
                reopens,
                seconds,
                fixed_kbps: fb.iter().sum::<usize>() as f64 * 8.0 * f64::from(fps)
                    / clip.frames.len() as f64
                    / 1000.0,
                fixed_psnr_y: mean(clip.frames.iter().zip(&fd).map(|(r, d)| psnr_y(r, d))),
            });
        }
    }
    for r in &runs {
        println!(
            "{} {} target PSNR-Y {:.1} dB, bandwidth estimate {} kbit/s",
            r.clip, r.codec, r.target_psnr_y, r.bandwidth_kbps
        );
        println!(
            "{:>4} {:>8} {:>8} {:>11} {:>10} {:>9} {:>8} {:>4}",
            "s", "spatial", "temporal", "target kbps", "pred dB", "kbps", "PSNR-Y", "key"
        );
        for s in &r.seconds {
            println!(
                "{:>4} {:>8.2} {:>8.2} {:>11.1} {:>10.2} {:>9.1} {:>8.2} {:>4}",
                s.second,
                s.spatial,
                s.temporal,
                s.target_kbps,
                s.predicted_psnr_y,
                s.kbps,
                s.psnr_y,
                s.keyframes
            );
        }
        let (m, p) = aic_video::rate::eval::abs_percentiles(
            r.seconds.iter().map(|s| s.psnr_y - s.predicted_psnr_y),
        )
        .unwrap_or((f64::NAN, f64::NAN));
        println!(
            "whole clip: {:.1} kbit/s, PSNR-Y {:.2} dB (target {:.1}); |achieved - predicted| per second: \
             median {m:.2} dB, p90 {p:.2} dB; {} target changes, {} encoder re-opens; \
             fixed target at the same mean rate: {:.1} kbit/s, PSNR-Y {:.2} dB\n",
            r.kbps, r.psnr_y, r.target_psnr_y, r.changes, r.reopens, r.fixed_kbps, r.fixed_psnr_y
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}
