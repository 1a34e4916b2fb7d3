//! A deterministic discrete-event simulator: many Coral [`Node`]s in one
//! process, on virtual time.
//!
//! The simulator is a driver like any adapter: it moves bytes and time and
//! makes no protocol decision. It owns
//!
//! - the nodes, indexed `0..len()` in the order they were added, each at a
//!   synthetic address `10.a.b.c:port` with `a.b.c` = index + 1;
//! - a single event queue, a `BinaryHeap` ordered by `(time, seq)`, where the
//!   sequence number makes ties come out in insertion order, holding datagram
//!   deliveries, node timer wake-ups and scheduled application commands;
//! - a [`LatencyModel`] that delays each datagram by the one-way delay
//!   (RTT / 2) between its two nodes;
//! - one seeded [`Rng`], the only source of randomness of the simulator
//!   itself (loss draws, bootstrap choices); each node gets its own seed
//!   derived from the simulation seed, its index and its incarnation;
//! - a [`TraceHash`] over every delivered datagram (time, sender, receiver,
//!   bytes) and every application event, so that a test can assert that two
//!   runs of one seed did exactly the same thing.
//!
//! It obeys the core's drive contract: after any input to a node (datagram,
//! timeout, command) it drains `poll_transmit` until `None`, then
//! `poll_event` until `None`, then reads `poll_timeout` and queues a wake-up
//! for that deadline. A node keeps one current wake-up time; a queued wake-up
//! that no longer matches it is stale and skipped, which is cheap and safe
//! since extra `handle_timeout` calls are harmless by contract.
//!
//! Faults: a seeded per-datagram loss probability, and crash/restart. A
//! crashed node drops its state and everything sent to it; a restarted node
//! is a fresh [`Node`] at the same address (so with the same id) that joins
//! again through live nodes.
//!
//! Determinism rules: nothing iterated here is a `HashMap`; nodes live in a
//! `Vec`, pending operations in a `BTreeMap`; there is no wall clock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use coral_core::config::{Config, LevelConfig};
use coral_core::contact::{Contact, Level, Services};
use coral_core::dsht::hints::Router;
use coral_core::id::Id;
use coral_core::rng::Rng;
use coral_core::time::Instant;
use coral_core::{Event, Levels, Node, OpError, OpId, Stats};

use crate::latency::LatencyModel;
use crate::trace::{TraceHash, mix64};

/// The UDP port every simulated node listens on (Coral's RPC port).
pub const DEFAULT_PORT: u16 = 8091;

/// The first address of the synthetic range; node `i` is this plus `i + 1`.
const BASE_IP: u32 = 0x0A00_0000;

/// How a simulation is set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Round-trip times between nodes.
    pub latency: LatencyModel,
    /// Probability in `[0, 1]` that any one datagram is lost.
    pub loss: f64,
    /// Template for every node's configuration; its `seed` is replaced by a
    /// per-node seed.
    pub node: Config,
    /// The RPC port of every node.
    pub port: u16,
}

impl SimConfig {
    /// A lossless simulation on the default synthetic sphere whose nodes
    /// run the default configuration with one global level: the DSHT
    /// alone (spec §1–3). Experiments about the hierarchy set
    /// `node.levels` themselves.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            latency: LatencyModel::sphere(mix64(seed, 0x1a7e)),
            loss: 0.0,
            node: Config {
                levels: vec![LevelConfig::GLOBAL],
                ..Config::default()
            },
            port: DEFAULT_PORT,
        }
    }
}

