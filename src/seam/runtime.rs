//! The runtime seam: tasks, time, randomness and fault hooks.
//!
//! The same [`TokioRuntime`] serves both worlds: in a normal build it is real tokio and OS
//! randomness; under `--cfg madsim` the `tokio` dependency is madsim's, time is virtual and every
//! random draw comes from the seeded simulation RNG, so a seed replays bit for bit.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed, sendable future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the engine and the servers need from a runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `task` in the background.
    fn spawn(&self, task: BoxFuture);

    /// Completes after `duration` (virtual time in the simulator).
    fn sleep(&self, duration: Duration) -> BoxFuture;

    /// Wall-clock time (simulated under madsim).
    fn now(&self) -> SystemTime;

    /// A random `u64`: seeded in the simulator, from the OS otherwise. Server code takes
    /// randomness only from here.
    fn random_u64(&self) -> u64;

    /// A fault-injection point: `true` with probability `probability` when the simulator has
    /// enabled buggify, always `false` in production.
    fn buggify(&self, probability: f64) -> bool;
}

/// [`Runtime`] on (madsim-)tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture) {
        tokio::spawn(task);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(tokio::time::sleep(duration))
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn random_u64(&self) -> u64 {
        #[cfg(madsim)]
        {
            madsim::rand::random()
        }
        #[cfg(not(madsim))]
        {
            rand::random()
        }
    }

    fn buggify(&self, probability: f64) -> bool {
        #[cfg(madsim)]
        {
            madsim::buggify::buggify_with_prob(probability)
        }
        #[cfg(not(madsim))]
        {
            let _ = probability;
            false
        }
    }
}
