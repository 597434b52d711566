//! The object-store tier in the simulated world: node A writes through the store stack while it
//! is killed and restarted, into a simulated bucket whose faults (named, rates drawn from the
//! seed) hit every request; once A's queue drains, node B, with an empty disk, must serve
//! everything A acknowledged.
//!
//! Invariants (the `Tier*` ones of [`Invariant`]):
//! - `tier-ac-before-blobs`: the bucket never holds an action result before every blob it names
//!   (checked by the bucket at each PUT it applies).
//! - `tier-queue-dropped`: once A's queue has drained, every record A acknowledged is in the
//!   bucket, byte for byte.
//! - `tier-acknowledged-lost`: node B serves every blob and action result A acknowledged.
//! - `tier-read-fails-digest`: no read, of either node, returns bytes other than the blob's.
//! - `tier-liveness`: A's queue drains once the bucket is healthy.
//!
//! Bucket faults ([`BucketFault`]): `latency`, `slow-down` (503), `timeout`, `reset-mid-put`,
//! `put-response-lost` (applied, but the client hears an error), `short-get`; a multipart
//! upload meets them at each part and at its completion.
//!
//! Actions use SHA-256 or BLAKE3 (drawn per action; the bucket keys name the function). Blobs
//! are small, except in some seeds a few large ones: over the engine's `memory_stage_limit`
//! (drawn, so written once into a segment of their own) and over [`PART_SIZE`] (uploaded in
//! parts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hoard::engine::{AcKind, Digest, DigestFunction, Engine, EngineConfig, PlantedBug};
use hoard::proto::reapi;
use hoard::seam::sim_fs::{FaultConfig, SimFs};
use hoard::seam::TokioRuntime;
use hoard::store::stack::{self, StackConfig};
use hoard::store::{Accept, ActionKey, ActionValue, EngineStore, Error, Store};
use hoard::tier::bucket::{ObjectStream, PartUpload};
use hoard::tier::layout::{action_key, blob_key, decode_action, encode_action};
use hoard::tier::{Bucket, BucketError, MemoryBucket, Tier, TierConfig, PART_SIZE};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use prost::Message as _;

use crate::oracle::Invariant;
use crate::world::{panicked, run_in_runtime, Failure, Outcome};

/// The simulated bucket's faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketFault {
    /// Every request waits 1 to 50 ms.
    Latency,
    /// 503 SlowDown before anything happens.
    SlowDown,
    /// No answer for 2 s, then an error; nothing happened.
    Timeout,
    /// The connection drops during a PUT (or a part's); nothing was stored.
    ResetMidPut,
    /// The PUT (or a multipart completion) was applied but its response was lost: the client
    /// hears an error.
    PutResponseLost,
    /// A GET's body ends early.
    ShortGet,
}

impl BucketFault {
    const ALL: [BucketFault; 6] = [
        BucketFault::Latency,
        BucketFault::SlowDown,
        BucketFault::Timeout,
        BucketFault::ResetMidPut,
        BucketFault::PutResponseLost,
        BucketFault::ShortGet,
    ];

    fn name(self) -> &'static str {
        match self {
            BucketFault::Latency => "latency",
            BucketFault::SlowDown => "slow-down",
            BucketFault::Timeout => "timeout",
            BucketFault::ResetMidPut => "reset-mid-put",
            BucketFault::PutResponseLost => "put-response-lost",
            BucketFault::ShortGet => "short-get",
        }
    }
}

/// The bucket's faults: each one's probability per request, drawn from the seed (swarm: many
/// are off in a given seed), shared with the multipart uploads in progress.
struct Faults {
    rates: BTreeMap<&'static str, f64>,
    on: AtomicBool,
    injected: Mutex<BTreeMap<&'static str, u64>>,
    /// Multipart uploads completed (the outcome reports it: the seed covered the parts path).
    multipart_completed: AtomicUsize,
}

impl Faults {
    fn draw() -> Faults {
        let mut rng = thread_rng();
        let mut rates = BTreeMap::new();
        for fault in BucketFault::ALL {
            if rng.gen_bool(0.6) {
                rates.insert(fault.name(), rng.gen_range(0.02..0.25));
            }
        }
        Faults {
            rates,
            on: AtomicBool::new(true),
            injected: Mutex::default(),
            multipart_completed: AtomicUsize::new(0),
        }
    }

    fn hits(&self, fault: BucketFault) -> bool {
        if !self.on.load(Ordering::SeqCst) {
            return false;
        }
        let Some(&rate) = self.rates.get(fault.name()) else {
            return false;
        };
        let hit = thread_rng().gen_bool(rate);
        if hit {
            *self
                .injected
                .lock()
                .unwrap()
                .entry(fault.name())
                .or_default() += 1;
        }
        hit
    }

