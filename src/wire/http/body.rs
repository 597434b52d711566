//! Bodies: the response body type, and reading request bodies frame by frame.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::StatusCode;
use tokio::sync::mpsc;

use super::response::HttpError;
use crate::engine::Error;
use crate::wire::limits::{BodyError, Progress};

/// A request body as the handlers read it: it fails when the client stalls (see
/// [`HttpConfig::body_timeout`](super::HttpConfig::body_timeout)).
pub(super) type RequestBody = Progress<Incoming>;

/// A response body: bytes already in memory, or chunks produced by another task (a blob streamed
/// from the engine), with the exact length known up front so `Content-Length` is always sent.
pub(super) enum Body {
    /// In-memory bytes; `None` once sent.
    Full(Option<Bytes>),
    /// Chunks arriving over a channel.
    Channel {
        chunks: mpsc::Receiver<Result<Bytes, Error>>,
        /// Bytes promised and not yet delivered.
        remaining: u64,
    },
}

/// Sends the chunks of a [`Body::channel`]; dropped early, the body fails rather than end short.
pub(super) type ChunkSender = mpsc::Sender<Result<Bytes, Error>>;

impl Body {
    /// A body of `bytes`.
    pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }

    /// No body at all.
    pub(super) fn empty() -> Body {
        Body::Full(None)
    }

    /// A body of exactly `len` bytes sent through the returned sender. One chunk is buffered:
    /// the producer runs at most a chunk ahead of the client.
    pub(super) fn channel(len: u64) -> (ChunkSender, Body) {
        let (sender, chunks) = mpsc::channel(1);
        let body = Body::Channel {
            chunks,
            remaining: len,
        };
        (sender, body)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Channel { chunks, remaining } => match chunks.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                // Ending short would let the client mistake a prefix for the whole blob.
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(Error::Internal(
                    format!("response body ended {remaining} bytes early"),
                )))),
                Poll::Ready(None) => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Body::Channel { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(match self {
            Body::Full(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            Body::Channel { remaining, .. } => *remaining,
        })
    }
}

/// The next data chunk of a request body (trailers are skipped), or `None` at its end. A body
/// cut short or malformed is a bad request, one that stalls a `408 Request Timeout`: whatever it
/// carried must not be stored.
pub(super) async fn next_data(body: &mut RequestBody) -> Result<Option<Bytes>, HttpError> {
    loop {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return Ok(None),
            Some(Err(e @ BodyError::Stalled(_))) => {
                return Err(HttpError::new(StatusCode::REQUEST_TIMEOUT, e.to_string()))
            }
            Some(Err(e)) => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    format!("request body is incomplete or malformed: {e}"),
                ))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Reads a whole request body of at most `limit` bytes into memory; a larger one is
/// `413 Payload Too Large`, refused from its `Content-Length` before any byte is read.
pub(super) async fn read_bounded(body: &mut RequestBody, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buffer = BytesMut::with_capacity(body.size_hint().lower() as usize);
    while let Some(data) = next_data(body).await? {
        if buffer.len() + data.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}
