//! The simulated disk behind [`Fs`] (only under `--cfg madsim`: the simulator and the tests
//! that run on madsim use it).
//!
//! Three layers are modelled explicitly, because the bugs hoard hunts live between them:
//! 1. **Handle buffers**: [`FsFile::write`] only appends to the handle's pending buffer. Nobody
//!    sees those bytes (not even the writer's own `read_at`) until `flush`/`sync`/`close`, or
//!    until the lazy-flush fault drains a prefix of them in the background. A handle dropped
//!    unflushed leaves its bytes *in flight*: they land at a later, seeded fs call.
//! 2. **Page cache**: per-inode contents every handle sees; lost on [`SimFs::crash`].
//! 3. **Durable media**: per-inode contents updated by a successful `sync`. The namespace
//!    (create, rename, remove, mkdir) is live at once but durable only after `sync_dir` of the
//!    parent, so the world keeps a live and a durable map `dir -> (name -> entry)`.
//!
//! Faults are named ([`FaultKind`]) and drawn per seed ([`FaultConfig::swarm`]). Path-based
//! persists of files with unflushed bytes are recorded as [`Violation`]s: that rule is what
//! the simulator exists to check.
//!
//! Determinism: all state is in ordered containers, every random draw comes from madsim's
//! seeded RNG, and draws happen in call order (the simulation is single-threaded).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Fs, FsFile, FsLock};
use async_trait::async_trait;
use bytes::Bytes;
use madsim::rand::{thread_rng, Rng};

/// Granularity of torn writes on a crash.
const SECTOR: usize = 512;
/// Recent events kept for replay diagnostics (bounded so long runs stay lean).
const EVENT_LOG: usize = 4096;
/// Free space reported when no capacity applies.
const UNLIMITED_SPACE: u64 = 1 << 50;
/// Largest file the model will materialise, so a bogus `truncate` fails instead of aborting.
const MAX_FILE: u64 = 1 << 32;
/// The two namespace roots: absolute paths hang off `/`, relative ones off ``.
const ROOTS: [&str; 2] = ["", "/"];

/// Name of the violation recorded when a path-based persist touches unflushed bytes.
pub const PERSIST_BEFORE_FLUSH: &str = "persist-before-flush";

/// A rule checked at every successful `sync`, given the file's durable contents before and
/// after it: `Some(why)` when the sync broke the rule. The disk knows no file format; the world
/// installs checks that do (see [`SimFs::set_sync_check`]).
pub type SyncCheck = fn(before: &[u8], after: &[u8]) -> Option<String>;

/// Told of every silent damage the disk does (see [`SimFs::set_damage_hook`]): the file's path,
/// its contents as the caller meant them, and the byte range that is not what it should be.
/// The disk knows no file format; the world maps the range to the records it spoils.
pub type DamageHook = Arc<dyn Fn(&Path, &[u8], Range<u64>) + Send + Sync>;

/// A fault the simulated disk can inject. Names are stable: they appear in configurations,
/// stats and replay output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A random prefix of some handle's pending bytes reaches the page cache before any flush.
    LazyFlush,
    /// A crash keeps a sector-aligned prefix of unsynced bytes (sectors maybe old or new).
    CrashTornTail,
    /// A write, flush, truncate or create fails with `ENOSPC`: the capacity is used up.
    Enospc,
    /// `read_at` fails with `EIO`.
    EioRead,
    /// `write` or `flush` fails with `EIO` (a failed flush lands only a prefix).
    EioWrite,
    /// `sync` or `sync_dir` fails with `EIO`, leaving durability unknown.
    EioSync,
    /// A call is delayed by a few (virtual) milliseconds.
    SlowIo,
    /// `read_at` returns the bytes with one bit flipped (the media is fine; the read was not).
    CorruptRead,
    /// While the machine is down, one bit of a file's durable contents flips (bit rot).
    CorruptAtRest,
    /// A `sync` reports success but the bytes never reach the media: a crash before the next
    /// good sync of the file reverts them.
    LostWrite,
    /// A flush lands its bytes a few sectors away from where they belong.
    MisdirectedWrite,
    /// While the machine is down, a sector in the last 4 KiB of a file (where a seal writes
    /// its footer and trailer) reads back as zeros.
    TornFooterSector,
}

impl FaultKind {
    /// Every fault, in a stable order.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::LazyFlush,
        FaultKind::CrashTornTail,
        FaultKind::Enospc,
        FaultKind::EioRead,
        FaultKind::EioWrite,
        FaultKind::EioSync,
        FaultKind::SlowIo,
        FaultKind::CorruptRead,
        FaultKind::CorruptAtRest,
        FaultKind::LostWrite,
        FaultKind::MisdirectedWrite,
        FaultKind::TornFooterSector,
    ];

    /// The stable name of the fault.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LazyFlush => "lazy-flush",
            FaultKind::CrashTornTail => "crash-torn-tail",
            FaultKind::Enospc => "enospc",
            FaultKind::EioRead => "eio-read",
            FaultKind::EioWrite => "eio-write",
            FaultKind::EioSync => "eio-sync",
            FaultKind::SlowIo => "slow-io",
            FaultKind::CorruptRead => "corrupt-read",
            FaultKind::CorruptAtRest => "corrupt-at-rest",
            FaultKind::LostWrite => "lost-write",
            FaultKind::MisdirectedWrite => "misdirected-write",
            FaultKind::TornFooterSector => "torn-footer-sector",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How often each fault fires. Probabilities are per call (per inode for torn tails, per
/// sector for `torn_mix`); values outside `[0, 1]` are clamped.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// `lazy-flush`: chance per fs call that a random prefix of one handle's pending bytes
    /// lands in the page cache.
    pub lazy_flush: f64,
    /// Not a fault but the model: chance per fs call that a dropped handle's in-flight bytes
    /// land. Clamped to at least 0.01 so they always land eventually.
    pub inflight_land: f64,
    /// `crash-torn-tail`: chance per dirty inode on a crash that a sector-aligned prefix of
    /// its unsynced bytes survives (otherwise they are all lost).
    pub torn_tail: f64,
    /// Chance per surviving dirty sector that it holds the old contents (FoundationDB style).
    pub torn_mix: f64,
    /// `enospc`: capacity in bytes (page-cache lengths plus pending bytes); `None` = unlimited.
    pub capacity: Option<u64>,
    /// `eio-read`: chance a `read_at` fails.
    pub eio_read: f64,
    /// `eio-write`: chance a `write` or `flush` fails.
    pub eio_write: f64,
    /// `eio-sync`: chance a `sync` or `sync_dir` fails.
    pub eio_sync: f64,
    /// `slow-io`: chance a call is delayed.
    pub slow_io: f64,
    /// Longest `slow-io` delay (virtual time).
    pub slow_io_max: Duration,
    /// `corrupt-read`: chance a `read_at` returns a flipped bit.
    pub corrupt_read: f64,
    /// `corrupt-at-rest`: chance per file and crash that a durable bit flips.
    pub corrupt_at_rest: f64,
    /// `lost-write`: chance a `sync` lies.
    pub lost_write: f64,
    /// `misdirected-write`: chance a flush lands at the wrong offset.
    pub misdirected_write: f64,
    /// `torn-footer-sector`: chance per file and crash that a sector of its last 4 KiB is lost.
    pub torn_footer_sector: f64,
}

impl FaultConfig {
    /// No faults: buffers drain only on flush and dropped bytes land at the next call.
    pub fn none() -> Self {
        Self {
            lazy_flush: 0.0,
            inflight_land: 1.0,
            torn_tail: 0.0,
            torn_mix: 0.0,
            capacity: None,
            eio_read: 0.0,
            eio_write: 0.0,
            eio_sync: 0.0,
            slow_io: 0.0,
            slow_io_max: Duration::from_millis(5),
            corrupt_read: 0.0,
            corrupt_at_rest: 0.0,
            lost_write: 0.0,
            misdirected_write: 0.0,
            torn_footer_sector: 0.0,
        }
    }

