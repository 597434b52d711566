//! The last hour of the server's counters, in memory, for the status page (`GET /ui/`).
//!
//! A background task ([`run_sampler`], on the seam's [`Runtime`], so it runs under madsim too)
//! takes a [`Sample`] every [`SAMPLE_INTERVAL`] into a ring of [`SAMPLES_KEPT`]; the page draws
//! rates and ratios from the differences of consecutive samples. A sample is read from the same
//! Prometheus text `GET /metrics` serves (parsed by [`parse_text`]), plus the store's counts, so
//! the page can never show a number the metrics do not.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Metrics, Protocol};
use crate::engine::Stats;
use crate::seam::Runtime;

/// How often the sampler takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour at [`SAMPLE_INTERVAL`].
pub const SAMPLES_KEPT: usize = 360;

/// The request methods whose latency is upload latency: `(protocol, service, method)`.
const UPLOAD_METHODS: [(&str, &str, &str); 5] = [
    ("http", "cas", "PUT"),
    ("http", "ac", "PUT"),
    ("grpc", "ByteStream", "Write"),
    ("grpc", "ContentAddressableStorage", "BatchUpdateBlobs"),
    ("grpc", "ActionCache", "UpdateActionResult"),
];

/// One metric sample of the Prometheus text format: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The metric name (with its `_total`, `_bucket`, ... suffix).
    pub name: String,
    /// Label names and values, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Series {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Parses the Prometheus text format (comments skipped); a line that does not parse is skipped.
pub fn parse_text(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find('=')?;
            let key = inner[..eq].trim_start_matches(',').to_owned();
            let mut chars = inner[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key, value);
            inner = inner[eq + 1..][1 + end + 1..].trim_start_matches(',');
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Series {
        name,
        labels,
        value,
    })
}

/// Which class a request's final status belongs to, or `None` for success or a plain miss.
pub fn error_class(protocol: &str, status: &str) -> Option<&'static str> {
    let class = match (protocol, status) {
        ("http", s) if s.starts_with('2') || s == "404" => return None,
        ("grpc", "OK" | "NOT_FOUND") => return None,
        ("http", "401" | "403") | ("grpc", "UNAUTHENTICATED" | "PERMISSION_DENIED") => "auth",
        ("http", "408") | ("grpc", "DEADLINE_EXCEEDED") => "timeout",
        ("http", "499") | ("grpc", "CANCELLED") => "cancelled",
        ("http", "503" | "507" | "429") | ("grpc", "UNAVAILABLE" | "RESOURCE_EXHAUSTED") => {
            "unavailable"
        }
        ("http", s) if s.starts_with('4') => "client",
        ("grpc", "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE")
        | ("grpc", "ALREADY_EXISTS" | "UNIMPLEMENTED" | "ABORTED") => "client",
        _ => "server",
    };
    Some(class)
}

/// The server's counters at one moment (totals since start; rates are differences).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the server started.
    pub at: f64,
    /// Action-cache lookups by protocol (gRPC, HTTP): `[hits, misses]`.
    pub ac: [[u64; 2]; 2],
    /// CAS blobs looked up by clients (FindMissingBlobs, reads, HTTP resolves; not the checks
    /// ByteStream makes itself) by protocol: `[hits, misses]`.
    pub cas: [[u64; 2]; 2],
    /// Requests served by protocol.
    pub requests: [u64; 2],
    /// Payload bytes received.
    pub received: u64,
    /// Payload bytes sent.
    pub sent: u64,
    /// What the store held.
    pub stats: Stats,
    /// Failed requests by [`error_class`].
    pub errors: BTreeMap<&'static str, u64>,
    /// Upload failures by the store error's variant.
    pub upload_failures: BTreeMap<String, u64>,
    /// Upload latency histogram, cumulative: `(upper bound in seconds, count)`.
    pub upload_latency: Vec<(f64, u64)>,
}

