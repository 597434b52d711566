//! Observability end to end: real gRPC and HTTP servers on 127.0.0.1:0 sharing one metrics
//! registry; traffic of known shape; then `/metrics`, `/status`, the health service and the access
//! log must show exactly that traffic. (Real sockets: not built under madsim.)
#![cfg(not(madsim))]

mod grpc_support;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

use grpc_support::FrontEnds;
use hoard::engine::{Digest, Engine, EngineConfig};
use hoard::observe::Metrics;
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::{ReadRequest, WriteRequest};
use hoard::proto::grpc::health::v1::health_check_response::ServingStatus;
use hoard::proto::grpc::health::v1::health_client::HealthClient;
use hoard::proto::grpc::health::v1::HealthCheckRequest;
use hoard::proto::reapi;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::batch_update_blobs_request;
use hoard::proto::reapi::capabilities_client::CapabilitiesClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::wire::grpc::GrpcConfig;
use hoard::wire::http::HttpConfig;

/// Both front ends over one engine and one registry, stopped on drop.
struct Servers {
    engine: Arc<Engine>,
    front: FrontEnds,
    _dir: tempfile::TempDir,
}

impl Servers {
    async fn start(access_log: bool) -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await
        .unwrap();
        // What `server::serve` does: one registry handed to both front ends.
        let metrics = Arc::new(Metrics::new());
        let grpc_config = GrpcConfig {
            metrics: metrics.clone(),
            access_log,
            ..GrpcConfig::default()
        };
        let http_config = HttpConfig {
            metrics,
            access_log,
            ..HttpConfig::default()
        };
        // What `server::serve` does: one store stack for both front ends.
        let cache = hoard::store::stack::over_engine(engine.clone(), &Default::default());
        let front = FrontEnds::serve(cache, grpc_config, http_config).await;
        Servers {
            engine,
            front,
            _dir: dir,
        }
    }

    fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.front.channel.clone())
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.front.channel.clone())
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.front.channel.clone())
    }

    fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.front.channel.clone())
    }

    /// One HTTP/1.1 request on a fresh connection: status, content type and body.
    async fn http(&self, method: Method, path: &str, body: &[u8]) -> (StatusCode, String, Bytes) {
        let stream = TcpStream::connect(self.front.http_addr).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }

    /// `GET /metrics`, parsed into `series -> value` (`name{labels}` exactly as rendered).
    async fn metrics(&self) -> (HashMap<String, f64>, String) {
        let (status, content_type, body) = self.http(Method::GET, "/metrics", b"").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = String::from_utf8(body.to_vec()).unwrap();
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').expect("series and value");
                (
                    name.to_owned(),
                    value.parse::<f64>().expect("numeric value"),
                )
            })
            .collect();
        (series, text)
    }
}

fn proto(digest: &Digest) -> reapi::Digest {
    digest.into()
}

fn get_action(action: &Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest {
        action_digest: Some(proto(action)),
        ..Default::default()
    }
}

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// The value of `series`, failing with the whole exposition if it is absent.
fn value(series: &HashMap<String, f64>, text: &str, key: &str) -> f64 {
    match series.get(key) {
        Some(value) => *value,
        None => panic!("no series {key:?} in /metrics:\n{text}"),
    }
}

/// Uploads `data` over ByteStream in one message.
async fn upload(servers: &Servers, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let request = WriteRequest {
        resource_name: format!("uploads/u1/blobs/{}/{}", digest.hex(), digest.size),
        write_offset: 0,
        finish_write: true,
        data: Bytes::copy_from_slice(data),
    };
    let response = servers
        .bytestream()
        .write(futures::stream::iter([request]))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    digest
}

