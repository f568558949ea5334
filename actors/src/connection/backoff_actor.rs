//! The [`BackoffActor`], one per source: applies each connection's
//! [`BackoffPolicy`], adds jitter, and rations connection attempts so that
//! shards restarting together never stampede one host: attempts to one host
//! share one schedule across every source of the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::backoff::{with_jitter, BackoffClass, BackoffConfig, BackoffPolicy};
use crate::error::DisconnectCause;

/// Asks when a connection's next attempt may start (an instant, not a
/// wait, so the time the answer takes to arrive does not shift the
/// schedule).
#[derive(Message, Debug)]
#[rtype(result = "Instant")]
pub struct PlanAttempt {
    /// Connection id.
    pub connection: Arc<str>,
    /// Why the previous attempt ended; None for a first connect.
    pub cause: Option<DisconnectCause>,
    /// The previous connection stayed healthy for `reset_after`: forget the history first.
    pub was_healthy: bool,
    /// `host[:port]` of the attempt; empty: only the source's own schedule.
    pub host: String,
}

/// Attempt times handed out per host, shared by every source's actor.
fn host_schedules() -> &'static Mutex<HashMap<String, BTreeSet<Instant>>> {
    static HOSTS: OnceLock<Mutex<HashMap<String, BTreeSet<Instant>>>> = OnceLock::new();
    HOSTS.get_or_init(Default::default)
}

/// Decides every reconnect wait of one source.
pub struct BackoffActor {
    config: Arc<BackoffConfig>,
    policies: HashMap<Arc<str>, BackoffPolicy>,
    /// Attempt times already handed out, so two attempts are never closer
    /// than the source's rate allows.
    slots: BTreeSet<Instant>,
    rng: fastrand::Rng,
}

impl BackoffActor {
    /// A new actor with the source's config.
    pub fn new(config: BackoffConfig) -> Self {
        BackoffActor {
            config: Arc::new(config),
            policies: HashMap::new(),
            slots: BTreeSet::new(),
            rng: fastrand::Rng::new(),
        }
    }
}

/// The first time at or after `earliest` that is at least `spacing` away
/// from every attempt already in `slots`; it is then taken.
fn free_slot(slots: &mut BTreeSet<Instant>, now: Instant, earliest: Instant, spacing: Duration) -> Instant {
    let horizon = now.checked_sub(spacing).unwrap_or(now);
    *slots = slots.split_off(&horizon);
    let mut candidate = earliest;
    loop {
        let low = candidate.checked_sub(spacing).unwrap_or(candidate);
        let clash = slots.range(low..candidate + spacing).next_back().copied();
        match clash {
            Some(taken) if taken + spacing > candidate => candidate = taken + spacing,
            _ => break,
        }
    }
    slots.insert(candidate);
    candidate
}

impl Actor for BackoffActor {
    type Context = Context<Self>;
}

impl Handler<PlanAttempt> for BackoffActor {
    type Result = MessageResult<PlanAttempt>;

