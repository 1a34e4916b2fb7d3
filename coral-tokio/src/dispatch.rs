//! Application commands to core calls, and core events back to the callers
//! waiting on them: the part of a runtime that does not depend on how it
//! waits for input.
//!
//! Both runtimes (this crate's tokio actor and coral-mio's epoll loop) own
//! one [`Dispatch`] next to their [`Node`]. A command from a handle goes to
//! [`Dispatch::command`], which starts the operation and remembers its
//! reply channel under the [`OpId`] the core returned; each event the loop
//! drains goes to [`Dispatch::event`], which answers that caller. What is
//! runtime-specific (the reply channel, what to do with an event no caller
//! waits for) stays with the runtime: channels come in through [`Replies`],
//! and unclaimed events are handed back.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use coral_core::contact::{Contact, Level, Services};
use coral_core::dsht::hints::Router;
use coral_core::id::Id;
use coral_core::time::Instant;
use coral_core::{Event, Levels, Node, OpError, OpId};
use tracing::{info, trace};

/// Why an application command did not produce a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node has stopped (shut down, or its socket failed).
    #[error("the node has stopped")]
    Stopped,
    /// The core refused to start the operation.
    #[error("the node refused the operation: {0}")]
    Refused(#[from] OpError),
}

/// The outcome of a join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// Contacts in the level-0 routing table afterwards.
    pub contacts: usize,
}

/// The outcome of a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// Values found (empty when none was found at any level).
    pub values: Vec<Bytes>,
    /// The level at which they were found.
    pub level: Option<Level>,
    /// Nodes that answered along the path, over all levels walked.
    pub hops: u32,
}

/// The outcome of a put or of the first put of a publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// Where the value was stored, per level.
    pub stored: Vec<(Level, Id)>,
    /// Nodes that answered along the forward paths.
    pub hops: u32,
}

/// The outcome of a `find_nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodesResult {
    /// The nodes, best first.
    pub nodes: Vec<Contact>,
    /// How many of them the DSHT's network hints named.
    pub hinted: usize,
}

/// The kind of one-shot channel a runtime answers its callers on (tokio's
/// `oneshot`, std's `mpsc`, ...).
pub trait Replies {
    /// The sending half that carries one `T` back to a caller.
    type To<T>;

    /// Answers the caller; a caller that went away (one that timed out or
    /// gave up) is not an error, so nothing is returned.
    fn send<T>(to: Self::To<T>, value: T);
}

/// The sending half for an operation that can fail.
pub type Reply<R, T> = <R as Replies>::To<Result<T, NodeError>>;

/// An application command, carrying the channel its answer goes back on.
pub enum Command<R: Replies> {
    /// [`Node::join`] through these bootstrap addresses.
    Join(Vec<SocketAddr>, Reply<R, Joined>),
    /// [`Node::get`].
    Get(Id, Levels, Reply<R, GetResult>),
    /// [`Node::put`], or [`Node::publish`] when `publish` is set.
    Put {
        /// The key.
        key: Id,
        /// The value.
        value: Bytes,
        /// How long the value lives.
        ttl: Duration,
        /// Where to put it.
        levels: Levels,
        /// Whether the core keeps the value alive until a withdraw.
        publish: bool,
        /// The answer.
        reply: Reply<R, PutResult>,
    },
    /// [`Node::withdraw`]; answers whether the value was published.
    Withdraw(Id, Bytes, R::To<bool>),
    /// [`Node::publish_hints`] with these routers.
    PublishHints(Vec<Router>, R::To<()>),
    /// [`Node::find_nodes`].
    FindNodes {
        /// The level.
        level: Level,
        /// How many nodes at most.
        count: usize,
        /// The address they should be near.
        target: IpAddr,
        /// The services they should offer.
        services: Services,
        /// The answer.
        reply: Reply<R, NodesResult>,
    },
    /// [`Node::find_closest`].
    FindClosest(Id, Reply<R, Contact>),
    /// [`Node::contacts`] at this level.
    Contacts(Level, R::To<Vec<Contact>>),
}

impl<R: Replies> fmt::Debug for Command<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Join(..) => "Join",
            Self::Get(..) => "Get",
            Self::Put { .. } => "Put",
            Self::Withdraw(..) => "Withdraw",
            Self::PublishHints(..) => "PublishHints",
            Self::FindNodes { .. } => "FindNodes",
            Self::FindClosest(..) => "FindClosest",
            Self::Contacts(..) => "Contacts",
        })
    }
}

enum Pending<R: Replies> {
    Join(Reply<R, Joined>),
    Get(Reply<R, GetResult>),
    Put(Reply<R, PutResult>),
    Nodes(Reply<R, NodesResult>),
    Closest(Reply<R, Contact>),
}

/// The callers waiting for operations of one node, by [`OpId`].
pub struct Dispatch<R: Replies> {
    pending: BTreeMap<OpId, Pending<R>>,
}

