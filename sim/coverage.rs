//! Coverage rounds of the gRPC workload: the requests and inputs the Bazel-shaped traffic does
//! not make on its own, each answer checked by the oracle.
//!
//! - `tree`: a directory tree (files from the pool, nested directories, a `Tree` blob) stored
//!   by BatchUpdateBlobs, read back by GetTree in pages (one stream, or a call per page resumed
//!   by its token) and compared with what was stored (`get-tree-mismatch`), then named as an
//!   output directory by an action result, sometimes with a file withheld: a hit must name no
//!   missing blob, trees included (`ac-hit-references-missing-blob`), and eviction of the tree
//!   or its files excuses a miss only.
//! - `bad_offsets`: ByteStream writes whose first offset is not 0 on a fresh upload, with a gap,
//!   going back, or overlapping: refused with INVALID_ARGUMENT (or OUT_OF_RANGE), storing
//!   nothing (`wrong-refusal-code`, `half-written-visible`).
//! - `bad_inputs`: short and over-long uploads, malformed resource names (hash, size, digest
//!   function, upload id), absurd sizes, reads past the end or at negative offsets, unknown
//!   digest functions, malformed action results and digests, bad GetTree tokens and sizes, zstd
//!   uploads inflating short or long, cut inside their frame, or no zstd at all: each refused
//!   with its code, and nothing stored (`bad-input-accepted`).
//! - `vanishing`: a write whose client goes away half way (its bytes are never a blob, and its
//!   temp file does not outlive the audit), a read dropped after its first message; the server
//!   serves on.
//! - `auth_probe`: requests without credentials or with a wrong token: UNAUTHENTICATED with
//!   auth on and changing nothing, never UNAUTHENTICATED with it off (`auth-gate-broken`).
//! - `instance_probe`: an action key looked up under other instance names than it was stored
//!   under, path-like ones included (`instance-leak`).

use std::future::pending;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hoard::engine::{Digest, DigestFunction};
use hoard::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::proto::reapi::{
    self, batch_update_blobs_request, ActionResult, BatchUpdateBlobsRequest, Directory,
    DirectoryNode, FileNode, FindMissingBlobsRequest, GetActionResultRequest, GetTreeRequest,
    OutputDirectory, OutputFile, Tree, UpdateActionResultRequest,
};
use madsim::rand::{thread_rng, Rng};
use prost::Message;
use tonic::codegen::IdentityInterceptor;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::oracle::Invariant;
use crate::workload::{
    ac_client, action_key, bytestream_client, cas_client, check_action, zstd_frame, Client,
    ACTION_KEYS, IDENTITY, INSTANCES,
};

/// Codes any request may get from a server in trouble (restarting, a failing or full disk, a
/// connection cut by a crash): they prove nothing about how it judged the input.
const TROUBLE: [Code; 5] = [
    Code::Unavailable,
    Code::ResourceExhausted,
    Code::Unknown,
    Code::Cancelled,
    Code::DeadlineExceeded,
];

/// Bytes per message of the probes' own writes (small, so a probe blob spans a few).
const PROBE_CHUNK: usize = 1024;

/// Instance names no client stores under but that look like the ones they do.
const PATH_LIKE_INSTANCES: [&str; 4] = ["../main", "main/..", "ci", "ci/linux/x"];

/// A blob no client uploads: its bytes are derived from `tag` and `what` (a round and its
/// probe), so "not stored" is a claim the oracle can make about it.
fn probe_blob(tag: &str, what: &str, len: usize) -> (Digest, Bytes) {
    let seed = Digest::of(format!("probe {tag} {what}").as_bytes()).hash;
    let bytes: Bytes = seed.iter().copied().cycle().take(len).collect();
    (Digest::of(&bytes), bytes)
}

/// An uploads resource name for `digest` with a fresh upload id.
fn upload_name(digest: &Digest) -> String {
    format!(
        "uploads/{:016x}/blobs/{}/{}",
        thread_rng().gen::<u64>(),
        digest.hex(),
        digest.size
    )
}

