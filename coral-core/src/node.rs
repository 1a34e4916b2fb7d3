//! The node: one Coral DSHT participant as a sans-IO state machine.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Config, LevelConfig};
use crate::contact::{Contact, Level, Services};
use crate::id::Id;
use crate::time::Instant;

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
}

/// Local misuse of [`Node::put`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The value is longer than the configured maximum.
    #[error("value of {len} bytes exceeds the maximum of {max}")]
    ValueTooLong {
        /// The value's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Too many operations are already running.
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
    /// RPCs that timed out.
    pub timeouts: u64,
    /// Extra RPCs sent because a reply was late.
    pub hedges: u64,
    /// Lookups finished (one per level walked).
    pub lookups: u64,
    /// Sum of hops over finished lookups.
    pub lookup_hops: u64,
    /// Stores refused because this node was full.
    pub refused_full: u64,
    /// Stores refused because this node was full and loaded.
    pub refused_loaded: u64,
    /// Contacts dropped after repeated failures.
    pub contacts_dropped: u64,
    /// Requests dropped because too many RPCs were in flight.
    pub inflight_overflow: u64,
}

/// One Coral node.
#[derive(Debug)]
pub struct Node {
    config: Config,
    contact: Contact,
    stats: Stats,
}

impl Node {
    /// A node listening for RPCs at `addr`; its id derives from `addr`.
    pub fn new(config: Config, addr: SocketAddr, now: Instant) -> Self {
        let _ = now;
        let contact = Contact::from_addr(addr, config.services);
        Self { config, contact, stats: Stats::default() }
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

    /// The level hierarchy (spec §2 `levels()`).
    pub fn levels(&self) -> &[LevelConfig] {
        &self.config.levels
    }

    /// A datagram arrived on the RPC socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let _ = (now, from, data);
        todo!()
    }

    /// Time has reached a deadline from [`Self::poll_timeout`]; extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// The next datagram to send, encoded into `buf` (cleared first).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        let _ = buf;
        todo!()
    }

    /// When [`Self::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// Joins the network through `bootstrap` addresses by looking up our own id.
    pub fn join(&mut self, now: Instant, bootstrap: &[SocketAddr]) -> OpId {
        let _ = (now, bootstrap);
        todo!()
    }

    /// Starts a get of `key` at `levels`, fastest level first.
    pub fn get(&mut self, now: Instant, key: Id, levels: Levels) -> OpId {
        let _ = (now, key, levels);
        todo!()
    }

    /// Starts a put of `value` under `key` for `ttl` at every level in `levels`.
    pub fn put(
        &mut self,
        now: Instant,
        key: Id,
        value: Bytes,
        ttl: Duration,
        levels: Levels,
    ) -> Result<OpId, PutError> {
        let _ = (now, key, value, ttl, levels);
        todo!()
    }

    /// Up to `count` live nodes of this node's cluster at `level` (spec §2 `nodes()`).
    pub fn nodes(
        &self,
        level: Level,
        count: usize,
        target: Option<IpAddr>,
        services: Services,
    ) -> Vec<Contact> {
        let _ = (level, count, target, services);
        todo!()
    }
}
