//! Untrusted bytes into the DNS redirector, over UDP and TCP.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coral_core::fuzzing::dns_query(data));
