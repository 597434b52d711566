//! Compiles `proto/` into Rust with the protoc shipped by `protoc-bin-vendored`, so a fresh
//! machine builds with cargo alone.
//!
//! madsim-tonic-build writes the simulator's stubs (and tonic's, which are then written again
//! here): the real world's stubs decode with our codec, `crate::wire::grpc::codec::ProtoCodec`,
//! which turns an undecodable request into INVALID_ARGUMENT where tonic's says INTERNAL.

use std::path::PathBuf;

const PROTOS: [&str; 5] = [
    "proto/build/bazel/remote/execution/v2/remote_execution.proto",
    "proto/google/bytestream/bytestream.proto",
    "proto/google/rpc/code.proto",
    "proto/google/rpc/error_details.proto",
    "proto/grpc/health/v1/health.proto",
];

/// Messages whose `bytes` fields are `Bytes` (no copy of blob data).
const BYTES: [&str; 3] = [
    ".google.bytestream",
    ".build.bazel.remote.execution.v2.BatchUpdateBlobsRequest",
    ".build.bazel.remote.execution.v2.BatchReadBlobsResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    let protos = PROTOS.map(PathBuf::from);
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(BYTES)
        .compile_protos(&protos, &includes)?;
    BYTES
        .iter()
        .fold(
            tonic_prost_build::configure().codec_path("crate::wire::grpc::codec::ProtoCodec"),
            |builder, path| builder.bytes(path),
        )
        .compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
