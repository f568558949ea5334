//! The lease thread: keeps this instance's membership and shard-bucket
//! leases alive in Redis, takes free buckets up to a fair share, lets go of
//! extra ones when instances join, and tells the supervisor when what this
//! instance carries changed. Its Redis calls block, so it has its own thread.
//!
//! Keys: `streamherd:member:{me}` (PX lease), `streamherd:lease:{source}:{b}`
//! = holder (SET NX PX, renewed at a third of the lease by compare-and-
//! expire), `streamherd:owner:{source}:{b}` = the last holder and when it
//! last renewed or released (what a take-over's gap starts from).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, TimeZone, Utc};

use super::leases::{Leases, TakeOver};
use super::remote::RedisLink;

/// How long the last-owner records are kept.
const OWNER_RECORD_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Members listed at most (a bound on the SCAN loop).
const MAX_SCAN_ROUNDS: usize = 1_000;

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0";

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// What carries where changed: rebuild the sources from the leases now held.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Reshare {
    /// Increases with every change; answered through [`CoordinatorHandle::applied`].
    pub generation: u64,
    /// Buckets taken from another instance in this change.
    pub takeovers: Vec<TakeOver>,
}

/// `[service] coordination`, validated.
#[derive(Debug, Clone)]
pub struct CoordinationSettings {
    /// The Redis holding the leases (and the positions).
    pub url: String,
    /// How long a lease lives without renewal: the longest a dead
    /// instance's shards go uncarried, plus one round.
    pub lease: Duration,
}

enum Signal {
    Applied(u64),
    Stop,
}

/// The running lease thread.
pub struct CoordinatorHandle {
    signals: mpsc::Sender<Signal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CoordinatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorHandle").finish_non_exhaustive()
    }
}

impl CoordinatorHandle {
    /// The change `generation` is carried out: the buckets it let go can be released.
    pub fn applied(&self, generation: u64) {
        let _ = self.signals.send(Signal::Applied(generation));
    }

