#![cfg(not(madsim))]
//! The object-store tier over a real engine and an in-memory bucket: write-back order, fills,
//! FindMissingBlobs, back-pressure, the watermark across a restart, write-through; and through
//! `hoard serve`'s front ends: the queue on the status page, the retry hint of a refusal.

mod blobs;
use blobs::blob;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hoard::engine::{AcKind, Digest, Engine, EngineConfig};
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::WriteRequest;
use hoard::proto::google::rpc;
use hoard::proto::reapi;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::server::{self, ServeConfig};
use hoard::store::stack::{self, StackConfig};
use hoard::store::{Accept, ActionKey, ActionValue, EngineStore, Error, Store};
use hoard::tier::bucket::{ObjectStream, PartUpload};
use hoard::tier::layout::{action_key, blob_key};
use hoard::tier::{Bucket, BucketError, MemoryBucket, Tier, TierConfig, TierMode};
use hoard::wire::grpc::GrpcConfig;
use hoard::wire::http::HttpConfig;
use prost::Message as _;

/// A bucket that can be taken down (every request then fails as unreachable) and counts GETs
/// and HEADs per key.
#[derive(Default)]
struct Switchable {
    inner: MemoryBucket,
    down: AtomicBool,
    requests: Mutex<HashMap<(&'static str, String), usize>>,
}

impl Switchable {
    fn check(&self) -> Result<(), BucketError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BucketError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }

    fn count(&self, verb: &'static str, key: &str) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((verb, key.to_owned()))
            .or_default() += 1;
    }

    /// How many `verb` requests (`GET`, `HEAD`) named `key`.
    fn requests_of(&self, verb: &'static str, key: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.get(&(verb, key.to_owned())).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Bucket for Switchable {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        self.check()?;
        self.inner.put(key, data).await
    }
    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError> {
        self.check()?;
        self.inner.put_multipart(key).await
    }
    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError> {
        self.check()?;
        self.count("GET", key);
        // A slow first byte, so concurrent misses really overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.get(key, offset).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        self.check()?;
        self.count("HEAD", key);
        self.inner.head(key).await
    }
    fn describe(&self) -> String {
        "switchable".into()
    }
}

struct Node {
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    tier: Arc<Tier>,
}

async fn node(dir: &Path, bucket: Arc<dyn Bucket>, tune: impl FnOnce(&mut TierConfig)) -> Node {
    node_with(dir, bucket, tune, |_| {}).await
}

async fn node_with(
    dir: &Path,
    bucket: Arc<dyn Bucket>,
    tune: impl FnOnce(&mut TierConfig),
    tune_engine: impl FnOnce(&mut EngineConfig),
) -> Node {
    let mut config = EngineConfig::new(dir);
    config.hold_for_upload = true;
    tune_engine(&mut config);
    // A stopped node's uploader lets go of the engine (and its lock) within moments.
    let started = Instant::now();
    let engine = loop {
        match Engine::open(config.clone(), Arc::new(RealFs), Arc::new(TokioRuntime)).await {
            Ok(engine) => break engine,
            Err(Error::Busy(_)) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("engine opens: {e}"),
        }
    };
    let mut tier_config = TierConfig::new("memory://test");
    tune(&mut tier_config);
    let tier = Tier::open(
        tier_config,
        bucket,
        engine.clone(),
        Arc::new(RealFs),
        Arc::new(TokioRuntime),
    )
    .await
    .expect("tier opens");
    let stack_config = StackConfig {
        tier: Some(tier.clone()),
        ..StackConfig::default()
    };
    let store = stack::assemble(Arc::new(EngineStore::new(engine.clone())), &stack_config);
    Node {
        store,
        engine,
        tier,
    }
}

