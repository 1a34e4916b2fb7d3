//! Coral's deterministic network simulator and the experiments that
//! reproduce the paper.
//!
//! - [`latency`]: round-trip times between simulated nodes (a synthetic
//!   seeded sphere, or a measured matrix such as the PlanetLab data set).
//! - [`sim`]: many [`coral_core::Node`]s in one process on virtual time,
//!   with loss, crashes and restarts, replayable bit for bit from a seed.
//! - [`experiments`]: the lookup and hot-spot experiments behind the
//!   `coral-sim` binary and the simulator tests.
//! - [`locality`]: what the latency hierarchy buys (issue 3): get latency
//!   for nearby-held objects per level setting, and `nodes()` proxy choice.
//! - [`dns`]: the DNS redirector (issue 6): resolvers following Coral's
//!   NS referrals, and how near the proxies they are sent to are.
//! - [`metrics`] and [`trace`]: percentiles, and the run fingerprint.

pub mod dns;
pub mod experiments;
pub mod latency;
pub mod locality;
pub mod metrics;
pub mod sim;
pub mod trace;