impl Sample {
    /// The sample `metrics` (rendered as `/metrics` renders them) and `stats` make now.
    pub fn take(metrics: &Metrics, stats: Stats) -> Sample {
        let mut sample = Sample {
            at: metrics.uptime().as_secs_f64(),
            stats,
            ..Sample::default()
        };
        let protocol_index = |name: &str| match name {
            "grpc" => Some(Protocol::Grpc.index()),
            "http" => Some(Protocol::Http.index()),
            _ => None,
        };
        let mut latency: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for series in parse_text(&metrics.encode_registry()) {
            let count = series.value as u64;
            let protocol = series.label("protocol");
            let hit = usize::from(series.label("result") != "hit");
            match series.name.as_str() {
                "hoard_ac_lookups_total" => {
                    if let Some(p) = protocol_index(protocol) {
                        sample.ac[p][hit] += count;
                    }
                }
                "hoard_cas_lookups_total" if series.label("operation") != "contains" => {
                    if let Some(p) = protocol_index(protocol) {
                        sample.cas[p][hit] += count;
                    }
                }
                "hoard_requests_total" => {
                    if let Some(p) = protocol_index(protocol) {
                        sample.requests[p] += count;
                    }
                    if let Some(class) = error_class(protocol, series.label("status")) {
                        *sample.errors.entry(class).or_default() += count;
                    }
                }
                "hoard_received_bytes_total" => sample.received += count,
                "hoard_sent_bytes_total" => sample.sent += count,
                "hoard_upload_failures_total" => {
                    *sample
                        .upload_failures
                        .entry(series.label("reason").to_owned())
                        .or_default() += count;
                }
                "hoard_request_duration_seconds_bucket" => {
                    let method = (protocol, series.label("service"), series.label("method"));
                    let bound = series.label("le").parse::<f64>();
                    if let (true, Ok(bound)) = (UPLOAD_METHODS.contains(&method), bound) {
                        latency.entry(bound.to_bits()).or_insert((bound, 0)).1 += count;
                    }
                }
                _ => {}
            }
        }
        let mut bounds: Vec<(f64, u64)> = latency.into_values().collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        sample.upload_latency = bounds;
        sample
    }
}

/// The ring of samples.
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
}

impl History {
    /// An empty ring keeping the last `capacity` samples.
    pub fn new(capacity: usize) -> History {
        History {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Adds a sample, forgetting the oldest if the ring is full.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history");
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("history")
            .iter()
            .cloned()
            .collect()
    }
}

/// Samples `metrics` (with what `stats` reports) every `interval` into its history, until `stop`
/// completes. Spawn it on `runtime`.
pub async fn run_sampler(
    runtime: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
    stats: impl Fn() -> Stats + Send + 'static,
    interval: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let sampling = async {
        loop {
            let sample = Sample::take(&metrics, stats());
            metrics.history().push(sample);
            runtime.sleep(interval).await;
        }
    };
    tokio::select! {
        biased;
        () = stop => {}
        () = sampling => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn text_lines_parse_with_escaped_labels() {
        let parsed = parse_text(
            "# HELP x y\nhoard_a_total{k=\"v\",q=\"a\\\"b\\\\c\"} 3\nhoard_b 1.5\nbad line\n",
        );
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "hoard_a_total");
        assert_eq!(parsed[0].label("q"), "a\"b\\c");
        assert_eq!(parsed[0].label("k"), "v");
        assert_eq!(parsed[0].value, 3.0);
        assert_eq!(parsed[1].name, "hoard_b");
        assert!(parsed[1].labels.is_empty());
    }

    #[test]
    fn a_sample_sums_what_the_metrics_counted() {
        let metrics = Arc::new(Metrics::new());
        metrics.ac_lookup(Protocol::Grpc, true);
        metrics.ac_lookup(Protocol::Http, false);
        metrics.cas_lookups(Protocol::Grpc, "find_missing", 3, 1);
        metrics.cas_lookups(Protocol::Grpc, "contains", 5, 5);
        metrics.upload_failed(Protocol::Http, "hash_mismatch");
        let mut put = super::super::Call::start(&metrics, false, Protocol::Http, "cas", "PUT");
        put.received = 100;
        put.finish(Cow::Borrowed("201"));
        let get = super::super::Call::start(&metrics, false, Protocol::Http, "cas", "GET");
        get.finish(Cow::Borrowed("404"));
        let write =
            super::super::Call::start(&metrics, false, Protocol::Grpc, "ByteStream", "Write");
        write.finish(Cow::Borrowed("INTERNAL"));
        let stats = Stats {
            blobs: 2,
            ..Stats::default()
        };
        let sample = Sample::take(&metrics, stats);
        assert!(sample.at >= 0.0);
        assert_eq!(sample.ac, [[1, 0], [0, 1]]);
        assert_eq!(
            sample.cas,
            [[3, 1], [0, 0]],
            "ByteStream's own checks are not lookups"
        );
        assert_eq!(sample.requests, [1, 2]);
        assert_eq!(sample.received, 100);
        assert_eq!(
            sample.errors,
            BTreeMap::from([("server", 1)]),
            "a 404 is a miss"
        );
        assert_eq!(sample.upload_failures["hash_mismatch"], 1);
        assert_eq!(sample.stats.blobs, 2);
        // Both uploads (the PUT and the Write) are in the latency histogram; the GET is not.
        assert_eq!(sample.upload_latency.last().unwrap().1, 2);
        assert!(sample.upload_latency.last().unwrap().0.is_infinite());

        let history = History::new(2);
        for at in [1.0, 2.0, 3.0] {
            history.push(Sample {
                at,
                ..Sample::default()
            });
        }
        let kept: Vec<f64> = history.samples().iter().map(|s| s.at).collect();
        assert_eq!(kept, [2.0, 3.0]);
    }
}
