#![cfg(not(madsim))]
//! Engine round trips on the real filesystem.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hoard::engine::{AcKind, Digest, DigestFunction, Engine, EngineConfig, Error};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    // Small enough that tests exercise both staging paths and segment rolls.
    config.memory_stage_limit = 4096;
    config.segment_size = 1 << 20;
    config
}

async fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(config(dir), Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .expect("engine opens")
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
fn blob(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(engine: &Engine, digest: &Digest) -> Bytes {
    engine
        .read_blob(digest, 0, digest.size)
        .await
        .expect("blob reads")
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Flips a byte inside the payload of the record holding `data` in `segment`.
fn corrupt_payload(segment: &Path, data: &[u8]) {
    let mut bytes = std::fs::read(segment).unwrap();
    let at = bytes
        .windows(data.len())
        .position(|w| w == data)
        .expect("payload in segment");
    bytes[at + data.len() / 2] ^= 0xff;
    std::fs::write(segment, bytes).unwrap();
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[tokio::test]
async fn blobs_round_trip_through_memory_and_temp_file_staging() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    for (seed, len) in [(1, 10), (2, 4096), (3, 4097), (4, 3 << 20)] {
        let data = blob(seed, len);
        let digest = Digest::of(&data);
        engine.put_blob(digest, data.clone()).await.unwrap();
        assert!(engine.contains(&digest));
        assert_eq!(read_all(&engine, &digest).await, data);
        assert_eq!(
            engine.read_blob(&digest, 3, 5).await.unwrap(),
            data.slice(3..8)
        );
    }
    assert!(engine.contains(&Digest::EMPTY));
    assert_eq!(read_all(&engine, &Digest::EMPTY).await, Bytes::new());
    // Every staged temp file is gone once its commit returns.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test]
async fn wrong_hash_short_and_long_uploads_are_rejected_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    for len in [100, 10_000] {
        let data = blob(7, len);
        let digest = Digest::of(&data);

        let wrong = Digest::sha256(Digest::of(b"other").hash, digest.size);
        let err = engine.put_blob(wrong, data.clone()).await.unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");

        let mut short = engine.begin_upload(digest).await.unwrap();
        short.write(&data[..len - 1]).await.unwrap();
        let err = short.commit().await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");

        let mut long = engine.begin_upload(digest).await.unwrap();
        long.write(&data).await.unwrap();
        let err = long.write(b"x").await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        drop(long);

        assert!(!engine.contains(&digest));
        assert!(!engine.contains(&wrong));
    }
    assert_eq!(engine.stats().blobs, 0);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(temp_files(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_digest_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let data = blob(11, 50_000);
    let digest = Digest::of(&data);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (engine, data) = (engine.clone(), data.clone());
            tokio::spawn(async move { engine.put_blob(digest, data).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("every writer succeeds");
    }
    assert_eq!(engine.stats().blobs, 1);
    assert_eq!(engine.stats().blob_bytes, 50_000);
    assert_eq!(read_all(&engine, &digest).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_distinct_uploads_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let blobs: Vec<Bytes> = (0..500u64)
        .map(|i| blob(1000 + i, 100 + (i as usize * 7919) % 200_000))
        .collect();
    let tasks: Vec<_> = blobs
        .iter()
        .map(|data| {
            let (engine, data) = (engine.clone(), data.clone());
            tokio::spawn(async move {
                let digest = Digest::of(&data);
                let mut upload = engine.begin_upload(digest).await?;
                for chunk in data.chunks(16 * 1024) {
                    upload.write(chunk).await?;
                }
                upload.commit().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("upload succeeds");
    }
    for data in &blobs {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, *data);
    }
    assert_eq!(engine.stats().blobs, 500);
}

#[tokio::test]
async fn a_restart_recovers_every_acknowledged_blob_and_action() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Bytes> = (0..40u64)
        .map(|i| blob(i, 1 + (i as usize) * 9000))
        .collect();
    let action = Digest::of(b"some action");
    {
        let engine = open(dir.path()).await;
        for data in &blobs {
            engine
                .put_blob(Digest::of(data), data.clone())
                .await
                .unwrap();
        }
        let puts = [
            ("", AcKind::ActionResult, "first"),
            ("", AcKind::Opaque, "second"),
            ("other", AcKind::ActionResult, "third"),
        ];
        for (instance, kind, value) in puts {
            let value = Bytes::from_static(value.as_bytes());
            engine
                .put_action(instance, action.function, action.hash, kind, value)
                .await
                .unwrap();
        }
    }
    let engine = open(dir.path()).await;
    for data in &blobs {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, *data);
    }
    assert_eq!(engine.stats().blobs, 40);
    // Last writer wins, per instance and whatever the kinds, across the restart.
    assert_eq!(
        engine
            .get_action("", action.function, &action.hash)
            .await
            .unwrap(),
        Some((AcKind::Opaque, Bytes::from_static(b"second")))
    );
    assert_eq!(
        engine
            .get_action("other", action.function, &action.hash)
            .await
            .unwrap(),
        Some((AcKind::ActionResult, Bytes::from_static(b"third")))
    );
    assert_eq!(
        engine
            .get_action("nope", action.function, &action.hash)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_torn_segment_tail_recovers_to_the_last_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let kept = blob(1, 5000);
    let torn = blob(2, 5000);
    let segment = {
        let engine = open(dir.path()).await;
        engine
            .put_blob(Digest::of(&kept), kept.clone())
            .await
            .unwrap();
        engine
            .put_blob(Digest::of(&torn), torn.clone())
            .await
            .unwrap();
        dir.path().join("segments").join(format!("{:010}.seg", 1))
    };
    // Cut the second record in half, as a crash before its sync could leave it.
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 2500).unwrap();
    drop(file);

    let engine = open(dir.path()).await;
    assert_eq!(read_all(&engine, &Digest::of(&kept)).await, kept);
    assert!(!engine.contains(&Digest::of(&torn)));
    // The torn tail was cut off (two equal records, the second gone) and the segment sealed
    // with a footer; the log goes on in a new segment.
    let bytes = std::fs::read(&segment).unwrap();
    assert!(bytes.len() as u64 > len / 2 && (bytes.len() as u64) < len);
    assert_eq!(&bytes[bytes.len() - 24..bytes.len() - 20], b"HTL\x02");
    assert!(!engine.contains(&Digest::of(&torn)));
    engine
        .put_blob(Digest::of(&torn), torn.clone())
        .await
        .unwrap();
    assert_eq!(read_all(&engine, &Digest::of(&torn)).await, torn);
}

#[tokio::test]
async fn corrupt_payload_in_an_unsealed_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let good = blob(1, 3000);
    let bad = blob(2, 3000);
    {
        let engine = open(dir.path()).await;
        engine
            .put_blob(Digest::of(&good), good.clone())
            .await
            .unwrap();
        engine
            .put_blob(Digest::of(&bad), bad.clone())
            .await
            .unwrap();
    }
    // Flip a byte inside the last payload: the header still parses, the bytes do not hash.
    let segment = dir.path().join("segments").join(format!("{:010}.seg", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let engine = open(dir.path()).await;
    assert_eq!(read_all(&engine, &Digest::of(&good)).await, good);
    assert!(!engine.contains(&Digest::of(&bad)));
}

#[tokio::test]
async fn a_second_engine_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path()).await;
    let err = Engine::open(config(dir.path()), Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .err()
        .expect("second open fails");
    assert!(
        err.to_string().contains("in use by another hoard process"),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_uploads_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_blob_size = 100_000;
    config.max_size = Some(150_000);
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    // Over the blob limit.
    let big = blob(1, 100_001);
    let err = engine.begin_upload(Digest::of(&big)).await.err().unwrap();
    assert!(
        matches!(err, Error::TooLarge { limit: 100_000, .. }),
        "{err}"
    );
    // Under it, but more than half the budget: eviction could never make room.
    let half = blob(2, 80_000);
    let err = engine.begin_upload(Digest::of(&half)).await.err().unwrap();
    assert!(
        matches!(err, Error::TooLarge { limit: 75_000, .. }),
        "{err}"
    );
    let fits = blob(3, 60_000);
    engine.put_blob(Digest::of(&fits), fits).await.unwrap();
}

#[tokio::test]
async fn eviction_keeps_the_disk_within_budget_and_spares_recently_used_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_size = Some(2 << 20);
    config.segment_size = 256 << 10;
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    let hot = blob(1, 50_000);
    engine
        .put_blob(Digest::of(&hot), hot.clone())
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..200u64 {
        let data = blob(100 + i, 30_000);
        engine
            .put_blob(Digest::of(&data), data.clone())
            .await
            .unwrap();
        written.push(data);
        // Bazel asks FindMissingBlobs about what it is going to reference: that keeps it.
        assert!(engine.missing(&[Digest::of(&hot)]).is_empty(), "round {i}");
        let stats = engine.stats();
        assert!(
            stats.disk_bytes <= (2 << 20) + (256 << 10),
            "disk {} over budget plus one segment",
            stats.disk_bytes
        );
    }
    let stats = engine.stats();
    assert!(stats.evictions > 0, "6 MB through a 2 MB cache evicts");
    assert_eq!(read_all(&engine, &Digest::of(&hot)).await, hot);
    // The newest blobs are all there; the oldest untouched ones went first.
    for data in &written[190..] {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, *data);
    }
    assert!(!engine.contains(&Digest::of(&written[0])));
    // What is left is consistent across a restart.
    let present: Vec<Bytes> = written
        .iter()
        .filter(|d| engine.contains(&Digest::of(d)))
        .cloned()
        .collect();
    drop(engine);
    let engine = open(dir.path()).await;
    for data in &present {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, *data);
    }
}

#[tokio::test]
async fn a_read_in_progress_survives_the_eviction_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_size = Some(1 << 20);
    config.segment_size = 128 << 10;
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    let victim = blob(7, 100_000);
    let digest = Digest::of(&victim);
    engine.put_blob(digest, victim.clone()).await.unwrap();
    let mut reader = engine.open_blob(&digest, 0).unwrap();
    let first = reader.next_chunk(10_000).await.unwrap().unwrap();
    for i in 0..60u64 {
        let data = blob(1000 + i, 60_000);
        engine.put_blob(Digest::of(&data), data).await.unwrap();
    }
    assert!(!engine.contains(&digest), "evicted meanwhile");
    let mut read = first.to_vec();
    while let Some(chunk) = reader.next_chunk(10_000).await.unwrap() {
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, victim);
}

#[tokio::test]
async fn open_and_close_cycles_leave_no_empty_segments_and_a_clean_restart_rehashes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(5, 10_000);
    let digest = Digest::of(&data);
    {
        let engine = open(dir.path()).await;
        engine.put_blob(digest, data.clone()).await.unwrap();
        engine.shutdown().await;
    }
    let sealed = segment_files(dir.path());
    assert_eq!(sealed, ["0000000001.seg"]);
    // Clean shutdowns and kills with nothing written leave the set of segments as it was.
    for round in 0..5 {
        let engine = open(dir.path()).await;
        assert_eq!(read_all(&engine, &digest).await, data, "round {round}");
        if round % 2 == 0 {
            engine.shutdown().await;
        }
        drop(engine);
        assert_eq!(segment_files(dir.path()), sealed, "round {round}");
    }
    // The sealed segment's footer is trusted: a start re-hashes nothing, so a payload corrupted
    // behind its back is still indexed (a re-hash would have dropped it), and the read that
    // verifies it refuses the bytes.
    corrupt_payload(&dir.path().join("segments").join(&sealed[0]), &data);
    let engine = open(dir.path()).await;
    assert!(engine.contains(&digest), "recovery trusted the footer");
    let err = engine.read_blob(&digest, 0, digest.size).await.unwrap_err();
    assert!(matches!(err, Error::DataLoss(_)), "{err}");
    assert!(!engine.contains(&digest));
}

#[tokio::test]
async fn blake3_blobs_and_actions_are_kept_apart_from_sha256_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let small = blob(21, 1000);
    let staged = blob(22, 50_000);
    let corrupt = blob(23, 20_000);
    let b3 = |data: &Bytes| Digest::of_with(DigestFunction::Blake3, data);
    let action = Digest::of(b"an action").hash;
    {
        let engine = open(dir.path()).await;
        for data in [&small, &staged] {
            engine.put_blob(b3(data), data.clone()).await.unwrap();
        }
        // A SHA-256 hash labelled BLAKE3 is not that blob's digest.
        let relabelled = Digest::new(DigestFunction::Blake3, Digest::of(&small).hash, 1000);
        let err = engine
            .put_blob(relabelled, small.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
        assert!(
            !engine.contains(&Digest::of(&small)),
            "stored as BLAKE3 only"
        );
        for (function, value) in [
            (DigestFunction::Blake3, "b3"),
            (DigestFunction::Sha256, "sha"),
        ] {
            let value = Bytes::from_static(value.as_bytes());
            engine
                .put_action("i", function, action, AcKind::ActionResult, value)
                .await
                .unwrap();
        }
        // Last, so the scan that cuts it keeps everything before it.
        engine
            .put_blob(b3(&corrupt), corrupt.clone())
            .await
            .unwrap();
        // Dropped without shutdown: the restart scans and re-hashes each record by its function.
    }
    let segment = dir.path().join("segments").join("0000000001.seg");
    corrupt_payload(&segment, &corrupt);
    for pass in ["scanned", "from the footer"] {
        let engine = open(dir.path()).await;
        assert_eq!(read_all(&engine, &b3(&small)).await, small, "{pass}");
        assert_eq!(read_all(&engine, &b3(&staged)).await, staged, "{pass}");
        assert!(!engine.contains(&b3(&corrupt)), "{pass}: cut by the scan");
        assert!(!engine.contains(&Digest::of(&staged)), "{pass}");
        assert_eq!(
            engine.blob_by_hash(DigestFunction::Blake3, &b3(&small).hash),
            Some(b3(&small))
        );
        assert_eq!(
            engine.blob_by_hash(DigestFunction::Sha256, &b3(&small).hash),
            None
        );
        for (function, value) in [
            (DigestFunction::Blake3, "b3"),
            (DigestFunction::Sha256, "sha"),
        ] {
            let got = engine.get_action("i", function, &action).await.unwrap();
            assert_eq!(
                got.unwrap().1,
                Bytes::from_static(value.as_bytes()),
                "{pass}"
            );
        }
        engine.shutdown().await;
    }
    // A stored BLAKE3 blob whose bytes rot after the seal is refused at its first read.
    corrupt_payload(&segment, &staged);
    let engine = open(dir.path()).await;
    let err = engine
        .read_blob(&b3(&staged), 0, staged.len() as u64)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DataLoss(_)), "{err}");
    assert!(!engine.contains(&b3(&staged)));
}

#[tokio::test]
async fn a_killed_engine_is_verified_once_and_then_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let kept = blob(8, 10_000);
    let corrupt = blob(9, 10_000);
    {
        let engine = open(dir.path()).await;
        for data in [&kept, &corrupt] {
            engine
                .put_blob(Digest::of(data), data.clone())
                .await
                .unwrap();
        }
        // Dropped without shutdown: the segment is left unsealed, as after kill -9.
    }
    let segment = dir.path().join("segments").join("0000000001.seg");
    corrupt_payload(&segment, &corrupt);
    {
        let engine = open(dir.path()).await;
        assert_eq!(read_all(&engine, &Digest::of(&kept)).await, kept);
        assert!(!engine.contains(&Digest::of(&corrupt)), "re-hashed and cut");
    }
    assert_eq!(segment_files(dir.path()), ["0000000001.seg"]);
    // Sealed by that recovery: the next start trusts its footer.
    corrupt_payload(&segment, &kept);
    let engine = open(dir.path()).await;
    assert!(
        engine.contains(&Digest::of(&kept)),
        "trusted from the footer"
    );
}

