//! The oracle: what the clients were promised, and the named invariants checked against it.
//!
//! Every failure names one [`Invariant`]; the README lists them (a test checks it does).

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use hoard::engine::{Digest, DigestFunction};
use sha2::{Digest as _, Sha256};

/// The invariants a seed is held to. Their names are stable: they appear in reports, in the
/// replay output and in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// Every byte a read returns is the blob's true content at that offset.
    ReadHashesToDigest,
    /// A blob whose upload was acknowledged (OK) is readable forever after, across any number
    /// of crashes (unless a logged eviction took it).
    AcknowledgedBlobLost,
    /// FindMissingBlobs never reports an acknowledged blob missing, and a blob it once reported
    /// present stays readable (both unless a logged eviction took it since).
    FindMissingLies,
    /// An acknowledged action-cache update stays retrievable.
    AcknowledgedActionLost,
    /// An action-cache hit never names a blob the CAS lacks.
    AcHitReferencesMissingBlob,
    /// An action-cache hit (gRPC, or an opaque value over HTTP) is a value some client stored
    /// for that key.
    AcReturnsUnknownValue,
    /// gRPC GetActionResult never serves an opaque (ccache) value.
    OpaqueValueOverGrpc,
    /// No request, valid or not, gets INTERNAL (HTTP 500).
    InternalOnRequest,
    /// A wrong upload is rejected with INVALID_ARGUMENT, not stored.
    BadInputAccepted,
    /// A blob stored under one digest function is never present under another (BLAKE3 and
    /// SHA-256 entries of one hash stay apart).
    FunctionsMixed,
    /// SpliceBlob answers as REAPI says: chunks that make the claimed blob are never refused as
    /// INVALID_ARGUMENT (that is for a digest they do not make; a missing chunk is NOT_FOUND).
    SpliceAnswerWrong,
    /// No temp file outlives its upload or survives a restart.
    TempFileLeak,
    /// Nothing reopens a file by path while bytes of it sit unflushed in a handle (asserted by
    /// the simulated disk).
    PersistBeforeFlush,
    /// A footer is made durable only after every record it names is (asserted by the simulated
    /// disk at every sync).
    FooterNamesUnsyncedRecord,
    /// A segment footer whose checksums match names only records whose payloads hash as it says
    /// (the disk audited whenever the server is down).
    FooterVouchesForCorruptRecord,
    /// A request refused for want of disk space is RESOURCE_EXHAUSTED (HTTP 507), not
    /// UNAVAILABLE or INTERNAL: a client must not retry it at once.
    FullDiskNotResourceExhausted,
    /// Once the writes of an action-cache key are quiet, it holds the newest acknowledged value
    /// (or one written concurrently with or after it), across crashes: never one an acknowledged
    /// later write replaced.
    StaleActionValue,
    /// A blob that fails verification is never served whole and, once a read found it corrupt,
    /// is reported missing (until uploaded again).
    CorruptBlobStillPresent,
    /// A bad input is refused with the code its class calls for (INVALID_ARGUMENT for a
    /// malformed request, OUT_OF_RANGE for a read past the end, 400/404/413 over HTTP), not
    /// another one, and never served.
    WrongRefusalCode,
    /// With credentials configured, a request without valid ones is UNAUTHENTICATED (HTTP 401)
    /// and changes nothing; without, no request is refused as unauthenticated.
    AuthGateBroken,
    /// An action result stored under one instance name is never served under another.
    InstanceLeak,
    /// GetTree of a stored directory tree returns exactly its directories, each once, across
    /// pages resumed by their tokens (an empty token only on the last page).
    GetTreeMismatch,
    /// An upload that never finished (refused midway, or its client vanished) leaves no blob
    /// present or complete.
    HalfWrittenVisible,
    /// The server never panics.
    ServerPanic,
    /// A seed finishes within its virtual time limit (a hang fails it).
    Liveness,
    /// The cascade removes an action result only when it names a blob that is gone (evicted,
    /// damaged, or never uploaded): one the engine reports removing must be such a one.
    CascadeRemovedCompleteAction,
    /// Object-store tier (`sim/tier.rs`): an action result reached the bucket before a blob it
    /// names (asserted by the simulated bucket at every PUT it applies).
    TierAcBeforeBlobs,
    /// Tier: a record node A acknowledged is not in the bucket after its queue drained.
    TierQueueDropped,
    /// Tier: node B cannot serve a record node A acknowledged.
    TierAcknowledgedLost,
    /// Tier: a read returned bytes that are not the blob's.
    TierReadFailsDigest,
    /// Tier: node A's queue did not drain with the bucket healthy.
    TierLiveness,
    /// Two runs of one seed give the same trace.
    Determinism,
    /// The simulator process itself did not crash (out of memory, say) while running a seed.
    SimulatorCrash,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 33] = [
        Invariant::ReadHashesToDigest,
        Invariant::AcknowledgedBlobLost,
        Invariant::FindMissingLies,
        Invariant::AcknowledgedActionLost,
        Invariant::AcHitReferencesMissingBlob,
        Invariant::AcReturnsUnknownValue,
        Invariant::OpaqueValueOverGrpc,
        Invariant::InternalOnRequest,
        Invariant::BadInputAccepted,
        Invariant::FunctionsMixed,
        Invariant::SpliceAnswerWrong,
        Invariant::TempFileLeak,
        Invariant::FullDiskNotResourceExhausted,
        Invariant::StaleActionValue,
        Invariant::CorruptBlobStillPresent,
        Invariant::PersistBeforeFlush,
        Invariant::FooterNamesUnsyncedRecord,
        Invariant::FooterVouchesForCorruptRecord,
        Invariant::WrongRefusalCode,
        Invariant::AuthGateBroken,
        Invariant::InstanceLeak,
        Invariant::GetTreeMismatch,
        Invariant::HalfWrittenVisible,
        Invariant::ServerPanic,
        Invariant::Liveness,
        Invariant::CascadeRemovedCompleteAction,
        Invariant::TierAcBeforeBlobs,
        Invariant::TierQueueDropped,
        Invariant::TierAcknowledgedLost,
        Invariant::TierReadFailsDigest,
        Invariant::TierLiveness,
        Invariant::Determinism,
        Invariant::SimulatorCrash,
    ];

    /// The invariant's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::ReadHashesToDigest => "read-hashes-to-digest",
            Invariant::AcknowledgedBlobLost => "acknowledged-blob-lost",
            Invariant::FindMissingLies => "find-missing-lies",
            Invariant::AcknowledgedActionLost => "acknowledged-action-lost",
            Invariant::AcHitReferencesMissingBlob => "ac-hit-references-missing-blob",
            Invariant::AcReturnsUnknownValue => "ac-returns-unknown-value",
            Invariant::OpaqueValueOverGrpc => "opaque-value-over-grpc",
            Invariant::InternalOnRequest => "internal-on-request",
            Invariant::BadInputAccepted => "bad-input-accepted",
            Invariant::FunctionsMixed => "functions-mixed",
            Invariant::SpliceAnswerWrong => "splice-answer-wrong",
            Invariant::TempFileLeak => "temp-file-leak",
            Invariant::PersistBeforeFlush => "persist-before-flush",
            Invariant::FooterNamesUnsyncedRecord => "footer-names-unsynced-record",
            Invariant::FooterVouchesForCorruptRecord => "footer-vouches-for-corrupt-record",
            Invariant::FullDiskNotResourceExhausted => "full-disk-not-resource-exhausted",
            Invariant::StaleActionValue => "stale-action-value",
            Invariant::CorruptBlobStillPresent => "corrupt-blob-still-present",
            Invariant::WrongRefusalCode => "wrong-refusal-code",
            Invariant::AuthGateBroken => "auth-gate-broken",
            Invariant::InstanceLeak => "instance-leak",
            Invariant::GetTreeMismatch => "get-tree-mismatch",
            Invariant::HalfWrittenVisible => "half-written-visible",
            Invariant::ServerPanic => "server-panic",
            Invariant::Liveness => "liveness",
            Invariant::CascadeRemovedCompleteAction => "cascade-removed-complete-action",
            Invariant::TierAcBeforeBlobs => "tier-ac-before-blobs",
            Invariant::TierQueueDropped => "tier-queue-dropped",
            Invariant::TierAcknowledgedLost => "tier-acknowledged-lost",
            Invariant::TierReadFailsDigest => "tier-read-fails-digest",
            Invariant::TierLiveness => "tier-liveness",
            Invariant::Determinism => "determinism",
            Invariant::SimulatorCrash => "simulator-crash",
        }
    }

    /// The invariant called `name`.
    pub fn from_name(name: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The invariant broken.
    pub invariant: Invariant,
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
    /// Acknowledged blobs, each with its epoch: the blob's eviction count when the acknowledged
    /// request started. An eviction since then excuses its absence.
    acked_blobs: BTreeMap<Digest, u64>,
    /// Evictions the server reported, per key (blob digests; action and ccache keys by hash),
    /// and silent damage the disk did to the key's record (which excuses a miss just the same).
    evictions: BTreeMap<[u8; 32], u64>,
    /// Silent damage the disk did, per key.
    damage: BTreeMap<[u8; 32], u64>,
    /// Every value any client tried to store per (instance, action), and the epoch of the last
    /// acknowledged one.
    actions: BTreeMap<(String, Digest), (Vec<Bytes>, Option<u64>)>,
    /// Actions some client stored a result for whose outputs it did not all upload: the last
    /// writer wins, so from then on a miss of the action is no broken promise.
    incomplete_actions: std::collections::BTreeSet<(String, Digest)>,
    /// Every update of an action key in the order they were sent, for the newest-value rule.
    writes: BTreeMap<(String, Digest), Vec<Write>>,
    /// A logical clock for `writes`: ticks at every update sent and every answer received.
    clock: u64,
    /// The same for opaque values stored over HTTP by ccache-like clients, by key.
    opaque: BTreeMap<[u8; 32], (Vec<Bytes>, Option<u64>)>,
    /// The file blobs inside each `Tree` blob a client stored, by the
    /// tree's hash: what an action result naming the tree depends on beyond the tree itself.
    trees: BTreeMap<[u8; 32], Vec<Digest>>,
    /// BLAKE3 blobs some client sent a SpliceBlob for with every chunk stored first (it may
    /// have stored the blob, after which any splice of it may answer OK at once).
    full_splices: std::collections::BTreeSet<[u8; 32]>,
    abandoned_uploads: usize,
    failures: Vec<Failure>,
    trace: Sha256,
    events: u64,
}

