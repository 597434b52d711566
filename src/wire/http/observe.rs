//! Per-request instrumentation of the HTTP front end: metrics, hits and misses, upload
//! failures and the access log (see [`crate::observe`]).
//!
//! A request is timed to its response head: a streamed blob download is counted by the length
//! it announces, not by the bytes the client ends up reading.

use std::borrow::Cow;

use hyper::body::Body as _;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response, StatusCode};

use super::body::{Body, RequestBody};
use super::route::{self, Route};
use super::HttpConfig;
use crate::observe::{Call, FailureClass, Protocol, UploadFailure};

/// What a request is about, as far as hit/miss and upload-failure counting cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Ac,
    Cas,
    Other,
}

/// One HTTP request being served.
pub(super) struct Observation {
    call: Call,
    resource: Resource,
    method: Method,
}

/// Starts observing `request` (before its body is read).
pub(super) fn begin(config: &HttpConfig, request: &Request<RequestBody>) -> Observation {
    let path = request.uri().path();
    let (service, resource) = match route::parse(path) {
        Ok(Route::Ac { .. }) => ("ac", Resource::Ac),
        Ok(Route::Cas { .. }) => ("cas", Resource::Cas),
        Ok(Route::Status) => ("status", Resource::Other),
        Ok(Route::Metrics) => ("metrics", Resource::Other),
        Err(_) => ("other", Resource::Other),
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
    Observation {
        call,
        resource,
        method,
    }
}

impl Observation {
    /// Records the request with the `response` about to be sent.
    pub(super) fn finish(mut self, config: &HttpConfig, response: &Response<Body>) {
        let metrics = &config.metrics;
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
            let hit = match status {
                StatusCode::OK => Some(true),
                StatusCode::NOT_FOUND => Some(false),
                _ => None,
            };
            match (self.resource, hit) {
                (Resource::Ac, Some(hit)) => metrics.ac_lookup(Protocol::Http, hit),
                (Resource::Cas, Some(hit)) => {
                    let method = method_label(&self.method);
                    metrics.cas_lookups(Protocol::Http, method, u64::from(hit), u64::from(!hit));
                }
                _ => {}
            }
        } else {
            self.call.sent = response.body().size_hint().exact().unwrap_or(0);
        }
        if self.resource == Resource::Cas && self.method == Method::PUT && !status.is_success() {
            metrics.upload_failed(Protocol::Http, upload_failure(status, response.body()));
        }
        let status = Cow::Owned(status.as_u16().to_string());
        self.call.finish(status);
    }
}

/// Why a `PUT /cas` that got `status` failed; the error response's message tells the
/// mismatches apart.
fn upload_failure(status: StatusCode, body: &Body) -> UploadFailure {
    let class = match status {
        StatusCode::BAD_REQUEST => FailureClass::InvalidArgument,
        StatusCode::INSUFFICIENT_STORAGE | StatusCode::PAYLOAD_TOO_LARGE => {
            FailureClass::ResourceExhausted
        }
        StatusCode::SERVICE_UNAVAILABLE => FailureClass::Unavailable,
        _ => FailureClass::Other,
    };
    let message = match body {
        Body::Full(Some(bytes)) => String::from_utf8_lossy(bytes),
        _ => Cow::Borrowed(""),
    };
    UploadFailure::classify(class, &message)
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
