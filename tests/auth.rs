//! Authentication and TLS on real sockets: wrong or missing credentials are refused
//! (`UNAUTHENTICATED` / `401`) and store nothing, right ones work, unauthenticated reads pass only
//! with the flag, and both listeners round-trip over TLS (and mutual TLS) with certificates
//! made here. (Real sockets and TLS: not built under madsim.)
#![cfg(not(madsim))]

mod grpc_support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;

use grpc_support::*;
use hoard::auth::{Auth, Htpasswd};
use hoard::engine::{Digest, Engine, EngineConfig, Stats};
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::QueryWriteStatusRequest;
use hoard::proto::grpc::health::v1::health_client::HealthClient;
use hoard::proto::grpc::health::v1::HealthCheckRequest;
use hoard::proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    UpdateActionResultRequest,
};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::tls::TlsConfig;
use hoard::wire::grpc::{self, GrpcConfig};
use hoard::wire::http::{self, HttpConfig};

const TOKEN: &str = "t0ken-for-tests";
/// `{SHA}` of "hunter2" (`htpasswd -s`).
const SHA_ENTRY: &str = "sam:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=";

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Token `TOKEN`, user `sam` (SHA) and user `bea` (bcrypt, password "b-pass").
fn auth(allow_unauthenticated_reads: bool) -> Auth {
    let bcrypt = bcrypt::hash("b-pass", 4).unwrap();
    let users = Htpasswd::parse(&format!("{SHA_ENTRY}\nbea:{bcrypt}\n")).unwrap();
    Auth::new(Some(TOKEN), Some(users), allow_unauthenticated_reads)
}

fn with_auth<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    request
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call must fail").code()
}

async fn grpc_fixture(auth: Auth) -> Fixture {
    Fixture::with(
        |_| {},
        GrpcConfig {
            auth,
            ..GrpcConfig::default()
        },
    )
    .await
}

fn batch_update(data: &[u8]) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(proto(&Digest::of(data))),
            data: data.to_vec().into(),
            compressor: 0,
        }],
        ..Default::default()
    }
}

