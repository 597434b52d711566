//! The in-memory index: key → location of the newest durable record.
//!
//! Its durable form is the segments themselves (every record header carries its key), replayed
//! in log order on start, so the newest action-cache record wins as it did before the restart.
//!
//! # Layout (the budget is 64 resident bytes per entry at 10 M entries)
//!
//! Blobs live in one flat open-addressing `Table` of 48-byte slots: the 32-byte hash (the key:
//! it is stored once, and it doubles as the payload's checksum) and 128 packed bits holding the
//! location (segment 32 bits, offset 44, length 48 — for a blob the length *is* the digest's
//! size, so `touch_blob(digest)` and `blob_by_hash(hash)` are served by the same slot) and the
//! occupied / verified / referenced / BLAKE3 marks; an all-zero slot is vacant. The digest
//! function is part of the key (the BLAKE3 mark), so one hash under two functions is two slots.
//! Action-cache entries live in a second table of 84-byte slots (action hash, value SHA-256, the
//! same packed bits with the value's kind, and an interned instance id whose top bit is the
//! action's digest function: names are held once in `Instances`, with a use count so names
//! nobody uses any more are forgotten).
//!
//! # Probing: ordered linear probing (Robin Hood order, backward-shift deletion)
//!
//! A key's *ordinal* is a keyed bijective mix of 64 of its bits (the key is a SHA-256 that a
//! client can grind, so the table's placement must not be predictable without the random seed),
//! and its *home* is the ordinal scaled to the number of homes (`ordinal * homes >> 64`, so any
//! table size works, not just powers of two). Slots are kept sorted by ordinal with no wrap
//! around (a run past the last home spills into a few extra slots at the end), which is the Robin
//! Hood order. So a lookup, hit or miss, stops at the first slot with a larger ordinal (a miss
//! costs about what a hit does, which matters for FindMissingBlobs); an insert shifts the rest of
//! its run one slot right; a delete shifts the displaced slots after it one slot left, so there
//! are no tombstones and deletion leaves the table as if the key had never been there.
//!
//! # Growth: +1/16 at a load of 92%
//!
//! A table doubled at 92% load would sit at 46% (104 bytes a blob) right after. Growing by a
//! sixteenth keeps the load between 86.6% and 92%: 52–55 bytes a blob, 91–97 bytes an action
//! entry, 56–59 at 10 blobs per action entry (the allocator adds a few bytes; see
//! `examples/bench_index.rs`). Ordered probing keeps lookups short at that load (a hit or a
//! miss reads about 7 adjacent slots on average). Since slots are sorted by ordinal and a home
//! only moves right when the table grows, growth is one forward pass in place after the
//! allocation is extended (`realloc`, which for a large table is `mremap`: no copy); slots about
//! to be overwritten before their turn wait in a queue of about a sixteenth of the table. So
//! growth costs sequential passes (amortized 16 slot moves per insert) and never a second
//! full-size table.
//!
//! Nothing iterates the tables or the instance names to decide an answer: placement depends on
//! a random seed, answers never do. The walks (`action_results_from`, for the cascade sweep;
//! `entries_in_segment`, after removing a damaged segment) only pick candidates, each then
//! checked on its own.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use super::digest::{Digest, DigestFunction, HASH_LEN};
use super::record::{AcKind, RecordKey};
use super::segment::Location;
use super::Stats;

/// An indexed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where the payload is.
    pub location: Location,
    /// Checksum of the payload (for blobs, the digest's hash under its function; otherwise its
    /// SHA-256).
    pub sha256: [u8; 32],
    /// Whether the stored bytes were hashed since they were written or recovered.
    pub verified: bool,
    /// Used since eviction last passed over it: its second chance (see `Engine::evict_segment`).
    pub referenced: bool,
}

/// An action-cache key as a walk of the index names it: digest function, instance, action hash.
pub type ActionId = (DigestFunction, String, [u8; HASH_LEN]);

/// Key → location tables for the CAS and the AC.
pub struct Index {
    blobs: Table<BlobSlot>,
    actions: Table<ActionSlot>,
    instances: Instances,
    blob_bytes: u64,
    evictions: u64,
    evicted_bytes: u64,
    corrupt_dropped: u64,
}

impl Default for Index {
    /// An index keyed by a seed from the process's own randomness.
    fn default() -> Self {
        Index::with_seed(std::collections::hash_map::RandomState::new().hash_one(0u8))
    }
}

impl Index {
    /// An empty index whose placement is keyed by `seed` (the engine draws it from its runtime,
    /// so a simulated run places, and so walks, entries the same way every time).
    pub fn with_seed(seed: u64) -> Self {
        Index {
            blobs: Table::new(mix(seed ^ 1)),
            actions: Table::new(mix(seed ^ 2)),
            instances: Instances::default(),
            blob_bytes: 0,
            evictions: 0,
            evicted_bytes: 0,
            corrupt_dropped: 0,
        }
    }
}

/// Where a key's slot is.
#[derive(Clone, Copy)]
enum Place {
    Blob(usize),
    Action(usize),
}

impl Index {
    /// Records a durable record, replacing an older one with the same key. A blob is keyed by
    /// its hash alone (two sizes for one SHA-256 would be a collision), and its location's
    /// length is its size.
    pub fn insert(&mut self, key: RecordKey, entry: Entry) {
        match key {
            RecordKey::Blob(digest) => {
                debug_assert_eq!(
                    entry.location.len, digest.size,
                    "a blob's payload is itself"
                );
                let packed = Packed::new(&entry, digest.function == DigestFunction::Blake3);
                match self.find_blob(digest.function, &digest.hash) {
                    Some(i) => {
                        let slot = &mut self.blobs.slots[i];
                        self.blob_bytes -= slot.packed.location().len;
                        slot.packed = packed;
                    }
                    None => self.blobs.insert(BlobSlot {
                        hash: digest.hash,
                        packed,
                    }),
                }
                self.blob_bytes += digest.size;
            }
            RecordKey::Action {
                instance,
                function,
                action,
                kind,
            } => {
                let packed = Packed::new(&entry, kind == AcKind::Opaque);
                match self.find_action(function, &instance, &action) {
                    Some(i) => {
                        let slot = &mut self.actions.slots[i];
                        slot.packed = packed;
                        slot.sha256 = entry.sha256;
                    }
                    None => {
                        let instance = tag_function(self.instances.acquire(&instance), function);
                        self.actions.insert(ActionSlot {
                            action,
                            sha256: entry.sha256,
                            packed,
                            instance,
                        });
                    }
                }
            }
            RecordKey::ActionRemoved {
                instance,
                function,
                action,
                value_sha256,
            } => {
                self.remove_action_valued(function, &instance, &action, &value_sha256);
            }
            RecordKey::Seal => {}
        }
    }

