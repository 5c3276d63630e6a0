//! ONNX Runtime, loaded at run time from `libonnxruntime.so`.
//!
//! Dynamic loading keeps the build free of downloads: the set-up script installs the pinned
//! `onnxruntime` wheel from PyPI into the project's `.venv`, and this module finds its library
//! (or the one `ORT_DYLIB_PATH` names). When neither exists, every model-based codec reports
//! itself unavailable with that reason instead of failing later.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, ValueType};

use crate::PipelineError;

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where the library is looked for: `$ORT_DYLIB_PATH`, else the project venv's wheel.
pub fn dylib_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let entries = std::fs::read_dir(&venv_lib).ok()?;
    for py in entries.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = files
            .flatten()
            .map(|f| f.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        libs.sort();
        if let Some(l) = libs.pop() {
            return Some(l);
        }
    }
    None
}

/// The process-wide ONNX Runtime environment (initialised once).
pub fn environment() -> Result<&'static ort::environment::Environment, PipelineError> {
    ENV.get_or_init(|| {
        let path = dylib_path().ok_or_else(|| {
            "libonnxruntime.so not found: run scripts/setup.sh or set ORT_DYLIB_PATH".to_owned()
        })?;
        if !path.exists() {
            return Err(format!(
                "{} does not exist (ORT_DYLIB_PATH)",
                path.display()
            ));
        }
        ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("aic")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    })
    .as_ref()
    .map_err(|e| PipelineError::RuntimeUnavailable(e.clone()))
}

/// Where a graph runs. CPU is the default and the only one this project's machines have; CUDA
/// and TensorRT are compiled in with the `cuda` / `tensorrt` features and fail at session
/// creation, with ONNX Runtime's reason, when no device (or no GPU build of the library) exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
    TensorRt,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            other => Err(format!(
                "unknown execution provider {other:?} (cpu, cuda, tensorrt)"
            )),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
        })
    }
}

fn with_provider(
    b: ort::session::builder::SessionBuilder,
    provider: Provider,
) -> Result<ort::session::builder::SessionBuilder, PipelineError> {
    let unavailable = |why: String| PipelineError::Provider { provider, why };
    match provider {
        Provider::Cpu => Ok(b),
        #[cfg(feature = "cuda")]
        Provider::Cuda => b
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| unavailable(e.to_string())),
        #[cfg(feature = "tensorrt")]
        Provider::TensorRt => b
            .with_execution_providers([ort::ep::TensorRT::default().build().error_on_failure()])
            .map_err(|e| unavailable(e.to_string())),
        #[allow(unreachable_patterns)]
        other => Err(unavailable(format!(
            "this build has no {other} support (rebuild aic-pipeline with --features {other})"
        ))),
    }
}

/// Opens a graph. `threads` = intra-op threads (1 per serving thread: parallelism comes from
/// batching and from running streams side by side).
pub fn open_session(
    path: &Path,
    threads: usize,
    provider: Provider,
) -> Result<Session, PipelineError> {
    let env = environment()?;
    let fail = |e: &dyn std::fmt::Display| PipelineError::Model {
        dir: path.display().to_string(),
        why: e.to_string(),
    };
    let b = Session::builder(env)
        .map_err(|e| fail(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(&e))?
        .with_intra_threads(threads)
        .map_err(|e| fail(&e))?;
    with_provider(b, provider)?
        .commit_from_file(path)
        .map_err(|e| fail(&e))
}

/// Checks that `session` has a float32 input/output named `name` of shape `[batch, width]`
/// (batch dynamic, width fixed as the manifest says).
pub fn check_io(session: &Session, input: bool, name: &str, width: usize) -> Result<(), String> {
    let outlets = if input {
        session.inputs()
    } else {
        session.outputs()
    };
    let kind = if input { "input" } else { "output" };
    let o = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        format!("graph has no {kind} {name:?} (has {names:?})")
    })?;
    match o.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => {
            let dims: Vec<i64> = shape.iter().copied().collect();
            if dims.len() != 2 || dims[0] > 1 || (dims[1] >= 0 && dims[1] as usize != width) {
                return Err(format!(
                    "{kind} {name:?} has shape {dims:?}, manifest says [batch, {width}]"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "{kind} {name:?} is {other:?}, expected a float32 tensor"
        )),
    }
}
