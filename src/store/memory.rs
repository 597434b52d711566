//! [`MemoryStore`]: a bounded store in memory, for tests, the simulator and layers' own tests.
//!
//! Invariants it keeps, like every store: an upload is visible only after its size and hash
//! were checked at commit; a read returns exactly the bytes that were verified; the bytes held
//! never exceed the budget (least recently used entries, blobs and action values alike, are
//! evicted to make room). Nothing survives the process: it is not a durable store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Accept, ActionKey, ActionValue, BlobRead, BlobUpload, Digest, DigestFunction, Error, Limits,
    Stats, Store, StoreFuture, HASH_LEN,
};
use crate::engine::Hasher;

/// Blobs are keyed by function and hash: one hash under two functions is two blobs.
type BlobKey = (DigestFunction, [u8; HASH_LEN]);

fn blob_key(digest: &Digest) -> BlobKey {
    (digest.function, digest.hash)
}

/// A bounded in-memory [`Store`].
#[derive(Clone)]
pub struct MemoryStore {
    limits: Limits,
    state: Arc<Mutex<State>>,
}

/// What an entry of the recency order names.
#[derive(Clone, Debug)]
enum Entry {
    Blob(Digest),
    Action(ActionKey),
}

#[derive(Default)]
struct State {
    /// Blob bytes and their place in the recency order.
    blobs: HashMap<BlobKey, (Bytes, u64)>,
    actions: HashMap<ActionKey, (ActionValue, u64)>,
    /// Recency order: tick of last use → entry; the smallest tick is evicted first.
    recency: BTreeMap<u64, Entry>,
    tick: u64,
    held: u64,
    evictions: u64,
    evicted_bytes: u64,
}

impl State {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks the blob used; returns its bytes.
    fn touch_blob(&mut self, key: &BlobKey) -> Option<Bytes> {
        let tick = self.next_tick();
        let (bytes, last) = self.blobs.get_mut(key)?;
        let old = std::mem::replace(last, tick);
        let bytes = bytes.clone();
        if let Some(entry) = self.recency.remove(&old) {
            self.recency.insert(tick, entry);
        }
        Some(bytes)
    }

    fn insert_blob(&mut self, digest: Digest, bytes: Bytes) {
        if self.touch_blob(&blob_key(&digest)).is_some() {
            return;
        }
        let tick = self.next_tick();
        self.held += digest.size;
        self.blobs.insert(blob_key(&digest), (bytes, tick));
        self.recency.insert(tick, Entry::Blob(digest));
    }

    fn insert_action(&mut self, key: ActionKey, value: ActionValue) {
        let tick = self.next_tick();
        self.held += value.bytes.len() as u64;
        self.recency.insert(tick, Entry::Action(key.clone()));
        if let Some((old, old_tick)) = self.actions.insert(key, (value, tick)) {
            self.held -= old.bytes.len() as u64;
            self.recency.remove(&old_tick);
        }
    }

    /// Evicts least recently used entries until at most `budget` bytes are held.
    fn evict_to(&mut self, budget: u64) {
        while self.held > budget {
            let Some((_, entry)) = self.recency.pop_first() else {
                return;
            };
            let freed = match entry {
                Entry::Blob(digest) => self.blobs.remove(&blob_key(&digest)).map(|_| digest.size),
                Entry::Action(key) => self
                    .actions
                    .remove(&key)
                    .map(|(value, _)| value.bytes.len() as u64),
            };
            let freed = freed.expect("the recency order names only held entries");
            self.held -= freed;
            self.evictions += 1;
            self.evicted_bytes += freed;
        }
    }
}

impl MemoryStore {
    /// An empty store accepting blobs up to `max_blob_size`, holding at most `max_size` bytes.
    pub fn new(max_blob_size: u64, max_size: u64) -> MemoryStore {
        MemoryStore {
            limits: Limits {
                max_blob_size: max_blob_size.min(max_size),
                max_size: Some(max_size),
            },
            state: Arc::default(),
        }
    }

    fn budget(&self) -> u64 {
        self.limits.max_size.unwrap_or(u64::MAX)
    }
}

impl Store for MemoryStore {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn stats(&self) -> Stats {
        let state = self.state.lock().expect("memory store");
        Stats {
            blobs: state.blobs.len() as u64,
            blob_bytes: state.blobs.values().map(|(b, _)| b.len() as u64).sum(),
            actions: state.actions.len() as u64,
            evictions: state.evictions,
            evicted_bytes: state.evicted_bytes,
            ..Stats::default()
        }
    }

