//! A zero-delay network of [`Node`]s on one clock, for the crate's unit
//! tests (the routing, storage and clustering tests in `node`, the DNS
//! redirector's tests in `dns`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::contact::Level;
use crate::id::Id;
use crate::node::{Event, Levels, Node, OpId};
use crate::time::Instant;

/// Drives nodes with zero network delay and a shared clock.
pub(crate) struct Net {
    /// The nodes, node `i` at [`addr`]`(i)`.
    pub(crate) nodes: Vec<Node>,
    /// The shared clock.
    pub(crate) now: Instant,
    /// Events not taken yet, with the index of their node.
    pub(crate) events: Vec<(usize, Event)>,
    /// Indices of nodes that drop everything (crashed).
    pub(crate) dead: Vec<bool>,
}

/// The address of node `i`.
pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8091))
}

impl Net {
    pub(crate) fn new(n: usize, config: &Config) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let mut c = config.clone();
                c.seed = i as u64 + 1;
                Node::new(c, addr(i), Instant::ZERO)
            })
            .collect();
        Self {
            nodes,
            now: Instant::ZERO,
            events: Vec::new(),
            dead: vec![false; n],
        }
    }

    pub(crate) fn index(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.contact().addr == a)
    }

    /// Delivers datagrams until quiet, then advances time to the next
    /// deadline, until `until`.
    pub(crate) fn run(&mut self, until: Instant) {
        let mut buf = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit(&mut buf) {
                    moved = true;
                    let data = buf[..t.size].to_vec();
                    if self.dead[i] {
                        continue;
                    }
                    if let Some(j) = self.index(t.destination)
                        && !self.dead[j]
                    {
                        let from = self.nodes[i].contact().addr;
                        self.nodes[j].handle_datagram(self.now, from, &data);
                    }
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    self.events.push((i, e));
                }
            }
            if moved {
                continue;
            }
            let next = self.nodes.iter().filter_map(Node::poll_timeout).min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in &mut self.nodes {
                        n.handle_timeout(now);
                    }
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    pub(crate) fn after(&mut self, d: Duration) {
        let until = self.now + d;
        self.run(until);
    }

    /// The event of operation `op` of node `i` (each node numbers its
    /// operations itself, so the node is part of the match).
    pub(crate) fn take_event(&mut self, i: usize, op: OpId) -> Option<Event> {
        let pos = self.events.iter().position(|(n, e)| {
            *n == i
                && match e {
                    Event::Joined { op: o, .. }
                    | Event::GetDone { op: o, .. }
                    | Event::NodesFound { op: o, .. }
                    | Event::HintsFound { op: o, .. }
                    | Event::Checked { op: o, .. }
                    | Event::PutDone { op: o, .. }
                    | Event::ClosestFound { op: o, .. } => *o == op,
                    Event::ClusterChanged { .. } => false,
                }
        })?;
        Some(self.events.remove(pos).1)
    }

    /// Node `i` puts `value` under `key`, the network runs for `wait`;
    /// returns where the value was stored.
    pub(crate) fn put_and_wait(
        &mut self,
        i: usize,
        key: Id,
        value: &[u8],
        ttl: Duration,
        levels: Levels,
        wait: Duration,
    ) -> Vec<(Level, Id)> {
        let value = Bytes::copy_from_slice(value);
        let op = self.nodes[i]
            .put(self.now, key, value, ttl, levels)
            .unwrap();
        self.after(wait);
        match self.take_event(i, op) {
            Some(Event::PutDone { stored, .. }) => stored,
            e => panic!("put from node {i}: {e:?}"),
        }
    }

    /// Node `i` gets `key`, the network runs for `wait`; returns the
    /// values, the level they were found at and the hops.
    pub(crate) fn get_and_wait(
        &mut self,
        i: usize,
        key: Id,
        wait: Duration,
    ) -> (Vec<Bytes>, Option<Level>, u32) {
        let op = self.nodes[i].get(self.now, key, Levels::ALL).unwrap();
        self.after(wait);
        match self.take_event(i, op) {
            Some(Event::GetDone {
                values,
                level,
                hops,
                ..
            }) => (values, level, hops),
            e => panic!("get from node {i}: {e:?}"),
        }
    }

    pub(crate) fn join_all(&mut self) {
        let boot = addr(0);
        let first = self.nodes[0].join(self.now, &[]).unwrap();
        self.after(Duration::from_millis(1));
        assert!(matches!(
            self.take_event(0, first),
            Some(Event::Joined { .. })
        ));
        for i in 1..self.nodes.len() {
            let now = self.now;
            let op = self.nodes[i].join(now, &[boot]).unwrap();
            self.after(Duration::from_millis(1));
            assert!(
                matches!(self.take_event(i, op), Some(Event::Joined { .. })),
                "node {i} did not join"
            );
        }
    }
}
