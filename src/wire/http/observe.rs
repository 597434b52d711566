//! Per-request instrumentation of the HTTP front end: request metrics and the access log (see
//! [`crate::observe`]). Hits, misses and upload failures are the store's to count
//! ([`crate::store::Metered`]).
//!
//! A request is timed to its response head: a streamed blob download is counted by the length
//! it announces, not by the bytes the client ends up reading.

use std::borrow::Cow;

use hyper::body::Body as _;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response};

use super::body::{Body, RequestBody};
use super::route::{self, Route};
use super::HttpConfig;
use crate::observe::{Call, Protocol};

/// One HTTP request being served.
pub(super) struct Observation {
    call: Call,
    method: Method,
}

/// Starts observing `request` (before its body is read).
pub(super) fn begin(config: &HttpConfig, request: &Request<RequestBody>) -> Observation {
    let path = request.uri().path();
    let service = match route::parse(path) {
        Ok(Route::Ac { .. }) => "ac",
        Ok(Route::Cas { .. }) => "cas",
        Ok(Route::Status) => "status",
        Ok(Route::Metrics) => "metrics",
        Ok(Route::Page | Route::PageData) => "ui",
        Err(_) => "other",
    };
    let method = request.method().clone();
    let mut call = Call::start(
        &config.metrics,
        config.access_log,
        Protocol::Http,
        service,
        method_label(&method),
    );
    let shown: String = path.chars().take(200).collect();
    call.key = Some(shown);
    if let Some(length) = request.body().size_hint().exact() {
        call.received = length;
        if method == Method::PUT {
            call.size = Some(length);
        }
    }
    Observation { call, method }
}

impl Observation {
    /// Records the request with the `response` about to be sent.
    pub(super) fn finish(mut self, response: &Response<Body>) {
        let status = response.status();
        let read = self.method == Method::GET || self.method == Method::HEAD;
        if read {
            let announced = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or_else(|| response.body().size_hint().exact());
            if status.is_success() {
                self.call.size = announced;
            }
            if self.method == Method::GET {
                self.call.sent = response.body().size_hint().exact().unwrap_or(0);
            }
        } else {
            self.call.sent = response.body().size_hint().exact().unwrap_or(0);
        }
        let status = Cow::Owned(status.as_u16().to_string());
        self.call.finish(status);
    }
}

/// The `method` label: the common methods by name, anything else as `OTHER` (clients choose
/// methods, and each label value is a new series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
