//! A mutation fuzzer for the stable toolchain: stacked mutations a structured
//! input needs, from a fixed `fastrand` seed so a run repeats exactly; `cargo
//! test` runs it briefly, `STREAMHERD_FUZZ_RUNS` long.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::Target;

/// How long a campaign runs and how it starts.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Mutated inputs per target (the seeds themselves run first).
    pub runs: u64,
    /// The `fastrand` seed; with the same seeds and runs, the same inputs.
    pub seed: u64,
    /// Longest input produced.
    pub max_len: usize,
}

impl Campaign {
    /// Inputs per target when `STREAMHERD_FUZZ_RUNS` is unset: enough to
    /// leave every mutation kind a few hundred tries, within the test budget.
    pub const DEFAULT_RUNS: u64 = 30_000;

    /// `STREAMHERD_FUZZ_RUNS` and `STREAMHERD_FUZZ_SEED`, else the defaults.
    pub fn from_env() -> Campaign {
        let num = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse::<u64>().ok());
        Campaign {
            runs: num("STREAMHERD_FUZZ_RUNS").unwrap_or(Self::DEFAULT_RUNS),
            seed: num("STREAMHERD_FUZZ_SEED").unwrap_or(0x5EED_F00D),
            max_len: 64 * 1024,
        }
    }
}

/// What a campaign did.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Inputs run, seeds included.
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// An input that broke an invariant.
#[derive(Debug)]
pub struct Finding {
    /// The target.
    pub target: &'static str,
    /// The failing input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
    /// Which input of the campaign (0 for the seeds), and its seed.
    pub run: u64,
    /// The campaign's seed.
    pub seed: u64,
    /// Where the input was written, or why it could not be.
    pub artifact: Result<PathBuf, ArtifactError>,
}

/// A failing input that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ArtifactError {
    /// Where it was to go.
    pub path: PathBuf,
    /// Why it did not.
    pub source: std::io::Error,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fuzz target {} failed at run {} (STREAMHERD_FUZZ_SEED={}):", self.target, self.run, self.seed)?;
        writeln!(f, "  {}", self.message)?;
        writeln!(f, "  input ({} bytes): {}", self.input.len(), crate::input::show(&self.input, 200))?;
        match &self.artifact {
            Ok(path) => {
                let rel = path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string();
                writeln!(f, "  written to {rel}; reproduce with:")?;
                writeln!(
                    f,
                    "    STREAMHERD_FUZZ_TARGET={} STREAMHERD_FUZZ_REPRO={rel} cargo test --release -p streamherd-fuzz --test fuzz -- --nocapture",
                    self.target
                )?;
                write!(
                    f,
                    "    cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer --target-dir target/fuzz {} {rel}",
                    self.target
                )
            }
            Err(why) => write!(f, "  (not written: {why})"),
        }
    }
}

/// The workspace root (`fuzz/..`).
fn workspace_root() -> PathBuf {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    fuzz.parent().map(PathBuf::from).unwrap_or(fuzz)
}