    fn find_missing_and_touch<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        Box::pin(async move {
            let mut state = self.state.lock().expect("memory store");
            Ok(digests
                .iter()
                .filter(|d| !d.is_empty() && state.touch_blob(&blob_key(d)).is_none())
                .copied()
                .collect())
        })
    }

    fn resolve_hash_and_touch<'a>(
        &'a self,
        hash: &'a [u8; HASH_LEN],
    ) -> StoreFuture<'a, Option<Digest>> {
        Box::pin(async move {
            if *hash == Digest::EMPTY.hash {
                return Ok(Some(Digest::EMPTY));
            }
            let mut state = self.state.lock().expect("memory store");
            Ok(state
                .touch_blob(&(DigestFunction::Sha256, *hash))
                .map(|bytes| Digest::sha256(*hash, bytes.len() as u64)))
        })
    }

    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
    ) -> StoreFuture<'a, Box<dyn BlobRead>> {
        Box::pin(async move {
            if offset > digest.size {
                return Err(Error::InvalidArgument(format!(
                    "offset {offset} is past the end of {digest}"
                )));
            }
            let bytes = if digest.is_empty() {
                Bytes::new()
            } else {
                let found = self
                    .state
                    .lock()
                    .expect("memory store")
                    .touch_blob(&blob_key(digest));
                found
                    .filter(|bytes| bytes.len() as u64 == digest.size)
                    .ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))?
            };
            Ok(Box::new(MemoryRead {
                rest: bytes.slice(offset as usize..),
            }) as Box<dyn BlobRead>)
        })
    }

    fn begin_upload(&self, digest: Digest) -> StoreFuture<'_, Box<dyn BlobUpload>> {
        Box::pin(async move {
            if digest.size > self.limits.max_blob_size {
                return Err(Error::TooLarge {
                    what: "blob",
                    size: digest.size,
                    limit: self.limits.max_blob_size,
                });
            }
            Ok(Box::new(MemoryUpload {
                store: self.clone(),
                expected: digest,
                hasher: digest.function.hasher(),
                data: Vec::new(),
            }) as Box<dyn BlobUpload>)
        })
    }

    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>> {
        Box::pin(async move {
            let mut state = self.state.lock().expect("memory store");
            let tick = state.next_tick();
            let Some((value, last)) = state.actions.get_mut(key) else {
                return Ok(None);
            };
            let old = std::mem::replace(last, tick);
            let value = value.clone();
            if let Some(entry) = state.recency.remove(&old) {
                state.recency.insert(tick, entry);
            }
            Ok(Some(value).filter(|v| accept.admits(v.kind)))
        })
    }

    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let size = value.bytes.len() as u64;
            if size > self.budget() {
                return Err(Error::TooLarge {
                    what: "action-cache value",
                    size,
                    limit: self.budget(),
                });
            }
            let mut state = self.state.lock().expect("memory store");
            state.insert_action(key.clone(), value);
            state.evict_to(self.budget());
            Ok(())
        })
    }
}

struct MemoryRead {
    rest: Bytes,
}

#[async_trait]
impl BlobRead for MemoryRead {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let take = max.max(1).min(self.rest.len());
        Ok(Some(self.rest.split_to(take)))
    }
}

struct MemoryUpload {
    store: MemoryStore,
    expected: Digest,
    hasher: Hasher,
    data: Vec<u8>,
}

#[async_trait]
impl BlobUpload for MemoryUpload {
    fn expected(&self) -> Digest {
        self.expected
    }

    fn received(&self) -> u64 {
        self.data.len() as u64
    }

