//! Throughput of the gRPC front end over loopback, with the server's CPU time per MB, next to
//! the machine's SHA-256 speed (every byte written is hashed once, so that is the floor of the
//! CPU cost) and next to the targets of issue 17.
//!
//! The server runs on a runtime of its own whose threads (workers and blocking pool) are named
//! `hoard-server`: their CPU time, read from `/proc/self/task`, is the server's. The load
//! client runs on another runtime in the same process. Numbers on a shared machine are noisy.
//!
//! Run: `cargo run --release --example bench_grpc [large|small]` (one part alone, e.g. under
//! `perf record`; the data directory is a temp dir under
//! `$TMPDIR`; set `TMPDIR` to bench another disk).

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::time::Duration;
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(bench::SERVER_THREAD)
        // Idle blocking threads must not exit mid-measurement, taking their CPU time along.
        .thread_keep_alive(Duration::from_secs(3600))
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let dir = tempfile::tempdir()?;
    let (engine, addr) = server.block_on(bench::start(dir.path()))?;
    let part = bench::Part::from_args()?;
    client.block_on(bench::run(engine, addr, server.handle().clone(), part))
}

#[cfg(not(madsim))]
mod bench {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use hoard::engine::{Digest, Engine, EngineConfig};
    use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
    use hoard::proto::bytestream::{ReadRequest, WriteRequest};
    use hoard::proto::reapi::action_cache_client::ActionCacheClient;
    use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use hoard::proto::reapi::{
        batch_update_blobs_request, ActionResult, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
        GetActionResultRequest, OutputFile, UpdateActionResultRequest,
    };
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;
    use hoard::wire::grpc::{self, GrpcConfig};
    use tokio::runtime::Handle;
    use tonic::transport::Channel;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// The name of every server thread (at most 15 bytes: Linux truncates thread names).
    pub const SERVER_THREAD: &str = "hoard-server";
    const MIB: f64 = (1 << 20) as f64;
    const BIG: usize = 256 << 20;
    const CHUNK: usize = 1 << 20;
    const SMALL: usize = 4 << 10;
    const SMALL_PER_BATCH: usize = 256;
    const BATCHES: usize = 40;
    const BATCH_CALLERS: usize = 4;
    const SMALL_WRITES: usize = 2000;
    const AC_CALLERS: usize = 16;
    const AC_GETS_PER_CALLER: usize = 2000;
    const AC_ENTRIES: usize = 100;
    const FIND_MISSING: usize = 10_000;
    const FIND_MISSING_RUNS: usize = 30;

    /// Opens the engine and serves gRPC on loopback (call on the server runtime).
    pub async fn start(dir: &Path) -> Result<(Arc<Engine>, SocketAddr)> {
        let engine = Engine::open(
            EngineConfig::new(dir),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(grpc::serve_listener(
            hoard::store::stack::over_engine(engine.clone(), &Default::default()),
            GrpcConfig::default(),
            listener,
            std::future::pending(),
        ));
        Ok((engine, addr))
    }

    /// CPU time the server's threads used so far.
    fn server_cpu() -> Duration {
        let mut total = Duration::ZERO;
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return total;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if name.trim_end() != SERVER_THREAD {
                continue;
            }
            // schedstat's first field: nanoseconds on CPU.
            let nanos = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            total += Duration::from_nanos(nanos.unwrap_or(0));
        }
        total
    }

    /// Wall time and server CPU time of `work`.
    async fn measure<T>(work: impl std::future::Future<Output = T>) -> (T, Duration, Duration) {
        let (cpu, started) = (server_cpu(), Instant::now());
        let out = work.await;
        (out, started.elapsed(), server_cpu() - cpu)
    }

    fn row(what: &str, value: String, target: &str, detail: String) {
        println!("{what:<44} {value:>22}  {target:<14} {detail}");
    }

    fn throughput(what: &str, bytes: usize, elapsed: Duration, cpu: Duration, target: &str) {
        let mb = bytes as f64 / MIB;
        row(
            what,
            format!(
                "{:.0} MB/s {:.2} ms/MB",
                mb / elapsed.as_secs_f64(),
                cpu.as_secs_f64() * 1000.0 / mb
            ),
            target,
            format!(
                "({:.2} s wall, {:.2} s server CPU)",
                elapsed.as_secs_f64(),
                cpu.as_secs_f64()
            ),
        );
    }

