//! Routing table (being written).
