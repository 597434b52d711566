//! The gRPC listener's connections in the real world: accepted, counted and driven here (with
//! hyper's HTTP/2 server) rather than by tonic's `Server`, so that what a slow or idle client may
//! hold is bounded:
//!
//! - at most [`GrpcConfig::max_connections`] at once; one more gets the server's SETTINGS and a
//!   GOAWAY (`ENHANCE_YOUR_CALM`, "too many connections") and is closed;
//! - the TLS handshake and the client's HTTP/2 preface must arrive within
//!   [`GrpcConfig::handshake_timeout`] (a client that sends nothing, or half a preface, is closed);
//! - a connection with no call in flight for [`GrpcConfig::idle_timeout`] is sent a GOAWAY and
//!   closed (long enough for Bazel's idle channels between builds); a client that does not
//!   acknowledge it is disconnected a handshake timeout later;
//! - keep-alive PINGs every [`GrpcConfig::keepalive_interval`] close a connection whose peer
//!   stopped answering;
//! - a request stream that sends nothing for [`GrpcConfig::body_timeout`] while the service waits
//!   for it fails with DEADLINE_EXCEEDED (its upload is parked for resumption as usual).
//!
//! Under madsim, madsim-tonic carries messages without HTTP/2, so none of this exists there.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::codegen::Service as _;
use tonic::service::Routes;

use super::{unobserved, GrpcConfig};
use crate::observe::{self, Metrics};
use crate::wire::limits::{BodyError, ConnectionSlots, Progress};

/// The client's connection preface (24 bytes) and the header of the SETTINGS frame that must
/// follow it: once this much has arrived, the HTTP/2 handshake is the client's no longer.
const HANDSHAKE_BYTES: u64 = 24 + 9;

/// Largest HTTP/2 frame a client may send: 1 MiB of an upload is 4 DATA frames instead of
/// HTTP/2's default 64, each a wake of the call's task and a trip through h2 and tonic. A frame
/// counts against the stream window like any bytes, so no more is buffered than before.
const MAX_FRAME_SIZE: u32 = 256 << 10;

/// How long a peer may take to answer a keep-alive PING.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 error code `ENHANCE_YOUR_CALM` (RFC 9113 section 7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Serves `routes` on `listener` until `shutdown` completes, then stops accepting, sends every
/// connection a GOAWAY and waits (up to [`GrpcConfig::drain_timeout`]) for calls in flight.
pub(super) async fn serve(
    routes: Routes,
    config: &GrpcConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = config.tls.as_ref().map(|tls| tls.grpc_acceptor());
    let builder = Arc::new(http2_builder(config));
    let slots = ConnectionSlots::new(config.max_connections);
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a sender; `recv` yields `None` once all of them are gone.
    let (open_connection, mut all_closed) = mpsc::channel::<()>(1);
    let timeouts = Timeouts::of(config);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a gRPC connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((stream, slot)) = slots.admit(stream, "grpc", too_many_connections) else {
            continue;
        };
        let connection = Connection {
            routes: routes.clone(),
            builder: builder.clone(),
            timeouts,
            stopping: stopping.clone(),
            metrics: config.metrics.clone(),
            access_log: config.access_log,
        };
        let tls = tls.clone();
        let open = open_connection.clone();
        tokio::spawn(async move {
            connection.run(stream, tls).await;
            drop((open, slot));
        });
    }
    drop(listener);
    stop.send_replace(true);
    drop(open_connection);
    if tokio::time::timeout(config.drain_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?config.drain_timeout,
            "gRPC connections still busy after shutdown; leaving them"
        );
    }
    Ok(())
}

/// hyper's HTTP/2 server with the configured windows and keep-alive.
fn http2_builder(config: &GrpcConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// The server's SETTINGS and a GOAWAY saying why, for a connection over the cap: gRPC clients
/// report it as UNAVAILABLE with the reason (and retry later).
fn too_many_connections(limit: usize) -> Vec<u8> {
    let reason = format!("too many connections (this server allows {limit}); retry later");
    let mut frames = Vec::with_capacity(9 + 9 + 8 + reason.len());
    // SETTINGS, empty: the server's preface.
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // GOAWAY on stream 0: last stream 0, ENHANCE_YOUR_CALM, the reason as debug data.
    let length = (8 + reason.len()) as u32;
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(reason.as_bytes());
    frames
}

/// The per-connection limits.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    handshake: Duration,
    idle: Duration,
    body: Duration,
}

impl Timeouts {
    fn of(config: &GrpcConfig) -> Timeouts {
        Timeouts {
            handshake: config.handshake_timeout,
            idle: config.idle_timeout,
            body: config.body_timeout,
        }
    }
}

