//! Sample-rate conversion of whole clips (rubato's FFT resampler).

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::CodecError;

/// Resamples a mono clip; returns the input unchanged when the rates match. The output has
/// `round(len * to / from)` samples and no leading resampler delay.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, CodecError> {
    if from == to {
        return Ok(input.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(CodecError::Resample(format!(
            "cannot resample {from} Hz -> {to} Hz"
        )));
    }
    let err = |e: &dyn std::fmt::Display| CodecError::Resample(e.to_string());
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .map_err(|e| err(&e))?;
    let out_len = r.process_all_needed_output_len(input.len());
    let inp = vec![input.to_vec()];
    let mut out = vec![vec![0.0f32; out_len]];
    let ib = SequentialSliceOfVecs::new(&inp, 1, input.len()).map_err(|e| err(&e))?;
    let mut ob = SequentialSliceOfVecs::new_mut(&mut out, 1, out_len).map_err(|e| err(&e))?;
    let (_, produced) = r
        .process_all_into_buffer(&ib, &mut ob, input.len(), None)
        .map_err(|e| err(&e))?;
    let mut v = out.pop().unwrap_or_default();
    let want =
        ((input.len() as u64 * u64::from(to) + u64::from(from) / 2) / u64::from(from)) as usize;
    v.truncate(produced.min(want));
    v.resize(want, 0.0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_survives_48k_to_16k() {
        let f = 440.0f32;
        let x: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / 48_000.0).sin())
            .collect();
        let y = resample(&x, 48_000, 16_000).unwrap();
        assert_eq!(y.len(), 16_000);
        // Compare against the ideal tone in the middle (no delay: rubato trims it).
        let err: f32 = (2000..14_000)
            .map(|i| (y[i] - (2.0 * std::f32::consts::PI * f * i as f32 / 16_000.0).sin()).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "max error {err}");
    }
}