    async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        let after = self.received() + data.len() as u64;
        if after > self.expected.size {
            return Err(Error::SizeMismatch {
                expected: self.expected,
                received: after,
            });
        }
        self.hasher.update(&data);
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let MemoryUpload {
            store,
            expected,
            hasher,
            data,
        } = *self;
        if data.len() as u64 != expected.size {
            return Err(Error::SizeMismatch {
                expected,
                received: data.len() as u64,
            });
        }
        let actual = hasher.finalize();
        if actual != expected.hash {
            return Err(Error::HashMismatch { expected, actual });
        }
        if expected.is_empty() {
            return Ok(());
        }
        let mut state = store.state.lock().expect("memory store");
        state.insert_blob(expected, data.into());
        state.evict_to(store.budget());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AcKind;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        futures::executor::block_on(future)
    }

    #[test]
    fn uploads_are_verified_before_they_are_visible() {
        block_on(async {
            let store = MemoryStore::new(1 << 20, 1 << 20);
            let good = Digest::of(b"hello");
            let mut upload = store.begin_upload(good).await.unwrap();
            upload.write(Bytes::from_static(b"hel")).await.unwrap();
            assert_eq!(store.find_missing_and_touch(&[good]).await.unwrap(), [good]);
            upload.write(Bytes::from_static(b"lo")).await.unwrap();
            upload.commit().await.unwrap();
            assert_eq!(store.read_blob(&good).await.unwrap(), &b"hello"[..]);

            let wrong = Digest::sha256(Digest::of(b"other").hash, 5);
            let refused = store.put_blob(wrong, Bytes::from_static(b"hello")).await;
            assert!(matches!(refused, Err(Error::HashMismatch { .. })));
            let short = store.put_blob(Digest::of(b"abc"), Bytes::from_static(b"ab"));
            assert!(matches!(short.await, Err(Error::SizeMismatch { .. })));
            let mut long = store.begin_upload(Digest::of(b"ab")).await.unwrap();
            assert!(matches!(
                long.write(Bytes::from_static(b"abc")).await,
                Err(Error::SizeMismatch { .. })
            ));
            assert_eq!(store.stats().blobs, 1);
        });
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used() {
        block_on(async {
            let store = MemoryStore::new(100, 250);
            let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100]).collect();
            let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
            for (d, b) in digests.iter().zip(&blobs).take(2) {
                store.put_blob(*d, b.clone().into()).await.unwrap();
            }
            // Touch the first, so the second is the least recently used.
            assert!(store.contains_and_touch(&digests[0]).await.unwrap());
            store
                .put_blob(digests[2], blobs[2].clone().into())
                .await
                .unwrap();
            let missing = store.find_missing_and_touch(&digests).await.unwrap();
            assert_eq!(missing, [digests[1]]);
            let stats = store.stats();
            assert_eq!((stats.evictions, stats.evicted_bytes), (1, 100));
            assert!(stats.blob_bytes <= 250);
        });
    }

    #[test]
    fn action_values_overwrite_and_filter_by_kind() {
        block_on(async {
            let store = MemoryStore::new(100, 1000);
            let key = ActionKey::new("main", Digest::of(b"action").hash);
            let opaque = ActionValue {
                kind: AcKind::Opaque,
                bytes: Bytes::from_static(b"ccache"),
            };
            store.put_action(&key, opaque.clone()).await.unwrap();
            let any = store.get_action(&key, Accept::Any).await.unwrap();
            assert_eq!(any, Some(opaque));
            let results = store.get_action(&key, Accept::ActionResults).await.unwrap();
            assert_eq!(results, None);
            let result = ActionValue {
                kind: AcKind::ActionResult,
                bytes: Bytes::from_static(b"\x18\x01"),
            };
            store.put_action(&key, result.clone()).await.unwrap();
            let got = store.get_action(&key, Accept::ActionResults).await.unwrap();
            assert_eq!(got, Some(result));
            assert_eq!(store.stats().actions, 1);
            let other = ActionKey::new("other", key.hash);
            assert_eq!(store.get_action(&other, Accept::Any).await.unwrap(), None);
        });
    }

    #[test]
    fn ranged_reads_and_the_empty_blob() {
        block_on(async {
            let store = MemoryStore::new(100, 1000);
            let d = Digest::of(b"0123456789");
            store
                .put_blob(d, Bytes::from_static(b"0123456789"))
                .await
                .unwrap();
            let mut reader = store.open_blob(&d, 4).await.unwrap();
            assert_eq!(reader.next_chunk(3).await.unwrap().unwrap(), &b"456"[..]);
            assert_eq!(reader.next_chunk(100).await.unwrap().unwrap(), &b"789"[..]);
            assert_eq!(reader.next_chunk(100).await.unwrap(), None);
            assert!(store.open_blob(&d, 11).await.is_err());
            assert!(store.contains_and_touch(&Digest::EMPTY).await.unwrap());
            assert_eq!(store.read_blob(&Digest::EMPTY).await.unwrap(), Bytes::new());
            let absent = Digest::of(b"absent");
            assert!(matches!(
                store.open_blob(&absent, 0).await,
                Err(Error::NotFound(_))
            ));
        });
    }
}
