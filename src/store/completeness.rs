//! [`CompletenessChecking`]: no action result is served while a blob it names is gone.
//!
//! Invariant: a `get_action` that returns an `ActionResult` has just seen every blob it
//! references in the CAS (output files, stdout/stderr, every output directory's tree, and every
//! file inside those trees), and touched them, so they are the last to be evicted. A client that
//! gets a hit can download all of its outputs; an incomplete entry is a miss, which only makes
//! the client run the action again (Bazel fails the build on a hit it cannot download).
//! Opaque values (ccache's) name no blobs and pass untouched.
//!
//! Trees are read as a stream, one `Directory` message at a time, so a huge tree never sits in
//! memory whole: a single directory message over [`CompletenessChecking::new`]'s bound makes
//! the entry a miss (logged) rather than a reason to buffer it.

use prost::Message as _;

use super::action_result::{parse_digest, referenced_digests, required_digest};
use super::{
    forward_to, AcKind, Accept, ActionKey, ActionValue, BlobRead, Digest, DigestFunction, Error,
    Store, StoreFuture,
};
use crate::proto::reapi::{ActionResult, Directory};

/// File digests checked per FindMissing call while walking a tree.
const CHECK_BATCH: usize = 1024;

/// Why an action result is incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gap {
    /// A blob it names (directly, or inside an output directory's tree) is not stored.
    Missing(Digest),
    /// It, or a tree it names, cannot be read through: malformed, or over the directory bound.
    Unreadable(String),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Missing(digest) => write!(f, "blob {digest} is missing"),
            Gap::Unreadable(why) => f.write_str(why),
        }
    }
}

/// Where a completeness check looks blobs up: a front end's check counts as a use of them
/// (they are about to be downloaded), a maintenance sweep must not.
pub trait Lookup: Sync {
    /// The subset of `digests` not stored.
    fn missing<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>>;

    /// Opens a read of `digest` from its start.
    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Box<dyn BlobRead>>;
}

/// A [`Store`] looked up the way its clients use it: hits are touched.
struct Touching<'s, S>(&'s S);

impl<S: Store> Lookup for Touching<'_, S> {
    fn missing<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        self.0.find_missing_and_touch(digests)
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Box<dyn BlobRead>> {
        self.0.open_blob(digest, 0)
    }
}

/// The first gap in the encoded action result `value` (whose digests are under `function`), or
/// `None` when every blob it names is present in `lookup`. A tree directory message over
/// `max_directory_size` bytes is a gap.
pub async fn first_gap(
    lookup: &dyn Lookup,
    function: DigestFunction,
    value: &[u8],
    max_directory_size: usize,
) -> Result<Option<Gap>, Error> {
    let result = match ActionResult::decode(value) {
        Ok(result) => result,
        Err(e) => return Ok(Some(unreadable("the stored value does not decode", e))),
    };
    let referenced = match referenced_digests(function, &result) {
        Ok(digests) => digests,
        Err(e) => return Ok(Some(Gap::Unreadable(e.to_string()))),
    };
    if let Some(missing) = lookup.missing(&referenced).await?.first() {
        return Ok(Some(Gap::Missing(*missing)));
    }
    for directory in &result.output_directories {
        let tree = match required_digest(function, directory.tree_digest.as_ref(), "tree_digest") {
            Ok(tree) => tree,
            Err(e) => return Ok(Some(Gap::Unreadable(e.to_string()))),
        };
        if let Some(gap) = tree_gap(lookup, &tree, max_directory_size).await? {
            return Ok(Some(gap));
        }
    }
    Ok(None)
}

