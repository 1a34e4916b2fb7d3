//! The sloppy store: values this node holds for others, at every level
//! (spec §3.1, §3.2).
//!
//! Each level is its own DSHT, so everything here is keyed by
//! `(Level, Key)`. A value is opaque bytes with a TTL (soft state, spec §2);
//! an entry is unique per `(level, key, value)`, and storing the same value
//! again refreshes its expiry to the later of the old and new ones, so a
//! proxy's long-lived "have it" reference replaces its 20 s "fetching" one
//! and never the reverse.
//!
//! # Full and loaded (spec §3.1)
//!
//! * **Full**: a node is full for an insert of value `v` with TTL `T` when it
//!   already holds at least `l` values for the key, `v` itself excepted,
//!   that will live at least `T/2` longer. The rule is written once, in
//!   [`is_full`], over the [`StoredInfo`] summaries a put-probe reply
//!   carries, and the store decides its own fullness by running that same
//!   function over the same summaries. Remaining lifetimes are therefore
//!   rounded *down* to whole seconds on both sides, which makes the
//!   inserter's prediction from a probe and the store's decision at the same
//!   instant agree exactly whenever `l <= wire::MAX_STORED` (a key never
//!   holds more than `l` values, so the probe summary is then complete).
//!   With a larger `l` the summary is truncated to the longest-lived
//!   [`MAX_STORED`] values and the prediction can only err towards "not
//!   full": the inserter tries a store that is then refused, and falls back
//!   to the next node on its stack as spec §3.2 step 6 prescribes.
//! * **Loaded**: more than `beta` puts for the key traversed this node in the
//!   last `beta_window` (spec open question 2: puts count, gets do not). Both
//!   a put-probe (forward phase) and a store (reverse phase) count. Each key
//!   keeps only its last `beta + 1` put instants; it is loaded when it has
//!   all `beta + 1` and the oldest is still inside the window.
//!
//! A store that finds the node full refuses with [`StoreResult::Loaded`] if
//! the node is also loaded, else [`StoreResult::Full`]; the inserter's
//! forward phase stops at a node that is full *and* loaded (spec open
//! question 3). A store that is not refused may evict the key's
//! soonest-expiring value to stay within `l` values per key: since the node
//! was not full, that value lives less than `T/2`, so the key's long-lived
//! values are never displaced (spec §3.1 corollary).
//!
//! # Bounds and expiry
//!
//! Every collection here is fed by the network, so the store is bounded by
//! `max_values` values and `max_keys` key entries over all levels (a key
//! entry holding only put counters counts as a key: it is what lets a node
//! holding nothing report "loaded"). When a bound is hit, the globally
//! soonest-expiring value (or key entry) is evicted if it would expire before
//! the newcomer; otherwise the newcomer is refused and counted.
//!
//! Two ordered indexes, by value expiry and by key-entry expiry, give
//! [`Store::next_expiry`] and each eviction in `O(log n)`, and let
//! [`Store::expire`] touch only what has expired. A key entry expires when
//! its last value has expired and its newest put instant has left the
//! window. Read methods filter by `now` as well, so an expired value is
//! never returned or counted even before [`Store::expire`] runs; mutating
//! methods run [`Store::expire`] first.
//!
//! Iteration that reaches an output goes through `BTreeMap`, `BTreeSet` and
//! `Vec`, never a `HashMap`, so a replay gives the same answers.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use smallvec::SmallVec;

use crate::config::DshtConfig;
use crate::contact::Level;
use crate::id::{ID_LEN, Id, Key};
use crate::time::Instant;
use crate::wire::{MAX_STORED, StoreResult, StoredInfo};

/// The 64-bit fingerprint of a value: the first 8 bytes of its SHA-1,
/// big-endian.
///
/// A put-probe reply summarises a node's values by fingerprint so that the
/// inserter can leave its own value out of the "full" count ([`is_full`]).
/// Fingerprints must be identical on every node, so no seeded hasher will
/// do. SHA-1 rather than a cheaper FNV-1a because the values come from
/// untrusted peers: with FNV anyone can craft a value that collides with a
/// victim's fingerprint and so skew the victim's fullness count; a
/// truncated SHA-1 needs about 2^64 work for that. The cost is negligible
/// here, since values are at most a few hundred bytes and the store
/// computes each fingerprint once, when the value is inserted.
pub fn fingerprint(value: &[u8]) -> u64 {
    Sha1::digest(value)
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// The "full" rule of spec §3.1, shared by the store and the inserter.
///
/// True iff `stored` holds at least `l` values, other than the one with
/// `fingerprint` (the value being inserted), whose remaining lifetime in
/// whole seconds is at least half of `ttl`, the TTL of the insert. `ttl`
/// should be the TTL the store will apply, i.e. already clamped to
/// `max_ttl`. `l == 0` means always full.
///
/// The inserter calls it on a put-probe reply's `stored` list; the store
/// calls it on the same summaries of its own values (see the module doc for
/// why both sides round remaining lifetimes down to whole seconds).
pub fn is_full<I>(stored: I, l: usize, fingerprint: u64, ttl: Duration) -> bool
where
    I: IntoIterator,
    I::Item: Borrow<StoredInfo>,
{
    long_lived_at_least(stored, l, Some(fingerprint), ttl)
}

/// Whether `stored` is full for *any* new value of TTL `ttl`: [`is_full`]
/// without excluding the inserter's own value.
///
/// The forward phase of a put halts at a node that is full in this sense
/// and loaded (spec §3.2): the node is shielded from further puts whoever
/// sends them. Excluding the inserter's own value there would let every
/// node whose value sits at the shield walk past it on each refresh.
pub fn is_full_for_any<I>(stored: I, l: usize, ttl: Duration) -> bool
where
    I: IntoIterator,
    I::Item: Borrow<StoredInfo>,
{
    long_lived_at_least(stored, l, None, ttl)
}

/// At least `l` values, other than `except`, live at least half of `ttl`.
fn long_lived_at_least<I>(stored: I, l: usize, except: Option<u64>, ttl: Duration) -> bool
where
    I: IntoIterator,
    I::Item: Borrow<StoredInfo>,
{
    stored
        .into_iter()
        .filter(|s| {
            let s = s.borrow();
            // `2·remaining ≥ T` rather than `remaining ≥ T/2`: no rounding of T.
            Some(s.fingerprint) != except && Duration::from_secs(u64::from(s.ttl_secs) * 2) >= ttl
        })
        .take(l)
        .count()
        >= l
}

/// What a put-probe reports about one key (spec §3.2 forward phase, step 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutProbeInfo {
    /// More than `beta` puts for the key traversed this node in the window,
    /// counting the probe itself.
    pub loaded: bool,
    /// The key's unexpired values, longest remaining lifetime first, at most
    /// [`MAX_STORED`] of them.
    pub stored: SmallVec<[StoredInfo; 4]>,
}

