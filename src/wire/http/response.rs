//! Responses: success, and failures with a status code and a message for the client (including
//! how engine errors map to status codes).

use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

use super::body::Body;
use crate::engine::Error;

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
}

impl HttpError {
    /// An error with `status` and a message saying what was wrong.
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            allow: None,
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
        response
    }
}

impl From<Error> for HttpError {
    fn from(error: Error) -> HttpError {
        let status = match &error {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            // A corrupt blob has been dropped: to the client it is simply gone (as over gRPC).
            Error::NotFound(_) | Error::DataLoss(_) => StatusCode::NOT_FOUND,
            // Size limits are checked before the engine is asked, so what remains is space
            // (or upload slots, which the engine does not tell apart from space).
            Error::ResourceExhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
            // A failing disk is worth a retry; only a bug is a 500.
            Error::Io { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, error.to_string())
    }
}
