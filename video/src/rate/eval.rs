//! Honest evaluation of a [`RateModel`] on measured shots (pure): leave one group (a source
//! clip with all its sizes and variants) out, fit on the rest, and on the held-out shots
//! compare
//! * the bitrate the model predicts for a target quality with the bitrate the shot needed
//!   (its measured rate–quality points, interpolated in `ln(rate)`), and
//! * the bits of per-shot targets from the model against one fixed bitrate for the whole clip
//!   that gives the same mean quality (both read off the measured curves).

use super::{RateModel, RateSample, ShotFeatures};
use crate::error::Result;

/// One shot's measured points, sorted by rate.
#[derive(Clone, Debug)]
pub struct ShotCurve {
    pub group: String,
    pub clip: String,
    pub shot: u32,
    pub features: ShotFeatures,
    /// (bit/s, quality), by rising rate.
    pub points: Vec<(f64, f64)>,
}

impl ShotCurve {
    /// The rate at which the measured curve first reaches `q` (interpolated linearly in
    /// `ln(rate)`); `None` when `q` lies outside what was measured.
    pub fn rate_for(&self, q: f64) -> Option<f64> {
        self.points.windows(2).find_map(|w| {
            let ((r0, q0), (r1, q1)) = (w[0], w[1]);
            if (q0 <= q && q <= q1) || (q1 <= q && q <= q0) {
                let t = if (q1 - q0).abs() < 1e-12 {
                    0.0
                } else {
                    (q - q0) / (q1 - q0)
                };
                Some((r0.ln() + t * (r1.ln() - r0.ln())).exp())
            } else {
                None
            }
        })
    }

    /// The measured quality at `bps` (interpolated in `ln(rate)`, held at the ends), and
    /// whether `bps` lay inside the measured rates.
    pub fn quality_at(&self, bps: f64) -> (f64, bool) {
        let (first, last) = (self.points[0], self.points[self.points.len() - 1]);
        if bps <= first.0 {
            return (first.1, bps >= first.0 * 0.999);
        }
        if bps >= last.0 {
            return (last.1, bps <= last.0 * 1.001);
        }
        let w = self
            .points
            .windows(2)
            .find(|w| w[0].0 <= bps && bps <= w[1].0)
            .expect("inside the range");
        let ((r0, q0), (r1, q1)) = (w[0], w[1]);
        let t = (bps.ln() - r0.ln()) / (r1.ln() - r0.ln()).max(1e-12);
        (q0 + t * (q1 - q0), true)
    }
}

/// Groups samples into per-shot curves (shots with fewer than two points are left out).
pub fn curves(samples: &[RateSample]) -> Vec<ShotCurve> {
    let mut out: Vec<ShotCurve> = Vec::new();
    for s in samples {
        match out
            .iter_mut()
            .find(|c| c.clip == s.clip && c.shot == s.shot)
        {
            Some(c) => c.points.push((s.bps, s.quality)),
            None => out.push(ShotCurve {
                group: s.group.clone(),
                clip: s.clip.clone(),
                shot: s.shot,
                features: s.features,
                points: vec![(s.bps, s.quality)],
            }),
        }
    }
    for c in &mut out {
        c.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.retain(|c| c.points.len() >= 2);
    out
}

/// A predicted against a measured bitrate for one held-out shot and target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RateError {
    pub group: String,
    pub clip: String,
    pub shot: u32,
    pub target_quality: f64,
    pub measured_bps: f64,
    pub predicted_bps: f64,
}

impl RateError {
    /// `predicted / measured − 1` (0.1 = 10 % too many bits predicted).
    pub fn relative(&self) -> f64 {
        self.predicted_bps / self.measured_bps - 1.0
    }
}

/// Per-shot targets against one fixed rate, for one held-out clip and target quality.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Saving {
    pub group: String,
    pub clip: String,
    pub target_quality: f64,
    pub shots: usize,
    /// Shots whose predicted rate fell outside their measured rates (quality held at the end).
    pub clamped: usize,
    /// Mean quality the per-shot targets reach on the measured curves.
    pub mean_quality: f64,
    /// Mean bit/s of the per-shot targets, and the fixed rate with the same mean quality.
    pub predicted_bps: f64,
    pub fixed_bps: f64,
}

