//! Uploads: receiving a blob's bytes while hashing them (once), then committing it.
//!
//! A small upload is held in memory and group-committed into the active segment. A large one is
//! written once, as it arrives, into a segment of its own under `tmp/` ([`SoloSegment`]) that
//! joins the log at commit. Invariant (the reason this project exists): that file is flushed
//! and synced before it is renamed into the log by path; the simulator's filesystem records a
//! `persist-before-flush` violation whenever that order is broken.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::record::RecordKey;
use super::segment::{Payload, SoloSegment};
use super::{Digest, Engine, Error, Hasher};
use crate::seam::Fs;

/// A blob being received. Dropping it without [`Upload::commit`] discards the bytes.
pub struct Upload {
    engine: Arc<Engine>,
    expected: Digest,
    /// `None` once finalized.
    hasher: Option<Hasher>,
    received: u64,
    stage: Stage,
    /// A write to the file failed: its contents no longer match what was hashed, so the upload
    /// takes no more bytes and cannot be committed.
    broken: bool,
    _permit: Permit,
}

enum Stage {
    Memory(Vec<u8>),
    /// Written into its final file; `None` once commit took it.
    Segment(Option<Box<SoloSegment>>),
}

impl Upload {
    pub(super) fn in_memory(engine: Arc<Engine>, expected: Digest, permit: Permit) -> Upload {
        Upload {
            engine,
            expected,
            hasher: Some(expected.function.hasher()),
            received: 0,
            broken: false,
            stage: Stage::Memory(Vec::with_capacity(expected.size as usize)),
            _permit: permit,
        }
    }

    /// An upload written straight into a segment of its own at `path`.
    pub(super) async fn to_segment(
        engine: Arc<Engine>,
        expected: Digest,
        permit: Permit,
        path: PathBuf,
    ) -> Result<Upload, Error> {
        let key = RecordKey::Blob(expected);
        let writeback = Some(engine.writeback());
        let solo = SoloSegment::create(
            engine.fs.as_ref(),
            path,
            key,
            expected.size,
            expected.hash,
            writeback,
        )
        .await?;
        Ok(Upload {
            engine,
            expected,
            hasher: Some(expected.function.hasher()),
            received: 0,
            broken: false,
            stage: Stage::Segment(Some(Box::new(solo))),
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
    pub async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        let after = self.received + data.len() as u64;
        if after > self.expected.size {
            return Err(Error::SizeMismatch {
                expected: self.expected,
                received: after,
            });
        }
        self.check_intact()?;
        let hasher = self.hasher.as_mut().expect("hashing until commit");
        match &mut self.stage {
            Stage::Memory(buffer) => {
                buffer.extend_from_slice(&data);
                hasher.update(&data);
            }
            Stage::Segment(solo) => {
                let solo = solo.as_mut().expect("open until commit");
                // Hash while the write is under way (it goes to the file on a blocking thread).
                let (written, ()) =
                    futures::join!(solo.write(data.clone()), async { hasher.update(&data) });
                if let Err(e) = written {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        self.received = after;
        Ok(())
    }

    fn check_intact(&self) -> Result<(), Error> {
        if self.broken {
            return Err(Error::io(
                format!("upload of {}", self.expected),
                std::io::Error::other("an earlier write of this upload failed"),
            ));
        }
        Ok(())
    }

    /// Verifies size and hash, then makes the blob durable and indexed. `Ok` means acknowledged.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.check_intact()?;
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
            Stage::Segment(solo) => {
                let solo = solo.take().expect("open until commit");
                engine.persist_solo(expected, *solo).await
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Stage::Segment(Some(solo)) = &self.stage {
            // Abandoned before commit. Drop cannot await: the janitor task removes the file. If
            // the janitor is gone (the process is going down), the next start sweeps it.
            let _ = self.engine.janitor.send(solo.path().to_path_buf());
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