fn find_missing(digest: &Digest) -> FindMissingBlobsRequest {
    FindMissingBlobsRequest {
        blob_digests: vec![proto(digest)],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

#[tokio::test]
async fn grpc_wrong_or_missing_credentials_are_unauthenticated_and_store_nothing() {
    let f = grpc_fixture(auth(false)).await;
    let data = b"must never be stored".to_vec();
    let digest = Digest::of(&data);
    let before = f.engine.stats();
    for credentials in [
        None,
        Some(bearer("wrong")),
        Some(basic("sam", "hunter3")),
        Some(basic("nobody", "hunter2")),
        Some(basic("bea", "wrong")),
        Some("Basic !!!not-base64".to_owned()),
        Some(format!("Token {TOKEN}")),
    ] {
        let credentials = credentials.as_deref();
        let status = f
            .cas()
            .batch_update_blobs(with_auth(batch_update(&data), credentials))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{credentials:?}");
        let requests = write_requests(&write_name("", "u1", &digest), &data, 8);
        let write = f
            .bytestream()
            .write(with_auth(futures::stream::iter(requests), credentials))
            .await;
        assert_eq!(code(write), Code::Unauthenticated, "{credentials:?}");
        let update = UpdateActionResultRequest {
            action_digest: Some(proto(&digest)),
            action_result: Some(ActionResult::default()),
            ..Default::default()
        };
        let update = f
            .ac()
            .update_action_result(with_auth(update, credentials))
            .await;
        assert_eq!(code(update), Code::Unauthenticated, "{credentials:?}");
        let query = QueryWriteStatusRequest {
            resource_name: write_name("", "u1", &digest),
        };
        let query = f
            .bytestream()
            .query_write_status(with_auth(query, credentials))
            .await;
        assert_eq!(code(query), Code::Unauthenticated, "{credentials:?}");
        // Reads are refused too (no --allow-unauthenticated-reads).
        let caps = f
            .capabilities()
            .get_capabilities(with_auth(GetCapabilitiesRequest::default(), credentials))
            .await;
        assert_eq!(code(caps), Code::Unauthenticated, "{credentials:?}");
    }
    assert_eq!(f.engine.stats(), before, "a refused call stored something");
    assert!(!f.engine.contains(&digest));
}

#[tokio::test]
async fn grpc_right_credentials_read_and_write() {
    let f = grpc_fixture(auth(false)).await;
    for (i, credentials) in [
        bearer(TOKEN),
        basic("anyone", TOKEN),
        basic("sam", "hunter2"),
        basic("bea", "b-pass"),
        basic("bea", "b-pass"), // a second time: the remembered bcrypt check
    ]
    .iter()
    .enumerate()
    {
        let credentials = Some(credentials.as_str());
        let data = pseudo_random(i as u64, 1000 + i);
        let digest = Digest::of(&data);
        let requests = write_requests(&write_name("", &format!("u{i}"), &digest), &data, 300);
        let written = f
            .bytestream()
            .write(with_auth(futures::stream::iter(requests), credentials))
            .await
            .expect("authorized write")
            .into_inner();
        assert_eq!(written.committed_size, data.len() as i64);
        let read = read_authed(&mut f.bytestream(), &digest, credentials)
            .await
            .unwrap();
        assert_eq!(read, data);
        let small = format!("batch {i}").into_bytes();
        f.cas()
            .batch_update_blobs(with_auth(batch_update(&small), credentials))
            .await
            .expect("authorized batch");
        let missing = f
            .cas()
            .find_missing_blobs(with_auth(find_missing(&Digest::of(&small)), credentials))
            .await
            .unwrap()
            .into_inner();
        assert!(missing.missing_blob_digests.is_empty());
        f.capabilities()
            .get_capabilities(with_auth(GetCapabilitiesRequest::default(), credentials))
            .await
            .expect("authorized capabilities");
    }
}

async fn read_authed(
    client: &mut ByteStreamClient<Channel>,
    digest: &Digest,
    credentials: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let request = hoard::proto::bytestream::ReadRequest {
        resource_name: read_name("", digest),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = client
        .read(with_auth(request, credentials))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// Every read-only call, without credentials: the codes they get.
async fn anonymous_read_codes(f: &Fixture, stored: &Digest) -> Vec<(&'static str, Code)> {
    let mut codes = Vec::new();
    let result = f
        .capabilities()
        .get_capabilities(GetCapabilitiesRequest::default())
        .await;
    codes.push((
        "GetCapabilities",
        result.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
    ));
    let result = f.cas().find_missing_blobs(find_missing(stored)).await;
    codes.push((
        "FindMissingBlobs",
        result.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
    ));
    let result = f
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![proto(stored)],
            ..Default::default()
        })
        .await;
    codes.push((
        "BatchReadBlobs",
        result.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
    ));
    let result = f
        .ac()
        .get_action_result(GetActionResultRequest {
            action_digest: Some(proto(stored)),
            ..Default::default()
        })
        .await;
    // A miss is NOT_FOUND: it got past the gate.
    codes.push((
        "GetActionResult",
        match result {
            Err(status) if status.code() == Code::NotFound => Code::Ok,
            other => other.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
        },
    ));
    let result = f
        .cas()
        .get_tree(GetTreeRequest {
            root_digest: Some(proto(stored)),
            ..Default::default()
        })
        .await;
    codes.push((
        "GetTree",
        match result {
            // The stored blob is not a Directory: refused past the gate.
            Err(status) if status.code() != Code::Unauthenticated => Code::Ok,
            other => other.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
        },
    ));
    let result = read_authed(&mut f.bytestream(), stored, None).await;
    codes.push((
        "ByteStream.Read",
        result.map(|_| ()).err().map_or(Code::Ok, |s| s.code()),
    ));
    codes
}

#[tokio::test]
async fn grpc_unauthenticated_reads_only_with_the_flag() {
    for allow in [false, true] {
        let f = grpc_fixture(auth(allow)).await;
        let data = b"readable".to_vec();
        f.cas()
            .batch_update_blobs(with_auth(batch_update(&data), Some(&bearer(TOKEN))))
            .await
            .unwrap();
        let expected = if allow {
            Code::Ok
        } else {
            Code::Unauthenticated
        };
        for (call, code) in anonymous_read_codes(&f, &Digest::of(&data)).await {
            assert_eq!(code, expected, "{call} with allow={allow}");
        }
        // Writes always need credentials, and wrong credentials are refused even for reads.
        let before = f.engine.stats();
        let write = f.cas().batch_update_blobs(batch_update(b"anonymous")).await;
        assert_eq!(code(write), Code::Unauthenticated);
        let wrong = f
            .cas()
            .find_missing_blobs(with_auth(
                find_missing(&Digest::of(&data)),
                Some(&bearer("x")),
            ))
            .await;
        assert_eq!(code(wrong), Code::Unauthenticated);
        assert_eq!(f.engine.stats(), before);
    }
}

#[tokio::test]
async fn grpc_health_needs_no_credentials() {
    let f = grpc_fixture(auth(false)).await;
    HealthClient::new(f.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health checks are open");
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct HttpServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn http_server(auth: Auth, tls: Option<TlsConfig>) -> HttpServer {
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
    let (stop, stopped) = oneshot::channel::<()>();
    let config = HttpConfig {
        auth,
        tls,
        ..HttpConfig::default()
    };
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
        _dir: dir,
        _stop: stop,
    }
}

struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: Bytes,
}

async fn handshake<S>(stream: S) -> SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "hoard");
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let www_authenticate = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        www_authenticate,
        body,
    }
}

