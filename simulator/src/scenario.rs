//! Fault scripts for the simulator: which status, cut, silence or junk each
//! streaming connection attempt gets. Loadable from TOML (`streamherd simulate
//! --scenario FILE`) so a user can replay the failures the tests use.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The script for every streaming request the simulator answers.
///
/// Connection attempts are numbered globally (0, 1, 2, ... across every
/// streaming endpoint); attempt `i` follows `attempts[i]`, later ones `then`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Scripts for the first attempts, in order.
    pub attempts: Vec<AttemptScript>,
    /// The script for every attempt after `attempts` ran out.
    pub then: AttemptScript,
}

/// What one connection attempt gets. Message numbers count from 1 within the
/// attempt and include every message sent (friends preambles, control and
/// junk), never keep-alives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttemptScript {
    /// Answer with this status and a Twitter-like body instead of streaming
    /// (200 means stream as usual).
    pub status: Option<u16>,
    /// Sent as `Retry-After` with a scripted status.
    pub retry_after_s: Option<u64>,
    /// After N messages end the body abruptly: no disconnect message, no final
    /// chunk, so the client sees an incomplete body.
    pub close_after: Option<u64>,
    /// With `close_after`: end with a TCP RST instead of a FIN.
    pub reset: bool,
    /// After N messages send nothing at all, not even keep-alives ...
    pub silence_after: Option<u64>,
    /// ... for this long, then carry on. The default (120 s) outlasts the
    /// documented 90 s stall rule, so it trips a client's stall detector.
    pub silence_ms: u64,
    /// After N messages send a `disconnect` message and end the body cleanly.
    pub disconnect_after: Option<u64>,
    /// The code of that disconnect message (default 1, "Shutdown").
    pub disconnect_code: u32,
    /// Mastodon (SSE and WebSocket): after N events (0: from the start) the
    /// connection delivers no more events for the rest of its life, while
    /// SSE heartbeats go on and a WebSocket keeps pinging and answering
    /// pings, as a streaming server does after a Redis restart
    /// (mastodon/mastodon#25157); the statuses still reach the history and
    /// the REST timelines. The events withheld are counted in
    /// `ConnectionRecord::withheld`. Ignored on Twitter and Jetstream.
    pub mute_after: Option<u64>,
    /// Twitter: limit notices sent before any other message, each reporting
    /// this cumulative `track` (a throttled stream reports withheld tweets at
    /// once). Not counted in the message numbers of the other options.
    pub limit_first: Vec<u64>,
    /// How each frame is cut into chunks.
    pub split: Split,
    /// Every Nth message is a truncated JSON line instead.
    pub malformed_every: Option<u64>,
    /// These message numbers are replaced by a valid JSON object of
    /// `oversized_bytes` bytes.
    pub oversized_at: Vec<u64>,
    /// Size of the oversized messages (default 17 MiB: above the 16 MiB
    /// `max_message_bytes` default).
    pub oversized_bytes: usize,
    /// Twitter: after this many messages the body becomes one line without
    /// end: `x` bytes, never a CRLF, until the client goes away or
    /// `endless_bytes` were sent (then the connection ends, `endless`).
    pub endless_after: Option<u64>,
    /// Cap of the endless line (default 1 GiB): every loop is bounded.
    pub endless_bytes: u64,
    /// Which messages the stream carries.
    pub mix: Mix,
    /// End the body cleanly after N messages. On a `broadcast` stream that
    /// starts the shared generator, also the generator's total output.
    pub limit: Option<u64>,
    /// Filter and sample streams: forward the simulator-wide broadcast
    /// generator's messages (the same ones every overlapping `broadcast`
    /// connection sees, as on the real service) instead of generating this
    /// connection's own. The generator starts with the first such connection
    /// and takes `mix`, `limit` and `broadcast_capacity` from its script;
    /// this connection's own faults (close_after, split, junk, ...) still
    /// apply. Ignored on user and site streams.
    pub broadcast: bool,
    /// Messages the broadcast channel holds for a subscriber that falls
    /// behind (rounded up to a power of two); past that the subscriber's body
    /// ends abruptly with `end = "lagged"`. Read from the script that starts
    /// the generator. At ~3 KB a message the default allows ~200 MB.
    pub broadcast_capacity: usize,
}

