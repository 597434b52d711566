//! Shared fixture of the gRPC tests: a real engine in a temp dir served on 127.0.0.1:0, and
//! real tonic clients connected to it.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use hoard::engine::{Digest, DigestFunction, Engine, EngineConfig};
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::{ReadRequest, WriteRequest};
use hoard::proto::reapi;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::capabilities_client::CapabilitiesClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::store::Store;
use hoard::wire::grpc::{self, GrpcConfig};
use hoard::wire::http::{self, HttpConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Client-side message limit: above any server limit, so the server's limits are what is tested.
const CLIENT_LIMIT: usize = 64 << 20;

/// A running server and clients of it.
pub struct Fixture {
    pub engine: Arc<Engine>,
    pub channel: Channel,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl Fixture {
    /// A server with default settings.
    pub async fn start() -> Fixture {
        Fixture::with(|_| {}, GrpcConfig::default()).await
    }

    /// A server whose engine settings `tune` adjusts.
    pub async fn with(tune: impl FnOnce(&mut EngineConfig), grpc_config: GrpcConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = EngineConfig::new(dir.path());
        tune(&mut config);
        let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
            .await
            .expect("engine opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = hoard::store::stack::over_engine(engine.clone(), &Default::default());
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            grpc::serve_listener(served, grpc_config, listener, shutdown)
                .await
                .expect("server runs");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Fixture {
            engine,
            channel,
            _dir: dir,
            _stop: stop,
        }
    }

    pub fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_LIMIT)
            .max_encoding_message_size(CLIENT_LIMIT)
    }

    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_LIMIT)
            .max_encoding_message_size(CLIENT_LIMIT)
    }

    pub fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_LIMIT)
            .max_encoding_message_size(CLIENT_LIMIT)
    }

    pub fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel.clone())
    }

    /// The cache capabilities the server announces.
    pub async fn cache_capabilities(&self) -> reapi::CacheCapabilities {
        let request = reapi::GetCapabilitiesRequest::default();
        let reply = self.capabilities().get_capabilities(request).await;
        let caps = reply.expect("GetCapabilities").into_inner();
        caps.cache_capabilities.expect("cache capabilities")
    }

    /// Uploads `data` in one ByteStream write and asserts it committed.
    pub async fn upload(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let requests = write_requests(&write_name("", "u", &digest), data, 64 << 10);
        let response = self
            .bytestream()
            .write(futures::stream::iter(requests))
            .await
            .expect("write succeeds");
        assert_eq!(response.into_inner().committed_size, data.len() as i64);
        digest
    }

    /// Reads a whole blob back over ByteStream.
    pub async fn download(&self, digest: &Digest) -> Result<Vec<u8>, tonic::Status> {
        read_all(&mut self.bytestream(), &read_name("", digest), 0, 0).await
    }
}

/// Both front ends served over one store stack on 127.0.0.1 (as `server::serve` does), stopped
/// on drop.
pub struct FrontEnds {
    pub channel: Channel,
    pub http_addr: std::net::SocketAddr,
    _stop: Vec<oneshot::Sender<()>>,
}

impl FrontEnds {
    pub async fn serve(cache: Arc<dyn Store>, grpc: GrpcConfig, http: HttpConfig) -> FrontEnds {
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http_listener.local_addr().unwrap();
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let stopped = |rx: oneshot::Receiver<()>| async {
            let _ = rx.await;
        };
        let served =
            grpc::serve_listener(cache.clone(), grpc, grpc_listener, stopped(grpc_stopped));
        tokio::spawn(served);
        let stop = stopped(http_stopped);
        tokio::spawn(http::serve_listener(cache, http, http_listener, stop));
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        FrontEnds {
            channel,
            http_addr,
            _stop: vec![stop_grpc, stop_http],
        }
    }
}

/// The REAPI form of a digest.
pub fn proto(digest: &Digest) -> reapi::Digest {
    digest.into()
}

/// The function segment of a resource name: none for SHA-256 (REAPI says it MUST be omitted).
fn function_segment(digest: &Digest) -> String {
    match digest.function {
        DigestFunction::Sha256 => String::new(),
        other => format!("{}/", other.name()),
    }
}

pub fn read_name(instance: &str, digest: &Digest) -> String {
    let prefix = if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    };
    let function = function_segment(digest);
    format!("{prefix}blobs/{function}{}/{}", digest.hex(), digest.size)
}

pub fn write_name(instance: &str, uuid: &str, digest: &Digest) -> String {
    let prefix = if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    };
    format!(
        "{prefix}uploads/{uuid}/blobs/{}{}/{}",
        function_segment(digest),
        digest.hex(),
        digest.size
    )
}

/// A well-behaved client's Write messages for `data` in `chunk`-byte pieces.
pub fn write_requests(name: &str, data: &[u8], chunk: usize) -> Vec<WriteRequest> {
    write_requests_from(name, data, 0, chunk, true)
}

/// Write messages for `data[offset..]`, with `finish_write` on the last one if `finish`.
pub fn write_requests_from(
    name: &str,
    data: &[u8],
    offset: usize,
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut requests: Vec<WriteRequest> = data[offset..]
        .chunks(chunk.max(1))
        .scan(offset, |at, piece| {
            let request = WriteRequest {
                resource_name: if *at == offset {
                    name.to_owned()
                } else {
                    String::new()
                },
                write_offset: *at as i64,
                finish_write: false,
                data: piece.to_vec().into(),
            };
            *at += piece.len();
            Some(request)
        })
        .collect();
    if requests.is_empty() {
        requests.push(WriteRequest {
            resource_name: name.to_owned(),
            write_offset: offset as i64,
            ..Default::default()
        });
    }
    requests.last_mut().expect("one request").finish_write = finish;
    requests
}

/// Reads `name` from `offset` (with `limit`), concatenating the chunks.
pub async fn read_all(
    client: &mut ByteStreamClient<Channel>,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .read(ReadRequest {
            resource_name: name.to_owned(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// Deterministic pseudo-random bytes (splitmix64), distinct for each seed.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}