    /// Draws a swarm-testing configuration: each fault is on with probability 1/2 (capacity
    /// 1/4, as it fails most calls once reached; the silent ones 1/4 each, as every damage
    /// excuses the loss of what it spoiled), at a rate picked from a spread.
    /// Callers with a known workload size may overwrite `capacity`.
    pub fn draw<R: Rng + ?Sized>(rng: &mut R) -> Self {
        fn pick<R: Rng + ?Sized>(rng: &mut R, on: f64, rates: &[f64]) -> f64 {
            if rng.gen_bool(on) {
                rates[rng.gen_range(0..rates.len())]
            } else {
                0.0
            }
        }
        const CAPACITIES: [u64; 4] = [256 << 10, 1 << 20, 4 << 20, 16 << 20];
        Self {
            lazy_flush: pick(rng, 0.5, &[0.05, 0.2, 0.5, 0.9]),
            inflight_land: pick(rng, 1.0, &[0.1, 0.3, 0.7, 1.0]),
            torn_tail: pick(rng, 0.5, &[0.25, 0.5, 1.0]),
            torn_mix: pick(rng, 0.5, &[0.1, 0.5]),
            capacity: if rng.gen_bool(0.25) {
                Some(CAPACITIES[rng.gen_range(0..CAPACITIES.len())])
            } else {
                None
            },
            eio_read: pick(rng, 0.5, &[0.001, 0.01, 0.05]),
            eio_write: pick(rng, 0.5, &[0.001, 0.01, 0.05]),
            eio_sync: pick(rng, 0.5, &[0.01, 0.05, 0.2]),
            slow_io: pick(rng, 0.5, &[0.05, 0.2, 0.5]),
            slow_io_max: Duration::from_millis([1, 5, 20][rng.gen_range(0..3)]),
            corrupt_read: pick(rng, 0.25, &[0.0005, 0.005]),
            corrupt_at_rest: pick(rng, 0.25, &[0.05, 0.25]),
            lost_write: pick(rng, 0.25, &[0.01, 0.05]),
            misdirected_write: pick(rng, 0.25, &[0.001, 0.01]),
            torn_footer_sector: pick(rng, 0.25, &[0.1, 0.5]),
        }
    }

    /// [`FaultConfig::draw`] from madsim's seeded RNG.
    pub fn swarm() -> Self {
        Self::draw(&mut thread_rng())
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let capacity = self.capacity.map_or("off".to_string(), |c| c.to_string());
        write!(
            f,
            "lazy-flush={} inflight-land={} crash-torn-tail={} torn-mix={} enospc={} \
             eio-read={} eio-write={} eio-sync={} slow-io={} slow-io-max={:?} corrupt-read={} \
             corrupt-at-rest={} lost-write={} misdirected-write={} torn-footer-sector={}",
            self.lazy_flush,
            self.inflight_land,
            self.torn_tail,
            self.torn_mix,
            capacity,
            self.eio_read,
            self.eio_write,
            self.eio_sync,
            self.slow_io,
            self.slow_io_max,
            self.corrupt_read,
            self.corrupt_at_rest,
            self.lost_write,
            self.misdirected_write,
            self.torn_footer_sector,
        )
    }
}

/// A broken rule, recorded rather than panicking so the simulator can report it with the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Stable rule name, e.g. [`PERSIST_BEFORE_FLUSH`].
    pub name: &'static str,
    /// The path the offending call named.
    pub path: PathBuf,
    /// What was unflushed and where.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.name,
            self.path.display(),
            self.detail
        )
    }
}

/// Counts of calls and of injected faults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Calls per operation name (`create`, `write`, `file_len`, ...).
    pub ops: BTreeMap<&'static str, u64>,
    /// Injections per fault.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Crashes simulated.
    pub crashes: u64,
    /// Violations recorded.
    pub violations: u64,
}

impl FsStats {
    /// How often `kind` was injected.
    pub fn fault(&self, kind: FaultKind) -> u64 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for FsStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ops:")?;
        for (op, n) in &self.ops {
            write!(f, " {op}={n}")?;
        }
        f.write_str("; faults:")?;
        for kind in FaultKind::ALL {
            write!(f, " {kind}={}", self.fault(kind))?;
        }
        write!(
            f,
            "; crashes={} violations={}",
            self.crashes, self.violations
        )
    }
}

/// A directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// `dir -> (name -> entry)`; a key exists exactly for every directory (roots always).
type Namespace = BTreeMap<PathBuf, BTreeMap<String, Entry>>;

#[derive(Debug, Default)]
struct Inode {
    /// What every handle sees.
    cache: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Page-cache snapshot at a failed sync: a crash may surface it instead of `durable`.
    failed_sync: Option<Vec<u8>>,
    /// What the caller was told is durable, while a lost write makes it differ from `durable`.
    claimed: Option<Vec<u8>>,
    /// Byte ranges silently damaged on the media or in the cache (every silent fault but the
    /// transient `corrupt-read`), for audits.
    damage: Vec<Range<u64>>,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    /// The path it was opened by (for messages only).
    path: PathBuf,
    writable: bool,
    /// File offset where `pending[0]` lands (pwrite semantics, like `RealFs`).
    at: u64,
    pending: Vec<u8>,
    /// Dropped without flushing: `pending` is in flight and the handle is otherwise gone.
    dropped: bool,
}

struct World {
    faults: FaultConfig,
    faults_on: bool,
    inodes: BTreeMap<u64, Inode>,
    live: Namespace,
    durable: Namespace,
    /// Open (and in-flight) handles. A crash clears it, which is what makes old handles stale:
    /// ids are never reused.
    handles: BTreeMap<u64, Handle>,
    /// Locked path -> id of the guard holding it.
    locks: BTreeMap<PathBuf, u64>,
    /// Shared counter for inode, handle and lock ids.
    next_id: u64,
    violations: Vec<Violation>,
    /// The rule checked at every sync, and its name.
    sync_check: Option<(&'static str, SyncCheck)>,
    /// Told of every silent damage.
    damage_hook: Option<DamageHook>,
    /// Drop events not yet logged (see [`World::log_drops`]).
    dropped_unlogged: BTreeMap<u64, String>,
    stats: FsStats,
    events: VecDeque<String>,
}

/// The simulated filesystem. Clones share one world; the mutex is never held across an await.
#[derive(Clone)]
pub struct SimFs {
    world: Arc<Mutex<World>>,
}

impl SimFs {
    /// An empty disk (both roots exist) with the given faults, switched on.
    pub fn new(faults: FaultConfig) -> Self {
        let roots: Namespace = ROOTS
            .iter()
            .map(|r| (PathBuf::from(r), BTreeMap::new()))
            .collect();
        let world = World {
            faults,
            faults_on: true,
            inodes: BTreeMap::new(),
            live: roots.clone(),
            durable: roots,
            handles: BTreeMap::new(),
            locks: BTreeMap::new(),
            next_id: 1,
            violations: Vec::new(),
            sync_check: None,
            damage_hook: None,
            dropped_unlogged: BTreeMap::new(),
            stats: FsStats::default(),
            events: VecDeque::new(),
        };
        Self {
            world: Arc::new(Mutex::new(world)),
        }
    }

