//! The AIC gRPC API, package `aic.v1` (`proto/aic/v1/*.proto`): generated messages, the
//! `CodecService` server trait and client, and the file descriptor set for server reflection.
#![allow(missing_debug_implementations)] // generated code

pub mod v1 {
    tonic::include_proto!("aic.v1");
}

/// Encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aic_descriptor");
