//! Rate prediction (issue #14's "compression ratio prediction") and the hint controller. Pure:
//! no I/O, no clock (callers pass `now`), no FFmpeg.
//!
//! * [`ShotFeatures`] / [`FeatureMeter`] — cheap per-shot features from the pictures: on the
//!   luma plane averaged down 4× in each direction, the spatial complexity (mean absolute
//!   horizontal + vertical gradient) and the temporal complexity (mean absolute difference to
//!   the previous picture), plus the picture size, frame rate and, where a detector ran, the
//!   share of the picture that is face. A 640×360 frame costs one pass over its luma.
//! * [`RateModel`] — a shot's rate–quality curve, `quality = a(x) + b(x) · ln(bits per pixel)`,
//!   with `a` and `b` linear in the features `x`; inverted by [`RateModel::predict_bitrate`].
//!   Fitted by [`RateModel::fit`] (least squares, by hand) from encodes of 1 s shots
//!   (`aic video fit-rate`) and read from `models/video-rate/<encoder>.json`
//!   ([`RateModel::bundled`] has the committed ones compiled in).
//! * [`RateController`] — sans-IO: fed `now`, the shot's features, the receiver's bandwidth
//!   estimate and a target quality, says which [`FrameHints::bitrate_bps`](crate::FrameHints)
//!   to use. It moves the target only when the change is worth it: libvpx's, libaom's and
//!   SVT-AV1's FFmpeg 5.1 wrappers re-open the encoder on a new bitrate (a keyframe), x264's
//!   does not ([`ControllerConfig::for_encoder`]). It never asks for more than the estimate.
//!
//! ## Why this curve
//! Over the measured range of a real-time encoder (about 0.01–0.5 bits per pixel) PSNR grows
//! close to linearly in the logarithm of the rate (the classic high-rate result: 6 dB per bit
//! per pixel becomes `b · ln(bpp)` once the encoder's tools are in play), so two numbers per
//! shot describe it: the level `a` (what the content allows at one bit per pixel) and the slope
//! `b` (dB per e-fold of rate). Both depend on the content: busy, moving pictures need more
//! bits for the same quality (lower `a`). Making `a` and `b` linear in a handful of
//! log-features keeps the fit a small linear least-squares problem that needs no library, and
//! its inverse is closed-form (`bpp = exp((Q − a) / b)`), which the controller calls per frame.
//! The quality is PSNR-Y (computed in Rust in the same pass as the encode): `docs/video.md`
//! has why not VMAF, the data, and the leave-one-source-out errors. On that data (three real
//! sources) the content features did not generalise to a held-out source, so the committed
//! AV1 model uses the picture size only (`ln_pixels`); the controller and the file format take
//! any of [`FEATURE_NAMES`] once data supports them.
//!
//! ## Plugging it into the engine
//! The [`Transcoder`](crate::engine::Transcoder) passes [`FrameHints`](crate::FrameHints) to
//! the encoder per frame. A driver keeps one [`FeatureMeter`] and one [`RateController`] per
//! receiver-facing encoder: it pushes each decoded frame into the meter, calls
//! [`RateController::update`] with the meter's features, the receiver's bandwidth estimate and
//! the target quality, and puts [`RateDecision::hint`] into that frame's `bitrate_bps` (`None`
//! when nothing changes, so the encoder is not re-opened).

pub mod eval;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::encode::{EncoderConfig, EncoderKind};
use crate::error::{Error, Result};
use crate::frame::Yuv420Frame;

/// The definition of [`ShotFeatures`] a model was fitted with; a model of another version is
/// refused. Bump it when the features' computation changes.
pub const FEATURES_VERSION: u32 = 1;

/// The luma plane is averaged over `DOWNSCALE × DOWNSCALE` blocks before the features.
pub const DOWNSCALE: usize = 4;

