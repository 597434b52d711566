#![cfg(not(madsim))]
//! Engine round trips on the real filesystem.

mod blobs;
use blobs::blob;

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

/// An engine on `dir` that evicts: `max_size` bytes on disk, in segments of `segment_size`.
async fn open_evicting(dir: &Path, max_size: u64, segment_size: u64) -> Arc<Engine> {
    let mut config = config(dir);
    config.max_size = Some(max_size);
    config.segment_size = segment_size;
    Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap()
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

/// The segment file whose bytes contain `data`.
fn segment_holding(dir: &Path, data: &[u8]) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(data.len()).any(|w| w == data)
        })
        .expect("a segment holds the payload")
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
        short
            .write(Bytes::copy_from_slice(&data[..len - 1]))
            .await
            .unwrap();
        let err = short.commit().await.unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");

        let mut long = engine.begin_upload(digest).await.unwrap();
        long.write(Bytes::copy_from_slice(&data)).await.unwrap();
        let err = long.write(Bytes::from_static(b"x")).await.unwrap_err();
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
                    upload.write(Bytes::copy_from_slice(chunk)).await?;
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
    // Small enough to be group-committed into the active segment.
    let kept = blob(1, 4000);
    let torn = blob(2, 4000);
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
    file.set_len(len - 2000).unwrap();
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
    let engine = open_evicting(dir.path(), 2 << 20, 256 << 10).await;
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

/// Stores the 3000-byte blob numbered `n`.
async fn put_filler(engine: &Arc<Engine>, n: u64) {
    let data = blob(n, 3000);
    engine.put_blob(Digest::of(&data), data).await.unwrap();
}

#[tokio::test]
async fn evicting_a_damaged_segment_leaves_no_blob_present_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_evicting(dir.path(), 1 << 20, 128 << 10).await;
    let [a, b, c] = [blob(61, 3000), blob(62, 3000), blob(63, 3000)];
    for data in [&a, &b, &c] {
        engine
            .put_blob(Digest::of(data), data.clone())
            .await
            .unwrap();
    }
    let first = segment_holding(dir.path(), &a);
    let mut filler = 1000..3000;
    // The first segment is closed (sealed with a footer) once the log has moved on.
    while segment_files(dir.path()).len() < 2 {
        put_filler(&engine, filler.next().unwrap()).await;
    }
    // While it sits closed, the disk spoils its footer and blob b's header: a walk of its
    // headers meets damage before c.
    let mut bytes = std::fs::read(&first).unwrap();
    let footer_byte = bytes.len() - 24 - 10;
    bytes[footer_byte] ^= 0x01;
    let b_payload = bytes.windows(b.len()).position(|w| w == &b[..]).unwrap();
    bytes[b_payload - 1] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    // c is in use, so eviction copies it forward; a and b are not.
    assert!(engine.missing(&[Digest::of(&c)]).is_empty());
    while first.exists() {
        put_filler(&engine, filler.next().unwrap()).await;
    }

    assert!(!engine.contains(&Digest::of(&a)));
    assert!(
        !engine.contains(&Digest::of(&b)),
        "b's record was damaged and its segment is gone: it must not be present"
    );
    assert_eq!(
        read_all(&engine, &Digest::of(&c)).await,
        c,
        "copied past the damage"
    );
    // b is missing, so a client uploads it again, and it is stored.
    assert_eq!(engine.missing(&[Digest::of(&b)]), vec![Digest::of(&b)]);
    engine.put_blob(Digest::of(&b), b.clone()).await.unwrap();
    assert_eq!(read_all(&engine, &Digest::of(&b)).await, b);
}

#[tokio::test]
async fn a_read_in_progress_survives_the_eviction_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_evicting(dir.path(), 1 << 20, 128 << 10).await;
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