fn unreadable(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Gap {
    Gap::Unreadable(format!("{what}: {why}"))
}

/// Walks the `Tree` blob `tree` (root and children directories) and checks every file in it.
async fn tree_gap(
    lookup: &dyn Lookup,
    tree: &Digest,
    max_directory_size: usize,
) -> Result<Option<Gap>, Error> {
    let reader = match lookup.open(tree).await {
        Ok(reader) => reader,
        Err(Error::NotFound(_) | Error::DataLoss(_)) => return Ok(Some(Gap::Missing(*tree))),
        Err(e) => return Err(e),
    };
    let mut fields = FieldReader::new(reader);
    let mut pending = Vec::new();
    loop {
        let field = match fields.next_directory(max_directory_size).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(FieldError::Unreadable(why)) => {
                return Ok(Some(unreadable(format!("tree {tree}"), why)))
            }
            // Gone or corrupt since it was opened: a gap, as a missing tree is.
            Err(FieldError::Read(Error::NotFound(_) | Error::DataLoss(_))) => {
                return Ok(Some(Gap::Missing(*tree)))
            }
            // Any other failure (an I/O error) says nothing about the result: it is no gap, or
            // the cascade would remove a complete result for a transient error.
            Err(FieldError::Read(e)) => return Err(e),
        };
        let directory = match Directory::decode(field.as_slice()) {
            Ok(directory) => directory,
            Err(e) => return Ok(Some(unreadable(format!("a directory of tree {tree}"), e))),
        };
        for file in &directory.files {
            match file
                .digest
                .as_ref()
                .map(|d| parse_digest(tree.function, d, "tree file digest"))
            {
                Some(Ok(digest)) => pending.push(digest),
                Some(Err(e)) => return Ok(Some(Gap::Unreadable(e.to_string()))),
                None => {
                    return Ok(Some(unreadable(
                        format!("tree {tree}"),
                        "a file has no digest",
                    )))
                }
            }
        }
        if pending.len() >= CHECK_BATCH {
            let batch = std::mem::take(&mut pending);
            if let Some(missing) = lookup.missing(&batch).await?.first() {
                return Ok(Some(Gap::Missing(*missing)));
            }
        }
    }
    Ok(lookup
        .missing(&pending)
        .await?
        .first()
        .copied()
        .map(Gap::Missing))
}

/// Checks action results against the CAS on the way out.
pub struct CompletenessChecking<S> {
    inner: S,
    max_directory_size: usize,
}

impl<S> CompletenessChecking<S> {
    /// Checks what `inner` serves; a tree directory message larger than `max_directory_size`
    /// bytes makes its result a miss.
    pub fn new(inner: S, max_directory_size: usize) -> Self {
        CompletenessChecking {
            inner,
            max_directory_size,
        }
    }
}

impl<S: Store> Store for CompletenessChecking<S> {
    forward_to!(inner: limits, stats, find_missing_and_touch, resolve_hash_and_touch, open_blob,
        begin_upload, put_action, read_blob);

    fn get_action<'a>(
        &'a self,
        key: &'a ActionKey,
        accept: Accept,
    ) -> StoreFuture<'a, Option<ActionValue>> {
        Box::pin(async move {
            let Some(value) = self.inner.get_action(key, accept).await? else {
                return Ok(None);
            };
            if value.kind == AcKind::Opaque {
                return Ok(Some(value));
            }
            let lookup = Touching(&self.inner);
            let gap = first_gap(&lookup, key.function, &value.bytes, self.max_directory_size);
            match gap.await? {
                None => Ok(Some(value)),
                Some(gap) => {
                    tracing::debug!(%key, %gap, "action result is incomplete; reporting a miss");
                    Ok(None)
                }
            }
        })
    }
}

/// Why a tree could not be read through.
enum FieldError {
    /// Its bytes are not a `Tree` within the bounds (its result is then incomplete).
    Unreadable(String),
    /// The store failed to read it.
    Read(Error),
}

/// Reads the length-delimited `Directory` fields (1: root, 2: children) of a `Tree` blob as
/// it streams, holding one field at a time.
struct FieldReader {
    reader: Box<dyn BlobRead>,
    buffer: Vec<u8>,
    at: usize,
    ended: bool,
}

impl FieldReader {
    fn new(reader: Box<dyn BlobRead>) -> FieldReader {
        FieldReader {
            reader,
            buffer: Vec::new(),
            at: 0,
            ended: false,
        }
    }

