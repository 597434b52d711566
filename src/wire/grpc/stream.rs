//! Server-streaming responses produced by a task.
//!
//! A response stream must be `'static`, but producers such as a blob read borrow the engine
//! ([`crate::engine::BlobReader`] holds `&Engine`). Running the producer as a task that owns its
//! `Arc<Engine>` and hands items over a small bounded channel solves both that and backpressure:
//! the producer reads ahead at most `capacity` items of a slow client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// The receiving end: what a gRPC handler returns as its response stream.
pub struct ResponseStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
}

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The producing end, given to the producer task.
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

impl<T> Sink<T> {
    /// Sends one item; fails with CANCELLED once the client has gone, so the producer stops.
    pub async fn send(&self, item: T) -> Result<(), Status> {
        self.tx
            .send(Ok(item))
            .await
            .map_err(|_| Status::cancelled("the client stopped reading"))
    }
}

/// Spawns `produce` and returns the stream of what it sends. If the producer fails, its error
/// ends the stream (as the call's status).
pub fn spawn<T, F, Fut>(capacity: usize, produce: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnOnce(Sink<T>) -> Fut,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    let done = tx.clone();
    let work = produce(Sink { tx });
    tokio::spawn(async move {
        if let Err(status) = work.await {
            // Nobody to tell if the client is gone.
            let _ = done.send(Err(status)).await;
        }
    });
    ResponseStream { rx }
}
