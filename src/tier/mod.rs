//! The shared object-store tier: many hoard nodes, one bucket (S3, GCS, Azure through
//! `object_store`; a simulated bucket under madsim).
//!
//! - **Write-back from the durable local log** ([`uploader`]). A write is acknowledged locally
//!   as always; the segment log is the upload queue. A background uploader sends records to the
//!   bucket in log order with bounded concurrency, blobs of a batch before its action results,
//!   and an action result only once every blob it names is in the bucket (checked, or uploaded
//!   from the local store first). Its progress is a durable watermark (a file written through
//!   the [`Fs`] seam: temp, sync, rename, sync the directory), so a restart resumes; the engine
//!   never evicts a segment at or after the watermark's. Nothing is dropped: once the log after
//!   the watermark is over [`TierConfig::backlog_budget`], new writes are refused with
//!   [`Error::Busy`] (RESOURCE_EXHAUSTED / 503, with a retry hint) until it drains.
//! - **Write-through** ([`TierMode::Through`]): the acknowledgement also waits for the bucket.
//! - **Reads** ([`store::TierStore`]): a local miss is fetched from the bucket, streamed to the
//!   client while it fills the local store, and verified against the digest (bytes that fail
//!   it are never served); concurrent misses of one blob fetch it once. FindMissingBlobs asks
//!   the local index first and the bucket (concurrent HEADs, a short positive cache) for the
//!   rest. Action results found only in the bucket are served through the completeness check,
//!   which sees both tiers.
//!
//! The object layout is in [`layout`].

pub mod bucket;
pub mod layout;
mod metrics;
#[cfg(not(madsim))]
pub mod object_store;
mod presence;
pub mod store;
mod uploader;
mod watermark;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use bucket::{Bucket, BucketError, MemoryBucket};
pub use metrics::TierMetrics;
pub use store::TierStore;
pub use uploader::PART_SIZE;

use crate::engine::{Engine, LogCursor, PlantedBug};
use crate::observe::Metrics;
use crate::seam::{Fs, Runtime};
use crate::store::Error;
use presence::Presence;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TierMode {
    /// Once it is durable locally; the uploader sends it to the bucket later (write-back).
    #[default]
    Back,
    /// Once it is durable locally and in the bucket (write-through).
    Through,
}

impl std::str::FromStr for TierMode {
    type Err = String;

    fn from_str(text: &str) -> Result<TierMode, String> {
        match text {
            "back" => Ok(TierMode::Back),
            "through" => Ok(TierMode::Through),
            other => Err(format!("{other:?}: the mode is back or through")),
        }
    }
}

/// Settings of the tier.
#[derive(Clone, Debug)]
pub struct TierConfig {
    /// The bucket's URL as given (`s3://bucket/prefix`, ...): shown in logs and `/status`, and
    /// remembered with the watermark (a new bucket gets the whole local log).
    pub url: String,
    /// When writes are acknowledged.
    pub mode: TierMode,
    /// Bytes of the local log not yet uploaded beyond which new writes get back-pressure.
    pub backlog_budget: u64,
    /// Records uploaded at once.
    pub upload_concurrency: usize,
    /// How long a blob seen in the bucket is taken to be there without asking again.
    pub presence_ttl: Duration,
    /// A planted bug (simulator only: ignored without the `planted-bugs` feature).
    pub planted: Option<PlantedBug>,
}

impl TierConfig {
    /// Defaults for the bucket at `url`.
    pub fn new(url: impl Into<String>) -> TierConfig {
        TierConfig {
            url: url.into(),
            mode: TierMode::Back,
            backlog_budget: 4 << 30,
            upload_concurrency: 16,
            presence_ttl: Duration::from_secs(60),
            planted: None,
        }
    }

    fn planted(&self, bug: PlantedBug) -> bool {
        bug.is_planted_in(self.planted)
    }
}

/// Where the uploader is.
#[derive(Debug, Default)]
struct Progress {
    /// Everything before this is in the bucket (or was never uploadable).
    uploaded: LogCursor,
    /// What the watermark file says (the engine's upload floor follows it).
    durable: LogCursor,
    /// Since when the uploader has had records to send (`None`: caught up).
    behind_since: Option<SystemTime>,
}

/// The tier's shared state: the bucket, the upload queue and what is known to be in the bucket.
pub struct Tier {
    config: TierConfig,
    bucket: Arc<dyn Bucket>,
    engine: Arc<Engine>,
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    watermark_path: PathBuf,
    progress: Mutex<Progress>,
    /// Woken after each local write so the uploader need not poll.
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    /// Ends the uploader's waits at once when the tier stops.
    stopped: tokio::sync::Notify,
    present: Presence,
    metrics: TierMetrics,
    /// The server's metrics, where the status page reads the queue ([`Tier::publish_to`]).
    status_page: OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("bucket", &self.bucket.describe())
            .field("mode", &self.config.mode)
            .finish()
    }
}

/// What `/status` shows of the tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    /// The bucket.
    pub bucket: String,
    /// Write-back or write-through.
    pub mode: TierMode,
    /// Bytes of the local log not yet uploaded.
    pub backlog_bytes: u64,
    /// Over this, writes get back-pressure.
    pub backlog_budget: u64,
    /// Seconds the uploader has been behind (0: caught up).
    pub behind_seconds: u64,
    /// The durable watermark.
    pub watermark: LogCursor,
}

