//! Slow, stalled and too many clients, on real sockets: what they hold is given back. Every
//! timeout is configured short (1 s) and every wait for the server to act is generous (20 s), so
//! these tests check *that* a connection is closed, never how fast. (Real sockets: not built
//! under madsim.)
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use hoard::engine::{Engine, EngineConfig};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::wire::http::{self, HttpConfig};

/// How long a test waits for the server to close a connection it should close.
const GENEROUS: Duration = Duration::from_secs(20);
/// The timeouts the servers under test are configured with.
const SHORT: Duration = Duration::from_secs(1);

/// An HTTP server over an engine in a temp dir, stopped on drop.
struct HttpServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl HttpServer {
    async fn start(configure: impl FnOnce(&mut HttpConfig)) -> HttpServer {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = HttpConfig {
            header_timeout: SHORT,
            body_timeout: SHORT,
            ..HttpConfig::default()
        };
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(http::serve_listener(
            hoard::store::stack::over_engine(engine.clone(), &Default::default()),
            config,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        HttpServer {
            addr,
            engine,
            dir,
            _stop: stop,
        }
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("tmp"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    }
}

/// Everything the server sends until it closes the connection; panics if it keeps it open
/// past [`GENEROUS`].
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    received
}

/// Polls `condition` until it holds (or [`GENEROUS`] passes).
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + GENEROUS;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// A PUT that sends its headers and part of its body, then nothing: the server answers 408,
/// closes the connection, removes the temp file and stores nothing.
#[tokio::test]
async fn http_put_that_stalls_mid_body_is_closed_and_its_temp_file_removed() {
    let server = HttpServer::start(|_| {}).await;
    // Larger than the in-memory staging limit, so the upload is staged in a temp file.
    let blob = vec![7u8; 4 << 20];
    let hash = hex::encode(Sha256::digest(&blob));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PUT /cas/{hash} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
        blob.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&blob[..2 << 20]).await.unwrap();
    assert!(
        eventually(|| !server.temp_files().is_empty()).await,
        "the upload is staged in a temp file"
    );
    let reply = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("sent nothing for 1 s"), "{reply}");
    assert!(
        eventually(|| server.temp_files().is_empty()).await,
        "temp file left behind: {:?}",
        server.temp_files()
    );
    assert_eq!(server.engine.stats().blobs, 0);
}

/// Headers that stop coming, or never start: the connection is closed.
#[tokio::test]
async fn http_headers_that_stall_are_closed() {
    let server = HttpServer::start(|_| {}).await;
    for partial in [
        &b""[..],
        b"GET /cas/",
        b"GET /status HTTP/1.1\r\nhost: x\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(partial).await.unwrap();
        read_until_closed(&mut stream).await;
    }
}

