//! The batched MTCNN detector: manifest check, the three graphs, the cascade between them.

use std::path::{Path, PathBuf};

use aic_pipeline::runtime::{self, Provider};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::image::{Axis, Canvas, FrameView, resample};
use super::nms::{Overlap, nms};
use super::{RoiBox, RoiError};

/// `models/face-detector/detector.json` (not `manifest.json`: that name marks the audio codec
/// models other tools iterate over).
#[derive(Clone, Debug, Deserialize)]
pub struct DetectorManifest {
    pub format: u32,
    pub model_id: String,
    pub source: String,
    pub licence: String,
    /// P-net's output stride and receptive field, in pixels of its input.
    pub pnet_stride: u32,
    pub pnet_cell: u32,
    /// Face-probability thresholds of the P-, R- and O-net stage.
    pub thresholds: [f32; 3],
    pub graphs: Graphs,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Graphs {
    pub pnet: GraphEntry,
    pub rnet: GraphEntry,
    pub onet: GraphEntry,
}

/// One graph: input `image` `[batch, 3, h, w]` RGB in 0..255 (`h = w = crop` for the R- and
/// O-net; any size for the fully convolutional P-net), outputs `score` (face probability) and
/// `reg` (box regression, 4 channels).
#[derive(Clone, Debug, Deserialize)]
pub struct GraphEntry {
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub crop: Option<u32>,
    pub outputs: Vec<String>,
}

impl DetectorManifest {
    /// Reads and checks `dir/detector.json` and the files it names (sha256).
    pub fn load(dir: &Path) -> Result<Self, RoiError> {
        let bad = |why: String| RoiError::Unavailable {
            dir: dir.display().to_string(),
            why,
        };
        let path = dir.join("detector.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let m: DetectorManifest =
            serde_json::from_str(&text).map_err(|e| bad(format!("detector.json: {e}")))?;
        if m.format != 1 {
            return Err(bad(format!("manifest format {} (expected 1)", m.format)));
        }
        if m.pnet_stride == 0 || m.pnet_cell == 0 {
            return Err(bad("pnet_stride and pnet_cell must be positive".into()));
        }
        if m.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(bad(format!(
                "thresholds {:?} (expected 0..=1)",
                m.thresholds
            )));
        }
        for (name, g, crop) in [
            ("pnet", &m.graphs.pnet, false),
            ("rnet", &m.graphs.rnet, true),
            ("onet", &m.graphs.onet, true),
        ] {
            if crop != g.crop.is_some() || g.crop.is_some_and(|c| !(12..=96).contains(&c)) {
                return Err(bad(format!("{name}: crop {:?}", g.crop)));
            }
            if g.outputs != ["score", "reg"] {
                return Err(bad(format!(
                    "{name}: outputs {:?} (expected score, reg)",
                    g.outputs
                )));
            }
            let file = dir.join(&g.file);
            let bytes =
                std::fs::read(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
            let got: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if got != g.sha256 {
                return Err(bad(format!(
                    "{}: sha256 {got} does not match the manifest's {}",
                    g.file, g.sha256
                )));
            }
        }
        Ok(m)
    }
}

/// How the detector looks. Canvas sizes and `min_face` are in canvas pixels.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Every frame is letterboxed onto this RGB canvas (16:9 by default) before detection.
    pub canvas_width: u32,
    pub canvas_height: u32,
    /// Smallest face searched for (sets the first pyramid level: `12 / min_face`).
    pub min_face: f32,
    /// Ratio between pyramid levels.
    pub pyramid_factor: f32,
    /// Stage thresholds; `None` takes the manifest's.
    pub thresholds: Option<[f32; 3]>,
    /// Per frame, the most P-net proposals the R-net sees, and R-net boxes the O-net sees:
    /// bounds the work of a busy picture.
    pub max_proposals: usize,
    pub max_refined: usize,
    /// IoU above which R-net boxes of one frame are merged before the O-net. MTCNN uses 0.7;
    /// 0.5 leaves ~3 instead of ~8 O-net crops per face on the carphone frames (the O-net is
    /// most of a face frame's cost), with final boxes within 4 % of the face's size of MTCNN's
    /// there. Two real faces rarely overlap by more than half their union (one would hide most
    /// of the other).
    pub refine_nms: f32,
    /// ONNX Runtime intra-op threads per graph (1: parallelism comes from batching).
    pub threads: usize,
    pub provider: Provider,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            canvas_width: 320,
            canvas_height: 180,
            min_face: 20.0,
            pyramid_factor: 0.709,
            thresholds: None,
            max_proposals: 64,
            max_refined: 16,
            refine_nms: 0.5,
            threads: 1,
            provider: Provider::Cpu,
        }
    }
}

