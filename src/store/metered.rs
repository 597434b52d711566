//! [`Metered`]: the cache-level metrics, counted in one place for both front ends.
//!
//! Each front end wraps the shared stack in its own `Metered` (labelled with its protocol), so
//! `hoard_ac_lookups_total`, `hoard_cas_lookups_total` and `hoard_upload_failures_total` count
//! what the store answered, whatever request shape asked: a FindMissingBlobs, a ByteStream Read
//! and an HTTP `HEAD /cas/` are all lookups of blobs. Upload failures are counted by the typed
//! [`Error`] variant ([`Error::kind_name`]), never by parsing a message. Requests themselves
//! (counts by status, latency, bytes on the wire, the access log) are the front ends' part, in
//! [`crate::observe::Call`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    forward_to, Accept, ActionKey, ActionValue, BlobRead, BlobUpload, Digest, Error, Store,
    StoreFuture, HASH_LEN,
};
use crate::observe::{Metrics, Protocol};

/// Counts what `inner` answers to one front end.
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
    protocol: Protocol,
}

impl<S> Metered<S> {
    /// Counts into `metrics` under `protocol`.
    pub fn new(inner: S, metrics: Arc<Metrics>, protocol: Protocol) -> Self {
        Metered {
            inner,
            metrics,
            protocol,
        }
    }

    /// Counts one lookup whose `result` is a hit, a miss (`NotFound`) or neither (a failure).
    fn count_lookup<T>(&self, operation: &'static str, result: &Result<T, Error>, hit: bool) {
        match result {
            Ok(_) => {
                self.metrics
                    .cas_lookups(self.protocol, operation, u64::from(hit), u64::from(!hit))
            }
            Err(Error::NotFound(_) | Error::DataLoss(_)) => {
                self.metrics.cas_lookups(self.protocol, operation, 0, 1)
            }
            Err(_) => {}
        }
    }
}

impl<S: Store> Store for Metered<S> {
    forward_to!(inner: limits, stats);

    fn find_missing_and_touch<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        Box::pin(async move {
            let missing = self.inner.find_missing_and_touch(digests).await?;
            let (asked, absent) = (digests.len() as u64, missing.len() as u64);
            self.metrics
                .cas_lookups(self.protocol, "find_missing", asked - absent, absent);
            Ok(missing)
        })
    }

    /// Counted apart from FindMissingBlobs (`operation="contains"`): these are the checks
    /// ByteStream makes before a read or an upload, not a client's question.
    fn contains_and_touch<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let present = self.inner.contains_and_touch(digest).await;
            let hit = matches!(present, Ok(true));
            self.count_lookup("contains", &present, hit);
            present
        })
    }

    fn resolve_hash_and_touch<'a>(
        &'a self,
        hash: &'a [u8; HASH_LEN],
    ) -> StoreFuture<'a, Option<Digest>> {
        Box::pin(async move {
            let found = self.inner.resolve_hash_and_touch(hash).await;
            let hit = matches!(found, Ok(Some(_)));
            self.count_lookup("resolve", &found, hit);
            found
        })
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
    ) -> StoreFuture<'a, Box<dyn BlobRead>> {
        Box::pin(async move {
            let opened = self.inner.open_blob(digest, offset).await;
            self.count_lookup("read", &opened, true);
            if opened.is_ok() {
                self.metrics
                    .count_blob_traffic(digest, digest.size.saturating_sub(offset));
            }
            opened
        })
    }

    fn read_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Bytes> {
        Box::pin(async move {
            let read = self.inner.read_blob(digest).await;
            self.count_lookup("read", &read, true);
            if read.is_ok() {
                self.metrics.count_blob_traffic(digest, digest.size);
            }
            read
        })
    }

    fn begin_upload(&self, digest: Digest) -> StoreFuture<'_, Box<dyn BlobUpload>> {
        Box::pin(async move {
            let begun = self.inner.begin_upload(digest).await;
            let inner = counted(&self.metrics, self.protocol, begun)?;
            Ok(Box::new(MeteredUpload {
                inner,
                metrics: self.metrics.clone(),
                protocol: self.protocol,
            }) as Box<dyn BlobUpload>)
        })
    }

    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>> {
        Box::pin(async move {
            let found = self.inner.get_action(key, accept).await?;
            self.metrics.ac_lookup(self.protocol, found.is_some());
            let bytes = found.as_ref().map_or(0, |value| value.bytes.len() as u64);
            self.metrics.count_action_traffic(key, bytes);
            Ok(found)
        })
    }

    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let bytes = value.bytes.len() as u64;
            self.inner.put_action(key, value).await?;
            self.metrics.count_action_traffic(key, bytes);
            Ok(())
        })
    }
}

