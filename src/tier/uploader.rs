//! The write-back uploader: the local segment log, read in order from the durable watermark,
//! is the upload queue.
//!
//! Ordering rules it keeps (each an invariant of the simulator):
//! - **Blobs before the action results that name them.** A batch's blobs are uploaded before
//!   its action results, and an action result is uploaded only once every blob it names (its
//!   output files, stdout/stderr, trees and the files in them) is in the bucket: seen there, or
//!   uploaded from the local store first. One whose blobs are in neither place is never served
//!   anyway and is not uploaded.
//! - **The watermark passes only what the bucket acknowledged.** It moves past a batch once
//!   every record of it is in the bucket (or is corrupt or gone locally, and so not uploadable).
//! - **Nothing is dropped.** A failing request is retried with back-off for as long as it
//!   fails; the queue then grows and writes get back-pressure ([`super::Tier::admit_write`]).
//! - **Only verified bytes go out.** A record is hashed as it is read and sent only if it
//!   matches (a multipart upload is aborted before it completes otherwise).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::bucket::{read_all, BucketError, PartUpload, MIN_PART_SIZE};
use super::{layout, watermark, Tier};
use crate::engine::{
    AcKind, Digest, DigestFunction, Location, LogCursor, LogRecord, PlantedBug, RecordKey,
};
use crate::proto::reapi::{ActionResult, Tree};
use crate::store::action_result::{parse_digest, referenced_digests, required_digest};
use crate::store::{ActionKey, ActionValue, BlobRead, EngineStore, Error, Store};

/// Records dealt with between two watermark writes.
const CHUNK: usize = 256;
/// Objects up to this size go in one PUT; larger ones in parts of this size.
pub const PART_SIZE: usize = 2 * MIN_PART_SIZE;
/// Blobs from this size on are looked for (HEAD) before they are sent: another node may have.
const HEAD_FIRST: u64 = 1 << 20;
/// The longest an action-cache value or a tree read whole may be.
const MAX_WHOLE_READ: usize = 64 << 20;
/// How long the uploader sleeps when caught up, unless woken by a write.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the queue's size and age are published while nothing else moves them (a bucket
/// that is down stalls the uploader while writes grow the queue).
const QUEUE_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Sent to the bucket.
    Uploaded,
    /// Already there.
    Present,
    /// Its local bytes fail their hash: never sent.
    SkippedCorrupt,
    /// Gone from the local store before it could be read.
    SkippedGone,
    /// An action result naming a blob in neither tier (never served, so not uploaded).
    SkippedIncomplete,
    /// A record that carries nothing for the bucket: a version 1 seal, or a local removal of
    /// an action result (the bucket's copy stays; a reader checks it against both tiers).
    LocalOnly,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Uploaded => "uploaded",
            Outcome::Present => "present",
            Outcome::SkippedCorrupt => "skipped_corrupt",
            Outcome::SkippedGone => "skipped_gone",
            Outcome::SkippedIncomplete => "skipped_incomplete",
            Outcome::LocalOnly => "local_only",
        }
    }
}

/// Why one try failed; every one of these is retried.
#[derive(Debug)]
pub(super) enum Retry {
    Bucket(BucketError),
    Local(Error),
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retry::Bucket(e) => e.fmt(f),
            Retry::Local(e) => write!(f, "reading the local store: {e}"),
        }
    }
}

impl From<BucketError> for Retry {
    fn from(e: BucketError) -> Retry {
        Retry::Bucket(e)
    }
}

/// Where the bytes of a blob being uploaded come from.
enum Source<'a> {
    /// A record of the log (what the uploader sends).
    Log(&'a Tier, Location),
    /// The local store (a blob an action result names, found locally but not in the bucket).
    Local(Box<dyn BlobRead>),
}

impl Source<'_> {
    async fn next(&mut self, done: u64, total: u64, max: usize) -> Result<Option<Bytes>, Error> {
        match self {
            Source::Log(tier, location) => {
                if done >= total {
                    return Ok(None);
                }
                let want = (total - done).min(max as u64) as usize;
                tier.engine
                    .read_record(location, done, want)
                    .await
                    .map(Some)
            }
            Source::Local(reader) => reader.next_chunk(max).await,
        }
    }
}