async fn send(
    server: &HttpServer,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    send_on(
        &mut handshake(stream).await,
        method,
        path,
        authorization,
        body,
    )
    .await
}

fn cas_path(data: &[u8]) -> String {
    format!("/cas/{}", Digest::of(data).hex())
}

fn ac_path(key: &[u8]) -> String {
    format!("/ac/{}", Digest::of(key).hex())
}

#[tokio::test]
async fn http_wrong_or_missing_credentials_get_401_and_store_nothing() {
    let server = http_server(auth(false), None).await;
    let data = b"never stored over http".to_vec();
    let before: Stats = server.engine.stats();
    for credentials in [
        None,
        Some(bearer("wrong")),
        Some(basic("sam", "hunter3")),
        Some(basic("nobody", "hunter2")),
        Some(basic("bea", "nope")),
        Some("Basic".to_owned()),
        Some("Basic !!!".to_owned()),
        Some(TOKEN.to_owned()),
    ] {
        let credentials = credentials.as_deref();
        for (path, method) in [
            (cas_path(&data), Method::PUT),
            (ac_path(b"action"), Method::PUT),
            (cas_path(&data), Method::GET),
            (cas_path(&data), Method::HEAD),
            ("/status".to_owned(), Method::GET),
            // The status page and its data are reads like any other.
            ("/".to_owned(), Method::GET),
            ("/ui/".to_owned(), Method::GET),
            ("/ui/data".to_owned(), Method::GET),
        ] {
            let reply = send(&server, method.clone(), &path, credentials, data.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {credentials:?}"
            );
            assert_eq!(
                reply.www_authenticate.as_deref(),
                Some("Basic realm=\"hoard\"")
            );
            if method != Method::HEAD {
                assert!(!reply.body.is_empty(), "a refusal says why");
            }
        }
    }
    assert_eq!(
        server.engine.stats(),
        before,
        "a refused request stored something"
    );
}