/// Stores `blobs` and drops the engine without shutdown: the segment is left unsealed, as after
/// kill -9, so the next start scans its headers.
async fn put_then_kill(dir: &Path, blobs: &[&Bytes]) {
    let engine = open(dir).await;
    for data in blobs {
        engine
            .put_blob(Digest::of(data), (*data).clone())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn blake3_blobs_and_actions_are_kept_apart_from_sha256_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // `small` and `corrupt` are group-committed into the active segment; `staged` is written
    // once into a solo segment of its own.
    let small = blob(21, 1000);
    let staged = blob(22, 50_000);
    let corrupt = blob(23, 2000);
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
    corrupt_payload(&segment_holding(dir.path(), &staged), &staged);
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
    // Small enough to be group-committed into the active segment.
    let kept = blob(8, 4000);
    let corrupt = blob(9, 4000);
    put_then_kill(dir.path(), &[&kept, &corrupt]).await;
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
async fn damage_inside_an_unsealed_segment_costs_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Bytes> = (0..6).map(|i| blob(40 + i, 3000)).collect();
    put_then_kill(dir.path(), &blobs.iter().collect::<Vec<_>>()).await;
    let segment = segment_holding(dir.path(), &blobs[0]);
    // Blob 1's payload rots (its header still parses); blob 3's header does (the byte before
    // its payload is the last of the header's checksum), so nothing says where blob 4 starts.
    corrupt_payload(&segment, &blobs[1]);
    let mut bytes = std::fs::read(&segment).unwrap();
    let payload = bytes
        .windows(blobs[3].len())
        .position(|w| w == &blobs[3][..])
        .unwrap();
    bytes[payload - 1] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    for start in ["after the damage", "from the footer the first start wrote"] {
        let engine = open(dir.path()).await;
        for (i, data) in blobs.iter().enumerate() {
            let digest = Digest::of(data);
            match i {
                1 | 3 => assert!(!engine.contains(&digest), "blob {i}, {start}"),
                _ => assert_eq!(read_all(&engine, &digest).await, *data, "blob {i}, {start}"),
            }
        }
        engine.shutdown().await;
    }
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

/// A disk whose `sync` and `read_at` calls can be held (stalled) until the test releases them,
/// and then fail: a slow or failing fsync on demand.
mod gated {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::{Fs, FsFile, FsLock};

    /// Which calls stall: given the call (`"write"`, `"sync"` or `"read_at"`) and the path its
    /// file was opened by.
    type Rule = Box<dyn FnMut(&str, &Path) -> bool + Send>;

    #[derive(Default)]
    struct State {
        rule: Option<Rule>,
        stalled: usize,
        /// Set by [`Gate::release`]: whether the stalled calls then fail.
        released: Option<bool>,
    }

    /// Holds the calls its rule picks until released.
    #[derive(Clone, Default)]
    pub struct Gate(Arc<Mutex<State>>);

    impl Gate {
        /// From now on, calls picked by `rule` stall.
        pub fn stall(&self, rule: impl FnMut(&str, &Path) -> bool + Send + 'static) {
            let mut state = self.0.lock().unwrap();
            *state = State {
                rule: Some(Box::new(rule)),
                ..State::default()
            };
        }

        /// Waits (up to 10 s) until `n` calls are stalled.
        pub async fn wait_stalled(&self, n: usize) {
            for _ in 0..1000 {
                if self.0.lock().unwrap().stalled >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("fewer than {n} calls stalled");
        }

        /// Lets the stalled calls go on (failing with `EIO` if `fail`); later calls pass.
        pub fn release(&self, fail: bool) {
            let mut state = self.0.lock().unwrap();
            state.rule = None;
            state.released = Some(fail);
        }

        async fn pass(&self, call: &str, path: &Path) -> io::Result<()> {
            {
                let mut state = self.0.lock().unwrap();
                let stalls = state.rule.as_mut().is_some_and(|rule| rule(call, path));
                if !stalls {
                    return Ok(());
                }
                state.stalled += 1;
            }
            loop {
                if let Some(fail) = self.0.lock().unwrap().released {
                    return if fail {
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    } else {
                        Ok(())
                    };
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// [`RealFs`] behind a [`Gate`].
    pub struct GatedFs(pub Gate);

    impl GatedFs {
        fn wrap(&self, file: Box<dyn FsFile>, path: &Path) -> Box<dyn FsFile> {
            Box::new(GatedFile {
                inner: file,
                path: path.to_path_buf(),
                gate: self.0.clone(),
            })
        }
    }

    #[async_trait]
    impl Fs for GatedFs {
        async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            Ok(self.wrap(RealFs.create(path).await?, path))
        }
        async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            Ok(self.wrap(RealFs.open_append(path).await?, path))
        }
        async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
            Ok(self.wrap(RealFs.open_read(path).await?, path))
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
        async fn free_space(&self, path: &Path) -> io::Result<u64> {
            RealFs.free_space(path).await
        }
        async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
            RealFs.lock(path).await
        }
    }

    struct GatedFile {
        inner: Box<dyn FsFile>,
        path: PathBuf,
        gate: Gate,
    }

    #[async_trait]
    impl FsFile for GatedFile {
        async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
            self.gate.pass("write", &self.path).await?;
            self.inner.write(buf).await
        }
        async fn flush(&mut self) -> io::Result<()> {
            self.inner.flush().await
        }
        async fn allocate(&mut self, len: u64) -> io::Result<()> {
            self.inner.allocate(len).await
        }
        async fn sync(&mut self) -> io::Result<()> {
            self.gate.pass("sync", &self.path).await?;
            self.inner.sync().await
        }
        async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
            self.gate.pass("read_at", &self.path).await?;
            self.inner.read_at(offset, len).await
        }
        async fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.inner.truncate(len).await
        }
        async fn len(&self) -> io::Result<u64> {
            self.inner.len().await
        }
        async fn close(mut self: Box<Self>) -> io::Result<()> {
            self.inner.close().await
        }
    }
}

async fn open_gated(dir: &Path) -> (Arc<Engine>, gated::Gate) {
    let gate = gated::Gate::default();
    let fs = Arc::new(gated::GatedFs(gate.clone()));
    let engine = Engine::open(config(dir), fs, Arc::new(TokioRuntime))
        .await
        .expect("engine opens");
    (engine, gate)
}

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (up to [`PATIENCE`]) until the file at `path` holds at least `len` bytes.
async fn wait_for_len(path: &Path, len: u64) {
    for _ in 0..1000 {
        if std::fs::metadata(path).map_or(0, |m| m.len()) >= len {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} never reached {len} bytes", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_large_commit_does_not_hold_up_small_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, gate) = open_gated(dir.path()).await;
    let big = blob(30, 300_000);
    let digest = Digest::of(&big);
    let mut upload = engine.begin_upload(digest).await.unwrap();
    upload.write(Bytes::copy_from_slice(&big)).await.unwrap();
    // The large record's disk stalls once its bytes were synced once (its footer's sync; a
    // copy out of a staging file would stall on reading it, under the segment writer lock).
    let tmp = dir.path().join("tmp");
    let mut calls = 0;
    gate.stall(move |call, path| {
        let counted = path.starts_with(&tmp) && (call == "sync" || call == "read_at");
        calls += usize::from(counted);
        counted && calls >= 2
    });
    let commit = tokio::spawn(upload.commit());
    gate.wait_stalled(1).await;
    let small = blob(31, 1000);
    tokio::time::timeout(PATIENCE, engine.put_blob(Digest::of(&small), small.clone()))
        .await
        .expect("a small commit does not wait for a large one")
        .unwrap();
    assert!(!commit.is_finished());
    assert!(
        !engine.contains(&digest),
        "not indexed before it is durable"
    );
    gate.release(false);
    commit.await.unwrap().unwrap();
    assert_eq!(read_all(&engine, &digest).await, big);
    assert_eq!(read_all(&engine, &Digest::of(&small)).await, small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_large_commits_go_on_while_a_group_commit_fsync_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, gate) = open_gated(dir.path()).await;
    let segments = dir.path().join("segments");
    let stalled_dir = segments.clone();
    gate.stall(move |call, path| call == "sync" && path.starts_with(&stalled_dir));
    let first = blob(40, 1000);
    let a = tokio::spawn({
        let (engine, first) = (engine.clone(), first.clone());
        async move { engine.put_blob(Digest::of(&first), first).await }
    });
    gate.wait_stalled(1).await;
    let segment = segments.join("0000000001.seg");
    let before = std::fs::metadata(&segment).unwrap().len();
    let later: Vec<Bytes> = (41..44).map(|seed| blob(seed, 1000)).collect();
    let waiting: Vec<_> = later
        .iter()
        .map(|data| {
            let (engine, data) = (engine.clone(), data.clone());
            tokio::spawn(async move { engine.put_blob(Digest::of(&data), data).await })
        })
        .collect();
    // Their records are appended (written and flushed) while the first fsync is in flight.
    wait_for_len(&segment, before + 3 * 1000).await;
    // A large upload commits meanwhile, into a segment of its own.
    let big = blob(45, 300_000);
    tokio::time::timeout(PATIENCE, engine.put_blob(Digest::of(&big), big.clone()))
        .await
        .expect("a large commit does not wait for the active segment's fsync")
        .unwrap();
    assert!(!a.is_finished());
    for (data, task) in later.iter().zip(&waiting) {
        assert!(!task.is_finished());
        assert!(!engine.contains(&Digest::of(data)), "not acknowledged");
    }
    gate.release(false);
    a.await.unwrap().unwrap();
    for task in waiting {
        task.await.unwrap().unwrap();
    }
    for data in later.iter().chain([&first, &big]) {
        assert_eq!(read_all(&engine, &Digest::of(data)).await, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_fsync_acknowledges_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, gate) = open_gated(dir.path()).await;
    let segments = dir.path().join("segments");
    let stalled_dir = segments.clone();
    gate.stall(move |call, path| call == "sync" && path.starts_with(&stalled_dir));
    let blobs: Vec<Bytes> = (50..53).map(|seed| blob(seed, 1000)).collect();
    let put = |data: &Bytes| {
        let (engine, data) = (engine.clone(), data.clone());
        tokio::spawn(async move { engine.put_blob(Digest::of(&data), data).await })
    };
    let first = put(&blobs[0]);
    gate.wait_stalled(1).await;
    let segment = segments.join("0000000001.seg");
    let before = std::fs::metadata(&segment).unwrap().len();
    let others: Vec<_> = blobs[1..].iter().map(put).collect();
    let action = tokio::spawn({
        let engine = engine.clone();
        async move {
            let value = Bytes::from_static(b"result");
            engine
                .put_action(
                    "",
                    DigestFunction::Sha256,
                    [7; 32],
                    AcKind::ActionResult,
                    value,
                )
                .await
        }
    });
    wait_for_len(&segment, before + 2 * 1000).await;
    // The fsync in flight fails: the records it covered and those waiting behind it alike.
    gate.release(true);
    assert!(first.await.unwrap().is_err());
    for task in others {
        assert!(task.await.unwrap().is_err());
    }
    assert!(action.await.unwrap().is_err());
    for data in &blobs {
        assert!(!engine.contains(&Digest::of(data)));
    }
    assert!(engine
        .get_action("", DigestFunction::Sha256, &[7; 32])
        .await
        .unwrap()
        .is_none());
    // After the back-off, commits go to a fresh segment.
    let retry = blob(54, 1000);
    let mut stored = false;
    for _ in 0..100 {
        if engine
            .put_blob(Digest::of(&retry), retry.clone())
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(stored, "the engine recovers after the back-off");
    assert_eq!(read_all(&engine, &Digest::of(&retry)).await, retry);
}

#[tokio::test]
async fn a_large_upload_is_written_once_into_a_sealed_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let big = blob(60, 300_000);
    let digest = Digest::of(&big);
    {
        let engine = open(dir.path()).await;
        engine.put_blob(digest, big.clone()).await.unwrap();
        assert_eq!(temp_files(dir.path()), 0);
        // Dropped without shutdown, as after kill -9.
    }
    let files = segment_files(dir.path());
    assert_eq!(files, ["0000000001.seg"]);
    let segment = dir.path().join("segments").join(&files[0]);
    let bytes = std::fs::read(&segment).unwrap();
    assert_eq!(
        &bytes[bytes.len() - 24..bytes.len() - 20],
        b"HTL\x02",
        "sealed"
    );
    // Its footer is trusted: a start re-hashes nothing, so a payload corrupted behind its back
    // is still indexed, and the read that verifies it refuses the bytes.
    corrupt_payload(&segment, &big);
    let engine = open(dir.path()).await;
    assert!(engine.contains(&digest), "recovered from the footer");
    let err = engine.read_blob(&digest, 0, digest.size).await.unwrap_err();
    assert!(matches!(err, Error::DataLoss(_)), "{err}");
}

/// Copies a data directory as a crash would find it (the engine still running).
fn crash_image(dir: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    for sub in ["segments", "tmp"] {
        std::fs::create_dir_all(image.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), image.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    image
}

#[tokio::test]
async fn a_crash_during_write_once_ingest_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let torn = blob(70, 300_000);
    let corrupt = blob(71, 300_000);
    for data in [&torn, &corrupt] {
        engine
            .put_blob(Digest::of(data), data.clone())
            .await
            .unwrap();
    }
    let in_flight = blob(72, 600_000);
    let mut upload = engine.begin_upload(Digest::of(&in_flight)).await.unwrap();
    upload
        .write(Bytes::copy_from_slice(&in_flight[..400_000]))
        .await
        .unwrap();
    let image = crash_image(dir.path());
    assert_eq!(temp_files(image.path()), 1, "the upload in progress");
    // The disk tore both finished segments: one is cut inside its payload, the other lost its
    // footer and a payload byte.
    let segments = image.path().join("segments");
    let short = segments.join("0000000001.seg");
    let len = std::fs::metadata(&short).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let unsealed = segments.join("0000000002.seg");
    let mut bytes = std::fs::read(&unsealed).unwrap();
    let trailer = &bytes[bytes.len() - 24..];
    let footer_at = u64::from_le_bytes(trailer[4..12].try_into().unwrap());
    bytes.truncate(footer_at as usize);
    std::fs::write(&unsealed, bytes).unwrap();
    corrupt_payload(&unsealed, &corrupt);

    let recovered = open(image.path()).await;
    for data in [&torn, &corrupt, &in_flight] {
        assert!(!recovered.contains(&Digest::of(data)));
    }
    assert_eq!(recovered.stats().blobs, 0);
    assert!(
        segment_files(image.path()).is_empty(),
        "both torn segments dropped"
    );
    assert_eq!(temp_files(image.path()), 0, "the unfinished upload swept");
    drop(upload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_whose_write_failed_takes_no_more_bytes_and_never_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, gate) = open_gated(dir.path()).await;
    let big = blob(80, 300_000);
    let digest = Digest::of(&big);
    let mut upload = engine.begin_upload(digest).await.unwrap();
    upload
        .write(Bytes::copy_from_slice(&big[..100_000]))
        .await
        .unwrap();
    // Its file now holds bytes other than those hashed (a failed write may land partly).
    let tmp = dir.path().join("tmp");
    gate.stall(move |call, path| call == "write" && path.starts_with(&tmp));
    let failing = tokio::spawn(async move {
        let written = upload
            .write(Bytes::copy_from_slice(&big[100_000..200_000]))
            .await;
        (upload, written)
    });
    gate.wait_stalled(1).await;
    gate.release(true);
    let (mut upload, written) = failing.await.unwrap();
    assert!(written.is_err());
    let rest = blob(80, 300_000);
    assert!(
        upload
            .write(Bytes::copy_from_slice(&rest[100_000..]))
            .await
            .is_err(),
        "no more bytes"
    );
    assert!(upload.commit().await.is_err(), "never committed");
    assert!(!engine.contains(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_early_sync_of_a_large_upload_fails_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, gate) = open_gated(dir.path()).await;
    let big = blob(90, 300_000);
    let digest = Digest::of(&big);
    let tmp = dir.path().join("tmp");
    let mut failed_one = false;
    // The first sync of the upload's file (the early writeback, started as its bytes arrive)
    // stalls and then fails; after a failed fsync a later one may succeed without the bytes.
    gate.stall(move |call, path| {
        let first = call == "sync" && path.starts_with(&tmp) && !failed_one;
        failed_one |= first;
        first
    });
    let mut upload = engine.begin_upload(digest).await.unwrap();
    upload.write(Bytes::copy_from_slice(&big)).await.unwrap();
    gate.wait_stalled(1).await;
    gate.release(true);
    assert!(upload.commit().await.is_err());
    assert!(!engine.contains(&digest));
    engine.put_blob(digest, big.clone()).await.unwrap();
    assert_eq!(read_all(&engine, &digest).await, big);
}

#[tokio::test]
async fn a_damaged_version_digit_after_good_records_is_a_torn_tail_not_a_newer_format() {
    let dir = tempfile::tempdir().unwrap();
    let kept = blob(40, 3000);
    let damaged = blob(41, 3000);
    put_then_kill(dir.path(), &[&kept, &damaged]).await;
    // The second record's header reads as a well-formed version 3 one (its checksum recomputed),
    // past a record of this version: damage, since one version writes a whole segment.
    let segment = dir.path().join("segments").join("0000000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let second = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"HRD2")
        .nth(1)
        .map(|(i, _)| i)
        .expect("two records");
    bytes[second + 3] = b'3';
    let key_len = u16::from_le_bytes([bytes[second + 5], bytes[second + 6]]) as usize;
    let crc_at = second + 4 + 1 + 2 + 8 + 32 + key_len;
    let crc = crc32fast::hash(&bytes[second..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();
    let engine = open(dir.path()).await;
    assert_eq!(read_all(&engine, &Digest::of(&kept)).await, kept);
    assert!(!engine.contains(&Digest::of(&damaged)));
}
