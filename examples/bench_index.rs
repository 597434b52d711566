//! Memory and speed of the in-memory index at 1 M and 10 M blobs (plus 10% as many action-cache
//! entries): resident bytes per entry against the 64-byte target, build time, lookups per second;
//! then `Engine::missing` (FindMissingBlobs) for 10,000 digests, half of them stored.
//!
//! Run: `cargo run --release --example bench_index` (`-- 1000000` for the 1 M round only). The
//! engine part uses a temp dir under `/dev/shm` when it exists (this measures the index, not the
//! disk), else under `$TMPDIR`.

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rounds: Vec<usize> = match std::env::args().nth(1) {
        Some(n) => vec![n.parse()?],
        None => vec![1_000_000, 10_000_000],
    };
    for blobs in rounds {
        bench::index_round(blobs);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::find_missing())
}

#[cfg(not(madsim))]
mod bench {
    use std::sync::Arc;
    use std::time::Instant;

    use hoard::engine::index::{Entry, Index};
    use hoard::engine::{
        AcKind, Digest, DigestFunction, Engine, EngineConfig, Location, RecordKey,
    };
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// What the issue asks of the index: resident bytes per indexed entry at 10 M entries.
    const TARGET_BYTES_PER_ENTRY: f64 = 64.0;
    const LOOKUPS: usize = 1_000_000;
    const INSTANCES: [&str; 3] = ["", "main/linux", "main/macos"];

