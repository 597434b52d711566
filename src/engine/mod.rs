//! The storage engine: a content-addressable store (CAS) and an action cache (AC) on segments.
//!
//! A blob's path to durability, and the invariants each step keeps:
//! 1. [`Upload`] receives the bytes while hashing them once; it refuses more bytes than
//!    declared. A small blob is held in memory; a large one (over `memory_stage_limit`) is
//!    written once, as it arrives, into a segment file of its own under `tmp/`.
//! 2. [`Upload::commit`] checks size and hash.
//! 3. A small blob is appended to the active segment and synced by a pipelined group commit
//!    (appends never wait for the fsync in flight). A large one's file is **flushed, synced,
//!    sealed with its footer and synced** before it is renamed into the log (the founding bug
//!    of this project was persisting by path before flushing); the directory is synced and it
//!    joins the log.
//! 4. Only then is the index entry inserted, and only then does the caller get `Ok`.
//!
//! Reads go through the index to (segment, offset, len) and are verified against the digest.

mod digest;
pub mod index;
mod log;
pub mod record;
mod scrub;
mod segment;
mod upload;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use digest::{parse_hash, Digest, DigestFunction, Hasher, HASH_LEN};
use index::{Entry, Index};
pub use log::{LogBatch, LogRecord};
pub use record::{AcKind, RecordKey};
pub(crate) use segment::next_intact_record;
use segment::{
    read_payload, Finish, LogOptions, Payload, Pin, ReaderState, SegmentLog, SoloSegment,
    Writeback, IO_CHUNK,
};
pub use segment::{Location, LogCursor};
pub use upload::Upload;

use crate::seam::{Fs, FsFile, FsLock, Runtime};
pub use crate::store::Error;

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
    /// Write a segment's footer without first syncing the records it names (and, in recovery,
    /// without re-hashing them): the footer may vouch for bytes that are not on disk.
    FooterBeforeSync,
    /// Assemble the store stack without its completeness check, so action results whose blobs
    /// are gone are served (what HTTP did before the stack).
    IncompleteActionServed,
    /// The cascade sweep looks the empty blob up in the index (where it never is), so it removes
    /// complete action results that name it.
    CascadeForgetsEmptyBlob,
    /// The background scrub drops the cold records it reads without comparing their hash.
    ScrubDropsUnverified,
    /// A large upload's own segment joins the log, and is indexed and acknowledged, with its
    /// bytes flushed but never synced.
    SoloIndexedBeforeSync,
    /// A group commit's fsync marks durable everything flushed when it *ends*, so records
    /// appended while it was in flight are acknowledged without any fsync covering them.
    SyncWatermarkOverreach,
    /// The object-store uploader sends action results without first making sure their blobs
    /// are in the bucket (and before the blobs of their batch): bazel-remote #767.
    AcBeforeBlobs,
    /// The object-store uploader moves its durable watermark past records before the bucket
    /// has acknowledged them, so a crash loses them from the upload queue.
    WatermarkPastUnacked,
}

