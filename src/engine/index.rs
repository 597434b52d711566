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
}

/// Key → location maps for the CAS and the AC.
#[derive(Default)]
pub struct Index {
    blobs: HashMap<Digest, Entry>,
    /// Hash → size, for clients that name blobs by hash alone (the HTTP protocol).
    sizes: HashMap<[u8; 32], u64>,
    actions: HashMap<(String, [u8; HASH_LEN]), (AcKind, Entry)>,
    blob_bytes: u64,
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

    /// The entry of a blob.
    pub fn blob(&self, digest: &Digest) -> Option<Entry> {
        self.blobs.get(digest).copied()
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

    /// The entry of an action-cache key, and what it holds.
    pub fn action(&self, instance: &str, action: &[u8; HASH_LEN]) -> Option<(AcKind, Entry)> {
        // Keyed by an owned String; a lookup allocates once, which is cheap next to the I/O.
        self.actions.get(&(instance.to_owned(), *action)).copied()
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
        }
    }
}
