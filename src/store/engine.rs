//! The segment engine as a [`Store`]: durable storage on the local disk (see [`crate::engine`]
//! for its invariants: flushed, synced and indexed before acknowledged; verified on read).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Accept, ActionKey, ActionValue, BlobRead, BlobUpload, Digest, DigestFunction, Error, Limits,
    Stats, Store, StoreFuture, HASH_LEN,
};
use crate::engine::{BlobReader, Engine, Upload};

/// [`Engine`] behind the [`Store`] interface.
#[derive(Clone)]
pub struct EngineStore {
    engine: Arc<Engine>,
}

impl EngineStore {
    /// The store over `engine`.
    pub fn new(engine: Arc<Engine>) -> EngineStore {
        EngineStore { engine }
    }

    /// The engine underneath (for shutdown, tests and the simulator).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl Store for EngineStore {
    fn limits(&self) -> Limits {
        let config = self.engine.config();
        Limits {
            max_blob_size: config.largest_blob(),
            max_size: config.max_size,
        }
    }

    fn stats(&self) -> Stats {
        self.engine.stats()
    }

    fn find_missing_and_touch<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        Box::pin(async move { Ok(self.engine.missing(digests)) })
    }

    fn resolve_hash_and_touch<'a>(
        &'a self,
        hash: &'a [u8; HASH_LEN],
    ) -> StoreFuture<'a, Option<Digest>> {
        Box::pin(async move {
            // `contains` is what marks it used (and re-checks it is still there).
            Ok(self
                .engine
                .blob_by_hash(DigestFunction::Sha256, hash)
                .filter(|digest| self.engine.contains(digest)))
        })
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
    ) -> StoreFuture<'a, Box<dyn BlobRead>> {
        Box::pin(async move {
            let reader = self.engine.open_blob(digest, offset)?;
            Ok(Box::new(reader) as Box<dyn BlobRead>)
        })
    }

    fn begin_upload(&self, digest: Digest) -> StoreFuture<'_, Box<dyn BlobUpload>> {
        Box::pin(async move {
            let upload = self.engine.begin_upload(digest).await?;
            Ok(Box::new(upload) as Box<dyn BlobUpload>)
        })
    }

    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>> {
        Box::pin(async move {
            let found = self
                .engine
                .get_action(&key.instance, key.function, &key.hash)
                .await?;
            Ok(found
                .filter(|(kind, _)| accept.admits(*kind))
                .map(|(kind, bytes)| ActionValue { kind, bytes }))
        })
    }

    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.engine
                .put_action(
                    &key.instance,
                    key.function,
                    key.hash,
                    value.kind,
                    value.bytes,
                )
                .await
        })
    }

    /// One positional read instead of a chunked stream (the engine verifies whole-blob reads).
    fn read_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Bytes> {
        Box::pin(async move { self.engine.read_blob(digest, 0, digest.size).await })
    }
}

#[async_trait]
impl BlobRead for BlobReader {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        BlobReader::next_chunk(self, max).await
    }
}

#[async_trait]
impl BlobUpload for Upload {
    fn expected(&self) -> Digest {
        Upload::expected(self)
    }

    fn received(&self) -> u64 {
        Upload::received(self)
    }

    async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        Upload::write(self, data).await
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        Upload::commit(*self).await
    }
}
