//! The cache as a front end sees it: one [`Store`] trait, its implementations and its layers.
//!
//! Both front ends (gRPC and HTTP) hold an `Arc<dyn Store>` and nothing else of the storage, so
//! a rule that belongs to the cache lives in one layer for both of them. A layer is a small type
//! that wraps another `Store` and keeps one invariant (each file says which). The stack is
//! assembled in one place, [`stack::assemble`]:
//!
//! ```text
//!  gRPC front end            HTTP front end
//!       │                          │
//!  Metered (protocol=grpc)    Metered (protocol=http)     metered.rs: store-level metrics
//!       └────────────┬─────────────┘
//!            ActionResultValidation                       validation.rs: no malformed or
//!                    │                                      path-escaping action result stored
//!            CompletenessChecking                         completeness.rs: no action result
//!                    │                                      served whose blobs are gone
//!            Engine (segments on disk)                    engine/: durable storage; cascade.rs
//!                                                           removes action results whose
//!                                                           blobs the engine let go of
//!        or  MemoryStore (bounded, in memory)             memory.rs: tests and the simulator
//! ```

pub mod action_result;
mod cascade;
mod completeness;
pub mod engine;
pub mod error;
pub mod memory;
mod metered;
pub mod stack;
mod validation;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::engine::{AcKind, Digest, DigestFunction, Stats, HASH_LEN};
pub use completeness::CompletenessChecking;
pub use engine::EngineStore;
pub use error::Error;
pub use memory::MemoryStore;
pub use metered::Metered;
pub use validation::ActionResultValidation;

/// What a store accepts, as data a front end can announce or check early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest single blob.
    pub max_blob_size: u64,
    /// The byte budget of everything stored, if bounded.
    pub max_size: Option<u64>,
}

/// The key of an action-cache entry: the action's hash, under its digest function, in an
/// instance name. The action's size adds nothing, and HTTP clients never send it, so gRPC and
/// HTTP share (SHA-256) entries. The function is part of the key: the action digest and every
/// digest in its result are under it, so entries of different functions never mix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionKey {
    /// The instance (namespace) the entry belongs to; may be empty.
    pub instance: String,
    /// The digest function of `hash` and of the digests the value names.
    pub function: DigestFunction,
    /// Hash of the action.
    pub hash: [u8; HASH_LEN],
}

impl ActionKey {
    /// The key of the SHA-256 `hash` under `instance`.
    pub fn new(instance: impl Into<String>, hash: [u8; HASH_LEN]) -> ActionKey {
        ActionKey::with_function(instance, DigestFunction::Sha256, hash)
    }

    /// The key of `hash`, computed with `function`, under `instance`.
    pub fn with_function(
        instance: impl Into<String>,
        function: DigestFunction,
        hash: [u8; HASH_LEN],
    ) -> ActionKey {
        ActionKey {
            instance: instance.into(),
            function,
            hash,
        }
    }
}

impl std::fmt::Display for ActionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/", self.instance)?;
        if self.function != DigestFunction::Sha256 {
            write!(f, "{}:", self.function.name())?;
        }
        write!(f, "{}", hex::encode(self.hash))
    }
}

/// An action-cache value and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionValue {
    /// An encoded `ActionResult`, or an opaque value (ccache's).
    pub kind: AcKind,
    /// The bytes exactly as stored.
    pub bytes: Bytes,
}

/// Which action-cache values a reader can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Only `ActionResult`s (gRPC: an opaque value there is a miss).
    ActionResults,
    /// Any value (HTTP serves what was put, byte for byte).
    Any,
}

impl Accept {
    /// Whether a value of `kind` is acceptable.
    pub fn admits(self, kind: AcKind) -> bool {
        self == Accept::Any || kind == AcKind::ActionResult
    }
}

/// A blob being read, owned by the caller (no borrow of the store).
#[async_trait]
pub trait BlobRead: Send {
    /// The next bytes, at most `max`, or `None` at the end. A read that started at offset 0
    /// verifies as it goes: the last chunk fails with [`Error::DataLoss`] if the bytes do not
    /// hash to the digest, so a client that reads to the end never accepts corrupt data.
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error>;
}

