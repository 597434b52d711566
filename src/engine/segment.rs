//! Segments: append-only files of records, one active writer, group-committed fsyncs.
//!
//! Invariants this module keeps:
//! - **Synced before indexed.** [`SegmentLog::append`] returns a location only after the record's
//!   bytes are covered by a successful `sync` of its segment. The caller indexes it after that.
//! - **A failed sync retires the segment.** Nothing appended to it since its last good sync is
//!   ever reported durable, and new records go to a fresh segment. A failed append is cut off
//!   (the file is truncated back to the last good end) and the segment goes on; if the cut fails
//!   too, the segment is retired.
//! - **A failing disk retires at most one segment per back-off.** After a retirement no new
//!   segment is started before a back-off (doubling while failures go on, reset by a good sync);
//!   a retired segment holding nothing durable is removed with its handles.
//! - **A footer names only durable, intact records.** Sealing syncs the records first, then
//!   writes the footer and trailer and syncs again; recovery re-hashes and syncs an unsealed
//!   segment's records before it indexes (then seals) them: after a process died, verified
//!   bytes may still be only in the page cache. A footer is trusted only when its checksums
//!   match.
//! - **A new segment's directory entry is durable before any record in it is acknowledged.**
//! - **Bounded descriptors.** Segments are opened for reading on demand and at most
//!   [`MAX_OPEN_READERS`] stay open (plus the active one's); recovery opens one file at a time.
//!   A read holding a handle keeps it (and the file's bytes) even if the segment is evicted.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::record::{self, FooterBuilder, Header, RecordKey, Torn};
use super::{DigestFunction, Error};
use crate::seam::fs::read_exact_at;
use crate::seam::{Fs, FsFile, Runtime};

/// Bytes moved per read when copying or scanning.
pub const IO_CHUNK: usize = 1 << 20;

/// Segment read handles kept open at once, besides the active segment's.
pub const MAX_OPEN_READERS: usize = 64;

/// Tries of a read during recovery before a media error fails the start: a transient `EIO`
/// should not keep the whole cache down.
const RECOVERY_READ_TRIES: usize = 3;

/// The first wait before a new segment after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a record's payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment id.
    pub segment: u32,
    /// Offset of the payload's first byte within the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
}

/// Keeps a segment from eviction while a record appended to it is not yet indexed.
pub struct Pin {
    pins: Arc<Mutex<BTreeMap<u32, usize>>>,
    segment: u32,
}

impl Pin {
    fn new(pins: Arc<Mutex<BTreeMap<u32, usize>>>, segment: u32) -> Pin {
        *pins.lock().expect("pins").entry(segment).or_default() += 1;
        Pin { pins, segment }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().expect("pins");
        if let Some(count) = pins.get_mut(&self.segment) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.segment);
            }
        }
    }
}