    /// Latency, 503s and timeouts: what may happen before any request.
    async fn before(&self) -> Result<(), BucketError> {
        if self.hits(BucketFault::Latency) {
            let wait = thread_rng().gen_range(1..50);
            madsim::time::sleep(Duration::from_millis(wait)).await;
        }
        if self.hits(BucketFault::SlowDown) {
            return Err(BucketError::Unavailable("503 SlowDown".into()));
        }
        if self.hits(BucketFault::Timeout) {
            madsim::time::sleep(Duration::from_secs(2)).await;
            return Err(BucketError::Unavailable("request timed out".into()));
        }
        Ok(())
    }

    /// A request that stores something: `apply` runs unless the connection drops first, and
    /// its response may be lost after.
    async fn storing(
        &self,
        apply: impl std::future::Future<Output = Result<(), BucketError>>,
    ) -> Result<(), BucketError> {
        self.before().await?;
        if self.hits(BucketFault::ResetMidPut) {
            return Err(BucketError::Unavailable("connection reset mid-PUT".into()));
        }
        apply.await?;
        if self.hits(BucketFault::PutResponseLost) {
            return Err(BucketError::Unavailable(
                "connection reset after the PUT".into(),
            ));
        }
        Ok(())
    }
}

/// A bucket in memory with faults, checking the action-result order at every PUT it applies.
struct SimBucket {
    objects: MemoryBucket,
    faults: Arc<Faults>,
    failures: Arc<Mutex<Vec<Failure>>>,
}

impl SimBucket {
    fn draw(failures: Arc<Mutex<Vec<Failure>>>) -> SimBucket {
        SimBucket {
            objects: MemoryBucket::new(),
            faults: Arc::new(Faults::draw()),
            failures,
        }
    }

    /// Stores an object, checking first that an action result's blobs are all there.
    fn apply(&self, key: &str, data: Bytes) {
        if key.starts_with("ac/") {
            self.check_action_order(key, &data);
        }
        self.objects.insert(key, data);
    }

    fn check_action_order(&self, key: &str, object: &Bytes) {
        let Ok(value) = decode_action(object.clone()) else {
            return;
        };
        if value.kind != AcKind::ActionResult {
            return;
        }
        let Ok(result) = reapi::ActionResult::decode(value.bytes) else {
            return;
        };
        // `ac/_{instance}/{function}/{hash}`: the result's digests are of that function.
        let Some(function) = key.rsplit('/').nth(1).and_then(DigestFunction::from_name) else {
            return;
        };
        for file in &result.output_files {
            let Some(digest) = file.digest.as_ref() else {
                continue;
            };
            let Ok(digest) = Digest::parse_with(function, &digest.hash, digest.size_bytes) else {
                continue;
            };
            if !digest.is_empty() && self.objects.object(&blob_key(&digest)).is_none() {
                self.failures.lock().unwrap().push(Failure {
                    invariant: Invariant::TierAcBeforeBlobs,
                    detail: format!("{key} was stored while its blob {digest} was not"),
                });
            }
        }
    }

    fn describe_faults(&self) -> String {
        let rates: Vec<String> = self
            .faults
            .rates
            .iter()
            .map(|(name, rate)| format!("{name}={rate:.2}"))
            .collect();
        format!("bucket faults [{}]", rates.join(" "))
    }
}

#[async_trait]
impl Bucket for SimBucket {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        self.faults
            .storing(async {
                self.apply(key, data);
                Ok(())
            })
            .await
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError> {
        // Only blobs go in parts (action results are one PUT), so no order check is needed.
        self.faults.before().await?;
        let inner = self.objects.put_multipart(key).await?;
        Ok(Box::new(SimParts {
            faults: self.faults.clone(),
            inner,
        }))
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError> {
        self.faults.before().await?;
        let Some(object) = self.objects.object(key) else {
            return Ok(None);
        };
        let start = (offset as usize).min(object.len());
        let mut body = object.slice(start..);
        if !body.is_empty() && self.faults.hits(BucketFault::ShortGet) {
            body = body.slice(..thread_rng().gen_range(0..body.len()));
        }
        Ok(Some(Box::pin(futures::stream::iter([Ok(body)]))))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        self.faults.before().await?;
        self.objects.head(key).await
    }

    fn describe(&self) -> String {
        "sim://bucket".into()
    }
}

/// A multipart upload into the simulated bucket: each part and the completion meet the faults.
struct SimParts {
    faults: Arc<Faults>,
    inner: Box<dyn PartUpload>,
}

#[async_trait]
impl PartUpload for SimParts {
    async fn put_part(&mut self, data: Bytes) -> Result<(), BucketError> {
        let inner = &mut self.inner;
        self.faults.storing(inner.put_part(data)).await
    }