/// A blob being received. Dropping it without [`BlobUpload::commit`] discards the bytes.
#[async_trait]
pub trait BlobUpload: Send {
    /// The digest the bytes must match.
    fn expected(&self) -> Digest;

    /// Bytes received so far (where a resumed write continues).
    fn received(&self) -> u64;

    /// Appends the next bytes; more than declared is [`Error::SizeMismatch`] and leaves the
    /// upload as it was.
    async fn write(&mut self, data: Bytes) -> Result<(), Error>;

    /// Verifies size and hash, then makes the blob durable and findable. `Ok` is the
    /// acknowledgement: the blob survives a crash from then on.
    async fn commit(self: Box<Self>) -> Result<(), Error>;
}

/// A boxed, sendable future borrowing the store (what every [`Store`] method returns).
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// The cache: a content-addressable store of blobs and an action cache.
///
/// Methods whose names end in `_and_touch` count as a use of what they find: a client told
/// "present" relies on the blob staying, so it moves up in the eviction order.
///
/// Methods return boxed futures (rather than `async fn`) so that a layer can forward the ones
/// it does not change with [`forward_to!`] in one line.
pub trait Store: Send + Sync + 'static {
    /// What this store accepts.
    fn limits(&self) -> Limits;

    /// What it holds.
    fn stats(&self) -> Stats;

    /// The subset of `digests` not stored, in request order (the empty blob is always stored).
    fn find_missing_and_touch<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>>;

    /// The digest of the stored blob whose bytes hash to the SHA-256 `hash`, for clients that
    /// name blobs by hash alone (the HTTP protocol, which knows no other function).
    fn resolve_hash_and_touch<'a>(
        &'a self,
        hash: &'a [u8; HASH_LEN],
    ) -> StoreFuture<'a, Option<Digest>>;

    /// Opens a read of `digest` from `offset` ([`Error::NotFound`] if absent).
    fn open_blob<'a>(
        &'a self,
        digest: &'a Digest,
        offset: u64,
    ) -> StoreFuture<'a, Box<dyn BlobRead>>;

    /// Starts an upload of `digest`. Refuses early what cannot fit (too large, no space, busy).
    fn begin_upload(&self, digest: Digest) -> StoreFuture<'_, Box<dyn BlobUpload>>;

    /// The action-cache value under `key`, if one of a kind `accept` admits is stored.
    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>>;

    /// Stores `value` under `key`; the last writer wins, whatever the kinds.
    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()>;

    /// Whether `digest` is stored (touching it).
    fn contains_and_touch<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            Ok(self
                .find_missing_and_touch(std::slice::from_ref(digest))
                .await?
                .is_empty())
        })
    }

    /// The whole blob in memory; for blobs a caller has bounded (batch items, trees, inlined
    /// outputs). Verified: bytes that do not hash to `digest` are never returned.
    fn read_blob<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Bytes> {
        Box::pin(async move {
            let mut reader = self.open_blob(digest, 0).await?;
            let capacity = usize::try_from(digest.size).unwrap_or(0).min(1 << 24);
            let mut out = Vec::with_capacity(capacity);
            while let Some(chunk) = reader.next_chunk(1 << 20).await? {
                out.extend_from_slice(&chunk);
            }
            Ok(out.into())
        })
    }

    /// Stores a blob held in memory (verified against `digest`).
    fn put_blob(&self, digest: Digest, data: Bytes) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut upload = self.begin_upload(digest).await?;
            upload.write(data).await?;
            upload.commit().await
        })
    }
}

