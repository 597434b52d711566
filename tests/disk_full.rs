#![cfg(not(madsim))]
//! The engine on a real tmpfs that fills up, and a restart under a descriptor limit (issue 13.1).
//! Mounting needs root (CI and the dev box run tests as root); without it these tests say so
//! and pass vacuously.

mod blobs;
use blobs::blob;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use hoard::engine::{Digest, Engine, EngineConfig, Error};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;

/// Set in the child process of the descriptor-limit test: the data directory to open.
const CHILD_DIR: &str = "HOARD_TEST_FD_LIMIT_DIR";

/// The tests here count this process's descriptors and fill disks: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                println!("SKIPPED: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn config(dir: &Path, segment_size: u64) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.segment_size = segment_size;
    config
}

async fn open(config: EngineConfig) -> Result<Arc<Engine>, Error> {
    Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime)).await
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect()
}

/// Reads `data` back whole by its digest.
async fn assert_serves(engine: &Engine, data: &Bytes) {
    let digest = Digest::of(data);
    assert_eq!(
        engine.read_blob(&digest, 0, digest.size).await.unwrap(),
        *data
    );
}

/// An engine with 1 MiB segments on a fresh 8 MiB tmpfs (`None` where one cannot be mounted).
async fn open_on_small_disk() -> Option<(Tmpfs, Arc<Engine>)> {
    let tmpfs = Tmpfs::mount("8m")?;
    let engine = open(config(&tmpfs.path(), 1 << 20)).await.unwrap();
    Some((tmpfs, engine))
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn a_full_disk_leaks_neither_segment_files_nor_descriptors() {
    let _serial = SERIAL.lock().await;
    let Some((tmpfs, engine)) = open_on_small_disk().await else {
        return;
    };
    let dir = tmpfs.path();
    let baseline = open_descriptors();
    let mut stored = Vec::new();
    let mut refused = 0;
    for seed in 0..2_200u64 {
        let data = blob(seed, 60_000);
        match engine.put_blob(Digest::of(&data), data.clone()).await {
            Ok(()) => stored.push(data),
            Err(Error::NoSpace(_)) => refused += 1,
            Err(e) => panic!("a full disk is not {e}"),
        }
    }
    assert!(
        refused >= 2_000,
        "only {refused} refused: the disk never filled"
    );
    let files = segment_files(&dir);
    // 8 MiB of 1 MiB segments; before the fix every refused upload left a segment file (and an
    // open descriptor) behind.
    assert!(files.len() <= 10, "{} segment files", files.len());
    // At most a reader per segment (a bounded cache) and the writer: none per refused upload.
    let descriptors = open_descriptors();
    assert!(
        descriptors <= baseline + files.len() + 4,
        "{descriptors} descriptors open, {baseline} before the disk filled"
    );
    // The refused appends' bytes were cut back: the files hold exactly what the engine counts.
    let on_disk: u64 = files.iter().map(|(_, len)| len).sum();
    assert_eq!(on_disk, engine.stats().disk_bytes);
    // What was acknowledged is served, full disk or not, and after a restart.
    for data in &stored {
        assert_serves(&engine, data).await;
    }
    engine.shutdown().await;
    drop(engine);
    let engine = open(config(&dir, 1 << 20)).await.unwrap();
    assert_eq!(engine.stats().blobs, stored.len() as u64);
    for data in &stored {
        assert_serves(&engine, data).await;
    }
}

const SEGMENTS: u64 = 1_100;

#[tokio::test]
async fn a_restart_with_more_segments_than_descriptors_succeeds() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        return reopen_under_descriptor_limit(Path::new(&dir)).await;
    }
    let _serial = SERIAL.lock().await;
    let Some(tmpfs) = Tmpfs::mount("64m") else {
        return;
    };
    let dir = tmpfs.path();
    {
        // One record per segment.
        let engine = open(config(&dir, 1)).await.unwrap();
        for seed in 0..SEGMENTS {
            let data = blob(seed, 100);
            engine.put_blob(Digest::of(&data), data).await.unwrap();
        }
        engine.shutdown().await;
    }
    assert_eq!(segment_files(&dir).len() as u64, SEGMENTS);
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_restart_with_more_segments_than_descriptors_succeeds",
            "--nocapture",
        ])
        .env(CHILD_DIR, &dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the restart under 1,024 descriptors failed"
    );
}

/// The child: limits itself to 1,024 descriptors, then opens the data dir and reads every blob.
async fn reopen_under_descriptor_limit(dir: &Path) {
    let limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: setrlimit reads a fully initialised struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let engine = open(config(dir, 1)).await.expect("opens under 1,024 fds");
    assert_eq!(engine.stats().blobs, SEGMENTS);
    for seed in 0..SEGMENTS {
        assert_serves(&engine, &blob(seed, 100)).await;
    }
    assert!(open_descriptors() < 1024);
}

/// A large upload reserves its space when it begins, so of two that cannot both fit, the second
/// is refused before a byte of it streams, and the first still completes.
#[tokio::test]
async fn a_large_upload_reserves_its_space_when_it_begins() {
    let _serial = SERIAL.lock().await;
    // The mount lives as long as this binding.
    let Some((_tmpfs, engine)) = open_on_small_disk().await else {
        return;
    };
    let (first, second) = (blob(1, 5 << 20), blob(2, 5 << 20));
    let mut upload = engine.begin_upload(Digest::of(&first)).await.unwrap();
    match engine.begin_upload(Digest::of(&second)).await {
        Err(Error::NoSpace(_)) => {}
        Err(e) => panic!("the second upload is refused for space, not {e}"),
        Ok(_) => panic!("the second upload began though the first holds its space"),
    }
    upload.write(first.clone()).await.unwrap();
    upload.commit().await.unwrap();
    assert_serves(&engine, &first).await;
}