impl Saving {
    /// `1 − predicted / fixed` (0.1 = the per-shot targets spend 10 % fewer bits).
    pub fn saved(&self) -> f64 {
        1.0 - self.predicted_bps / self.fixed_bps
    }
}

/// What [`leave_one_group_out`] found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Evaluation {
    pub errors: Vec<RateError>,
    pub savings: Vec<Saving>,
}

/// Median and 90th percentile of `|v|`.
pub fn abs_percentiles(v: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut a: Vec<f64> = v.map(f64::abs).filter(|x| x.is_finite()).collect();
    if a.is_empty() {
        return None;
    }
    a.sort_by(f64::total_cmp);
    let q = |p: f64| a[((p * a.len() as f64).ceil() as usize).clamp(1, a.len()) - 1];
    Some((q(0.5), q(0.9)))
}

/// Scores `model` on every shot of `samples`: its bitrate error at each target quality, and
/// the per-shot targets against one fixed rate per clip.
pub fn score(model: &RateModel, samples: &[RateSample], targets: &[f64]) -> Evaluation {
    let held = curves(samples);
    let mut ev = Evaluation::default();
    for &q in targets {
        for c in &held {
            if let Some(measured) = c.rate_for(q) {
                ev.errors.push(RateError {
                    group: c.group.clone(),
                    clip: c.clip.clone(),
                    shot: c.shot,
                    target_quality: q,
                    measured_bps: measured,
                    predicted_bps: model.predict_bitrate(&c.features, q),
                });
            }
        }
        let mut clips: Vec<&str> = held.iter().map(|c| c.clip.as_str()).collect();
        clips.dedup();
        for clip in clips {
            let shots: Vec<&ShotCurve> = held.iter().filter(|c| c.clip == clip).collect();
            if let Some(s) = saving(model, &shots, q) {
                ev.savings.push(s);
            }
        }
    }
    ev
}

/// Leave-one-group-out: for each group, fit on the other groups' samples with `features`
/// and `lambda`, then [`score`] the held-out group.
pub fn leave_one_group_out(
    encoder: &str,
    samples: &[RateSample],
    features: &[&str],
    lambda: f64,
    targets: &[f64],
) -> Result<Evaluation> {
    let mut groups: Vec<&str> = samples.iter().map(|s| s.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut ev = Evaluation::default();
    for g in groups {
        let (train, held): (Vec<RateSample>, Vec<RateSample>) =
            samples.iter().cloned().partition(|s| s.group != g);
        let model = RateModel::fit(encoder, features, &train, lambda)?;
        let e = score(&model, &held, targets);
        ev.errors.extend(e.errors);
        ev.savings.extend(e.savings);
    }
    Ok(ev)
}

fn saving(model: &RateModel, shots: &[&ShotCurve], q: f64) -> Option<Saving> {
    let n = shots.len();
    if n < 2 {
        return None;
    }
    let (mut sum_q, mut sum_r, mut clamped) = (0.0, 0.0, 0);
    for c in shots {
        let r = model.predict_bitrate(&c.features, q);
        let (got, inside) = c.quality_at(r);
        sum_q += got;
        sum_r += r.clamp(c.points[0].0, c.points[c.points.len() - 1].0);
        clamped += usize::from(!inside);
    }
    let mean_q = sum_q / n as f64;
    let mean_at = |r: f64| shots.iter().map(|c| c.quality_at(r).0).sum::<f64>() / n as f64;
    // The fixed rate: bisection in ln(rate) over the rates every shot was measured at.
    let lo = shots
        .iter()
        .map(|c| c.points[0].0)
        .fold(f64::INFINITY, f64::min);
    let hi = shots
        .iter()
        .map(|c| c.points[c.points.len() - 1].0)
        .fold(0.0, f64::max);
    let (mut a, mut b) = (lo.ln(), hi.ln());
    if !(mean_at(lo) <= mean_q && mean_q <= mean_at(hi)) {
        return None;
    }
    for _ in 0..60 {
        let m = 0.5 * (a + b);
        if mean_at(m.exp()) < mean_q {
            a = m;
        } else {
            b = m;
        }
    }
    Some(Saving {
        group: shots[0].group.clone(),
        clip: shots[0].clip.clone(),
        target_quality: q,
        shots: n,
        clamped,
        mean_quality: mean_q,
        predicted_bps: sum_r / n as f64,
        fixed_bps: (0.5 * (a + b)).exp(),
    })
}