    /// Which part of the benchmark runs (all by default; one alone, to profile it).
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Part {
        All,
        /// One 256 MiB blob.
        Large,
        /// Many 4 KiB blobs and action results.
        Small,
    }

    impl Part {
        /// The part named by the first argument (`large`, `small`; none: all).
        pub fn from_args() -> Result<Part> {
            match std::env::args().nth(1).as_deref() {
                None => Ok(Part::All),
                Some("large") => Ok(Part::Large),
                Some("small") => Ok(Part::Small),
                Some(other) => Err(format!("unknown part {other:?}: large or small").into()),
            }
        }

        fn runs(self, part: Part) -> bool {
            self == Part::All || self == part
        }
    }

    pub async fn run(
        engine: Arc<Engine>,
        addr: SocketAddr,
        server: Handle,
        part: Part,
    ) -> Result<()> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .connect()
            .await?;
        let limit = 64 << 20;
        let bytestream = ByteStreamClient::new(channel.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        println!("{:<44} {:>22}  {:<14}", "what", "measured", "target");
        if part.runs(Part::Large) {
            large(&engine, bytestream.clone(), &server).await?;
        }
        if part.runs(Part::Small) {
            small(&engine, channel, bytestream, &server).await?;
        }
        Ok(())
    }

    /// One 256 MiB blob: SHA-256 alone, the engine alone, ByteStream Write and Read.
    async fn large(
        engine: &Arc<Engine>,
        bytestream: ByteStreamClient<Channel>,
        server: &Handle,
    ) -> Result<()> {
        let big = pseudo_random(BIG);
        let started = Instant::now();
        let digest = Digest::of(&big);
        let elapsed = started.elapsed();
        row(
            "sha256, one core (the floor of CPU/MB)",
            format!(
                "{:.0} MB/s {:.2} ms/MB",
                BIG as f64 / MIB / elapsed.as_secs_f64(),
                elapsed.as_secs_f64() * 1000.0 / (BIG as f64 / MIB)
            ),
            "",
            String::new(),
        );

        // The same work without gRPC, to show what the front end adds.
        let direct = bytes::Bytes::from(pseudo_random_seeded(1, BIG));
        // Hashed here, not on the server: the server's CPU is the upload's alone.
        let direct_digest = Digest::of(&direct);
        let ((), elapsed, cpu) = measure(async {
            let (engine, direct) = (engine.clone(), direct.clone());
            server
                .spawn(async move {
                    let mut upload = engine.begin_upload(direct_digest).await?;
                    for at in (0..direct.len()).step_by(CHUNK) {
                        upload
                            .write(direct.slice(at..direct.len().min(at + CHUNK)))
                            .await?;
                    }
                    upload.commit().await
                })
                .await
                .expect("upload task")
                .expect("direct upload");
        })
        .await;
        throughput("engine upload (no gRPC), 256 MiB", BIG, elapsed, cpu, "");
        drop(direct);

        let (uploaded, elapsed, cpu) =
            measure(upload(bytestream.clone(), "big", &big, &digest)).await;
        uploaded?;
        throughput(
            "ByteStream.Write, 256 MiB, 1 MiB chunks",
            BIG,
            elapsed,
            cpu,
            ">=400, <=1.2",
        );

        let (read, elapsed, cpu) = measure(download(bytestream.clone(), &digest)).await;
        assert_eq!(read?, BIG);
        throughput("ByteStream.Read, 256 MiB", BIG, elapsed, cpu, "");
        Ok(())
    }