    /// Releases every lease (after the streams stopped and their positions
    /// were written) and ends the thread.
    pub fn stop(&mut self) {
        let _ = self.signals.send(Signal::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Held {
    renewed: Instant,
}

struct Releasing {
    source: String,
    bucket: u32,
    generation: u64,
    stopped_at: DateTime<Utc>,
}

struct Coordinator {
    link: RedisLink,
    leases: Arc<Leases>,
    sources: Vec<String>,
    lease: Duration,
    on_change: Recipient<Reshare>,
    held: BTreeMap<(String, u32), Held>,
    releasing: Vec<Releasing>,
    others: BTreeMap<(String, u32), String>,
    generation: u64,
    applied: u64,
    started: Instant,
    troubled: bool,
}

/// Starts the lease thread for `sources` (their names), with `leases` as
/// the view it keeps up to date.
pub fn start(
    settings: &CoordinationSettings,
    leases: Arc<Leases>,
    sources: Vec<String>,
    on_change: Recipient<Reshare>,
) -> Result<CoordinatorHandle, String> {
    let round_trip = (settings.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
    let link = RedisLink::new(&settings.url, round_trip)?;
    let (signals, rx) = mpsc::channel();
    let mut c = Coordinator {
        link,
        leases,
        sources,
        lease: settings.lease,
        on_change,
        held: BTreeMap::new(),
        releasing: Vec::new(),
        others: BTreeMap::new(),
        generation: 0,
        applied: 0,
        started: Instant::now(),
        troubled: false,
    };
    let thread = std::thread::Builder::new()
        .name("streamherd-leases".into())
        .spawn(move || c.run(rx))
        .map_err(|e| format!("cannot start the lease thread: {e}"))?;
    Ok(CoordinatorHandle { signals, thread: Some(thread) })
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn lease_key(source: &str, bucket: u32) -> String {
    format!("streamherd:lease:{source}:{bucket}")
}

fn owner_key(source: &str, bucket: u32) -> String {
    format!("streamherd:owner:{source}:{bucket}")
}

/// `holder millis state`, as the owner record holds it.
fn owner_record(holder: &str, at: DateTime<Utc>, state: &str) -> String {
    format!("{holder} {} {state}", at.timestamp_millis())
}

fn parse_owner_record(text: &str) -> Option<(String, DateTime<Utc>, bool)> {
    let mut parts = text.rsplitn(3, ' ');
    let state = parts.next()?;
    let at = Utc.timestamp_millis_opt(parts.next()?.parse().ok()?).single()?;
    let holder = parts.next()?.to_owned();
    Some((holder, at, state == "released"))
}

impl Coordinator {
    fn run(&mut self, rx: mpsc::Receiver<Signal>) {
        // Rounds are cheap (a SET, a SCAN and one MGET per source): frequent ones
        // find an expired lease soon after it expires.
        let tick = (self.lease / 20).max(Duration::from_millis(20));
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Signal::Applied(g)) => {
                    self.applied = self.applied.max(g);
                    continue;
                }
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            next = Instant::now() + tick;
            match self.round() {
                Ok(()) => {
                    if self.troubled {
                        tracing::info!("the coordination Redis answers again");
                        self.troubled = false;
                    }
                }
                Err(e) => {
                    if !self.troubled {
                        // Keep carrying what is held: while Redis is away no
                        // one else can take it, and dropping it would stop
                        // collection everywhere.
                        tracing::warn!(error = %e, "the coordination Redis does not answer; keeping the leases held");
                        self.troubled = true;
                    }
                }
            }
        }
        self.release_all();
    }

    fn me(&self) -> String {
        self.leases.me().to_owned()
    }

    fn members(&mut self) -> Result<usize, String> {
        // Members live half a lease: the survivors' fair share grows before
        // a dead instance's leases expire, so they take them at once.
        let (me, lease) = (self.me(), ms(self.lease / 2));
        self.link.run(|c| {
            redis::cmd("SET")
                .arg(format!("streamherd:member:{me}"))
                .arg(Utc::now().timestamp_millis())
                .arg("PX")
                .arg(lease)
                .query::<()>(c)?;
            let (mut cursor, mut count) = (0u64, 0usize);
            for _ in 0..MAX_SCAN_ROUNDS {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("streamherd:member:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                count += keys.len();
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            Ok(count.max(1))
        })
    }

    fn round(&mut self) -> Result<(), String> {
        let members = self.members()?;
        self.release_applied()?;
        let buckets = self.leases.buckets();
        let renew_every = self.lease / 3;
        let settled = self.started.elapsed() >= renew_every;
        let stable = self.started.elapsed() >= self.lease;
        let me = self.me();
        let mut changed = false;
        let mut takeovers = Vec::new();
        let mut others = BTreeMap::new();
        for source in self.sources.clone() {
            let keys: Vec<String> = (0..buckets).map(|b| lease_key(&source, b)).collect();
            let holders: Vec<Option<String>> = self.link.run(|c| redis::cmd("MGET").arg(&keys).query(c))?;
            let releasing: BTreeSet<u32> =
                self.releasing.iter().filter(|r| r.source == source).map(|r| r.bucket).collect();
            let mut free = Vec::new();
            for (b, holder) in (0..buckets).zip(holders) {
                let mine = self.held.contains_key(&(source.clone(), b));
                match holder {
                    Some(h) if h == me => {
                        if !mine && !releasing.contains(&b) {
                            // Ours from before a restart of the thread: take it back.
                            self.held.insert((source.clone(), b), Held { renewed: Instant::now() });
                            changed = true;
                        }
                    }
                    Some(h) => {
                        if mine {
                            tracing::warn!(source = %source, bucket = b, holder = %h, "lease lost to another instance");
                            self.held.remove(&(source.clone(), b));
                            changed = true;
                        }
                        others.insert((source.clone(), b), h);
                    }
                    None => {
                        if mine {
                            tracing::warn!(source = %source, bucket = b, "lease expired before it was renewed");
                            self.held.remove(&(source.clone(), b));
                            changed = true;
                        }
                        if !releasing.contains(&b) {
                            free.push(b);
                        }
                    }
                }
            }
            self.renew_due(&source, renew_every, &mut changed)?;
            if !settled {
                continue;
            }
            let fair = (buckets as usize).div_ceil(members);
            let holding = self.held.keys().filter(|(s, _)| *s == source).count();
            if holding < fair {
                // Start at a place of our own so instances do not all race for bucket 0.
                let offset = crate::scale::stable_hash(&me, &source) as usize % free.len().max(1);
                let offset = offset.min(free.len());
                free.rotate_left(offset);
                for b in free.into_iter().take(fair - holding) {
                    if let Some(t) = self.acquire(&source, b)? {
                        takeovers.push(t);
                    }
                    changed = true;
                }
            } else if holding > fair && stable && releasing.is_empty() {
                let extra: Vec<u32> = self
                    .held
                    .keys()
                    .filter(|(s, _)| *s == source)
                    .map(|(_, b)| *b)
                    .rev()
                    .take(holding - fair)
                    .collect();
                for b in extra {
                    tracing::info!(source = %source, bucket = b, members, "letting a lease go to a newer instance");
                    self.held.remove(&(source.clone(), b));
                    self.releasing.push(Releasing {
                        source: source.clone(),
                        bucket: b,
                        generation: self.generation + 1,
                        stopped_at: Utc::now(),
                    });
                    changed = true;
                }
            }
        }
        self.others = others;
        self.publish(changed, takeovers);
        Ok(())
    }

    fn renew_due(&mut self, source: &str, every: Duration, changed: &mut bool) -> Result<(), String> {
        let me = self.me();
        let due: Vec<u32> = self
            .held
            .iter()
            .filter(|((s, _), h)| s == source && h.renewed.elapsed() >= every)
            .map(|((_, b), _)| *b)
            .collect();
        let due_releasing: Vec<u32> = self.releasing.iter().filter(|r| r.source == source).map(|r| r.bucket).collect();
        let lease = ms(self.lease);
        for b in due.iter().copied() {
            let record = owner_record(&me, Utc::now(), "renewed");
            let kept: i64 = self.link.run(|c| {
                redis::cmd("EVAL")
                    .arg(RENEW)
                    .arg(2)
                    .arg(lease_key(source, b))
                    .arg(owner_key(source, b))
                    .arg(&me)
                    .arg(lease)
                    .arg(&record)
                    .arg(OWNER_RECORD_TTL_MS)
                    .query(c)
            })?;
            if kept == 1 {
                if let Some(h) = self.held.get_mut(&(source.to_owned(), b)) {
                    h.renewed = Instant::now();
                }
            } else {
                tracing::warn!(source = %source, bucket = b, "lease lost before it was renewed");
                self.held.remove(&(source.to_owned(), b));
                *changed = true;
            }
        }
        // A bucket being let go stays leased (without a new owner record)
        // until the change that stops carrying it is applied.
        for b in due_releasing {
            let key = lease_key(source, b);
            let me = me.clone();
            self.link.run(|c| redis::cmd("EVAL").arg(EXTEND).arg(1).arg(&key).arg(&me).arg(lease).query::<i64>(c))?;
        }
        Ok(())
    }

    /// Takes bucket `b` of `source` when it is still free; the previous
    /// owner's record, if another instance's, makes it a take-over.
    fn acquire(&mut self, source: &str, b: u32) -> Result<Option<TakeOver>, String> {
        let (me, lease) = (self.me(), ms(self.lease));
        let (taken, record): (Option<String>, Option<String>) = self.link.run(|c| {
            let taken: Option<String> =
                redis::cmd("SET").arg(lease_key(source, b)).arg(&me).arg("NX").arg("PX").arg(lease).query(c)?;
            if taken.is_none() {
                return Ok((None, None));
            }
            let record: Option<String> = redis::cmd("GET").arg(owner_key(source, b)).query(c)?;
            redis::cmd("SET")
                .arg(owner_key(source, b))
                .arg(owner_record(&me, Utc::now(), "renewed"))
                .arg("PX")
                .arg(OWNER_RECORD_TTL_MS)
                .query::<()>(c)?;
            Ok((taken, record))
        })?;
        if taken.is_none() {
            return Ok(None);
        }
        let now = Utc::now();
        self.held.insert((source.to_owned(), b), Held { renewed: Instant::now() });
        let previous = record.as_deref().and_then(parse_owner_record).filter(|(holder, _, _)| *holder != me);
        Ok(match previous {
            Some((holder, from, released)) => {
                tracing::info!(source = %source, bucket = b, previous = %holder, since = %from, released, "lease taken over");
                Some(TakeOver { source: source.to_owned(), bucket: b, previous: holder, from, to: now, released })
            }
            None => {
                tracing::info!(source = %source, bucket = b, "lease taken");
                None
            }
        })
    }

    /// Releases the buckets whose letting-go change is carried out.
    fn release_applied(&mut self) -> Result<(), String> {
        let applied = self.applied;
        let ready: Vec<usize> =
            (0..self.releasing.len()).filter(|i| self.releasing[*i].generation <= applied).collect();
        for i in ready.into_iter().rev() {
            let r = self.releasing.remove(i);
            self.release(&r.source, r.bucket, r.stopped_at)?;
        }
        Ok(())
    }

    fn release(&mut self, source: &str, b: u32, at: DateTime<Utc>) -> Result<(), String> {
        let me = self.me();
        let record = owner_record(&me, at, "released");
        self.link.run(|c| {
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(2)
                .arg(lease_key(source, b))
                .arg(owner_key(source, b))
                .arg(&me)
                .arg(&record)
                .arg(OWNER_RECORD_TTL_MS)
                .query::<i64>(c)
        })?;
        tracing::info!(source = %source, bucket = b, "lease released");
        Ok(())
    }

    fn release_all(&mut self) {
        let now = Utc::now();
        let held: Vec<(String, u32)> = self.held.keys().cloned().collect();
        let releasing: Vec<(String, u32)> = self.releasing.drain(..).map(|r| (r.source, r.bucket)).collect();
        for (source, b) in held.into_iter().chain(releasing) {
            if let Err(e) = self.release(&source, b, now) {
                tracing::warn!(error = %e, "cannot release the leases; they expire by themselves");
                return;
            }
        }
        let me = self.me();
        let _ = self.link.run(|c| redis::cmd("DEL").arg(format!("streamherd:member:{me}")).query::<()>(c));
    }

    fn publish(&mut self, changed: bool, takeovers: Vec<TakeOver>) {
        let mut held: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for (source, b) in self.held.keys() {
            held.entry(source.clone()).or_default().insert(*b);
        }
        let first = !self.leases.started();
        self.leases.set(held, self.others.clone());
        if changed || first {
            self.generation += 1;
            self.on_change.do_send(Reshare { generation: self.generation, takeovers });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_records_read_back_with_hosts_that_contain_spaces_or_colons() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).single().unwrap();
        let text = owner_record("host a:42", at, "released");
        assert_eq!(parse_owner_record(&text), Some(("host a:42".to_owned(), at, true)));
        assert_eq!(parse_owner_record(&owner_record("h:1", at, "renewed")).map(|r| r.2), Some(false));
        assert_eq!(parse_owner_record("garbage"), None);
    }
}