    /// Frees every byte the disk holds, once a seed is over. The madsim runtime may keep tasks
    /// (and so clones of this disk) alive after its run; without this a long run of seeds
    /// would keep every seed's disk in memory.
    pub fn release(&self) {
        let mut world = self.world();
        world.inodes.clear();
        world.handles.clear();
        world.events.clear();
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Switches every injected fault (errors, delays, lazy flush, torn tails) on or off. The
    /// model stays: buffers, in-flight bytes, durability and rule checks.
    pub fn set_faults(&self, on: bool) {
        self.world().faults_on = on;
    }

    /// Power loss: pending and in-flight bytes vanish, page caches revert to durable contents
    /// (maybe with torn tails), the namespace reverts to its durable state, every handle goes
    /// stale and every lock is released.
    pub fn crash(&self) {
        self.world().crash();
    }

    /// The server process ends without the machine going down (a clean exit, or a kill of the
    /// process alone): its handles close, with bytes still in their buffers lost but in-flight
    /// bytes of dropped handles landing; its locks are released; page caches stay.
    pub fn process_exit(&self) {
        let mut world = self.world();
        world.log_drops();
        let in_flight: Vec<u64> = world
            .handles
            .iter()
            .filter(|(_, h)| h.dropped)
            .map(|(id, _)| *id)
            .collect();
        for id in in_flight {
            let n = world.handles[&id].pending.len();
            world.drain(id, n);
        }
        world.handles.clear();
        world.locks.clear();
        world.gc();
        world.event("process exit".into());
    }

    /// Checks `check` (a violation named `name` when it fails) at every successful sync.
    pub fn set_sync_check(&self, name: &'static str, check: SyncCheck) {
        self.world().sync_check = Some((name, check));
    }

    /// Calls `hook` at every silent damage (`corrupt-read`, `corrupt-at-rest`, `lost-write` at
    /// the crash that reveals it, `misdirected-write`, `torn-footer-sector`).
    pub fn set_damage_hook(&self, hook: DamageHook) {
        self.world().damage_hook = Some(hook);
    }

    /// Byte ranges of the live file at `path` that a silent fault damaged since it was created.
    pub fn damaged(&self, path: &Path) -> Vec<Range<u64>> {
        let world = self.world();
        match normalise(path).ok().and_then(|p| world.entry(&p)) {
            Some(Entry::File(ino)) => world
                .inodes
                .get(&ino)
                .map_or(Vec::new(), |i| i.damage.clone()),
            _ => Vec::new(),
        }
    }

    /// Every violation recorded so far, in order.
    pub fn violations(&self) -> Vec<Violation> {
        self.world().violations.clone()
    }

    /// Every live file path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let world = self.world();
        let mut files: Vec<PathBuf> = world
            .live
            .iter()
            .flat_map(|(dir, entries)| {
                entries
                    .iter()
                    .filter(|(_, e)| matches!(e, Entry::File(_)))
                    .map(move |(name, _)| dir.join(name))
            })
            .collect();
        files.sort();
        files
    }

    /// Page-cache contents of a live file, bypassing faults, stats and rule checks (for
    /// oracles and tests).
    pub fn peek(&self, path: &Path) -> Option<Vec<u8>> {
        let world = self.world();
        match world.entry(&normalise(path).ok()?)? {
            Entry::File(ino) => world.inodes.get(&ino).map(|i| i.cache.clone()),
            Entry::Dir => None,
        }
    }

    /// Call and fault counts.
    pub fn stats(&self) -> FsStats {
        self.world().stats.clone()
    }

    /// The most recent injected faults, crashes and violations, oldest first (for replay
    /// diagnostics and determinism checks).
    pub fn events(&self) -> Vec<String> {
        let mut world = self.world();
        world.log_drops();
        world.events.iter().cloned().collect()
    }

    /// Runs one fs call: counts it, checks the persist rule on `persist` (before background
    /// landing, so the check sees the state the caller relied on), lets background work happen,
    /// maybe sleeps (slow-io), then applies `op` to the world.
    async fn run<T>(
        &self,
        op: &'static str,
        persist: Option<&Path>,
        apply: impl FnOnce(&mut World) -> io::Result<T> + Send,
    ) -> io::Result<T> {
        let delay = self.world().begin(op, persist);
        if let Some(delay) = delay {
            madsim::time::sleep(delay).await;
        }
        let mut world = self.world();
        apply(&mut world)
    }

    fn file(&self, id: u64) -> Box<dyn FsFile> {
        Box::new(SimFile {
            fs: self.clone(),
            id,
        })
    }
}

impl World {
    fn event(&mut self, event: String) {
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn count(&mut self, kind: FaultKind) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    /// Draws whether fault `kind` fires at rate `p`, counting it if so.
    fn fault(&mut self, kind: FaultKind, p: f64) -> bool {
        if !self.faults_on || !chance(&mut thread_rng(), p) {
            return false;
        }
        self.count(kind);
        true
    }

    /// Records silent damage to `range` of inode `ino` (whose intended contents are `image`)
    /// and tells the hook; transient damage (a corrupt read) is not kept on the inode.
    fn damaged(&mut self, kind: FaultKind, ino: u64, image: &[u8], range: Range<u64>) {
        let path = self.path_of(ino);
        self.event(format!(
            "{kind} {}: bytes {}..{}",
            path.display(),
            range.start,
            range.end
        ));
        if kind != FaultKind::CorruptRead {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.damage.push(range.clone());
            }
        }
        if let Some(hook) = &self.damage_hook {
            hook(&path, image, range);
        }
    }

