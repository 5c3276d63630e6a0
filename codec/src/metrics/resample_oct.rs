//! The resampler `pystoi` uses (`utils.resample_oct`): scipy's `resample_poly` with the
//! Kaiser-windowed sinc of Octave's `resample`, reproduced so STOI matches pystoi closely.
//!
//! Filter: cutoff `1 / (2 max(up, down))` of the upsampled rate, roll-off a tenth of that, 60 dB
//! rejection (Kaiser beta 5.653), half-length `L = ceil(52 / (28.714 * roll_off))`, normalised to
//! unit DC gain and scaled by `up`. Output sample `i` is
//! `sum_k x[k] h[i*down + L - k*up]`, `ceil(len * up / down)` samples, no delay.

use crate::resample::resample;

/// Largest filter (taps) built for the exact port; above it (odd rate ratios) rubato is used.
const MAX_TAPS: usize = 1 << 21;

/// Resamples `x` from `from` Hz to `to` Hz as pystoi does. Falls back to the crate's rubato
/// resampler for rate pairs whose exact filter would exceed [`MAX_TAPS`] taps (rates sharing
/// only a tiny common divisor with `to`, e.g. 44 101 Hz); the difference is negligible for STOI.
pub(super) fn resample_oct(x: &[f64], from: u32, to: u32) -> Vec<f64> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let g = gcd(from as u64, to as u64);
    let (up, down) = ((to as u64 / g) as usize, (from as u64 / g) as usize);
    let Some(h) = octave_filter(up, down) else {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        return match resample(&xf, from, to) {
            Ok(y) => y.into_iter().map(f64::from).collect(),
            // Rates are validated by the caller; rubato only fails on zero rates.
            Err(_) => Vec::new(),
        };
    };
    let half = (h.len() - 1) / 2;
    // Polyphase branches, reversed so that each output is a forward dot product with the input:
    // branch p holds h[p + up*m] for m = len_p-1, .., 1, 0.
    let branches: Vec<Vec<f64>> = (0..up)
        .map(|p| h.iter().skip(p).step_by(up).rev().copied().collect())
        .collect();
    let n_in = x.len();
    let n_out = (n_in * up).div_ceil(down);
    let mut y = Vec::with_capacity(n_out);
    for i in 0..n_out {
        // y[i] = sum_k x[k] h[t0 - k*up], t0 = i*down + half; with t0 = q*up + p, tap m = q - k.
        let t0 = i * down + half;
        let (q, p) = (t0 / up, t0 % up);
        let b = &branches[p];
        let k_lo = q.saturating_sub(b.len() - 1);
        let k_hi = q.min(n_in - 1);
        y.push(if k_lo <= k_hi {
            let r_lo = k_lo + b.len() - 1 - q;
            dot(&x[k_lo..=k_hi], &b[r_lo..r_lo + (k_hi - k_lo + 1)])
        } else {
            0.0
        });
    }
    y
}

/// Dot product with four independent accumulators (lets the compiler pipeline/vectorise it).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..4 {
            acc[j] += x[j] * y[j];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `up * h / sum(h)` with `h` pystoi's `_resample_window_oct(up, down)`; `None` when too long.
fn octave_filter(up: usize, down: usize) -> Option<Vec<f64>> {
    let max_rate = up.max(down) as f64;
    let log10_rejection = -3.0f64;
    let stopband_cutoff = 1.0 / (2.0 * max_rate);
    let roll_off_width = stopband_cutoff / 10.0;
    let rejection_db = -20.0 * log10_rejection;
    let l = ((rejection_db - 8.0) / (28.714 * roll_off_width)).ceil();
    let taps = 2.0 * l + 1.0;
    if !(taps.is_finite() && taps <= MAX_TAPS as f64) {
        return None;
    }
    let l = l as i64;
    let beta = if (21.0..=50.0).contains(&rejection_db) {
        0.5842 * (rejection_db - 21.0).powf(0.4) + 0.07886 * (rejection_db - 21.0)
    } else if rejection_db > 50.0 {
        0.1102 * (rejection_db - 8.7)
    } else {
        0.0
    };
    let m = (2 * l + 1) as usize;
    let alpha = (m as f64 - 1.0) / 2.0;
    let i0_beta = bessel_i0(beta);
    let mut h: Vec<f64> = (0..m)
        .map(|n| {
            let t = n as f64 - l as f64;
            let ideal = 2.0 * up as f64 * stopband_cutoff * sinc(2.0 * stopband_cutoff * t);
            let r = (n as f64 - alpha) / alpha;
            let kaiser = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            kaiser * ideal
        })
        .collect();
    let sum: f64 = h.iter().sum();
    let scale = up as f64 / sum;
    h.iter_mut().for_each(|v| *v *= scale);
    Some(h)
}

/// Normalised sinc, `sin(pi x) / (pi x)`, as `numpy.sinc`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let y = std::f64::consts::PI * x;
        y.sin() / y
    }
}

/// Modified Bessel function of the first kind, order 0 (power series; fine for |x| < ~30).
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for k in 1..200 {
        term *= q / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i0_matches_known_values() {
        // scipy.special.i0
        assert!((bessel_i0(0.0) - 1.0).abs() < 1e-15);
        assert!((bessel_i0(1.0) - 1.266_065_877_752_008_4).abs() < 1e-14);
        assert!((bessel_i0(0.1102 * (60.0 - 8.7)) / 49.048_459_302_582_02 - 1.0).abs() < 1e-14);
        assert!((bessel_i0(10.0) / 2_815.716_628_466_254 - 1.0).abs() < 1e-14);
    }

    #[test]
    fn filter_16k_to_10k_has_pystoi_length_and_gain() {
        let h = octave_filter(5, 8).unwrap();
        assert_eq!(h.len(), 2 * 290 + 1);
        assert!((h.iter().sum::<f64>() - 5.0).abs() < 1e-12);
    }

    #[test]
    fn dc_and_length_preserved() {
        let x = vec![0.5f64; 1600];
        let y = resample_oct(&x, 16_000, 10_000);
        assert_eq!(y.len(), 1000);
        // Away from the edges the DC gain is exactly 1 (up to ripple of the polyphase branches).
        for v in &y[100..900] {
            assert!((v - 0.5).abs() < 1e-3, "{v}");
        }
    }
}
