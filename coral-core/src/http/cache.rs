//! The object cache: complete responses by URL under a byte budget, evicted
//! with S3-FIFO (Yang et al., SOSP 2023).
//!
//! Why S3-FIFO: a CDN proxy's traffic is dominated by one-hit wonders (a
//! crawler, a scan, a link clicked once). S3-FIFO admits new objects into a
//! small FIFO (10% of the bytes); only objects hit again while there move to
//! the main FIFO, so a scan flushes the small queue and leaves the popular
//! objects in the main queue untouched. Objects evicted from the small queue
//! leave a *ghost* (their key only), and an object re-inserted while its
//! ghost is remembered goes straight to the main queue. The main queue is a
//! CLOCK: a hit sets a small counter instead of moving anything, so a hit
//! costs one map lookup and no list surgery, unlike LRU.
//!
//! Invariant (proptested): the bytes held never exceed the budget.
//!
//! The budget is memory, not body bytes: each object is charged its body,
//! its header fields with their allocations, and a fixed share for the
//! object, its slot, its URL and its queue and ghost entries (measured:
//! a cache full of 1 KB objects otherwise took twice its budget). Ghosts
//! are 64-bit fingerprints of the URL, not the URL: a collision only
//! promotes an object to the main queue early.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::parse::ResponseHead;
use crate::time::Instant;

/// A complete stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// The stored head (hop-by-hop fields and cookies already removed).
    pub head: ResponseHead,
    /// The whole body.
    pub body: Bytes,
    /// When the response (or its last revalidation) arrived.
    pub stored_at: Instant,
    /// Its age when it arrived.
    pub initial_age: Duration,
    /// Its freshness lifetime.
    pub lifetime: Duration,
    /// Request fields named by `Vary` and the values the stored response was
    /// chosen for (RFC 9111 §4.1).
    pub vary: Vec<(String, Option<String>)>,
}

/// Memory of one header field beyond its bytes: the `(String, Vec<u8>)`
/// pair and the allocator's overhead of its two buffers.
const FIELD_OVERHEAD: usize = 48 + 2 * 16;
/// Memory of one object beyond its body and fields: the `Arc<Object>`, the
/// shared handle of its body, the `Vary` list, rounding of the body's
/// allocation, and the allocator's fragmentation between long-lived
/// objects and per-request buffers (measured on glibc with 1 KB objects:
/// about 350 bytes each beyond the structures above).
const OBJECT_OVERHEAD: usize = 512;
/// Memory of one cache entry beyond its object and URL bytes: both map
/// entries at their load factor, the URL's `Arc`, queue and ghost entries.
const ENTRY_OVERHEAD: usize = 192;

impl Object {
    /// Bytes of memory this object is charged against the budget.
    pub fn size(&self) -> usize {
        let head: usize = self
            .head
            .headers
            .0
            .iter()
            .map(|(n, v)| n.len() + v.len() + FIELD_OVERHEAD)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len) + FIELD_OVERHEAD)
            .sum();
        self.body.len() + head + vary + OBJECT_OVERHEAD
    }

    /// Its current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + (now - self.stored_at)
    }

    /// Whether it is still fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Freshness left at `now`.
    pub fn fresh_for(&self, now: Instant) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }
}

/// Counters of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Objects held.
    pub objects: usize,
    /// Bytes charged.
    pub bytes: usize,
    /// The budget.
    pub budget: usize,
    /// Objects evicted to make room.
    pub evictions: u64,
    /// Objects refused because they alone exceed the small queue's share.
    pub refused: u64,
}

struct Slot {
    url: Arc<str>,
    obj: Arc<Object>,
    size: usize,
    freq: u8,
    main: bool,
}

