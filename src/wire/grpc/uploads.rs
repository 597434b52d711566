//! Partial ByteStream uploads kept for resumption.
//!
//! When a Write stream ends or breaks before `finish_write`, its bytes are parked here under the
//! resource name, so the client can ask QueryWriteStatus where to resume and continue with a new
//! Write. A parked upload still holds its engine slot and staged bytes, so the table is bounded:
//! entries idle longer than the TTL are dropped, and when full the oldest entry makes room.
//! Expiry runs on every access, so no background task or timer is needed (which keeps the
//! simulator's event queue free of them).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::resource::WriteResource;
use crate::store::BlobUpload;

/// The table of parked uploads.
pub struct ParkedUploads {
    /// Ordered, so expired uploads are dropped (and their files removed) in the same order on
    /// every run: the simulator replays a seed exactly.
    entries: Mutex<BTreeMap<WriteResource, Parked>>,
    ttl: Duration,
    capacity: usize,
}

struct Parked {
    upload: Box<dyn BlobUpload>,
    since: Instant,
}

impl ParkedUploads {
    /// A table keeping at most `capacity` uploads for at most `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ParkedUploads {
            entries: Mutex::default(),
            ttl,
            capacity,
        }
    }

    /// Keeps `upload` for a later resume of `resource` (replacing any older one).
    pub fn park(&self, resource: WriteResource, upload: Box<dyn BlobUpload>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.live_entries();
        if entries.len() >= self.capacity && !entries.contains_key(&resource) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, parked)| parked.since)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                tracing::debug!(uuid = %oldest.uuid, "dropping the oldest parked upload");
                entries.remove(&oldest);
            }
        }
        let since = Instant::now();
        entries.insert(resource, Parked { upload, since });
    }

    /// Takes the parked upload of `resource` out of the table, to continue it.
    pub fn take(&self, resource: &WriteResource) -> Option<Box<dyn BlobUpload>> {
        self.live_entries()
            .remove(resource)
            .map(|parked| parked.upload)
    }

    /// Bytes the parked upload of `resource` holds, if there is one.
    pub fn received(&self, resource: &WriteResource) -> Option<u64> {
        self.live_entries()
            .get(resource)
            .map(|parked| parked.upload.received())
    }

    /// The table after dropping expired entries.
    fn live_entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<WriteResource, Parked>> {
        let mut entries = self.entries.lock().expect("parked uploads");
        let now = Instant::now();
        entries.retain(|_, parked| now.duration_since(parked.since) < self.ttl);
        entries
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::store::{Digest, MemoryStore, Store};
    use bytes::Bytes;

    fn key(uuid: &str) -> WriteResource {
        WriteResource {
            instance: String::new(),
            uuid: uuid.into(),
            digest: Digest::of(uuid.as_bytes()),
        }
    }

    async fn partial(store: &MemoryStore, resource: &WriteResource) -> Box<dyn BlobUpload> {
        let mut upload = store.begin_upload(resource.digest).await.unwrap();
        upload
            .write(Bytes::copy_from_slice(&resource.uuid.as_bytes()[..1]))
            .await
            .unwrap();
        upload
    }

    #[tokio::test]
    async fn full_table_drops_the_oldest() {
        let store = MemoryStore::new(1 << 20, 1 << 20);
        let table = ParkedUploads::new(2, Duration::from_secs(600));
        for uuid in ["first", "second", "third"] {
            table.park(key(uuid), partial(&store, &key(uuid)).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(table.received(&key("first")), None);
        assert_eq!(table.received(&key("second")), Some(1));
        assert!(table.take(&key("third")).is_some());
        assert!(table.take(&key("third")).is_none(), "taking removes it");
    }

    #[tokio::test]
    async fn idle_uploads_expire() {
        let store = MemoryStore::new(1 << 20, 1 << 20);
        let table = ParkedUploads::new(8, Duration::from_millis(20));
        table.park(key("idle"), partial(&store, &key("idle")).await);
        assert_eq!(table.received(&key("idle")), Some(1));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(table.received(&key("idle")), None);
    }
}
