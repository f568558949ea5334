//! The `redis` sink: one XADD per event into a Redis Stream named by a
//! template (`streamherd:{source}`), `pipeline` XADDs per round trip, with
//! approximate MAXLEN trimming. A batch is written only once Redis answered
//! every XADD; a Redis that does not answer makes the sink unavailable (the
//! runtime retries and the queue spills), and a batch retried after a
//! broken round trip skips what Redis had already appended.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use redis::{ConnectionLike, Value};
use serde::Deserialize;

use super::encode::push_timestamp;
use super::sink::{parse_settings, Sink, SinkBuildContext, SinkKind};
use crate::coordination::remote::{redacted, scrub};
use crate::error::SinkError;
use crate::event::Event;

/// `kind = "redis"`.
pub const KIND: SinkKind = SinkKind { name: "redis", build, preflight };

/// Connecting gives up after this long (the runtime retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One round trip gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After a broken round trip, at most this many of a stream's newest
/// entries are compared with the batch to find what was appended.
const MAX_LOOKBACK: usize = 10_000;

/// What each stream entry holds (`format`).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisFormat {
    /// The envelope's fields (`source`, `kind`, `id`, `received_at`,
    /// `connection`, `for_user`, `stream`; absent ones left out) and
    /// `payload`, the raw bytes.
    #[default]
    Envelope,
    /// Only `payload`.
    Payload,
}

fn default_stream() -> String {
    "streamherd:{source}".into()
}
const fn default_maxlen() -> u64 {
    1_000_000
}
const fn default_pipeline() -> usize {
    512
}

/// The keys of a redis sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS).
    pub url: String,
    /// The stream key; `{source}` becomes the source's name.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// `XADD MAXLEN ~` (approximate trimming); 0 = no trimming.
    #[serde(default = "default_maxlen")]
    pub maxlen: u64,
    /// `envelope` or `payload`.
    #[serde(default)]
    pub format: RedisFormat,
    /// XADDs per round trip.
    #[serde(default = "default_pipeline")]
    pub pipeline: usize,
}

fn settings(value: serde_json::Value, ctx: &SinkBuildContext) -> Result<RedisSettings, SinkError> {
    let s: RedisSettings = parse_settings(value, ctx)?;
    if !(s.url.starts_with("redis://") || s.url.starts_with("rediss://")) {
        return Err(SinkError::Config {
            key: ctx.key("url"),
            message: format!("`{}` must start with redis:// or rediss://", redacted(&s.url)),
        });
    }
    if redis::Client::open(s.url.as_str()).is_err() {
        return Err(SinkError::Config {
            key: ctx.key("url"),
            message: format!("`{}` is not a Redis URL", redacted(&s.url)),
        });
    }
    if s.pipeline == 0 || s.pipeline > 100_000 {
        return Err(SinkError::Config { key: ctx.key("pipeline"), message: "must be 1..=100000".into() });
    }
    if s.stream.is_empty() {
        return Err(SinkError::Config { key: ctx.key("stream"), message: "must not be empty".into() });
    }
    Ok(s)
}

fn build(value: serde_json::Value, ctx: &SinkBuildContext) -> Result<Box<dyn Sink>, SinkError> {
    let settings = settings(value, ctx)?;
    let client = redis::Client::open(settings.url.as_str())
        .map_err(|e| SinkError::Config { key: ctx.key("url"), message: scrub(&e.to_string(), &settings.url) })?;
    Ok(Box::new(RedisSink { settings, client, conn: None, suspect: true, name: ctx.name.clone() }))
}

/// `check`: the URL is valid and Redis answers PING.
fn preflight(value: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    let s = settings(value.clone(), ctx)?;
    let unreachable = |e: redis::RedisError| SinkError::Config {
        key: ctx.key("url"),
        message: format!("cannot reach Redis at {}: {}", redacted(&s.url), scrub(&e.to_string(), &s.url)),
    };
    let client = redis::Client::open(s.url.as_str()).map_err(unreachable)?;
    let mut conn = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(unreachable)?;
    conn.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(unreachable)?;
    redis::cmd("PING").query::<String>(&mut conn).map_err(unreachable)?;
    Ok(())
}

/// Writes batches into Redis Streams.
pub struct RedisSink {
    settings: RedisSettings,
    client: redis::Client,
    conn: Option<redis::Connection>,
    /// A round trip broke since the last batch written (or this process has
    /// just started): some of the batch may be in Redis already.
    suspect: bool,
    name: String,
}

/// What tells a written entry apart from the others of its stream.
fn fingerprint(connection: &[u8], received_at: &[u8], payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (connection, received_at, payload).hash(&mut h);
    h.finish()
}

fn timestamp(e: &Event) -> Vec<u8> {
    let mut t = Vec::with_capacity(32);
    push_timestamp(&mut t, &e.received_at);
    t
}

fn unavailable(e: &redis::RedisError, url: &str) -> SinkError {
    SinkError::Unavailable(scrub(&e.to_string(), url))
}

