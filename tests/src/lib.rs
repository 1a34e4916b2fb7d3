//! The simulator (filled in below).
