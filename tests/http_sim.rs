//! The HTTP front end under madsim: the same server code on simulated sockets and virtual time,
//! with the simulator's filesystem. Run with
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test --release --test http_sim`.
#![cfg(madsim)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use madsim::runtime::Handle;
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};

use hoard::engine::{Engine, EngineConfig};
use hoard::seam::sim_fs::{FaultConfig, SimFs};
use hoard::seam::TokioRuntime;
use hoard::wire::http::{serve_listener, HttpConfig};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect() -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(SERVER).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "hoard")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[madsim::test]
async fn round_trip_keep_alive_and_idle_timeout() {
    let handle = Handle::current();
    let server = handle.create_node().name("hoard").ip(SERVER.ip()).build();
    server.spawn(async {
        let fs = Arc::new(SimFs::new(FaultConfig::none()));
        let engine = Engine::open(EngineConfig::new("/data"), fs, Arc::new(TokioRuntime))
            .await
            .unwrap();
        let listener = TcpListener::bind(SERVER).await.unwrap();
        let config = HttpConfig {
            header_timeout: IDLE_TIMEOUT,
            ..HttpConfig::default()
        };
        serve_listener(
            hoard::store::stack::over_engine(engine, &Default::default()),
            config,
            listener,
            std::future::pending(),
        )
        .await;
    });
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        .build();
    let checked = client.spawn(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Larger than the engine's in-memory staging limit: the temp-file path and several
        // response chunks.
        let blob: Bytes = (0..3u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let path = format!("/cas/{}", hex::encode(Sha256::digest(&blob)));

        let mut connection = connect().await;
        let put = send(&mut connection, Method::PUT, &path, blob.clone())
            .await
            .unwrap();
        assert_eq!(put.0, StatusCode::OK);
        let get = send(&mut connection, Method::GET, &path, Bytes::new())
            .await
            .unwrap();
        assert_eq!(get.0, StatusCode::OK);
        assert!(get.1 == blob, "downloaded bytes differ");

        // An idle keep-alive connection is closed after the timeout, in virtual time.
        tokio::time::sleep(IDLE_TIMEOUT * 2).await;
        assert!(send(&mut connection, Method::GET, &path, Bytes::new())
            .await
            .is_err());
        let mut fresh = connect().await;
        let head = send(&mut fresh, Method::HEAD, &path, Bytes::new())
            .await
            .unwrap();
        assert_eq!(head.0, StatusCode::OK);
    });
    checked.await.unwrap();
}