/// Reads a blob over ByteStream: its bytes, or the error code.
async fn download(servers: &Servers, digest: &Digest) -> Result<Vec<u8>, Code> {
    let request = ReadRequest {
        resource_name: format!("blobs/{}/{}", digest.hex(), digest.size),
        ..Default::default()
    };
    let mut stream = servers
        .bytestream()
        .read(request)
        .await
        .map_err(|s| s.code())?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.map_err(|s| s.code())? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

#[tokio::test]
async fn metrics_count_the_traffic_of_both_front_ends() {
    let servers = Servers::start(false).await;
    let blob = b"the output of an action".to_vec();
    let http_blob = b"a blob stored over http".to_vec();
    let absent = Digest::of(b"never stored");
    let action = Digest::of(b"action a");
    let other_action = Digest::of(b"action b");

    // gRPC: two AC misses, an upload, an update, then one hit.
    let mut ac = servers.ac();
    for digest in [&action, &other_action] {
        let status = ac.get_action_result(get_action(digest)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let stored = upload(&servers, &blob).await;
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out".into(),
            digest: Some(proto(&stored)),
            ..Default::default()
        }],
        ..Default::default()
    };
    ac.update_action_result(reapi::UpdateActionResultRequest {
        action_digest: Some(proto(&action)),
        action_result: Some(result),
        ..Default::default()
    })
    .await
    .unwrap();
    ac.get_action_result(get_action(&action)).await.unwrap();

    // gRPC CAS: one present and two missing; one Read found, one not found.
    let missing = servers
        .cas()
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: vec![
                proto(&stored),
                proto(&absent),
                proto(&Digest::of(b"nor this")),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing.len(), 2);
    assert_eq!(download(&servers, &stored).await.unwrap(), blob);
    assert_eq!(download(&servers, &absent).await, Err(Code::NotFound));

    // gRPC batch uploads: one too long for its digest, one whose bytes hash elsewhere.
    let declared = Digest::of(b"abc");
    let lookalike = Digest::of(b"hello");
    let responses = servers
        .cas()
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![
                batch_update_blobs_request::Request {
                    digest: Some(proto(&declared)),
                    data: Bytes::from_static(b"abcd"),
                    ..Default::default()
                },
                batch_update_blobs_request::Request {
                    digest: Some(proto(&lookalike)),
                    data: Bytes::from_static(b"jello"),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert!(responses
        .iter()
        .all(|r| r.status.as_ref().unwrap().code == Code::InvalidArgument as i32));
    CapabilitiesClient::new(servers.front.channel.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap();

    // HTTP: a good and a corrupt PUT, CAS and AC hits and misses.
    let http_digest = Digest::of(&http_blob);
    let servers = &servers;
    let put = |path: String, body: Vec<u8>| async move {
        servers.http(Method::PUT, &path, &body).await.0
    };
    assert_eq!(
        put(format!("/cas/{}", http_digest.hex()), http_blob.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        put(format!("/cas/{}", http_digest.hex()), b"corrupted".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    let get = |path: String| async move { servers.http(Method::GET, &path, b"").await.0 };
    // The CAS GETs: every body byte sent counts, the 404's message too.
    let (status, _, found) = servers
        .http(Method::GET, &format!("/cas/{}", http_digest.hex()), b"")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, message) = servers
        .http(Method::GET, &format!("/cas/{}", absent.hex()), b"")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(get(format!("/ac/{}", action.hex())).await, StatusCode::OK);
    assert_eq!(
        get(format!("/ac/{}", other_action.hex())).await,
        StatusCode::NOT_FOUND
    );

    let (series, text) = servers.metrics().await;
    let expect = |key: &str, expected: f64| {
        assert_eq!(value(&series, &text, key), expected, "{key}\n{text}");
    };
    // Action cache: exactly 2 misses and 1 hit over gRPC, 1 and 1 over HTTP.
    expect(
        r#"hoard_ac_lookups_total{protocol="grpc",result="miss"}"#,
        2.0,
    );
    expect(
        r#"hoard_ac_lookups_total{protocol="grpc",result="hit"}"#,
        1.0,
    );
    expect(
        r#"hoard_ac_lookups_total{protocol="http",result="miss"}"#,
        1.0,
    );
    expect(
        r#"hoard_ac_lookups_total{protocol="http",result="hit"}"#,
        1.0,
    );
    // CAS lookups, per blob and store operation: FindMissingBlobs asks, ByteStream checks
    // (`contains`) before it reads or uploads, HTTP resolves a hash, reads open the blob.
    let cas = |protocol: &str, operation: &str, result: &str| {
        format!(
            r#"hoard_cas_lookups_total{{protocol="{protocol}",operation="{operation}",result="{result}"}}"#
        )
    };
    expect(&cas("grpc", "find_missing", "hit"), 1.0);
    expect(&cas("grpc", "find_missing", "miss"), 2.0);
    expect(&cas("grpc", "contains", "hit"), 1.0);
    expect(&cas("grpc", "contains", "miss"), 2.0);
    expect(&cas("grpc", "read", "hit"), 1.0);
    expect(&cas("http", "resolve", "hit"), 1.0);
    expect(&cas("http", "resolve", "miss"), 1.0);
    expect(&cas("http", "read", "hit"), 1.0);
    // What the gRPC listener may buffer (default windows: 1 MiB a stream plus a 4 MiB message;
    // 16 MiB a connection).
    expect(
        r#"hoard_grpc_buffer_limit_bytes{scope="stream"}"#,
        f64::from((1u32 << 20) + (4 << 20)),
    );
    expect(
        r#"hoard_grpc_buffer_limit_bytes{scope="connection"}"#,
        f64::from(16u32 << 20),
    );
    // Upload failures by reason.
    let failures = |protocol: &str, reason: &str| {
        format!(r#"hoard_upload_failures_total{{protocol="{protocol}",reason="{reason}"}}"#)
    };
    expect(&failures("grpc", "size_mismatch"), 1.0);
    expect(&failures("grpc", "hash_mismatch"), 1.0);
    expect(&failures("http", "hash_mismatch"), 1.0);
    assert!(!series.contains_key(&failures("http", "size_mismatch")));
    // Requests by status, and their latencies.
    let requests = |protocol: &str, service: &str, method: &str, status: &str| {
        format!(
            r#"hoard_requests_total{{protocol="{protocol}",service="{service}",method="{method}",status="{status}"}}"#
        )
    };
    expect(
        &requests("grpc", "ActionCache", "GetActionResult", "NOT_FOUND"),
        2.0,
    );
    expect(
        &requests("grpc", "ActionCache", "GetActionResult", "OK"),
        1.0,
    );
    expect(
        &requests("grpc", "ActionCache", "UpdateActionResult", "OK"),
        1.0,
    );
    expect(&requests("grpc", "ByteStream", "Write", "OK"), 1.0);
    expect(&requests("grpc", "ByteStream", "Read", "NOT_FOUND"), 1.0);
    expect(
        &requests("grpc", "Capabilities", "GetCapabilities", "OK"),
        1.0,
    );
    expect(&requests("http", "cas", "PUT", "200"), 1.0);
    expect(&requests("http", "cas", "PUT", "400"), 1.0);
    expect(&requests("http", "ac", "GET", "404"), 1.0);
    expect(
        r#"hoard_request_duration_seconds_count{protocol="grpc",service="ActionCache",method="GetActionResult"}"#,
        3.0,
    );
    expect(
        r#"hoard_request_duration_seconds_bucket{protocol="http",service="cas",method="GET",le="+Inf"}"#,
        2.0,
    );
    // Bytes: the whole blob streamed by the one successful Read; both HTTP PUT bodies.
    expect(
        r#"hoard_sent_bytes_total{protocol="grpc",service="ByteStream",method="Read"}"#,
        blob.len() as f64,
    );
    expect(
        r#"hoard_received_bytes_total{protocol="grpc",service="ByteStream",method="Write"}"#,
        blob.len() as f64,
    );
    expect(
        r#"hoard_received_bytes_total{protocol="http",service="cas",method="PUT"}"#,
        (http_blob.len() + b"corrupted".len()) as f64,
    );
    assert_eq!(found, http_blob);
    expect(
        r#"hoard_sent_bytes_total{protocol="http",service="cas",method="GET"}"#,
        (found.len() + message.len()) as f64,
    );
    // What the engine holds, read at scrape time.
    let stats = servers.engine.stats();
    assert_eq!(stats.blobs, 2);
    expect("hoard_cas_blobs", 2.0);
    expect(
        "hoard_cas_stored_bytes",
        (blob.len() + http_blob.len()) as f64,
    );
    expect("hoard_ac_entries", 1.0);
    expect("hoard_evictions_total", 0.0);
    expect("hoard_evicted_bytes_total", 0.0);
    expect("hoard_corrupt_blobs_dropped_total", 0.0);
    expect("hoard_cascade_removals_total", 0.0);
    expect("hoard_scrubbed_records_total", 0.0);
    expect("hoard_scrubbed_bytes_total", 0.0);
    assert!(value(&series, &text, "hoard_uptime_seconds") >= 0.0);
    assert!(text.contains(&format!(
        "hoard_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("# TYPE hoard_requests_total counter"));
    assert!(text.contains("# TYPE hoard_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE hoard_cas_blobs gauge"));

    // A second scrape sees the first one counted.
    let (series, text) = servers.metrics().await;
    assert_eq!(
        value(&series, &text, &requests("http", "metrics", "GET", "200")),
        1.0
    );
}

#[tokio::test]
async fn health_serves_our_services_and_knows_no_others() {
    let servers = Servers::start(false).await;
    let mut health = servers.health();
    for service in [
        "",
        "build.bazel.remote.execution.v2.ActionCache",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.Capabilities",
        "google.bytestream.ByteStream",
        "grpc.health.v1.Health",
    ] {
        let response = health.check(health_request(service)).await.unwrap();
        assert_eq!(
            response.into_inner().status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    for service in ["build.bazel.remote.execution.v2.Execution", "nope"] {
        let response = health.check(health_request(service)).await.unwrap();
        assert_eq!(
            response.into_inner().status,
            ServingStatus::ServiceUnknown as i32,
            "{service:?}"
        );
    }
    // Watch: the current status at once, then the stream stays open.
    let mut watch = health.watch(health_request("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(
        next.is_err(),
        "the watch stream ended or sent more: {next:?}"
    );
    let mut unknown = health
        .watch(health_request("nope"))
        .await
        .unwrap()
        .into_inner();
    let first = unknown.message().await.unwrap().expect("a first status");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);

    let (series, text) = servers.metrics().await;
    assert_eq!(
        value(
            &series,
            &text,
            r#"hoard_requests_total{protocol="grpc",service="Health",method="Check",status="OK"}"#
        ),
        8.0
    );
}

#[tokio::test]
async fn status_reports_uptime_engine_counters_and_requests() {
    let servers = Servers::start(false).await;
    upload(&servers, b"one blob").await;
    let mut ac = servers.ac();
    let _ = ac.get_action_result(get_action(&Digest::of(b"x"))).await;
    let (status, content_type, _) = servers.http(Method::GET, "/cas/00", b"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(content_type, "text/plain; charset=utf-8");

    let (status, content_type, body) = servers.http(Method::GET, "/status", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let json = String::from_utf8(body.to_vec()).unwrap();
    for field in [
        "\"version\":",
        "\"uptime_seconds\":",
        "\"blobs\":1,",
        "\"blob_bytes\":8,",
        "\"actions\":0,",
        "\"disk_bytes\":",
        "\"evictions\":0,",
        "\"evicted_bytes\":0,",
        "\"max_blob_size\":",
        "\"max_size\":null,",
        // Two gRPC calls; one HTTP request finished before this one.
        "\"requests\":{\"grpc\":2,\"http\":1}",
    ] {
        assert!(json.contains(field), "{field} missing in {json}");
    }
    assert!(json.trim_end().ends_with('}'));

    let (status, _, _) = servers.http(Method::PUT, "/status", b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = servers.http(Method::POST, "/metrics", b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Everything the servers log, captured for the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn access_lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|line| line.contains("hoard::access"))
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `traffic` against fresh servers with the access log `on` or off, returning the
/// access-log lines. A current-thread runtime keeps every server task on this thread, inside the
/// capturing subscriber.
async fn access_log_of(on: bool, captured: &Captured) -> Vec<String> {
    let servers = Servers::start(on).await;
    upload(&servers, b"logged blob").await;
    let _ = servers
        .ac()
        .get_action_result(get_action(&Digest::of(b"y")))
        .await;
    let (status, _, _) = servers
        .http(Method::GET, &format!("/ac/{}", Digest::of(b"y").hex()), b"")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    captured.access_lines()
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_can_be_off() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let lines = access_log_of(true, &captured).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let blob = Digest::of(b"logged blob");
    let write = &lines[0];
    for field in [
        " INFO ",
        "protocol=grpc",
        "method=ByteStream/Write",
        &format!("key=\"{}/{}\"", blob.hex(), blob.size),
        "size=11",
        "status=OK",
        "duration_ms=",
    ] {
        assert!(write.contains(field), "{field} missing in {write}");
    }
    let miss = &lines[1];
    assert!(
        miss.contains("method=ActionCache/GetActionResult"),
        "{miss}"
    );
    assert!(miss.contains("status=NOT_FOUND"), "{miss}");
    assert!(miss.contains(&Digest::of(b"y").hex()), "{miss}");
    let http = &lines[2];
    for field in [
        "protocol=http",
        "method=ac/GET",
        &format!("key=\"/ac/{}\"", Digest::of(b"y").hex()),
        "size=-",
        "status=404",
    ] {
        assert!(http.contains(field), "{field} missing in {http}");
    }

    let before = captured.access_lines().len();
    let lines = access_log_of(false, &captured).await;
    assert_eq!(lines.len(), before, "access log off, yet: {lines:#?}");
}

/// Sends each message as the raw bytes given, and hands back the raw bytes of replies: a client
/// that can send what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let len = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, len)))
    }
}

/// Not a protobuf message: a field key whose varint never ends.
const GARBAGE: &[u8] = b"\xff\xff\xff\xff";

/// A request whose message does not decode is INVALID_ARGUMENT with a message naming the type,
/// whatever the kind of call, and it is counted and logged like any other call.
#[tokio::test]
async fn undecodable_requests_are_invalid_argument_counted_and_logged() {
    use tonic::codegen::http::uri::PathAndQuery;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let servers = Servers::start(true).await;
    let mut grpc = tonic::client::Grpc::new(servers.front.channel.clone());
    let garbage = || tonic::Request::new(Bytes::from_static(GARBAGE));
    let calls = [
        (
            "ContentAddressableStorage",
            "FindMissingBlobs",
            "build.bazel.remote.execution.v2",
            "FindMissingBlobsRequest",
        ),
        (
            "ActionCache",
            "GetActionResult",
            "build.bazel.remote.execution.v2",
            "GetActionResultRequest",
        ),
        (
            "Capabilities",
            "GetCapabilities",
            "build.bazel.remote.execution.v2",
            "GetCapabilitiesRequest",
        ),
    ];
    for (service, method, package, message) in calls {
        grpc.ready().await.unwrap();
        let path = PathAndQuery::try_from(format!("/{package}.{service}/{method}")).unwrap();
        let status = grpc.unary(garbage(), path, RawCodec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert!(status.message().contains(message), "{method}: {status:?}");
    }
    // Server streaming: the request is decoded before the service runs, as for unary calls.
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/google.bytestream.ByteStream/Read");
    let status = grpc
        .server_streaming(garbage(), path, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "Read: {status:?}");
    assert!(status.message().contains("ReadRequest"), "{status:?}");
    // Client streaming: the service reads the stream and meets the bad message itself.
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/google.bytestream.ByteStream/Write");
    let stream = futures::stream::iter([Bytes::from_static(GARBAGE)]);
    let status = grpc
        .client_streaming(tonic::Request::new(stream), path, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "Write: {status:?}");
    assert!(status.message().contains("WriteRequest"), "{status:?}");

    let (series, text) = servers.metrics().await;
    for (service, method) in [
        ("ContentAddressableStorage", "FindMissingBlobs"),
        ("ActionCache", "GetActionResult"),
        ("Capabilities", "GetCapabilities"),
        ("ByteStream", "Read"),
        ("ByteStream", "Write"),
    ] {
        let key = format!(
            "hoard_requests_total{{protocol=\"grpc\",service=\"{service}\",method=\"{method}\",\
             status=\"INVALID_ARGUMENT\"}}"
        );
        assert_eq!(series.get(&key), Some(&1.0), "{key} in:\n{text}");
        let logged = captured.access_lines().into_iter().any(|line| {
            line.contains(&format!("method={service}/{method}"))
                && line.contains("status=INVALID_ARGUMENT")
        });
        assert!(logged, "{service}/{method} not in the access log");
    }
    assert!(
        !text.contains("status=\"INTERNAL\""),
        "an undecodable request counted as INTERNAL:\n{text}"
    );
}