impl<R: Replies> Default for Dispatch<R> {
    fn default() -> Self {
        Self {
            pending: BTreeMap::new(),
        }
    }
}

impl<R: Replies> fmt::Debug for Dispatch<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("waiting", &self.pending.len())
            .finish()
    }
}

impl<R: Replies> Dispatch<R> {
    /// Callers waiting for an operation to finish.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Drops every waiting caller (each then sees its channel close, i.e.
    /// [`NodeError::Stopped`]); returns how many there were.
    pub fn cancel_all(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }

    /// Starts what `cmd` asks of `node`, or answers it at once when it
    /// finishes at once (or the core refuses it). The caller drains the
    /// node afterwards, as after any input.
    pub fn command(&mut self, node: &mut Node, now: Instant, cmd: Command<R>) {
        match cmd {
            Command::Join(bootstrap, reply) => {
                let r = node.join(now, &bootstrap);
                self.wait(r, reply, Pending::Join);
            }
            Command::Get(key, levels, reply) => {
                let r = node.get(now, key, levels);
                self.wait(r, reply, Pending::Get);
            }
            Command::Put {
                key,
                value,
                ttl,
                levels,
                publish,
                reply,
            } => {
                let r = if publish {
                    node.publish(now, key, value, ttl, levels)
                } else {
                    node.put(now, key, value, ttl, levels)
                };
                self.wait(r, reply, Pending::Put);
            }
            Command::Withdraw(key, value, reply) => R::send(reply, node.withdraw(&key, &value)),
            Command::PublishHints(routers, reply) => {
                node.publish_hints(now, &routers);
                R::send(reply, ());
            }
            Command::FindNodes {
                level,
                count,
                target,
                services,
                reply,
            } => {
                let r = node.find_nodes(now, level, count, target, services);
                self.wait(r, reply, Pending::Nodes);
            }
            Command::FindClosest(key, reply) => {
                let r = node.find_closest(now, key);
                self.wait(r, reply, Pending::Closest);
            }
            Command::Contacts(level, reply) => R::send(reply, node.contacts(level)),
        }
    }

    fn wait<T>(
        &mut self,
        started: Result<OpId, OpError>,
        reply: Reply<R, T>,
        pending: fn(Reply<R, T>) -> Pending<R>,
    ) {
        match started {
            // The core may already have finished the operation (a join with
            // no bootstrap does): its event is still queued and comes here
            // when the loop drains the node.
            Ok(op) => drop(self.pending.insert(op, pending(reply))),
            Err(e) => R::send(reply, Err(e.into())),
        }
    }

    /// Answers the caller waiting for the operation `event` finishes;
    /// hands the event back when no caller waits for it (an operation
    /// started some other way, a cluster change, ...).
    #[must_use]
    pub fn event(&mut self, event: Event) -> Option<Event> {
        let waiting = op_of(&event).and_then(|op| self.pending.remove(&op));
        match (waiting, event) {
            (Some(Pending::Join(r)), Event::Joined { contacts, .. }) => {
                info!(contacts, "joined");
                R::send(r, Ok(Joined { contacts }));
            }
            (
                Some(Pending::Get(r)),
                Event::GetDone {
                    values,
                    level,
                    hops,
                    ..
                },
            ) => R::send(
                r,
                Ok(GetResult {
                    values,
                    level,
                    hops,
                }),
            ),
            (Some(Pending::Put(r)), Event::PutDone { stored, hops, .. }) => {
                R::send(r, Ok(PutResult { stored, hops }));
            }
            (Some(Pending::Nodes(r)), Event::NodesFound { nodes, hinted, .. }) => {
                R::send(r, Ok(NodesResult { nodes, hinted }));
            }
            (Some(Pending::Closest(r)), Event::ClosestFound { closest, .. }) => {
                R::send(r, Ok(closest));
            }
            (_, event) => return Some(event),
        }
        None
    }
}

/// The operation an event finishes, if it finishes one.
pub fn op_of(event: &Event) -> Option<OpId> {
    match event {
        Event::Joined { op, .. }
        | Event::GetDone { op, .. }
        | Event::PutDone { op, .. }
        | Event::NodesFound { op, .. }
        | Event::HintsFound { op, .. }
        | Event::Checked { op, .. }
        | Event::ClosestFound { op, .. } => Some(*op),
        _ => None,
    }
}

/// Logs an event no caller waited for: cluster changes at info, the rest
/// at trace.
pub fn log_event(event: &Event) {
    match event {
        Event::ClusterChanged {
            level,
            from,
            to,
            founded,
        } => info!(
            level,
            from = %from.cluster,
            from_size = from.size,
            to = %to.cluster,
            to_size = to.size,
            founded,
            "cluster changed"
        ),
        other => trace!(event = ?other, "event with no waiting caller"),
    }
}
