//! The storage engine: a content-addressable store (CAS) and an action cache (AC) on segments.
//!
//! A blob's path to durability, and the invariants each step keeps:
//! 1. [`Upload`] stages the bytes (in memory, or in a temp file under `tmp/` when large) while
//!    hashing them incrementally; it refuses more bytes than declared.
//! 2. [`Engine::commit`] checks size and hash. A temp file is **flushed, synced and closed**
//!    before anything reopens it by path (the founding bug of this project was skipping that).
//! 3. The bytes are appended to the active segment, re-hashed while copied, and the segment is
//!    synced (group commit).
//! 4. Only then is the index entry inserted, and only then does the caller get `Ok`.
//!
//! Reads go through the index to (segment, offset, len) and are verified against the digest.

mod digest;
mod index;
pub mod record;
mod segment;
mod upload;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

pub use digest::{parse_hash, Digest, HASH_LEN};
use index::{Entry, Index};
pub use record::AcKind;
use record::RecordKey;
use segment::{Location, Payload, SegmentLog, IO_CHUNK};
pub use upload::Upload;

use crate::seam::{Fs, FsLock, Runtime};

/// What went wrong, classified the way clients need it (each front end maps these to its codes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: malformed digest, hash or size mismatch, bad offsets.
    #[error("{0}")]
    InvalidArgument(String),
    /// The blob or entry does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Out of space, over a size limit, or too much concurrent work.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Stored bytes failed verification; the entry has been dropped.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
    /// The disk failed.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error; a full disk becomes [`Error::ResourceExhausted`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::ENOSPC)
        {
            return Error::ResourceExhausted(format!("{context}: disk full ({source})"));
        }
        Error::Io { context, source }
    }
}

/// Bugs the simulator must catch, planted on purpose. Only a build with the `planted-bugs`
/// feature can select one (see [`EngineConfig`]); elsewhere they are inert names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlantedBug {
    /// Persist a staged upload without flushing or syncing it first (the founding bug).
    UnflushedPersist,
    /// Insert the index entry before the segment is synced.
    IndexBeforeSync,
    /// Acknowledge a commit before the index entry exists.
    AckBeforeIndex,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directory.
    pub dir: PathBuf,
    /// Largest blob accepted.
    pub max_blob_size: u64,
    /// Byte budget for stored blobs. Until eviction exists, uploads past it are refused.
    pub max_size: Option<u64>,
    /// A segment is closed once it reaches about this many bytes.
    pub segment_size: u64,
    /// Uploads up to this size are staged in memory; larger ones in a temp file.
    pub memory_stage_limit: u64,
    /// Uploads that may be in progress at once.
    pub max_concurrent_uploads: usize,
    /// A planted bug (simulator only).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            max_blob_size: 64 << 30,
            max_size: None,
            segment_size: 256 << 20,
            memory_stage_limit: 1 << 20,
            max_concurrent_uploads: 4096,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    fn planted(&self, _bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted == Some(_bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }
}

/// Counts of what the engine holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blobs in the CAS.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub blob_bytes: u64,
    /// Action-cache entries.
    pub actions: u64,
}

/// The storage engine. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    tmp_dir: PathBuf,
    segments: SegmentLog,
    index: Mutex<Index>,
    uploads: upload::Tracker,
    /// Where dropped uploads send their temp files for removal.
    janitor: tokio::sync::mpsc::UnboundedSender<PathBuf>,
    _lock: Box<dyn FsLock>,
}

const TMP_DIR: &str = "tmp";
const SEGMENT_DIR: &str = "segments";
const LOCK_FILE: &str = "LOCK";

