//! Reading the log in order from a cursor: the object-store tier's upload queue.
//!
//! Only durable bytes are handed out: of the segment being written, the records its last good
//! sync covers; of a closed segment, every record in it. A cursor only moves on to a segment
//! that exists, so (with the engine's upload floor keeping that segment from eviction) its
//! segment id is never reused for newer records after a restart.

use super::{list_records, segment_name, Error, Location, ReaderState, Recovered, SegmentLog};

/// A position in the log: every record of an earlier segment, and every record of `segment`
/// whose payload starts at or before `offset` (a record's end, where the next header starts), is
/// behind it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor {
    /// Segment id.
    pub segment: u32,
    /// Byte offset in that segment where the next record starts.
    pub offset: u64,
}

impl LogCursor {
    /// The position just after the record at `location`.
    pub fn after(location: &Location) -> LogCursor {
        LogCursor {
            segment: location.segment,
            offset: location.offset + location.len,
        }
    }
}

impl SegmentLog {
    /// The durable records of the first segment at or after `from` that has any past it, in log
    /// order, and the cursor past them (moved on to the next segment when a closed segment is
    /// read to its end and a later one exists).
    pub async fn durable_after(
        &self,
        from: LogCursor,
    ) -> Result<(Vec<Recovered>, LogCursor), Error> {
        let mut cursor = from;
        loop {
            let Some((segment, bound, active)) = self.durable_bound_from(cursor.segment).await
            else {
                return Ok((Vec::new(), cursor));
            };
            if segment != cursor.segment {
                cursor = LogCursor { segment, offset: 0 };
            }
            let records = if active {
                self.scan_between(segment, cursor.offset, bound).await?
            } else {
                match self.records(segment).await {
                    Ok(listing) => listing.records,
                    // Removed meanwhile (a retired segment that held nothing durable).
                    Err(Error::Internal(_))
                        if matches!(self.reader_now(segment), ReaderState::Gone) =>
                    {
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                }
            };
            // A record's payload starts after its header, so one that starts at the cursor has
            // its payload past it; one whose (maybe empty) payload ends at the cursor does not.
            let records: Vec<Recovered> = records
                .into_iter()
                .filter(|r| r.location.offset > cursor.offset)
                .collect();
            if let Some(last) = records.last() {
                let end = LogCursor::after(&last.location);
                return Ok((records, end));
            }
            if active {
                return Ok((Vec::new(), cursor));
            }
            // A closed segment read to its end: on to the next one, if there is one yet; else
            // past its footer (nothing of it is left to read).
            match self.next_segment_after(segment) {
                Some(next) => {
                    cursor = LogCursor {
                        segment: next,
                        offset: 0,
                    }
                }
                None => {
                    cursor.offset = cursor.offset.max(bound);
                    return Ok((Vec::new(), cursor));
                }
            }
        }
    }

    /// Bytes of the log at or after `from` (segment files as they are: headers and footers
    /// included): how far behind a reader of the log at `from` is.
    pub fn bytes_after(&self, from: LogCursor) -> u64 {
        let segments = self.segments.lock().expect("segments");
        segments
            .map
            .range(from.segment..)
            .map(|(&id, s)| {
                if id == from.segment {
                    s.len.saturating_sub(from.offset)
                } else {
                    s.len
                }
            })
            .sum()
    }

    /// The first segment at or after `segment`, its durable length, and whether it is the one
    /// being written.
    async fn durable_bound_from(&self, segment: u32) -> Option<(u32, u64, bool)> {
        let state = self.writer.lock().await;
        let (id, len) = {
            let segments = self.segments.lock().expect("segments");
            let (&id, s) = segments.map.range(segment..).next()?;
            (id, s.len)
        };
        match state.active.as_ref().filter(|w| w.segment == id) {
            Some(writer) => Some((id, writer.durability.synced(), true)),
            None => Some((id, len, false)),
        }
    }

    fn next_segment_after(&self, segment: u32) -> Option<u32> {
        let segments = self.segments.lock().expect("segments");
        segments.map.range(segment + 1..).next().map(|(&id, _)| id)
    }

    /// The complete records between `from` and `to` (its synced length) of a segment being
    /// written, past any damage there.
    async fn scan_between(
        &self,
        segment: u32,
        from: u64,
        to: u64,
    ) -> Result<Vec<Recovered>, Error> {
        if from >= to {
            return Ok(Vec::new());
        }
        let Some(reader) = self.reader(segment).await? else {
            return Ok(Vec::new());
        };
        let path = self.dir.join(segment_name(segment));
        Ok(list_records(reader.as_ref(), segment, from, to, &path)
            .await?
            .records)
    }
}
