//! Fuzzing for every parser and decoder that reads bytes streamherd does not
//! control: per target, `pub fn <target>(data: &[u8])` runs the real code and
//! panics when an invariant breaks, for any driver ([`driver`], libFuzzer).
//!
//! Map: `input` (structure read out of fuzzer bytes), `json_ref` (the
//! scanner's byte-loop reference), `known` (the bugs they found, all
//! fixed), one module per family of targets (`framer`, `classify`, `sse`,
//! `mastodon`, `jetstream`, `output`, `config`, `control`), `capture` (the
//! simulator's payloads off loopback), `seeds` (the corpora), `driver`.

mod capture;
mod classify;
mod config;
mod control;
pub mod driver;
mod framer;
mod input;
mod jetstream;
mod json_ref;
mod known;
mod mastodon;
mod output;
pub mod seeds;
mod sse;

pub use classify::twitter_classify;
pub use config::config;
pub use control::control_body;
pub use framer::{framer_length, framer_lines};
pub use jetstream::jetstream;
pub use mastodon::{mastodon_sse, mastodon_ws};
pub use output::output_line;
pub use sse::sse;

/// One fuzz target: its name (as in `fuzz/libfuzzer/fuzz_targets/<name>.rs`
/// and `STREAMHERD_FUZZ_TARGET`) and its check.
#[derive(Clone, Copy)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Runs the real code on one input; panics when an invariant breaks.
    pub check: fn(&[u8]),
}

/// Every target, in the order the drivers run them.
pub const TARGETS: &[Target] = &[
    Target { name: "framer_lines", check: framer_lines },
    Target { name: "framer_length", check: framer_length },
    Target { name: "twitter_classify", check: twitter_classify },
    Target { name: "sse", check: sse },
    Target { name: "mastodon_sse", check: mastodon_sse },
    Target { name: "mastodon_ws", check: mastodon_ws },
    Target { name: "jetstream", check: jetstream },
    Target { name: "output_line", check: output_line },
    Target { name: "config", check: config },
    Target { name: "control_body", check: control_body },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}