    /// splitmix64: a deterministic stream of well-mixed words.
    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A synthetic 32-byte hash, distinct for every `(stream, i)`.
    fn hash(stream: u64, i: u64) -> [u8; 32] {
        let mut out = [0; 32];
        for (k, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(mix(stream << 40 ^ i) ^ k as u64).to_le_bytes());
        }
        out
    }

    fn digest(i: u64) -> Digest {
        Digest::sha256(hash(1, i), 1 + mix(i) % (1 << 20))
    }

    /// Where synthetic record `i` of `len` bytes would live: 4,096 records a segment.
    fn entry(i: u64, len: u64, sha256: [u8; 32]) -> Entry {
        Entry {
            location: Location {
                segment: (i / 4096) as u32,
                offset: 1 + (i % 4096) * 300_000,
                len,
            },
            sha256,
            verified: !i.is_multiple_of(3),
            referenced: false,
        }
    }

    /// Resident set size of this process, from `/proc/self/status`.
    pub fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    fn per_second(count: usize, started: Instant) -> f64 {
        count as f64 / started.elapsed().as_secs_f64()
    }

    pub fn index_round(blobs: usize) {
        let actions = blobs / 10;
        let before = rss_bytes();
        let started = Instant::now();
        let mut index = Index::default();
        // The table's bytes per blob swing as it fills and grows: the worst of the second half.
        let mut worst_table_per_blob: f64 = 0.0;
        for i in 0..blobs as u64 {
            let d = digest(i);
            index.insert(RecordKey::Blob(d), entry(i, d.size, d.hash));
            if i >= blobs as u64 / 2 {
                let per_blob = index.table_bytes() as f64 / (i + 1) as f64;
                worst_table_per_blob = worst_table_per_blob.max(per_blob);
            }
        }
        let blobs_built = started.elapsed();
        let blob_rss = rss_bytes().saturating_sub(before);
        let blob_table = index.table_bytes();
        for i in 0..actions as u64 {
            let key = RecordKey::Action {
                instance: INSTANCES[i as usize % INSTANCES.len()].to_owned(),
                function: DigestFunction::Sha256,
                action: hash(2, i),
                kind: AcKind::ActionResult,
            };
            index.insert(key, entry(i, 100 + i % 4000, hash(3, i)));
        }
        let built = started.elapsed();
        let total_rss = rss_bytes().saturating_sub(before);
        let total_table = index.table_bytes();
        let entries = (blobs + actions) as f64;

        // Lookups of stored blobs (spread over the whole table), then of absent ones.
        let started = Instant::now();
        let mut found = 0;
        for k in 0..LOOKUPS as u64 {
            let i = mix(k ^ 0xABCD) % blobs as u64;
            found += index.touch_blob(&digest(i)).is_some() as usize;
        }
        let hits_per_s = per_second(LOOKUPS, started);
        assert_eq!(found, LOOKUPS, "every stored blob is found");
        let started = Instant::now();
        for k in 0..LOOKUPS as u64 {
            found += index.touch_blob(&digest(blobs as u64 + k)).is_some() as usize;
        }
        let misses_per_s = per_second(LOOKUPS, started);
        assert_eq!(found, LOOKUPS, "no absent blob is found");
        let started = Instant::now();
        for k in 0..LOOKUPS as u64 {
            let i = mix(k ^ 0x1234) % blobs as u64;
            found += index
                .blob_by_hash(DigestFunction::Sha256, &hash(1, i))
                .is_some() as usize;
        }
        let by_hash_per_s = per_second(LOOKUPS, started);
        let started = Instant::now();
        for k in 0..LOOKUPS as u64 {
            let i = mix(k ^ 0x5678) % actions as u64;
            let instance = INSTANCES[i as usize % INSTANCES.len()];
            found += index
                .touch_action(DigestFunction::Sha256, instance, &hash(2, i))
                .is_some() as usize;
        }
        let actions_per_s = per_second(LOOKUPS, started);
        assert_eq!(found, 3 * LOOKUPS, "every stored key is found");
        let stats = index.stats();
        assert_eq!((stats.blobs, stats.actions), (blobs as u64, actions as u64));
        drop(index);

        println!("--- index with {blobs} blobs + {actions} action-cache entries");
        println!(
            "build: {:.2} s ({:.2} s for the blobs), {:.2} M inserts/s",
            built.as_secs_f64(),
            blobs_built.as_secs_f64(),
            entries / built.as_secs_f64() / 1e6
        );
        println!(
            "RSS: {:.1} MiB total, {:.1} bytes/entry over all entries (target {TARGET_BYTES_PER_ENTRY}: {}); blobs alone {:.1} bytes/blob",
            total_rss as f64 / (1 << 20) as f64,
            total_rss as f64 / entries,
            if total_rss as f64 / entries <= TARGET_BYTES_PER_ENTRY { "met" } else { "MISSED" },
            blob_rss as f64 / blobs as f64,
        );
        println!(
            "tables: {:.1} bytes/entry over all entries, blobs alone {:.1} bytes/blob, at worst {:.1} bytes/blob over the last half of the build (the rest of the RSS is the allocator's)",
            total_table as f64 / entries,
            blob_table as f64 / blobs as f64,
            worst_table_per_blob,
        );
        println!(
            "lookups: {:.2} M/s stored blobs, {:.2} M/s absent blobs, {:.2} M/s by hash, {:.2} M/s action-cache",
            hits_per_s / 1e6,
            misses_per_s / 1e6,
            by_hash_per_s / 1e6,
            actions_per_s / 1e6
        );
    }

    /// `Engine::missing` (what FindMissingBlobs calls) for 10,000 digests, half of them stored.
    pub async fn find_missing() -> Result<()> {
        const DIGESTS: usize = 10_000;
        const ROUNDS: usize = 20;
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await?;
        let blobs: Vec<bytes::Bytes> = (0..DIGESTS as u64)
            .map(|i| bytes::Bytes::from(format!("blob {i}").into_bytes()))
            .collect();
        let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
        // Store every other one, many at a time so they share fsyncs.
        for chunk in blobs
            .iter()
            .zip(&digests)
            .step_by(2)
            .collect::<Vec<_>>()
            .chunks(500)
        {
            let puts = chunk
                .iter()
                .map(|(b, d)| engine.put_blob(**d, (*b).clone()));
            for put in futures::future::join_all(puts).await {
                put?;
            }
        }
        let mut best = f64::MAX;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let missing = engine.missing(&digests);
            best = best.min(started.elapsed().as_secs_f64());
            assert_eq!(missing.len(), DIGESTS / 2);
        }
        println!("--- FindMissingBlobs");
        println!(
            "Engine::missing of {DIGESTS} digests (half stored): {:.3} ms (best of {ROUNDS}; target < 5 ms)",
            best * 1e3
        );
        Ok(())
    }
}