    fn handle(&mut self, msg: PlanAttempt, _ctx: &mut Context<Self>) -> Self::Result {
        let config = self.config.clone();
        let policy = self.policies.entry(msg.connection.clone()).or_insert_with(|| BackoffPolicy::new(config));
        if msg.was_healthy {
            policy.reset();
        }
        let wait = match &msg.cause {
            Some(cause) => {
                let w = policy.next_wait(cause);
                with_jitter(w, self.config.jitter, self.rng.f64())
            }
            None => Duration::ZERO,
        };
        // Ration attempts: each takes the next free slot of the host's schedule, at the source's rate.
        let now = Instant::now();
        // 2 % over the even spacing: the host still sees at most the budget in
        // any second when connects reach it a few milliseconds late or early.
        let spacing = Duration::from_secs(1).mul_f64(1.02) / self.config.max_connects_per_s.max(1);
        let slot = if msg.host.is_empty() {
            free_slot(&mut self.slots, now, now + wait, spacing)
        } else {
            let mut hosts = host_schedules().lock().unwrap_or_else(PoisonError::into_inner);
            free_slot(hosts.entry(msg.host.clone()).or_default(), now, now + wait, spacing)
        };
        if let Some(cause) = &msg.cause {
            let class = BackoffClass::of(cause);
            let capped = match class {
                BackoffClass::Network => wait >= self.config.network_max,
                BackoffClass::Http => wait >= self.config.http_max,
                BackoffClass::RateLimit => wait >= self.config.rate_limit_max,
            };
            if capped {
                tracing::warn!(connection = %msg.connection, ?class, wait_ms = wait.as_millis() as u64, "backoff reached its ceiling");
            }
        }
        MessageResult(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DisconnectCause;

    #[actix_rt::test]
    async fn actor_rations_first_connects() {
        let cfg = BackoffConfig { max_connects_per_s: 10, jitter: 0.0, ..BackoffConfig::default() };
        let addr = BackoffActor::new(cfg).start();
        let mut waits = Vec::new();
        let start = Instant::now();
        for i in 0..5 {
            let w = addr
                .send(PlanAttempt {
                    connection: format!("s/{i}").into(),
                    cause: None,
                    was_healthy: false,
                    host: String::new(),
                })
                .await
                .unwrap();
            waits.push(w.saturating_duration_since(start));
        }
        // 102 ms apart (the budget's even spacing plus its 2 % margin)
        assert!(waits[0] < Duration::from_millis(20));
        assert!(waits[4] >= Duration::from_millis(400) && waits[4] <= Duration::from_millis(415), "{waits:?}");
    }

    #[actix_rt::test]
    async fn actor_applies_the_policy_per_connection_and_resets_when_healthy() {
        let cfg = BackoffConfig { max_connects_per_s: 1000, jitter: 0.0, ..BackoffConfig::default() };
        let addr = BackoffActor::new(cfg).start();
        let plan = |c: &str, healthy| PlanAttempt {
            connection: c.into(),
            cause: Some(DisconnectCause::Stall),
            was_healthy: healthy,
            host: String::new(),
        };
        let start = Instant::now();
        let at = |t: Instant| t.saturating_duration_since(start);
        let a1 = at(addr.send(plan("a", false)).await.unwrap());
        let a2 = at(addr.send(plan("a", false)).await.unwrap());
        let b1 = at(addr.send(plan("b", false)).await.unwrap());
        let a3 = at(addr.send(plan("a", true)).await.unwrap());
        let near = |d: Duration, ms: u64| d.as_millis().abs_diff(ms as u128) <= 5;
        assert!(near(a1, 250) && near(a2, 500) && near(b1, 250) && near(a3, 250), "{a1:?} {a2:?} {b1:?} {a3:?}");
    }

    #[actix_rt::test]
    async fn two_sources_on_one_host_share_its_schedule_and_other_hosts_do_not_wait() {
        let cfg = BackoffConfig { max_connects_per_s: 10, jitter: 0.0, ..BackoffConfig::default() };
        let (a, b) = (BackoffActor::new(cfg.clone()).start(), BackoffActor::new(cfg).start());
        let plan = |c: &str, host: &str| PlanAttempt {
            connection: c.into(),
            cause: None,
            was_healthy: false,
            host: host.into(),
        };
        let start = Instant::now();
        let mut waits = Vec::new();
        for i in 0..3 {
            waits.push(a.send(plan(&format!("a/{i}"), "shared.test:443")).await.unwrap() - start);
            waits.push(b.send(plan(&format!("b/{i}"), "shared.test:443")).await.unwrap() - start);
        }
        let mut sorted = waits.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(95), "100 ms apart across both sources: {waits:?}");
        }
        let elsewhere = b.send(plan("b/9", "other.test:443")).await.unwrap().saturating_duration_since(Instant::now());
        assert!(elsewhere < Duration::from_millis(20), "another host has its own schedule: {elsewhere:?}");
    }

    #[test]
    fn authorities_are_host_and_port() {
        use crate::settings::authority;
        assert_eq!(authority("https://Stream.Twitter.com/1.1/statuses/filter.json"), "stream.twitter.com");
        assert_eq!(authority("ws://127.0.0.1:9000/subscribe?x=1"), "127.0.0.1:9000");
        assert_eq!(authority("wss://u:p@h.example:1"), "h.example:1");
    }
}
