//! The background scrub (`hoard serve --scrub-rate`): re-hashes cold records at a bounded rate
//! and drops those whose bytes went bad, so a client is told "missing" (and uploads again)
//! instead of meeting the corruption at its next read.
//!
//! A record is cold when it was not used since eviction last passed over it: a hot record is
//! re-hashed by the reads that use it anyway (a whole-blob read always is), a cold one could rot
//! unnoticed until the build that needs it. The scrub walks closed segments in log order, one
//! record at a time, sleeping through the seam's [`Runtime`] so that it reads at most `rate`
//! bytes per second on average (so it runs, and is checked, in the simulator too). It holds no
//! lock while it reads or sleeps, and drops a record only if the index still points at the very
//! bytes that failed (an upload of the same key since then is left alone).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::record::RecordKey;
use super::segment::{read_payload, Recovered, IO_CHUNK};
use super::Engine;

/// How long the scrub rests when there is nothing (closed) to scrub.
const IDLE: Duration = Duration::from_secs(10);

/// What one scrub pass over a segment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubbedSegment {
    /// Cold records re-hashed.
    pub records: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Records whose bytes failed and were dropped from the index.
    pub dropped: u64,
}

/// Scrubs `engine`'s cold records at about `rate` bytes per second, for as long as the engine
/// lives (it holds only a weak reference between records).
pub async fn run(engine: Weak<Engine>, rate: u64) {
    let rate = rate.max(1);
    let mut after = 0;
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let runtime = strong.runtime.clone();
        let Some(segment) = strong.segments.next_closed_after(after) else {
            // The end of the log: start over after a rest.
            drop(strong);
            after = 0;
            runtime.sleep(IDLE).await;
            continue;
        };
        drop(strong);
        after = segment;
        let scrubbed = scrub_segment(&engine, segment, rate).await;
        if scrubbed.dropped > 0 {
            tracing::error!(
                segment,
                dropped = scrubbed.dropped,
                "scrub dropped corrupt records"
            );
        } else {
            tracing::debug!(
                segment,
                records = scrubbed.records,
                bytes = scrubbed.bytes,
                "scrubbed"
            );
        }
    }
}

/// Re-hashes the cold live records of `segment`, pacing reads at `rate` bytes per second.
async fn scrub_segment(engine: &Weak<Engine>, segment: u32, rate: u64) -> ScrubbedSegment {
    let mut done = ScrubbedSegment::default();
    let records = match engine.upgrade() {
        Some(engine) => engine.segments.records(segment).await,
        None => return done,
    };
    let records = match records {
        Ok(listing) => listing.records,
        Err(e) => {
            // Evicted meanwhile, most likely; the next round finds what is there.
            tracing::debug!(segment, error = %e, "scrub skipped a segment");
            return done;
        }
    };
    for record in records {
        let Some(engine) = engine.upgrade() else {
            return done;
        };
        match engine.scrub_record(&record).await {
            Ok(Some(intact)) => {
                done.records += 1;
                done.bytes += record.location.len;
                engine.scrubbed_records.fetch_add(1, Ordering::Relaxed);
                engine
                    .scrubbed_bytes
                    .fetch_add(record.location.len, Ordering::Relaxed);
                done.dropped += u64::from(!intact);
                let pause = Duration::from_secs_f64(record.location.len as f64 / rate as f64);
                let runtime = engine.runtime.clone();
                drop(engine);
                runtime.sleep(pause).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(segment, error = %e, "scrub could not read a record");
            }
        }
    }
    done
}

impl Engine {
    /// Re-hashes `record` if it is live and cold: `Some(true)` if intact, `Some(false)` if it
    /// failed and was dropped, `None` if it was not checked (overwritten, evicted, or hot).
    async fn scrub_record(&self, record: &Recovered) -> Result<Option<bool>, super::Error> {
        let live = self
            .index
            .lock()
            .expect("index")
            .live_at(&record.key, &record.location);
        let Some(entry) = live.filter(|entry| !entry.referenced) else {
            return Ok(None);
        };
        let Some(reader) = self.segments.reader(record.location.segment).await? else {
            return Ok(None);
        };
        let mut hasher = record.key.checksum_function().hasher();
        let mut read = 0;
        while read < record.location.len {
            let want = (record.location.len - read).min(IO_CHUNK as u64);
            hasher.update(
                &read_payload(reader.as_ref(), &record.location, read, want as usize).await?,
            );
            read += want;
        }
        let planted = self.config.planted(super::PlantedBug::ScrubDropsUnverified);
        if hasher.finalize() == entry.sha256 && !planted {
            return Ok(Some(true));
        }
        let mut index = self.index.lock().expect("index");
        if index.live_at(&record.key, &record.location).is_some() {
            tracing::error!(key = ?record.key, location = ?record.location, "scrub: stored bytes fail their checksum; dropping the record");
            match &record.key {
                RecordKey::Blob(digest) => index.remove_blob(digest),
                RecordKey::Action {
                    instance,
                    function,
                    action,
                    ..
                } => index.remove_action(*function, instance, action),
                RecordKey::ActionRemoved { .. } | RecordKey::Seal => {}
            }
        }
        Ok(Some(false))
    }

    /// Starts the background scrub if the configuration asks for one.
    pub(super) fn start_scrub(self: &Arc<Self>) {
        if let Some(rate) = self.config.scrub_rate {
            self.runtime
                .spawn(Box::pin(run(Arc::downgrade(self), rate)));
        }
    }
}
