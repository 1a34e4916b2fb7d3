//! Untrusted datagrams into the wire codec: no panic, and strict round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coral_core::fuzzing::wire_decode(data));
