//! The oracle: what the clients were promised, and the named invariants checked against it.
//!
//! Invariants (each failure carries one of these names):
//! - `read-hashes-to-digest`: every byte a read returns is the blob's true content at that offset.
//! - `acknowledged-blob-lost`: a blob whose upload was acknowledged (OK) is readable forever after,
//!   across any number of crashes.
//! - `find-missing-lies`: FindMissingBlobs never reports an acknowledged blob missing.
//! - `acknowledged-action-lost`: an acknowledged action-cache update stays retrievable.
//! - `ac-hit-references-missing-blob`: an action-cache hit never names a blob the CAS lacks.
//! - `ac-returns-unknown-value`: an action-cache hit (gRPC, or an opaque value over HTTP) is a
//!   value some client stored for that key.
//! - `opaque-value-over-grpc`: gRPC GetActionResult never serves an opaque (ccache) value.
//! - `internal-on-request`: no request, valid or not, gets INTERNAL.
//! - `bad-input-accepted`: a wrong upload is rejected with INVALID_ARGUMENT, not stored.
//! - `temp-file-leak`: no temp file outlives its upload or survives a restart.
//! - `persist-before-flush` (from the simulated filesystem): nothing reopens a file by path
//!   while bytes of it sit unflushed in a handle.
//! - `server-panic`: the server never panics.
//! - `liveness`: a seed finishes within its virtual time limit (a hang fails it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use bytes::Bytes;
use hoard::engine::Digest;
use sha2::{Digest as _, Sha256};

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// The blob contents clients draw from.
pub struct Pool {
    /// Contents.
    pub blobs: Vec<Bytes>,
    /// Their digests.
    pub digests: Vec<Digest>,
}

impl Pool {
    /// Content of a digest in the pool.
    pub fn content(&self, digest: &Digest) -> Option<&Bytes> {
        self.digests
            .iter()
            .position(|d| d == digest)
            .map(|i| &self.blobs[i])
    }
}

#[derive(Default)]
struct State {
    acked_blobs: BTreeSet<Digest>,
    /// Every value any client tried to store per (instance, action), and whether one was acked.
    actions: BTreeMap<(String, Digest), (Vec<Bytes>, bool)>,
    /// The same for opaque values stored over HTTP by ccache-like clients, by key.
    opaque: BTreeMap<[u8; 32], (Vec<Bytes>, bool)>,
    abandoned_uploads: usize,
    failures: Vec<Failure>,
    trace: Sha256,
    events: u64,
}

/// Shared by every client of a seed.
#[derive(Default)]
pub struct Oracle {
    state: Mutex<State>,
}

impl Oracle {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("oracle"))
    }

    /// Adds an event to the seed's trace (its hash proves a replay identical).
    pub fn event(&self, text: impl AsRef<str>) {
        self.with(|s| {
            s.trace.update(text.as_ref().as_bytes());
            s.trace.update(b"\n");
            s.events += 1;
        });
    }

    /// Records a broken invariant.
    pub fn fail(&self, invariant: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        self.event(format!("FAIL {invariant} {detail}"));
        self.with(|s| {
            // One report per distinct invariant and detail is enough.
            if s.failures.len() < 50 {
                s.failures.push(Failure { invariant, detail });
            }
        });
    }

    /// A blob upload was acknowledged.
    pub fn blob_acked(&self, digest: Digest) {
        self.with(|s| s.acked_blobs.insert(digest));
    }

    /// Whether the blob was acknowledged.
    pub fn is_acked(&self, digest: &Digest) -> bool {
        self.with(|s| s.acked_blobs.contains(digest))
    }

    /// Acknowledged blobs, in digest order.
    pub fn acked_blobs(&self) -> Vec<Digest> {
        self.with(|s| s.acked_blobs.iter().copied().collect())
    }

    /// A client is about to store `value` for an action.
    pub fn action_attempted(&self, instance: &str, action: Digest, value: Bytes) {
        self.with(|s| {
            s.actions
                .entry((instance.to_owned(), action))
                .or_default()
                .0
                .push(value)
        });
    }

    /// An action-cache update was acknowledged.
    pub fn action_acked(&self, instance: &str, action: Digest) {
        self.with(|s| {
            if let Some(entry) = s.actions.get_mut(&(instance.to_owned(), action)) {
                entry.1 = true;
            }
        });
    }

    /// Whether `value` is one some client tried to store for the action.
    pub fn action_value_known(&self, instance: &str, action: &Digest, value: &[u8]) -> bool {
        self.with(|s| {
            s.actions
                .get(&(instance.to_owned(), *action))
                .is_some_and(|(values, _)| values.iter().any(|v| v[..] == *value))
        })
    }

    /// Acknowledged action keys.
    pub fn acked_actions(&self) -> Vec<(String, Digest)> {
        self.with(|s| {
            s.actions
                .iter()
                .filter(|(_, (_, acked))| *acked)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Action keys some client stored, acked or not.
    pub fn attempted_actions(&self) -> Vec<(String, Digest)> {
        self.with(|s| s.actions.keys().cloned().collect())
    }

    /// A ccache-like client is about to store `value` under `key`.
    pub fn opaque_attempted(&self, key: &[u8; 32], value: Bytes) {
        self.with(|s| s.opaque.entry(*key).or_default().0.push(value));
    }

    /// An opaque value was acknowledged.
    pub fn opaque_acked(&self, key: &[u8; 32]) {
        self.with(|s| {
            if let Some(entry) = s.opaque.get_mut(key) {
                entry.1 = true;
            }
        });
    }

    /// Whether some value stored under `key` was acknowledged.
    pub fn is_opaque_acked(&self, key: &[u8; 32]) -> bool {
        self.with(|s| s.opaque.get(key).is_some_and(|(_, acked)| *acked))
    }

    /// Whether `value` is one some client tried to store under `key`.
    pub fn opaque_value_known(&self, key: &[u8; 32], value: &[u8]) -> bool {
        self.with(|s| {
            s.opaque
                .get(key)
                .is_some_and(|(values, _)| values.iter().any(|v| v[..] == *value))
        })
    }

    /// Keys with an acknowledged opaque value.
    pub fn acked_opaque_keys(&self) -> Vec<[u8; 32]> {
        self.with(|s| {
            s.opaque
                .iter()
                .filter(|(_, (_, acked))| *acked)
                .map(|(k, _)| *k)
                .collect()
        })
    }

    /// An upload's stream broke and was never completed.
    pub fn upload_abandoned(&self) {
        self.with(|s| s.abandoned_uploads += 1);
    }

    /// Uploads abandoned so far (each may hold a temp file until it expires).
    pub fn abandoned_uploads(&self) -> usize {
        self.with(|s| s.abandoned_uploads)
    }

    /// Broken invariants so far.
    pub fn failures(&self) -> Vec<Failure> {
        self.with(|s| s.failures.clone())
    }

    /// Hash of the trace, and its event count.
    pub fn trace(&self) -> (String, u64) {
        self.with(|s| (hex::encode(&s.trace.clone().finalize()[..8]), s.events))
    }

    /// Checks bytes a read returned against the true content.
    pub fn check_read(&self, pool: &Pool, digest: &Digest, offset: u64, data: &[u8]) {
        let Some(content) = pool.content(digest) else {
            return;
        };
        let start = offset as usize;
        let matches =
            start + data.len() <= content.len() && content[start..start + data.len()] == *data;
        if !matches {
            self.fail(
                "read-hashes-to-digest",
                format!(
                    "read of {digest} at {offset} returned {} wrong bytes",
                    data.len()
                ),
            );
        }
    }
}
