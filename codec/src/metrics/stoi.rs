//! STOI and ESTOI, ported from `pystoi` 0.4.1 (`stoi(x, y, fs, extended)`).
//!
//! Pipeline (constants as in pystoi):
//! 1. resample both signals to 10 kHz with pystoi's own polyphase resampler
//!    ([`super::resample_oct`]);
//! 2. drop frames (256 samples, hop 128, Hann window = MATLAB `hanning(256)`) whose reference
//!    energy is more than 40 dB below the loudest reference frame, and overlap-add the rest;
//! 3. STFT: the same window and hop, 512-point FFT, frames starting at `0, 128, ..` while the
//!    start is `< len - 256` (pystoi's `range(0, len - 256, 128)`);
//! 4. 15 one-third octave bands from 150 Hz (band edges snapped to FFT bins, upper edge exclusive);
//! 5. 30-frame (384 ms) segments, one per frame position;
//! 6. STOI: per band and segment, scale the degraded envelope to the reference's norm, clip it at
//!    `(1 + 10^(15/20))` times the reference (beta = -15 dB), correlate; average everything.
//!    ESTOI: normalise each segment's rows (bands) then columns (frames) to zero mean and unit
//!    norm, average the inner products.
//!
//! Deviations from pystoi: too little non-silent signal (fewer than [`STOI_MIN_FRAMES`] STFT
//! frames) is an error instead of a warning and a return value of 1e-5, and ESTOI does not add
//! pystoi's `EPS`-scale random noise before normalising (a row/column of exact zeros normalises
//! to zeros here, to a random unit vector in pystoi).

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::resample_oct::resample_oct;
use super::{MetricsError, check_pair, check_rate};

const FS: u32 = 10_000;
const N_FRAME: usize = 256;
const HOP: usize = N_FRAME / 2;
const NFFT: usize = 512;
const NUM_BANDS: usize = 15;
const MIN_FREQ: f64 = 150.0;
/// Frames per intermediate-intelligibility segment (384 ms at 10 kHz, hop 128).
const N: usize = 30;
const BETA_DB: f64 = -15.0;
const DYN_RANGE_DB: f64 = 40.0;
/// numpy's `finfo(float).eps`, used by pystoi to guard divisions.
const EPS: f64 = f64::EPSILON;

/// Minimum number of STFT frames left after silence removal (one 384 ms segment); about 0.4 s
/// of non-silent speech.
pub const STOI_MIN_FRAMES: usize = N;

/// Short-time objective intelligibility (Taal et al. 2011), in `[-1, 1]` (about 0.4..1 in
/// practice; higher is better), matching `pystoi.stoi(reference, degraded, sample_rate)`.
///
/// `sample_rate` may be anything in 8..=192 kHz; both signals are resampled to 10 kHz, so
/// content above 5 kHz does not count. Needs at least [`STOI_MIN_FRAMES`] STFT frames (~0.4 s)
/// of non-silent reference after silence removal, else [`MetricsError::TooShort`].
pub fn stoi(reference: &[f32], degraded: &[f32], sample_rate: u32) -> Result<f64, MetricsError> {
    let (x, y) = envelopes(reference, degraded, sample_rate, "STOI")?;
    Ok(classic(&x, &y))
}

/// Extended STOI (Jensen & Taal 2016), matching `pystoi.stoi(.., extended=True)`; better suited
/// than [`stoi`] to modulated noise and non-linear processing. Same inputs and errors as [`stoi`].
pub fn estoi(reference: &[f32], degraded: &[f32], sample_rate: u32) -> Result<f64, MetricsError> {
    let (x, y) = envelopes(reference, degraded, sample_rate, "ESTOI")?;
    Ok(extended(&x, &y))
}

/// One-third-octave band envelopes, `[band][frame]` flattened as `band * frames + frame`.
struct Envelopes {
    data: Vec<f64>,
    frames: usize,
}

impl Envelopes {
    fn row(&self, band: usize) -> &[f64] {
        &self.data[band * self.frames..(band + 1) * self.frames]
    }
}

