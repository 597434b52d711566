//! Client workloads: Bazel-shaped traffic over gRPC against the real services, checked against
//! the oracle as responses arrive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use hoard::engine::{Digest, DigestFunction};
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use hoard::proto::reapi::{
    self, batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    FindMissingBlobsRequest, GetActionResultRequest, OutputFile, UpdateActionResultRequest,
};
use hoard::wire::grpc::fastcdc::FastCdc;
use madsim::rand::{thread_rng, Rng};
use prost::Message;
use tonic::codegen::IdentityInterceptor;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::oracle::{Invariant, Oracle, Pool};
use crate::plan::Plan;

/// The server's gRPC address inside the simulated network.
pub const SERVER_GRPC: &str = "http://10.0.0.1:9092";

/// Instance names clients use (AC entries are per instance).
pub const INSTANCES: [&str; 3] = ["", "main", "ci/linux"];

/// Share of uploads, ByteStream reads and batch calls that use zstd (`compressed-blobs/zstd`,
/// compressed batch items, `acceptable_compressors`).
const ZSTD_SHARE: f64 = 0.25;

/// `Compressor.Value` numbers.
pub const IDENTITY: i32 = 0;
const ZSTD: i32 = 1;

/// Share of rounds that also run the BLAKE3 and chunking round (`blake3_chunked`).
const BLAKE3_SHARE: f64 = 0.15;

/// Share of rounds that also run one coverage round (`sim/coverage.rs`): trees, bad input,
/// vanishing clients, auth and instance probes.
const COVERAGE_SHARE: f64 = 0.2;

/// `DigestFunction.Value` of BLAKE3.
pub const BLAKE3: i32 = 9;

/// How many distinct action keys exist (small, so updates of one key race and overwrite).
pub const ACTION_KEYS: u64 = 24;

/// A simulated client: one node's worth of traffic.
pub struct Client {
    /// Client number (in the trace).
    pub id: usize,
    /// Shared expectations.
    pub oracle: Arc<Oracle>,
    /// Shared blob contents.
    pub pool: Arc<Pool>,
    /// The seed's plan.
    pub plan: Plan,
}

/// Whether an error message tells of a full disk (the engine's `NoSpace`, or ENOSPC passed up).
pub fn is_full_disk(message: &str) -> bool {
    message.contains("disk full") || message.contains("No space left")
}