/// An application command for a node, issued directly or at a scheduled time.
#[derive(Clone, Debug)]
pub enum Command {
    /// [`Node::join`] through these bootstrap addresses.
    Join {
        /// Addresses of nodes already in the network.
        bootstrap: Vec<SocketAddr>,
    },
    /// [`Node::get`].
    Get {
        /// The key.
        key: Id,
        /// Levels to search.
        levels: Levels,
    },
    /// [`Node::put`].
    Put {
        /// The key.
        key: Id,
        /// The value.
        value: Bytes,
        /// How long the value should live.
        ttl: Duration,
        /// Levels to store at.
        levels: Levels,
    },
    /// [`Node::find_nodes_via`].
    FindNodes {
        /// The level whose cluster is searched.
        level: Level,
        /// How many nodes are wanted.
        count: usize,
        /// The address the nodes should be near.
        target: IpAddr,
        /// The last hops toward `target`, nearest it first.
        routers: Vec<IpAddr>,
        /// Services the nodes must offer.
        services: Services,
    },
    /// [`Node::find_hinted`]: the nodes the DSHT's network hints name near
    /// `target`, as the DNS server's hint lookups ask.
    FindHinted {
        /// The level whose hints are read.
        level: Level,
        /// How many nodes are wanted.
        count: usize,
        /// The address the nodes should be near.
        target: IpAddr,
        /// The last hops toward `target`, nearest it first, each with
        /// `target`'s estimated RTT to it.
        routers: Vec<Router>,
        /// Services the nodes must offer.
        services: Services,
    },
    /// [`Node::check_live`]: one ping, as the DNS server asks before
    /// naming a proxy its node has not heard from.
    CheckLive {
        /// The node to check.
        contact: Contact,
    },
}

/// Why the simulator could not issue a command or finish an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The node is crashed (or the index is out of range).
    #[error("node {0} is down")]
    NodeDown(usize),
    /// The node crashed while the operation was running.
    #[error("node {0} crashed before the operation finished")]
    Crashed(usize),
    /// The node refused to start the operation.
    #[error("operation refused: {0}")]
    Refused(OpError),
}

/// What came of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node reported this event.
    Event(Event),
    /// The operation never ran or never finished.
    Failed(SimError),
}

/// An application event (or failure) together with when and where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The node.
    pub node: usize,
    /// The tag given when the command was scheduled (0 for direct commands).
    pub tag: u64,
    /// When the operation was issued, if the simulator issued it.
    pub issued: Option<Instant>,
    /// When the event came out of the node.
    pub done: Instant,
    /// What happened.
    pub outcome: Outcome,
}

impl Completion {
    /// Virtual time from issue to completion.
    pub fn latency(&self) -> Option<Duration> {
        self.issued.map(|t| self.done - t)
    }

    /// The event, if the operation produced one.
    pub fn event(&self) -> Option<&Event> {
        match &self.outcome {
            Outcome::Event(e) => Some(e),
            Outcome::Failed(_) => None,
        }
    }
}

/// Counters of what the simulator did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Datagrams handed to a live node.
    pub delivered: u64,
    /// Bytes in those datagrams.
    pub bytes_delivered: u64,
    /// Datagrams dropped by the loss model.
    pub lost: u64,
    /// Datagrams that arrived at a crashed node.
    pub to_dead: u64,
    /// Datagrams addressed outside the simulated network.
    pub undeliverable: u64,
    /// Transmits whose size exceeded the buffer the node filled (a core bug).
    pub bad_transmits: u64,
    /// `handle_timeout` calls made.
    pub wakes: u64,
    /// Queued wake-ups skipped because the node's deadline had changed.
    pub stale_wakes: u64,
    /// Times a node asked, right after `handle_timeout`, to be woken again
    /// at or before the same instant (pushed 1 µs later to guarantee progress).
    pub timeout_spins: u64,
    /// Application events received from nodes.
    pub events: u64,
}

/// Outcome of [`Sim::join_all`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinReport {
    /// Nodes whose join was issued.
    pub attempted: usize,
    /// Joins that reported [`Event::Joined`].
    pub joined: usize,
    /// Joins that reported zero contacts.
    pub empty: usize,
    /// Joins that had not finished at their batch's deadline.
    pub timed_out: usize,
    /// Virtual time the joins took.
    pub elapsed: Duration,
}