    /// A live name of inode `ino` (empty when it has none).
    fn path_of(&self, ino: u64) -> PathBuf {
        self.live
            .iter()
            .find_map(|(dir, entries)| {
                entries
                    .iter()
                    .find(|(_, e)| **e == Entry::File(ino))
                    .map(|(name, _)| dir.join(name))
            })
            .unwrap_or_default()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn begin(&mut self, op: &'static str, persist: Option<&Path>) -> Option<Duration> {
        self.log_drops();
        *self.stats.ops.entry(op).or_default() += 1;
        if let Some(path) = persist.and_then(|p| normalise(p).ok()) {
            self.check_persist(op, &path);
        }
        self.tick();
        if !self.fault(FaultKind::SlowIo, self.faults.slow_io) {
            return None;
        }
        let max = u64::try_from(self.faults.slow_io_max.as_micros()).unwrap_or(u64::MAX);
        let delay = Duration::from_micros(thread_rng().gen_range(1..=max.max(1)));
        self.event(format!("slow-io {op} {delay:?}"));
        Some(delay)
    }

    /// Background progress the caller does not control: in-flight bytes of dropped handles
    /// land, and (lazy-flush) a prefix of some handle's pending bytes lands early.
    fn tick(&mut self) {
        let land = self.faults.inflight_land.clamp(0.01, 1.0);
        let in_flight: Vec<u64> = self
            .handles
            .iter()
            .filter(|(_, h)| h.dropped && !h.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in in_flight {
            if thread_rng().gen_bool(land) {
                let n = self.handles[&id].pending.len();
                self.event(format!("in-flight #{id} lands {n} bytes"));
                self.drain(id, n);
            }
        }
        let candidates: Vec<u64> = self
            .handles
            .iter()
            .filter(|(_, h)| !h.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() || !self.fault(FaultKind::LazyFlush, self.faults.lazy_flush) {
            return;
        }
        let mut rng = thread_rng();
        let id = candidates[rng.gen_range(0..candidates.len())];
        let handle = &self.handles[&id];
        let pending = handle.pending.len();
        let n = rng.gen_range(1..=pending);
        let path = handle.path.display().to_string();
        self.event(format!("lazy-flush #{id} {path} {n}/{pending} bytes"));
        self.drain(id, n);
    }

    /// Moves the first `n` pending bytes of handle `id` into the page cache.
    fn drain(&mut self, id: u64, n: usize) {
        let Some(handle) = self.handles.get_mut(&id) else {
            return;
        };
        let n = n.min(handle.pending.len());
        let bytes: Vec<u8> = handle.pending.drain(..n).collect();
        // `at` is bounded by MAX_FILE plus buffered bytes, so it fits in memory-sized usize.
        let at = handle.at as usize;
        handle.at += n as u64;
        let (ino, finished) = (handle.ino, handle.dropped && handle.pending.is_empty());
        let inode = self.inodes.get_mut(&ino).expect("handles keep their inode");
        if inode.cache.len() < at + n {
            inode.cache.resize(at + n, 0);
        }
        inode.cache[at..at + n].copy_from_slice(&bytes);
        if finished {
            self.handles.remove(&id);
            self.gc();
        }
    }

    /// The persist rule: a path-based call that persists or publishes a file must not race
    /// bytes still sitting in some handle's buffer.
    fn check_persist(&mut self, op: &'static str, path: &Path) {
        let Some(Entry::File(ino)) = self.entry(path) else {
            return;
        };
        let holders: Vec<String> = self
            .handles
            .iter()
            .filter(|(_, h)| h.ino == ino && !h.pending.is_empty())
            .map(|(id, h)| {
                let state = if h.dropped {
                    "in flight (dropped unflushed)"
                } else {
                    "unflushed"
                };
                let (n, opened) = (h.pending.len(), h.path.display());
                format!("handle #{id} (opened as {opened}) holds {n} {state} bytes")
            })
            .collect();
        if holders.is_empty() {
            return;
        }
        let detail = format!("{op} while {}", holders.join(", "));
        self.stats.violations += 1;
        self.event(format!(
            "violation {PERSIST_BEFORE_FLUSH} {}: {detail}",
            path.display()
        ));
        self.violations.push(Violation {
            name: PERSIST_BEFORE_FLUSH,
            path: path.to_path_buf(),
            detail,
        });
    }

    /// Drops inodes nothing refers to (no live or durable entry, no handle).
    fn gc(&mut self) {
        let mut keep: BTreeSet<u64> = self.handles.values().map(|h| h.ino).collect();
        for ns in [&self.live, &self.durable] {
            keep.extend(
                ns.values()
                    .flat_map(|entries| entries.values())
                    .filter_map(|e| match e {
                        Entry::File(ino) => Some(*ino),
                        Entry::Dir => None,
                    }),
            );
        }
        self.inodes.retain(|ino, _| keep.contains(ino));
    }

    /// Bytes in use: page-cache lengths of files reachable live or through a handle (an
    /// unlinked file frees its space once closed) plus every pending byte.
    fn used(&self) -> u64 {
        let mut counted: BTreeSet<u64> = self.handles.values().map(|h| h.ino).collect();
        counted.extend(
            self.live
                .values()
                .flat_map(|e| e.values())
                .filter_map(|e| match e {
                    Entry::File(ino) => Some(*ino),
                    Entry::Dir => None,
                }),
        );
        let cached: u64 = counted
            .iter()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.cache.len() as u64)
            .sum();
        cached
            + self
                .handles
                .values()
                .map(|h| h.pending.len() as u64)
                .sum::<u64>()
    }

    /// Fails with ENOSPC when `extra` more bytes would exceed the capacity.
    fn check_space(&mut self, extra: u64, path: &Path) -> io::Result<()> {
        let Some(capacity) = self.faults.capacity.filter(|_| self.faults_on) else {
            return Ok(());
        };
        let used = self.used();
        if used.saturating_add(extra) <= capacity {
            return Ok(());
        }
        self.count(FaultKind::Enospc);
        let path = path.display();
        self.event(format!("enospc {path}: {used} used + {extra} > {capacity}"));
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }

    fn entry(&self, path: &Path) -> Option<Entry> {
        let (dir, name) = split(path).ok()?;
        self.live.get(&dir)?.get(&name).copied()
    }

    fn dir_error(&self, dir: &Path) -> io::Error {
        match self.entry(dir) {
            Some(Entry::File(_)) => error(io::ErrorKind::NotADirectory, dir, "not a directory"),
            _ => not_found(dir),
        }
    }

    fn dir(&self, dir: &Path) -> io::Result<&BTreeMap<String, Entry>> {
        self.live.get(dir).ok_or_else(|| self.dir_error(dir))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut BTreeMap<String, Entry>> {
        if !self.live.contains_key(dir) {
            return Err(self.dir_error(dir));
        }
        Ok(self.live.get_mut(dir).expect("checked above"))
    }

    /// The inode of the live file at `path`.
    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.entry(path) {
            Some(Entry::File(ino)) => Ok(ino),
            Some(Entry::Dir) => Err(is_dir(path)),
            None if self.live.contains_key(path) => Err(is_dir(path)),
            None => Err(not_found(path)),
        }
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("entries and handles keep their inode")
    }

    fn open(&mut self, ino: u64, path: &Path, writable: bool, at: u64) -> u64 {
        let id = self.next_id();
        let handle = Handle {
            ino,
            path: path.to_path_buf(),
            writable,
            at,
            pending: Vec::new(),
            dropped: false,
        };
        self.handles.insert(id, handle);
        id
    }

    fn handle(&mut self, id: u64) -> io::Result<&mut Handle> {
        self.handles.get_mut(&id).ok_or_else(stale)
    }

    fn writable(&mut self, id: u64) -> io::Result<&mut Handle> {
        let handle = self.handle(id)?;
        if !handle.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(handle)
    }

    // ---- path operations ----

    fn create(&mut self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        let ino = match self.dir(&dir)?.get(&name).copied() {
            Some(Entry::Dir) => return Err(is_dir(path)),
            // O_TRUNC truncates the same inode: other handles see it shrink.
            Some(Entry::File(ino)) => {
                self.inode(ino).cache.clear();
                ino
            }
            None => {
                // A new file needs at least a byte of room (its metadata).
                self.check_space(1, path)?;
                let ino = self.next_id();
                self.inodes.insert(ino, Inode::default());
                self.dir_mut(&dir)?.insert(name, Entry::File(ino));
                ino
            }
        };
        Ok(self.open(ino, path, true, 0))
    }

    fn open_append(&mut self, path: &Path) -> io::Result<u64> {
        let ino = self.file(path)?;
        let end = self.inode(ino).cache.len() as u64;
        Ok(self.open(ino, path, true, end))
    }

    fn open_read(&mut self, path: &Path) -> io::Result<u64> {
        let ino = self.file(path)?;
        Ok(self.open(ino, path, false, 0))
    }

    /// Renames a file (directories are not supported: the engine never renames them).
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let ino = self.file(from)?;
        let (to_dir, to_name) = split(to)?;
        if matches!(self.dir(&to_dir)?.get(&to_name), Some(Entry::Dir)) {
            return Err(is_dir(to));
        }
        if from == to {
            return Ok(());
        }
        let (from_dir, from_name) = split(from)?;
        self.dir_mut(&from_dir)?.remove(&from_name);
        self.dir_mut(&to_dir)?.insert(to_name, Entry::File(ino));
        self.gc();
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.file(path)?;
        let (dir, name) = split(path)?;
        self.dir_mut(&dir)?.remove(&name);
        self.gc();
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        Ok(self.dir(path)?.keys().cloned().collect())
    }

    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        let mut chain: Vec<&Path> = path.ancestors().collect();
        chain.reverse();
        let last = chain.len() - 1;
        for (i, dir) in chain.into_iter().enumerate() {
            if self.live.contains_key(dir) {
                continue;
            }
            let (parent, name) = split(dir)?;
            let entries = self.dir_mut(&parent)?;
            if let Some(Entry::File(_)) = entries.get(&name) {
                return Err(if i == last {
                    error(io::ErrorKind::AlreadyExists, dir, "exists as a file")
                } else {
                    error(io::ErrorKind::NotADirectory, dir, "not a directory")
                });
            }
            entries.insert(name, Entry::Dir);
            self.live.insert(dir.to_path_buf(), BTreeMap::new());
        }
        Ok(())
    }

    fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        let entries = self.dir(path)?.clone();
        if self.fault(FaultKind::EioSync, self.faults.eio_sync) {
            // A failed directory fsync may or may not have persisted the entries.
            let applied = thread_rng().gen_bool(0.5);
            if applied {
                self.durable.insert(path.to_path_buf(), entries);
            }
            self.event(format!(
                "eio-sync dir {} (applied: {applied})",
                path.display()
            ));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.durable.insert(path.to_path_buf(), entries);
        Ok(())
    }

    fn len(&mut self, path: &Path) -> io::Result<u64> {
        let ino = self.file(path)?;
        Ok(self.inode(ino).cache.len() as u64)
    }

    fn free_space(&self, path: &Path) -> io::Result<u64> {
        if !self.live.contains_key(path) && self.entry(path).is_none() {
            return Err(not_found(path));
        }
        Ok(match self.faults.capacity.filter(|_| self.faults_on) {
            Some(capacity) => capacity.saturating_sub(self.used()),
            None => UNLIMITED_SPACE,
        })
    }

    fn lock(&mut self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        if self.locks.contains_key(path) {
            let msg = "is locked by another holder";
            return Err(error(io::ErrorKind::WouldBlock, path, msg));
        }
        match self.dir(&dir)?.get(&name) {
            Some(Entry::Dir) => return Err(is_dir(path)),
            Some(Entry::File(_)) => {}
            // Like the real lock, the lock file is created (empty) when missing.
            None => {
                let ino = self.next_id();
                self.inodes.insert(ino, Inode::default());
                self.dir_mut(&dir)?.insert(name, Entry::File(ino));
            }
        }
        let id = self.next_id();
        self.locks.insert(path.to_path_buf(), id);
        Ok(id)
    }

    // ---- handle operations ----

