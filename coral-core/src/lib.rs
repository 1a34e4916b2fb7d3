//! Coral's protocol as pure, deterministic state machines.
//!
//! This crate is the whole of Coral's decision making — the distributed
//! sloppy hash table (DSHT) of Freedman, Freudenthal and Mazières (NSDI 2004):
//! XOR routing with one table per cluster level, the lookup that halves the
//! distance to the key at every hop, sloppy storage that spills puts back
//! along the lookup path once nodes are *full* and *loaded*, and multi-level
//! get and put. It owns no socket, reads no clock and draws no OS entropy:
//! bytes and time go in, datagrams, deadlines and events come out. The same
//! [`Node`] runs under the tokio adapter, the mio adapter, the simulator and
//! the fuzzers, and the same inputs always produce the same outputs.
//!
//! # Driving a node
//!
//! Inputs are the `handle_*` methods and the application commands
//! ([`Node::join`], [`Node::get`], [`Node::put`]); each takes `now`. After
//! **any** input, the driver drains the outputs in this order:
//!
//! 1. [`Node::poll_transmit`] until `None`, sending each datagram;
//! 2. [`Node::poll_event`] until `None`, handing each event to the application;
//! 3. [`Node::poll_timeout`], and arranges to call [`Node::handle_timeout`]
//!    at that instant (an early or extra call is harmless).
//!
//! A blocking driver on a standard UDP socket, in full:
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::{Duration, Instant as StdInstant};
//! use coral_core::{config::Config, time::Instant, Event, Levels, Node};
//!
//! fn main() -> std::io::Result<()> {
//!     let socket = UdpSocket::bind("127.0.0.1:8091")?;
//!     let epoch = StdInstant::now();
//!     let now = || Instant::from_duration(epoch.elapsed());
//!     let config = Config { seed: 42, ..Config::default() }; // log the seed in real use
//!     let mut node = Node::new(config, socket.local_addr()?, now());
//!     node.join(now(), &["127.0.0.1:8093".parse().unwrap()]).expect("a new node has room");
//!     let key = coral_core::id::Id::for_url("http://example.com/");
//!     node.get(now(), key, Levels::ALL).expect("a new node has room");
//!     let (mut out, mut inbuf) = (Vec::new(), [0u8; 1500]);
//!     loop {
//!         while let Some(t) = node.poll_transmit(&mut out) {
//!             socket.send_to(&out[..t.size], t.destination)?;
//!         }
//!         while let Some(event) = node.poll_event() {
//!             if let Event::GetDone { values, .. } = event {
//!                 println!("found {} values", values.len());
//!             }
//!         }
//!         let wait = node.poll_timeout().map_or(Duration::from_secs(1), |t| t - now());
//!         socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
//!         match socket.recv_from(&mut inbuf) {
//!             Ok((n, from)) => node.handle_datagram(now(), from, &inbuf[..n]),
//!             Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
//!                 node.handle_timeout(now())
//!             }
//!             Err(e) => return Err(e),
//!         }
//!     }
//! }
//! ```
//!
//! # Rules the core keeps
//!
//! - Randomness comes from the node's own seeded generator ([`rng::Rng`]),
//!   so a run replays bit for bit from `Config::seed`.
//! - Bytes from the network are never trusted: a datagram that fails to
//!   decode is counted in [`Stats::malformed`] and dropped; nothing panics.
//! - Every collection fed by the network is bounded by configuration
//!   ([`config::DshtConfig`]).
//! - Outcomes such as "not found" are values inside [`Event`]s; `Err` is only
//!   for local misuse ([`OpError`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod contact;
pub mod dns;
pub mod dsht;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http;
pub mod id;
pub mod node;
pub mod rng;
#[cfg(test)]
mod testnet;
pub mod time;
pub mod wire;

pub use dsht::store::StoreStats;
pub use node::{Event, Levels, Node, OpError, OpId, Stats, Transmit};