fn envelopes(
    reference: &[f32],
    degraded: &[f32],
    sample_rate: u32,
    metric: &'static str,
) -> Result<(Envelopes, Envelopes), MetricsError> {
    check_pair(reference, degraded)?;
    check_rate(sample_rate)?;
    let x: Vec<f64> = reference.iter().map(|&v| f64::from(v)).collect();
    let y: Vec<f64> = degraded.iter().map(|&v| f64::from(v)).collect();
    let x = resample_oct(&x, sample_rate, FS);
    let y = resample_oct(&y, sample_rate, FS);
    let window = hanning(N_FRAME);
    let too_short = |got| MetricsError::TooShort {
        metric,
        needed: N,
        got,
        unit: "STFT frames after silence removal",
    };
    let Some((x, y)) = remove_silent_frames(&x, &y, &window) else {
        return Err(too_short(0));
    };
    let frames = frame_starts(x.len()).count();
    if frames < N {
        return Err(too_short(frames));
    }
    let fft = FftPlanner::<f64>::new().plan_fft_forward(NFFT);
    let bands = third_octave_bands();
    Ok((
        band_envelopes(&x, &window, &fft, &bands),
        band_envelopes(&y, &window, &fft, &bands),
    ))
}

/// MATLAB `hanning(n)` = `numpy.hanning(n + 2)[1:-1]`.
fn hanning(n: usize) -> Vec<f64> {
    (1..=n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n + 1) as f64).cos())
        .collect()
}

/// pystoi's `range(0, len - N_FRAME, HOP)` (empty when `len <= N_FRAME`).
fn frame_starts(len: usize) -> impl Iterator<Item = usize> {
    (0..len.saturating_sub(N_FRAME)).step_by(HOP)
}

/// pystoi's `remove_silent_frames`: windowed frames kept where the reference is within
/// `DYN_RANGE_DB` of its loudest frame, overlap-added. `None` when there is no frame at all.
fn remove_silent_frames(x: &[f64], y: &[f64], w: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
    let starts: Vec<usize> = frame_starts(x.len()).collect();
    if starts.is_empty() {
        return None;
    }
    let energies: Vec<f64> = starts
        .iter()
        .map(|&s| {
            let e: f64 = x[s..s + N_FRAME]
                .iter()
                .zip(w)
                .map(|(v, w)| (v * w) * (v * w))
                .sum();
            20.0 * (e.sqrt() + EPS).log10()
        })
        .collect();
    let max = energies.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let kept: Vec<usize> = starts
        .iter()
        .zip(&energies)
        .filter(|&(_, &e)| max - DYN_RANGE_DB - e < 0.0)
        .map(|(&s, _)| s)
        .collect();
    let len = (kept.len() - 1) * HOP + N_FRAME;
    let (mut xs, mut ys) = (vec![0.0; len], vec![0.0; len]);
    for (i, &s) in kept.iter().enumerate() {
        let o = i * HOP;
        for k in 0..N_FRAME {
            xs[o + k] += w[k] * x[s + k];
            ys[o + k] += w[k] * y[s + k];
        }
    }
    Some((xs, ys))
}

/// pystoi's `thirdoct(10000, 512, 15, 150)`: per band, the FFT bin range `lo..hi`.
fn third_octave_bands() -> Vec<(usize, usize)> {
    let n_bins = NFFT / 2 + 1;
    // numpy.linspace(0, fs, nfft + 1)[:nfft/2 + 1]
    let step = f64::from(FS) / NFFT as f64;
    let f: Vec<f64> = (0..n_bins).map(|k| k as f64 * step).collect();
    let nearest = |target: f64| {
        let mut best = 0;
        for (i, &fi) in f.iter().enumerate() {
            if (fi - target).powi(2) < (f[best] - target).powi(2) {
                best = i;
            }
        }
        best
    };
    (0..NUM_BANDS)
        .map(|k| {
            let k = k as f64;
            let lo = MIN_FREQ * 2f64.powf((2.0 * k - 1.0) / 6.0);
            let hi = MIN_FREQ * 2f64.powf((2.0 * k + 1.0) / 6.0);
            (nearest(lo), nearest(hi))
        })
        .collect()
}

