//! The hand-written mio (epoll) runtime for Coral: one thread, one
//! `mio::Poll`, one core [`coral_core::Node`], for small volunteer boxes.
//!
//! It drives the same core with the same configuration file and the same
//! wire protocol as coral-tokio, so nodes of both runtimes form one network.
//! What it adds is the loop ([`runtime`]): edge-triggered sources drained
//! until `WouldBlock` under a per-turn budget, UDP received and sent in
//! batches of up to 32 datagrams per system call (`recvmmsg`/`sendmmsg`,
//! [`udp`]), buffers allocated once, a bounded send queue flushed on
//! writability, and no timer of its own: the core's
//! [`coral_core::Node::poll_timeout`] is the `epoll_wait` timeout, so an
//! idle node sleeps. The admin endpoint ([`admin`]) is served on the same
//! loop. Configuration, identity, logging, the status snapshot and its
//! renderings are coral-tokio's ([`coral_tokio::config`],
//! [`coral_tokio::identity`], [`coral_tokio::status::snapshot`]), so the
//! two runtimes cannot drift apart in what they report.
//!
//! The HTTP proxy and DNS server handlers will join the loop as
//! [`runtime::App`]s once their issues land.

mod admin;
pub mod daemon;
pub mod runtime;
pub mod udp;

pub use runtime::{App, Driver, Handle, RunningNode, spawn, spawn_with};