/// How [`Sim::join_all`] brings nodes in.
#[derive(Clone, Copy, Debug)]
pub struct JoinOptions {
    /// Already-joined nodes each newcomer bootstraps from.
    pub bootstrap: usize,
    /// Largest number of nodes joining at once. Batches double from one up
    /// to this, so the network at least doubles before each batch.
    pub max_batch: usize,
    /// Joins of a batch start spread uniformly over this span.
    pub stagger: Duration,
    /// A batch gives up waiting for its joins after this long.
    pub batch_timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            bootstrap: 3,
            max_batch: 512,
            stagger: Duration::from_millis(500),
            batch_timeout: Duration::from_secs(60),
        }
    }
}

struct SimNode {
    addr: SocketAddr,
    node: Option<Node>,
    /// The deadline the node last asked for, with a wake-up queued for it.
    wake: Option<Instant>,
    /// Times of the wake-ups of this node still in the queue, so that a
    /// deadline the node returns to (its maintenance tick, after every
    /// answered RPC) reuses the queued entry instead of piling up copies.
    queued: Vec<Instant>,
    incarnation: u64,
    joined: bool,
}

enum What {
    Datagram { from: u32, to: u32, data: Vec<u8> },
    Wake { node: u32 },
    Command(Box<(u32, u64, Command)>),
}

/// An item due at `at`, for a `BinaryHeap` that pops the earliest first;
/// `seq` (the order of insertion) breaks ties, so equal times replay in
/// the same order. The simulator's queue and the DNS experiment's use it.
pub(crate) struct Timed<T> {
    pub(crate) at: Instant,
    pub(crate) seq: u64,
    pub(crate) item: T,
}

impl<T> PartialEq for Timed<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Timed<T> {}
impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Timed<T> {
    /// Reversed, so that the max-heap pops the earliest `(at, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What a queued event refers to: the node to wake, or the payload's slot
/// in [`Sim::slab`].
struct Handle {
    handle: u32,
    wake: bool,
}

/// A queued event. Kept small (24 bytes) because the heap moves entries on
/// every push and pop; payloads wait in [`Sim::slab`].
type Entry = Timed<Handle>;

const _: () = assert!(size_of::<Entry>() <= 24);

/// Which input a node is being flushed after.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Timeout,
    Other,
}

/// The simulated network. See the module doc.
pub struct Sim {
    cfg: SimConfig,
    now: Instant,
    nodes: Vec<SimNode>,
    /// Node index by address.
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: BinaryHeap<Entry>,
    seq: u64,
    rng: Rng,
    trace: TraceHash,
    counters: SimCounters,
    /// Operations issued and not finished: (node, op) → (issued, tag).
    pending: BTreeMap<(u32, u64), (Instant, u64)>,
    /// Commands queued and not yet issued.
    queued_commands: usize,
    completions: Vec<Completion>,
    /// Payloads of queued datagrams and commands, by slot.
    slab: Vec<Option<What>>,
    /// Free slots of `slab` (reused last-in first-out, deterministically).
    free_slots: Vec<u32>,
    /// Spare datagram buffers, so steady state allocates nothing per datagram.
    pool: Vec<Vec<u8>>,
    /// Scratch list of one flush's transmits, kept to reuse its allocation.
    sends: Vec<(SocketAddr, Vec<u8>)>,
    /// Observer of every delivered datagram, for tests that inspect traffic.
    tap: Option<Tap>,
}