impl Node {
    /// Waits until the uploader has caught up with the log.
    async fn drained(&self) {
        let started = Instant::now();
        while self.tier.status().backlog_bytes > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "upload queue did not drain: {:?}",
                self.tier.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stop(self) {
        self.tier.stop();
    }
}

fn proto(digest: &Digest) -> reapi::Digest {
    digest.into()
}

fn action_result(outputs: &[Digest]) -> ActionValue {
    let result = reapi::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, d)| reapi::OutputFile {
                path: format!("out/{i}"),
                digest: Some(proto(d)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    ActionValue {
        kind: AcKind::ActionResult,
        bytes: result.encode_to_vec().into(),
    }
}

async fn put(store: &dyn Store, data: &Bytes) -> Digest {
    let digest = Digest::of(data);
    store.put_blob(digest, data.clone()).await.expect("put");
    digest
}

#[tokio::test]
async fn write_back_sends_blobs_before_the_action_result_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(MemoryBucket::new());
    let a = node(dir.path(), bucket.clone(), |_| {}).await;
    let blobs = [blob(1, 100), blob(2, 7 << 20), blob(3, 3000)];
    let mut digests = Vec::new();
    for data in &blobs {
        digests.push(put(a.store.as_ref(), data).await);
    }
    let key = ActionKey::new("main", [7; 32]);
    a.store
        .put_action(&key, action_result(&digests))
        .await
        .unwrap();
    a.drained().await;
    let order = bucket.order();
    let ac_at = order
        .iter()
        .position(|k| *k == action_key(&key))
        .expect("AC uploaded");
    for digest in &digests {
        let at = order.iter().position(|k| *k == blob_key(digest));
        assert!(
            at.is_some_and(|at| at < ac_at),
            "{digest} before the AC: {order:?}"
        );
        assert_eq!(
            bucket.object(&blob_key(digest)).unwrap().len() as u64,
            digest.size
        );
    }
    assert!(
        order[0] == "hoard-format",
        "the format marker comes first: {order:?}"
    );
    a.stop();
}

#[tokio::test]
async fn an_action_result_naming_a_blob_in_neither_tier_is_not_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(MemoryBucket::new());
    let a = node(dir.path(), bucket.clone(), |_| {}).await;
    let never_stored = Digest::of(b"never stored anywhere");
    let key = ActionKey::new("", [9; 32]);
    a.store
        .put_action(&key, action_result(&[never_stored]))
        .await
        .unwrap();
    let marker = put(a.store.as_ref(), &blob(4, 10)).await;
    a.drained().await;
    assert!(
        bucket.object(&blob_key(&marker)).is_some(),
        "the queue went on past it"
    );
    assert!(bucket.object(&action_key(&key)).is_none());
    a.stop();
}

#[tokio::test]
async fn a_second_node_serves_what_the_first_uploaded_and_keeps_a_copy() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = Arc::new(MemoryBucket::new());
    let a = node(dir_a.path(), bucket.clone(), |_| {}).await;
    let data = blob(5, 12 << 20);
    let digest = put(a.store.as_ref(), &data).await;
    let key = ActionKey::new("main", [5; 32]);
    a.store
        .put_action(&key, action_result(&[digest]))
        .await
        .unwrap();
    a.drained().await;

    let b = node(dir_b.path(), bucket.clone(), |_| {}).await;
    assert_eq!(
        b.store.find_missing_and_touch(&[digest]).await.unwrap(),
        vec![]
    );
    let got = b
        .store
        .get_action(&key, Accept::ActionResults)
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(action_result(&[digest])),
        "passes completeness against the bucket"
    );
    assert_eq!(b.store.read_blob(&digest).await.unwrap(), data);
    assert!(
        b.engine.contains(&digest),
        "the read filled B's local store"
    );
    // A ranged read of a blob only in the bucket is verified too.
    let other = put(a.store.as_ref(), &blob(6, 300_000)).await;
    a.drained().await;
    let mut reader = b.store.open_blob(&other, 1000).await.unwrap();
    let mut tail = Vec::new();
    while let Some(chunk) = reader.next_chunk(64 << 10).await.unwrap() {
        tail.extend_from_slice(&chunk);
    }
    assert_eq!(tail, blob(6, 300_000)[1000..]);
    // A hash-only lookup (the HTTP protocol) finds blobs only in the bucket too.
    let by_hash = put(a.store.as_ref(), &blob(9, 4321)).await;
    a.drained().await;
    assert!(!b.engine.contains(&by_hash));
    assert_eq!(
        b.store.resolve_hash_and_touch(&by_hash.hash).await.unwrap(),
        Some(by_hash)
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn an_object_that_fails_its_digest_is_never_served_nor_stored() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(MemoryBucket::new());
    let b = node(dir.path(), bucket.clone(), |_| {}).await;
    let data = blob(7, 50_000);
    let digest = Digest::of(&data);
    let mut bad = data.to_vec();
    bad[40_000] ^= 1;
    bucket.insert(&blob_key(&digest), bad.into());
    let read = b.store.read_blob(&digest).await;
    assert!(matches!(read, Err(Error::DataLoss(_))), "{read:?}");
    assert!(!b.engine.contains(&digest));
    b.stop();
}

