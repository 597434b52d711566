//! Uploads: staging a blob's bytes while hashing them, then committing it.
//!
//! Invariant (the reason this project exists): a staged temp file is flushed, synced and closed
//! before anything reopens it by path to persist it. The simulator's filesystem records a
//! `persist-before-flush` violation whenever that order is broken.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::segment::Payload;
use super::{Digest, Engine, Error, Hasher, PlantedBug};
use crate::seam::{Fs, FsFile};

/// A blob being received. Dropping it without [`Upload::commit`] discards the bytes.
pub struct Upload {
    engine: Arc<Engine>,
    expected: Digest,
    /// `None` once finalized.
    hasher: Option<Hasher>,
    received: u64,
    stage: Stage,
    _permit: Permit,
}

enum Stage {
    Memory(Vec<u8>),
    File {
        path: PathBuf,
        /// `None` once closed.
        file: Option<Box<dyn FsFile>>,
    },
}

impl Upload {
    pub(super) fn in_memory(engine: Arc<Engine>, expected: Digest, permit: Permit) -> Upload {
        Upload {
            engine,
            expected,
            hasher: Some(expected.function.hasher()),
            received: 0,
            stage: Stage::Memory(Vec::with_capacity(expected.size as usize)),
            _permit: permit,
        }
    }

    pub(super) async fn to_file(
        engine: Arc<Engine>,
        expected: Digest,
        permit: Permit,
        path: PathBuf,
    ) -> Result<Upload, Error> {
        let file = engine
            .fs
            .create(&path)
            .await
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Upload {
            engine,
            expected,
            hasher: Some(expected.function.hasher()),
            received: 0,
            stage: Stage::File {
                path,
                file: Some(file),
            },
            _permit: permit,
        })
    }

    /// The digest the bytes must match.
    pub fn expected(&self) -> Digest {
        self.expected
    }

    /// Bytes received so far (where a resumed write continues).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends the next bytes. More bytes than declared is an error (and the upload stays as it
    /// was, so it can still be completed correctly).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let after = self.received + data.len() as u64;
        if after > self.expected.size {
            return Err(Error::SizeMismatch {
                expected: self.expected,
                received: after,
            });
        }
        match &mut self.stage {
            Stage::Memory(buffer) => buffer.extend_from_slice(data),
            Stage::File { path, file } => {
                let file = file.as_mut().expect("open until commit");
                file.write(data)
                    .await
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            }
        }
        self.hasher
            .as_mut()
            .expect("hashing until commit")
            .update(data);
        self.received = after;
        Ok(())
    }

    /// Verifies size and hash, then makes the blob durable and indexed. `Ok` means acknowledged.
    pub async fn commit(mut self) -> Result<(), Error> {
        let expected = self.expected;
        if self.received != expected.size {
            return Err(Error::SizeMismatch {
                expected,
                received: self.received,
            });
        }
        let hash = self.hasher.take().expect("hashing until commit").finalize();
        if hash != expected.hash {
            return Err(Error::HashMismatch {
                expected,
                actual: hash,
            });
        }
        let engine = self.engine.clone();
        match &mut self.stage {
            Stage::Memory(buffer) => engine.persist_blob(expected, Payload::Memory(buffer)).await,
            Stage::File { path, file } => {
                let file = file.take().expect("open until commit");
                if engine.config.planted(PlantedBug::UnflushedPersist) {
                    // The founding bug: persist from the path while bytes sit in the handle.
                    drop(file);
                } else {
                    seal_staged(file, path).await?;
                }
                engine.persist_blob(expected, Payload::File(path)).await
            }
        }
        // Dropping `self` removes the temp file.
    }
}

/// Flush, sync, close: after this, any descriptor opened by path sees every byte.
async fn seal_staged(mut file: Box<dyn FsFile>, path: &Path) -> Result<(), Error> {
    let context = || format!("finishing staged upload {}", path.display());
    file.flush().await.map_err(|e| Error::io(context(), e))?;
    file.sync().await.map_err(|e| Error::io(context(), e))?;
    file.close().await.map_err(|e| Error::io(context(), e))
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Stage::File { path, .. } = &self.stage {
            // Drop cannot await: the janitor task removes it. If the janitor is gone (the process
            // is going down), the next start sweeps it.
            let _ = self.engine.janitor.send(path.clone());
        }
    }
}

/// Removes the temp files it is sent, until every sender is gone.
pub(super) async fn run_janitor(fs: Arc<dyn Fs>, mut paths: mpsc::UnboundedReceiver<PathBuf>) {
    while let Some(path) = paths.recv().await {
        if let Err(e) = fs.remove(&path).await {
            tracing::debug!(path = %path.display(), error = %e, "removing temp file");
        }
    }
}

/// Removes every leftover temp file (uploads a crash interrupted).
pub(super) async fn sweep_temp_files(fs: &dyn Fs, tmp_dir: &Path) -> Result<(), Error> {
    let context = || format!("sweeping {}", tmp_dir.display());
    let names = fs
        .list_dir(tmp_dir)
        .await
        .map_err(|e| Error::io(context(), e))?;
    for name in &names {
        fs.remove(&tmp_dir.join(name))
            .await
            .map_err(|e| Error::io(context(), e))?;
    }
    if !names.is_empty() {
        tracing::info!(count = names.len(), "removed leftover temp files");
        fs.sync_dir(tmp_dir)
            .await
            .map_err(|e| Error::io(context(), e))?;
    }
    Ok(())
}

/// Admission of uploads and one-commit-per-digest claims.
pub(super) struct Tracker {
    max_uploads: usize,
    state: Arc<Mutex<TrackerState>>,
}

#[derive(Default)]
struct TrackerState {
    uploads: usize,
    /// Digests being committed, with whoever waits for them.
    committing: HashMap<Digest, Vec<oneshot::Sender<()>>>,
}

/// A slot among the concurrent uploads; freed on drop.
pub(super) struct Permit {
    state: Arc<Mutex<TrackerState>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.state.lock().expect("tracker").uploads -= 1;
    }
}

/// The right to commit one digest; waiters wake when it drops.
pub(super) struct DigestClaim {
    state: Arc<Mutex<TrackerState>>,
    digest: Digest,
}

impl Drop for DigestClaim {
    fn drop(&mut self) {
        let waiters = self
            .state
            .lock()
            .expect("tracker")
            .committing
            .remove(&self.digest);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(());
        }
    }
}

impl Tracker {
    pub(super) fn new(max_uploads: usize) -> Tracker {
        Tracker {
            max_uploads,
            state: Arc::default(),
        }
    }

    pub(super) fn admit(&self) -> Result<Permit, Error> {
        let mut state = self.state.lock().expect("tracker");
        if state.uploads >= self.max_uploads {
            return Err(Error::Busy(format!(
                "{} uploads are already in progress; retry later",
                state.uploads
            )));
        }
        state.uploads += 1;
        Ok(Permit {
            state: self.state.clone(),
        })
    }

    /// Claims `digest` for committing, or returns a future that completes when the current
    /// claimant finishes (successfully or not).
    pub(super) fn claim_digest(
        &self,
        digest: Digest,
    ) -> Result<DigestClaim, Pin<Box<dyn Future<Output = ()> + Send>>> {
        let mut state = self.state.lock().expect("tracker");
        match state.committing.get_mut(&digest) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Err(Box::pin(async move {
                    let _ = rx.await;
                }))
            }
            None => {
                state.committing.insert(digest, Vec::new());
                Ok(DigestClaim {
                    state: self.state.clone(),
                    digest,
                })
            }
        }
    }
}