impl Tier {
    /// Checks the bucket (a clear error now beats failing uploads later: wrong credentials,
    /// an unreachable endpoint, a bucket of another layout), reads the watermark, sets the
    /// engine's upload floor and starts the uploader.
    pub async fn open(
        config: TierConfig,
        bucket: Arc<dyn Bucket>,
        engine: Arc<Engine>,
        fs: Arc<dyn Fs>,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Arc<Tier>, Error> {
        let metrics = TierMetrics::default();
        let bucket: Arc<dyn Bucket> =
            Arc::new(metrics::MeteredBucket::new(bucket, metrics.clone()));
        probe(bucket.as_ref()).await?;
        let watermark_path = engine.config().dir.join(watermark::FILE);
        let durable = watermark::load(fs.as_ref(), &watermark_path, &config.url).await?;
        engine.set_upload_floor(durable.segment);
        tracing::info!(
            bucket = %bucket.describe(),
            mode = ?config.mode,
            segment = durable.segment,
            offset = durable.offset,
            "object-store tier on; uploading from the watermark"
        );
        let tier = Arc::new(Tier {
            metrics,
            present: Presence::new(config.presence_ttl),
            config,
            bucket,
            engine,
            fs,
            runtime: runtime.clone(),
            watermark_path,
            progress: Mutex::new(Progress {
                uploaded: durable,
                durable,
                behind_since: None,
            }),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
            status_page: OnceLock::new(),
        });
        runtime.spawn(Box::pin(uploader::run(tier.clone())));
        runtime.spawn(Box::pin(uploader::report_queue(tier.clone())));
        Ok(tier)
    }

    /// The tier's metrics (register them with the server's registry).
    pub fn metrics(&self) -> &TierMetrics {
        &self.metrics
    }

    /// Publishes the upload queue to `metrics` from now on (the status page shows it).
    pub fn publish_to(&self, metrics: Arc<Metrics>) {
        if self.status_page.set(metrics).is_err() {
            tracing::warn!("the tier's queue is already published to a registry");
        }
        self.publish_queue();
    }

    /// Stops the uploader (at its next step; what it has not finished stays queued).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }

    /// The upload queue, for `/status`.
    pub fn status(&self) -> QueueStatus {
        let progress = self.progress.lock().expect("progress");
        let behind = progress
            .behind_since
            .and_then(|since| self.runtime.now().duration_since(since).ok());
        QueueStatus {
            bucket: self.bucket.describe(),
            mode: self.config.mode,
            backlog_bytes: self.engine.log_bytes_after(progress.uploaded),
            backlog_budget: self.config.backlog_budget,
            behind_seconds: behind.map_or(0, |d| d.as_secs()),
            watermark: progress.durable,
        }
    }

    /// The `/status` member showing the queue: `"object_store":{...}`.
    pub fn status_json(&self) -> String {
        let status = self.status();
        let bucket: String = status
            .bucket
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .collect();
        let mode = match status.mode {
            TierMode::Back => "back",
            TierMode::Through => "through",
        };
        format!(
            "\"object_store\":{{\"bucket\":\"{bucket}\",\"mode\":\"{mode}\",\
             \"backlog_bytes\":{},\"backlog_budget\":{},\"behind_seconds\":{},\
             \"watermark\":{{\"segment\":{},\"offset\":{}}}}}",
            status.backlog_bytes,
            status.backlog_budget,
            status.behind_seconds,
            status.watermark.segment,
            status.watermark.offset
        )
    }

    /// Refuses a new write while the upload backlog is over its budget (nothing is dropped:
    /// the client retries once the uploader has caught up).
    fn admit_write(&self) -> Result<(), Error> {
        let status = self.status();
        if status.backlog_bytes <= status.backlog_budget {
            return Ok(());
        }
        self.metrics.backpressure.inc();
        Err(Error::Busy(format!(
            "the object-store upload backlog is {} bytes, over its budget of {} (the bucket \
             has been behind for {} s); retry in a few seconds",
            status.backlog_bytes, status.backlog_budget, status.behind_seconds
        )))
    }

    /// Tells the uploader there is something new in the log.
    fn wake_uploader(&self) {
        self.wake.notify_one();
    }
}

/// Checks that the bucket answers, with these credentials, in the layout this build reads.
async fn probe(bucket: &dyn Bucket) -> Result<(), Error> {
    let unusable = |why: String| {
        Error::io(
            format!("object store {}", bucket.describe()),
            std::io::Error::other(why),
        )
    };
    let explain = |e: BucketError| match e {
        BucketError::Denied(_) => unusable(format!(
            "{e} (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT or \
             AZURE_STORAGE_ACCOUNT_KEY, and that they may read and write the bucket)"
        )),
        BucketError::Unavailable(_) => unusable(format!(
            "{e} (check the endpoint: AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP for plain http)"
        )),
        BucketError::Failed(_) => unusable(e.to_string()),
    };
    match bucket.head(layout::FORMAT_KEY).await.map_err(explain)? {
        None => bucket
            .put(layout::FORMAT_KEY, Bytes::from_static(layout::FORMAT))
            .await
            .map_err(explain),
        Some(_) => {
            let found = bucket::read_all(bucket, layout::FORMAT_KEY, 4096)
                .await
                .map_err(explain)?
                .unwrap_or_default();
            if found[..] == *layout::FORMAT {
                Ok(())
            } else {
                Err(unusable(format!(
                    "its {} says {:?}; this hoard reads and writes {:?}",
                    layout::FORMAT_KEY,
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(layout::FORMAT)
                )))
            }
        }
    }
}
