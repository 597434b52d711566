//! [`TierStore`]: the object-store tier as a layer of the store stack, between the local
//! engine and the completeness check (so an action result found only in the bucket is checked
//! against both tiers).
//!
//! Invariants: a blob read from the bucket is verified against its digest before its last
//! chunk is handed out (bytes that fail are never served, nor stored); concurrent local misses
//! of one blob fetch it from the bucket once; writes are refused (never dropped) while the
//! upload backlog is over budget; in write-through mode a write is acknowledged only once it
//! is in the bucket too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::Hasher;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;

use super::bucket::{read_all, BucketError, ObjectStream};
use super::uploader::{Outcome, Retry};
use super::{layout, Tier, TierMode};
use crate::seam::signal::{signal, Trigger, Waiter};
use crate::store::{
    forward_to, Accept, ActionKey, ActionValue, BlobRead, BlobUpload, Digest, Error, Store,
    StoreFuture, HASH_LEN,
};

/// Concurrent HEADs of one FindMissingBlobs.
const HEADS_AT_ONCE: usize = 32;
/// The largest action-cache object read from the bucket.
const MAX_ACTION_OBJECT: usize = 64 << 20;

/// The tier over the local store `inner`.
pub struct TierStore<S> {
    inner: Arc<S>,
    tier: Arc<Tier>,
    /// Blobs being fetched from the bucket: later misses wait for that fetch.
    fills: Arc<Mutex<HashMap<Digest, Waiter>>>,
}

impl<S> TierStore<S> {
    /// The tier `tier` over `inner` (the local store the uploader reads, the engine's).
    pub fn new(inner: S, tier: Arc<Tier>) -> TierStore<S> {
        TierStore {
            inner: Arc::new(inner),
            tier,
            fills: Arc::default(),
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::io(what.to_owned(), std::io::Error::other(e.to_string()))
}

fn retry_error(e: Retry) -> Error {
    match e {
        Retry::Bucket(e) => unavailable("writing through to the object store", e),
        Retry::Local(e) => e,
    }
}

/// Either a fill of `digest` is ours to do, or someone else's is under way.
enum Claim {
    Ours(FillGuard),
    Theirs(Waiter),
}

/// Held by the one fill of a blob; dropping it wakes the readers waiting for that fill.
struct FillGuard {
    fills: Arc<Mutex<HashMap<Digest, Waiter>>>,
    digest: Digest,
    _done: Trigger,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fills.lock().expect("fills").remove(&self.digest);
    }
}

impl<S: Store> TierStore<S> {
    fn claim(&self, digest: &Digest) -> Claim {
        let mut fills = self.fills.lock().expect("fills");
        if let Some(waiting) = fills.get(digest) {
            return Claim::Theirs(waiting.clone());
        }
        let (done, waiting) = signal();
        fills.insert(*digest, waiting);
        Claim::Ours(FillGuard {
            fills: self.fills.clone(),
            digest: *digest,
            _done: done,
        })
    }

    /// A read of `digest` from `offset` that the local store missed: from the bucket, filling
    /// the local store as it streams; or, if another read is fetching it already, from the
    /// local store once that fetch is done.
    async fn open_from_bucket(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Box<dyn BlobRead>, Error> {
        let not_found = || Error::NotFound(format!("blob {digest} not found"));
        for _ in 0..3 {
            let guard = match self.claim(digest) {
                Claim::Ours(guard) => guard,
                Claim::Theirs(waiting) => {
                    // Fires once the fill's guard is gone.
                    waiting.await;
                    match self.inner.open_blob(digest, offset).await {
                        Err(Error::NotFound(_)) => continue,
                        other => return other,
                    }
                }
            };
            let key = layout::blob_key(digest);
            let stream = self
                .tier
                .bucket
                .get(&key, 0)
                .await
                .map_err(|e| unavailable("reading from the object store", e))?
                .ok_or_else(not_found)?;
            let fill = match self.inner.begin_upload(*digest).await {
                Ok(upload) => Some(upload),
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "serving from the bucket without filling");
                    None
                }
            };
            return Ok(Box::new(BucketRead {
                tier: self.tier.clone(),
                digest: *digest,
                stream,
                pending: Bytes::new(),
                received: 0,
                skip: offset,
                hasher: Some(digest.function.hasher()),
                fill,
                guard: Some(guard),
            }));
        }
        Err(not_found())
    }