#[tokio::test]
async fn concurrent_misses_of_one_blob_fetch_it_once_and_the_fill_is_not_sent_back() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bucket = Arc::new(Switchable::default());
    let a = node(dir_a.path(), bucket.clone(), |_| {}).await;
    let data = blob(8, 3 << 20);
    let digest = put(a.store.as_ref(), &data).await;
    a.drained().await;
    let key = blob_key(&digest);
    let heads = bucket.requests_of("HEAD", &key);
    let b = node(dir_b.path(), bucket.clone(), |_| {}).await;
    let reads = (0..8).map(|_| {
        let store = b.store.clone();
        tokio::spawn(async move { store.read_blob(&digest).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().unwrap(), data);
    }
    assert_eq!(bucket.requests_of("GET", &key), 1);
    // The fill is in B's log, so B's uploader meets it; the bucket is where it came from.
    b.drained().await;
    assert_eq!(
        bucket.requests_of("HEAD", &key),
        heads,
        "B looked for a blob it had just read from the bucket"
    );
    a.stop();
    b.stop();
}

#[tokio::test]
async fn a_down_bucket_gives_back_pressure_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(Switchable::default());
    let a = node(dir.path(), bucket.clone(), |tier| {
        tier.backlog_budget = 256 << 10
    })
    .await;
    bucket.down.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    let refused = loop {
        let data = blob(100 + acknowledged.len() as u64, 20_000);
        match a.store.put_blob(Digest::of(&data), data.clone()).await {
            Ok(()) => acknowledged.push(data),
            Err(e) => break e,
        }
        assert!(acknowledged.len() < 1000, "no back-pressure");
    };
    assert!(matches!(refused, Error::Busy(_)), "{refused:?}");
    assert_eq!(refused.grpc_code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.http_status(),
        hyper::StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(refused.to_string().contains("retry"), "{refused}");
    // Reads go on from the local store meanwhile.
    assert_eq!(
        a.store
            .read_blob(&Digest::of(&acknowledged[0]))
            .await
            .unwrap(),
        acknowledged[0]
    );
    bucket.down.store(false, Ordering::SeqCst);
    a.drained().await;
    for data in &acknowledged {
        assert!(bucket.inner.object(&blob_key(&Digest::of(data))).is_some());
    }
    a.store
        .put_blob(Digest::of(b"after"), Bytes::from_static(b"after"))
        .await
        .unwrap();
    a.stop();
}

#[tokio::test]
async fn a_restart_resumes_uploading_from_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(Switchable::default());
    let a = node(dir.path(), bucket.clone(), |_| {}).await;
    let first = put(a.store.as_ref(), &blob(20, 1000)).await;
    a.drained().await;
    bucket.down.store(true, Ordering::SeqCst);
    let queued: Vec<Digest> = futures::future::join_all((21..30).map(|seed| {
        let store = a.store.clone();
        async move { put(store.as_ref(), &blob(seed, 5000)).await }
    }))
    .await;
    a.stop();
    bucket.down.store(false, Ordering::SeqCst);
    let puts_before = bucket.inner.order().len();
    let a = node(dir.path(), bucket.clone(), |_| {}).await;
    a.drained().await;
    for digest in &queued {
        assert!(
            bucket.inner.object(&blob_key(digest)).is_some(),
            "{digest} uploaded after restart"
        );
    }
    let resent = bucket.inner.order()[puts_before..].to_vec();
    assert!(
        !resent.contains(&blob_key(&first)),
        "what was uploaded before stays behind the watermark: {resent:?}"
    );
    a.stop();
}

