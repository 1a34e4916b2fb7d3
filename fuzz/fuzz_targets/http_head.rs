//! Untrusted bytes into the HTTP proxy's parser: heads, framing, chunked bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coral_core::fuzzing::http_head(data));
