//! Rust types and gRPC stubs generated from `proto/`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `build.bazel.*`
pub mod build {
    pub mod bazel {
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
    }
}

/// `google.*`
pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// `grpc.health.v1`
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

pub use build::bazel::remote::execution::v2 as reapi;
pub use google::bytestream;

impl From<&crate::engine::Digest> for reapi::Digest {
    /// The wire form of a digest: lowercase hex and size (its function travels in the request).
    fn from(digest: &crate::engine::Digest) -> reapi::Digest {
        reapi::Digest {
            hash: digest.hex(),
            size_bytes: digest.size as i64,
        }
    }
}

impl From<crate::engine::DigestFunction> for reapi::digest_function::Value {
    /// The REAPI value of a digest function.
    fn from(function: crate::engine::DigestFunction) -> reapi::digest_function::Value {
        use crate::engine::DigestFunction;
        match function {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256,
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3,
        }
    }
}
