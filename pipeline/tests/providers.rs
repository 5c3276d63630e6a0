//! GPU execution providers on a machine without a GPU: a clear error, never a crash, and the
//! CPU path keeps working in the same process. Run with and without `--features cuda,tensorrt`
//! (`scripts/test.sh` does both).

use aic_pipeline::PipelineError;
use aic_pipeline::aic::default_model_dir;
use aic_pipeline::model::AicModel;
use aic_pipeline::runtime::Provider;

#[test]
fn gpu_providers_fail_cleanly_without_a_device() {
    for p in [Provider::Cuda, Provider::TensorRt] {
        match AicModel::load_with(&default_model_dir(), 1, p) {
            Err(PipelineError::Provider { provider, why }) => {
                assert_eq!(provider, p);
                eprintln!("{p}: {why}");
                assert!(!why.is_empty());
                if !cfg!(feature = "cuda") && p == Provider::Cuda {
                    assert!(why.contains("--features cuda"), "{why}");
                }
            }
            Err(other) => panic!("{p}: expected a provider error, got {other}"),
            Ok(_) => {
                eprintln!("{p}: a device is present here; the no-device path was not exercised")
            }
        }
    }
    assert!(AicModel::load_with(&default_model_dir(), 1, Provider::Cpu).is_ok());
    assert_eq!("TensorRT".parse::<Provider>(), Ok(Provider::TensorRt));
    assert!("tpu".parse::<Provider>().is_err());
}
