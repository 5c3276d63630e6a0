//! External baselines that only exist as command-line tools: codec2 (Debian's `c2enc`/`c2dec`),
//! the classic low-rate vocoder AIC's lowest levels compete with. They are run on whole clips
//! through temporary files, so their real-time factors include process start-up (a few ms) and
//! are upper bounds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use aic_codec::resample::resample;
use anyhow::{Context, Result, bail};

/// Modes with 20 ms frames: bits per frame = mode / 50.
pub const CODEC2_MODES: [u32; 2] = [2400, 3200];

pub fn codec2_available() -> Result<(), String> {
    for tool in ["c2enc", "c2dec"] {
        let ok = Command::new(tool).output().is_ok();
        if !ok {
            return Err(format!("{tool} not found (Debian package codec2)"));
        }
    }
    Ok(())
}

pub struct Run {
    /// Decoded audio at 16 kHz, aligned to the input.
    pub pcm16k: Vec<f32>,
    pub bits: u64,
    pub coded_secs: f64,
    pub encode_secs: f64,
    pub decode_secs: f64,
    /// Delay found by envelope alignment, in ms.
    pub delay_ms: f64,
}

pub fn codec2(pcm16k: &[f32], mode: u32) -> Result<Run> {
    if !CODEC2_MODES.contains(&mode) {
        bail!("codec2 mode {mode} not supported here (use one of {CODEC2_MODES:?})");
    }
    let dir = tempdir()?;
    let (raw, bit, out) = (dir.join("in.raw"), dir.join("x.bit"), dir.join("out.raw"));
    let pcm8k = resample(pcm16k, 16_000, 8_000)?;
    let bytes: Vec<u8> = pcm8k
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    std::fs::write(&raw, bytes)?;
    let t0 = Instant::now();
    tool("c2enc", &[&mode.to_string(), path(&raw), path(&bit)])?;
    let encode_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    tool("c2dec", &[&mode.to_string(), path(&bit), path(&out)])?;
    let decode_secs = t1.elapsed().as_secs_f64();
    let bits = std::fs::metadata(&bit)?.len() * 8;
    let dec: Vec<f32> = std::fs::read(&out)?
        .chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let coded_secs = dec.len() as f64 / 8000.0;
    let dec16k = resample(&dec, 8_000, 16_000)?;
    let lag = envelope_lag(pcm16k, &dec16k, 1600);
    let mut pcm = dec16k[lag.min(dec16k.len())..].to_vec();
    pcm.resize(pcm16k.len(), 0.0);
    Ok(Run {
        pcm16k: pcm,
        bits,
        coded_secs,
        encode_secs,
        decode_secs,
        delay_ms: lag as f64 / 16.0,
    })
}

/// The lag (samples, ≥ 0) of `deg` behind `reference` that best matches their short-time
/// log-energy envelopes. Waveform cross-correlation picks wrong lags for vocoders, whose output
/// phase is synthetic; envelopes do not depend on phase.
pub fn envelope_lag(reference: &[f32], deg: &[f32], max_lag: usize) -> usize {
    const HOP: usize = 16;
    const WIN: usize = 320;
    let env = |x: &[f32]| -> Vec<f32> {
        (0..x.len().saturating_sub(WIN) / HOP)
            .map(|i| {
                (x[i * HOP..i * HOP + WIN].iter().map(|v| v * v).sum::<f32>() / WIN as f32 + 1e-8)
                    .log10()
            })
            .collect()
    };
    let (a, b) = (env(reference), env(deg));
    let mut best = (f32::NEG_INFINITY, 0);
    for l in 0..=max_lag / HOP {
        let n = a.len().min(b.len().saturating_sub(l));
        if n < 10 {
            break;
        }
        let (x, y) = (&a[..n], &b[l..l + n]);
        let (mx, my) = (
            x.iter().sum::<f32>() / n as f32,
            y.iter().sum::<f32>() / n as f32,
        );
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (p, q) in x.iter().zip(y) {
            sxy += (p - mx) * (q - my);
            sxx += (p - mx) * (p - mx);
            syy += (q - my) * (q - my);
        }
        let c = sxy / (sxx * syy).sqrt().max(1e-12);
        if c > best.0 {
            best = (c, l * HOP);
        }
    }
    best.1
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn tool(name: &str, args: &[&str]) -> Result<()> {
    let o = Command::new(name)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {name}"))?;
    if !o.status.success() {
        bail!(
            "{name} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("aic-codec2-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_lag_finds_a_known_delay() {
        let x: Vec<f32> = (0..16_000)
            .map(|i| (i as f32 * 0.05).sin() * ((i / 1600) % 2) as f32)
            .collect();
        let mut y = vec![0.0; 480];
        y.extend(x.iter().map(|v| -v)); // phase-inverted copy, 30 ms late
        assert_eq!(envelope_lag(&x, &y, 1600), 480);
    }
}
