//! A one-time signal many tasks wait for: a server's "stop" to its connections, a fill's "done"
//! to the readers waiting on it.
//!
//! Not `tokio::sync::watch`: each wait on a watch joins one of eight queues picked with tokio's
//! thread-local RNG, and a send wakes the queues in turn, so the order the waiters wake in (under
//! madsim, the simulated schedule) follows that RNG. Tokio seeds it from a process-wide counter
//! madsim cannot reset, so a simulator seed would replay differently as the second run in a
//! process. [`Shared`] wakes its waiters in the order the program made them wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

/// Fires the signal when dropped.
#[must_use = "dropping the trigger fires the signal at once"]
pub struct Trigger(#[allow(dead_code, reason = "held only to be dropped")] oneshot::Sender<()>);

/// Completes once the signal has fired. Clone it for every task that waits.
#[derive(Clone)]
pub struct Waiter(Shared<oneshot::Receiver<()>>);

/// A new signal: drop the [`Trigger`] to wake every [`Waiter`].
pub fn signal() -> (Trigger, Waiter) {
    let (trigger, waiter) = oneshot::channel();
    (Trigger(trigger), Waiter(waiter.shared()))
}

impl Future for Waiter {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The sender only ever drops, so the receiver's result is always `Canceled`.
        self.0.poll_unpin(cx).map(drop)
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the simulator's replays rest on: the waiters wake in the order they began to wait,
    /// whatever tokio's thread RNG holds (a `watch` wakes them shard by shard, in RNG order).
    #[tokio::test]
    async fn waiters_wake_in_the_order_they_began_to_wait() {
        let (trigger, waiter) = signal();
        let woken = Arc::new(Mutex::new(Vec::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (waiter, woken, waiting) = (waiter.clone(), woken.clone(), waiting.clone());
                tokio::spawn(async move {
                    // Counted in the same poll that starts the wait.
                    waiting.fetch_add(1, Ordering::SeqCst);
                    waiter.await;
                    woken.lock().unwrap().push(i);
                })
            })
            .collect();
        // The current-thread runtime runs the tasks up to their waits in spawn order.
        while waiting.load(Ordering::SeqCst) < 64 {
            tokio::task::yield_now().await;
        }
        drop(trigger);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*woken.lock().unwrap(), (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn every_waiter_wakes_when_the_trigger_drops() {
        let (trigger, waiter) = signal();
        let mut early = waiter.clone();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut early).poll(&mut cx).is_pending());
        drop(trigger);
        assert!(Pin::new(&mut early).poll(&mut cx).is_ready());
        // A waiter cloned (or first polled) after the signal fired is ready at once.
        assert!(Pin::new(&mut waiter.clone()).poll(&mut cx).is_ready());
    }
}