#[tokio::test]
async fn eviction_never_frees_a_record_not_yet_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(Switchable::default());
    let budget = 1 << 20;
    let a = node_with(
        dir.path(),
        bucket.clone(),
        |tier| tier.backlog_budget = 8 << 20,
        |engine| engine.max_size = Some(budget),
    )
    .await;
    bucket.down.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for seed in 0..40 {
        let data = blob(200 + seed, 64 << 10);
        if a.store
            .put_blob(Digest::of(&data), data.clone())
            .await
            .is_ok()
        {
            acknowledged.push(data);
        }
    }
    assert!(
        acknowledged.len() as u64 * (64 << 10) > budget,
        "wrote past the budget"
    );
    assert_eq!(
        a.engine.stats().evictions,
        0,
        "nothing evicted before it is uploaded"
    );
    for data in &acknowledged {
        assert_eq!(a.store.read_blob(&Digest::of(data)).await.unwrap(), data);
    }
    bucket.down.store(false, Ordering::SeqCst);
    a.drained().await;
    // Uploaded, it may go locally, and is still served (from the bucket).
    a.store
        .put_blob(Digest::of(b"x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    a.drained().await;
    a.store
        .put_blob(Digest::of(b"y"), Bytes::from_static(b"y"))
        .await
        .unwrap();
    for data in &acknowledged {
        assert_eq!(a.store.read_blob(&Digest::of(data)).await.unwrap(), data);
    }
    a.stop();
}

#[tokio::test]
async fn write_through_acknowledges_only_what_is_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(Switchable::default());
    let a = node(dir.path(), bucket.clone(), |tier| {
        tier.mode = TierMode::Through
    })
    .await;
    let data = blob(40, 10_000);
    let digest = put(a.store.as_ref(), &data).await;
    assert_eq!(bucket.inner.object(&blob_key(&digest)), Some(data));
    let key = ActionKey::new("ci", [4; 32]);
    a.store
        .put_action(&key, action_result(&[digest]))
        .await
        .unwrap();
    assert!(bucket.inner.object(&action_key(&key)).is_some());
    bucket.down.store(true, Ordering::SeqCst);
    let refused = a
        .store
        .put_blob(Digest::of(b"down"), Bytes::from_static(b"down"))
        .await;
    let refused = refused.expect_err("not acknowledged while the bucket is down");
    assert_eq!(refused.grpc_code(), tonic::Code::Unavailable, "{refused}");
    bucket.down.store(false, Ordering::SeqCst);
    a.stop();
}

#[tokio::test]
async fn a_bucket_of_another_layout_or_refusing_credentials_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(MemoryBucket::new());
    bucket.insert(
        "hoard-format",
        Bytes::from_static(b"hoard object layout 99\n"),
    );
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(RealFs),
        Arc::new(TokioRuntime),
    )
    .await
    .unwrap();
    let opened = Tier::open(
        TierConfig::new("memory://test"),
        bucket,
        engine.clone(),
        Arc::new(RealFs),
        Arc::new(TokioRuntime),
    )
    .await;
    let error = opened.expect_err("refused").to_string();
    assert!(error.contains("layout 99"), "{error}");

    struct Refusing;
    #[async_trait]
    impl Bucket for Refusing {
        async fn put(&self, _: &str, _: Bytes) -> Result<(), BucketError> {
            Err(BucketError::Denied("403 InvalidAccessKeyId".into()))
        }
        async fn put_multipart(&self, _: &str) -> Result<Box<dyn PartUpload>, BucketError> {
            Err(BucketError::Denied("403".into()))
        }
        async fn get(&self, _: &str, _: u64) -> Result<Option<ObjectStream>, BucketError> {
            Err(BucketError::Denied("403".into()))
        }
        async fn head(&self, _: &str) -> Result<Option<u64>, BucketError> {
            Err(BucketError::Denied("403 InvalidAccessKeyId".into()))
        }
        fn describe(&self) -> String {
            "s3://refusing".into()
        }
    }
    let opened = Tier::open(
        TierConfig::new("s3://refusing"),
        Arc::new(Refusing),
        engine,
        Arc::new(RealFs),
        Arc::new(TokioRuntime),
    )
    .await;
    let error = opened.expect_err("refused").to_string();
    assert!(
        error.contains("credentials") && error.contains("s3://refusing"),
        "{error}"
    );
}

#[tokio::test]
async fn an_empty_action_cache_value_is_uploaded_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(MemoryBucket::new());
    let a = node(dir.path(), bucket.clone(), |_| {}).await;
    let key = ActionKey::new("", [3; 32]);
    let empty = ActionValue {
        kind: AcKind::Opaque,
        bytes: Bytes::new(),
    };
    a.store.put_action(&key, empty).await.unwrap();
    let after = put(a.store.as_ref(), &blob(50, 100)).await;
    a.drained().await;
    assert!(bucket.object(&action_key(&key)).is_some());
    assert!(bucket.object(&blob_key(&after)).is_some());
    a.stop();
}

/// One HTTP/1.1 request to `addr`: the status, the response head and the body.
fn http_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hoard\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The retry delay of a `google.rpc.RetryInfo` among the details of `status`.
fn retry_delay(details: &[prost_types::Any]) -> Option<prost_types::Duration> {
    let info = details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.RetryInfo")?;
    rpc::RetryInfo::decode(&info.value[..]).unwrap().retry_delay
}