/// Write messages carrying `data` from `offset`, `PROBE_CHUNK` bytes each, the first naming
/// `resource`, the last finishing the write.
fn messages(resource: &str, data: &[u8], offset: usize) -> Vec<WriteRequest> {
    let mut out: Vec<WriteRequest> = data
        .chunks(PROBE_CHUNK)
        .enumerate()
        .map(|(i, chunk)| WriteRequest {
            resource_name: String::new(),
            write_offset: (offset + i * PROBE_CHUNK) as i64,
            finish_write: false,
            data: Bytes::copy_from_slice(chunk),
        })
        .collect();
    if out.is_empty() {
        out.push(WriteRequest {
            write_offset: offset as i64,
            ..Default::default()
        });
    }
    out[0].resource_name = resource.to_owned();
    out.last_mut().expect("one message").finish_write = true;
    out
}

impl Client {
    /// One coverage round, its kind drawn from the seed.
    pub async fn coverage(&self, channel: &Channel, tag: &str) {
        let kind = thread_rng().gen_range(0..6);
        self.oracle.event(format!("{tag} coverage {kind}"));
        match kind {
            0 => self.tree(channel, tag).await,
            1 => self.bad_offsets(channel, tag).await,
            2 => self.bad_inputs(channel, tag).await,
            3 => self.vanishing(channel, tag).await,
            4 => self.auth_probe(channel, tag).await,
            _ => self.instance_probe(channel, tag).await,
        }
    }

    /// Checks the answer to a bad input: refused with one of `expected` (or a code of a server
    /// in trouble), never served, never INTERNAL. Whether it was refused.
    fn refused<T>(&self, what: &str, answer: &Result<T, Status>, expected: &[Code]) -> bool {
        let status = match answer {
            Ok(_) => {
                self.oracle
                    .fail(Invariant::BadInputAccepted, format!("{what} was accepted"));
                return false;
            }
            Err(status) => status,
        };
        self.status(what, &Digest::EMPTY, status);
        if !expected.contains(&status.code()) && !TROUBLE.contains(&status.code()) {
            self.oracle.fail(
                Invariant::WrongRefusalCode,
                format!(
                    "{what} got {:?} (expected {expected:?}): {}",
                    status.code(),
                    status.message()
                ),
            );
        }
        true
    }

    /// Fails `invariant` if `digest`, which no finished upload stored, is present.
    async fn absent(&self, channel: &Channel, digest: &Digest, invariant: Invariant, why: &str) {
        if self.find(&mut cas_client(channel), digest, 0).await == Some(true) {
            self.oracle
                .fail(invariant, format!("{digest} is present after {why}"));
        }
    }

    /// Fails if the never-acknowledged upload `resource` of `digest` reports complete.
    async fn not_complete(&self, channel: &Channel, resource: &str, digest: &Digest, why: &str) {
        let query = QueryWriteStatusRequest {
            resource_name: resource.to_owned(),
        };
        let answer = bytestream_client(channel).query_write_status(query).await;
        if answer.is_ok_and(|r| r.into_inner().complete) {
            self.oracle.fail(
                Invariant::HalfWrittenVisible,
                format!("QueryWriteStatus reports {digest} complete after {why}"),
            );
        }
    }