/// Where the payload of an append comes from.
pub enum Payload<'a> {
    /// Bytes in memory, already hashed by the caller.
    Memory(&'a [u8]),
    /// A closed, synced staging file; re-hashed while copied and checked against the header.
    File(&'a Path),
    /// A record's payload in another segment (eviction copying a live record forward);
    /// re-hashed while copied.
    Segment {
        /// The source segment's read handle.
        reader: &'a dyn FsFile,
        /// Where the payload starts in it.
        offset: u64,
    },
}

/// A record recovered from disk.
pub struct Recovered {
    /// The record's key.
    pub key: RecordKey,
    /// Where its payload is.
    pub location: Location,
    /// SHA-256 of the payload, from the header.
    pub payload_sha256: [u8; 32],
    /// Whether recovery re-hashed the payload.
    pub verified: bool,
}

/// A segment's read handle as a lookup finds it.
pub enum ReaderState {
    /// Open: reads can start at once.
    Open(Arc<dyn FsFile>),
    /// The segment exists but has no open handle: [`SegmentLog::reader`] opens one.
    Closed,
    /// The log no longer has the segment (evicted or removed).
    Gone,
}

struct Writer {
    segment: u32,
    file: Box<dyn FsFile>,
    /// Bytes written to `file` (all of them flushed).
    end: u64,
    /// Bytes known durable.
    synced: u64,
    /// The segment takes no more records: a sync failed, or a failed append could not be cut.
    poisoned: bool,
    /// Every record appended so far, for the footer.
    footer: FooterBuilder,
}

/// The writer and what it needs to start the next segment.
struct WriterState {
    /// `None` until the first append after a start, a seal or a retirement.
    active: Option<Writer>,
    next_segment: u32,
    /// After a failure retired a segment: no new segment before this moment.
    retry_at: Option<SystemTime>,
    backoff: Duration,
    /// Whether that failure was a full disk (clients are told so while the back-off lasts).
    disk_full: bool,
}

/// A segment file as the log knows it.
struct Segment {
    /// Bytes in the file.
    len: u64,
    /// Shared by every read of the segment while open; an open handle keeps a removed file
    /// readable.
    reader: Option<Arc<dyn FsFile>>,
    /// When the reader was last handed out (a tick of [`Segments::clock`]).
    used: u64,
}

#[derive(Default)]
struct Segments {
    map: BTreeMap<u32, Segment>,
    /// Readers open (the active segment's included).
    open: usize,
    clock: u64,
}

/// The set of segments: readers opened on demand, a writer for the newest.
pub struct SegmentLog {
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    dir: PathBuf,
    target_size: u64,
    segments: Mutex<Segments>,
    /// The writer's segment, 0 when there is none (readable without waiting for the writer).
    active: AtomicU32,
    /// Appends per segment not yet indexed (or abandoned): such a segment must not be evicted,
    /// or the index would be pointed at a deleted file.
    pins: Arc<Mutex<BTreeMap<u32, usize>>>,
    /// Segments this process sealed: every byte in them is durable.
    sealed: Mutex<BTreeSet<u32>>,
    writer: tokio::sync::Mutex<WriterState>,
    /// The planted bug `footer-before-sync`: footers are written without syncing (or, in
    /// recovery, re-hashing) the records they name first.
    footer_before_sync: bool,
}

fn segment_name(id: u32) -> String {
    format!("{id:010}.seg")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok()
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::io(context, source)
}

fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::NoSpace(_))
}

/// Settings of a [`SegmentLog`].
pub struct LogOptions {
    /// A segment is sealed once it reaches about this many bytes.
    pub target_size: u64,
    /// The planted bug `footer-before-sync` (always `false` outside the simulator).
    pub footer_before_sync: bool,
}

