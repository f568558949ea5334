//! The [`BackoffActor`], one per source: applies each connection's
//! [`BackoffPolicy`], adds jitter, and rations connection attempts so that
//! shards restarting together never stampede one host.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::backoff::{with_jitter, BackoffClass, BackoffConfig, BackoffPolicy};
use crate::error::DisconnectCause;

/// Asks for the wait before a connection's next attempt.
#[derive(Message, Debug)]
#[rtype(result = "Duration")]
pub struct PlanAttempt {
    /// Connection id.
    pub connection: Arc<str>,
    /// Why the previous attempt ended; None for a first connect.
    pub cause: Option<DisconnectCause>,
    /// The previous connection stayed healthy for `reset_after`: forget the history first.
    pub was_healthy: bool,
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

impl BackoffActor {
    /// The first time at or after `earliest` that is at least `spacing` away
    /// from every attempt already scheduled; it is then taken.
    fn free_slot(&mut self, now: Instant, earliest: Instant, spacing: Duration) -> Instant {
        let horizon = now.checked_sub(spacing).unwrap_or(now);
        self.slots = self.slots.split_off(&horizon);
        let mut candidate = earliest;
        loop {
            let low = candidate.checked_sub(spacing).unwrap_or(candidate);
            let clash = self.slots.range(low..candidate + spacing).next_back().copied();
            match clash {
                Some(taken) if taken + spacing > candidate => candidate = taken + spacing,
                _ => break,
            }
        }
        self.slots.insert(candidate);
        candidate
    }
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
        // Ration attempts: each takes the next free slot of the source's rate.
        let now = Instant::now();
        let spacing = Duration::from_secs(1) / self.config.max_connects_per_s.max(1);
        let slot = self.free_slot(now, now + wait, spacing);
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
        MessageResult(slot - now)
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
        for i in 0..5 {
            let w = addr
                .send(PlanAttempt { connection: format!("s/{i}").into(), cause: None, was_healthy: false })
                .await
                .unwrap();
            waits.push(w);
        }
        // 100 ms apart (allow for the time the loop itself takes)
        assert!(waits[0] < Duration::from_millis(20));
        assert!(waits[4] >= Duration::from_millis(380) && waits[4] <= Duration::from_millis(400), "{waits:?}");
    }

    #[actix_rt::test]
    async fn actor_applies_the_policy_per_connection_and_resets_when_healthy() {
        let cfg = BackoffConfig { max_connects_per_s: 1000, jitter: 0.0, ..BackoffConfig::default() };
        let addr = BackoffActor::new(cfg).start();
        let plan = |c: &str, healthy| PlanAttempt {
            connection: c.into(),
            cause: Some(DisconnectCause::Stall),
            was_healthy: healthy,
        };
        let a1 = addr.send(plan("a", false)).await.unwrap();
        let a2 = addr.send(plan("a", false)).await.unwrap();
        let b1 = addr.send(plan("b", false)).await.unwrap();
        let a3 = addr.send(plan("a", true)).await.unwrap();
        let near = |d: Duration, ms: u64| d.as_millis().abs_diff(ms as u128) <= 5;
        assert!(near(a1, 250) && near(a2, 500) && near(b1, 250) && near(a3, 250), "{a1:?} {a2:?} {b1:?} {a3:?}");
    }
}
