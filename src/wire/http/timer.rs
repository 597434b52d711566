//! hyper's timer on the runtime's clock: real tokio in production, madsim's virtual time in the
//! simulator (hyper-util's `TokioTimer` would reach real tokio under madsim).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A [`hyper::rt::Timer`] built on `tokio::time::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RuntimeTimer;

impl hyper::rt::Timer for RuntimeTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(RuntimeSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // `Instant::now` is virtual under madsim too, so the two clocks agree.
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A runtime sleep, in the shape hyper wants.
struct RuntimeSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for RuntimeSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for RuntimeSleep {}
