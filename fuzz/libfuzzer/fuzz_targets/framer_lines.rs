//! libFuzzer target `framer_lines`: see `streamherd_fuzz::framer_lines` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::framer_lines(data));