    fn write(&mut self, id: u64, buf: &[u8]) -> io::Result<()> {
        let path = self.writable(id)?.path.clone();
        if self.fault(FaultKind::EioWrite, self.faults.eio_write) {
            self.event(format!("eio-write #{id} {}", path.display()));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.check_space(buf.len() as u64, &path)?;
        self.handle(id)?.pending.extend_from_slice(buf);
        Ok(())
    }

    /// Pushes all pending bytes to the page cache. On failure the handle's buffer is lost
    /// (after a seeded prefix landed, for EIO), as with `RealFs`, whose buffer is taken
    /// before the write that fails.
    fn flush(&mut self, id: u64) -> io::Result<()> {
        let handle = self.handle(id)?;
        let pending = handle.pending.len();
        if pending == 0 {
            return Ok(());
        }
        let (ino, end, path) = (handle.ino, handle.at + pending as u64, handle.path.clone());
        // Pending bytes already count as used; only a hole the write skips (the file shrank
        // under this handle) needs more room.
        let cached = self.inode(ino).cache.len() as u64;
        let hole = end.saturating_sub(cached).saturating_sub(pending as u64);
        if let Err(e) = self.check_space(hole, &path) {
            self.handle(id)?.pending.clear();
            return Err(e);
        }
        if self.fault(FaultKind::EioWrite, self.faults.eio_write) {
            let landed = thread_rng().gen_range(0..pending);
            self.drain(id, landed);
            self.handle(id)?.pending.clear();
            let path = path.display();
            self.event(format!(
                "eio-write flush #{id} {path}: {landed}/{pending} bytes landed"
            ));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if self.fault(FaultKind::MisdirectedWrite, self.faults.misdirected_write) {
            self.misdirect(id, ino, pending);
            return Ok(());
        }
        self.drain(id, pending);
        Ok(())
    }

    /// Lands the `pending` bytes of handle `id` a few sectors off; the handle goes on as if
    /// they had landed where they belong.
    fn misdirect(&mut self, id: u64, ino: u64, pending: usize) {
        let Some(handle) = self.handles.get_mut(&id) else {
            return;
        };
        let at = handle.at;
        let mut intended = self.inodes[&ino].cache.clone();
        let end = at as usize + pending;
        if intended.len() < end {
            intended.resize(end, 0);
        }
        intended[at as usize..end].copy_from_slice(&self.handles[&id].pending);
        let sectors = thread_rng().gen_range(1..=4) * SECTOR as u64;
        let target = if thread_rng().gen_bool(0.5) {
            at + sectors
        } else {
            at.saturating_sub(sectors)
        };
        let handle = self.handles.get_mut(&id).expect("checked above");
        handle.at = target;
        let range = at.min(target)..at.max(target) + pending as u64;
        self.drain(id, pending);
        if let Some(handle) = self.handles.get_mut(&id) {
            handle.at = at + pending as u64;
        }
        self.damaged(FaultKind::MisdirectedWrite, ino, &intended, range);
    }

    fn sync(&mut self, id: u64) -> io::Result<()> {
        self.flush(id)?;
        let (ino, path) = {
            let handle = self.handle(id)?;
            (handle.ino, handle.path.clone())
        };
        if self.fault(FaultKind::EioSync, self.faults.eio_sync) {
            let inode = self.inode(ino);
            inode.failed_sync = Some(inode.cache.clone());
            self.event(format!("eio-sync #{id} {}", path.display()));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        // A file the disk spoiled is excused from the format's rules.
        let spoiled = !self.inode(ino).damage.is_empty();
        if let Some((name, check)) = self.sync_check.filter(|_| !spoiled) {
            let inode = self.inode(ino);
            let before = inode.claimed.as_ref().unwrap_or(&inode.durable);
            if let Some(detail) = check(before, &inode.cache) {
                self.stats.violations += 1;
                self.event(format!("violation {name} {}: {detail}", path.display()));
                self.violations.push(Violation {
                    name,
                    path: path.clone(),
                    detail,
                });
            }
        }
        if self.fault(FaultKind::LostWrite, self.faults.lost_write) {
            // Told durable, left as it was: what a crash reveals (see `crash`).
            let inode = self.inode(ino);
            inode.claimed = Some(inode.cache.clone());
            self.event(format!("lost-write #{id} {}", path.display()));
            return Ok(());
        }
        let inode = self.inode(ino);
        inode.durable = inode.cache.clone();
        inode.failed_sync = None;
        inode.claimed = None;
        Ok(())
    }

    fn read_at(&mut self, id: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        let (ino, path) = {
            let handle = self.handle(id)?;
            (handle.ino, handle.path.clone())
        };
        if self.fault(FaultKind::EioRead, self.faults.eio_read) {
            self.event(format!("eio-read #{id} {} @{offset}", path.display()));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let cache = &self.inode(ino).cache;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(cache.len());
        let end = start.saturating_add(len).min(cache.len());
        let mut bytes = cache[start..end].to_vec();
        if !bytes.is_empty() && self.fault(FaultKind::CorruptRead, self.faults.corrupt_read) {
            let at = thread_rng().gen_range(0..bytes.len());
            bytes[at] ^= 1 << thread_rng().gen_range(0..8);
            let image = self.inode(ino).cache.clone();
            let spot = (start + at) as u64;
            self.damaged(FaultKind::CorruptRead, ino, &image, spot..spot + 1);
        }
        Ok(Bytes::from(bytes))
    }

    fn truncate(&mut self, id: u64, len: u64) -> io::Result<()> {
        self.writable(id)?;
        self.flush(id)?;
        let (ino, path) = {
            let handle = self.handle(id)?;
            (handle.ino, handle.path.clone())
        };
        if len > MAX_FILE {
            let msg = format!("truncate to {len} bytes exceeds the model's {MAX_FILE}");
            return Err(error(io::ErrorKind::FileTooLarge, &path, &msg));
        }
        let cached = self.inode(ino).cache.len() as u64;
        self.check_space(len.saturating_sub(cached), &path)?;
        self.inode(ino).cache.resize(len as usize, 0);
        self.handle(id)?.at = len;
        Ok(())
    }

    /// Refuses with ENOSPC a reservation the free space cannot hold, as `fallocate` does; the
    /// model keeps no reservation (the writes that follow count their bytes themselves).
    fn allocate(&mut self, id: u64, len: u64) -> io::Result<()> {
        let handle = self.writable(id)?;
        let (ino, path, pending) = (handle.ino, handle.path.clone(), handle.pending.len() as u64);
        let held = self.inode(ino).cache.len() as u64 + pending;
        self.check_space(len.saturating_sub(held), &path)
    }

    fn file_len(&mut self, id: u64) -> io::Result<u64> {
        let ino = self.handle(id)?.ino;
        Ok(self.inode(ino).cache.len() as u64)
    }

    fn close(&mut self, id: u64) -> io::Result<()> {
        self.handle(id)?;
        let flushed = self.flush(id);
        // The descriptor is gone even when the flush failed.
        self.handles.remove(&id);
        self.gc();
        flushed
    }

    /// A handle dropped without `close`: its pending bytes go in flight (not landed yet).
    fn drop_handle(&mut self, id: u64) {
        let Some(handle) = self.handles.get_mut(&id) else {
            return; // closed, or stale after a crash: nothing may land
        };
        if handle.pending.is_empty() {
            self.handles.remove(&id);
            self.gc();
        } else {
            handle.dropped = true;
            let (n, path) = (handle.pending.len(), handle.path.display().to_string());
            self.dropped_unlogged.insert(
                id,
                format!("drop #{id} {path} with {n} unflushed bytes in flight"),
            );
        }
    }

    /// Logs the drops since the last call in handle order: a node kill drops its tasks (and so
    /// their handles) in an order madsim does not fix, and that order must not reach the trace.
    fn log_drops(&mut self) {
        for (_, event) in std::mem::take(&mut self.dropped_unlogged) {
            self.event(event);
        }
    }

    fn crash(&mut self) {
        self.log_drops();
        self.stats.crashes += 1;
        self.handles.clear();
        self.locks.clear();
        // The namespace that survives: durable entries reachable from the roots (a directory
        // whose own entry never became durable is gone with everything in it).
        let mut durable = Namespace::new();
        let mut stack: Vec<PathBuf> = ROOTS.iter().map(PathBuf::from).collect();
        while let Some(dir) = stack.pop() {
            let entries = self.durable.get(&dir).cloned().unwrap_or_default();
            stack.extend(
                entries
                    .iter()
                    .filter(|(_, e)| **e == Entry::Dir)
                    .map(|(name, _)| dir.join(name)),
            );
            durable.insert(dir, entries);
        }
        self.live = durable.clone();
        self.durable = durable;
        self.gc();

        let names: BTreeMap<u64, PathBuf> = self
            .live
            .iter()
            .flat_map(|(dir, entries)| {
                entries.iter().filter_map(move |(name, e)| match e {
                    Entry::File(ino) => Some((*ino, dir.join(name))),
                    Entry::Dir => None,
                })
            })
            .collect();
        let (torn, mix, rot, torn_footer) = if self.faults_on {
            let f = &self.faults;
            (
                f.torn_tail,
                f.torn_mix,
                f.corrupt_at_rest,
                f.torn_footer_sector,
            )
        } else {
            (0.0, 0.0, 0.0, 0.0)
        };
        let mut rng = thread_rng();
        let mut events = vec![format!("crash #{}", self.stats.crashes)];
        let mut tears = 0;
        let mut damages = Vec::new();
        for (ino, inode) in &mut self.inodes {
            let name = names
                .get(ino)
                .map_or(String::new(), |p| p.display().to_string());
            // Bytes a lying sync claimed durable are lost now (unless a torn tail keeps some).
            if let Some(claimed) = inode.claimed.take() {
                let same = claimed
                    .iter()
                    .zip(&inode.durable)
                    .take_while(|(a, b)| a == b)
                    .count();
                if same < claimed.len() || claimed.len() != inode.durable.len() {
                    let range = same as u64..claimed.len().max(inode.durable.len()) as u64;
                    damages.push((FaultKind::LostWrite, *ino, claimed, range));
                }
            }
            let mut survived = std::mem::take(&mut inode.durable);
            // A failed sync may have persisted what the page cache held then.
            if let Some(snapshot) = inode.failed_sync.take() {
                if rng.gen_bool(0.5) {
                    events.push(format!("crash: failed sync of {name} had persisted"));
                    survived = snapshot;
                }
            }
            if survived != inode.cache && chance(&mut rng, torn) {
                survived = tear(&survived, &inode.cache, mix, &mut rng);
                tears += 1;
                let (kept, cached) = (survived.len(), inode.cache.len());
                events.push(format!(
                    "crash-torn-tail {name}: {kept} bytes (cache {cached})"
                ));
            }
            // While the machine is down: bit rot, and a lost sector where seals write last.
            if !survived.is_empty() && chance(&mut rng, rot) {
                let image = survived.clone();
                let at = rng.gen_range(0..survived.len());
                survived[at] ^= 1 << rng.gen_range(0..8);
                let range = at as u64..at as u64 + 1;
                damages.push((FaultKind::CorruptAtRest, *ino, image, range));
            }
            if !survived.is_empty() && chance(&mut rng, torn_footer) {
                let image = survived.clone();
                let first = survived.len().saturating_sub(4096) / SECTOR;
                let last = (survived.len() - 1) / SECTOR;
                let start = rng.gen_range(first..=last) * SECTOR;
                let end = (start + SECTOR).min(survived.len());
                survived[start..end].fill(0);
                if survived[..] != image[..] {
                    let range = start as u64..end as u64;
                    damages.push((FaultKind::TornFooterSector, *ino, image, range));
                }
            }
            inode.cache = survived.clone();
            inode.durable = survived;
        }
        for event in events.drain(..) {
            self.event(event);
        }
        for (kind, ino, image, range) in damages {
            // A lost write was counted when the sync lied; the others happen only now.
            if kind != FaultKind::LostWrite {
                self.count(kind);
            }
            self.damaged(kind, ino, &image, range);
        }
        if tears > 0 {
            *self
                .stats
                .faults
                .entry(FaultKind::CrashTornTail)
                .or_default() += tears;
        }
        for event in events {
            self.event(event);
        }
    }
}

/// What a torn write leaves: `old` with a seeded number of the dirty sectors (those from the
/// first difference on) replaced by `new`; with `mix`, each replaced sector may keep its old
/// contents instead (zeros where `old` had none).
fn tear<R: Rng + ?Sized>(old: &[u8], new: &[u8], mix: f64, rng: &mut R) -> Vec<u8> {
    let same = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let start = same / SECTOR * SECTOR;
    let end = old.len().max(new.len());
    let sectors = (end - start).div_ceil(SECTOR);
    let cut = (start + rng.gen_range(0..=sectors) * SECTOR).min(end);
    let mut out = if cut == end {
        new.to_vec()
    } else {
        let from_new = cut.min(new.len());
        let mut out = new[..from_new].to_vec();
        out.extend_from_slice(old.get(from_new..).unwrap_or_default());
        out
    };
    let mut sector = start;
    while sector < cut.min(out.len()) {
        let sector_end = (sector + SECTOR).min(cut).min(out.len());
        if chance(rng, mix) {
            for (i, byte) in out[sector..sector_end].iter_mut().enumerate() {
                *byte = old.get(sector + i).copied().unwrap_or(0);
            }
        }
        sector = sector_end;
    }
    out
}

fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    p > 0.0 && rng.gen_bool(p.min(1.0))
}

/// Lexical normalisation: drops `.`, resolves `..` by popping (never above a root).
fn normalise(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) => {
                return Err(error(io::ErrorKind::InvalidInput, path, "has a prefix"));
            }
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Ok(out)
}

/// Splits a normalised path into its parent directory and its (UTF-8) name.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| error(io::ErrorKind::InvalidInput, path, "names no file"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((dir.to_path_buf(), name.to_string()))
}

fn error(kind: io::ErrorKind, path: &Path, what: &str) -> io::Error {
    io::Error::new(kind, format!("{}: {what}", path.display()))
}

fn not_found(path: &Path) -> io::Error {
    error(io::ErrorKind::NotFound, path, "no such file or directory")
}

fn is_dir(path: &Path) -> io::Error {
    error(io::ErrorKind::IsADirectory, path, "is a directory")
}

fn stale() -> io::Error {
    io::Error::other("stale handle after crash")
}

/// Normalises `path` and applies a world operation to it.
fn at<T>(path: &Path, op: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    op(&normalise(path)?)
}

#[async_trait]
impl Fs for SimFs {
    async fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let id = self
            .run("create", None, |w| at(path, |p| w.create(p)))
            .await?;
        Ok(self.file(id))
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let op = |w: &mut World| at(path, |p| w.open_append(p));
        let id = self.run("open_append", Some(path), op).await?;
        Ok(self.file(id))
    }