/// One accepted connection, before it is served.
struct Connection {
    routes: Routes,
    builder: Arc<http2::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    access_log: bool,
}

impl Connection {
    /// The TLS handshake if configured, then HTTP/2 until the client leaves, a limit closes the
    /// connection, or the server stops.
    async fn run(self, stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let accepted = Instant::now();
        let handshake_deadline = accepted + self.timeouts.handshake;
        match tls {
            None => self.serve(stream, handshake_deadline).await,
            Some(tls) => {
                match tokio::time::timeout_at(handshake_deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => self.serve(stream, handshake_deadline).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out; closing"),
                }
            }
        }
    }

    async fn serve<S>(mut self, stream: S, handshake_deadline: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            routes: self.routes,
            activity: activity.clone(),
            body_timeout: self.timeouts.body,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
        };
        let io = TokioIo::new(Counted {
            inner: stream,
            activity: activity.clone(),
        });
        let connection = self.builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut handshaken = false;
        let mut closing = false;
        // After an idle GOAWAY, when the connection is dropped if the client has not closed it.
        let mut idle_close_deadline = None;
        loop {
            let wake = if !handshaken {
                handshake_deadline
            } else {
                activity.idle_deadline(self.timeouts.idle)
            };
            let give_up = async {
                match idle_close_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let stop_requested = self.stopping.wait_for(|stop| *stop);
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "gRPC connection ended with an error");
                    }
                    return;
                }
                _ = stop_requested, if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(wake), if !closing => {
                    if !handshaken {
                        if activity.bytes_read() < HANDSHAKE_BYTES {
                            tracing::debug!("gRPC client sent no HTTP/2 preface in time; closing");
                            return;
                        }
                        handshaken = true;
                    } else if activity.idle_for() >= self.timeouts.idle {
                        tracing::debug!("gRPC connection idle; sending GOAWAY");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        // hyper closes once the client acknowledges the GOAWAY's PING; one that
                        // never does gets as long as a handshake.
                        idle_close_deadline = Some(Instant::now() + self.timeouts.handshake);
                    }
                }
                () = give_up => {
                    tracing::debug!("idle gRPC client did not close after GOAWAY; closing");
                    return;
                }
            }
        }
    }
}

/// What a connection has done: bytes read, calls in flight, and since when none has been.
#[derive(Debug)]
struct Activity {
    bytes_read: AtomicU64,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            bytes_read: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long no call has been in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since().elapsed()
    }

    /// When the connection will have been idle for `timeout` if nothing happens (a call in
    /// flight pushes it a whole `timeout` ahead: checked again then).
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + timeout
        } else {
            self.idle_since() + timeout
        }
    }
}

/// One call in flight on a connection, from its request until its response body is sent or
/// dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Set before the count drops, so a reader that sees zero sees the new time.
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's service: the routes, with each call tracked, its request body timed, and
/// recorded here if it never reached the per-call instrumentation (see `unobserved`).
#[derive(Clone)]
struct Tracked {
    routes: Routes,
    activity: Arc<Activity>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
    access_log: bool,
}

/// A request stream that stalls ends the call with this.
fn stalled(error: BodyError) -> Box<dyn std::error::Error + Send + Sync> {
    match error {
        BodyError::Stalled(_) => Box::new(tonic::Status::deadline_exceeded(error.to_string())),
        BodyError::Inner(e) => e,
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.activity.clone());
        let arrived = std::time::Instant::now();
        let path = request.uri().path().to_owned();
        let timeout = self.body_timeout;
        let request = request.map(|body| Progress::new(body, timeout).map_err(stalled));
        let mut routes = self.routes.clone();
        let (metrics, access_log) = (self.metrics.clone(), self.access_log);
        Box::pin(async move {
            let (response, observed) = observe::watching(routes.call(request)).await;
            let response = response?;
            if !observed {
                unobserved::record(&metrics, access_log, &path, arrived, response.headers());
            }
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its call counted as in flight until it is sent or dropped.
struct TrackedBody {
    inner: tonic::body::Body,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream, counting the bytes the client has sent.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.activity.bytes_read.fetch_add(read, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_settings_then_goaway_with_the_reason() {
        let frames = too_many_connections(7);
        assert_eq!(&frames[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &frames[9..];
        let length = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!(goaway.len(), 9 + length);
        assert_eq!(goaway[3], 0x7);
        assert_eq!(&goaway[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        let reason = std::str::from_utf8(&goaway[17..]).unwrap();
        assert!(reason.contains("allows 7"), "{reason}");
    }
}
