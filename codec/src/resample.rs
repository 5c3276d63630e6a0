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

/// Streaming conversion of fixed-size frames (e.g. 20 ms at 48 kHz ↔ 20 ms at 16 kHz, the two
/// sides of the service). Each call takes exactly one input frame and returns exactly one
/// output frame; the resampler's own delay (`delay_samples`, at the output rate) shifts the
/// audio, nothing is dropped. Allocation-free after construction.
pub struct FrameResampler {
    inner: Fft<f32>,
    frame_in: usize,
    frame_out: usize,
}

impl std::fmt::Debug for FrameResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameResampler")
            .field("frame_in", &self.frame_in)
            .field("frame_out", &self.frame_out)
            .finish()
    }
}

impl FrameResampler {
    pub fn new(from: u32, to: u32, frame_in: usize) -> Result<Self, CodecError> {
        let err = |e: &dyn std::fmt::Display| CodecError::Resample(e.to_string());
        if from == 0
            || to == 0
            || frame_in == 0
            || !(frame_in as u64 * u64::from(to)).is_multiple_of(u64::from(from))
        {
            return Err(CodecError::Resample(format!(
                "{frame_in} samples at {from} Hz is not a whole frame at {to} Hz"
            )));
        }
        let inner = Fft::<f32>::new(from as usize, to as usize, frame_in, 1, FixedSync::Both)
            .map_err(|e| err(&e))?;
        let frame_out = inner.output_frames_next();
        Ok(Self {
            inner,
            frame_in,
            frame_out,
        })
    }

    pub fn frame_out(&self) -> usize {
        self.frame_out
    }

    /// Output delay in samples at the output rate.
    pub fn delay_samples(&self) -> usize {
        self.inner.output_delay()
    }

    /// Converts one frame; `output` is resized to the output frame length.
    pub fn process(&mut self, input: &[f32], output: &mut Vec<f32>) -> Result<(), CodecError> {
        if input.len() != self.frame_in {
            return Err(CodecError::Resample(format!(
                "frame of {} samples, expected {}",
                input.len(),
                self.frame_in
            )));
        }
        output.resize(self.frame_out, 0.0);
        let err = |e: &dyn std::fmt::Display| CodecError::Resample(e.to_string());
        let ib =
            rubato::audioadapter_buffers::direct::InterleavedSlice::new(input, 1, self.frame_in)
                .map_err(|e| err(&e))?;
        let mut ob = rubato::audioadapter_buffers::direct::InterleavedSlice::new_mut(
            output.as_mut_slice(),
            1,
            self.frame_out,
        )
        .map_err(|e| err(&e))?;
        self.inner
            .process_into_buffer(&ib, &mut ob, None)
            .map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn frames_48k_to_16k_and_back_keep_a_tone() {
        let mut down = FrameResampler::new(48_000, 16_000, 960).unwrap();
        let mut up = FrameResampler::new(16_000, 48_000, 320).unwrap();
        assert_eq!((down.frame_out(), up.frame_out()), (320, 960));
        let x: Vec<f32> = (0..48_000)
            .map(|i| 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * 300.0 / 48_000.0).sin())
            .collect();
        let (mut mid, mut out, mut y) = (Vec::new(), Vec::new(), Vec::new());
        for f in x.chunks_exact(960) {
            down.process(f, &mut mid).unwrap();
            up.process(&mid, &mut out).unwrap();
            y.extend_from_slice(&out);
        }
        let delay = up.delay_samples() + down.delay_samples() * 3;
        let err = (10_000..40_000)
            .map(|i| (y[i + delay] - x[i]).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 0.02, "max error {err} after delay {delay}");
        assert!(down.process(&x[..100], &mut mid).is_err());
        assert!(FrameResampler::new(44_100, 16_000, 960).is_err());
    }
}
