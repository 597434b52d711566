//! The REAPI v2 gRPC front end: Capabilities, ActionCache, ContentAddressableStorage, ByteStream.
//!
//! One module per job: `resource` parses ByteStream resource names, `status` maps store
//! errors to gRPC codes, `digests` converts digests, `stream` turns a producer task into a
//! response stream, `uploads` keeps interrupted uploads for resumption, and one module per
//! service. Instance names are accepted everywhere: the action cache is per instance, the CAS is
//! shared.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
mod compression;
mod digests;
mod guarded;
mod health;
mod resource;
mod status;
mod stream;
mod tree;
mod uploads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::server::Router;
use tonic::transport::Server;

use action_cache::ActionCacheService;
use bytestream::ByteStreamService;
use capabilities::CapabilitiesService;
use cas::CasService;

use crate::auth::Auth;
use crate::observe::{Metrics, Protocol};
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::grpc::health::v1::health_server::HealthServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::store::{stack, Store};
use crate::tls::TlsConfig;
use guarded::Guarded;

/// Settings of the gRPC front end.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Largest gRPC message accepted or sent. The batch limit announced to clients
    /// ([`GrpcConfig::max_batch_total_size`]) is derived from it.
    pub max_message_size: usize,
    /// Most blob bytes inlined into one GetActionResult reply.
    pub max_inline_bytes: usize,
    /// How long an interrupted upload stays resumable after its last byte arrived.
    pub resumable_upload_ttl: Duration,
    /// Most interrupted uploads kept for resumption (each holds an engine upload slot).
    pub max_resumable_uploads: usize,
    /// Who may call (open by default); checked by every service method, see [`crate::auth`].
    pub auth: Auth,
    /// Serve over TLS (`grpcs://`); not available under madsim.
    pub tls: Option<TlsConfig>,
    /// Where every call is counted and timed (`server::serve` shares one with HTTP).
    pub metrics: Arc<Metrics>,
    /// Log one line per call (target `hoard::access`, INFO).
    pub access_log: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_message_size: 4 << 20,
            max_inline_bytes: 1 << 20,
            resumable_upload_ttl: Duration::from_secs(600),
            max_resumable_uploads: 64,
            auth: Auth::open(),
            tls: None,
            metrics: Arc::default(),
            access_log: true,
        }
    }
}

impl GrpcConfig {
    /// Most blob bytes in one batch call (`max_batch_total_size_bytes`). An eighth of the message
    /// is left for the per-blob digests and statuses, so a batch at the limit still fits.
    pub fn max_batch_total_size(&self) -> u64 {
        (self.max_message_size - self.max_message_size / 8) as u64
    }
}

/// Applies the message limit in both directions to a generated service.
macro_rules! limited {
    ($service:expr, $limit:expr) => {
        $service
            .max_decoding_message_size($limit)
            .max_encoding_message_size($limit)
    };
}

/// The four REAPI services over `cache`, each checked and recorded by [`Guarded`], ready to serve
/// (over TLS if configured).
pub fn router(
    cache: Arc<dyn Store>,
    config: &GrpcConfig,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    let store = stack::for_front_end(&cache, &config.metrics, Protocol::Grpc);
    let limit = config.max_message_size;
    let batch = config.max_batch_total_size();
    let parked =
        uploads::ParkedUploads::new(config.max_resumable_uploads, config.resumable_upload_ttl);
    // Every service checked and recorded; refused calls are recorded too.
    fn guard<S>(service: S, config: &GrpcConfig) -> Guarded<S> {
        let metrics = config.metrics.clone();
        Guarded::new(service, config.auth.clone(), metrics, config.access_log)
    }
    let capabilities = CapabilitiesService::new(batch, store.limits().max_blob_size);
    let action_cache = ActionCacheService::new(store.clone(), config.max_inline_bytes, limit);
    let cas = CasService::new(store.clone(), batch, limit);
    let bytestream = ByteStreamService::new(store, parked);
    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        #[cfg(not(madsim))]
        {
            server = server.tls_config(tls.grpc())?;
        }
        #[cfg(madsim)]
        {
            let _ = (tls, &mut server);
            return Err("TLS is not available in the simulator".into());
        }
    }
    Ok(server
        // Small replies must not wait for Nagle (clients send many tiny RPCs).
        .tcp_nodelay(true)
        // Wider HTTP/2 flow-control windows than the 64 KiB default, so one large upload or
        // download is not throttled by window updates.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .add_service(limited!(
            CapabilitiesServer::new(guard(capabilities, config)),
            limit
        ))
        .add_service(limited!(
            ActionCacheServer::new(guard(action_cache, config)),
            limit
        ))
        .add_service(limited!(
            ContentAddressableStorageServer::new(guard(cas, config)),
            limit
        ))
        .add_service(limited!(
            ByteStreamServer::new(guard(bytestream, config)),
            limit
        ))
        .add_service(HealthServer::new(guard(
            health::HealthService::new(),
            config,
        ))))
}

/// Serves gRPC on `addr` until `shutdown` completes.
pub async fn serve(
    cache: Arc<dyn Store>,
    config: GrpcConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(%addr, tls = config.tls.is_some(), "serving gRPC");
    router(cache, &config)?
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}

/// Serves gRPC on an already bound `listener` until `shutdown` completes (tests bind port 0 and
/// learn the port before serving).
#[cfg(not(madsim))]
pub async fn serve_listener(
    cache: Arc<dyn Store>,
    config: GrpcConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router(cache, &config)?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
