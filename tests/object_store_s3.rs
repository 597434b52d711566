#![cfg(not(madsim))]
//! hoard nodes sharing a bucket on a real S3 server (s3s-fs on 127.0.0.1), as processes:
//! (a) node B, with an empty data dir, serves over gRPC and HTTP what node A stored;
//! (b) node A killed with uploads queued resumes them after a restart;
//! (c) the S3 server stopped mid-run: A keeps serving, and its queue drains once it is back;
//! (d) wrong credentials or an unreachable endpoint stop the start with a clear error.
//!
//! The S3 server is the `s3s-fs` binary: `$HOARD_S3S_FS`, else `target/tools/bin/s3s-fs`, else
//! on `PATH` (`.ci/run` installs it). Without it the tests fail in CI (`CI` set) and are
//! skipped with a message elsewhere.

mod grpc_support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grpc_support::{proto, pseudo_random, read_all, read_name, write_name, write_requests};
use hoard::engine::Digest;
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::reapi;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use prost::Message as _;
use tonic::transport::Channel;

const ACCESS_KEY: &str = "hoard-test";
const SECRET_KEY: &str = "hoard-test-secret";
const BUCKET: &str = "cache";

/// The s3s-fs binary, or `None` (after saying why) when the test may be skipped.
fn s3s_fs() -> Option<PathBuf> {
    let candidates = std::env::var_os("HOARD_S3S_FS")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs")])
        .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("s3s-fs"))
                .collect::<Vec<_>>()
        }));
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let why = "s3s-fs not found: set HOARD_S3S_FS or run `cargo install s3s-fs --version 0.14.1 \
               --features binary --root target/tools`";
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI must run the object-store tests)");
    }
    eprintln!("skipping: {why}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An S3 server on 127.0.0.1 that can be stopped and started again on the same port.
struct S3 {
    binary: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3 {
    fn start(binary: PathBuf) -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut s3 = S3 {
            binary,
            root,
            port: free_port(),
            child: None,
        };
        s3.resume();
        s3
    }

    fn resume(&mut self) {
        let mut child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        wait_for_port(self.port, &mut child, "s3s-fs");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Objects in the bucket under the node's prefix.
    fn objects(&self) -> Vec<String> {
        let mut found = Vec::new();
        let base = self.root.path().join(BUCKET);
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.strip_prefix(&base).unwrap().display().to_string());
                }
            }
        }
        found
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `hoard serve` process with its own data directory.
struct Node {
    grpc: SocketAddr,
    http: SocketAddr,
    child: Child,
    log: PathBuf,
}

