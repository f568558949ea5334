//! libFuzzer target `control_body`: see `streamherd_fuzz::control_body` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::control_body(data));