    /// Makes at least `n` unread bytes available unless the blob ends first; returns how many
    /// there are.
    async fn fill(&mut self, n: usize) -> Result<usize, FieldError> {
        while self.buffer.len() - self.at < n && !self.ended {
            self.buffer.drain(..self.at);
            self.at = 0;
            match self.reader.next_chunk(1 << 20).await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => self.ended = true,
                Err(e) => return Err(FieldError::Read(e)),
            }
        }
        Ok(self.buffer.len() - self.at)
    }

    async fn varint(&mut self) -> Result<Option<u64>, FieldError> {
        let available = self.fill(10).await?;
        if available == 0 {
            return Ok(None);
        }
        let mut value = 0u64;
        for i in 0..available.min(10) {
            let byte = self.buffer[self.at + i];
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.at += i + 1;
                return Ok(Some(value));
            }
        }
        Err(FieldError::Unreadable("a field header is malformed".into()))
    }

    async fn take(&mut self, len: usize) -> Result<Vec<u8>, FieldError> {
        if self.fill(len).await? < len {
            return Err(FieldError::Unreadable("it ends inside a field".into()));
        }
        let bytes = self.buffer[self.at..self.at + len].to_vec();
        self.at += len;
        Ok(bytes)
    }

    /// The next directory message's bytes, skipping other fields; `None` at the end.
    async fn next_directory(&mut self, max: usize) -> Result<Option<Vec<u8>>, FieldError> {
        loop {
            let Some(key) = self.varint().await? else {
                return Ok(None);
            };
            let (field, wire_type) = (key >> 3, key & 7);
            let len = match wire_type {
                0 => {
                    self.varint().await?;
                    continue;
                }
                1 => 8,
                5 => 4,
                2 => {
                    let len = self.varint().await?.unwrap_or(u64::MAX);
                    usize::try_from(len).unwrap_or(usize::MAX)
                }
                _ => {
                    return Err(FieldError::Unreadable(format!(
                        "wire type {wire_type} is not a Tree's"
                    )))
                }
            };
            if len > max {
                return Err(FieldError::Unreadable(format!(
                    "a field of {len} bytes is over the {max} byte bound on a directory"
                )));
            }
            let bytes = self.take(len).await?;
            if wire_type == 2 && (field == 1 || field == 2) {
                return Ok(Some(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{self, FileNode, OutputDirectory, OutputFile, Tree};
    use crate::store::MemoryStore;
    use bytes::Bytes;

    fn proto(digest: &Digest) -> reapi::Digest {
        digest.into()
    }

    fn file(name: &str, digest: &Digest) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(proto(digest)),
            ..Default::default()
        }
    }

    struct Case {
        store: CompletenessChecking<MemoryStore>,
        key: ActionKey,
        blobs: Vec<(Digest, Bytes)>,
    }

    /// An action result with one output file and one output directory whose tree holds
    /// `tree_files` files in the root and each of two children; every blob uploaded.
    async fn case(tree_files: usize) -> Case {
        let store = CompletenessChecking::new(MemoryStore::new(1 << 24, 1 << 26), 1 << 20);
        let mut blobs = Vec::new();
        let mut add = |bytes: Vec<u8>| {
            let digest = Digest::of(&bytes);
            blobs.push((digest, Bytes::from(bytes)));
            digest
        };
        let output = add(b"output file".to_vec());
        let files: Vec<Digest> = (0..3 * tree_files)
            .map(|i| add(format!("tree file {i}").into_bytes()))
            .collect();
        let directory = |range: std::ops::Range<usize>| Directory {
            files: range.map(|i| file(&format!("f{i}"), &files[i])).collect(),
            ..Default::default()
        };
        let tree = Tree {
            root: Some(directory(0..tree_files)),
            children: vec![
                directory(tree_files..2 * tree_files),
                directory(2 * tree_files..3 * tree_files),
            ],
        };
        let tree = add(tree.encode_to_vec());
        for (digest, bytes) in &blobs {
            store.put_blob(*digest, bytes.clone()).await.unwrap();
        }
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(proto(&output)),
                ..Default::default()
            }],
            output_directories: vec![OutputDirectory {
                path: "dir".into(),
                tree_digest: Some(proto(&tree)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let key = ActionKey::new("", Digest::of(b"action").hash);
        let value = ActionValue {
            kind: AcKind::ActionResult,
            bytes: result.encode_to_vec().into(),
        };
        store.put_action(&key, value).await.unwrap();
        Case { store, key, blobs }
    }

    /// Whether the case's action result is served.
    async fn served(case: &Case) -> bool {
        let got = case
            .store
            .get_action(&case.key, Accept::ActionResults)
            .await;
        got.unwrap().is_some()
    }

    /// Whether the action result of `case(tree_files)` is served by a store holding every one
    /// of its blobs but the one at index `lost`.
    async fn without(tree_files: usize, lost: usize) -> bool {
        let full = case(tree_files).await;
        let partial = CompletenessChecking::new(MemoryStore::new(1 << 24, 1 << 26), 1 << 20);
        for (i, (digest, bytes)) in full.blobs.iter().enumerate() {
            if i != lost {
                partial.put_blob(*digest, bytes.clone()).await.unwrap();
            }
        }
        let value = full.store.inner.get_action(&full.key, Accept::Any).await;
        partial
            .put_action(&full.key, value.unwrap().unwrap())
            .await
            .unwrap();
        served(&Case {
            store: partial,
            key: full.key,
            blobs: Vec::new(),
        })
        .await
    }

    #[test]
    fn complete_results_are_served_and_any_lost_blob_makes_a_miss() {
        futures::executor::block_on(async {
            assert!(served(&case(2).await).await);
            // Blobs: output, 6 tree files, the tree itself.
            for lost in 0..8 {
                assert!(
                    !without(2, lost).await,
                    "losing blob {lost} must make a miss"
                );
            }
        });
    }

    #[test]
    fn large_trees_are_checked_in_batches() {
        futures::executor::block_on(async {
            let files = CHECK_BATCH + 7;
            assert!(served(&case(files).await).await);
            // The last file of the last child: found only after several batches.
            assert!(!without(files, 3 * files).await);
        });
    }

    #[test]
    fn a_directory_over_the_bound_is_a_miss_not_a_buffer() {
        futures::executor::block_on(async {
            let full = case(64).await;
            let tight = CompletenessChecking::new(full.store.inner.clone(), 100);
            let got = tight.get_action(&full.key, Accept::ActionResults).await;
            assert_eq!(got.unwrap(), None);
        });
    }

    #[test]
    fn opaque_values_and_undecodable_results() {
        futures::executor::block_on(async {
            let store = CompletenessChecking::new(MemoryStore::new(1 << 20, 1 << 20), 1 << 20);
            let key = ActionKey::new("", Digest::of(b"k").hash);
            let opaque = ActionValue {
                kind: AcKind::Opaque,
                bytes: Bytes::from_static(b"ccache bytes"),
            };
            store.put_action(&key, opaque.clone()).await.unwrap();
            assert_eq!(
                store.get_action(&key, Accept::Any).await.unwrap(),
                Some(opaque)
            );
            let garbage = ActionValue {
                kind: AcKind::ActionResult,
                bytes: Bytes::from_static(b"\xff\xff"),
            };
            store.put_action(&key, garbage).await.unwrap();
            assert_eq!(store.get_action(&key, Accept::Any).await.unwrap(), None);
        });
    }

    /// A lookup over `store` whose reads of `failing` break after their first chunk with an I/O
    /// error (a disk failing for a moment).
    struct FlakyReads<'s> {
        store: &'s MemoryStore,
        failing: Digest,
    }

    struct BrokenRead {
        first: Option<Bytes>,
    }

    #[async_trait::async_trait]
    impl BlobRead for BrokenRead {
        async fn next_chunk(&mut self, _max: usize) -> Result<Option<Bytes>, Error> {
            match self.first.take() {
                Some(chunk) => Ok(Some(chunk)),
                None => Err(Error::io("reading", std::io::Error::other("eio"))),
            }
        }
    }

    impl Lookup for FlakyReads<'_> {
        fn missing<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
            self.store.find_missing_and_touch(digests)
        }

        fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Box<dyn BlobRead>> {
            Box::pin(async move {
                if *digest != self.failing {
                    return self.store.open_blob(digest, 0).await;
                }
                let bytes = self.store.read_blob(digest).await?;
                let first = bytes.slice(..bytes.len().min(3));
                Ok(Box::new(BrokenRead { first: Some(first) }) as Box<dyn BlobRead>)
            })
        }
    }

    /// An I/O error while a tree streams says nothing about the result: an error, not a gap
    /// (the cascade removes the results its check finds a gap in, so a gap here would cost a
    /// complete result for a transient fault).
    #[test]
    fn a_failing_tree_read_is_an_error_not_a_gap() {
        futures::executor::block_on(async {
            let full = case(4).await;
            let tree = full.blobs.last().unwrap().0;
            let value = full.store.inner.get_action(&full.key, Accept::Any).await;
            let value = value.unwrap().unwrap().bytes;
            let lookup = FlakyReads {
                store: &full.store.inner,
                failing: tree,
            };
            let gap = first_gap(&lookup, DigestFunction::Sha256, &value, 1 << 20).await;
            assert!(
                matches!(gap, Err(Error::Io { .. })),
                "a read error must pass up, got {gap:?}"
            );
        });
    }
}
