//! Segments: append-only files of records, one active writer, group-committed fsyncs.
//!
//! Invariants this module keeps:
//! - **Synced before indexed.** [`SegmentLog::append`] returns a location only after the record's
//!   bytes are covered by a successful `sync` of its segment. The caller indexes it after that.
//! - **A failed sync poisons the segment.** After any write or sync error the active segment is
//!   retired: nothing appended to it since its last good sync is ever reported durable, and new
//!   records go to a fresh segment.
//! - **A new segment's directory entry is durable before any record in it is acknowledged.**

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::record::{self, Header, RecordKey, Torn};
use super::Error;
use crate::seam::fs::read_exact_at;
use crate::seam::{Fs, FsFile};

/// Bytes moved per read when copying or scanning.
pub const IO_CHUNK: usize = 1 << 20;

/// Tries of a read during recovery before a media error fails the start: a transient `EIO`
/// should not keep the whole cache down.
const RECOVERY_READ_TRIES: usize = 3;

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

struct Writer {
    segment: u32,
    file: Box<dyn FsFile>,
    /// Bytes written to `file` (all of them flushed).
    end: u64,
    /// Bytes known durable.
    synced: u64,
    /// The segment takes no more records: a write or sync failed, or it was sealed.
    poisoned: bool,
}

/// A segment file as the log knows it.
struct Segment {
    /// Shared by every read of the segment; an open handle keeps a removed file readable.
    reader: Arc<dyn FsFile>,
    /// Bytes in the file.
    len: u64,
}

/// The set of segments: readers for all, a writer for the newest.
pub struct SegmentLog {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    target_size: u64,
    segments: Mutex<BTreeMap<u32, Segment>>,
    /// The writer's segment (readable without waiting for the writer).
    active: AtomicU32,
    /// Appends per segment not yet indexed (or abandoned): such a segment must not be evicted,
    /// or the index would be pointed at a deleted file.
    pins: Arc<Mutex<BTreeMap<u32, usize>>>,
    /// Segments this process sealed: every byte in them is durable.
    sealed: Mutex<BTreeSet<u32>>,
    writer: tokio::sync::Mutex<Writer>,
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

impl SegmentLog {
    /// Opens the segments under `dir`, recovering every complete record (handed to `found`, in
    /// log order) and cutting off torn tails.
    pub async fn open(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        target_size: u64,
        mut found: impl FnMut(Recovered),
    ) -> Result<SegmentLog, Error> {
        let names = fs
            .list_dir(&dir)
            .await
            .map_err(io_error(format!("listing {}", dir.display())))?;
        let ids: Vec<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        let mut segments = BTreeMap::new();
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let (len, sealed) = recover_segment(fs.as_ref(), &path, id, &mut found).await?;
            let reader: Arc<dyn FsFile> = Arc::from(
                fs.open_read(&path)
                    .await
                    .map_err(io_error(format!("opening {}", path.display())))?,
            );
            segments.insert(id, Segment { reader, len });
            tracing::debug!(segment = id, len, sealed, "recovered segment");
        }
        // Always start a fresh segment: the last one may hold a torn or unsealed tail.
        let next = ids.last().map_or(1, |id| id + 1);
        let (writer, reader) = create_segment(fs.as_ref(), &dir, next).await?;
        segments.insert(next, Segment { reader, len: 0 });
        Ok(SegmentLog {
            fs,
            dir,
            target_size,
            segments: Mutex::new(segments),
            active: AtomicU32::new(next),
            pins: Arc::default(),
            sealed: Mutex::new(BTreeSet::new()),
            writer: tokio::sync::Mutex::new(writer),
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
        let mut writer = self.writer.lock().await;
        if writer.poisoned
            || (writer.end > 0 && writer.end + header.len() as u64 + payload_len > self.target_size)
        {
            self.roll(&mut writer).await?;
        }
        let start = writer.end;
        let written = write_record(
            &mut writer,
            &header,
            payload_sha256,
            payload_len,
            payload,
            self.fs.as_ref(),
        )
        .await;
        if let Err(e) = written {
            writer.poisoned = true;
            return Err(e);
        }
        writer.end = start + header.len() as u64 + payload_len;
        self.note_len(writer.segment, writer.end);
        let location = Location {
            segment: writer.segment,
            offset: start + header.len() as u64,
            len: payload_len,
        };
        Ok((location, Pin::new(self.pins.clone(), writer.segment)))
    }

    /// Returns once the record at `location` is durable. Concurrent callers share one `fsync`
    /// (group commit): whoever takes the writer first syncs everything appended so far.
    pub async fn sync(&self, location: &Location) -> Result<(), Error> {
        let (segment, end) = (location.segment, location.offset + location.len);
        let mut writer = self.writer.lock().await;
        if writer.segment != segment {
            // Rolled since: a roll seals and syncs the old segment, or fails every append in it.
            return if self.is_sealed_durable(segment) {
                Ok(())
            } else {
                Err(Error::io(
                    format!("segment {segment}"),
                    io::Error::other("segment was retired after a failed write or sync"),
                ))
            };
        }
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
                Ok(())
            }
            Err(e) => {
                writer.poisoned = true;
                Err(Error::io(format!("syncing segment {segment}"), e))
            }
        }
    }

