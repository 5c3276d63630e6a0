//! The neural AIC codec for one stream: streaming encoder graph → RVQ nearest-codeword search →
//! range coder → AIC frame, and back.
//!
//! Each instance owns its stream's state vectors; the graphs are shared (one loaded model per
//! process). Lost frames are concealed as [`crate::conceal`] defines (the decoder is fed the last
//! received latent, faded, so its state stays continuous) — the same concealment the batched
//! engine uses, which its tests check sample by sample; a real neural PLC is future work.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use aic_codec::CodecError;
use aic_codec::codec::{CodecInfo, Decoder, Encoder, OperatingPoint};
use aic_codec::registry::{CodecDescriptor, CodecFactory, CodecRegistry};

use crate::model::{AicModel, Graph, read_manifest};

pub const CODEC_NAME: &str = "aic";

/// The model directory: `$AIC_MODEL_DIR`, else the default model committed in this repository
/// (`aic-speech-v2`; `aic-speech-v1` beside it reads the same codebooks).
pub fn default_model_dir() -> PathBuf {
    std::env::var_os("AIC_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/aic-speech-v2"))
}

fn info(model: &AicModel, level: u8) -> CodecInfo {
    let m = &model.manifest;
    CodecInfo {
        codec: CODEC_NAME.to_owned(),
        model_id: m.model_id.clone(),
        sample_rate: m.sample_rate,
        frame_samples: m.frame_samples,
        delay_samples: m.decoder_delay_samples,
        point: OperatingPoint::Level(level),
    }
}

#[derive(Debug)]
pub struct AicEncoder {
    model: Arc<AicModel>,
    info: CodecInfo,
    level: usize,
    state: Vec<f32>,
    latent: Vec<f32>,
    residual: Vec<f32>,
    indices: Vec<u16>,
    counter: u8,
}

impl AicEncoder {
    pub fn new(model: Arc<AicModel>, level: u8) -> Result<Self, CodecError> {
        let k = model.manifest.num_codebooks;
        if level == 0 || usize::from(level) > k {
            return Err(CodecError::InvalidConfig(format!(
                "AIC level {level} not in 1..={k} for {}",
                model.manifest.model_id
            )));
        }
        let d = model.manifest.latent_dim;
        Ok(Self {
            info: info(&model, level),
            level: usize::from(level),
            state: vec![0.0; model.state_size(Graph::Encoder)],
            latent: vec![0.0; d],
            residual: vec![0.0; d],
            indices: vec![0; usize::from(level)],
            counter: 0,
            model,
        })
    }

    /// The codebook indices of the last encoded frame (for tests and tools).
    pub fn last_indices(&self) -> &[u16] {
        &self.indices
    }
}

impl Encoder for AicEncoder {
    fn info(&self) -> &CodecInfo {
        &self.info
    }

    fn encode_frame(&mut self, pcm: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        if pcm.len() != self.info.frame_samples {
            return Err(CodecError::FrameSize {
                codec: CODEC_NAME.into(),
                expected: self.info.frame_samples,
                got: pcm.len(),
            });
        }
        self.model
            .step(Graph::Encoder, 1, pcm, &mut self.state, &mut self.latent)?;
        self.model
            .codebooks
            .encode(
                &self.latent,
                &mut self.indices[..self.level],
                &mut self.residual,
            )
            .map_err(|e| CodecError::Backend(e.to_string()))?;
        self.model
            .entropy
            .write_frame(self.counter, &self.indices, out)?;
        self.counter = self.counter.wrapping_add(1) & 3;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.state.fill(0.0);
        self.counter = 0;
        Ok(())
    }
}

#[derive(Debug)]
pub struct AicDecoder {
    model: Arc<AicModel>,
    info: CodecInfo,
    state: Vec<f32>,
    /// The last latent received (concealment starts from it).
    received: Vec<f32>,
    /// The model's latent of silence (concealment fades towards it).
    silence: Arc<[f32]>,
    /// The latent fed to the decoder this frame.
    latent: Vec<f32>,
    pcm: Vec<f32>,
    indices: Vec<u16>,
    lost_run: u32,
}

impl AicDecoder {
    pub fn new(model: Arc<AicModel>, level: u8) -> Self {
        let silence = crate::conceal::silence_latent(&model);
        Self {
            info: info(&model, level),
            state: vec![0.0; model.state_size(Graph::Decoder)],
            received: silence.to_vec(),
            silence,
            latent: vec![0.0; model.manifest.latent_dim],
            pcm: vec![0.0; model.manifest.frame_samples],
            indices: Vec::with_capacity(16),
            lost_run: 0,
            model,
        }
    }
}

