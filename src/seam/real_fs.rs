//! [`Fs`] on the real filesystem (normal builds only: tokio's blocking pool does not exist in
//! the simulator, where `sim/` supplies the filesystem).
//!
//! Writes collect in a per-handle buffer and reach the file on [`FsFile::flush`], exactly the
//! contract the trait states, so production behaves like the world the simulator checks. (They
//! may reach it sooner: a full buffer, or an owned write of a buffer's worth, goes through at
//! once, which the contract allows.)

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::fs::{Fs, FsFile, FsLock};

/// Bytes a handle buffers before it writes them through on its own.
const WRITE_BUFFER: usize = 256 * 1024;

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

fn owned(path: &Path) -> PathBuf {
    path.to_path_buf()
}

#[async_trait]
impl Fs for RealFs {
    async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let path = owned(path);
        let file = blocking(move || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
        })
        .await?;
        Ok(Box::new(RealFile::new(file, 0)))
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let path = owned(path);
        let file = blocking(move || OpenOptions::new().read(true).write(true).open(path)).await?;
        let end = file.metadata()?.len();
        Ok(Box::new(RealFile::new(file, end)))
    }

    async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let path = owned(path);
        let file = blocking(move || File::open(path)).await?;
        Ok(Box::new(RealFile::new(file, 0)))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        tokio::fs::rename(from, to).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        tokio::fs::remove_file(path).await
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut entries = tokio::fs::read_dir(path).await?;
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        tokio::fs::create_dir_all(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = owned(path);
        blocking(move || File::open(path)?.sync_all()).await
    }

    async fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(tokio::fs::metadata(path).await?.len())
    }

    async fn free_space(&self, path: &Path) -> io::Result<u64> {
        let path = owned(path);
        blocking(move || statvfs_available(&path)).await
    }

    async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let path = owned(path);
        blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            match file.try_lock() {
                Ok(()) => Ok(Box::new(RealLock { _file: file }) as Box<dyn FsLock>),
                Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by another process", path.display()),
                )),
                Err(std::fs::TryLockError::Error(e)) => Err(e),
            }
        })
        .await
    }
}

