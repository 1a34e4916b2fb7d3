//! One node driven by a script of datagrams, replies, time steps and
//! commands: no panic, and the drive contract's promises hold throughout.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coral_core::fuzzing::node_inputs(data));
