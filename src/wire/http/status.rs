//! `GET /status`: what the server holds, as JSON.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

use super::body::Body;
use super::response::ok;
use crate::engine::Engine;

/// The engine's counters and limits.
pub(super) fn get(engine: &Engine) -> Response<Body> {
    let stats = engine.stats();
    // Every value is a number or the crate version, so no JSON escaping is needed.
    let json = format!(
        "{{\"version\":\"{}\",\"blobs\":{},\"blob_bytes\":{},\"actions\":{},\"max_blob_size\":{}}}\n",
        env!("CARGO_PKG_VERSION"),
        stats.blobs,
        stats.blob_bytes,
        stats.actions,
        engine.config().max_blob_size,
    );
    let mut response = ok(Body::full(json));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
