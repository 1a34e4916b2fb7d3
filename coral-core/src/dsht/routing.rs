//! The k-bucket routing table of one DSHT level, with per-contact RTT estimates.
//!
//! Each Coral node runs one Kademlia-style DSHT per cluster level and keeps one
//! [`RoutingTable`] for each (spec §1.3). The table does not know its level;
//! the node owns one per level and feeds each the traffic of that level.
//!
//! # Buckets
//!
//! Bucket `i` holds contacts whose XOR distance from our own id has its
//! highest set bit at position `i` ([`Id::bucket_index`]), so there are
//! [`ID_BITS`] buckets, and each holds at most `k` contacts (`k = 8` by
//! default, spec open question 8). This is the fixed-array approximation of
//! Kademlia's split-on-demand tree that libp2p-kad also uses. An empty bucket
//! costs a few machine words and no heap.
//!
//! Contacts in a bucket are ordered least-recently-seen first. When a new
//! contact is heard from and its bucket is full, Kademlia's rule applies
//! (spec §1.5): the least-recently-seen contact is evicted only once it has
//! failed a ping, because long-lived nodes are the ones most likely to stay.
//! The newcomer waits as the bucket's single *pending* replacement and
//! [`RoutingTable::observe`] asks the node to ping the oldest contact
//! ([`Observe::PingOldest`]). If the ping (or any other exchange) shows the old
//! contact alive, the newcomer is discarded; if it times out, the old contact
//! is replaced at once ([`Failure::Replaced`]). Independently of pings, a
//! contact whose RPCs time out `max_failures` times in a row is dropped
//! (spec §8, open question 9: three by default) and a pending contact, if any,
//! takes its place. A ping that the driver never resolves is considered lost
//! after `STALE_PING` (30 s, far beyond any RPC timeout) and a later
//! newcomer triggers a fresh ping, so a bucket cannot wedge.
//!
//! # Timeouts
//!
//! Each entry carries an [`RttEstimator`], the TCP retransmission-timer
//! estimator of RFC 6298. Coral only says its timeouts are "aggressive"
//! (spec §8); open question 9 settles on a per-peer timeout of
//! `clamp(SRTT + 4·RTTVAR, 100 ms, 2 s)`, which [`RoutingTable::rto`] gives,
//! and open question 8 on hedging a lookup RPC with a second one after
//! `2 × SRTT`, which [`RoutingTable::hedge_after`] gives. Unknown peers get the
//! upper bound: being slow to give up on a stranger is cheaper than
//! flooding it with retries.
//!
//! # Answering a halving lookup
//!
//! Coral's lookup does not jump greedily to the closest known node: the
//! requester names a *target distance* (the next halving of its distance to
//! the key) and the remote node answers with contacts whose distance to the
//! key is nearest that target (spec §1.4), so lookups for one key from
//! everywhere converge through the same nodes at distances ≈ D/2, D/4, …,
//! which is where sloppy storage leaves values. A reply made only of
//! target-distance contacts can, however, starve the lookup of the one thing
//! it must eventually reach: the node closest to the key. So
//! [`RoutingTable::nearest_to_distance`] returns a mix: half the slots go to
//! the contacts nearest the target, the other half to the contacts closest to
//! the key. [`RoutingTable::closest`] is the plain Kademlia answer.
//!
//! This reply is computed for every lookup hop that reaches us, so it does
//! not scan the table. The contacts of one bucket all lie in one interval of
//! distances to the key, the intervals of different buckets are disjoint, and
//! their order follows from the bits of `d(own, key)` alone (`BucketOrder`).
//! Each half of the reply walks the populated buckets in order of the best
//! rank their interval allows and stops as soon as no bucket left can beat
//! what it holds; on a full table each half typically reads one or two
//! buckets.
//!
//! # Refresh and size
//!
//! Buckets no lookup has passed through for `bucket_refresh` are reported by
//! [`RoutingTable::stale_buckets`] so the node can look up a random id in
//! them ([`Id::random_in_bucket`]). [`RoutingTable::size_estimate`]
//! extrapolates the number of nodes in this level's DSHT from how densely
//! our own neighbourhood is populated (spec open question 6).
//!
//! Every output is computed from `Vec`s in a fixed order, so the same inputs
//! always give the same outputs.

use std::time::Duration;

use smallvec::SmallVec;

use crate::contact::Contact;
use crate::id::{Distance, ID_BITS, Id};
use crate::time::Instant;

/// How long a ping of a bucket's oldest contact may stay unresolved before a
/// newcomer may ask for another. The driver normally resolves a ping within
/// one RPC timeout (at most 2 s, twice with the retry); this only guards
/// against a ping the driver never reported, which would otherwise freeze the
/// bucket's membership.
const STALE_PING: Duration = Duration::from_secs(30);

/// A full bucket whose least recently seen contact was heard from this
/// recently turns a newcomer away without a ping: the ping would only
/// show the old contact alive, which keeps it. Without this, every message
/// from a stranger landing in a full bucket (in a busy network, most of
/// them) costs a ping.
const ALIVE_RECENTLY: Duration = Duration::from_secs(60);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `d` bounded to `[min, max]`; `max` wins when the bounds cross, so this
/// never panics.
fn clamp(d: Duration, min: Duration, max: Duration) -> Duration {
    d.max(min).min(max)
}

/// Smoothed round-trip time of one peer, as TCP computes it (RFC 6298 §2).
///
/// The first sample `r` sets `SRTT = r`, `RTTVAR = r/2`; each later one sets
/// `RTTVAR = 3/4·RTTVAR + 1/4·|SRTT − r|` and then `SRTT = 7/8·SRTT + 1/8·r`.
/// Arithmetic is in whole microseconds, rounding down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttEstimator {
    /// `(SRTT, RTTVAR)` in microseconds; `None` before the first sample.
    state: Option<(u64, u64)>,
}

impl RttEstimator {
    /// An estimator with no sample yet.
    pub const fn new() -> Self {
        Self { state: None }
    }

    /// Feeds one measured round-trip time.
    pub fn sample(&mut self, rtt: Duration) {
        let r = micros(rtt);
        self.state = Some(match self.state {
            None => (r, r / 2),
            Some((srtt, rttvar)) => {
                let diff = u128::from(srtt.abs_diff(r));
                let rttvar = (3 * u128::from(rttvar) + diff) / 4;
                let srtt = (7 * u128::from(srtt) + u128::from(r)) / 8;
                (
                    u64::try_from(srtt).unwrap_or(u64::MAX),
                    u64::try_from(rttvar).unwrap_or(u64::MAX),
                )
            }
        });
    }

    /// The smoothed round-trip time, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.state.map(|(s, _)| Duration::from_micros(s))
    }

    /// The round-trip time variation, once there is a sample.
    pub fn rttvar(&self) -> Option<Duration> {
        self.state.map(|(_, v)| Duration::from_micros(v))
    }

    /// The retransmission timeout `clamp(SRTT + 4·RTTVAR, min, max)`, or `max`
    /// before any sample (spec open question 9).
    pub fn rto(&self, min: Duration, max: Duration) -> Duration {
        match self.state {
            None => max,
            Some((s, v)) => clamp(
                Duration::from_micros(s.saturating_add(v.saturating_mul(4))),
                min,
                max,
            ),
        }
    }

    /// How long to wait before hedging an RPC with a second one:
    /// `clamp(factor × SRTT, min, max)`, or `max` before any sample
    /// (spec open question 8).
    pub fn hedge_after(&self, factor: u32, min: Duration, max: Duration) -> Duration {
        match self.state {
            None => max,
            Some((s, _)) => clamp(Duration::from_micros(s).saturating_mul(factor), min, max),
        }
    }
}

/// One contact in the routing table and what we know of its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// How to reach the node, as last heard.
    pub contact: Contact,
    /// Its round-trip time estimate.
    pub rtt: RttEstimator,
    /// RPCs to it that timed out since it last answered.
    pub failures: u8,
    /// When we last heard from it.
    pub last_seen: Instant,
}

impl Entry {
    fn new(contact: Contact, now: Instant) -> Self {
        Self {
            contact,
            rtt: RttEstimator::new(),
            failures: 0,
            last_seen: now,
        }
    }
}

/// What [`RoutingTable::observe`] did with a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observe {
    /// The contact was new and its bucket had room.
    Inserted,
    /// The contact was known; it is now the most recently seen of its bucket.
    Updated,
    /// The bucket is full. The contact waits as its pending replacement; the
    /// node must ping this contact, the bucket's least recently seen, and
    /// report the outcome with [`RoutingTable::record_success`] or
    /// [`RoutingTable::record_failure`].
    PingOldest(Contact),
    /// The bucket is full and its oldest contact is already being pinged; the
    /// contact replaced any earlier pending one and waits for that ping.
    Pending,
    /// The bucket is full and even its least recently seen contact was
    /// heard from within the last minute: the newcomer is turned away
    /// without a ping.
    Rejected,
    /// The contact is this node itself.
    Ignored,
}

/// What [`RoutingTable::record_failure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The id is not in the table.
    Unknown,
    /// The failure was counted; the contact stays.
    Counted,
    /// The contact reached `max_failures` and was removed (a pending
    /// replacement, if any, took its place).
    Dropped,
    /// The contact was its bucket's oldest, pinged on behalf of a newcomer:
    /// it was evicted and the newcomer inserted.
    Replaced,
}

/// Counters and gauges of one routing table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingStats {
    /// Contacts in the table.
    pub contacts: usize,
    /// Buckets holding at least one contact.
    pub buckets_used: usize,
    /// Buckets with a pending replacement (and so a ping outstanding).
    pub pending: usize,
    /// Contacts ever inserted, including promoted replacements.
    pub inserted: u64,
    /// Contacts evicted because they failed the ping a newcomer triggered.
    pub evicted: u64,
    /// Contacts dropped after `max_failures` consecutive timeouts.
    pub dropped: u64,
    /// Newcomers discarded without being inserted: the oldest contact proved
    /// alive, a newer newcomer took the pending slot, or the newcomer failed.
    pub rejected: u64,
}

/// A newcomer waiting for a full bucket's oldest contact to fail its ping.
#[derive(Clone, Debug)]
struct Replacement {
    contact: Contact,
    /// When the newcomer was last heard from.
    seen: Instant,
    /// The contact being pinged: the bucket's least recently seen.
    pinged: Id,
    /// When the ping was requested.
    ping_sent: Instant,
}

