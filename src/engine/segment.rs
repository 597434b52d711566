//! Segments: append-only files of records, one active writer, pipelined group commit, and
//! segments of their own for large records (write-once ingest).
//!
//! Invariants this module keeps:
//! - **Synced before indexed.** [`SegmentLog::append`] returns a location that the caller indexes
//!   only after [`SegmentLog::sync`] says the record is covered by a successful `fsync`.
//! - **Appends never wait for an fsync.** The fsync runs outside the writer lock, through a
//!   second descriptor of the segment ([`Durability`]); at most one is in flight per segment,
//!   and it covers exactly the records flushed before it began (the watermark is read at its
//!   start, never at its end). Waiters it covers wait for it; the others start the next one.
//!   An append only buffers its record; the first waiter to sync pushes every buffered record
//!   to the file in one write, under the writer lock but outside any fsync. A write that fails
//!   while others' records were buffered retires the segment: it is never cut back over them.
//! - **A failed sync retires the segment.** Nothing appended to it since its last good sync is
//!   ever reported durable, and new records go to a fresh segment. A failed append is cut off
//!   (the file is truncated back to the last good end) and the segment goes on; if the cut fails
//!   too, the segment is retired. A seal or retirement waits for the fsync in flight.
//! - **Write once.** A large record is written into a file of its own under `tmp/` as it arrives
//!   ([`SoloSegment`]), hashed once by its writer, then flushed, synced, sealed with its footer
//!   and synced again; only then is it renamed into the log (directory synced) and does it join
//!   the log's readers, eviction order and size. No reader or recovery ever sees it half-written;
//!   an abandoned one is removed with the rest of `tmp/`.
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::record::{self, FooterBuilder, Header, RecordKey, Torn};
use super::{DigestFunction, Error};
use crate::seam::fs::read_exact_at;
use crate::seam::{Fs, FsFile, Runtime};

mod tail;
pub use tail::LogCursor;

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
    /// How far the segment is durable, shared with whoever waits for a sync.
    durability: Arc<Durability>,
    /// Every record appended so far, for the footer.
    footer: FooterBuilder,
}

/// The writer; `None` until the first append after a start, a seal or a retirement.
struct WriterState {
    active: Option<Writer>,
}

/// After a failure retired a segment, new segments wait (see [`SegmentLog::back_off`]).
struct Backoff {
    /// No new segment before this moment.
    retry_at: Option<SystemTime>,
    /// The next wait.
    next: Duration,
    /// Whether that failure was a full disk (clients are told so while the back-off lasts).
    disk_full: bool,
}

/// The durability of the segment being written: its fsyncs run here, outside the writer lock.
struct Durability {
    /// A second descriptor of the segment, used only to fsync it. Locked across each fsync, so
    /// at most one is in flight; `None` once the segment left the writer (sealed or retired).
    handle: tokio::sync::Mutex<Option<Box<dyn FsFile>>>,
    /// End of the last record pushed to the file (set under the writer lock).
    flushed: AtomicU64,
    /// How far the segment is known durable, and whether it failed.
    state: Mutex<Synced>,
}

#[derive(Default)]
struct Synced {
    /// Bytes known durable.
    end: u64,
    /// The segment takes no more records: a sync failed, or a failed append could not be cut.
    /// `Some(disk_full)`.
    failed: Option<bool>,
}