impl SegmentLog {
    /// Opens the segments under `dir`, recovering every complete record (handed to `found`, in
    /// log order): sealed segments from their footers, the others by a verifying scan that cuts
    /// torn tails off and then seals them. Empty segments are removed. No segment is created
    /// until the first append.
    pub async fn open(
        fs: Arc<dyn Fs>,
        runtime: Arc<dyn Runtime>,
        dir: PathBuf,
        options: LogOptions,
        mut found: impl FnMut(Recovered),
    ) -> Result<SegmentLog, Error> {
        let names = fs
            .list_dir(&dir)
            .await
            .map_err(io_error(format!("listing {}", dir.display())))?;
        let ids: Vec<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        let mut segments = Segments::default();
        let mut removed = 0;
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let len = recover_segment(
                fs.as_ref(),
                &path,
                id,
                options.footer_before_sync,
                &mut found,
            )
            .await?;
            if len == 0 {
                fs.remove(&path)
                    .await
                    .map_err(io_error(format!("removing empty {}", path.display())))?;
                removed += 1;
                continue;
            }
            segments.map.insert(
                id,
                Segment {
                    len,
                    reader: None,
                    used: 0,
                },
            );
        }
        if removed > 0 {
            fs.sync_dir(&dir)
                .await
                .map_err(io_error(format!("syncing {}", dir.display())))?;
            tracing::info!(removed, "removed empty segments");
        }
        let next_segment = ids.last().map_or(1, |id| id + 1);
        Ok(SegmentLog {
            fs,
            runtime,
            dir,
            target_size: options.target_size,
            segments: Mutex::new(segments),
            active: AtomicU32::new(0),
            pins: Arc::default(),
            sealed: Mutex::new(BTreeSet::new()),
            writer: tokio::sync::Mutex::new(WriterState {
                active: None,
                next_segment,
                retry_at: None,
                backoff: FIRST_BACKOFF,
                disk_full: false,
            }),
            footer_before_sync: options.footer_before_sync,
        })
    }

    /// Appends one record (written and flushed, not yet durable: see [`SegmentLog::sync`]).
    /// The segment cannot be evicted while the returned [`Pin`] lives: hold it until the record
    /// is indexed.
    ///
    /// For [`Payload::File`] the bytes are hashed again while copied; a mismatch with
    /// `payload_sha256` fails the append (the staging file changed under us).
    pub async fn append(
        &self,
        key: &RecordKey,
        payload_sha256: &[u8; 32],
        payload_len: u64,
        payload: Payload<'_>,
    ) -> Result<(Location, Pin), Error> {
        let header = record::encode_header(key, payload_len, payload_sha256);
        let record_len = header.len() as u64 + payload_len;
        let mut state = self.writer.lock().await;
        let full = |w: &Writer| w.end > 0 && w.end + record_len > self.target_size;
        if state.active.as_ref().is_some_and(full) && self.retire(&mut state).await {
            self.back_off(&mut state, false);
        }
        if state.active.is_none() {
            self.start_segment(&mut state).await?;
        }
        let writer = state.active.as_mut().expect("a segment was just started");
        let start = writer.end;
        let written = write_record(
            writer,
            &header,
            (key.checksum_function(), payload_sha256),
            payload_len,
            payload,
            self.fs.as_ref(),
        )
        .await;
        if let Err(e) = written {
            // Reclaim the failed append's bytes; a segment that cannot be cut back is retired.
            if let Err(cut) = writer.file.truncate(start).await {
                tracing::warn!(segment = writer.segment, error = %cut, "cutting a failed append failed");
                writer.poisoned = true;
                self.fail(&mut state, is_disk_full(&e)).await;
            }
            return Err(e);
        }
        writer.end = start + record_len;
        let offset = start + header.len() as u64;
        writer.footer.push(key, offset, payload_len, payload_sha256);
        let segment = writer.segment;
        self.note_len(segment, writer.end);
        let location = Location {
            segment,
            offset,
            len: payload_len,
        };
        Ok((location, Pin::new(self.pins.clone(), segment)))
    }

    /// Returns once the record at `location` is durable. Concurrent callers share one `fsync`
    /// (group commit): whoever takes the writer first syncs everything appended so far.
    pub async fn sync(&self, location: &Location) -> Result<(), Error> {
        let (segment, end) = (location.segment, location.offset + location.len);
        let mut state = self.writer.lock().await;
        let Some(writer) = state.active.as_mut().filter(|w| w.segment == segment) else {
            // Sealed since (every byte synced), or retired after a failure.
            return if self.is_sealed_durable(segment) {
                Ok(())
            } else {
                Err(Error::io(
                    format!("segment {segment}"),
                    io::Error::other("segment was retired after a failed write or sync"),
                ))
            };
        };
        if writer.synced >= end {
            return Ok(());
        }
        if writer.poisoned {
            return Err(Error::io(
                format!("segment {segment}"),
                io::Error::other("segment was poisoned by an earlier failed write or sync"),
            ));
        }
        let target = writer.end;
        match writer.file.sync().await {
            Ok(()) => {
                writer.synced = target;
                state.retry_at = None;
                state.backoff = FIRST_BACKOFF;
                Ok(())
            }
            Err(e) => {
                writer.poisoned = true;
                let e = Error::io(format!("syncing segment {segment}"), e);
                self.fail(&mut state, is_disk_full(&e)).await;
                Err(e)
            }
        }
    }

    fn is_sealed_durable(&self, segment: u32) -> bool {
        self.sealed.lock().expect("sealed set").contains(&segment)
    }

    /// Seals the active segment (clean shutdown): its records need no verification at the next
    /// start. An active segment without records is removed instead.
    pub async fn seal_active(&self) {
        let mut state = self.writer.lock().await;
        if self.retire(&mut state).await {
            tracing::warn!("the active segment could not be sealed; the next start verifies it");
        }
    }

    /// Starts the next segment, unless a recent failure's back-off is still running.
    async fn start_segment(&self, state: &mut WriterState) -> Result<(), Error> {
        if let Some(at) = state.retry_at {
            if let Ok(left) = at.duration_since(self.runtime.now()) {
                let why = format!(
                    "the disk failed recently; no new segment for another {} ms",
                    left.as_millis()
                );
                return Err(if state.disk_full {
                    Error::NoSpace(format!("disk full: {why}"))
                } else {
                    Error::io("starting a segment", io::Error::other(why))
                });
            }
        }
        let id = state.next_segment;
        match create_segment(self.fs.as_ref(), &self.dir, id).await {
            Ok((writer, reader)) => {
                state.next_segment += 1;
                let mut segments = self.segments.lock().expect("segments");
                segments.clock += 1;
                segments.open += 1;
                let used = segments.clock;
                segments.map.insert(
                    id,
                    Segment {
                        len: 0,
                        reader: Some(reader),
                        used,
                    },
                );
                self.active.store(id, Ordering::Release);
                state.active = Some(writer);
                Ok(())
            }
            Err(e) => {
                // The id is reused by the next try (`create` truncates), so nothing leaks.
                self.back_off(state, is_disk_full(&e));
                Err(e)
            }
        }
    }

    /// A write or sync failed: the active segment is retired at once, and the next one waits.
    async fn fail(&self, state: &mut WriterState, disk_full: bool) {
        self.retire(state).await;
        self.back_off(state, disk_full);
    }

    fn back_off(&self, state: &mut WriterState, disk_full: bool) {
        state.retry_at = Some(self.runtime.now() + state.backoff);
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        state.disk_full = disk_full;
    }

    /// Closes the active segment: a healthy one with records is sealed; one with nothing durable
    /// in it is removed with its handles; the next append starts a new segment. Returns whether
    /// the segment had failed (or its seal did).
    async fn retire(&self, state: &mut WriterState) -> bool {
        let Some(mut writer) = state.active.take() else {
            return false;
        };
        let old = writer.segment;
        self.active.store(0, Ordering::Release);
        let mut sealed = false;
        if !writer.poisoned && !writer.footer.is_empty() {
            match self.seal(&mut writer).await {
                Ok(()) => {
                    sealed = true;
                    self.note_len(old, writer.end);
                    self.sealed.lock().expect("sealed set").insert(old);
                }
                Err(e) => {
                    tracing::warn!(segment = old, error = %e, "sealing segment failed");
                    writer.poisoned = true;
                }
            }
        }
        if let Err(e) = writer.file.close().await {
            tracing::warn!(segment = old, error = %e, "closing segment failed");
        }
        let holds_nothing = writer.footer.is_empty() || writer.synced == 0;
        if !sealed && holds_nothing {
            if let Err(e) = self.remove(old).await {
                tracing::warn!(segment = old, error = %e, "removing an empty segment failed");
            }
        }
        writer.poisoned
    }

    /// Syncs the records, then writes the footer and trailer and syncs them.
    async fn seal(&self, writer: &mut Writer) -> io::Result<()> {
        if !self.footer_before_sync && writer.synced < writer.end {
            writer.file.sync().await?;
            writer.synced = writer.end;
        }
        let footer = writer.footer.finish(writer.end);
        writer.file.write(&footer).await?;
        writer.file.sync().await?;
        writer.end += footer.len() as u64;
        writer.synced = writer.end;
        Ok(())
    }

    fn note_len(&self, segment: u32, len: u64) {
        if let Some(s) = self
            .segments
            .lock()
            .expect("segments")
            .map
            .get_mut(&segment)
        {
            s.len = len;
        }
    }

    /// Bytes of every segment file together: what the cache occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .lock()
            .expect("segments")
            .map
            .values()
            .map(|s| s.len)
            .sum()
    }

    /// The first segment after `after` in log order that is neither being written nor has
    /// records on their way into the index (the background scrub walks the log with it).
    pub fn next_closed_after(&self, after: u32) -> Option<u32> {
        let active = self.active.load(Ordering::Acquire);
        let pinned: BTreeSet<u32> = self.pins.lock().expect("pins").keys().copied().collect();
        let segments = self.segments.lock().expect("segments");
        segments
            .map
            .range(after.saturating_add(1)..)
            .map(|(id, _)| *id)
            .find(|id| *id != active && !pinned.contains(id))
    }

    /// The oldest segment, unless it is the one being written or has records on their way
    /// into the index.
    pub fn oldest_closed(&self) -> Option<u32> {
        let oldest = *self.segments.lock().expect("segments").map.keys().next()?;
        let pinned = self.pins.lock().expect("pins").contains_key(&oldest);
        (oldest != self.active.load(Ordering::Acquire) && !pinned).then_some(oldest)
    }

    /// A segment's read handle if it is open, without waiting (callers look it up under the
    /// index lock, so eviction cannot slip in between the entry and the handle).
    pub fn reader_now(&self, segment: u32) -> ReaderState {
        let mut segments = self.segments.lock().expect("segments");
        segments.clock += 1;
        let now = segments.clock;
        match segments.map.get_mut(&segment) {
            None => ReaderState::Gone,
            Some(s) => match &s.reader {
                Some(reader) => {
                    s.used = now;
                    ReaderState::Open(reader.clone())
                }
                None => ReaderState::Closed,
            },
        }
    }

    /// A segment's read handle, opened if need be; `None` when the segment is gone (evicted,
    /// even between the lookup and the open: a plain miss).
    pub async fn reader(&self, segment: u32) -> Result<Option<Arc<dyn FsFile>>, Error> {
        match self.reader_now(segment) {
            ReaderState::Open(reader) => return Ok(Some(reader)),
            ReaderState::Gone => return Ok(None),
            ReaderState::Closed => {}
        }
        let path = self.dir.join(segment_name(segment));
        let reader: Arc<dyn FsFile> = match self.fs.open_read(&path).await {
            Ok(file) => Arc::from(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let active = self.active.load(Ordering::Acquire);
        let mut segments = self.segments.lock().expect("segments");
        segments.clock += 1;
        let now = segments.clock;
        let Some(s) = segments.map.get_mut(&segment) else {
            // Evicted while opening: this read still has its handle.
            return Ok(Some(reader));
        };
        if let Some(open) = &s.reader {
            s.used = now;
            return Ok(Some(open.clone()));
        }
        s.reader = Some(reader.clone());
        s.used = now;
        segments.open += 1;
        if segments.open > MAX_OPEN_READERS {
            // Close the least recently used; reads holding it keep their clone.
            let victim = segments
                .map
                .iter()
                .filter(|(id, s)| s.reader.is_some() && **id != active && **id != segment)
                .min_by_key(|(_, s)| s.used)
                .map(|(id, _)| *id);
            if let Some(victim) = victim {
                segments.map.get_mut(&victim).expect("listed").reader = None;
                segments.open -= 1;
            }
        }
        Ok(Some(reader))
    }

    /// The complete records of a closed segment, in log order.
    pub async fn records(&self, segment: u32) -> Result<Vec<Recovered>, Error> {
        let reader = self
            .reader(segment)
            .await?
            .ok_or_else(|| Error::Internal(format!("segment {segment} is gone")))?;
        let len = self
            .segments
            .lock()
            .expect("segments")
            .map
            .get(&segment)
            .map_or(0, |s| s.len);
        let path = self.dir.join(segment_name(segment));
        if let Some(entries) = read_footer(reader.as_ref(), len, &path).await? {
            return Ok(entries
                .into_iter()
                .map(|e| from_footer(segment, e))
                .collect());
        }
        let scan = scan_headers(reader.as_ref(), len, &path).await?;
        Ok(scan
            .records
            .into_iter()
            .map(|(header, payload_at)| Recovered {
                location: Location {
                    segment,
                    offset: payload_at,
                    len: header.payload_len,
                },
                payload_sha256: header.payload_sha256,
                key: header.key,
                verified: false,
            })
            .collect())
    }

    /// Deletes a closed segment. Reads already holding its handle finish; new ones miss.
    pub async fn remove(&self, segment: u32) -> Result<u64, Error> {
        let len = {
            let mut segments = self.segments.lock().expect("segments");
            let removed = segments.map.remove(&segment);
            if removed.as_ref().is_some_and(|s| s.reader.is_some()) {
                segments.open -= 1;
            }
            removed.map_or(0, |s| s.len)
        };
        let path = self.dir.join(segment_name(segment));
        self.fs
            .remove(&path)
            .await
            .map_err(io_error(format!("removing {}", path.display())))?;
        self.fs
            .sync_dir(&self.dir)
            .await
            .map_err(io_error(format!("syncing {}", self.dir.display())))?;
        Ok(len)
    }
}

fn from_footer(segment: u32, entry: record::FooterEntry) -> Recovered {
    Recovered {
        location: Location {
            segment,
            offset: entry.payload_offset,
            len: entry.payload_len,
        },
        payload_sha256: entry.payload_sha256,
        key: entry.key,
        verified: false,
    }
}

/// Reads `len` bytes at `offset` of the payload at `location` through `reader`.
pub async fn read_payload(
    reader: &dyn FsFile,
    location: &Location,
    offset: u64,
    len: usize,
) -> Result<Bytes, Error> {
    read_exact_at(reader, location.offset + offset, len)
        .await
        .map_err(io_error(format!("reading segment {}", location.segment)))
}

/// `checksum` is the payload's hash and the function it is computed with.
async fn write_record(
    writer: &mut Writer,
    header: &[u8],
    checksum: (DigestFunction, &[u8; 32]),
    payload_len: u64,
    payload: Payload<'_>,
    fs: &dyn Fs,
) -> Result<(), Error> {
    let segment = writer.segment;
    let append_err = || io_error(format!("appending to segment {segment}"));
    writer.file.write(header).await.map_err(append_err())?;
    match payload {
        Payload::Memory(bytes) => writer.file.write(bytes).await.map_err(append_err())?,
        Payload::File(path) => {
            let staged = fs.open_read(path).await.map_err(io_error(format!(
                "opening staged upload {}",
                path.display()
            )))?;
            let source = format!("staged upload {}", path.display());
            if !copy_verified(writer, staged.as_ref(), 0, payload_len, checksum, &source).await? {
                return Err(Error::Internal(format!(
                    "{source} changed after it was verified"
                )));
            }
        }
        Payload::Segment { reader, offset } => {
            let source = format!("a record at {offset}");
            if !copy_verified(writer, reader, offset, payload_len, checksum, &source).await? {
                return Err(Error::DataLoss(format!("{source} fails its checksum")));
            }
        }
    }
    writer
        .file
        .flush()
        .await
        .map_err(io_error(format!("flushing segment {segment}")))
}

/// Copies `len` bytes at `start` of `source` to the writer, hashing them; returns whether they
/// hash to the checksum (under its function).
async fn copy_verified(
    writer: &mut Writer,
    source: &dyn FsFile,
    start: u64,
    len: u64,
    (function, checksum): (DigestFunction, &[u8; 32]),
    describe: &str,
) -> Result<bool, Error> {
    let mut hasher = function.hasher();
    let mut copied = 0u64;
    while copied < len {
        let want = (len - copied).min(IO_CHUNK as u64) as usize;
        let chunk = source
            .read_at(start + copied, want)
            .await
            .map_err(io_error(format!("reading {describe}")))?;
        if chunk.is_empty() {
            return Err(Error::Internal(format!(
                "{describe} holds {copied} bytes, expected {len}"
            )));
        }
        hasher.update(&chunk);
        writer
            .file
            .write(&chunk)
            .await
            .map_err(io_error(format!("appending to segment {}", writer.segment)))?;
        copied += chunk.len() as u64;
    }
    Ok(hasher.finalize() == *checksum)
}

async fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    id: u32,
) -> Result<(Writer, Arc<dyn FsFile>), Error> {
    let path = dir.join(segment_name(id));
    let file = fs
        .create(&path)
        .await
        .map_err(io_error(format!("creating {}", path.display())))?;
    fs.sync_dir(dir)
        .await
        .map_err(io_error(format!("syncing {}", dir.display())))?;
    let reader: Arc<dyn FsFile> = Arc::from(
        fs.open_read(&path)
            .await
            .map_err(io_error(format!("opening {}", path.display())))?,
    );
    let writer = Writer {
        segment: id,
        file,
        end: 0,
        synced: 0,
        poisoned: false,
        footer: FooterBuilder::default(),
    };
    Ok((writer, reader))
}