impl PlantedBug {
    /// Every planted bug, in the order the simulator hunts them.
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::UnflushedPersist,
        PlantedBug::IndexBeforeSync,
        PlantedBug::AckBeforeIndex,
        PlantedBug::FooterBeforeSync,
        PlantedBug::IncompleteActionServed,
        PlantedBug::CascadeForgetsEmptyBlob,
        PlantedBug::ScrubDropsUnverified,
        PlantedBug::SoloIndexedBeforeSync,
        PlantedBug::SyncWatermarkOverreach,
        PlantedBug::AcBeforeBlobs,
        PlantedBug::WatermarkPastUnacked,
    ];

    /// Whether `planted` (a configuration's bug) is this one. Always false in a build without
    /// the `planted-bugs` feature, whatever the configuration says.
    pub fn is_planted_in(self, planted: Option<PlantedBug>) -> bool {
        cfg!(feature = "planted-bugs") && planted == Some(self)
    }

    /// The name `hoard-sim --planted` takes.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::UnflushedPersist => "unflushed-persist",
            PlantedBug::IndexBeforeSync => "index-before-sync",
            PlantedBug::AckBeforeIndex => "ack-before-index",
            PlantedBug::FooterBeforeSync => "footer-before-sync",
            PlantedBug::IncompleteActionServed => "incomplete-action-served",
            PlantedBug::CascadeForgetsEmptyBlob => "cascade-forgets-empty-blob",
            PlantedBug::ScrubDropsUnverified => "scrub-drops-unverified",
            PlantedBug::SoloIndexedBeforeSync => "solo-indexed-before-sync",
            PlantedBug::SyncWatermarkOverreach => "sync-watermark-overreach",
            PlantedBug::AcBeforeBlobs => "ac-before-blobs",
            PlantedBug::WatermarkPastUnacked => "watermark-past-unacked",
        }
    }

    /// The bug called `name`.
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directory.
    pub dir: PathBuf,
    /// Largest blob accepted.
    pub max_blob_size: u64,
    /// Byte budget for what the cache occupies on disk (every segment, headers and all); the
    /// least recently used records are evicted to stay within it (see [`Engine`]).
    pub max_size: Option<u64>,
    /// Told of every eviction and removal (the simulator's oracle listens here).
    pub on_evict: Option<EvictionObserver>,
    /// A segment is closed once it reaches about this many bytes.
    pub segment_size: u64,
    /// Uploads up to this size are held in memory and group-committed; larger ones are written
    /// once into a segment of their own (as are eviction's copies of such records).
    pub memory_stage_limit: u64,
    /// Uploads that may be in progress at once.
    pub max_concurrent_uploads: usize,
    /// Re-hash cold records in the background at about this many bytes per second, dropping
    /// those that fail (see `scrub.rs`); `None`: no background scrub.
    pub scrub_rate: Option<u64>,
    /// Evict nothing until [`Engine::set_upload_floor`] says what is uploaded (the
    /// object-store tier sets this).
    pub hold_for_upload: bool,
    /// A planted bug (simulator only: ignored without the `planted-bugs` feature).
    pub planted: Option<PlantedBug>,
}

impl EngineConfig {
    /// The largest blob the engine admits: `max_blob_size`, and at most half of `max_size`
    /// (evicting everything else would still not make room for a larger one next to a segment).
    pub fn largest_blob(&self) -> u64 {
        self.max_size.map_or(self.max_blob_size, |budget| {
            self.max_blob_size.min(budget / 2)
        })
    }

    /// Defaults for a data directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            dir: dir.into(),
            max_blob_size: 64 << 30,
            max_size: None,
            on_evict: None,
            segment_size: 256 << 20,
            memory_stage_limit: 1 << 20,
            max_concurrent_uploads: 4096,
            scrub_rate: None,
            hold_for_upload: false,
            planted: None,
        }
    }

    fn planted(&self, bug: PlantedBug) -> bool {
        bug.is_planted_in(self.planted)
    }
}

/// Takes the lock of the data directory `dir` (one process per directory): [`Error::Busy`] if a
/// running hoard holds it.
pub async fn lock_data_dir(fs: &dyn Fs, dir: &std::path::Path) -> Result<Box<dyn FsLock>, Error> {
    fs.lock(&dir.join(LOCK_FILE)).await.map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            Error::Busy(format!(
                "data directory {} is in use by another hoard process",
                dir.display()
            ))
        } else {
            Error::io(format!("locking {}", dir.display()), e)
        }
    })
}

/// The index entry of a record just written. Hashed on the way in but never read back, so it is
/// not verified: the first ranged read re-hashes what the disk holds (a write that landed
/// elsewhere is caught there, not served).
fn fresh_entry(location: Location, sha256: [u8; 32]) -> Entry {
    Entry {
        location,
        sha256,
        verified: false,
        referenced: false,
    }
}

/// A callback told of every record evicted, and of every action result removed (as the
/// [`RecordKey::ActionRemoved`] record that removed it).
#[derive(Clone)]
pub struct EvictionObserver(pub Arc<dyn Fn(&RecordKey) + Send + Sync>);

impl std::fmt::Debug for EvictionObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EvictionObserver")
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
    /// Records evicted to keep within the size budget, since start.
    pub evictions: u64,
    /// Payload bytes of those records.
    pub evicted_bytes: u64,
    /// Bytes of every segment file: what the cache occupies on disk.
    pub disk_bytes: u64,
    /// Blobs dropped because their stored bytes failed their digest, since start.
    pub corrupt_dropped: u64,
    /// Action results removed because a blob they name is gone (see
    /// [`Engine::remove_action_if_value`]), since start.
    pub cascade_removals: u64,
    /// Records the background scrub re-hashed, since start.
    pub scrubbed_records: u64,
    /// Payload bytes of those records.
    pub scrubbed_bytes: u64,
}

