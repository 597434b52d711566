//! The cascade: when blobs leave the engine (evicted, or dropped as corrupt), the action results
//! that name them leave too.
//!
//! Invariant: an action result is removed only when its check found a gap (a blob it names is
//! not stored, or it cannot be read through), and only the value that was checked: a value
//! written since stays (see [`Engine::remove_action_if_value`]). Removals are durable, so an
//! incomplete entry does not come back at the next start.
//!
//! Without it, [`super::CompletenessChecking`] still refuses such an entry on every read, but the
//! entry would stay on disk and in the index until eviction reached it. The sweep runs after
//! the engine forgot blobs, walks the action results in batches, and looks blobs up without
//! counting a use: a sweep must not keep alive what clients no longer ask for.

use std::sync::Arc;
use std::time::Duration;

use super::completeness::{first_gap, Lookup};
use super::{AcKind, BlobRead, Digest, DigestFunction, Error, Stats, StoreFuture};
use crate::engine::Engine;

/// Action results read per walk step (the index lock is taken once per step).
const WALK_BATCH: usize = 256;

/// Settings of the sweep.
#[derive(Clone, Debug)]
pub(crate) struct CascadeConfig {
    /// How often the sweep looks whether blobs were forgotten since it last ran.
    pub interval: Duration,
    /// The completeness check's bound on one tree directory message.
    pub max_directory_size: usize,
    /// The planted bug `cascade-forgets-empty-blob` (simulator only).
    pub planted_forgets_empty_blob: bool,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Action results checked.
    pub checked: u64,
    /// Of those, removed.
    pub removed: u64,
}

