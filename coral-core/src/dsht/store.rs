//! Sloppy store (being written).
