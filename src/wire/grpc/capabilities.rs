//! The Capabilities service: what Bazel checks before it uses the cache at all.

use tonic::{Request, Response, Status};

use super::{digests, fastcdc};
use crate::engine::DigestFunction;
use crate::proto::build::bazel::semver::SemVer;
use crate::proto::reapi::{
    capabilities_server::Capabilities, compressor, symlink_absolute_path_strategy,
    ActionCacheUpdateCapabilities, CacheCapabilities, FastCdc2020Params, GetCapabilitiesRequest,
    ServerCapabilities,
};

/// Answers GetCapabilities with a fixed description of this server.
pub struct CapabilitiesService {
    capabilities: ServerCapabilities,
}

impl CapabilitiesService {
    /// Describes a cache that accepts batches of up to `max_batch_total_size` blob bytes and
    /// blobs of up to `max_blob_size` bytes.
    pub fn new(max_batch_total_size: u64, max_blob_size: u64) -> Self {
        let version = |minor| SemVer {
            major: 2,
            minor,
            patch: 0,
            prerelease: String::new(),
        };
        // IDENTITY is always supported and "need not be advertised" (REAPI); Bazel turns on
        // `--remote_cache_compression` only when ZSTD is listed.
        let zstd = vec![compressor::Value::Zstd as i32];
        let cache = CacheCapabilities {
            digest_functions: DigestFunction::ALL
                .into_iter()
                .map(digests::function_to_proto)
                .collect(),
            // Bazel refuses a cache it may not write results to.
            action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                update_enabled: true,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: max_batch_total_size as i64,
            symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: zstd.clone(),
            supported_batch_update_compressors: zstd,
            max_cas_blob_size_bytes: max_blob_size.min(i64::MAX as u64) as i64,
            split_blob_support: true,
            splice_blob_support: true,
            // What Bazel's `--experimental_remote_cache_chunking` looks for.
            fast_cdc_2020_params: Some(FastCdc2020Params {
                avg_chunk_size_bytes: fastcdc::AVERAGE_CHUNK_SIZE as u64,
                seed: fastcdc::SEED,
            }),
        };
        CapabilitiesService {
            capabilities: ServerCapabilities {
                cache_capabilities: Some(cache),
                execution_capabilities: None,
                deprecated_api_version: None,
                // Bazel also refuses a reply without these.
                low_api_version: Some(version(0)),
                high_api_version: Some(version(3)),
            },
        }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        tracing::debug!(instance = %request.get_ref().instance_name, "GetCapabilities");
        Ok(Response::new(self.capabilities.clone()))
    }
}
