//! Throughput of the gRPC front end over loopback, next to the machine's SHA-256 speed (every
//! byte written is hashed at least once, so that is the ceiling to compare against).
//!
//! Run: `cargo run --release --example bench_grpc` (the data directory is a temp dir under
//! `$TMPDIR`; set `TMPDIR` to bench another disk).

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::run())
}

#[cfg(not(madsim))]
mod bench {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use hoard::engine::{Digest, Engine, EngineConfig};
    use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
    use hoard::proto::bytestream::{ReadRequest, WriteRequest};
    use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use hoard::proto::reapi::{batch_update_blobs_request, BatchUpdateBlobsRequest};
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;
    use hoard::wire::grpc::{self, GrpcConfig};
    use tonic::transport::Channel;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    const MIB: f64 = (1 << 20) as f64;
    const BIG: usize = 256 << 20;
    const CHUNK: usize = 1 << 20;
    const SMALL: usize = 4 << 10;
    const SMALL_PER_BATCH: usize = 256;
    const BATCHES: usize = 40;
    const SMALL_WRITES: usize = 2000;

    pub async fn run() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
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
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .connect()
            .await?;
        let limit = 64 << 20;
        let bytestream = ByteStreamClient::new(channel.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let cas = ContentAddressableStorageClient::new(channel);

        let big = pseudo_random(BIG);
        let started = Instant::now();
        let digest = Digest::of(&big);
        report("sha256, one core", BIG, started.elapsed());

        // The same work without gRPC, to show what the front end adds.
        let direct = pseudo_random_seeded(1, BIG);
        let direct_digest = Digest::of(&direct);
        let started = Instant::now();
        let mut staged = engine.begin_upload(direct_digest).await?;
        for chunk in direct.chunks(CHUNK) {
            staged.write(chunk).await?;
        }
        staged.commit().await?;
        report("engine upload (no gRPC), 256 MiB", BIG, started.elapsed());
        drop(direct);

        let started = Instant::now();
        upload(bytestream.clone(), "big", &big, &digest).await?;
        report(
            "ByteStream.Write, 256 MiB blob, 1 MiB chunks",
            BIG,
            started.elapsed(),
        );

        let started = Instant::now();
        let read = download(bytestream.clone(), &digest).await?;
        report("ByteStream.Read, 256 MiB blob", read, started.elapsed());
        assert_eq!(read, BIG);

        let started = Instant::now();
        for batch in 0..BATCHES {
            batch_update(cas.clone(), batch).await?;
        }
        let blobs = BATCHES * SMALL_PER_BATCH;
        let elapsed = started.elapsed();
        println!(
            "{:<48} {:>10.0} blobs/s ({} calls of {SMALL_PER_BATCH} x 4 KiB, {:.2} s)",
            "BatchUpdateBlobs, 4 KiB blobs, one client",
            blobs as f64 / elapsed.as_secs_f64(),
            BATCHES,
            elapsed.as_secs_f64()
        );

        // Bazel sends every blob, however small, as its own ByteStream.Write.
        let started = Instant::now();
        futures::stream::iter(0..SMALL_WRITES)
            .map(|i| {
                let data = pseudo_random_seeded(1 << 40 | i as u64, SMALL);
                let client = bytestream.clone();
                async move { upload(client, &format!("small-{i}"), &data, &Digest::of(&data)).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let elapsed = started.elapsed();
        println!(
            "{:<48} {:>10.0} writes/s ({SMALL_WRITES} writes, 32 in flight, {:.2} s)",
            "ByteStream.Write, 4 KiB blobs",
            SMALL_WRITES as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        Ok(())
    }

    fn report(what: &str, bytes: usize, elapsed: Duration) {
        println!(
            "{what:<48} {:>10.0} MB/s ({:.2} s)",
            bytes as f64 / MIB / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
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

    async fn batch_update(
        mut client: ContentAddressableStorageClient<Channel>,
        batch: usize,
    ) -> Result<()> {
        let requests = (0..SMALL_PER_BATCH)
            .map(|i| {
                let data = pseudo_random_seeded((batch * SMALL_PER_BATCH + i) as u64, SMALL);
                batch_update_blobs_request::Request {
                    digest: Some(hoard::proto::reapi::Digest {
                        hash: Digest::of(&data).hex(),
                        size_bytes: SMALL as i64,
                    }),
                    data: data.into(),
                    compressor: 0,
                }
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
        Ok(())
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
