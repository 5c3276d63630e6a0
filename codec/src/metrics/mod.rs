//! Objective quality metrics for offline evaluation of codecs.
//!
//! * [`stoi`] / [`estoi`] — short-time objective intelligibility (Taal et al. 2011) and its
//!   extended variant (Jensen & Taal 2016): a port of the `pystoi` 0.4.1 Python package,
//!   including its Octave-compatible resampler to 10 kHz, that reproduces it up to rounding
//!   (|diff| < 1e-14 on the fixtures in `datasets/fixtures/metrics/`).
//! * [`si_sdr`] — scale-invariant signal-to-distortion ratio in dB.
//! * [`log_mel_distance`] — multi-resolution log-mel spectral distance (lower is better).
//!
//! # Conventions shared by every metric
//!
//! * Signals are mono `f32` slices at nominal full scale ±1.0; all arithmetic is done in `f64`.
//! * `reference` is the clean/original signal, `degraded` the one under test. The two must have
//!   **exactly the same length**, otherwise [`MetricsError::LengthMismatch`] is returned: the
//!   metrics compare sample-aligned signals, and callers are expected to compensate codec delay
//!   first. Use [`trim_to_common_length`] when dropping a few trailing samples is what you want.
//! * Any NaN or infinity yields [`MetricsError::NonFinite`].
//! * Sample rates: [`stoi`]/[`estoi`] resample to 10 kHz internally and accept
//!   [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`]; [`log_mel_distance`] accepts the same range and
//!   analyses the full band up to `sample_rate / 2`; [`si_sdr`] has no sample rate.
//!
//! Nothing here does I/O; everything allocates freely (these are offline metrics). Release-build
//! cost of a 10 s, 16 kHz clip: ~10-20 ms each for STOI, ESTOI and the log-mel distance, under
//! 1 ms for SI-SDR (`metrics::tests::timing_10s`, ignored by default).

mod mel;
mod resample_oct;
mod si_sdr;
mod stoi;

#[cfg(test)]
mod tests;

pub use mel::{LOG_MEL_BANDS, LOG_MEL_FFT_SIZES, LOG_MEL_FLOOR, log_mel_distance};
pub use si_sdr::si_sdr;
pub use stoi::{STOI_MIN_FRAMES, estoi, stoi};

/// Lowest sample rate accepted by the metrics that take one.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
/// Highest sample rate accepted by the metrics that take one.
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Which of the two input signals an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reference,
    Degraded,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Reference => "reference",
            Signal::Degraded => "degraded",
        })
    }
}

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The two signals differ in length (align delay and trim them first).
    #[error(
        "reference has {reference} samples but degraded has {degraded}: align and trim them first \
         (see metrics::trim_to_common_length)"
    )]
    LengthMismatch { reference: usize, degraded: usize },
    /// A NaN or infinite sample.
    #[error("{signal} signal has a non-finite sample at index {index}")]
    NonFinite { signal: Signal, index: usize },
    /// Not enough (non-silent) signal for the metric.
    #[error("input too short for {metric}: needs {needed} {unit}, got {got}")]
    TooShort {
        metric: &'static str,
        needed: usize,
        got: usize,
        unit: &'static str,
    },
    /// The sample rate is outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    #[error("unsupported sample rate {0} Hz (supported: 8000..=192000 Hz)")]
    UnsupportedSampleRate(u32),
    /// The reference is all zeros (after removing its mean, for SI-SDR), so the metric is undefined.
    #[error("the reference signal is silent")]
    SilentReference,
}

/// Shortens the longer of two signals to the length of the shorter one (drops its tail).
pub fn trim_to_common_length<'a>(
    reference: &'a [f32],
    degraded: &'a [f32],
) -> (&'a [f32], &'a [f32]) {
    let n = reference.len().min(degraded.len());
    (&reference[..n], &degraded[..n])
}

/// Equal lengths and finite samples.
fn check_pair(reference: &[f32], degraded: &[f32]) -> Result<(), MetricsError> {
    if reference.len() != degraded.len() {
        return Err(MetricsError::LengthMismatch {
            reference: reference.len(),
            degraded: degraded.len(),
        });
    }
    for (signal, x) in [(Signal::Reference, reference), (Signal::Degraded, degraded)] {
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite { signal, index });
        }
    }
    Ok(())
}

fn check_rate(sample_rate: u32) -> Result<(), MetricsError> {
    if (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
        Ok(())
    } else {
        Err(MetricsError::UnsupportedSampleRate(sample_rate))
    }
}
