//! libFuzzer target `mastodon_ws`: see `streamherd_fuzz::mastodon_ws` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::mastodon_ws(data));
