//! A real fsync's tail, which the simulated disk does not model: there a sync makes a file
//! durable at one instant and returns at once. Here a sync first makes the file durable as it
//! is *now* (its start) and then returns only after a seeded delay, so bytes written while it
//! is in flight are not covered by it. That is what an engine must assume of `fsync`, and what
//! catches a group commit that counts them as synced (`sync-watermark-overreach`).
//!
//! Better home: the simulated disk's own `sync` (snapshot at the start of a slow call); this
//! wrapper stays outside it while that file moves.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hoard::seam::{Fs, FsFile, FsLock};
use madsim::rand::{thread_rng, Rng};

/// Chance that a sync's return is delayed.
const DELAY_CHANCE: f64 = 0.5;
/// Longest delay (virtual time).
const MAX_DELAY: Duration = Duration::from_millis(3);

/// [`Fs`] whose file syncs return late (see the module docs).
pub struct FsyncLatency {
    inner: Arc<dyn Fs>,
}

impl FsyncLatency {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Fs>) -> Self {
        FsyncLatency { inner }
    }
}

fn wrap(file: Box<dyn FsFile>) -> Box<dyn FsFile> {
    Box::new(LateSyncFile { inner: file })
}

#[async_trait]
impl Fs for FsyncLatency {
    async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner.create(path).await.map(wrap)
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner.open_append(path).await.map(wrap)
    }

    async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.inner.open_read(path).await.map(wrap)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path).await
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path).await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path).await
    }

    async fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path).await
    }

    async fn free_space(&self, path: &Path) -> io::Result<u64> {
        self.inner.free_space(path).await
    }

    async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        self.inner.lock(path).await
    }
}

struct LateSyncFile {
    inner: Box<dyn FsFile>,
}

#[async_trait]
impl FsFile for LateSyncFile {
    async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    async fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.inner.allocate(len).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.inner.sync().await?;
        let delay = {
            let mut rng = thread_rng();
            rng.gen_bool(DELAY_CHANCE)
                .then(|| rng.gen_range(Duration::ZERO..=MAX_DELAY))
        };
        if let Some(delay) = delay {
            madsim::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
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
