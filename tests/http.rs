//! The HTTP cache front end against a real engine on a temp dir, over real sockets.
//!
//! Every refused request is followed by a check that nothing was stored. (Real sockets and disk:
//! not built under madsim; `http_sim.rs` covers the simulated world.)
#![cfg(not(madsim))]

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use hoard::engine::{Engine, EngineConfig, Stats};
use hoard::proto::reapi;
use hoard::seam::fs::{Fs, FsFile, FsLock};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::wire::http::{serve_listener, HttpConfig};

/// A server on 127.0.0.1 over an engine in a temp dir, stopped on drop.
struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(|_| {}, Arc::new(RealFs)).await
    }

    async fn start_strict() -> Server {
        Server::start_configured(|_| {}, |http| http.ac_strict = true, Arc::new(RealFs)).await
    }

    async fn start_with(configure: impl FnOnce(&mut EngineConfig), fs: Arc<dyn Fs>) -> Server {
        Server::start_configured(configure, |_| {}, fs).await
    }

    async fn start_configured(
        configure: impl FnOnce(&mut EngineConfig),
        configure_http: impl FnOnce(&mut HttpConfig),
        fs: Arc<dyn Fs>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        configure(&mut config);
        let engine = Engine::open(config, fs, Arc::new(TokioRuntime))
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut http = HttpConfig {
            max_action_result_size: 64 << 10,
            ..HttpConfig::default()
        };
        configure_http(&mut http);
        let task = tokio::spawn(serve_listener(
            hoard::store::stack::over_engine(engine.clone(), &Default::default()),
            http,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            engine,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// A new keep-alive connection.
    async fn connect(&self) -> SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
    }

    /// One request on a fresh connection.
    async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        send_on(&mut self.connect().await, method, path, body).await
    }

    /// Writes `request` verbatim on a fresh connection and returns everything read until the
    /// server closes it (or `Connection: close` takes effect).
    async fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
            .await
            .expect("server closes the connection");
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Whether leftover temp files of interrupted uploads are gone (removal is asynchronous).
    async fn temp_files_gone(&self) -> bool {
        let tmp = self.dir.path().join("tmp");
        for _ in 0..100 {
            if std::fs::read_dir(&tmp).unwrap().next().is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "hoard")
        .body(Full::new(body.into()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn cas_path(data: &[u8]) -> String {
    format!("/cas/{}", sha256_hex(data))
}

/// Bytes that differ at every offset, so a misplaced chunk cannot go unnoticed.
fn pattern(len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// The one output file [`action_result`] names.
const OUTPUT: &[u8] = b"object";

/// An encoded ActionResult naming one output file, [`OUTPUT`].
fn action_result() -> Bytes {
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "bazel-out/k8-fastbuild/bin/hello.o".into(),
            digest: Some(reapi::Digest {
                hash: sha256_hex(OUTPUT),
                size_bytes: OUTPUT.len() as i64,
            }),
            is_executable: false,
            ..Default::default()
        }],
        exit_code: 0,
        stdout_raw: b"compiled\n".to_vec(),
        ..Default::default()
    };
    result.encode_to_vec().into()
}

#[tokio::test]
async fn cas_put_get_head_round_trip() {
    let server = Server::start().await;
    let data = Bytes::from_static(b"hello, cache");
    let path = cas_path(&data);

    assert_eq!(
        server.send(Method::GET, &path, "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.send(Method::HEAD, &path, "").await.status,
        StatusCode::NOT_FOUND
    );

    let put = server.send(Method::PUT, &path, data.clone()).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(server.stats().blobs, 1);

    let get = server.send(Method::GET, &path, "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.body, data);
    assert_eq!(get.headers[CONTENT_LENGTH], data.len().to_string().as_str());
    assert_eq!(get.headers[CONTENT_TYPE], "application/octet-stream");

    let head = server.send(Method::HEAD, &path, "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[CONTENT_LENGTH],
        data.len().to_string().as_str()
    );
    assert!(head.body.is_empty());

    // Uploading it again is fine and stores nothing new.
    assert_eq!(
        server.send(Method::PUT, &path, data).await.status,
        StatusCode::OK
    );
    assert_eq!(server.stats().blobs, 1);
}

#[tokio::test]
async fn empty_blob_is_always_present() {
    let server = Server::start().await;
    let path = cas_path(b"");
    let get = server.send(Method::GET, &path, "").await;
    assert_eq!((get.status, get.body.len()), (StatusCode::OK, 0));
    assert_eq!(get.headers[CONTENT_LENGTH], "0");
    // hyper's client leaves out `Content-Length: 0`; Bazel sends it.
    let put = server
        .raw(
            format!("PUT {path} HTTP/1.1\r\nHost: hoard\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(put.starts_with("HTTP/1.1 200 "), "{put}");
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn cas_put_with_wrong_hash_is_refused() {
    let server = Server::start().await;
    let path = cas_path(b"what the key says");
    let put = server.send(Method::PUT, &path, "something else").await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&put.body).contains("hash"),
        "{:?}",
        put.body
    );
    assert_eq!(
        server.send(Method::GET, &path, "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn truncated_cas_upload_stores_nothing() {
    let server = Server::start().await;
    // Larger than the in-memory staging limit, so a temp file is involved too.
    let data = pattern(3 << 20);
    let path = cas_path(&data);
    let mut request = format!(
        "PUT {path} HTTP/1.1\r\nHost: hoard\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(&data[..data.len() / 2]);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("server closes the connection");

    assert_eq!(
        server.send(Method::GET, &path, "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.stats(), Stats::default());
    assert!(
        server.temp_files_gone().await,
        "the staged upload was not removed"
    );
}

#[tokio::test]
async fn cas_put_over_the_size_limit_is_413() {
    let server = Server::start_with(|c| c.max_blob_size = 1024, Arc::new(RealFs)).await;
    let data = pattern(1025);
    let put = server
        .send(Method::PUT, &cas_path(&data), data.clone())
        .await;
    assert_eq!(put.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        server.send(Method::GET, &cas_path(&data), "").await.status,
        StatusCode::NOT_FOUND
    );

    // Refused from the header alone: the server answers without waiting for 10 GiB.
    let reply = server
        .raw(
            format!(
                "PUT {} HTTP/1.1\r\nHost: hoard\r\nContent-Length: {}\r\n\r\n",
                cas_path(b"x"),
                10u64 << 30
            )
            .as_bytes(),
        )
        .await;
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
    assert_eq!(server.stats(), Stats::default());

    let at_limit = pattern(1024);
    let put = server
        .send(Method::PUT, &cas_path(&at_limit), at_limit)
        .await;
    assert_eq!(put.status, StatusCode::OK);
}

#[tokio::test]
async fn cas_put_needs_a_content_length() {
    let server = Server::start().await;
    let data = b"hello";
    let path = cas_path(data);
    let missing = server
        .raw(format!("PUT {path} HTTP/1.1\r\nHost: hoard\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert!(missing.starts_with("HTTP/1.1 411 "), "{missing}");
    let chunked = server
        .raw(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: hoard\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
    assert_eq!(server.stats(), Stats::default());
}

/// [`RealFs`] with no free space: uploads that need a temp file find the disk full.
struct FullDisk;

#[async_trait]
impl Fs for FullDisk {
    async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        RealFs.create(path).await
    }
    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        RealFs.open_append(path).await
    }
    async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        RealFs.open_read(path).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path).await
    }
    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(path).await
    }
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path).await
    }
    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_dir(path).await
    }
    async fn len(&self, path: &Path) -> io::Result<u64> {
        RealFs.len(path).await
    }
    async fn free_space(&self, _path: &Path) -> io::Result<u64> {
        Ok(0)
    }
    async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        RealFs.lock(path).await
    }
}

#[tokio::test]
async fn cas_put_on_a_full_disk_is_507() {
    let server = Server::start_with(|_| {}, Arc::new(FullDisk)).await;
    let data = pattern(2 << 20);
    let put = server
        .send(Method::PUT, &cas_path(&data), data.clone())
        .await;
    assert_eq!(put.status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn malformed_keys_and_paths_are_400() {
    let server = Server::start().await;
    let data = b"key tricks";
    let hex = sha256_hex(data);
    let keys = [
        hex.to_uppercase(),
        hex[1..].to_owned(),
        format!("{hex}0"),
        "..".to_owned(),
        "%2e%2e".to_owned(),
        format!("..%2f{}", &hex[5..]),
    ];
    for kind in ["cas", "ac"] {
        for key in &keys {
            let path = format!("/{kind}/{key}");
            for method in [Method::GET, Method::PUT] {
                let reply = server.send(method.clone(), &path, &data[..]).await;
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}");
            }
        }
        for path in [
            format!("/../{kind}/{hex}"),
            format!("/%2e%2e/{kind}/{hex}"),
            format!("/a//{kind}/{hex}"),
            format!("/{kind}/{hex}/"),
        ] {
            let reply = server.send(Method::PUT, &path, &data[..]).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "PUT {path}");
        }
    }
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = Server::start().await;
    assert_eq!(
        server.send(Method::GET, "/favicon.ico", "").await.status,
        StatusCode::NOT_FOUND
    );
    // `/` is the status page (an HTML file embedded in the binary).
    let page = server.send(Method::GET, "/", "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers[CONTENT_TYPE], "text/html; charset=utf-8");
    let post = server.send(Method::POST, "/ui/data", "x").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        server.send(Method::GET, "/metrics/x", "").await.status,
        StatusCode::NOT_FOUND
    );
    let post = server.send(Method::POST, &cas_path(b"x"), "x").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers[ALLOW], "GET, HEAD, PUT");
    let delete = server.send(Method::DELETE, "/status", "").await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn ac_put_then_get_is_byte_exact() {
    let server = Server::start().await;
    let path = format!("/ac/{}", sha256_hex(b"some action"));
    assert_eq!(
        server.send(Method::GET, &path, "").await.status,
        StatusCode::NOT_FOUND
    );

    let value = action_result();
    assert_eq!(
        server.send(Method::PUT, &path, value.clone()).await.status,
        StatusCode::OK
    );
    // Its output is not uploaded yet: the entry is incomplete, and a GET is a miss.
    let incomplete = server.send(Method::GET, &path, "").await;
    assert_eq!(incomplete.status, StatusCode::NOT_FOUND);
    let output = server.send(Method::PUT, &cas_path(OUTPUT), OUTPUT).await;
    assert_eq!(output.status, StatusCode::OK);
    let get = server.send(Method::GET, &path, "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.body, value);
    let head = server.send(Method::HEAD, &path, "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[CONTENT_LENGTH],
        value.len().to_string().as_str()
    );
    assert_eq!(server.stats().actions, 1);
}

#[tokio::test]
async fn ac_put_of_a_ccache_entry_is_kept_as_an_opaque_value() {
    let server = Server::start().await;
    // ccache's key shape: 40 hex chars padded to 64 with the first 24 again.
    let short = "1d7f7046202b2e6363fe710b07b2fc75ecdb3bb3";
    let path = format!("/some/instance/ac/{short}{}", &short[..24]);
    let entry = b"\xcc\xac\x00\x01\x00 a ccache result entry".to_vec();
    let put = server.send(Method::PUT, &path, entry.clone()).await;
    assert_eq!(put.status, StatusCode::OK);
    let get = server.send(Method::GET, &path, "").await;
    assert_eq!((get.status, get.body.to_vec()), (StatusCode::OK, entry));
    // Manifests are rewritten as entries accumulate: the last writer wins.
    let newer = b"\xcc\xac\x00\x02 a newer manifest".to_vec();
    assert_eq!(
        server.send(Method::PUT, &path, newer.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(server.send(Method::GET, &path, "").await.body, newer);
    assert_eq!(server.stats().actions, 1);
    // Over the configured limit (64 KiB in these tests), nothing is stored.
    let other = format!("/ac/{}", sha256_hex(b"other key"));
    let put = server.send(Method::PUT, &other, vec![0u8; 65 << 10]).await;
    assert_eq!(put.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        server.send(Method::GET, &other, "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn strict_mode_refuses_what_is_not_an_action_result() {
    let server = Server::start_strict().await;
    let path = format!("/ac/{}", sha256_hex(b"some action"));
    let put = server.send(Method::PUT, &path, "not a protobuf").await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&put.body).contains("not an ActionResult"));
    assert_eq!(
        server.send(Method::GET, &path, "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.stats(), Stats::default());
    // Real ActionResults are still welcome.
    let put = server.send(Method::PUT, &path, action_result()).await;
    assert_eq!(put.status, StatusCode::OK);
}

#[tokio::test]
async fn instances_separate_the_action_cache_but_share_the_cas() {
    let server = Server::start().await;
    let key = sha256_hex(b"action");
    let value = action_result();
    let output = server.send(Method::PUT, &cas_path(OUTPUT), OUTPUT).await;
    assert_eq!(output.status, StatusCode::OK);
    let put = server
        .send(Method::PUT, &format!("/main/linux/ac/{key}"), value.clone())
        .await;
    assert_eq!(put.status, StatusCode::OK);

    let get = server
        .send(Method::GET, &format!("/main/linux/ac/{key}"), "")
        .await;
    assert_eq!((get.status, get.body), (StatusCode::OK, value));
    for other in [
        format!("/ac/{key}"),
        format!("/main/ac/{key}"),
        format!("/other/ac/{key}"),
    ] {
        let get = server.send(Method::GET, &other, "").await;
        assert_eq!(get.status, StatusCode::NOT_FOUND, "{other}");
    }

    let blob = Bytes::from_static(b"shared blob");
    let put = server
        .send(
            Method::PUT,
            &format!("/main/linux{}", cas_path(&blob)),
            blob.clone(),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let get = server.send(Method::GET, &cas_path(&blob), "").await;
    assert_eq!((get.status, get.body), (StatusCode::OK, blob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_streams_both_ways() {
    let server = Server::start().await;
    let data = pattern(64 << 20);
    let path = cas_path(&data);
    assert_eq!(
        server.send(Method::PUT, &path, data.clone()).await.status,
        StatusCode::OK
    );
    let get = server.send(Method::GET, &path, "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(
        get.headers[CONTENT_LENGTH],
        (64u64 << 20).to_string().as_str()
    );
    assert!(get.body == data, "downloaded bytes differ");
}

#[tokio::test]
async fn one_connection_serves_many_requests() {
    let server = Server::start().await;
    let mut connection = server.connect().await;
    let blob = Bytes::from_static(b"kept alive");
    let path = cas_path(&blob);
    let action = format!("/ac/{}", sha256_hex(b"kept alive action"));
    let steps = [
        (
            Method::GET,
            path.clone(),
            Bytes::new(),
            StatusCode::NOT_FOUND,
        ),
        (Method::PUT, path.clone(), blob.clone(), StatusCode::OK),
        (
            Method::PUT,
            path.clone(),
            Bytes::from_static(b"wrong"),
            StatusCode::BAD_REQUEST,
        ),
        (Method::HEAD, path.clone(), Bytes::new(), StatusCode::OK),
        (Method::GET, path.clone(), Bytes::new(), StatusCode::OK),
        (Method::PUT, action.clone(), action_result(), StatusCode::OK),
        (
            Method::GET,
            action.clone(),
            Bytes::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            cas_path(OUTPUT),
            Bytes::from_static(OUTPUT),
            StatusCode::OK,
        ),
        (Method::GET, action, Bytes::new(), StatusCode::OK),
        (
            Method::GET,
            "/status".to_owned(),
            Bytes::new(),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/cas/bad".to_owned(),
            Bytes::new(),
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, path, Bytes::new(), StatusCode::OK),
    ];
    for (method, path, body, expected) in steps {
        let reply = send_on(&mut connection, method.clone(), &path, body).await;
        assert_eq!(reply.status, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn status_reports_counts() {
    let server = Server::start_with(|c| c.max_blob_size = 4096, Arc::new(RealFs)).await;
    let blob = Bytes::from_static(b"counted");
    server.send(Method::PUT, &cas_path(&blob), blob).await;
    let status = server.send(Method::GET, "/status", "").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.headers[CONTENT_TYPE], "application/json");
    let text = String::from_utf8(status.body.to_vec()).unwrap();
    let expected = format!(
        "\"version\":\"{}\",\"blobs\":1,\"blob_bytes\":7,\"actions\":0,\"max_blob_size\":4096",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&expected), "{text}");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let mut server = Server::start().await;
    let mut idle = server.connect().await;
    assert_eq!(
        send_on(&mut idle, Method::GET, "/status", "").await.status,
        StatusCode::OK
    );
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task.take().unwrap())
        .await
        .expect("an idle keep-alive connection does not hold up shutdown")
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// Reads one response from a keep-alive connection: its status code and body.
async fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..header_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while data.len() < header_end + length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        data.extend_from_slice(&buf[..n]);
    }
    (status, data[header_end..].to_vec())
}

/// ccache writes headers and body in separate writes on one keep-alive connection. Every such
/// PUT must be answered (and stored) in turn; how fast is measured by
/// `tests/acceptance/ccache_bench.sh`, not asserted here.
#[tokio::test]
async fn two_write_puts_on_one_connection_are_all_stored() {
    let server = Server::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for i in 0..20 {
        let path = format!("/ac/{}", sha256_hex(format!("ccache key {i}").as_bytes()));
        let body = format!("\u{cc}ccache entry {i}");
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: hoard\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut stream).await.0, 200);
    }
    assert_eq!(server.stats().actions, 20);
}
