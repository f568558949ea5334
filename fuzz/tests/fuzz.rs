//! Every fuzz target over its seeds, then a short mutation campaign
//! (`STREAMHERD_FUZZ_RUNS`); `STREAMHERD_FUZZ_TARGET=<name>` runs one target,
//! `STREAMHERD_FUZZ_REPRO=<file>` replays one input on it.

use std::sync::OnceLock;

use streamherd_fuzz::driver::{self, Campaign};
use streamherd_fuzz::seeds::Seeds;
use streamherd_fuzz::{target, TARGETS};

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| Seeds::build().unwrap_or_else(|e| panic!("building the seed corpora: {e}")))
}

fn run(name: &str) {
    if std::env::var("STREAMHERD_FUZZ_TARGET").is_ok_and(|only| only != name) {
        return;
    }
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    if let Ok(path) = std::env::var("STREAMHERD_FUZZ_REPRO") {
        // cargo runs tests from the crate's directory; paths are given from the workspace root.
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&path);
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(message) = driver::replay(t, &input) {
            panic!("{name} fails on {path}: {message}");
        }
        return;
    }
    let campaign = Campaign::from_env();
    let seeds = seeds().of(name);
    assert!(!seeds.is_empty(), "{name} has no seeds");
    match driver::fuzz(t, seeds, &campaign) {
        Ok(stats) => eprintln!(
            "{name}: {} inputs ({} seeds) in {:.2} s, {:.0} exec/s",
            stats.execs,
            seeds.len(),
            stats.elapsed.as_secs_f64(),
            stats.execs as f64 / stats.elapsed.as_secs_f64().max(1e-9)
        ),
        Err(finding) => panic!("{finding}"),
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(stringify!($name)) })*

        #[test]
        fn every_target_is_run_here() {
            let here = [$(stringify!($name)),*];
            let all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            assert_eq!(here.to_vec(), all);
        }
    };
}

targets!(
    framer_lines,
    framer_length,
    twitter_classify,
    sse,
    mastodon_sse,
    mastodon_ws,
    jetstream,
    output_line,
    config,
    control_body,
);