/// Forwards the named [`Store`] methods to the field `inner`: what a layer does not change.
/// A layer lists every required method it does not implement itself, and may list the provided
/// `read_blob` too when it does not change reads (so an implementation's faster whole-blob read
/// is kept); unlisted provided methods go through the layer's own methods. `@all` forwards
/// every method, provided ones included (for `Arc<S>`, which must behave exactly as `S`).
macro_rules! forward_to {
    ($inner:ident: $($method:ident),* $(,)?) => {
        $( $crate::store::forward_to!(@one [$inner] $method); )*
    };
    (@all [$($inner:tt)+]) => {
        $crate::store::forward_to!(@several [$($inner)+] limits stats find_missing_and_touch
            resolve_hash_and_touch open_blob begin_upload get_action put_action contains_and_touch
            read_blob put_blob);
    };
    (@several $inner:tt $($method:ident)*) => {
        $( $crate::store::forward_to!(@one $inner $method); )*
    };
    (@one [$($inner:tt)+] limits) => {
        fn limits(&self) -> $crate::store::Limits {
            self.$($inner)+.limits()
        }
    };
    (@one [$($inner:tt)+] stats) => {
        fn stats(&self) -> $crate::store::Stats {
            self.$($inner)+.stats()
        }
    };
    (@one [$($inner:tt)+] find_missing_and_touch) => {
        fn find_missing_and_touch<'a>(
            &'a self,
            digests: &'a [$crate::store::Digest],
        ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::Digest>> {
            self.$($inner)+.find_missing_and_touch(digests)
        }
    };
    (@one [$($inner:tt)+] resolve_hash_and_touch) => {
        fn resolve_hash_and_touch<'a>(
            &'a self,
            hash: &'a [u8; $crate::store::HASH_LEN],
        ) -> $crate::store::StoreFuture<'a, Option<$crate::store::Digest>> {
            self.$($inner)+.resolve_hash_and_touch(hash)
        }
    };
    (@one [$($inner:tt)+] open_blob) => {
        fn open_blob<'a>(
            &'a self,
            digest: &'a $crate::store::Digest,
            offset: u64,
        ) -> $crate::store::StoreFuture<'a, Box<dyn $crate::store::BlobRead>> {
            self.$($inner)+.open_blob(digest, offset)
        }
    };
    (@one [$($inner:tt)+] begin_upload) => {
        fn begin_upload(
            &self,
            digest: $crate::store::Digest,
        ) -> $crate::store::StoreFuture<'_, Box<dyn $crate::store::BlobUpload>> {
            self.$($inner)+.begin_upload(digest)
        }
    };
    (@one [$($inner:tt)+] get_action) => {
        fn get_action<'a>(
            &'a self,
            key: &'a $crate::store::ActionKey,
            accept: $crate::store::Accept,
        ) -> $crate::store::StoreFuture<'a, Option<$crate::store::ActionValue>> {
            self.$($inner)+.get_action(key, accept)
        }
    };
    (@one [$($inner:tt)+] read_blob) => {
        fn read_blob<'a>(
            &'a self,
            digest: &'a $crate::store::Digest,
        ) -> $crate::store::StoreFuture<'a, bytes::Bytes> {
            self.$($inner)+.read_blob(digest)
        }
    };
    (@one [$($inner:tt)+] contains_and_touch) => {
        fn contains_and_touch<'a>(
            &'a self,
            digest: &'a $crate::store::Digest,
        ) -> $crate::store::StoreFuture<'a, bool> {
            self.$($inner)+.contains_and_touch(digest)
        }
    };
    (@one [$($inner:tt)+] put_blob) => {
        fn put_blob(
            &self,
            digest: $crate::store::Digest,
            data: bytes::Bytes,
        ) -> $crate::store::StoreFuture<'_, ()> {
            self.$($inner)+.put_blob(digest, data)
        }
    };
    (@one [$($inner:tt)+] put_action) => {
        fn put_action<'a>(
            &'a self,
            key: &'a $crate::store::ActionKey,
            value: $crate::store::ActionValue,
        ) -> $crate::store::StoreFuture<'a, ()> {
            self.$($inner)+.put_action(key, value)
        }
    };
}
pub(crate) use forward_to;

/// A shared store is a store: layers and front ends hold `Arc<dyn Store>`.
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    forward_to!(@all [as_ref()]);
}