    async fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let op = |w: &mut World| at(path, |p| w.open_read(p));
        let id = self.run("open_read", Some(path), op).await?;
        Ok(self.file(id))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let op = |w: &mut World| w.rename(&normalise(from)?, &normalise(to)?);
        self.run("rename", Some(from), op).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.run("remove", None, |w| at(path, |p| w.remove(p)))
            .await
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.run("list_dir", None, |w| at(path, |p| w.list_dir(p)))
            .await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let op = |w: &mut World| at(path, |p| w.create_dir_all(p));
        self.run("create_dir_all", None, op).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.run("sync_dir", None, |w| at(path, |p| w.sync_dir(p)))
            .await
    }

    async fn len(&self, path: &Path) -> io::Result<u64> {
        self.run("len", Some(path), |w| at(path, |p| w.len(p)))
            .await
    }

    async fn free_space(&self, path: &Path) -> io::Result<u64> {
        self.run("free_space", None, |w| at(path, |p| w.free_space(p)))
            .await
    }

    async fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let path = normalise(path)?;
        let id = self.run("lock", None, |w| w.lock(&path)).await?;
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path,
            id,
        }))
    }
}

/// An open file: just an id; its state (including pending bytes) lives in the world.
struct SimFile {
    fs: SimFs,
    id: u64,
}