/// Counters of what the store holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Key entries held (including ones that only count puts), expired or not.
    pub keys: usize,
    /// Values held, including expired ones [`Store::expire`] has not yet removed.
    pub values: usize,
    /// New values stored.
    pub stored: u64,
    /// Stores of a value already held, whose expiry was refreshed.
    pub refreshed: u64,
    /// Stores refused with [`StoreResult::Full`]: the node was full for the
    /// value's TTL, or a global bound could not make room.
    pub refused_full: u64,
    /// Stores refused with [`StoreResult::Loaded`]: full and loaded.
    pub refused_loaded: u64,
    /// Stores refused because the value exceeded `max_value_len` (also
    /// answered [`StoreResult::Full`]; the node should have refused earlier).
    pub refused_invalid: u64,
    /// Put traversals not counted because the key table was full and no key
    /// entry expired soon enough to make room.
    pub untracked_puts: u64,
    /// Values evicted before their expiry to make room.
    pub evicted: u64,
    /// Key entries evicted (with their values) to make room for a new key.
    pub evicted_keys: u64,
    /// Values removed because their TTL ran out.
    pub expired: u64,
}

/// A key at a level: everything in the store is keyed by it.
type Slot = (Level, Key);

/// One stored value.
#[derive(Clone, Debug)]
struct Entry {
    value: Bytes,
    /// Cached [`fingerprint`] of `value`, so probes never rehash.
    fingerprint: u64,
    /// The value is alive while `now < expires`.
    expires: Instant,
    /// Store-wide unique tag, naming this entry in the expiry index.
    seq: u64,
}

impl Entry {
    fn alive(&self, now: Instant) -> bool {
        now < self.expires
    }

    fn info(&self, now: Instant) -> StoredInfo {
        StoredInfo {
            fingerprint: self.fingerprint,
            // Rounded down: see the module doc.
            ttl_secs: u32::try_from((self.expires - now).as_secs()).unwrap_or(u32::MAX),
        }
    }
}

/// Everything held for one `(level, key)`.
#[derive(Clone, Debug, Default)]
struct KeyState {
    /// At most `l` values, sorted by expiry, latest first, ties newest
    /// first. So unexpired values form a prefix, and the value an insert
    /// evicts (the soonest-expiring, the oldest of a tie) is last.
    values: Vec<Entry>,
    /// The last `beta + 1` put traversals, oldest first.
    puts: VecDeque<Instant>,
    /// The instant under which this entry is filed in the key-expiry index.
    filed: Instant,
}

impl KeyState {
    /// When this entry can go: its last value has expired and its newest
    /// put has left the window.
    fn expiry(&self, window: Duration) -> Instant {
        let values = self.values.first().map_or(Instant::ZERO, |e| e.expires);
        let puts = self.puts.back().map_or(Instant::ZERO, |&t| t + window);
        values.max(puts)
    }

    fn loaded(&self, now: Instant, cap: usize, window: Duration) -> bool {
        self.puts.len() >= cap && self.puts.front().is_some_and(|&t| now < t + window)
    }

    fn insert(&mut self, entry: Entry) {
        // Exactly as many slots as values: most keys hold one, and a
        // doubling Vec would keep room for four (168 bytes each key).
        self.values.reserve_exact(1);
        let pos = self
            .values
            .partition_point(|e| (e.expires, e.seq) > (entry.expires, entry.seq));
        self.values.insert(pos, entry);
    }
}

/// The per-node sloppy store of values held for others, over all levels.
///
/// See the [module documentation](self) for the algorithm. Create it with
/// [`Store::new`]; feed it put-probes ([`Store::probe_put`]), stores
/// ([`Store::store`]) and lookups ([`Store::get`]); wake it at
/// [`Store::next_expiry`] to run [`Store::expire`].
#[derive(Clone, Debug)]
pub struct Store {
    /// `l`: values per key.
    l: usize,
    /// `beta + 1`: put instants kept per key.
    puts_cap: usize,
    /// The window `beta` is counted over.
    window: Duration,
    max_keys: usize,
    max_values: usize,
    max_value_len: usize,
    max_ttl: Duration,
    keys: BTreeMap<Slot, KeyState>,
    /// Every value, by `(expires, slot, seq)`.
    value_expiry: BTreeSet<(Instant, Slot, u64)>,
    /// Every key entry, by `(filed, slot)`.
    key_expiry: BTreeSet<(Instant, Slot)>,
    /// Number of values held (the size of `value_expiry`).
    values: usize,
    next_seq: u64,
    stats: StoreStats,
}

impl Store {
    /// An empty store with the limits of `config` (`l`, `beta`,
    /// `beta_window`, `max_keys`, `max_values`, `max_value_len`, `max_ttl`).
    pub fn new(config: &DshtConfig) -> Self {
        Self {
            l: config.l,
            puts_cap: usize::try_from(config.beta)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            window: config.beta_window,
            max_keys: config.max_keys,
            max_values: config.max_values,
            max_value_len: config.max_value_len,
            max_ttl: config.max_ttl,
            keys: BTreeMap::new(),
            value_expiry: BTreeSet::new(),
            key_expiry: BTreeSet::new(),
            values: 0,
            next_seq: 0,
            stats: StoreStats::default(),
        }
    }

