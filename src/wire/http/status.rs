//! `GET /status`: what the server holds, as JSON; `GET /metrics`: everything, for Prometheus;
//! `GET /` and `/ui/`: the status page, drawn from `GET /ui/data` (see [`crate::observe::ui`]).

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use hyper::Response;

use super::body::Body;
use super::response::ok;
use super::HttpConfig;
use crate::observe::{ui, Protocol, METRICS_CONTENT_TYPE};
use crate::store::Store;

/// The store's counters and limits, the uptime, and the requests served so far.
///
/// ```json
/// {"version":"0.1.0","blobs":3,"blob_bytes":1024,"actions":1,"max_blob_size":68719476736,
///  "max_size":null,"uptime_seconds":12.5,"disk_bytes":2048,"evictions":0,"evicted_bytes":0,
///  "requests":{"grpc":10,"http":4}}
/// ```
///
/// With the object-store tier on, an `"object_store"` member shows the upload queue.
pub(super) fn get(store: &dyn Store, config: &HttpConfig) -> Response<Body> {
    let stats = store.stats();
    let limits = store.limits();
    let metrics = &config.metrics;
    let max_size = limits
        .max_size
        .map_or_else(|| "null".to_owned(), |size| size.to_string());
    // Every value is a number, null or the crate version, so no JSON escaping is needed.
    let json = format!(
        "{{\"version\":\"{}\",\"blobs\":{},\"blob_bytes\":{},\"actions\":{},\
         \"max_blob_size\":{},\"max_size\":{},\"uptime_seconds\":{:.3},\"disk_bytes\":{},\
         \"evictions\":{},\"evicted_bytes\":{},\"requests\":{{\"grpc\":{},\"http\":{}}}}}\n",
        env!("CARGO_PKG_VERSION"),
        stats.blobs,
        stats.blob_bytes,
        stats.actions,
        limits.max_blob_size,
        max_size,
        metrics.uptime().as_secs_f64(),
        stats.disk_bytes,
        stats.evictions,
        stats.evicted_bytes,
        metrics.served(Protocol::Grpc),
        metrics.served(Protocol::Http),
    );
    let json = match metrics.status_fields() {
        Some(fields) => {
            let open = json.trim_end().strip_suffix('}').unwrap_or(&json);
            format!("{open},{fields}}}\n")
        }
        None => json,
    };
    with_type(ok(Body::full(json)), "application/json")
}

/// Every metric in the Prometheus text format (version 0.0.4).
pub(super) fn metrics(store: &dyn Store, config: &HttpConfig) -> Response<Body> {
    with_type(
        ok(Body::full(config.metrics.render(store.stats()))),
        METRICS_CONTENT_TYPE,
    )
}

/// The status page. Its policy lets it load nothing but itself and its data.
pub(super) fn page() -> Response<Body> {
    let mut response = with_type(ok(Body::full(ui::PAGE)), "text/html; charset=utf-8");
    response.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'",
        ),
    );
    response
}

/// The status page's data: the last hour of samples and one taken now.
pub(super) fn page_data(store: &dyn Store, config: &HttpConfig) -> Response<Body> {
    let json = ui::data(&config.metrics, store.stats(), store.limits());
    let mut response = with_type(ok(Body::full(json)), "application/json");
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn with_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