/// The storage engine. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    tmp_dir: PathBuf,
    segments: SegmentLog,
    index: Mutex<Index>,
    /// Action results removed by [`Engine::remove_action_if_value`].
    cascade_removals: AtomicU64,
    /// Records the background scrub re-hashed, and their payload bytes.
    scrubbed_records: AtomicU64,
    scrubbed_bytes: AtomicU64,
    uploads: upload::Tracker,
    /// One eviction pass at a time.
    evicting: tokio::sync::Mutex<()>,
    /// Segments at or after this one are not evicted: not yet uploaded (see [`log`]).
    upload_floor: AtomicU32,
    /// Where dropped uploads send their temp files for removal.
    janitor: tokio::sync::mpsc::UnboundedSender<PathBuf>,
    _lock: Box<dyn FsLock>,
}

const TMP_DIR: &str = "tmp";
/// A large upload starts an early sync of what it wrote every this many stage limits (and at
/// least every [`MIN_WRITEBACK`] bytes).
const WRITEBACK_STAGE_LIMITS: u64 = 8;
const MIN_WRITEBACK: u64 = 64 << 10;
/// The smallest segment a small budget may shrink segments to.
const MIN_SEGMENT_SIZE: u64 = 64 << 10;
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
        let lock = lock_data_dir(fs.as_ref(), &dir).await?;
        // The directories must be durable before any record in them is acknowledged.
        for d in [&dir, &tmp_dir, &segment_dir] {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent)
                    .await
                    .map_err(|e| Error::io(format!("syncing {}", parent.display()), e))?;
            }
        }
        upload::sweep_temp_files(fs.as_ref(), &tmp_dir).await?;

        let mut index = Index::with_seed(runtime.random_u64());
        let (blobs, actions) = segment::count_sealed_records(fs.as_ref(), &segment_dir).await;
        index.reserve(blobs as usize, actions as usize);
        // Eviction frees whole segments, so a budget needs several of them.
        let segment_size = match config.max_size {
            Some(budget) => config.segment_size.min((budget / 8).max(MIN_SEGMENT_SIZE)),
            None => config.segment_size,
        };
        let options = LogOptions {
            target_size: segment_size,
            footer_before_sync: config.planted(PlantedBug::FooterBeforeSync),
            sync_watermark_overreach: config.planted(PlantedBug::SyncWatermarkOverreach),
            seal_before_join: config.hold_for_upload,
        };
        let segments = SegmentLog::open(fs.clone(), runtime.clone(), segment_dir, options, |r| {
            let entry = Entry {
                location: r.location,
                sha256: r.payload_sha256,
                verified: r.verified,
                referenced: false,
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
        let floor = if config.hold_for_upload {
            0
        } else {
            log::NO_FLOOR
        };
        let upload_floor = AtomicU32::new(floor);
        let engine = Arc::new(Engine {
            config,
            fs,
            runtime,
            tmp_dir,
            segments,
            index: Mutex::new(index),
            cascade_removals: Default::default(),
            scrubbed_records: Default::default(),
            scrubbed_bytes: Default::default(),
            uploads,
            janitor,
            evicting: tokio::sync::Mutex::new(()),
            upload_floor,
            _lock: lock,
        });
        engine.start_scrub();
        Ok(engine)
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// What the engine holds.
    pub fn stats(&self) -> Stats {
        Stats {
            disk_bytes: self.segments.disk_bytes(),
            cascade_removals: self.cascade_removals.load(Ordering::Relaxed),
            scrubbed_records: self.scrubbed_records.load(Ordering::Relaxed),
            scrubbed_bytes: self.scrubbed_bytes.load(Ordering::Relaxed),
            ..self.index.lock().expect("index").stats()
        }
    }

    /// The runtime the engine runs on (for the maintenance tasks of the layers above).
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Clean shutdown, once the front ends have stopped: seals the active segment (flushed,
    /// synced, footer written), so the next start reads its footer instead of re-hashing it.
    /// Appends that still arrive afterwards start a new segment.
    pub async fn shutdown(&self) {
        self.segments.seal_active().await;
    }

    /// Whether the CAS holds `digest` (the empty blob always). A hit counts as a use: a client
    /// told "present" relies on the blob staying.
    pub fn contains(&self, digest: &Digest) -> bool {
        digest.is_empty()
            || self
                .index
                .lock()
                .expect("index")
                .touch_blob(digest)
                .is_some()
    }

    /// The digest of the stored blob whose bytes hash to `hash` under `function` (the empty
    /// blob included).
    pub fn blob_by_hash(&self, function: DigestFunction, hash: &[u8; 32]) -> Option<Digest> {
        let empty = Digest::empty(function);
        if *hash == empty.hash {
            return Some(empty);
        }
        self.index
            .lock()
            .expect("index")
            .blob_by_hash(function, hash)
    }

    /// The subset of `digests` the CAS does not hold, in request order. The ones it holds count
    /// as used (Bazel takes "present" to mean "will still be there").
    pub fn missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let mut index = self.index.lock().expect("index");
        digests
            .iter()
            .filter(|d| !d.is_empty() && index.touch_blob(d).is_none())
            .copied()
            .collect()
    }

    /// The subset of `digests` the CAS does not hold, in request order, without counting a use
    /// (for maintenance that must not keep blobs alive).
    pub fn missing_untouched(&self, digests: &[Digest]) -> Vec<Digest> {
        let index = self.index.lock().expect("index");
        digests
            .iter()
            .filter(|d| !d.is_empty() && index.peek_blob(d).is_none())
            .copied()
            .collect()
    }

    /// Starts an upload of the blob `expected`. Fails early when the declared size is over the
    /// blob limit or the free space, or when too many uploads are in progress.
    pub async fn begin_upload(self: &Arc<Self>, expected: Digest) -> Result<Upload, Error> {
        let largest = self.config.largest_blob();
        if expected.size > largest {
            let (what, limit) = if expected.size > self.config.max_blob_size {
                ("blob", self.config.max_blob_size)
            } else {
                ("blob (half the cache size budget at most)", largest)
            };
            return Err(Error::TooLarge {
                what,
                size: expected.size,
                limit,
            });
        }
        let permit = self.uploads.admit()?;
        if expected.size > self.config.memory_stage_limit {
            let free = self
                .fs
                .free_space(&self.config.dir)
                .await
                .map_err(|e| Error::io("checking free space", e))?;
            // Written once, into its final file.
            if expected.size > free {
                return Err(Error::NoSpace(format!(
                    "blob {expected} needs {} bytes, {free} are free",
                    expected.size
                )));
            }
            Upload::to_segment(self.clone(), expected, permit, self.solo_path()).await
        } else {
            Ok(Upload::in_memory(self.clone(), expected, permit))
        }
    }

    /// Stores a blob held in memory (verified against `digest`).
    pub async fn put_blob(self: &Arc<Self>, digest: Digest, data: Bytes) -> Result<(), Error> {
        let mut upload = self.begin_upload(digest).await?;
        upload.write(data).await?;
        upload.commit().await
    }

    /// Early writeback for a large upload (see [`Writeback`]).
    fn writeback(&self) -> Writeback {
        let every = (self.config.memory_stage_limit)
            .saturating_mul(WRITEBACK_STAGE_LIMITS)
            .max(MIN_WRITEBACK);
        Writeback::new(self.runtime.clone(), every)
    }

    /// Where the next solo segment is written until it joins the log.
    fn solo_path(&self) -> PathBuf {
        self.tmp_dir.join(format!(
            "{:016x}{:016x}.upload",
            self.runtime.random_u64(),
            self.runtime.random_u64()
        ))
    }

    /// The right to commit `digest`, or `None` once it is stored: one commit per digest at a
    /// time, the others wait and then find it indexed.
    async fn claim_unless_stored(&self, digest: Digest) -> Option<upload::DigestClaim> {
        loop {
            if digest.is_empty() || self.contains(&digest) {
                return None;
            }
            match self.uploads.claim_digest(digest) {
                Ok(claim) => return Some(claim),
                Err(wait) => wait.await,
            }
        }
    }

    /// Makes a verified blob durable and indexes it; dedupes concurrent commits of one digest.
    async fn persist_blob(
        self: &Arc<Self>,
        digest: Digest,
        payload: Payload<'_>,
    ) -> Result<(), Error> {
        let Some(_turn) = self.claim_unless_stored(digest).await else {
            return Ok(());
        };
        let key = RecordKey::Blob(digest);
        let appended = self
            .segments
            .append(&key, &digest.hash, digest.size, payload)
            .await?;
        self.make_durable_and_index(key, digest.hash, appended)
            .await
    }

    /// Makes a verified blob written into a segment of its own durable, joins it to the log and
    /// indexes it; dedupes like [`Engine::persist_blob`].
    async fn persist_solo(
        self: &Arc<Self>,
        digest: Digest,
        solo: SoloSegment,
    ) -> Result<(), Error> {
        let Some(_turn) = self.claim_unless_stored(digest).await else {
            let _ = self.janitor.send(solo.path().to_path_buf());
            return Ok(());
        };
        let finish = if self.config.planted(PlantedBug::SoloIndexedBeforeSync) {
            Finish::Unsynced
        } else if self.config.planted(PlantedBug::UnflushedPersist) {
            Finish::Unflushed
        } else {
            Finish::Durable
        };
        let (location, pin) = self.segments.join(solo, finish).await?;
        self.index_durable(RecordKey::Blob(digest), digest.hash, location, pin)
            .await
    }

    /// Syncs a just-appended record, then indexes it: the order every acknowledgement relies on.
    async fn make_durable_and_index(
        self: &Arc<Self>,
        key: RecordKey,
        sha256: [u8; 32],
        (location, pin): (Location, Pin),
    ) -> Result<(), Error> {
        if self.config.planted(PlantedBug::IndexBeforeSync) {
            let entry = fresh_entry(location, sha256);
            self.index.lock().expect("index").insert(key, entry);
            return self.segments.sync(&location).await;
        }
        self.segments.sync(&location).await?;
        self.index_durable(key, sha256, location, pin).await
    }

    /// Indexes a durable record (then lets eviction run): only now may the caller be told `Ok`.
    async fn index_durable(
        self: &Arc<Self>,
        key: RecordKey,
        sha256: [u8; 32],
        location: Location,
        pin: Pin,
    ) -> Result<(), Error> {
        let entry = fresh_entry(location, sha256);
        if self.config.planted(PlantedBug::AckBeforeIndex) {
            let engine = self.clone();
            self.runtime.spawn(Box::pin(async move {
                engine
                    .runtime
                    .sleep(std::time::Duration::from_millis(50))
                    .await;
                engine.index.lock().expect("index").insert(key, entry);
                drop(pin);
            }));
            return Ok(());
        }
        self.index.lock().expect("index").insert(key, entry);
        drop(pin);
        self.enforce_budget().await;
        Ok(())
    }

    /// Evicts until the disk holds no more than the budget (plus the segment being written).
    /// Failures are logged, not returned: the record that triggered this is already durable.
    async fn enforce_budget(self: &Arc<Self>) {
        let Some(budget) = self.config.max_size else {
            return;
        };
        if self.segments.disk_bytes() <= budget {
            return;
        }
        let _pass = self.evicting.lock().await;
        while self.segments.disk_bytes() > budget {
            let Some(oldest) = self.segments.oldest_closed() else {
                return;
            };
            if self.held_for_upload(oldest) {
                tracing::debug!(segment = oldest, "not evicting: not yet uploaded");
                return;
            }
            if let Err(e) = self.evict_segment(oldest).await {
                tracing::warn!(segment = oldest, error = %e, "eviction failed");
                return;
            }
        }
    }

    /// Frees the oldest segment. Eviction approximates LRU with a second chance: a live record
    /// used since eviction last passed (a read, a FindMissingBlobs or upload hit, an AC get) is
    /// copied forward and loses its mark; the rest are forgotten. Copies are durable before the
    /// old segment is deleted, and the index forgets a record before its bytes go, so a read
    /// either finds a record whose segment handle it then holds, or misses.
    async fn evict_segment(self: &Arc<Self>, segment: u32) -> Result<(), Error> {
        let reader = self
            .segments
            .reader(segment)
            .await?
            .ok_or_else(|| Error::Internal(format!("segment {segment} is gone")))?;
        let mut moved = Vec::new();
        let listing = self.segments.records(segment).await?;
        for record in listing.records {
            let (key, from) = (record.key, record.location);
            let live = self.index.lock().expect("index").live_at(&key, &from);
            match live {
                Some(entry) if entry.referenced => {
                    match self
                        .copy_forward(&key, &entry.sha256, &from, reader.as_ref())
                        .await
                    {
                        Ok((to, pin)) => moved.push((key, from, to, pin)),
                        Err(Error::DataLoss(why)) => {
                            tracing::error!(%why, "dropping a corrupt record instead of keeping it");
                            self.forget(&key, &from);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some(_) => self.forget(&key, &from),
                None => {}
            }
        }
        for (_, _, to, _) in &moved {
            self.segments.sync(to).await?;
        }
        {
            let mut index = self.index.lock().expect("index");
            for (key, from, to, _) in &moved {
                index.move_if_at(key, from, *to);
            }
        }
        let freed = self.segments.remove(segment).await?;
        if !listing.whole {
            // Damage hid records the index may still name: they must not outlive their bytes,
            // or the cache would answer "present" for blobs it can no longer read.
            let left = self
                .index
                .lock()
                .expect("index")
                .entries_in_segment(segment);
            for (key, location) in left {
                self.forget(&key, &location);
            }
        }
        tracing::info!(segment, freed, kept = moved.len(), "evicted segment");
        Ok(())
    }

    /// Copies a live record out of a segment being evicted (verifying it): a large one into a
    /// segment of its own, written outside the writer lock and durable once it returns; a small
    /// one appended to the active segment, to be synced by the caller.
    async fn copy_forward(
        &self,
        key: &RecordKey,
        sha256: &[u8; 32],
        from: &Location,
        reader: &dyn FsFile,
    ) -> Result<(Location, Pin), Error> {
        if from.len <= self.config.memory_stage_limit {
            let payload = Payload::Segment {
                reader,
                offset: from.offset,
            };
            return self.segments.append(key, sha256, from.len, payload).await;
        }
        let path = self.solo_path();
        let mut solo =
            SoloSegment::create(self.fs.as_ref(), path, key.clone(), from.len, *sha256, None)
                .await?;
        if let Err(e) = solo.copy_from(reader, from.offset).await {
            let _ = self.janitor.send(solo.path().to_path_buf());
            return Err(e);
        }
        self.segments.join(solo, Finish::Durable).await
    }

    /// Evicts one record (if it still lives at `location`), and says so.
    fn forget(&self, key: &RecordKey, location: &Location) {
        if !self.index.lock().expect("index").evict_if_at(key, location) {
            return;
        }
        tracing::debug!(?key, bytes = location.len, "evicted");
        if let Some(observer) = &self.config.on_evict {
            (observer.0)(key);
        }
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
        let (entry, reader) = self.lookup_blob(digest, Use::Touch)?;
        let reader = self.open_reader(digest, &entry, reader).await?;
        if !entry.verified {
            self.verify_blob(digest, &entry.location, reader.as_ref())
                .await?;
        }
        let bytes = read_payload(reader.as_ref(), &entry.location, offset, len as usize).await?;
        if offset == 0 && len == digest.size && !digest.matches(&bytes) {
            return Err(self.drop_corrupt(digest));
        }
        Ok(bytes)
    }

    /// Opens a streaming read of `digest`; see [`BlobReader`]. Counts as a use.
    pub fn open_blob(self: &Arc<Self>, digest: &Digest, offset: u64) -> Result<BlobReader, Error> {
        self.open_blob_with(digest, offset, Use::Touch)
    }

    /// [`Engine::open_blob`] without counting a use (for maintenance that must not keep blobs
    /// alive).
    pub fn open_blob_untouched(
        self: &Arc<Self>,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobReader, Error> {
        self.open_blob_with(digest, offset, Use::Peek)
    }

    fn open_blob_with(
        self: &Arc<Self>,
        digest: &Digest,
        offset: u64,
        usage: Use,
    ) -> Result<BlobReader, Error> {
        if offset > digest.size {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of {digest}"
            )));
        }
        let source = if digest.is_empty() {
            None
        } else {
            let (entry, reader) = self.lookup_blob(digest, usage)?;
            Some(Source {
                entry,
                reader,
                // Reading from 0 verifies as it goes; a ranged read verifies the whole first.
                unverified: !entry.verified && offset > 0,
            })
        };
        Ok(BlobReader {
            engine: self.clone(),
            digest: *digest,
            source,
            position: offset,
            hasher: (offset == 0).then(|| digest.function.hasher()),
        })
    }

    /// A blob's entry and its segment's read handle if open, taken together under the index
    /// lock so eviction (which forgets entries before it deletes a segment) cannot slip in
    /// between.
    fn lookup_blob(
        &self,
        digest: &Digest,
        usage: Use,
    ) -> Result<(Entry, Option<Arc<dyn FsFile>>), Error> {
        let mut index = self.index.lock().expect("index");
        let entry = match usage {
            Use::Touch => index.touch_blob(digest),
            Use::Peek => index.peek_blob(digest),
        };
        let found =
            entry.and_then(
                |entry| match self.segments.reader_now(entry.location.segment) {
                    ReaderState::Open(reader) => Some((entry, Some(reader))),
                    ReaderState::Closed => Some((entry, None)),
                    ReaderState::Gone => None,
                },
            );
        found.ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))
    }

    /// The read handle a lookup found, or one opened now. A segment evicted in between (gone,
    /// or its file removed before the open) is a plain miss.
    async fn open_reader(
        &self,
        digest: &Digest,
        entry: &Entry,
        found: Option<Arc<dyn FsFile>>,
    ) -> Result<Arc<dyn FsFile>, Error> {
        if let Some(reader) = found {
            return Ok(reader);
        }
        self.segments
            .reader(entry.location.segment)
            .await?
            .ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))
    }

    async fn verify_blob(
        &self,
        digest: &Digest,
        location: &Location,
        reader: &dyn FsFile,
    ) -> Result<(), Error> {
        let mut hasher = digest.function.hasher();
        let mut done = 0;
        while done < digest.size {
            let want = (digest.size - done).min(IO_CHUNK as u64);
            hasher.update(&read_payload(reader, location, done, want as usize).await?);
            done += want;
        }
        if hasher.finalize() != digest.hash {
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

    /// Stores an action-cache value for the action hashing to `action` (under `function`) in
    /// `instance`; last writer wins, whatever the kinds of the old and new values. Keys are
    /// hashes alone, so gRPC clients (which send digests) and HTTP clients (which send hashes)
    /// share entries; keys of different digest functions never do.
    pub async fn put_action(
        self: &Arc<Self>,
        instance: &str,
        function: DigestFunction,
        action: [u8; HASH_LEN],
        kind: AcKind,
        value: Bytes,
    ) -> Result<(), Error> {
        record::check_instance_name(instance)?;
        let key = RecordKey::Action {
            instance: instance.to_owned(),
            function,
            action,
            kind,
        };
        let sha = DigestFunction::Sha256.hash(&value);
        let appended = self
            .segments
            .append(&key, &sha, value.len() as u64, Payload::Memory(&value))
            .await?;
        self.make_durable_and_index(key, sha, appended).await
    }

    /// The stored action-cache value for `action` under `instance`, verified, if any. Counts
    /// as a use.
    pub async fn get_action(
        &self,
        instance: &str,
        function: DigestFunction,
        action: &[u8; HASH_LEN],
    ) -> Result<Option<(AcKind, Bytes)>, Error> {
        self.read_action(instance, function, action, Use::Touch)
            .await
    }

    /// [`Engine::get_action`] without counting a use (for maintenance).
    pub async fn peek_action(
        &self,
        instance: &str,
        function: DigestFunction,
        action: &[u8; HASH_LEN],
    ) -> Result<Option<(AcKind, Bytes)>, Error> {
        self.read_action(instance, function, action, Use::Peek)
            .await
    }

    async fn read_action(
        &self,
        instance: &str,
        function: DigestFunction,
        action: &[u8; HASH_LEN],
        usage: Use,
    ) -> Result<Option<(AcKind, Bytes)>, Error> {
        let found = {
            let mut index = self.index.lock().expect("index");
            let found = match usage {
                Use::Touch => index.touch_action(function, instance, action),
                Use::Peek => index.peek_action(function, instance, action),
            };
            found.and_then(
                |(kind, entry)| match self.segments.reader_now(entry.location.segment) {
                    ReaderState::Open(reader) => Some((kind, entry, Some(reader))),
                    ReaderState::Closed => Some((kind, entry, None)),
                    ReaderState::Gone => None,
                },
            )
        };
        let Some((kind, entry, reader)) = found else {
            return Ok(None);
        };
        let reader = match reader {
            Some(reader) => reader,
            None => match self.segments.reader(entry.location.segment).await? {
                Some(reader) => reader,
                None => return Ok(None),
            },
        };
        let bytes = read_payload(
            reader.as_ref(),
            &entry.location,
            0,
            entry.location.len as usize,
        )
        .await?;
        if DigestFunction::Sha256.hash(&bytes) != entry.sha256 {
            let shown = hex::encode(action);
            tracing::error!(instance, action = %shown, "stored action-cache value is corrupt; dropping it");
            self.index
                .lock()
                .expect("index")
                .remove_action(function, instance, action);
            return Ok(None);
        }
        Ok(Some((kind, bytes)))
    }

    /// Up to `max` keys `(function, instance, action)` of stored `ActionResult`s from position `from` of
    /// a walk over the index, and where the walk continues (`None` at its end). The walk may
    /// skip or repeat keys written meanwhile: it finds candidates for a sweep, never answers.
    pub fn action_results_from(
        &self,
        from: usize,
        max: usize,
    ) -> (Vec<index::ActionId>, Option<usize>) {
        self.index
            .lock()
            .expect("index")
            .action_results_from(from, max)
    }

    /// Removes the action-cache entry for `action` under `instance` if its value still hashes
    /// to `value_sha256` (a value written since stays), durably: a removal record is appended
    /// and synced before the index forgets the entry, so the entry does not come back at the
    /// next start. Returns whether it removed the entry.
    ///
    /// The cascade (see `store::cascade`) calls this for action results whose blobs are gone.
    pub async fn remove_action_if_value(
        self: &Arc<Self>,
        instance: &str,
        function: DigestFunction,
        action: [u8; HASH_LEN],
        value_sha256: [u8; 32],
    ) -> Result<bool, Error> {
        let holds_value = |index: &Index| {
            index
                .peek_action(function, instance, &action)
                .is_some_and(|(_, entry)| entry.sha256 == value_sha256)
        };
        if !holds_value(&self.index.lock().expect("index")) {
            return Ok(false);
        }
        let key = RecordKey::ActionRemoved {
            instance: instance.to_owned(),
            function,
            action,
            value_sha256,
        };
        let (location, pin) = self
            .segments
            .append(&key, &Digest::EMPTY.hash, 0, Payload::Memory(&[]))
            .await?;
        self.segments.sync(&location).await?;
        let removed = self.index.lock().expect("index").remove_action_valued(
            function,
            instance,
            &action,
            &value_sha256,
        );
        drop(pin);
        if removed {
            self.cascade_removals.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(instance, action = %hex::encode(action), "removed an action result");
            if let Some(observer) = &self.config.on_evict {
                (observer.0)(&key);
            }
        }
        Ok(removed)
    }
}

/// Whether a lookup counts as a use of what it finds (its second chance against eviction).
#[derive(Clone, Copy)]
enum Use {
    /// A client's request: the record is kept longer.
    Touch,
    /// Maintenance: the record's place in the eviction order is left as it was.
    Peek,
}

/// Where a [`BlobReader`] reads from.
struct Source {
    entry: Entry,
    /// Opened at the first chunk when the lookup found the segment closed.
    reader: Option<Arc<dyn FsFile>>,
    /// The stored bytes must be verified before the first chunk is returned.
    unverified: bool,
}

/// A streaming read of a blob in chunks. It holds the segment's handle (opened at the first
/// chunk if the segment had none open), so eviction cannot pull the bytes from under it once
/// reading started. When it starts at offset 0 it hashes as it goes and fails the last
/// chunk if the bytes do not match the digest, so a client that reads to the end never accepts
/// corrupt data; a ranged read of a blob not verified since it was written verifies it first.
pub struct BlobReader {
    engine: Arc<Engine>,
    digest: Digest,
    source: Option<Source>,
    position: u64,
    hasher: Option<Hasher>,
}

impl BlobReader {
    /// The next chunk of at most `max` bytes, or `None` at the end.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        let Some(source) = &mut self.source else {
            return Ok(None);
        };
        if self.position >= self.digest.size {
            return Ok(None);
        }
        let reader = match &source.reader {
            Some(reader) => reader.clone(),
            None => {
                let found = self.engine.open_reader(&self.digest, &source.entry, None);
                source.reader.insert(found.await?).clone()
            }
        };
        let location = source.entry.location;
        if source.unverified {
            self.engine
                .verify_blob(&self.digest, &location, reader.as_ref())
                .await?;
            source.unverified = false;
        }
        let want = (self.digest.size - self.position).min(max as u64) as usize;
        let chunk = read_payload(reader.as_ref(), &location, self.position, want).await?;
        self.position += want as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&chunk);
            if self.position == self.digest.size {
                let hash = self.hasher.take().expect("hasher").finalize();
                if hash != self.digest.hash {
                    return Err(self.engine.drop_corrupt(&self.digest));
                }
            }
        }
        Ok(Some(chunk))
    }
}