/// The error for a structure of a format this build cannot read: the start is refused.
fn unsupported(path: &Path, what: &str) -> Error {
    Error::io(
        format!("recovering {}", path.display()),
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what} is not one this hoard reads (it reads segment format versions 1 and {}); \
                 run a newer hoard or move the data directory away",
                record::FORMAT_VERSION
            ),
        ),
    )
}

/// The records a sealed segment's footer names, if it has a footer whose checksums match.
async fn read_footer(
    file: &dyn FsFile,
    len: u64,
    path: &Path,
) -> Result<Option<Vec<record::FooterEntry>>, Error> {
    let Some((footer, offset)) = read_footer_bytes(file, len, path).await? else {
        return Ok(None);
    };
    match record::decode_footer(&footer, offset) {
        Ok(entries) => Ok(Some(entries)),
        Err(Torn::Unsupported(what)) => Err(unsupported(path, &what)),
        Err(Torn::Short) | Err(Torn::Corrupt(_)) => {
            tracing::warn!(path = %path.display(), "segment footer fails its checks; scanning the segment");
            Ok(None)
        }
    }
}

/// The footer bytes a valid trailer points at, and their offset (`None` without a trailer).
async fn read_footer_bytes(
    file: &dyn FsFile,
    len: u64,
    path: &Path,
) -> Result<Option<(Bytes, u64)>, Error> {
    let context = || format!("reading the footer of {}", path.display());
    let trailer_len = record::TRAILER_LEN as u64;
    if len < trailer_len {
        return Ok(None);
    }
    let trailer = read_retrying(file, len - trailer_len, record::TRAILER_LEN)
        .await
        .map_err(io_error(context()))?;
    let (offset, footer_len) = match record::decode_trailer(&trailer, len) {
        Ok(found) => found,
        Err(Torn::Unsupported(what)) => return Err(unsupported(path, &what)),
        Err(_) => return Ok(None),
    };
    let footer = read_retrying(file, offset, footer_len as usize)
        .await
        .map_err(io_error(context()))?;
    Ok(Some((footer, offset)))
}