    /// The entry of a blob, marked as used (a hit in any form refreshes its place in the cache).
    pub fn touch_blob(&mut self, digest: &Digest) -> Option<Entry> {
        let i = self.find_digest(digest)?;
        let slot = &mut self.blobs.slots[i];
        slot.packed.set(REFERENCED, true);
        Some(slot.entry())
    }

    /// The entry of a blob, without counting a use.
    pub fn peek_blob(&self, digest: &Digest) -> Option<Entry> {
        self.find_digest(digest)
            .map(|i| self.blobs.slots[i].entry())
    }

    /// The digest of the blob whose bytes hash to `hash` under `function`.
    pub fn blob_by_hash(&self, function: DigestFunction, hash: &[u8; 32]) -> Option<Digest> {
        let i = self.find_blob(function, hash)?;
        Some(Digest::new(
            function,
            *hash,
            self.blobs.slots[i].packed.location().len,
        ))
    }

    /// Notes that a blob's stored bytes were re-hashed and matched.
    pub fn mark_verified(&mut self, digest: &Digest) {
        if let Some(i) = self.find_digest(digest) {
            self.blobs.slots[i].packed.set(VERIFIED, true);
        }
    }

    /// Forgets a blob (its bytes failed verification).
    pub fn remove_blob(&mut self, digest: &Digest) {
        if let Some(i) = self.find_digest(digest) {
            self.blobs.remove_at(i);
            self.blob_bytes -= digest.size;
            self.corrupt_dropped += 1;
        }
    }

    /// The entry of an action-cache key and what it holds, without counting a use.
    pub fn peek_action(
        &self,
        function: DigestFunction,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) -> Option<(AcKind, Entry)> {
        let slot = &self.actions.slots[self.find_action(function, instance, action)?];
        Some((slot.packed.kind(), slot.entry()))
    }

    /// Removes the action-cache entry if its value still hashes to `value_sha256` (a newer
    /// value stays); returns whether it did.
    pub fn remove_action_valued(
        &mut self,
        function: DigestFunction,
        instance: &str,
        action: &[u8; HASH_LEN],
        value_sha256: &[u8; 32],
    ) -> bool {
        match self.find_action(function, instance, action) {
            Some(i) if self.actions.slots[i].sha256 == *value_sha256 => {
                self.remove_action_at(i);
                true
            }
            _ => false,
        }
    }

    /// Every entry whose record is in `segment`, with its key: what a segment removed after a
    /// walk that could not list all its records (damage hid some) leaves behind. A walk of both
    /// tables, for that rare case only.
    pub fn entries_in_segment(&self, segment: u32) -> Vec<(RecordKey, Location)> {
        let blobs = self.blobs.slots.iter().filter(|slot| !slot.is_vacant());
        let actions = self.actions.slots.iter().filter(|slot| !slot.is_vacant());
        let blobs = blobs
            .map(|slot| (slot.packed.location(), slot))
            .filter(|(location, _)| location.segment == segment)
            .map(|(location, slot)| {
                let function = match slot.packed.has(BLAKE3) {
                    true => DigestFunction::Blake3,
                    false => DigestFunction::Sha256,
                };
                let digest = Digest::new(function, slot.hash, location.len);
                (RecordKey::Blob(digest), location)
            });
        let actions = actions
            .map(|slot| (slot.packed.location(), slot))
            .filter(|(location, _)| location.segment == segment)
            .map(|(location, slot)| {
                let (id, function) = untag_function(slot.instance);
                let key = RecordKey::Action {
                    instance: self.instances.name(id).to_owned(),
                    function,
                    action: slot.action,
                    kind: slot.packed.kind(),
                };
                (key, location)
            });
        blobs.chain(actions).collect()
    }

    /// Up to `max` keys of `ActionResult` entries from slot position `from` on, and the
    /// position to continue from (`None` at the end). A walk of the table while it changes may
    /// skip or repeat keys that moved; callers use it for best-effort sweeps, never for answers.
    pub fn action_results_from(&self, from: usize, max: usize) -> (Vec<ActionId>, Option<usize>) {
        let slots = &self.actions.slots;
        let mut keys = Vec::new();
        let mut at = from;
        while at < slots.len() && keys.len() < max {
            let slot = &slots[at];
            if !slot.is_vacant() && slot.packed.kind() == AcKind::ActionResult {
                let (id, function) = untag_function(slot.instance);
                keys.push((function, self.instances.name(id).to_owned(), slot.action));
            }
            at += 1;
        }
        (keys, (at < slots.len()).then_some(at))
    }

    /// The entry of an action-cache key, and what it holds, marked as used.
    pub fn touch_action(
        &mut self,
        function: DigestFunction,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) -> Option<(AcKind, Entry)> {
        let i = self.find_action(function, instance, action)?;
        let slot = &mut self.actions.slots[i];
        slot.packed.set(REFERENCED, true);
        Some((slot.packed.kind(), slot.entry()))
    }

    /// The entry of `key` if it is the record at `location` (not overwritten or evicted since).
    pub fn live_at(&self, key: &RecordKey, location: &Location) -> Option<Entry> {
        self.place_at(key, location).map(|place| match place {
            Place::Blob(i) => self.blobs.slots[i].entry(),
            Place::Action(i) => self.actions.slots[i].entry(),
        })
    }

    /// Points `key` at its copy at `moved` if it still lives at `from`; the second chance is used.
    pub fn move_if_at(&mut self, key: &RecordKey, from: &Location, moved: Location) {
        let packed = match self.place_at(key, from) {
            Some(Place::Blob(i)) => &mut self.blobs.slots[i].packed,
            Some(Place::Action(i)) => &mut self.actions.slots[i].packed,
            None => return,
        };
        packed.set_location(&moved);
        packed.set(REFERENCED, false);
    }