#[tokio::test]
async fn http_right_credentials_read_and_write() {
    let server = http_server(auth(false), None).await;
    for (i, credentials) in [
        bearer(TOKEN),
        basic("ci", TOKEN),
        basic("sam", "hunter2"),
        basic("bea", "b-pass"),
    ]
    .iter()
    .enumerate()
    {
        let data = pseudo_random(100 + i as u64, 5000);
        let stream = TcpStream::connect(server.addr).await.unwrap();
        // One keep-alive connection: the header is checked on every request.
        let mut sender = handshake(stream).await;
        let put = send_on(
            &mut sender,
            Method::PUT,
            &cas_path(&data),
            Some(credentials),
            data.clone(),
        )
        .await;
        assert!(
            put.status.is_success(),
            "PUT with {credentials}: {}",
            put.status
        );
        let get = send_on(
            &mut sender,
            Method::GET,
            &cas_path(&data),
            Some(credentials),
            Bytes::new(),
        )
        .await;
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(get.body, data);
        for page in ["/ui/", "/ui/data"] {
            let reply = send_on(
                &mut sender,
                Method::GET,
                page,
                Some(credentials),
                Bytes::new(),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{page} with {credentials}");
        }
    }
    assert_eq!(server.engine.stats().blobs, 4);
}

#[tokio::test]
async fn http_unauthenticated_reads_only_with_the_flag() {
    for allow in [false, true] {
        let server = http_server(auth(allow), None).await;
        let data = b"public blob".to_vec();
        let put = send(
            &server,
            Method::PUT,
            &cas_path(&data),
            Some(&bearer(TOKEN)),
            data.clone(),
        )
        .await;
        assert!(put.status.is_success());
        let before = server.engine.stats();
        let get = send(&server, Method::GET, &cas_path(&data), None, Bytes::new()).await;
        let head = send(&server, Method::HEAD, &cas_path(&data), None, Bytes::new()).await;
        let miss = send(
            &server,
            Method::GET,
            &ac_path(b"nothing"),
            None,
            Bytes::new(),
        )
        .await;
        if allow {
            assert_eq!(get.status, StatusCode::OK);
            assert_eq!(get.body, data);
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(miss.status, StatusCode::NOT_FOUND);
        } else {
            for reply in [get, head, miss] {
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            }
        }
        // Writes always need credentials; wrong ones are refused even for reads.
        let other = b"anonymous upload".to_vec();
        let put = send(&server, Method::PUT, &cas_path(&other), None, other.clone()).await;
        assert_eq!(put.status, StatusCode::UNAUTHORIZED);
        let wrong = send(
            &server,
            Method::GET,
            &cas_path(&data),
            Some(&bearer("x")),
            Bytes::new(),
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(server.engine.stats(), before);
    }
}

// ---------------------------------------------------------------------------------------------
// htpasswd files

#[test]
fn htpasswd_accepts_bcrypt_and_sha_entries() {
    // `htpasswd -bnB bea b-pass` style ($2y$), and `htpasswd -bns sam hunter2`.
    let bcrypt = bcrypt::hash("b-pass", 5)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    let users = Htpasswd::parse(&format!("bea:{bcrypt}\n{SHA_ENTRY}\n")).unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.verify("bea", b"b-pass"));
    assert!(!users.verify("bea", b"b-pas"));
    assert!(users.verify("sam", b"hunter2"));
    assert!(!users.verify("sam", b"Hunter2"));
    // A fixed $2y$ entry (password "hunter2", cost 5), as Apache's htpasswd writes it.
    let fixed = bcrypt::hash_with_salt("hunter2", 5, *b"0123456789abcdef")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    assert!(fixed.starts_with("$2y$05$"));
    let users = Htpasswd::parse(&format!("x:{fixed}")).unwrap();
    assert!(users.verify("x", b"hunter2"));
}

#[test]
fn htpasswd_refuses_plain_and_crypt_lines_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, format!("{SHA_ENTRY}\njoe:plain-text-password\n")).unwrap();
    let error = Htpasswd::load(&path).err().expect("refused").to_string();
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("joe"), "{error}");
    assert!(error.contains("htpasswd -B"), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA, a server certificate for localhost/127.0.0.1 it signed, and a client certificate.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hoard test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "bazel client");
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn server_tls(pki: &Pki, mutual: bool) -> TlsConfig {
    TlsConfig::from_pem(
        pki.server_cert_pem.clone().into_bytes(),
        pki.server_key_pem.clone().into_bytes(),
        mutual.then(|| pki.ca_pem.clone().into_bytes()),
    )
    .unwrap()
}