/// QCIF's pixel count: `ln_pixels` is `ln(pixels / QCIF_PIXELS)`.
pub const QCIF_PIXELS: f64 = 176.0 * 144.0;

/// The names a model's feature vector may use (see [`ShotFeatures::value`]).
pub const FEATURE_NAMES: [&str; 5] = ["1", "ln_spatial", "ln_temporal", "ln_pixels", "face"];

/// What the rate model knows about a shot (a second or so of pictures).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShotFeatures {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Mean absolute horizontal plus vertical neighbour difference of the 4×-downscaled luma,
    /// averaged over the shot's pictures (0 for a flat picture).
    pub spatial: f64,
    /// Mean absolute difference of the 4×-downscaled luma to the previous picture's, averaged
    /// over the shot's pictures that have one (0 for a still shot).
    pub temporal: f64,
    /// Share of the picture inside face boxes (0..=1; 0 when no detector ran).
    pub face_fraction: f64,
    /// Pictures the features were averaged over.
    pub frames: u32,
}

impl ShotFeatures {
    pub fn pixels(&self) -> f64 {
        f64::from(self.width) * f64::from(self.height)
    }

    /// Pixels per second: what a bitrate is divided by to give bits per pixel.
    pub fn pixel_rate(&self) -> f64 {
        self.pixels() * self.fps.max(1.0)
    }

    /// The value of one named regressor (`None` for an unknown name): `1`, `ln_spatial` =
    /// `ln(1 + spatial)`, `ln_temporal` = `ln(1 + temporal)`, `ln_pixels` =
    /// `ln(pixels / QCIF)`, `face` = the face share.
    pub fn value(&self, name: &str) -> Option<f64> {
        Some(match name {
            "1" => 1.0,
            "ln_spatial" => self.spatial.max(0.0).ln_1p(),
            "ln_temporal" => self.temporal.max(0.0).ln_1p(),
            "ln_pixels" => (self.pixels() / QCIF_PIXELS).ln(),
            "face" => self.face_fraction.clamp(0.0, 1.0),
            _ => return None,
        })
    }

    /// How far two shots' content lies apart: the larger of the spatial and the temporal
    /// complexity's distance in `ln(1 + ·)`; a different picture size is infinitely far.
    pub fn distance(&self, other: &ShotFeatures) -> f64 {
        if self.width != other.width || self.height != other.height {
            return f64::INFINITY;
        }
        let d = |a: f64, b: f64| (a.max(0.0).ln_1p() - b.max(0.0).ln_1p()).abs();
        d(self.spatial, other.spatial).max(d(self.temporal, other.temporal))
    }

    /// The features of a run of pictures (`None` when there is none).
    pub fn from_frames(frames: &[Yuv420Frame], fps: f64) -> Option<Self> {
        let mut m = FeatureMeter::new(frames.len().max(1));
        for f in frames {
            m.push(f);
        }
        m.features(fps)
    }
}

/// Measures [`ShotFeatures`] over a sliding window of the last `window` pictures of one
/// stream. The temporal difference runs across windows (a picture's predecessor may be
/// older than the window); a change of picture size starts again.
#[derive(Clone, Debug)]
pub struct FeatureMeter {
    window: usize,
    width: u32,
    height: u32,
    prev: Vec<u8>,
    cur: Vec<u8>,
    /// Per picture in the window: (spatial, temporal if it had a predecessor).
    values: std::collections::VecDeque<(f64, Option<f64>)>,
}