/// One k-bucket. A replacement exists only while the bucket is full, and
/// exactly while a ping of its oldest contact is outstanding.
#[derive(Clone, Debug)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Boxed so that an empty bucket stays a few words.
    replacement: Option<Box<Replacement>>,
    /// When a lookup last went through this bucket.
    touched: Instant,
}

impl Bucket {
    fn position(&self, id: &Id) -> Option<usize> {
        self.entries.iter().position(|e| e.contact.id == *id)
    }

    fn is_pinged(&self, id: &Id) -> bool {
        self.replacement.as_ref().is_some_and(|r| r.pinged == *id)
    }

    fn is_pending(&self, id: &Id) -> bool {
        self.replacement
            .as_ref()
            .is_some_and(|r| r.contact.id == *id)
    }

    /// Moves the pending contact, if any, into the bucket (which must have
    /// room). Returns whether one was inserted.
    fn promote(&mut self) -> bool {
        match self.replacement.take() {
            Some(r) => {
                // It was heard from more recently than the contact it
                // replaces; treating it as most recently seen keeps the
                // oldest, proven contacts at the front.
                self.entries.push(Entry::new(r.contact, r.seen));
                true
            }
            None => false,
        }
    }
}

/// Kademlia k-buckets for one DSHT level (spec §1.3). See the module doc.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: Id,
    k: usize,
    /// Always [`ID_BITS`] long; bucket `i` holds contacts whose distance has
    /// its highest set bit at `i`.
    buckets: Vec<Bucket>,
    /// Bit `i` is set exactly when bucket `i` holds a contact, so the reply
    /// path finds the populated buckets without looking at the empty ones.
    used: Words,
    len: usize,
    inserted: u64,
    evicted: u64,
    dropped: u64,
    rejected: u64,
}

impl RoutingTable {
    /// An empty table for the node `own`, with at most `k` contacts per
    /// bucket (`k` below 1 is taken as 1). Every bucket counts as refreshed
    /// at `now`.
    pub fn new(own: Id, k: usize, now: Instant) -> Self {
        let buckets = (0..ID_BITS)
            .map(|_| Bucket {
                entries: Vec::new(),
                replacement: None,
                touched: now,
            })
            .collect();
        Self {
            own,
            k: k.max(1),
            buckets,
            used: Words::ZERO,
            len: 0,
            inserted: 0,
            evicted: 0,
            dropped: 0,
            rejected: 0,
        }
    }

    /// The id of the node owning this table.
    pub fn own(&self) -> Id {
        self.own
    }

    /// Most contacts per bucket.
    pub fn k(&self) -> usize {
        self.k
    }

    fn bucket_of(&self, id: &Id) -> Option<&Bucket> {
        let i = self.own.bucket_index(id)?;
        self.buckets.get(i)
    }

    /// Brings the bit of `id`'s bucket in `used` up to date after a change
    /// of that bucket's membership.
    fn sync_used(&mut self, id: &Id) {
        if let Some(i) = self.own.bucket_index(id) {
            let filled = self.buckets.get(i).is_some_and(|b| !b.entries.is_empty());
            self.used = self.used.with_bit(i, filled);
        }
    }

    /// We heard from `contact` first-hand (it sent us a message or answered
    /// one), so it is alive.
    ///
    /// Call this only for first-hand evidence, not for contacts merely named
    /// in someone's reply: those enter the table once they answer. See
    /// [`Observe`] for the outcomes; on [`Observe::PingOldest`] the node must
    /// send the ping.
    pub fn observe(&mut self, contact: Contact, now: Instant) -> Observe {
        let k = self.k;
        let Some(bucket) = bucket_mut(&mut self.buckets, &self.own, &contact.id) else {
            return Observe::Ignored;
        };
        if let Some(pos) = bucket.position(&contact.id) {
            let mut e = bucket.entries.remove(pos);
            e.contact = contact;
            e.failures = 0;
            e.last_seen = now;
            bucket.entries.push(e);
            // Hearing from the pinged contact answers the ping: it is alive,
            // and Kademlia keeps the long-lived contact.
            let discarded = bucket.is_pinged(&contact.id);
            if discarded {
                bucket.replacement = None;
                self.rejected += 1;
            }
            return Observe::Updated;
        }
        if bucket.entries.len() < k {
            bucket.entries.push(Entry::new(contact, now));
            self.len += 1;
            self.inserted += 1;
            self.sync_used(&contact.id);
            return Observe::Inserted;
        }
        let Some((oldest, oldest_seen)) = bucket.entries.first().map(|e| (e.contact, e.last_seen))
        else {
            // Unreachable: a full bucket with k >= 1 has an oldest entry.
            return Observe::Pending;
        };
        if bucket.replacement.is_none()
            && now.saturating_duration_since(oldest_seen) < ALIVE_RECENTLY
        {
            // Every contact of the bucket was heard from within
            // ALIVE_RECENTLY: a ping would only confirm what we know, and
            // Kademlia keeps the old contact when it answers.
            self.rejected += 1;
            return Observe::Rejected;
        }
        match bucket.replacement.as_deref_mut() {
            Some(r) => {
                if r.contact.id != contact.id {
                    self.rejected += 1;
                }
                r.contact = contact;
                r.seen = now;
                if now.saturating_duration_since(r.ping_sent) < STALE_PING {
                    Observe::Pending
                } else {
                    r.pinged = oldest.id;
                    r.ping_sent = now;
                    Observe::PingOldest(oldest)
                }
            }
            None => {
                bucket.replacement = Some(Box::new(Replacement {
                    contact,
                    seen: now,
                    pinged: oldest.id,
                    ping_sent: now,
                }));
                Observe::PingOldest(oldest)
            }
        }
    }

    /// A reply came from `id`, with a round-trip time sample when the RPC was
    /// not retransmitted.
    ///
    /// Resets its failure count and makes it the most recently seen of its
    /// bucket. If it was being pinged on behalf of a newcomer, the newcomer is
    /// discarded: the old contact stays. Unknown ids are ignored.
    pub fn record_success(&mut self, id: &Id, rtt: Option<Duration>, now: Instant) {
        let Some(bucket) = bucket_mut(&mut self.buckets, &self.own, id) else {
            return;
        };
        let Some(pos) = bucket.position(id) else {
            return;
        };
        let mut e = bucket.entries.remove(pos);
        if let Some(rtt) = rtt {
            e.rtt.sample(rtt);
        }
        e.failures = 0;
        e.last_seen = now;
        bucket.entries.push(e);
        if bucket.is_pinged(id) {
            bucket.replacement = None;
            self.rejected += 1;
        }
    }

    /// An RPC to `id` timed out. See [`Failure`] for the outcomes.
    ///
    /// If `id` is a bucket's pending newcomer rather than a member, the
    /// newcomer is discarded and the result is [`Failure::Unknown`].
    pub fn record_failure(&mut self, id: &Id, max_failures: u8) -> Failure {
        let Some(bucket) = bucket_mut(&mut self.buckets, &self.own, id) else {
            return Failure::Unknown;
        };
        let Some(pos) = bucket.position(id) else {
            if bucket.is_pending(id) {
                bucket.replacement = None;
                self.rejected += 1;
            }
            return Failure::Unknown;
        };
        if bucket.is_pinged(id) {
            bucket.entries.remove(pos);
            bucket.promote();
            self.evicted += 1;
            self.inserted += 1;
            self.sync_used(id);
            return Failure::Replaced;
        }
        let Some(e) = bucket.entries.get_mut(pos) else {
            return Failure::Unknown;
        };
        e.failures = e.failures.saturating_add(1);
        if e.failures < max_failures {
            return Failure::Counted;
        }
        bucket.entries.remove(pos);
        let promoted = bucket.promote();
        self.dropped += 1;
        if promoted {
            self.inserted += 1;
        } else {
            self.len -= 1;
        }
        self.sync_used(id);
        Failure::Dropped
    }

    /// Removes `id` from the table (or from a pending slot), returning its
    /// entry if it was a member. A pending newcomer takes the freed slot.
    pub fn remove(&mut self, id: &Id) -> Option<Entry> {
        let bucket = bucket_mut(&mut self.buckets, &self.own, id)?;
        let Some(pos) = bucket.position(id) else {
            if bucket.is_pending(id) {
                bucket.replacement = None;
            }
            return None;
        };
        let e = bucket.entries.remove(pos);
        if bucket.promote() {
            self.inserted += 1;
        } else {
            self.len -= 1;
        }
        self.sync_used(id);
        Some(e)
    }

    /// The entry of `id`, if it is in the table.
    pub fn get(&self, id: &Id) -> Option<&Entry> {
        self.bucket_of(id)?
            .entries
            .iter()
            .find(|e| e.contact.id == *id)
    }

    /// Whether `id` is in the table (pending newcomers are not).
    pub fn contains(&self, id: &Id) -> bool {
        self.get(id).is_some()
    }