/// Runs `target` on one input; a panic becomes its message.
pub fn replay(target: Target, input: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| (target.check)(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

/// Runs every seed, then `campaign.runs` mutated inputs; stops at the first
/// broken invariant and writes that input to `fuzz/artifacts/<target>/`.
pub fn fuzz(target: Target, seeds: &[Vec<u8>], campaign: &Campaign) -> Result<Stats, Box<Finding>> {
    let start = Instant::now();
    let found = |input: Vec<u8>, message: String, run: u64| {
        let artifact = write_artifact(target.name, &input);
        Box::new(Finding { target: target.name, input, message, run, seed: campaign.seed, artifact })
    };
    for seed in seeds {
        replay(target, seed).map_err(|m| found(seed.clone(), m, 0))?;
    }
    let mut rng = fastrand::Rng::with_seed(campaign.seed ^ fnv(target.name.as_bytes()));
    let fallback = [Vec::new()];
    let pool: &[Vec<u8>] = if seeds.is_empty() { &fallback } else { seeds };
    let mut last = pool[0].clone();
    for run in 1..=campaign.runs {
        // Half the time stack on the last input, so mutations compound.
        let base = if rng.bool() { last } else { pool[rng.usize(..pool.len())].clone() };
        let mut input = base;
        for _ in 0..rng.usize(1..=4) {
            mutate(&mut rng, &mut input, pool);
        }
        input.truncate(campaign.max_len);
        replay(target, &input).map_err(|m| found(input.clone(), m, run))?;
        last = input;
    }
    Ok(Stats { execs: seeds.len() as u64 + campaign.runs, elapsed: start.elapsed() })
}

/// Bytes and tokens that mean something to one parser or another.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b"\r\n\r\n",
    b"\"",
    b"\\",
    b"\\\"",
    b"\\u00",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"{\"a\":",
    b"\"text\":\"t\",",
    b"\"for_user\":1,\"message\":",
    b"null",
    b"-",
    b"1e9",
    b"0\r\n",
    b"99999999999\r\n",
    b"data: ",
    b"event: ",
    b"id: ",
    b"retry: ",
    b":",
    b"\xEF\xBB\xBF",
    b"\xF0\x9F\x98\x80",
    b"\xFF",
    b"\xE6\x97",
    b"\xFE",
    b"\0",
    b"=",
    b"[[sources]]\n",
    b"[[sinks]]\n",
    b"${",
    b"zzSECRET",
    b"redis://",
    b"@",
    b"\"\"\"",
];

fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = input.len();
    let at = |rng: &mut fastrand::Rng| rng.usize(..=len);
    match rng.u8(..12) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            input[i] ^= 1 << rng.u8(..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            input[i] = rng.u8(..);
        }
        2 => {
            let i = at(rng);
            let n = rng.usize(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(i..i, bytes);
        }
        3 | 4 => {
            let i = at(rng);
            let token = TOKENS[rng.usize(..TOKENS.len())];
            input.splice(i..i, token.iter().copied());
        }
        5 if len > 0 => {
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(64));
            input.drain(i..i + n);
        }
        6 if len > 0 => {
            // Duplicate a range: repeated members, nested brackets, long lines.
            let i = rng.usize(..len);
            let n = rng.usize(1..=(len - i).min(256));
            let copy = input[i..i + n].to_vec();
            let to = at(rng);
            input.splice(to..to, copy);
        }
        7 => {
            // Splice: a piece of another seed, inserted or replacing the tail.
            let other = &pool[rng.usize(..pool.len())];
            if !other.is_empty() {
                let a = rng.usize(..other.len());
                let b = rng.usize(a..=other.len().min(a + 1024));
                if rng.bool() {
                    input.truncate(at(rng));
                    input.extend_from_slice(&other[a..]);
                } else {
                    let to = at(rng);
                    input.splice(to..to, other[a..b].iter().copied());
                }
            }
        }
        8 => tweak_number(rng, input),
        9 => {
            // The header: limits and chunk cuts.
            let i = rng.usize(..6);
            if i < input.len() {
                input[i] = rng.u8(..);
            }
        }
        10 if len > 0 => input.truncate(rng.usize(..len)),
        _ => {
            let i = at(rng);
            let byte = *b"\r\n\"\\{}[]:,0 \xFE".get(rng.usize(..14)).unwrap_or(&b'"');
            input.insert(i, byte);
        }
    }
}

/// Rewrites one run of decimal digits (a length prefix, a count, an id).
fn tweak_number(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    let starts: Vec<usize> =
        (0..input.len()).filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.usize(..starts.len())];
    let end = (start..input.len()).find(|&i| !input[i].is_ascii_digit()).unwrap_or(input.len());
    let value: u64 = std::str::from_utf8(&input[start..end]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let new = match rng.u8(..6) {
        0 => value.saturating_add(1),
        1 => value.saturating_sub(1),
        2 => value.saturating_mul(10),
        3 => 0,
        4 => rng.u64(..1 << 40),
        _ => u64::MAX,
    };
    input.splice(start..end, new.to_string().into_bytes());
}

/// FNV-1a, for artifact names and per-target seeds.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn write_artifact(target: &str, input: &[u8]) -> Result<PathBuf, ArtifactError> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(target);
    std::fs::create_dir_all(&dir).map_err(|source| ArtifactError { path: dir.clone(), source })?;
    let path = dir.join(format!("crash-{:016x}", fnv(input)));
    std::fs::write(&path, input).map_err(|source| ArtifactError { path: path.clone(), source })?;
    Ok(path)
}