impl FeatureMeter {
    /// A meter averaging over the last `window` pictures (at least 1); one second of pictures
    /// is what the committed models were fitted with.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            width: 0,
            height: 0,
            prev: Vec::new(),
            cur: Vec::new(),
            values: std::collections::VecDeque::new(),
        }
    }

    /// Forgets everything (the next picture has no predecessor).
    pub fn reset(&mut self) {
        self.prev.clear();
        self.values.clear();
    }

    /// Adds one picture: one pass over its luma.
    pub fn push(&mut self, frame: &Yuv420Frame) {
        if frame.width != self.width || frame.height != self.height {
            self.width = frame.width;
            self.height = frame.height;
            self.reset();
        }
        let (dw, dh) = downscale_luma(frame, &mut self.cur);
        let spatial = mean_gradient(&self.cur, dw, dh);
        let temporal = (self.prev.len() == self.cur.len() && !self.cur.is_empty()).then(|| {
            let s: u64 = self
                .cur
                .iter()
                .zip(&self.prev)
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum();
            s as f64 / self.cur.len() as f64
        });
        std::mem::swap(&mut self.prev, &mut self.cur);
        if self.values.len() == self.window {
            self.values.pop_front();
        }
        self.values.push_back((spatial, temporal));
    }

    /// The window's features at `fps` (`None` before the first picture).
    pub fn features(&self, fps: f64) -> Option<ShotFeatures> {
        if self.values.is_empty() {
            return None;
        }
        let n = self.values.len() as f64;
        let spatial = self.values.iter().map(|v| v.0).sum::<f64>() / n;
        let (ts, tn) = self
            .values
            .iter()
            .filter_map(|v| v.1)
            .fold((0.0, 0usize), |(s, n), t| (s + t, n + 1));
        Some(ShotFeatures {
            width: self.width,
            height: self.height,
            fps,
            spatial,
            temporal: if tn == 0 { 0.0 } else { ts / tn as f64 },
            face_fraction: 0.0,
            frames: self.values.len() as u32,
        })
    }
}

/// Block means of the luma over `DOWNSCALE²` blocks (partial blocks at the right and bottom
/// edges are left out; pictures smaller than a block give one block of what there is).
fn downscale_luma(f: &Yuv420Frame, out: &mut Vec<u8>) -> (usize, usize) {
    let (w, h) = (f.width as usize, f.height as usize);
    let (s, dw, dh) = if w >= DOWNSCALE && h >= DOWNSCALE {
        (DOWNSCALE, w / DOWNSCALE, h / DOWNSCALE)
    } else {
        (1, w, h)
    };
    out.clear();
    out.resize(dw * dh, 0);
    let mut row = vec![0u32; dw];
    for by in 0..dh {
        row.iter_mut().for_each(|r| *r = 0);
        for y in by * s..by * s + s {
            let line = &f.y[y * w..y * w + dw * s];
            for (bx, chunk) in line.chunks_exact(s).enumerate() {
                row[bx] += chunk.iter().map(|&p| u32::from(p)).sum::<u32>();
            }
        }
        let n = (s * s) as u32;
        for (o, r) in out[by * dw..(by + 1) * dw].iter_mut().zip(&row) {
            *o = ((r + n / 2) / n) as u8;
        }
    }
    (dw, dh)
}

/// Mean |horizontal neighbour difference| + mean |vertical neighbour difference|.
fn mean_gradient(p: &[u8], w: usize, h: usize) -> f64 {
    let mut gx = 0u64;
    let mut gy = 0u64;
    for y in 0..h {
        let line = &p[y * w..(y + 1) * w];
        gx += line
            .windows(2)
            .map(|d| u64::from(d[0].abs_diff(d[1])))
            .sum::<u64>();
        if y + 1 < h {
            let next = &p[(y + 1) * w..(y + 2) * w];
            gy += line
                .iter()
                .zip(next)
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum::<u64>();
        }
    }
    let nx = (w.saturating_sub(1) * h) as f64;
    let ny = (w * h.saturating_sub(1)) as f64;
    (if nx > 0.0 { gx as f64 / nx } else { 0.0 }) + (if ny > 0.0 { gy as f64 / ny } else { 0.0 })
}

