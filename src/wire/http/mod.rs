//! The Bazel HTTP cache protocol front end (`/ac/{sha256}`, `/cas/{sha256}`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::engine::Engine;

/// Serves HTTP on `addr` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = (engine, addr);
    shutdown.await;
    Ok(())
}
