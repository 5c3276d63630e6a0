//! AIC packet-loss concealment, defined once for [`AicDecoder`](crate::aic::AicDecoder) and the
//! batched [`Engine`](crate::engine::Engine) (pure functions, no state of their own).
//!
//! **Model concealment** (a frame lost in transit or corrupt): the decoder is run as usual, fed
//! [`latent`] — the last latent received, moved towards the latent of silence by a factor
//! [`LATENT_FADE`] per consecutive lost frame. The decoder's recurrent state advances exactly as
//! if a frame had arrived, so the output keeps evolving (no repeated 20 ms, no 50 Hz buzz) and
//! decays towards what the decoder makes of silence; the hand-back to the real stream needs no crossfade, because the first real frame
//! is decoded from a state that is continuous with what was just played (the engine tests bound
//! the step at the hand-back by the largest step the decoder makes on clean speech).
//!
//! **Model-free last resort** (engine only: the frame's deadline cannot be met — overload, no
//! model, a backend error — so the decoder cannot run): [`fade_out`] continues the last output
//! by its mirror image (continuous at the junction, no step) under a short raised-cosine fade to
//! silence, and the first model output after such a gap is faded in with [`fade_in`]. A dropout
//! of a few milliseconds is heard as a gap; repeating the last 20 ms (the old half-gain repeat)
//! is heard as a buzz and does not fix the state either. The decoder's state does not see such a
//! frame (running it later would only deepen the overload); the causal model tolerates the skip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::{AicModel, Graph};

/// Per-frame factor on the distance between the last received latent and the silence latent.
pub const LATENT_FADE: f32 = 0.8;

/// Length of the model-free fades (5 ms at 16 kHz).
pub const FADE_SAMPLES: usize = 80;

/// Frames of digital silence the encoder is run on to find [`silence_latent`] (its state
/// settles well within this).
const SILENCE_FRAMES: usize = 10;

/// The latent to feed the decoder for the `k`-th consecutive lost frame (`k` ≥ 1):
/// `silence + (last − silence) × LATENT_FADE^k`, where `last` is the last latent received
/// (`silence` before any) and `silence` is [`silence_latent`]. Fading towards the latent of
/// silence rather than towards zero matters: the decoder turns a zero latent into a steady
/// 50 Hz-periodic hum (about −33 dBFS with the shipped model), and silence into silence.
pub fn latent(last: &[f32], silence: &[f32], k: u32, out: &mut [f32]) {
    let g = LATENT_FADE.powi(k.min(i32::MAX as u32) as i32);
    for ((o, &x), &s) in out.iter_mut().zip(last).zip(silence) {
        *o = s + (x - s) * g;
    }
}

/// What a receiver gets for digital silence: the encoder's latent after [`SILENCE_FRAMES`]
/// frames of zeros, quantised with every codebook. A property of the model, computed once per
/// process and model (keyed by the encoder graph's and the codebooks' checksums) through the
/// model's own sessions; zeros if the model cannot run.
pub fn silence_latent(model: &AicModel) -> Arc<[f32]> {
    static CACHE: Mutex<Option<HashMap<String, Arc<[f32]>>>> = Mutex::new(None);
    let m = &model.manifest;
    let key = format!("{}/{}", m.encoder.sha256, m.codebooks.sha256);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| compute_silence(model))
        .clone()
}

fn compute_silence(model: &AicModel) -> Arc<[f32]> {
    let m = &model.manifest;
    let d = m.latent_dim;
    let pcm = vec![0.0; m.frame_samples];
    let mut state = vec![0.0; model.state_size(Graph::Encoder)];
    let mut raw = vec![0.0; d];
    for _ in 0..SILENCE_FRAMES {
        if model
            .step(Graph::Encoder, 1, &pcm, &mut state, &mut raw)
            .is_err()
        {
            return vec![0.0; d].into();
        }
    }
    let mut ix = vec![0u16; m.num_codebooks];
    let mut residual = vec![0.0; d];
    let mut q = vec![0.0; d];
    let ok = model.codebooks.encode(&raw, &mut ix, &mut residual).is_ok()
        && model.codebooks.decode(&ix, &mut q).is_ok();
    if !ok {
        q.fill(0.0);
    }
    q.into()
}

/// Raised-cosine gain of sample `i` in a fade of `n` samples, from 1 (i = 0) towards 0.
fn fade_gain(i: usize, n: usize) -> f32 {
    0.5 * (1.0 + (std::f32::consts::PI * i as f32 / n as f32).cos())
}

/// The model-free frame after `last` (the previous output): `last` mirrored (so the junction
/// is continuous) under a fade to silence over [`FADE_SAMPLES`], then zeros.
pub fn fade_out(last: &[f32], out: &mut [f32]) {
    let n = FADE_SAMPLES.min(out.len()).min(last.len());
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i < n {
            last[last.len() - 1 - i] * fade_gain(i, n)
        } else {
            0.0
        };
    }
}

/// Fades in the first model output after a model-free frame (which ended in silence).
pub fn fade_in(pcm: &mut [f32]) {
    let n = FADE_SAMPLES.min(pcm.len());
    for (i, x) in pcm.iter_mut().take(n).enumerate() {
        *x *= fade_gain(n - i, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_fades_geometrically_from_the_last_one() {
        let last = [1.0, -2.0, 0.5];
        let silence = [0.0, 1.0, 0.5];
        let mut out = [0.0; 3];
        latent(&last, &silence, 1, &mut out);
        assert_eq!(out, [0.8, 1.0 - 2.4, 0.5]);
        latent(&last, &silence, 3, &mut out);
        assert!((out[1] - (1.0 - 3.0 * 0.512)).abs() < 1e-6);
        latent(&last, &silence, 200, &mut out);
        assert!(out.iter().zip(silence).all(|(o, s)| (o - s).abs() < 1e-9));
    }

    #[test]
    fn fades_are_continuous_and_end_silent() {
        let last: Vec<f32> = (0..320).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut out = vec![1.0; 320];
        fade_out(&last, &mut out);
        assert_eq!(out[0], last[319]);
        assert!(out[FADE_SAMPLES..].iter().all(|&x| x == 0.0));
        let max_step = out
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(max_step <= 0.31, "{max_step}");
        let mut x = vec![1.0; 320];
        fade_in(&mut x);
        assert_eq!(x[0], 0.0);
        assert!(x.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(x[FADE_SAMPLES], 1.0);
    }
}