/// Default `silence_ms`: longer than Twitter's 90 s stall rule.
pub const DEFAULT_SILENCE_MS: u64 = 120_000;
/// Default `oversized_bytes`: one MiB over the 16 MiB message limit.
pub const DEFAULT_OVERSIZED_BYTES: usize = 17 * 1024 * 1024;
/// Default `disconnect_code`: 1, "Shutdown" (reconnect as usual).
pub const DEFAULT_DISCONNECT_CODE: u32 = 1;
/// Default `broadcast_capacity`.
pub const DEFAULT_BROADCAST_CAPACITY: usize = 65_536;
/// Largest accepted `broadcast_capacity`: bounded memory.
pub const MAX_BROADCAST_CAPACITY: usize = 1 << 20;

impl Default for AttemptScript {
    fn default() -> Self {
        AttemptScript {
            status: None,
            retry_after_s: None,
            close_after: None,
            reset: false,
            silence_after: None,
            silence_ms: DEFAULT_SILENCE_MS,
            disconnect_after: None,
            disconnect_code: DEFAULT_DISCONNECT_CODE,
            mute_after: None,
            limit_first: Vec::new(),
            split: Split::None,
            malformed_every: None,
            oversized_at: Vec::new(),
            oversized_bytes: DEFAULT_OVERSIZED_BYTES,
            endless_after: None,
            endless_bytes: 1 << 30,
            mix: Mix::Realistic,
            limit: None,
            broadcast: false,
            broadcast_capacity: DEFAULT_BROADCAST_CAPACITY,
        }
    }
}

/// How a frame (length line, message and CRLF) is cut into HTTP chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Whole frames; several may share one chunk.
    #[default]
    None,
    /// Each frame in 2-4 chunks cut at random byte offsets (also inside UTF-8
    /// sequences and the CRLF).
    Random,
    /// Frame number i (from 0) is cut in two at byte `i % frame_len`, so
    /// consecutive frames of equal length cover every offset.
    Sweep,
}

/// Which messages a stream carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Mostly tweets, with deletes, limit notices and the rare rest, like a
    /// real stream of the endpoint.
    #[default]
    Realistic,
    /// Cycles through every message kind the endpoint can carry.
    Catalog,
    /// The same tweet every time, ids of equal digit count: every frame has
    /// the same length.
    Fixed,
}

impl Scenario {
    /// A scenario where every attempt follows `script`.
    pub fn always(script: AttemptScript) -> Self {
        Scenario { attempts: Vec::new(), then: script }
    }

    /// The script for global attempt number `attempt`.
    pub fn script_for(&self, attempt: u64) -> &AttemptScript {
        usize::try_from(attempt).ok().and_then(|i| self.attempts.get(i)).unwrap_or(&self.then)
    }

