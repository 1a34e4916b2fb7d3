//! The node: one Coral DSHT participant as a sans-IO state machine.
//!
//! `Node` owns the sub-machines — one routing table per level, the sloppy
//! store, the lookups of running operations — and dispatches between them.
//! It keeps the RPC bookkeeping: every request in flight has a random id, a
//! deadline derived from the contact's RTT estimate, and (for lookups) a
//! hedge deadline before it; the next of a request's two deadlines is its
//! entry in one ordered set, so a reply cancels its timer in O(log n) and
//! `poll_timeout` is the first entry.
//!
//! Operations (spec §2–3):
//! - **get** walks each requested level, fastest first, with get-probes and
//!   stops at the first node holding values; a miss at one level continues
//!   at the next from the node where the walk stopped (spec §3.5).
//! - **put** runs, per level (fastest first), the forward phase with
//!   put-probes — stopping at the first node that is both full and loaded —
//!   then the reverse phase, storing at the closest non-full node seen and
//!   stepping back on refusal (spec §3.2).
//! - **join** pings the bootstrap addresses, walks toward its own id at
//!   every level, then refreshes the buckets farther than its closest
//!   neighbour, as Kademlia does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;
use smallvec::SmallVec;

use crate::config::{Config, LevelConfig};
use crate::contact::{ClusterInfo, Contact, Level, Services};
use crate::dsht::cluster::{ClusterParams, ClusterStats, LevelClusters, Switch};
use crate::dsht::hints::{self, Hint, Router};
use crate::dsht::lookup::{Hop, Lookup};
use crate::dsht::neighbours::{NeighbourStats, Neighbourhood};
use crate::dsht::routing::{Failure, Observe, RoutingTable, RttEstimator};
use crate::dsht::store::{self, Store};
use crate::id::{Distance, Id};
use crate::rng::Rng;
use crate::time::Instant;
use crate::wire::{self, Body, ErrorCode, Message, Scope, StoreResult};

/// Identifies an application operation (`join`, `get`, `put`); its result
/// arrives as an [`Event`] carrying the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OpId(pub u64);

/// A set of levels an operation runs at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Levels(pub u8);

impl Levels {
    /// Every level the node has.
    pub const ALL: Self = Self(u8::MAX);

    /// Only `level`.
    pub const fn only(level: Level) -> Self {
        Self(1 << level)
    }

    /// Whether `level` is in the set.
    pub const fn contains(self, level: Level) -> bool {
        level < 8 && self.0 & (1 << level) != 0
    }
}

/// A datagram the driver must send: `size` bytes at the start of the buffer
/// passed to [`Node::poll_transmit`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// How many bytes of the buffer to send.
    pub size: usize,
}

/// Something the application should know.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A `join` finished.
    Joined {
        /// The operation.
        op: OpId,
        /// Contacts in the level-0 routing table afterwards.
        contacts: usize,
    },
    /// A `get` finished.
    GetDone {
        /// The operation.
        op: OpId,
        /// The key.
        key: Id,
        /// The values found (empty when none was found at any level).
        values: Vec<Bytes>,
        /// The level at which the values were found.
        level: Option<Level>,
        /// Nodes that answered along the path, over all levels walked.
        hops: u32,
    },
    /// A `find_nodes` finished.
    NodesFound {
        /// The operation.
        op: OpId,
        /// The nodes, best first.
        nodes: Vec<Contact>,
        /// How many of them the DSHT's network hints named.
        hinted: usize,
    },
    /// A `find_hinted` finished.
    HintsFound {
        /// The operation.
        op: OpId,
        /// The nodes the hints name, best estimate first
        /// ([`hints::rank`]).
        hints: Vec<Hint>,
    },
    /// A `check_live` finished.
    Checked {
        /// The operation.
        op: OpId,
        /// The node checked.
        contact: Contact,
        /// Whether it answered.
        alive: bool,
    },
    /// A `put` finished.
    PutDone {
        /// The operation.
        op: OpId,
        /// The key.
        key: Id,
        /// Where the value was stored, per level (node id; this node's own id
        /// when it stored the value itself).
        stored: Vec<(Level, Id)>,
        /// Nodes that answered along the forward paths, over all levels.
        hops: u32,
    },
    /// A `find_closest` finished.
    ClosestFound {
        /// The operation.
        op: OpId,
        /// The key.
        key: Id,
        /// The live level-0 node closest to the key that this node found:
        /// one that answered the walk, or this node itself when it is closer.
        closest: Contact,
        /// Nodes that answered along the walk.
        hops: u32,
    },
    /// This node moved to another cluster at `level` (spec §4.3–4.4).
    ClusterChanged {
        /// The level.
        level: Level,
        /// The cluster left, as this node advertised it last.
        from: ClusterInfo,
        /// The cluster joined or founded, as this node now advertises it.
        to: ClusterInfo,
        /// Whether this node founded `to` (nothing it knew qualified, not
        /// even the cluster it left).
        founded: bool,
    },
}

/// Why [`Node::join`], [`Node::get`] or [`Node::put`] refused to start.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The value is longer than the configured maximum.
    #[error("value of {len} bytes exceeds the maximum of {max}")]
    ValueTooLong {
        /// The value's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// `max_ops` operations are already running.
    #[error("too many operations in flight")]
    Busy,
}

/// Per-message-type counters.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RpcCounts {
    /// Ping / pong.
    pub ping: u64,
    /// Find-near.
    pub find_near: u64,
    /// Get-probe.
    pub get_probe: u64,
    /// Put-probe.
    pub put_probe: u64,
    /// Store.
    pub store: u64,
    /// Neighbour exchanges (latency-near discovery).
    pub neighbours: u64,
    /// Replies of any kind.
    pub replies: u64,
}

/// What a node has done, as plain counters.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Requests and replies received, by type.
    pub rpcs_in: RpcCounts,
    /// Requests and replies sent, by type.
    pub rpcs_out: RpcCounts,
    /// Datagrams that failed to decode.
    pub malformed: u64,
    /// Replies that matched no pending request.
    pub unsolicited: u64,
    /// RPC attempts that timed out (each retransmission counts again).
    pub timeouts: u64,
    /// Requests sent again after a timeout.
    pub retransmits: u64,
    /// Extra RPCs sent because a reply was late.
    pub hedges: u64,
    /// Lookups finished (one per level walked).
    pub lookups: u64,
    /// Sum of hops over finished lookups.
    pub lookup_hops: u64,
    /// Puts this node kept itself because it was loaded for their key.
    pub puts_kept: u64,
    /// Stores refused because this node was full.
    pub refused_full: u64,
    /// Stores refused because this node was full and loaded.
    pub refused_loaded: u64,
    /// Cluster switches at any level (joins and foundings).
    pub cluster_switches: u64,
    /// Contacts dropped after repeated failures.
    pub contacts_dropped: u64,
    /// Requests dropped because too many RPCs were in flight.
    pub inflight_overflow: u64,
}

struct LevelState {
    info: ClusterInfo,
    founded: Instant,
    table: RoutingTable,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    /// The request with this id has timed out.
    Rpc(u64),
    /// The request with this id is late: its lookup may hedge.
    Hedge(u64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    Op(OpId),
    /// A ping to the oldest contact of a full bucket (Kademlia eviction).
    PingOldest,
    /// A ping whose answer needs no further step: telling a neighbour
    /// about us after a join walk, or measuring a contact's RTT.
    Probe,
    /// Asking a near node for its nearest nodes (latency discovery).
    Neighbours,
    /// Asking a member of a cluster this node is about to join for members
    /// of it, to measure them (see `LevelClusters::to_survey`).
    Survey,
}

/// A request as [`Inflight`] keeps it for retransmission. A [`Body`] is
/// sized for the longest reply (600 bytes); a request is a sixth of that.
#[derive(Clone)]
enum Request {
    Ping,
    Neighbours,
    /// `FindNear`, `GetProbe` or `PutProbe`, as `kind` says.
    Probe {
        kind: WalkKind,
        scope: Scope,
        key: Id,
        target: Distance,
    },
    Store {
        scope: Scope,
        key: Id,
        value: Bytes,
        ttl_secs: u32,
    },
}

impl Request {
    fn body(&self) -> Body {
        match self {
            Self::Ping => Body::Ping,
            Self::Neighbours => Body::Neighbours,
            &Self::Probe {
                kind,
                scope,
                key,
                target,
            } => match kind {
                WalkKind::Find => Body::FindNear { scope, key, target },
                WalkKind::Get => Body::GetProbe { scope, key, target },
                WalkKind::PutProbe => Body::PutProbe { scope, key, target },
            },
            Self::Store {
                scope,
                key,
                value,
                ttl_secs,
            } => Body::Store {
                scope: *scope,
                key: *key,
                value: value.clone(),
                ttl_secs: *ttl_secs,
            },
        }
    }
}

struct Inflight {
    to: SocketAddr,
    id: Option<Id>,
    level: Option<Level>,
    sent: Instant,
    deadline: Instant,
    /// While set, the request's one entry in `deadlines` is its hedge;
    /// the timeout's entry goes in when the hedge fires (always earlier).
    hedge_at: Option<Instant>,
    purpose: Purpose,
    /// The request, kept for retransmission.
    request: Request,
    /// Retransmissions still allowed.
    retries_left: u8,
    /// Whether it was retransmitted (then its reply gives no RTT sample:
    /// it cannot tell which copy it answers, Karn's rule).
    retransmitted: bool,
}

/// Requests awaiting a reply, by request id. They stay put in a slab and
/// the ordered map holds only their slots: a request is some 200 bytes,
/// and a map of them moved whole requests about on every insert and
/// removal, a window's worth of them in flight. Never iterated, so the
/// slots' order reaches no output.
#[derive(Default)]
struct InflightTable {
    slots: Slab<Inflight>,
    by_id: BTreeMap<u64, usize>,
}

impl InflightTable {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn contains_key(&self, req: &u64) -> bool {
        self.by_id.contains_key(req)
    }

    fn get(&self, req: &u64) -> Option<&Inflight> {
        self.by_id.get(req).and_then(|&i| self.slots.get(i))
    }

    fn get_mut(&mut self, req: &u64) -> Option<&mut Inflight> {
        self.by_id.get(req).and_then(|&i| self.slots.get_mut(i))
    }

    /// Files `f` under `req`, in place of any request already there.
    fn insert(&mut self, req: u64, f: Inflight) {
        match self.get_mut(&req) {
            Some(old) => *old = f,
            None => {
                let slot = self.slots.insert(f);
                self.by_id.insert(req, slot);
            }
        }
    }

    fn remove(&mut self, req: &u64) -> Option<Inflight> {
        let slot = self.by_id.remove(req)?;
        self.slots.try_remove(slot)
    }
}

/// What happened to an operation: an RPC's fate, or the kick that starts a step.
enum Outcome<'a> {
    /// Nothing came back yet: take the first steps.
    Start,
    /// Request `req` was answered (the reply stays with the datagram it
    /// was decoded from).
    Reply {
        req: u64,
        from: Contact,
        body: &'a Body,
    },
    /// Request `req` to `id` failed (timed out, or no RPC slot).
    Failed { req: u64, id: Option<Id> },
    /// An RPC of the lookup is late: it may hedge.
    Hedge,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WalkKind {
    Find,
    Get,
    PutProbe,
}

struct GetOp {
    key: Id,
    levels: SmallVec<[Level; 4]>,
    level: Level,
    lookup: Lookup,
    hops: u32,
    /// Set when the get reads network hints for [`Node::find_nodes`].
    /// Boxed: rare, and a get is moved whole at every step.
    nodes: Option<Box<NodesQuery>>,
}

/// What [`Node::find_nodes`] asked for, and what its hint lookups found.
#[derive(Clone)]
struct NodesQuery {
    level: Level,
    count: usize,
    target: IpAddr,
    services: Services,
    /// Router keys still to look up, in order.
    routers_left: SmallVec<[Id; 5]>,
    /// Hint values found so far: the prefix's, then each router's in order;
    /// for a part, its key's values, read on past the first holder (see
    /// [`GetOp::gather`]).
    found: Vec<Bytes>,
    /// This get is part `.1` of the [`HintGroup`] of operation `.0`.
    part: Option<(OpId, usize)>,
}

impl GetOp {
    /// Takes in the values a holder of the key returned; true when the get
    /// walks on rather than ending there. A get ends at the first holder
    /// (spec §3.3), except a part of a [`Node::find_hinted`], which reads
    /// on toward the key until it has `count` distinct values: sloppy
    /// storage leaves at most `l` values of a key at each node, and a
    /// place's hints are worth more the more of the nodes near it they
    /// name, to be ranked by how near.
    fn gather(&mut self, values: &[Bytes]) -> bool {
        let Some(q) = self.nodes.as_mut().filter(|q| q.part.is_some()) else {
            return false;
        };
        for v in values {
            if !q.found.contains(v) {
                q.found.push(v.clone());
            }
        }
        q.found.len() < q.count
    }