/// One action-cache update as the oracle saw it.
struct Write {
    value: Bytes,
    /// When it was sent.
    sent: u64,
    /// When its answer came back (never, if the connection died first).
    answered: Option<u64>,
    acknowledged: bool,
}

/// Shared by every client of a seed.
#[derive(Default)]
pub struct Oracle {
    state: Mutex<State>,
}

impl State {
    /// Whether the encoded action result `value` names a blob that was ever evicted or damaged.
    fn names_lost_blob(&self, value: &[u8]) -> bool {
        let result = <hoard::proto::reapi::ActionResult as prost::Message>::decode(value);
        result.is_ok_and(|r| {
            self.referenced(&r)
                .iter()
                .any(|d| self.evictions.contains_key(&d.hash) || self.damage.contains_key(&d.hash))
        })
    }

    /// Every blob an action result depends on: the ones it names, and the files inside the
    /// trees it names (as their uploader registered them).
    fn referenced(&self, result: &hoard::proto::reapi::ActionResult) -> Vec<Digest> {
        let parse = |d: &hoard::proto::reapi::Digest| Digest::parse(&d.hash, d.size_bytes).ok();
        let trees: Vec<Digest> = result
            .output_directories
            .iter()
            .filter_map(|d| d.tree_digest.as_ref().and_then(parse))
            .collect();
        // Only a tree named as an output directory's: the same blob may be an output file.
        let inside = trees
            .iter()
            .filter_map(|t| self.trees.get(&t.hash))
            .flatten()
            .copied();
        result
            .output_files
            .iter()
            .filter_map(|f| f.digest.as_ref())
            .chain(result.stdout_digest.as_ref())
            .chain(result.stderr_digest.as_ref())
            .chain(
                result
                    .output_directories
                    .iter()
                    .filter_map(|d| d.root_directory_digest.as_ref()),
            )
            .filter_map(parse)
            .chain(trees.iter().copied())
            .chain(inside)
            .collect()
    }
}