    /// Evicts `key` if it still lives at `location`; returns whether it did.
    pub fn evict_if_at(&mut self, key: &RecordKey, location: &Location) -> bool {
        match self.place_at(key, location) {
            Some(Place::Blob(i)) => {
                self.blobs.remove_at(i);
                self.blob_bytes -= location.len;
            }
            Some(Place::Action(i)) => self.remove_action_at(i),
            None => return false,
        }
        self.evictions += 1;
        self.evicted_bytes += location.len;
        true
    }

    /// Forgets an action result.
    pub fn remove_action(
        &mut self,
        function: DigestFunction,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) {
        if let Some(i) = self.find_action(function, instance, action) {
            self.remove_action_at(i);
        }
    }

    /// Makes room for `blobs` and `actions` entries in all, so a recovery that knows how many
    /// records it will insert sizes the tables once instead of growing them step by step.
    pub fn reserve(&mut self, blobs: usize, actions: usize) {
        self.blobs.reserve(blobs);
        self.actions.reserve(actions);
    }

    /// Counts of what is indexed.
    pub fn stats(&self) -> Stats {
        Stats {
            blobs: self.blobs.len as u64,
            blob_bytes: self.blob_bytes,
            actions: self.actions.len as u64,
            evictions: self.evictions,
            evicted_bytes: self.evicted_bytes,
            corrupt_dropped: self.corrupt_dropped,
            ..Stats::default()
        }
    }

    /// Bytes the tables allocate (what the index costs, before the allocator's own overhead).
    pub fn table_bytes(&self) -> u64 {
        (self.blobs.bytes() + self.actions.bytes()) as u64
    }

    fn find_blob(&self, function: DigestFunction, hash: &[u8; HASH_LEN]) -> Option<usize> {
        let blake3 = function == DigestFunction::Blake3;
        self.blobs.find(BlobSlot::key_bits_of(hash), |s| {
            s.hash == *hash && s.packed.has(BLAKE3) == blake3
        })
    }

    /// The blob's slot, if its size matches too.
    fn find_digest(&self, digest: &Digest) -> Option<usize> {
        self.find_blob(digest.function, &digest.hash)
            .filter(|&i| self.blobs.slots[i].packed.location().len == digest.size)
    }

    fn find_action(
        &self,
        function: DigestFunction,
        instance: &str,
        action: &[u8; HASH_LEN],
    ) -> Option<usize> {
        let id = tag_function(self.instances.id(instance)?, function);
        self.actions.find(ActionSlot::key_bits_of(id, action), |s| {
            s.instance == id && s.action == *action
        })
    }

    /// Where `key` lives if its record is the one at `location`.
    fn place_at(&self, key: &RecordKey, location: &Location) -> Option<Place> {
        match key {
            RecordKey::Blob(digest) => self
                .find_digest(digest)
                .filter(|&i| self.blobs.slots[i].packed.location() == *location)
                .map(Place::Blob),
            RecordKey::Action {
                instance,
                function,
                action,
                ..
            } => self
                .find_action(*function, instance, action)
                .filter(|&i| self.actions.slots[i].packed.location() == *location)
                .map(Place::Action),
            RecordKey::ActionRemoved { .. } | RecordKey::Seal => None,
        }
    }

    fn remove_action_at(&mut self, i: usize) {
        let (instance, _) = untag_function(self.actions.slots[i].instance);
        self.actions.remove_at(i);
        self.instances.release(instance);
    }
}

/// The top bit of an action slot's instance id: the action hash is a BLAKE3 (instance ids stay
/// below 2^31).
const BLAKE3_ACTION: u32 = 1 << 31;

/// An instance id tagged with the action's digest function.
fn tag_function(id: u32, function: DigestFunction) -> u32 {
    debug_assert!(id < BLAKE3_ACTION, "fewer than 2^31 instance names");
    match function {
        DigestFunction::Sha256 => id,
        DigestFunction::Blake3 => id | BLAKE3_ACTION,
    }
}

/// The instance id and digest function of a tagged id.
fn untag_function(tagged: u32) -> (u32, DigestFunction) {
    if tagged & BLAKE3_ACTION == 0 {
        (tagged, DigestFunction::Sha256)
    } else {
        (tagged & !BLAKE3_ACTION, DigestFunction::Blake3)
    }
}

/// Instance names, each held once, by the id action-cache slots carry.
#[derive(Default)]
struct Instances {
    ids: HashMap<String, u32>,
    /// By id: the name and how many action-cache entries use it (0: the id is free).
    names: Vec<(String, u32)>,
    free: Vec<u32>,
}

impl Instances {
    fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, counting one more use of it.
    fn name(&self, id: u32) -> &str {
        &self.names[id as usize].0
    }

    fn acquire(&mut self, name: &str) -> u32 {
        let id = match self.id(name) {
            Some(id) => id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.names[id as usize].0 = name.to_owned();
                        id
                    }
                    None => {
                        self.names.push((name.to_owned(), 0));
                        u32::try_from(self.names.len() - 1)
                            .ok()
                            .filter(|&id| id < BLAKE3_ACTION)
                            .expect("fewer than 2^31 names")
                    }
                };
                self.ids.insert(name.to_owned(), id);
                id
            }
        };
        self.names[id as usize].1 += 1;
        id
    }

    /// Counts one use of `id` less; a name nobody uses is forgotten.
    fn release(&mut self, id: u32) {
        let (name, uses) = &mut self.names[id as usize];
        *uses -= 1;
        if *uses == 0 {
            self.ids.remove(name.as_str());
            *name = String::new();
            self.free.push(id);
        }
    }
}