    /// What the get found: what it gathered, or else `holder`'s values.
    fn found_values(&mut self, holder: Vec<Bytes>) -> Vec<Bytes> {
        match self.nodes.as_mut().filter(|q| q.part.is_some()) {
            Some(q) => std::mem::take(&mut q.found),
            None => holder,
        }
    }
}

/// The gets of one [`Node::find_hinted`], one per hint key, run at once.
struct HintGroup {
    count: usize,
    services: Services,
    /// Each key's values once its get is done, in key order (the prefix,
    /// then the routers nearest the target first).
    parts: Vec<Option<Vec<Bytes>>>,
    /// The target's RTT to each router, in the routers' order.
    router_rtts: SmallVec<[Option<Duration>; MAX_ROUTER_HINTS]>,
}

/// Most router hints one `find_nodes` looks up (spec §5: the last five
/// hops toward the target).
pub const MAX_ROUTER_HINTS: usize = 5;

/// Members asked, each for the contacts nearest a random key, before a
/// join is confirmed: two answers of `reply_contacts` give a sample of the
/// cluster about as large as `min_samples` times five, from two vantage
/// points.
const SURVEY_MEMBERS: usize = 2;

struct PutOp {
    key: Id,
    value: Bytes,
    fingerprint: u64,
    ttl: Duration,
    levels: SmallVec<[Level; 4]>,
    level: Level,
    phase: PutPhase,
    stored: Vec<(Level, Id)>,
    hops: u32,
    /// Whether the end is reported as [`Event::PutDone`].
    notify: bool,
}

enum PutPhase {
    /// Probing toward the key; `stack` holds the probed nodes that were not
    /// both full and loaded, with whether they were full.
    Forward {
        lookup: Lookup,
        stack: Vec<(Distance, Contact, bool)>,
    },
    /// Storing at `candidates` in order, closest to the key first; `awaiting`
    /// is the store request in flight (replies to forward probes still
    /// arriving are ignored).
    Reverse {
        reached: Option<Contact>,
        candidates: VecDeque<Contact>,
        awaiting: Option<u64>,
    },
}

/// A value the node keeps alive in the DSHT.
struct Publication {
    ttl: Duration,
    levels: Levels,
    next_refresh: Instant,
}

struct JoinOp {
    pending_pings: u32,
    levels: SmallVec<[Level; 4]>,
    walk: Option<(Level, Lookup)>,
}

enum Op {
    Join(JoinOp),
    Get(GetOp),
    Put(PutOp),
    Refresh(Level, Lookup),
    Closest(Lookup),
    /// A liveness check of this contact ([`Node::check_live`]).
    Check(Contact),
}

/// Datagrams waiting for [`Node::poll_transmit`], encoded when queued (with
/// what the node knew then, as before) into one buffer that is reused once
/// drained: a queued reply is its bytes, not a [`Message`] of 700 bytes.
#[derive(Default)]
struct Outbox {
    /// Destination and length of each datagram, in order.
    queue: VecDeque<(SocketAddr, usize)>,
    bytes: Vec<u8>,
    /// Where the first datagram of `queue` starts in `bytes`.
    read: usize,
}

impl Outbox {
    /// Queues the message made of these fields for `to`.
    fn push(
        &mut self,
        to: SocketAddr,
        request_id: u64,
        sender: &Contact,
        clusters: &[ClusterInfo],
        body: &Body,
    ) {
        let start = self.bytes.len();
        wire::encode_parts(
            &mut self.bytes,
            request_id,
            &sender.id,
            sender.services,
            clusters,
            body,
        );
        self.queue.push_back((to, self.bytes.len() - start));
    }

    /// The next datagram, copied into `buf` (cleared first).
    fn pop(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (destination, size) = self.queue.pop_front()?;
        let end = self.read + size;
        buf.clear();
        buf.extend_from_slice(self.bytes.get(self.read..end).unwrap_or_default());
        self.read = end;
        if self.queue.is_empty() {
            self.bytes.clear();
            self.read = 0;
        }
        Some(Transmit {
            destination,
            size: buf.len(),
        })
    }
}

/// One Coral node.
pub struct Node {
    config: Config,
    contact: Contact,
    rng: Rng,
    levels: Vec<LevelState>,
    /// Latency clustering per level (spec §4): `None` for unbounded levels.
    clusters: Vec<Option<LevelClusters>>,
    /// When clusters are next re-evaluated.
    next_cluster_eval: Instant,
    /// The nearest nodes measured, for latency-near discovery.
    neighbours: Neighbourhood,
    store: Store,
    rtt: RttEstimator,
    /// Requests awaiting a reply.
    inflight: InflightTable,
    deadlines: BTreeSet<(Instant, Timer)>,
    /// Running operations, boxed: an ordered map shifts its values about
    /// on every insert and removal, and an operation is hundreds of bytes.
    ops: BTreeMap<OpId, Box<Op>>,
    next_op: u64,
    /// Operations taken out of `ops` while they take a step; they still
    /// count against `max_ops`.
    stepping: usize,
    /// [`Node::find_hinted`]s whose hint keys are looked up at once, by the
    /// operation the caller holds; each key's get is an operation of its
    /// own that reports here.
    hint_groups: BTreeMap<OpId, HintGroup>,
    next_maintenance: Instant,
    /// When to walk toward our own id again (after a join, then periodically).
    next_self_refresh: Option<Instant>,
    /// Values this node keeps alive by re-putting them (see [`Node::publish`]).
    published: BTreeMap<(Id, Bytes), Publication>,
    /// `published` ordered by next refresh, so refreshes never scan.
    refresh_due: BTreeSet<(Instant, Id, Bytes)>,
    outbox: Outbox,
    /// The message every datagram is decoded into (see [`Node::handle_datagram`]).
    rx: Option<Box<Message>>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.contact.id)
            .field("addr", &self.contact.addr)
            .field(
                "contacts",
                &self
                    .levels
                    .iter()
                    .map(|l| l.table.len())
                    .collect::<Vec<_>>(),
            )
            .field("ops", &self.ops.len())
            .field("inflight", &self.inflight.len())
            .finish()
    }
}

/// Whether two addresses share a network prefix as hints count it: the
/// same IPv4 /24 or IPv6 /48 (spec §5).
fn same_prefix(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets()[..6] == b.octets()[..6],
        _ => false,
    }
}

/// The cluster every node starts in at `level` until clustering moves it.
fn initial_cluster(level: Level) -> Id {
    Id::hash("coral-cluster", &[level])
}

impl Node {
    /// A node listening for RPCs at `addr`; its id derives from `addr`.
    ///
    /// `config.levels` must be non-empty and at most [`wire::MAX_LEVELS`]
    /// long; extra levels are ignored and an empty list means one global level.
    pub fn new(mut config: Config, addr: SocketAddr, now: Instant) -> Self {
        if config.levels.is_empty() {
            config.levels.push(LevelConfig::GLOBAL);
        }
        config.levels.truncate(wire::MAX_LEVELS);
        config.dsht.reply_contacts = config.dsht.reply_contacts.min(wire::MAX_CONTACTS);
        config.dsht.reply_values = config.dsht.reply_values.min(wire::MAX_VALUES);
        config.dsht.max_value_len = config.dsht.max_value_len.min(wire::MAX_VALUE_LEN);
        let contact = Contact::from_addr(addr, config.services);
        let mut rng = Rng::new(config.seed);
        let mut levels = Vec::with_capacity(config.levels.len());
        let mut clusters = Vec::with_capacity(config.levels.len());
        for (i, lc) in config.levels.iter().enumerate() {
            let level = i as Level;
            // A bounded level starts as a cluster of one, founded now, and
            // merges as the node measures its neighbours (spec §4.3).
            let (cluster, clustering) = match lc.diameter {
                Some(d) if level > 0 => {
                    let id = Id::random(&mut rng);
                    let params = ClusterParams::for_diameter(d);
                    (
                        id,
                        Some(LevelClusters::new(level, params, contact.id, id, now)),
                    )
                }
                _ => (initial_cluster(level), None),
            };
            levels.push(LevelState {
                info: ClusterInfo {
                    level,
                    cluster,
                    size: 1,
                    age_secs: 0,
                },
                founded: now,
                table: RoutingTable::new(contact.id, config.dsht.k, now),
            });
            clusters.push(clustering);
        }
        let store = Store::new(&config.dsht);
        let neighbours = Neighbourhood::new(contact.id, config.dsht.neighbours);
        let tick = config.dsht.maintenance_interval;
        let first_tick = now + tick + rng.jitter(tick);
        let eval = config.dsht.cluster_eval_interval;
        let first_eval = now + eval + rng.jitter(eval / 4);
        Self {
            config,
            contact,
            rng,
            levels,
            clusters,
            next_cluster_eval: first_eval,
            neighbours,
            store,
            rtt: RttEstimator::default(),
            inflight: InflightTable::default(),
            deadlines: BTreeSet::new(),
            ops: BTreeMap::new(),
            next_op: 0,
            stepping: 0,
            hint_groups: BTreeMap::new(),
            next_maintenance: first_tick,
            next_self_refresh: None,
            published: BTreeMap::new(),
            refresh_due: BTreeSet::new(),
            outbox: Outbox::default(),
            rx: None,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> Id {
        self.contact.id
    }

    /// This node as others see it.
    pub fn contact(&self) -> Contact {
        self.contact
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters of the sloppy store.
    pub fn store_stats(&self) -> store::StoreStats {
        self.store.stats()
    }

    /// The level hierarchy (spec §2 `levels()`).
    pub fn levels(&self) -> &[LevelConfig] {
        &self.config.levels
    }

    /// This node's cluster at each level.
    pub fn clusters(&self) -> Vec<ClusterInfo> {
        self.levels.iter().map(|l| l.info).collect()
    }

    /// The clustering counters of `level` (`None` for level 0, an
    /// unbounded level or an unknown one).
    pub fn cluster_stats(&self, level: Level) -> Option<ClusterStats> {
        self.clusters
            .get(usize::from(level))
            .and_then(|c| c.as_ref().map(LevelClusters::stats))
    }

    /// What this node knows of the clusters at `level` (none for an
    /// unbounded or unknown level), best first in the merge order: each
    /// cluster's id, size and age as this node sees them, with how many of
    /// its members this node has measured and how many of those are within
    /// the level's diameter.
    pub fn cluster_candidates(
        &self,
        now: Instant,
        level: Level,
    ) -> Vec<(ClusterInfo, usize, usize)> {
        self.clusters
            .get(usize::from(level))
            .and_then(Option::as_ref)
            .map(|c| c.candidates(now))
            .unwrap_or_default()
    }

    /// The counters of latency-near discovery.
    pub fn neighbour_stats(&self) -> NeighbourStats {
        self.neighbours.stats()
    }

    /// The nearest nodes this node has measured, nearest first, with their
    /// RTT estimates.
    pub fn neighbours(&self) -> Vec<(Contact, Duration)> {
        self.neighbours
            .nearest(usize::MAX, &self.contact.id)
            .collect()
    }

    /// Contacts in the routing table of `level` (0 for an unknown level).
    pub fn routing_len(&self, level: Level) -> usize {
        self.levels
            .get(usize::from(level))
            .map_or(0, |l| l.table.len())
    }

    /// The contacts in the routing table of `level`, by bucket (empty for an unknown level).
    pub fn contacts(&self, level: Level) -> Vec<Contact> {
        self.levels
            .get(usize::from(level))
            .map(|l| l.table.iter().map(|e| e.contact).collect())
            .unwrap_or_default()
    }

    /// Values this node holds for `key` at `level`, longest-lived first.
    pub fn stored_values(&self, now: Instant, level: Level, key: &Id) -> Vec<Bytes> {
        self.store
            .get(now, level, *key, usize::MAX)
            .cloned()
            .collect()
    }

    /// Operations still running.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len() + self.stepping
    }

    /// Refuses a new operation when `max_ops` are running.
    fn check_capacity(&self) -> Result<(), OpError> {
        if self.ops_in_flight() >= self.config.dsht.max_ops {
            return Err(OpError::Busy);
        }
        Ok(())
    }

    // ----- inputs ----------------------------------------------------------

    /// A datagram arrived on the RPC socket. Malformed input is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        // Decoded into the node's one message, taken out while it is read
        // (the node's methods take `&mut self`) and put back after: a
        // message is sized for the longest reply, and each move of one is
        // a copy of some 700 bytes.
        let mut msg = self.rx.take().unwrap_or_else(|| Box::new(Message::empty()));
        match msg.decode_into(data) {
            Ok(()) => self.handle_message(now, from, &msg),
            Err(_) => self.stats.malformed += 1,
        }
        self.rx = Some(msg);
    }

    /// A datagram that decoded as `msg`.
    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: &Message) {
        if msg.sender == self.contact.id {
            self.stats.malformed += 1;
            return;
        }
        let sender = Contact {
            id: msg.sender,
            addr: from,
            services: msg.services,
        };
        if msg.body.is_reply() {
            self.stats.rpcs_in.replies += 1;
            // Only a reply to our own request is believed, and it carries
            // the RTT sample clustering needs.
            let Some(f) = self.take_inflight(&sender, msg.request_id) else {
                self.stats.unsolicited += 1;
                return;
            };
            let rtt = (!f.retransmitted).then(|| now - f.sent);
            self.observe(now, sender, &msg.clusters, rtt);
            self.on_reply(now, sender, msg.request_id, f, rtt, &msg.body);
        } else {
            self.observe(now, sender, &msg.clusters, None);
            self.on_request(now, sender, msg.request_id, &msg.body);
        }
    }