/// An `ActionResult` naming `outputs` as its output files, at `{prefix}{i}`.
pub fn result_with_outputs(prefix: &str, outputs: &[Digest]) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, d)| reapi::OutputFile {
                path: format!("{prefix}{i}"),
                digest: Some(reapi::Digest::from(d)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The bearer token of seeds whose server requires credentials ([`Plan::auth`]). Every client
/// sends it: an open server ignores it, and only the auth probes (`sim/coverage.rs`) go without.
pub const TOKEN: &str = "sim-token";

/// The interceptor of every gRPC client the workload builds: adds the token. An
/// `IdentityInterceptor` (a plain function), so clients keep the type `new` gives them.
const CREDENTIALS: IdentityInterceptor = with_token;

fn with_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    let bearer = MetadataValue::try_from(format!("Bearer {TOKEN}")).expect("ASCII");
    request.metadata_mut().insert("authorization", bearer);
    Ok(request)
}

/// A CAS client carrying the seed's credentials.
pub fn cas_client(channel: &Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::with_interceptor(channel.clone(), CREDENTIALS)
}

/// A ByteStream client carrying the seed's credentials.
pub fn bytestream_client(channel: &Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::with_interceptor(channel.clone(), CREDENTIALS)
}

/// An ActionCache client carrying the seed's credentials.
pub fn ac_client(channel: &Channel) -> ActionCacheClient<Channel> {
    ActionCacheClient::with_interceptor(channel.clone(), CREDENTIALS)
}

/// Connects to the server, retrying while it is down (it may be mid-crash), for at most
/// `attempts` tries 200 ms apart.
pub async fn connect(attempts: usize) -> Option<Channel> {
    for _ in 0..attempts {
        let endpoint = Endpoint::from_static(SERVER_GRPC).timeout(Duration::from_secs(120));
        if let Ok(channel) = endpoint.connect().await {
            return Some(channel);
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// `data` as one zstd frame (what a compressing client sends).
pub fn zstd_frame(data: &[u8]) -> Bytes {
    Bytes::from(zstd::bulk::compress(data, 1).expect("zstd compresses"))
}

/// The action-cache key `n`.
pub fn action_key(n: u64) -> Digest {
    Digest::of(format!("action {n}").as_bytes())
}

impl Client {
    /// Runs the plan's rounds of mixed operations.
    pub async fn run(self) {
        for round in 0..self.plan.rounds {
            // A server that stays down (a disk too broken to recover) costs rounds, not a hang.
            let Some(channel) = connect(50).await else {
                self.oracle
                    .event(format!("c{} r{round} server unreachable", self.id));
                continue;
            };
            let op = thread_rng().gen_range(0..100);
            let tag = format!("c{} r{round}", self.id);
            match op {
                0..=39 => self.upload_burst(&channel, &tag).await,
                40..=49 => self.batch_update(&channel, &tag).await,
                50..=64 => self.reads(&channel, &tag).await,
                65..=72 => self.find_missing(&channel, &tag).await,
                73..=86 => self.update_action(&channel, &tag).await,
                87..=94 => self.get_actions(&channel, &tag).await,
                _ => self.bad_upload(&channel, &tag).await,
            }
            if thread_rng().gen_bool(BLAKE3_SHARE) {
                self.blake3_chunked(&channel, &tag).await;
            }
            if thread_rng().gen_bool(COVERAGE_SHARE) {
                self.coverage(&channel, &tag).await;
            }
        }
    }

    /// Records a status in the trace and checks that it is never INTERNAL, and that a full
    /// disk is RESOURCE_EXHAUSTED.
    pub(crate) fn status(&self, op: &str, digest: &Digest, status: &Status) {
        self.oracle
            .event(format!("{} {op} {digest} {:?}", self.id, status.code()));
        if status.code() == Code::Internal {
            self.oracle.fail(
                Invariant::InternalOnRequest,
                format!("{op} of {digest}: {}", status.message()),
            );
        }
        if is_full_disk(status.message()) && status.code() != Code::ResourceExhausted {
            self.oracle.fail(
                Invariant::FullDiskNotResourceExhausted,
                format!("{op} of {digest}: {:?} {}", status.code(), status.message()),
            );
        }
    }

    pub(crate) fn pick_blob(&self) -> (Digest, Bytes) {
        let i = thread_rng().gen_range(0..self.pool.blobs.len());
        (self.pool.digests[i], self.pool.blobs[i].clone())
    }

    /// Many concurrent multi-chunk ByteStream writes, the shape of a build script's OUT_DIR.
    async fn upload_burst(&self, channel: &Channel, tag: &str) {
        let count = thread_rng().gen_range(1..=self.plan.burst_max);
        let uploads = (0..count).map(|_| {
            let (digest, content) = self.pick_blob();
            self.upload(channel.clone(), digest, content)
        });
        join_all(uploads).await;
        self.oracle.event(format!("{tag} burst of {count} done"));
    }

    /// One ByteStream upload; once acknowledged, sometimes asks at once whether the blob is
    /// there (it must be: an acknowledgement means indexed).
    async fn upload(&self, channel: Channel, digest: Digest, content: Bytes) {
        let epoch = self.oracle.evictions(&digest.hash);
        let committed = if thread_rng().gen_bool(ZSTD_SHARE) {
            self.write_blob_zstd(&channel, digest, content).await
        } else {
            self.write_blob(&channel, digest, content).await
        };
        let Some(committed) = committed else { return };
        self.oracle
            .event(format!("{} write {digest} ok {committed}", self.id));
        if committed != digest.size as i64 {
            self.oracle.fail(
                Invariant::ReadHashesToDigest,
                format!("write of {digest} acknowledged with committed_size {committed}"),
            );
            return;
        }
        self.oracle.blob_acked(digest, epoch);
        if thread_rng().gen_bool(0.3) {
            let promise = self.oracle.promise(&digest);
            let request = FindMissingBlobsRequest {
                blob_digests: vec![reapi::Digest::from(&digest)],
                ..Default::default()
            };
            let mut cas = cas_client(&channel);
            match cas.find_missing_blobs(request).await {
                Ok(r)
                    if !r.get_ref().missing_blob_digests.is_empty()
                        && self.oracle.miss_breaks(&digest.hash, promise) =>
                {
                    self.oracle.fail(
                        Invariant::FindMissingLies,
                        format!("{digest} reported missing right after its write was acknowledged"),
                    )
                }
                Ok(_) => {}
                Err(status) => self.status("recheck", &digest, &status),
            }
        }
    }

    /// A ByteStream write, possibly broken midway and then resumed or abandoned. Returns the
    /// committed size of an acknowledged write.
    async fn write_blob(&self, channel: &Channel, digest: Digest, content: Bytes) -> Option<i64> {
        let (instance, uuid, break_after, resume) = {
            let mut rng = thread_rng();
            let chunks = content.len().div_ceil(self.plan.chunk).max(1);
            let breaks = chunks > 1 && rng.gen_bool(self.plan.break_prob);
            (
                INSTANCES[rng.gen_range(0..INSTANCES.len())],
                rng.gen::<u64>(),
                breaks.then(|| rng.gen_range(1..chunks)),
                rng.gen_bool(0.7),
            )
        };
        let resource = format!(
            "{instance}{}uploads/{uuid:016x}/blobs/{}/{}",
            if instance.is_empty() { "" } else { "/" },
            digest.hex(),
            digest.size
        );
        let mut client = bytestream_client(channel);
        let mut offset = 0u64;
        if let Some(chunks) = break_after {
            let sent = self.write_chunks(&content, &resource, 0, Some(chunks));
            // The whole size means the blob already existed and the server completed the write
            // early; less reports the partial upload it keeps for a resume.
            let early = digest.size as i64;
            if let Some(done) = self
                .broken_write(&mut client, sent, digest, early, "")
                .await
            {
                return Some(done);
            }
            offset = match self
                .resume_point(&mut client, &resource, digest, resume)
                .await
            {
                Ok(offset) => offset,
                Err(done) => return done,
            };
        }
        let requests = self.write_chunks(&content, &resource, offset, None);
        match client.write(futures::stream::iter(requests)).await {
            Ok(response) => Some(response.into_inner().committed_size),
            Err(status) => {
                self.status("write", &digest, &status);
                None
            }
        }
    }

    /// A ByteStream write of the blob zstd-compressed, possibly broken midway and then resumed
    /// with a fresh zstd stream from the uncompressed offset the server kept (REAPI: the first
    /// `write_offset` is uncompressed, later ones add the compressed bytes sent). Returns the
    /// blob's size once acknowledged, after checking the compressed `committed_size`: -1 for an
    /// early completion, else the first offset plus the compressed bytes.
    async fn write_blob_zstd(
        &self,
        channel: &Channel,
        digest: Digest,
        content: Bytes,
    ) -> Option<i64> {
        let compressed = zstd_frame(&content);
        let (uuid, break_after, resume) = {
            let mut rng = thread_rng();
            let chunks = compressed.len().div_ceil(self.plan.chunk).max(1);
            let breaks = chunks > 1 && rng.gen_bool(self.plan.break_prob);
            (
                rng.gen::<u64>(),
                breaks.then(|| rng.gen_range(1..chunks)),
                rng.gen_bool(0.7),
            )
        };
        let resource = format!(
            "uploads/{uuid:016x}/compressed-blobs/zstd/{}/{}",
            digest.hex(),
            digest.size
        );
        let zstd_chunks = |stream: &Bytes, start: u64, limit: Option<usize>| {
            let mut requests = self.write_chunks(stream, &resource, 0, limit);
            for request in &mut requests {
                request.write_offset += start as i64;
            }
            requests
        };
        let mut client = bytestream_client(channel);
        let mut offset = 0u64;
        if let Some(chunks) = break_after {
            let sent = zstd_chunks(&compressed, 0, Some(chunks));
            // A compressed write completed early (the blob existed) answers -1.
            if self
                .broken_write(&mut client, sent, digest, -1, "zstd-")
                .await
                .is_some()
            {
                return Some(digest.size as i64);
            }
            // Uncompressed bytes kept: where the new zstd stream starts.
            offset = match self
                .resume_point(&mut client, &resource, digest, resume)
                .await
            {
                Ok(offset) => offset,
                Err(done) => return done,
            };
        }
        let rest = if offset == 0 {
            compressed
        } else {
            zstd_frame(&content[offset as usize..])
        };
        let requests = zstd_chunks(&rest, offset, None);
        match client.write(futures::stream::iter(requests)).await {
            Ok(response) => {
                let committed = response.into_inner().committed_size;
                let end = (offset + rest.len() as u64) as i64;
                if committed == -1 || committed == end {
                    return Some(digest.size as i64);
                }
                self.oracle.fail(
                    Invariant::ReadHashesToDigest,
                    format!(
                        "zstd write of {digest} from {offset} acknowledged with committed_size \
                         {committed}, not -1 or {end}"
                    ),
                );
                None
            }
            Err(status) => {
                self.status("zstd-write", &digest, &status);
                None
            }
        }
    }

    /// Sends the first chunks of a write and stops without `finish_write`, as a broken client
    /// does. Returns the committed size when the server answered `early` (it completed the
    /// write at once because the blob already existed); `None` when it kept a partial upload.
    async fn broken_write(
        &self,
        client: &mut ByteStreamClient<Channel>,
        sent: Vec<WriteRequest>,
        digest: Digest,
        early: i64,
        label: &str,
    ) -> Option<i64> {
        match client.write(futures::stream::iter(sent)).await {
            Ok(response) => {
                let committed = response.into_inner().committed_size;
                if committed == early {
                    return Some(committed);
                }
                self.oracle.event(format!(
                    "{} broken-{label}write {digest} kept {committed}",
                    self.id
                ));
            }
            Err(status) => self.status(&format!("broken-{label}write"), &digest, &status),
        }
        None
    }

    /// After a broken write: where to resume, from QueryWriteStatus (0 when the server lost the
    /// partial upload). `Err` ends the upload: `Some(committed)` when the blob is complete after
    /// all, `None` when it is abandoned (`resume` false) or the server's answer is impossible.
    async fn resume_point(
        &self,
        client: &mut ByteStreamClient<Channel>,
        resource: &str,
        digest: Digest,
        resume: bool,
    ) -> Result<u64, Option<i64>> {
        if !resume {
            self.oracle.upload_abandoned();
            return Err(None);
        }
        let query = QueryWriteStatusRequest {
            resource_name: resource.to_owned(),
        };
        match client.query_write_status(query).await {
            Ok(status) => {
                let status = status.into_inner();
                if status.complete {
                    return Err(Some(status.committed_size));
                }
                let offset = status.committed_size.max(0) as u64;
                if offset > digest.size {
                    self.oracle.fail(
                        Invariant::ReadHashesToDigest,
                        format!("QueryWriteStatus of {digest} reports {offset} bytes committed"),
                    );
                    return Err(None);
                }
                Ok(offset)
            }
            // The partial upload is gone (a crash, say): start over.
            Err(status) => {
                self.status("query-write-status", &digest, &status);
                Ok(0)
            }
        }
    }

    /// The write requests for `content` from `offset`, all of them or only `limit` chunks.
    pub(crate) fn write_chunks(
        &self,
        content: &Bytes,
        resource: &str,
        offset: u64,
        limit: Option<usize>,
    ) -> Vec<WriteRequest> {
        let mut requests = Vec::new();
        let mut at = offset as usize;
        loop {
            let end = (at + self.plan.chunk).min(content.len());
            let last = end == content.len();
            requests.push(WriteRequest {
                resource_name: if requests.is_empty() {
                    resource.to_owned()
                } else {
                    String::new()
                },
                write_offset: at as i64,
                finish_write: last && limit.is_none(),
                data: content.slice(at..end),
            });
            at = end;
            if last || limit.is_some_and(|l| requests.len() >= l) {
                return requests;
            }
        }
    }

    /// A BatchUpdateBlobs of small blobs, sometimes with one corrupt item.
    async fn batch_update(&self, channel: &Channel, tag: &str) {
        let mut items: Vec<(Digest, Bytes)> = Vec::new();
        let mut total = 0;
        let corrupt_at = thread_rng()
            .gen_bool(0.3)
            .then(|| thread_rng().gen_range(0..8));
        for i in 0..thread_rng().gen_range(1..=8) {
            let (digest, content) = self.pick_blob();
            // Distinct digests, so each response names exactly one item.
            if total + content.len() > (2 << 20) || items.iter().any(|(d, _)| *d == digest) {
                continue;
            }
            total += content.len();
            let data = if corrupt_at == Some(i) && !content.is_empty() {
                let mut bad = content.to_vec();
                bad[0] ^= 1;
                Bytes::from(bad)
            } else {
                content
            };
            items.push((digest, data));
        }
        let zstd = thread_rng().gen_bool(ZSTD_SHARE);
        let request = BatchUpdateBlobsRequest {
            requests: items
                .iter()
                .map(|(digest, data)| batch_update_blobs_request::Request {
                    digest: Some(reapi::Digest::from(digest)),
                    data: if zstd { zstd_frame(data) } else { data.clone() },
                    compressor: if zstd { ZSTD } else { IDENTITY },
                })
                .collect(),
            ..Default::default()
        };
        let mut client = cas_client(channel);
        let epochs: Vec<u64> = items
            .iter()
            .map(|(d, _)| self.oracle.evictions(&d.hash))
            .collect();
        let response = match client.batch_update_blobs(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return self.status("batch-update", &Digest::EMPTY, &status),
        };
        for (i, (digest, data)) in items.iter().enumerate() {
            let code = response
                .responses
                .iter()
                .find(|r| r.digest.as_ref() == Some(&reapi::Digest::from(digest)))
                .and_then(|r| r.status.as_ref())
                .map_or(-1, |s| s.code);
            self.oracle
                .event(format!("{tag} batch item {i} {digest} code {code}"));
            let corrupt = Digest::of(data) != *digest;
            match (code, corrupt) {
                (0, false) => self.oracle.blob_acked(*digest, epochs[i]),
                (0, true) => self.oracle.fail(
                    Invariant::BadInputAccepted,
                    format!("BatchUpdateBlobs stored corrupt bytes for {digest}"),
                ),
                (13, _) => self.oracle.fail(
                    Invariant::InternalOnRequest,
                    format!("BatchUpdateBlobs item {digest} got INTERNAL"),
                ),
                _ => {}
            }
        }
    }

    /// ByteStream reads at random offsets, and one BatchReadBlobs, checked byte for byte.
    async fn reads(&self, channel: &Channel, tag: &str) {
        let acked = self.oracle.acked_blobs(DigestFunction::Sha256);
        let mut client = bytestream_client(channel);
        for _ in 0..thread_rng().gen_range(1..=6) {
            let digest = if acked.is_empty() || thread_rng().gen_bool(0.2) {
                self.pick_blob().0
            } else {
                acked[thread_rng().gen_range(0..acked.len())]
            };
            let (offset, limit) = {
                let mut rng = thread_rng();
                let offset = if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(0..=digest.size)
                };
                let limit = if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(0..=digest.size)
                };
                (offset, limit)
            };
            let promise = self.oracle.promise(&digest);
            if thread_rng().gen_bool(ZSTD_SHARE) {
                self.read_zstd(&mut client, digest, offset, promise, tag)
                    .await;
                continue;
            }
            let request = ReadRequest {
                resource_name: format!("blobs/{}/{}", digest.hex(), digest.size),
                read_offset: offset as i64,
                read_limit: limit as i64,
            };
            let result = async {
                let mut stream = client.read(request).await?.into_inner();
                let mut data = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    data.extend_from_slice(&chunk.data);
                }
                Ok::<_, Status>(data)
            }
            .await;
            match result {
                Ok(data) => {
                    self.oracle
                        .event(format!("{tag} read {digest} @{offset} got {}", data.len()));
                    let want = if limit == 0 {
                        digest.size - offset
                    } else {
                        limit.min(digest.size - offset)
                    };
                    if data.len() as u64 != want {
                        self.oracle.fail(
                            Invariant::ReadHashesToDigest,
                            format!(
                                "read of {digest} at {offset} limit {limit} gave {} bytes",
                                data.len()
                            ),
                        );
                    }
                    let ranged = offset > 0 || (limit != 0 && limit < digest.size);
                    if !ranged || !self.oracle.damaged_ever(&digest.hash) {
                        self.oracle.check_read(&self.pool, &digest, offset, &data);
                    }
                }
                Err(status) => {
                    self.status("read", &digest, &status);
                    if status.code() == Code::NotFound
                        && self.oracle.miss_breaks(&digest.hash, promise)
                    {
                        self.oracle.fail(
                            Invariant::AcknowledgedBlobLost,
                            format!("read of acknowledged {digest}: {}", status.message()),
                        );
                    }
                }
            }
        }
        self.batch_read(channel, &acked, tag).await;
    }

    /// A `compressed-blobs/zstd` read from the uncompressed `offset`, decompressed and checked
    /// byte for byte; now and then with a `read_limit`, which the REAPI says must be refused.
    async fn read_zstd(
        &self,
        client: &mut ByteStreamClient<Channel>,
        digest: Digest,
        offset: u64,
        promise: Option<u64>,
        tag: &str,
    ) {
        let limit = if thread_rng().gen_bool(0.1) { 1 } else { 0 };
        let request = ReadRequest {
            resource_name: format!("compressed-blobs/zstd/{}/{}", digest.hex(), digest.size),
            read_offset: offset as i64,
            read_limit: limit,
        };
        let result = async {
            let mut stream = client.read(request).await?.into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await? {
                data.extend_from_slice(&chunk.data);
            }
            Ok::<_, Status>(data)
        }
        .await;
        match result {
            Ok(_) if limit != 0 => self.oracle.fail(
                Invariant::BadInputAccepted,
                format!("a compressed read of {digest} with read_limit {limit} was served"),
            ),
            Ok(compressed) => {
                let Ok(data) = zstd::stream::decode_all(&compressed[..]) else {
                    return self.oracle.fail(
                        Invariant::ReadHashesToDigest,
                        format!(
                            "compressed read of {digest} at {offset} is not a valid zstd stream"
                        ),
                    );
                };
                self.oracle.event(format!(
                    "{tag} zstd-read {digest} @{offset} got {} ({} compressed)",
                    data.len(),
                    compressed.len()
                ));
                if data.len() as u64 != digest.size - offset {
                    self.oracle.fail(
                        Invariant::ReadHashesToDigest,
                        format!(
                            "compressed read of {digest} at {offset} gave {} bytes",
                            data.len()
                        ),
                    );
                }
                if offset == 0 || !self.oracle.damaged_ever(&digest.hash) {
                    self.oracle.check_read(&self.pool, &digest, offset, &data);
                }
            }
            Err(status) => {
                self.status("zstd-read", &digest, &status);
                if status.code() == Code::NotFound
                    && limit == 0
                    && self.oracle.miss_breaks(&digest.hash, promise)
                {
                    self.oracle.fail(
                        Invariant::AcknowledgedBlobLost,
                        format!(
                            "compressed read of acknowledged {digest}: {}",
                            status.message()
                        ),
                    );
                }
            }
        }
    }

    async fn batch_read(&self, channel: &Channel, acked: &[Digest], tag: &str) {
        let digests: Vec<Digest> = acked
            .iter()
            .filter(|d| d.size < 256 << 10)
            .take(thread_rng().gen_range(1..=10))
            .copied()
            .collect();
        if digests.is_empty() {
            return;
        }
        let promises: Vec<Option<u64>> = digests.iter().map(|d| self.oracle.promise(d)).collect();
        let acceptable_compressors = if thread_rng().gen_bool(ZSTD_SHARE) {
            vec![ZSTD]
        } else {
            Vec::new()
        };
        let zstd_ok = !acceptable_compressors.is_empty();
        let request = BatchReadBlobsRequest {
            digests: digests.iter().map(reapi::Digest::from).collect(),
            acceptable_compressors,
            ..Default::default()
        };
        let mut client = cas_client(channel);
        let response = match client.batch_read_blobs(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return self.status("batch-read", &Digest::EMPTY, &status),
        };
        for item in response.responses {
            let Some(digest) = item
                .digest
                .as_ref()
                .and_then(|d| Digest::parse(&d.hash, d.size_bytes).ok())
            else {
                self.oracle.fail(
                    Invariant::ReadHashesToDigest,
                    "BatchReadBlobs answered a malformed digest",
                );
                continue;
            };
            let code = item.status.map_or(-1, |s| s.code);
            self.oracle
                .event(format!("{tag} batch-read {digest} code {code}"));
            match code {
                0 if item.compressor == ZSTD && zstd_ok => {
                    match zstd::stream::decode_all(&item.data[..]) {
                        Ok(data) => self.oracle.check_read(&self.pool, &digest, 0, &data),
                        Err(_) => self.oracle.fail(
                            Invariant::ReadHashesToDigest,
                            format!("BatchReadBlobs: {digest} is not a valid zstd frame"),
                        ),
                    }
                }
                0 if item.compressor != IDENTITY => self.oracle.fail(
                    Invariant::ReadHashesToDigest,
                    format!(
                        "BatchReadBlobs: {digest} came with compressor {} it was not asked for",
                        item.compressor
                    ),
                ),
                0 => self.oracle.check_read(&self.pool, &digest, 0, &item.data),
                5 if digests
                    .iter()
                    .zip(&promises)
                    .any(|(d, p)| *d == digest && self.oracle.miss_breaks(&d.hash, *p)) =>
                {
                    self.oracle.fail(
                        Invariant::AcknowledgedBlobLost,
                        format!("BatchReadBlobs: acknowledged {digest} not found"),
                    )
                }
                13 => self.oracle.fail(
                    Invariant::InternalOnRequest,
                    format!("BatchReadBlobs {digest}"),
                ),
                _ => {}
            }
        }
    }

    /// FindMissingBlobs over a mix of acknowledged and unknown digests.
    async fn find_missing(&self, channel: &Channel, tag: &str) {
        let mut digests: Vec<Digest> = (0..thread_rng().gen_range(1..=50))
            .map(|_| self.pick_blob().0)
            .collect();
        digests.push(Digest::of(format!("never uploaded {tag}").as_bytes()));
        let promises: Vec<Option<u64>> = digests.iter().map(|d| self.oracle.promise(d)).collect();
        let epochs: Vec<u64> = digests
            .iter()
            .map(|d| self.oracle.evictions(&d.hash))
            .collect();
        let request = FindMissingBlobsRequest {
            blob_digests: digests.iter().map(reapi::Digest::from).collect(),
            ..Default::default()
        };
        let mut client = cas_client(channel);
        match client.find_missing_blobs(request).await {
            Ok(response) => {
                let missing = response.into_inner().missing_blob_digests;
                self.oracle.event(format!(
                    "{tag} find-missing {} of {}",
                    missing.len(),
                    digests.len()
                ));
                for ((digest, promise), epoch) in digests.iter().zip(promises).zip(epochs) {
                    if !missing.contains(&reapi::Digest::from(digest)) {
                        // "Present" is a promise Bazel builds on (it references the blob without
                        // uploading it): from now on it holds like an acknowledged upload.
                        self.oracle.blob_acked(*digest, epoch);
                    } else if self.oracle.miss_breaks(&digest.hash, promise) {
                        self.oracle.fail(
                            Invariant::FindMissingLies,
                            format!("acknowledged {digest} reported missing"),
                        );
                    }
                }
            }
            Err(status) => self.status("find-missing", &Digest::EMPTY, &status),
        }
    }

    /// UpdateActionResult naming acknowledged blobs as outputs (Bazel uploads outputs first).
    async fn update_action(&self, channel: &Channel, tag: &str) {
        let acked = self.oracle.acked_blobs(DigestFunction::Sha256);
        if acked.is_empty() {
            return;
        }
        let (instance, action, outputs, exit_code) = {
            let mut rng = thread_rng();
            let outputs: Vec<Digest> = (0..rng.gen_range(1..=4))
                .map(|_| acked[rng.gen_range(0..acked.len())])
                .collect();
            (
                INSTANCES[rng.gen_range(0..INSTANCES.len())],
                action_key(rng.gen_range(0..ACTION_KEYS)),
                outputs,
                rng.gen_range(0..3),
            )
        };
        let result = ActionResult {
            output_files: outputs
                .iter()
                .enumerate()
                .map(|(i, d)| OutputFile {
                    path: format!("out/{i}"),
                    digest: Some(reapi::Digest::from(d)),
                    ..Default::default()
                })
                .collect(),
            exit_code,
            stdout_digest: Some(reapi::Digest::from(&outputs[0])),
            // Bazel names an empty stderr by the empty blob's digest, which is never stored.
            stderr_digest: thread_rng()
                .gen_bool(0.5)
                .then(|| reapi::Digest::from(&Digest::EMPTY)),
            ..Default::default()
        };
        self.store_action(channel, tag, instance, action, result)
            .await;
    }

    /// UpdateActionResult of `result` for `action` in `instance`, recorded in the oracle (the
    /// caller marks a result whose blobs it did not all store with `action_may_be_incomplete`).
    /// Whether it was acknowledged.
    pub(crate) async fn store_action(
        &self,
        channel: &Channel,
        tag: &str,
        instance: &str,
        action: Digest,
        result: ActionResult,
    ) -> bool {
        let number = self
            .oracle
            .action_attempted(instance, action, result.encode_to_vec().into());
        let request = UpdateActionResultRequest {
            instance_name: instance.to_owned(),
            action_digest: Some(reapi::Digest::from(&action)),
            action_result: Some(result),
            ..Default::default()
        };
        let mut client = ac_client(channel);
        let epoch = self.oracle.evictions(&action.hash);
        let answer = client.update_action_result(request).await;
        self.oracle
            .action_answered(instance, action, number, answer.is_ok());
        match answer {
            Ok(_) => {
                self.oracle
                    .event(format!("{tag} update-action {instance:?} {action} ok"));
                self.oracle.action_acked(instance, action, epoch);
                true
            }
            Err(status) => {
                self.status("update-action", &action, &status);
                false
            }
        }
    }

    /// GetActionResult of stored keys: a hit must be a stored value whose blobs all exist.
    async fn get_actions(&self, channel: &Channel, tag: &str) {
        let keys = self.oracle.attempted_actions();
        for _ in 0..thread_rng().gen_range(1..=4) {
            if keys.is_empty() {
                return;
            }
            let (instance, action) = keys[thread_rng().gen_range(0..keys.len())].clone();
            check_action(&self.oracle, channel, &instance, &action, false, tag).await;
        }
    }

    /// An upload whose bytes do not match its digest must be refused and leave nothing.
    async fn bad_upload(&self, channel: &Channel, tag: &str) {
        let (_, content) = self.pick_blob();
        let wrong = Digest::sha256(
            Digest::of(format!("wrong {tag}").as_bytes()).hash,
            content.len() as u64,
        );
        let resource = format!(
            "uploads/{:016x}/blobs/{}/{}",
            thread_rng().gen::<u64>(),
            wrong.hex(),
            wrong.size
        );
        let requests = self.write_chunks(&content, &resource, 0, None);
        let mut client = bytestream_client(channel);
        match client.write(futures::stream::iter(requests)).await {
            Ok(_) => self.oracle.fail(
                Invariant::BadInputAccepted,
                format!("a write of other bytes under {wrong} was acknowledged"),
            ),
            Err(status) => {
                self.status("bad-write", &wrong, &status);
                let mut cas = cas_client(channel);
                let request = FindMissingBlobsRequest {
                    blob_digests: vec![reapi::Digest::from(&wrong)],
                    ..Default::default()
                };
                if let Ok(r) = cas.find_missing_blobs(request).await {
                    if r.into_inner().missing_blob_digests.is_empty() {
                        self.oracle.fail(
                            Invariant::BadInputAccepted,
                            format!("a refused write stored {wrong} all the same"),
                        );
                    }
                }
                let expected = [
                    Code::InvalidArgument,
                    Code::Unavailable,
                    Code::ResourceExhausted,
                    Code::Unknown,
                ];
                if !expected.contains(&status.code()) {
                    self.oracle.fail(
                        Invariant::BadInputAccepted,
                        format!(
                            "a mismatched write got {:?}: {}",
                            status.code(),
                            status.message()
                        ),
                    );
                }
            }
        }
    }
}

/// Fetches an action result and checks it against the oracle. `must_hit` when the key was
/// acknowledged and nothing since could have removed it.
pub async fn check_action(
    oracle: &Oracle,
    channel: &Channel,
    instance: &str,
    action: &Digest,
    must_hit: bool,
    tag: &str,
) {
    let mut client = ac_client(channel);
    let evictions_before = oracle.total_evictions();
    let request = GetActionResultRequest {
        instance_name: instance.to_owned(),
        action_digest: Some(reapi::Digest::from(action)),
        ..Default::default()
    };
    let result = match client.get_action_result(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            oracle.event(format!(
                "{tag} get-action {instance:?} {action} {:?}",
                status.code()
            ));
            if status.code() == Code::Internal {
                oracle.fail(
                    Invariant::InternalOnRequest,
                    format!("GetActionResult: {}", status.message()),
                );
            }
            if must_hit
                && status.code() == Code::NotFound
                && !oracle.action_outputs_evicted(instance, action)
            {
                oracle.fail(
                    Invariant::AcknowledgedActionLost,
                    format!("acknowledged action {action} in {instance:?} not found"),
                );
            }
            return;
        }
    };
    oracle.event(format!("{tag} get-action {instance:?} {action} hit"));
    let value = result.encode_to_vec();
    if !oracle.action_value_known(instance, action, &value)
        && oracle.action_value_elsewhere(instance, action, &value)
    {
        oracle.fail(
            Invariant::InstanceLeak,
            format!(
                "action {action} in {instance:?} returned a value stored under another instance"
            ),
        );
    } else if !oracle.action_value_known(instance, action, &value) {
        oracle.fail(
            Invariant::AcReturnsUnknownValue,
            format!("action {action} in {instance:?} returned a value nobody stored"),
        );
    } else if must_hit && !oracle.action_value_current(instance, action, &value) {
        oracle.fail(
            Invariant::StaleActionValue,
            format!("action {action} in {instance:?} holds a value a later acknowledged update replaced"),
        );
    }
    // Named blobs and the files inside named trees: a hit must be downloadable whole. The empty
    // blob is never stored (the server has it implicitly), so it is left out.
    let referenced: Vec<reapi::Digest> = oracle
        .referenced(&result)
        .iter()
        .filter(|d| !d.is_empty())
        .map(reapi::Digest::from)
        .collect();
    let mut cas = cas_client(channel);
    let request = FindMissingBlobsRequest {
        blob_digests: referenced,
        ..Default::default()
    };
    if let Ok(response) = cas.find_missing_blobs(request).await {
        if oracle.total_evictions() != evictions_before {
            // Something was evicted meanwhile: a missing output may be its victim.
            return;
        }
        for missing in response.into_inner().missing_blob_digests {
            let damaged = hoard::engine::parse_hash(&missing.hash)
                .is_ok_and(|hash| oracle.damaged_ever(&hash));
            if damaged {
                continue; // the disk spoiled it; the engine found out after the hit
            }
            oracle.fail(
                Invariant::AcHitReferencesMissingBlob,
                format!(
                    "action {action} in {instance:?} names missing {}/{}",
                    missing.hash, missing.size_bytes
                ),
            );
        }
    }
}