/// One measured point: a shot encoded at some rate and the quality it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateSample {
    /// Where the shot came from (clips of one source share a group in leave-one-out).
    pub group: String,
    pub clip: String,
    pub shot: u32,
    pub features: ShotFeatures,
    /// The encoder's target, bit/s.
    pub target_bps: f64,
    /// The bits the shot's pictures took, per second.
    pub bps: f64,
    /// The metric (PSNR-Y, dB: mean over the shot's pictures).
    pub quality: f64,
}

/// A fitted rate–quality model for one encoder: `quality = a·x + (b·x) · ln(bps / pixel_rate)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateModel {
    /// Always `aic-video-rate`.
    pub format: String,
    /// [`EncoderKind::name`] of the encoder the data came from.
    pub encoder: String,
    /// The quality metric (`psnr_y`, dB).
    pub metric: String,
    /// [`FEATURES_VERSION`] of the features the model was fitted on.
    pub features_version: u32,
    /// The regressors `x` (names from [`FEATURE_NAMES`]).
    pub features: Vec<String>,
    /// Coefficients of the level `a` and the slope `b`, one per regressor.
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    /// The slope is held at least this (dB per e-fold of rate) so the curve can be inverted.
    pub b_min: f64,
    /// Bits per pixel predictions are clamped to (the fit data's range).
    pub bpp_range: [f64; 2],
    /// How it was fitted: the command, the data, the evaluation (free form, for people).
    #[serde(default)]
    pub fit: serde_json::Value,
}

const FORMAT: &str = "aic-video-rate";