/// How many blob and action-cache records the sealed segments under `dir` name, from their
/// footers alone: about what recovery will index, so the index is sized once rather than grown
/// step by step (a third of a 10 M-entry restart). Best effort: a segment that cannot be read
/// this way counts nothing here and is dealt with by recovery itself.
pub async fn count_sealed_records(fs: &dyn Fs, dir: &Path) -> (u64, u64) {
    let Ok(names) = fs.list_dir(dir).await else {
        return (0, 0);
    };
    let (mut blobs, mut actions) = (0, 0);
    for id in names.iter().filter_map(|n| parse_segment_name(n)) {
        let path = dir.join(segment_name(id));
        let Ok(file) = fs.open_read(&path).await else {
            continue;
        };
        let Ok(len) = file.len().await else {
            continue;
        };
        if let Ok(Some((footer, _))) = read_footer_bytes(file.as_ref(), len, &path).await {
            if let Some((b, a)) = record::footer_record_counts(&footer) {
                blobs += b;
                actions += a;
            }
        }
    }
    (blobs, actions)
}

/// What a pass over a segment's headers found.
struct Scan {
    /// Complete-looking records (payload not yet verified) and where their payloads start.
    records: Vec<(Header, u64)>,
    /// Where the last complete record ends.
    end: u64,
    /// Whether a version 1 seal ended the segment.
    sealed: bool,
    /// Why the bytes after `end` are not records, if there are any.
    torn: Option<String>,
}