/// Runs the sweep in the background for as long as the engine lives: every `interval`, if the
/// engine forgot any blob since the last look, one sweep over every action result.
pub(crate) fn spawn(engine: &Arc<Engine>, config: CascadeConfig) {
    let weak = Arc::downgrade(engine);
    let runtime = engine.runtime().clone();
    engine.runtime().spawn(Box::pin(async move {
        let mut seen = None;
        loop {
            runtime.sleep(config.interval).await;
            let Some(engine) = weak.upgrade() else {
                return;
            };
            let forgotten = blobs_forgotten(&engine.stats());
            if seen == Some(forgotten) {
                continue;
            }
            seen = Some(forgotten);
            match sweep(&engine, &config).await {
                Ok(done) if done.removed > 0 => {
                    tracing::info!(
                        checked = done.checked,
                        removed = done.removed,
                        "cascade swept"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cascade sweep stopped"),
            }
        }
    }));
}

/// What makes a sweep worth running: records the engine let go of since it started.
fn blobs_forgotten(stats: &Stats) -> u64 {
    stats.evictions + stats.corrupt_dropped
}

/// Checks every action result once and removes the incomplete ones.
pub(crate) async fn sweep(engine: &Arc<Engine>, config: &CascadeConfig) -> Result<Sweep, Error> {
    let lookup = Untouched {
        engine,
        forgets_empty_blob: config.planted_forgets_empty_blob,
    };
    let mut done = Sweep::default();
    let mut at = Some(0);
    while let Some(from) = at {
        let (keys, next) = engine.action_results_from(from, WALK_BATCH);
        at = next;
        for (function, instance, action) in keys {
            let Some((AcKind::ActionResult, value)) =
                engine.peek_action(&instance, function, &action).await?
            else {
                continue;
            };
            done.checked += 1;
            let gap = first_gap(&lookup, function, &value, config.max_directory_size);
            let Some(gap) = gap.await? else {
                continue;
            };
            let sha = DigestFunction::Sha256.hash(&value);
            if engine
                .remove_action_if_value(&instance, function, action, sha)
                .await?
            {
                tracing::debug!(instance, action = %hex::encode(action), %gap, "removed an incomplete action result");
                done.removed += 1;
            }
        }
    }
    Ok(done)
}

/// The engine looked up without touching what it finds.
struct Untouched<'e> {
    engine: &'e Arc<Engine>,
    forgets_empty_blob: bool,
}

impl Lookup for Untouched<'_> {
    fn missing<'a>(&'a self, digests: &'a [Digest]) -> StoreFuture<'a, Vec<Digest>> {
        Box::pin(async move {
            let mut missing = self.engine.missing_untouched(digests);
            if self.forgets_empty_blob {
                // The planted bug: the empty blob is never stored, so an index lookup misses it.
                missing.extend(digests.iter().filter(|d| d.is_empty()));
            }
            Ok(missing)
        })
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Box<dyn BlobRead>> {
        Box::pin(async move {
            let reader = self.engine.open_blob_untouched(digest, 0)?;
            Ok(Box::new(reader) as Box<dyn BlobRead>)
        })
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::proto::reapi::{ActionResult, OutputFile};
    use crate::seam::real_fs::RealFs;
    use crate::seam::TokioRuntime;
    use bytes::Bytes;
    use prost::Message as _;

    async fn open(dir: &std::path::Path) -> Arc<Engine> {
        let config = EngineConfig::new(dir);
        Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
            .await
            .unwrap()
    }

    fn config(forgets_empty_blob: bool) -> CascadeConfig {
        CascadeConfig {
            interval: Duration::from_secs(3600),
            max_directory_size: 1 << 20,
            planted_forgets_empty_blob: forgets_empty_blob,
        }
    }

    /// An encoded action result with one output file per digest.
    fn naming(outputs: &[Digest]) -> Bytes {
        let result = ActionResult {
            output_files: outputs
                .iter()
                .enumerate()
                .map(|(i, d)| OutputFile {
                    path: format!("out{i}"),
                    digest: Some(d.into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        result.encode_to_vec().into()
    }

    async fn put(engine: &Arc<Engine>, action: &[u8], value: Bytes) -> [u8; 32] {
        let action = Digest::of(action).hash;
        engine
            .put_action(
                "main",
                DigestFunction::Sha256,
                action,
                AcKind::ActionResult,
                value,
            )
            .await
            .unwrap();
        action
    }

    async fn holds(engine: &Engine, action: &[u8; 32]) -> bool {
        engine
            .peek_action("main", DigestFunction::Sha256, action)
            .await
            .unwrap()
            .is_some()
    }

    #[tokio::test]
    async fn incomplete_results_are_removed_durably_and_complete_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).await;
        let stored = Bytes::from_static(b"an output that is stored");
        let present = Digest::of(&stored);
        engine.put_blob(present, stored).await.unwrap();
        let gone = Digest::of(b"an output that never arrived");
        let complete = put(&engine, b"complete", naming(&[present, Digest::EMPTY])).await;
        let incomplete = put(&engine, b"incomplete", naming(&[present, gone])).await;
        let opaque = Digest::of(b"ccache key").hash;
        let opaque_value = Bytes::from_static(b"not an ActionResult at all");
        engine
            .put_action(
                "main",
                DigestFunction::Sha256,
                opaque,
                AcKind::Opaque,
                opaque_value,
            )
            .await
            .unwrap();

        let done = sweep(&engine, &config(false)).await.unwrap();
        assert_eq!(
            done,
            Sweep {
                checked: 2,
                removed: 1
            }
        );
        assert!(!holds(&engine, &incomplete).await);
        assert!(holds(&engine, &complete).await);
        assert!(holds(&engine, &opaque).await);
        assert_eq!(engine.stats().cascade_removals, 1);

        // The removal record outlives a restart, after a clean stop or not.
        drop(engine);
        let engine = open(dir.path()).await;
        assert!(!holds(&engine, &incomplete).await);
        assert!(holds(&engine, &complete).await);
        engine.shutdown().await;
        drop(engine);
        let engine = open(dir.path()).await;
        assert!(!holds(&engine, &incomplete).await);
        assert_eq!(engine.stats().actions, 2);
    }

    #[tokio::test]
    async fn a_value_written_after_the_check_stays() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).await;
        let gone = Digest::of(b"never stored");
        let old = naming(&[gone]);
        let action = put(&engine, b"action", old.clone()).await;
        // A client overwrites the entry between the sweep's check and its removal.
        let newer = naming(&[Digest::EMPTY]);
        put(&engine, b"action", newer.clone()).await;
        let old_sha = DigestFunction::Sha256.hash(&old);
        let removed = engine
            .remove_action_if_value("main", DigestFunction::Sha256, action, old_sha)
            .await
            .unwrap();
        assert!(!removed);
        let found = engine
            .peek_action("main", DigestFunction::Sha256, &action)
            .await
            .unwrap();
        assert_eq!(found.map(|(_, v)| v), Some(newer.clone()));
        // Nor does replay apply the removal to the newer value.
        drop(engine);
        let engine = open(dir.path()).await;
        let found = engine
            .peek_action("main", DigestFunction::Sha256, &action)
            .await
            .unwrap();
        assert_eq!(found.map(|(_, v)| v), Some(newer));
    }

    #[tokio::test]
    async fn the_planted_bug_removes_results_naming_the_empty_blob() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).await;
        let action = put(&engine, b"empty output", naming(&[Digest::EMPTY])).await;
        assert_eq!(sweep(&engine, &config(false)).await.unwrap().removed, 0);
        assert_eq!(sweep(&engine, &config(true)).await.unwrap().removed, 1);
        assert!(!holds(&engine, &action).await);
    }
}