impl Durability {
    fn new(handle: Box<dyn FsFile>) -> Durability {
        Durability {
            handle: tokio::sync::Mutex::new(Some(handle)),
            flushed: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    fn synced(&self) -> u64 {
        self.state.lock().expect("durability").end
    }

    /// The failure that poisoned the segment, if any (`Some(disk_full)`).
    fn failure(&self) -> Option<bool> {
        self.state.lock().expect("durability").failed
    }

    fn mark_synced(&self, end: u64) {
        let mut state = self.state.lock().expect("durability");
        state.end = state.end.max(end);
    }

    fn poison(&self, disk_full: bool) {
        self.state
            .lock()
            .expect("durability")
            .failed
            .get_or_insert(disk_full);
    }

    /// The answer for a waiter whose record ends at `end`, if it is already known: durable, or
    /// never to be (the segment failed first).
    fn settled(&self, segment: u32, end: u64) -> Option<Result<(), Error>> {
        let state = self.state.lock().expect("durability");
        if state.end >= end {
            return Some(Ok(()));
        }
        state.failed.map(|_| {
            Err(Error::io(
                format!("segment {segment}"),
                io::Error::other("segment was poisoned by an earlier failed write or sync"),
            ))
        })
    }
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
    /// While the segment is being written: where its syncs run.
    durability: Option<Arc<Durability>>,
}

impl Segment {
    /// A segment of `len` bytes that takes no more records, its reader not yet open.
    fn closed(len: u64) -> Segment {
        Segment {
            len,
            reader: None,
            used: 0,
            durability: None,
        }
    }
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
    /// The id the next segment gets (the active writer's or a solo one's).
    next_segment: AtomicU32,
    backoff: Mutex<Backoff>,
    /// The planted bug `footer-before-sync`: footers are written without syncing (or, in
    /// recovery, re-hashing) the records they name first.
    footer_before_sync: bool,
    /// The planted bug `sync-watermark-overreach`.
    sync_watermark_overreach: bool,
    /// See [`LogOptions::seal_before_join`].
    seal_before_join: bool,
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

fn retired(segment: u32) -> Error {
    Error::io(
        format!("segment {segment}"),
        io::Error::other("segment was retired after a failed write or sync"),
    )
}

impl Segments {
    /// Registers `reader` as the open handle of `segment`, closing the least recently used
    /// other reader (never `active`'s) when too many are open; reads holding it keep their clone.
    fn admit_reader(&mut self, segment: u32, reader: Arc<dyn FsFile>, active: u32) {
        self.clock += 1;
        let now = self.clock;
        let Some(s) = self.map.get_mut(&segment) else {
            return;
        };
        s.reader = Some(reader);
        s.used = now;
        self.open += 1;
        if self.open <= MAX_OPEN_READERS {
            return;
        }
        let victim = self
            .map
            .iter()
            .filter(|(id, s)| s.reader.is_some() && **id != active && **id != segment)
            .min_by_key(|(_, s)| s.used)
            .map(|(id, _)| *id);
        if let Some(victim) = victim {
            self.map.get_mut(&victim).expect("listed").reader = None;
            self.open -= 1;
        }
    }
}

/// Settings of a [`SegmentLog`].
pub struct LogOptions {
    /// A segment is sealed once it reaches about this many bytes.
    pub target_size: u64,
    /// The planted bug `footer-before-sync` (always `false` outside the simulator).
    pub footer_before_sync: bool,
    /// The planted bug `sync-watermark-overreach`: a sync marks durable everything flushed when
    /// it *ends*, including records written while it was in flight (always `false` outside the
    /// simulator).
    pub sync_watermark_overreach: bool,
    /// Seal the segment being written before a solo segment joins the log, so that every
    /// segment below the active one is closed: the object-store tier reads the log in segment
    /// order from one cursor, and a later append to a lower, still active segment would be
    /// behind a cursor that moved on to the solo one.
    pub seal_before_join: bool,
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
            segments.map.insert(id, Segment::closed(len));
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
            writer: tokio::sync::Mutex::new(WriterState { active: None }),
            next_segment: AtomicU32::new(next_segment),
            backoff: Mutex::new(Backoff {
                retry_at: None,
                next: FIRST_BACKOFF,
                disk_full: false,
            }),
            footer_before_sync: options.footer_before_sync,
            sync_watermark_overreach: options.sync_watermark_overreach,
            seal_before_join: options.seal_before_join,
        })
    }

