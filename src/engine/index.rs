//! The in-memory index: key → location of the newest durable record.
//!
//! Lookups only: nothing iterates these maps to decide behaviour, so hash order never matters.
//! Its durable form is the segments themselves (every record header carries its key), replayed
//! in log order on start, so the newest action-cache record wins as it did before the restart.

use std::collections::HashMap;

use super::digest::{Digest, HASH_LEN};
use super::record::{AcKind, RecordKey};
use super::segment::Location;
use super::Stats;

/// An indexed record.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Where the payload is.
    pub location: Location,
    /// SHA-256 of the payload (for blobs, the digest's hash).
    pub sha256: [u8; 32],
    /// Whether the stored bytes were hashed since they were written or recovered.
    pub verified: bool,
    /// Used since eviction last passed over it: its second chance (see `Engine::evict_segment`).
    pub referenced: bool,
}

/// Key → location maps for the CAS and the AC.
#[derive(Default)]
pub struct Index {
    blobs: HashMap<Digest, Entry>,
    /// Hash → size, for clients that name blobs by hash alone (the HTTP protocol).
    sizes: HashMap<[u8; 32], u64>,
    actions: HashMap<(String, [u8; HASH_LEN]), (AcKind, Entry)>,
    blob_bytes: u64,
    evictions: u64,
    evicted_bytes: u64,
}

impl Index {
    /// Records a durable record, replacing an older one with the same key.
    pub fn insert(&mut self, key: RecordKey, entry: Entry) {
        match key {
            RecordKey::Blob(digest) => {
                if self.blobs.insert(digest, entry).is_none() {
                    self.blob_bytes += digest.size;
                    self.sizes.insert(digest.hash, digest.size);
                }
            }
            RecordKey::Action {
                instance,
                action,
                kind,
            } => {
                self.actions.insert((instance, action), (kind, entry));
            }
            RecordKey::Seal => {}
        }
    }

    /// The entry of a blob, marked as used (a hit in any form refreshes its place in the cache).
    pub fn touch_blob(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.blobs.get_mut(digest)?;
        entry.referenced = true;
        Some(*entry)
    }

    /// The digest of the blob whose bytes hash to `hash`.
    pub fn blob_by_hash(&self, hash: &[u8; 32]) -> Option<Digest> {
        self.sizes
            .get(hash)
            .map(|&size| Digest { hash: *hash, size })
    }

    /// Notes that a blob's stored bytes were re-hashed and matched.
    pub fn mark_verified(&mut self, digest: &Digest) {
        if let Some(entry) = self.blobs.get_mut(digest) {
            entry.verified = true;
        }
    }

    /// Forgets a blob (its bytes failed verification).
    pub fn remove_blob(&mut self, digest: &Digest) {
        if self.blobs.remove(digest).is_some() {
            self.blob_bytes -= digest.size;
            self.sizes.remove(&digest.hash);
        }
    }

    /// The entry of an action-cache key, and what it holds, marked as used.
    pub fn touch_action(
        &mut self,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) -> Option<(AcKind, Entry)> {
        // Keyed by an owned String; a lookup allocates once, which is cheap next to the I/O.
        let (kind, entry) = self.actions.get_mut(&(instance.to_owned(), *action))?;
        entry.referenced = true;
        Some((*kind, *entry))
    }

    fn entry_mut(&mut self, key: &RecordKey) -> Option<&mut Entry> {
        match key {
            RecordKey::Blob(digest) => self.blobs.get_mut(digest),
            RecordKey::Action {
                instance, action, ..
            } => self
                .actions
                .get_mut(&(instance.clone(), *action))
                .map(|(_, e)| e),
            RecordKey::Seal => None,
        }
    }

    /// The entry of `key` if it is the record at `location` (not overwritten or evicted since).
    pub fn live_at(&mut self, key: &RecordKey, location: &Location) -> Option<Entry> {
        self.entry_mut(key)
            .filter(|e| e.location == *location)
            .map(|e| *e)
    }

    /// Points `key` at its copy at `moved` if it still lives at `from`; the second chance is used.
    pub fn move_if_at(&mut self, key: &RecordKey, from: &Location, moved: Location) {
        if let Some(entry) = self.entry_mut(key).filter(|e| e.location == *from) {
            entry.location = moved;
            entry.referenced = false;
        }
    }

    /// Evicts `key` if it still lives at `location`; returns whether it did.
    pub fn evict_if_at(&mut self, key: &RecordKey, location: &Location) -> bool {
        if self.live_at(key, location).is_none() {
            return false;
        }
        match key {
            RecordKey::Blob(digest) => self.remove_blob(digest),
            RecordKey::Action {
                instance, action, ..
            } => self.remove_action(instance, action),
            RecordKey::Seal => return false,
        }
        self.evictions += 1;
        self.evicted_bytes += location.len;
        true
    }

    /// Forgets an action result.
    pub fn remove_action(&mut self, instance: &str, action: &[u8; HASH_LEN]) {
        self.actions.remove(&(instance.to_owned(), *action));
    }

    /// Counts of what is indexed.
    pub fn stats(&self) -> Stats {
        Stats {
            blobs: self.blobs.len() as u64,
            blob_bytes: self.blob_bytes,
            actions: self.actions.len() as u64,
            evictions: self.evictions,
            evicted_bytes: self.evicted_bytes,
            disk_bytes: 0,
        }
    }
}