    /// Number of contacts in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, bucket 0 (closest to us) first, each bucket least
    /// recently seen first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        // Bucket order, as a plain walk over the buckets, but reading only
        // the populated ones: a lookup starts from this, and a table of a
        // few contacts has over 150 empty buckets.
        let mut used = self.used;
        std::iter::from_fn(move || used.pop_lowest())
            .filter_map(|i| self.buckets.get(i))
            .flat_map(|b| b.entries.iter())
    }

    /// The retransmission timeout for an RPC to `id` (see
    /// [`RttEstimator::rto`]); `max` when `id` is unknown or unmeasured.
    pub fn rto(&self, id: &Id, min: Duration, max: Duration) -> Duration {
        self.get(id).map_or(max, |e| e.rtt.rto(min, max))
    }

    /// How long before an RPC to `id` is hedged (see
    /// [`RttEstimator::hedge_after`]); `max` when `id` is unknown or unmeasured.
    pub fn hedge_after(&self, id: &Id, factor: u32, min: Duration, max: Duration) -> Duration {
        self.get(id)
            .map_or(max, |e| e.rtt.hedge_after(factor, min, max))
    }

    /// The `count` contacts closest to `key` by XOR distance, closest first.
    ///
    /// A linear scan with a bounded sorted selection: allocates only the
    /// result.
    pub fn closest(&self, key: &Id, count: usize) -> Vec<Contact> {
        let cap = count.min(self.len);
        let mut out = Vec::with_capacity(cap);
        for e in self.iter() {
            insert_bounded(&mut out, 0, cap, e.contact, |c| key.distance(&c.id));
        }
        out
    }

    /// Contacts for a reply to a halving lookup step (spec §1.4): the
    /// requester wants contacts whose distance to `key` is near `target`.
    ///
    /// Returns at most `count` distinct contacts, sorted by distance to `key`
    /// (closest first):
    /// - the `ceil(count/2)` contacts whose distance `d` to `key` is nearest
    ///   `target`, ranked by `|d − target|`, ties going to the smaller `d`;
    /// - the remaining slots filled with the contacts closest to `key` that
    ///   are not already chosen.
    ///
    /// The first half drives the halving walk and its convergence through
    /// common intermediate nodes. The second half guarantees progress: a
    /// walk that only ever heard about nodes near its targets could miss the
    /// node actually closest to the key, where it must end. With
    /// `count >= 2` the reply always holds both the contact nearest the
    /// target and the contact closest to the key; with `count == 1` only the
    /// former.
    ///
    /// Answered once per incoming RPC, so it visits only the buckets that
    /// can still improve the answer (see the module doc) and allocates only
    /// the result.
    pub fn nearest_to_distance(&self, key: &Id, target: Distance, count: usize) -> Vec<Contact> {
        let n = count.min(self.len);
        if n == 0 {
            return Vec::new();
        }
        let near = count.div_ceil(2).min(n);
        let key = Words::of(&key.0);
        let target = Words::of(&target.0);
        let order = BucketOrder::new(self.used, Words::of(&self.own.0).xor(key));
        // Filled in place: each is a few hundred bytes, and moving it out of
        // a callee would cost a `memcpy`.
        let mut by_target = SmallVec::new();
        self.select_by_target(&order, key, target, near, &mut by_target);
        let mut by_key = SmallVec::new();
        self.select_by_key(&order, key, n - near, &by_target, &mut by_key);

        // The halves are disjoint; merging them by distance gives the reply's
        // order.
        by_target.sort_unstable_by_key(|&((_, d), _)| d);
        let mut out = Vec::with_capacity(n);
        let (mut a, mut b) = (by_target.as_slice(), by_key.as_slice());
        loop {
            let e = match (a, b) {
                ([((_, x), e), rest @ ..], [(y, _), ..]) if x < y => {
                    a = rest;
                    e
                }
                (_, [(_, e), rest @ ..]) => {
                    b = rest;
                    e
                }
                ([(_, e), rest @ ..], []) => {
                    a = rest;
                    e
                }
                ([], []) => break,
            };
            out.push(e.contact);
        }
        out
    }

    /// The `cap` entries whose distance `d` to `key` is nearest `target`,
    /// ranked by `(|d − target|, d)`, best first.
    ///
    /// Buckets are visited outwards from `target` in order of the lower bound
    /// `|d − target|` their interval allows, and the walk stops at the first
    /// bucket whose bound exceeds the worst rank kept. Only a strictly greater
    /// bound stops it: on an equal bound the bucket may hold an entry that
    /// ties on `|d − target|` and wins on `d`.
    fn select_by_target<'a>(
        &'a self,
        order: &BucketOrder,
        key: Words,
        target: Words,
        cap: usize,
        sel: &mut SmallVec<[((Words, Words), &'a Entry); 8]>,
    ) {
        if cap == 0 {
            return;
        }
        // Buckets `below` lie wholly below `target`; the others reach it or
        // lie above, so their bound is their lower end's excess.
        let (mut below, mut above) = order.around(target);
        let bound_below = |b: u8| target.abs_diff(order.interval(b).1);
        let bound_above = |b: u8| {
            let lo = order.interval(b).0;
            if lo > target {
                lo.abs_diff(target)
            } else {
                Words::ZERO
            }
        };
        let (mut lo_next, mut hi_next) = (
            below.next().map(|b| (bound_below(b), b)),
            above.next().map(|b| (bound_above(b), b)),
        );
        loop {
            let (bound, b) = match (lo_next, hi_next) {
                (Some(l), Some(h)) if l.0 < h.0 => {
                    lo_next = below.next().map(|b| (bound_below(b), b));
                    l
                }
                (_, Some(h)) => {
                    hi_next = above.next().map(|b| (bound_above(b), b));
                    h
                }
                (Some(l), None) => {
                    lo_next = below.next().map(|b| (bound_below(b), b));
                    l
                }
                (None, None) => break,
            };
            if sel.len() >= cap && sel.last().is_some_and(|w| bound > w.0.0) {
                break;
            }
            for e in self.entries_of(b) {
                let d = Words::of(&e.contact.id.0).xor(key);
                select(sel, cap, ((d.abs_diff(target), d), e));
            }
        }
    }

    /// The `cap` entries closest to `key` that are not in `taken`, closest
    /// first.
    ///
    /// Buckets are visited in ascending order of their intervals, which are
    /// disjoint, so once `cap` entries are kept every later bucket holds only
    /// farther ones.
    fn select_by_key<'a>(
        &'a self,
        order: &BucketOrder,
        key: Words,
        cap: usize,
        taken: &[((Words, Words), &Entry)],
        sel: &mut SmallVec<[(Words, &'a Entry); 8]>,
    ) {
        if cap == 0 {
            return;
        }
        for b in order.ascending() {
            if sel.len() >= cap {
                break;
            }
            for e in self.entries_of(b) {
                let d = Words::of(&e.contact.id.0).xor(key);
                if !taken.iter().any(|t| std::ptr::eq(t.1, e)) {
                    select(sel, cap, (d, e));
                }
            }
        }
    }

    /// The entries of bucket `b` (none if out of range).
    fn entries_of(&self, b: u8) -> &[Entry] {
        self.buckets
            .get(usize::from(b))
            .map_or(&[], |b| b.entries.as_slice())
    }

    /// Records that a lookup for `key` went through the bucket `key` falls in,
    /// so it needs no refresh for a while. Our own id falls in no bucket.
    pub fn touch(&mut self, key: &Id, now: Instant) {
        if let Some(b) = bucket_mut(&mut self.buckets, &self.own, key) {
            b.touched = now;
        }
    }

    /// Records that bucket `bucket` was refreshed at `now` (out-of-range
    /// indices are ignored).
    pub fn refreshed(&mut self, bucket: usize, now: Instant) {
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.touched = now;
        }
    }

    /// Buckets, in ascending index order, that no lookup has touched for at
    /// least `refresh`, among those worth refreshing.
    ///
    /// Worth refreshing are the buckets from the highest non-empty one down
    /// to one below the lowest non-empty one (clamped at 0), empty ones in
    /// between included. In a network of `n` nodes the buckets below about
    /// `160 − log2 n` are empty simply because no node is that close; looking
    /// them up would cost a lookup each and find nothing. The bucket just
    /// below the lowest populated one is kept because that is where a node
    /// closer to us than any we know would land. An empty table reports
    /// nothing: filling it is the job of joining, not refreshing.
    pub fn stale_buckets(&self, now: Instant, refresh: Duration) -> Vec<usize> {
        let used = |b: &Bucket| !b.entries.is_empty();
        let (Some(lo), Some(hi)) = (
            self.buckets.iter().position(used),
            self.buckets.iter().rposition(used),
        ) else {
            return Vec::new();
        };
        (lo.saturating_sub(1)..=hi)
            .filter(|&i| {
                self.buckets
                    .get(i)
                    .is_some_and(|b| now.saturating_duration_since(b.touched) >= refresh)
            })
            .collect()
    }

    /// An estimate of the number of nodes in this DSHT, ourselves included.
    ///
    /// Node ids are uniform, so with `n` nodes the `j`-th closest of the
    /// other nodes to our id lies at a distance of about `j · 2^160 / n`.
    /// Taking the `j = min(k, len)` closest contacts we know and `d_j` the
    /// distance of the farthest of them, the estimate is
    /// `n ≈ j · 2^160 / d_j + 1`, clamped to `[len + 1, u32::MAX]`. The
    /// nearest buckets are nearly always complete, so this reads the
    /// density where the table is exact; it is noisy (its spread is about
    /// `1/√j`) and callers smooth it (spec open question 6). An empty table
    /// gives 1.
    ///
    /// While no bucket is full the table has had room for every node it
    /// heard of, so the count is exact as far as this node knows, and the
    /// estimate is `len + 1`: extrapolating from a few contacts of a small
    /// cluster would turn an unlucky draw of close ids into a size many
    /// times the truth.
    pub fn size_estimate(&self) -> u32 {
        let floor = u32::try_from(self.len.saturating_add(1)).unwrap_or(u32::MAX);
        if self.buckets.iter().all(|b| b.entries.len() < self.k) {
            return floor;
        }
        let j = self.k.min(self.len);
        let Some(farthest) = self
            .closest(&self.own, j)
            .last()
            .map(|c| self.own.distance(&c.id))
        else {
            return 1;
        };
        let d = farthest.as_f64();
        let est = if d > 0.0 {
            j as f64 * 2f64.powi(ID_BITS as i32) / d + 1.0
        } else {
            f64::from(u32::MAX)
        };
        // `as` saturates, and `max` drops a NaN in favour of the floor.
        (est.max(f64::from(floor)).min(f64::from(u32::MAX))) as u32
    }

    /// Counters and gauges of the table.
    pub fn stats(&self) -> RoutingStats {
        RoutingStats {
            contacts: self.len,
            buckets_used: self
                .buckets
                .iter()
                .filter(|b| !b.entries.is_empty())
                .count(),
            pending: self
                .buckets
                .iter()
                .filter(|b| b.replacement.is_some())
                .count(),
            inserted: self.inserted,
            evicted: self.evicted,
            dropped: self.dropped,
            rejected: self.rejected,
        }
    }
}

/// The bucket `id` falls in, borrowing only the buckets so that the table's
/// counters stay usable alongside.
fn bucket_mut<'a>(buckets: &'a mut [Bucket], own: &Id, id: &Id) -> Option<&'a mut Bucket> {
    buckets.get_mut(own.bucket_index(id)?)
}