    /// Whether the bucket holds `digest` (a short positive cache first).
    async fn in_bucket(&self, digest: &Digest) -> bool {
        let key = layout::blob_key(digest);
        if self.tier.present.contains(&key) {
            return true;
        }
        match self.tier.bucket.head(&key).await {
            Ok(Some(size)) if size == digest.size => {
                self.tier.present.insert(key);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "HEAD failed; reporting the blob missing");
                false
            }
        }
    }

    async fn action_from_bucket(
        &self,
        key: &ActionKey,
        accept: Accept,
    ) -> Result<Option<ActionValue>, Error> {
        let object_key = layout::action_key(key);
        let found = read_all(self.tier.bucket.as_ref(), &object_key, MAX_ACTION_OBJECT)
            .await
            .map_err(|e| unavailable("reading from the object store", e))?;
        let Some(object) = found else {
            return Ok(None);
        };
        let value = match layout::decode_action(object) {
            Ok(value) => value,
            Err(why) => {
                tracing::warn!(%key, %why, "ignoring a malformed action-cache object");
                return Ok(None);
            }
        };
        if !accept.admits(value.kind) {
            return Ok(None);
        }
        // Kept locally too; the uploader need not send it back.
        self.tier.present.insert(object_key);
        if let Err(e) = self.inner.put_action(key, value.clone()).await {
            tracing::debug!(%key, error = %e, "could not keep a bucket action result locally");
        }
        Ok(Some(value))
    }
}

impl<S: Store> Store for TierStore<S> {
    forward_to!(inner: limits, stats);

    fn find_missing_and_touch<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        Box::pin(async move {
            let missing = self.inner.find_missing_and_touch(digests).await?;
            if missing.is_empty() {
                return Ok(missing);
            }
            let heads: Vec<_> = missing.iter().map(|d| self.in_bucket(d)).collect();
            let present: Vec<bool> = futures::stream::iter(heads)
                .buffered(HEADS_AT_ONCE)
                .collect()
                .await;
            Ok(missing
                .into_iter()
                .zip(present)
                .filter(|(_, present)| !present)
                .map(|(digest, _)| digest)
                .collect())
        })
    }

    fn resolve_hash_and_touch<'a>(
        &'a self,
        hash: &'a [u8; HASH_LEN],
    ) -> StoreFuture<'a, Option<Digest>> {
        Box::pin(async move {
            if let Some(digest) = self.inner.resolve_hash_and_touch(hash).await? {
                return Ok(Some(digest));
            }
            // Blob keys name the hash alone, so a client that sends no size (HTTP) costs one HEAD.
            let key = layout::blob_key(&Digest::sha256(*hash, 0));
            match self.tier.bucket.head(&key).await {
                Ok(Some(size)) => Ok(Some(Digest::sha256(*hash, size))),
                Ok(None) => Ok(None),
                Err(e) => Err(unavailable("asking the object store", e)),
            }
        })
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
    ) -> StoreFuture<'a, Box<dyn BlobRead>> {
        Box::pin(async move {
            match self.inner.open_blob(digest, offset).await {
                Err(Error::NotFound(_)) if offset <= digest.size => {
                    self.open_from_bucket(digest, offset).await
                }
                other => other,
            }
        })
    }

    fn begin_upload(&self, digest: Digest) -> StoreFuture<'_, Box<dyn BlobUpload>> {
        Box::pin(async move {
            self.tier.admit_write()?;
            let upload = self.inner.begin_upload(digest).await?;
            Ok(Box::new(TierUpload {
                inner: upload,
                tier: self.tier.clone(),
            }) as Box<dyn BlobUpload>)
        })
    }

    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>> {
        Box::pin(async move {
            match self.inner.get_action(key, accept).await? {
                Some(value) => Ok(Some(value)),
                None => self.action_from_bucket(key, accept).await,
            }
        })
    }

    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.tier.admit_write()?;
            self.inner.put_action(key, value.clone()).await?;
            self.tier.wake_uploader();
            if self.tier.config.mode == TierMode::Through {
                match self
                    .tier
                    .send_action(key, &value)
                    .await
                    .map_err(retry_error)?
                {
                    Outcome::Uploaded | Outcome::Present => {}
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "action result {key} names blobs that are in neither tier ({other:?})"
                        )))
                    }
                }
            }
            Ok(())
        })
    }
}

/// An upload through the tier: wakes the uploader once committed, and in write-through mode
/// acknowledges only once the blob is in the bucket too.
struct TierUpload {
    inner: Box<dyn BlobUpload>,
    tier: Arc<Tier>,
}

