//! Codecs found by name (Symphonia-style registry).
//!
//! Crates register factories at start-up: `aic-codec` registers the Opus baselines, the
//! pipeline registers the neural AIC codec once a model is loaded. A codec that is registered
//! but cannot run here (model files missing, runtime library absent) stays listed with the
//! reason, so `aic codecs` can say why instead of pretending.

use std::sync::Arc;

use crate::codec::{CodecInfo, Decoder, Encoder, OperatingPoint};
use crate::error::CodecError;

pub trait CodecFactory: Send + Sync {
    /// `Ok` when instances can be made here, else a one-line reason.
    fn availability(&self) -> Result<(), String>;
    fn new_encoder(&self, point: OperatingPoint) -> Result<Box<dyn Encoder>, CodecError>;
    /// `info` comes from a stream/file header: the decoder checks it can decode that stream.
    fn new_decoder(&self, info: &CodecInfo) -> Result<Box<dyn Decoder>, CodecError>;
}

#[derive(Clone)]
pub struct CodecDescriptor {
    pub name: String,
    pub summary: String,
    pub sample_rate: u32,
    /// Points `aic bench` sweeps by default.
    pub ladder: Vec<OperatingPoint>,
    pub default_point: OperatingPoint,
    pub factory: Arc<dyn CodecFactory>,
}

impl std::fmt::Debug for CodecDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecDescriptor")
            .field("name", &self.name)
            .field("sample_rate", &self.sample_rate)
            .field("ladder", &self.ladder)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone)]
pub struct CodecRegistry {
    codecs: Vec<CodecDescriptor>,
}

impl CodecRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the codecs this crate provides (the Opus baselines).
    pub fn with_builtin() -> Self {
        let mut r = Self::new();
        crate::opus::register(&mut r);
        r
    }

    /// Adds a codec; a later registration under the same name replaces the earlier one.
    pub fn register(&mut self, d: CodecDescriptor) {
        self.codecs.retain(|c| c.name != d.name);
        self.codecs.push(d);
    }

    pub fn iter(&self) -> impl Iterator<Item = &CodecDescriptor> {
        self.codecs.iter()
    }

    pub fn get(&self, name: &str) -> Result<&CodecDescriptor, CodecError> {
        self.codecs
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| CodecError::UnknownCodec {
                name: name.to_owned(),
                registered: self
                    .codecs
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn available(&self, name: &str) -> Result<&CodecDescriptor, CodecError> {
        let d = self.get(name)?;
        d.factory
            .availability()
            .map_err(|reason| CodecError::Unavailable {
                name: name.to_owned(),
                reason,
            })?;
        Ok(d)
    }

    pub fn new_encoder(
        &self,
        name: &str,
        point: Option<OperatingPoint>,
    ) -> Result<Box<dyn Encoder>, CodecError> {
        let d = self.available(name)?;
        d.factory.new_encoder(point.unwrap_or(d.default_point))
    }

    pub fn new_decoder(&self, info: &CodecInfo) -> Result<Box<dyn Decoder>, CodecError> {
        self.available(&info.codec)?.factory.new_decoder(info)
    }
}