/// Runs until [`Tier::stop`].
pub(super) async fn run(tier: Arc<Tier>) {
    loop {
        if tier.stopping.load(Ordering::Acquire) {
            return;
        }
        let cursor = tier.progress.lock().expect("progress").uploaded;
        let batch = match tier.engine.log_after(cursor).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "reading the log to upload failed; retrying");
                tier.pause(IDLE_POLL).await;
                continue;
            }
        };
        if batch.records.is_empty() {
            tier.caught_up();
            if batch.next != cursor {
                tracing::debug!(?cursor, next = ?batch.next, "moving on past the end of a segment");
                tier.advance(batch.next).await;
                continue;
            }
            let woken = tier.wake.notified();
            futures::pin_mut!(woken);
            futures::future::select(woken, Box::pin(tier.pause(IDLE_POLL))).await;
            continue;
        }
        tier.behind();
        let chunks: Vec<&[LogRecord]> = batch.records.chunks(CHUNK).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let next = if i == last {
                batch.next
            } else {
                LogCursor::after(&chunk[chunk.len() - 1].location)
            };
            if tier.config.planted(PlantedBug::WatermarkPastUnacked) {
                // The bug: the watermark moves before the bucket has acknowledged the chunk.
                tier.advance(next).await;
            }
            if !tier.upload_chunk(chunk).await {
                return;
            }
            tier.advance(next).await;
        }
    }
}

/// Publishes the queue every [`QUEUE_REPORT_INTERVAL`] until [`Tier::stop`].
pub(super) async fn report_queue(tier: Arc<Tier>) {
    while !tier.stopping.load(Ordering::Acquire) {
        tier.publish_queue();
        tier.pause(QUEUE_REPORT_INTERVAL).await;
    }
}

impl Tier {
    /// Sleeps for `duration`, or until the tier stops.
    async fn pause(&self, duration: Duration) {
        let stopped = self.stopped.notified();
        futures::pin_mut!(stopped);
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        futures::future::select(stopped, self.runtime.sleep(duration)).await;
    }

    fn behind(&self) {
        let mut progress = self.progress.lock().expect("progress");
        progress
            .behind_since
            .get_or_insert_with(|| self.runtime.now());
    }

    fn caught_up(&self) {
        self.progress.lock().expect("progress").behind_since = None;
        self.publish_queue();
    }

    /// Sets the queue gauges and the status page's figures.
    pub(super) fn publish_queue(&self) {
        let status = self.status();
        let behind = Duration::from_secs(status.behind_seconds);
        self.metrics.queue(status.backlog_bytes, behind);
        if let Some(metrics) = self.status_page.get() {
            metrics.publish_object_store_queue(status.backlog_bytes, behind);
        }
    }

    /// Moves the upload position to `next`, writes the watermark and lets eviction free what is
    /// now behind it. A failed watermark write keeps the old floor (and is tried again next
    /// time): a restart would upload those records again, which is harmless.
    async fn advance(&self, next: LogCursor) {
        self.progress.lock().expect("progress").uploaded = next;
        match watermark::store(
            self.fs.as_ref(),
            &self.watermark_path,
            next,
            &self.config.url,
        )
        .await
        {
            Ok(()) => {
                self.progress.lock().expect("progress").durable = next;
                self.engine.set_upload_floor(next.segment);
            }
            Err(e) => tracing::warn!(error = %e, "writing the upload watermark failed"),
        }
        self.publish_queue();
    }

    /// Uploads a chunk of records: its blobs, then its action results. Returns `false` if the
    /// tier stopped first (the chunk then stays queued).
    async fn upload_chunk(&self, chunk: &[LogRecord]) -> bool {
        let is_blob = |r: &&LogRecord| matches!(r.key, RecordKey::Blob(_));
        let is_action = |r: &&LogRecord| matches!(r.key, RecordKey::Action { .. });
        let actions_first = self.config.planted(PlantedBug::AcBeforeBlobs);
        let phases: [Vec<&LogRecord>; 2] = if actions_first {
            [
                chunk.iter().filter(is_action).collect(),
                chunk.iter().filter(is_blob).collect(),
            ]
        } else {
            [
                chunk.iter().filter(is_blob).collect(),
                chunk.iter().filter(is_action).collect(),
            ]
        };
        for phase in phases {
            let uploads: Vec<_> = phase.into_iter().map(|r| self.until_done(r)).collect();
            let done = futures::stream::iter(uploads)
                .buffer_unordered(self.config.upload_concurrency.max(1))
                .fold(true, |all, done| async move { all && done })
                .await;
            if !done {
                return false;
            }
        }
        true
    }