/// An upload whose failures are counted.
struct MeteredUpload {
    inner: Box<dyn BlobUpload>,
    metrics: Arc<Metrics>,
    protocol: Protocol,
}

/// `result`, counted as an upload failure by its variant when it is an error.
fn counted<T>(metrics: &Metrics, protocol: Protocol, result: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &result {
        metrics.upload_failed(protocol, e.kind_name());
    }
    result
}

#[async_trait]
impl BlobUpload for MeteredUpload {
    fn expected(&self) -> Digest {
        self.inner.expected()
    }

    fn received(&self) -> u64 {
        self.inner.received()
    }

    async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        let written = self.inner.write(data).await;
        counted(&self.metrics, self.protocol, written)
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let MeteredUpload {
            inner,
            metrics,
            protocol,
        } = *self;
        let digest = inner.expected();
        counted(&metrics, protocol, inner.commit().await)?;
        metrics.count_blob_traffic(&digest, digest.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AcKind;
    use crate::store::MemoryStore;

    fn rendered(metrics: &Metrics) -> String {
        metrics.render(crate::store::Stats::default())
    }

    #[test]
    fn lookups_and_failures_are_counted_by_protocol_and_variant() {
        futures::executor::block_on(async {
            let metrics = Arc::new(Metrics::new());
            let store = Metered::new(
                MemoryStore::new(1 << 20, 1 << 20),
                metrics.clone(),
                Protocol::Http,
            );
            let present = Digest::of(b"present");
            store
                .put_blob(present, Bytes::from_static(b"present"))
                .await
                .unwrap();
            let absent = Digest::of(b"absent");
            store
                .find_missing_and_touch(&[present, absent])
                .await
                .unwrap();
            assert!(store.open_blob(&absent, 0).await.is_err());
            store.read_blob(&present).await.unwrap();
            assert!(!store.contains_and_touch(&absent).await.unwrap());
            store.resolve_hash_and_touch(&absent.hash).await.unwrap();
            let wrong = Digest::sha256(absent.hash, 7);
            assert!(store
                .put_blob(wrong, Bytes::from_static(b"present"))
                .await
                .is_err());
            assert!(store
                .put_blob(present, Bytes::from_static(b"short"))
                .await
                .is_err());
            let key = ActionKey::new("", absent.hash);
            assert_eq!(store.get_action(&key, Accept::Any).await.unwrap(), None);
            let value = ActionValue {
                kind: AcKind::Opaque,
                bytes: Bytes::from_static(b"v"),
            };
            store.put_action(&key, value).await.unwrap();
            store.get_action(&key, Accept::Any).await.unwrap();
            let text = rendered(&metrics);
            for line in [
                r#"hoard_cas_lookups_total{protocol="http",operation="find_missing",result="hit"} 1"#,
                r#"hoard_cas_lookups_total{protocol="http",operation="find_missing",result="miss"} 1"#,
                r#"hoard_cas_lookups_total{protocol="http",operation="read",result="hit"} 1"#,
                r#"hoard_cas_lookups_total{protocol="http",operation="read",result="miss"} 1"#,
                r#"hoard_cas_lookups_total{protocol="http",operation="resolve",result="miss"} 1"#,
                r#"hoard_cas_lookups_total{protocol="http",operation="contains",result="miss"} 1"#,
                r#"hoard_upload_failures_total{protocol="http",reason="hash_mismatch"} 1"#,
                r#"hoard_upload_failures_total{protocol="http",reason="size_mismatch"} 1"#,
                r#"hoard_ac_lookups_total{protocol="http",result="miss"} 1"#,
                r#"hoard_ac_lookups_total{protocol="http",result="hit"} 1"#,
            ] {
                assert!(text.contains(line), "missing {line:?} in:\n{text}");
            }
        });
    }
}
