//! The seam between hoard and the world: a filesystem and a runtime, as traits.
//!
//! The engine and the servers only ever touch disk, time, tasks and randomness through these,
//! so the simulator can substitute a world that breaks them on purpose: `real_fs` is the disk
//! in production, `sim_fs` (built only under `--cfg madsim`) the simulated one.

pub mod fs;
#[cfg(not(madsim))]
pub mod real_fs;
pub mod runtime;
pub mod signal;
#[cfg(madsim)]
pub mod sim_fs;

pub use fs::{Fs, FsFile, FsLock};
pub use runtime::{Runtime, TokioRuntime};

/// Makes the process give large freed blocks back to the system at once. Call it first thing in
/// `main`, before any thread starts.
///
/// Upload buffers (gRPC messages, HTTP/2 frames, staging) and recovery's footer reads are freed
/// as soon as they are used, but glibc raises its mmap threshold to the largest block freed (up
/// to 32 MiB), after which such buffers come from the heap arenas and stay resident when freed.
/// A fixed threshold keeps blocks of 128 KiB and more in their own mappings, returned to the
/// system on free (`examples/upload_memory.rs` and `examples/bench_restart.rs` measure it).
pub fn return_large_buffers_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; callers run it before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