impl RedisSink {
    fn key(&self, e: &Event) -> String {
        self.settings.stream.replace("{source}", &e.source)
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, SinkError> {
        if self.conn.is_none() {
            let url = &self.settings.url;
            let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| unavailable(&e, url))?;
            conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| unavailable(&e, url))?;
            conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| unavailable(&e, url))?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| SinkError::Unavailable("no connection".into()))
    }

    /// Errors that a later attempt can get past: the connection, and Redis
    /// busy loading, out of memory, read-only or failing over.
    fn failed(&mut self, e: redis::RedisError) -> SinkError {
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.code(),
                Some("LOADING" | "OOM" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "BUSY")
            );
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            self.conn = None;
            self.suspect = true;
        }
        if transient {
            unavailable(&e, &self.settings.url)
        } else {
            SinkError::Other(format!("redis refused the batch: {}", scrub(&e.to_string(), &self.settings.url)))
        }
    }

    /// Which events of `events` a broken round trip had already appended:
    /// each stream's newest entries, compared by connection, time and payload.
    fn already_written(&mut self, events: &[Event]) -> Result<HashSet<usize>, SinkError> {
        let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            per_key.entry(self.key(e)).or_default().push(i);
        }
        let envelope = self.settings.format == RedisFormat::Envelope;
        let mut found = HashSet::new();
        for (key, indexes) in per_key {
            let count = (indexes.len() * 4 + 64).min(MAX_LOOKBACK);
            let reply: redis::RedisResult<Value> =
                redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(count).query(self.connection()?);
            let reply = reply.map_err(|e| self.failed(e))?;
            let mut seen = HashSet::new();
            if let Value::Array(entries) = reply {
                for entry in entries {
                    let Value::Array(parts) = entry else { continue };
                    let Some(Value::Array(fields)) = parts.get(1) else { continue };
                    let field = |name: &[u8]| -> Vec<u8> {
                        fields
                            .chunks(2)
                            .find(|kv| matches!(&kv[0], Value::BulkString(k) if k == name))
                            .and_then(|kv| match kv.get(1) {
                                Some(Value::BulkString(v)) => Some(v.clone()),
                                _ => None,
                            })
                            .unwrap_or_default()
                    };
                    seen.insert(fingerprint(&field(b"connection"), &field(b"received_at"), &field(b"payload")));
                }
            }
            for i in indexes {
                let e = &events[i];
                let fp = if envelope {
                    fingerprint(e.connection.as_bytes(), &timestamp(e), &e.payload)
                } else {
                    fingerprint(b"", b"", &e.payload)
                };
                if seen.contains(&fp) {
                    found.insert(i);
                }
            }
        }
        Ok(found)
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, e: &Event) {
        let cmd = pipe.cmd("XADD").arg(self.key(e));
        if self.settings.maxlen > 0 {
            cmd.arg("MAXLEN").arg("~").arg(self.settings.maxlen);
        }
        cmd.arg("*");
        if self.settings.format == RedisFormat::Envelope {
            cmd.arg("source").arg(&*e.source).arg("kind").arg(e.kind.as_str());
            if let Some(id) = &e.id {
                cmd.arg("id").arg(&**id);
            }
            cmd.arg("received_at").arg(timestamp(e)).arg("connection").arg(&*e.connection);
            if let Some(user) = e.for_user {
                cmd.arg("for_user").arg(user);
            }
            if let Some(stream) = &e.stream {
                cmd.arg("stream").arg(serde_json::to_string(&**stream).unwrap_or_default());
            }
        }
        cmd.arg("payload").arg(&e.payload[..]);
    }
}

impl Sink for RedisSink {
    fn write(&mut self, events: &[Event]) -> Result<(), SinkError> {
        let skip = if self.suspect { self.already_written(events)? } else { HashSet::new() };
        if !skip.is_empty() {
            tracing::info!(sink = %self.name, skipped = skip.len(), "events Redis had appended before the round trip broke are not sent again");
        }
        let todo: Vec<&Event> = events.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(_, e)| e).collect();
        for chunk in todo.chunks(self.settings.pipeline) {
            let mut pipe = redis::pipe();
            for e in chunk {
                self.xadd(&mut pipe, e);
            }
            let packed = pipe.get_packed_pipeline();
            let replies = self.connection()?.req_packed_commands(&packed, 0, chunk.len());
            let replies = replies.map_err(|e| self.failed(e))?;
            if let Some(Value::ServerError(err)) = replies.iter().find(|v| matches!(v, Value::ServerError(_))) {
                let e: redis::RedisError = err.clone().into();
                // Redis appended the ones before it: a retry must not repeat them.
                self.suspect = true;
                return Err(self.failed(e));
            }
        }
        self.suspect = false;
        Ok(())
    }

    /// Every XADD was answered before `write` returned: nothing to flush.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://user:s3cret@h:6379/0"), "redis://user:***@h:6379/0");
        assert_eq!(redacted("rediss://s3cret@h"), "rediss://***@h");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(scrub("auth failed for s3cret", "redis://u:s3cret@h"), "auth failed for ***");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let ctx = SinkBuildContext { name: "q".into(), index: 2, state_dir: std::path::PathBuf::new() };
        for (v, key) in [
            (serde_json::json!({"url": "http://h"}), "sinks[2].url"),
            (serde_json::json!({"url": "redis://h", "pipeline": 0}), "sinks[2].pipeline"),
            (serde_json::json!({"url": "redis://h", "stream": ""}), "sinks[2].stream"),
        ] {
            match settings(v, &ctx) {
                Err(SinkError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            settings(serde_json::json!({"url": "redis://h", "nope": 1}), &ctx),
            Err(SinkError::Config { .. })
        ));
    }
}
