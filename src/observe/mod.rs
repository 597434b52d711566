//! Observability: Prometheus metrics, the access log, and what counts as which upload failure.
//!
//! One [`Metrics`] (one registry) is created by `server::serve` and shared by both front ends
//! through their configs (`GrpcConfig::metrics`, `HttpConfig::metrics`); `GET /metrics` on the
//! HTTP listener renders it in the Prometheus text format.
//!
//! Every request is recorded by ordinary code that runs in both worlds: madsim-tonic ignores
//! tower layers and interceptors, so the gRPC services are wrapped at the service-impl level
//! (`wire::grpc::guarded`), and the HTTP handler opens a [`Call`] around each request. What the
//! cache answered (hits, misses, upload failures by typed reason) is counted by the store's
//! [`crate::store::Metered`] layer, for both front ends alike. A finished
//! [`Call`] updates the request counters, the latency histogram and the byte counters, and writes
//! one access-log line (target [`ACCESS_LOG_TARGET`], level INFO) unless the front end's
//! `access_log` flag is off.
//!
//! Metric names (see [`Metrics`] for labels): `hoard_requests_total`,
//! `hoard_request_duration_seconds`, `hoard_received_bytes_total`, `hoard_sent_bytes_total`,
//! `hoard_ac_lookups_total`, `hoard_cas_lookups_total`, `hoard_upload_failures_total`, and at
//! scrape time from the engine `hoard_cas_blobs`, `hoard_cas_stored_bytes`, `hoard_ac_entries`,
//! `hoard_disk_bytes`, `hoard_evictions_total`, `hoard_evicted_bytes_total`,
//! `hoard_corrupt_blobs_dropped_total`, `hoard_cascade_removals_total`,
//! `hoard_scrubbed_records_total`, `hoard_scrubbed_bytes_total`, `hoard_uptime_seconds`, plus
//! `hoard_build_info`.
//!
//! The status page (`GET /ui/`) draws from the same registry: [`history`] keeps the last hour
//! of samples, [`top`] the busiest keys per instance, [`ui`] renders both as JSON next to the
//! embedded page.

pub mod history;
pub mod top;
pub mod ui;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::Stats;

/// The `tracing` target of access-log lines (filter with `HOARD_LOG=hoard::access=off`).
pub const ACCESS_LOG_TARGET: &str = "hoard::access";

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which front end served a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// REAPI v2 (and grpc.health.v1) over gRPC.
    Grpc,
    /// The Bazel HTTP cache protocol (and `/status`, `/metrics`).
    Http,
}

impl Protocol {
    /// The label value: `grpc` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Grpc => 0,
            Protocol::Http => 1,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    service: &'static str,
    method: &'static str,
    status: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    protocol: &'static str,
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcLookupLabels {
    protocol: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CasLookupLabels {
    protocol: &'static str,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadFailureLabels {
    protocol: &'static str,
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 20))
}

/// What the engine-derived metrics show, refreshed right before each scrape is encoded.
#[derive(Clone, Copy, Debug, Default)]
struct EngineSnapshot {
    stats: Stats,
    uptime: Duration,
}

/// Emits the engine's counts at scrape time (they live in the engine, not in the registry).
#[derive(Debug)]
struct EngineCollector {
    snapshot: Arc<Mutex<EngineSnapshot>>,
}