/// The object store.
pub struct Cache {
    budget: usize,
    small_bytes: usize,
    used: usize,
    next_id: u64,
    by_url: HashMap<Arc<str>, u64>,
    slots: HashMap<u64, Slot>,
    small: VecDeque<u64>,
    main: VecDeque<u64>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64>,
    evictions: u64,
    refused: u64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Cache {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            small_bytes: 0,
            used: 0,
            next_id: 0,
            by_url: HashMap::new(),
            slots: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
            evictions: 0,
            refused: 0,
        }
    }

    /// The object stored for `url`, counting a hit.
    pub fn get(&mut self, url: &str) -> Option<Arc<Object>> {
        let id = self.by_url.get(url)?;
        let slot = self.slots.get_mut(id)?;
        slot.freq = (slot.freq + 1).min(3);
        Some(Arc::clone(&slot.obj))
    }

    /// The object stored for `url`, without counting a hit.
    pub fn peek(&self, url: &str) -> Option<&Arc<Object>> {
        self.by_url
            .get(url)
            .and_then(|id| self.slots.get(id))
            .map(|s| &s.obj)
    }

    /// Stores `obj` under `url`, replacing any older copy. Returns the URLs
    /// evicted to make room (the caller withdraws their DSHT references);
    /// `url` itself is among them when it could not be stored.
    pub fn insert(&mut self, url: &str, obj: Arc<Object>) -> Vec<String> {
        let size = Self::charge(url, &obj);
        let freq = self.remove_slot(url).map_or(0, |f| f.min(1));
        let mut evicted = Vec::new();
        if size > self.budget {
            self.refused += 1;
            evicted.push(url.to_owned());
            return evicted;
        }
        while self.used + size > self.budget {
            match self.evict_one() {
                Some(u) => evicted.push(u),
                None => break,
            }
        }
        let key: Arc<str> = Arc::from(url);
        // Its queue entry stays; popping it later removes nothing.
        let main = self.ghost_set.remove(&fingerprint(url));
        let id = self.next_id;
        self.next_id += 1;
        self.by_url.insert(Arc::clone(&key), id);
        self.slots.insert(
            id,
            Slot {
                url: key,
                obj,
                size,
                freq,
                main,
            },
        );
        if main {
            self.main.push_back(id);
        } else {
            self.small.push_back(id);
            self.small_bytes += size;
        }
        self.used += size;
        evicted
    }

    /// Replaces the stored object for `url` (a revalidation) keeping its place.
    pub fn update(&mut self, url: &str, obj: Arc<Object>) -> Vec<String> {
        self.insert(url, obj)
    }

    /// Removes `url`; whether it was stored.
    pub fn remove(&mut self, url: &str) -> bool {
        self.remove_slot(url).is_some()
    }

    fn remove_slot(&mut self, url: &str) -> Option<u8> {
        let id = self.by_url.remove(url)?;
        let slot = self.slots.remove(&id)?;
        self.used -= slot.size;
        if !slot.main {
            self.small_bytes -= slot.size;
        }
        // Its queue entry is now stale and skipped when reached.
        Some(slot.freq)
    }

    fn evict_one(&mut self) -> Option<String> {
        loop {
            let from_small = self.small_bytes > self.budget / 10 || self.main.is_empty();
            let id = if from_small {
                self.small.pop_front().or_else(|| self.main.pop_front())?
            } else {
                self.main.pop_front()?
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.main {
                if slot.freq > 0 {
                    slot.freq -= 1;
                    self.main.push_back(id);
                    continue;
                }
            } else if slot.freq > 0 {
                // Hit while on probation: promote.
                slot.main = true;
                slot.freq = 0;
                self.small_bytes -= slot.size;
                self.main.push_back(id);
                continue;
            }
            let slot = self.slots.remove(&id)?;
            self.by_url.remove(&slot.url);
            self.used -= slot.size;
            if !slot.main {
                self.small_bytes -= slot.size;
                let g = fingerprint(&slot.url);
                self.ghost_set.insert(g);
                self.ghost.push_back(g);
                // The ghost queue remembers about as many keys as the cache holds objects.
                while self.ghost.len() > self.slots.len().max(64) {
                    if let Some(g) = self.ghost.pop_front() {
                        self.ghost_set.remove(&g);
                    }
                }
            }
            self.evictions += 1;
            return Some(slot.url.to_string());
        }
    }

    /// Bytes of memory `obj` stored under `url` is charged.
    pub fn charge(url: &str, obj: &Object) -> usize {
        obj.size() + url.len() + ENTRY_OVERHEAD
    }

    /// Bytes charged.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            objects: self.slots.len(),
            bytes: self.used,
            budget: self.budget,
            evictions: self.evictions,
            refused: self.refused,
        }
    }

    /// Every stored URL, sorted (for reference renewal and tests).
    pub fn urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self.slots.values().map(|s| s.url.to_string()).collect();
        v.sort();
        v
    }
}

/// A ghost's key: the URL's hash with the standard library's fixed keys
/// (`DefaultHasher::new`, unlike a `HashMap`'s seeded one), so runs replay.
fn fingerprint(url: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::Headers;
    use proptest::prelude::*;

    fn obj(len: usize) -> Arc<Object> {
        Arc::new(Object {
            head: ResponseHead {
                status: 200,
                version: 1,
                headers: Headers::default(),
            },
            body: Bytes::from(vec![7u8; len]),
            stored_at: Instant::ZERO,
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            vary: Vec::new(),
        })
    }

    #[test]
    fn a_scan_does_not_flush_popular_objects() {
        let per = Cache::charge("hot00", &obj(1000));
        let mut c = Cache::new(100 * per);
        for i in 0..50 {
            c.insert(&format!("hot{i}"), obj(1000));
        }
        for _ in 0..2 {
            for i in 0..50 {
                assert!(c.get(&format!("hot{i}")).is_some());
            }
        }
        for i in 0..1000 {
            c.insert(&format!("scan{i}"), obj(1000));
        }
        let hot = (0..50)
            .filter(|i| c.peek(&format!("hot{i}")).is_some())
            .count();
        assert!(hot >= 45, "only {hot} of 50 hot objects survived a scan");
        assert!(c.used() <= 100 * per);
        assert!(c.stats().evictions > 900);
    }

    #[test]
    fn too_big_objects_are_refused_and_replacement_recharges() {
        let mut c = Cache::new(10_000);
        assert_eq!(c.insert("big", obj(20_000)), vec!["big".to_owned()]);
        c.insert("a", obj(1000));
        c.insert("a", obj(2000));
        assert_eq!(c.used(), Cache::charge("a", &obj(2000)));
        assert!(c.remove("a"));
        assert_eq!(c.used(), 0);
    }

    proptest! {
        #[test]
        fn the_budget_is_never_exceeded(
            budget in 1000usize..50_000,
            ops in proptest::collection::vec((0u8..3, 0u16..60, 0usize..8000), 1..400),
        ) {
            let mut c = Cache::new(budget);
            for (op, k, len) in ops {
                let url = format!("u{k}");
                match op {
                    0 => { c.insert(&url, obj(len)); }
                    1 => { c.get(&url); }
                    _ => { c.remove(&url); }
                }
                prop_assert!(c.used() <= budget);
                let sum: usize = c.slots.values().map(|s| s.size).sum();
                prop_assert_eq!(sum, c.used());
                prop_assert_eq!(c.by_url.len(), c.slots.len());
            }
        }
    }
}