impl Oracle {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("oracle"))
    }

    /// Adds an event to the seed's trace (its hash proves a replay identical).
    pub fn event(&self, text: impl AsRef<str>) {
        // `HOARD_SIM_TRACE=1 hoard-sim replay --seed N` prints the trace as it is hashed.
        static PRINT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *PRINT.get_or_init(|| std::env::var_os("HOARD_SIM_TRACE").is_some()) {
            eprintln!("event: {}", text.as_ref());
        }
        self.with(|s| {
            s.trace.update(text.as_ref().as_bytes());
            s.trace.update(b"\n");
            s.events += 1;
        });
    }

    /// Records a broken invariant.
    pub fn fail(&self, invariant: Invariant, detail: impl Into<String>) {
        let detail = detail.into();
        self.event(format!("FAIL {invariant} {detail}"));
        self.with(|s| {
            // One report per distinct invariant and detail is enough.
            if s.failures.len() < 50 {
                s.failures.push(Failure { invariant, detail });
            }
        });
    }

    /// The server evicted the record with this key (a blob's hash, or an action-cache key):
    /// what was promised about it no longer holds.
    pub fn evicted(&self, key: &[u8; 32]) {
        self.event(format!("evicted {}", hex::encode(&key[..8])));
        self.with(|s| *s.evictions.entry(*key).or_default() += 1);
    }

    /// The disk silently damaged the record with this key (see `spoiled_records` in the world):
    /// like an eviction, it excuses the record's absence from then on, never a wrong byte.
    pub fn damaged(&self, key: &[u8; 32]) {
        self.event(format!("damaged {}", hex::encode(&key[..8])));
        self.with(|s| {
            *s.evictions.entry(*key).or_default() += 1;
            *s.damage.entry(*key).or_default() += 1;
        });
    }

    /// Whether the disk ever silently damaged `key`'s record. Such a key's promises are void
    /// for good: a later upload of the same digest is deduplicated against the damaged record
    /// (the engine cannot know), and a ranged read, which cannot be hashed against the digest,
    /// trusts a record the engine checked once (a whole-blob read is still never wrong).
    pub fn damaged_ever(&self, key: &[u8; 32]) -> bool {
        self.with(|s| s.damage.contains_key(key))
    }

    /// Evictions of `key` so far: taken before a request, compared after it, it tells whether a
    /// miss may be explained by an eviction in between.
    pub fn evictions(&self, key: &[u8; 32]) -> u64 {
        self.with(|s| s.evictions.get(key).copied().unwrap_or(0))
    }

    /// Evictions of anything so far.
    pub fn total_evictions(&self) -> u64 {
        self.with(|s| s.evictions.values().sum())
    }

    /// What the server has promised about a blob: the epoch of its acknowledgement, if any.
    /// Take it before a request; see [`Oracle::miss_breaks`].
    pub fn promise(&self, digest: &Digest) -> Option<u64> {
        self.with(|s| s.acked_blobs.get(digest).copied())
    }

    /// The same for a ccache key.
    pub fn opaque_promise(&self, key: &[u8; 32]) -> Option<u64> {
        self.with(|s| s.opaque.get(key).and_then(|(_, epoch)| *epoch))
    }

    /// Whether a miss of `key` now breaks `promise`: it was acknowledged and nothing evicted it
    /// since the acknowledged request began (a logged eviction is the only excuse).
    pub fn miss_breaks(&self, key: &[u8; 32], promise: Option<u64>) -> bool {
        promise.is_some_and(|epoch| self.evictions(key) == epoch) && !self.damaged_ever(key)
    }

    /// Whether any blob named by any value stored for the action was ever evicted (its GetActionResult
    /// may then rightly miss).
    pub fn action_outputs_evicted(&self, instance: &str, action: &Digest) -> bool {
        self.with(|s| {
            s.actions
                .get(&(instance.to_owned(), *action))
                .is_some_and(|(values, _)| values.iter().any(|v| s.names_lost_blob(v)))
        })
    }

    /// The cascade removed the action result of `action` under `instance`. It may only do so
    /// when the result named a blob that is gone: every value a client stored for the key names
    /// an evicted blob, or one that was never uploaded.
    pub fn action_removed(&self, instance: &str, action: &[u8; 32]) {
        self.event(format!(
            "cascade removed {instance:?}/{}",
            hex::encode(&action[..8])
        ));
        let complete = self.with(|s| {
            let keys: Vec<_> = s
                .actions
                .iter()
                .filter(|((i, a), _)| i == instance && a.hash == *action)
                .collect();
            let incomplete = keys.iter().all(|(key, (values, _))| {
                s.incomplete_actions.contains(*key) || values.iter().any(|v| s.names_lost_blob(v))
            });
            // Its absence from now on is explained, as by an eviction of the key.
            *s.evictions.entry(*action).or_default() += 1;
            !keys.is_empty() && !incomplete
        });
        if complete {
            self.fail(
                Invariant::CascadeRemovedCompleteAction,
                format!(
                    "the cascade removed {instance:?}/{}, whose outputs are all stored",
                    hex::encode(action)
                ),
            );
        }
    }

    /// A blob upload was acknowledged; `epoch` is [`Oracle::evictions`] of its hash taken when
    /// the request started.
    pub fn blob_acked(&self, digest: Digest, epoch: u64) {
        self.with(|s| s.acked_blobs.insert(digest, epoch));
    }

    /// Blobs of `function` acknowledged and not evicted since, in digest order.
    pub fn acked_blobs(&self, function: DigestFunction) -> Vec<Digest> {
        self.with(|s| {
            s.acked_blobs
                .iter()
                .filter(|(d, _)| d.function == function)
                .filter(|(d, epoch)| s.evictions.get(&d.hash).copied().unwrap_or(0) == **epoch)
                .filter(|(d, _)| !s.damage.contains_key(&d.hash))
                .map(|(d, _)| *d)
                .collect()
        })
    }

    /// A client is about to store `value` for an action; returns the update's number for
    /// [`Oracle::action_answered`].
    pub fn action_attempted(&self, instance: &str, action: Digest, value: Bytes) -> usize {
        self.with(|s| {
            let key = (instance.to_owned(), action);
            s.actions
                .entry(key.clone())
                .or_default()
                .0
                .push(value.clone());
            s.clock += 1;
            let writes = s.writes.entry(key).or_default();
            writes.push(Write {
                value,
                sent: s.clock,
                answered: None,
                acknowledged: false,
            });
            writes.len() - 1
        })
    }

    /// The answer to update `number` of an action came back (`acknowledged`: OK).
    pub fn action_answered(
        &self,
        instance: &str,
        action: Digest,
        number: usize,
        acknowledged: bool,
    ) {
        self.with(|s| {
            s.clock += 1;
            let now = s.clock;
            if let Some(write) = s
                .writes
                .get_mut(&(instance.to_owned(), action))
                .and_then(|w| w.get_mut(number))
            {
                write.answered = Some(now);
                write.acknowledged = acknowledged;
            }
        });
    }

    /// Whether `value` may be what the action holds once its writes are quiet: some update sent
    /// it that no acknowledged update sent after its answer replaced.
    pub fn action_value_current(&self, instance: &str, action: &Digest, value: &[u8]) -> bool {
        self.with(|s| {
            let Some(writes) = s.writes.get(&(instance.to_owned(), *action)) else {
                return false;
            };
            writes.iter().any(|w| {
                w.value[..] == *value
                    && !writes.iter().any(|later| {
                        later.acknowledged && w.answered.is_some_and(|end| later.sent > end)
                    })
            })
        })
    }

    /// An action-cache update was acknowledged (`epoch` as for [`Oracle::blob_acked`]).
    pub fn action_acked(&self, instance: &str, action: Digest, epoch: u64) {
        self.with(|s| {
            if let Some(entry) = s.actions.get_mut(&(instance.to_owned(), action)) {
                entry.1 = Some(epoch);
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

    /// A client is about to store a result for the action that names a blob it did not upload
    /// (whether or not the store is acknowledged, it may be what the key holds last).
    pub fn action_may_be_incomplete(&self, instance: &str, action: Digest) {
        self.with(|s| s.incomplete_actions.insert((instance.to_owned(), action)));
    }

    /// Action keys acknowledged and not evicted since, whose last value is sure to be complete.
    pub fn acked_actions(&self) -> Vec<(String, Digest)> {
        self.with(|s| {
            s.actions
                .iter()
                .filter(|(key, (_, epoch))| {
                    let (_, action) = key;
                    *epoch == Some(s.evictions.get(&action.hash).copied().unwrap_or(0))
                        && !s.incomplete_actions.contains(*key)
                        && !s.damage.contains_key(&action.hash)
                })
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

    /// An opaque value was acknowledged (`epoch` as for [`Oracle::blob_acked`]).
    pub fn opaque_acked(&self, key: &[u8; 32], epoch: u64) {
        self.with(|s| {
            if let Some(entry) = s.opaque.get_mut(key) {
                entry.1 = Some(epoch);
            }
        });
    }

    /// Whether `value` is one some client tried to store under `key`.
    pub fn opaque_value_known(&self, key: &[u8; 32], value: &[u8]) -> bool {
        self.with(|s| {
            s.opaque
                .get(key)
                .is_some_and(|(values, _)| values.iter().any(|v| v[..] == *value))
        })
    }

    /// Keys with an acknowledged opaque value not evicted since.
    pub fn acked_opaque_keys(&self) -> Vec<[u8; 32]> {
        self.with(|s| {
            s.opaque
                .iter()
                .filter(|(k, (_, epoch))| *epoch == Some(s.evictions.get(*k).copied().unwrap_or(0)))
                .filter(|(k, _)| !s.damage.contains_key(*k))
                .map(|(k, _)| *k)
                .collect()
        })
    }

    /// A client stored the `Tree` blob `tree`, whose directories hold the files `inside`.
    pub fn tree_stored(&self, tree: &Digest, inside: Vec<Digest>) {
        self.with(|s| s.trees.insert(tree.hash, inside));
    }

    /// Every blob the action result `result` depends on (see [`Oracle::tree_stored`]).
    pub fn referenced(&self, result: &hoard::proto::reapi::ActionResult) -> Vec<Digest> {
        self.with(|s| s.referenced(result))
    }

    /// Whether `value` was stored for the action under an instance other than `instance`.
    pub fn action_value_elsewhere(&self, instance: &str, action: &Digest, value: &[u8]) -> bool {
        self.with(|s| {
            s.actions.iter().any(|((i, a), (values, _))| {
                i != instance && a == action && values.iter().any(|v| v[..] == *value)
            })
        })
    }

    /// A client is about to splice the blob `hash` from chunks it all stored.
    pub fn full_splice_sent(&self, hash: &[u8; 32]) {
        self.with(|s| s.full_splices.insert(*hash));
    }

    /// Whether any client sent a splice of `hash` that may have stored it.
    pub fn full_splice_ever(&self, hash: &[u8; 32]) -> bool {
        self.with(|s| s.full_splices.contains(hash))
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
                Invariant::ReadHashesToDigest,
                format!(
                    "read of {digest} at {offset} returned {} wrong bytes",
                    data.len()
                ),
            );
        }
    }
}