    /// A directory tree stored and read back by GetTree, then named by an action result.
    async fn tree(&self, channel: &Channel, tag: &str) {
        let mut files = Vec::new();
        let leaf = |name: String, files: &mut Vec<Digest>| {
            let (digest, _) = self.pick_blob();
            files.push(digest);
            FileNode {
                name,
                digest: Some(reapi::Digest::from(&digest)),
                is_executable: thread_rng().gen_bool(0.2),
                ..Default::default()
            }
        };
        // Children first, so each parent can name its subdirectories' digests.
        let depth = thread_rng().gen_range(1..=4);
        let mut children: Vec<Directory> = Vec::new();
        let mut below: Option<Digest> = None;
        for level in 0..depth {
            let mut directory = Directory {
                files: (0..thread_rng().gen_range(0..=2))
                    .map(|i| leaf(format!("l{level}f{i}"), &mut files))
                    .collect(),
                ..Default::default()
            };
            if let Some(digest) = &below {
                directory.directories.push(DirectoryNode {
                    name: format!("sub{level}"),
                    digest: Some(reapi::Digest::from(digest)),
                });
            }
            let digest = Digest::of(&directory.encode_to_vec());
            children.push(directory);
            below = Some(digest);
        }
        let mut root = Directory {
            files: (0..thread_rng().gen_range(1..=3))
                .map(|i| leaf(format!("f{i}"), &mut files))
                .collect(),
            ..Default::default()
        };
        if let Some(digest) = &below {
            root.directories.push(DirectoryNode {
                name: "lib".into(),
                digest: Some(reapi::Digest::from(digest)),
            });
        }
        let root_digest = Digest::of(&root.encode_to_vec());
        let tree = Tree {
            root: Some(root.clone()),
            children: children.clone(),
        };
        let tree_bytes = Bytes::from(tree.encode_to_vec());
        let tree_digest = Digest::of(&tree_bytes);
        // The tree embeds its directories: only its files must be stored for a hit.
        self.oracle.tree_stored(&tree_digest, files.clone());

        // Store the files (all but, sometimes, one), the directories and the tree at once.
        let withheld = thread_rng()
            .gen_bool(0.2)
            .then(|| files[thread_rng().gen_range(0..files.len())]);
        let mut items: Vec<(Digest, Bytes)> = files
            .iter()
            .filter(|d| Some(**d) != withheld && !d.is_empty())
            .filter_map(|d| Some((*d, self.pool.content(d)?.clone())))
            .filter(|(d, _)| d.size < 64 << 10)
            .collect();
        let skipped_large = items.len() + usize::from(withheld.is_some())
            < files.iter().filter(|d| !d.is_empty()).count();
        for directory in children.iter().chain([&root]) {
            let bytes = Bytes::from(directory.encode_to_vec());
            items.push((Digest::of(&bytes), bytes));
        }
        items.push((tree_digest, tree_bytes));
        items.sort_by_key(|(d, _)| *d);
        items.dedup_by_key(|(d, _)| *d);
        let epochs: Vec<u64> = items
            .iter()
            .map(|(d, _)| self.oracle.evictions(&d.hash))
            .collect();
        let request = BatchUpdateBlobsRequest {
            requests: items
                .iter()
                .map(|(d, data)| batch_update_blobs_request::Request {
                    digest: Some(reapi::Digest::from(d)),
                    data: data.clone(),
                    compressor: IDENTITY,
                })
                .collect(),
            ..Default::default()
        };
        let stored = match cas_client(channel).batch_update_blobs(request).await {
            Ok(reply) => reply.into_inner().responses,
            Err(status) => return self.status("tree-upload", &tree_digest, &status),
        };
        let mut all_stored = true;
        for ((digest, _), epoch) in items.iter().zip(&epochs) {
            let code = stored
                .iter()
                .find(|r| r.digest.as_ref() == Some(&reapi::Digest::from(digest)))
                .map_or(-1, |r| r.status.as_ref().map_or(0, |s| s.code));
            self.oracle
                .event(format!("{tag} tree item {digest} code {code}"));
            let ok = code == 0;
            if ok {
                self.oracle.blob_acked(*digest, *epoch);
            }
            all_stored &= ok;
        }
        self.oracle.event(format!(
            "{tag} tree {tree_digest} of {} directories, withheld {withheld:?}",
            children.len() + 1
        ));
        if all_stored {
            let mut expected: Vec<Vec<u8>> = children
                .iter()
                .chain([&root])
                .map(|d| d.encode_to_vec())
                .collect();
            expected.sort();
            expected.dedup();
            let promises: Vec<Option<u64>> =
                items.iter().map(|(d, _)| self.oracle.promise(d)).collect();
            self.get_tree(channel, &root_digest, expected, &items, &promises)
                .await;
        }

        let result = ActionResult {
            output_files: if thread_rng().gen_bool(0.5) {
                vec![OutputFile {
                    path: "out/log".into(),
                    digest: Some(reapi::Digest::from(&files[0])),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            output_directories: vec![OutputDirectory {
                path: "out/dir".into(),
                tree_digest: Some(reapi::Digest::from(&tree_digest)),
                root_directory_digest: thread_rng()
                    .gen_bool(0.5)
                    .then(|| reapi::Digest::from(&root_digest)),
                ..Default::default()
            }],
            exit_code: thread_rng().gen_range(0..2),
            ..Default::default()
        };
        let (instance, action) = {
            let mut rng = thread_rng();
            (
                INSTANCES[rng.gen_range(0..INSTANCES.len())],
                action_key(rng.gen_range(0..ACTION_KEYS)),
            )
        };
        if withheld.is_some() || skipped_large || !all_stored {
            self.oracle.action_may_be_incomplete(instance, action);
        }
        self.store_action(channel, tag, instance, action, result)
            .await;
        check_action(&self.oracle, channel, instance, &action, false, tag).await;
    }

    /// GetTree of `root`, page by page or in one stream, against the encoded directories
    /// `expected` (sorted, each once). `stored` are the blobs the tree was stored as, with
    /// their promises: an eviction of one since excuses a short answer.
    async fn get_tree(
        &self,
        channel: &Channel,
        root: &Digest,
        expected: Vec<Vec<u8>>,
        stored: &[(Digest, Bytes)],
        promises: &[Option<u64>],
    ) {
        let page_size = if thread_rng().gen_bool(0.3) {
            0
        } else {
            thread_rng().gen_range(1..=3)
        };
        let one_stream = thread_rng().gen_bool(0.5);
        let mut cas = cas_client(channel);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        let outcome: Result<(), Status> = async {
            loop {
                let request = GetTreeRequest {
                    root_digest: Some(reapi::Digest::from(root)),
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                };
                let mut stream = cas.get_tree(request).await?.into_inner();
                while let Some(page) = stream.message().await? {
                    pages += 1;
                    if page_size > 0 && page.directories.len() > page_size as usize {
                        self.oracle.fail(
                            Invariant::GetTreeMismatch,
                            format!(
                                "GetTree of {root} sent {} directories in a page of {page_size}",
                                page.directories.len()
                            ),
                        );
                    }
                    got.extend(page.directories.iter().map(|d| d.encode_to_vec()));
                    token = page.next_page_token;
                    if token.is_empty() || !one_stream {
                        break; // the last page, or the rest is asked for by token
                    }
                }
                if token.is_empty() || pages > 20 {
                    return Ok(());
                }
            }
        }
        .await;
        let excused = stored
            .iter()
            .zip(promises)
            .any(|((d, _), p)| !self.oracle.miss_breaks(&d.hash, *p));
        self.oracle.event(format!(
            "{} get-tree {root} size {page_size} stream {one_stream}: {} in {pages} pages, {:?}",
            self.id,
            got.len(),
            outcome.as_ref().map_err(Status::code)
        ));
        if let Err(status) = outcome {
            self.status("get-tree", root, &status);
            if status.code() == Code::NotFound && !excused {
                self.oracle.fail(
                    Invariant::GetTreeMismatch,
                    format!("GetTree of stored {root}: {}", status.message()),
                );
            }
            return;
        }
        let returned = got.len();
        got.sort();
        got.dedup();
        if returned != got.len() {
            self.oracle.fail(
                Invariant::GetTreeMismatch,
                format!("GetTree of {root} returned a directory twice"),
            );
        }
        if got.iter().any(|d| !expected.contains(d)) {
            self.oracle.fail(
                Invariant::GetTreeMismatch,
                format!("GetTree of {root} returned a directory not in the tree"),
            );
        }
        if got.len() < expected.len() && !excused {
            self.oracle.fail(
                Invariant::GetTreeMismatch,
                format!(
                    "GetTree of {root} returned {} of the tree's {} directories",
                    got.len(),
                    expected.len()
                ),
            );
        }
    }

    /// ByteStream writes whose offsets do not continue: refused, and nothing stored.
    async fn bad_offsets(&self, channel: &Channel, tag: &str) {
        let kind = thread_rng().gen_range(0..4);
        let (digest, content) = probe_blob(tag, "offsets", 3 * PROBE_CHUNK);
        let resource = upload_name(&digest);
        let mut requests = messages(&resource, &content, 0);
        let what = match kind {
            0 => {
                // A fresh upload must start where QueryWriteStatus says: at 0.
                requests = messages(&resource, &content[PROBE_CHUNK..], PROBE_CHUNK);
                "a fresh write starting at a later offset"
            }
            1 => {
                requests.remove(1);
                "a write with a gap"
            }
            2 => {
                requests[2].write_offset = 0;
                "a write going back to offset 0"
            }
            _ => {
                requests[1].write_offset -= PROBE_CHUNK as i64 / 2;
                "a write whose chunks overlap"
            }
        };
        let answer = bytestream_client(channel)
            .write(futures::stream::iter(requests))
            .await;
        // The ByteStream spec: "An incorrect value will cause an error"; INVALID_ARGUMENT is
        // what the server says, OUT_OF_RANGE would do too.
        if self.refused(what, &answer, &[Code::InvalidArgument, Code::OutOfRange]) {
            self.absent(channel, &digest, Invariant::BadInputAccepted, what)
                .await;
            self.not_complete(channel, &resource, &digest, what).await;
        }
    }

    /// A few malformed requests of the kinds the front end refuses, each checked.
    async fn bad_inputs(&self, channel: &Channel, tag: &str) {
        for n in 0..thread_rng().gen_range(1..=3) {
            let kind = thread_rng().gen_range(0..10);
            self.bad_input(channel, &format!("{tag} {n}"), kind).await;
        }
    }

    async fn bad_input(&self, channel: &Channel, tag: &str, kind: u32) {
        let invalid = [Code::InvalidArgument];
        let (digest, content) = probe_blob(tag, "input", 2 * PROBE_CHUNK + 7);
        let mut bytestream = bytestream_client(channel);
        match kind {
            0 | 1 => {
                // Short or over-long: the bytes sent do not make the declared size.
                let resource = upload_name(&digest);
                let (what, data) = if kind == 0 {
                    ("a short upload", content.slice(..content.len() - 5))
                } else {
                    let mut long = content.to_vec();
                    long.extend_from_slice(b"extra");
                    ("an over-long upload", Bytes::from(long))
                };
                let requests = messages(&resource, &data, 0);
                let answer = bytestream.write(futures::stream::iter(requests)).await;
                if self.refused(what, &answer, &invalid) {
                    self.absent(channel, &digest, Invariant::BadInputAccepted, what)
                        .await;
                }
            }
            2 => {
                // Malformed resource names, for writes and reads.
                let hex = digest.hex();
                let size = digest.size;
                let names = [
                    format!("uploads/u/blobs/{}/{size}", &hex[..63]),
                    format!("uploads/u/blobs/{}z/{size}", &hex[..63]),
                    format!("uploads/u/blobs/{hex}/-{size}"),
                    format!("uploads/u/blobs/{hex}/{size}x"),
                    format!("uploads/u/blobs/{hex}/99999999999999999999"),
                    format!("uploads//blobs/{hex}/{size}"),
                    format!("uploads/u/blobs/md5/{hex}/{size}"),
                    format!("uploads/u/compressed-blobs/brotli/{hex}/{size}"),
                    format!("uploads/u/{hex}/{size}"),
                    format!("blobs/{hex}/{size}"),
                ];
                let name = &names[thread_rng().gen_range(0..names.len())];
                let what = format!("a write to {name:?}");
                let requests = messages(name, &content, 0);
                let answer = bytestream.write(futures::stream::iter(requests)).await;
                if self.refused(&what, &answer, &invalid) {
                    self.absent(channel, &digest, Invariant::BadInputAccepted, &what)
                        .await;
                }
                let name = name.replace("uploads/u/", "").replace("uploads//", "");
                let request = ReadRequest {
                    resource_name: format!("x/{name}/extra"),
                    ..Default::default()
                };
                let answer = bytestream.read(request).await;
                self.refused(&format!("a read of {name:?}/extra"), &answer, &invalid);
            }
            3 => {
                // An absurd declared size: more than any disk, refused before a byte is read.
                let absurd = Digest::sha256(digest.hash, 1 << 60);
                let requests = messages(&upload_name(&absurd), &content, 0);
                let answer = bytestream.write(futures::stream::iter(requests)).await;
                let codes = [
                    Code::InvalidArgument,
                    Code::OutOfRange,
                    Code::ResourceExhausted,
                    Code::FailedPrecondition,
                ];
                self.refused("a write declaring 2^60 bytes", &answer, &codes);
            }
            4 => {
                // Reads at a negative offset (INVALID_ARGUMENT) or past the end (OUT_OF_RANGE).
                let past = thread_rng().gen_bool(0.5);
                let request = ReadRequest {
                    resource_name: format!("blobs/{}/{}", digest.hex(), digest.size),
                    read_offset: if past { digest.size as i64 + 1 } else { -1 },
                    read_limit: 0,
                };
                let answer = async {
                    let mut stream = bytestream.read(request).await?.into_inner();
                    while stream.message().await?.is_some() {}
                    Ok::<_, Status>(())
                }
                .await;
                match past {
                    true => self.refused("a read past the end", &answer, &[Code::OutOfRange]),
                    false => self.refused("a read at offset -1", &answer, &invalid),
                };
            }
            5 => {
                // Digest functions this server does not serve (SHA-1 = 2, MD5 = 3).
                let function = thread_rng().gen_range(2..=3);
                let mut cas = cas_client(channel);
                let request = BatchUpdateBlobsRequest {
                    requests: vec![batch_update_blobs_request::Request {
                        digest: Some(reapi::Digest::from(&digest)),
                        data: content.clone(),
                        compressor: IDENTITY,
                    }],
                    digest_function: function,
                    ..Default::default()
                };
                let answer = cas.batch_update_blobs(request).await;
                let what = format!("BatchUpdateBlobs under digest function {function}");
                if self.refused(&what, &answer, &invalid) {
                    self.absent(channel, &digest, Invariant::BadInputAccepted, &what)
                        .await;
                }
                let request = FindMissingBlobsRequest {
                    blob_digests: vec![reapi::Digest::from(&digest)],
                    digest_function: function,
                    ..Default::default()
                };
                let answer = cas.find_missing_blobs(request).await;
                self.refused("FindMissingBlobs under SHA-1/MD5", &answer, &invalid);
            }
            6 => {
                // Malformed digests in FindMissingBlobs and GetActionResult.
                let malformed = reapi::Digest {
                    hash: format!("{}Z", &digest.hex()[..63]),
                    size_bytes: if thread_rng().gen_bool(0.5) { -1 } else { 3 },
                };
                let request = FindMissingBlobsRequest {
                    blob_digests: vec![reapi::Digest::from(&digest), malformed.clone()],
                    ..Default::default()
                };
                let answer = cas_client(channel).find_missing_blobs(request).await;
                self.refused("FindMissingBlobs of a malformed digest", &answer, &invalid);
                let request = GetActionResultRequest {
                    action_digest: thread_rng().gen_bool(0.5).then_some(malformed),
                    ..Default::default()
                };
                let answer = ac_client(channel).get_action_result(request).await;
                self.refused("GetActionResult of a malformed digest", &answer, &invalid);
            }
            7 => self.bad_action_result(channel, tag, &digest).await,
            8 => {
                // Compressed uploads that do not make the declared blob.
                let resource = format!(
                    "uploads/{:016x}/compressed-blobs/zstd/{}/{}",
                    thread_rng().gen::<u64>(),
                    digest.hex(),
                    digest.size
                );
                let (what, stream) = match thread_rng().gen_range(0..4) {
                    0 => (
                        "a zstd upload inflating short",
                        zstd_frame(&content[..content.len() - 5]),
                    ),
                    1 => {
                        let mut long = content.to_vec();
                        long.extend_from_slice(b"extra");
                        ("a zstd upload inflating long", zstd_frame(&long))
                    }
                    2 => {
                        let whole = zstd_frame(&content);
                        let cut = whole.slice(..whole.len() - 3);
                        ("a zstd upload cut inside its frame", cut)
                    }
                    _ => ("an upload that is no zstd stream", content.clone()),
                };
                let requests = messages(&resource, &stream, 0);
                let answer = bytestream.write(futures::stream::iter(requests)).await;
                if self.refused(what, &answer, &invalid) {
                    self.absent(channel, &digest, Invariant::BadInputAccepted, what)
                        .await;
                }
            }
            _ => {
                // GetTree with a token not issued for the root, or a negative page size.
                let bad_token = thread_rng().gen_bool(0.5);
                let request = GetTreeRequest {
                    root_digest: Some(reapi::Digest::from(&digest)),
                    page_size: if bad_token { 2 } else { -1 },
                    page_token: if bad_token {
                        format!("{}-1", &Digest::of(b"other root").hex()[..16])
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                let answer = async {
                    let mut stream = cas_client(channel).get_tree(request).await?.into_inner();
                    while stream.message().await?.is_some() {}
                    Ok::<_, Status>(())
                }
                .await;
                let what = match bad_token {
                    true => "GetTree with another root's page token",
                    false => "GetTree with page_size -1",
                };
                self.refused(what, &answer, &invalid);
            }
        }
    }

    /// UpdateActionResult of a result the server must refuse (a path out of the output tree, a
    /// malformed digest, a missing tree digest), for a key nobody else uses: then a miss.
    async fn bad_action_result(&self, channel: &Channel, tag: &str, output: &Digest) {
        let action = Digest::of(format!("bad action {tag}").as_bytes());
        let file = |path: &str, digest: reapi::Digest| OutputFile {
            path: path.into(),
            digest: Some(digest),
            ..Default::default()
        };
        let mut result = ActionResult::default();
        let what = match thread_rng().gen_range(0..4) {
            0 => {
                result.output_files = vec![file("../../etc/passwd", reapi::Digest::from(output))];
                "an action result with a path out of the output tree"
            }
            1 => {
                result.output_files = vec![file("/abs/out", reapi::Digest::from(output))];
                "an action result with an absolute path"
            }
            2 => {
                let bad = reapi::Digest {
                    hash: "0123".into(),
                    size_bytes: 4,
                };
                result.output_files = vec![file("out/a", bad)];
                "an action result with a malformed digest"
            }
            _ => {
                result.output_directories = vec![OutputDirectory {
                    path: "out/d".into(),
                    ..Default::default()
                }];
                "an action result whose directory has no tree digest"
            }
        };
        let instance = INSTANCES[thread_rng().gen_range(0..INSTANCES.len())];
        let request = UpdateActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(reapi::Digest::from(&action)),
            action_result: Some(result),
            ..Default::default()
        };
        let answer = ac_client(channel).update_action_result(request).await;
        if !self.refused(what, &answer, &[Code::InvalidArgument]) {
            return;
        }
        if served(channel, instance, &action).await {
            self.oracle.fail(
                Invariant::BadInputAccepted,
                format!("{what} was refused, yet it is served"),
            );
        }
    }

    /// Clients that go away mid-stream: a write after a few messages, a read after its first.
    async fn vanishing(&self, channel: &Channel, tag: &str) {
        let (digest, content) = probe_blob(tag, "vanishing", 4 * PROBE_CHUNK);
        let resource = upload_name(&digest);
        let sent = thread_rng().gen_range(1..4);
        let requests: Vec<WriteRequest> = messages(&resource, &content, 0)
            .into_iter()
            .take(sent)
            .collect();
        // The stream never ends: the client is gone when the timeout drops the call.
        let stream = futures::stream::iter(requests).chain(futures::stream::once(pending()));
        let mut bytestream = bytestream_client(channel);
        let write = bytestream.write(stream);
        let waited = thread_rng().gen_range(1..200);
        let gone = tokio::time::timeout(Duration::from_millis(waited), write).await;
        // Answered before the client left: an error, or the bytes kept so far; never the whole
        // blob (it never finished).
        let committed = match gone {
            Ok(Ok(reply)) => reply.into_inner().committed_size,
            _ => 0,
        };
        if committed >= digest.size as i64 {
            self.oracle.fail(
                Invariant::HalfWrittenVisible,
                format!("an unfinished write of {digest} was acknowledged with {committed}"),
            );
        }
        // The server may park the bytes for a resume nobody makes: a temp file until it expires.
        self.oracle.upload_abandoned();
        self.oracle.event(format!(
            "{tag} vanished after {sent} write messages and {waited} ms"
        ));
        self.absent(
            channel,
            &digest,
            Invariant::HalfWrittenVisible,
            "its writer vanished",
        )
        .await;
        self.not_complete(channel, &resource, &digest, "its writer vanished")
            .await;

        // A read dropped after its first message; the server then serves the blob whole.
        let acked = self.oracle.acked_blobs(DigestFunction::Sha256);
        let Some(blob) = acked.iter().rev().find(|d| d.size > 0).copied() else {
            return;
        };
        let request = ReadRequest {
            resource_name: format!("blobs/{}/{}", blob.hex(), blob.size),
            ..Default::default()
        };
        if let Ok(reply) = bytestream.read(request).await {
            let mut stream = reply.into_inner();
            let _ = stream.message().await;
        }
        let promise = self.oracle.promise(&blob);
        match crate::world::read_whole(channel, &blob).await {
            Ok(data) => self.oracle.check_read(&self.pool, &blob, 0, &data),
            Err(status) => {
                self.status("read-after-dropped-read", &blob, &status);
                if status.code() == Code::NotFound && self.oracle.miss_breaks(&blob.hash, promise) {
                    self.oracle.fail(
                        Invariant::AcknowledgedBlobLost,
                        format!("{blob} not found after a dropped read of it"),
                    );
                }
            }
        }
    }

    /// Requests without credentials, or with a wrong token: refused with auth on (and nothing
    /// changed), served with it off.
    async fn auth_probe(&self, channel: &Channel, tag: &str) {
        let wrong_token = thread_rng().gen_bool(0.5);
        let interceptor: IdentityInterceptor = match wrong_token {
            true => with_wrong_token,
            false => Ok,
        };
        let mut cas =
            ContentAddressableStorageClient::with_interceptor(channel.clone(), interceptor);
        let mut ac = ActionCacheClient::with_interceptor(channel.clone(), interceptor);
        let who = if wrong_token {
            "a wrong token"
        } else {
            "no credentials"
        };
        let (digest, content) = probe_blob(tag, "auth", 100);
        let request = BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(reapi::Digest::from(&digest)),
                data: content,
                compressor: IDENTITY,
            }],
            ..Default::default()
        };
        let epoch = self.oracle.evictions(&digest.hash);
        let stored = cas.batch_update_blobs(request).await.map(|reply| {
            let ok = reply
                .into_inner()
                .responses
                .iter()
                .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0));
            if ok {
                self.oracle.blob_acked(digest, epoch);
            }
        });
        self.gate(&format!("BatchUpdateBlobs with {who}"), &stored);
        if self.plan.auth {
            self.absent(
                channel,
                &digest,
                Invariant::AuthGateBroken,
                &format!("a refused upload with {who}"),
            )
            .await;
        }
        let found = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![reapi::Digest::from(&digest)],
                ..Default::default()
            })
            .await;
        self.gate(&format!("FindMissingBlobs with {who}"), &found);

        let action = Digest::of(format!("auth action {tag}").as_bytes());
        let instance = INSTANCES[thread_rng().gen_range(0..INSTANCES.len())];
        let result = crate::workload::result_with_outputs("out/", &[digest]);
        // Recorded as any update is: with auth off it is an ordinary (acknowledged) store.
        let number = self
            .oracle
            .action_attempted(instance, action, result.encode_to_vec().into());
        self.oracle.action_may_be_incomplete(instance, action);
        let request = UpdateActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(reapi::Digest::from(&action)),
            action_result: Some(result),
            ..Default::default()
        };
        let answer = ac.update_action_result(request).await;
        self.oracle
            .action_answered(instance, action, number, answer.is_ok());
        self.gate(&format!("UpdateActionResult with {who}"), &answer);
        if self.plan.auth && served(channel, instance, &action).await {
            self.oracle.fail(
                Invariant::AuthGateBroken,
                format!("an UpdateActionResult refused for {who} is served"),
            );
        }
    }

    /// Checks the answer to a request made without valid credentials.
    fn gate<T>(&self, what: &str, answer: &Result<T, Status>) {
        let code = answer.as_ref().err().map(Status::code);
        self.oracle
            .event(format!("{} auth {what}: {code:?}", self.id));
        let unauthenticated = code == Some(Code::Unauthenticated);
        if self.plan.auth && !unauthenticated && !code.is_some_and(|c| TROUBLE.contains(&c)) {
            self.oracle.fail(
                Invariant::AuthGateBroken,
                format!("{what} got {code:?}, not UNAUTHENTICATED"),
            );
        }
        if !self.plan.auth && unauthenticated {
            self.oracle.fail(
                Invariant::AuthGateBroken,
                format!("{what} was refused as unauthenticated by an open server"),
            );
        }
        if let Err(status) = answer {
            self.status(what, &Digest::EMPTY, status);
        }
    }

    /// An action key clients stored looked up under another instance name: a hit must be a
    /// value stored under that name (`check_action` fails `instance-leak` otherwise).
    async fn instance_probe(&self, channel: &Channel, tag: &str) {
        let keys = self.oracle.attempted_actions();
        if keys.is_empty() {
            return;
        }
        let (stored_under, action) = &keys[thread_rng().gen_range(0..keys.len())];
        let others: Vec<&str> = INSTANCES
            .iter()
            .chain(&PATH_LIKE_INSTANCES)
            .copied()
            .filter(|i| i != stored_under)
            .collect();
        let instance = others[thread_rng().gen_range(0..others.len())];
        self.oracle.event(format!(
            "{tag} instance probe {action} of {stored_under:?} under {instance:?}"
        ));
        check_action(&self.oracle, channel, instance, action, false, tag).await;
    }
}

/// Whether GetActionResult (with credentials) serves `action` under `instance`.
async fn served(channel: &Channel, instance: &str, action: &Digest) -> bool {
    let request = GetActionResultRequest {
        instance_name: instance.to_owned(),
        action_digest: Some(reapi::Digest::from(action)),
        ..Default::default()
    };
    ac_client(channel).get_action_result(request).await.is_ok()
}

/// An interceptor sending a token the server does not accept.
fn with_wrong_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer wrong"));
    Ok(request)
}
