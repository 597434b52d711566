//! What a slow or idle client may hold, shared by both front ends: request bodies that must keep
//! moving ([`Progress`]), a cap on open connections ([`ConnectionSlots`]) and how a connection
//! over the cap is turned away ([`refuse`]).
//!
//! Every timer here is the runtime's (`tokio::time`), so it runs on virtual time under madsim.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request body that fails with [`BodyError::Stalled`] when the client sends nothing for
/// `timeout` while the server waits for more. The clock runs only while the server is waiting:
/// a server that stops reading (its disk is slow, flow control holds the client back) does not
/// count against the client.
pub struct Progress<B> {
    inner: B,
    timeout: Duration,
    /// Running while the last poll found no data.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Progress<B> {
    /// `inner`, failing after `timeout` without a byte.
    pub fn new(inner: B, timeout: Duration) -> Progress<B> {
        Progress {
            inner,
            timeout,
            waiting: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

/// Why a [`Progress`] body failed.
#[derive(Debug)]
pub enum BodyError {
    /// No bytes arrived for this long.
    Stalled(Duration),
    /// The underlying body failed (cut short, malformed).
    Inner(Box<dyn StdError + Send + Sync>),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Stalled(timeout) => write!(
                f,
                "the client sent nothing for {} s in the middle of the request body",
                timeout.as_secs_f64()
            ),
            BodyError::Inner(e) => e.fmt(f),
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Stalled(_) => None,
            BodyError::Inner(e) => Some(&**e),
        }
    }
}

impl<B> Body for Progress<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame.map(|frame| frame.map_err(|e| BodyError::Inner(e.into()))))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = None;
                        Poll::Ready(Some(Err(BodyError::Stalled(timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// At most a fixed number of open connections per listener: each holds a slot until it closes.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl ConnectionSlots {
    /// Room for `limit` connections.
    pub fn new(limit: usize) -> ConnectionSlots {
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one more connection, or `None` when all are taken.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// How many connections may be open at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a slot for a just-accepted `stream` (with TCP_NODELAY set: replies written in
    /// pieces must not wait on the client's delayed ACK), or refuses it in the background with
    /// `refusal(limit)` and returns `None`. `protocol` names the listener in the log.
    pub fn admit(
        &self,
        stream: TcpStream,
        protocol: &'static str,
        refusal: fn(usize) -> Vec<u8>,
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
        match self.try_take() {
            Some(slot) => Some((stream, slot)),
            None => {
                tracing::debug!(
                    limit = self.limit,
                    protocol,
                    "too many connections; refusing one"
                );
                tokio::spawn(refuse(stream, refusal(self.limit)));
                None
            }
        }
    }
}

/// Longest a refusal may take to be written and read by the client.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Writes `reply` to a connection that is turned away and closes it. Whatever the client sent
/// is read and dropped for a moment first, so closing does not reset the connection before the
/// client has read the refusal.
pub async fn refuse<S>(mut stream: S, reply: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_stalled_body_fails_and_a_moving_one_does_not() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, String>>(4);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let mut body = Progress::new(StreamBody::new(Box::pin(stream)), Duration::from_secs(1));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                // Each gap is shorter than the timeout: the body keeps going.
                tokio::time::sleep(Duration::from_millis(100)).await;
                sender
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            // Then nothing, with the sender kept open.
            std::future::pending::<()>().await;
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, BodyError::Stalled(t) if t == Duration::from_secs(1)));
        assert!(
            error.to_string().contains("sent nothing for 1 s"),
            "{error}"
        );
        feeder.abort();
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = ConnectionSlots::new(2);
        let (a, b) = (slots.try_take(), slots.try_take());
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
        assert_eq!(slots.limit(), 2);
    }
}