    /// Time has reached a deadline from [`Self::poll_timeout`]; extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, timer));
            match timer {
                Timer::Rpc(req) => self.on_rpc_timeout(now, req),
                Timer::Hedge(req) => {
                    let Some(f) = self.inflight.get_mut(&req) else {
                        continue;
                    };
                    f.hedge_at = None;
                    self.deadlines.insert((f.deadline, Timer::Rpc(req)));
                    if let Purpose::Op(op) = f.purpose {
                        self.advance(now, op, Outcome::Hedge);
                    }
                }
            }
        }
        if self.store.next_expiry().is_some_and(|t| t <= now) {
            self.store.expire(now);
        }
        self.refresh_publications(now);
        if self.next_maintenance <= now {
            self.maintenance(now);
            self.next_maintenance = now
                + self.config.dsht.maintenance_interval
                + self.rng.jitter(self.config.dsht.maintenance_interval / 5);
        }
        // Its own deadline, not the next housekeeping tick after it: on the
        // 10 s tick a 20-25 s interval became 20-36 s, two ticks or three
        // at random, and merges that cascade took a third longer.
        if self.next_cluster_eval <= now && self.clustering() {
            let eval = self.config.dsht.cluster_eval_interval;
            self.next_cluster_eval = now + eval + self.rng.jitter(eval / 4);
            self.evaluate_clusters(now);
        }
    }

    // ----- outputs ---------------------------------------------------------

    /// The next datagram to send, encoded into `buf` (cleared first).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.outbox.pop(buf)
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_maintenance;
        if let Some(&(at, _)) = self.deadlines.first() {
            t = t.min(at);
        }
        if let Some(at) = self.store.next_expiry() {
            t = t.min(at);
        }
        if let Some(&(at, _, _)) = self.refresh_due.first() {
            t = t.min(at);
        }
        if self.clustering() {
            t = t.min(self.next_cluster_eval);
        }
        Some(t)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- application commands -------------------------------------------

    /// Joins the network through `bootstrap` addresses by looking up our own
    /// id. With no bootstrap address the node is a network of one and
    /// [`Event::Joined`] follows at once.
    ///
    /// Refused with [`OpError::Busy`] when `max_ops` operations are running.
    pub fn join(&mut self, now: Instant, bootstrap: &[SocketAddr]) -> Result<OpId, OpError> {
        self.check_capacity()?;
        let op = self.alloc_op();
        let levels = self.all_levels_slowest_first();
        let mut join = JoinOp {
            pending_pings: 0,
            levels,
            walk: None,
        };
        for addr in bootstrap {
            if *addr == self.contact.addr {
                continue;
            }
            let req = self.send_request(
                now,
                *addr,
                None,
                None,
                Request::Ping,
                Purpose::Op(op),
                false,
            );
            if req.is_some() {
                join.pending_pings += 1;
            }
        }
        self.ops.insert(op, Box::new(Op::Join(join)));
        if self.op_pending_pings(op) == 0 {
            self.advance(now, op, Outcome::Start);
        }
        Ok(op)
    }

    /// Starts a get of `key` at `levels`, fastest level first. The result
    /// arrives as [`Event::GetDone`].
    ///
    /// Refused with [`OpError::Busy`] when `max_ops` operations are running.
    pub fn get(&mut self, now: Instant, key: Id, levels: Levels) -> Result<OpId, OpError> {
        self.check_capacity()?;
        let op = self.alloc_op();
        let (level, todo) = self.level_plan(levels);
        let lookup = self
            .new_lookup(level, key)
            .with_sweep(self.config.dsht.get_sweep);
        self.start_get_level(
            now,
            op,
            GetOp {
                key,
                levels: todo,
                level,
                lookup,
                hops: 0,
                nodes: None,
            },
        );
        Ok(op)
    }

    /// Starts a put of `value` under `key` for `ttl` at every level in
    /// `levels`, fastest first. The result arrives as [`Event::PutDone`].
    pub fn put(
        &mut self,
        now: Instant,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<OpId, OpError> {
        self.start_put(now, key, value, ttl, levels, true)
    }

    /// Starts a put; `notify` says whether its end is an application event
    /// (refreshes and hints the node makes on its own are not).
    fn start_put(
        &mut self,
        now: Instant,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
        notify: bool,
    ) -> Result<OpId, OpError> {
        let max = self.config.dsht.max_value_len;
        if value.len() > max {
            return Err(OpError::ValueTooLong {
                len: value.len(),
                max,
            });
        }
        self.check_capacity()?;
        let op = self.alloc_op();
        let ttl = self.clamp_ttl(ttl);
        let (level, todo) = self.level_plan(levels);
        let lookup = self.new_lookup(level, key);
        let fingerprint = store::fingerprint(&value);
        self.ops.insert(
            op,
            Box::new(Op::Put(PutOp {
                key,
                value,
                fingerprint,
                ttl,
                levels: todo,
                level,
                phase: PutPhase::Forward {
                    lookup,
                    stack: Vec::new(),
                },
                stored: Vec::new(),
                hops: 0,
                notify,
            })),
        );
        self.start_put_level(now, op);
        Ok(op)
    }

    /// Puts `value` under `key` and keeps it alive: the node re-puts it
    /// every `ttl / 2` (soft state refreshed by its publisher, spec §2) and
    /// again at a level whose cluster it joins, until [`Self::withdraw`].
    /// Publishing a value already published updates its TTL and levels.
    /// The first put's result arrives as [`Event::PutDone`].
    pub fn publish(
        &mut self,
        now: Instant,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<OpId, OpError> {
        self.publish_with(now, key, value, ttl, levels, true)
    }

    /// [`Self::publish`], reporting the first put as an event only when `notify`.
    fn publish_with(
        &mut self,
        now: Instant,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
        notify: bool,
    ) -> Result<OpId, OpError> {
        let slot = (key, value.clone());
        if !self.published.contains_key(&slot)
            && self.published.len() >= self.config.dsht.max_published
        {
            return Err(OpError::Busy);
        }
        let op = self.start_put(now, key, value.clone(), ttl, levels, notify)?;
        // At least 2 s, so the refresh interval (ttl / 2) is a whole second.
        let ttl = self.clamp_ttl(ttl).max(Duration::from_secs(2));
        let next_refresh = now + ttl / 2;
        if let Some(old) = self.published.insert(
            slot,
            Publication {
                ttl,
                levels,
                next_refresh,
            },
        ) {
            self.refresh_due
                .remove(&(old.next_refresh, key, value.clone()));
        }
        self.refresh_due.insert((next_refresh, key, value));
        Ok(op)
    }

    /// Stops refreshing a published value; it expires with its TTL.
    /// Returns whether it was published.
    pub fn withdraw(&mut self, key: &Id, value: &[u8]) -> bool {
        let slot = (*key, Bytes::copy_from_slice(value));
        match self.published.remove(&slot) {
            Some(p) => {
                self.refresh_due.remove(&(p.next_refresh, slot.0, slot.1));
                true
            }
            None => false,
        }
    }

    /// Re-puts the due publications. A publication that cannot start now
    /// (too many operations) is retried at the next housekeeping tick.
    fn refresh_publications(&mut self, now: Instant) {
        while let Some((at, key, value)) = self.refresh_due.first().cloned() {
            if at > now {
                break;
            }
            self.refresh_due.remove(&(at, key, value.clone()));
            let Some(p) = self.published.get(&(key, value.clone())) else {
                continue;
            };
            let (ttl, levels) = (p.ttl, p.levels);
            let next = match self.start_put(now, key, value.clone(), ttl, levels, false) {
                Ok(_) => now + ttl / 2,
                Err(_) => now + self.config.dsht.maintenance_interval,
            };
            if let Some(p) = self.published.get_mut(&(key, value.clone())) {
                p.next_refresh = next;
            }
            self.refresh_due.insert((next, key, value));
        }
    }

    /// Publishes this node's network hints (spec §5): its IPv4 /24 (or
    /// IPv6 /48) prefix, and any `routers` on its path, each mapped to this
    /// node at every level, each router's hint with this node's RTT to it
    /// when `rtt` is known ([`hints`]). Only the first
    /// [`MAX_ROUTER_HINTS`] routers count, as many as a lookup reads. Hints
    /// no longer listed (a router gone, or its RTT changed) are withdrawn.
    pub fn publish_hints(&mut self, now: Instant, routers: &[Router]) {
        let ttl = self.config.dsht.hint_ttl;
        let prefix = match self.contact.addr.ip() {
            IpAddr::V4(v4) => Id::for_ipv4_prefix(v4),
            IpAddr::V6(v6) => Id::for_ipv6_prefix(v6),
        };
        // The first RTT given for a router counts.
        let mut hints: BTreeMap<Id, Bytes> = BTreeMap::new();
        for r in routers.iter().take(MAX_ROUTER_HINTS) {
            hints
                .entry(Id::for_router(r.addr))
                .or_insert_with(|| wire::hint_value(&self.contact, r.rtt));
        }
        hints.insert(prefix, wire::hint_value(&self.contact, None));
        let me = self.contact;
        let stale: Vec<(Id, Bytes)> = self
            .published
            .keys()
            .filter(|(k, v)| {
                wire::hint_from_value(v).is_ok_and(|(c, _)| c == me) && hints.get(k) != Some(v)
            })
            .cloned()
            .collect();
        for (k, v) in stale {
            self.withdraw(&k, &v);
        }
        for (k, v) in hints {
            let _ = self.publish_with(now, k, v, ttl, Levels::ALL, false);
        }
    }

    /// Publications this node keeps alive.
    pub fn publications(&self) -> usize {
        self.published.len()
    }

    /// Checks that `contact` is alive with one ping RPC (retried as any
    /// RPC is), as the DNS server does before naming a proxy it has not
    /// heard from itself (spec §6.3). The answer arrives as
    /// [`Event::Checked`]; a reply also counts as hearing from the node.
    pub fn check_live(&mut self, now: Instant, contact: Contact) -> Result<OpId, OpError> {
        self.check_capacity()?;
        let op = self.alloc_op();
        let sent = self.send_request(
            now,
            contact.addr,
            Some(contact.id),
            None,
            Request::Ping,
            Purpose::Op(op),
            false,
        );
        if sent.is_none() {
            // No room for another RPC in flight: not known to be alive.
            self.events.push_back(Event::Checked {
                op,
                contact,
                alive: false,
            });
        } else {
            self.ops.insert(op, Box::new(Op::Check(contact)));
        }
        Ok(op)
    }

    /// Finds the live node closest to `key` in the global (level-0) DSHT:
    /// a halving walk toward `key` that, like a get, keeps asking until
    /// the `get_sweep` closest nodes it knows have answered. The answer
    /// arrives as [`Event::ClosestFound`]. Every node that asks about one
    /// key converges on the same node, which makes it a meeting point: the
    /// HTTP proxy asks it for the one claim on a URL.
    pub fn find_closest(&mut self, now: Instant, key: Id) -> Result<OpId, OpError> {
        self.check_capacity()?;
        let op = self.alloc_op();
        let mut lookup = self
            .new_lookup(0, key)
            .with_sweep(self.config.dsht.get_sweep);
        if self.step_walk(now, op, 0, &mut lookup, WalkKind::Find, Outcome::Start) {
            self.finish_closest(now, op, &lookup);
        } else {
            self.ops.insert(op, Box::new(Op::Closest(lookup)));
        }
        Ok(op)
    }

    fn finish_closest(&mut self, now: Instant, op: OpId, lookup: &Lookup) {
        self.finish_walk(now, 0, lookup);
        let key = lookup.key();
        let closest = lookup
            .closest_answered(1)
            .into_iter()
            .chain([self.contact])
            .min_by_key(|c| c.id.distance(&key))
            .unwrap_or(self.contact);
        self.events.push_back(Event::ClosestFound {
            op,
            key,
            closest,
            hops: lookup.answers(),
        });
    }

    /// Up to `count` live nodes of this node's cluster at `level` (spec §2
    /// `nodes()`) offering every service in `services`, from local
    /// knowledge alone: nodes in `target`'s network prefix first, then by
    /// measured RTT. Only nodes heard from within the last bucket-refresh
    /// interval count. [`Self::find_nodes`] also reads the DSHT's hints.
    pub fn nodes(
        &self,
        now: Instant,
        level: Level,
        count: usize,
        target: Option<IpAddr>,
        services: Services,
    ) -> Vec<Contact> {
        let mut v = self.local_ranking(now, level, target, services);
        v.truncate(count);
        v
    }

    /// Finds up to `count` live nodes of this node's cluster at `level`
    /// near `target` (spec §5): those the DSHT's network hints place in
    /// `target`'s prefix first, then nodes in that prefix this node knows,
    /// then by measured RTT, then a random walk over the rest of the
    /// cluster. The answer arrives as [`Event::NodesFound`].
    pub fn find_nodes(
        &mut self,
        now: Instant,
        level: Level,
        count: usize,
        target: IpAddr,
        services: Services,
    ) -> Result<OpId, OpError> {
        self.find_nodes_via(now, level, count, target, &[], services)
    }

    /// [`Self::find_nodes`] that also reads the router hints (spec §5) of
    /// `routers`, the last hops on the path toward `target` as the
    /// adapter's traceroute-like probe found them, the hop nearest the
    /// target first (at most [`MAX_ROUTER_HINTS`] are used). Nodes that
    /// published a hint for the target's prefix come first, then those of
    /// each router in order.
    pub fn find_nodes_via(
        &mut self,
        now: Instant,
        level: Level,
        count: usize,
        target: IpAddr,
        routers: &[IpAddr],
        services: Services,
    ) -> Result<OpId, OpError> {
        let routers: SmallVec<[Router; MAX_ROUTER_HINTS]> =
            routers.iter().map(|&r| Router::unmeasured(r)).collect();
        self.start_find_nodes(now, level, count, target, &routers, services, false)
    }

    /// The nodes the DSHT's network hints at `level` name as near `target`
    /// (its prefix's and each of `routers`', the router nearest the target
    /// first, each with the target's RTT to it when known), offering
    /// `services`, whether or not this node has heard from them: a hint is
    /// a node's own claim, refreshed while it lives (spec §5). They come
    /// ranked by their estimated RTT to the target ([`hints::rank`]). The
    /// DNS server uses them to send a resolver to nodes near it. The answer
    /// arrives as [`Event::HintsFound`].
    pub fn find_hinted(
        &mut self,
        now: Instant,
        level: Level,
        count: usize,
        target: IpAddr,
        routers: &[Router],
        services: Services,
    ) -> Result<OpId, OpError> {
        self.start_find_nodes(now, level, count, target, routers, services, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_find_nodes(
        &mut self,
        now: Instant,
        level: Level,
        count: usize,
        target: IpAddr,
        routers: &[Router],
        services: Services,
        trust_hints: bool,
    ) -> Result<OpId, OpError> {
        self.check_capacity()?;
        let op = self.alloc_op();
        let level = level.min(self.levels.len().saturating_sub(1) as Level);
        let key = match target {
            IpAddr::V4(v4) => Id::for_ipv4_prefix(v4),
            IpAddr::V6(v6) => Id::for_ipv6_prefix(v6),
        };
        let lookup = self
            .new_lookup(level, key)
            .with_sweep(self.config.dsht.get_sweep);
        // Each router once, the first RTT given for it counting (as in
        // `publish_hints`).
        let mut routers_left: SmallVec<[Id; MAX_ROUTER_HINTS]> = SmallVec::new();
        let mut router_rtts: SmallVec<[Option<Duration>; MAX_ROUTER_HINTS]> = SmallVec::new();
        for r in routers {
            let k = Id::for_router(r.addr);
            if routers_left.len() < MAX_ROUTER_HINTS && !routers_left.contains(&k) {
                routers_left.push(k);
                router_rtts.push(r.rtt);
            }
        }
        if trust_hints {
            // Every key at once: the answer waits for the slowest get, not
            // for the sum of them.
            let keys: SmallVec<[Id; 6]> = std::iter::once(key).chain(routers_left).collect();
            if self.ops_in_flight() + keys.len() > self.config.dsht.max_ops {
                return Err(OpError::Busy);
            }
            self.hint_groups.insert(
                op,
                HintGroup {
                    count,
                    services,
                    parts: vec![None; keys.len()],
                    router_rtts,
                },
            );
            for (i, key) in keys.into_iter().enumerate() {
                let part = self.alloc_op();
                let lookup = self
                    .new_lookup(level, key)
                    .with_sweep(self.config.dsht.get_sweep);
                let query = NodesQuery {
                    level,
                    count,
                    target,
                    services,
                    routers_left: SmallVec::new(),
                    found: Vec::new(),
                    part: Some((op, i)),
                };
                self.start_get_level(
                    now,
                    part,
                    GetOp {
                        key,
                        levels: SmallVec::new(),
                        level,
                        lookup,
                        hops: 0,
                        nodes: Some(Box::new(query)),
                    },
                );
            }
            return Ok(op);
        }
        routers_left.reverse();
        let query = NodesQuery {
            level,
            count,
            target,
            services,
            routers_left,
            found: Vec::new(),
            part: None,
        };
        self.start_get_level(
            now,
            op,
            GetOp {
                key,
                levels: SmallVec::new(),
                level,
                lookup,
                hops: 0,
                nodes: Some(Box::new(query)),
            },
        );
        Ok(op)
    }

    /// Fresh contacts of `level` offering `services` (and this node itself
    /// when it does): same prefix as `target` first, then by RTT, then
    /// unmeasured ones by id distance.
    fn local_ranking(
        &self,
        now: Instant,
        level: Level,
        target: Option<IpAddr>,
        services: Services,
    ) -> Vec<Contact> {
        let Some(ls) = self.levels.get(usize::from(level)) else {
            return Vec::new();
        };
        let near = |c: &Contact| target.is_some_and(|t| same_prefix(c.addr.ip(), t));
        let fresh_after = now.saturating_sub(self.config.dsht.bucket_refresh);
        let mut v: Vec<(bool, Duration, Distance, Contact)> = ls
            .table
            .iter()
            .filter(|e| e.contact.services.contains(services) && e.last_seen >= fresh_after)
            .map(|e| {
                let rtt = e.rtt.srtt().unwrap_or(Duration::MAX);
                (
                    !near(&e.contact),
                    rtt,
                    e.contact.id.distance(&self.contact.id),
                    e.contact,
                )
            })
            .collect();
        if self.contact.services.contains(services) {
            v.push((
                !near(&self.contact),
                Duration::ZERO,
                Distance::ZERO,
                self.contact,
            ));
        }
        v.sort_unstable_by_key(|a| (a.0, a.1, a.2));
        v.into_iter().map(|(_, _, _, c)| c).collect()
    }

    /// Ends a get: an application event, or a `find_nodes` answer.
    fn finish_get(
        &mut self,
        now: Instant,
        op: OpId,
        g: GetOp,
        values: Vec<Bytes>,
        level: Option<Level>,
    ) {
        let Some(mut q) = g.nodes else {
            self.events.push_back(Event::GetDone {
                op,
                key: g.key,
                values,
                level,
                hops: g.hops,
            });
            return;
        };
        if let Some((parent, i)) = q.part {
            let Some(group) = self.hint_groups.get_mut(&parent) else {
                return;
            };
            if let Some(slot) = group.parts.get_mut(i) {
                *slot = Some(values);
            }
            if group.parts.iter().any(Option::is_none) {
                return;
            }
            let Some(group) = self.hint_groups.remove(&parent) else {
                return;
            };
            let mut parts = group.parts.iter().map(|p| p.as_deref().unwrap_or_default());
            let prefix = parts.next().unwrap_or_default();
            let routers = group.router_rtts.iter().copied().zip(parts);
            self.events.push_back(Event::HintsFound {
                op: parent,
                hints: hints::rank(prefix, routers, group.services, group.count),
            });
            return;
        }
        q.found.extend(values);
        if let Some(key) = q.routers_left.pop() {
            // The next router's hints, at the same level.
            let lookup = self
                .new_lookup(q.level, key)
                .with_sweep(self.config.dsht.get_sweep);
            self.start_get_level(
                now,
                op,
                GetOp {
                    key,
                    levels: SmallVec::new(),
                    level: q.level,
                    lookup,
                    hops: g.hops,
                    nodes: Some(q),
                },
            );
            return;
        }
        let local = self.local_ranking(now, q.level, Some(q.target), q.services);
        // Hinted nodes count only if they are live members we know (or us).
        let hinted: Vec<Contact> = q
            .found
            .iter()
            .filter_map(|v| wire::hint_from_value(v).ok())
            .filter_map(|(h, _)| local.iter().find(|c| c.id == h.id).copied())
            .fold(Vec::new(), |mut v: Vec<Contact>, c| {
                if !v.iter().any(|d| d.id == c.id) {
                    v.push(c);
                }
                v
            });
        let mut nodes: Vec<Contact> = Vec::with_capacity(q.count);
        for c in hinted.iter().chain(local.iter().filter(|c| {
            same_prefix(c.addr.ip(), q.target)
                || c.id == self.contact.id
                || self.measured(q.level, &c.id)
        })) {
            if nodes.len() < q.count && !nodes.iter().any(|n| n.id == c.id) {
                nodes.push(*c);
            }
        }
        // The rest: a random walk over the cluster's other members.
        let mut rest: Vec<Contact> = local
            .into_iter()
            .filter(|c| !nodes.iter().any(|n| n.id == c.id))
            .collect();
        self.rng.shuffle(&mut rest);
        nodes.extend(rest.into_iter().take(q.count.saturating_sub(nodes.len())));
        self.events.push_back(Event::NodesFound {
            op,
            nodes,
            hinted: hinted.len(),
        });
    }

    /// Whether this node has an RTT estimate for contact `id` at `level`.
    fn measured(&self, level: Level, id: &Id) -> bool {
        self.levels
            .get(usize::from(level))
            .and_then(|l| l.table.get(id))
            .is_some_and(|e| e.rtt.srtt().is_some())
    }

    // ----- internals: bookkeeping -----------------------------------------

    fn alloc_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn op_pending_pings(&self, op: OpId) -> u32 {
        match self.ops.get(&op).map(|b| &**b) {
            Some(Op::Join(j)) => j.pending_pings,
            _ => 0,
        }
    }

    fn all_levels_slowest_first(&self) -> SmallVec<[Level; 4]> {
        (0..self.levels.len() as Level).collect()
    }

    /// The order an operation walks the requested levels this node has
    /// (level 0 if none): the fastest (highest) level to start with, and
    /// the rest slowest first, so that popping them gives the next fastest.
    fn level_plan(&self, set: Levels) -> (Level, SmallVec<[Level; 4]>) {
        let mut rest: SmallVec<[Level; 4]> = (0..self.levels.len() as Level)
            .filter(|l| set.contains(*l))
            .collect();
        let first = rest.pop().unwrap_or(0);
        (first, rest)
    }

    /// A put's TTL: at most `max_ttl`, at least a second.
    fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.min(self.config.dsht.max_ttl)
            .max(Duration::from_secs(1))
    }

    fn new_lookup(&self, level: Level, key: Id) -> Lookup {
        let seeds = self
            .levels
            .get(usize::from(level))
            .map(|l| l.table.iter().map(|e| e.contact));
        Lookup::new(
            self.contact.id,
            key,
            seeds.into_iter().flatten(),
            self.config.dsht.lookup_max_rpcs,
        )
    }

    /// Queues a message from this node to `to`, with our clusters as of `now`.
    fn send_message(&mut self, now: Instant, to: SocketAddr, request_id: u64, body: &Body) {
        let clusters: SmallVec<[ClusterInfo; 3]> = self
            .levels
            .iter()
            .map(|l| ClusterInfo {
                age_secs: u32::try_from((now - l.founded).as_secs()).unwrap_or(u32::MAX),
                ..l.info
            })
            .collect();
        self.outbox
            .push(to, request_id, &self.contact, &clusters, body);
    }

    fn scope(&self, level: Level) -> Scope {
        let cluster = self
            .levels
            .get(usize::from(level))
            .map_or(Id::ZERO, |l| l.info.cluster);
        Scope { level, cluster }
    }

    fn count_out(&mut self, body: &Body) {
        let c = &mut self.stats.rpcs_out;
        match body {
            Body::Ping => c.ping += 1,
            Body::FindNear { .. } => c.find_near += 1,
            Body::GetProbe { .. } => c.get_probe += 1,
            Body::PutProbe { .. } => c.put_probe += 1,
            Body::Store { .. } => c.store += 1,
            Body::Neighbours => c.neighbours += 1,
            _ => c.replies += 1,
        }
    }

    fn reply(&mut self, now: Instant, to: SocketAddr, request_id: u64, body: Body) {
        self.count_out(&body);
        self.send_message(now, to, request_id, &body);
    }

    /// Timeout and hedge delay for an RPC to `id`. A measured contact gets
    /// both from its own RTT estimate. Most hops of a lookup go to contacts
    /// never measured: they are hedged early, from the node-wide estimate,
    /// but only declared dead after the maximum timeout — a far peer is slow,
    /// not dead, and dropping it would end walks short of the key.
    fn rto(&self, id: Option<Id>, level: Option<Level>) -> (Duration, Duration) {
        let d = &self.config.dsht;
        let table = self
            .levels
            .get(usize::from(level.unwrap_or(0)))
            .map(|l| &l.table);
        let own = id
            .and_then(|id| table.and_then(|t| t.get(&id)))
            .map(|e| &e.rtt)
            .filter(|r| r.srtt().is_some());
        let (timeout, est) = match own {
            Some(r) => (r.rto(d.rpc_timeout_min, d.rpc_timeout_max), r),
            None => (d.rpc_timeout_max, &self.rtt),
        };
        let hedge = est
            .hedge_after(d.hedge_after_srtts, d.rpc_timeout_min, d.rpc_timeout_max)
            .min(timeout);
        (timeout, hedge)
    }

    /// Sends a request and arms its timers. Returns its id, or `None` when
    /// too many RPCs are in flight.
    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: Option<Id>,
        level: Option<Level>,
        request: Request,
        purpose: Purpose,
        may_hedge: bool,
    ) -> Option<u64> {
        if self.inflight.len() >= self.config.dsht.max_inflight {
            self.stats.inflight_overflow += 1;
            return None;
        }
        let mut req = self.rng.u64();
        while self.inflight.contains_key(&req) {
            req = self.rng.u64();
        }
        let (timeout, hedge_after) = self.rto(id, level);
        let deadline = now + timeout;
        let hedge_at = Some(now + hedge_after).filter(|h| may_hedge && *h < deadline);
        // One entry per request: most replies come before the hedge, and
        // the timeout's entry would be inserted and removed for nothing.
        // Timers still fire in the same order: the hedge is strictly
        // earlier, and its timeout goes in before anything later is due.
        match hedge_at {
            Some(h) => self.deadlines.insert((h, Timer::Hedge(req))),
            None => self.deadlines.insert((deadline, Timer::Rpc(req))),
        };
        let body = request.body();
        self.count_out(&body);
        self.send_message(now, to, req, &body);
        self.inflight.insert(
            req,
            Inflight {
                to,
                id,
                level,
                sent: now,
                deadline,
                hedge_at,
                purpose,
                request,
                retries_left: self.config.dsht.rpc_retries,
                retransmitted: false,
            },
        );
        Some(req)
    }

    fn clear_timers(&mut self, req: u64, f: &Inflight) {
        match f.hedge_at {
            Some(h) => self.deadlines.remove(&(h, Timer::Hedge(req))),
            None => self.deadlines.remove(&(f.deadline, Timer::Rpc(req))),
        };
    }

    /// Learns of `sender` at every level where it shares our cluster.
    fn observe(
        &mut self,
        now: Instant,
        sender: Contact,
        clusters: &[ClusterInfo],
        rtt: Option<Duration>,
    ) {
        if let Some(rtt) = rtt {
            self.neighbours.observe(now, sender, rtt);
        }
        for ci in clusters {
            if let Some(Some(lc)) = self.clusters.get_mut(usize::from(ci.level)) {
                lc.observe(now, sender, ci, rtt);
            }
            let Some(ls) = self.levels.get_mut(usize::from(ci.level)) else {
                continue;
            };
            if ls.info.cluster != ci.cluster {
                // It says first-hand that it is in another cluster here: it
                // is no longer a contact of this level's DSHT (and must not
                // count in our size estimate).
                ls.table.remove(&sender.id);
                continue;
            }
            if let Observe::PingOldest(oldest) = ls.table.observe(sender, now) {
                let level = ci.level;
                self.send_request(
                    now,
                    oldest.addr,
                    Some(oldest.id),
                    Some(level),
                    Request::Ping,
                    Purpose::PingOldest,
                    false,
                );
            }
        }
    }

    // ----- internals: requests from others --------------------------------

    fn check_scope(&self, scope: &Scope) -> Result<(), ErrorCode> {
        match self.levels.get(usize::from(scope.level)) {
            None => Err(ErrorCode::NoSuchLevel),
            Some(ls) if ls.info.cluster != scope.cluster => Err(ErrorCode::WrongCluster),
            Some(_) => Ok(()),
        }
    }

    fn contacts_near(&self, level: Level, key: &Id, target: Distance) -> SmallVec<[Contact; 8]> {
        let n = self.config.dsht.reply_contacts;
        self.levels
            .get(usize::from(level))
            .map(|ls| {
                ls.table
                    .nearest_to_distance(key, target, n)
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn on_request(&mut self, now: Instant, from: Contact, req: u64, body: &Body) {
        let c = &mut self.stats.rpcs_in;
        match body {
            Body::Ping => c.ping += 1,
            Body::FindNear { .. } => c.find_near += 1,
            Body::GetProbe { .. } => c.get_probe += 1,
            Body::PutProbe { .. } => c.put_probe += 1,
            Body::Store { .. } => c.store += 1,
            Body::Neighbours => c.neighbours += 1,
            _ => {}
        }
        let reply = match *body {
            Body::Ping => Body::Pong,
            Body::Neighbours => Body::Nodes {
                contacts: self
                    .neighbours
                    .nearest(self.config.dsht.reply_contacts, &from.id)
                    .map(|(c, _)| c)
                    .collect(),
            },
            Body::FindNear { scope, key, target } => match self.check_scope(&scope) {
                Err(code) => Body::Error { code },
                Ok(()) => Body::Nodes {
                    contacts: self.contacts_near(scope.level, &key, target),
                },
            },
            Body::GetProbe { scope, key, target } => match self.check_scope(&scope) {
                Err(code) => Body::Error { code },
                Ok(()) => {
                    let values: SmallVec<[Bytes; 4]> = self
                        .store
                        .get(now, scope.level, key, self.config.dsht.reply_values)
                        .cloned()
                        .collect();
                    let contacts = if values.is_empty() {
                        self.contacts_near(scope.level, &key, target)
                    } else {
                        SmallVec::new()
                    };
                    Body::GetReply { values, contacts }
                }
            },
            Body::PutProbe { scope, key, target } => match self.check_scope(&scope) {
                Err(code) => Body::Error { code },
                Ok(()) => {
                    let info = self.store.probe_put(now, scope.level, key);
                    Body::PutProbeReply {
                        loaded: info.loaded,
                        stored: info.stored.into_iter().take(wire::MAX_STORED).collect(),
                        contacts: self.contacts_near(scope.level, &key, target),
                    }
                }
            },
            Body::Store {
                scope,
                key,
                ref value,
                ttl_secs,
            } => match self.check_scope(&scope) {
                Err(code) => Body::Error { code },
                Ok(()) if value.len() > self.config.dsht.max_value_len || ttl_secs == 0 => {
                    Body::Error {
                        code: ErrorCode::Invalid,
                    }
                }
                Ok(()) => {
                    let ttl =
                        Duration::from_secs(u64::from(ttl_secs)).min(self.config.dsht.max_ttl);
                    let result = self.store.store(now, scope.level, key, value.clone(), ttl);
                    match result {
                        StoreResult::Full => self.stats.refused_full += 1,
                        StoreResult::Loaded => self.stats.refused_loaded += 1,
                        StoreResult::Ok => {}
                    }
                    Body::StoreReply { result }
                }
            },
            // Replies are routed elsewhere; anything else is not a request.
            _ => return,
        };
        self.reply(now, from.addr, req, reply);
    }

    // ----- internals: replies and timeouts --------------------------------

    /// Removes and returns the request `req` if `from` may answer it.
    fn take_inflight(&mut self, from: &Contact, req: u64) -> Option<Inflight> {
        match self.inflight.get(&req) {
            Some(f) if f.to == from.addr && f.id.is_none_or(|id| id == from.id) => {}
            _ => return None,
        }
        let f = self.inflight.remove(&req)?;
        self.clear_timers(req, &f);
        Some(f)
    }

    fn on_reply(
        &mut self,
        now: Instant,
        from: Contact,
        req: u64,
        f: Inflight,
        rtt: Option<Duration>,
        body: &Body,
    ) {
        if let Some(rtt) = rtt {
            self.rtt.sample(rtt);
        }
        for ls in &mut self.levels {
            if ls.table.contains(&from.id) {
                ls.table.record_success(&from.id, rtt, now);
            }
        }
        if let (
            Body::Error {
                code: ErrorCode::WrongCluster,
            },
            Some(level),
        ) = (&body, f.level)
            && let Some(ls) = self.levels.get_mut(usize::from(level))
        {
            ls.table.remove(&from.id);
        }
        if let (Purpose::Neighbours, Body::Nodes { contacts }) = (&f.purpose, &body) {
            for c in self.neighbours.to_probe(now, &from.id, contacts) {
                self.probe(now, c);
            }
        }
        // Every member named is pinged, measured or not: the answer also
        // refreshes when it was last heard, which keeps it in the sample.
        // (Skipping members with a fresh sample lowered level-2 coverage on
        // the 500-node sphere, seeds 1-3, from 0.722 / 0.825 / 0.776 to
        // 0.701 / 0.747 / 0.753.)
        if let (Purpose::Survey, Body::Nodes { contacts }) = (&f.purpose, &body) {
            for c in contacts {
                if c.id != self.contact.id {
                    self.probe(now, *c);
                }
            }
        }
        if let Purpose::Op(op) = f.purpose {
            self.advance(now, op, Outcome::Reply { req, from, body });
        }
    }

    fn on_rpc_timeout(&mut self, now: Instant, req: u64) {
        let Some(mut f) = self.inflight.remove(&req) else {
            return;
        };
        self.clear_timers(req, &f);
        self.stats.timeouts += 1;
        if f.retries_left > 0 {
            // Retransmit under the same id: probes and stores are
            // idempotent, and a late answer to the first copy still counts.
            // Its hedge (if any) has fired or was cleared; the lookup keeps
            // waiting for this contact meanwhile.
            f.retries_left -= 1;
            f.retransmitted = true;
            let (timeout, _) = self.rto(f.id, f.level);
            f.deadline = now + timeout;
            f.hedge_at = None;
            self.deadlines.insert((f.deadline, Timer::Rpc(req)));
            self.stats.retransmits += 1;
            let body = f.request.body();
            self.count_out(&body);
            self.send_message(now, f.to, req, &body);
            self.inflight.insert(req, f);
            return;
        }
        if let Some(id) = f.id {
            self.neighbours.forget(&id);
            let max = self.config.dsht.max_failures;
            for ls in &mut self.levels {
                if f.level.is_some_and(|l| l != ls.info.level) {
                    continue;
                }
                match ls.table.record_failure(&id, max) {
                    Failure::Dropped | Failure::Replaced => self.stats.contacts_dropped += 1,
                    Failure::Counted | Failure::Unknown => {}
                }
            }
        }
        if let Purpose::Op(op) = f.purpose {
            self.advance(now, op, Outcome::Failed { req, id: f.id });
        }
    }

    // ----- internals: operations ------------------------------------------

    /// Feeds an RPC outcome to operation `op` and lets it take its next steps.
    fn advance(&mut self, now: Instant, op: OpId, outcome: Outcome) {
        let Some(state) = self.ops.remove(&op).map(|b| *b) else {
            return;
        };
        self.stepping += 1;
        let next = match state {
            Op::Join(j) => self.advance_join(now, op, j, outcome),
            Op::Get(g) => self.advance_get(now, op, g, outcome),
            Op::Put(p) => self.advance_put(now, op, p, outcome),
            Op::Refresh(level, mut lookup) => {
                if self.step_walk(now, op, level, &mut lookup, WalkKind::Find, outcome) {
                    self.finish_walk(now, level, &lookup);
                    if lookup.key() == self.contact.id {
                        // A periodic re-join: tell our neighbourhood about
                        // us and refill the far buckets from what we now know.
                        self.announce(now, level, &lookup);
                        self.refresh_far_buckets(now, level);
                    }
                    None
                } else {
                    Some(Op::Refresh(level, lookup))
                }
            }
            Op::Closest(mut lookup) => {
                if self.step_walk(now, op, 0, &mut lookup, WalkKind::Find, outcome) {
                    self.finish_closest(now, op, &lookup);
                    None
                } else {
                    Some(Op::Closest(lookup))
                }
            }
            Op::Check(contact) => {
                // Any answer, an error included, shows the node alive; a
                // failure comes only after the RPC's retries.
                let alive = match outcome {
                    Outcome::Reply { .. } => Some(true),
                    Outcome::Failed { .. } => Some(false),
                    Outcome::Start | Outcome::Hedge => None,
                };
                match alive {
                    Some(alive) => {
                        self.events.push_back(Event::Checked { op, contact, alive });
                        None
                    }
                    None => Some(Op::Check(contact)),
                }
            }
        };
        self.stepping -= 1;
        self.resume(op, next);
    }

    /// Puts a running operation back after a step; `None` means it ended.
    fn resume(&mut self, op: OpId, state: Option<Op>) {
        if let Some(state) = state {
            self.ops.insert(op, Box::new(state));
        }
    }

    /// Applies `outcome` to a walk and sends the RPCs it asks for. Returns
    /// whether the walk is over. Callers interpret values and probe results
    /// in a reply before handing it here for its contacts.
    fn step_walk(
        &mut self,
        now: Instant,
        op: OpId,
        level: Level,
        lookup: &mut Lookup,
        kind: WalkKind,
        outcome: Outcome<'_>,
    ) -> bool {
        let mut advanced = false;
        let mut hedging = false;
        match outcome {
            Outcome::Reply { from, body, .. } => match body {
                Body::Nodes { contacts }
                | Body::GetReply { contacts, .. }
                | Body::PutProbeReply { contacts, .. } => {
                    advanced = lookup.on_reply(&from, contacts);
                }
                _ => lookup.on_failure(&from.id),
            },
            Outcome::Failed { id: Some(id), .. } => lookup.on_failure(&id),
            Outcome::Failed { id: None, .. } | Outcome::Start => {}
            Outcome::Hedge => hedging = lookup.in_flight() == 1,
        }
        loop {
            if lookup.is_done() {
                return true;
            }
            let wanted =
                lookup.in_flight() == 0 || ((advanced || hedging) && lookup.in_flight() == 1);
            if !wanted {
                return false;
            }
            let Some(hop) = lookup.next_hop() else {
                return lookup.is_done();
            };
            if hedging {
                self.stats.hedges += 1;
            }
            if self.send_hop(now, op, level, lookup.key(), hop, kind, !hedging) {
                return false;
            }
            // No RPC slot: count the hop as failed and try another.
            lookup.on_failure(&hop.contact.id);
            advanced = false;
            hedging = false;
        }
    }

    /// Sends one probe of a walk. A hedge is itself never hedged.
    #[allow(clippy::too_many_arguments)]
    fn send_hop(
        &mut self,
        now: Instant,
        op: OpId,
        level: Level,
        key: Id,
        hop: Hop,
        kind: WalkKind,
        may_hedge: bool,
    ) -> bool {
        let request = Request::Probe {
            kind,
            scope: self.scope(level),
            key,
            target: hop.target,
        };
        self.send_request(
            now,
            hop.contact.addr,
            Some(hop.contact.id),
            Some(level),
            request,
            Purpose::Op(op),
            may_hedge,
        )
        .is_some()
    }

    fn finish_walk(&mut self, now: Instant, level: Level, lookup: &Lookup) {
        self.stats.lookups += 1;
        self.stats.lookup_hops += u64::from(lookup.answers());
        if let Some(ls) = self.levels.get_mut(usize::from(level)) {
            ls.table.touch(&lookup.key(), now);
        }
    }

    /// Starts a walk at a new level from where the previous level's walk
    /// stopped, since ids are the same at every level (spec §3.5).
    fn continue_lookup(&self, level: Level, key: Id, from: Option<Contact>) -> Lookup {
        let mut lookup = self.new_lookup(level, key);
        if let Some(c) = from {
            lookup.start_at(c);
        }
        lookup
    }

    fn advance_join(
        &mut self,
        now: Instant,
        op: OpId,
        mut j: JoinOp,
        outcome: Outcome<'_>,
    ) -> Option<Op> {
        if j.walk.is_none() {
            // Bootstrap phase: wait for every ping (answered or timed out).
            if matches!(outcome, Outcome::Reply { .. } | Outcome::Failed { .. }) {
                j.pending_pings = j.pending_pings.saturating_sub(1);
            }
            if j.pending_pings > 0 {
                return Some(Op::Join(j));
            }
        } else if let Some((level, mut lookup)) = j.walk.take() {
            if !self.step_walk(now, op, level, &mut lookup, WalkKind::Find, outcome) {
                j.walk = Some((level, lookup));
                return Some(Op::Join(j));
            }
            self.finish_walk(now, level, &lookup);
            self.announce(now, level, &lookup);
            self.refresh_far_buckets(now, level);
        }
        // Walk toward our own id at the next level, if any.
        while !j.levels.is_empty() {
            let level = j.levels.remove(0);
            let mut lookup = self.new_lookup(level, self.contact.id);
            if !self.step_walk(now, op, level, &mut lookup, WalkKind::Find, Outcome::Start) {
                j.walk = Some((level, lookup));
                return Some(Op::Join(j));
            }
            self.finish_walk(now, level, &lookup);
        }
        let contacts = self.routing_len(0);
        if contacts > 0 {
            let after = self.config.dsht.rejoin_after;
            self.next_self_refresh = Some(now + after + self.rng.jitter(after));
        }
        self.events.push_back(Event::Joined { op, contacts });
        self.publish_hints(now, &[]);
        None
    }

    /// A halving walk contacts one node per hop, so most of our `k` nearest
    /// neighbours never hear of a newcomer; a ping to each of the `k`
    /// closest nodes the walk learnt of puts us in their tables (and them in
    /// ours), as a Kademlia join's final round does.
    fn announce(&mut self, now: Instant, level: Level, lookup: &Lookup) {
        for c in lookup.closest_unanswered(self.config.dsht.k) {
            self.send_request(
                now,
                c.addr,
                Some(c.id),
                Some(level),
                Request::Ping,
                Purpose::Probe,
                false,
            );
        }
    }

    /// After joining, walk toward a random id in every bucket farther than
    /// the closest neighbour, so the far half of the table fills (Kademlia §2.3).
    fn refresh_far_buckets(&mut self, now: Instant, level: Level) {
        let Some(ls) = self.levels.get(usize::from(level)) else {
            return;
        };
        let own = self.contact.id;
        let Some(nearest) = ls
            .table
            .closest(&own, 1)
            .first()
            .and_then(|c| own.bucket_index(&c.id))
        else {
            return;
        };
        for bucket in nearest + 1..crate::id::ID_BITS {
            let target = own.random_in_bucket(bucket, &mut self.rng);
            self.start_refresh(now, level, target);
        }
    }

    fn start_refresh(&mut self, now: Instant, level: Level, target: Id) {
        if self.check_capacity().is_err() {
            return;
        }
        let op = self.alloc_op();
        let mut lookup = self.new_lookup(level, target);
        if self.step_walk(now, op, level, &mut lookup, WalkKind::Find, Outcome::Start) {
            self.finish_walk(now, level, &lookup);
        } else {
            self.ops.insert(op, Box::new(Op::Refresh(level, lookup)));
        }
    }

    /// Starts (or continues at its next level) get `op`, which is not in
    /// `ops` while it steps: it goes there only if it has to wait for a reply.
    fn start_get_level(&mut self, now: Instant, op: OpId, mut g: GetOp) {
        // This node is the first on its own path: serve from the local store.
        let local: Vec<Bytes> = self
            .store
            .get(now, g.level, g.key, self.config.dsht.reply_values)
            .cloned()
            .collect();
        if !local.is_empty() && !g.gather(&local) {
            let (level, values) = (g.level, g.found_values(local));
            self.finish_get(now, op, g, values, Some(level));
            return;
        }
        let next = self.advance_get(now, op, g, Outcome::Start);
        self.resume(op, next);
    }

    fn advance_get(
        &mut self,
        now: Instant,
        op: OpId,
        mut g: GetOp,
        outcome: Outcome<'_>,
    ) -> Option<Op> {
        if let Outcome::Reply { from, body, .. } = &outcome
            && let Body::GetReply { values, .. } = *body
            && !values.is_empty()
            && !g.gather(values)
        {
            // The first node on the path holding values ends the get (spec §3.3),
            // even if it answers after a hedge has moved the walk on.
            g.lookup.on_reply(from, &[]);
            g.lookup.stop();
            g.hops += g.lookup.answers();
            self.finish_walk(now, g.level, &g.lookup);
            let (values, level) = (g.found_values(values.to_vec()), g.level);
            self.finish_get(now, op, g, values, Some(level));
            return None;
        }
        if !self.step_walk(now, op, g.level, &mut g.lookup, WalkKind::Get, outcome) {
            return Some(Op::Get(g));
        }
        // A miss at this level: continue at the next one from where we stopped.
        g.hops += g.lookup.answers();
        self.finish_walk(now, g.level, &g.lookup);
        let Some(level) = g.levels.pop() else {
            let values = g.found_values(Vec::new());
            let level = (!values.is_empty()).then_some(g.level);
            self.finish_get(now, op, g, values, level);
            return None;
        };
        let reached = g.lookup.reached();
        g.lookup = self
            .continue_lookup(level, g.key, reached)
            .with_sweep(self.config.dsht.get_sweep);
        g.level = level;
        self.start_get_level(now, op, g);
        None
    }

    fn start_put_level(&mut self, now: Instant, op: OpId) {
        let Some(Op::Put(mut p)) = self.ops.remove(&op).map(|b| *b) else {
            return;
        };
        // This node is the first on its own path, and the puts it sends on
        // count toward its load like anyone's. While it is loaded for the key
        // (more than beta puts sent on within the window), it keeps further
        // puts itself, uncounted, instead of sending them: each node then
        // sends at most about beta + 1 puts per key per window into the
        // network whatever its callers do. Otherwise a requester whose first
        // hop is the key's closest node would load that node at its own rate.
        if self.store.is_loaded(now, p.level, p.key) {
            if self.store.keep(now, p.level, p.key, p.value.clone(), p.ttl) == StoreResult::Ok {
                p.stored.push((p.level, self.contact.id));
            }
            self.stats.puts_kept += 1;
            let next = self.next_put_level(now, op, p);
            self.resume(op, next);
            return;
        }
        let info = self.store.probe_put(now, p.level, p.key);
        let full = store::is_full(&info.stored, self.config.dsht.l, p.fingerprint, p.ttl);
        let own = self.contact;
        let own_d = own.id.distance(&p.key);
        if let PutPhase::Forward { stack, .. } = &mut p.phase {
            stack.push((own_d, own, full));
        }
        let next = self.advance_put(now, op, p, Outcome::Start);
        self.resume(op, next);
    }

    fn advance_put(
        &mut self,
        now: Instant,
        op: OpId,
        mut p: PutOp,
        outcome: Outcome<'_>,
    ) -> Option<Op> {
        let phase = std::mem::replace(
            &mut p.phase,
            PutPhase::Reverse {
                reached: None,
                candidates: VecDeque::new(),
                awaiting: None,
            },
        );
        match phase {
            PutPhase::Forward {
                mut lookup,
                mut stack,
            } => {
                if let Outcome::Reply { from, body, .. } = &outcome
                    && let Body::PutProbeReply { loaded, stored, .. } = *body
                {
                    let l = self.config.dsht.l;
                    let full = store::is_full(stored, l, p.fingerprint, p.ttl);
                    if *loaded && store::is_full_for_any(stored, l, p.ttl) {
                        // The forward phase halts at a full and loaded node (spec §3.2).
                        lookup.on_reply(from, &[]);
                        lookup.stop();
                    } else {
                        stack.push((from.id.distance(&p.key), *from, full));
                    }
                }
                let mut done =
                    self.step_walk(now, op, p.level, &mut lookup, WalkKind::PutProbe, outcome);
                if done && !lookup.is_stopped() && !lookup.sweeping() && stack.iter().all(|e| e.2) {
                    // The walk reached the key without meeting a shield, and
                    // every node it probed is full for this value (say the
                    // requester is itself the key's closest node): widen it
                    // to the key's other closest nodes, as a get's sweep does.
                    lookup.set_sweep(self.config.dsht.get_sweep);
                    done = self.step_walk(
                        now,
                        op,
                        p.level,
                        &mut lookup,
                        WalkKind::PutProbe,
                        Outcome::Start,
                    );
                }
                if !done {
                    p.phase = PutPhase::Forward { lookup, stack };
                    return Some(Op::Put(p));
                }
                p.hops += lookup.answers();
                self.finish_walk(now, p.level, &lookup);
                // Reverse phase: the closest non-full node seen first.
                stack.sort_by_key(|a| a.0);
                let candidates = stack
                    .into_iter()
                    .filter(|(_, _, full)| !full)
                    .map(|(_, c, _)| c)
                    .collect();
                p.phase = PutPhase::Reverse {
                    reached: lookup.reached(),
                    candidates,
                    awaiting: None,
                };
                self.next_store(now, op, p)
            }
            PutPhase::Reverse {
                reached,
                mut candidates,
                awaiting,
            } => {
                let req = match &outcome {
                    Outcome::Reply { req, .. } | Outcome::Failed { req, .. } => Some(*req),
                    Outcome::Start | Outcome::Hedge => None,
                };
                if req.is_none() || req != awaiting {
                    p.phase = PutPhase::Reverse {
                        reached,
                        candidates,
                        awaiting,
                    };
                    return Some(Op::Put(p));
                }
                if let Outcome::Reply { from, body, .. } = &outcome
                    && matches!(
                        *body,
                        Body::StoreReply {
                            result: StoreResult::Ok
                        }
                    )
                {
                    p.stored.push((p.level, from.id));
                    p.phase = PutPhase::Reverse {
                        reached,
                        candidates,
                        awaiting: None,
                    };
                    return self.next_put_level(now, op, p);
                }
                // Refused or lost: step back to the next node (spec §3.2).
                candidates.pop_front();
                p.phase = PutPhase::Reverse {
                    reached,
                    candidates,
                    awaiting: None,
                };
                self.next_store(now, op, p)
            }
        }
    }

    /// Sends the store to the first remaining candidate, storing locally when
    /// that candidate is this node.
    fn next_store(&mut self, now: Instant, op: OpId, mut p: PutOp) -> Option<Op> {
        loop {
            let PutPhase::Reverse { candidates, .. } = &mut p.phase else {
                return None;
            };
            let Some(target) = candidates.front().copied() else {
                return self.next_put_level(now, op, p);
            };
            if target.id == self.contact.id {
                let r = self
                    .store
                    .store(now, p.level, p.key, p.value.clone(), p.ttl);
                if r == StoreResult::Ok {
                    p.stored.push((p.level, target.id));
                    return self.next_put_level(now, op, p);
                }
                candidates.pop_front();
                continue;
            }
            let ttl_secs = u32::try_from(p.ttl.as_secs()).unwrap_or(u32::MAX);
            let request = Request::Store {
                scope: self.scope(p.level),
                key: p.key,
                value: p.value.clone(),
                ttl_secs,
            };
            let sent = self.send_request(
                now,
                target.addr,
                Some(target.id),
                Some(p.level),
                request,
                Purpose::Op(op),
                false,
            );
            let PutPhase::Reverse {
                candidates,
                awaiting,
                ..
            } = &mut p.phase
            else {
                return None;
            };
            if sent.is_some() {
                *awaiting = sent;
                return Some(Op::Put(p));
            }
            candidates.pop_front();
        }
    }

    fn next_put_level(&mut self, now: Instant, op: OpId, mut p: PutOp) -> Option<Op> {
        let reached = match &p.phase {
            PutPhase::Reverse { reached, .. } => *reached,
            PutPhase::Forward { lookup, .. } => lookup.reached(),
        };
        let Some(level) = p.levels.pop() else {
            if p.notify {
                self.events.push_back(Event::PutDone {
                    op,
                    key: p.key,
                    stored: p.stored,
                    hops: p.hops,
                });
            }
            return None;
        };
        p.level = level;
        p.phase = PutPhase::Forward {
            lookup: self.continue_lookup(level, p.key, reached),
            stack: Vec::new(),
        };
        self.ops.insert(op, Box::new(Op::Put(p)));
        self.start_put_level(now, op);
        None
    }

    /// Periodic housekeeping: refresh size estimates, stale buckets and,
    /// when due, our own neighbourhood.
    fn maintenance(&mut self, now: Instant) {
        let refresh = self.config.dsht.bucket_refresh;
        let max_walks = self.config.dsht.max_refresh_per_tick + self.levels.len();
        let mut walks: Vec<(Level, Id)> = Vec::new();
        if self.next_self_refresh.is_some_and(|t| t <= now) {
            self.next_self_refresh = Some(now + refresh + self.rng.jitter(refresh / 10));
            walks.extend((0..self.levels.len() as Level).map(|l| (l, self.contact.id)));
        }
        for ls in &mut self.levels {
            ls.info.size = ls.table.size_estimate();
            for bucket in ls.table.stale_buckets(now, refresh) {
                if walks.len() >= max_walks {
                    break;
                }
                ls.table.refreshed(bucket, now);
                walks.push((
                    ls.info.level,
                    self.contact.id.random_in_bucket(bucket, &mut self.rng),
                ));
            }
        }
        for (level, target) in walks {
            self.start_refresh(now, level, target);
        }
        self.measure_contacts(now);
        self.discover_neighbours(now);
    }

    /// Whether any level is bounded, so that clustering has work to do.
    fn clustering(&self) -> bool {
        self.clusters.iter().any(Option::is_some)
    }

    /// Asks one near node for its nearest nodes (see
    /// [`crate::dsht::neighbours`]); its answer is probed in `on_reply`.
    /// Only bounded levels need it.
    fn discover_neighbours(&mut self, now: Instant) {
        self.neighbours.expire(now);
        if !self.clustering() {
            return;
        }
        if let Some(c) = self.neighbours.next_to_ask(now) {
            self.send_request(
                now,
                c.addr,
                Some(c.id),
                Some(0),
                Request::Neighbours,
                Purpose::Neighbours,
                false,
            );
        }
    }

    /// Re-evaluates every level's cluster (spec §4.4) and carries out the
    /// switches decided.
    fn evaluate_clusters(&mut self, now: Instant) {
        let mut switches = Vec::new();
        for (ls, lc) in self.levels.iter().zip(self.clusters.iter_mut()) {
            if let Some(lc) = lc {
                lc.set_size(ls.table.size_estimate());
                if let Some(sw) = lc.evaluate(now, &mut self.rng) {
                    switches.push((ls.info.level, sw));
                }
            }
        }
        for (level, sw) in switches {
            self.switch_cluster(now, level, sw);
        }
        let mut surveys = Vec::new();
        for (level, lc) in self.clusters.iter_mut().enumerate() {
            if let Some(lc) = lc
                && let Some((cluster, members)) = lc.to_survey(now, SURVEY_MEMBERS, &mut self.rng)
            {
                surveys.push((level as Level, cluster, members));
            }
        }
        for (level, cluster, members) in surveys {
            for m in members {
                let key = Id::random(&mut self.rng);
                self.send_request(
                    now,
                    m.addr,
                    Some(m.id),
                    Some(level),
                    Request::Probe {
                        kind: WalkKind::Find,
                        scope: Scope { level, cluster },
                        key,
                        target: Distance::ZERO,
                    },
                    Purpose::Survey,
                    false,
                );
            }
        }
    }

    /// Moves this node to another cluster at `level`: the level's routing
    /// table restarts from the members it has measured there, values held
    /// for the old cluster's DSHT go (nobody there can reach us at this
    /// level any more), and this node's own publications are put again
    /// in the new cluster (issue 3 item 3).
    fn switch_cluster(&mut self, now: Instant, level: Level, sw: Switch) {
        let Some(Some(lc)) = self.clusters.get(usize::from(level)) else {
            return;
        };
        let info = lc.current(now);
        let founded = lc.founded();
        let (members, new_cluster) = match sw {
            Switch::Join { members, .. } => (members, false),
            Switch::Found { .. } => (Vec::new(), true),
        };
        let own = self.contact.id;
        let k = self.config.dsht.k;
        let Some(ls) = self.levels.get_mut(usize::from(level)) else {
            return;
        };
        let from = ClusterInfo {
            age_secs: u32::try_from((now - ls.founded).as_secs()).unwrap_or(u32::MAX),
            ..ls.info
        };
        ls.info = info;
        ls.founded = founded;
        self.events.push_back(Event::ClusterChanged {
            level,
            from,
            to: info,
            founded: new_cluster,
        });
        ls.table = RoutingTable::new(own, k, now);
        for m in members {
            let _ = ls.table.observe(m, now);
        }
        self.store.remove_level(level);
        self.stats.cluster_switches += 1;
        self.republish_level(now, level);
        // Join the new cluster's DSHT as a node joins the network: a walk
        // toward our own id there fills the table with its members and
        // tells our new neighbours about us, and a walk into every farther
        // bucket fills the rest (Kademlia §2.3). The far members are the
        // honest sample of the cluster: a node that joined on the members
        // near it learns now, not at the first bucket refresh 15 minutes
        // later, whether it really qualifies.
        self.start_refresh(now, level, self.contact.id);
        self.refresh_far_buckets(now, level);
    }

    /// Re-puts every publication that includes `level` at that level alone:
    /// after joining a new cluster there, its DSHT holds none of them.
    fn republish_level(&mut self, now: Instant, level: Level) {
        let todo: Vec<(Id, Bytes, Duration)> = self
            .published
            .iter()
            .filter(|(_, p)| p.levels.contains(level))
            .map(|((k, v), p)| (*k, v.clone(), p.ttl))
            .collect();
        for (key, value, ttl) in todo {
            let _ = self.start_put(now, key, value, ttl, Levels::only(level), false);
        }
    }

    /// Pings up to `probes_per_tick` nodes: first the cluster members that
    /// clustering needs measured, then routing contacts (fastest level
    /// first) never measured or silent for a cluster evaluation period,
    /// longest silent first. Each answer is an RTT sample and carries the
    /// node's current cluster at every level, which is what latency
    /// clustering judges by (spec §4.2: RTTs come from RPCs "plus explicit
    /// pings") and `nodes()` ranks by; without it a node's view of its
    /// neighbours' clusters goes stale as soon as traffic stops.
    fn measure_contacts(&mut self, now: Instant) {
        let quiet = now.saturating_sub(self.config.dsht.cluster_eval_interval);
        // Fastest level first: a node's neighbours in a tighter cluster are
        // where the members of a yet tighter one are found.
        let mut seen: BTreeSet<Id> = BTreeSet::new();
        let mut due: Vec<(bool, Instant, Contact)> = Vec::new();
        // First the members clustering needs measured to judge a cluster.
        for lc in self.clusters.iter().rev().flatten() {
            for c in lc.to_measure(now, self.config.dsht.probes_per_tick) {
                if seen.insert(c.id) {
                    due.push((false, Instant::ZERO, c));
                }
            }
        }
        for ls in self.levels.iter().rev() {
            let mut level_due: Vec<(bool, Instant, Contact)> = ls
                .table
                .iter()
                .filter(|e| e.rtt.srtt().is_none() || e.last_seen < quiet)
                .filter(|e| seen.insert(e.contact.id))
                .map(|e| (e.rtt.srtt().is_some(), e.last_seen, e.contact))
                .collect();
            level_due.sort_unstable_by_key(|d| (d.0, d.1, d.2.id));
            due.extend(level_due);
            if due.len() >= self.config.dsht.probes_per_tick {
                break;
            }
        }
        let todo: Vec<Contact> = due
            .into_iter()
            .take(self.config.dsht.probes_per_tick)
            .map(|d| d.2)
            .collect();
        for c in todo {
            self.probe(now, c);
        }
    }

    /// Pings `c` for an RTT sample and its clusters; the answer needs no
    /// further step.
    fn probe(&mut self, now: Instant, c: Contact) {
        self.send_request(
            now,
            c.addr,
            Some(c.id),
            Some(0),
            Request::Ping,
            Purpose::Probe,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testnet::{Net, addr};
    use crate::wire::StoredInfo;

    /// One global level: the DSHT alone, as most of these tests need.
    fn flat() -> Config {
        Config {
            levels: vec![LevelConfig::GLOBAL],
            ..Config::default()
        }
    }

    proptest::proptest! {
        /// Spec §3.2: whatever the peers answer, a put never sends a store to
        /// a node that reported itself full and loaded on the forward path.
        #[test]
        fn put_never_stores_at_a_full_and_loaded_node(
            // One answer per probe: loaded, the held values' lifetimes in
            // seconds, and the peers to suggest as contacts.
            scripts in proptest::collection::vec(
                (proptest::bool::ANY,
                 proptest::collection::vec(0u32..200, 0..4),
                 proptest::collection::vec(0u8..16, 0..6)),
                1..40),
            store_ok in proptest::collection::vec(proptest::bool::ANY, 16),
            puts in 1usize..4,
        ) {
            let mut config = Config { seed: 5, ..flat() };
            config.dsht.l = 2;
            let me = addr(100);
            let mut node = Node::new(config, me, Instant::ZERO);
            let peers: Vec<SocketAddr> = (0..16).map(addr).collect();
            let cluster = ClusterInfo { level: 0, cluster: initial_cluster(0), size: 16, age_secs: 0 };
            let mut now = Instant::ZERO;
            let mut buf = Vec::new();
            let msg = |from: SocketAddr, request_id: u64, body: Body| {
                let m = Message {
                    request_id,
                    sender: Id::for_node(from),
                    services: Services::NONE,
                    clusters: SmallVec::from_slice(&[cluster]),
                    body,
                };
                let mut b = Vec::new();
                m.encode(&mut b);
                b
            };
            for (i, p) in peers.iter().enumerate() {
                node.handle_datagram(now, *p, &msg(*p, i as u64, Body::Ping));
            }
            while node.poll_transmit(&mut buf).is_some() {}
            let mut script = scripts.iter().cycle();
            let mut stores = store_ok.iter().cycle();
            for n in 0..puts {
                let key = Id::for_url(&format!("http://x/{n}"));
                let value = Bytes::from(format!("v{n}"));
                let ttl = Duration::from_secs(100);
                let op = node.put(now, key, value, ttl, Levels::ALL).unwrap();
                let mut shields: BTreeSet<SocketAddr> = BTreeSet::new();
                let mut done = false;
                for _ in 0..400 {
                    let mut out = Vec::new();
                    while let Some(t) = node.poll_transmit(&mut buf) {
                        out.push((t.destination, Message::decode(&buf[..t.size]).unwrap()));
                    }
                    for (to, m) in out {
                        let reply = match m.body {
                            Body::PutProbe { .. } => {
                                let (loaded, held, suggest) = script.next().unwrap().clone();
                                let stored: SmallVec<[StoredInfo; 4]> = held
                                    .iter()
                                    .enumerate()
                                    .map(|(i, secs)| StoredInfo { fingerprint: i as u64, ttl_secs: *secs })
                                    .collect();
                                if loaded && store::is_full_for_any(&stored, 2, ttl) {
                                    shields.insert(to);
                                }
                                let contacts = suggest
                                    .iter()
                                    .map(|i| Contact::from_addr(peers[usize::from(*i)], Services::NONE))
                                    .collect();
                                Body::PutProbeReply { loaded, stored, contacts }
                            }
                            Body::Store { .. } => {
                                proptest::prop_assert!(
                                    !shields.contains(&to),
                                    "stored at {to}, which reported full and loaded"
                                );
                                let result = if *stores.next().unwrap() { StoreResult::Ok } else { StoreResult::Full };
                                Body::StoreReply { result }
                            }
                            _ => continue,
                        };
                        node.handle_datagram(now, to, &msg(to, m.request_id, reply));
                    }
                    while let Some(e) = node.poll_event() {
                        if matches!(e, Event::PutDone { op: o, .. } if o == op) {
                            done = true;
                        }
                    }
                    if done {
                        break;
                    }
                    now = node.poll_timeout().unwrap().max(now + Duration::from_millis(1));
                    node.handle_timeout(now);
                }
                proptest::prop_assert!(done, "put {n} never finished");
            }
        }
    }

    #[test]
    fn a_network_of_one_stores_and_finds_locally() {
        let mut net = Net::new(1, &flat());
        net.join_all();
        let key = Id::for_url("http://example.com/a");
        let (ttl, wait) = (Duration::from_secs(60), Duration::from_millis(1));
        let stored = net.put_and_wait(0, key, b"me", ttl, Levels::ALL, wait);
        assert_eq!(stored, vec![(0, net.nodes[0].id())]);
        let (values, level, hops) = net.get_and_wait(0, key, wait);
        assert_eq!(values, vec![Bytes::from_static(b"me")]);
        assert_eq!(level, Some(0));
        assert_eq!(hops, 0);
        // The value expires with its TTL.
        net.after(Duration::from_secs(61));
        let (values, level, _) = net.get_and_wait(0, key, wait);
        assert!(values.is_empty());
        assert_eq!(level, None);
    }

    #[test]
    fn put_lands_at_the_closest_node_and_every_node_gets_it() {
        let mut net = Net::new(40, &flat());
        net.join_all();
        let key = Id::for_url("http://example.com/b");
        let closest = (0..40)
            .min_by_key(|i| net.nodes[*i].id().distance(&key))
            .unwrap();
        let ttl = Duration::from_secs(600);
        let stored = net.put_and_wait(7, key, b"v7", ttl, Levels::ALL, Duration::from_secs(1));
        assert_eq!(stored, vec![(0, net.nodes[closest].id())]);
        for i in 0..40 {
            let (values, _, _) = net.get_and_wait(i, key, Duration::from_millis(10));
            assert_eq!(values, vec![Bytes::from_static(b"v7")], "node {i}");
        }
    }

    #[test]
    fn puts_spill_backwards_once_the_closest_node_is_full() {
        let mut config = flat();
        config.dsht.l = 2;
        let mut net = Net::new(30, &config);
        net.join_all();
        let key = Id::for_url("http://example.com/c");
        let mut holders = BTreeSet::new();
        // Putters far from the key, so each forward path is long enough to
        // spill back along.
        let mut far: Vec<usize> = (0..30).collect();
        far.sort_by_key(|i| std::cmp::Reverse(net.nodes[*i].id().distance(&key)));
        let (ttl, wait) = (Duration::from_secs(600), Duration::from_millis(100));
        for &i in &far[..12] {
            let v = format!("v{i}");
            let stored = net.put_and_wait(i, key, v.as_bytes(), ttl, Levels::ALL, wait);
            assert_eq!(stored.len(), 1, "put from node {i}");
            holders.insert(stored[0].1);
        }
        // l = 2 values per node: 12 values need at least 6 nodes, and no
        // node may hold more than l long-lived values.
        assert!(holders.len() >= 6, "{holders:?}");
        for n in &net.nodes {
            assert!(n.stored_values(net.now, 0, &key).len() <= 2);
        }
    }

    #[test]
    fn a_full_requester_next_to_the_key_stores_beside_it() {
        let mut config = flat();
        config.dsht.l = 1;
        let mut net = Net::new(30, &config);
        net.join_all();
        let key = Id::for_url("http://example.com/e");
        let mut order: Vec<usize> = (0..30).collect();
        order.sort_by_key(|i| net.nodes[*i].id().distance(&key));
        let closest = order[0];
        let (ttl, wait) = (Duration::from_secs(600), Duration::from_secs(1));
        // Fill the closest node (l = 1) with a value from elsewhere.
        let stored = net.put_and_wait(order[29], key, b"a", ttl, Levels::ALL, wait);
        assert_eq!(stored, vec![(0, net.nodes[closest].id())]);
        // Now the closest node puts a value of its own: it is full, and no
        // node on its (empty) path is closer; it must store at a neighbour.
        let stored = net.put_and_wait(closest, key, b"b", ttl, Levels::ALL, wait);
        assert_eq!(stored.len(), 1, "stored nowhere");
        let holder = stored[0].1;
        assert_ne!(holder, net.nodes[closest].id());
        let rank = order
            .iter()
            .position(|i| net.nodes[*i].id() == holder)
            .unwrap();
        assert!(rank <= 3, "stored at rank {rank}, not beside the key");
    }

    #[test]
    fn published_values_outlive_their_ttl_until_withdrawn() {
        let mut net = Net::new(20, &flat());
        net.join_all();
        let key = Id::for_url("http://example.com/pub");
        let ttl = Duration::from_secs(60);
        let op = net.nodes[5]
            .publish(net.now, key, Bytes::from_static(b"p"), ttl, Levels::ALL)
            .unwrap();
        net.after(Duration::from_secs(1));
        assert!(
            matches!(net.take_event(5, op), Some(Event::PutDone { stored, .. }) if stored.len() == 1)
        );
        // Five TTLs later the value is still found: it was re-put.
        net.after(Duration::from_secs(300));
        let (values, _, _) = net.get_and_wait(13, key, Duration::from_secs(1));
        assert_eq!(values, vec![Bytes::from_static(b"p")]);
        assert_eq!(net.take_event(5, op), None, "refreshes are silent");
        // Withdrawn, it expires with its TTL.
        assert!(net.nodes[5].withdraw(&key, b"p"));
        assert!(!net.nodes[5].withdraw(&key, b"p"));
        net.after(Duration::from_secs(61));
        let (values, _, _) = net.get_and_wait(13, key, Duration::from_secs(1));
        assert!(values.is_empty(), "{values:?}");
    }

    #[test]
    fn prefix_hints_name_the_nodes_of_the_prefix() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        net.after(Duration::from_secs(5));
        // All test nodes live in 10.0.0.0/24: the hint maps it to them.
        let key = Id::for_ipv4_prefix(std::net::Ipv4Addr::new(10, 0, 0, 200));
        let (values, _, _) = net.get_and_wait(3, key, Duration::from_secs(1));
        assert!(!values.is_empty());
        for v in &values {
            let c = wire::contact_from_value(v).unwrap();
            assert!(net.index(c.addr).is_some(), "{c:?} is not a node");
            assert_eq!(c.id, Id::for_node(c.addr));
        }
        assert_eq!(net.nodes[3].publications(), 1);
        // Routers supplied later are published too, and replaced ones withdrawn.
        let r1: IpAddr = "192.0.2.1".parse().unwrap();
        let r2: IpAddr = "192.0.2.2".parse().unwrap();
        net.nodes[3].publish_hints(net.now, &[Router::unmeasured(r1)]);
        assert_eq!(net.nodes[3].publications(), 2);
        net.nodes[3].publish_hints(net.now, &[Router::unmeasured(r2)]);
        assert_eq!(net.nodes[3].publications(), 2);
        net.after(Duration::from_secs(1));
        let (values, _, _) = net.get_and_wait(7, Id::for_router(r2), Duration::from_secs(1));
        assert_eq!(values, vec![wire::contact_value(&net.nodes[3].contact())]);
        // A trace's first hops count, as many as a lookup reads.
        let many: Vec<Router> = (1..=8)
            .map(|i| Router::unmeasured(IpAddr::from([192, 0, 2, 10 + i])))
            .collect();
        net.nodes[3].publish_hints(net.now, &many);
        assert_eq!(net.nodes[3].publications(), 1 + MAX_ROUTER_HINTS);
    }

    #[test]
    fn find_nodes_prefers_hinted_nodes_of_the_target_prefix() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        net.after(Duration::from_secs(5));
        let ask = |net: &mut Net, target: &str| {
            let target: IpAddr = target.parse().unwrap();
            let op = net.nodes[4]
                .find_nodes(net.now, 0, 3, target, Services::NONE)
                .unwrap();
            net.after(Duration::from_secs(1));
            match net.take_event(4, op) {
                Some(Event::NodesFound { nodes, hinted, .. }) => (nodes, hinted),
                e => panic!("{e:?}"),
            }
        };
        // Every node published 10.0.0.0/24: the hints name them.
        let (nodes, hinted) = ask(&mut net, "10.0.0.77");
        assert_eq!(nodes.len(), 3);
        assert!(hinted >= 1, "no hint used");
        assert!(
            nodes
                .iter()
                .all(|c| same_prefix(c.addr.ip(), "10.0.0.77".parse().unwrap()))
        );
        let ids: BTreeSet<Id> = nodes.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 3, "duplicates in {nodes:?}");
        // No node near 192.0.2.0/24: no hints, the answer comes from the cluster.
        let (nodes, hinted) = ask(&mut net, "192.0.2.9");
        assert_eq!(hinted, 0);
        assert_eq!(nodes.len(), 3);
    }

    #[test]
    fn find_hinted_reads_every_key_at_once_and_keeps_their_order() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        let (r1, r2): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );
        net.nodes[7].publish_hints(net.now, &[Router::unmeasured(r1)]);
        net.nodes[9].publish_hints(net.now, &[Router::unmeasured(r2)]);
        net.after(Duration::from_secs(5));
        let target: IpAddr = "203.0.113.5".parse().unwrap();
        let before = net.nodes[2].ops_in_flight();
        let op = net.nodes[2]
            .find_hinted(
                net.now,
                0,
                8,
                target,
                &[Router::unmeasured(r2), Router::unmeasured(r1)],
                Services::NONE,
            )
            .unwrap();
        // The prefix's get and one per router, all running now.
        assert_eq!(net.nodes[2].ops_in_flight(), before + 3);
        net.after(Duration::from_secs(2));
        let Some(Event::HintsFound { hints, .. }) = net.take_event(2, op) else {
            panic!("no answer");
        };
        let ids: Vec<Id> = hints.iter().map(|h| h.contact.id).collect();
        assert_eq!(
            ids,
            [net.nodes[9].id(), net.nodes[7].id()],
            "router order kept"
        );
        assert!(
            hints.iter().all(|h| h.rtt.is_none()),
            "nothing to estimate from"
        );
        assert_eq!(net.nodes[2].ops_in_flight(), before, "every part finished");
        // The prefix hint comes first when one exists: every node published
        // 10.0.0.0/24 when it joined.
        let op = net.nodes[2]
            .find_hinted(
                net.now,
                0,
                3,
                "10.0.0.77".parse().unwrap(),
                &[Router::unmeasured(r2)],
                Services::NONE,
            )
            .unwrap();
        net.after(Duration::from_secs(2));
        let Some(Event::HintsFound { hints, .. }) = net.take_event(2, op) else {
            panic!("no answer");
        };
        assert_eq!(hints.len(), 3);
        assert!(hints.iter().all(|h| {
            h.contact.addr.ip().to_string().starts_with("10.0.0.") && h.rtt == Some(Duration::ZERO)
        }));
    }

    #[test]
    fn check_live_tells_a_live_node_from_a_silent_one() {
        let mut net = Net::new(4, &flat());
        net.join_all();
        let live = net.nodes[3].contact();
        let op = net.nodes[1].check_live(net.now, live).unwrap();
        net.after(Duration::from_secs(1));
        assert_eq!(
            net.take_event(1, op),
            Some(Event::Checked {
                op,
                contact: live,
                alive: true
            })
        );
        let silent = Contact {
            id: Id([0x5a; 20]),
            addr: "10.9.9.9:8091".parse().unwrap(),
            services: Services::HTTP,
        };
        let op = net.nodes[1].check_live(net.now, silent).unwrap();
        net.after(Duration::from_secs(1));
        assert_eq!(net.take_event(1, op), None, "still retrying");
        net.after(Duration::from_secs(10));
        assert_eq!(
            net.take_event(1, op),
            Some(Event::Checked {
                op,
                contact: silent,
                alive: false
            })
        );
    }

    #[test]
    fn find_hinted_ranks_by_the_rtt_through_each_router() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        let (r1, r2): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );
        let ms = Duration::from_millis;
        let at = |addr, rtt| Router {
            addr,
            rtt: Some(rtt),
        };
        // Behind r1 (nearest the target): node 7 on a slow link, node 8 on
        // a fast one; behind r2: node 9, faster still.
        net.nodes[7].publish_hints(net.now, &[at(r1, ms(25))]);
        net.nodes[8].publish_hints(net.now, &[at(r1, ms(4))]);
        net.nodes[9].publish_hints(net.now, &[at(r2, ms(1))]);
        net.after(Duration::from_secs(5));
        let target: IpAddr = "203.0.113.5".parse().unwrap();
        let op = net.nodes[2]
            .find_hinted(
                net.now,
                0,
                8,
                target,
                &[at(r1, ms(2)), at(r2, ms(10))],
                Services::NONE,
            )
            .unwrap();
        net.after(Duration::from_secs(2));
        let Some(Event::HintsFound { hints, .. }) = net.take_event(2, op) else {
            panic!("no answer");
        };
        let got: Vec<(Id, Option<Duration>)> =
            hints.iter().map(|h| (h.contact.id, h.rtt)).collect();
        assert_eq!(
            got,
            [
                (net.nodes[8].id(), Some(ms(6))),
                (net.nodes[9].id(), Some(ms(11))),
                (net.nodes[7].id(), Some(ms(27))),
            ]
        );
        // A changed RTT replaces the old hint rather than adding one.
        net.nodes[7].publish_hints(net.now, &[at(r1, ms(1))]);
        assert_eq!(net.nodes[7].publications(), 2, "its prefix and r1, once");
    }

    #[test]
    fn find_nodes_via_routers_names_the_nodes_behind_them() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        let (r1, r2): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        );
        net.nodes[7].publish_hints(net.now, &[Router::unmeasured(r1)]);
        net.nodes[9].publish_hints(net.now, &[Router::unmeasured(r2)]);
        net.after(Duration::from_secs(5));
        // A target outside every node's prefix, behind r2 then r1.
        let target: IpAddr = "203.0.113.5".parse().unwrap();
        let op = net.nodes[2]
            .find_nodes_via(net.now, 0, 3, target, &[r2, r1], Services::NONE)
            .unwrap();
        net.after(Duration::from_secs(2));
        let Some(Event::NodesFound { nodes, hinted, .. }) = net.take_event(2, op) else {
            panic!("no answer");
        };
        assert_eq!(hinted, 2);
        let first: Vec<Id> = nodes.iter().take(2).map(|c| c.id).collect();
        assert_eq!(
            first,
            [net.nodes[9].id(), net.nodes[7].id()],
            "router order kept"
        );
        assert_eq!(nodes.len(), 3);
        // Without routers no hint applies.
        let op = net.nodes[2]
            .find_nodes(net.now, 0, 3, target, Services::NONE)
            .unwrap();
        net.after(Duration::from_secs(2));
        let Some(Event::NodesFound { hinted, .. }) = net.take_event(2, op) else {
            panic!("no answer");
        };
        assert_eq!(hinted, 0);
    }

    #[test]
    fn find_closest_names_the_node_closest_to_the_key() {
        let mut net = Net::new(20, &flat());
        net.join_all();
        net.after(Duration::from_secs(5));
        for k in 0..8u8 {
            let key = Id::hash("closest-test", &[k]);
            let want = net
                .nodes
                .iter()
                .map(Node::id)
                .min_by_key(|id| id.distance(&key))
                .unwrap();
            for asker in [0, 7, 13] {
                let op = net.nodes[asker].find_closest(net.now, key).unwrap();
                net.after(Duration::from_secs(2));
                let Some(Event::ClosestFound {
                    closest, key: k2, ..
                }) = net.take_event(asker, op)
                else {
                    panic!("no answer");
                };
                assert_eq!(k2, key);
                assert_eq!(closest.id, want, "key {k}, asker {asker}");
            }
        }
    }

    #[test]
    fn inflight_table_files_one_request_per_id_and_reuses_slots() {
        let request = |to: SocketAddr, retries_left| Inflight {
            to,
            id: None,
            level: None,
            sent: Instant::from_millis(0),
            deadline: Instant::from_millis(1000),
            hedge_at: None,
            purpose: Purpose::Probe,
            request: Request::Ping,
            retries_left,
            retransmitted: false,
        };
        let (a, b) = (addr(1), addr(2));
        let mut t = InflightTable::default();
        t.insert(7, request(a, 2));
        t.insert(9, request(b, 2));
        // A retransmission files the request again under its id.
        t.insert(7, request(a, 1));
        assert_eq!(t.len(), 2);
        assert!(t.contains_key(&7) && !t.contains_key(&8));
        assert_eq!(t.get(&7).map(|f| f.retries_left), Some(1));
        assert_eq!(t.remove(&7).map(|f| f.to), Some(a));
        assert!(t.get(&7).is_none() && t.remove(&7).is_none());
        assert_eq!(t.get(&9).map(|f| f.to), Some(b));
        t.insert(11, request(a, 2));
        assert_eq!(t.slots.len(), 2, "the freed slot is reused");
        assert_eq!(t.get_mut(&11).map(|f| f.to), Some(a));
    }

    #[test]
    fn dead_contacts_time_out_and_are_dropped() {
        let mut net = Net::new(12, &flat());
        net.join_all();
        let victim = 5;
        let victim_id = net.nodes[victim].id();
        net.dead[victim] = true;
        // Walk toward the victim's id from everyone, repeatedly: the walks
        // will ask it and time out.
        for round in 0..4 {
            for i in 0..12 {
                if i == victim {
                    continue;
                }
                let now = net.now;
                let _ = net.nodes[i].get(now, victim_id, Levels::ALL).unwrap();
            }
            net.after(Duration::from_secs(5));
            let _ = round;
        }
        let timeouts: u64 = net.nodes.iter().map(|n| n.stats().timeouts).sum();
        assert!(timeouts > 0);
        for (i, n) in net.nodes.iter().enumerate() {
            if i != victim {
                assert!(
                    n.levels[0].table.get(&victim_id).is_none(),
                    "node {i} still lists the dead node"
                );
            }
        }
    }

    #[test]
    fn garbage_and_wrong_cluster_requests_are_handled() {
        let mut net = Net::new(2, &flat());
        net.join_all();
        net.nodes[0].handle_datagram(net.now, addr(1), b"\x01\x02garbage");
        assert_eq!(net.nodes[0].stats().malformed, 1);
        let mut buf = Vec::new();
        assert!(
            net.nodes[0].poll_transmit(&mut buf).is_none(),
            "garbage is never answered"
        );

        let probe = Message {
            request_id: 99,
            sender: Id::for_node(addr(1)),
            services: Services::NONE,
            clusters: SmallVec::new(),
            body: Body::GetProbe {
                scope: Scope {
                    level: 0,
                    cluster: Id::hash("elsewhere", b""),
                },
                key: Id::ZERO,
                target: Distance::ZERO,
            },
        };
        let mut bytes = Vec::new();
        probe.encode(&mut bytes);
        net.nodes[0].handle_datagram(net.now, addr(1), &bytes);
        let t = net.nodes[0].poll_transmit(&mut buf).unwrap();
        let reply = Message::decode(&buf[..t.size]).unwrap();
        assert_eq!(reply.request_id, 99);
        assert_eq!(
            reply.body,
            Body::Error {
                code: ErrorCode::WrongCluster
            }
        );
        assert_eq!(reply.clusters.len(), 1, "errors carry our cluster info");
    }

    #[test]
    fn multi_level_get_falls_back_level_by_level() {
        let mut net = Net::new(20, &Config::default());
        net.join_all();
        // Levels 1 and 2 start as one cluster per node; with every RTT
        // within both diameters, each level merges into a single cluster.
        net.after(Duration::from_secs(15 * 60));
        for level in 1..3 {
            let ids: BTreeSet<Id> = net
                .nodes
                .iter()
                .map(|n| n.clusters()[level].cluster)
                .collect();
            assert_eq!(ids.len(), 1, "level {level}: {} clusters", ids.len());
        }
        assert!(
            net.nodes.iter().all(|n| n.stats().cluster_switches >= 1) || {
                // The node whose cluster won never switched.
                net.nodes
                    .iter()
                    .filter(|n| n.stats().cluster_switches == 0)
                    .count()
                    <= 1
            }
        );
        let key = Id::for_url("http://example.com/d");
        let (ttl, wait) = (Duration::from_secs(60), Duration::from_secs(1));
        // Stored at level 0 only: a get over all levels misses at 2 and 1.
        let stored = net.put_and_wait(3, key, b"x", ttl, Levels::only(0), wait);
        assert_eq!(stored.len(), 1);
        let (values, level, _) = net.get_and_wait(11, key, wait);
        assert_eq!(values.len(), 1);
        assert_eq!(level, Some(0));
        // Stored at every level: found at the fastest.
        let stored = net.put_and_wait(4, key, b"y", ttl, Levels::ALL, wait);
        assert_eq!(stored.len(), 3);
        let (_, level, _) = net.get_and_wait(12, key, wait);
        assert_eq!(level, Some(2));
    }

    #[test]
    fn clusters_are_evaluated_on_their_own_deadline() {
        let config = Config {
            seed: 3,
            ..Config::default()
        };
        let mut node = Node::new(config, addr(1), Instant::ZERO);
        let due = node.next_cluster_eval;
        // Move the housekeeping tick past the evaluation: the evaluation
        // must not wait for it.
        node.next_maintenance = due + Duration::from_secs(9);
        assert_eq!(node.poll_timeout(), Some(due));
        node.handle_timeout(due);
        for level in [1, 2] {
            let stats = node.cluster_stats(level).unwrap();
            assert_eq!(stats.evaluations, 1, "level {level} at {due:?}");
        }
        let next = node.next_cluster_eval;
        let eval = node.config.dsht.cluster_eval_interval;
        assert!(next >= due + eval && next <= due + eval + eval / 4);

        // A flat node has nothing to evaluate and no reason to wake for it.
        let mut flat_node = Node::new(flat(), addr(2), Instant::ZERO);
        flat_node.next_maintenance = flat_node.next_cluster_eval + Duration::from_secs(9);
        assert_eq!(flat_node.poll_timeout(), Some(flat_node.next_maintenance));
    }
}
