//! libFuzzer target `jetstream`: see `streamherd_fuzz::jetstream` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::jetstream(data));