#[async_trait]
impl BlobUpload for TierUpload {
    fn expected(&self) -> Digest {
        self.inner.expected()
    }

    fn received(&self) -> u64 {
        self.inner.received()
    }

    async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        self.inner.write(data).await
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let digest = self.inner.expected();
        self.inner.commit().await?;
        self.tier.wake_uploader();
        if self.tier.config.mode == TierMode::Through {
            self.tier.ensure_blob(&digest).await.map_err(retry_error)?;
        }
        Ok(())
    }
}

/// A blob streamed from the bucket: hashed as it arrives, the local store filled with it, and
/// the last chunk handed out only once the whole blob matched its digest.
struct BucketRead {
    tier: Arc<Tier>,
    digest: Digest,
    stream: ObjectStream,
    pending: Bytes,
    received: u64,
    /// Bytes before the reader's offset: hashed and stored, not returned.
    skip: u64,
    hasher: Option<Hasher>,
    fill: Option<Box<dyn BlobUpload>>,
    /// Dropped (waking waiters) when the read ends, however it ends.
    guard: Option<FillGuard>,
}

impl BucketRead {
    /// The next bytes from the bucket, at most `max`.
    async fn pull(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        while self.pending.is_empty() {
            match self.stream.next().await {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => {
                    self.tier.metrics.fill("failed");
                    return Err(unavailable("reading from the object store", e));
                }
                None => return Ok(None),
            }
        }
        let take = self.pending.len().min(max);
        Ok(Some(self.pending.split_to(take)))
    }

    /// Everything arrived and matched: the fill is committed before the last bytes go out,
    /// so a reader that finished finds the blob locally.
    async fn finish(&mut self) -> Result<(), Error> {
        let hash = self.hasher.take().map(Hasher::finalize);
        if hash != Some(self.digest.hash) {
            self.tier.metrics.fill("digest_mismatch");
            self.fill = None;
            tracing::error!(digest = %self.digest, "object in the bucket fails its digest; not serving it");
            return Err(Error::DataLoss(format!(
                "the object-store copy of {} fails its digest",
                self.digest
            )));
        }
        // Read whole and verified: the bucket holds it, so the uploader meeting the fill in
        // the log need not look for it there again.
        self.tier.present.insert(layout::blob_key(&self.digest));
        match self.fill.take() {
            Some(fill) => match fill.commit().await {
                Ok(()) => self.tier.metrics.fill("filled"),
                Err(e) => {
                    tracing::warn!(digest = %self.digest, error = %e, "filling the local store failed");
                    self.tier.metrics.fill("served_unfilled");
                }
            },
            None => self.tier.metrics.fill("served_unfilled"),
        }
        self.guard = None;
        Ok(())
    }
}

#[async_trait]
impl BlobRead for BucketRead {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        loop {
            if self.hasher.is_none() {
                return Ok(None);
            }
            let want = if self.received < self.skip {
                (self.skip - self.received).min(max as u64) as usize
            } else {
                max
            };
            let Some(chunk) = self.pull(want.max(1)).await? else {
                self.tier.metrics.fill("failed");
                return Err(unavailable(
                    "reading from the object store",
                    BucketError::Unavailable(format!(
                        "{} ended after {} of {} bytes",
                        self.digest, self.received, self.digest.size
                    )),
                ));
            };
            let start = self.received;
            self.received += chunk.len() as u64;
            if self.received > self.digest.size {
                self.tier.metrics.fill("digest_mismatch");
                return Err(Error::DataLoss(format!(
                    "the object-store copy of {} is longer than its digest",
                    self.digest
                )));
            }
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&chunk);
            }
            if let Some(fill) = &mut self.fill {
                if let Err(e) = fill.write(chunk.clone()).await {
                    tracing::debug!(digest = %self.digest, error = %e, "abandoning a fill");
                    self.fill = None;
                }
            }
            if self.received == self.digest.size {
                self.finish().await?;
            }
            if start >= self.skip {
                return Ok(Some(chunk));
            }
            if self.received > self.skip {
                return Ok(Some(chunk.slice((self.skip - start) as usize..)));
            }
            if self.received == self.digest.size {
                return Ok(None);
            }
        }
    }
}

/// The tier as a store for the stack: what [`super::super::store::stack::assemble`] puts over
/// the engine.
pub fn layer(inner: Arc<dyn Store>, tier: Arc<Tier>) -> Arc<dyn Store> {
    Arc::new(TierStore::new(inner, tier))
}