async fn grpc_tls_server(
    tls: TlsConfig,
    auth: Auth,
) -> (
    SocketAddr,
    Arc<Engine>,
    tempfile::TempDir,
    oneshot::Sender<()>,
) {
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
    let (stop, stopped) = oneshot::channel::<()>();
    let config = GrpcConfig {
        auth,
        tls: Some(tls),
        ..GrpcConfig::default()
    };
    let served = hoard::store::stack::over_engine(engine.clone(), &Default::default());
    tokio::spawn(async move {
        grpc::serve_listener(served, config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    (addr, engine, dir, stop)
}

async fn grpc_tls_channel(
    addr: SocketAddr,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &pki.client_cert_pem,
            &pki.client_key_pem,
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn grpc_round_trip_over_tls_with_a_token() {
    let pki = pki();
    let (addr, engine, _dir, _stop) = grpc_tls_server(server_tls(&pki, false), auth(false)).await;
    let channel = grpc_tls_channel(addr, &pki, false)
        .await
        .expect("tls connect");
    let mut bytestream = ByteStreamClient::new(channel.clone());
    let data = pseudo_random(7, 200_000);
    let digest = Digest::of(&data);
    let requests = write_requests(&write_name("", "tls", &digest), &data, 64 << 10);
    let credentials = bearer(TOKEN);
    bytestream
        .write(with_auth(
            futures::stream::iter(requests),
            Some(&credentials),
        ))
        .await
        .expect("write over tls");
    assert!(engine.contains(&digest));
    let read = read_authed(&mut bytestream, &digest, Some(&credentials))
        .await
        .unwrap();
    assert_eq!(read, data);
    // Same channel, no credentials: refused.
    let refused = read_authed(&mut bytestream, &digest, None).await;
    assert_eq!(code(refused), Code::Unauthenticated);

    // A plain-text client cannot talk to the TLS listener.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let caps = hoard::proto::reapi::capabilities_client::CapabilitiesClient::new(plain)
            .get_capabilities(with_auth(
                GetCapabilitiesRequest::default(),
                Some(&credentials),
            ))
            .await;
        assert!(caps.is_err());
    }
}

#[tokio::test]
async fn grpc_mutual_tls_requires_a_client_certificate() {
    let pki = pki();
    let (addr, _engine, _dir, _stop) = grpc_tls_server(server_tls(&pki, true), Auth::open()).await;
    let channel = grpc_tls_channel(addr, &pki, true)
        .await
        .expect("mtls connect");
    hoard::proto::reapi::capabilities_client::CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("capabilities over mtls");
    // Without a client certificate the handshake (or the first call) fails.
    if let Ok(channel) = grpc_tls_channel(addr, &pki, false).await {
        let caps = hoard::proto::reapi::capabilities_client::CapabilitiesClient::new(channel)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await;
        assert!(caps.is_err(), "served a client without a certificate");
    }
}

fn http_tls_connector(pki: &Pki, with_client_cert: bool) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_client_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn https_sender(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await?;
    Ok(handshake(tls).await)
}

#[tokio::test]
async fn http_round_trip_over_tls_with_basic_auth() {
    let pki = pki();
    let server = http_server(auth(false), Some(server_tls(&pki, false))).await;
    let connector = http_tls_connector(&pki, false);
    let mut sender = https_sender(server.addr, &connector)
        .await
        .expect("tls handshake");
    let data = pseudo_random(9, 300_000);
    let credentials = basic("sam", "hunter2");
    let put = send_on(
        &mut sender,
        Method::PUT,
        &cas_path(&data),
        Some(&credentials),
        data.clone(),
    )
    .await;
    assert!(put.status.is_success(), "{}", put.status);
    let get = send_on(
        &mut sender,
        Method::GET,
        &cas_path(&data),
        Some(&credentials),
        Bytes::new(),
    )
    .await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.body, data);
    let refused = send_on(
        &mut sender,
        Method::GET,
        &cas_path(&data),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // Plain HTTP to the TLS listener gets no HTTP answer.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut plain, connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .uri(cas_path(&data))
        .header(HOST, "hoard")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(plain.send_request(request).await.is_err());
}

#[tokio::test]
async fn http_mutual_tls_requires_a_client_certificate() {
    let pki = pki();
    let server = http_server(Auth::open(), Some(server_tls(&pki, true))).await;
    let mut sender = https_sender(server.addr, &http_tls_connector(&pki, true))
        .await
        .expect("mtls handshake");
    let reply = send_on(&mut sender, Method::GET, "/status", None, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Without a certificate: TLS 1.3 reports the refusal on the first read, so either the
    // handshake or the request fails.
    match https_sender(server.addr, &http_tls_connector(&pki, false)).await {
        Err(_) => {}
        Ok(mut sender) => {
            let request = Request::builder()
                .uri("/status")
                .header(HOST, "hoard")
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert!(sender.send_request(request).await.is_err());
        }
    }
}

#[test]
fn tls_files_that_do_not_fit_are_refused_at_startup() {
    let pki = pki();
    let other = pki_key_only();
    let mismatched = TlsConfig::from_pem(
        pki.server_cert_pem.clone().into_bytes(),
        other.into_bytes(),
        None,
    );
    assert!(mismatched.is_err());
    let garbage = TlsConfig::from_pem(b"not pem".to_vec(), pki.server_key_pem.into_bytes(), None);
    assert!(garbage.is_err());
}

fn pki_key_only() -> String {
    rcgen::KeyPair::generate().unwrap().serialize_pem()
}
