//! The tier's metrics (registered with the server's registry by `hoard serve`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `hoard_bucket_requests_total` | counter | `op` (`put`, `put_multipart`, `put_part`, `complete_multipart`, `get`, `head`), `status` (`ok`, `not_found`, or the error kind) |
//! | `hoard_bucket_request_duration_seconds` | histogram | `op` |
//! | `hoard_bucket_bytes_total` | counter | `direction` (`sent`, `received`) |
//! | `hoard_upload_queue_bytes` | gauge | bytes of the local log not yet uploaded |
//! | `hoard_upload_queue_age_seconds` | gauge | how long the uploader has been behind (0: caught up) |
//! | `hoard_uploaded_records_total` | counter | `outcome` (`uploaded`, `present`, `skipped_corrupt`, `skipped_gone`, `skipped_incomplete`) |
//! | `hoard_bucket_fills_total` | counter | `result` (`filled`, `served_unfilled`, `failed`, `digest_mismatch`) |
//! | `hoard_backpressure_total` | counter | writes refused while the backlog was over budget |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;

use super::bucket::{Bucket, BucketError, ObjectStream, PartUpload};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Counters and gauges of the tier (cheap clones share the values).
#[derive(Clone, Debug)]
pub struct TierMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<OpLabels, Histogram, fn() -> Histogram>,
    bytes: Family<DirectionLabels, Counter>,
    queue_bytes: Gauge,
    queue_age: Gauge,
    records: Family<OutcomeLabels, Counter>,
    fills: Family<ResultLabels, Counter>,
    pub(super) backpressure: Counter,
}

impl Default for TierMetrics {
    fn default() -> Self {
        TierMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            queue_bytes: Gauge::default(),
            queue_age: Gauge::default(),
            records: Family::default(),
            fills: Family::default(),
            backpressure: Counter::default(),
        }
    }
}

impl TierMetrics {
    /// Registers every metric with `registry` (prefixed as the registry is).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bucket_requests",
            "Object-store requests by operation and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "bucket_request_duration",
            "Object-store request latency by operation",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register_with_unit(
            "bucket",
            "Bytes sent to and received from the object store",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register_with_unit(
            "upload_queue",
            "Bytes of the local log not yet uploaded to the object store",
            Unit::Bytes,
            self.queue_bytes.clone(),
        );
        registry.register_with_unit(
            "upload_queue_age",
            "How long the uploader has been behind (0: caught up)",
            Unit::Seconds,
            self.queue_age.clone(),
        );
        registry.register(
            "uploaded_records",
            "Log records the uploader dealt with, by outcome",
            self.records.clone(),
        );
        registry.register(
            "bucket_fills",
            "Local misses fetched from the object store, by result",
            self.fills.clone(),
        );
        registry.register(
            "backpressure",
            "Writes refused while the upload backlog was over its budget",
            self.backpressure.clone(),
        );
    }

    /// One bucket request and how it ended.
    fn request(&self, op: &'static str, took: Duration, status: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { op, status })
            .inc();
        self.durations
            .get_or_create(&OpLabels { op })
            .observe(took.as_secs_f64());
    }

    pub(super) fn sent(&self, bytes: u64) {
        self.bytes
            .get_or_create(&DirectionLabels { direction: "sent" })
            .inc_by(bytes);
    }

    pub(super) fn received(&self, bytes: u64) {
        self.bytes
            .get_or_create(&DirectionLabels {
                direction: "received",
            })
            .inc_by(bytes);
    }

    pub(super) fn queue(&self, bytes: u64, age: Duration) {
        self.queue_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.queue_age
            .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    }

    pub(super) fn record(&self, outcome: &'static str) {
        self.records.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(super) fn fill(&self, result: &'static str) {
        self.fills.get_or_create(&ResultLabels { result }).inc();
    }
}

fn status_of<T>(result: &Result<Option<T>, BucketError>) -> &'static str {
    match result {
        Ok(Some(_)) => "ok",
        Ok(None) => "not_found",
        Err(e) => e.kind_name(),
    }
}

fn status_of_unit(result: &Result<(), BucketError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => e.kind_name(),
    }
}

/// A bucket whose every request is counted and timed.
pub struct MeteredBucket {
    inner: Arc<dyn Bucket>,
    metrics: TierMetrics,
}

impl MeteredBucket {
    /// Counts what goes through to `inner` in `metrics`.
    pub fn new(inner: Arc<dyn Bucket>, metrics: TierMetrics) -> MeteredBucket {
        MeteredBucket { inner, metrics }
    }
}

#[async_trait]
impl Bucket for MeteredBucket {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        let (started, len) = (Instant::now(), data.len() as u64);
        let result = self.inner.put(key, data).await;
        self.metrics
            .request("put", started.elapsed(), status_of_unit(&result));
        if result.is_ok() {
            self.metrics.sent(len);
        }
        result
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError> {
        let started = Instant::now();
        let result = self.inner.put_multipart(key).await;
        let status = result
            .as_ref()
            .map_or_else(BucketError::kind_name, |_| "ok");
        self.metrics
            .request("put_multipart", started.elapsed(), status);
        let upload = result?;
        Ok(Box::new(MeteredParts {
            inner: upload,
            metrics: self.metrics.clone(),
        }))
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError> {
        let started = Instant::now();
        let result = self.inner.get(key, offset).await;
        self.metrics
            .request("get", started.elapsed(), status_of(&result));
        let metrics = self.metrics.clone();
        Ok(result?.map(|stream| {
            stream
                .inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        metrics.received(chunk.len() as u64);
                    }
                })
                .boxed()
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        let started = Instant::now();
        let result = self.inner.head(key).await;
        self.metrics
            .request("head", started.elapsed(), status_of(&result));
        result
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct MeteredParts {
    inner: Box<dyn PartUpload>,
    metrics: TierMetrics,
}

#[async_trait]
impl PartUpload for MeteredParts {
    async fn put_part(&mut self, data: Bytes) -> Result<(), BucketError> {
        let (started, len) = (Instant::now(), data.len() as u64);
        let result = self.inner.put_part(data).await;
        self.metrics
            .request("put_part", started.elapsed(), status_of_unit(&result));
        if result.is_ok() {
            self.metrics.sent(len);
        }
        result
    }

    async fn complete(self: Box<Self>) -> Result<(), BucketError> {
        let started = Instant::now();
        let result = self.inner.complete().await;
        self.metrics.request(
            "complete_multipart",
            started.elapsed(),
            status_of_unit(&result),
        );
        result
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}