const OCCUPIED: u128 = 1 << 127;
const VERIFIED: u128 = 1 << 126;
const REFERENCED: u128 = 1 << 125;
/// Action-cache slots only: the value is opaque (not an `ActionResult`).
const OPAQUE: u128 = 1 << 124;
/// Blob slots only (the same bit as `OPAQUE`): the hash is a BLAKE3, not a SHA-256.
const BLAKE3: u128 = OPAQUE;
const SEGMENT_SHIFT: u32 = 92;
const OFFSET_SHIFT: u32 = 48;
/// A payload offset fits in 44 bits: 16 TiB, the largest file ext4 allows.
const OFFSET_BITS: u32 = 44;
/// A payload length fits in 48 bits: 256 TiB (uploads are refused long before: the disk check
/// wants twice the size free).
const LEN_BITS: u32 = 48;

/// A location and the marks, in 128 bits stored as 4-byte words so slots pack without padding.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Packed([u32; 4]);

impl Packed {
    const VACANT: Packed = Packed([0; 4]);

    /// `flag` is `OPAQUE` for an action slot, `BLAKE3` for a blob slot.
    fn new(entry: &Entry, flag: bool) -> Packed {
        let mut packed = Packed::from_bits(OCCUPIED);
        packed.set_location(&entry.location);
        packed.set(VERIFIED, entry.verified);
        packed.set(REFERENCED, entry.referenced);
        packed.set(OPAQUE, flag);
        packed
    }

    fn bits(self) -> u128 {
        let [a, b, c, d] = self.0;
        u128::from(a) | u128::from(b) << 32 | u128::from(c) << 64 | u128::from(d) << 96
    }

    fn from_bits(bits: u128) -> Packed {
        Packed([0, 32, 64, 96].map(|shift| (bits >> shift) as u32))
    }

    fn is_occupied(self) -> bool {
        self.bits() & OCCUPIED != 0
    }

    fn has(self, flag: u128) -> bool {
        self.bits() & flag != 0
    }

    fn set(&mut self, flag: u128, on: bool) {
        let bits = self.bits() & !flag;
        *self = Packed::from_bits(if on { bits | flag } else { bits });
    }

    fn kind(self) -> AcKind {
        if self.has(OPAQUE) {
            AcKind::Opaque
        } else {
            AcKind::ActionResult
        }
    }

    fn location(self) -> Location {
        let bits = self.bits();
        Location {
            segment: (bits >> SEGMENT_SHIFT) as u32,
            offset: ((bits >> OFFSET_SHIFT) & ((1 << OFFSET_BITS) - 1)) as u64,
            len: (bits & ((1 << LEN_BITS) - 1)) as u64,
        }
    }

    fn set_location(&mut self, location: &Location) {
        // Segment files cannot be that large, nor blobs that large reach the index.
        assert!(
            location.offset >> OFFSET_BITS == 0 && location.len >> LEN_BITS == 0,
            "location {location:?} is beyond what the index packs"
        );
        let marks = self.bits() & (OCCUPIED | VERIFIED | REFERENCED | OPAQUE);
        *self = Packed::from_bits(
            marks
                | u128::from(location.segment) << SEGMENT_SHIFT
                | u128::from(location.offset) << OFFSET_SHIFT
                | u128::from(location.len),
        );
    }

    fn entry(self, sha256: [u8; 32]) -> Entry {
        Entry {
            location: self.location(),
            sha256,
            verified: self.has(VERIFIED),
            referenced: self.has(REFERENCED),
        }
    }
}

