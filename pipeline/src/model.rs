//! A loaded AIC model: manifest, codebooks, entropy tables and the two streaming graphs.
//!
//! Every file is checked against the manifest (sha256, shapes, graph inputs/outputs) before the
//! model is used, so a wrong or damaged model fails at load with one clear line.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aic_codec::bitstream::EntropyModel;
use aic_codec::manifest::{Manifest, verify_sha256};
use aic_kernels::rvq::Codebooks;
use ort::session::Session;
use ort::value::TensorRef;

use crate::PipelineError;
use crate::runtime::{Provider, check_io, open_session};

/// Which graph a batch runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    Encoder,
    Decoder,
}

#[derive(Debug)]
pub struct AicModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub codebooks: Codebooks,
    pub entropy: EntropyModel,
    encoder: Mutex<Session>,
    decoder: Mutex<Session>,
}

fn model_err(dir: &Path, why: impl Into<String>) -> PipelineError {
    PipelineError::Model {
        dir: dir.display().to_string(),
        why: why.into(),
    }
}

/// Reads and validates `manifest.json` only (cheap: used to tell whether a model is usable).
pub fn read_manifest(dir: &Path) -> Result<Manifest, PipelineError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| model_err(dir, format!("cannot read {}: {e}", path.display())))?;
    Manifest::from_json(&text).map_err(|e| model_err(dir, e.to_string()))
}

impl AicModel {
    /// Loads and checks everything, on the CPU. `threads` = ONNX Runtime intra-op threads per graph.
    pub fn load(dir: &Path, threads: usize) -> Result<Self, PipelineError> {
        Self::load_with(dir, threads, Provider::Cpu)
    }

    /// As [`AicModel::load`], on the given execution provider.
    pub fn load_with(
        dir: &Path,
        threads: usize,
        provider: Provider,
    ) -> Result<Self, PipelineError> {
        let manifest = read_manifest(dir)?;
        let read = |file: &str| {
            std::fs::read(dir.join(file))
                .map_err(|e| model_err(dir, format!("cannot read {file}: {e}")))
        };
        let cb_bytes = read(&manifest.codebooks.file)?;
        let flat = manifest
            .parse_codebooks(&cb_bytes)
            .map_err(|e| model_err(dir, e.to_string()))?;
        let [k, n, d] = manifest.codebooks.shape;
        let codebooks = Codebooks::new(k, n, d, flat).map_err(|e| model_err(dir, e.to_string()))?;
        let entropy = manifest
            .entropy_model()
            .map_err(|e| model_err(dir, e.to_string()))?;
        let open = |spec: &aic_codec::manifest::GraphSpec| -> Result<Session, PipelineError> {
            let bytes = read(&spec.file)?;
            verify_sha256(&spec.file, &bytes, &spec.sha256)
                .map_err(|e| model_err(dir, e.to_string()))?;
            open_session(&dir.join(&spec.file), threads, provider)
        };
        let encoder = open(&manifest.encoder)?;
        let decoder = open(&manifest.decoder)?;
        let m = &manifest;
        let checks = [
            check_io(&encoder, true, "pcm", m.frame_samples),
            check_io(&encoder, true, "state", m.encoder.state_size),
            check_io(&encoder, false, "latent", m.latent_dim),
            check_io(&encoder, false, "state_out", m.encoder.state_size),
            check_io(&decoder, true, "latent", m.latent_dim),
            check_io(&decoder, true, "state", m.decoder.state_size),
            check_io(&decoder, false, "pcm", m.frame_samples),
            check_io(&decoder, false, "state_out", m.decoder.state_size),
        ];
        for c in checks {
            c.map_err(|why| model_err(dir, why))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            codebooks,
            entropy,
            encoder: Mutex::new(encoder),
            decoder: Mutex::new(decoder),
        })
    }

    pub fn state_size(&self, g: Graph) -> usize {
        match g {
            Graph::Encoder => self.manifest.encoder.state_size,
            Graph::Decoder => self.manifest.decoder.state_size,
        }
    }

    /// Runs one step of `graph` for a batch of `batch` streams.
    ///
    /// `input` is `[batch, in_width]` (PCM for the encoder, quantised latents for the decoder),
    /// `state` is `[batch, state_size]` and is replaced by the next state in place, `output`
    /// receives `[batch, out_width]`. Row `i` of every buffer belongs to the same stream.
    pub fn step(
        &self,
        graph: Graph,
        batch: usize,
        input: &[f32],
        state: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), PipelineError> {
        let m = &self.manifest;
        let (in_name, out_name, in_w, out_w, session) = match graph {
            Graph::Encoder => (
                "pcm",
                "latent",
                m.frame_samples,
                m.latent_dim,
                &self.encoder,
            ),
            Graph::Decoder => (
                "latent",
                "pcm",
                m.latent_dim,
                m.frame_samples,
                &self.decoder,
            ),
        };
        let s = self.state_size(graph);
        if batch == 0
            || input.len() != batch * in_w
            || state.len() != batch * s
            || output.len() != batch * out_w
        {
            return Err(PipelineError::Inference(format!(
                "{graph:?} batch {batch}: buffers {}/{}/{} do not match widths {in_w}/{s}/{out_w}",
                input.len(),
                state.len(),
                output.len()
            )));
        }
        let ie = |e: ort::Error| PipelineError::Inference(format!("{graph:?}: {e}"));
        let mut session = session
            .lock()
            .map_err(|_| PipelineError::Inference("session lock poisoned".into()))?;
        let inputs = ort::inputs![
            in_name => TensorRef::from_array_view(([batch, in_w], input)).map_err(ie)?,
            "state" => TensorRef::from_array_view(([batch, s], &*state)).map_err(ie)?,
        ];
        let outputs = session.run(inputs).map_err(ie)?;
        let (_, y) = outputs[out_name].try_extract_tensor::<f32>().map_err(ie)?;
        let (_, st) = outputs["state_out"]
            .try_extract_tensor::<f32>()
            .map_err(ie)?;
        if y.len() != output.len() || st.len() != state.len() {
            return Err(PipelineError::Inference(format!(
                "{graph:?}: graph returned {} / {} values",
                y.len(),
                st.len()
            )));
        }
        output.copy_from_slice(y);
        state.copy_from_slice(st);
        Ok(())
    }
}