    fn is_sealed_durable(&self, segment: u32) -> bool {
        self.sealed.lock().expect("sealed set").contains(&segment)
    }

    /// Closes the active segment (sealing it when it is healthy) and starts the next one.
    ///
    /// The old segment takes no more records whatever happens here: if creating the next one
    /// fails, the writer stays retired and the next append tries the roll again.
    async fn roll(&self, writer: &mut Writer) -> Result<(), Error> {
        let old = writer.segment;
        if !writer.poisoned {
            writer.poisoned = true;
            let seal = record::encode_header(&RecordKey::Seal, 0, &Sha256::digest(b"").into());
            let sealed = async {
                writer.file.write(&seal).await?;
                writer.file.sync().await
            }
            .await;
            match sealed {
                Ok(()) => {
                    writer.end += seal.len() as u64;
                    writer.synced = writer.end;
                    self.note_len(old, writer.end);
                    self.sealed.lock().expect("sealed set").insert(old);
                }
                Err(e) => tracing::warn!(segment = old, error = %e, "sealing segment failed"),
            }
        }
        let (next, reader) = create_segment(self.fs.as_ref(), &self.dir, old + 1).await?;
        let previous = std::mem::replace(writer, next);
        if let Err(e) = previous.file.close().await {
            tracing::warn!(segment = old, error = %e, "closing segment failed");
        }
        self.segments
            .lock()
            .expect("segments")
            .insert(old + 1, Segment { reader, len: 0 });
        self.active.store(old + 1, Ordering::Release);
        Ok(())
    }

    fn note_len(&self, segment: u32, len: u64) {
        if let Some(s) = self.segments.lock().expect("segments").get_mut(&segment) {
            s.len = len;
        }
    }

