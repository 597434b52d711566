//! One accepted connection: HTTP/1.1 with keep-alive, until the client leaves or the server stops.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::timer::RuntimeTimer;
use super::{handler, quick_ack, HttpConfig};
use crate::engine::Engine;

/// Serves requests on `stream` until the client closes it, it idles past the configured
/// timeout, or `stopping` turns true (then the request in flight finishes first).
pub(super) async fn serve(
    stream: TcpStream,
    engine: Arc<Engine>,
    config: Arc<HttpConfig>,
    mut stopping: watch::Receiver<bool>,
) {
    let idle_timeout = config.idle_timeout;
    let service = service_fn(move |request| {
        let engine = engine.clone();
        let config = config.clone();
        async move { Ok::<_, Infallible>(handler::handle(&engine, &config, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(RuntimeTimer)
        // hyper starts this clock whenever it waits for a request, so it also bounds idle
        // keep-alive connections.
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(quick_ack::wrap(stream)), service);
    tokio::pin!(connection);
    let stop_requested = async move {
        // A dropped sender means the server is gone: stop too. The guard `wait_for` returns
        // is not `Send`, so it must not live past this block.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    // `biased`: an unbiased select draws from tokio's RNG, which the simulator does not seed.
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        () = stop_requested => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}