/// Walks the record headers of the first `len` bytes of a segment, skipping payloads, up to a
/// seal, a footer (one that was not trusted) or the first bytes that are not a record.
async fn scan_headers(file: &dyn FsFile, len: u64, path: &Path) -> Result<Scan, Error> {
    let mut window = Window::new(file);
    let mut scan = Scan {
        records: Vec::new(),
        end: 0,
        sealed: false,
        torn: None,
    };
    while scan.end < len {
        let want = (len - scan.end).min(record::MAX_HEADER_LEN as u64) as usize;
        let bytes = window
            .read(scan.end, want)
            .await
            .map_err(io_error("reading segment headers"))?;
        if record::is_footer_start(&bytes) {
            scan.torn = Some("a footer that fails its checks".into());
            break;
        }
        let header: Header = match record::decode_header(&bytes) {
            Ok(h) => h,
            Err(Torn::Short) => {
                scan.torn = Some("segment ends inside a header".into());
                break;
            }
            Err(Torn::Corrupt(why)) => {
                scan.torn = Some(why);
                break;
            }
            Err(Torn::Unsupported(what)) => return Err(unsupported(path, &what)),
        };
        let payload_at = scan.end + header.header_len as u64;
        if payload_at + header.payload_len > len {
            scan.torn = Some("segment ends inside a payload".into());
            break;
        }
        if header.key == RecordKey::Seal {
            scan.sealed = true;
            // The footer written in its place is what seals the segment from now on.
            scan.torn = Some("a version 1 seal".into());
            break;
        }
        scan.end = payload_at + header.payload_len;
        scan.records.push((header, payload_at));
    }
    Ok(scan)
}

