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
#[cfg(not(madsim))]
pub(crate) mod codec;
mod compression;
#[cfg(not(madsim))]
mod connections;
mod digests;
pub mod fastcdc;
mod guarded;
mod health;
mod resource;
mod split;
mod status;
mod stream;
mod tree;
#[cfg(not(madsim))]
mod unobserved;
mod uploads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// Most connections open at once; more get a GOAWAY and are closed.
    pub max_connections: usize,
    /// How long a new connection may take to finish its TLS handshake and send the HTTP/2
    /// preface.
    pub handshake_timeout: Duration,
    /// How long a connection may have no call in flight before it is sent a GOAWAY and closed.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING checks that the peer still answers (`None`: never); a peer that
    /// does not answer within 20 s is disconnected.
    pub keepalive_interval: Option<Duration>,
    /// How long a request stream may send nothing while a call waits for it (the call then
    /// fails with DEADLINE_EXCEEDED).
    pub body_timeout: Duration,
    /// After shutdown is requested, how long calls in flight may take to finish before
    /// [`serve`] returns without them.
    pub drain_timeout: Duration,
    /// HTTP/2 flow-control window of one stream: how many bytes of one upload may be buffered
    /// before the service reads them.
    pub stream_window: u32,
    /// HTTP/2 flow-control window of a whole connection (all its streams together).
    pub connection_window: u32,
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
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            // Bazel keeps its channel open between builds and commands; a reconnect costs little
            // but should not be routine.
            idle_timeout: Duration::from_secs(600),
            keepalive_interval: Some(Duration::from_secs(60)),
            body_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            // Wider than the 64 KiB default, so one upload is not throttled by window updates
            // on a fast link, and narrow enough that a server slow to read (a busy disk) holds
            // at most 1 MiB per stream and 16 MiB per connection in buffers.
            stream_window: 1 << 20,
            connection_window: 16 << 20,
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

/// Adds the four REAPI services over the store `$cache` and the health service to `$routes`
/// (tonic's `Routes` in the real world, madsim-tonic's `Router` in the simulator): each checked
/// and recorded by [`Guarded`], with the message limit in both directions.
macro_rules! add_services {
    ($routes:expr, $cache:expr, $config:expr) => {{
        let (cache, config): (Arc<dyn Store>, &GrpcConfig) = ($cache, $config);
        let store = stack::for_front_end(&cache, &config.metrics, Protocol::Grpc);
        let limit = config.max_message_size;
        let per_stream = u64::from(config.stream_window) + limit as u64;
        let per_connection = u64::from(config.connection_window);
        config
            .metrics
            .publish_grpc_buffer_limits(per_stream, per_connection);
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
        let health = health::HealthService::new();
        $routes
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
            .add_service(HealthServer::new(guard(health, config)))
    }};
}

/// The services, routed by path, for the real world's own connection handling (see
/// `connections`).
#[cfg(not(madsim))]
fn routes(cache: Arc<dyn Store>, config: &GrpcConfig) -> tonic::service::Routes {
    add_services!(tonic::service::Routes::default(), cache, config).prepare()
}

/// The services on madsim-tonic's server (its transport has no HTTP/2: windows, timeouts and
/// connection limits do not apply there).
#[cfg(madsim)]
fn router(
    cache: Arc<dyn Store>,
    config: &GrpcConfig,
) -> Result<tonic::transport::server::Router, Box<dyn std::error::Error + Send + Sync>> {
    if config.tls.is_some() {
        return Err("TLS is not available in the simulator".into());
    }
    let mut server = tonic::transport::Server::builder();
    Ok(add_services!(server, cache, config))
}

/// Serves gRPC on `addr` until `shutdown` completes.
pub async fn serve(
    cache: Arc<dyn Store>,
    config: GrpcConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(%addr, tls = config.tls.is_some(), "serving gRPC");
    #[cfg(not(madsim))]
    {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        serve_listener(cache, config, listener, shutdown).await
    }
    #[cfg(madsim)]
    {
        router(cache, &config)?
            .serve_with_shutdown(addr, shutdown)
            .await?;
        Ok(())
    }
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
    connections::serve(routes(cache, &config), &config, listener, shutdown).await
}
