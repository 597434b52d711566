//! The busiest keys per instance name, for the status page: action-cache entries by instance,
//! and CAS blobs (shared by every instance) under [`CAS_INSTANCE`].
//!
//! Memory is bounded whatever clients send: at most [`MAX_INSTANCES`] instance names (more are
//! counted under [`OTHER_INSTANCES`]) and [`MAX_KEYS`] keys per name. A full table forgets its
//! quieter half, so a key seen once long ago cannot hold a place a busy one needs; the counts
//! of the keys that stay are exact.

use std::collections::HashMap;
use std::sync::Mutex;

/// The name the CAS's busiest blobs are listed under (the CAS is shared by every instance).
pub const CAS_INSTANCE: &str = "(cas)";
/// Where instance names past [`MAX_INSTANCES`] are counted.
pub const OTHER_INSTANCES: &str = "(other instances)";
/// Instance names tracked apart.
pub const MAX_INSTANCES: usize = 32;
/// Keys tracked per instance name.
pub const MAX_KEYS: usize = 512;

/// The traffic of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Lookups and writes.
    pub requests: u64,
    /// Payload bytes they moved.
    pub bytes: u64,
}

#[derive(Default)]
struct Instance {
    total: Traffic,
    keys: HashMap<String, Traffic>,
}

/// Per-instance traffic by key.
#[derive(Default)]
pub struct TopKeys {
    instances: Mutex<HashMap<String, Instance>>,
}

/// One instance's busiest keys, busiest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceTop {
    /// The instance name ([`CAS_INSTANCE`] for blobs).
    pub instance: String,
    /// Everything counted for it.
    pub total: Traffic,
    /// `(key, traffic)`, by bytes then requests, at most the `limit` asked for.
    pub keys: Vec<(String, Traffic)>,
}

impl TopKeys {
    /// Counts one request for `key` of `instance` that moved `bytes`.
    pub fn count(&self, instance: &str, key: &str, bytes: u64) {
        let mut instances = self.instances.lock().expect("top keys");
        let name = if instances.contains_key(instance) || instances.len() < MAX_INSTANCES {
            instance
        } else {
            OTHER_INSTANCES
        };
        let entry = instances.entry(name.to_owned()).or_default();
        entry.total.requests += 1;
        entry.total.bytes += bytes;
        if !entry.keys.contains_key(key) && entry.keys.len() >= MAX_KEYS {
            forget_quieter_half(&mut entry.keys);
        }
        let traffic = entry.keys.entry(key.to_owned()).or_default();
        traffic.requests += 1;
        traffic.bytes += bytes;
    }

    /// Every instance (by name) with its `limit` busiest keys.
    pub fn top(&self, limit: usize) -> Vec<InstanceTop> {
        let instances = self.instances.lock().expect("top keys");
        let mut tops: Vec<InstanceTop> = instances
            .iter()
            .map(|(name, instance)| {
                let mut keys: Vec<(String, Traffic)> = instance
                    .keys
                    .iter()
                    .map(|(key, traffic)| (key.clone(), *traffic))
                    .collect();
                keys.sort_by(|a, b| busier(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)));
                keys.truncate(limit);
                InstanceTop {
                    instance: name.clone(),
                    total: instance.total,
                    keys,
                }
            })
            .collect();
        tops.sort_by(|a, b| a.instance.cmp(&b.instance));
        tops
    }
}

/// Orders busier traffic first.
fn busier(a: &Traffic, b: &Traffic) -> std::cmp::Ordering {
    (b.bytes, b.requests).cmp(&(a.bytes, a.requests))
}

fn forget_quieter_half(keys: &mut HashMap<String, Traffic>) {
    let mut ranked: Vec<Traffic> = keys.values().copied().collect();
    ranked.sort_by(busier);
    let threshold = ranked[ranked.len() / 2];
    let mut kept = 0;
    keys.retain(|_, traffic| {
        let keep = kept < ranked.len() / 2 && busier(traffic, &threshold).is_lt();
        kept += usize::from(keep);
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_ranked_per_instance_and_bounded() {
        let top = TopKeys::default();
        top.count("ci", "a", 10);
        top.count("ci", "b", 100);
        top.count("ci", "a", 10);
        top.count("", "c", 1);
        let tops = top.top(1);
        assert_eq!(tops.len(), 2);
        assert_eq!(tops[0].instance, "");
        let ci = &tops[1];
        assert_eq!(
            ci.total,
            Traffic {
                requests: 3,
                bytes: 120
            }
        );
        assert_eq!(
            ci.keys,
            vec![(
                "b".to_owned(),
                Traffic {
                    requests: 1,
                    bytes: 100
                }
            )]
        );

        // A flood of one-off keys never grows the table past its bound, and the busy key stays.
        for i in 0..10 * MAX_KEYS {
            top.count("ci", &format!("once-{i}"), 1);
        }
        assert!(top.instances.lock().unwrap()["ci"].keys.len() <= MAX_KEYS);
        assert_eq!(top.top(1)[1].keys[0].0, "b");
        for i in 0..2 * MAX_INSTANCES {
            top.count(&format!("instance-{i}"), "k", 1);
        }
        let names: Vec<String> = top.top(0).into_iter().map(|t| t.instance).collect();
        assert_eq!(names.len(), MAX_INSTANCES + 1);
        assert!(names.contains(&OTHER_INSTANCES.to_owned()));
    }
}
