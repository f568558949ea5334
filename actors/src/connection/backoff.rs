//! The reconnect rules as a pure [`BackoffPolicy`], one per connection: the
//! wait after each failure by its class (linear for network errors, doubling
//! for HTTP errors and rate limits), capped, `Retry-After` honoured.

use std::sync::Arc;
use std::time::Duration;

use crate::error::DisconnectCause;

/// Every interval of the reconnect rules; defaults are the documented ones.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// First wait after a network error, stall or EOF; grows linearly by this step.
    pub network_initial: Duration,
    /// Cap of the linear schedule.
    pub network_max: Duration,
    /// First wait after a retryable HTTP status; doubles.
    pub http_initial: Duration,
    /// Cap of the HTTP schedule.
    pub http_max: Duration,
    /// First wait after 420/429; doubles.
    pub rate_limit_initial: Duration,
    /// Cap of the rate-limit schedule.
    pub rate_limit_max: Duration,
    /// A connection healthy this long forgets its error history (zero: at once).
    pub reset_after: Duration,
    /// Relative jitter on every wait: 0.1 = ±10 %.
    pub jitter: f64,
    /// At most this many connection attempts per second to one host.
    pub max_connects_per_s: u32,
    /// A connection with no event for this many times its usual gap between
    /// events (and at least `liveness_min`) is probed.
    pub liveness_factor: f64,
    /// The shortest silence that is probed, whatever the learned rate.
    pub liveness_min: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            network_initial: Duration::from_millis(250),
            network_max: Duration::from_millis(16_000),
            http_initial: Duration::from_millis(5_000),
            http_max: Duration::from_millis(320_000),
            rate_limit_initial: Duration::from_millis(60_000),
            rate_limit_max: Duration::from_millis(960_000),
            reset_after: Duration::from_secs(1800),
            jitter: 0.1,
            max_connects_per_s: 20,
            liveness_factor: 20.0,
            liveness_min: Duration::from_secs(120),
        }
    }
}

/// Which schedule a cause falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffClass {
    /// Linear steps.
    Network,
    /// Doubling from the HTTP initial wait.
    Http,
    /// Doubling from the rate-limit initial wait.
    RateLimit,
}

impl BackoffClass {
    /// The class of a disconnect cause.
    pub fn of(cause: &DisconnectCause) -> BackoffClass {
        match cause {
            DisconnectCause::Network(_)
            | DisconnectCause::Stall
            | DisconnectCause::Eof
            | DisconnectCause::Silent
            | DisconnectCause::DisconnectMessage { .. } => BackoffClass::Network,
            DisconnectCause::Http { .. } => BackoffClass::Http,
            DisconnectCause::RateLimited { .. } => BackoffClass::RateLimit,
        }
    }
}

/// One connection's error history and the schedule it implies (no jitter).
#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    config: Arc<BackoffConfig>,
    class: Option<BackoffClass>,
    attempts: u32,
}

impl BackoffPolicy {
    /// A fresh history.
    pub fn new(config: Arc<BackoffConfig>) -> Self {
        BackoffPolicy { config, class: None, attempts: 0 }
    }

    /// Records a failure and returns the wait before the next attempt.
    /// Switching class restarts the count, as hbc does.
    pub fn next_wait(&mut self, cause: &DisconnectCause) -> Duration {
        let class = BackoffClass::of(cause);
        if self.class != Some(class) {
            self.class = Some(class);
            self.attempts = 0;
        }
        self.attempts = self.attempts.saturating_add(1);
        let c = &self.config;
        let n = self.attempts;
        let (wait, max) = match class {
            BackoffClass::Network => (c.network_initial.saturating_mul(n), c.network_max),
            BackoffClass::Http => (doubling(c.http_initial, n), c.http_max),
            BackoffClass::RateLimit => (doubling(c.rate_limit_initial, n), c.rate_limit_max),
        };
        let wait = wait.min(max);
        let retry_after = match cause {
            DisconnectCause::Http { retry_after, .. } | DisconnectCause::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        };
        // Honour Retry-After, but never beyond the class's cap.
        match retry_after {
            Some(ra) => wait.max(ra.min(max)),
            None => wait,
        }
    }

