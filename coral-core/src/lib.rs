//! Coral: the protocol as pure state machines (crate doc filled in with the node).
#![forbid(unsafe_code)]

pub mod config;
pub mod contact;
pub mod id;
pub mod rng;
pub mod time;