    /// Appends one record (written to the writer's buffer; flushed and made durable by
    /// [`SegmentLog::sync`], so concurrent appends share one write as well as one fsync).
    /// The segment cannot be evicted while the returned [`Pin`] lives: hold it until the record
    /// is indexed.
    ///
    /// For [`Payload::Segment`] the bytes are hashed again while copied; a mismatch with
    /// `payload_sha256` fails the append with [`Error::DataLoss`].
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
        if let Some(disk_full) = state.active.as_ref().and_then(|w| w.durability.failure()) {
            // A sync failed while no append was running: retire it now.
            self.fail(&mut state, disk_full).await;
        }
        let full = |w: &Writer| w.end > 0 && w.end + record_len > self.target_size;
        if state.active.as_ref().is_some_and(full) && self.retire(&mut state).await {
            self.back_off(false);
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
        )
        .await;
        if let Err(e) = written {
            // A failed write may have lost the buffered records of others too (a handle's
            // buffer goes with a failed write): then the segment is retired, never cut back
            // over their offsets. Otherwise the failed append's bytes are cut off; a segment
            // that cannot be cut back is retired too.
            let others_lost = !matches!(e, Error::DataLoss(_))
                && writer.durability.flushed.load(Ordering::Acquire) < start;
            let cut = if others_lost {
                Err(io::Error::other("records of other appends were buffered"))
            } else {
                writer.file.truncate(start).await
            };
            if let Err(cut) = cut {
                tracing::warn!(segment = writer.segment, error = %cut, "cannot cut a failed append off; retiring the segment");
                writer.durability.poison(is_disk_full(&e));
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

    /// Returns once the record at `location` is durable (pipelined group commit). The fsync runs
    /// outside the writer lock, so appends go on meanwhile; one in flight covers every record
    /// flushed before it began, and its waiters share it; a waiter it does not cover starts the
    /// next one once it is done.
    pub async fn sync(&self, location: &Location) -> Result<(), Error> {
        let (segment, end) = (location.segment, location.offset + location.len);
        let durability = {
            let segments = self.segments.lock().expect("segments");
            segments
                .map
                .get(&segment)
                .and_then(|s| s.durability.clone())
        };
        let Some(durability) = durability else {
            // Sealed since (every byte synced), or retired after a failure.
            return if self.is_sealed_durable(segment) {
                Ok(())
            } else {
                Err(retired(segment))
            };
        };
        if let Some(done) = durability.settled(segment, end) {
            return done;
        }
        self.flush_through(&durability, segment, end).await?;
        let mut handle = durability.handle.lock().await;
        // The fsync that was in flight may have covered this record, or failed.
        if let Some(done) = durability.settled(segment, end) {
            return done;
        }
        let Some(file) = handle.as_mut() else {
            return Err(retired(segment));
        };
        let mut covered = durability.flushed.load(Ordering::Acquire);
        let synced = file.sync().await;
        if self.sync_watermark_overreach {
            covered = durability.flushed.load(Ordering::Acquire);
        }
        match synced {
            Ok(()) => {
                durability.mark_synced(covered);
                let mut backoff = self.backoff.lock().expect("backoff");
                backoff.retry_at = None;
                backoff.next = FIRST_BACKOFF;
                Ok(())
            }
            Err(e) => {
                let e = Error::io(format!("syncing segment {segment}"), e);
                durability.poison(is_disk_full(&e));
                drop(handle);
                // Retire it now (unless an append or a seal got there first): new records go to
                // a fresh segment.
                let mut state = self.writer.lock().await;
                if state.active.as_ref().is_some_and(|w| w.segment == segment) {
                    self.fail(&mut state, is_disk_full(&e)).await;
                }
                Err(e)
            }
        }
    }

    /// Pushes the records buffered in the writer of `segment` to the file if the one ending at
    /// `end` is among them: one write for every record appended since the last push, so the
    /// next fsync covers them. The writer lock is held for that write only, never for an fsync.
    /// A segment no longer being written was flushed by its seal, or failed.
    async fn flush_through(
        &self,
        durability: &Durability,
        segment: u32,
        end: u64,
    ) -> Result<(), Error> {
        if durability.flushed.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let mut state = self.writer.lock().await;
        let Some(writer) = state.active.as_mut().filter(|w| w.segment == segment) else {
            return Ok(());
        };
        if durability.flushed.load(Ordering::Acquire) >= end {
            return Ok(()); // another waiter pushed it meanwhile
        }
        match writer.file.flush().await {
            Ok(()) => {
                durability.flushed.store(writer.end, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // The buffered records are lost: nobody waiting for them may be acknowledged.
                // What part of them landed is cut off, so the file holds what the log counts.
                let e = Error::io(format!("flushing segment {segment}"), e);
                let pushed = durability.flushed.load(Ordering::Acquire);
                match writer.file.truncate(pushed).await {
                    Ok(()) => {
                        writer.end = pushed;
                        self.note_len(segment, pushed);
                    }
                    Err(cut) => {
                        tracing::warn!(segment, error = %cut, "cutting lost records off failed")
                    }
                }
                durability.poison(is_disk_full(&e));
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

    /// The id of the next segment (the active writer's or a solo one's).
    fn reserve_id(&self) -> u32 {
        self.next_segment.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts the next segment, unless a recent failure's back-off is still running.
    async fn start_segment(&self, state: &mut WriterState) -> Result<(), Error> {
        {
            let backoff = self.backoff.lock().expect("backoff");
            if let Some(at) = backoff.retry_at {
                if let Ok(left) = at.duration_since(self.runtime.now()) {
                    let why = format!(
                        "the disk failed recently; no new segment for another {} ms",
                        left.as_millis()
                    );
                    return Err(if backoff.disk_full {
                        Error::NoSpace(format!("disk full: {why}"))
                    } else {
                        Error::io("starting a segment", io::Error::other(why))
                    });
                }
            }
        }
        let id = self.reserve_id();
        match create_segment(self.fs.as_ref(), &self.dir, id).await {
            Ok((writer, reader)) => {
                let mut segments = self.segments.lock().expect("segments");
                segments.map.insert(
                    id,
                    Segment {
                        len: 0,
                        reader: None,
                        used: 0,
                        durability: Some(writer.durability.clone()),
                    },
                );
                segments.admit_reader(id, reader, id);
                self.active.store(id, Ordering::Release);
                state.active = Some(writer);
                Ok(())
            }
            Err(e) => {
                // The id is skipped; a file the failed start left behind goes.
                if let Err(e) = self.fs.remove(&self.dir.join(segment_name(id))).await {
                    tracing::debug!(segment = id, error = %e, "removing a segment that failed to start");
                }
                self.back_off(is_disk_full(&e));
                Err(e)
            }
        }
    }

    /// A write or sync failed: the active segment is retired at once, and the next one waits.
    async fn fail(&self, state: &mut WriterState, disk_full: bool) {
        self.retire(state).await;
        self.back_off(disk_full);
    }

    fn back_off(&self, disk_full: bool) {
        let mut backoff = self.backoff.lock().expect("backoff");
        backoff.retry_at = Some(self.runtime.now() + backoff.next);
        backoff.next = (backoff.next * 2).min(MAX_BACKOFF);
        backoff.disk_full = disk_full;
    }

    /// Closes the active segment once no fsync is in flight on it: a healthy one with records
    /// is sealed; one with nothing durable in it is removed with its handles; the next append
    /// starts a new segment. Returns whether the segment had failed (or its seal did).
    async fn retire(&self, state: &mut WriterState) -> bool {
        let Some(mut writer) = state.active.take() else {
            return false;
        };
        let old = writer.segment;
        self.active.store(0, Ordering::Release);
        let durability = writer.durability.clone();
        let mut handle = durability.handle.lock().await;
        let mut sealed = false;
        if durability.failure().is_none() && !writer.footer.is_empty() {
            match self.seal(&mut writer).await {
                Ok(()) => {
                    sealed = true;
                    self.note_len(old, writer.end);
                    self.sealed.lock().expect("sealed set").insert(old);
                }
                Err(e) => {
                    tracing::warn!(segment = old, error = %e, "sealing segment failed");
                    durability.poison(false);
                }
            }
        }
        if let Some(sync_handle) = handle.take() {
            if let Err(e) = sync_handle.close().await {
                tracing::debug!(segment = old, error = %e, "closing a sync handle failed");
            }
        }
        drop(handle);
        if let Some(s) = self.segments.lock().expect("segments").map.get_mut(&old) {
            s.durability = None;
        }
        if let Err(e) = writer.file.close().await {
            tracing::warn!(segment = old, error = %e, "closing segment failed");
        }
        let holds_nothing = writer.footer.is_empty() || durability.synced() == 0;
        if !sealed && holds_nothing {
            if let Err(e) = self.remove(old).await {
                tracing::warn!(segment = old, error = %e, "removing an empty segment failed");
            }
        }
        durability.failure().is_some()
    }

    /// Syncs the records, then writes the footer and trailer and syncs them. The caller holds
    /// the segment's sync handle: no other fsync is in flight.
    async fn seal(&self, writer: &mut Writer) -> io::Result<()> {
        if !self.footer_before_sync && writer.durability.synced() < writer.end {
            writer.file.sync().await?;
            writer.durability.mark_synced(writer.end);
        }
        writer.end = write_footer(writer.file.as_mut(), &writer.footer, writer.end).await?;
        writer.durability.mark_synced(writer.end);
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
        segments.admit_reader(segment, reader.clone(), active);
        Ok(Some(reader))
    }

    /// The complete records of a closed segment, in log order.
    pub async fn records(&self, segment: u32) -> Result<Listing, Error> {
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
            return Ok(Listing {
                records: entries
                    .into_iter()
                    .map(|e| from_footer(segment, e))
                    .collect(),
                whole: true,
            });
        }
        list_records(reader.as_ref(), segment, 0, len, &path).await
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

/// How [`SegmentLog::join`] finishes a solo segment. Anything but [`Finish::Durable`] is a
/// planted bug for the simulator to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Flushed, synced, sealed with its footer and synced again before it joins the log.
    Durable,
    /// `solo-indexed-before-sync`: joins the log (and so gets indexed) flushed but never synced.
    Unsynced,
    /// `unflushed-persist`: renamed into the log with its bytes still in the writer's buffer.
    Unflushed,
}

/// A record written into a segment file of its own, outside the writer lock (write-once
/// ingest: a large upload, or eviction copying a large record forward). It is built under
/// `tmp/` and joins the log through [`SegmentLog::join`] only once complete, synced and sealed;
/// dropped instead, its file must be removed (the engine's janitor does, or the next start's
/// sweep of `tmp/`).
pub struct SoloSegment {
    path: PathBuf,
    file: Box<dyn FsFile>,
    key: RecordKey,
    sha256: [u8; 32],
    payload_at: u64,
    payload_len: u64,
    writeback: Option<Writeback>,
}

/// Early writeback of a large record while it is still arriving: every `every` bytes, an fsync
/// of what reached the file so far starts in the background (one at a time, through a second
/// descriptor), so the disk writes during the upload and the commit's own sync has only the
/// tail left. Only a speed-up: the commit's sync still covers every byte, and a failed early
/// sync fails the commit (after a failed fsync a later one may succeed without the bytes).
pub struct Writeback {
    runtime: Arc<dyn Runtime>,
    every: u64,
    /// Bytes written when the last early sync started.
    started_at: u64,
    written: u64,
    /// The second descriptor while idle; while a sync runs, where it comes back with its result.
    state: WritebackState,
}

enum WritebackState {
    Idle(Box<dyn FsFile>),
    Running(tokio::sync::oneshot::Receiver<(Box<dyn FsFile>, io::Result<()>)>),
    /// An early sync failed (or its task was lost): the commit must fail.
    Failed(String),
}

impl Writeback {
    /// Early writeback every `every` bytes, its syncs spawned on `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>, every: u64) -> Writeback {
        Writeback {
            runtime,
            every,
            started_at: 0,
            written: 0,
            // Replaced by the descriptor once the file exists.
            state: WritebackState::Failed("not opened".into()),
        }
    }

    /// Counts `len` more bytes and starts an early sync if one is due and none is running.
    fn wrote(&mut self, len: u64) {
        self.written += len;
        if self.written - self.started_at < self.every {
            return;
        }
        if let WritebackState::Running(done) = &mut self.state {
            match done.try_recv() {
                Ok((handle, Ok(()))) => self.state = WritebackState::Idle(handle),
                Ok((_, Err(e))) => self.state = WritebackState::Failed(e.to_string()),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
                Err(_) => self.state = WritebackState::Failed("the sync task was lost".into()),
            }
        }
        let WritebackState::Idle(_) = &self.state else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let WritebackState::Idle(mut handle) =
            std::mem::replace(&mut self.state, WritebackState::Running(rx))
        else {
            unreachable!("checked above");
        };
        self.started_at = self.written;
        self.runtime.spawn(Box::pin(async move {
            let synced = handle.sync().await;
            let _ = tx.send((handle, synced));
        }));
    }

    /// Waits for the early sync in flight; fails if any failed.
    async fn settle(&mut self) -> io::Result<()> {
        let state = std::mem::replace(&mut self.state, WritebackState::Failed(String::new()));
        let why = match state {
            WritebackState::Idle(_) => return Ok(()),
            WritebackState::Running(done) => match done.await {
                Ok((_, Ok(()))) => return Ok(()),
                Ok((_, Err(e))) => e.to_string(),
                Err(_) => "the sync task was lost".into(),
            },
            WritebackState::Failed(why) => why,
        };
        Err(io::Error::other(format!("an early sync failed: {why}")))
    }
}

impl SoloSegment {
    /// Creates the file at `path` and writes the record's header first: the payload's length
    /// and digest are declared before its bytes arrive.
    pub async fn create(
        fs: &dyn Fs,
        path: PathBuf,
        key: RecordKey,
        payload_len: u64,
        sha256: [u8; 32],
        mut writeback: Option<Writeback>,
    ) -> Result<SoloSegment, Error> {
        let header = record::encode_header(&key, payload_len, &sha256);
        let mut file = fs
            .create(&path)
            .await
            .map_err(io_error(format!("creating {}", path.display())))?;
        let mut started = Ok(());
        if let Some(writeback) = &mut writeback {
            // Opened before any byte is written: nothing unflushed is reopened by path.
            match fs.open_append(&path).await {
                Ok(handle) => writeback.state = WritebackState::Idle(handle),
                Err(e) => started = Err(e),
            }
        }
        let whole = header.len() as u64 + payload_len;
        let written = async {
            started?;
            // Reserved up front: the kernel then allocates no blocks page by page as the
            // payload streams in, and a disk too full for the blob refuses it before a byte.
            file.allocate(whole).await?;
            file.write(&header).await
        };
        if let Err(e) = written.await {
            drop(file);
            if let Err(e) = fs.remove(&path).await {
                tracing::warn!(path = %path.display(), error = %e, "removing an unfinished segment failed");
            }
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Ok(SoloSegment {
            path,
            file,
            key,
            sha256,
            payload_at: header.len() as u64,
            payload_len,
            writeback,
        })
    }

    /// Where the file is until it joins the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the next payload bytes (the caller bounds and hashes them).
    pub async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        let len = data.len() as u64;
        self.file
            .write_owned(data)
            .await
            .map_err(io_error(format!("writing {}", self.path.display())))?;
        if let Some(writeback) = &mut self.writeback {
            writeback.wrote(len);
        }
        Ok(())
    }

    /// Copies the whole payload from the record at `offset` of another segment, verifying it
    /// against the declared digest ([`Error::DataLoss`] if it does not match).
    pub async fn copy_from(&mut self, reader: &dyn FsFile, offset: u64) -> Result<(), Error> {
        copy_verified(
            self.file.as_mut(),
            reader,
            offset,
            self.payload_len,
            (self.key.checksum_function(), &self.sha256),
        )
        .await
        .map_err(|e| e.context(&self.path.display().to_string()))
    }
}

impl SegmentLog {
    /// Makes a complete solo segment durable and part of the log: flush, sync, footer, sync
    /// (so no restart re-hashes it), rename into the log under a fresh id, directory sync; then
    /// it joins the readers, the eviction order and the log's size, pinned until the caller
    /// indexed its record. The caller checked size and hash first. On failure its file is
    /// removed.
    pub async fn join(&self, solo: SoloSegment, finish: Finish) -> Result<(Location, Pin), Error> {
        let SoloSegment {
            path,
            mut file,
            key,
            sha256,
            payload_at,
            payload_len,
            mut writeback,
        } = solo;
        let end = payload_at + payload_len;
        let sealed = async {
            match finish {
                Finish::Unflushed => return Ok(end),
                Finish::Unsynced => {
                    file.flush().await?;
                    return Ok(end);
                }
                Finish::Durable => {}
            }
            file.flush().await?;
            if let Some(writeback) = &mut writeback {
                writeback.settle().await?;
            }
            file.sync().await?;
            let mut footer = FooterBuilder::default();
            footer.push(&key, payload_at, payload_len, &sha256);
            write_footer(file.as_mut(), &footer, end).await
        }
        .await;
        let len = match sealed {
            Ok(len) => len,
            Err(e) => {
                let e = Error::io(format!("finishing {}", path.display()), e);
                self.discard(&path).await;
                return Err(e);
            }
        };
        let id = if self.seal_before_join {
            // Under the writer lock, so no append starts a new segment between the seal and
            // the id (the same lock a segment roll holds across its seal).
            let mut state = self.writer.lock().await;
            if self.retire(&mut state).await {
                self.back_off(false);
            }
            self.reserve_id()
        } else {
            self.reserve_id()
        };
        let to = self.dir.join(segment_name(id));
        if let Err(e) = self.fs.rename(&path, &to).await {
            let e = Error::io(format!("moving {} into the log", path.display()), e);
            self.discard(&path).await;
            return Err(e);
        }
        if let Err(e) = self.fs.sync_dir(&self.dir).await {
            let e = Error::io(format!("syncing {}", self.dir.display()), e);
            self.discard(&to).await;
            return Err(e);
        }
        let pin = Pin::new(self.pins.clone(), id);
        self.sealed.lock().expect("sealed set").insert(id);
        let active = self.active.load(Ordering::Acquire);
        let mut segments = self.segments.lock().expect("segments");
        segments.map.insert(id, Segment::closed(len));
        // Flushed and synced: its own descriptor is the segment's reader from now on.
        segments.admit_reader(id, Arc::from(file), active);
        let location = Location {
            segment: id,
            offset: payload_at,
            len: payload_len,
        };
        Ok((location, pin))
    }

    /// Removes a solo segment's file that will not join the log.
    async fn discard(&self, path: &Path) {
        if let Err(e) = self.fs.remove(path).await {
            tracing::warn!(path = %path.display(), error = %e, "removing an unfinished segment failed");
        }
    }
}

/// Records a header scan found, their payloads not re-hashed.
fn unverified_records(segment: u32, scanned: Vec<(Header, u64)>) -> Vec<Recovered> {
    scanned
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
        .collect()
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

/// Seals a segment whose records end at `end` (and are durable already: a footer must never
/// share a sync with the records it names): writes the footer and trailer, syncs them, and
/// returns the segment's length.
async fn write_footer(file: &mut dyn FsFile, footer: &FooterBuilder, end: u64) -> io::Result<u64> {
    let bytes = footer.finish(end);
    file.write(&bytes).await?;
    file.sync().await?;
    Ok(end + bytes.len() as u64)
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
) -> Result<(), Error> {
    let segment = writer.segment;
    let append_err = || io_error(format!("appending to segment {segment}"));
    writer.file.write(header).await.map_err(append_err())?;
    match payload {
        Payload::Memory(bytes) => writer.file.write(bytes).await.map_err(append_err())?,
        Payload::Segment { reader, offset } => {
            let copied = copy_verified(writer.file.as_mut(), reader, offset, payload_len, checksum);
            copied
                .await
                .map_err(|e| e.context(&format!("segment {segment}")))?;
        }
    }
    Ok(())
}

/// Why a copy of a record's payload failed.
enum CopyError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the copy failed.
    Write(io::Error),
    /// The source ended early, or its bytes do not hash to the record's digest.
    Corrupt(String),
}

impl CopyError {
    /// The engine's error, naming the copy's destination.
    fn context(self, destination: &str) -> Error {
        match self {
            CopyError::Read(e) => Error::io("reading a record to copy it", e),
            CopyError::Write(e) => Error::io(format!("copying a record into {destination}"), e),
            CopyError::Corrupt(why) => Error::DataLoss(why),
        }
    }
}

/// Copies the `len` payload bytes at `start` of `source` to `to`, hashing them under the
/// checksum's function: they must hash to it.
async fn copy_verified(
    to: &mut dyn FsFile,
    source: &dyn FsFile,
    start: u64,
    len: u64,
    (function, checksum): (DigestFunction, &[u8; 32]),
) -> Result<(), CopyError> {
    let mut hasher = function.hasher();
    let mut copied = 0u64;
    while copied < len {
        let want = (len - copied).min(IO_CHUNK as u64) as usize;
        let chunk = source
            .read_at(start + copied, want)
            .await
            .map_err(CopyError::Read)?;
        if chunk.is_empty() {
            return Err(CopyError::Corrupt(format!(
                "the record at {start} holds {copied} bytes, expected {len}"
            )));
        }
        hasher.update(&chunk);
        to.write(&chunk).await.map_err(CopyError::Write)?;
        copied += chunk.len() as u64;
    }
    if hasher.finalize() != *checksum {
        return Err(CopyError::Corrupt(format!(
            "the record at {start} fails its checksum"
        )));
    }
    Ok(())
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
    let opened = async {
        let reader: Arc<dyn FsFile> = Arc::from(fs.open_read(&path).await?);
        let sync_handle = fs.open_append(&path).await?;
        Ok::<_, io::Error>((reader, sync_handle))
    };
    let (reader, sync_handle) = opened
        .await
        .map_err(io_error(format!("opening {}", path.display())))?;
    let writer = Writer {
        segment: id,
        file,
        end: 0,
        durability: Arc::new(Durability::new(sync_handle)),
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

/// The records a walk of a segment's headers found.
pub struct Listing {
    /// The records, in log order (payloads not verified).
    pub records: Vec<Recovered>,
    /// Whether they are all there is: no damage was skipped. Records the damage destroyed
    /// may still be indexed, so whoever removes such a segment must forget them by location.
    pub whole: bool,
}

/// The records between `from` (a record's start) and `to` of bytes written whole (a closed
/// segment, or what a segment being written has synced). Bytes there that are no record are
/// damage: the walk goes on at the next intact record after them.
async fn list_records(
    file: &dyn FsFile,
    segment: u32,
    from: u64,
    to: u64,
    path: &Path,
) -> Result<Listing, Error> {
    let mut listing = Listing {
        records: Vec::new(),
        whole: true,
    };
    let mut from = from;
    while from < to {
        let scan = scan_headers(file, from, to, path).await?;
        listing
            .records
            .extend(unverified_records(segment, scan.records));
        let Some(why) = scan.torn.filter(|_| !scan.sealed) else {
            break;
        };
        listing.whole = false;
        let Some(next) = next_intact_record(file, scan.end + 1, to).await? else {
            break;
        };
        tracing::warn!(segment, from = scan.end, to = next, reason = %why, "skipping damaged bytes");
        from = next;
    }
    Ok(listing)
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

/// Walks the record headers of a segment from `from` (a record's start) to `len`, skipping
/// payloads, up to a seal, a footer (one that was not trusted) or the first bytes that are not
/// a record.
async fn scan_headers(file: &dyn FsFile, from: u64, len: u64, path: &Path) -> Result<Scan, Error> {
    let mut window = Window::new(file);
    let mut scan = Scan {
        records: Vec::new(),
        end: from,
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
            // One version writes a whole segment: past a record this build read, even a
            // well-formed header of another version is damage (a cut tail).
            Err(Torn::Unsupported(what)) if scan.end > 0 => {
                scan.torn = Some(format!("{what} after records of this version"));
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
    let Walked {
        records: accepted,
        end: valid_end,
        torn,
        verified: verify,
    } = walk_records(file.as_ref(), id, len, path, !footer_before_sync).await?;
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
    let sealed = write_footer(file.as_mut(), &footer, valid_end).await;
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

/// The records a scan of a whole segment accepted.
struct Walked {
    /// Accepted records and where their payloads start, in file order.
    records: Vec<(Header, u64)>,
    /// Where the last accepted record ends: the segment's valid length.
    end: u64,
    /// Why the bytes after `end` are not records, if there are any.
    torn: Option<String>,
    /// Whether the accepted payloads were re-hashed.
    verified: bool,
}

/// Walks a segment's records from its start, re-hashing each payload when `verify` (unless a
/// version 1 seal vouches for them). Damage in the middle of the segment (a record whose header
/// or payload fails its checks, with intact records after it: a sector the disk spoiled, or a
/// write it put in the wrong place) costs only the damaged records: the walk resumes at the next
/// record that is whole and hashes to its checksum. Only what follows the last intact record
/// is a torn tail. A record found this way is trusted for what it proves about itself, as any
/// scanned record is; its length is never used to skip bytes before it verified.
async fn walk_records(
    file: &dyn FsFile,
    id: u32,
    len: u64,
    path: &Path,
    verify: bool,
) -> Result<Walked, Error> {
    let mut walked = Walked {
        records: Vec::new(),
        end: 0,
        torn: None,
        verified: verify,
    };
    let mut window = Window::new(file);
    let mut from = 0;
    loop {
        let scan = scan_headers(file, from, len, path).await?;
        if scan.sealed {
            walked.verified = false;
        }
        let mut damaged = None;
        for (header, payload_at) in scan.records {
            if walked.verified && !payload_hashes_to(&mut window, payload_at, &header).await? {
                let start = payload_at - header.header_len as u64;
                damaged = Some((start, format!("payload at {payload_at} fails its checksum")));
                break;
            }
            walked.end = payload_at + header.payload_len;
            walked.records.push((header, payload_at));
        }
        let (at, why) = match (damaged, scan.torn) {
            (Some(damaged), _) => damaged,
            (None, Some(why)) if !scan.sealed => (scan.end, why),
            (None, torn) => {
                walked.torn = torn;
                return Ok(walked);
            }
        };
        let next = match walked.verified {
            true => next_intact_record(file, at + 1, len).await?,
            false => None,
        };
        let Some(next) = next else {
            walked.torn = Some(why);
            return Ok(walked);
        };
        tracing::warn!(segment = id, from = at, to = next, reason = %why, "skipping damaged bytes");
        from = next;
    }
}

/// The first offset at or after `from` where a whole record starts whose header and payload
/// pass their checks, if there is one before `len`: where a walk of a segment resumes after
/// damage (recovery's, and `hoard verify`'s). Only an intact record is trusted, so a damaged
/// header's length, or that of a record the disk wrote to the wrong place, never skips bytes.
pub(crate) async fn next_intact_record(
    file: &dyn FsFile,
    from: u64,
    len: u64,
) -> Result<Option<u64>, Error> {
    let window = &mut Window::new(file);
    let searching = |e| Error::io("searching a damaged segment for records", e);
    let magic = record::MAGIC.len() as u64;
    let mut at = from;
    while at + magic <= len {
        let bytes = window
            .read(at, (len - at).min(IO_CHUNK as u64) as usize)
            .await
            .map_err(searching)?;
        let Some(found) = bytes
            .windows(magic as usize)
            .position(|w| w == record::MAGIC)
        else {
            // A magic may straddle the end of what was read.
            at += (bytes.len() as u64).saturating_sub(magic - 1).max(1);
            continue;
        };
        let candidate = at + found as u64;
        let want = (len - candidate).min(record::MAX_HEADER_LEN as u64) as usize;
        let head = window.read(candidate, want).await.map_err(searching)?;
        if let Ok(header) = record::decode_header(&head) {
            let payload_at = candidate + header.header_len as u64;
            let fits = payload_at
                .checked_add(header.payload_len)
                .is_some_and(|end| end <= len);
            if fits && payload_hashes_to(window, payload_at, &header).await? {
                return Ok(Some(candidate));
            }
        }
        at = candidate + 1;
    }
    Ok(None)
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