/// Over the connection cap, a client is told why (503) and closed; a slot freed is usable again.
#[tokio::test]
async fn http_connections_over_the_cap_are_refused_with_503() {
    let server = HttpServer::start(|config| {
        config.max_connections = 2;
        // Held connections must not time out during the test.
        config.header_timeout = Duration::from_secs(300);
    })
    .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    // Accepting is asynchronous: retry until the server has counted both.
    let mut refusal = String::new();
    for _ in 0..100 {
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        let _ = third
            .write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        refusal = String::from_utf8_lossy(&read_until_closed(&mut third).await).into_owned();
        if refusal.starts_with("HTTP/1.1 503") {
            break;
        }
    }
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("too many connections"), "{refusal}");
    assert!(refusal.contains("allows 2"), "{refusal}");
    drop(first);
    let mut served = String::new();
    for _ in 0..100 {
        let mut again = TcpStream::connect(server.addr).await.unwrap();
        again
            .write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        served = String::from_utf8_lossy(&read_until_closed(&mut again).await).into_owned();
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

// ---------------------------------------------------------------------------------------------
// gRPC

use futures::StreamExt as _;
use hoard::engine::Digest;
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::WriteRequest;
use hoard::proto::reapi::capabilities_client::CapabilitiesClient;
use hoard::proto::reapi::GetCapabilitiesRequest;
use hoard::wire::grpc::{self, GrpcConfig};
use tonic::transport::Channel;

/// The client's HTTP/2 connection preface, then an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A gRPC server over an engine in a temp dir, with every timeout [`SHORT`] unless `configure`
/// says otherwise; stopped on drop.
struct GrpcServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl GrpcServer {
    async fn start(configure: impl FnOnce(&mut GrpcConfig)) -> GrpcServer {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = GrpcConfig {
            handshake_timeout: SHORT,
            idle_timeout: SHORT,
            body_timeout: SHORT,
            ..GrpcConfig::default()
        };
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = hoard::store::stack::over_engine(engine.clone(), &Default::default());
        tokio::spawn(async move {
            grpc::serve_listener(served, config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        GrpcServer {
            addr,
            engine,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// The HTTP/2 frames in `bytes`, as (type, payload); a cut-off last frame is left out.
fn frames(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + length {
            break;
        }
        frames.push((rest[3], &rest[9..9 + length]));
        rest = &rest[9 + length..];
    }
    frames
}

const GOAWAY: u8 = 0x7;

/// A connection that sends nothing, half the preface, or all of it but not its SETTINGS, is
/// closed after the handshake timeout.
#[tokio::test]
async fn grpc_connections_without_a_preface_are_closed() {
    let server = GrpcServer::start(|config| config.idle_timeout = Duration::from_secs(300)).await;
    for sent in [&b""[..], &PREFACE[..12], &PREFACE[..24]] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        read_until_closed(&mut stream).await;
    }
}

/// A connection that completes the handshake and then makes no call is sent a GOAWAY after the
/// idle timeout, and closed.
#[tokio::test]
async fn idle_grpc_connections_get_a_goaway_and_are_closed() {
    let server = GrpcServer::start(|_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    let received = read_until_closed(&mut stream).await;
    let frames = frames(&received);
    assert!(
        frames.iter().any(|(kind, _)| *kind == GOAWAY),
        "no GOAWAY among {:?}",
        frames.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
    );
}

/// A client whose channel was closed for idleness simply reconnects for its next call.
#[tokio::test]
async fn a_channel_closed_for_idleness_reconnects() {
    let server = GrpcServer::start(|_| {}).await;
    let mut client = CapabilitiesClient::new(server.channel().await);
    client
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap();
    tokio::time::sleep(SHORT * 3).await;
    client
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap();
}

/// Over the connection cap, a client gets the server's SETTINGS and a GOAWAY that says why.
#[tokio::test]
async fn grpc_connections_over_the_cap_get_a_goaway_with_the_reason() {
    let server = GrpcServer::start(|config| {
        config.max_connections = 1;
        config.idle_timeout = Duration::from_secs(300);
    })
    .await;
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(PREFACE).await.unwrap();
    let mut reason = String::new();
    for _ in 0..100 {
        let mut refused = TcpStream::connect(server.addr).await.unwrap();
        let _ = refused.write_all(PREFACE).await;
        let received = tokio::time::timeout(Duration::from_millis(500), async {
            let mut buffer = vec![0u8; 4096];
            let n = refused.read(&mut buffer).await.unwrap_or(0);
            buffer.truncate(n);
            buffer
        })
        .await
        .unwrap_or_default();
        if let Some((_, payload)) = frames(&received)
            .into_iter()
            .find(|(kind, _)| *kind == GOAWAY)
        {
            reason = String::from_utf8_lossy(&payload[8..]).into_owned();
            break;
        }
    }
    assert!(reason.contains("too many connections"), "{reason:?}");
    assert!(reason.contains("allows 1"), "{reason:?}");
}

/// A ByteStream Write that sends its first chunk and then nothing fails with
/// DEADLINE_EXCEEDED after the body timeout; nothing is stored.
#[tokio::test]
async fn a_grpc_write_that_stalls_fails_with_deadline_exceeded() {
    let server = GrpcServer::start(|config| config.idle_timeout = Duration::from_secs(300)).await;
    let data = vec![3u8; 3 << 20];
    let digest = Digest::of(&data);
    let first = WriteRequest {
        resource_name: format!("uploads/stall/blobs/{}/{}", digest.hex(), digest.size),
        write_offset: 0,
        finish_write: false,
        data: data[..1 << 20].to_vec().into(),
    };
    let requests = futures::stream::iter([first]).chain(futures::stream::pending());
    let mut client = ByteStreamClient::new(server.channel().await);
    let status = tokio::time::timeout(GENEROUS, client.write(requests))
        .await
        .expect("the server ends the call")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("sent nothing"), "{status:?}");
    assert!(!server.engine.contains(&digest));
}