    /// Handles a put-probe (spec §3.2 forward phase): counts one put
    /// traversing this node for `(level, key)`, then reports whether the
    /// node is loaded for it and a summary of the values it holds.
    ///
    /// The inserter decides "full" itself, with [`is_full`] over `stored`.
    pub fn probe_put(&mut self, now: Instant, level: Level, key: Key) -> PutProbeInfo {
        self.expire(now);
        let slot = (level, key);
        if self.ensure_key(now, slot, now + self.window) {
            self.record_put(now, slot);
        }
        match self.keys.get(&slot) {
            Some(state) => PutProbeInfo {
                loaded: state.loaded(now, self.puts_cap, self.window),
                stored: state
                    .values
                    .iter()
                    .take_while(|e| e.alive(now))
                    .take(MAX_STORED)
                    .map(|e| e.info(now))
                    .collect(),
            },
            None => PutProbeInfo {
                loaded: false,
                stored: SmallVec::new(),
            },
        }
    }

    /// Handles a store request (spec §3.2 reverse phase): counts one put
    /// traversal, then stores `value` under `(level, key)` for `ttl`
    /// (clamped to `max_ttl`) unless the node is full for that TTL.
    ///
    /// * The value is already held: its expiry becomes the later of the old
    ///   one and `now + ttl`; [`StoreResult::Ok`].
    /// * The node is full for `ttl` ([`is_full`]): [`StoreResult::Loaded`]
    ///   if it is also loaded, else [`StoreResult::Full`]. Nothing is stored.
    /// * Otherwise the value is inserted; if the key already holds `l`
    ///   values, its soonest-expiring one is evicted first. If the store
    ///   holds `max_values` values, the globally soonest-expiring one is
    ///   evicted if it expires before the newcomer would, else the store is
    ///   refused with [`StoreResult::Full`]. A new key likewise needs room
    ///   under `max_keys`.
    ///
    /// A value longer than `max_value_len` is refused with
    /// [`StoreResult::Full`] and counted in `refused_invalid`, without
    /// counting a traversal. A TTL that rounds to zero microseconds is
    /// answered [`StoreResult::Ok`] (if not full) but nothing is kept: the
    /// value has expired on arrival.
    pub fn store(
        &mut self,
        now: Instant,
        level: Level,
        key: Key,
        value: Bytes,
        ttl: Duration,
    ) -> StoreResult {
        self.insert(now, level, key, value, ttl, true)
    }

    /// Stores this node's own value exactly as [`Store::store`] does, but
    /// without counting a put traversal: a requester that is loaded for the
    /// key keeps its own put instead of sending it on (see the node's put),
    /// and a put that went nowhere must not keep it loaded.
    pub fn keep(
        &mut self,
        now: Instant,
        level: Level,
        key: Key,
        value: Bytes,
        ttl: Duration,
    ) -> StoreResult {
        self.insert(now, level, key, value, ttl, false)
    }

    fn insert(
        &mut self,
        now: Instant,
        level: Level,
        key: Key,
        value: Bytes,
        ttl: Duration,
        count: bool,
    ) -> StoreResult {
        if value.len() > self.max_value_len {
            self.stats.refused_invalid += 1;
            return StoreResult::Full;
        }
        self.expire(now);
        let ttl = ttl.min(self.max_ttl);
        let expires = now + ttl;
        let slot = (level, key);
        if !self.ensure_key(now, slot, expires.max(now + self.window)) {
            self.stats.refused_full += 1;
            return StoreResult::Full;
        }
        if count {
            self.record_put(now, slot);
        }
        let Some(state) = self.keys.get_mut(&slot) else {
            // ensure_key just made sure the entry exists.
            self.stats.refused_full += 1;
            return StoreResult::Full;
        };

        if let Some(pos) = state.values.iter().position(|e| e.value == value) {
            self.stats.refreshed += 1;
            if expires > state.values[pos].expires {
                let mut entry = state.values.remove(pos);
                self.value_expiry.remove(&(entry.expires, slot, entry.seq));
                entry.expires = expires;
                self.value_expiry.insert((expires, slot, entry.seq));
                state.insert(entry);
                self.refile(slot);
            }
            return StoreResult::Ok;
        }

        let fp = fingerprint(&value);
        if is_full(state.values.iter().map(|e| e.info(now)), self.l, fp, ttl) {
            return if state.loaded(now, self.puts_cap, self.window) {
                self.stats.refused_loaded += 1;
                StoreResult::Loaded
            } else {
                self.stats.refused_full += 1;
                StoreResult::Full
            };
        }
        if expires <= now {
            return StoreResult::Ok;
        }

        if state.values.len() >= self.l {
            // Not full, so this value lives less than T/2 (whole seconds).
            let victim = state.values.last().map(|e| e.seq);
            if let Some(seq) = victim {
                self.remove_value(slot, seq);
                self.stats.evicted += 1;
            }
        } else if self.values >= self.max_values {
            match self.value_expiry.first() {
                Some(&(t, victim_slot, seq)) if t < expires => {
                    self.remove_value(victim_slot, seq);
                    self.stats.evicted += 1;
                }
                _ => {
                    self.stats.refused_full += 1;
                    return StoreResult::Full;
                }
            }
        }

        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let Some(state) = self.keys.get_mut(&slot) else {
            // The entry holds a fresh put instant, so no removal above dropped it.
            self.stats.refused_full += 1;
            return StoreResult::Full;
        };
        state.insert(Entry {
            value,
            fingerprint: fp,
            expires,
            seq,
        });
        self.value_expiry.insert((expires, slot, seq));
        self.values += 1;
        self.stats.stored += 1;
        self.refile(slot);
        StoreResult::Ok
    }

    /// The unexpired values held for `(level, key)`, longest remaining
    /// lifetime first, at most `max` of them. Gets do not count towards
    /// "loaded" (spec open question 2).
    pub fn get(
        &self,
        now: Instant,
        level: Level,
        key: Key,
        max: usize,
    ) -> impl Iterator<Item = &Bytes> {
        self.keys
            .get(&(level, key))
            .into_iter()
            .flat_map(|s| s.values.iter())
            .take_while(move |e| e.alive(now))
            .take(max)
            .map(|e| &e.value)
    }

