//! What is known to be in the bucket, for a short while: saves a HEAD per FindMissingBlobs of a
//! blob just seen, and an upload of what another node (or a fill) just proved present.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys beyond which expired entries are swept (and, if all are fresh, the cache restarts).
const CAPACITY: usize = 1 << 18;

/// A positive cache of bucket keys with a time to live.
pub struct Presence {
    ttl: Duration,
    seen: Mutex<HashMap<String, Instant>>,
}

impl Presence {
    /// Entries live for `ttl`.
    pub fn new(ttl: Duration) -> Presence {
        Presence {
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` was seen in the bucket within the time to live.
    pub fn contains(&self, key: &str) -> bool {
        let seen = self.seen.lock().expect("presence");
        seen.get(key).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// `key` is in the bucket now.
    pub fn insert(&self, key: String) {
        let mut seen = self.seen.lock().expect("presence");
        if seen.len() >= CAPACITY {
            let ttl = self.ttl;
            seen.retain(|_, at| at.elapsed() < ttl);
            if seen.len() >= CAPACITY {
                seen.clear();
            }
        }
        seen.insert(key, Instant::now());
    }
}
