//! libFuzzer target `twitter_classify`: see `streamherd_fuzz::twitter_classify` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::twitter_classify(data));
