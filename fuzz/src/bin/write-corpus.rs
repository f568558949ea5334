//! Writes every target's seeds as files, one directory per target, for
//! libFuzzer: `cargo run --release -p streamherd-fuzz --bin write-corpus
//! [DIR]` (default `fuzz/libfuzzer/corpus`, git-ignored).

use std::path::PathBuf;
use std::process::ExitCode;

use streamherd_fuzz::seeds::Seeds;
use streamherd_fuzz::TARGETS;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("libfuzzer").join("corpus"));
    let seeds = match Seeds::build() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("write-corpus: building the seeds: {e}");
            return ExitCode::FAILURE;
        }
    };
    for t in TARGETS {
        let target_dir = dir.join(t.name);
        let written = std::fs::create_dir_all(&target_dir).and_then(|()| {
            for (i, seed) in seeds.of(t.name).iter().enumerate() {
                std::fs::write(target_dir.join(format!("seed-{i:04}")), seed)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            eprintln!("write-corpus: {}: {e}", target_dir.display());
            return ExitCode::FAILURE;
        }
        println!("{}: {} seeds", target_dir.display(), seeds.of(t.name).len());
    }
    ExitCode::SUCCESS
}
