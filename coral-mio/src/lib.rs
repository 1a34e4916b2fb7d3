//! The hand-written mio (epoll) runtime for Coral: one thread, one
//! `mio::Poll`, one core [`coral_core::Node`], for small volunteer boxes.
//!
//! It drives the same core with the same configuration file and the same
//! wire protocol as coral-tokio, so nodes of both runtimes form one network.
//! What it adds is the loop ([`runtime`]): edge-triggered sources drained
//! until `WouldBlock` under a per-turn budget, UDP received and sent in
//! batches of up to 32 datagrams per system call (`recvmmsg`/`sendmmsg`,
//! [`coral_tokio::batch_udp`]), buffers allocated once, a bounded send queue flushed on
//! writability, and no timer of its own: the core's
//! [`coral_core::Node::poll_timeout`] is the `epoll_wait` timeout, so an
//! idle node sleeps. The admin endpoint ([`admin`]) is served on the same
//! loop. Configuration, identity, logging, the status snapshot and its
//! renderings are coral-tokio's ([`coral_tokio::config`],
//! [`coral_tokio::identity`], [`coral_tokio::status::snapshot`]), so the
//! two runtimes cannot drift apart in what they report.
//!
//! The HTTP proxy ([`proxy`]) runs on the same loop when the node is given
//! a proxy listener ([`runtime::Listeners`]): client and upstream
//! connections are more sources on the poller, the core's
//! [`coral_core::http::Proxy`] makes every decision, and its DSHT work runs
//! on the node the loop owns. The DNS redirector ([`dns`]) joins them when
//! the node is given DNS sockets ([`dns::DnsSockets`]): its UDP and TCP
//! queries, resolver probes and hint lookups run on the same loop, so
//! `coral-mio node` is a whole node (RPC, HTTP proxy, admin, DNS) in one
//! small single-threaded process.

mod admin;
pub mod daemon;
pub mod dns;
pub mod proxy;
pub mod runtime;
/// Batched UDP, shared with coral-tokio's DNS socket.
pub use coral_tokio::batch_udp as udp;

pub use dns::DnsSockets;
pub use runtime::{
    App, Driver, Handle, Listeners, RunningNode, spawn, spawn_listeners, spawn_with, spawn_with_dns,
};
