//! The tokio runtime for Coral: the `coral` binary a volunteer runs.
//!
//! One tokio task owns each core [`coral_core::Node`] and feeds it datagrams,
//! timer ticks and application commands ([`runtime`], with the mapping of
//! commands and events to callers in [`dispatch`], which coral-mio's loop
//! shares); everything the
//! protocol decides happens in the core. Around it sit the pieces of a
//! process: the TOML configuration ([`config`]) and the `node` flags that
//! override it ([`cli`], shared with `coral-mio`), the node's persistent
//! identity ([`identity`]), the DNS server's sockets ([`dns`]), logs ([`logging`]), the admin endpoint with
//! Prometheus metrics and a status page ([`admin`], [`status`]), the URL
//! rewrite publishers use ([`coralize`]), and a whole network on loopback
//! for trying it out ([`testnet`]).

pub mod admin;
pub mod batch_udp;
#[doc(hidden)]
pub mod bench_support;
pub mod cli;
pub mod config;
pub mod coralize;
pub mod daemon;
pub mod dispatch;
pub mod dns;
pub mod httpd;
pub mod identity;
pub mod logging;
pub mod origin;
pub mod proxy;
pub mod proxy_shared;
pub mod runtime;
pub mod status;
pub mod testnet;
pub mod trace;

pub use runtime::{NodeError, NodeHandle, NodeOptions, RunningNode, spawn};