    /// Tries `record` until it is dealt with; `false` if the tier stopped first.
    async fn until_done(&self, record: &LogRecord) -> bool {
        let mut wait = FIRST_RETRY;
        loop {
            match self.upload_record(record).await {
                Ok(outcome) => {
                    self.metrics.record(outcome.name());
                    if outcome != Outcome::Uploaded && outcome != Outcome::Present {
                        tracing::warn!(key = ?record.key, outcome = outcome.name(), "not uploaded");
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(key = ?record.key, error = %e, retry_in = ?wait, "upload failed");
                }
            }
            self.pause(wait).await;
            if self.stopping.load(Ordering::Acquire) {
                return false;
            }
            wait = (wait * 2).min(MAX_RETRY);
        }
    }

    async fn upload_record(&self, record: &LogRecord) -> Result<Outcome, Retry> {
        match &record.key {
            RecordKey::Blob(digest) => {
                if record.sha256 != digest.hash {
                    return Ok(Outcome::SkippedCorrupt);
                }
                self.send_blob(digest, Source::Log(self, record.location))
                    .await
            }
            RecordKey::Action {
                instance,
                function,
                action,
                kind,
            } => {
                let key = ActionKey::with_function(instance.clone(), *function, *action);
                let bytes = match self
                    .engine
                    .read_record(&record.location, 0, record.location.len as usize)
                    .await
                {
                    Ok(bytes) => bytes,
                    Err(e) => return local_outcome(e),
                };
                if <[u8; 32]>::from(Sha256::digest(&bytes)) != record.sha256 {
                    return Ok(Outcome::SkippedCorrupt);
                }
                let value = ActionValue { kind: *kind, bytes };
                self.send_action(&key, &value).await
            }
            RecordKey::ActionRemoved { .. } | RecordKey::Seal => Ok(Outcome::LocalOnly),
        }
    }

    /// Uploads an action-cache value once every blob it names is in the bucket.
    pub(super) async fn send_action(
        &self,
        key: &ActionKey,
        value: &ActionValue,
    ) -> Result<Outcome, Retry> {
        let object_key = layout::action_key(key);
        if self.present.contains(&object_key) {
            return Ok(Outcome::Present);
        }
        if value.kind == AcKind::ActionResult && !self.config.planted(PlantedBug::AcBeforeBlobs) {
            let Ok(result) = ActionResult::decode(value.bytes.clone()) else {
                return Ok(Outcome::SkippedCorrupt);
            };
            if !self.blobs_in_bucket(key.function, &result).await? {
                return Ok(Outcome::SkippedIncomplete);
            }
        }
        self.bucket
            .put(&object_key, layout::encode_action(value))
            .await?;
        self.present.insert(object_key);
        Ok(Outcome::Uploaded)
    }

    /// Makes sure every blob `result` names is in the bucket, uploading local ones that are
    /// not; `false` if one is in neither tier (or the result names blobs malformed).
    async fn blobs_in_bucket(
        &self,
        function: DigestFunction,
        result: &ActionResult,
    ) -> Result<bool, Retry> {
        let Ok(mut needed) = referenced_digests(function, result) else {
            return Ok(false);
        };
        for directory in &result.output_directories {
            let tree = directory.tree_digest.as_ref();
            let Ok(tree) = required_digest(function, tree, "tree_digest") else {
                return Ok(false);
            };
            match self.tree_files(&tree).await? {
                Some(files) => needed.extend(files),
                None => return Ok(false),
            }
        }
        needed.sort();
        needed.dedup();
        let checks: Vec<_> = needed
            .iter()
            .map(|digest| self.ensure_blob(digest))
            .collect();
        let mut checks =
            futures::stream::iter(checks).buffer_unordered(self.config.upload_concurrency.max(1));
        while let Some(outcome) = checks.next().await {
            match outcome? {
                Outcome::Uploaded | Outcome::Present => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The files of the tree blob `tree` (from the local store, else the bucket, verified);
    /// `None` if it is in neither or does not decode.
    async fn tree_files(&self, tree: &Digest) -> Result<Option<Vec<Digest>>, Retry> {
        let local = EngineStore::new(self.engine.clone());
        let bytes = match local.read_blob(tree).await {
            Ok(bytes) => bytes,
            Err(Error::NotFound(_) | Error::DataLoss(_)) => {
                let found = read_all(
                    self.bucket.as_ref(),
                    &layout::blob_key(tree),
                    MAX_WHOLE_READ,
                )
                .await?;
                match found.filter(|bytes| Digest::of_with(tree.function, bytes) == *tree) {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                }
            }
            Err(e) => return Err(Retry::Local(e)),
        };
        let Ok(decoded) = Tree::decode(bytes) else {
            return Ok(None);
        };
        let mut files = Vec::new();
        for directory in decoded.root.iter().chain(&decoded.children) {
            for file in &directory.files {
                match file
                    .digest
                    .as_ref()
                    .map(|d| parse_digest(tree.function, d, "tree file"))
                {
                    Some(Ok(digest)) => files.push(digest),
                    _ => return Ok(None),
                }
            }
        }
        Ok(Some(files))
    }

    /// Makes sure `digest` is in the bucket: seen there, or uploaded from the local store.
    pub(super) async fn ensure_blob(&self, digest: &Digest) -> Result<Outcome, Retry> {
        if digest.is_empty() {
            return Ok(Outcome::Present);
        }
        let key = layout::blob_key(digest);
        if self.present.contains(&key) {
            return Ok(Outcome::Present);
        }
        if self.bucket.head(&key).await? == Some(digest.size) {
            self.present.insert(key);
            return Ok(Outcome::Present);
        }
        let local = EngineStore::new(self.engine.clone());
        match local.open_blob(digest, 0).await {
            Ok(reader) => self.send_blob(digest, Source::Local(reader)).await,
            Err(e) => local_outcome(e),
        }
    }

    /// Uploads a blob from `source`, verified against its digest on the way.
    async fn send_blob(&self, digest: &Digest, mut source: Source<'_>) -> Result<Outcome, Retry> {
        let key = layout::blob_key(digest);
        if digest.is_empty() || self.present.contains(&key) {
            return Ok(Outcome::Present);
        }
        if digest.size >= HEAD_FIRST && self.bucket.head(&key).await? == Some(digest.size) {
            self.present.insert(key);
            return Ok(Outcome::Present);
        }
        let mut multipart = None;
        let sent = self
            .stream_blob(digest, &key, &mut source, &mut multipart)
            .await;
        if !matches!(sent, Ok(Outcome::Uploaded)) {
            if let Some(upload) = multipart {
                upload.abort().await;
            }
        }
        if matches!(sent, Ok(Outcome::Uploaded)) {
            self.present.insert(key);
        }
        sent
    }

    /// Sends `source` as the object `key`: one PUT, or a multipart upload (left in
    /// `multipart` for the caller to abort if this fails) completed only once every byte was
    /// read and hashed to `digest`.
    async fn stream_blob(
        &self,
        digest: &Digest,
        key: &str,
        source: &mut Source<'_>,
        multipart: &mut Option<Box<dyn PartUpload>>,
    ) -> Result<Outcome, Retry> {
        let mut hasher = digest.function.hasher();
        let mut done = 0u64;
        let mut part = BytesMut::new();
        loop {
            let chunk = match source.next(done, digest.size, PART_SIZE).await {
                Ok(chunk) => chunk,
                Err(e) => return local_outcome(e),
            };
            let Some(chunk) = chunk.filter(|c| !c.is_empty()) else {
                break;
            };
            done += chunk.len() as u64;
            if done > digest.size {
                break;
            }
            hasher.update(&chunk);
            part.extend_from_slice(&chunk);
            if part.len() >= PART_SIZE && done < digest.size {
                let upload = match multipart {
                    Some(upload) => upload,
                    None => multipart.insert(self.bucket.put_multipart(key).await?),
                };
                upload.put_part(part.split().freeze()).await?;
            }
        }
        let intact = done == digest.size && hasher.finalize() == digest.hash;
        if !intact {
            tracing::error!(%digest, "local bytes fail their digest; not uploading them");
            return Ok(Outcome::SkippedCorrupt);
        }
        match multipart.take() {
            Some(mut upload) => {
                if !part.is_empty() {
                    if let Err(e) = upload.put_part(part.freeze()).await {
                        *multipart = Some(upload);
                        return Err(e.into());
                    }
                }
                upload.complete().await?;
            }
            None => self.bucket.put(key, part.freeze()).await?,
        }
        Ok(Outcome::Uploaded)
    }
}

/// What a local read failure means for a record: gone or corrupt ones are not uploadable;
/// anything else (a disk error) is worth a retry.
fn local_outcome(e: Error) -> Result<Outcome, Retry> {
    match e {
        Error::NotFound(_) => Ok(Outcome::SkippedGone),
        Error::DataLoss(_) => Ok(Outcome::SkippedCorrupt),
        e => Err(Retry::Local(e)),
    }
}
