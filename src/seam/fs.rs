//! The filesystem seam: everything the engine does to disk goes through [`Fs`] and [`FsFile`].
//!
//! Production binds these to the real filesystem ([`super::real_fs::RealFs`]); the simulator
//! binds them to a simulated disk that models buffering, page cache and durability separately.
//!
//! # Semantics every implementation must honour (and every caller must assume)
//! - **Buffering.** [`FsFile::write`] may keep bytes in the handle's own buffer. Until
//!   [`FsFile::flush`] returns, they may be invisible to every other handle and to path-based
//!   operations ([`Fs::len`], [`Fs::open_read`], [`Fs::rename`]). Dropping a handle without
//!   flushing does not lose the bytes, but they land at an unknown later moment.
//! - **Durability.** Flushed bytes are visible but live in the page cache: a crash may lose them.
//!   They survive a crash only after [`FsFile::sync`] returns `Ok`. A failed sync leaves the file's
//!   durable contents unknown.
//! - **Namespace.** A create, rename or remove survives a crash only after [`Fs::sync_dir`] of the
//!   parent directory returns `Ok`.
//! - **Errors.** Any call may fail (`ENOSPC`, `EIO`, ...); callers surface the error, never panic.

use std::io;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

/// A filesystem: path operations plus opening [`FsFile`] handles.
#[async_trait]
pub trait Fs: Send + Sync + 'static {
    /// Creates `path` (truncating an existing file) and opens it for writing and reading.
    async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;

    /// Opens an existing file for appending writes and positional reads.
    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;

    /// Opens an existing file for positional reads only.
    async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;

    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes a file.
    async fn remove(&self, path: &Path) -> io::Result<()>;

    /// Lists the names of the entries of a directory, sorted (so callers never depend on
    /// an order the platform happens to give).
    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;

    /// Creates a directory and its missing parents.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Makes the directory's entries (creates, renames, removes) durable.
    async fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// The length of the file at `path` as other descriptors see it (flushed bytes only).
    async fn len(&self, path: &Path) -> io::Result<u64>;

    /// Free bytes available to this process on the filesystem holding `path`.
    async fn free_space(&self, path: &Path) -> io::Result<u64>;

    /// Takes an exclusive advisory lock on `path` (created if missing), held until the guard
    /// is dropped. Fails with [`io::ErrorKind::WouldBlock`] when another holder has it.
    async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>>;
}

/// An open file.
// `len` is a file length as other handles see it; an `is_empty` would add nothing.
#[allow(clippy::len_without_is_empty)]
#[async_trait]
pub trait FsFile: Send + Sync {
    /// Appends all of `buf`. May only reach this handle's buffer (see the module docs).
    async fn write(&mut self, buf: &[u8]) -> io::Result<()>;

    /// [`write`](FsFile::write) of bytes the handle may keep, so a large write can reach the
    /// file without first being copied into the handle's buffer.
    async fn write_owned(&mut self, data: Bytes) -> io::Result<()> {
        self.write(&data).await
    }

    /// Pushes this handle's buffered bytes to the file, where other handles see them.
    async fn flush(&mut self) -> io::Result<()>;

    /// Reserves disk space for the file's first `len` bytes without changing its length, so the
    /// writes that follow need not allocate as they go. A full disk is an error (`ENOSPC`); a
    /// filesystem that cannot reserve leaves the file as it was.
    async fn allocate(&mut self, len: u64) -> io::Result<()>;

    /// Flushes, then makes the file's contents durable (`fsync`).
    async fn sync(&mut self) -> io::Result<()>;

    /// Reads `len` bytes at `offset`, fewer only where the file ends first (none past the end).
    /// Sees flushed bytes only.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;

    /// Shortens (or extends with zeros) the file to `len` bytes. Used by recovery.
    async fn truncate(&mut self, len: u64) -> io::Result<()>;

    /// The file's current length as other handles see it.
    async fn len(&self) -> io::Result<u64>;

    /// Flushes and closes the handle, reporting any error the flush hit.
    async fn close(mut self: Box<Self>) -> io::Result<()>;
}

/// Guard of an [`Fs::lock`]; dropping it releases the lock.
pub trait FsLock: Send + Sync {}

/// Reads exactly `len` bytes at `offset`, failing with `UnexpectedEof` on a short file.
pub async fn read_exact_at(file: &dyn FsFile, offset: u64, len: usize) -> io::Result<Bytes> {
    let bytes = file.read_at(offset, len).await?;
    if bytes.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "wanted {len} bytes at offset {offset}, the file holds {}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}