impl Decoder for AicDecoder {
    fn info(&self) -> &CodecInfo {
        &self.info
    }

    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        match packet {
            Some(bytes) => {
                // Parse fully before touching any state: a corrupt frame changes nothing.
                self.model.entropy.read_frame(bytes, &mut self.indices)?;
                self.model
                    .codebooks
                    .decode(&self.indices, &mut self.latent)
                    .map_err(|e| CodecError::Backend(e.to_string()))?;
                self.received.copy_from_slice(&self.latent);
                self.lost_run = 0;
            }
            None => {
                self.lost_run = self.lost_run.saturating_add(1);
                let (r, s) = (&self.received, &self.silence);
                crate::conceal::latent(r, s, self.lost_run, &mut self.latent);
            }
        }
        self.model.step(
            Graph::Decoder,
            1,
            &self.latent,
            &mut self.state,
            &mut self.pcm,
        )?;
        out.extend_from_slice(&self.pcm);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.state.fill(0.0);
        self.received.copy_from_slice(&self.silence);
        self.latent.fill(0.0);
        self.lost_run = 0;
        Ok(())
    }
}

/// Registry entry: checks the model cheaply up front, loads the graphs on first use.
#[derive(Debug)]
pub struct AicFactory {
    dir: PathBuf,
    model: OnceLock<Result<Arc<AicModel>, String>>,
}

impl AicFactory {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            model: OnceLock::new(),
        }
    }

    pub fn model(&self) -> Result<Arc<AicModel>, CodecError> {
        self.model
            .get_or_init(|| {
                AicModel::load(&self.dir, 1)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|reason| CodecError::Unavailable {
                name: CODEC_NAME.into(),
                reason,
            })
    }
}

impl CodecFactory for AicFactory {
    fn availability(&self) -> Result<(), String> {
        read_manifest(&self.dir).map_err(|e| e.to_string())?;
        crate::runtime::environment().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn new_encoder(&self, point: OperatingPoint) -> Result<Box<dyn Encoder>, CodecError> {
        match point {
            OperatingPoint::Level(l) => Ok(Box::new(AicEncoder::new(self.model()?, l)?)),
            OperatingPoint::BitrateBps(_) => Err(CodecError::InvalidConfig(
                "AIC takes a level (e.g. --level 4), not a bitrate".into(),
            )),
        }
    }

    fn new_decoder(&self, info: &CodecInfo) -> Result<Box<dyn Decoder>, CodecError> {
        let model = self.model()?;
        let m = &model.manifest;
        if info.model_id != m.model_id
            || info.sample_rate != m.sample_rate
            || info.frame_samples != m.frame_samples
        {
            return Err(CodecError::InvalidConfig(format!(
                "stream was encoded with model {:?} at {} Hz / {} samples; loaded model is {:?} at {} Hz / {}",
                info.model_id,
                info.sample_rate,
                info.frame_samples,
                m.model_id,
                m.sample_rate,
                m.frame_samples
            )));
        }
        let level = match info.point {
            OperatingPoint::Level(l) => l,
            OperatingPoint::BitrateBps(_) => m.num_codebooks as u8,
        };
        Ok(Box::new(AicDecoder::new(model, level)))
    }
}

/// Registers the `aic` codec for the model in `dir` (default: [`default_model_dir`]). The entry
/// is registered even when the model or ONNX Runtime is missing, so `aic codecs` says why.
pub fn register_aic(reg: &mut CodecRegistry, dir: Option<&Path>) {
    let dir = dir.map(Path::to_owned).unwrap_or_else(default_model_dir);
    let (ladder, summary) = match read_manifest(&dir) {
        Ok(m) => (
            m.levels.iter().map(|&l| OperatingPoint::Level(l)).collect(),
            format!(
                "AIC neural speech codec, model {} {} ({} codebooks)",
                m.model_id, m.model_version, m.num_codebooks
            ),
        ),
        Err(_) => (
            vec![OperatingPoint::Level(1)],
            format!(
                "AIC neural speech codec (model expected in {})",
                dir.display()
            ),
        ),
    };
    let default_point = ladder
        .get(ladder.len() / 2)
        .copied()
        .unwrap_or(OperatingPoint::Level(1));
    reg.register(CodecDescriptor {
        name: CODEC_NAME.to_owned(),
        summary,
        sample_rate: 16_000,
        ladder,
        default_point,
        factory: Arc::new(AicFactory::new(dir)),
    });
}
