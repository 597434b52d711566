//! The status page: one self-contained HTML file ([`PAGE`], embedded in the binary: no CDN, no
//! fetch but its own data) and the JSON it refreshes from ([`data`], `GET /ui/data`).
//!
//! ```json
//! {"version":"0.1.0","uptime_seconds":12.5,"interval_seconds":10,"max_size":null,
//!  "max_blob_size":68719476736,"object_store_queue_depth":null,
//!  "object_store_queue_age_seconds":null,"latency_bounds":[0.00025,...],
//!  "samples":[{"at":0.0,"ac":{"grpc":[hits,misses],"http":[0,0]},"cas":{...},
//!              "requests":{"grpc":0,"http":0},"received":0,"sent":0,"blobs":0,"blob_bytes":0,
//!              "actions":0,"disk_bytes":0,"evictions":0,"evicted_bytes":0,
//!              "errors":{"client":1},"upload_failures":{"hash_mismatch":1},
//!              "upload_latency":[cumulative count per bound, +Inf last]}, ...],
//!  "top":[{"instance":"ci","requests":3,"bytes":120,"keys":[{"key":"…","requests":2,"bytes":100}]}]}
//! ```
//!
//! `samples` holds the history ring, oldest first, and always ends with one taken at the request
//! (so a fresh server shows its numbers at once). `object_store_queue_depth` (bytes not yet
//! uploaded) and `object_store_queue_age_seconds` (how long the uploader has been behind) are
//! `null` until an object-store tier publishes them ([`Metrics::publish_object_store_queue`]).

use std::fmt::Write as _;

use super::history::{Sample, SAMPLE_INTERVAL};
use super::Metrics;
use crate::engine::Stats;
use crate::store::Limits;

/// The page served at `GET /` and `GET /ui/`.
pub const PAGE: &str = include_str!("ui.html");

/// Keys listed per instance.
const TOP_KEYS_SHOWN: usize = 10;

/// The page's data: the history, a sample taken now, the limits and the busiest keys.
pub fn data(metrics: &Metrics, stats: Stats, limits: Limits) -> String {
    let mut samples = metrics.history().samples();
    samples.push(Sample::take(metrics, stats));
    let bounds: Vec<f64> = samples
        .last()
        .map(|s| s.upload_latency.iter().map(|(bound, _)| *bound).collect())
        .unwrap_or_default();
    let mut out = String::with_capacity(512 * samples.len());
    let _ = write!(
        out,
        "{{\"version\":{},\"uptime_seconds\":{:.3},\"interval_seconds\":{},\"max_size\":{},\
         \"max_blob_size\":{},\"object_store_queue_depth\":{},\
         \"object_store_queue_age_seconds\":{},\"latency_bounds\":[",
        string(env!("CARGO_PKG_VERSION")),
        metrics.uptime().as_secs_f64(),
        SAMPLE_INTERVAL.as_secs(),
        optional(limits.max_size),
        limits.max_blob_size,
        optional(metrics.object_store_queue_depth()),
        optional(metrics.object_store_queue_age()),
    );
    join(&mut out, bounds.iter(), |out, bound| {
        // The last bound is +Inf, which JSON cannot hold.
        if bound.is_finite() {
            let _ = write!(out, "{bound}");
        } else {
            out.push_str("null");
        }
    });
    out.push_str("],\"samples\":[");
    join(&mut out, samples.iter(), write_sample);
    out.push_str("],\"top\":[");
    join(
        &mut out,
        metrics.top_keys().top(TOP_KEYS_SHOWN).iter(),
        |out, top| {
            let _ = write!(
                out,
                "{{\"instance\":{},\"requests\":{},\"bytes\":{},\"keys\":[",
                string(&top.instance),
                top.total.requests,
                top.total.bytes
            );
            join(out, top.keys.iter(), |out, (key, traffic)| {
                let _ = write!(
                    out,
                    "{{\"key\":{},\"requests\":{},\"bytes\":{}}}",
                    string(key),
                    traffic.requests,
                    traffic.bytes
                );
            });
            out.push_str("]}");
        },
    );
    out.push_str("]}\n");
    out
}