    /// Forgets the history (the connection stayed healthy long enough).
    pub fn reset(&mut self) {
        self.class = None;
        self.attempts = 0;
    }

    /// Consecutive failures in the current class.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

fn doubling(initial: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor)
}

/// `wait` moved by up to ±`jitter` of itself, with `unit` a uniform sample in [0, 1).
pub fn with_jitter(wait: Duration, jitter: f64, unit: f64) -> Duration {
    if jitter <= 0.0 || wait.is_zero() {
        return wait;
    }
    let factor = 1.0 + jitter.min(1.0) * (2.0 * unit - 1.0);
    wait.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy::new(Arc::new(BackoffConfig::default()))
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn network_errors_are_linear_and_capped() {
        let mut p = policy();
        let waits: Vec<_> = (0..66).map(|_| p.next_wait(&DisconnectCause::Network("reset".into()))).collect();
        assert_eq!(waits[..4], ms(&[250, 500, 750, 1000])[..]);
        assert_eq!(waits[63], Duration::from_millis(16_000));
        assert_eq!(waits[65], Duration::from_millis(16_000));
        let mut p = policy();
        assert_eq!(p.next_wait(&DisconnectCause::Stall), Duration::from_millis(250));
        assert_eq!(p.next_wait(&DisconnectCause::Eof), Duration::from_millis(500));
    }

    #[test]
    fn http_errors_double_and_cap() {
        let mut p = policy();
        let http = DisconnectCause::Http { status: 503, retry_after: None };
        let waits: Vec<_> = (0..8).map(|_| p.next_wait(&http)).collect();
        assert_eq!(waits, ms(&[5000, 10000, 20000, 40000, 80000, 160000, 320000, 320000]));
    }

    #[test]
    fn rate_limits_start_at_a_minute() {
        let mut p = policy();
        let rl = DisconnectCause::RateLimited { status: 420, retry_after: None };
        let waits: Vec<_> = (0..6).map(|_| p.next_wait(&rl)).collect();
        assert_eq!(waits, ms(&[60000, 120000, 240000, 480000, 960000, 960000]));
    }

    #[test]
    fn class_switch_and_reset_restart_the_count() {
        let mut p = policy();
        p.next_wait(&DisconnectCause::Stall);
        p.next_wait(&DisconnectCause::Stall);
        let http = DisconnectCause::Http { status: 500, retry_after: None };
        assert_eq!(p.next_wait(&http), Duration::from_millis(5000));
        assert_eq!(p.next_wait(&DisconnectCause::Stall), Duration::from_millis(250));
        p.next_wait(&DisconnectCause::Stall);
        p.reset();
        assert_eq!(p.next_wait(&DisconnectCause::Stall), Duration::from_millis(250));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let mut p = policy();
        let c = DisconnectCause::Http { status: 503, retry_after: Some(Duration::from_secs(30)) };
        assert_eq!(p.next_wait(&c), Duration::from_secs(30));
        let c = DisconnectCause::Http { status: 503, retry_after: Some(Duration::from_secs(100_000)) };
        assert_eq!(p.next_wait(&c), Duration::from_millis(320_000));
        let c = DisconnectCause::Http { status: 503, retry_after: Some(Duration::from_secs(1)) };
        assert_eq!(p.next_wait(&c), Duration::from_millis(20_000));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let w = Duration::from_millis(1000);
        assert_eq!(with_jitter(w, 0.1, 0.0), Duration::from_millis(900));
        assert_eq!(with_jitter(w, 0.1, 0.5), Duration::from_millis(1000));
        assert!(with_jitter(w, 0.1, 0.999_999) <= Duration::from_millis(1100));
        assert_eq!(with_jitter(w, 0.0, 0.9), w);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let j = with_jitter(w, 0.25, rng.f64());
            assert!(j >= Duration::from_millis(750) && j <= Duration::from_millis(1250));
        }
    }
}