#[tokio::test]
async fn a_corrupt_footer_falls_back_to_scanning_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Bytes> = (0..5).map(|i| blob(20 + i, 3000)).collect();
    {
        let engine = open(dir.path()).await;
        for data in &blobs {
            engine
                .put_blob(Digest::of(data), data.clone())
                .await
                .unwrap();
        }
        engine.shutdown().await;
    }
    let segment = dir.path().join("segments").join("0000000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte inside the footer's entries, and one payload byte of the last blob.
    let footer_byte = bytes.len() - 24 - 40;
    bytes[footer_byte] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    corrupt_payload(&segment, &blobs[4]);
    let engine = open(dir.path()).await;
    // The footer failed its CRC, so the segment was scanned and re-hashed: the corrupt record
    // was cut, and every other one is served.
    for data in &blobs[..4] {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, *data);
    }
    assert!(!engine.contains(&Digest::of(&blobs[4])));
}

#[tokio::test]
async fn a_newer_segment_format_is_refused_with_its_file_and_version() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path()).await;
        let data = blob(30, 100);
        engine.put_blob(Digest::of(&data), data).await.unwrap();
        engine.shutdown().await;
    }
    // Rewrite the trailer as a version 3 one (its CRC valid).
    let segment = dir.path().join("segments").join("0000000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 24;
    bytes[at + 3] = 3;
    let crc = crc32fast::hash(&bytes[at..at + 20]);
    bytes[at + 20..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();
    let err = Engine::open(config(dir.path()), Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(message.contains("0000000001.seg"), "{message}");
    assert!(message.contains("segment format version 3"), "{message}");
    // Refused, not repaired: the file is as it was.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

#[tokio::test]
async fn a_read_whose_segment_is_evicted_before_it_opened_the_file_is_a_plain_miss() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_size = Some(1 << 20);
    config.segment_size = 128 << 10;
    let victim = blob(7, 100_000);
    let digest = Digest::of(&victim);
    {
        let engine = Engine::open(config.clone(), Arc::new(RealFs), Arc::new(TokioRuntime))
            .await
            .unwrap();
        engine.put_blob(digest, victim.clone()).await.unwrap();
        engine.shutdown().await;
    }
    // After a restart no segment is open: this read has found the entry but holds no handle.
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    let mut reader = engine.open_blob(&digest, 0).unwrap();
    for i in 0..60u64 {
        let data = blob(1000 + i, 60_000);
        engine.put_blob(Digest::of(&data), data).await.unwrap();
    }
    assert!(!engine.contains(&digest), "evicted meanwhile");
    let err = reader.next_chunk(10_000).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}