    /// Reads a TOML scenario file (see `from_toml_str` for the shape).
    pub fn from_file(path: &Path) -> Result<Scenario, String> {
        let source = config::File::from(path.to_path_buf()).format(config::FileFormat::Toml);
        Self::load(source).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a TOML scenario:
    ///
    /// ```toml
    /// [[attempts]]
    /// status = 503
    /// retry_after_s = 5
    /// [[attempts]]
    /// close_after = 100
    /// reset = true
    /// [then]
    /// mix = "catalog"
    /// split = "sweep"
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Scenario, String> {
        Self::load(config::File::from_str(text, config::FileFormat::Toml))
    }

    fn load<S>(source: S) -> Result<Scenario, String>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let scenario: Scenario = config::Config::builder()
            .add_source(source)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Rejects scripts the simulator cannot play, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let named = self
            .attempts
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("attempts[{i}]"), s))
            .chain(std::iter::once(("then".to_string(), &self.then)));
        for (name, script) in named {
            if let Some(status) = script.status {
                if !(100..=599).contains(&status) || (100..200).contains(&status) {
                    return Err(format!("{name}.status: {status} is not a final HTTP status (200-599)"));
                }
            }
            if script.malformed_every == Some(0) {
                return Err(format!("{name}.malformed_every: must be at least 1"));
            }
            if script.oversized_at.contains(&0) {
                return Err(format!("{name}.oversized_at: message numbers count from 1"));
            }
            if !(1..=MAX_BROADCAST_CAPACITY).contains(&script.broadcast_capacity) {
                return Err(format!("{name}.broadcast_capacity: must be 1..={MAX_BROADCAST_CAPACITY}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_snake_case_values_loads() {
        let text = r#"
            [[attempts]]
            status = 503
            retry_after_s = 7

            [[attempts]]
            close_after = 10
            reset = true
            split = "random"
            mute_after = 0

            [then]
            mix = "catalog"
            split = "sweep"
            oversized_at = [3, 5]
            malformed_every = 4
        "#;
        let s = Scenario::from_toml_str(text).expect("valid scenario");
        assert_eq!(s.attempts.len(), 2);
        assert_eq!(s.attempts[0].status, Some(503));
        assert_eq!(s.attempts[0].retry_after_s, Some(7));
        assert_eq!(s.attempts[0].silence_ms, DEFAULT_SILENCE_MS);
        assert!(s.attempts[1].reset);
        assert_eq!((s.attempts[1].mute_after, s.then.mute_after), (Some(0), None));
        assert_eq!(s.attempts[1].split, Split::Random);
        assert_eq!(s.then.mix, Mix::Catalog);
        assert_eq!(s.then.split, Split::Sweep);
        assert_eq!(s.then.oversized_at, vec![3, 5]);
        assert_eq!(s.then.oversized_bytes, DEFAULT_OVERSIZED_BYTES);
        assert_eq!(s.script_for(0).status, Some(503));
        assert_eq!(s.script_for(2).mix, Mix::Catalog);
        assert_eq!(s.script_for(u64::MAX).mix, Mix::Catalog);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Scenario::from_toml_str("[then]\nclose_afterr = 3\n").unwrap_err();
        assert!(err.contains("close_afterr"), "{err}");
        let err = Scenario::from_toml_str("bogus = 1\n").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        let err = Scenario::from_toml_str("[[attempts]]\nstatus = 42\n").unwrap_err();
        assert!(err.contains("attempts[0].status"), "{err}");
        let err = Scenario::from_toml_str("[then]\nsplit = \"sideways\"\n").unwrap_err();
        assert!(err.contains("sideways"), "{err}");
        let err = Scenario::from_toml_str("[then]\nmalformed_every = 0\n").unwrap_err();
        assert!(err.contains("then.malformed_every"), "{err}");
        let err = Scenario::from_toml_str("[then]\nbroadcast_capacity = 0\n").unwrap_err();
        assert!(err.contains("then.broadcast_capacity"), "{err}");
    }

    #[test]
    fn from_file_reads_toml_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("faults.toml");
        std::fs::write(&path, "[then]\nlimit = 5\nmix = \"fixed\"\nbroadcast = true\nbroadcast_capacity = 64\n")
            .expect("write");
        let s = Scenario::from_file(&path).expect("loads");
        assert_eq!(s.then.limit, Some(5));
        assert!(s.then.broadcast);
        assert_eq!(s.then.broadcast_capacity, 64);
        assert_eq!(s.then.mix, Mix::Fixed);
        let missing = dir.path().join("missing.toml");
        let err = Scenario::from_file(&missing).unwrap_err();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Scenario::from_toml_str("").expect("empty"), Scenario::default());
    }
}
