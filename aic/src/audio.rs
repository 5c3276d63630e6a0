//! WAV in and out (hound), downmixed to mono `f32`.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Reads any PCM/float WAV, averaging channels to mono.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let mut r = hound::WavReader::open(path)
        .with_context(|| format!("cannot read {} as WAV", path.display()))?;
    let spec = r.spec();
    let ch = usize::from(spec.channels);
    if ch == 0 {
        bail!("{}: WAV declares 0 channels", path.display());
    }
    if !(8000..=192_000).contains(&spec.sample_rate) {
        bail!(
            "{}: unsupported sample rate {} Hz (expected 8000..=192000)",
            path.display(),
            spec.sample_rate
        );
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            if spec.bits_per_sample == 0 || spec.bits_per_sample > 32 {
                bail!(
                    "{}: unsupported {} bits per sample",
                    path.display(),
                    spec.bits_per_sample
                );
            }
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono = interleaved
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / ch as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Writes 16-bit mono PCM.
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot create {}", path.display()))?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
    }
    w.finalize()?;
    Ok(())
}