/// Recovers one segment, handing every record to `found`, and returns its valid length (0: it
/// holds nothing and may be removed). A segment with a trusted footer is read from it alone.
/// Any other is scanned: its records are re-hashed (unless a version 1 seal vouches for them),
/// a torn tail is cut off, and it is sealed with a footer so the next start need not scan it.
async fn recover_segment(
    fs: &dyn Fs,
    path: &Path,
    id: u32,
    footer_before_sync: bool,
    found: &mut impl FnMut(Recovered),
) -> Result<u64, Error> {
    let context = || format!("recovering {}", path.display());
    let mut file = fs.open_append(path).await.map_err(io_error(context()))?;
    let len = file.len().await.map_err(io_error(context()))?;
    if let Some(entries) = read_footer(file.as_ref(), len, path).await? {
        tracing::debug!(
            segment = id,
            len,
            records = entries.len(),
            "recovered from the footer"
        );
        for entry in entries {
            found(from_footer(id, entry));
        }
        return Ok(len);
    }
    let Scan {
        records,
        end,
        sealed,
        torn,
    } = scan_headers(file.as_ref(), len, path).await?;
    let verify = !sealed && !footer_before_sync;
    let mut valid_end = end;
    let mut accepted = Vec::with_capacity(records.len());
    let mut torn = torn;
    let mut window = Window::new(file.as_ref());
    for (header, payload_at) in records {
        if verify && !payload_hashes_to(&mut window, payload_at, &header).await? {
            torn = Some(format!("payload at {payload_at} fails its checksum"));
            valid_end = payload_at - header.header_len as u64;
            break;
        }
        accepted.push((header, payload_at));
    }
    if valid_end < len {
        let reason = torn.unwrap_or_default();
        tracing::warn!(segment = id, valid_end, len, %reason, "cutting segment tail");
        file.truncate(valid_end)
            .await
            .map_err(io_error(context()))?;
    }
    // The bytes just verified may sit only in the page cache (the process died, the machine did
    // not): they are durable before anything is indexed from them, let alone sealed.
    if !footer_before_sync {
        file.sync().await.map_err(io_error(context()))?;
    }
    let mut footer = FooterBuilder::default();
    for (header, payload_at) in accepted {
        footer.push(
            &header.key,
            payload_at,
            header.payload_len,
            &header.payload_sha256,
        );
        found(Recovered {
            location: Location {
                segment: id,
                offset: payload_at,
                len: header.payload_len,
            },
            payload_sha256: header.payload_sha256,
            key: header.key,
            verified: verify,
        });
    }
    tracing::debug!(
        segment = id,
        len,
        valid_end,
        records = footer.len(),
        verify,
        "recovered by a scan"
    );
    if footer.is_empty() {
        return Ok(0);
    }
    let sealed = async {
        let bytes = footer.finish(valid_end);
        file.write(&bytes).await?;
        file.sync().await?;
        Ok::<_, io::Error>(valid_end + bytes.len() as u64)
    }
    .await;
    let len = match sealed {
        Ok(len) => len,
        Err(e) => {
            // Unsealed, it is scanned again next time; drop what part of the footer got out.
            tracing::warn!(segment = id, error = %e, "sealing a recovered segment failed");
            if let Err(e) = file.truncate(valid_end).await {
                tracing::warn!(segment = id, error = %e, "cutting a failed footer failed");
            }
            valid_end
        }
    };
    if let Err(e) = file.close().await {
        tracing::warn!(segment = id, error = %e, "closing a recovered segment failed");
    }
    Ok(len)
}

