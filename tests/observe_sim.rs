//! Observability under madsim: `server::serve` on simulated sockets, where madsim-tonic skips
//! tower layers, must still count every gRPC call (the instrumentation wraps the services) and
//! show it on the HTTP `/metrics` of the same server. Run with
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test --release --test observe_sim`.
#![cfg(madsim)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use madsim::runtime::Handle;
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tonic::Code;

use hoard::engine::{Digest, EngineConfig};
use hoard::proto::grpc::health::v1::health_check_response::ServingStatus;
use hoard::proto::grpc::health::v1::health_client::HealthClient;
use hoard::proto::grpc::health::v1::HealthCheckRequest;
use hoard::proto::reapi;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::seam::sim_fs::{FaultConfig, SimFs};
use hoard::seam::TokioRuntime;
use hoard::server::{self, ServeConfig};
use hoard::wire::grpc::GrpcConfig;
use hoard::wire::http::HttpConfig;

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const GRPC: SocketAddr = SocketAddr::new(SERVER_IP, 9092);
const HTTP: SocketAddr = SocketAddr::new(SERVER_IP, 8080);

async fn get(path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(HTTP).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, "hoard")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[madsim::test]
async fn grpc_calls_are_counted_in_the_simulated_world() {
    let handle = Handle::current();
    let server = handle.create_node().name("hoard").ip(SERVER_IP).build();
    server.spawn(async {
        let fs = Arc::new(SimFs::new(FaultConfig::none()));
        let config = ServeConfig {
            stack: Default::default(),
            engine: EngineConfig::new("/data"),
            grpc_addr: GRPC,
            http_addr: Some(HTTP),
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
        };
        server::serve(config, fs, Arc::new(TokioRuntime), std::future::pending())
            .await
            .unwrap();
    });
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        .build();
    let checked = client.spawn(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let channel = Endpoint::from_static("http://10.0.0.1:9092")
            .connect()
            .await
            .unwrap();
        let mut ac = ActionCacheClient::new(channel.clone());
        for n in 0..2 {
            let action = Digest::of(format!("action {n}").as_bytes());
            let status = ac
                .get_action_result(reapi::GetActionResultRequest {
                    action_digest: Some((&action).into()),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound);
        }
        let mut health = HealthClient::new(channel);
        let serving = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(serving.status, ServingStatus::Serving as i32);

        let (status, text) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            r#"hoard_ac_lookups_total{protocol="grpc",result="miss"} 2"#,
            r#"hoard_requests_total{protocol="grpc",service="ActionCache",method="GetActionResult",status="NOT_FOUND"} 2"#,
            r#"hoard_requests_total{protocol="grpc",service="Health",method="Check",status="OK"} 1"#,
            "hoard_cas_blobs 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let (status, json) = get("/status").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            json.contains("\"requests\":{\"grpc\":3,\"http\":1}"),
            "{json}"
        );
    });
    checked.await.unwrap();
}
