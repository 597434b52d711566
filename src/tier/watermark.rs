//! The upload watermark: how far the uploader got, durable so a restart resumes there.
//!
//! One line, `hoard-upload-watermark 1 SEGMENT OFFSET CRC URL`, replaced atomically (temp file
//! written, flushed and synced, renamed over, directory synced), so a crash leaves the old or
//! the new one. The CRC covers the rest of the line. A watermark for another bucket URL counts
//! as none: the new bucket is sent the whole local log.

use std::path::Path;

use crate::engine::LogCursor;
use crate::seam::Fs;
use crate::store::Error;

/// The file's name in the data directory.
pub const FILE: &str = "upload-watermark";

const MAGIC: &str = "hoard-upload-watermark 1";

fn line(cursor: LogCursor, url: &str) -> String {
    let body = format!("{} {} {url}", cursor.segment, cursor.offset);
    format!("{MAGIC} {:08x} {body}\n", crc32fast::hash(body.as_bytes()))
}

fn parse(text: &str, url: &str) -> Option<LogCursor> {
    let rest = text.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let (crc, body) = rest.trim_end_matches('\n').split_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut fields = body.splitn(3, ' ');
    let segment = fields.next()?.parse().ok()?;
    let offset = fields.next()?.parse().ok()?;
    (fields.next()? == url).then_some(LogCursor { segment, offset })
}

/// The watermark at `path` for the bucket `url`; the log's start if there is none (or it is
/// for another bucket, or damaged: uploads are idempotent, so starting over loses nothing).
pub async fn load(fs: &dyn Fs, path: &Path, url: &str) -> Result<LogCursor, Error> {
    let file = match fs.open_read(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogCursor::default()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let bytes = file
        .read_at(0, 4096)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(parse(&text, url).unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "upload watermark is for another bucket or damaged; uploading the whole log");
        LogCursor::default()
    }))
}

/// Replaces the watermark at `path` with `cursor`, durably.
pub async fn store(fs: &dyn Fs, path: &Path, cursor: LogCursor, url: &str) -> Result<(), Error> {
    let temp = path.with_extension("tmp");
    let io = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    let mut file = fs.create(&temp).await.map_err(|e| io("creating", e))?;
    file.write(line(cursor, url).as_bytes())
        .await
        .map_err(|e| io("writing", e))?;
    file.flush().await.map_err(|e| io("flushing", e))?;
    file.sync().await.map_err(|e| io("syncing", e))?;
    file.close().await.map_err(|e| io("closing", e))?;
    fs.rename(&temp, path)
        .await
        .map_err(|e| io("renaming", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs.sync_dir(dir)
        .await
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_and_damage_or_another_bucket_reads_as_none() {
        let cursor = LogCursor {
            segment: 7,
            offset: 123_456,
        };
        let text = line(cursor, "s3://bucket/prefix");
        assert_eq!(parse(&text, "s3://bucket/prefix"), Some(cursor));
        assert_eq!(parse(&text, "s3://other"), None);
        assert_eq!(
            parse(&text.replace("123456", "123457"), "s3://bucket/prefix"),
            None
        );
        assert_eq!(parse("", "s3://bucket/prefix"), None);
    }
}
