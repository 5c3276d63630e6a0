//! Generates the gRPC code from `aic/v1/*.proto` (needs `protoc`: Debian's protobuf-compiler,
//! installed by scripts/setup.sh, or $PROTOC).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=aic/v1/codec.proto");
    println!("cargo:rerun-if-changed=aic/v1/control.proto");
    println!("cargo:rerun-if-changed=aic/v1/egress.proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("aic_descriptor.bin"))
        .compile_protos(
            &[
                "aic/v1/codec.proto",
                "aic/v1/control.proto",
                "aic/v1/egress.proto",
            ],
            &["."],
        )?;
    Ok(())
}
