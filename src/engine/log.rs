//! The log read in order, for the object-store tier: durable records from a cursor, their
//! payloads, and the upload floor below which eviction may free segments.
//!
//! Invariant kept with [`Engine::set_upload_floor`]: while a floor is set, no segment at or
//! after it is evicted, so a record not yet uploaded is never freed (the tier sets the floor
//! to its durable watermark's segment). With [`EngineConfig::hold_for_upload`] the floor starts
//! at 0, so nothing is evicted before the tier has read its watermark.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::record::RecordKey;
use super::segment::{read_payload, LogCursor};
#[cfg(doc)]
use super::EngineConfig;
use super::{Engine, Error, Location};

/// No floor: eviction may free any closed segment.
pub(super) const NO_FLOOR: u32 = u32::MAX;

/// A durable record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// What it is.
    pub key: RecordKey,
    /// Where its payload is.
    pub location: Location,
    /// SHA-256 of the payload, as its header (or footer) gives it.
    pub sha256: [u8; 32],
}

/// Durable records of one segment, in log order, and the cursor past them.
#[derive(Debug, Default)]
pub struct LogBatch {
    /// The records (empty when the reader is at the end of the durable log).
    pub records: Vec<LogRecord>,
    /// Where the next read starts once these are dealt with.
    pub next: LogCursor,
}

impl Engine {
    /// The durable records after `from`: those of the first segment that has any, in log order.
    pub async fn log_after(&self, from: LogCursor) -> Result<LogBatch, Error> {
        let (records, next) = self.segments.durable_after(from).await?;
        let records = records
            .into_iter()
            .map(|r| LogRecord {
                key: r.key,
                location: r.location,
                sha256: r.payload_sha256,
            })
            .collect();
        Ok(LogBatch { records, next })
    }

    /// Bytes of the log at or after `from`: how far behind its reader is.
    pub fn log_bytes_after(&self, from: LogCursor) -> u64 {
        self.segments.bytes_after(from)
    }

    /// `len` bytes at `offset` of the payload at `location`, as stored (the caller verifies
    /// them against the record's hash). [`Error::NotFound`] when the segment is gone.
    pub async fn read_record(
        &self,
        location: &Location,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, Error> {
        let reader = self
            .segments
            .reader(location.segment)
            .await?
            .ok_or_else(|| Error::NotFound(format!("segment {} is gone", location.segment)))?;
        read_payload(reader.as_ref(), location, offset, len).await
    }

    /// Keeps every segment at or after `segment` from eviction (see the module docs).
    pub fn set_upload_floor(&self, segment: u32) {
        self.upload_floor.store(segment, Ordering::Release);
    }

    /// Whether the upload floor keeps `segment` from eviction.
    pub(super) fn held_for_upload(&self, segment: u32) -> bool {
        segment >= self.upload_floor.load(Ordering::Acquire)
    }
}
