//! Scale-invariant signal-to-distortion ratio (Le Roux et al. 2019).

use super::{MetricsError, check_pair};

/// SI-SDR in dB (higher is better). Both signals are made zero-mean, the reference is scaled by
/// the least-squares gain `alpha = <d, r> / <r, r>`, and the result is
/// `10 log10(|alpha r|^2 / |d - alpha r|^2)`.
///
/// Independent of sample rate and of the degraded signal's gain. Returns `f64::INFINITY` when the
/// degraded signal is an exact (scaled) copy of the reference, and
/// [`MetricsError::SilentReference`] when the zero-mean reference is all zeros. An empty pair is
/// [`MetricsError::TooShort`].
pub fn si_sdr(reference: &[f32], degraded: &[f32]) -> Result<f64, MetricsError> {
    check_pair(reference, degraded)?;
    if reference.is_empty() {
        return Err(MetricsError::TooShort {
            metric: "SI-SDR",
            needed: 1,
            got: 0,
            unit: "samples",
        });
    }
    let n = reference.len() as f64;
    let rm = reference.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let dm = degraded.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut rr, mut dr) = (0.0f64, 0.0f64);
    for (&r, &d) in reference.iter().zip(degraded) {
        let r = f64::from(r) - rm;
        let d = f64::from(d) - dm;
        rr += r * r;
        dr += d * r;
    }
    if rr == 0.0 {
        return Err(MetricsError::SilentReference);
    }
    let alpha = dr / rr;
    let (mut target, mut noise) = (0.0f64, 0.0f64);
    for (&r, &d) in reference.iter().zip(degraded) {
        let t = alpha * (f64::from(r) - rm);
        let e = (f64::from(d) - dm) - t;
        target += t * t;
        noise += e * e;
    }
    if noise == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (target / noise).log10())
}