impl Engine {
    /// Opens (or creates) the data directory, recovering everything durable in it.
    ///
    /// Fails if another engine holds the directory's lock.
    pub async fn open(
        config: EngineConfig,
        fs: Arc<dyn Fs>,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Arc<Engine>, Error> {
        let dir = config.dir.clone();
        let tmp_dir = dir.join(TMP_DIR);
        let segment_dir = dir.join(SEGMENT_DIR);
        for d in [&dir, &tmp_dir, &segment_dir] {
            fs.create_dir_all(d)
                .await
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let lock = fs.lock(&dir.join(LOCK_FILE)).await.map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                Error::ResourceExhausted(format!(
                    "data directory {} is in use by another hoard process",
                    dir.display()
                ))
            } else {
                Error::io(format!("locking {}", dir.display()), e)
            }
        })?;
        // The directories must be durable before any record in them is acknowledged.
        for d in [&dir, &tmp_dir, &segment_dir] {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)
                    .await
                    .map_err(|e| Error::io(format!("syncing {}", parent.display()), e))?;
            }
        }
        upload::sweep_temp_files(fs.as_ref(), &tmp_dir).await?;

        let mut index = Index::default();
        let segments = SegmentLog::open(fs.clone(), segment_dir, config.segment_size, |r| {
            let entry = Entry {
                location: r.location,
                sha256: r.payload_sha256,
                verified: r.verified,
            };
            index.insert(r.key, entry);
        })
        .await?;
        let stats = index.stats();
        tracing::info!(
            dir = %dir.display(),
            blobs = stats.blobs,
            bytes = stats.blob_bytes,
            actions = stats.actions,
            "engine opened"
        );
        let uploads = upload::Tracker::new(config.max_concurrent_uploads);
        let (janitor, janitor_rx) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(Box::pin(upload::run_janitor(fs.clone(), janitor_rx)));
        Ok(Arc::new(Engine {
            config,
            fs,
            runtime,
            tmp_dir,
            segments,
            index: Mutex::new(index),
            uploads,
            janitor,
            _lock: lock,
        }))
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// What the engine holds.
    pub fn stats(&self) -> Stats {
        self.index.lock().expect("index").stats()
    }

    /// Whether the CAS holds `digest` (the empty blob always).
    pub fn contains(&self, digest: &Digest) -> bool {
        digest.is_empty() || self.index.lock().expect("index").blob(digest).is_some()
    }

    /// The digest of the stored blob whose bytes hash to `hash` (the empty blob included).
    pub fn blob_by_hash(&self, hash: &[u8; 32]) -> Option<Digest> {
        if *hash == Digest::EMPTY.hash {
            return Some(Digest::EMPTY);
        }
        self.index.lock().expect("index").blob_by_hash(hash)
    }

    /// The subset of `digests` the CAS does not hold, in request order.
    pub fn missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let index = self.index.lock().expect("index");
        digests
            .iter()
            .filter(|d| !d.is_empty() && index.blob(d).is_none())
            .copied()
            .collect()
    }

    /// Starts an upload of the blob `expected`. Fails early when the declared size is over the
    /// blob limit or the free space, or when too many uploads are in progress.
    pub async fn begin_upload(self: &Arc<Self>, expected: Digest) -> Result<Upload, Error> {
        if expected.size > self.config.max_blob_size {
            return Err(Error::ResourceExhausted(format!(
                "blob {expected} is larger than the limit of {} bytes",
                self.config.max_blob_size
            )));
        }
        if let Some(budget) = self.config.max_size {
            let used = self.stats().blob_bytes;
            if used.saturating_add(expected.size) > budget {
                return Err(Error::ResourceExhausted(format!(
                    "storing {expected} would exceed the cache size budget of {budget} bytes ({used} used)"
                )));
            }
        }
        let permit = self.uploads.admit()?;
        if expected.size > self.config.memory_stage_limit {
            let free = self
                .fs
                .free_space(&self.config.dir)
                .await
                .map_err(|e| Error::io("checking free space", e))?;
            // The bytes are written twice (temp file, then segment) before the temp is removed.
            if expected.size.saturating_mul(2) > free {
                return Err(Error::ResourceExhausted(format!(
                    "blob {expected} needs {} bytes, {free} are free",
                    expected.size.saturating_mul(2)
                )));
            }
            let path = self.tmp_dir.join(format!(
                "{:016x}{:016x}.upload",
                self.runtime.random_u64(),
                self.runtime.random_u64()
            ));
            Upload::to_file(self.clone(), expected, permit, path).await
        } else {
            Ok(Upload::in_memory(self.clone(), expected, permit))
        }
    }

    /// Stores a blob held in memory (verified against `digest`).
    pub async fn put_blob(self: &Arc<Self>, digest: Digest, data: Bytes) -> Result<(), Error> {
        let mut upload = self.begin_upload(digest).await?;
        upload.write(&data).await?;
        upload.commit().await
    }

    /// Makes a verified blob durable and indexes it; dedupes concurrent commits of one digest.
    async fn persist_blob(
        self: &Arc<Self>,
        digest: Digest,
        payload: Payload<'_>,
    ) -> Result<(), Error> {
        if digest.is_empty() {
            return Ok(());
        }
        let _turn = loop {
            if self.contains(&digest) {
                return Ok(());
            }
            // One commit per digest at a time; the others wait and then find it indexed.
            match self.uploads.claim_digest(digest) {
                Ok(claim) => break claim,
                Err(wait) => wait.await,
            }
        };
        let key = RecordKey::Blob(digest);
        let location = self
            .segments
            .append(&key, &digest.hash, digest.size, payload)
            .await?;
        self.make_durable_and_index(key, digest.hash, location)
            .await
    }

    /// Syncs a just-appended record, then indexes it: the order every acknowledgement relies on.
    async fn make_durable_and_index(
        self: &Arc<Self>,
        key: RecordKey,
        sha256: [u8; 32],
        location: Location,
    ) -> Result<(), Error> {
        let entry = Entry {
            location,
            sha256,
            verified: true,
        };
        if self.config.planted(PlantedBug::IndexBeforeSync) {
            self.index.lock().expect("index").insert(key, entry);
            return self.segments.sync(&location).await;
        }
        self.segments.sync(&location).await?;
        if self.config.planted(PlantedBug::AckBeforeIndex) {
            let engine = self.clone();
            self.runtime.spawn(Box::pin(async move {
                engine
                    .runtime
                    .sleep(std::time::Duration::from_millis(50))
                    .await;
                engine.index.lock().expect("index").insert(key, entry);
            }));
            return Ok(());
        }
        self.index.lock().expect("index").insert(key, entry);
        Ok(())
    }

    /// Reads `len` bytes of `digest` starting at `offset` (clamped to the blob's end).
    ///
    /// A read of the whole blob, or of any part of a blob not verified since it was written,
    /// re-hashes it first: bytes that do not match the digest are never returned.
    pub async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes, Error> {
        if offset > digest.size {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of {digest}"
            )));
        }
        let len = len.min(digest.size - offset);
        if digest.is_empty() || len == 0 {
            return if self.contains(digest) {
                Ok(Bytes::new())
            } else {
                Err(Error::NotFound(format!("blob {digest} not found")))
            };
        }
        let entry = self.blob_entry(digest)?;
        if !entry.verified {
            self.verify_blob(digest, &entry).await?;
        }
        let bytes = self
            .segments
            .read(&entry.location, offset, len as usize)
            .await?;
        if offset == 0 && len == digest.size && Sha256::digest(&bytes)[..] != digest.hash {
            return Err(self.drop_corrupt(digest));
        }
        Ok(bytes)
    }

    /// Opens a streaming read of `digest`; see [`BlobReader`].
    pub fn open_blob(&self, digest: &Digest, offset: u64) -> Result<BlobReader<'_>, Error> {
        if offset > digest.size {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of {digest}"
            )));
        }
        let location = if digest.is_empty() {
            None
        } else {
            Some(self.blob_entry(digest)?.location)
        };
        Ok(BlobReader {
            engine: self,
            digest: *digest,
            location,
            position: offset,
            hasher: (offset == 0).then(Sha256::new),
        })
    }

    fn blob_entry(&self, digest: &Digest) -> Result<Entry, Error> {
        self.index
            .lock()
            .expect("index")
            .blob(digest)
            .ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))
    }

    async fn verify_blob(&self, digest: &Digest, entry: &Entry) -> Result<(), Error> {
        let mut hasher = Sha256::new();
        let mut done = 0;
        while done < digest.size {
            let want = (digest.size - done).min(IO_CHUNK as u64);
            hasher.update(
                self.segments
                    .read(&entry.location, done, want as usize)
                    .await?,
            );
            done += want;
        }
        if hasher.finalize()[..] != digest.hash {
            return Err(self.drop_corrupt(digest));
        }
        self.index.lock().expect("index").mark_verified(digest);
        Ok(())
    }

    fn drop_corrupt(&self, digest: &Digest) -> Error {
        tracing::error!(%digest, "stored blob fails its digest; dropping it from the index");
        self.index.lock().expect("index").remove_blob(digest);
        Error::DataLoss(format!(
            "stored bytes of {digest} are corrupt and were dropped"
        ))
    }

    /// Stores an action-cache value for the action hashing to `action` under `instance`; last
    /// writer wins, whatever the kinds of the old and new values. Keys are hashes alone, so
    /// gRPC clients (which send digests) and HTTP clients (which send hashes) share entries.
    pub async fn put_action(
        self: &Arc<Self>,
        instance: &str,
        action: [u8; HASH_LEN],
        kind: AcKind,
        value: Bytes,
    ) -> Result<(), Error> {
        record::check_instance_name(instance)?;
        let key = RecordKey::Action {
            instance: instance.to_owned(),
            action,
            kind,
        };
        let sha: [u8; 32] = Sha256::digest(&value).into();
        let location = self
            .segments
            .append(&key, &sha, value.len() as u64, Payload::Memory(&value))
            .await?;
        self.make_durable_and_index(key, sha, location).await
    }

    /// The stored action-cache value for `action` under `instance`, verified, if any.
    pub async fn get_action(
        &self,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) -> Result<Option<(AcKind, Bytes)>, Error> {
        let Some((kind, entry)) = self.index.lock().expect("index").action(instance, action) else {
            return Ok(None);
        };
        let bytes = self
            .segments
            .read(&entry.location, 0, entry.location.len as usize)
            .await?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != entry.sha256 {
            let shown = hex::encode(action);
            tracing::error!(instance, action = %shown, "stored action-cache value is corrupt; dropping it");
            self.index
                .lock()
                .expect("index")
                .remove_action(instance, action);
            return Ok(None);
        }
        Ok(Some((kind, bytes)))
    }
}

/// A streaming read of a blob in chunks. When it starts at offset 0 it hashes as it goes and
/// fails the last chunk if the bytes do not match the digest, so a client that reads to the end
/// never accepts corrupt data.
pub struct BlobReader<'a> {
    engine: &'a Engine,
    digest: Digest,
    location: Option<Location>,
    position: u64,
    hasher: Option<Sha256>,
}

impl BlobReader<'_> {
    /// The next chunk of at most `max` bytes, or `None` at the end.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        let Some(location) = self.location else {
            return Ok(None);
        };
        if self.position >= self.digest.size {
            return Ok(None);
        }
        let want = (self.digest.size - self.position).min(max as u64) as usize;
        let chunk = self
            .engine
            .segments
            .read(&location, self.position, want)
            .await?;
        self.position += want as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&chunk);
            if self.position == self.digest.size {
                let hash = self.hasher.take().expect("hasher").finalize();
                if hash[..] != self.digest.hash {
                    return Err(self.engine.drop_corrupt(&self.digest));
                }
            }
        }
        Ok(Some(chunk))
    }
}
