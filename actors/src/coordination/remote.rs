//! One Redis connection that reconnects by itself, with bounded connect and
//! round-trip times, and URLs with their password cut out for messages.

use std::time::Duration;

/// A lazily (re)connected Redis connection.
pub struct RedisLink {
    url: String,
    client: redis::Client,
    conn: Option<redis::Connection>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("url", &redacted(&self.url)).finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `url`; nothing is connected until the first command.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLink, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("{}: {}", redacted(url), scrub(&e.to_string(), url)))?;
        Ok(RedisLink { url: url.to_owned(), client, conn: None, timeout })
    }

    /// Runs `f` on the connection; a broken connection is dropped so the
    /// next call reconnects. Errors are worded without the password.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T, String> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout).map_err(|e| self.error(&e))?;
            conn.set_read_timeout(Some(self.timeout)).map_err(|e| self.error(&e))?;
            conn.set_write_timeout(Some(self.timeout)).map_err(|e| self.error(&e))?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else { return Err("no connection".into()) };
        f(conn).map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                self.conn = None;
            }
            self.error(&e)
        })
    }

    fn error(&self, e: &redis::RedisError) -> String {
        format!("{}: {}", redacted(&self.url), scrub(&e.to_string(), &self.url))
    }
}

/// Writes each `field value` pair of ARGV into the hash KEYS[1] unless the
/// hash holds a newer position for it. A value starts with a decimal number
/// (a Mastodon id, a Jetstream cursor) compared by length, then digits —
/// numeric order for numbers without leading zeros — so an instance that
/// carried a shard before can never move its position back.
const HSET_IF_NEWER: &str = r"
local n = 0
for i = 1, #ARGV, 2 do
  local new = ARGV[i + 1]
  local newid = string.match(new, '^(%S+)') or ''
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local write = true
  if cur then
    local curid = string.match(cur, '^(%S+)') or ''
    if #curid > #newid or (#curid == #newid and curid >= newid) then write = false end
  end
  if write then
    redis.call('HSET', KEYS[1], ARGV[i], new)
    n = n + 1
  end
end
return n";

/// Writes `pairs` (field, value, field, value, ...) into `hash` where each
/// is newer than what is there (see the script above); returns how many.
pub fn hset_if_newer(link: &mut RedisLink, hash: &str, pairs: &[String]) -> Result<i64, String> {
    if pairs.is_empty() {
        return Ok(0);
    }
    link.run(|c| redis::cmd("EVAL").arg(HSET_IF_NEWER).arg(1).arg(hash).arg(pairs).query::<i64>(c))
}

/// Whether `url` is a Redis URL this build can connect to (no IO).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!("`{}` must start with redis:// or rediss://", redacted(url)));
    }
    redis::Client::open(url).map(|_| ()).map_err(|_| format!("`{}` is not a Redis URL", redacted(url)))
}

/// Asks the Redis at `url` for a PING (for `check`).
pub fn ping(url: &str, timeout: Duration) -> Result<(), String> {
    RedisLink::new(url, timeout)?.run(|c| redis::cmd("PING").query::<String>(c)).map(|_| ())
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Mistyped (`redis//:pw@host`): whatever comes before an `@` may
        // still be a password.
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        };
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// `message` with the URL's password cut out, should the client quote it.
pub fn scrub(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
        .map(|(auth, _)| auth.rsplit(':').next().unwrap_or(auth));
    match password {
        Some(p) if !p.is_empty() => message.replace(p, "***"),
        _ => message.to_owned(),
    }
}
