//! libFuzzer target `sse`: see `streamherd_fuzz::sse` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::sse(data));