fn write_sample(out: &mut String, sample: &Sample) {
    let Stats {
        blobs,
        blob_bytes,
        actions,
        evictions,
        evicted_bytes,
        disk_bytes,
        ..
    } = sample.stats;
    let [ac_grpc, ac_http] = sample.ac;
    let [cas_grpc, cas_http] = sample.cas;
    let _ = write!(
        out,
        "{{\"at\":{:.3},\"ac\":{{\"grpc\":[{},{}],\"http\":[{},{}]}},\
         \"cas\":{{\"grpc\":[{},{}],\"http\":[{},{}]}},\"requests\":{{\"grpc\":{},\"http\":{}}},\
         \"received\":{},\"sent\":{},\"blobs\":{blobs},\"blob_bytes\":{blob_bytes},\
         \"actions\":{actions},\"disk_bytes\":{disk_bytes},\"evictions\":{evictions},\
         \"evicted_bytes\":{evicted_bytes},\"errors\":{{",
        sample.at,
        ac_grpc[0],
        ac_grpc[1],
        ac_http[0],
        ac_http[1],
        cas_grpc[0],
        cas_grpc[1],
        cas_http[0],
        cas_http[1],
        sample.requests[0],
        sample.requests[1],
        sample.received,
        sample.sent,
    );
    join(out, sample.errors.iter(), |out, (class, count)| {
        let _ = write!(out, "{}:{count}", string(class));
    });
    out.push_str("},\"upload_failures\":{");
    join(
        out,
        sample.upload_failures.iter(),
        |out, (reason, count)| {
            let _ = write!(out, "{}:{count}", string(reason));
        },
    );
    out.push_str("},\"upload_latency\":[");
    join(out, sample.upload_latency.iter(), |out, (_, count)| {
        let _ = write!(out, "{count}");
    });
    out.push_str("]}");
}

/// Writes `items` separated by commas.
fn join<T>(out: &mut String, items: impl Iterator<Item = T>, mut each: impl FnMut(&mut String, T)) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// `text` as a JSON string (instance names and keys come from clients).
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Protocol;

    #[test]
    fn data_holds_the_history_then_now_and_escapes_client_names() {
        let metrics = Metrics::new();
        metrics
            .history()
            .push(Sample::take(&metrics, Stats::default()));
        metrics.ac_lookup(Protocol::Http, true);
        metrics.top_keys().count("we\"ird\n", "k", 5);
        let limits = Limits {
            max_blob_size: 9,
            max_size: Some(100),
        };
        let stats = Stats {
            blob_bytes: 42,
            ..Stats::default()
        };
        let json = data(&metrics, stats, limits);
        assert!(json.contains("\"max_size\":100,"), "{json}");
        assert!(
            json.contains("\"object_store_queue_depth\":null,"),
            "{json}"
        );
        assert!(
            json.contains("\"object_store_queue_age_seconds\":null,"),
            "{json}"
        );
        assert_eq!(json.matches("\"at\":").count(), 2, "{json}");
        let now = json.rsplit("{\"at\":").next().unwrap();
        assert!(now.contains("\"http\":[1,0]"), "{now}");
        assert!(now.contains("\"blob_bytes\":42"), "{now}");
        assert!(json.contains("\"instance\":\"we\\\"ird\\u000a\""), "{json}");
        metrics.publish_object_store_queue(7, std::time::Duration::from_secs(3));
        let json = data(&metrics, stats, limits);
        assert!(json.contains("\"object_store_queue_depth\":7,"), "{json}");
        assert!(
            json.contains("\"object_store_queue_age_seconds\":3,"),
            "{json}"
        );
    }
}
