//! `hoard verify`: an offline scrub of a data directory, through the [`Fs`] seam.
//!
//! Every record of every segment is read and its payload re-hashed; a sealed segment's footer
//! (what a start indexes without reading the records) is checked against the records it names:
//! each entry must sit where the footer says, under a header that says the same, and the records
//! must cover the segment without gaps. The report names what is corrupt (payloads that do not
//! hash, headers that do not match), what is orphaned (bytes no footer entry accounts for,
//! leftover temp uploads and repair files) and what the next start handles by itself (torn tails
//! of unsealed segments, which recovery cuts off).
//!
//! With `repair`, each damaged segment is rewritten without its bad records: the intact ones are
//! copied (re-hashed again on the way) with fresh headers into `NNNN.seg.repair` beside it, a
//! footer is written, the file is synced and renamed over the segment, and the directory is
//! synced. A crash at any point leaves either the old segment or the new one, never a mix (a
//! stray `.repair` file is removed by the next `verify --repair`). The segment keeps its id, so
//! the log order (which decides the newest of two action-cache values) is unchanged.
//!
//! The directory's `LOCK` is held throughout: a directory a running server holds is refused.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::engine::record::{self, FooterBuilder, FooterEntry, RecordKey, Torn};
use crate::engine::{next_intact_record, DigestFunction};
use crate::seam::{Fs, FsFile};
use crate::store::Error;

/// Bytes read per call while hashing or copying payloads.
const CHUNK: usize = 1 << 20;

/// Something wrong in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A record's payload does not hash to the SHA-256 its header (and footer) gives.
    CorruptPayload {
        /// Offset of the payload.
        offset: u64,
        /// What the record holds.
        key: String,
    },
    /// A sealed segment's footer names a record whose header is missing or says otherwise.
    FooterMismatch {
        /// Offset of the payload the footer names.
        offset: u64,
        /// What differs.
        why: String,
    },
    /// Bytes of an unsealed segment between intact records that are no record (a header the
    /// disk damaged, or a record it wrote to the wrong place): the next start skips them.
    Unreadable {
        /// Where they start.
        offset: u64,
        /// How many.
        len: u64,
        /// Why they are not a record.
        why: String,
    },
    /// Bytes of a sealed segment's records that no footer entry accounts for.
    Orphaned {
        /// Where they start.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// A trailer points at a footer that fails its checks (the start scans the segment).
    BadFooter(String),
    /// The end of an unsealed segment is not a complete record: what a crash leaves, and what
    /// the next start cuts off. Not damage.
    TornTail {
        /// Where the incomplete bytes start.
        offset: u64,
        /// How many.
        len: u64,
        /// Why they are not a record.
        why: String,
    },
}

impl Problem {
    /// Whether this is damage (bytes a start would trust, or lose, that it should not).
    pub fn is_damage(&self) -> bool {
        !matches!(self, Problem::TornTail { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptPayload { offset, key } => {
                write!(
                    f,
                    "corrupt payload at {offset} ({key}): it does not hash to its SHA-256"
                )
            }
            Problem::FooterMismatch { offset, why } => {
                write!(f, "footer entry for the payload at {offset}: {why}")
            }
            Problem::Unreadable { offset, len, why } => write!(
                f,
                "unreadable: {len} bytes at {offset} before intact records ({why}); the next \
                 start skips them"
            ),
            Problem::Orphaned { offset, len } => {
                write!(
                    f,
                    "orphaned: {len} bytes at {offset} no footer entry accounts for"
                )
            }
            Problem::BadFooter(why) => write!(f, "the footer fails its checks ({why})"),
            Problem::TornTail { offset, len, why } => write!(
                f,
                "torn tail: {len} bytes at {offset} ({why}); the next start cuts them off"
            ),
        }
    }
}

/// What verifying one segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file name (`0000000001.seg`).
    pub name: String,
    /// Bytes in the file.
    pub len: u64,
    /// Whether it ends with a footer that passes its checks.
    pub sealed: bool,
    /// Records whose payload hashes as it should.
    pub intact: u64,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// What `repair` did to it, if anything.
    pub repaired: Option<Repaired>,
}

impl SegmentReport {
    /// Whether the segment holds damage.
    pub fn is_damaged(&self) -> bool {
        self.problems.iter().any(Problem::is_damage)
    }
}