impl RateModel {
    /// Parses and checks a model file's text.
    pub fn from_json(text: &str) -> Result<Self> {
        let m: RateModel =
            serde_json::from_str(text).map_err(|e| bad(format!("not a rate model: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// The committed model of an encoder (`models/video-rate/<name>.json`, compiled in), or
    /// `None` when none was fitted for it.
    pub fn bundled(kind: EncoderKind) -> Option<Self> {
        let text = match kind {
            EncoderKind::Av1 => include_str!("../../models/video-rate/av1.json"),
            _ => return None,
        };
        Some(Self::from_json(text).expect("the committed rate model parses"))
    }

    fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(bad(format!(
                "format {:?} (expected {FORMAT:?})",
                self.format
            )));
        }
        if self.features_version != FEATURES_VERSION {
            return Err(bad(format!(
                "features version {} (this build computes version {FEATURES_VERSION})",
                self.features_version
            )));
        }
        if self.features.is_empty()
            || self.a.len() != self.features.len()
            || self.b.len() != self.features.len()
        {
            return Err(bad(format!(
                "{} features, {} a, {} b coefficients",
                self.features.len(),
                self.a.len(),
                self.b.len()
            )));
        }
        if let Some(f) = self
            .features
            .iter()
            .find(|f| !FEATURE_NAMES.contains(&f.as_str()))
        {
            return Err(bad(format!("unknown feature {f:?}")));
        }
        let [lo, hi] = self.bpp_range;
        if self.a.iter().chain(&self.b).any(|c| !c.is_finite())
            || !(self.b_min.is_finite() && self.b_min > 0.0)
            || !(lo > 0.0 && hi > lo && hi.is_finite())
        {
            return Err(bad("coefficients, b_min or bpp_range out of range".into()));
        }
        Ok(())
    }

    fn regressors(&self, f: &ShotFeatures) -> impl Iterator<Item = f64> + '_ {
        let f = *f;
        self.features.iter().map(move |n| f.value(n).unwrap_or(0.0))
    }

    /// The curve's level and slope for a shot: `quality = a + b · ln(bpp)`.
    pub fn curve(&self, f: &ShotFeatures) -> (f64, f64) {
        let a = self.regressors(f).zip(&self.a).map(|(x, c)| x * c).sum();
        let b: f64 = self.regressors(f).zip(&self.b).map(|(x, c)| x * c).sum();
        (a, b.max(self.b_min))
    }

    /// The quality the shot is predicted to get at `bps` (bits per pixel clamped to the fit's
    /// range).
    pub fn predict_quality(&self, f: &ShotFeatures, bps: f64) -> f64 {
        let (a, b) = self.curve(f);
        let bpp = (bps / f.pixel_rate()).clamp(self.bpp_range[0], self.bpp_range[1]);
        a + b * bpp.ln()
    }

    /// The bitrate (bit/s) the shot is predicted to need for `target_quality` (bits per pixel
    /// clamped to the fit's range).
    pub fn predict_bitrate(&self, f: &ShotFeatures, target_quality: f64) -> f64 {
        let (a, b) = self.curve(f);
        let bpp = ((target_quality - a) / b)
            .exp()
            .clamp(self.bpp_range[0], self.bpp_range[1]);
        bpp * f.pixel_rate()
    }

    /// Least-squares fit of `a` and `b` over `features` (a small ridge `lambda` on every
    /// coefficient but the intercepts keeps rarely-seen features from running away). The
    /// samples' bits-per-pixel range becomes [`Self::bpp_range`]. `fit` is left empty.
    pub fn fit(
        encoder: &str,
        features: &[&str],
        samples: &[RateSample],
        lambda: f64,
    ) -> Result<Self> {
        let k = features.len();
        if let Some(f) = features.iter().find(|f| !FEATURE_NAMES.contains(f)) {
            return Err(bad(format!("unknown feature {f:?}")));
        }
        if samples.len() < 2 * k {
            return Err(bad(format!(
                "{} samples for {} coefficients",
                samples.len(),
                2 * k
            )));
        }
        let p = 2 * k;
        let mut ata = vec![0.0; p * p];
        let mut aty = vec![0.0; p];
        let mut row = vec![0.0; p];
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for s in samples {
            let bpp = s.bps / s.features.pixel_rate();
            if !(bpp > 0.0 && bpp.is_finite() && s.quality.is_finite()) {
                continue;
            }
            lo = lo.min(bpp);
            hi = hi.max(bpp);
            let l = bpp.ln();
            for (j, name) in features.iter().enumerate() {
                let x = s.features.value(name).unwrap_or(0.0);
                row[j] = x;
                row[k + j] = x * l;
            }
            for i in 0..p {
                aty[i] += row[i] * s.quality;
                for j in 0..p {
                    ata[i * p + j] += row[i] * row[j];
                }
            }
        }
        for (j, name) in features.iter().enumerate() {
            if *name != "1" {
                ata[j * p + j] += lambda;
                ata[(k + j) * p + k + j] += lambda;
            }
        }
        let theta =
            solve(ata, aty, p).ok_or_else(|| bad("singular fit (too little variety)".into()))?;
        let m = RateModel {
            format: FORMAT.into(),
            encoder: encoder.into(),
            metric: "psnr_y".into(),
            features_version: FEATURES_VERSION,
            features: features.iter().map(|s| s.to_string()).collect(),
            a: theta[..k].to_vec(),
            b: theta[k..].to_vec(),
            b_min: 0.5,
            bpp_range: [lo, hi],
            fit: serde_json::Value::Null,
        };
        m.validate()?;
        Ok(m)
    }
}

fn bad(msg: String) -> Error {
    Error::InvalidConfig(format!("rate model: {msg}"))
}

/// Solves the `n × n` system `m · x = v` (Gaussian elimination, partial pivoting).
fn solve(mut m: Vec<f64>, mut v: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for c in 0..n {
        let piv = (c..n).max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))?;
        if m[piv * n + c].abs() < 1e-12 {
            return None;
        }
        if piv != c {
            for j in 0..n {
                m.swap(c * n + j, piv * n + j);
            }
            v.swap(c, piv);
        }
        for r in c + 1..n {
            let f = m[r * n + c] / m[c * n + c];
            if f != 0.0 {
                for j in c..n {
                    m[r * n + j] -= f * m[c * n + j];
                }
                v[r] -= f * v[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|j| m[r * n + j] * x[j]).sum();
        x[r] = (v[r] - s) / m[r * n + r];
    }
    x.iter().all(|x| x.is_finite()).then_some(x)
}

/// When the controller may move the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControllerConfig {
    /// The smallest relative change worth making (0.15 = 15 %).
    pub min_change: f64,
    /// The shortest time between two changes, unless the bandwidth estimate forces one or the
    /// shot changed.
    pub min_interval: Duration,
    /// A shot whose features lie this far ([`ShotFeatures::distance`]) from those of the last
    /// change counts as a new shot: it is re-evaluated without waiting for `min_interval`.
    pub shot_change: f64,
    /// The target never leaves `min_bps..=max_bps` (the encoder's limits by default); the
    /// floor wins over a smaller bandwidth estimate.
    pub min_bps: u32,
    pub max_bps: u32,
}

