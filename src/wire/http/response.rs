//! Responses: success, and failures with a status code and a message for the client (including
//! store errors becoming them).

use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};

use super::body::Body;
use crate::store::Error;

/// A `200 OK` carrying bytes (blobs and action results are opaque to HTTP).
pub(super) fn ok(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A request that failed, ready to become a `text/plain` response.
#[derive(Debug)]
pub(super) struct HttpError {
    status: StatusCode,
    message: String,
    /// The methods a `405 Method Not Allowed` must list.
    allow: Option<&'static str>,
    /// Seconds a client should wait before retrying (`Retry-After`), for refusals that a moment
    /// later may succeed.
    retry_after: Option<u32>,
}

impl HttpError {
    /// An error with `status` and a message saying what was wrong.
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// `405 Method Not Allowed` for `method` on a resource that supports `allow`.
    pub(super) fn method_not_allowed(method: &Method, allow: &'static str) -> HttpError {
        HttpError {
            allow: Some(allow),
            ..HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed here; use {allow}"),
            )
        }
    }

    /// The response carrying this error; server-side failures are logged, client mistakes only
    /// at debug level (a misbehaving client must not flood the log).
    pub(super) fn into_response(self) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "http request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "http request refused");
        }
        let mut response = Response::new(Body::full(format!("{}\n", self.message)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Error> for HttpError {
    fn from(error: Error) -> HttpError {
        let retry_after = error
            .retry_after()
            .map(|delay| u32::try_from(delay.as_secs().max(1)).unwrap_or(u32::MAX));
        HttpError {
            retry_after,
            ..HttpError::new(error.http_status(), error.to_string())
        }
    }
}
