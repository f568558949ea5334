//! Sinks: the [`Sink`] trait users implement and the [`SinkRegistry`] of
//! kinds (`sink`), the runtime that runs each configured sink on its own
//! thread behind a bounded queue (`runtime`) with its disk overflow
//! (`overflow`), the line format (`encode`), and the built-in sinks, one
//! file each (`stdout`, `file`, `redis`).

pub mod encode;
pub mod file;
pub mod overflow;
pub mod redis;
pub mod runtime;
pub mod sink;
pub mod stdout;

pub use encode::{encode_event, OutputFormat};
pub use sink::{parse_settings, BuildSink, PreflightSink, Sink, SinkBuildContext, SinkKind, SinkRegistry};
