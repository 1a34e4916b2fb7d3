//! Coral: the protocol as pure state machines (crate doc filled in with the node).
#![forbid(unsafe_code)]

pub mod config;
pub mod contact;
pub mod id;
pub mod rng;
pub mod time;
pub mod dsht;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod wire;
pub mod node;

pub use node::{Event, Levels, Node, OpId, PutError, Stats, Transmit};