fn hoard(dir: &Path, grpc: SocketAddr, http: SocketAddr, endpoint: &str, secret: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hoard"));
    command
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
        ])
        .args(["--object-store", &format!("s3://{BUCKET}/shared")])
        .args(["--access-log=false", "--log", "info"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .stdout(Stdio::null());
    command
}

impl Node {
    fn start(dir: &Path, s3: &S3) -> Node {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Node::start_at(dir, s3, grpc, http)
    }

    fn start_at(dir: &Path, s3: &S3, grpc: SocketAddr, http: SocketAddr) -> Node {
        let log = dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = hoard(dir, grpc, http, &s3.endpoint(), SECRET_KEY)
            .stderr(stderr)
            .spawn()
            .expect("hoard starts");
        wait_for_port(http.port(), &mut child, "hoard");
        wait_for_port(grpc.port(), &mut child, "hoard");
        Node {
            grpc,
            http,
            child,
            log,
        }
    }

    fn kill(mut self) -> (SocketAddr, SocketAddr) {
        self.child.kill().unwrap(); // SIGKILL: no seal, no goodbye
        self.child.wait().unwrap();
        (self.grpc, self.http)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn status(&self) -> String {
        http(self.http, "GET", "/status", b"").1
    }

    /// Waits until the node's upload queue is empty.
    fn drained(&self) {
        let started = Instant::now();
        loop {
            let status = self.status();
            if status.contains("\"backlog_bytes\":0,") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "queue did not drain: {status}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, bytes) = http_bytes(addr, method, path, body);
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn http_bytes(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hoard\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = reply[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line + 2..line + 2 + size]);
        body = &body[line + 4 + size..];
    }
}

/// Bytes in each part of a multipart upload (README: blobs over 10 MiB go in 10 MiB parts).
const PART_SIZE: usize = 10 << 20;

/// What a Bazel-like client stores: blobs (over ByteStream; one under a part, one that goes in
/// three parts, the last one short) and an action result.
struct Build {
    outputs: Vec<Vec<u8>>,
    action: Digest,
}

impl Build {
    fn new(seed: u64) -> Build {
        Build {
            outputs: vec![
                pseudo_random(seed, 1000),
                pseudo_random(seed + 1, 9 << 20),
                pseudo_random(seed + 2, 70_000),
                pseudo_random(seed + 4, 2 * PART_SIZE + 12_345),
            ],
            action: Digest::of(&pseudo_random(seed + 3, 100)),
        }
    }

    fn digests(&self) -> Vec<Digest> {
        self.outputs.iter().map(|o| Digest::of(o)).collect()
    }

    fn result(&self) -> reapi::ActionResult {
        reapi::ActionResult {
            output_files: self
                .digests()
                .iter()
                .enumerate()
                .map(|(i, d)| reapi::OutputFile {
                    path: format!("out/{i}"),
                    digest: Some(proto(d)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn store(&self, channel: Channel) {
        let mut bytestream = ByteStreamClient::new(channel.clone());
        for (i, output) in self.outputs.iter().enumerate() {
            let digest = Digest::of(output);
            let requests =
                write_requests(&write_name("", &format!("u{i}"), &digest), output, 1 << 20);
            let written = bytestream
                .write(futures::stream::iter(requests))
                .await
                .expect("write");
            assert_eq!(written.into_inner().committed_size, output.len() as i64);
        }
        ActionCacheClient::new(channel)
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(proto(&self.action)),
                action_result: Some(self.result()),
                ..Default::default()
            })
            .await
            .expect("update action result");
    }

    /// Every action a hit, every output downloadable, over gRPC and over HTTP.
    async fn check_served(&self, node: &Node) {
        let channel = node.channel().await;
        let hit = ActionCacheClient::new(channel.clone())
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(proto(&self.action)),
                ..Default::default()
            })
            .await
            .expect("an action-cache hit")
            .into_inner();
        assert_eq!(hit, self.result());
        let missing = ContentAddressableStorageClient::new(channel.clone())
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: self.digests().iter().map(proto).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(missing.missing_blob_digests.is_empty(), "{missing:?}");
        let mut bytestream = ByteStreamClient::new(channel);
        for (i, output) in self.outputs.iter().enumerate().filter(|(i, _)| *i != 2) {
            let read = read_all(&mut bytestream, &read_name("", &Digest::of(output)), 0, 0).await;
            assert!(
                read.unwrap() == *output,
                "gRPC read of output {i}, byte-exact"
            );
        }
        let (status, body) =
            http_bytes(node.http, "GET", &format!("/ac/{}", self.action.hex()), b"");
        assert_eq!(status, 200);
        assert_eq!(
            reapi::ActionResult::decode(&body[..]).unwrap(),
            self.result()
        );
        // The third over HTTP (a client that sends no size: one HEAD for it).
        let third = &self.outputs[2];
        let (status, body) = http_bytes(
            node.http,
            "GET",
            &format!("/cas/{}", Digest::of(third).hex()),
            b"",
        );
        assert_eq!(status, 200);
        assert!(body == *third, "HTTP read of an output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_bucket_over_grpc_and_http() {
    let Some(binary) = s3s_fs() else { return };
    let s3 = S3::start(binary);
    let dirs = tempfile::tempdir().unwrap();
    let a = Node::start(&dirs.path().join("a"), &s3);
    let build = Build::new(1);
    build.store(a.channel().await).await;
    // An HTTP client's (ccache's) entry too.
    let value = b"opaque ccache entry".to_vec();
    let (status, _) = http(a.http, "PUT", &format!("/ac/{}", "ab".repeat(32)), &value);
    assert_eq!(status, 200);
    a.drained();
    // The large output went in three parts, each acknowledged, and the upload was completed.
    let metrics = http(a.http, "GET", "/metrics", b"").1;
    for (op, at_least) in [("put_part", 3), ("complete_multipart", 1)] {
        let count: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("hoard_bucket_requests_total{")
                    && l.contains(&format!("op=\"{op}\""))
                    && l.contains("status=\"ok\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(count >= at_least as f64, "{op}: {count}\n{metrics}");
    }
    let objects = s3.objects();
    assert!(
        objects.iter().any(|o| o == "shared/hoard-format"),
        "{objects:?}"
    );
    let large = &build.outputs[3];
    let stored = std::fs::read(
        s3.root
            .path()
            .join(BUCKET)
            .join(format!("shared/cas/sha256/{}", Digest::of(large).hex())),
    )
    .expect("the large blob is one object");
    assert!(
        stored == *large,
        "the multipart object holds the blob, byte-exact"
    );
    assert!(
        objects.iter().any(|o| o.starts_with("shared/ac/_/sha256/")),
        "{objects:?}"
    );

    let b = Node::start(&dirs.path().join("b"), &s3);
    build.check_served(&b).await;
    let (status, body) = http_bytes(b.http, "GET", &format!("/ac/{}", "ab".repeat(32)), b"");
    assert_eq!((status, body), (200, value));
    let status = b.status();
    assert!(
        status.contains("\"object_store\":{\"bucket\":\"s3://cache/shared\""),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_uploads_queued_drains_them_after_a_restart() {
    let Some(binary) = s3s_fs() else { return };
    let mut s3 = S3::start(binary);
    let dirs = tempfile::tempdir().unwrap();
    let dir_a = dirs.path().join("a");
    let a = Node::start(&dir_a, &s3);
    s3.stop();
    let build = Build::new(10);
    build.store(a.channel().await).await; // acknowledged locally, queued
    let (grpc, http_addr) = a.kill();
    s3.resume();
    let a = Node::start_at(&dir_a, &s3, grpc, http_addr);
    a.drained();
    let b = Node::start(&dirs.path().join("b"), &s3);
    build.check_served(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_serving_while_the_bucket_is_down_and_catches_up() {
    let Some(binary) = s3s_fs() else { return };
    let mut s3 = S3::start(binary);
    let dirs = tempfile::tempdir().unwrap();
    let a = Node::start(&dirs.path().join("a"), &s3);
    let before = Build::new(20);
    before.store(a.channel().await).await;
    a.drained();
    s3.stop();
    // Reads and writes go on from the local store.
    before.check_served(&a).await;
    let during = Build::new(30);
    during.store(a.channel().await).await;
    assert!(
        !a.status().contains("\"backlog_bytes\":0,"),
        "queued while down"
    );
    s3.resume();
    a.drained();
    let b = Node::start(&dirs.path().join("b"), &s3);
    during.check_served(&b).await;
    before.check_served(&b).await;
}

#[test]
fn wrong_credentials_or_an_unreachable_endpoint_stop_the_start() {
    let Some(binary) = s3s_fs() else { return };
    let s3 = S3::start(binary);
    let dirs = tempfile::tempdir().unwrap();
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let cases = [
        (s3.endpoint(), "wrong-secret", "refused the credentials"),
        (
            format!("http://127.0.0.1:{}", free_port()),
            SECRET_KEY,
            "unavailable",
        ),
    ];
    for (i, (endpoint, secret, expected)) in cases.into_iter().enumerate() {
        let out = hoard(
            &dirs.path().join(i.to_string()),
            addr(free_port()),
            addr(free_port()),
            &endpoint,
            secret,
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("s3://cache/shared"),
            "{stderr}"
        );
    }
}
