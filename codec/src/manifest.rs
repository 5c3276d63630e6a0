//! The model manifest (`manifest.json`) that ships with every trained AIC model.
//!
//! It is the contract between training (Python, `models/`) and the runtime: frame size, state
//! sizes, codebook shape, entropy tables and the level ladder. Everything is validated here,
//! before any graph is loaded, so a wrong or damaged model fails with one clear line.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bitstream::EntropyModel;
use crate::bitstream::frame::MAX_LEVEL;
use crate::bitstream::range::{FreqTable, PRECISION_BITS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("not valid manifest JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: sha256 {got} does not match the manifest's {expected}")]
    Checksum {
        file: String,
        got: String,
        expected: String,
    },
}

fn invalid(s: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(s.into())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub file: String,
    pub sha256: String,
    pub state_size: usize,
    #[serde(default)]
    pub params: u64,
    #[serde(default)]
    pub macs_per_frame: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodebookSpec {
    pub file: String,
    pub sha256: String,
    pub dtype: String,
    pub shape: [usize; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntropySpec {
    pub precision_bits: u32,
    pub frequencies: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub model_id: String,
    pub model_version: String,
    pub sample_rate: u32,
    pub frame_samples: usize,
    pub decoder_delay_samples: usize,
    #[serde(default)]
    pub algorithmic_latency_ms: f64,
    pub latent_dim: usize,
    pub num_codebooks: usize,
    pub codebook_size: usize,
    pub encoder: GraphSpec,
    pub decoder: GraphSpec,
    pub codebooks: CodebookSpec,
    pub entropy: EntropySpec,
    pub levels: Vec<u8>,
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Upper bounds that keep a hostile manifest from making us allocate gigabytes.
const MAX_STATE: usize = 1 << 20;
const MAX_LATENT: usize = 4096;
const MAX_CODEBOOK: usize = 1 << 15;

impl Manifest {
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != "aic-model-manifest" || self.format_version != 1 {
            return Err(invalid(format!(
                "format {:?} v{} (expected \"aic-model-manifest\" v1)",
                self.format, self.format_version
            )));
        }
        if self.model_id.is_empty() || self.model_id.len() > 64 {
            return Err(invalid("model_id must be 1..=64 bytes"));
        }
        if !(8000..=48_000).contains(&self.sample_rate)
            || self.frame_samples as u32 * 50 != self.sample_rate
        {
            return Err(invalid(format!(
                "frame_samples {} at {} Hz is not a 20 ms frame",
                self.frame_samples, self.sample_rate
            )));
        }
        if self.decoder_delay_samples > self.sample_rate as usize {
            return Err(invalid("decoder_delay_samples exceeds one second"));
        }
        if self.latent_dim == 0 || self.latent_dim > MAX_LATENT {
            return Err(invalid(format!(
                "latent_dim {} not in 1..={MAX_LATENT}",
                self.latent_dim
            )));
        }
        if self.num_codebooks == 0 || self.num_codebooks > usize::from(MAX_LEVEL) {
            return Err(invalid(format!(
                "num_codebooks {} not in 1..={MAX_LEVEL}",
                self.num_codebooks
            )));
        }
        if self.codebook_size < 2 || self.codebook_size > MAX_CODEBOOK {
            return Err(invalid(format!(
                "codebook_size {} not in 2..={MAX_CODEBOOK}",
                self.codebook_size
            )));
        }
        for (name, g) in [("encoder", &self.encoder), ("decoder", &self.decoder)] {
            if g.state_size > MAX_STATE {
                return Err(invalid(format!(
                    "{name}.state_size {} > {MAX_STATE}",
                    g.state_size
                )));
            }
        }
        if self.codebooks.dtype != "f32le" {
            return Err(invalid(format!(
                "codebooks.dtype {:?} (expected \"f32le\")",
                self.codebooks.dtype
            )));
        }
        if self.codebooks.shape != [self.num_codebooks, self.codebook_size, self.latent_dim] {
            return Err(invalid(format!(
                "codebooks.shape {:?} != [num_codebooks, codebook_size, latent_dim] = [{}, {}, {}]",
                self.codebooks.shape, self.num_codebooks, self.codebook_size, self.latent_dim
            )));
        }
        if self.entropy.precision_bits != PRECISION_BITS {
            return Err(invalid(format!(
                "entropy.precision_bits {} (expected {PRECISION_BITS})",
                self.entropy.precision_bits
            )));
        }
        if self.entropy.frequencies.len() != self.num_codebooks
            || self
                .entropy
                .frequencies
                .iter()
                .any(|f| f.len() != self.codebook_size)
        {
            return Err(invalid(
                "entropy.frequencies must be num_codebooks lists of codebook_size entries",
            ));
        }
        self.entropy_model()?;
        if self.levels.is_empty()
            || self
                .levels
                .iter()
                .any(|&l| l == 0 || usize::from(l) > self.num_codebooks)
            || self.levels.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(format!(
                "levels {:?} must be increasing within 1..={}",
                self.levels, self.num_codebooks
            )));
        }
        Ok(())
    }

    /// 4 bytes that identify this exact model (id, version, codebooks); they key each frame's
    /// CRC so frames are never decoded against the wrong model.
    pub fn model_tag(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.model_id.as_bytes());
        h.update([0]);
        h.update(self.model_version.as_bytes());
        h.update([0]);
        h.update(self.codebooks.sha256.as_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    pub fn entropy_model(&self) -> Result<EntropyModel, ManifestError> {
        let tables = self
            .entropy
            .frequencies
            .iter()
            .enumerate()
            .map(|(i, f)| FreqTable::new(f).map_err(|e| invalid(format!("entropy table {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        EntropyModel::new(tables, self.model_tag()).map_err(|e| invalid(e.to_string()))
    }

    /// Parses `codebooks.bin` (after checking its hash) into one flat `[K * N * D]` vector.
    pub fn parse_codebooks(&self, bytes: &[u8]) -> Result<Vec<f32>, ManifestError> {
        verify_sha256(&self.codebooks.file, bytes, &self.codebooks.sha256)?;
        let [k, n, d] = self.codebooks.shape;
        let expected = k * n * d * 4;
        if bytes.len() != expected {
            return Err(invalid(format!(
                "{}: {} bytes, shape needs {expected}",
                self.codebooks.file,
                bytes.len()
            )));
        }
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!(
                "{}: non-finite codebook entries",
                self.codebooks.file
            )));
        }
        Ok(v)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn verify_sha256(file: &str, bytes: &[u8], expected: &str) -> Result<(), ManifestError> {
    let got = sha256_hex(bytes);
    if !got.eq_ignore_ascii_case(expected) {
        return Err(ManifestError::Checksum {
            file: file.to_owned(),
            got,
            expected: expected.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(k: usize, n: usize, d: usize) -> Manifest {
        let base = (1u32 << 15) / n as u32;
        let mut f = vec![base; n];
        f[0] += (1u32 << 15) - base * n as u32;
        Manifest {
            format: "aic-model-manifest".into(),
            format_version: 1,
            model_id: "test-model".into(),
            model_version: "0".into(),
            sample_rate: 16_000,
            frame_samples: 320,
            decoder_delay_samples: 240,
            algorithmic_latency_ms: 35.0,
            latent_dim: d,
            num_codebooks: k,
            codebook_size: n,
            encoder: GraphSpec {
                file: "e.onnx".into(),
                sha256: String::new(),
                state_size: 10,
                params: 0,
                macs_per_frame: 0,
            },
            decoder: GraphSpec {
                file: "d.onnx".into(),
                sha256: String::new(),
                state_size: 10,
                params: 0,
                macs_per_frame: 0,
            },
            codebooks: CodebookSpec {
                file: "c.bin".into(),
                sha256: String::new(),
                dtype: "f32le".into(),
                shape: [k, n, d],
            },
            entropy: EntropySpec {
                precision_bits: 15,
                frequencies: vec![f; k],
            },
            levels: (1..=k as u8).collect(),
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn valid_manifest_roundtrips_through_json() {
        let m = sample(4, 16, 8);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::from_json(&text).unwrap(), m);
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = sample(4, 16, 8);
        m.codebooks.shape = [4, 16, 9];
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("codebooks.shape")
        );
        let mut m = sample(4, 16, 8);
        m.entropy.frequencies[2][3] += 1;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("entropy table 2")
        );
        let mut m = sample(4, 16, 8);
        m.levels = vec![1, 5];
        assert!(m.validate().is_err());
        let mut m = sample(4, 16, 8);
        m.frame_samples = 256;
        assert!(m.validate().is_err());
        assert!(matches!(
            Manifest::from_json("{"),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn codebooks_are_checked() {
        let mut m = sample(1, 2, 2);
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        m.codebooks.sha256 = sha256_hex(&bytes);
        assert_eq!(m.parse_codebooks(&bytes).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(
            m.parse_codebooks(&bytes[..12]),
            Err(ManifestError::Checksum { .. })
        ));
    }

    #[test]
    fn tag_depends_on_codebooks() {
        let a = sample(1, 2, 2);
        let mut b = a.clone();
        b.codebooks.sha256 = "00".into();
        assert_ne!(a.model_tag(), b.model_tag());
    }
}
