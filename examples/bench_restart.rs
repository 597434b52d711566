//! Restart time at scale: seconds from `Engine::open` to the first answer, and resident memory
//! per index entry, for data directories of N records each (default 1 M and 10 M blobs, plus a
//! tenth as many action-cache entries), next to issue 17's targets (1 s at 1 M, 10 s at 10 M,
//! 64 bytes per entry).
//!
//! Run: `cargo run --release --example bench_restart [-- RECORDS...]` (each data directory is a
//! temp dir under `$TMPDIR`, about 160 bytes a record, removed after its run; set `TMPDIR` to
//! bench another disk).
//!
//! The records are synthetic and written straight into sealed segment files through the `Fs`
//! seam with the engine's own record and footer encoders (`hoard::engine::record`), exactly as
//! the segment writer lays them out: going through a million uploads would time the write path,
//! not the restart. The second start measures a data directory whose newest segment was left
//! unsealed (a kill -9), so its tail is scanned and re-hashed. The page cache is warm (the files
//! were just written); nothing is asserted, the numbers are printed.

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As `hoard serve` does, so the memory measured is the server's.
    hoard::seam::return_large_buffers_at_once();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::run())
}

#[cfg(not(madsim))]
mod bench {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use hoard::engine::record::{encode_header, FooterBuilder, RecordKey};
    use hoard::engine::{AcKind, Digest, Engine, EngineConfig};
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::{Fs, TokioRuntime};
    use sha2::{Digest as _, Sha256};

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    /// Segment size of the synthetic data directory. Smaller than the engine's default (256 MiB)
    /// because the synthetic records are tiny: a real cache of a million entries has many
    /// segments, and only its newest is ever unsealed.
    const SEGMENT_SIZE: u64 = 32 << 20;
    /// Payload bytes per synthetic blob (the index cost per entry does not depend on it).
    const BLOB_LEN: usize = 64;

    fn payload(i: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; BLOB_LEN];
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        bytes
    }

    fn key(i: u64, blobs: u64) -> (RecordKey, Vec<u8>) {
        let data = payload(i);
        if i < blobs {
            (RecordKey::Blob(Digest::of(&data)), data)
        } else {
            let action = Sha256::digest(format!("action {i}")).into();
            let key = RecordKey::Action {
                instance: String::new(),
                function: hoard::engine::DigestFunction::Sha256,
                action,
                kind: AcKind::Opaque,
            };
            (key, data)
        }
    }

    /// Writes `records` records into segments of about [`SEGMENT_SIZE`] bytes, sealing each
    /// with a footer, except the last when `unsealed_tail`.
    async fn write_segments(
        dir: &Path,
        records: u64,
        blobs: u64,
        unsealed_tail: bool,
    ) -> Result<()> {
        let fs = RealFs;
        let segments = dir.join("segments");
        fs.create_dir_all(&segments).await?;
        let (mut id, mut i) = (1u32, 0u64);
        while i < records {
            let mut bytes = Vec::with_capacity(SEGMENT_SIZE as usize);
            let mut footer = FooterBuilder::default();
            while i < records && (bytes.len() as u64) < SEGMENT_SIZE {
                let (key, data) = key(i, blobs);
                let sha: [u8; 32] = Sha256::digest(&data).into();
                let header = encode_header(&key, data.len() as u64, &sha);
                bytes.extend_from_slice(&header);
                footer.push(&key, bytes.len() as u64, data.len() as u64, &sha);
                bytes.extend_from_slice(&data);
                i += 1;
            }
            if !(unsealed_tail && i == records) {
                let sealed = footer.finish(bytes.len() as u64);
                bytes.extend_from_slice(&sealed);
            }
            let mut file = fs.create(&segments.join(format!("{id:010}.seg"))).await?;
            file.write(&bytes).await?;
            file.sync().await?;
            file.close().await?;
            id += 1;
        }
        fs.sync_dir(&segments).await?;
        Ok(())
    }

    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// What one restart measured.
    struct Restart {
        seconds: f64,
        bytes_per_entry: f64,
    }

    async fn restart(dir: &Path, records: u64, label: &str) -> Result<Restart> {
        let rss_before = rss_bytes();
        let started = Instant::now();
        let config = EngineConfig::new(dir);
        let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime)).await?;
        let first = Digest::of(&payload(0));
        let data = engine.read_blob(&first, 0, first.size).await?;
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(data, payload(0), "the first answer is right");
        let rss = rss_bytes().saturating_sub(rss_before);
        let stats = engine.stats();
        println!(
            "{label}: {records} records ({} blobs, {} actions): open to first answer {seconds:.2} s, \
             RSS {:.0} MiB = {:.0} bytes per entry",
            stats.blobs,
            stats.actions,
            rss as f64 / (1 << 20) as f64,
            rss as f64 / records as f64
        );
        engine.shutdown().await;
        Ok(Restart {
            seconds,
            bytes_per_entry: rss as f64 / records as f64,
        })
    }

    /// The restart target of issue 17 for a cache of `blobs` blobs: 1 s at 1 M, 10 s at 10 M.
    fn target_seconds(blobs: u64) -> f64 {
        blobs as f64 / 1e6
    }

    pub async fn run() -> Result<()> {
        let mut counts: Vec<u64> = std::env::args()
            .skip(1)
            .map(|n| n.parse())
            .collect::<std::result::Result<_, _>>()?;
        if counts.is_empty() {
            counts = vec![1_100_000, 11_000_000];
        }
        // A first engine on an empty directory starts the runtime's threads and the allocator's
        // arenas, so the first measured start is charged for its entries alone.
        let empty = tempfile::tempdir()?;
        Engine::open(
            EngineConfig::new(empty.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await?
        .shutdown()
        .await;
        let mut summary = Vec::new();
        for records in counts {
            summary.push((records, bench_one(records).await?));
        }
        println!(
            "\nsummary (target: clean restart within 1 s per million blobs, 64 bytes per entry):"
        );
        for (records, [clean, killed]) in summary {
            let blobs = records * 10 / 11;
            println!(
                "  {records:>10} records: clean {:.2} s (target {:.0} s, {}), after a kill {:.2} s, \
                 {:.0} bytes per entry ({})",
                clean.seconds,
                target_seconds(blobs),
                verdict(clean.seconds <= target_seconds(blobs)),
                killed.seconds,
                clean.bytes_per_entry,
                verdict(clean.bytes_per_entry <= 64.0)
            );
        }
        Ok(())
    }

    fn verdict(met: bool) -> &'static str {
        if met {
            "met"
        } else {
            "MISSED"
        }
    }

    /// A clean restart and a restart after a kill, of a directory of `records` records each.
    async fn bench_one(records: u64) -> Result<[Restart; 2]> {
        let blobs = records * 10 / 11;
        let mut results = Vec::new();
        for unsealed_tail in [false, true] {
            let dir = tempfile::tempdir()?;
            let began = Instant::now();
            write_segments(dir.path(), records, blobs, unsealed_tail).await?;
            println!(
                "wrote {records} records in {:.1} s{}",
                began.elapsed().as_secs_f64(),
                if unsealed_tail {
                    ", the last segment unsealed"
                } else {
                    ""
                }
            );
            let label = if unsealed_tail {
                "restart after a kill (unsealed tail)"
            } else {
                "restart after a clean shutdown"
            };
            results.push(restart(dir.path(), records, label).await?);
        }
        let [clean, killed] = <[Restart; 2]>::try_from(results).map_err(|_| "two restarts")?;
        Ok([clean, killed])
    }
}
