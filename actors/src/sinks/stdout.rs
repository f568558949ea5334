//! The `stdout` sink: one line per event on standard output. The runtime part,
//! [`LineSink`], is generic over its writer so tests (and other sinks) can point
//! it at a `Vec<u8>` or any other `Write`.

use std::io::{BufWriter, Write};

use serde::Deserialize;

use super::encode::{encode_event, OutputFormat};
use super::sink::{parse_settings, Sink, SinkBuildContext, SinkKind};
use crate::error::SinkError;
use crate::event::Event;

/// The `stdout` sink kind, as registered in [`super::SinkRegistry::builtin`].
pub const KIND: SinkKind = SinkKind { name: "stdout", build, preflight };

/// Large enough that a busy stream costs few `write` calls; a terminal or pipe
/// still sees every batch, because the sink flushes after each one.
const BUFFER_BYTES: usize = 64 * 1024;

/// Settings of a `[[sinks]]` table with `kind = "stdout"`.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StdoutSettings {
    /// `envelope` (default) or `payload`.
    #[serde(default)]
    pub format: OutputFormat,
}

fn build(settings: serde_json::Value, ctx: &SinkBuildContext) -> Result<Box<dyn Sink>, SinkError> {
    let settings: StdoutSettings = parse_settings(settings, ctx)?;
    let writer = BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout());
    Ok(Box::new(LineSink::new(writer, settings.format)))
}

fn preflight(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    parse_settings::<StdoutSettings>(settings.clone(), ctx).map(drop)
}

/// Writes each event as one line to `W`, flushing `W` in [`Sink::flush`].
#[derive(Debug)]
pub struct LineSink<W: Write + Send> {
    writer: W,
    format: OutputFormat,
    /// Reused between batches so encoding does not allocate per event.
    scratch: Vec<u8>,
}

impl<W: Write + Send> LineSink<W> {
    /// A sink writing `format` lines to `writer`.
    pub fn new(writer: W, format: OutputFormat) -> Self {
        LineSink { writer, format, scratch: Vec::new() }
    }

    /// The writer, e.g. to read back what a test wrote.
    pub fn get_ref(&self) -> &W {
        &self.writer
    }

    /// Gives the writer back, without flushing it.
    pub fn into_inner(self) -> W {
        self.writer
    }
}

impl<W: Write + Send + 'static> Sink for LineSink<W> {
    fn write(&mut self, events: &[Event]) -> Result<(), SinkError> {
        self.scratch.clear();
        for event in events {
            encode_event(event, self.format, &mut self.scratch);
        }
        self.writer.write_all(&self.scratch)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use bytes::Bytes;
    use chrono::Utc;

    use super::*;
    use crate::event::EventKind;

    const TWEET: EventKind = EventKind::new("tweet");

    fn ctx(index: usize) -> SinkBuildContext {
        SinkBuildContext { name: "console".into(), index, state_dir: PathBuf::from("state") }
    }

    fn event(id: &str) -> Event {
        Event {
            source: Arc::from("election"),
            kind: TWEET,
            id: Some(id.into()),
            received_at: Utc::now(),
            connection: Arc::from("election/0"),
            for_user: None,
            stream: None,
            payload: Bytes::from(format!("{{\"id_str\":\"{id}\"}}")),
        }
    }

    #[test]
    fn writes_one_line_per_event_in_order() {
        let mut sink = LineSink::new(Vec::new(), OutputFormat::Payload);
        sink.write(&[event("1"), event("2")]).expect("write to a Vec");
        sink.write(&[event("3")]).expect("write to a Vec");
        sink.flush().expect("flush a Vec");
        assert_eq!(sink.into_inner(), b"{\"id_str\":\"1\"}\n{\"id_str\":\"2\"}\n{\"id_str\":\"3\"}\n");
    }

    #[test]
    fn envelope_is_the_default_format() {
        let settings: StdoutSettings = parse_settings(serde_json::json!({}), &ctx(0)).expect("empty table is valid");
        assert_eq!(settings.format, OutputFormat::Envelope);
        let mut sink = LineSink::new(Vec::new(), settings.format);
        sink.write(&[event("7")]).expect("write to a Vec");
        assert!(sink.get_ref().starts_with(b"{\"source\":\"election\",\"kind\":\"tweet\",\"id\":\"7\""));
    }

    #[test]
    fn a_misspelt_setting_names_the_sink_and_the_field() {
        let err = preflight(&serde_json::json!({ "formt": "payload" }), &ctx(2)).expect_err("typo must be rejected");
        match &err {
            SinkError::Config { key, message } => {
                assert_eq!(key, "sinks[2]");
                assert!(message.contains("formt"), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        assert!(build(serde_json::json!({ "formt": "payload" }), &ctx(2)).is_err());
    }

    #[test]
    fn an_unknown_format_is_rejected() {
        let err = preflight(&serde_json::json!({ "format": "xml" }), &ctx(0)).expect_err("xml is not a format");
        assert!(err.to_string().contains("xml"), "{err}");
    }
}
