//! libFuzzer target `config`: see `streamherd_fuzz::config` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::config(data));
