//! Hot operations of the AIC pipeline, one module per op.
//!
//! Each op has a CPU reference here; it is the specification the GPU backends (wgpu, CUDA, to
//! come) are tested against on seeded inputs.

pub mod rvq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("codeword index {index} out of range (codebook size {size})")]
    Index { index: usize, size: usize },
}