/// An observer of delivered datagrams: `(time, from, to, bytes)`.
pub type Tap = Box<dyn FnMut(Instant, usize, usize, &[u8])>;

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.cfg.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("queued", &self.queue.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty network at time zero.
    pub fn new(cfg: SimConfig) -> Self {
        let rng = Rng::new(mix64(cfg.seed, 0x5eed));
        Self {
            cfg,
            now: Instant::ZERO,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            trace: TraceHash::new(),
            counters: SimCounters::default(),
            pending: BTreeMap::new(),
            queued_commands: 0,
            completions: Vec::new(),
            slab: Vec::new(),
            free_slots: Vec::new(),
            pool: Vec::new(),
            sends: Vec::new(),
            tap: None,
        }
    }

    /// The simulation seed.
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The simulator's own generator, for scenario choices (which key, which
    /// node) that must replay with the seed.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The configuration every node starts from (its seed aside).
    pub fn node_config(&self) -> &Config {
        &self.cfg.node
    }

    /// The latency model.
    pub fn latency(&self) -> &LatencyModel {
        &self.cfg.latency
    }

    /// Calls `tap` with every datagram delivered to a live node from now on
    /// (`None` removes it). The tap only observes: it cannot change traffic.
    pub fn set_tap(&mut self, tap: Option<Tap>) {
        self.tap = tap;
    }

    /// Changes the loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss.clamp(0.0, 1.0);
    }

    /// What the simulator did so far.
    pub fn counters(&self) -> SimCounters {
        self.counters
    }

    /// The fingerprint of every delivery and event so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// The address of node `i`.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// The index of the node at `addr`, if it is one of ours.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        let SocketAddr::V4(v4) = addr else {
            return None;
        };
        if v4.port() != self.cfg.port {
            return None;
        }
        self.by_addr.get(&addr).copied()
    }

    /// The id node `i` has (or would have once restarted).
    pub fn id(&self, i: usize) -> Id {
        Id::for_node(self.nodes[i].addr)
    }

    /// Node `i`, unless it is crashed.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(|n| n.node.as_ref())
    }

    /// Node `i`'s counters, unless it is crashed.
    pub fn stats(&self, i: usize) -> Option<&Stats> {
        self.node(i).map(Node::stats)
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.node(i).is_some()
    }

    /// Whether node `i` is running and has finished a join.
    pub fn is_joined(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|n| n.node.is_some() && n.joined)
    }

    /// Operations issued or scheduled that have not finished.
    pub fn ops_in_flight(&self) -> usize {
        self.pending.len() + self.queued_commands
    }

    /// Takes every completion recorded so far, in the order they happened.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Adds `count` nodes (not joined yet) and returns their indices.
    pub fn add_nodes(&mut self, count: usize) -> std::ops::Range<usize> {
        let start = self.nodes.len();
        self.cfg.latency.ensure(start + count);
        for i in start..start + count {
            let addr = self.site_addr(i);
            let clash = self.by_addr.insert(addr, i);
            debug_assert!(clash.is_none(), "two nodes at {addr}");
            let mut sn = SimNode {
                addr,
                node: None,
                wake: None,
                queued: Vec::new(),
                incarnation: 0,
                joined: false,
            };
            sn.node = Some(self.make_node(i, addr, 0));
            self.nodes.push(sn);
            self.flush(i, Input::Other);
        }
        start..start + count
    }

    /// Node `i`'s address: host `rank + 1` of its site's /24,
    /// `10.a.b.0/24` with `(a, b)` the site number (see
    /// [`LatencyModel::site`]). Sites beyond 65 536, or more than 254 nodes
    /// at one site, continue in 11.0.0.0/8 and up, still one /24 per site.
    fn site_addr(&self, i: usize) -> SocketAddr {
        let (site, rank) = self.cfg.latency.site(i);
        let net = BASE_IP + ((site as u32) << 8);
        let host = 1 + (rank as u32 % 254);
        let spill = (rank as u32 / 254) << 24;
        let ip = Ipv4Addr::from(net.wrapping_add(spill) | host);
        SocketAddr::V4(SocketAddrV4::new(ip, self.cfg.port))
    }

    fn make_node(&self, i: usize, addr: SocketAddr, incarnation: u64) -> Node {
        let mut config = self.cfg.node.clone();
        config.seed = mix64(mix64(self.cfg.seed, i as u64), incarnation);
        Node::new(config, addr, self.now)
    }

    /// Issues a command on node `i` now.
    pub fn command(&mut self, i: usize, cmd: Command) -> Result<OpId, SimError> {
        self.issue(i, 0, cmd)
    }

    /// Starts a get on node `i` now.
    pub fn get(&mut self, i: usize, key: Id, levels: Levels) -> Result<OpId, SimError> {
        self.issue(i, 0, Command::Get { key, levels })
    }

    /// Starts a put on node `i` now.
    pub fn put(
        &mut self,
        i: usize,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<OpId, SimError> {
        self.issue(
            i,
            0,
            Command::Put {
                key,
                value,
                ttl,
                levels,
            },
        )
    }

    /// Starts a join of node `i` now through `bootstrap`.
    pub fn join(&mut self, i: usize, bootstrap: Vec<SocketAddr>) -> Result<OpId, SimError> {
        self.issue(i, 0, Command::Join { bootstrap })
    }

    /// Queues `cmd` for node `i` at time `at` (or now, if `at` has passed).
    /// Its [`Completion`] carries `tag`; a command that cannot be issued
    /// (node down, put refused) completes at once with [`Outcome::Failed`].
    pub fn schedule(&mut self, at: Instant, i: usize, tag: u64, cmd: Command) {
        self.queued_commands += 1;
        self.push(
            at.max(self.now),
            What::Command(Box::new((i as u32, tag, cmd))),
        );
    }

    fn issue(&mut self, i: usize, tag: u64, cmd: Command) -> Result<OpId, SimError> {
        let now = self.now;
        let node = self
            .nodes
            .get_mut(i)
            .and_then(|n| n.node.as_mut())
            .ok_or(SimError::NodeDown(i))?;
        let op = match cmd {
            Command::Join { bootstrap } => node.join(now, &bootstrap),
            Command::Get { key, levels } => node.get(now, key, levels),
            Command::Put {
                key,
                value,
                ttl,
                levels,
            } => node.put(now, key, value, ttl, levels),
            Command::FindNodes {
                level,
                count,
                target,
                routers,
                services,
            } => node.find_nodes_via(now, level, count, target, &routers, services),
            Command::FindHinted {
                level,
                count,
                target,
                routers,
                services,
            } => node.find_hinted(now, level, count, target, &routers, services),
            Command::CheckLive { contact } => node.check_live(now, contact),
        }
        .map_err(SimError::Refused)?;
        self.pending.insert((i as u32, op.0), (now, tag));
        self.flush(i, Input::Other);
        Ok(op)
    }

    /// Node `i` publishes its network hints: its /24 and the routers the
    /// latency model places on the last hops toward it, each with the
    /// node's RTT to it ([`LatencyModel::traced_routers`]), as an adapter
    /// would after a traceroute.
    /// Nothing happens for a crashed node.
    pub fn publish_hints(&mut self, i: usize) {
        let routers = self.cfg.latency.traced_routers(i, i);
        let now = self.now;
        let Some(node) = self.nodes.get_mut(i).and_then(|n| n.node.as_mut()) else {
            return;
        };
        node.publish_hints(now, &routers);
        self.flush(i, Input::Other);
    }

    /// Crashes node `i`: its state is dropped, datagrams to it are lost until
    /// it restarts, and its unfinished operations complete as failed.
    pub fn crash(&mut self, i: usize) {
        let Some(sn) = self.nodes.get_mut(i) else {
            return;
        };
        if sn.node.take().is_none() {
            return;
        }
        sn.wake = None;
        sn.queued.clear();
        sn.joined = false;
        let key = i as u32;
        let lost: Vec<_> = self
            .pending
            .range((key, 0)..=(key, u64::MAX))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, (issued, tag)) in lost {
            self.pending.remove(&k);
            self.completions.push(Completion {
                node: i,
                tag,
                issued: Some(issued),
                done: self.now,
                outcome: Outcome::Failed(SimError::Crashed(i)),
            });
        }
    }

    /// Restarts node `i` (crashing it first if it is up) as a fresh node at
    /// the same address and starts its join through up to `bootstrap` random live joined nodes.
    pub fn restart(&mut self, i: usize, bootstrap: usize) -> Result<OpId, SimError> {
        if i >= self.nodes.len() {
            return Err(SimError::NodeDown(i));
        }
        self.crash(i);
        let sn = &self.nodes[i];
        let incarnation = sn.incarnation + 1;
        let node = self.make_node(i, sn.addr, incarnation);
        let sn = &mut self.nodes[i];
        sn.incarnation = incarnation;
        sn.node = Some(node);
        self.flush(i, Input::Other);
        self.join_via(i, bootstrap)
    }

    fn join_via(&mut self, i: usize, bootstrap: usize) -> Result<OpId, SimError> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.is_joined(j))
            .collect();
        let boot = self.pick_bootstrap(&live, bootstrap);
        self.join(i, boot)
    }

    fn pick_bootstrap(&mut self, live: &[usize], count: usize) -> Vec<SocketAddr> {
        let mut picked: Vec<usize> = Vec::with_capacity(count);
        if live.len() <= count {
            picked.extend_from_slice(live);
        } else {
            while picked.len() < count {
                let j = live[self.rng.below(live.len() as u64) as usize];
                if !picked.contains(&j) {
                    picked.push(j);
                }
            }
        }
        picked.into_iter().map(|j| self.nodes[j].addr).collect()
    }

    /// Joins every live node that has not joined yet, in index order and in
    /// batches (see [`JoinOptions`]). The first node of an empty network
    /// joins with no bootstrap.
    pub fn join_all(&mut self, opts: JoinOptions) -> JoinReport {
        let start = self.now;
        let mut report = JoinReport::default();
        let mut todo: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.is_up(i) && !self.nodes[i].joined)
            .collect();
        todo.reverse(); // pop() takes the lowest index first
        let mut live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.is_joined(i))
            .collect();
        let mut batch_size = 1usize;
        while !todo.is_empty() {
            let n = batch_size.min(todo.len()).min(opts.max_batch.max(1));
            let batch: Vec<usize> = (0..n).filter_map(|_| todo.pop()).collect();
            let mut ops = Vec::with_capacity(batch.len());
            for &i in &batch {
                let boot = self.pick_bootstrap(&live, opts.bootstrap);
                let offset = if live.is_empty() {
                    Duration::ZERO
                } else {
                    self.rng.jitter(opts.stagger)
                };
                report.attempted += 1;
                ops.push(i);
                self.schedule(self.now + offset, i, 0, Command::Join { bootstrap: boot });
            }
            let deadline = self.now + opts.stagger + opts.batch_timeout;
            self.run_until_idle(deadline);
            for c in self.take_completions() {
                if let Some(Event::Joined { contacts, .. }) = c.event() {
                    report.joined += 1;
                    if *contacts == 0 && !live.is_empty() {
                        report.empty += 1;
                    }
                }
            }
            report.timed_out += self.pending.len();
            live.extend(batch.iter().copied().filter(|&i| self.is_joined(i)));
            if live.is_empty() {
                // The very first node: it is the network, joined or not.
                if let Some(&i) = batch.first() {
                    self.nodes[i].joined = self.nodes[i].node.is_some();
                    live.push(i);
                }
            }
            batch_size = live.len().max(1);
        }
        report.elapsed = self.now - start;
        report
    }

    /// Runs every queued event up to and including `deadline`, then sets the
    /// clock to `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        while self.queue.peek().is_some_and(|e| e.at <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until no operation is in flight or `deadline` passes; returns
    /// whether everything finished.
    pub fn run_until_idle(&mut self, deadline: Instant) -> bool {
        while self.ops_in_flight() > 0 {
            if self.queue.peek().is_none_or(|e| e.at > deadline) {
                self.now = self.now.max(deadline);
                return false;
            }
            self.step();
        }
        true
    }

    /// Processes the next queued event; false when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(entry) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(entry.at);
        if entry.item.wake {
            self.wake(entry.item.handle as usize, entry.at);
            return true;
        }
        let what = self
            .slab
            .get_mut(entry.item.handle as usize)
            .and_then(Option::take);
        self.free_slots.push(entry.item.handle);
        match what {
            None => {}
            Some(What::Wake { node }) => self.wake(node as usize, entry.at),
            Some(What::Datagram { from, to, data }) => self.deliver(from, to, data),
            Some(What::Command(b)) => {
                let (i, tag, cmd) = *b;
                self.queued_commands -= 1;
                if let Err(e) = self.issue(i as usize, tag, cmd) {
                    self.completions.push(Completion {
                        node: i as usize,
                        tag,
                        issued: Some(self.now),
                        done: self.now,
                        outcome: Outcome::Failed(e),
                    });
                }
            }
        }
        true
    }

    fn push(&mut self, at: Instant, what: What) {
        let seq = self.seq;
        self.seq += 1;
        let entry = if let What::Wake { node } = what {
            Entry {
                at,
                seq,
                item: Handle {
                    handle: node,
                    wake: true,
                },
            }
        } else {
            let slot = match self.free_slots.pop() {
                Some(slot) => {
                    self.slab[slot as usize] = Some(what);
                    slot
                }
                None => {
                    self.slab.push(Some(what));
                    (self.slab.len() - 1) as u32
                }
            };
            Entry {
                at,
                seq,
                item: Handle {
                    handle: slot,
                    wake: false,
                },
            }
        };
        self.queue.push(entry);
    }

    fn deliver(&mut self, from: u32, to: u32, data: Vec<u8>) {
        let now = self.now;
        let from_addr = self.nodes[from as usize].addr;
        let Some(node) = self.nodes[to as usize].node.as_mut() else {
            self.counters.to_dead += 1;
            self.pool.push(data);
            return;
        };
        self.counters.delivered += 1;
        self.counters.bytes_delivered += data.len() as u64;
        self.trace.word(now.as_micros());
        self.trace.word((u64::from(from) << 32) | u64::from(to));
        self.trace.bytes(&data);
        if let Some(tap) = self.tap.as_mut() {
            tap(now, from as usize, to as usize, &data);
        }
        node.handle_datagram(now, from_addr, &data);
        self.pool.push(data);
        self.flush(to as usize, Input::Other);
    }

    fn wake(&mut self, i: usize, at: Instant) {
        let now = self.now;
        let sn = &mut self.nodes[i];
        if let Some(p) = sn.queued.iter().position(|&t| t == at) {
            sn.queued.swap_remove(p);
        }
        let Some(node) = sn.node.as_mut() else { return };
        if sn.wake != Some(at) {
            self.counters.stale_wakes += 1;
            return;
        }
        sn.wake = None;
        self.counters.wakes += 1;
        node.handle_timeout(now);
        self.flush(i, Input::Timeout);
    }

    /// The drive contract: drain transmits, then events, then read the deadline.
    fn flush(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        let mut sends = std::mem::take(&mut self.sends);
        loop {
            let mut buf = self.pool.pop().unwrap_or_default();
            let Some(t) = node.poll_transmit(&mut buf) else {
                self.pool.push(buf);
                break;
            };
            if t.size > buf.len() {
                self.counters.bad_transmits += 1;
                self.pool.push(buf);
                continue;
            }
            buf.truncate(t.size);
            sends.push((t.destination, buf));
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let deadline = node.poll_timeout();

        for (dest, buf) in sends.drain(..) {
            self.send(i, dest, buf);
        }
        self.sends = sends;
        for e in events {
            self.record_event(i, e);
        }
        let sn = &mut self.nodes[i];
        match deadline {
            None => sn.wake = None,
            Some(t) => {
                let at = if input == Input::Timeout && t <= now {
                    self.counters.timeout_spins += 1;
                    now + Duration::from_micros(1)
                } else {
                    t.max(now)
                };
                if sn.wake != Some(at) {
                    sn.wake = Some(at);
                    if !sn.queued.contains(&at) {
                        sn.queued.push(at);
                        self.push(at, What::Wake { node: i as u32 });
                    }
                }
            }
        }
    }

    fn send(&mut self, from: usize, dest: SocketAddr, buf: Vec<u8>) {
        let Some(to) = self.index_of(dest) else {
            self.counters.undeliverable += 1;
            self.pool.push(buf);
            return;
        };
        if self.cfg.loss > 0.0 && self.rng.unit_f64() < self.cfg.loss {
            self.counters.lost += 1;
            self.pool.push(buf);
            return;
        }
        let at = self.now + Duration::from_micros(self.cfg.latency.one_way_us(from, to));
        self.push(
            at,
            What::Datagram {
                from: from as u32,
                to: to as u32,
                data: buf,
            },
        );
    }

    fn record_event(&mut self, i: usize, e: Event) {
        self.counters.events += 1;
        hash_event(&mut self.trace, self.now, i, &e);
        let op = match &e {
            Event::Joined { op, .. } => {
                self.nodes[i].joined = true;
                Some(*op)
            }
            Event::GetDone { op, .. }
            | Event::PutDone { op, .. }
            | Event::NodesFound { op, .. }
            | Event::HintsFound { op, .. }
            | Event::Checked { op, .. }
            | Event::ClosestFound { op, .. } => Some(*op),
            _ => None,
        };
        let (issued, tag) = match op.and_then(|op| self.pending.remove(&(i as u32, op.0))) {
            Some((issued, tag)) => (Some(issued), tag),
            None => (None, 0),
        };
        self.completions.push(Completion {
            node: i,
            tag,
            issued,
            done: self.now,
            outcome: Outcome::Event(e),
        });
    }
}

