//! PCM audio as the codecs see it: mono `f32` samples in [-1, 1] with a sample rate.

/// A mono PCM buffer. `start` is the index of its first sample on the stream's timeline
/// (in samples at `sample_rate`), so frames can be placed and aligned without wall-clock time.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioBuffer {
    pub sample_rate: u32,
    pub start: u64,
    pub samples: Vec<f32>,
}

impl AudioBuffer {
    pub fn new(sample_rate: u32, samples: Vec<f32>) -> Self {
        Self {
            sample_rate,
            start: 0,
            samples,
        }
    }

    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }

    /// Splits into codec frames of `frame_samples`, zero-padding the last one.
    pub fn frames(
        &self,
        frame_samples: usize,
    ) -> impl Iterator<Item = std::borrow::Cow<'_, [f32]>> {
        self.samples.chunks(frame_samples).map(move |c| {
            if c.len() == frame_samples {
                std::borrow::Cow::Borrowed(c)
            } else {
                let mut v = c.to_vec();
                v.resize(frame_samples, 0.0);
                std::borrow::Cow::Owned(v)
            }
        })
    }
}

/// Samples per 20 ms frame at `sample_rate` (the project's one frame duration).
pub const fn frame_samples_20ms(sample_rate: u32) -> usize {
    (sample_rate / 50) as usize
}
