//! Where the store stack is assembled: the one place that decides which layers the cache has
//! and in which order (see the picture in [`crate::store`]).
//!
//! A new tier or layer is one file implementing [`Store`] plus one line in [`assemble`].

use std::sync::Arc;
use std::time::Duration;

use super::cascade::{self, CascadeConfig};
use super::{ActionResultValidation, CompletenessChecking, EngineStore, Metered, Store};
use crate::engine::{Engine, PlantedBug};
use crate::observe::{Metrics, Protocol};
use crate::tier::{Tier, TierConfig};

/// Settings of the layers.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Largest single `Directory` message of an output directory's tree that the completeness
    /// check reads into memory; a tree holding a larger one makes its action result a miss.
    pub max_tree_directory_size: usize,
    /// How often the cascade looks whether the engine forgot blobs, and if so removes the
    /// action results naming them (see [`super::cascade`]).
    pub cascade_interval: Duration,
    /// The object-store tier's settings, if it is on (`hoard serve` opens it).
    pub object_store: Option<TierConfig>,
    /// The opened object-store tier, put under the completeness check.
    pub tier: Option<Arc<Tier>>,
    /// A planted bug (simulator only: ignored without the `planted-bugs` feature); see
    /// [`PlantedBug::IncompleteActionServed`].
    pub planted: Option<PlantedBug>,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            max_tree_directory_size: 16 << 20,
            cascade_interval: Duration::from_secs(30),
            object_store: None,
            tier: None,
            planted: None,
        }
    }
}

impl StackConfig {
    fn planted(&self, bug: PlantedBug) -> bool {
        bug.is_planted_in(self.planted)
    }
}

/// The cache both front ends share: `base` (the engine, or a memory store) under the layers
/// that keep the cache's own rules, bottom to top.
pub fn assemble(base: Arc<dyn Store>, config: &StackConfig) -> Arc<dyn Store> {
    let mut store = base;
    if let Some(tier) = &config.tier {
        store = crate::tier::store::layer(store, tier.clone());
    }
    if !config.planted(PlantedBug::IncompleteActionServed) {
        let bound = config.max_tree_directory_size;
        store = Arc::new(CompletenessChecking::new(store, bound));
    }
    store = Arc::new(ActionResultValidation::new(store));
    store
}

/// The stack `hoard serve` runs: [`assemble`] over the segment engine, with the cascade
/// sweeping behind it.
pub fn over_engine(engine: Arc<Engine>, config: &StackConfig) -> Arc<dyn Store> {
    let sweep = CascadeConfig {
        interval: config.cascade_interval,
        max_directory_size: config.max_tree_directory_size,
        planted_forgets_empty_blob: config.planted(PlantedBug::CascadeForgetsEmptyBlob),
    };
    cascade::spawn(&engine, sweep);
    assemble(Arc::new(EngineStore::new(engine)), config)
}

/// What one front end holds: the shared cache with that front end's metrics on top.
pub fn for_front_end(
    cache: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    protocol: Protocol,
) -> Arc<dyn Store> {
    Arc::new(Metered::new(cache.clone(), metrics.clone(), protocol))
}