fn hash_event(h: &mut TraceHash, now: Instant, node: usize, e: &Event) {
    h.word(now.as_micros());
    h.word(node as u64);
    match e {
        Event::Joined { op, contacts } => {
            h.word(1);
            h.word(op.0);
            h.word(*contacts as u64);
        }
        Event::GetDone {
            op,
            key,
            values,
            level,
            hops,
        } => {
            h.word(2);
            h.word(op.0);
            h.bytes(&key.0);
            h.word(values.len() as u64);
            for v in values {
                h.bytes(v);
            }
            h.word(level.map_or(u64::MAX, u64::from));
            h.word(u64::from(*hops));
        }
        Event::PutDone {
            op,
            key,
            stored,
            hops,
        } => {
            h.word(3);
            h.word(op.0);
            h.bytes(&key.0);
            h.word(stored.len() as u64);
            for (level, id) in stored {
                h.word(u64::from(*level));
                h.bytes(&id.0);
            }
            h.word(u64::from(*hops));
        }
        other => {
            h.word(4);
            h.bytes(format!("{other:?}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::RttMatrix;

    fn entry(at: u64, seq: u64) -> Entry {
        Entry {
            at: Instant::from_micros(at),
            seq,
            item: Handle {
                handle: 0,
                wake: true,
            },
        }
    }

    #[test]
    fn queue_pops_by_time_then_insertion_order() {
        let mut q = BinaryHeap::new();
        for (at, seq) in [(5, 0), (1, 1), (5, 2), (3, 3), (1, 4), (5, 5)] {
            q.push(entry(at, seq));
        }
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| q.pop())
            .map(|e| (e.at.as_micros(), e.seq))
            .collect();
        assert_eq!(order, [(1, 1), (1, 4), (3, 3), (5, 0), (5, 2), (5, 5)]);
    }

    #[test]
    fn addresses_map_back_to_indices() {
        let mut cfg = SimConfig::new(1);
        cfg.latency = LatencyModel::constant(Duration::from_millis(10));
        let mut sim = Sim::new(cfg);
        sim.add_nodes(3);
        // One /24 per site: 10.0.0.1, 10.0.1.1, 10.0.2.1.
        for i in 0..3 {
            let want: SocketAddr = format!("10.0.{i}.1:8091").parse().expect("literal");
            assert_eq!(sim.addr(i), want);
            assert_eq!(sim.index_of(want), Some(i));
        }
        for other in [
            "10.0.0.2:8091",
            "10.0.0.1:53",
            "10.0.3.1:8091",
            "[::1]:8091",
        ] {
            assert_eq!(
                sim.index_of(other.parse().expect("literal")),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn nodes_at_one_matrix_host_share_its_prefix() {
        let matrix = RttMatrix::parse("0 10\n10 0\n").expect("a 2x2 matrix");
        let mut cfg = SimConfig::new(1);
        cfg.latency = LatencyModel::matrix(std::sync::Arc::new(matrix), 1);
        let mut sim = Sim::new(cfg);
        sim.add_nodes(5);
        let addrs: Vec<String> = (0..5).map(|i| sim.addr(i).ip().to_string()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.1", "10.0.1.1", "10.0.0.2", "10.0.1.2", "10.0.0.3"]
        );
    }
}
