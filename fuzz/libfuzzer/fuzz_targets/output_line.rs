//! libFuzzer target `output_line`: see `streamherd_fuzz::output_line` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::output_line(data));
