#![cfg(not(madsim))]
//! The cascade on the real filesystem: once eviction takes a blob, the action results naming it
//! are removed (and counted), while the ones kept alive by use stay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hoard::engine::{Digest, Engine, EngineConfig};
use hoard::proto::reapi::{ActionResult, OutputFile};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::store::stack::{self, StackConfig};
use hoard::store::{AcKind, Accept, ActionKey, ActionValue};
use prost::Message as _;

fn blob(seed: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn result_naming(output: &Digest) -> ActionValue {
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(output.into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    ActionValue {
        kind: AcKind::ActionResult,
        bytes: result.encode_to_vec().into(),
    }
}

#[tokio::test]
async fn evicting_a_blob_removes_the_action_results_that_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.max_size = Some(2 << 20);
    config.segment_size = 256 << 10;
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    let stack_config = StackConfig {
        cascade_interval: Duration::from_millis(20),
        ..StackConfig::default()
    };
    let store = stack::over_engine(engine.clone(), &stack_config);

    let cold_output = blob(1, 40_000);
    let hot_output = blob(2, 40_000);
    let (cold, hot) = (Digest::of(&cold_output), Digest::of(&hot_output));
    store.put_blob(cold, cold_output).await.unwrap();
    store.put_blob(hot, hot_output).await.unwrap();
    let cold_key = ActionKey::new("", Digest::of(b"cold action").hash);
    let hot_key = ActionKey::new("", Digest::of(b"hot action").hash);
    store
        .put_action(&hot_key, result_naming(&hot))
        .await
        .unwrap();

    // Blobs stream through the 2 MB cache until the cold output is evicted. The cold action
    // result is written a few segments after its output, so it outlives it; the hot one is
    // looked up (so its output is used) as it goes.
    let mut round = 0u64;
    // (`missing_untouched`: asking with `contains` would count as a use and keep it.)
    while engine.missing_untouched(&[cold]).is_empty() {
        let data = blob(100 + round, 30_000);
        store.put_blob(Digest::of(&data), data).await.unwrap();
        if round == 20 {
            store
                .put_action(&cold_key, result_naming(&cold))
                .await
                .unwrap();
        }
        let hit = store.get_action(&hot_key, Accept::ActionResults).await;
        assert!(hit.unwrap().is_some(), "round {round}");
        round += 1;
        assert!(
            round < 1000,
            "6 MB through a 2 MB cache evicts: {:?}",
            engine.stats()
        );
    }
    assert!(
        round > 20,
        "the cold result was written before its output went"
    );

    // The sweep runs in the background; wait for it (not a timing assertion: it has no bound).
    let mut waited = Duration::ZERO;
    while engine.stats().cascade_removals == 0 && waited < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let stats = engine.stats();
    assert_eq!(
        stats.cascade_removals, 1,
        "exactly the cold action result went"
    );
    assert!(engine
        .peek_action("", cold_key.function, &cold_key.hash)
        .await
        .unwrap()
        .is_none());
    assert!(engine
        .peek_action("", hot_key.function, &hot_key.hash)
        .await
        .unwrap()
        .is_some());
    let hit = store.get_action(&hot_key, Accept::ActionResults).await;
    assert!(hit.unwrap().is_some());
}