/// What repairing a segment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repaired {
    /// Rewritten with only its intact records.
    Rewritten {
        /// Records kept.
        kept: u64,
        /// Bytes of the new file.
        len: u64,
    },
    /// Removed: it held no intact record.
    Removed,
}

/// What `hoard verify` found in a data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every segment, in log order.
    pub segments: Vec<SegmentReport>,
    /// Leftover upload temp files under `tmp/` (the next start sweeps them).
    pub temp_files: Vec<String>,
    /// Files under `segments/` that are not segments (an interrupted repair's `.repair` file,
    /// or something that does not belong there); `repair` removes `.repair` files.
    pub stray_files: Vec<String>,
}

impl Report {
    /// Whether any segment holds damage.
    pub fn is_damaged(&self) -> bool {
        self.segments.iter().any(SegmentReport::is_damaged)
    }

    /// Records whose payload hashed as it should.
    pub fn intact(&self) -> u64 {
        self.segments.iter().map(|s| s.intact).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: u64 = self.segments.iter().map(|s| s.len).sum();
        writeln!(
            f,
            "{} segments, {bytes} bytes, {} intact records",
            self.segments.len(),
            self.intact()
        )?;
        for segment in &self.segments {
            for problem in &segment.problems {
                writeln!(f, "{}: {problem}", segment.name)?;
            }
            match segment.repaired {
                Some(Repaired::Rewritten { kept, len }) => writeln!(
                    f,
                    "{}: repaired: rewritten with its {kept} intact records ({len} bytes)",
                    segment.name
                )?,
                Some(Repaired::Removed) => {
                    writeln!(f, "{}: repaired: removed (no intact record)", segment.name)?
                }
                None => {}
            }
        }
        for name in &self.temp_files {
            writeln!(f, "tmp/{name}: leftover upload (the next start removes it)")?;
        }
        for name in &self.stray_files {
            writeln!(f, "segments/{name}: not a segment")?;
        }
        let damaged = self.segments.iter().filter(|s| s.is_damaged()).count();
        let repaired = self
            .segments
            .iter()
            .filter(|s| s.repaired.is_some())
            .count();
        match (damaged, repaired) {
            (0, _) => write!(f, "no damage found"),
            (damaged, 0) => write!(
                f,
                "{damaged} damaged segments (hoard verify --repair drops the bad records)"
            ),
            (damaged, _) => write!(f, "{damaged} damaged segments, repaired"),
        }
    }
}

/// Told how far verification got: `(bytes verified, bytes in all segments)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::io(context, source)
}

fn unsupported(path: &Path, what: &str) -> Error {
    Error::io(
        format!("verifying {}", path.display()),
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is not one this hoard reads; run a newer hoard"),
        ),
    )
}

/// Verifies the data directory `dir` (and with `repair`, rewrites its damaged segments), while
/// holding its lock. Fails with [`Error::Busy`] if a server holds the directory, and with
/// [`Error::InvalidArgument`] if it is not a hoard data directory.
pub async fn verify(
    fs: &dyn Fs,
    dir: &Path,
    repair: bool,
    progress: Progress<'_>,
) -> Result<Report, Error> {
    let segment_dir = dir.join("segments");
    let names = fs.list_dir(&segment_dir).await.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::InvalidArgument(format!(
                "{} is not a hoard data directory (it has no segments/)",
                dir.display()
            ))
        } else {
            Error::io(format!("listing {}", segment_dir.display()), e)
        }
    })?;
    let _lock = crate::engine::lock_data_dir(fs, dir).await?;
    let mut report = Report {
        temp_files: fs.list_dir(&dir.join("tmp")).await.unwrap_or_default(),
        ..Report::default()
    };
    let mut segments = Vec::new();
    for name in names {
        if name
            .strip_suffix(".seg")
            .is_some_and(|id| id.parse::<u32>().is_ok())
        {
            let path = segment_dir.join(&name);
            let len = fs
                .len(&path)
                .await
                .map_err(io_error(format!("reading {}", path.display())))?;
            segments.push((name, len));
        } else {
            report.stray_files.push(name);
        }
    }
    let total: u64 = segments.iter().map(|(_, len)| len).sum();
    let mut done = 0;
    for (name, len) in segments {
        let path = segment_dir.join(&name);
        let file = fs
            .open_read(&path)
            .await
            .map_err(io_error(format!("opening {}", path.display())))?;
        let (mut segment, keep) = verify_segment(file.as_ref(), &path, name, len, &mut |n| {
            progress(done + n, total)
        })
        .await?;
        done += len;
        progress(done, total);
        if repair && segment.is_damaged() {
            segment.repaired = Some(rewrite(fs, file.as_ref(), &path, &keep).await?);
        }
        report.segments.push(segment);
    }
    if repair {
        for name in report.stray_files.iter().filter(|n| n.ends_with(".repair")) {
            let path = segment_dir.join(name);
            fs.remove(&path)
                .await
                .map_err(io_error(format!("removing {}", path.display())))?;
        }
        fs.sync_dir(&segment_dir)
            .await
            .map_err(io_error(format!("syncing {}", segment_dir.display())))?;
    }
    Ok(report)
}