/// First 64 bits of a hash: what a table orders slots by (after mixing in its seed).
fn leading_bits(hash: &[u8; HASH_LEN]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// A CAS slot: the blob's hash and where it lives (its size is the location's length).
#[derive(Clone, Copy)]
#[repr(C)]
struct BlobSlot {
    hash: [u8; HASH_LEN],
    packed: Packed,
}

impl BlobSlot {
    fn key_bits_of(hash: &[u8; HASH_LEN]) -> u64 {
        leading_bits(hash)
    }

    fn entry(&self) -> Entry {
        self.packed.entry(self.hash)
    }
}

impl Slot for BlobSlot {
    const VACANT: Self = BlobSlot {
        hash: [0; HASH_LEN],
        packed: Packed::VACANT,
    };

    fn is_vacant(&self) -> bool {
        !self.packed.is_occupied()
    }

    fn key_bits(&self) -> u64 {
        BlobSlot::key_bits_of(&self.hash)
    }
}

/// An AC slot: instance id and action hash (the key), the value's SHA-256, where it lives.
#[derive(Clone, Copy)]
#[repr(C)]
struct ActionSlot {
    action: [u8; HASH_LEN],
    sha256: [u8; 32],
    packed: Packed,
    instance: u32,
}

impl ActionSlot {
    fn key_bits_of(instance: u32, action: &[u8; HASH_LEN]) -> u64 {
        leading_bits(action) ^ u64::from(instance).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn entry(&self) -> Entry {
        self.packed.entry(self.sha256)
    }
}

impl Slot for ActionSlot {
    const VACANT: Self = ActionSlot {
        action: [0; HASH_LEN],
        sha256: [0; 32],
        packed: Packed::VACANT,
        instance: 0,
    };

    fn is_vacant(&self) -> bool {
        !self.packed.is_occupied()
    }

    fn key_bits(&self) -> u64 {
        ActionSlot::key_bits_of(self.instance, &self.action)
    }
}

/// What a [`Table`] holds: a key and its value, with a vacant form.
trait Slot: Copy {
    /// The empty slot.
    const VACANT: Self;
    fn is_vacant(&self) -> bool;
    /// 64 bits of the key; equal keys give equal bits (unequal keys may too).
    fn key_bits(&self) -> u64;
}

/// Grow once more than this share of the homes (in percent) would be taken.
const MAX_LOAD_PERCENT: usize = 92;
/// A growth adds this fraction of the homes (16: a sixteenth).
const GROWTH_DIVISOR: usize = 16;
/// Homes added at least per growth (small tables double; large ones grow by a fraction).
const MIN_GROWTH: usize = 64;
/// Slots added at a time when a run spills past the last home.
const SPILL_STEP: usize = 64;

/// An open-addressing table sorted by ordinal (see the module docs).
struct Table<S> {
    /// Sorted by ordinal among occupied slots; at least `homes` long (a run may spill past).
    slots: Vec<S>,
    /// Home positions: a key's home is its ordinal scaled to `0..homes`.
    homes: usize,
    /// Occupied slots.
    len: usize,
    seed: u64,
}

impl<S: Slot> Table<S> {
    fn new(seed: u64) -> Self {
        Table {
            slots: Vec::new(),
            homes: 0,
            len: 0,
            seed,
        }
    }

    fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<S>()
    }

    fn ordinal(&self, key_bits: u64) -> u64 {
        mix(key_bits ^ self.seed)
    }

    fn ordinal_of(&self, slot: &S) -> u64 {
        self.ordinal(slot.key_bits())
    }

    fn home(&self, ordinal: u64) -> usize {
        ((u128::from(ordinal) * self.homes as u128) >> 64) as usize
    }

    /// The position of the slot with `key_bits` for which `is_key` holds.
    fn find(&self, key_bits: u64, is_key: impl Fn(&S) -> bool) -> Option<usize> {
        let ordinal = self.ordinal(key_bits);
        let mut i = self.home(ordinal);
        while let Some(slot) = self.slots.get(i).filter(|s| !s.is_vacant()) {
            match self.ordinal_of(slot).cmp(&ordinal) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal if is_key(slot) => return Some(i),
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => return None,
            }
            i += 1;
        }
        None
    }

    /// Adds a slot whose key is not in the table.
    fn insert(&mut self, slot: S) {
        if (self.len + 1) * 100 > self.homes * MAX_LOAD_PERCENT {
            self.grow();
        }
        let ordinal = self.ordinal_of(&slot);
        let mut at = self.home(ordinal);
        while at < self.slots.len()
            && !self.slots[at].is_vacant()
            && self.ordinal_of(&self.slots[at]) <= ordinal
        {
            at += 1;
        }
        let vacant = match (at..self.slots.len()).find(|&i| self.slots[i].is_vacant()) {
            Some(i) => i,
            None => {
                self.spill(self.slots.len() + 1);
                self.slots.len() - 1
            }
        };
        self.slots.copy_within(at..vacant, at + 1);
        self.slots[at] = slot;
        self.len += 1;
    }

    /// Empties the slot at `i`, moving the displaced slots after it one step back (no tombstone).
    fn remove_at(&mut self, i: usize) {
        let mut end = i + 1;
        while end < self.slots.len()
            && !self.slots[end].is_vacant()
            && self.home(self.ordinal_of(&self.slots[end])) < end
        {
            end += 1;
        }
        self.slots.copy_within(i + 1..end, i);
        self.slots[end - 1] = S::VACANT;
        self.len -= 1;
    }

    /// Makes the table at least `len` slots long, a few spill slots at a time.
    fn spill(&mut self, len: usize) {
        if len > self.slots.len() {
            self.slots
                .reserve_exact(len - self.slots.len() + SPILL_STEP);
            self.slots.resize(len, S::VACANT);
        }
    }

    /// Adds a sixteenth more homes (at least [`MIN_GROWTH`]).
    fn grow(&mut self) {
        self.grow_to(self.homes + (self.homes / GROWTH_DIVISOR).max(MIN_GROWTH));
    }

    /// Makes room for `len` slots in all without growing on the way, at the middle of the
    /// load band growth keeps (so the first inserts after it do not trigger a growth either).
    fn reserve(&mut self, len: usize) {
        let homes = len.saturating_mul(100) / (MAX_LOAD_PERCENT - 3);
        if homes > self.homes {
            self.grow_to(homes);
        }
    }

    /// Sets the number of homes to `homes` (more than now) and moves every slot to its new
    /// place, in one forward pass over the extended allocation.
    fn grow_to(&mut self, homes: usize) {
        debug_assert!(homes > self.homes);
        let old_len = self.slots.len();
        self.homes = homes;
        if self.homes > old_len {
            self.slots.reserve_exact(self.homes - old_len);
            self.slots.resize(self.homes, S::VACANT);
        }
        // Slots keep their order and only their homes move (right): each goes to its home or
        // just after the one placed before it. Old slots not yet placed whose position is needed
        // first wait in `waiting`, in order.
        let mut waiting = VecDeque::new();
        let mut read = 0;
        let mut write = 0;
        loop {
            let slot = match waiting.pop_front() {
                Some(slot) => slot,
                None => {
                    while read < old_len && self.slots[read].is_vacant() {
                        read += 1;
                    }
                    if read == old_len {
                        break;
                    }
                    read += 1;
                    std::mem::replace(&mut self.slots[read - 1], S::VACANT)
                }
            };
            let at = self.home(self.ordinal_of(&slot)).max(write);
            while read < old_len && read <= at {
                let old = std::mem::replace(&mut self.slots[read], S::VACANT);
                if !old.is_vacant() {
                    waiting.push_back(old);
                }
                read += 1;
            }
            self.spill(at + 1);
            self.slots[at] = slot;
            write = at + 1;
        }
    }
}