/// `sqrt(OBM @ |STFT|^2)` for one signal.
fn band_envelopes(
    x: &[f64],
    w: &[f64],
    fft: &Arc<dyn Fft<f64>>,
    bands: &[(usize, usize)],
) -> Envelopes {
    let starts: Vec<usize> = frame_starts(x.len()).collect();
    let frames = starts.len();
    let mut data = vec![0.0; NUM_BANDS * frames];
    let mut buf = vec![Complex::new(0.0, 0.0); NFFT];
    let mut scratch = vec![Complex::new(0.0, 0.0); fft.get_inplace_scratch_len()];
    let mut power = vec![0.0f64; NFFT / 2 + 1];
    for (t, &s) in starts.iter().enumerate() {
        for (k, c) in buf.iter_mut().enumerate() {
            *c = Complex::new(if k < N_FRAME { w[k] * x[s + k] } else { 0.0 }, 0.0);
        }
        fft.process_with_scratch(&mut buf, &mut scratch);
        for (p, c) in power.iter_mut().zip(&buf) {
            *p = c.norm_sqr();
        }
        for (b, &(lo, hi)) in bands.iter().enumerate() {
            data[b * frames + t] = power[lo..hi].iter().sum::<f64>().sqrt();
        }
    }
    Envelopes { data, frames }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn classic(x: &Envelopes, y: &Envelopes) -> f64 {
    let clip = 1.0 + 10f64.powf(-BETA_DB / 20.0);
    let segments = x.frames - N + 1;
    let mut total = 0.0;
    let mut yp = [0.0f64; N];
    let mut xc = [0.0f64; N];
    for b in 0..NUM_BANDS {
        let (xr, yr) = (x.row(b), y.row(b));
        for m in 0..segments {
            let xs = &xr[m..m + N];
            let ys = &yr[m..m + N];
            let alpha = norm(xs) / (norm(ys) + EPS);
            for k in 0..N {
                yp[k] = (ys[k] * alpha).min(xs[k] * clip);
            }
            let ym = yp.iter().sum::<f64>() / N as f64;
            let xm = xs.iter().sum::<f64>() / N as f64;
            yp.iter_mut().for_each(|v| *v -= ym);
            for k in 0..N {
                xc[k] = xs[k] - xm;
            }
            let (ny, nx) = (norm(&yp) + EPS, norm(&xc) + EPS);
            total += yp
                .iter()
                .zip(&xc)
                .map(|(a, b)| (a / ny) * (b / nx))
                .sum::<f64>();
        }
    }
    total / (segments * NUM_BANDS) as f64
}

fn extended(x: &Envelopes, y: &Envelopes) -> f64 {
    let segments = x.frames - N + 1;
    let mut xs = [[0.0f64; N]; NUM_BANDS];
    let mut ys = [[0.0f64; N]; NUM_BANDS];
    let mut total = 0.0;
    for m in 0..segments {
        for b in 0..NUM_BANDS {
            xs[b].copy_from_slice(&x.row(b)[m..m + N]);
            ys[b].copy_from_slice(&y.row(b)[m..m + N]);
        }
        row_col_normalize(&mut xs);
        row_col_normalize(&mut ys);
        for b in 0..NUM_BANDS {
            total += xs[b].iter().zip(&ys[b]).map(|(a, b)| a * b).sum::<f64>();
        }
    }
    total / N as f64 / segments as f64
}

/// Zero-mean, unit-norm rows (over frames), then the same for columns (over bands).
fn row_col_normalize(s: &mut [[f64; N]; NUM_BANDS]) {
    let unit = |v: f64| if v > 0.0 { 1.0 / v } else { 0.0 };
    for row in s.iter_mut() {
        let mean = row.iter().sum::<f64>() / N as f64;
        row.iter_mut().for_each(|v| *v -= mean);
        let inv = unit(norm(row));
        row.iter_mut().for_each(|v| *v *= inv);
    }
    for k in 0..N {
        let mean = s.iter().map(|r| r[k]).sum::<f64>() / NUM_BANDS as f64;
        s.iter_mut().for_each(|r| r[k] -= mean);
        let inv = unit(s.iter().map(|r| r[k] * r[k]).sum::<f64>().sqrt());
        s.iter_mut().for_each(|r| r[k] *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_match_pystoi_thirdoct() {
        // pystoi.utils.thirdoct(10000, 512, 15, 150)[0]: first/last nonzero column per band.
        let bands = third_octave_bands();
        assert_eq!(bands.len(), 15);
        assert_eq!(bands[0], (7, 9));
        assert_eq!(bands[14], (174, 219));
        for w in bands.windows(2) {
            assert_eq!(w[0].1, w[1].0, "bands are contiguous");
        }
    }

    #[test]
    fn hanning_is_matlab_hanning() {
        let w = hanning(256);
        assert!((w[0] - (0.5 - 0.5 * (2.0 * std::f64::consts::PI / 257.0).cos())).abs() < 1e-15);
        assert!((w[0] - w[255]).abs() < 1e-15);
    }
}