fn statvfs_available(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is a plain C struct that
    // statvfs fills in completely when it returns 0.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return Err(io::Error::last_os_error());
        }
        stat
    };
    #[allow(clippy::useless_conversion)] // the field types differ between libc targets
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// Reads into `data` (which holds the first `data.len()` bytes already) until it holds `len`
/// bytes of the file from `offset`, or the file ends. The bytes land in `data`'s spare
/// capacity, so nothing is zeroed first.
fn read_into(file: &File, data: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    data.reserve_exact(len.saturating_sub(data.len()));
    while data.len() < len {
        let filled = data.len();
        let spare = &mut data.spare_capacity_mut()[..len - filled];
        let at = libc::off_t::try_from(offset + filled as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        // SAFETY: the pointer and length name `spare`, memory `data` owns and does not otherwise
        // touch during the call; the kernel writes at most that many bytes there.
        let read =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match read {
            0 => break,
            n if n > 0 => {
                // SAFETY: the kernel initialized the first `n` bytes of the spare capacity.
                unsafe { data.set_len(filled + n as usize) };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

struct RealLock {
    _file: File,
}

impl FsLock for RealLock {}

/// A real file handle with a userspace write buffer (the lazy-flush behaviour the seam promises).
struct RealFile {
    file: Arc<File>,
    /// Where the next buffered byte lands.
    end: u64,
    buffer: Vec<u8>,
}

impl RealFile {
    fn new(file: File, end: u64) -> Self {
        Self {
            file: Arc::new(file),
            end,
            buffer: Vec::new(),
        }
    }

    /// Writes the buffered bytes, then `and` (bytes not worth copying into the buffer), to the
    /// file in one trip to the blocking pool.
    async fn write_through(&mut self, and: Option<Bytes>) -> io::Result<()> {
        if self.buffer.is_empty() && and.is_none() {
            return Ok(());
        }
        let file = self.file.clone();
        let buffer = std::mem::take(&mut self.buffer);
        let at = self.end;
        let len = (buffer.len() + and.as_ref().map_or(0, Bytes::len)) as u64;
        let buffer = blocking(move || {
            file.write_all_at(&buffer, at)?;
            if let Some(and) = and {
                file.write_all_at(&and, at + buffer.len() as u64)?;
            }
            Ok(buffer)
        })
        .await?;
        self.end = at + len;
        // Keep the allocation for the next round of writes.
        self.buffer = buffer;
        self.buffer.clear();
        Ok(())
    }
}

#[async_trait]
impl FsFile for RealFile {
    async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= WRITE_BUFFER {
            self.write_through(None).await?;
        }
        Ok(())
    }

    async fn write_owned(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() < WRITE_BUFFER {
            return self.write(&data).await;
        }
        // A buffer's worth or more: straight to the file, after what is buffered, uncopied.
        self.write_through(Some(data)).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.write_through(None).await
    }

    async fn allocate(&mut self, len: u64) -> io::Result<()> {
        let file = self.file.clone();
        blocking(move || {
            let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
            // SAFETY: fallocate reads only its integer arguments; the descriptor is open (held
            // by `file`).
            let done =
                unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
            if done == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                // Not supported here: the writes allocate as they go instead.
                Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(()),
                _ => Err(error),
            }
        })
        .await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.write_through(None).await?;
        let file = self.file.clone();
        blocking(move || file.sync_data()).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.file.clone();
        blocking(move || {
            let mut data = Vec::new();
            read_into(&file, &mut data, offset, len)?;
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.write_through(None).await?;
        let file = self.file.clone();
        blocking(move || file.set_len(len)).await?;
        self.end = len;
        Ok(())
    }

    async fn len(&self) -> io::Result<u64> {
        let file = self.file.clone();
        blocking(move || Ok(file.metadata()?.len())).await
    }

    async fn close(mut self: Box<Self>) -> io::Result<()> {
        self.write_through(None).await?;
        let mut file = &*self.file;
        file.flush()
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    /// Reads return the file's bytes, fewer only where the file ends, none past it.
    #[tokio::test]
    async fn reads_stop_at_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = RealFs.create(&path).await.unwrap();
        file.write(&bytes).await.unwrap();
        file.flush().await.unwrap();
        for (offset, len) in [
            (0, 300_000),
            (7, 1000),
            (299_990, 100),
            (300_000, 5),
            (400_000, 5),
        ] {
            let start = (offset as usize).min(bytes.len());
            let end = (start + len).min(bytes.len());
            let read = file.read_at(offset, len).await.unwrap();
            assert_eq!(&read[..], &bytes[start..end], "read_at({offset}, {len})");
            let raw = File::open(&path).unwrap();
            let mut data = Vec::new();
            read_into(&raw, &mut data, offset, len).unwrap();
            assert_eq!(&data[..], &bytes[start..end], "read_into({offset}, {len})");
        }
        // A read that holds the first bytes already continues where they stop.
        let raw = File::open(&path).unwrap();
        let mut data = bytes[100..150].to_vec();
        read_into(&raw, &mut data, 100, 5000).unwrap();
        assert_eq!(&data[..], &bytes[100..5100]);
    }

    /// Owned writes, small (buffered) and large (written straight through), land in the order
    /// they were made: a large one goes after the bytes buffered before it.
    #[tokio::test]
    async fn owned_writes_keep_their_order_with_buffered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let piece =
            |n: u32, len: usize| -> Bytes { (0..len as u32).map(|i| (i * 7 + n) as u8).collect() };
        let pieces = [
            piece(1, 100),
            piece(2, WRITE_BUFFER + 3),
            piece(3, 5),
            piece(4, 3 * WRITE_BUFFER),
            piece(5, WRITE_BUFFER - 1),
        ];
        let mut file = RealFs.create(&path).await.unwrap();
        file.write(b"head").await.unwrap();
        for piece in &pieces {
            file.write_owned(piece.clone()).await.unwrap();
        }
        file.write(b"tail").await.unwrap();
        file.close().await.unwrap();
        let mut expected = b"head".to_vec();
        for piece in &pieces {
            expected.extend_from_slice(piece);
        }
        expected.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