    /// 4 KiB blobs (engine puts, BatchUpdateBlobs, one Write each), action-cache hits on them,
    /// FindMissingBlobs.
    async fn small(
        engine: &Arc<Engine>,
        channel: Channel,
        bytestream: ByteStreamClient<Channel>,
        server: &Handle,
    ) -> Result<()> {
        let cas = ContentAddressableStorageClient::new(channel.clone());
        // The engine's part of a batch: the same puts without gRPC, as many at once as the batch
        // calls make.
        let engine_puts = BATCHES * SMALL_PER_BATCH;
        let ((), elapsed, cpu) = measure(async {
            let engine = engine.clone();
            server
                .spawn(async move {
                    futures::stream::iter(0..engine_puts)
                        .map(|i| {
                            let data =
                                bytes::Bytes::from(pseudo_random_seeded(2 << 40 | i as u64, SMALL));
                            let engine = engine.clone();
                            async move { engine.put_blob(Digest::of(&data), data).await }
                        })
                        .buffer_unordered(BATCH_CALLERS * 16)
                        .collect::<Vec<_>>()
                        .await
                        .into_iter()
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .await
                .expect("put task")
                .expect("engine puts");
        })
        .await;
        row(
            "engine put_blob, 4 KiB blobs (no gRPC)",
            format!("{:.0} blobs/s", engine_puts as f64 / elapsed.as_secs_f64()),
            "",
            format!(
                "({} at once, {:.1} us server CPU per blob)",
                BATCH_CALLERS * 16,
                cpu.as_secs_f64() * 1e6 / engine_puts as f64
            ),
        );

        let (batches, elapsed, cpu) = measure(
            futures::stream::iter(0..BATCHES)
                .map(|batch| batch_update(cas.clone(), batch))
                .buffer_unordered(BATCH_CALLERS)
                .collect::<Vec<_>>(),
        )
        .await;
        let stored: Vec<Digest> = batches
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let blobs = stored.len() as f64;
        row(
            "BatchUpdateBlobs, 4 KiB blobs",
            format!("{:.0} blobs/s", blobs / elapsed.as_secs_f64()),
            ">=40000",
            format!(
                "({BATCHES} calls of {SMALL_PER_BATCH}, {BATCH_CALLERS} callers, {:.1} us server CPU per blob)",
                cpu.as_secs_f64() * 1e6 / blobs
            ),
        );

        // Bazel sends every blob, however small, as its own ByteStream.Write.
        let (writes, elapsed, cpu) =
            measure(
                futures::stream::iter(0..SMALL_WRITES)
                    .map(|i| {
                        let data = pseudo_random_seeded(1 << 40 | i as u64, SMALL);
                        let client = bytestream.clone();
                        async move {
                            upload(client, &format!("small-{i}"), &data, &Digest::of(&data)).await
                        }
                    })
                    .buffer_unordered(32)
                    .collect::<Vec<_>>(),
            )
            .await;
        writes.into_iter().collect::<Result<Vec<_>>>()?;
        row(
            "ByteStream.Write, 4 KiB blobs, 32 in flight",
            format!(
                "{:.0} writes/s",
                SMALL_WRITES as f64 / elapsed.as_secs_f64()
            ),
            "",
            format!(
                "({:.1} us server CPU per write)",
                cpu.as_secs_f64() * 1e6 / SMALL_WRITES as f64
            ),
        );

        let ac = ActionCacheClient::new(channel.clone());
        let actions = store_actions(ac.clone(), &stored).await?;
        let (hits, elapsed, cpu) =
            measure(futures::future::join_all((0..AC_CALLERS).map(|caller| {
                let (ac, actions) = (ac.clone(), actions.clone());
                async move { get_actions(ac, &actions, caller).await }
            })))
            .await;
        let hits: usize = hits
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .sum();
        row(
            "GetActionResult hits, 16 callers",
            format!("{:.0} hits/s", hits as f64 / elapsed.as_secs_f64()),
            ">=20000",
            format!(
                "({hits} hits, {:.1} us server CPU per hit)",
                cpu.as_secs_f64() * 1e6 / hits as f64
            ),
        );

        // A build's FindMissingBlobs: mostly present, some not.
        let mut digests: Vec<Digest> = stored.iter().copied().take(FIND_MISSING * 9 / 10).collect();
        let absent = (0..).map(|i| Digest::of(format!("absent {i}").as_bytes()));
        digests.extend(absent.take(FIND_MISSING - digests.len()));
        let mut latencies = Vec::new();
        for _ in 0..FIND_MISSING_RUNS {
            let request = FindMissingBlobsRequest {
                blob_digests: digests
                    .iter()
                    .map(hoard::proto::reapi::Digest::from)
                    .collect(),
                ..Default::default()
            };
            let started = Instant::now();
            let missing = cas.clone().find_missing_blobs(request).await?;
            latencies.push(started.elapsed());
            assert_eq!(
                missing.into_inner().missing_blob_digests.len(),
                FIND_MISSING / 10
            );
        }
        latencies.sort();
        let started = Instant::now();
        let missing = engine.missing(&digests);
        let engine_elapsed = started.elapsed();
        assert_eq!(missing.len(), FIND_MISSING / 10);
        row(
            "FindMissingBlobs, 10k digests (90% present)",
            format!(
                "{:.2} ms median",
                latencies[latencies.len() / 2].as_secs_f64() * 1000.0
            ),
            "<5",
            format!(
                "(p90 {:.2} ms, {FIND_MISSING_RUNS} calls; the engine's lookups {:.2} ms)",
                latencies[latencies.len() * 9 / 10].as_secs_f64() * 1000.0,
                engine_elapsed.as_secs_f64() * 1000.0
            ),
        );
        Ok(())
    }

    async fn upload(
        mut client: ByteStreamClient<Channel>,
        uuid: &str,
        data: &[u8],
        digest: &Digest,
    ) -> Result<()> {
        let name = format!("uploads/{uuid}/blobs/{}/{}", digest.hex(), digest.size);
        let data = bytes::Bytes::copy_from_slice(data);
        let chunks = data.len().div_ceil(CHUNK).max(1);
        let requests = (0..chunks).map(move |i| {
            let start = i * CHUNK;
            let end = (start + CHUNK).min(data.len());
            WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: start as i64,
                finish_write: i == chunks - 1,
                data: data.slice(start..end),
            }
        });
        let committed = client
            .write(futures::stream::iter(requests))
            .await?
            .into_inner()
            .committed_size;
        assert_eq!(committed, digest.size as i64);
        Ok(())
    }

    async fn download(mut client: ByteStreamClient<Channel>, digest: &Digest) -> Result<usize> {
        let request = ReadRequest {
            resource_name: format!("blobs/{}/{}", digest.hex(), digest.size),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = client.read(request).await?.into_inner();
        let mut read = 0;
        while let Some(message) = stream.message().await? {
            read += message.data.len();
        }
        Ok(read)
    }

    /// One BatchUpdateBlobs call of distinct 4 KiB blobs; returns their digests.
    async fn batch_update(
        mut client: ContentAddressableStorageClient<Channel>,
        batch: usize,
    ) -> Result<Vec<Digest>> {
        let blobs: Vec<Vec<u8>> = (0..SMALL_PER_BATCH)
            .map(|i| pseudo_random_seeded((batch * SMALL_PER_BATCH + i) as u64, SMALL))
            .collect();
        let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
        let requests = blobs
            .into_iter()
            .zip(&digests)
            .map(|(data, digest)| batch_update_blobs_request::Request {
                digest: Some(hoard::proto::reapi::Digest::from(digest)),
                data: data.into(),
                compressor: 0,
            })
            .collect();
        let responses = client
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests,
                ..Default::default()
            })
            .await?
            .into_inner()
            .responses;
        assert!(responses
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)));
        Ok(digests)
    }

    /// Stores [`AC_ENTRIES`] action results, each naming a stored blob; returns their keys.
    async fn store_actions(
        mut client: ActionCacheClient<Channel>,
        blobs: &[Digest],
    ) -> Result<Arc<Vec<Digest>>> {
        let mut keys = Vec::new();
        for i in 0..AC_ENTRIES {
            let key = Digest::of(format!("action {i}").as_bytes());
            let result = ActionResult {
                output_files: vec![OutputFile {
                    path: format!("out/{i}"),
                    digest: Some(hoard::proto::reapi::Digest::from(&blobs[i % blobs.len()])),
                    ..Default::default()
                }],
                ..Default::default()
            };
            client
                .update_action_result(UpdateActionResultRequest {
                    action_digest: Some(hoard::proto::reapi::Digest::from(&key)),
                    action_result: Some(result),
                    ..Default::default()
                })
                .await?;
            keys.push(key);
        }
        Ok(Arc::new(keys))
    }

    /// [`AC_GETS_PER_CALLER`] hits, one call at a time; returns how many.
    async fn get_actions(
        mut client: ActionCacheClient<Channel>,
        keys: &[Digest],
        caller: usize,
    ) -> Result<usize> {
        for i in 0..AC_GETS_PER_CALLER {
            let key = &keys[(caller * 7 + i) % keys.len()];
            client
                .get_action_result(GetActionResultRequest {
                    action_digest: Some(hoard::proto::reapi::Digest::from(key)),
                    ..Default::default()
                })
                .await?;
        }
        Ok(AC_GETS_PER_CALLER)
    }

    fn pseudo_random(len: usize) -> Vec<u8> {
        pseudo_random_seeded(0, len)
    }

    /// splitmix64 bytes: incompressible and distinct per seed.
    fn pseudo_random_seeded(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
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
}