#[async_trait]
impl FsFile for SimFile {
    async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let id = self.id;
        self.fs.run("write", None, |w| w.write(id, buf)).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        let id = self.id;
        self.fs.run("flush", None, |w| w.flush(id)).await
    }

    async fn allocate(&mut self, len: u64) -> io::Result<()> {
        let id = self.id;
        self.fs.run("allocate", None, |w| w.allocate(id, len)).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        let id = self.id;
        self.fs.run("sync", None, |w| w.sync(id)).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let id = self.id;
        self.fs
            .run("read_at", None, |w| w.read_at(id, offset, len))
            .await
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        let id = self.id;
        self.fs.run("truncate", None, |w| w.truncate(id, len)).await
    }

    async fn len(&self) -> io::Result<u64> {
        let id = self.id;
        self.fs.run("file_len", None, |w| w.file_len(id)).await
    }

    async fn close(mut self: Box<Self>) -> io::Result<()> {
        let id = self.id;
        self.fs.run("close", None, |w| w.close(id)).await
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // Never panic in drop, even if another thread poisoned the world.
        if let Ok(mut world) = self.fs.world.lock() {
            world.drop_handle(self.id);
        }
    }
}

/// A held lock; dropping it releases the path unless a crash already did (and someone else
/// may have taken it since).
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    id: u64,
}

impl FsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        if let Ok(mut world) = self.fs.world.lock() {
            if world.locks.get(&self.path) == Some(&self.id) {
                world.locks.remove(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> &Path {
        Path::new(path)
    }

    async fn contents(file: &dyn FsFile) -> Vec<u8> {
        file.read_at(0, usize::MAX).await.unwrap().to_vec()
    }

    /// A file `/f` holding `bytes`, synced and with its directory entry durable.
    async fn durable_file(fs: &SimFs, bytes: &[u8]) {
        let mut f = fs.create(p("/f")).await.unwrap();
        f.write(bytes).await.unwrap();
        f.sync().await.unwrap();
        f.close().await.unwrap();
        fs.sync_dir(p("/")).await.unwrap();
    }

    #[madsim::test]
    async fn writes_are_invisible_until_flush() {
        let fs = SimFs::new(FaultConfig::none());
        fs.create_dir_all(p("/d")).await.unwrap();
        let mut writer = fs.create(p("/d/f")).await.unwrap();
        let reader = fs.open_read(p("/d/f")).await.unwrap();
        writer.write(b"hello").await.unwrap();
        assert_eq!(contents(&*reader).await, b"");
        assert_eq!(
            contents(&*writer).await,
            b"",
            "the writer's own reads see only flushed"
        );
        assert_eq!(writer.len().await.unwrap(), 0);
        assert_eq!(fs.peek(p("/d/f")).unwrap(), b"");
        writer.flush().await.unwrap();
        assert_eq!(contents(&*reader).await, b"hello");
        assert_eq!(contents(&*writer).await, b"hello");
        assert_eq!(fs.len(p("/d/f")).await.unwrap(), 5);
        assert_eq!(writer.read_at(1, 3).await.unwrap(), &b"ell"[..]);
        assert_eq!(writer.read_at(9, 3).await.unwrap(), &b""[..]);
        assert!(fs.violations().is_empty());
        assert_eq!(fs.list_dir(p("/")).await.unwrap(), vec!["d".to_string()]);
        assert_eq!(fs.files(), vec![PathBuf::from("/d/f")]);
    }

    #[madsim::test]
    async fn append_continues_at_the_end() {
        let fs = SimFs::new(FaultConfig::none());
        let mut f = fs.create(p("log")).await.unwrap();
        f.write(b"ab").await.unwrap();
        f.close().await.unwrap();
        let mut f = fs.open_append(p("./log")).await.unwrap();
        f.write(b"cd").await.unwrap();
        f.write(b"e").await.unwrap();
        f.flush().await.unwrap();
        assert_eq!(contents(&*f).await, b"abcde");
        f.truncate(1).await.unwrap();
        f.write(b"z").await.unwrap();
        f.close().await.unwrap();
        assert_eq!(fs.peek(p("log")).unwrap(), b"az");
        let mut again = fs.create(p("log")).await.unwrap();
        assert_eq!(fs.peek(p("log")).unwrap(), b"", "create truncates");
        assert!(again.write(b"x").await.is_ok());
    }

    #[madsim::test]
    async fn lazy_flush_lands_prefixes_early() {
        let faults = FaultConfig {
            lazy_flush: 1.0,
            ..FaultConfig::none()
        };
        let fs = SimFs::new(faults);
        let mut writer = fs.create(p("/f")).await.unwrap();
        let data: Vec<u8> = (0..200u8).collect();
        writer.write(&data).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..300 {
            seen = contents(&*writer).await;
            assert_eq!(seen, data[..seen.len()], "only a prefix may land");
            if seen.len() == data.len() {
                break;
            }
        }
        assert_eq!(seen, data, "every call drains some, so all lands");
        assert!(fs.stats().fault(FaultKind::LazyFlush) > 0);
    }

    #[madsim::test]
    async fn dropped_bytes_land_later_not_at_drop() {
        let fs = SimFs::new(FaultConfig::none());
        let mut f = fs.create(p("/f")).await.unwrap();
        f.write(b"abc").await.unwrap();
        drop(f);
        assert_eq!(fs.peek(p("/f")).unwrap(), b"", "in flight, not landed");
        fs.list_dir(p("/")).await.unwrap();
        assert_eq!(fs.peek(p("/f")).unwrap(), b"abc");
    }

    #[madsim::test]
    async fn crash_keeps_only_synced_contents_and_namespace() {
        let fs = SimFs::new(FaultConfig::none());
        fs.create_dir_all(p("/d")).await.unwrap();
        fs.sync_dir(p("/")).await.unwrap();
        let mut a = fs.create(p("/d/a")).await.unwrap();
        a.write(b"durable").await.unwrap();
        a.sync().await.unwrap();
        fs.sync_dir(p("/d")).await.unwrap();
        a.write(b" lost").await.unwrap();
        a.flush().await.unwrap();
        let mut b = fs.create(p("/d/b")).await.unwrap();
        b.write(b"synced but never linked durably").await.unwrap();
        b.sync().await.unwrap();
        fs.create_dir_all(p("/e")).await.unwrap();
        fs.rename(p("/d/a"), p("/d/c")).await.unwrap();
        assert_eq!(
            fs.files(),
            vec![PathBuf::from("/d/b"), PathBuf::from("/d/c")]
        );

        fs.crash();
        assert_eq!(fs.files(), vec![PathBuf::from("/d/a")]);
        assert_eq!(fs.peek(p("/d/a")).unwrap(), b"durable");
        assert!(
            fs.list_dir(p("/e")).await.is_err(),
            "unsynced mkdir is lost"
        );

        fs.rename(p("/d/a"), p("/d/c")).await.unwrap();
        fs.sync_dir(p("/d")).await.unwrap();
        fs.crash();
        assert_eq!(fs.files(), vec![PathBuf::from("/d/c")]);
        assert_eq!(fs.stats().crashes, 2);
    }

    #[madsim::test]
    async fn torn_tail_keeps_a_sector_aligned_prefix() {
        let mut lengths = BTreeSet::new();
        for _ in 0..64 {
            let faults = FaultConfig {
                torn_tail: 1.0,
                ..FaultConfig::none()
            };
            let fs = SimFs::new(faults);
            durable_file(&fs, &[b'a'; 1000]).await;
            let mut f = fs.open_append(p("/f")).await.unwrap();
            f.write(&[b'b'; 3000]).await.unwrap();
            f.flush().await.unwrap();
            fs.crash();
            let got = fs.peek(p("/f")).unwrap();
            assert!(got[..1000].iter().all(|b| *b == b'a'));
            assert!(got[1000..].iter().all(|b| *b == b'b'));
            let len = got.len();
            assert!(
                len == 1000 || len == 4000 || len.is_multiple_of(SECTOR),
                "length {len}"
            );
            lengths.insert(len);
        }
        assert!(
            lengths.iter().any(|l| *l != 1000 && *l != 4000),
            "{lengths:?}"
        );
    }

    #[madsim::test]
    async fn torn_mix_can_revert_sectors() {
        let faults = FaultConfig {
            torn_tail: 1.0,
            torn_mix: 1.0,
            ..FaultConfig::none()
        };
        let fs = SimFs::new(faults);
        durable_file(&fs, b"").await;
        let mut f = fs.open_append(p("/f")).await.unwrap();
        f.write(&[b'n'; 2048]).await.unwrap();
        f.sync().await.unwrap();
        f.write(&[b'm'; 100]).await.unwrap(); // dirty but never flushed: lost anyway
        let mut g = fs.open_append(p("/f")).await.unwrap();
        g.truncate(0).await.unwrap();
        g.write(&[b'x'; 2048]).await.unwrap();
        g.flush().await.unwrap();
        fs.crash();
        // Every kept dirty sector reverted to its old contents: only `n` bytes remain.
        let got = fs.peek(p("/f")).unwrap();
        assert!(
            got.iter().all(|b| *b == b'n'),
            "{:?}",
            &got[..got.len().min(8)]
        );
    }

    #[madsim::test]
    async fn failed_sync_leaves_durability_unknown() {
        let mut outcomes = BTreeSet::new();
        for _ in 0..40 {
            let fs = SimFs::new(FaultConfig::none());
            durable_file(&fs, b"old").await;
            let mut f = fs.create(p("/f")).await.unwrap();
            f.write(b"new").await.unwrap();
            fs.world().faults.eio_sync = 1.0;
            let err = f.sync().await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            fs.crash();
            outcomes.insert(fs.peek(p("/f")).unwrap());
        }
        let expected: BTreeSet<Vec<u8>> = [b"old".to_vec(), b"new".to_vec()].into();
        assert_eq!(outcomes, expected);
    }

    #[madsim::test]
    async fn persist_before_flush_is_recorded() {
        let fs = SimFs::new(FaultConfig::none());
        let mut f = fs.create(p("/t")).await.unwrap();
        f.write(b"data").await.unwrap();
        let _reader = fs.open_read(p("/t")).await.unwrap();
        let violations = fs.violations();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].name, PERSIST_BEFORE_FLUSH);
        assert_eq!(violations[0].path, PathBuf::from("/t"));
        f.flush().await.unwrap();
        let _reader = fs.open_read(p("/t")).await.unwrap();
        fs.len(p("/t")).await.unwrap();
        fs.rename(p("/t"), p("/u")).await.unwrap();
        assert_eq!(fs.violations().len(), 1, "flushed bytes are fine");

        // Dropped unflushed: the bytes are in flight, which is just as unsafe.
        f.write(b"more").await.unwrap();
        drop(f);
        fs.rename(p("/u"), p("/v")).await.unwrap();
        let violations = fs.violations();
        assert_eq!(violations.len(), 2);
        assert!(
            violations[1].detail.contains("in flight"),
            "{}",
            violations[1]
        );
        assert_eq!(fs.stats().violations, 2);
    }

