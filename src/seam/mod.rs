//! The seam between hoard and the world: a filesystem and a runtime, as traits.
//!
//! The engine and the servers only ever touch disk, time, tasks and randomness through these,
//! so the simulator can substitute a world that breaks them on purpose: `real_fs` is the disk
//! in production, `sim_fs` (built only under `--cfg madsim`) the simulated one.

pub mod fs;
#[cfg(not(madsim))]
pub mod real_fs;
pub mod runtime;
#[cfg(madsim)]
pub mod sim_fs;

pub use fs::{Fs, FsFile, FsLock};
pub use runtime::{Runtime, TokioRuntime};