    async fn complete(self: Box<Self>) -> Result<(), BucketError> {
        let SimParts { faults, inner } = *self;
        faults
            .storing(async {
                inner.complete().await?;
                faults.multipart_completed.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

/// Actions node A's clients store (each: one to three new blobs, then its action result).
const ACTIONS: usize = 40;
/// Clients of node A writing at once.
const WRITERS: usize = 3;
const DATA_DIR: &str = "/data";
const VIRTUAL_TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What the seed drew.
struct TierPlan {
    kills: usize,
    /// Kills that are power losses (the rest end the process alone).
    power_loss: bool,
    max_size: Option<u64>,
    concurrency: usize,
    /// Blobs over this are written once into a segment of their own.
    memory_stage_limit: u64,
    /// Actions whose first output is large, and its size.
    large_outputs: BTreeMap<usize, usize>,
}

impl TierPlan {
    fn draw() -> TierPlan {
        let mut rng = thread_rng();
        let max_size = rng.gen_bool(0.5).then_some(512 << 10);
        let mut large_outputs = BTreeMap::new();
        // Without a size budget (which refuses blobs over half of it), a few seeds store one
        // blob over both stage limits drawn below, sent in one PUT, and one sent in parts.
        if max_size.is_none() && rng.gen_bool(0.3) {
            large_outputs.insert(
                rng.gen_range(0..ACTIONS),
                rng.gen_range((1 << 20) + 1..3 << 20),
            );
            large_outputs.insert(
                rng.gen_range(0..ACTIONS),
                rng.gen_range(PART_SIZE + 1..PART_SIZE + (2 << 20)),
            );
        }
        TierPlan {
            kills: rng.gen_range(0..4),
            power_loss: rng.gen_bool(0.5),
            max_size,
            concurrency: rng.gen_range(1..8),
            memory_stage_limit: if rng.gen_bool(0.5) { 32 << 10 } else { 1 << 20 },
            large_outputs,
        }
    }
}

/// What node A's clients were told, and what the world shares across A's restarts.
#[derive(Default)]
struct Shared {
    /// [`TierPlan::large_outputs`].
    large_outputs: BTreeMap<usize, usize>,
    acked_blobs: Mutex<Vec<(Digest, Bytes)>>,
    acked_actions: Mutex<Vec<(ActionKey, ActionValue)>>,
    next_action: AtomicUsize,
    in_flight: AtomicUsize,
    tier: Mutex<Option<Arc<Tier>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
}

impl Shared {
    fn fail(&self, invariant: Invariant, detail: String) {
        self.failures
            .lock()
            .unwrap()
            .push(Failure { invariant, detail });
    }
}

/// Runs the tier's world for one seed.
pub fn run_seed(seed: u64, planted: Option<&str>, _verbose: bool) -> Outcome {
    let planted = planted.and_then(PlantedBug::from_name);
    run_in_runtime(seed, VIRTUAL_TIME_LIMIT, move || simulate(planted))
        .unwrap_or_else(|panic| panicked(panic, Invariant::TierLiveness, "tier world (panicked)"))
}

/// A node's store stack over its own disk and the shared bucket; retried until it opens (the
/// bucket's probe may meet a fault).
async fn open_node(
    fs: &SimFs,
    bucket: Arc<SimBucket>,
    plan_max_size: Option<u64>,
    memory_stage_limit: u64,
    concurrency: usize,
    planted: Option<PlantedBug>,
) -> (Arc<dyn Store>, Arc<Tier>) {
    loop {
        let mut config = EngineConfig::new(DATA_DIR);
        config.max_size = plan_max_size;
        config.memory_stage_limit = memory_stage_limit;
        config.hold_for_upload = true;
        let engine = match Engine::open(config, Arc::new(fs.clone()), Arc::new(TokioRuntime)).await
        {
            Ok(engine) => engine,
            Err(e) => {
                tracing::info!(error = %e, "engine did not open; retrying");
                madsim::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut tier_config = TierConfig::new("sim://bucket");
        tier_config.upload_concurrency = concurrency;
        tier_config.backlog_budget = plan_max_size.map_or(tier_config.backlog_budget, |b| b / 4);
        tier_config.planted = planted;
        let opened = Tier::open(
            tier_config,
            bucket.clone(),
            engine.clone(),
            Arc::new(fs.clone()),
            Arc::new(TokioRuntime),
        )
        .await;
        match opened {
            Ok(tier) => {
                let stack_config = StackConfig {
                    tier: Some(tier.clone()),
                    ..StackConfig::default()
                };
                let store = stack::assemble(Arc::new(EngineStore::new(engine)), &stack_config);
                return (store, tier);
            }
            Err(e) => {
                tracing::info!(error = %e, "tier did not open; retrying");
                drop(engine);
                madsim::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Deterministic bytes for blob `id`.
fn blob_bytes(id: u64, len: usize) -> Bytes {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Retries a write the store refused for a passing reason (back-pressure, a bucket error in
/// write-through), as a client would; `false` if it was refused for good.
async fn until_stored<F, Fut>(mut write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    for _ in 0..200 {
        match write().await {
            Ok(()) => return true,
            Err(Error::Busy(_) | Error::Io { .. } | Error::NoSpace(_)) => {
                madsim::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "write refused");
                return false;
            }
        }
    }
    false
}

/// One of node A's clients: stores actions until there are none left.
async fn writer(store: Arc<dyn Store>, shared: Arc<Shared>) {
    loop {
        let i = shared.next_action.fetch_add(1, Ordering::SeqCst);
        if i >= ACTIONS {
            return;
        }
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let function = if thread_rng().gen_bool(0.5) {
            DigestFunction::Blake3
        } else {
            DigestFunction::Sha256
        };
        let outputs = thread_rng().gen_range(1..4);
        let mut digests = Vec::new();
        for j in 0..outputs {
            let small = thread_rng().gen_range(1..40_000);
            let len = match shared.large_outputs.get(&i) {
                Some(&large) if j == 0 => large,
                _ => small,
            };
            let data = blob_bytes((i * 8 + j) as u64, len);
            let digest = Digest::of_with(function, &data);
            if until_stored(|| store.put_blob(digest, data.clone())).await {
                shared.acked_blobs.lock().unwrap().push((digest, data));
                digests.push(digest);
            }
        }
        let result = crate::workload::result_with_outputs("out/", &digests);
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = ActionKey::with_function("sim", function, hash);
        let value = ActionValue {
            kind: AcKind::ActionResult,
            bytes: result.encode_to_vec().into(),
        };
        if until_stored(|| store.put_action(&key, value.clone())).await {
            shared.acked_actions.lock().unwrap().push((key, value));
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let pause = thread_rng().gen_range(0..100);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn simulate(planted: Option<PlantedBug>) -> Outcome {
    let handle = Handle::current();
    let plan = TierPlan::draw();
    let shared = Arc::new(Shared {
        large_outputs: plan.large_outputs.clone(),
        ..Shared::default()
    });
    let bucket = Arc::new(SimBucket::draw(shared.failures.clone()));
    let config = format!(
        "tier world: kills={} power_loss={} max_size={:?} concurrency={} memory_stage_limit={} \
         large_outputs={:?} {}",
        plan.kills,
        plan.power_loss,
        plan.max_size,
        plan.concurrency,
        plan.memory_stage_limit,
        plan.large_outputs,
        bucket.describe_faults()
    );
    let fs_a = quiet_disk();
    let node_a = {
        let (fs, bucket, shared) = (fs_a.clone(), bucket.clone(), shared.clone());
        let (max_size, concurrency) = (plan.max_size, plan.concurrency);
        let memory_stage_limit = plan.memory_stage_limit;
        handle
            .create_node()
            .name("tier-a")
            .init(move || {
                let (fs, bucket, shared) = (fs.clone(), bucket.clone(), shared.clone());
                async move {
                    let (store, tier) = open_node(
                        &fs,
                        bucket,
                        max_size,
                        memory_stage_limit,
                        concurrency,
                        planted,
                    )
                    .await;
                    *shared.tier.lock().unwrap() = Some(tier);
                    let writers = (0..WRITERS).map(|_| writer(store.clone(), shared.clone()));
                    futures::future::join_all(writers).await;
                    std::future::pending::<()>().await;
                }
            })
            .build()
    };

    for _ in 0..plan.kills {
        let after = thread_rng().gen_range(100..3000);
        madsim::time::sleep(Duration::from_millis(after)).await;
        handle.kill(node_a.id());
        *shared.tier.lock().unwrap() = None;
        // The killed clients' actions in progress are abandoned.
        shared.in_flight.store(0, Ordering::SeqCst);
        if plan.power_loss {
            fs_a.crash();
        } else {
            fs_a.process_exit();
        }
        let down = thread_rng().gen_range(1..500);
        madsim::time::sleep(Duration::from_millis(down)).await;
        handle.restart(node_a.id());
    }
    while shared.next_action.load(Ordering::SeqCst) < ACTIONS
        || shared.in_flight.load(Ordering::SeqCst) > 0
    {
        madsim::time::sleep(Duration::from_millis(100)).await;
    }

    // The bucket heals: A's queue must drain.
    bucket.faults.on.store(false, Ordering::SeqCst);
    let mut waited = Duration::ZERO;
    loop {
        let tier = shared.tier.lock().unwrap().clone();
        if tier.is_some_and(|t| t.status().backlog_bytes == 0) {
            break;
        }
        if waited > Duration::from_secs(600) {
            shared.fail(
                Invariant::TierLiveness,
                "A's upload queue did not drain in 10 minutes of a healthy bucket".into(),
            );
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    check_bucket(&bucket, &shared);

    // Node B, on an empty disk, with the faults back on for its reads.
    bucket.faults.on.store(true, Ordering::SeqCst);
    let fs_b = quiet_disk();
    let checked = {
        let (bucket, shared) = (bucket.clone(), shared.clone());
        let memory_stage_limit = plan.memory_stage_limit;
        let node_b = handle.create_node().name("tier-b").build();
        node_b.spawn(async move {
            let (store, _tier) = open_node(&fs_b, bucket, None, memory_stage_limit, 4, None).await;
            check_node_b(store.as_ref(), &shared).await;
        })
    };
    let _ = checked.await;
    handle.kill(node_a.id());
    fs_a.release();

    let injected = bucket.faults.injected.lock().unwrap().clone();
    let failures = std::mem::take(&mut *shared.failures.lock().unwrap());
    let trace = format!(
        "{injected:?} {} {}",
        shared.acked_blobs.lock().unwrap().len(),
        shared.acked_actions.lock().unwrap().len()
    );
    Outcome {
        config,
        trace_hash: format!("{:08x}", crc32fast::hash(trace.as_bytes())),
        events: injected.values().sum(),
        failures,
        fs_stats: format!(
            "bucket faults injected: {injected:?}; multipart uploads completed: {}",
            bucket.faults.multipart_completed.load(Ordering::SeqCst)
        ),
    }
}

/// A simulated disk without injected faults (the server's world covers those): buffers, page
/// cache and durability are modelled as ever, so a power loss still loses what was not synced.
fn quiet_disk() -> SimFs {
    let fs = SimFs::new(FaultConfig::swarm());
    fs.set_faults(false);
    fs
}

/// Every acknowledged record is in the bucket, byte for byte.
fn check_bucket(bucket: &SimBucket, shared: &Shared) {
    for (digest, data) in shared.acked_blobs.lock().unwrap().iter() {
        if bucket.objects.object(&blob_key(digest)).as_ref() != Some(data) {
            shared.fail(
                Invariant::TierQueueDropped,
                format!("acknowledged blob {digest} is not in the bucket"),
            );
        }
    }
    for (key, value) in shared.acked_actions.lock().unwrap().iter() {
        if bucket.objects.object(&action_key(key)) != Some(encode_action(value)) {
            shared.fail(
                Invariant::TierQueueDropped,
                format!("acknowledged action result {key} is not in the bucket"),
            );
        }
    }
}

/// Node B serves what A acknowledged (retrying what the bucket's faults fail), and never a
/// wrong byte.
async fn check_node_b(store: &dyn Store, shared: &Shared) {
    let blobs = shared.acked_blobs.lock().unwrap().clone();
    for (digest, data) in blobs {
        let mut served = false;
        for _ in 0..50 {
            match store.read_blob(&digest).await {
                Ok(bytes) if bytes == data => {
                    served = true;
                    break;
                }
                Ok(_) => {
                    shared.fail(
                        Invariant::TierReadFailsDigest,
                        format!("a read of {digest} returned other bytes"),
                    );
                    break;
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if !served {
            shared.fail(
                Invariant::TierAcknowledgedLost,
                format!("node B cannot serve acknowledged blob {digest}"),
            );
        }
    }
    let actions = shared.acked_actions.lock().unwrap().clone();
    for (key, value) in actions {
        let mut served = false;
        for _ in 0..50 {
            match store.get_action(&key, Accept::ActionResults).await {
                Ok(Some(found)) if found == value => {
                    served = true;
                    break;
                }
                Ok(Some(_)) => break,
                _ => madsim::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if !served {
            shared.fail(
                Invariant::TierAcknowledgedLost,
                format!("node B cannot serve acknowledged action result {key}"),
            );
        }
    }
}
