//! The distributed sloppy hash table (spec §1–3): routing, storage, lookups.

pub mod cluster;
pub mod hints;
pub mod lookup;
pub mod neighbours;
pub mod routing;
pub mod store;