/// splitmix64's finalizer: a bijection on 64 bits that spreads every input bit.
fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn slots_are_compact() {
        assert_eq!(std::mem::size_of::<BlobSlot>(), 48);
        assert_eq!(std::mem::size_of::<ActionSlot>(), 84);
    }

    #[test]
    fn packed_locations_round_trip_at_their_limits() {
        for (segment, offset, len) in [
            (0, 1, 0),
            (u32::MAX, (1 << OFFSET_BITS) - 1, (1 << LEN_BITS) - 1),
            (7, 1 << 40, 1 << 36),
        ] {
            for (verified, referenced, opaque) in [(false, true, false), (true, false, true)] {
                let entry = Entry {
                    location: Location {
                        segment,
                        offset,
                        len,
                    },
                    sha256: [9; 32],
                    verified,
                    referenced,
                };
                let packed = Packed::new(&entry, opaque);
                assert!(packed.is_occupied());
                assert_eq!(packed.entry([9; 32]), entry);
                assert_eq!(packed.has(OPAQUE), opaque);
            }
        }
    }

    /// The inverse of [`mix`], to build keys with chosen ordinals.
    fn unmix(z: u64) -> u64 {
        fn unshift(z: u64, shift: u32) -> u64 {
            let mut x = z;
            for _ in 0..64 / shift {
                x = z ^ (x >> shift);
            }
            x
        }
        fn inverse(c: u64) -> u64 {
            let mut inv = c;
            for _ in 0..6 {
                inv = inv.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(inv)));
            }
            inv
        }
        let z = unshift(z, 31);
        let z = unshift(z.wrapping_mul(inverse(0x94D0_49BB_1331_11EB)), 27);
        unshift(z.wrapping_mul(inverse(0xBF58_476D_1CE4_E5B9)), 30)
    }

    /// Checks a table's invariants: sorted by ordinal, each slot at or after its home with no
    /// vacancy in between (so a lookup from the home reaches it), and the count.
    fn check_table<S: Slot>(table: &Table<S>) {
        let mut last = None;
        let mut occupied = 0;
        for (i, slot) in table.slots.iter().enumerate() {
            if slot.is_vacant() {
                continue;
            }
            occupied += 1;
            let ordinal = table.ordinal_of(slot);
            assert!(last <= Some(ordinal), "slot {i} is out of order");
            last = Some(ordinal);
            let home = table.home(ordinal);
            assert!(home <= i, "slot {i} is before its home {home}");
            assert!(
                table.slots[home..i].iter().all(|s| !s.is_vacant()),
                "a vacancy separates slot {i} from its home"
            );
        }
        assert_eq!(occupied, table.len);
        assert!(table.slots.len() >= table.homes);
    }

    /// A hash from a small pool of leading words (so ordinals tie and homes collide).
    fn pooled_hash(rng: &mut StdRng, pool: u64) -> [u8; 32] {
        let mut hash: [u8; 32] = rng.random();
        let lead = rng.random_range(0..pool);
        hash[..8].copy_from_slice(&lead.to_le_bytes());
        hash
    }

    fn location(rng: &mut StdRng, len: u64) -> Location {
        Location {
            segment: rng.random_range(0..4),
            offset: rng.random_range(1..4),
            len,
        }
    }

    /// The state the index must agree with, kept in std maps.
    #[derive(Default)]
    struct Model {
        blobs: HashMap<BlobKey, Entry>,
        actions: HashMap<ActionKey, (AcKind, Entry)>,
    }

    const INSTANCES: [&str; 3] = ["", "main/linux", "a/much/longer/instance/name"];

    /// A blob's key: one hash under both functions is two blobs.
    type BlobKey = (DigestFunction, [u8; 32]);
    type ActionKey = (String, DigestFunction, [u8; 32]);

    fn digest_of((function, hash): BlobKey, size: u64) -> Digest {
        Digest::new(function, hash, size)
    }

    fn any_function(rng: &mut StdRng) -> DigestFunction {
        DigestFunction::ALL[rng.random_range(0..DigestFunction::ALL.len())]
    }

    /// Random inserts, lookups, marks, moves, evictions and removals, checked against the
    /// model after every step; inserts dominate first (growth), removals later (shrinking
    /// runs), over keys that share leading bits.
    fn run_against_model(seed: u64, steps: usize, pool: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut index = Index::default();
        let mut model = Model::default();
        let mut blob_keys: Vec<BlobKey> = Vec::new();
        let mut action_keys: Vec<ActionKey> = Vec::new();
        for step in 0..steps {
            let growing = step < steps / 2;
            let pick_blob = |rng: &mut StdRng, keys: &Vec<BlobKey>| {
                if keys.is_empty() || rng.random_bool(0.2) {
                    (any_function(rng), pooled_hash(rng, pool))
                } else if rng.random_bool(0.1) {
                    // A stored hash under the other function: another blob.
                    let (function, hash) = keys[rng.random_range(0..keys.len())];
                    let other = match function {
                        DigestFunction::Sha256 => DigestFunction::Blake3,
                        DigestFunction::Blake3 => DigestFunction::Sha256,
                    };
                    (other, hash)
                } else {
                    keys[rng.random_range(0..keys.len())]
                }
            };
            let pick_action = |rng: &mut StdRng, keys: &Vec<ActionKey>| {
                if keys.is_empty() || rng.random_bool(0.2) {
                    let instance = INSTANCES[rng.random_range(0..INSTANCES.len())];
                    (
                        instance.to_owned(),
                        any_function(rng),
                        pooled_hash(rng, pool),
                    )
                } else {
                    keys[rng.random_range(0..keys.len())].clone()
                }
            };
            let size_of = |(_, hash): &BlobKey| u64::from(hash[8]) + 1;
            let mut op = rng.random_range(0..100);
            if growing && op >= 75 && rng.random_bool(0.7) {
                op %= 30;
            } else if !growing && op < 30 && rng.random_bool(0.8) {
                op = 75 + op % 25;
            }
            match op {
                0..=19 => {
                    let key = if rng.random_bool(0.8) {
                        (any_function(&mut rng), pooled_hash(&mut rng, pool))
                    } else {
                        pick_blob(&mut rng, &blob_keys)
                    };
                    let entry = Entry {
                        location: location(&mut rng, size_of(&key)),
                        sha256: key.1,
                        verified: rng.random(),
                        referenced: rng.random(),
                    };
                    index.insert(RecordKey::Blob(digest_of(key, size_of(&key))), entry);
                    if model.blobs.insert(key, entry).is_none() {
                        blob_keys.push(key);
                    }
                }
                20..=29 => {
                    let (instance, function, action) = pick_action(&mut rng, &action_keys);
                    let kind = if rng.random() {
                        AcKind::Opaque
                    } else {
                        AcKind::ActionResult
                    };
                    let len = rng.random_range(0..1 << 20);
                    let entry = Entry {
                        location: location(&mut rng, len),
                        sha256: rng.random(),
                        verified: rng.random(),
                        referenced: rng.random(),
                    };
                    let key = RecordKey::Action {
                        instance: instance.clone(),
                        function,
                        action,
                        kind,
                    };
                    index.insert(key, entry);
                    let model_key = (instance, function, action);
                    if model
                        .actions
                        .insert(model_key.clone(), (kind, entry))
                        .is_none()
                    {
                        action_keys.push(model_key);
                    }
                }
                30..=44 => {
                    let key = pick_blob(&mut rng, &blob_keys);
                    // Sometimes the right hash with the wrong size: not the same blob.
                    let size = size_of(&key) + u64::from(rng.random_bool(0.1));
                    let digest = digest_of(key, size);
                    let expected = model
                        .blobs
                        .get_mut(&key)
                        .filter(|e| e.location.len == size)
                        .map(|e| {
                            e.referenced = true;
                            *e
                        });
                    assert_eq!(index.touch_blob(&digest), expected, "step {step}");
                    let by_hash = model
                        .blobs
                        .get(&key)
                        .map(|e| digest_of(key, e.location.len));
                    assert_eq!(index.blob_by_hash(key.0, &key.1), by_hash, "step {step}");
                }
                45..=54 => {
                    let (instance, function, action) = pick_action(&mut rng, &action_keys);
                    let expected = model
                        .actions
                        .get_mut(&(instance.clone(), function, action))
                        .map(|(kind, e)| {
                            e.referenced = true;
                            (*kind, *e)
                        });
                    assert_eq!(
                        index.touch_action(function, &instance, &action),
                        expected,
                        "step {step}"
                    );
                }
                55..=59 => {
                    let key = pick_blob(&mut rng, &blob_keys);
                    index.mark_verified(&digest_of(key, size_of(&key)));
                    if let Some(e) = model.blobs.get_mut(&key) {
                        e.verified = true;
                    }
                }
                60..=74 => {
                    // Eviction passing by: move, evict or leave a record, at its place or not.
                    let (key, model_entry) = if rng.random() {
                        let blob = pick_blob(&mut rng, &blob_keys);
                        let key = RecordKey::Blob(digest_of(blob, size_of(&blob)));
                        (key, model.blobs.get(&blob).copied())
                    } else {
                        let (instance, function, action) = pick_action(&mut rng, &action_keys);
                        let found = model.actions.get(&(instance.clone(), function, action));
                        let kind = found.map_or(AcKind::Opaque, |(k, _)| *k);
                        let entry = found.map(|(_, e)| *e);
                        let key = RecordKey::Action {
                            instance,
                            function,
                            action,
                            kind,
                        };
                        (key, entry)
                    };
                    let len = model_entry.map_or(1, |e| e.location.len);
                    let at = location(&mut rng, len);
                    let live = model_entry.filter(|e| e.location == at);
                    assert_eq!(index.live_at(&key, &at), live, "step {step}");
                    let update = |model: &mut Model, f: &dyn Fn(&mut Entry) -> bool| match &key {
                        RecordKey::Blob(d) => {
                            let e = model.blobs.get_mut(&(d.function, d.hash)).expect("live");
                            if f(e) {
                                model.blobs.remove(&(d.function, d.hash));
                            }
                        }
                        RecordKey::Action {
                            instance,
                            function,
                            action,
                            ..
                        } => {
                            let k = (instance.clone(), *function, *action);
                            let (_, e) = model.actions.get_mut(&k).expect("live");
                            if f(e) {
                                model.actions.remove(&k);
                            }
                        }
                        RecordKey::ActionRemoved { .. } | RecordKey::Seal => unreachable!(),
                    };
                    if rng.random() {
                        let to = location(&mut rng, len);
                        index.move_if_at(&key, &at, to);
                        if live.is_some() {
                            update(&mut model, &|e| {
                                e.location = to;
                                e.referenced = false;
                                false
                            });
                        }
                    } else if !growing || rng.random_bool(0.3) {
                        assert_eq!(index.evict_if_at(&key, &at), live.is_some());
                        if live.is_some() {
                            update(&mut model, &|_| true);
                        }
                    }
                }
                75..=89 => {
                    let key = pick_blob(&mut rng, &blob_keys);
                    index.remove_blob(&digest_of(key, size_of(&key)));
                    model.blobs.remove(&key);
                }
                90..=99 => {
                    let (instance, function, action) = pick_action(&mut rng, &action_keys);
                    index.remove_action(function, &instance, &action);
                    model.actions.remove(&(instance, function, action));
                }
                _ => unreachable!("op {op}"),
            }
            let stats = index.stats();
            assert_eq!(stats.blobs as usize, model.blobs.len(), "step {step}");
            assert_eq!(stats.actions as usize, model.actions.len(), "step {step}");
            let bytes: u64 = model.blobs.values().map(|e| e.location.len).sum();
            assert_eq!(stats.blob_bytes, bytes, "step {step}");
            if step % 997 == 0 || step == steps - 1 {
                check_table(&index.blobs);
                check_table(&index.actions);
                for (blob, e) in &model.blobs {
                    let key = RecordKey::Blob(digest_of(*blob, e.location.len));
                    assert_eq!(index.live_at(&key, &e.location), Some(*e));
                }
                for ((instance, function, action), (kind, e)) in &model.actions {
                    let key = RecordKey::Action {
                        instance: instance.clone(),
                        function: *function,
                        action: *action,
                        kind: *kind,
                    };
                    assert_eq!(index.live_at(&key, &e.location), Some(*e));
                }
                // Names nobody uses are forgotten.
                let used: std::collections::HashSet<&str> =
                    model.actions.keys().map(|(i, _, _)| i.as_str()).collect();
                assert_eq!(index.instances.ids.len(), used.len(), "step {step}");
            }
        }
    }

    #[test]
    fn random_operations_match_a_model_with_many_tied_ordinals() {
        for seed in 0..4 {
            run_against_model(seed, 20_000, 64);
        }
    }

    #[test]
    fn random_operations_match_a_model_through_growth() {
        run_against_model(99, 60_000, u64::MAX);
    }

    /// A test slot whose key bits are the whole key.
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Key(u64, bool);

    impl Slot for Key {
        const VACANT: Self = Key(0, false);
        fn is_vacant(&self) -> bool {
            !self.1
        }
        fn key_bits(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn runs_spill_past_the_last_home_and_shrink_back() {
        let seed = 0x5EED;
        assert_eq!(unmix(mix(seed)), seed);
        let mut table = Table::<Key>::new(seed);
        // Every ordinal in the top 1/1024 of the range: all homes are at the very end.
        let keys: Vec<u64> = (0..3000u64)
            .map(|i| unmix(u64::MAX - i * (1 << 40)) ^ seed)
            .collect();
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(table.find(k, |s| s.0 == k), None);
            table.insert(Key(k, true));
            if n % 100 == 0 {
                check_table(&table);
            }
        }
        check_table(&table);
        assert!(table.slots.len() > table.homes + 2000, "the run spilled");
        for (n, &k) in keys.iter().enumerate().rev() {
            let i = table.find(k, |s| s.0 == k).expect("present");
            table.remove_at(i);
            assert_eq!(table.find(k, |s| s.0 == k), None);
            if n % 100 == 0 {
                check_table(&table);
                for &other in &keys[..n] {
                    assert!(table.find(other, |s| s.0 == other).is_some());
                }
            }
        }
        assert_eq!(table.len, 0);
        assert!(table.slots.iter().all(Slot::is_vacant));
    }

    fn entry_at(segment: u32, len: u64) -> Entry {
        Entry {
            location: Location {
                segment,
                offset: 1,
                len,
            },
            sha256: [0; 32],
            verified: true,
            referenced: false,
        }
    }

    #[test]
    fn a_reserved_table_takes_its_entries_without_growing_and_finds_them() {
        let mut index = Index::default();
        index.reserve(10_000, 0);
        let homes = index.blobs.homes;
        let digests: Vec<Digest> = (0..10_000u32)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        for (i, d) in digests.iter().enumerate() {
            index.insert(RecordKey::Blob(*d), entry_at(i as u32, d.size));
        }
        assert_eq!(index.blobs.homes, homes, "no growth while filling");
        for d in &digests {
            assert!(index.peek_blob(d).is_some());
        }
        // Reserving less than is there changes nothing; more regrows once and keeps everything.
        index.reserve(5, 0);
        assert_eq!(index.blobs.homes, homes);
        index.reserve(40_000, 0);
        assert!(index.blobs.homes > homes);
        assert!(digests.iter().all(|d| index.peek_blob(d).is_some()));
    }

    #[test]
    fn growth_keeps_the_load_within_a_sixteenth_of_its_maximum() {
        let mut table = Table::<Key>::new(1);
        let mut lowest: f64 = 1.0;
        for k in 1..=200_000u64 {
            table.insert(Key(k, true));
            if table.homes > 10_000 {
                lowest = lowest.min(table.len as f64 / table.slots.len() as f64);
            }
            assert!(table.len * 100 <= table.homes * MAX_LOAD_PERCENT);
        }
        check_table(&table);
        let most = MAX_LOAD_PERCENT as f64 / 100.0;
        let floor = most / (1.0 + 1.0 / GROWTH_DIVISOR as f64) - 0.01;
        assert!(lowest > floor, "load fell to {lowest}");
        for k in 1..=200_000u64 {
            assert!(table.find(k, |s| s.0 == k).is_some());
        }
    }

    #[test]
    fn instance_names_are_forgotten_when_unused_and_ids_reused() {
        let mut index = Index::default();
        let entry = Entry {
            location: Location {
                segment: 1,
                offset: 10,
                len: 5,
            },
            sha256: [1; 32],
            verified: true,
            referenced: false,
        };
        let key = |instance: &str, action: u8| RecordKey::Action {
            instance: instance.to_owned(),
            function: DigestFunction::Sha256,
            action: [action; 32],
            kind: AcKind::ActionResult,
        };
        index.insert(key("a", 1), entry);
        index.insert(key("a", 2), entry);
        index.insert(key("b", 1), entry);
        index.remove_action(DigestFunction::Sha256, "a", &[1; 32]);
        assert!(index
            .touch_action(DigestFunction::Sha256, "a", &[2; 32])
            .is_some());
        index.remove_action(DigestFunction::Sha256, "a", &[2; 32]);
        assert_eq!(index.instances.id("a"), None);
        // "c" takes the id "a" had; nothing of "a" answers to it.
        index.insert(key("c", 3), entry);
        assert!(index
            .touch_action(DigestFunction::Sha256, "a", &[3; 32])
            .is_none());
        assert!(index
            .touch_action(DigestFunction::Sha256, "c", &[3; 32])
            .is_some());
        assert!(index
            .touch_action(DigestFunction::Sha256, "b", &[1; 32])
            .is_some());
        assert!(index
            .touch_action(DigestFunction::Sha256, "c", &[1; 32])
            .is_none());
        assert_eq!(index.stats().actions, 2);
    }

    #[test]
    fn one_hash_under_two_functions_is_two_entries() {
        let mut index = Index::default();
        let at = |offset| Entry {
            location: Location {
                segment: 1,
                offset,
                len: 5,
            },
            sha256: [7; 32],
            verified: false,
            referenced: false,
        };
        let sha = Digest::sha256([7; 32], 5);
        let blake = Digest::new(DigestFunction::Blake3, [7; 32], 5);
        index.insert(RecordKey::Blob(sha), at(10));
        assert!(index.peek_blob(&blake).is_none());
        assert_eq!(index.blob_by_hash(DigestFunction::Blake3, &[7; 32]), None);
        index.insert(RecordKey::Blob(blake), at(20));
        assert_eq!(index.peek_blob(&sha).unwrap().location.offset, 10);
        assert_eq!(index.peek_blob(&blake).unwrap().location.offset, 20);
        index.remove_blob(&sha);
        assert!(index.peek_blob(&sha).is_none());
        assert_eq!(
            index.blob_by_hash(DigestFunction::Blake3, &[7; 32]),
            Some(blake)
        );
        let action = |function| RecordKey::Action {
            instance: "i".into(),
            function,
            action: [9; 32],
            kind: AcKind::ActionResult,
        };
        index.insert(action(DigestFunction::Blake3), at(30));
        assert!(index
            .peek_action(DigestFunction::Sha256, "i", &[9; 32])
            .is_none());
        index.insert(action(DigestFunction::Sha256), at(40));
        let (keys, _) = index.action_results_from(0, 10);
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&(DigestFunction::Blake3, "i".into(), [9; 32])));
        index.remove_action(DigestFunction::Blake3, "i", &[9; 32]);
        let (_, left) = index
            .peek_action(DigestFunction::Sha256, "i", &[9; 32])
            .unwrap();
        assert_eq!(left.location.offset, 40);
        assert_eq!(
            index.instances.id("i"),
            Some(0),
            "the SHA-256 entry still uses the name"
        );
    }
}
