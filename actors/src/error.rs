//! Error enums at the crate boundary: stream, sink and config errors.

use crate::messages::DisconnectCause;

/// Why a stream connection attempt or read ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Retryable; the cause decides the wait.
    #[error("{0}")]
    Retryable(DisconnectCause),
    /// Final: the connection is `failed` and is not retried.
    #[error("{reason}")]
    Fatal {
        /// What happened, with the status and the (truncated) body.
        reason: String,
    },
    /// Final but not an error (disconnect code 9: a negative `count` backfill finished).
    #[error("stream finished: {reason}")]
    Finished {
        /// What happened.
        reason: String,
    },
}

/// A sink could not be built or could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A configuration value of the sink is wrong; `key` names it.
    #[error("{key}: {message}")]
    Config {
        /// The offending key, e.g. `sinks[1].path`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No sink kind of that name is registered.
    #[error("unknown sink kind `{kind}` (known: {known})")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The registered kind names, comma-separated.
        known: String,
    },
    /// Writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Any other sink-specific failure.
    #[error("{0}")]
    Other(String),
}