/// One pyramid level: the canvas resampled to `w × h` (`scale` of the canvas).
#[derive(Debug)]
struct Level {
    scale: f32,
    w: usize,
    h: usize,
    xs: Axis,
    ys: Axis,
}

/// A candidate during the cascade: its box on the canvas and the last stage's regression.
#[derive(Clone, Copy, Debug)]
struct Cand {
    b: RoiBox,
    reg: [f32; 4],
}

/// The face detector: three ONNX sessions and the buffers of the last batch.
pub struct Detector {
    manifest: DetectorManifest,
    cfg: DetectorConfig,
    thresholds: [f32; 3],
    pnet: Session,
    rnet: Session,
    onet: Session,
    levels: Vec<Level>,
    canvases: Vec<Canvas>,
    input: Vec<f32>,
    tmp: Vec<f32>,
    planes: Vec<f32>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model_id", &self.manifest.model_id)
            .field("config", &self.cfg)
            .field("levels", &self.levels.len())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// The committed model: `$AIC_FACE_DETECTOR_DIR`, else `models/face-detector/` of this
    /// source tree.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("AIC_FACE_DETECTOR_DIR") {
            return PathBuf::from(d);
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/face-detector")
    }

    /// Checks the manifest, opens the three graphs and checks their inputs and outputs.
    pub fn open(dir: &Path, cfg: DetectorConfig) -> Result<Self, RoiError> {
        let manifest = DetectorManifest::load(dir)?;
        let bad = |why: String| RoiError::Unavailable {
            dir: dir.display().to_string(),
            why,
        };
        if !(24..=4096).contains(&cfg.canvas_width) || !(24..=4096).contains(&cfg.canvas_height) {
            return Err(bad(format!(
                "canvas {}x{} (expected 24..=4096 each)",
                cfg.canvas_width, cfg.canvas_height
            )));
        }
        if !(12.0..=4096.0).contains(&cfg.min_face) || !(0.3..=0.9).contains(&cfg.pyramid_factor) {
            return Err(bad(format!(
                "min_face {} (expected 12..=4096), pyramid_factor {} (expected 0.3..=0.9)",
                cfg.min_face, cfg.pyramid_factor
            )));
        }
        if cfg.max_proposals == 0 || cfg.max_refined == 0 {
            return Err(bad("max_proposals and max_refined must be positive".into()));
        }
        if !(0.1..=1.0).contains(&cfg.refine_nms) {
            return Err(bad(format!(
                "refine_nms {} (expected 0.1..=1.0)",
                cfg.refine_nms
            )));
        }
        let open = |g: &GraphEntry| -> Result<Session, RoiError> {
            let s = runtime::open_session(&dir.join(&g.file), cfg.threads.max(1), cfg.provider)?;
            check_graph(&s, g).map_err(|why| bad(format!("{}: {why}", g.file)))?;
            Ok(s)
        };
        let pnet = open(&manifest.graphs.pnet)?;
        let rnet = open(&manifest.graphs.rnet)?;
        let onet = open(&manifest.graphs.onet)?;
        let (cw, ch) = (cfg.canvas_width as usize, cfg.canvas_height as usize);
        let levels = pyramid(cw, ch, cfg.min_face, cfg.pyramid_factor)
            .into_iter()
            .map(|scale| {
                let (h, w) = (
                    (ch as f32 * scale + 1.0) as usize,
                    (cw as f32 * scale + 1.0) as usize,
                );
                Level {
                    scale,
                    w,
                    h,
                    xs: Axis::area(0.0, cw as f32, cw, w),
                    ys: Axis::area(0.0, ch as f32, ch, h),
                }
            })
            .collect();
        Ok(Detector {
            thresholds: cfg.thresholds.unwrap_or(manifest.thresholds),
            manifest,
            cfg,
            pnet,
            rnet,
            onet,
            levels,
            canvases: Vec::new(),
            input: Vec::new(),
            tmp: Vec::new(),
            planes: Vec::new(),
        })
    }

    pub fn manifest(&self) -> &DetectorManifest {
        &self.manifest
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Graph runs per call: one P-net run per pyramid level, then one R-net and one O-net run.
    pub fn pyramid_levels(&self) -> usize {
        self.levels.len()
    }

    /// Face boxes of each frame (in that frame's pixels, best first), for frames of any sizes
    /// and formats: all of them go through each stage as one batch.
    pub fn detect(&mut self, frames: &[FrameView<'_>]) -> Result<Vec<Vec<RoiBox>>, RoiError> {
        let n = frames.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (cw, ch) = (
            self.cfg.canvas_width as usize,
            self.cfg.canvas_height as usize,
        );
        while self.canvases.len() < n {
            self.canvases.push(Canvas::new(cw, ch));
        }
        for (c, f) in self.canvases.iter_mut().zip(frames) {
            c.fill(f, &mut self.tmp, &mut self.planes)?;
        }
        let props = self.proposals(n)?;
        let [_, t1, t2] = self.thresholds;
        // R-net: keep, merge, move each box by its regression, square it for the O-net.
        let mut refined = self.stage(Net::R, &props, t1)?;
        for c in refined.iter_mut() {
            let keep = nms(&boxes_of(c), self.cfg.refine_nms, Overlap::Union);
            *c = keep
                .into_iter()
                .take(self.cfg.max_refined)
                .map(|i| Cand {
                    b: square(bbreg(c[i].b, c[i].reg)),
                    reg: [0.0; 4],
                })
                .collect();
        }
        // O-net: keep, move, merge boxes inside others.
        let finals = self.stage(Net::O, &refined, t2)?;
        Ok(finals
            .into_iter()
            .zip(&self.canvases)
            .zip(frames)
            .map(|((c, canvas), f)| {
                let moved: Vec<RoiBox> = c.iter().map(|c| bbreg(c.b, c.reg)).collect();
                nms(&moved, 0.7, Overlap::Min)
                    .into_iter()
                    .filter_map(|i| to_frame(moved[i], canvas.scale, f.width(), f.height()))
                    .collect()
            })
            .collect())
    }

    /// First stage: P-net over every pyramid level of the batch, then per frame NMS across
    /// levels, regression, squaring, and the best `max_proposals`.
    fn proposals(&mut self, n: usize) -> Result<Vec<Vec<Cand>>, RoiError> {
        let t0 = self.thresholds[0];
        let (stride, cell) = (
            self.manifest.pnet_stride as f32,
            self.manifest.pnet_cell as f32,
        );
        let mut per_frame: Vec<Vec<Cand>> = vec![Vec::new(); n];
        for level in &self.levels {
            let plane = level.w * level.h;
            self.input.clear();
            self.input.resize(n * 3 * plane, 0.0);
            for (k, canvas) in self.canvases[..n].iter().enumerate() {
                for c in 0..3 {
                    resample(
                        canvas.plane(c),
                        canvas.width,
                        1,
                        &level.xs,
                        &level.ys,
                        &mut self.input[(k * 3 + c) * plane..(k * 3 + c + 1) * plane],
                        level.w,
                        &mut self.tmp,
                    );
                }
            }
            let (score, reg, dims) = run(&mut self.pnet, &self.input, [n, 3, level.h, level.w])?;
            let (rows, cols) = match dims[..] {
                [b, 1, r, c] if b == n as i64 && r > 0 && c > 0 => (r as usize, c as usize),
                _ => {
                    return Err(RoiError::Inference(format!(
                        "pnet: score shape {dims:?} for input {n}x3x{}x{}",
                        level.h, level.w
                    )));
                }
            };
            if reg.len() != n * 4 * rows * cols {
                return Err(RoiError::Inference(format!(
                    "pnet: {} regression values for {n}x4x{rows}x{cols}",
                    reg.len()
                )));
            }
            for (k, out) in per_frame.iter_mut().enumerate() {
                let mut cands = Vec::new();
                for r in 0..rows {
                    for c in 0..cols {
                        let s = score[(k * rows + r) * cols + c];
                        if s < t0 {
                            continue;
                        }
                        let at = |j: usize| reg[((k * 4 + j) * rows + r) * cols + c];
                        let (x, y) = (c as f32 * stride, r as f32 * stride);
                        cands.push(Cand {
                            b: RoiBox {
                                x0: ((x + 1.0) / level.scale).floor(),
                                y0: ((y + 1.0) / level.scale).floor(),
                                x1: ((x + cell) / level.scale).floor(),
                                y1: ((y + cell) / level.scale).floor(),
                                score: s,
                            },
                            reg: [at(0), at(1), at(2), at(3)],
                        });
                    }
                }
                let keep = nms(&boxes_of(&cands), 0.5, Overlap::Union);
                out.extend(keep.into_iter().map(|i| cands[i]));
            }
        }
        Ok(per_frame
            .into_iter()
            .map(|cands| {
                nms(&boxes_of(&cands), 0.7, Overlap::Union)
                    .into_iter()
                    .take(self.cfg.max_proposals)
                    .map(|i| {
                        let Cand { b, reg } = cands[i];
                        let (w, h) = (b.x1 - b.x0, b.y1 - b.y0);
                        let moved = RoiBox {
                            x0: b.x0 + reg[0] * w,
                            y0: b.y0 + reg[1] * h,
                            x1: b.x1 + reg[2] * w,
                            y1: b.y1 + reg[3] * h,
                            score: b.score,
                        };
                        Cand {
                            b: square(moved),
                            reg: [0.0; 4],
                        }
                    })
                    .collect()
            })
            .collect())
    }

    /// R- or O-net over every candidate of every frame in one batch: crops (clipped to the
    /// picture, as MTCNN does), scores, and those above `threshold` with their regression.
    fn stage(
        &mut self,
        net: Net,
        cands: &[Vec<Cand>],
        threshold: f32,
    ) -> Result<Vec<Vec<Cand>>, RoiError> {
        let entry = match net {
            Net::R => &self.manifest.graphs.rnet,
            Net::O => &self.manifest.graphs.onet,
        };
        let size = entry.crop.unwrap_or(24) as usize;
        let per = 3 * size * size;
        let mut owners: Vec<(usize, Cand)> = Vec::new();
        self.input.clear();
        for (k, frame_cands) in cands.iter().enumerate() {
            let canvas = &self.canvases[k];
            for c in frame_cands {
                let Some(region) = clip(c.b, canvas.content_w, canvas.content_h) else {
                    continue;
                };
                let at = self.input.len();
                self.input.resize(at + per, 0.0);
                canvas.crop(region, size, &mut self.input[at..], &mut self.tmp);
                owners.push((k, *c));
            }
        }
        let mut out = vec![Vec::new(); cands.len()];
        if owners.is_empty() {
            return Ok(out);
        }
        let b = owners.len();
        let session = match net {
            Net::R => &mut self.rnet,
            Net::O => &mut self.onet,
        };
        let (score, reg, _) = run(session, &self.input, [b, 3, size, size])?;
        if score.len() != b || reg.len() != 4 * b {
            return Err(RoiError::Inference(format!(
                "{net:?}-net: {} scores, {} regression values for {b} crops",
                score.len(),
                reg.len()
            )));
        }
        for (i, (k, c)) in owners.into_iter().enumerate() {
            if score[i] > threshold {
                out[k].push(Cand {
                    b: RoiBox {
                        score: score[i],
                        ..c.b
                    },
                    reg: [reg[4 * i], reg[4 * i + 1], reg[4 * i + 2], reg[4 * i + 3]],
                });
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug)]
enum Net {
    R,
    O,
}

/// MTCNN's pyramid: scales `12 / min_face · factor^k` while the shorter side stays ≥ 12 px.
fn pyramid(w: usize, h: usize, min_face: f32, factor: f32) -> Vec<f32> {
    let m = 12.0 / min_face;
    let mut minl = w.min(h) as f32 * m;
    let mut scale = m;
    let mut out = Vec::new();
    while minl >= 12.0 && out.len() < 32 {
        out.push(scale);
        scale *= factor;
        minl *= factor;
    }
    out
}

fn boxes_of(c: &[Cand]) -> Vec<RoiBox> {
    c.iter().map(|c| c.b).collect()
}

/// Stages two and three move a box by their regression in units of its inclusive size.
fn bbreg(b: RoiBox, reg: [f32; 4]) -> RoiBox {
    let (w, h) = (b.x1 - b.x0 + 1.0, b.y1 - b.y0 + 1.0);
    RoiBox {
        x0: b.x0 + reg[0] * w,
        y0: b.y0 + reg[1] * h,
        x1: b.x1 + reg[2] * w,
        y1: b.y1 + reg[3] * h,
        score: b.score,
    }
}

/// The square of the box's longer side around its centre.
fn square(b: RoiBox) -> RoiBox {
    let (w, h) = (b.x1 - b.x0, b.y1 - b.y0);
    let l = w.max(h);
    let x0 = b.x0 + w * 0.5 - l * 0.5;
    let y0 = b.y0 + h * 0.5 - l * 0.5;
    RoiBox {
        x0,
        y0,
        x1: x0 + l,
        y1: y0 + l,
        score: b.score,
    }
}

/// The crop MTCNN takes for a box: integer bounds, clipped to the picture (so a box over the
/// edge gives a squeezed crop); `None` when nothing of it is inside.
fn clip(b: RoiBox, w: usize, h: usize) -> Option<[f32; 4]> {
    let x = (b.x0.trunc() as i64).max(1);
    let y = (b.y0.trunc() as i64).max(1);
    let ex = (b.x1.trunc() as i64).min(w as i64);
    let ey = (b.y1.trunc() as i64).min(h as i64);
    (ex > x - 1 && ey > y - 1).then_some([(x - 1) as f32, (y - 1) as f32, ex as f32, ey as f32])
}

/// A canvas box in frame pixels, clipped to the frame; `None` when nothing is left.
fn to_frame(b: RoiBox, scale: f32, w: u32, h: u32) -> Option<RoiBox> {
    let (w, h) = (w as f32, h as f32);
    let out = RoiBox {
        x0: (b.x0 / scale).clamp(0.0, w),
        y0: (b.y0 / scale).clamp(0.0, h),
        x1: (b.x1 / scale).clamp(0.0, w),
        y1: (b.y1 / scale).clamp(0.0, h),
        score: b.score.clamp(0.0, 1.0),
    };
    (out.x1 > out.x0 && out.y1 > out.y0).then_some(out)
}

type Outputs = (Vec<f32>, Vec<f32>, Vec<i64>);

/// One graph run: `image` of `shape` in, (`score`, `reg`, score's shape) out.
fn run(session: &mut Session, input: &[f32], shape: [usize; 4]) -> Result<Outputs, RoiError> {
    let ie = |e: ort::Error| RoiError::Inference(e.to_string());
    let inputs = ort::inputs!["image" => TensorRef::from_array_view((shape, input)).map_err(ie)?];
    let outputs = session.run(inputs).map_err(ie)?;
    let (dims, score) = outputs["score"].try_extract_tensor::<f32>().map_err(ie)?;
    let dims: Vec<i64> = dims.iter().copied().collect();
    let (_, reg) = outputs["reg"].try_extract_tensor::<f32>().map_err(ie)?;
    Ok((score.to_vec(), reg.to_vec(), dims))
}

/// The graph's input is float32 `[batch, 3, h, w]` (`h = w = crop` where the manifest gives
/// one) and its outputs `score` / `reg` have 1 and 4 channels: 4-D maps for the P-net, `[batch,
/// channels]` rows for the others (checked as the audio models are).
fn check_graph(s: &Session, g: &GraphEntry) -> Result<(), String> {
    if g.input != "image" {
        return Err(format!("input {:?} (expected \"image\")", g.input));
    }
    let dims_of = |outlets: &[ort::value::Outlet], name: &str| -> Result<Vec<i64>, String> {
        let o = outlets
            .iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| format!("graph has no {name:?}"))?;
        match o.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } => Ok(shape.iter().copied().collect()),
            other => Err(format!("{name:?} is {other:?}, expected a float32 tensor")),
        }
    };
    let dims = dims_of(s.inputs(), "image")?;
    let want_hw = g.crop.map_or(-1, i64::from);
    if dims.len() != 4 || dims[0] > 1 || dims[1] != 3 || dims[2] != want_hw || dims[3] != want_hw {
        return Err(format!(
            "input image has shape {dims:?}, expected [batch, 3, {want_hw}, {want_hw}] (-1 = any)"
        ));
    }
    match g.crop {
        Some(_) => {
            runtime::check_io(s, false, "score", 1)?;
            runtime::check_io(s, false, "reg", 4)
        }
        None => {
            for (name, ch) in [("score", 1), ("reg", 4)] {
                let d = dims_of(s.outputs(), name)?;
                if d.len() != 4 || d[1] != ch {
                    return Err(format!(
                        "output {name:?} has shape {d:?}, expected [batch, {ch}, rows, cols]"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_of_the_default_canvas() {
        let p = pyramid(320, 180, 20.0, 0.709);
        assert_eq!(p.len(), 7);
        assert!((p[0] - 0.6).abs() < 1e-6);
        // The last level's shorter side is still a P-net cell.
        assert!(180.0 * p[6] >= 12.0 && 180.0 * p[6] * 0.709 < 12.0);
    }

    #[test]
    fn square_keeps_the_centre() {
        let s = square(RoiBox {
            x0: 10.0,
            y0: 20.0,
            x1: 30.0,
            y1: 60.0,
            score: 0.5,
        });
        assert_eq!((s.x0, s.y0, s.x1, s.y1), (0.0, 20.0, 40.0, 60.0));
    }

    #[test]
    fn clip_cuts_to_the_picture_and_drops_outside_boxes() {
        let b = |x0, y0, x1, y1| RoiBox {
            x0,
            y0,
            x1,
            y1,
            score: 1.0,
        };
        assert_eq!(
            clip(b(-5.0, 2.7, 30.0, 500.0), 100, 50),
            Some([0.0, 1.0, 30.0, 50.0])
        );
        assert_eq!(clip(b(120.0, 0.0, 130.0, 10.0), 100, 50), None);
    }
}