async fn payload_hashes_to(
    window: &mut Window<'_>,
    at: u64,
    header: &Header,
) -> Result<bool, Error> {
    let mut hasher = header.key.checksum_function().hasher();
    let mut done = 0u64;
    while done < header.payload_len {
        let want = (header.payload_len - done).min(IO_CHUNK as u64) as usize;
        let chunk = window
            .read(at + done, want)
            .await
            .map_err(|e| Error::io("verifying a recovered record", e))?;
        if chunk.len() < want {
            return Ok(false);
        }
        hasher.update(&chunk);
        done += want as u64;
    }
    Ok(hasher.finalize() == header.payload_sha256)
}

/// Sequential reads of a file through a window of [`IO_CHUNK`] bytes: a scan costs one read
/// per window, not one per record.
struct Window<'a> {
    file: &'a dyn FsFile,
    at: u64,
    bytes: Bytes,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn FsFile) -> Self {
        Window {
            file,
            at: 0,
            bytes: Bytes::new(),
        }
    }

    /// `len` bytes at `offset`, fewer only where the file ends first.
    async fn read(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let held = offset >= self.at && offset + len as u64 <= self.at + self.bytes.len() as u64;
        if !held {
            self.bytes = read_retrying(self.file, offset, len.max(IO_CHUNK)).await?;
            self.at = offset;
        }
        let start = (offset - self.at) as usize;
        Ok(self.bytes.slice(start..(start + len).min(self.bytes.len())))
    }
}

/// `read_at`, retried a few times on errors other than the file ending.
async fn read_retrying(file: &dyn FsFile, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut tries = 0;
    loop {
        match file.read_at(offset, len).await {
            Err(e) if tries + 1 < RECOVERY_READ_TRIES => {
                tries += 1;
                tracing::warn!(offset, error = %e, tries, "read failed during recovery; retrying");
            }
            result => return result,
        }
    }
}