/// An intact record: what a rewrite copies.
struct Kept {
    key: RecordKey,
    payload_offset: u64,
    payload_len: u64,
    sha256: [u8; 32],
}

/// Verifies one segment; returns its report and its intact records in log order.
async fn verify_segment(
    file: &dyn FsFile,
    path: &Path,
    name: String,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(SegmentReport, Vec<Kept>), Error> {
    let mut report = SegmentReport {
        name,
        len,
        sealed: false,
        intact: 0,
        problems: Vec::new(),
        repaired: None,
    };
    let footer = match read_footer(file, path, len).await? {
        Ok(footer) => Some(footer),
        Err(Some(why)) => {
            report.problems.push(Problem::BadFooter(why));
            None
        }
        Err(None) => None,
    };
    let mut kept = Vec::new();
    match footer {
        Some((entries, footer_offset)) => {
            report.sealed = true;
            check_sealed(
                file,
                path,
                &entries,
                footer_offset,
                &mut report,
                &mut kept,
                progress,
            )
            .await?
        }
        None => scan_unsealed(file, path, len, &mut report, &mut kept, progress).await?,
    }
    report.intact = kept.len() as u64;
    Ok((report, kept))
}

/// The footer entries and footer offset of a sealed segment; `Err(Some(why))` when a trailer
/// points at a footer that fails its checks, `Err(None)` when there is no trailer at all.
async fn read_footer(
    file: &dyn FsFile,
    path: &Path,
    len: u64,
) -> Result<Result<(Vec<FooterEntry>, u64), Option<String>>, Error> {
    let context = || format!("reading the footer of {}", path.display());
    let trailer_len = record::TRAILER_LEN as u64;
    if len < trailer_len {
        return Ok(Err(None));
    }
    let trailer = file
        .read_at(len - trailer_len, record::TRAILER_LEN)
        .await
        .map_err(io_error(context()))?;
    let (offset, footer_len) = match record::decode_trailer(&trailer, len) {
        Ok(found) => found,
        Err(Torn::Unsupported(what)) => return Err(unsupported(path, &what)),
        Err(_) => return Ok(Err(None)),
    };
    let footer = file
        .read_at(offset, footer_len as usize)
        .await
        .map_err(io_error(context()))?;
    match record::decode_footer(&footer, offset) {
        Ok(entries) => Ok(Ok((entries, offset))),
        Err(Torn::Unsupported(what)) => Err(unsupported(path, &what)),
        Err(Torn::Short) => Ok(Err(Some("it is cut short".into()))),
        Err(Torn::Corrupt(why)) => Ok(Err(Some(why))),
    }
}

/// Checks every record a footer names, and that together they cover the segment's records.
async fn check_sealed(
    file: &dyn FsFile,
    path: &Path,
    entries: &[FooterEntry],
    footer_offset: u64,
    report: &mut SegmentReport,
    kept: &mut Vec<Kept>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), Error> {
    let mut covered = 0;
    for entry in entries {
        let header = record::encode_header(&entry.key, entry.payload_len, &entry.payload_sha256);
        let header_len = header.len() as u64;
        let Some(header_at) = entry.payload_offset.checked_sub(header_len) else {
            report.problems.push(Problem::FooterMismatch {
                offset: entry.payload_offset,
                why: "there is no room for its header".into(),
            });
            continue;
        };
        if header_at > covered {
            report.problems.push(Problem::Orphaned {
                offset: covered,
                len: header_at - covered,
            });
        } else if header_at < covered {
            report.problems.push(Problem::FooterMismatch {
                offset: entry.payload_offset,
                why: "it overlaps the record before it".into(),
            });
        }
        covered = covered.max(entry.payload_offset + entry.payload_len);
        let on_disk = file
            .read_at(header_at, header.len())
            .await
            .map_err(io_error(format!("reading {}", path.display())))?;
        if on_disk != header {
            let why = match record::decode_header(&on_disk) {
                Ok(_) => "the record header there names another record".to_owned(),
                Err(Torn::Short) => "the segment ends inside its header".to_owned(),
                Err(Torn::Corrupt(why) | Torn::Unsupported(why)) => {
                    format!("its header is bad ({why})")
                }
            };
            report.problems.push(Problem::FooterMismatch {
                offset: entry.payload_offset,
                why,
            });
        }
        let intact = hashes_to(
            file,
            path,
            entry.payload_offset,
            entry.payload_len,
            (entry.key.checksum_function(), &entry.payload_sha256),
        )
        .await?;
        progress(covered);
        if intact {
            kept.push(Kept {
                key: entry.key.clone(),
                payload_offset: entry.payload_offset,
                payload_len: entry.payload_len,
                sha256: entry.payload_sha256,
            });
        } else {
            report.problems.push(Problem::CorruptPayload {
                offset: entry.payload_offset,
                key: describe(&entry.key),
            });
        }
    }
    if covered < footer_offset {
        report.problems.push(Problem::Orphaned {
            offset: covered,
            len: footer_offset - covered,
        });
    }
    Ok(())
}

/// Walks the records of a segment without a (valid) footer as recovery does: past damage, on
/// at the next intact record; bytes after the last one are a torn tail.
async fn scan_unsealed(
    file: &dyn FsFile,
    path: &Path,
    len: u64,
    report: &mut SegmentReport,
    kept: &mut Vec<Kept>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), Error> {
    let mut at = 0;
    while at < len {
        let want = (len - at).min(record::MAX_HEADER_LEN as u64) as usize;
        let bytes = file
            .read_at(at, want)
            .await
            .map_err(io_error(format!("reading {}", path.display())))?;
        let not_a_record = if record::is_footer_start(&bytes) {
            "a footer that fails its checks".to_owned()
        } else {
            match record::decode_header(&bytes) {
                Ok(header) if header.key == RecordKey::Seal => {
                    // A version 1 seal: the records before it are complete; the start converts it.
                    break;
                }
                Ok(header) if at + header.header_len as u64 + header.payload_len > len => {
                    "the segment ends inside a payload".to_owned()
                }
                Ok(header) => {
                    let payload_at = at + header.header_len as u64;
                    if hashes_to(
                        file,
                        path,
                        payload_at,
                        header.payload_len,
                        (header.key.checksum_function(), &header.payload_sha256),
                    )
                    .await?
                    {
                        kept.push(Kept {
                            key: header.key,
                            payload_offset: payload_at,
                            payload_len: header.payload_len,
                            sha256: header.payload_sha256,
                        });
                        at = payload_at + header.payload_len;
                        progress(at);
                        continue;
                    }
                    report.problems.push(Problem::CorruptPayload {
                        offset: payload_at,
                        key: describe(&header.key),
                    });
                    // Its length is not trusted either: the walk resumes at an intact record.
                    match next_intact_record(file, at + 1, len).await? {
                        Some(next) => at = next,
                        None => at = len,
                    }
                    progress(at);
                    continue;
                }
                Err(Torn::Short) => "the segment ends inside a header".to_owned(),
                Err(Torn::Corrupt(why)) => why,
                Err(Torn::Unsupported(what)) if at == 0 => return Err(unsupported(path, &what)),
                Err(Torn::Unsupported(what)) => format!("{what} after records of this version"),
            }
        };
        match next_intact_record(file, at + 1, len).await? {
            Some(next) => {
                report.problems.push(Problem::Unreadable {
                    offset: at,
                    len: next - at,
                    why: not_a_record,
                });
                at = next;
                progress(at);
            }
            None => {
                report.problems.push(Problem::TornTail {
                    offset: at,
                    len: len - at,
                    why: not_a_record,
                });
                break;
            }
        }
    }
    Ok(())
}

/// Whether the `len` bytes at `offset` hash to the checksum (under its function).
async fn hashes_to(
    file: &dyn FsFile,
    path: &Path,
    offset: u64,
    len: u64,
    (function, checksum): (DigestFunction, &[u8; 32]),
) -> Result<bool, Error> {
    let mut hasher = function.hasher();
    let mut read = 0;
    while read < len {
        let want = (len - read).min(CHUNK as u64) as usize;
        let chunk = file
            .read_at(offset + read, want)
            .await
            .map_err(io_error(format!("reading {}", path.display())))?;
        if chunk.is_empty() {
            return Ok(false);
        }
        hasher.update(&chunk);
        read += chunk.len() as u64;
    }
    Ok(hasher.finalize() == *checksum)
}

/// A record's key for the report: `blob HASH/SIZE` or `action INSTANCE/HASH`.
fn describe(key: &RecordKey) -> String {
    match key {
        RecordKey::Blob(digest) => format!("blob {digest}"),
        RecordKey::Action {
            instance, action, ..
        } => format!("action {instance:?}/{}", hex::encode(action)),
        RecordKey::ActionRemoved {
            instance, action, ..
        } => format!("removal of action {instance:?}/{}", hex::encode(action)),
        RecordKey::Seal => "seal".into(),
    }
}

/// Replaces the segment at `path` by one holding only `keep` (or removes it if `keep` is
/// empty): written beside it, synced, renamed over it, and the directory synced.
async fn rewrite(
    fs: &dyn Fs,
    source: &dyn FsFile,
    path: &Path,
    keep: &[Kept],
) -> Result<Repaired, Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let sync_dir = || async {
        fs.sync_dir(dir)
            .await
            .map_err(io_error(format!("syncing {}", dir.display())))
    };
    if keep.is_empty() {
        fs.remove(path)
            .await
            .map_err(io_error(format!("removing {}", path.display())))?;
        sync_dir().await?;
        return Ok(Repaired::Removed);
    }
    let mut repair_name = path.as_os_str().to_owned();
    repair_name.push(".repair");
    let repair_path = PathBuf::from(repair_name);
    let context = || format!("writing {}", repair_path.display());
    let mut out = fs.create(&repair_path).await.map_err(io_error(context()))?;
    let mut footer = FooterBuilder::default();
    let mut end = 0;
    for record in keep {
        let header = record::encode_header(&record.key, record.payload_len, &record.sha256);
        out.write(&header).await.map_err(io_error(context()))?;
        let payload_offset = end + header.len() as u64;
        let mut hasher = record.key.checksum_function().hasher();
        let mut copied = 0;
        while copied < record.payload_len {
            let want = (record.payload_len - copied).min(CHUNK as u64) as usize;
            let chunk = source
                .read_at(record.payload_offset + copied, want)
                .await
                .map_err(io_error(format!("reading {}", path.display())))?;
            if chunk.is_empty() {
                return Err(Error::Internal(format!(
                    "{} shrank during repair",
                    path.display()
                )));
            }
            hasher.update(&chunk);
            out.write(&chunk).await.map_err(io_error(context()))?;
            copied += chunk.len() as u64;
        }
        if hasher.finalize() != record.sha256 {
            return Err(Error::DataLoss(format!(
                "a record of {} changed while it was repaired; nothing was replaced",
                path.display()
            )));
        }
        footer.push(
            &record.key,
            payload_offset,
            record.payload_len,
            &record.sha256,
        );
        end = payload_offset + record.payload_len;
    }
    let sealed = footer.finish(end);
    out.write(&sealed).await.map_err(io_error(context()))?;
    out.sync().await.map_err(io_error(context()))?;
    out.close().await.map_err(io_error(context()))?;
    fs.rename(&repair_path, path)
        .await
        .map_err(io_error(format!("replacing {}", path.display())))?;
    sync_dir().await?;
    Ok(Repaired::Rewritten {
        kept: keep.len() as u64,
        len: end + sealed.len() as u64,
    })
}