/// A 160-bit value as (high 32 bits, low 128 bits), for fast comparison
/// and arithmetic on the reply path. Bit `i` is the bit of weight `2^i`,
/// so it is also the index of the bucket whose distances have it highest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Words(u32, u128);

impl Words {
    const ZERO: Self = Self(0, 0);

    fn of(b: &[u8; crate::id::ID_LEN]) -> Self {
        let mut hi = [0u8; 4];
        let mut lo = [0u8; 16];
        hi.copy_from_slice(&b[..4]);
        lo.copy_from_slice(&b[4..]);
        Self(u32::from_be_bytes(hi), u128::from_be_bytes(lo))
    }

    fn xor(self, o: Self) -> Self {
        Self(self.0 ^ o.0, self.1 ^ o.1)
    }

    fn and(self, o: Self) -> Self {
        Self(self.0 & o.0, self.1 & o.1)
    }

    fn or(self, o: Self) -> Self {
        Self(self.0 | o.0, self.1 | o.1)
    }

    fn not(self) -> Self {
        Self(!self.0, !self.1)
    }

    /// `|self − o|`, without branches: which operand is larger is a coin
    /// toss on the reply path, and a mispredicted branch costs more than
    /// the arithmetic.
    fn abs_diff(self, o: Self) -> Self {
        let (lo, borrow) = self.1.overflowing_sub(o.1);
        let (hi, under1) = self.0.overflowing_sub(o.0);
        let (hi, under2) = hi.overflowing_sub(u32::from(borrow));
        // Negative: negate in two's complement, `!x + 1`.
        let neg = under1 | under2;
        let (lo, carry) =
            (lo ^ 0u128.wrapping_sub(u128::from(neg))).overflowing_add(u128::from(neg));
        let hi = (hi ^ 0u32.wrapping_sub(u32::from(neg))).wrapping_add(u32::from(carry));
        Self(hi, lo)
    }

    /// `2^i`, or zero when `i` is 160 or more.
    fn bit(i: usize) -> Self {
        match i.checked_sub(128) {
            None => Self(0, 1u128 << i),
            Some(h) => Self(
                u32::try_from(h).map_or(0, |h| 1u32.checked_shl(h).unwrap_or(0)),
                0,
            ),
        }
    }

    /// `2^i − 1`: the bits below `i`, all 160 when `i` is 160 or more.
    fn low_mask(i: usize) -> Self {
        match i.checked_sub(128) {
            None => Self(0, (1u128 << i) - 1),
            Some(h) => Self(
                u32::try_from(h)
                    .ok()
                    .and_then(|h| 1u32.checked_shl(h))
                    .map_or(u32::MAX, |v| v - 1),
                u128::MAX,
            ),
        }
    }

    /// `self` with bit `i` set to `on`.
    fn with_bit(self, i: usize, on: bool) -> Self {
        let b = Self::bit(i);
        if on { self.or(b) } else { self.and(b.not()) }
    }

    /// The index of the highest set bit, `None` for zero.
    fn highest_bit(self) -> Option<usize> {
        if self.0 != 0 {
            Some(159 - self.0.leading_zeros() as usize)
        } else if self.1 != 0 {
            Some(127 - self.1.leading_zeros() as usize)
        } else {
            None
        }
    }

    /// Clears the highest set bit and returns its index, `None` for zero.
    fn pop_highest(&mut self) -> Option<usize> {
        let i = self.highest_bit()?;
        *self = self.xor(Self::bit(i));
        Some(i)
    }

    /// Clears the lowest set bit and returns its index, `None` for zero.
    fn pop_lowest(&mut self) -> Option<usize> {
        if self.1 != 0 {
            let i = self.1.trailing_zeros() as usize;
            self.1 &= self.1 - 1;
            Some(i)
        } else if self.0 != 0 {
            let i = 128 + self.0.trailing_zeros() as usize;
            self.0 &= self.0 - 1;
            Some(i)
        } else {
            None
        }
    }
}

/// The non-empty buckets of a table, ordered by the distances to one key
/// that their contacts can have.
///
/// With own id `o` and `D = d(o, key)`, a contact `c` of bucket `b` (the
/// highest bit of `d(c, o)` is `b`) has `d(c, key) = d(c, o) XOR D`: its bits
/// above `b` are `D`'s, its bit `b` is the opposite of `D`'s, and its lower
/// bits are anything. So bucket `b` covers exactly the interval
/// `[P_b, P_b + 2^b − 1]` of distances to the key, with `P_b` being `D` with
/// bit `b` flipped and the bits below cleared ([`BucketOrder::interval`]).
/// Intervals of different buckets are disjoint, and ascending order is: the
/// buckets where `D` has a one, highest first (`P_b < D`), then those where
/// it has a zero, lowest first (`P_b > D`), which is Kademlia's classic walk.
/// Both orders here are read off bitmaps lazily: a reply rarely gets past
/// its first two or three buckets.
#[derive(Clone, Copy)]
struct BucketOrder {
    /// The populated buckets.
    used: Words,
    /// `D`.
    dk: Words,
}

impl BucketOrder {
    fn new(used: Words, dk: Words) -> Self {
        Self { used, dk }
    }

    /// The smallest and largest distance to the key a contact of bucket `b`
    /// can have.
    fn interval(&self, b: u8) -> (Words, Words) {
        let b = usize::from(b);
        let low = Words::low_mask(b);
        let lo = self.dk.xor(Words::bit(b)).and(low.not());
        (lo, lo.or(low))
    }

    /// Every populated bucket, in ascending order of their intervals.
    fn ascending(&self) -> Walk {
        let (ones, zeros) = (self.used.and(self.dk), self.used.and(self.dk.not()));
        Walk::new([(ones, false), (zeros, true), (Words::ZERO, true)])
    }

    /// The populated buckets wholly below `t`, and the others, each side
    /// nearest `t` first.
    ///
    /// `t` agrees with `D` above the highest bit `h` of `t XOR D`, so bucket
    /// `h` is the one whose interval holds `t`. A bucket above `h` is on the
    /// same side of `t` as of `D`; every bucket below `h` is on the side of
    /// `t` where `D` is.
    fn around(&self, t: Words) -> (Walk, Walk) {
        let (ones, zeros) = (self.used.and(self.dk), self.used.and(self.dk.not()));
        let none = (Words::ZERO, true);
        let Some(h) = t.xor(self.dk).highest_bit() else {
            // `t` is `D`: the one-buckets below, nearest (lowest) first.
            return (
                Walk::new([(ones, true), none, none]),
                Walk::new([(zeros, true), none, none]),
            );
        };
        let holder = self.used.and(Words::bit(h));
        let under = Words::low_mask(h);
        let over = Words::low_mask(h + 1).not();
        if self.dk.and(Words::bit(h)) == Words::ZERO {
            // `t > D`: below are all one-buckets and the zero-buckets under h.
            (
                Walk::new([(zeros.and(under), false), (ones, true), none]),
                Walk::new([(holder, true), (zeros.and(over), true), none]),
            )
        } else {
            // `t < D`: below are only the one-buckets over h.
            (
                Walk::new([(ones.and(over), true), none, none]),
                Walk::new([(holder, true), (ones.and(under), false), (zeros, true)]),
            )
        }
    }
}

/// Bucket indices from up to three bitmaps in turn, each read lowest bit
/// first (`true`) or highest first.
struct Walk {
    parts: [(Words, bool); 3],
    at: usize,
}

impl Walk {
    fn new(parts: [(Words, bool); 3]) -> Self {
        Self { parts, at: 0 }
    }
}

impl Iterator for Walk {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        while let Some((bits, up)) = self.parts.get_mut(self.at) {
            let b = if *up {
                bits.pop_lowest()
            } else {
                bits.pop_highest()
            };
            match b {
                // Indices are below 160.
                Some(b) => return u8::try_from(b).ok(),
                None => self.at += 1,
            }
        }
        None
    }
}

/// Keeps the `cap` smallest items of a stream in `out`, sorted by rank.
///
/// `cap` is a handful on the reply path, so a newcomer finds its place by
/// shifting bigger items up from the end: cheaper there than a binary
/// search and a `memmove`.
#[inline]
fn select<R: Ord + Copy, T: Copy>(out: &mut SmallVec<[(R, T); 8]>, cap: usize, item: (R, T)) {
    if out.len() >= cap {
        match out.last() {
            Some(last) if item.0 < last.0 => {
                out.pop();
            }
            _ => return,
        }
    }
    let mut i = out.len();
    out.push(item);
    let s = out.as_mut_slice();
    while i > 0 && item.0 < s[i - 1].0 {
        s[i] = s[i - 1];
        i -= 1;
    }
    s[i] = item;
}