/// The queue figures of the status page's data, `(depth, age)` (`None` while `null`).
fn queue_figures(http: SocketAddr) -> (Option<u64>, Option<u64>) {
    let (status, _, body) = http_request(http, "GET", "/ui/data", b"");
    assert_eq!(status, 200);
    let data: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        data["object_store_queue_depth"].as_u64(),
        data["object_store_queue_age_seconds"].as_u64(),
    )
}

/// Polls the status page until `wanted` holds of its queue figures.
async fn wait_for_queue(http: SocketAddr, wanted: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let started = Instant::now();
    loop {
        if let (Some(depth), Some(age)) = queue_figures(http) {
            if wanted(depth, age) {
                return (depth, age);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "queue figures never as wanted: {:?}",
            queue_figures(http)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_queue_and_refusals_carry_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(Switchable::default());
    let (grpc_addr, http_addr) = (free_addr(), free_addr());
    let mut tier = TierConfig::new("memory://test");
    tier.backlog_budget = 256 << 10;
    let config = ServeConfig {
        engine: EngineConfig::new(dir.path()),
        stack: StackConfig {
            object_store: Some(tier),
            ..StackConfig::default()
        },
        grpc_addr,
        http_addr: Some(http_addr),
        grpc: GrpcConfig::default(),
        http: HttpConfig::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shared: Arc<dyn Bucket> = bucket.clone();
    let server = tokio::spawn(server::serve_with_bucket(
        config,
        Some(shared),
        Arc::new(RealFs),
        Arc::new(TokioRuntime),
        async {
            let _ = stopped.await;
        },
    ));
    let started = Instant::now();
    while std::net::TcpStream::connect(http_addr).is_err()
        || std::net::TcpStream::connect(grpc_addr).is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(20), "not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        wait_for_queue(http_addr, |depth, _| depth == 0).await,
        (0, 0)
    );

    // The bucket goes down: writes queue up until the backlog is over its budget.
    bucket.down.store(true, Ordering::SeqCst);
    let mut seed = 300;
    let (status, head) = loop {
        let data = blob(seed, 20_000);
        seed += 1;
        let path = format!("/cas/{}", Digest::of(&data).hex());
        let (status, head, _) = http_request(http_addr, "PUT", &path, &data);
        if status != 200 {
            break (status, head);
        }
        assert!(seed < 1300, "no back-pressure");
    };
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    let (depth, age) = wait_for_queue(http_addr, |depth, age| depth > 256 << 10 && age >= 1).await;
    assert!(depth > 256 << 10 && age >= 1, "{depth} bytes, {age} s");

    // gRPC writes are refused with RESOURCE_EXHAUSTED and a RetryInfo detail.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let data = blob(seed, 1000);
    let digest = Digest::of(&data);
    let write = WriteRequest {
        resource_name: format!("uploads/u1/blobs/{}/{}", digest.hex(), digest.size),
        write_offset: 0,
        finish_write: true,
        data: data.clone(),
    };
    let refused = ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter([write]))
        .await
        .expect_err("refused while over budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    let details = rpc::Status::decode(refused.details()).expect("status details");
    let delay = retry_delay(&details.details).expect("a RetryInfo detail");
    assert_eq!((delay.seconds, delay.nanos), (1, 0));
    let batch = ContentAddressableStorageClient::new(channel.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(proto(&digest)),
                data: data.clone(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let item = batch.responses[0].status.clone().unwrap();
    assert_eq!(item.code, tonic::Code::ResourceExhausted as i32);
    assert!(retry_delay(&item.details).is_some(), "{item:?}");
    let refused = ActionCacheClient::new(channel)
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(proto(&Digest::of(b"action"))),
            action_result: Some(reapi::ActionResult::default()),
            ..Default::default()
        })
        .await
        .expect_err("refused while over budget");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(retry_delay(&rpc::Status::decode(refused.details()).unwrap().details).is_some());

    // Back up: the queue drains and the page says so.
    bucket.down.store(false, Ordering::SeqCst);
    assert_eq!(
        wait_for_queue(http_addr, |depth, age| depth == 0 && age == 0).await,
        (0, 0)
    );
    let (status, _, _) = http_request(http_addr, "PUT", &format!("/cas/{}", digest.hex()), &data);
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
