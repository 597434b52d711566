//! The Bazel HTTP cache protocol front end.
//!
//! - `GET`/`HEAD`/`PUT /cas/{sha256}`: blobs, streamed both ways; a `PUT` needs a
//!   `Content-Length` and is verified against the hash before it is acknowledged.
//! - `GET`/`HEAD`/`PUT /ac/{sha256}`: action-cache entries (encoded `ActionResult`s), per instance.
//! - Either may carry an instance prefix, `/{instance...}/ac/{sha256}`: the path before the last
//!   `ac`/`cas` segment. It names the action-cache namespace; the CAS is shared.
//! - `GET /status`: counters as JSON; `GET /metrics`: Prometheus metrics (see [`crate::observe`]).
//!
//! With authentication configured (see [`crate::auth`]), every request needs an `Authorization`
//! header (`Basic` or `Bearer`); `GET`/`HEAD` may go without one under
//! `--allow-unauthenticated-reads`. A refusal is `401 Unauthorized` with
//! `WWW-Authenticate: Basic realm="hoard"`, sent before any of the body is read. With TLS
//! configured the listener speaks HTTPS only (not under madsim).
//!
//! Served with hyper's HTTP/1.1 connection driver directly (no hyper-util executor or timer), so
//! the same code runs on real tokio and under madsim.

mod ac;
mod body;
mod cas;
mod connection;
mod handler;
mod observe;
mod quick_ack;
mod response;
mod route;
mod status;
mod timer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{Access, Auth};
use crate::observe::{Metrics, Protocol};
use crate::seam::signal;
use crate::store::{stack, Store};
use crate::tls::TlsConfig;
use crate::wire::limits::ConnectionSlots;
use body::Body;

/// Settings of the HTTP front end.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest action-cache value a `PUT` may carry (`413 Payload Too Large` beyond).
    pub max_action_result_size: usize,
    /// How long the server waits for a request's headers, including on an idle keep-alive
    /// connection (hyper's clock starts when it waits for a request); the connection is closed
    /// after that.
    pub header_timeout: Duration,
    /// How long a request body may send nothing while the server waits for it; the request then
    /// fails with `408 Request Timeout`, its upload is discarded and the connection closed.
    pub body_timeout: Duration,
    /// Most connections open at once; more are answered `503 Service Unavailable` and closed.
    pub max_connections: usize,
    /// After shutdown is requested, how long requests in flight may take to finish before
    /// [`serve`] returns without them.
    pub drain_timeout: Duration,
    /// Refuse `/ac/` values that are not `ActionResult`s (bazel-remote's behaviour) instead of
    /// storing them as opaque values for clients such as ccache.
    pub ac_strict: bool,
    /// Who may read and write (open by default); see [`crate::auth`].
    pub auth: Auth,
    /// Serve HTTPS instead of HTTP; not available under madsim.
    pub tls: Option<TlsConfig>,
    /// Where every request is counted and timed, and what `GET /metrics` shows
    /// (`server::serve` shares one with gRPC).
    pub metrics: Arc<Metrics>,
    /// Log one line per request (target `hoard::access`, INFO).
    pub access_log: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_action_result_size: 16 << 20,
            // Long enough for clients that pool connections between the actions of a build
            // (nginx keeps idle keep-alive connections 75 s), short enough that a client
            // dribbling its headers cannot hold a connection for long.
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(10),
            ac_strict: false,
            auth: Auth::open(),
            tls: None,
            metrics: Arc::default(),
            access_log: true,
        }
    }
}

/// How long to pause after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP on `addr` until `shutdown` completes.
pub async fn serve(
    cache: Arc<dyn Store>,
    config: HttpConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if cfg!(madsim) && config.tls.is_some() {
        return Err("TLS is not available in the simulator".into());
    }
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = config.tls.is_some(),
        "http cache listening"
    );
    serve_listener(cache, config, listener, shutdown).await;
    Ok(())
}

/// Serves HTTP on an already bound `listener` until `shutdown` completes, then stops accepting,
/// lets requests in flight finish (up to [`HttpConfig::drain_timeout`]) and returns.
pub async fn serve_listener(
    cache: Arc<dyn Store>,
    config: HttpConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let store = stack::for_front_end(&cache, &config.metrics, Protocol::Http);
    let tls = match &config.tls {
        None => None,
        #[cfg(not(madsim))]
        Some(tls) => Some(tls.http_acceptor()),
        #[cfg(madsim)]
        Some(_) => {
            tracing::error!("TLS is not available in the simulator; not serving HTTP");
            return;
        }
    };
    let config = Arc::new(config);
    let slots = ConnectionSlots::new(config.max_connections);
    // Dropping `stop` tells every connection to finish the request in flight and close.
    let (stop, stopping) = signal::signal();
    // Every connection task holds a sender; `recv` yields `None` once all of them are gone.
    let (open_connection, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // `biased`: an unbiased select draws from tokio's RNG, which madsim does not seed.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an http connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some((stream, slot)) = slots.admit(stream, "http", too_many_connections) else {
            continue;
        };
        // Under madsim `Tls` is uninhabited, so the `Option` is `Copy`.
        #[cfg_attr(madsim, allow(clippy::clone_on_copy))]
        let task = connection::accept(
            stream,
            tls.clone(),
            store.clone(),
            config.clone(),
            stopping.clone(),
        );
        let open = open_connection.clone();
        tokio::spawn(async move {
            task.await;
            drop((open, slot));
        });
    }
    drop(listener);
    drop(stop);
    drop(open_connection);
    let drained = tokio::time::timeout(config.drain_timeout, all_closed.recv()).await;
    if drained.is_err() {
        tracing::warn!(
            timeout = ?config.drain_timeout,
            "http connections still busy after shutdown; leaving them"
        );
    }
}

/// What a connection over [`HttpConfig::max_connections`] is told before it is closed (in
/// plain text even on a TLS listener: the refusal comes before any handshake, so an HTTPS
/// client sees a failed handshake, and a plain one a readable reason).
fn too_many_connections(limit: usize) -> Vec<u8> {
    let message = format!("too many connections (this server allows {limit}); retry later\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{message}",
        message.len()
    )
    .into_bytes()
}

/// The refusal of a request whose credentials `config.auth` does not accept for what it does
/// (`GET`/`HEAD` read, everything else writes), or `None` to go ahead.
async fn refuse_unauthorized(
    config: &HttpConfig,
    request: &hyper::http::request::Parts,
) -> Option<Response<Body>> {
    if !config.auth.is_enabled() {
        return None;
    }
    let access = match request.method {
        Method::GET | Method::HEAD => Access::Read,
        _ => Access::Write,
    };
    let header = request
        .headers
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let denied = config.auth.check(header, access).await.err()?;
    let mut response = Response::new(Body::full(format!("{denied}\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"hoard\""),
    );
    Some(response)
}