    /// Whether more than `beta` puts for `(level, key)` traversed this node
    /// in the window ending at `now`. Does not count a traversal.
    pub fn is_loaded(&self, now: Instant, level: Level, key: Key) -> bool {
        self.keys
            .get(&(level, key))
            .is_some_and(|s| s.loaded(now, self.puts_cap, self.window))
    }

    /// How many unexpired values are held for `(level, key)`.
    pub fn values_for(&self, now: Instant, level: Level, key: Key) -> usize {
        self.keys
            .get(&(level, key))
            .map_or(0, |s| s.values.iter().take_while(|e| e.alive(now)).count())
    }

    /// Key entries held, including ones that only count puts and ones that
    /// have expired but not yet been removed by [`Store::expire`].
    pub fn len_keys(&self) -> usize {
        self.keys.len()
    }

    /// Values held, including expired ones not yet removed by [`Store::expire`].
    pub fn len_values(&self) -> usize {
        self.values
    }

    /// The earliest instant at which a value or key entry expires; the node
    /// should call [`Store::expire`] then. Calling it earlier is harmless.
    pub fn next_expiry(&self) -> Option<Instant> {
        let value = self.value_expiry.first().map(|&(t, ..)| t);
        let key = self.key_expiry.first().map(|&(t, _)| t);
        match (value, key) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes every value and key entry that has expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, slot, seq)) = self.value_expiry.first() {
            if t > now {
                break;
            }
            self.value_expiry.pop_first();
            if let Some(state) = self.keys.get_mut(&slot)
                && let Some(pos) = state.values.iter().position(|e| e.seq == seq)
            {
                state.values.remove(pos);
                self.values = self.values.saturating_sub(1);
                self.stats.expired += 1;
            }
            // No refiling needed: a key's expiry is at least that of each of
            // its values, so it either is unchanged or has passed too and is
            // removed below.
        }
        while let Some(&(t, slot)) = self.key_expiry.first() {
            if t > now {
                break;
            }
            self.key_expiry.pop_first();
            if let Some(state) = self.keys.remove(&slot) {
                for e in state.values {
                    self.value_expiry.remove(&(e.expires, slot, e.seq));
                    self.values = self.values.saturating_sub(1);
                    self.stats.expired += 1;
                }
            }
        }
    }

    /// Drops everything held at `level` (the node left that level's cluster).
    pub fn remove_level(&mut self, level: Level) {
        let slots: Vec<Slot> = self
            .keys
            .range((level, Id([0; ID_LEN]))..=(level, Id([0xff; ID_LEN])))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in slots {
            self.remove_key(slot);
        }
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.keys.len(),
            values: self.values,
            ..self.stats
        }
    }

    /// Makes sure `slot` has a key entry, evicting the soonest-expiring key
    /// entry if the table is full and that one expires before `newcomer`
    /// (the new entry's expiry). False if there is no entry and none was
    /// made (counted in `untracked_puts` when the cap was the reason).
    fn ensure_key(&mut self, now: Instant, slot: Slot, newcomer: Instant) -> bool {
        if self.keys.contains_key(&slot) {
            return true;
        }
        if newcomer <= now {
            // Nothing of it would outlive this instant.
            return false;
        }
        if self.keys.len() >= self.max_keys {
            match self.key_expiry.first() {
                Some(&(t, victim)) if t < newcomer => {
                    let dropped = self.remove_key(victim);
                    self.stats.evicted += dropped as u64;
                    self.stats.evicted_keys += 1;
                }
                _ => {
                    self.stats.untracked_puts += 1;
                    return false;
                }
            }
        }
        self.keys.insert(slot, KeyState::default());
        true
    }

    /// Counts one put traversal of an existing key entry.
    fn record_put(&mut self, now: Instant, slot: Slot) {
        if let Some(state) = self.keys.get_mut(&slot) {
            // Grown one slot at a time: most keys see one put, and a
            // store at its key cap holds tens of thousands of them.
            if state.puts.len() == state.puts.capacity() && state.puts.len() < self.puts_cap {
                state.puts.reserve_exact(1);
            }
            state.puts.push_back(now);
            while state.puts.len() > self.puts_cap {
                state.puts.pop_front();
            }
        }
        self.refile(slot);
    }

    /// Re-files `slot` in the key-expiry index after its values or put
    /// instants changed. An entry left with nothing alive stays until the
    /// next [`Store::expire`] (it is first in line for eviction meanwhile),
    /// so that a store in progress never loses its own key entry.
    fn refile(&mut self, slot: Slot) {
        let Some(state) = self.keys.get_mut(&slot) else {
            return;
        };
        let expiry = state.expiry(self.window);
        // A new entry is filed under ZERO but absent from the index.
        if expiry != state.filed || !self.key_expiry.contains(&(expiry, slot)) {
            self.key_expiry.remove(&(state.filed, slot));
            state.filed = expiry;
            self.key_expiry.insert((expiry, slot));
        }
    }

    /// Removes the value tagged `seq` from `slot`. Not counted: the caller
    /// knows whether it is an eviction.
    fn remove_value(&mut self, slot: Slot, seq: u64) {
        let Some(state) = self.keys.get_mut(&slot) else {
            return;
        };
        if let Some(pos) = state.values.iter().position(|e| e.seq == seq) {
            let entry = state.values.remove(pos);
            self.value_expiry.remove(&(entry.expires, slot, seq));
            self.values = self.values.saturating_sub(1);
        }
        self.refile(slot);
    }

    /// Removes a key entry and its values; returns how many values went.
    fn remove_key(&mut self, slot: Slot) -> usize {
        let Some(state) = self.keys.remove(&slot) else {
            return 0;
        };
        self.key_expiry.remove(&(state.filed, slot));
        for e in &state.values {
            self.value_expiry.remove(&(e.expires, slot, e.seq));
        }
        self.values = self.values.saturating_sub(state.values.len());
        state.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(l: usize, beta: u32, max_keys: usize, max_values: usize) -> DshtConfig {
        DshtConfig {
            l,
            beta,
            beta_window: Duration::from_secs(60),
            max_keys,
            max_values,
            max_value_len: 16,
            max_ttl: Duration::from_secs(3600),
            ..DshtConfig::default()
        }
    }

    fn key(n: u8) -> Key {
        Id([n; ID_LEN])
    }

    fn val(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn at(s: u64) -> Instant {
        Instant::from_duration(secs(s))
    }

    fn values(store: &Store, now: Instant, level: Level, k: Key) -> Vec<Bytes> {
        store.get(now, level, k, usize::MAX).cloned().collect()
    }

    fn info(fp: u64, ttl_secs: u32) -> StoredInfo {
        StoredInfo {
            fingerprint: fp,
            ttl_secs,
        }
    }

    /// Every internal invariant of the store.
    fn check_invariants(s: &Store) {
        let mut total = 0;
        for (slot, state) in &s.keys {
            assert!(state.values.len() <= s.l, "key holds more than l values");
            assert!(state.puts.len() <= s.puts_cap);
            assert!(
                state
                    .values
                    .windows(2)
                    .all(|w| w[0].expires >= w[1].expires)
            );
            for e in &state.values {
                assert!(s.value_expiry.contains(&(e.expires, *slot, e.seq)));
                assert_eq!(e.fingerprint, fingerprint(&e.value));
            }
            assert_eq!(state.filed, state.expiry(s.window));
            assert!(s.key_expiry.contains(&(state.filed, *slot)));
            total += state.values.len();
        }
        assert_eq!(total, s.values);
        assert_eq!(s.value_expiry.len(), s.values);
        assert_eq!(s.key_expiry.len(), s.keys.len());
        assert!(s.values <= s.max_values);
        assert!(s.keys.len() <= s.max_keys);
        let earliest = s
            .keys
            .values()
            .flat_map(|k| k.values.iter().map(|e| e.expires).chain([k.filed]))
            .min();
        assert_eq!(s.next_expiry(), earliest);
    }

    #[test]
    fn fingerprint_is_deterministic_sha1_prefix() {
        // SHA-1("abc") = a9993e36 4706816a ...
        assert_eq!(fingerprint(b"abc"), 0xa999_3e36_4706_816a);
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }

    #[test]
    fn is_full_needs_l_values_living_half_the_ttl() {
        let t = secs(60);
        assert!(!is_full([info(1, 30), info(2, 30), info(3, 30)], 4, 9, t));
        assert!(is_full(
            [info(1, 30), info(2, 30), info(3, 30), info(4, 30)],
            4,
            9,
            t
        ));
        // One of them lives less than T/2: not full.
        assert!(!is_full(
            [info(1, 30), info(2, 30), info(3, 30), info(4, 29)],
            4,
            9,
            t
        ));
        // Short-lived values do not count, however many.
        assert!(!is_full([info(1, 10); 10], 4, 9, t));
        // Odd TTLs: 2·remaining ≥ T, no rounding of T/2.
        assert!(!is_full([info(1, 30)], 1, 9, secs(61)));
        assert!(is_full([info(1, 31)], 1, 9, secs(61)));
        assert!(is_full(std::iter::empty::<StoredInfo>(), 0, 9, t));
        // Works over references too.
        let list = [info(1, 40), info(2, 40)];
        assert!(is_full(list.iter(), 2, 9, t));
    }

    #[test]
    fn keep_stores_without_counting_a_put() {
        let cfg = DshtConfig {
            beta: 1,
            ..DshtConfig::default()
        };
        let mut st = Store::new(&cfg);
        let k = Id::hash("t", b"keep");
        let now = Instant::from_millis(1000);
        for i in 0..cfg.l as u8 {
            assert_eq!(
                st.keep(now, 0, k, Bytes::from(vec![i]), Duration::from_secs(60)),
                StoreResult::Ok
            );
        }
        // The full rule still applies to kept values.
        let z = Bytes::from_static(b"z");
        assert_eq!(
            st.keep(now, 0, k, z, Duration::from_secs(60)),
            StoreResult::Full
        );
        assert!(
            !st.is_loaded(now, 0, k),
            "kept values are not puts traversing the node"
        );
        assert_eq!(st.values_for(now, 0, k), cfg.l);
        st.store(now, 0, k, Bytes::from_static(b"x"), Duration::from_secs(1));
        st.store(now, 0, k, Bytes::from_static(b"y"), Duration::from_secs(1));
        assert!(st.is_loaded(now, 0, k));
    }

    #[test]
    fn full_for_any_counts_the_inserters_own_value() {
        let t = Duration::from_secs(100);
        let list = [
            StoredInfo {
                fingerprint: 1,
                ttl_secs: 90,
            },
            StoredInfo {
                fingerprint: 2,
                ttl_secs: 90,
            },
        ];
        assert!(!is_full(list, 2, 1, t));
        assert!(is_full_for_any(list, 2, t));
        assert!(!is_full_for_any(list, 3, t));
        assert!(!is_full_for_any(
            [StoredInfo {
                fingerprint: 1,
                ttl_secs: 40
            }; 2],
            2,
            t
        ));
    }

    #[test]
    fn is_full_excludes_own_value() {
        let t = secs(60);
        let list = [info(1, 100), info(2, 100), info(7, 100)];
        assert!(is_full(list, 3, 9, t));
        assert!(!is_full(list, 3, 7, t));
    }

    #[test]
    fn store_full_follows_half_ttl_rule() {
        let mut s = Store::new(&config(2, 100, 10, 10));
        let k = key(1);
        assert_eq!(s.store(at(0), 0, k, val("a"), secs(100)), StoreResult::Ok);
        assert_eq!(s.store(at(0), 0, k, val("b"), secs(100)), StoreResult::Ok);
        // Two values living 100 s ≥ 200/2: full for a 200 s TTL.
        assert_eq!(s.store(at(0), 0, k, val("c"), secs(200)), StoreResult::Full);
        assert_eq!(values(&s, at(0), 0, k).len(), 2);
        // At t=1 they have 99 s left < 100: not full, and the soonest goes.
        assert_eq!(s.store(at(1), 0, k, val("c"), secs(200)), StoreResult::Ok);
        assert_eq!(values(&s, at(1), 0, k), vec![val("c"), val("b")]);
        assert_eq!(s.stats().evicted, 1);
        assert_eq!(s.stats().refused_full, 1);
        check_invariants(&s);
    }

    #[test]
    fn store_full_rounds_remaining_down_to_whole_seconds() {
        let mut s = Store::new(&config(1, 100, 10, 10));
        let k = key(1);
        assert_eq!(s.store(at(0), 0, k, val("a"), secs(50)), StoreResult::Ok);
        // At 0.5 s, 49.5 s are left, reported as 49 s.
        let t = Instant::from_millis(500);
        let probe = s.clone().probe_put(t, 0, k);
        assert_eq!(probe.stored[0].ttl_secs, 49);
        assert!(!is_full(&probe.stored, 1, fingerprint(b"b"), secs(99)));
        // 49 s ≥ 98/2, full; the exact 49.5 s would be full for 99 s but the
        // whole-second rule says not full, and the store agrees with the probe.
        assert!(is_full(&probe.stored, 1, fingerprint(b"b"), secs(98)));
        assert_eq!(
            s.clone().store(t, 0, k, val("b"), secs(98)),
            StoreResult::Full
        );
        assert_eq!(s.store(t, 0, k, val("b"), secs(99)), StoreResult::Ok);
        check_invariants(&s);
    }

    #[test]
    fn refresh_extends_never_shortens() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        let k = key(1);
        assert_eq!(s.store(at(0), 0, k, val("a"), secs(20)), StoreResult::Ok);
        assert_eq!(s.store(at(1), 0, k, val("a"), secs(3600)), StoreResult::Ok);
        assert_eq!(s.next_expiry(), Some(at(3601)));
        // A shorter re-store does not shorten it.
        assert_eq!(s.store(at(2), 0, k, val("a"), secs(5)), StoreResult::Ok);
        assert_eq!(s.values_for(at(3000), 0, k), 1);
        assert_eq!(s.len_values(), 1);
        let st = s.stats();
        assert_eq!((st.stored, st.refreshed), (1, 2));
        check_invariants(&s);
    }

    #[test]
    fn refresh_of_held_value_succeeds_when_full_for_others() {
        let mut s = Store::new(&config(2, 0, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(100));
        s.store(at(0), 0, k, val("b"), secs(100));
        assert_eq!(
            s.store(at(0), 0, k, val("c"), secs(100)),
            StoreResult::Loaded
        );
        assert_eq!(s.store(at(0), 0, k, val("a"), secs(100)), StoreResult::Ok);
    }

    #[test]
    fn ttl_is_clamped_to_max_ttl() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        s.store(at(0), 0, key(1), val("a"), secs(1_000_000));
        assert_eq!(s.next_expiry(), Some(at(3600)));
    }

    #[test]
    fn zero_ttl_stores_nothing() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        assert_eq!(
            s.store(at(5), 0, key(1), val("a"), Duration::ZERO),
            StoreResult::Ok
        );
        assert_eq!(s.len_values(), 0);
        assert_eq!(s.stats().stored, 0);
        // The traversal itself was counted.
        assert_eq!(s.len_keys(), 1);
        check_invariants(&s);
    }

    #[test]
    fn oversized_value_is_refused() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        let big = Bytes::from(vec![0u8; 17]);
        assert_eq!(s.store(at(0), 0, key(1), big, secs(10)), StoreResult::Full);
        assert_eq!(s.len_keys(), 0);
        assert_eq!(s.stats().refused_invalid, 1);
    }

    #[test]
    fn loaded_after_more_than_beta_puts() {
        let mut s = Store::new(&config(4, 3, 10, 10));
        let k = key(1);
        for i in 0..3 {
            assert!(!s.probe_put(at(i), 0, k).loaded);
        }
        // The fourth put in the minute: more than beta = 3.
        assert!(s.probe_put(at(3), 0, k).loaded);
        assert!(s.is_loaded(at(3), 0, k));
        // Other levels and keys are separate.
        assert!(!s.is_loaded(at(3), 1, k));
        assert!(!s.is_loaded(at(3), 0, key(2)));
        check_invariants(&s);
    }

    #[test]
    fn loaded_window_slides() {
        let mut s = Store::new(&config(4, 2, 10, 10));
        let k = key(1);
        s.probe_put(at(0), 0, k);
        s.probe_put(at(30), 0, k);
        assert!(s.probe_put(at(59), 0, k).loaded);
        // At 60 the put of t=0 has left the window.
        assert!(!s.is_loaded(at(60), 0, k));
        assert!(s.probe_put(at(61), 0, k).loaded); // 30, 59, 61
        assert_eq!(s.keys.get(&(0, k)).map(|st| st.puts.len()), Some(3));
        assert!(!s.is_loaded(at(90), 0, k));
        assert!(!s.probe_put(at(200), 0, k).loaded);
    }

    #[test]
    fn stores_count_as_puts_and_gets_do_not() {
        let mut s = Store::new(&config(4, 1, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(100));
        for _ in 0..10 {
            assert_eq!(s.get(at(0), 0, k, 8).count(), 1);
        }
        assert!(!s.is_loaded(at(0), 0, k));
        assert!(s.probe_put(at(1), 0, k).loaded);
    }

    #[test]
    fn refused_loaded_only_when_also_full() {
        let mut s = Store::new(&config(1, 0, 10, 10));
        let k = key(1);
        // beta = 0: every put makes the key loaded, but not full yet.
        assert_eq!(s.store(at(0), 0, k, val("a"), secs(100)), StoreResult::Ok);
        assert!(s.is_loaded(at(0), 0, k));
        assert_eq!(
            s.store(at(0), 0, k, val("b"), secs(100)),
            StoreResult::Loaded
        );
        let mut s = Store::new(&config(1, 5, 10, 10));
        s.store(at(0), 0, k, val("a"), secs(100));
        assert_eq!(s.store(at(0), 0, k, val("b"), secs(100)), StoreResult::Full);
        assert_eq!((s.stats().refused_full, s.stats().refused_loaded), (1, 0));
    }

    #[test]
    fn eviction_within_key_drops_soonest_and_caps_at_l() {
        let mut s = Store::new(&config(3, 100, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(10));
        s.store(at(0), 0, k, val("b"), secs(30));
        s.store(at(0), 0, k, val("c"), secs(20));
        assert_eq!(s.store(at(0), 0, k, val("d"), secs(40)), StoreResult::Ok);
        assert_eq!(values(&s, at(0), 0, k), vec![val("d"), val("b"), val("c")]);
        assert_eq!(s.store(at(0), 0, k, val("e"), secs(50)), StoreResult::Ok);
        assert_eq!(values(&s, at(0), 0, k), vec![val("e"), val("d"), val("b")]);
        assert_eq!(s.stats().evicted, 2);
        check_invariants(&s);
    }

    #[test]
    fn global_value_bound_evicts_soonest_or_refuses() {
        let mut s = Store::new(&config(4, 100, 10, 2));
        s.store(at(0), 0, key(1), val("a"), secs(10));
        s.store(at(0), 1, key(2), val("b"), secs(50));
        // Expires after "a" would: "a" goes.
        assert_eq!(
            s.store(at(0), 0, key(3), val("c"), secs(20)),
            StoreResult::Ok
        );
        assert_eq!(s.values_for(at(0), 0, key(1)), 0);
        assert_eq!(s.len_values(), 2);
        // Expires before everything held: refused.
        assert_eq!(
            s.store(at(0), 0, key(4), val("d"), secs(5)),
            StoreResult::Full
        );
        assert_eq!(s.values_for(at(0), 0, key(4)), 0);
        let st = s.stats();
        assert_eq!((st.evicted, st.refused_full, st.values), (1, 1, 2));
        check_invariants(&s);
    }

    #[test]
    fn global_key_bound_counts_counter_only_keys() {
        let mut s = Store::new(&config(4, 100, 2, 10));
        s.probe_put(at(0), 0, key(1)); // counter-only, expires at 60
        s.store(at(0), 0, key(2), val("b"), secs(100));
        assert_eq!(s.len_keys(), 2);
        // A probe's entry would expire at 61 > 60: key 1 is evicted.
        s.probe_put(at(1), 0, key(3));
        assert!(s.keys.contains_key(&(0, key(3))));
        assert!(!s.keys.contains_key(&(0, key(1))));
        // Now keys expire at 61 and 100; a probe at 1 would expire at 61: no room.
        s.probe_put(at(1), 0, key(4));
        assert!(!s.keys.contains_key(&(0, key(4))));
        assert_eq!(s.stats().untracked_puts, 1);
        // A store for a new key living longer than key 3 evicts it.
        assert_eq!(
            s.store(at(1), 0, key(5), val("e"), secs(200)),
            StoreResult::Ok
        );
        assert!(!s.keys.contains_key(&(0, key(3))));
        // One that would not outlive any key entry is refused.
        assert_eq!(
            s.store(at(1), 0, key(6), val("f"), secs(10)),
            StoreResult::Full
        );
        let st = s.stats();
        assert_eq!((st.evicted_keys, st.untracked_puts, st.keys), (2, 2, 2));
        check_invariants(&s);
    }

    #[test]
    fn counter_only_key_expires_when_newest_put_leaves_window() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        s.probe_put(at(0), 0, key(1));
        s.probe_put(at(10), 0, key(1));
        assert_eq!(s.next_expiry(), Some(at(70)));
        s.expire(at(69));
        assert_eq!(s.len_keys(), 1);
        s.expire(at(70));
        assert_eq!(s.len_keys(), 0);
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn expiry_removes_values_and_reports_next_deadline() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(100));
        s.store(at(0), 0, k, val("b"), secs(200));
        s.store(at(0), 2, k, val("c"), secs(30));
        assert_eq!(s.next_expiry(), Some(at(30)));
        s.expire(at(30));
        assert_eq!(s.len_values(), 2);
        // Level 2's key is gone once its put counter left the window too.
        assert_eq!(s.next_expiry(), Some(at(60)));
        s.expire(at(60));
        assert_eq!(s.len_keys(), 1);
        assert_eq!(s.next_expiry(), Some(at(100)));
        s.expire(at(150));
        assert_eq!(values(&s, at(150), 0, k), vec![val("b")]);
        s.expire(at(200));
        assert_eq!(
            (s.len_keys(), s.len_values(), s.next_expiry()),
            (0, 0, None)
        );
        assert_eq!(s.stats().expired, 3);
        check_invariants(&s);
    }

    #[test]
    fn expired_values_are_invisible_before_expire_runs() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(10));
        s.store(at(0), 0, k, val("b"), secs(20));
        assert_eq!(values(&s, at(10), 0, k), vec![val("b")]);
        assert_eq!(s.values_for(at(10), 0, k), 1);
        assert_eq!(s.values_for(at(20), 0, k), 0);
        assert_eq!(s.get(at(25), 0, k, 8).count(), 0);
        assert_eq!(s.len_values(), 2);
    }

    #[test]
    fn get_returns_longest_lived_first_up_to_max() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        let k = key(1);
        s.store(at(0), 0, k, val("a"), secs(20));
        s.store(at(0), 0, k, val("b"), secs(40));
        s.store(at(0), 0, k, val("c"), secs(30));
        assert_eq!(values(&s, at(0), 0, k), vec![val("b"), val("c"), val("a")]);
        let two: Vec<_> = s.get(at(0), 0, k, 2).cloned().collect();
        assert_eq!(two, vec![val("b"), val("c")]);
        // A refresh moves a value forward.
        s.store(at(0), 0, k, val("a"), secs(50));
        assert_eq!(values(&s, at(0), 0, k), vec![val("a"), val("b"), val("c")]);
        assert_eq!(s.get(at(0), 1, k, 8).count(), 0);
    }

    #[test]
    fn probe_summary_is_sorted_and_capped() {
        let mut s = Store::new(&config(20, 100, 10, 100));
        let k = key(1);
        for i in 0..20u64 {
            s.store(at(0), 0, k, Bytes::from(vec![i as u8]), secs(100 + i));
        }
        let p = s.probe_put(at(0), 0, k);
        assert_eq!(p.stored.len(), MAX_STORED);
        assert_eq!(p.stored[0], info(fingerprint(&[19]), 119));
        assert!(p.stored.windows(2).all(|w| w[0].ttl_secs >= w[1].ttl_secs));
    }

    #[test]
    fn probe_prediction_is_optimistic_when_l_exceeds_max_stored() {
        // l = 20 > MAX_STORED: the summary shows 16 of the 20 values, so the
        // inserter predicts "not full" while the store is full. It never
        // errs the other way.
        let mut s = Store::new(&config(20, 100, 10, 100));
        let k = key(1);
        for i in 0..20u8 {
            s.store(at(0), 0, k, Bytes::from(vec![i]), secs(100));
        }
        let new = Bytes::from_static(b"new");
        let p = s.clone().probe_put(at(0), 0, k);
        assert!(!is_full(&p.stored, 20, fingerprint(&new), secs(100)));
        assert_eq!(s.store(at(0), 0, k, new, secs(100)), StoreResult::Full);
    }

    #[test]
    fn remove_level_drops_only_that_level() {
        let mut s = Store::new(&config(4, 100, 10, 10));
        s.store(at(0), 0, key(1), val("a"), secs(10));
        s.store(at(0), 1, key(1), val("b"), secs(10));
        s.store(at(0), 1, key(2), val("c"), secs(10));
        s.probe_put(at(0), 2, key(3));
        s.remove_level(1);
        assert_eq!((s.len_keys(), s.len_values()), (2, 1));
        assert_eq!(values(&s, at(0), 0, key(1)), vec![val("a")]);
        assert_eq!(s.get(at(0), 1, key(1), 8).count(), 0);
        check_invariants(&s);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Advance(u64),
        Probe(Level, u8),
        Store(Level, u8, u8, u64),
        Get(Level, u8, usize),
        Expire,
        RemoveLevel(Level),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..8_000).prop_map(Op::Advance),
            3 => (0u8..3, 0u8..4).prop_map(|(l, k)| Op::Probe(l, k)),
            6 => (0u8..3, 0u8..4, 0u8..6, 0u64..40_000).prop_map(|(l, k, v, t)| Op::Store(l, k, v, t)),
            3 => (0u8..3, 0u8..4, 0usize..4).prop_map(|(l, k, m)| Op::Get(l, k, m)),
            1 => Just(Op::Expire),
            1 => (0u8..3).prop_map(Op::RemoveLevel),
        ]
    }

    fn pool(v: u8) -> Bytes {
        // Value 5 is longer than max_value_len.
        if v == 5 {
            Bytes::from(vec![b'x'; 9])
        } else {
            Bytes::from(vec![b'v', v])
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn store_invariants_hold(
            l in 1usize..=3,
            beta in 0u32..=3,
            max_keys in 1usize..=5,
            max_values in 1usize..=6,
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let cfg = DshtConfig {
                l,
                beta,
                beta_window: secs(5),
                max_keys,
                max_values,
                max_value_len: 8,
                max_ttl: secs(30),
                ..DshtConfig::default()
            };
            let mut s = Store::new(&cfg);
            let mut now = Instant::ZERO;
            // The latest expiry each value was granted by an Ok store: a value
            // may never be returned past it.
            let mut granted: BTreeMap<(Level, u8, Bytes), Instant> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Probe(lv, k) => {
                        let p = s.probe_put(now, lv, key(k));
                        prop_assert!(p.stored.len() <= l);
                        prop_assert_eq!(p.loaded, s.is_loaded(now, lv, key(k)));
                    }
                    Op::Store(lv, k, v, ttl_ms) => {
                        let value = pool(v);
                        let ttl = Duration::from_millis(ttl_ms);
                        let slot = (lv, key(k));
                        let mut pre = s.clone();
                        pre.expire(now);
                        let held = pre.get(now, lv, key(k), usize::MAX).any(|x| *x == value);
                        let pressure = pre.len_values() >= max_values
                            || (!pre.keys.contains_key(&slot) && pre.len_keys() >= max_keys);
                        // What an inserter would predict from a probe at this instant.
                        let probe = pre.clone().probe_put(now, lv, key(k));
                        let predicted = is_full(&probe.stored, l, fingerprint(&value), ttl.min(cfg.max_ttl));

                        let r = s.store(now, lv, key(k), value.clone(), ttl);
                        let present = s.get(now, lv, key(k), usize::MAX).any(|x| *x == value);
                        if value.len() > cfg.max_value_len {
                            prop_assert_eq!(r, StoreResult::Full);
                        } else if held {
                            prop_assert!(!predicted);
                            prop_assert_eq!(r, StoreResult::Ok);
                        } else if predicted {
                            // Exact agreement (l ≤ MAX_STORED): full ⇒ refused,
                            // and Loaded iff the probe reported loaded.
                            let want = if probe.loaded { StoreResult::Loaded } else { StoreResult::Full };
                            prop_assert_eq!(r, want);
                        } else {
                            // Not full: only a global bound may refuse.
                            prop_assert!(r == StoreResult::Ok || (r == StoreResult::Full && pressure));
                        }
                        if r == StoreResult::Ok {
                            if now + ttl.min(cfg.max_ttl) > now {
                                prop_assert!(present);
                                let g = granted.entry((lv, k, value)).or_insert(now);
                                *g = (*g).max(now + ttl.min(cfg.max_ttl));
                            }
                        } else {
                            prop_assert!(!present, "a refused store added its value");
                        }
                    }
                    Op::Get(lv, k, max) => {
                        let got: Vec<Bytes> = s.get(now, lv, key(k), max).cloned().collect();
                        prop_assert!(got.len() <= max);
                        prop_assert!(got.len() <= s.values_for(now, lv, key(k)));
                        for v in got {
                            let until = granted.get(&(lv, k, v)).copied();
                            prop_assert!(until.is_some_and(|t| now < t), "expired or never-stored value returned");
                        }
                    }
                    Op::Expire => {
                        s.expire(now);
                        prop_assert!(s.next_expiry().is_none_or(|t| t > now));
                    }
                    Op::RemoveLevel(lv) => {
                        s.remove_level(lv);
                        prop_assert!(s.keys.keys().all(|(x, _)| *x != lv));
                    }
                }
                check_invariants(&s);
                prop_assert!(s.len_values() <= max_values);
                prop_assert!(s.len_keys() <= max_keys);
                let st = s.stats();
                prop_assert_eq!((st.keys, st.values), (s.len_keys(), s.len_values()));
            }
        }
    }
}