impl ControllerConfig {
    /// For encoders whose FFmpeg 5.1 wrapper re-opens on a new bitrate (libaom, libvpx,
    /// SVT-AV1: each change is a keyframe): 15 % and 2 s. For x264, which reconfigures in
    /// place: 5 % and no wait.
    pub fn for_encoder(kind: EncoderKind) -> Self {
        let (min_change, min_interval) = match kind {
            EncoderKind::X264 => (0.05, Duration::ZERO),
            _ => (0.15, Duration::from_secs(2)),
        };
        Self {
            min_change,
            min_interval,
            shot_change: 0.35,
            min_bps: EncoderConfig::MIN_BITRATE,
            max_bps: EncoderConfig::MAX_BITRATE,
        }
    }
}

/// Why the target is what it is after an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateReason {
    /// The first update: the encoder starts here.
    First,
    /// The target was above the bandwidth estimate: lowered at once.
    Bandwidth,
    /// The content changed: re-evaluated without waiting.
    ShotChange,
    /// The prediction (or a risen estimate) moved far enough, long enough after the last change.
    Drift,
    /// Nothing worth a change.
    Held,
}

/// One update's answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateDecision {
    /// The target to encode at now.
    pub bitrate_bps: u32,
    /// Whether it differs from the previous update's target.
    pub changed: bool,
    /// What the model asked for (before the estimate and the hysteresis).
    pub predicted_bps: f64,
    pub reason: RateReason,
}

impl RateDecision {
    /// What goes into [`FrameHints::bitrate_bps`](crate::FrameHints): only a change.
    pub fn hint(&self) -> Option<u32> {
        self.changed.then_some(self.bitrate_bps)
    }
}

/// Sans-IO bitrate controller for one encoder (see the module docs).
#[derive(Clone, Debug)]
pub struct RateController {
    model: RateModel,
    cfg: ControllerConfig,
    current: Option<u32>,
    last_change: Option<Instant>,
    /// The features at the last change: the shot the current target was chosen for.
    chosen_for: Option<ShotFeatures>,
    changes: u64,
}

impl RateController {
    pub fn new(model: RateModel, cfg: ControllerConfig) -> Self {
        Self {
            model,
            cfg,
            current: None,
            last_change: None,
            chosen_for: None,
            changes: 0,
        }
    }

    pub fn model(&self) -> &RateModel {
        &self.model
    }

    /// The current target (`None` before the first update).
    pub fn bitrate(&self) -> Option<u32> {
        self.current
    }

