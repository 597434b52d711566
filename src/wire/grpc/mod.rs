//! The REAPI v2 gRPC front end: Capabilities, ActionCache, ContentAddressableStorage, ByteStream.
//!
//! One module per job: `resource` parses ByteStream resource names, `status` maps engine
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
mod gate;
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
use crate::engine::Engine;
use crate::observe::grpc::Observed;
use crate::observe::Metrics;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::grpc::health::v1::health_server::HealthServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::tls::TlsConfig;
use gate::Gated;

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

/// The four REAPI services over `engine`, each behind the authentication gate, ready to serve
/// (over TLS if configured).
pub fn router(
    engine: Arc<Engine>,
    config: &GrpcConfig,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>> {
    let limit = config.max_message_size;
    let batch = config.max_batch_total_size();
    let parked =
        uploads::ParkedUploads::new(config.max_resumable_uploads, config.resumable_upload_ttl);
    // Every service behind the gate: each call's credentials are checked before it runs.
    let gated = &config.auth;
    let capabilities = Gated::new(
        CapabilitiesService::new(batch, engine.config().max_blob_size),
        gated.clone(),
    );
    let action_cache = Gated::new(
        ActionCacheService::new(engine.clone(), config.max_inline_bytes, limit),
        gated.clone(),
    );
    let cas = Gated::new(CasService::new(engine.clone(), batch, limit), gated.clone());
    let bytestream = Gated::new(ByteStreamService::new(engine, parked), gated.clone());
    // Every call counted, timed and logged; outside the gate, so refused calls count too.
    fn observed<S>(service: S, config: &GrpcConfig) -> Observed<S> {
        Observed::new(service, config.metrics.clone(), config.access_log)
    }
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
            CapabilitiesServer::new(observed(capabilities, config)),
            limit
        ))
        .add_service(limited!(
            ActionCacheServer::new(observed(action_cache, config)),
            limit
        ))
        .add_service(limited!(
            ContentAddressableStorageServer::new(observed(cas, config)),
            limit
        ))
        .add_service(limited!(
            ByteStreamServer::new(observed(bytestream, config)),
            limit
        ))
        .add_service(HealthServer::new(observed(
            health::HealthService::new(),
            config,
        ))))
}

/// Serves gRPC on `addr` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    config: GrpcConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(%addr, tls = config.tls.is_some(), "serving gRPC");
    router(engine, &config)?
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}

/// Serves gRPC on an already bound `listener` until `shutdown` completes (tests bind port 0 and
/// learn the port before serving).
#[cfg(not(madsim))]
pub async fn serve_listener(
    engine: Arc<Engine>,
    config: GrpcConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router(engine, &config)?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