    #[madsim::test]
    async fn handles_go_stale_after_crash() {
        let fs = SimFs::new(FaultConfig::none());
        durable_file(&fs, b"kept").await;
        let mut f = fs.open_append(p("/f")).await.unwrap();
        f.write(b" pending").await.unwrap();
        fs.crash();
        let err = f.write(b"x").await.unwrap_err();
        assert_eq!(err.to_string(), "stale handle after crash");
        assert!(f.read_at(0, 4).await.is_err());
        assert!(f.flush().await.is_err());
        drop(f);
        fs.list_dir(p("/")).await.unwrap();
        fs.list_dir(p("/")).await.unwrap();
        assert_eq!(
            fs.peek(p("/f")).unwrap(),
            b"kept",
            "a stale drop lands nothing"
        );
        let fresh = fs.open_read(p("/f")).await.unwrap();
        assert_eq!(contents(&*fresh).await, b"kept");
    }

    #[madsim::test]
    async fn enospc_once_capacity_is_used() {
        let faults = FaultConfig {
            capacity: Some(1000),
            ..FaultConfig::none()
        };
        let fs = SimFs::new(faults);
        let mut f = fs.create(p("/f")).await.unwrap();
        f.write(&[0; 600]).await.unwrap();
        let err = f.write(&[0; 500]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        // A reservation counts only what the file does not hold yet.
        f.allocate(1000).await.unwrap();
        let err = f.allocate(1001).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.free_space(p("/")).await.unwrap(), 400);
        f.flush().await.unwrap();
        let mut g = fs.create(p("/g")).await.unwrap();
        g.write(&[0; 400]).await.unwrap();
        let err = fs.create(p("/h")).await.err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        drop(f);
        fs.remove(p("/f")).await.unwrap();
        assert_eq!(fs.free_space(p("/")).await.unwrap(), 600);
        assert_eq!(fs.stats().fault(FaultKind::Enospc), 3);
        fs.set_faults(false);
        let mut big = fs.create(p("/big")).await.unwrap();
        big.write(&[0; 5000]).await.unwrap();
    }

    #[madsim::test]
    async fn locks_are_exclusive() {
        let fs = SimFs::new(FaultConfig::none());
        let first = fs.lock(p("/lock")).await.unwrap();
        let err = fs.lock(p("/lock")).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            fs.files(),
            vec![PathBuf::from("/lock")],
            "the lock file is created"
        );
        drop(first);
        let stale = fs.lock(p("/lock")).await.unwrap();
        fs.crash();
        let held = fs.lock(p("/lock")).await.unwrap();
        drop(stale); // released by the crash: must not release the new holder
        assert!(fs.lock(p("/lock")).await.is_err());
        drop(held);
        assert!(fs.lock(p("/lock")).await.is_ok());
    }

    #[madsim::test]
    async fn namespace_errors() {
        let fs = SimFs::new(FaultConfig::none());
        let err = fs.create(p("/missing/f")).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            fs.open_read(p("/nope")).await.err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
        fs.create_dir_all(p("/a/b")).await.unwrap();
        fs.create(p("/a/f")).await.unwrap().close().await.unwrap();
        assert_eq!(fs.list_dir(p("/a")).await.unwrap(), vec!["b", "f"]);
        assert!(fs.create_dir_all(p("/a/f/g")).await.is_err());
        assert!(fs.remove(p("/a/b")).await.is_err());
        assert!(fs.rename(p("/a/f"), p("/a/b")).await.is_err());
        fs.remove(p("/a/f")).await.unwrap();
        assert!(fs.files().is_empty());
    }

    /// Fault configuration, event log and final files of one run.
    type Trace = (String, Vec<String>, Vec<(PathBuf, Vec<u8>)>);

    /// Runs a small multi-handle scenario under `seed` and returns its trace.
    fn trace(seed: u64) -> Trace {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async {
            let faults = FaultConfig {
                lazy_flush: 0.5,
                inflight_land: 0.3,
                torn_tail: 1.0,
                torn_mix: 0.3,
                slow_io: 0.3,
                ..FaultConfig::swarm()
            };
            let config = faults.to_string();
            let fs = SimFs::new(FaultConfig {
                eio_read: 0.0,
                eio_write: 0.0,
                eio_sync: 0.0,
                capacity: None,
                ..faults
            });
            let mut tasks = Vec::new();
            for n in 0..3u8 {
                let fs = fs.clone();
                tasks.push(madsim::task::spawn(async move {
                    let path = PathBuf::from(format!("/f{n}"));
                    let mut f = fs.create(&path).await.unwrap();
                    for chunk in 0..20u8 {
                        f.write(&[n * 32 + chunk; 300]).await.unwrap();
                        if chunk == 10 {
                            f.sync().await.unwrap();
                        }
                    }
                    if n == 0 {
                        f.close().await.unwrap();
                    } // others drop with bytes in flight
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            fs.sync_dir(p("/")).await.unwrap();
            fs.list_dir(p("/")).await.unwrap();
            fs.crash();
            let files = fs
                .files()
                .into_iter()
                .map(|path| {
                    let bytes = fs.peek(&path).unwrap();
                    (path, bytes)
                })
                .collect();
            (config, fs.events(), files)
        })
    }

    #[test]
    fn same_seed_same_trace() {
        let first = trace(7);
        assert!(!first.1.is_empty());
        assert_eq!(first, trace(7));
        let distinct: BTreeSet<_> = (1..=6).map(trace).collect();
        assert!(distinct.len() > 1, "the seed must steer the faults");
    }
}