    /// Changes after the first target (each one a re-open for libaom/libvpx).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// One step: the target for the frames from `now` on.
    pub fn update(
        &mut self,
        now: Instant,
        features: &ShotFeatures,
        bandwidth_bps: u32,
        target_quality: f64,
    ) -> RateDecision {
        let predicted = self.model.predict_bitrate(features, target_quality);
        let (lo, hi) = (self.cfg.min_bps, self.cfg.max_bps.max(self.cfg.min_bps));
        let cap = bandwidth_bps.clamp(lo, hi);
        let want = (predicted.round().clamp(0.0, f64::from(u32::MAX)) as u32).clamp(lo, cap);
        let Some(cur) = self.current else {
            return self.set(now, features, want, predicted, RateReason::First);
        };
        if cur > cap {
            return self.set(now, features, want, predicted, RateReason::Bandwidth);
        }
        let rel = (f64::from(want) - f64::from(cur)).abs() / f64::from(cur.max(1));
        let held = RateDecision {
            bitrate_bps: cur,
            changed: false,
            predicted_bps: predicted,
            reason: RateReason::Held,
        };
        if rel < self.cfg.min_change {
            return held;
        }
        let new_shot = self
            .chosen_for
            .is_none_or(|c| features.distance(&c) >= self.cfg.shot_change);
        let waited = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.min_interval);
        if new_shot {
            self.set(now, features, want, predicted, RateReason::ShotChange)
        } else if waited {
            self.set(now, features, want, predicted, RateReason::Drift)
        } else {
            held
        }
    }

    fn set(
        &mut self,
        now: Instant,
        features: &ShotFeatures,
        bps: u32,
        predicted: f64,
        reason: RateReason,
    ) -> RateDecision {
        let changed = self.current != Some(bps);
        if changed {
            if self.current.is_some() {
                self.changes += 1;
            }
            self.last_change = Some(now);
            self.chosen_for = Some(*features);
        }
        self.current = Some(bps);
        RateDecision {
            bitrate_bps: bps,
            changed,
            predicted_bps: predicted,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, pix: impl Fn(u32, u32) -> u8) -> Yuv420Frame {
        let mut f = Yuv420Frame::grey(w, h).unwrap();
        for y in 0..h {
            for x in 0..w {
                f.y[(y * w + x) as usize] = pix(x, y);
            }
        }
        f
    }

    #[test]
    fn flat_still_pictures_have_no_complexity() {
        let f = frame(64, 48, |_, _| 90);
        let s = ShotFeatures::from_frames(&[f.clone(), f], 30.0).unwrap();
        assert_eq!((s.spatial, s.temporal, s.frames), (0.0, 0.0, 2));
    }

    #[test]
    fn stripes_and_motion_are_measured() {
        // Vertical stripes 8 px wide: after 4x averaging, alternating blocks of 0 and 200.
        let a = frame(64, 48, |x, _| if (x / 8) % 2 == 0 { 0 } else { 200 });
        let s = ShotFeatures::from_frames(std::slice::from_ref(&a), 30.0).unwrap();
        // Pairs of equal blocks: half the horizontal neighbours differ by 200.
        assert!((s.spatial - 200.0 * 7.0 / 15.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.temporal, 0.0);
        // The same stripes moved by 8 px: every downscaled pixel flips.
        let b = frame(64, 48, |x, _| if (x / 8) % 2 == 1 { 0 } else { 200 });
        let s = ShotFeatures::from_frames(&[a, b], 30.0).unwrap();
        assert!((s.temporal - 200.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn the_meter_window_slides() {
        let mut m = FeatureMeter::new(2);
        let flat = frame(32, 32, |_, _| 10);
        let busy = frame(32, 32, |x, y| ((x * 37 + y * 91) % 251) as u8);
        m.push(&busy);
        m.push(&flat);
        // The first flat picture still differs from the busy one before it.
        assert!(m.features(25.0).unwrap().temporal > 10.0);
        m.push(&flat);
        m.push(&flat);
        let f = m.features(25.0).unwrap();
        assert_eq!((f.spatial, f.temporal, f.frames), (0.0, 0.0, 2));
    }

    #[test]
    fn solve_recovers_a_known_system() {
        let x = solve(vec![2.0, 1.0, 1.0, 3.0], vec![5.0, 10.0], 2).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] - 3.0).abs() < 1e-12);
        assert!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 2.0], 2).is_none());
    }
}