/// Produces extra members of the `/status` JSON object (`"name":value,...`, already escaped).
pub type StatusFields = Arc<dyn Fn() -> String + Send + Sync>;

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let EngineSnapshot { stats, uptime } = *self.snapshot.lock().expect("snapshot");
        let gauges = [
            ("cas_blobs", "Blobs in the CAS.", None, stats.blobs),
            (
                "cas_stored",
                "Bytes of the blobs in the CAS.",
                Some(&Unit::Bytes),
                stats.blob_bytes,
            ),
            ("ac_entries", "Action-cache entries.", None, stats.actions),
            (
                "disk",
                "Bytes of every segment file: what the cache occupies on disk.",
                Some(&Unit::Bytes),
                stats.disk_bytes,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "evictions",
                "Records evicted to keep within the size budget.",
                None,
                stats.evictions,
            ),
            (
                "evicted",
                "Payload bytes of the evicted records.",
                Some(&Unit::Bytes),
                stats.evicted_bytes,
            ),
            (
                "corrupt_blobs_dropped",
                "Blobs dropped because their stored bytes failed their digest.",
                None,
                stats.corrupt_dropped,
            ),
            (
                "cascade_removals",
                "Action results removed because a blob they name was evicted or dropped.",
                None,
                stats.cascade_removals,
            ),
            (
                "scrubbed_records",
                "Cold records the background scrub re-hashed.",
                None,
                stats.scrubbed_records,
            ),
            (
                "scrubbed",
                "Payload bytes the background scrub re-hashed.",
                Some(&Unit::Bytes),
                stats.scrubbed_bytes,
            ),
        ];
        for (name, help, unit, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                unit,
                counter.metric_type(),
            )?)?;
        }
        let uptime = ConstGauge::new(uptime.as_secs_f64());
        uptime.encode(encoder.encode_descriptor(
            "uptime",
            "Time since the server started.",
            Some(&Unit::Seconds),
            uptime.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The metrics of one server: one registry, shared by both front ends behind an `Arc`.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `hoard_requests_total` | counter | `protocol`, `service`, `method`, `status` (gRPC code name or HTTP status) |
/// | `hoard_request_duration_seconds` | histogram | `protocol`, `service`, `method` |
/// | `hoard_received_bytes_total` | counter | `protocol`, `service`, `method` |
/// | `hoard_sent_bytes_total` | counter | `protocol`, `service`, `method` |
/// | `hoard_ac_lookups_total` | counter | `protocol`, `result` = `hit`/`miss` |
/// | `hoard_cas_lookups_total` | counter | `protocol`, `operation` = `find_missing`/`contains`/`read`/`resolve`, `result` = `hit`/`miss` (one per blob) |
/// | `hoard_grpc_buffer_limit_bytes` | gauge | `scope` = `stream`/`connection` |
/// | `hoard_upload_failures_total` | counter | `protocol`, `reason` (the store error's variant, e.g. `hash_mismatch`) |
/// | `hoard_cas_blobs`, `hoard_cas_stored_bytes`, `hoard_ac_entries`, `hoard_disk_bytes` | gauge | |
/// | `hoard_evictions_total`, `hoard_evicted_bytes_total` | counter | |
/// | `hoard_corrupt_blobs_dropped_total`, `hoard_cascade_removals_total` | counter | |
/// | `hoard_scrubbed_records_total`, `hoard_scrubbed_bytes_total` | counter | |
/// | `hoard_uptime_seconds` | gauge | |
/// | `hoard_build_info` | gauge (always 1) | `version` |
pub struct Metrics {
    registry: Registry,
    started: Instant,
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    ac_lookups: Family<AcLookupLabels, Counter>,
    cas_lookups: Family<CasLookupLabels, Counter>,
    upload_failures: Family<UploadFailureLabels, Counter>,
    /// What one gRPC stream and one connection may buffer, by `scope`.
    grpc_buffer_limits: Family<ScopeLabels, Gauge>,
    /// Requests served, by [`Protocol::index`] (for `/status`).
    served: [AtomicU64; 2],
    snapshot: Arc<Mutex<EngineSnapshot>>,
    /// The last hour, for the status page.
    history: history::History,
    /// The busiest keys per instance, for the status page.
    top: top::TopKeys,
    /// Bytes waiting for the object-store tier; [`NO_TIER`] while none is configured.
    object_store_queue_depth: AtomicU64,
    /// Seconds the object-store tier's uploader has been behind (0: caught up).
    object_store_queue_age: AtomicU64,
    /// Extra `/status` members (the object-store tier's queue).
    status_fields: Mutex<Option<StatusFields>>,
}

/// What [`Metrics::object_store_queue_depth`] holds while no object-store tier is configured.
const NO_TIER: u64 = u64::MAX;

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("served_grpc", &self.served(Protocol::Grpc))
            .field("served_http", &self.served(Protocol::Http))
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered; uptime counts from now.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hoard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by protocol, service, method and final status",
            requests.clone(),
        );
        let durations = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response (to the response head for streamed \
             downloads)",
            Unit::Seconds,
            durations.clone(),
        );
        let received = Family::<MethodLabels, Counter>::default();
        registry.register_with_unit(
            "received",
            "Payload bytes received from clients (HTTP bodies, gRPC messages, committed \
             ByteStream writes)",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Family::<MethodLabels, Counter>::default();
        registry.register_with_unit(
            "sent",
            "Payload bytes sent to clients (HTTP bodies, gRPC messages, ByteStream reads)",
            Unit::Bytes,
            sent.clone(),
        );
        let ac_lookups = Family::<AcLookupLabels, Counter>::default();
        registry.register(
            "ac_lookups",
            "Action-cache reads (GetActionResult, HTTP GET/HEAD /ac), by hit or miss; an incomplete result is a miss",
            ac_lookups.clone(),
        );
        let cas_lookups = Family::<CasLookupLabels, Counter>::default();
        registry.register(
            "cas_lookups",
            "CAS blobs looked up, by store operation and hit (present) or miss (absent)",
            cas_lookups.clone(),
        );
        let grpc_buffer_limits = Family::<ScopeLabels, Gauge>::default();
        registry.register_with_unit(
            "grpc_buffer_limit",
            "Most bytes of requests the gRPC listener buffers: per stream (the HTTP/2 stream \
             window plus one message being decoded) and per connection (its window)",
            Unit::Bytes,
            grpc_buffer_limits.clone(),
        );
        let upload_failures = Family::<UploadFailureLabels, Counter>::default();
        registry.register(
            "upload_failures",
            "Blob uploads refused or failed, by reason",
            upload_failures.clone(),
        );
        registry.register(
            "build",
            "The running hoard version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let snapshot = Arc::new(Mutex::new(EngineSnapshot::default()));
        registry.register_collector(Box::new(EngineCollector {
            snapshot: snapshot.clone(),
        }));
        Metrics {
            registry,
            started: Instant::now(),
            requests,
            durations,
            received,
            sent,
            ac_lookups,
            cas_lookups,
            upload_failures,
            grpc_buffer_limits,
            served: [AtomicU64::new(0), AtomicU64::new(0)],
            snapshot,
            history: history::History::new(history::SAMPLES_KEPT),
            top: top::TopKeys::default(),
            object_store_queue_depth: AtomicU64::new(NO_TIER),
            object_store_queue_age: AtomicU64::new(0),
            status_fields: Mutex::new(None),
        }
    }

    /// The samples of the last hour (filled by [`history::run_sampler`]).
    pub fn history(&self) -> &history::History {
        &self.history
    }

    /// Per-instance traffic by key (counted by [`crate::store::Metered`]).
    pub fn top_keys(&self) -> &top::TopKeys {
        &self.top
    }

    /// Counts a request for the action-cache entry `key` that moved `bytes` (status page).
    pub fn count_action_traffic(&self, key: &crate::store::ActionKey, bytes: u64) {
        self.top.count(&key.instance, &hex::encode(key.hash), bytes);
    }

    /// Counts a read or write of the blob `digest` that moved `bytes` (status page).
    pub fn count_blob_traffic(&self, digest: &crate::engine::Digest, bytes: u64) {
        self.top
            .count(top::CAS_INSTANCE, &digest.to_string(), bytes);
    }

    /// Publishes the object-store tier's upload queue: bytes of the local log not yet uploaded
    /// and how long the uploader has been behind (the status page shows them; nothing is shown
    /// until a tier publishes a first value).
    pub fn publish_object_store_queue(&self, backlog_bytes: u64, behind: Duration) {
        self.object_store_queue_age
            .store(behind.as_secs(), Ordering::Relaxed);
        self.object_store_queue_depth
            .store(backlog_bytes.min(NO_TIER - 1), Ordering::Relaxed);
    }

    /// The last queue depth (bytes) a tier published, `None` without a tier.
    pub fn object_store_queue_depth(&self) -> Option<u64> {
        Some(self.object_store_queue_depth.load(Ordering::Relaxed)).filter(|&d| d != NO_TIER)
    }

    /// The last queue age (seconds behind) a tier published, `None` without a tier.
    pub fn object_store_queue_age(&self) -> Option<u64> {
        self.object_store_queue_depth()
            .map(|_| self.object_store_queue_age.load(Ordering::Relaxed))
    }

    /// The registry, for a part of the server with metrics of its own to register them
    /// (before the registry is shared).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds `fields` (a JSON object's members, produced at each call) to `GET /status`.
    pub fn set_status_fields(&self, fields: StatusFields) {
        *self.status_fields.lock().expect("status fields") = Some(fields);
    }

    /// The extra `/status` members, if a part of the server set some.
    pub fn status_fields(&self) -> Option<String> {
        let fields = self.status_fields.lock().expect("status fields").clone();
        fields.map(|f| f())
    }

    /// Time since this registry was created (server start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests `protocol` has finished serving.
    pub fn served(&self, protocol: Protocol) -> u64 {
        self.served[protocol.index()].load(Ordering::Relaxed)
    }

    /// Every metric in the Prometheus text format, the store's gauges showing `stats`.
    pub fn render(&self, stats: Stats) -> String {
        *self.snapshot.lock().expect("snapshot") = EngineSnapshot {
            stats,
            uptime: self.uptime(),
        };
        self.encode_registry()
    }

    /// The registry in the Prometheus text format, the store's gauges as last rendered.
    fn encode_registry(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// One action-cache read: a hit or a miss.
    pub fn ac_lookup(&self, protocol: Protocol, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.ac_lookups
            .get_or_create(&AcLookupLabels {
                protocol: protocol.as_str(),
                result,
            })
            .inc();
    }

    /// Blobs one store `operation` looked up: `hits` present, `misses` absent.
    pub fn cas_lookups(&self, protocol: Protocol, operation: &'static str, hits: u64, misses: u64) {
        for (result, count) in [("hit", hits), ("miss", misses)] {
            let labels = CasLookupLabels {
                protocol: protocol.as_str(),
                operation,
                result,
            };
            // Touch both series even at 0, so a dashboard's ratio has both sides from the start.
            self.cas_lookups.get_or_create(&labels).inc_by(count);
        }
    }

    /// One failed blob upload; `reason` is the store error's [`crate::store::Error::kind_name`].
    pub fn upload_failed(&self, protocol: Protocol, reason: &'static str) {
        self.upload_failures
            .get_or_create(&UploadFailureLabels {
                protocol: protocol.as_str(),
                reason,
            })
            .inc();
    }

    /// Publishes the gRPC listener's buffering bounds (`hoard_grpc_buffer_limit_bytes`).
    pub fn publish_grpc_buffer_limits(&self, per_stream: u64, per_connection: u64) {
        for (scope, bytes) in [("stream", per_stream), ("connection", per_connection)] {
            let gauge = self
                .grpc_buffer_limits
                .get_or_create(&ScopeLabels { scope });
            gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// The sent-bytes counter of one method, for bytes streamed after its call finished.
    pub fn sent_counter(
        &self,
        protocol: Protocol,
        service: &'static str,
        method: &'static str,
    ) -> Counter {
        self.sent.get_or_create_owned(&MethodLabels {
            protocol: protocol.as_str(),
            service,
            method,
        })
    }
}

/// One request being served. Fill in what is known, then [`Call::finish`] it. A call dropped
/// unfinished (the client went away and its handler was cancelled) is recorded with status
/// `CANCELLED` (gRPC) or `499` (HTTP, nginx's "client closed request").
pub struct Call {
    metrics: Arc<Metrics>,
    access_log: bool,
    protocol: Protocol,
    service: &'static str,
    method: &'static str,
    started: Instant,
    recorded: bool,
    /// The digest, key or path the request is about (access log).
    pub key: Option<String>,
    /// The size of the blob or value it moved (access log).
    pub size: Option<u64>,
    /// Payload bytes received.
    pub received: u64,
    /// Payload bytes sent (before the call finished).
    pub sent: u64,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("protocol", &self.protocol)
            .field("service", &self.service)
            .field("method", &self.method)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// Starts the clock on a request to `service`'s `method`, to be recorded in `metrics` (and
    /// the access log if `access_log`).
    pub fn start(
        metrics: &Arc<Metrics>,
        access_log: bool,
        protocol: Protocol,
        service: &'static str,
        method: &'static str,
    ) -> Call {
        // Tells a `watching` caller (the gRPC listener) that this request is accounted for.
        let _ = STARTED.try_with(|started| started.store(true, Ordering::Relaxed));
        Call {
            metrics: metrics.clone(),
            access_log,
            protocol,
            service,
            method,
            started: Instant::now(),
            recorded: false,
            key: None,
            size: None,
            received: 0,
            sent: 0,
        }
    }

    /// The same call, timed from `started` (when the request arrived) rather than from now.
    pub fn since(mut self, started: Instant) -> Call {
        self.started = started;
        self
    }

    /// Records the finished request with its final `status` (gRPC code name or HTTP status
    /// code).
    pub fn finish(mut self, status: Cow<'static, str>) {
        self.record(status);
    }

    fn record(&mut self, status: Cow<'static, str>) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let metrics = &*self.metrics;
        let elapsed = self.started.elapsed();
        let labels = MethodLabels {
            protocol: self.protocol.as_str(),
            service: self.service,
            method: self.method,
        };
        metrics
            .durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        metrics
            .received
            .get_or_create(&labels)
            .inc_by(self.received);
        metrics.sent.get_or_create(&labels).inc_by(self.sent);
        metrics.served[self.protocol.index()].fetch_add(1, Ordering::Relaxed);
        if self.access_log {
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                protocol = %self.protocol.as_str(),
                method = %format_args!("{}/{}", self.service, self.method),
                // Quoted and escaped: keys come from clients.
                key = ?OrDash(self.key.as_deref()),
                size = %OrDash(self.size),
                status = %status,
                duration_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1e3),
                "request",
            );
        }
        metrics
            .requests
            .get_or_create(&RequestLabels {
                protocol: labels.protocol,
                service: labels.service,
                method: labels.method,
                status,
            })
            .inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.recorded {
            let status = match self.protocol {
                Protocol::Grpc => "CANCELLED",
                Protocol::Http => "499",
            };
            self.record(Cow::Borrowed(status));
        }
    }
}

/// Shows a value, or `-` for none (access-log style); `{:?}` shows the value's `Debug`.
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// What a handler learned about its request that the wrapper around it could not see (a
/// ByteStream Write's digest is in its first stream message, which only the handler reads).
#[derive(Debug, Default)]
struct Note {
    key: Option<String>,
    size: Option<u64>,
}

tokio::task_local! {
    static NOTE: Arc<Mutex<Note>>;
    static STARTED: Arc<AtomicBool>;
}

/// Runs `future`, and says whether a [`Call`] was started inside it: a gRPC request that never
/// reached the per-call instrumentation (tonic refused it before our service ran, e.g. a
/// message that does not decode) must still be counted by whoever served it.
pub async fn watching<F: std::future::Future>(future: F) -> (F::Output, bool) {
    let started = Arc::new(AtomicBool::new(false));
    let output = STARTED.scope(started.clone(), future).await;
    (output, started.load(Ordering::Relaxed))
}

/// Tells the access log which blob the current request is about. Called by request handlers;
/// does nothing outside an observed call (or when no one listens).
pub fn note_blob(digest: &crate::engine::Digest) {
    let _ = NOTE.try_with(|note| {
        let mut note = note.lock().expect("note");
        note.key = Some(digest.to_string());
        note.size = Some(digest.size);
    });
}

/// Runs `future` so that [`note_blob`] calls inside it land in `call`.
pub(crate) async fn noting<F: std::future::Future>(call: &mut Call, future: F) -> F::Output {
    let note = Arc::new(Mutex::new(Note::default()));
    let output = NOTE.scope(note.clone(), future).await;
    let note = std::mem::take(&mut *note.lock().expect("note"));
    if call.key.is_none() {
        call.key = note.key;
    }
    if call.size.is_none() {
        call.size = note.size;
    }
    output
}

/// The `hash/size` of the blob a ByteStream resource name refers to (any layout: uploads,
/// downloads, compressed blobs): the first 64-hex-character segment followed by a size.
pub fn blob_in_resource(name: &str) -> Option<(String, u64)> {
    let segments: Vec<&str> = name.split('/').collect();
    segments.windows(2).find_map(|pair| {
        let hash_like = pair[0].len() == 64 && pair[0].bytes().all(|b| b.is_ascii_hexdigit());
        let size = pair[1].parse::<u64>().ok()?;
        hash_like.then(|| (format!("{}/{size}", pair[0]), size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn resource_names_yield_their_blob() {
        let upload = format!("inst/uploads/1234-uuid/blobs/{HASH}/42");
        assert_eq!(blob_in_resource(&upload), Some((format!("{HASH}/42"), 42)));
        let download = format!("blobs/{HASH}/7");
        assert_eq!(blob_in_resource(&download), Some((format!("{HASH}/7"), 7)));
        let compressed = format!("a/b/compressed-blobs/zstd/{HASH}/9");
        assert_eq!(
            blob_in_resource(&compressed),
            Some((format!("{HASH}/9"), 9))
        );
        assert_eq!(blob_in_resource("blobs/abc/1"), None);
        assert_eq!(blob_in_resource(&format!("blobs/{HASH}/-1")), None);
    }

    #[test]
    fn a_finished_call_is_counted_and_rendered() {
        let metrics = Arc::new(Metrics::new());
        let mut call = Call::start(&metrics, false, Protocol::Http, "cas", "PUT");
        call.received = 10;
        call.finish(Cow::Borrowed("200"));
        // A call its handler never finished (the client left) still counts, as cancelled.
        drop(Call::start(
            &metrics,
            false,
            Protocol::Grpc,
            "ByteStream",
            "Write",
        ));
        metrics.ac_lookup(Protocol::Grpc, false);
        metrics.cas_lookups(Protocol::Grpc, "find_missing", 3, 1);
        metrics.upload_failed(Protocol::Http, "hash_mismatch");
        assert_eq!(metrics.served(Protocol::Http), 1);
        assert_eq!(metrics.served(Protocol::Grpc), 1);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics.registry).unwrap();
        for line in [
            "hoard_requests_total{protocol=\"http\",service=\"cas\",method=\"PUT\",status=\"200\"} 1",
            "hoard_received_bytes_total{protocol=\"http\",service=\"cas\",method=\"PUT\"} 10",
            "hoard_ac_lookups_total{protocol=\"grpc\",result=\"miss\"} 1",
            "hoard_cas_lookups_total{protocol=\"grpc\",operation=\"find_missing\",result=\"hit\"} 3",
            "hoard_upload_failures_total{protocol=\"http\",reason=\"hash_mismatch\"} 1",
            "hoard_request_duration_seconds_count{protocol=\"http\",service=\"cas\",method=\"PUT\"} 1",
            "hoard_requests_total{protocol=\"grpc\",service=\"ByteStream\",method=\"Write\",status=\"CANCELLED\"} 1",
            "hoard_build_info{version=",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