/// Inserts `c` into `out[start..]`, which is sorted ascending by `rank` and
/// kept at most `cap` long. `out[start..]` is the tail of `out`, and `out`
/// never grows beyond `start + cap`, so it never reallocates past the
/// capacity the caller reserved.
fn insert_bounded<R: Ord>(
    out: &mut Vec<Contact>,
    start: usize,
    cap: usize,
    c: Contact,
    rank: impl Fn(&Contact) -> R,
) {
    if cap == 0 || out.len() < start {
        return;
    }
    let r = rank(&c);
    if out.len() - start >= cap {
        match out.last() {
            Some(last) if r < rank(last) => {
                out.pop();
            }
            _ => return,
        }
    }
    let pos = out
        .get(start..)
        .map_or(0, |tail| tail.partition_point(|x| rank(x) < r));
    out.insert(start + pos, c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::Services;
    use crate::id::ID_LEN;
    use crate::rng::Rng;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    const MS: Duration = Duration::from_millis(1);
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn small_id(v: u64) -> Id {
        let mut b = [0u8; ID_LEN];
        b[ID_LEN - 8..].copy_from_slice(&v.to_be_bytes());
        Id(b)
    }

    fn small_dist(v: u64) -> Distance {
        Distance(small_id(v).0)
    }

    fn addr(i: u32) -> SocketAddr {
        let b = i.to_be_bytes();
        SocketAddr::from(([10, b[1], b[2], b[3]], 8090))
    }

    fn contact(id: Id, i: u32) -> Contact {
        Contact {
            id,
            addr: addr(i),
            services: Services::NONE,
        }
    }

    /// Id with first byte `b` and last byte `i`: with own = ZERO these all
    /// fall in bucket 159 when `b >= 0x80`.
    fn far(i: u8) -> Id {
        let mut b = [0u8; ID_LEN];
        b[0] = 0x80;
        b[ID_LEN - 1] = i;
        Id(b)
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// `ms` after the bucket's contacts stopped counting as recently heard.
    fn late(ms: u64) -> Instant {
        t(ms) + ALIVE_RECENTLY
    }

    #[test]
    fn full_bucket_heard_recently_turns_newcomers_away_without_a_ping() {
        let mut rt = RoutingTable::new(Id::ZERO, 2, t(0));
        rt.observe(contact(far(1), 1), t(0));
        rt.observe(contact(far(2), 2), t(1));
        assert_eq!(rt.observe(contact(far(3), 3), t(2)), Observe::Rejected);
        assert_eq!(rt.stats().pending, 0);
        assert_eq!(rt.stats().rejected, 1);
        assert_eq!(ids(&rt), vec![far(1), far(2)]);
        // Once the oldest has been quiet for a minute, a newcomer asks for its ping.
        assert_eq!(
            rt.observe(contact(far(3), 3), late(0)),
            Observe::PingOldest(contact(far(1), 1))
        );
        check_invariants(&rt);
    }

    fn ids(table: &RoutingTable) -> Vec<Id> {
        table.iter().map(|e| e.contact.id).collect()
    }

    /// Every structural invariant of the table.
    fn check_invariants(table: &RoutingTable) {
        assert_eq!(table.buckets.len(), ID_BITS);
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for (i, b) in table.buckets.iter().enumerate() {
            assert!(
                b.entries.len() <= table.k,
                "bucket {i} holds {}",
                b.entries.len()
            );
            for e in &b.entries {
                assert_ne!(e.contact.id, table.own);
                assert_eq!(table.own.bucket_index(&e.contact.id), Some(i));
                assert!(seen.insert(e.contact.id), "duplicate {:?}", e.contact.id);
            }
            total += b.entries.len();
            if let Some(r) = &b.replacement {
                assert_eq!(b.entries.len(), table.k, "pending in a bucket with room");
                assert_eq!(table.own.bucket_index(&r.contact.id), Some(i));
                assert!(
                    b.position(&r.contact.id).is_none(),
                    "pending contact is also a member"
                );
                assert!(
                    b.position(&r.pinged).is_some(),
                    "pinged contact is not a member"
                );
            }
        }
        assert_eq!(total, table.len());
        assert_eq!(table.iter().count(), table.len());
        assert_eq!(table.is_empty(), total == 0);
        for (i, b) in table.buckets.iter().enumerate() {
            let bit = table.used.and(Words::bit(i)) != Words::ZERO;
            assert_eq!(bit, !b.entries.is_empty(), "used bit of bucket {i}");
        }
    }

    // ---- RttEstimator ----

    #[test]
    fn estimator_matches_hand_computed_values() {
        let mut e = RttEstimator::new();
        assert_eq!(e.srtt(), None);
        assert_eq!(e.rto(MIN, MAX), MAX);
        assert_eq!(e.hedge_after(2, MIN, MAX), MAX);

        e.sample(100 * MS);
        assert_eq!(e.srtt(), Some(100 * MS));
        assert_eq!(e.rttvar(), Some(50 * MS));
        assert_eq!(e.rto(MIN, MAX), 300 * MS); // 100 + 4·50

        e.sample(200 * MS);
        // rttvar = 3/4·50 + 1/4·|100 − 200| = 62.5; srtt = 7/8·100 + 1/8·200 = 112.5
        assert_eq!(e.rttvar(), Some(Duration::from_micros(62_500)));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rto(MIN, MAX), Duration::from_micros(362_500));
        assert_eq!(e.hedge_after(2, MIN, MAX), Duration::from_micros(225_000));

        e.sample(112_500 * Duration::from_micros(1));
        // rttvar = 3/4·62.5 = 46.875; srtt unchanged.
        assert_eq!(e.rttvar(), Some(Duration::from_micros(46_875)));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
    }

    #[test]
    fn estimator_clamps_and_never_panics() {
        let mut e = RttEstimator::new();
        e.sample(Duration::from_millis(1));
        assert_eq!(e.rto(MIN, MAX), MIN);
        assert_eq!(e.hedge_after(2, MIN, MAX), MIN);
        e.sample(Duration::from_secs(3600));
        assert_eq!(e.rto(MIN, MAX), MAX);
        assert_eq!(e.hedge_after(u32::MAX, MIN, MAX), MAX);
        // Crossed bounds: max wins rather than a panic.
        assert_eq!(e.rto(MAX, MIN), MIN);
        let mut huge = RttEstimator::new();
        huge.sample(Duration::MAX);
        huge.sample(Duration::ZERO);
        huge.sample(Duration::MAX);
        assert_eq!(huge.rto(MIN, MAX), MAX);
    }

    // ---- observe / eviction ----

    #[test]
    fn observe_inserts_updates_and_ignores_own_id() {
        let own = Id::ZERO;
        let mut rt = RoutingTable::new(own, 3, t(0));
        assert_eq!(rt.observe(contact(own, 0), t(0)), Observe::Ignored);
        assert!(rt.is_empty());

        assert_eq!(rt.observe(contact(far(1), 1), t(1)), Observe::Inserted);
        assert_eq!(rt.observe(contact(far(2), 2), t(2)), Observe::Inserted);
        assert_eq!(ids(&rt), vec![far(1), far(2)]);

        // Re-hearing far(1) at a new address moves it to most recent.
        rt.record_failure(&far(1), 3);
        assert_eq!(rt.observe(contact(far(1), 99), t(3)), Observe::Updated);
        assert_eq!(ids(&rt), vec![far(2), far(1)]);
        let e = rt.get(&far(1)).cloned();
        assert_eq!(e.as_ref().map(|e| e.contact.addr), Some(addr(99)));
        assert_eq!(e.as_ref().map(|e| e.failures), Some(0));
        assert_eq!(e.map(|e| e.last_seen), Some(t(3)));
        assert_eq!(rt.len(), 2);
        assert!(rt.contains(&far(2)));
        assert!(!rt.contains(&far(3)));
        check_invariants(&rt);
    }

    #[test]
    fn full_bucket_pings_oldest_then_evicts_it_on_failure() {
        let mut rt = RoutingTable::new(Id::ZERO, 2, t(0));
        assert_eq!(rt.observe(contact(far(1), 1), t(1)), Observe::Inserted);
        assert_eq!(rt.observe(contact(far(2), 2), t(2)), Observe::Inserted);
        // Full: the newcomer waits and the oldest, far(1), must be pinged.
        assert_eq!(
            rt.observe(contact(far(3), 3), late(3)),
            Observe::PingOldest(contact(far(1), 1))
        );
        assert_eq!(rt.stats().pending, 1);
        // A second newcomer takes the pending slot; the ping is already out.
        assert_eq!(rt.observe(contact(far(4), 4), late(4)), Observe::Pending);
        check_invariants(&rt);
        // The ping times out: far(1) is evicted at once (no max_failures wait)
        // and the latest newcomer goes in.
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Replaced);
        assert_eq!(ids(&rt), vec![far(2), far(4)]);
        assert_eq!(rt.get(&far(4)).map(|e| e.last_seen), Some(late(4)));
        let s = rt.stats();
        assert_eq!(
            (s.contacts, s.pending, s.evicted, s.inserted, s.rejected),
            (2, 0, 1, 3, 1)
        );
        check_invariants(&rt);
    }

    #[test]
    fn full_bucket_keeps_oldest_when_it_answers_the_ping() {
        let mut rt = RoutingTable::new(Id::ZERO, 2, t(0));
        rt.observe(contact(far(1), 1), t(1));
        rt.observe(contact(far(2), 2), t(2));
        assert_eq!(
            rt.observe(contact(far(3), 3), late(3)),
            Observe::PingOldest(contact(far(1), 1))
        );
        rt.record_success(&far(1), Some(40 * MS), late(4));
        // The long-lived contact stays and becomes most recent; the newcomer is gone.
        assert_eq!(ids(&rt), vec![far(2), far(1)]);
        assert_eq!(rt.get(&far(1)).and_then(|e| e.rtt.srtt()), Some(40 * MS));
        assert_eq!(rt.stats().pending, 0);
        assert_eq!(rt.stats().rejected, 1);
        // The next newcomer pings the new oldest.
        assert_eq!(
            rt.observe(contact(far(5), 5), late(5)),
            Observe::PingOldest(contact(far(2), 2))
        );
        // Hearing from far(2) directly settles the ping the same way.
        assert_eq!(rt.observe(contact(far(2), 2), late(6)), Observe::Updated);
        assert_eq!(rt.stats().pending, 0);
        assert_eq!(ids(&rt), vec![far(1), far(2)]);
        check_invariants(&rt);
    }

    #[test]
    fn lost_ping_does_not_wedge_the_bucket() {
        let mut rt = RoutingTable::new(Id::ZERO, 1, t(0));
        rt.observe(contact(far(1), 1), t(0));
        assert_eq!(
            rt.observe(contact(far(2), 2), late(1)),
            Observe::PingOldest(contact(far(1), 1))
        );
        assert_eq!(rt.observe(contact(far(3), 3), late(1000)), Observe::Pending);
        let later = late(1) + STALE_PING;
        assert_eq!(
            rt.observe(contact(far(4), 4), later),
            Observe::PingOldest(contact(far(1), 1))
        );
        check_invariants(&rt);
    }

    #[test]
    fn failures_drop_after_max_and_success_resets() {
        let mut rt = RoutingTable::new(Id::ZERO, 4, t(0));
        rt.observe(contact(far(1), 1), t(0));
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Counted);
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Counted);
        rt.record_success(&far(1), None, t(1));
        assert_eq!(rt.get(&far(1)).map(|e| e.failures), Some(0));
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Counted);
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Counted);
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Dropped);
        assert!(rt.is_empty());
        assert_eq!(rt.record_failure(&far(1), 3), Failure::Unknown);
        assert_eq!(rt.record_failure(&Id::ZERO, 3), Failure::Unknown);
        assert_eq!(rt.stats().dropped, 1);
        check_invariants(&rt);
    }

    #[test]
    fn dropping_a_member_promotes_the_pending_newcomer() {
        let mut rt = RoutingTable::new(Id::ZERO, 2, t(0));
        rt.observe(contact(far(1), 1), t(0));
        rt.observe(contact(far(2), 2), t(0));
        assert!(matches!(
            rt.observe(contact(far(3), 3), late(1)),
            Observe::PingOldest(_)
        ));
        // far(2), not the pinged one, hits max_failures.
        assert_eq!(rt.record_failure(&far(2), 1), Failure::Dropped);
        assert_eq!(ids(&rt), vec![far(1), far(3)]);
        assert_eq!(rt.stats().pending, 0);
        check_invariants(&rt);
        // Removing promotes too.
        assert!(matches!(
            rt.observe(contact(far(4), 4), late(2)),
            Observe::PingOldest(_)
        ));
        assert_eq!(rt.remove(&far(3)).map(|e| e.contact.id), Some(far(3)));
        assert_eq!(ids(&rt), vec![far(1), far(4)]);
        assert_eq!(rt.remove(&far(3)), None);
        check_invariants(&rt);
        // A newcomer that fails is discarded.
        assert!(matches!(
            rt.observe(contact(far(5), 5), late(3)),
            Observe::PingOldest(_)
        ));
        assert_eq!(rt.record_failure(&far(5), 3), Failure::Unknown);
        assert_eq!(rt.stats().pending, 0);
        check_invariants(&rt);
    }

    #[test]
    fn rto_and_hedge_per_contact() {
        let mut rt = RoutingTable::new(Id::ZERO, 4, t(0));
        rt.observe(contact(far(1), 1), t(0));
        assert_eq!(rt.rto(&far(1), MIN, MAX), MAX);
        rt.record_success(&far(1), Some(100 * MS), t(1));
        assert_eq!(rt.rto(&far(1), MIN, MAX), 300 * MS);
        assert_eq!(rt.hedge_after(&far(1), 2, MIN, MAX), 200 * MS);
        assert_eq!(rt.rto(&far(9), MIN, MAX), MAX);
        assert_eq!(rt.hedge_after(&far(9), 2, MIN, MAX), MAX);
    }

    #[test]
    fn iteration_is_by_bucket_then_least_recent_first() {
        let mut rt = RoutingTable::new(Id::ZERO, 4, t(0));
        for (i, v) in [0x80u64, 1, 0x40, 0x81, 3].into_iter().enumerate() {
            rt.observe(contact(small_id(v), i as u32), t(i as u64));
        }
        rt.record_success(&small_id(0x80), None, t(10));
        let got: Vec<u64> = ids(&rt)
            .iter()
            .map(|id| u64::from(id.0[ID_LEN - 1]))
            .collect();
        assert_eq!(got, vec![1, 3, 0x40, 0x81, 0x80]);
    }

    // ---- closest / nearest_to_distance ----

    #[test]
    fn closest_on_small_ids() {
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        for v in [1u64, 4, 5, 7, 12, 13] {
            rt.observe(contact(small_id(v), v as u32), t(0));
        }
        let got: Vec<Id> = rt.closest(&small_id(6), 3).iter().map(|c| c.id).collect();
        // Distances to 6: 1→7, 4→2, 5→3, 7→1, 12→10, 13→11.
        assert_eq!(got, vec![small_id(7), small_id(4), small_id(5)]);
        assert!(rt.closest(&small_id(6), 0).is_empty());
        assert_eq!(rt.closest(&small_id(6), 100).len(), 6);
    }

    #[test]
    fn nearest_to_distance_follows_the_lecture_example() {
        // Spec §1.4: node 0 knows 1, 4, 5, 7; the key is 4 and the requester
        // wants contacts at distance 2 from it. Distances to 4: 4→0, 5→1,
        // 7→3, 1→5; |d − 2|: 2, 1, 1, 3, so 5 (d = 1) beats 7 (d = 3) on the tie.
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        for v in [1u64, 4, 5, 7] {
            rt.observe(contact(small_id(v), v as u32), t(0));
        }
        let key = small_id(4);
        let get = |count| -> Vec<Id> {
            rt.nearest_to_distance(&key, small_dist(2), count)
                .iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(get(0), Vec::<Id>::new());
        assert_eq!(get(1), vec![small_id(5)]);
        // One slot near the target (5), one for the closest overall (4).
        assert_eq!(get(2), vec![small_id(4), small_id(5)]);
        assert_eq!(get(3), vec![small_id(4), small_id(5), small_id(7)]);
        assert_eq!(
            get(4),
            vec![small_id(4), small_id(5), small_id(7), small_id(1)]
        );
        assert_eq!(get(9).len(), 4);
        // Target 5 prefers 1 (d = 5) then 7 (d = 3); fill with 4.
        let got: Vec<Id> = rt
            .nearest_to_distance(&key, small_dist(5), 3)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(got, vec![small_id(4), small_id(7), small_id(1)]);
    }

    // ---- refresh ----

    #[test]
    fn stale_buckets_cover_populated_range_plus_one_below() {
        let refresh = Duration::from_secs(900);
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        let start = Instant::ZERO + refresh;
        assert!(
            rt.stale_buckets(start, refresh).is_empty(),
            "an empty table refreshes nothing"
        );

        rt.observe(contact(small_id(8), 1), t(0)); // bucket 3
        rt.observe(contact(small_id(0x80), 2), t(0)); // bucket 7
        assert!(
            rt.stale_buckets(start.saturating_sub(MS), refresh)
                .is_empty()
        );
        assert_eq!(rt.stale_buckets(start, refresh), vec![2, 3, 4, 5, 6, 7]);

        rt.touch(&small_id(0x25), start); // bucket 5
        rt.refreshed(3, start);
        rt.refreshed(500, start); // ignored
        rt.touch(&Id::ZERO, start); // own id: no bucket
        assert_eq!(rt.stale_buckets(start, refresh), vec![2, 4, 6, 7]);
        assert_eq!(
            rt.stale_buckets(start + refresh, refresh),
            vec![2, 3, 4, 5, 6, 7]
        );

        // A contact in bucket 0: nothing below to add.
        rt.observe(contact(small_id(1), 3), t(0));
        assert_eq!(rt.stale_buckets(start, refresh), vec![0, 1, 2, 4, 6, 7]);
    }

    // ---- size estimate ----

    #[test]
    fn size_estimate_of_small_tables() {
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        assert_eq!(rt.size_estimate(), 1);
        // No bucket full: the table has held everyone it heard of, so the
        // count is exact, even with a contact extremely close to us.
        rt.observe(contact(far(0), 1), t(0));
        assert_eq!(rt.size_estimate(), 2);
        rt.observe(contact(far(0xff), 2), t(0));
        rt.observe(contact(small_id(0x7f), 3), t(0));
        rt.observe(contact(small_id(1), 4), t(0));
        assert_eq!(rt.size_estimate(), 5);
        // A full bucket: extrapolate. One contact at distance 2^159 with
        // k = 1: 1·2^160/2^159 + 1 = 3.
        let mut rt1 = RoutingTable::new(Id::ZERO, 1, t(0));
        rt1.observe(contact(far(0), 1), t(0));
        assert_eq!(rt1.size_estimate(), 3);
        // A contact extremely close to us: huge, but clamped.
        let mut rt1 = RoutingTable::new(Id::ZERO, 1, t(0));
        rt1.observe(contact(small_id(1), 4), t(0));
        assert_eq!(rt1.size_estimate(), u32::MAX);
    }

    fn filled_table(seed: u64, nodes: usize, k: usize) -> RoutingTable {
        let mut rng = Rng::new(seed);
        let own = Id::random(&mut rng);
        let mut rt = RoutingTable::new(own, k, t(0));
        for i in 1..nodes {
            let id = Id::random(&mut rng);
            let _ = rt.observe(contact(id, i as u32), t(i as u64));
        }
        rt
    }

    #[test]
    fn size_estimate_is_within_a_factor_of_four_statistically() {
        const TRUTH: f64 = 2000.0;
        const RUNS: u64 = 200;
        let mut within = 0;
        let mut log_sum = 0.0;
        for seed in 0..RUNS {
            let rt = filled_table(seed, 2000, 8);
            check_invariants(&rt);
            let ratio = f64::from(rt.size_estimate()) / TRUTH;
            if (0.25..=4.0).contains(&ratio) {
                within += 1;
            }
            log_sum += ratio.ln();
        }
        let geo_mean = (log_sum / RUNS as f64).exp();
        // A Gamma(8) spread misses a factor 4 about 0.1% of the time; allow
        // a little slack so the assertion is about the estimator, not luck.
        assert!(within >= RUNS * 98 / 100, "only {within}/{RUNS} within 4x");
        assert!(
            (0.67..=1.5).contains(&geo_mean),
            "geometric mean ratio {geo_mean}"
        );
    }

    // ---- bucket intervals ----

    fn words(d: &Distance) -> Words {
        Words::of(&d.0)
    }

    fn dist(w: Words) -> Distance {
        let mut b = [0u8; ID_LEN];
        b[..4].copy_from_slice(&w.0.to_be_bytes());
        b[4..].copy_from_slice(&w.1.to_be_bytes());
        Distance(b)
    }

    /// `a + b` modulo `2^160`.
    fn add(a: Words, b: Words) -> Words {
        let (lo, carry) = a.1.overflowing_add(b.1);
        Words(a.0.wrapping_add(b.0).wrapping_add(u32::from(carry)), lo)
    }

    /// `a − b` modulo `2^160`.
    fn sub(a: Words, b: Words) -> Words {
        let (lo, borrow) = a.1.overflowing_sub(b.1);
        Words(a.0.wrapping_sub(b.0).wrapping_sub(u32::from(borrow)), lo)
    }

    fn order_of(rt: &RoutingTable, key: &Id) -> BucketOrder {
        BucketOrder::new(rt.used, words(&rt.own().distance(key)))
    }

    fn ones(w: Words) -> usize {
        (w.0.count_ones() + w.1.count_ones()) as usize
    }

    #[test]
    fn words_bits_at_the_edges() {
        assert_eq!(Words::bit(0), Words(0, 1));
        assert_eq!(Words::bit(127), Words(0, 1 << 127));
        assert_eq!(Words::bit(128), Words(1, 0));
        assert_eq!(Words::bit(159), Words(1 << 31, 0));
        assert_eq!(Words::bit(160), Words::ZERO);
        assert_eq!(Words::low_mask(0), Words::ZERO);
        assert_eq!(Words::low_mask(128), Words(0, u128::MAX));
        assert_eq!(Words::low_mask(159), Words(u32::MAX >> 1, u128::MAX));
        assert_eq!(Words::low_mask(160), Words(u32::MAX, u128::MAX));
        assert_eq!(Words::low_mask(500), Words(u32::MAX, u128::MAX));
        let mut w = Words(1 << 31 | 1, 1 << 127 | 1);
        assert_eq!(ones(w), 4);
        assert_eq!(w.highest_bit(), Some(159));
        let mut v = w;
        let popped: Vec<usize> = std::iter::from_fn(|| v.pop_highest()).collect();
        assert_eq!(popped, vec![159, 128, 127, 0]);
        let popped: Vec<usize> = std::iter::from_fn(|| w.pop_lowest()).collect();
        assert_eq!(popped, vec![0, 127, 128, 159]);
        assert_eq!(w, Words::ZERO);
    }

    #[test]
    fn bucket_order_of_own_id_zero() {
        // Own id 0 and key 0b01010: D = 0b01010. Bucket b keeps D's bits
        // above b and flips bit b: bucket 3 covers [0, 7], bucket 1 [8, 9],
        // bucket 0 [11, 11], bucket 2 [12, 15], bucket 4 [16, 31]; D = 10
        // itself is in none. The contacts 1, 2, 4, 8, 16 are at distances
        // 11, 8, 14, 2, 26 from the key, one in each.
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        for v in [1u64, 2, 4, 8, 16] {
            rt.observe(contact(small_id(v), v as u32), t(0));
        }
        let order = order_of(&rt, &small_id(0b1010));
        assert_eq!(order.ascending().collect::<Vec<_>>(), vec![3, 1, 0, 2, 4]);
        let ivs: Vec<(u64, u64)> = order
            .ascending()
            .map(|b| {
                let (lo, hi) = order.interval(b);
                (lo.1 as u64, hi.1 as u64)
            })
            .collect();
        assert_eq!(ivs, vec![(0, 7), (8, 9), (11, 11), (12, 15), (16, 31)]);
    }

    #[test]
    fn a_bucket_whose_bound_ties_the_worst_is_still_visited() {
        // Own id and key 0, so distances are ids and bucket b covers
        // [2^b, 2^(b+1) − 1]. Target 8 lies in bucket 3, whose only contact
        // 9 is 1 away. Bucket 2's bound is 8 − 7 = 1 as well, and its
        // contact 7 ties on |d − target| and wins on d, so the walk must
        // not stop at an equal bound.
        let mut rt = RoutingTable::new(Id::ZERO, 8, t(0));
        for v in [9u64, 7, 1] {
            rt.observe(contact(small_id(v), v as u32), t(0));
        }
        let got = |count| -> Vec<Id> {
            rt.nearest_to_distance(&Id::ZERO, small_dist(8), count)
                .iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(got(1), vec![small_id(7)]);
        assert_eq!(got(2), vec![small_id(1), small_id(7)]);
        assert_eq!(got(3), vec![small_id(1), small_id(7), small_id(9)]);
    }

    /// A table whose contacts spread over many buckets, near as well as far,
    /// unlike the top few buckets random ids fill; `picks` are
    /// (bucket, seed) pairs.
    fn spread_table(own: Id, k: usize, picks: &[(usize, u64)]) -> RoutingTable {
        let mut rt = RoutingTable::new(own, k, t(0));
        for (i, &(b, seed)) in picks.iter().enumerate() {
            let id = own.random_in_bucket(b, &mut Rng::new(seed));
            rt.observe(contact(id, i as u32), t(i as u64));
        }
        check_invariants(&rt);
        rt
    }

    /// Targets that probe the pruning's edges: inside and outside populated
    /// intervals, on their ends and just past them, on contacts' own
    /// distances and exactly between two of them (where the rank ties).
    fn probe_target(rt: &RoutingTable, key: &Id, kind: u8, pick: usize, rng: &mut Rng) -> Distance {
        let ds: Vec<Words> = rt
            .iter()
            .map(|e| words(&key.distance(&e.contact.id)))
            .collect();
        let order = order_of(rt, key);
        let buckets: Vec<u8> = order.ascending().collect();
        let one = Words(0, 1);
        let d_at = |i: usize| ds.get(i % ds.len().max(1)).copied().unwrap_or(Words::ZERO);
        let iv = |i: usize| {
            buckets
                .get(i % buckets.len().max(1))
                .map_or((Words::ZERO, Words::ZERO), |&b| order.interval(b))
        };
        let w = match kind % 12 {
            0 => words(&Id::random(rng).distance(key)),
            1 => words(&key.distance(&rt.own()).half()),
            2 => d_at(pick),
            3 => add(d_at(pick), one),
            4 => sub(d_at(pick), one),
            5 => {
                // The midpoint of two contacts' distances: with an even gap,
                // both are equally far from it.
                let (a, b) = (d_at(pick), d_at(pick / 7 + 1));
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                add(lo, words(&dist(sub(hi, lo)).half()))
            }
            6 => iv(pick).0,
            7 => iv(pick).1,
            8 => sub(iv(pick).0, one),
            9 => add(iv(pick).1, one),
            10 => words(&key.distance(&rt.own())),
            _ => [Words::ZERO, words(&Distance::MAX)][pick % 2],
        };
        dist(w)
    }

    // ---- proptests ----

    #[derive(Clone, Debug)]
    enum Op {
        Observe(usize, u8),
        Success(usize, Option<u16>),
        Failure(usize),
        Remove(usize),
        Advance(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..24, any::<u8>()).prop_map(|(i, a)| Op::Observe(i, a)),
            2 => (0usize..24, proptest::option::of(any::<u16>())).prop_map(|(i, r)| Op::Success(i, r)),
            2 => (0usize..24).prop_map(Op::Failure),
            1 => (0usize..24).prop_map(Op::Remove),
            1 => (0u32..40_000).prop_map(Op::Advance),
        ]
    }

    /// Own id and 23 others crowded into the top few buckets so small
    /// buckets fill; index 0 is our own id.
    fn universe(seed: u64) -> (Id, Vec<Id>) {
        let mut rng = Rng::new(seed);
        let own = Id::random(&mut rng);
        let mut ids = vec![own];
        while ids.len() < 24 {
            let b = 155 + rng.below(5) as usize;
            let id = own.random_in_bucket(b, &mut rng);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        (own, ids)
    }

    fn random_table(seed: u64, n: usize, k: usize) -> RoutingTable {
        filled_table(seed, n + 1, k)
    }

    /// Brute-force reference for `nearest_to_distance`.
    fn nearest_reference(
        all: &[Contact],
        key: &Id,
        target: Distance,
        count: usize,
    ) -> Vec<Contact> {
        let mut by_target = all.to_vec();
        by_target.sort_by_key(|c| {
            let d = key.distance(&c.id);
            (d.abs_diff(&target), d)
        });
        let near = count.div_ceil(2);
        let mut chosen: Vec<Contact> = by_target.iter().take(near).copied().collect();
        let mut rest: Vec<Contact> = by_target.iter().skip(near).copied().collect();
        rest.sort_by_key(|c| key.distance(&c.id));
        chosen.extend(rest.into_iter().take(count.saturating_sub(near)));
        chosen.sort_by_key(|c| key.distance(&c.id));
        chosen
    }

    proptest! {
        #[test]
        fn words_agree_with_distance(
            a in any::<[u8; ID_LEN]>(),
            b in any::<[u8; ID_LEN]>(),
            i in 0usize..ID_BITS,
        ) {
            let (da, db) = (Distance(a), Distance(b));
            let (wa, wb) = (Words::of(&a), Words::of(&b));
            prop_assert_eq!(wa.cmp(&wb), da.cmp(&db));
            prop_assert_eq!(dist(wa.abs_diff(wb)), da.abs_diff(&db));
            prop_assert_eq!(dist(wa.xor(wb)), Distance(Id(a).distance(&Id(b)).0));
            prop_assert_eq!(dist(wa), da);
            // Bit `i` is the bucket index of a distance whose highest bit it is.
            prop_assert_eq!(dist(Words::bit(i)).bucket(), Some(i));
            prop_assert_eq!(dist(Words::low_mask(i)).bucket(), i.checked_sub(1));
            prop_assert_eq!(wa.with_bit(i, true).with_bit(i, false), wa.and(Words::bit(i).not()));
            let mut bits = wa;
            let mut n = 0;
            let mut last = None;
            while let Some(j) = bits.pop_lowest() {
                prop_assert!(last.is_none_or(|l| l < j));
                prop_assert!(wa.and(Words::bit(j)) != Words::ZERO);
                last = Some(j);
                n += 1;
            }
            prop_assert_eq!(n, ones(wa));
            prop_assert_eq!(wa.highest_bit(), da.bucket());
        }

        #[test]
        fn bucket_interval_holds_every_distance_of_its_contacts(
            own in any::<[u8; ID_LEN]>().prop_map(Id),
            key in any::<[u8; ID_LEN]>().prop_map(Id),
            c in any::<[u8; ID_LEN]>().prop_map(Id),
            near_bits in 0usize..=ID_BITS,
        ) {
            // `near_bits` of the contact's low bits come from the key or own
            // id, so small buckets and small distances to the key get tried.
            let mask = dist(Words::low_mask(near_bits));
            let c = if near_bits % 2 == 0 { own.xor(&Distance(c.0)) } else { key.xor(&Distance(c.0)) };
            let c = Id(std::array::from_fn(|i| (c.0[i] & mask.0[i]) | (own.0[i] & !mask.0[i])));
            let Some(b) = own.bucket_index(&c) else {
                return Ok(());
            };
            let order = BucketOrder::new(Words::ZERO, words(&own.distance(&key)));
            let (lo, hi) = order.interval(b as u8);
            let d = words(&key.distance(&c));
            prop_assert!(lo <= d && d <= hi, "bucket {} interval {:?}..{:?} misses {:?}", b, lo, hi, d);
            // Exactly the `2^b` values with the bucket's fixed high bits.
            prop_assert_eq!(sub(hi, lo), Words::low_mask(b));
            prop_assert_eq!(lo.and(Words::low_mask(b)), Words::ZERO);
        }

        #[test]
        fn bucket_order_is_ascending_and_disjoint(
            used in (any::<u32>(), any::<u128>()).prop_map(|(h, l)| Words(h, l)),
            sparse in any::<u64>(),
            dk in (any::<u32>(), any::<u128>()).prop_map(|(h, l)| Words(h, l)),
            t in (any::<u32>(), any::<u128>()).prop_map(|(h, l)| Words(h, l)),
            t_kind in 0u8..4,
        ) {
            // Thin the bitmap out sometimes, as real tables are.
            let used = if sparse % 2 == 0 { used } else { used.and(Words(0xffff_0000, sparse as u128)) };
            let order = BucketOrder::new(used, dk);
            let asc: Vec<u8> = order.ascending().collect();
            let listed: BTreeSet<u8> = asc.iter().copied().collect();
            prop_assert_eq!(listed.len(), asc.len());
            prop_assert_eq!(listed.len(), ones(used));
            for &b in &listed {
                prop_assert!(used.and(Words::bit(usize::from(b))) != Words::ZERO);
            }
            for w in asc.windows(2) {
                let (a, b) = (order.interval(w[0]), order.interval(w[1]));
                prop_assert!(a.0 <= a.1 && a.1 < b.0, "{:?} then {:?}", a, b);
            }
            // Our own id is in no bucket: `D` lies in no interval.
            for &b in &asc {
                let (lo, hi) = order.interval(b);
                prop_assert!(dk < lo || hi < dk);
            }
            // Around a target (random, `D` itself, or an interval's end), the
            // two sides split the ascending order at the target and each
            // comes nearest first.
            let t = match (t_kind, asc.get(sparse as usize % asc.len().max(1))) {
                (1, _) => dk,
                (2, Some(&b)) => order.interval(b).0,
                (3, Some(&b)) => order.interval(b).1,
                _ => t,
            };
            let (below, above) = order.around(t);
            let (below, above): (Vec<u8>, Vec<u8>) = (below.collect(), above.collect());
            let split = asc.iter().take_while(|&&b| order.interval(b).1 < t).count();
            let expect_below: Vec<u8> = asc[..split].iter().rev().copied().collect();
            prop_assert_eq!(below, expect_below);
            prop_assert_eq!(above, asc[split..].to_vec());
        }

        #[test]
        fn nearest_to_distance_matches_brute_force_on_spread_tables(
            own in any::<[u8; ID_LEN]>().prop_map(Id),
            k in 1usize..6,
            picks in proptest::collection::vec((0usize..ID_BITS, any::<u64>()), 0..120),
            key_kind in 0u8..4,
            key_bits in any::<[u8; ID_LEN]>(),
            near_bits in 0usize..ID_BITS,
            kind in any::<u8>(),
            pick in any::<usize>(),
            count in 0usize..20,
            seed in any::<u64>(),
        ) {
            // Half the picks crowd the top buckets, as in a real table.
            let picks: Vec<(usize, u64)> = picks
                .into_iter()
                .enumerate()
                .map(|(i, (b, s))| if i % 2 == 0 { (ID_BITS - 1 - b % 12, s) } else { (b, s) })
                .collect();
            let rt = spread_table(own, k, &picks);
            let all: Vec<Contact> = rt.iter().map(|e| e.contact).collect();
            let mask = dist(Words::low_mask(near_bits));
            let key = match key_kind {
                // Random, near our own id, our own id, or a contact's id.
                0 => Id(key_bits),
                1 => own.xor(&Distance(std::array::from_fn(|i| key_bits[i] & mask.0[i]))),
                2 => own,
                _ => all.get(pick % all.len().max(1)).map_or(own, |c| c.id),
            };
            let mut rng = Rng::new(seed);
            let target = probe_target(&rt, &key, kind, pick, &mut rng);
            prop_assert_eq!(
                rt.nearest_to_distance(&key, target, count),
                nearest_reference(&all, &key, target, count)
            );
        }

        #[test]
        fn nearest_to_distance_breaks_ties_like_brute_force(
            own in any::<[u8; ID_LEN]>().prop_map(Id),
            key in any::<[u8; ID_LEN]>().prop_map(Id),
            target in any::<[u8; ID_LEN]>().prop_map(Distance),
            gaps in proptest::collection::vec((0usize..ID_BITS, any::<u64>()), 1..30),
            count in 1usize..16,
        ) {
            // Pairs of contacts at distances `target ± x`, which tie on
            // `|d − target|`, in whatever buckets those land.
            let mut rt = RoutingTable::new(own, 8, t(0));
            let tw = words(&target);
            for (i, &(bits, seed)) in gaps.iter().enumerate() {
                let x = Words::of(&Id::random(&mut Rng::new(seed)).0).and(Words::low_mask(bits));
                for (j, d) in [sub(tw, x), add(tw, x)].into_iter().enumerate() {
                    rt.observe(contact(key.xor(&dist(d)), (2 * i + j) as u32), t(0));
                }
            }
            check_invariants(&rt);
            let all: Vec<Contact> = rt.iter().map(|e| e.contact).collect();
            prop_assert_eq!(
                rt.nearest_to_distance(&key, target, count),
                nearest_reference(&all, &key, target, count)
            );
        }

        #[test]
        fn nearest_to_distance_visits_buckets_whose_bound_ties(
            own in any::<[u8; ID_LEN]>().prop_map(Id),
            key in any::<[u8; ID_LEN]>().prop_map(Id),
            b in 1usize..ID_BITS,
            x in any::<u64>(),
            noise in proptest::collection::vec((0usize..ID_BITS, any::<u64>()), 0..40),
            count in 1usize..6,
        ) {
            // A contact at the top end `hi` of bucket b's interval and a target
            // `x` above it: the bucket's bound is exactly `x`. Another contact at
            // `target + x` ties with it on `|d − target|` and loses on `d`.
            let order = BucketOrder::new(Words::ZERO, words(&own.distance(&key)));
            let hi = order.interval(b as u8).1;
            let x = match Words(0, u128::from(x)).and(Words::low_mask(b)) {
                Words::ZERO => Words(0, 1),
                x => x,
            };
            let target = add(hi, x);
            let mut rt = spread_table(own, 8, &noise);
            rt.observe(contact(key.xor(&dist(hi)), 1000), t(0));
            rt.observe(contact(key.xor(&dist(add(target, x))), 1001), t(0));
            check_invariants(&rt);
            let all: Vec<Contact> = rt.iter().map(|e| e.contact).collect();
            prop_assert_eq!(
                rt.nearest_to_distance(&key, dist(target), count),
                nearest_reference(&all, &key, dist(target), count)
            );
        }

        #[test]
        fn table_invariants_hold_under_any_sequence(
            seed in any::<u64>(),
            k in 1usize..5,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let (own, ids) = universe(seed);
            let mut rt = RoutingTable::new(own, k, Instant::ZERO);
            let mut now = Instant::ZERO;
            for op in ops {
                match op {
                    Op::Observe(i, a) => {
                        let res = rt.observe(contact(ids[i], u32::from(a)), now);
                        if i == 0 {
                            prop_assert_eq!(res, Observe::Ignored);
                        }
                        if let Observe::PingOldest(c) = res {
                            let b = own.bucket_index(&c.id);
                            prop_assert_eq!(b, own.bucket_index(&ids[i]));
                            prop_assert!(rt.contains(&c.id));
                        }
                        if i != 0 && matches!(res, Observe::Inserted | Observe::Updated) {
                            prop_assert!(rt.contains(&ids[i]));
                        }
                    }
                    Op::Success(i, r) => {
                        rt.record_success(&ids[i], r.map(|r| Duration::from_micros(u64::from(r) * 10)), now);
                    }
                    Op::Failure(i) => {
                        let was = rt.contains(&ids[i]);
                        let res = rt.record_failure(&ids[i], 2);
                        prop_assert_eq!(res == Failure::Unknown, !was);
                        if matches!(res, Failure::Dropped | Failure::Replaced) {
                            prop_assert!(!rt.contains(&ids[i]));
                        }
                    }
                    Op::Remove(i) => {
                        let was = rt.contains(&ids[i]);
                        prop_assert_eq!(rt.remove(&ids[i]).is_some(), was);
                        prop_assert!(!rt.contains(&ids[i]));
                    }
                    Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                }
                check_invariants(&rt);
            }
            let s = rt.stats();
            prop_assert_eq!(s.contacts, rt.len());
        }

        #[test]
        fn closest_equals_brute_force(
            seed in any::<u64>(),
            n in 0usize..80,
            count in 0usize..20,
            key in any::<[u8; ID_LEN]>().prop_map(Id),
        ) {
            let rt = random_table(seed, n, 4);
            let mut all: Vec<Contact> = rt.iter().map(|e| e.contact).collect();
            all.sort_by_key(|c| key.distance(&c.id));
            all.truncate(count);
            prop_assert_eq!(rt.closest(&key, count), all);
        }

        #[test]
        fn nearest_to_distance_mixes_target_and_closest(
            seed in any::<u64>(),
            n in 0usize..80,
            count in 0usize..12,
            halvings in 0usize..10,
            key in any::<[u8; ID_LEN]>().prop_map(Id),
        ) {
            let rt = random_table(seed, n, 4);
            let mut target = key.distance(&rt.own());
            for _ in 0..halvings {
                target = target.half();
            }
            let got = rt.nearest_to_distance(&key, target, count);
            let all: Vec<Contact> = rt.iter().map(|e| e.contact).collect();

            prop_assert!(got.len() <= count);
            prop_assert_eq!(got.len(), count.min(all.len()));
            let unique: BTreeSet<Id> = got.iter().map(|c| c.id).collect();
            prop_assert_eq!(unique.len(), got.len());
            prop_assert!(got.windows(2).all(|w| key.distance(&w[0].id) < key.distance(&w[1].id)));

            let best_target = all.iter().min_by_key(|c| {
                let d = key.distance(&c.id);
                (d.abs_diff(&target), d)
            });
            if let Some(b) = best_target.filter(|_| count >= 1) {
                prop_assert!(unique.contains(&b.id));
            }
            let best = all.iter().min_by_key(|c| key.distance(&c.id));
            if let Some(b) = best.filter(|_| count >= 2) {
                prop_assert!(unique.contains(&b.id));
            }
            prop_assert_eq!(got, nearest_reference(&all, &key, target, count));
        }
    }
}
