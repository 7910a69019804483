//! `cargo fuzz run upstream_response`: see `fuzz/harness.rs` for what runs and which invariants are checked.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::upstream_response(data));
