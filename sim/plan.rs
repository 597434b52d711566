//! A seed's whole configuration, drawn from the seeded RNG ("swarm testing"): each seed runs a
//! different mix of clients, sizes, staging, segment sizes, crashes and fault rates, and prints
//! it first, so the seed alone tells the whole story.

use std::fmt;
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};

use hoard::seam::sim_fs::FaultConfig;

/// Everything a seed decided before it ran.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Client nodes running Bazel-shaped gRPC workloads at once.
    pub clients: usize,
    /// Client nodes running ccache-shaped HTTP workloads at once.
    pub ccache_clients: usize,
    /// Client nodes running Bazel-shaped HTTP workloads (`/cas/` and `/ac/`) at once.
    pub http_clients: usize,
    /// Rounds of operations per client.
    pub rounds: usize,
    /// The most uploads a client starts at once in a burst (a build script's OUT_DIR).
    pub burst_max: usize,
    /// Distinct blob contents the clients draw from (a small pool makes same-digest races).
    pub pool: usize,
    /// Largest blob in the pool.
    pub max_blob: usize,
    /// ByteStream chunk size.
    pub chunk: usize,
    /// Probability that an upload's stream breaks midway (then it is resumed or abandoned).
    pub break_prob: f64,
    /// Server: uploads up to this size are staged in memory, larger ones in temp files.
    pub memory_stage_limit: u64,
    /// Server: segment roll size.
    pub segment_size: u64,
    /// Server: the cache's size budget (eviction), if any.
    pub max_size: Option<u64>,
    /// Server crashes (kill + disk crash + restart) during the run.
    pub crashes: usize,
    /// Server stops during the run: a clean shutdown (the active segment sealed) and a restart,
    /// or, for some, a crash while the shutdown is still sealing.
    pub stops: usize,
    /// Server: how often the cascade looks for action results whose blobs were evicted.
    pub cascade_interval: Duration,
    /// Filesystem faults.
    pub faults: FaultConfig,
    /// Server: the background scrub's rate in bytes/s, if on (it must never drop an intact
    /// record: `acknowledged-blob-lost` would catch it).
    pub scrub_rate: Option<u64>,
    /// Server: credentials required (the workload's token); clients send them, and the auth
    /// probes check that requests without them are refused and change nothing.
    pub auth: bool,
}

impl Plan {
    /// Draws a plan from the seeded RNG (call inside the simulation).
    pub fn draw() -> Plan {
        let mut rng = thread_rng();
        let pool = *pick(&mut rng, &[8, 40, 200]);
        Plan {
            clients: rng.gen_range(1..=4),
            ccache_clients: rng.gen_range(0..=2),
            http_clients: rng.gen_range(0..=2),
            rounds: rng.gen_range(2..=8),
            burst_max: *pick(&mut rng, &[4, 32, 128, 340]),
            pool,
            max_blob: *pick(&mut rng, &[512, 64 << 10, 512 << 10]),
            chunk: *pick(&mut rng, &[4 << 10, 16 << 10, 64 << 10]),
            break_prob: *pick(&mut rng, &[0.0, 0.05, 0.2]),
            memory_stage_limit: *pick(&mut rng, &[0, 1 << 10, 32 << 10, 1 << 20]),
            // Small segments seal often, so crashes land in seals and tear footers.
            segment_size: *pick(&mut rng, &[16 << 10, 64 << 10, 1 << 20, 64 << 20]),
            max_size: *pick(
                &mut rng,
                &[None, None, Some(2 << 20), Some(8 << 20), Some(32 << 20)],
            ),
            crashes: *pick(&mut rng, &[0, 1, 1, 2, 4]),
            stops: *pick(&mut rng, &[0, 1, 2, 3]),
            cascade_interval: Duration::from_millis(*pick(&mut rng, &[20, 200, 2000])),
            faults: FaultConfig::swarm(),
            // Drawn last, so the rest of a seed's plan is what it was before the scrub existed.
            scrub_rate: *pick(&mut rng, &[None, None, Some(64 << 10), Some(16 << 20)]),
            auth: rng.gen_bool(0.3),
        }
    }
}

fn pick<'a, T>(rng: &mut impl Rng, choices: &'a [T]) -> &'a T {
    &choices[rng.gen_range(0..choices.len())]
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "clients={} ccache_clients={} http_clients={} rounds={} burst_max={} pool={} max_blob={} chunk={} \
             break={} stage_limit={} segment_size={} max_size={:?} crashes={} stops={} cascade={:?} scrub_rate={:?} auth={} | faults: {}",
            self.clients,
            self.ccache_clients,
            self.http_clients,
            self.rounds,
            self.burst_max,
            self.pool,
            self.max_blob,
            self.chunk,
            self.break_prob,
            self.memory_stage_limit,
            self.segment_size,
            self.max_size,
            self.crashes,
            self.stops,
            self.cascade_interval,
            self.scrub_rate,
            self.auth,
            self.faults
        )
    }
}
