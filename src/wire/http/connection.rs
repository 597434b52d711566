//! One accepted connection: the TLS handshake if configured, then HTTP/1.1 with keep-alive, until
//! the client leaves or the server stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::timer::RuntimeTimer;
use super::{handler, quick_ack, HttpConfig};
use crate::seam::signal::Waiter;
use crate::store::Store;
use crate::wire::limits::Progress;

/// What terminates TLS on a connection (nothing does under madsim: its sockets carry no TLS).
#[cfg(not(madsim))]
pub(super) type Tls = tokio_rustls::TlsAcceptor;
/// What terminates TLS on a connection (nothing does under madsim: its sockets carry no TLS).
#[cfg(madsim)]
pub(super) type Tls = Infallible;

/// Longest a client may take to complete the TLS handshake.
#[cfg_attr(madsim, allow(dead_code))]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `stream`, over TLS if `tls` is given (see [`serve`]). A failed or stalled handshake
/// just closes the connection.
pub(super) async fn accept(
    stream: TcpStream,
    tls: Option<Tls>,
    store: Arc<dyn Store>,
    config: Arc<HttpConfig>,
    stopping: Waiter,
) {
    let stream = quick_ack::wrap(stream);
    let Some(tls) = tls else {
        return serve(stream, store, config, stopping).await;
    };
    #[cfg(not(madsim))]
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => serve(stream, store, config, stopping).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
        Err(_) => tracing::debug!("tls handshake timed out"),
    }
    #[cfg(madsim)]
    match tls {}
}

/// Serves requests on `stream` until the client closes it, it idles past the configured
/// timeout, or `stopping` turns true (then the request in flight finishes first).
async fn serve<S>(stream: S, store: Arc<dyn Store>, config: Arc<HttpConfig>, stopping: Waiter)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = config.header_timeout;
    let service = service_fn(move |request: Request<Incoming>| {
        let store = store.clone();
        let config = config.clone();
        let request = request.map(|body| Progress::new(body, config.body_timeout));
        async move { Ok::<_, Infallible>(handler::handle(&store, &config, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(RuntimeTimer)
        // hyper starts this clock whenever it waits for a request, so it also bounds idle
        // keep-alive connections.
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // `biased`: an unbiased select draws from tokio's RNG, which the simulator does not seed.
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}
