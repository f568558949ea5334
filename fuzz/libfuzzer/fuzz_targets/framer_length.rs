//! libFuzzer target `framer_length`: see `streamherd_fuzz::framer_length` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::framer_length(data));
