//! Authentication under madsim: the same gate on simulated sockets (madsim-tonic skips tower
//! layers and interceptors, so this proves the checks do not depend on them). Run with
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test --release --test auth_sim`.
#![cfg(madsim)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use madsim::runtime::Handle;
use tokio::net::{TcpListener, TcpStream};
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use tonic::Code;

use hoard::auth::Auth;
use hoard::engine::{Digest, Engine, EngineConfig};
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::proto::reapi::{batch_update_blobs_request, BatchUpdateBlobsRequest};
use hoard::seam::sim_fs::{FaultConfig, SimFs};
use hoard::seam::TokioRuntime;
use hoard::wire::grpc::{self, GrpcConfig};
use hoard::wire::http::{serve_listener, HttpConfig};

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const GRPC: SocketAddr = SocketAddr::new(SERVER_IP, 9092);
const HTTP: SocketAddr = SocketAddr::new(SERVER_IP, 8080);
const TOKEN: &str = "sim-token";

fn batch(data: &[u8], authorization: Option<&str>) -> tonic::Request<BatchUpdateBlobsRequest> {
    let digest = Digest::of(data);
    let mut request = tonic::Request::new(BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(hoard::proto::reapi::Digest {
                hash: digest.hex(),
                size_bytes: data.len() as i64,
            }),
            data: data.to_vec().into(),
            compressor: 0,
        }],
        ..Default::default()
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    request
}

async fn http_put(path: &str, body: &[u8], authorization: Option<&str>) -> StatusCode {
    let stream = TcpStream::connect(HTTP).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header(HOST, "hoard")
        .header(CONTENT_LENGTH, body.len());
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[madsim::test]
async fn refused_calls_store_nothing_in_the_simulator() {
    let handle = Handle::current();
    let (engine_tx, engine_rx) = tokio::sync::oneshot::channel::<Arc<Engine>>();
    let server = handle.create_node().name("hoard").ip(SERVER_IP).build();
    server.spawn(async move {
        let fs = Arc::new(SimFs::new(FaultConfig::none()));
        let engine = Engine::open(EngineConfig::new("/data"), fs, Arc::new(TokioRuntime))
            .await
            .unwrap();
        let _ = engine_tx.send(engine.clone());
        let auth = Auth::new(Some(TOKEN), None, false);
        let grpc_config = GrpcConfig {
            auth: auth.clone(),
            ..GrpcConfig::default()
        };
        let http_config = HttpConfig {
            auth,
            ..HttpConfig::default()
        };
        let listener = TcpListener::bind(HTTP).await.unwrap();
        tokio::spawn(serve_listener(
            hoard::store::stack::over_engine(engine.clone(), &Default::default()),
            http_config,
            listener,
            std::future::pending(),
        ));
        grpc::serve(
            hoard::store::stack::over_engine(engine, &Default::default()),
            grpc_config,
            GRPC,
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        .build();
    let engine = engine_rx.await.unwrap();
    let checked = client.spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let channel = Endpoint::from_static("http://10.0.0.1:9092")
            .connect()
            .await
            .unwrap();
        let mut cas = ContentAddressableStorageClient::new(channel);
        let data = b"simulated upload";
        let before = engine.stats();
        for wrong in [None, Some("Bearer nope")] {
            let status = cas
                .batch_update_blobs(batch(data, wrong))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            let path = format!("/cas/{}", Digest::of(data).hex());
            assert_eq!(http_put(&path, data, wrong).await, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(engine.stats(), before);
        let bearer = format!("Bearer {TOKEN}");
        cas.batch_update_blobs(batch(data, Some(&bearer)))
            .await
            .expect("authorized batch");
        let other = b"over http";
        let path = format!("/cas/{}", Digest::of(other).hex());
        assert_eq!(http_put(&path, other, Some(&bearer)).await, StatusCode::OK);
        assert_eq!(engine.stats().blobs, before.blobs + 2);
    });
    checked.await.unwrap();
}