/// BLAKE3 and chunked uploads (SpliceBlob, SplitBlob), checked against the same rules as the
/// SHA-256 traffic: an acknowledged blob is present and reads back exactly unless an eviction of
/// it was logged, a rejected splice stores nothing, and the two functions never share a blob.
/// These blobs are checked here rather than by the final audit (which reads SHA-256 names).
impl Client {
    async fn blake3_chunked(&self, channel: &Channel, tag: &str) {
        let (_, content) = self.pick_blob();
        let digest = Digest::of_with(DigestFunction::Blake3, &content);
        let epoch = self.oracle.evictions(&digest.hash);
        let chunker = FastCdc::from_average(1024, thread_rng().gen());
        let mut at = 0;
        let mut chunks = Vec::new();
        for len in chunker.chunks(&content) {
            let chunk = content.slice(at..at + len);
            chunks.push((Digest::of_with(DigestFunction::Blake3, &chunk), chunk));
            at += len;
        }
        let mut cas = cas_client(channel);
        // Upload all chunks but, sometimes, one: the splice must then be NOT_FOUND.
        let withheld = (chunks.len() > 1 && thread_rng().gen_bool(0.2))
            .then(|| thread_rng().gen_range(0..chunks.len()));
        let epochs: Vec<u64> = chunks
            .iter()
            .map(|(d, _)| self.oracle.evictions(&d.hash))
            .collect();
        let request = BatchUpdateBlobsRequest {
            requests: chunks
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != withheld)
                .map(|(_, (d, data))| batch_update_blobs_request::Request {
                    digest: Some(reapi::Digest::from(d)),
                    data: data.clone(),
                    compressor: IDENTITY,
                })
                .collect(),
            digest_function: BLAKE3,
            ..Default::default()
        };
        let stored = match cas.batch_update_blobs(request).await {
            Ok(reply) => reply.into_inner().responses,
            Err(status) => return self.status("blake3-chunks", &digest, &status),
        };
        // Acknowledged chunks are held to the final audit like any blob.
        for item in stored {
            let acked = (item.status.as_ref().map_or(0, |s| s.code) == 0)
                .then(|| {
                    chunks
                        .iter()
                        .position(|(d, _)| Some(&reapi::Digest::from(d)) == item.digest.as_ref())
                })
                .flatten();
            if let Some(i) = acked {
                self.oracle.blob_acked(chunks[i].0, epochs[i]);
            }
        }
        // Sometimes claim the wrong blob: the splice must be refused and store nothing.
        let claimed = if thread_rng().gen_bool(0.2) {
            let mut other = content.to_vec();
            other.push(1);
            Digest::new(
                DigestFunction::Blake3,
                Digest::of_with(DigestFunction::Blake3, &other).hash,
                digest.size,
            )
        } else {
            digest
        };
        let splice = reapi::SpliceBlobRequest {
            blob_digest: Some(reapi::Digest::from(&claimed)),
            chunk_digests: chunks.iter().map(|(d, _)| reapi::Digest::from(d)).collect(),
            digest_function: BLAKE3,
            ..Default::default()
        };
        // A withheld chunk another upload stored may be evicted again before it is looked up.
        let withheld_epoch = withheld.map(|i| self.oracle.evictions(&chunks[i].0.hash));
        if claimed == digest && withheld.is_none() {
            self.oracle.full_splice_sent(&digest.hash);
        }
        let spliced = cas.splice_blob(splice).await;
        self.oracle.event(format!(
            "{tag} splice {claimed} of {} chunks: {:?}",
            chunks.len(),
            spliced.as_ref().map(|_| ()).map_err(|s| s.code())
        ));
        let bad = claimed != digest || withheld.is_some();
        if let Err(status) = &spliced {
            self.status("splice", &claimed, status);
            // INVALID_ARGUMENT means the chunks do not make the blob (REAPI); a missing chunk
            // is NOT_FOUND. Only a blob over the size limit may also be refused so.
            let over_limit = status.message().contains("larger than the limit");
            if status.code() == Code::InvalidArgument && claimed == digest && !over_limit {
                self.oracle.fail(
                    Invariant::SpliceAnswerWrong,
                    format!(
                        "SpliceBlob of {digest} from chunks that make it: {}",
                        status.message()
                    ),
                );
            }
        } else if claimed != digest {
            self.oracle.fail(
                Invariant::BadInputAccepted,
                format!("SpliceBlob stored {claimed}, which its chunks do not make"),
            );
        } else if let Some(i) = withheld {
            // Acceptable only if that chunk was there anyway (another upload of the same bytes),
            // or the blob was (another client's splice stored it: the server answers at once).
            if !self.oracle.full_splice_ever(&digest.hash)
                && self.find(&mut cas, &chunks[i].0, BLAKE3).await == Some(false)
                && withheld_epoch == Some(self.oracle.evictions(&chunks[i].0.hash))
            {
                self.oracle.fail(
                    Invariant::BadInputAccepted,
                    format!("SpliceBlob of {digest} succeeded with a chunk never stored"),
                );
            }
        }
        if claimed != digest && self.find(&mut cas, &claimed, BLAKE3).await == Some(true) {
            self.oracle.fail(
                Invariant::BadInputAccepted,
                format!("a refused splice left {claimed} stored"),
            );
        }
        let sha_named = Digest::new(DigestFunction::Sha256, digest.hash, digest.size);
        if !digest.is_empty() && self.find(&mut cas, &sha_named, 0).await == Some(true) {
            self.oracle.fail(
                Invariant::FunctionsMixed,
                format!("{digest} is reported present as a SHA-256 digest"),
            );
        }
        if spliced.is_err() || bad {
            return;
        }
        self.oracle.blob_acked(digest, epoch);
        // Acknowledged: present (unless evicted since) and, split again, the same bytes.
        if self.find(&mut cas, &digest, BLAKE3).await == Some(false)
            && self.oracle.miss_breaks(&digest.hash, Some(epoch))
        {
            self.oracle.fail(
                Invariant::AcknowledgedBlobLost,
                format!("{digest} missing right after its splice was acknowledged"),
            );
        }
        let split = reapi::SplitBlobRequest {
            blob_digest: Some(reapi::Digest::from(&digest)),
            digest_function: BLAKE3,
            ..Default::default()
        };
        let parts = match cas.split_blob(split).await {
            Ok(reply) => reply.into_inner().chunk_digests,
            Err(status) => return self.status("split", &digest, &status),
        };
        let read = BatchReadBlobsRequest {
            digests: parts.clone(),
            digest_function: BLAKE3,
            ..Default::default()
        };
        let reply = match cas.batch_read_blobs(read).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return self.status("split-read", &digest, &status),
        };
        let mut joined = Vec::with_capacity(content.len());
        for part in &parts {
            let Some(item) = reply
                .responses
                .iter()
                .find(|r| r.digest.as_ref() == Some(part))
            else {
                return;
            };
            if item.status.as_ref().is_some_and(|s| s.code != 0) {
                return; // a chunk evicted or the server failing: no claim about the bytes
            }
            joined.extend_from_slice(&item.data);
        }
        if joined != content[..] {
            self.oracle.fail(
                Invariant::ReadHashesToDigest,
                format!("the chunks SplitBlob named for {digest} do not make its bytes"),
            );
        }
    }

    /// Whether FindMissingBlobs under `function` reports `digest` present; `None` if the call
    /// failed (which proves nothing either way).
    pub(crate) async fn find(
        &self,
        cas: &mut ContentAddressableStorageClient<Channel>,
        digest: &Digest,
        function: i32,
    ) -> Option<bool> {
        let request = FindMissingBlobsRequest {
            blob_digests: vec![reapi::Digest::from(digest)],
            digest_function: function,
            ..Default::default()
        };
        let reply = cas.find_missing_blobs(request).await.ok()?;
        Some(reply.into_inner().missing_blob_digests.is_empty())
    }
}