    /// Bytes of every segment file together: what the cache occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .lock()
            .expect("segments")
            .values()
            .map(|s| s.len)
            .sum()
    }

    /// The oldest segment, unless it is the one being written or has records on their way
    /// into the index.
    pub fn oldest_closed(&self) -> Option<u32> {
        let oldest = *self.segments.lock().expect("segments").keys().next()?;
        let pinned = self.pins.lock().expect("pins").contains_key(&oldest);
        (oldest != self.active.load(Ordering::Acquire) && !pinned).then_some(oldest)
    }

    /// The shared read handle of a segment, while the log has it.
    pub fn reader(&self, segment: u32) -> Option<Arc<dyn FsFile>> {
        self.segments
            .lock()
            .expect("segments")
            .get(&segment)
            .map(|s| s.reader.clone())
    }

    /// The complete records of a closed segment, in log order.
    pub async fn records(&self, segment: u32) -> Result<Vec<Recovered>, Error> {
        let (reader, len) = {
            let segments = self.segments.lock().expect("segments");
            let s = segments
                .get(&segment)
                .ok_or_else(|| Error::Internal(format!("segment {segment} is gone")))?;
            (s.reader.clone(), s.len)
        };
        let scan = scan_headers(reader.as_ref(), len).await?;
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
        let removed = self.segments.lock().expect("segments").remove(&segment);
        let len = removed.map_or(0, |s| s.len);
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

async fn write_record(
    writer: &mut Writer,
    header: &[u8],
    payload_sha256: &[u8; 32],
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
            if !copy_verified(
                writer,
                staged.as_ref(),
                0,
                payload_len,
                payload_sha256,
                &source,
            )
            .await?
            {
                return Err(Error::Internal(format!(
                    "{source} changed after it was verified"
                )));
            }
        }
        Payload::Segment { reader, offset } => {
            let source = format!("a record at {offset}");
            if !copy_verified(writer, reader, offset, payload_len, payload_sha256, &source).await? {
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
/// hash to `sha256`.
async fn copy_verified(
    writer: &mut Writer,
    source: &dyn FsFile,
    start: u64,
    len: u64,
    sha256: &[u8; 32],
    describe: &str,
) -> Result<bool, Error> {
    let mut hasher = Sha256::new();
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
    Ok(<[u8; 32]>::from(hasher.finalize()) == *sha256)
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
    };
    Ok((writer, reader))
}

/// What a pass over a segment's headers found.
struct Scan {
    /// Complete-looking records (payload not yet verified) and where their payloads start.
    records: Vec<(Header, u64)>,
    /// Where the last complete record (or the seal) ends.
    end: u64,
    /// Whether a seal ended the segment.
    sealed: bool,
    /// Why the bytes after `end` are not records, if there are any.
    torn: Option<String>,
}

/// Walks the record headers of the first `len` bytes of a segment, skipping payloads.
async fn scan_headers(file: &dyn FsFile, len: u64) -> Result<Scan, Error> {
    let mut scan = Scan {
        records: Vec::new(),
        end: 0,
        sealed: false,
        torn: None,
    };
    while scan.end < len {
        let want = (len - scan.end).min(record::MAX_HEADER_LEN as u64) as usize;
        let bytes = read_retrying(file, scan.end, want)
            .await
            .map_err(io_error("reading segment headers"))?;
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
        };
        let payload_at = scan.end + header.header_len as u64;
        if payload_at + header.payload_len > len {
            scan.torn = Some("segment ends inside a payload".into());
            break;
        }
        if header.key == RecordKey::Seal {
            scan.sealed = true;
            scan.end = payload_at;
            if scan.end < len {
                scan.torn = Some("bytes after the seal".into());
            }
            break;
        }
        scan.end = payload_at + header.payload_len;
        scan.records.push((header, payload_at));
    }
    Ok(scan)
}

/// Scans one segment, hands every complete record to `found`, and cuts a torn tail off.
/// Returns the segment's valid length and whether it ended with a seal.
async fn recover_segment(
    fs: &dyn Fs,
    path: &Path,
    id: u32,
    found: &mut impl FnMut(Recovered),
) -> Result<(u64, bool), Error> {
    let context = || format!("recovering {}", path.display());
    let file = fs.open_append(path).await.map_err(io_error(context()))?;
    let len = file.len().await.map_err(io_error(context()))?;
    let Scan {
        records,
        end: offset,
        sealed,
        mut torn,
    } = scan_headers(file.as_ref(), len).await?;
    // An unsealed segment may hold a torn tail that still parses: re-hash its payloads.
    let verify = !sealed;
    let mut valid_end = offset;
    let mut accepted = Vec::with_capacity(records.len());
    for (header, payload_at) in records {
        if verify && !payload_hashes_to(file.as_ref(), payload_at, &header).await? {
            torn = Some(format!("payload at {payload_at} fails its checksum"));
            valid_end = payload_at - header.header_len as u64;
            break;
        }
        accepted.push((header, payload_at));
    }
    if let Some(why) = torn {
        tracing::warn!(segment = id, valid_end, len, reason = %why, "cutting torn segment tail");
        let mut file = file;
        file.truncate(valid_end)
            .await
            .map_err(io_error(context()))?;
        file.sync().await.map_err(io_error(context()))?;
    }
    for (header, payload_at) in accepted {
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
    Ok((valid_end, sealed))
}

async fn payload_hashes_to(file: &dyn FsFile, at: u64, header: &Header) -> Result<bool, Error> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < header.payload_len {
        let want = (header.payload_len - done).min(IO_CHUNK as u64) as usize;
        let chunk = read_retrying(file, at + done, want)
            .await
            .map_err(|e| Error::io("verifying a recovered record", e))?;
        if chunk.len() < want {
            return Ok(false);
        }
        hasher.update(&chunk);
        done += want as u64;
    }
    Ok(<[u8; 32]>::from(hasher.finalize()) == header.payload_sha256)
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
