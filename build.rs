//! Compiles `proto/` into Rust with the protoc shipped by `protoc-bin-vendored`, so a fresh
//! machine builds with cargo alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes([
            ".google.bytestream",
            ".build.bazel.remote.execution.v2.BatchUpdateBlobsRequest",
            ".build.bazel.remote.execution.v2.BatchReadBlobsResponse",
        ])
        .compile_protos(
            &[
                "proto/build/bazel/remote/execution/v2/remote_execution.proto",
                "proto/google/bytestream/bytestream.proto",
                "proto/google/rpc/code.proto",
                "proto/grpc/health/v1/health.proto",
            ],
            &[std::path::PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
