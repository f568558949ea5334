//! libFuzzer target `mastodon_sse`: see `streamherd_fuzz::mastodon_sse` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamherd_fuzz::mastodon_sse(data));
