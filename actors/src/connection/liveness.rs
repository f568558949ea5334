//! Data liveness: heartbeats prove the socket, not the data. Each connection
//! learns its usual gap between events; a silence longer than
//! `liveness_factor` usual gaps (and at least `liveness_min`) is probed. A
//! probe that finds the stream merely quiet doubles the bound, so a quiet
//! stream is probed at most once per bound, then after 2, 4, … 64 bounds.

use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest batch in the learned gap (an EWMA over batches).
const LEARN_WEIGHT: f64 = 0.125;

/// The bound doubles after each probe that found nothing, up to `2^MAX_QUIET_DOUBLINGS`.
const MAX_QUIET_DOUBLINGS: u32 = 6;

/// One connection's liveness state; it lives as long as the connection's
/// actor, so the learned rate survives reconnects.
#[derive(Debug, Clone)]
pub struct Liveness {
    factor: f64,
    min: Duration,
    /// The learned mean gap between events; `None` before any event.
    usual_gap: Option<Duration>,
    /// The last event, or the last connect or probe: silence counts from here.
    since: Instant,
    /// Probes in a row that found nothing.
    quiet_probes: u32,
}

impl Liveness {
    /// A connection that has learned nothing yet.
    pub fn new(factor: f64, min: Duration) -> Self {
        Liveness { factor, min, usual_gap: None, since: Instant::now(), quiet_probes: 0 }
    }

    /// The silence now tolerated before a probe.
    pub fn bound(&self) -> Duration {
        let learned = self.usual_gap.map_or(Duration::ZERO, |g| g.mul_f64(self.factor));
        learned.max(self.min).saturating_mul(1 << self.quiet_probes.min(MAX_QUIET_DOUBLINGS))
    }

    /// When the current silence reaches the bound.
    pub fn deadline(&self) -> Instant {
        self.since + self.bound()
    }

    /// A connection was answered: the silence starts now.
    pub fn connected(&mut self) {
        self.since = Instant::now();
    }

    /// `n` events arrived now: learn from the gap since the previous ones.
    pub fn events(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let per_event = now.saturating_duration_since(self.since).div_f64(n as f64);
        self.usual_gap = Some(match self.usual_gap {
            None => per_event,
            Some(g) => g.mul_f64(1.0 - LEARN_WEIGHT) + per_event.mul_f64(LEARN_WEIGHT),
        });
        self.since = now;
        self.quiet_probes = 0;
    }

    /// A probe ran: the next one waits a doubled bound unless an event comes.
    pub fn probed(&mut self) {
        self.since = Instant::now();
        self.quiet_probes = (self.quiet_probes + 1).min(MAX_QUIET_DOUBLINGS);
    }

    /// The learned gap between events, for `/streams`.
    pub fn usual_gap(&self) -> Option<Duration> {
        self.usual_gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bound_follows_the_learned_rate_and_never_drops_below_the_minimum() {
        let mut l = Liveness::new(20.0, Duration::from_secs(2));
        assert_eq!(l.bound(), Duration::from_secs(2));
        // One event every 500 ms: 20 gaps are 10 s.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(500)).await;
            l.events(1);
        }
        let gap = l.usual_gap().expect("learned");
        assert!((gap.as_secs_f64() - 0.5).abs() < 0.01, "{gap:?}");
        assert!((l.bound().as_secs_f64() - 10.0).abs() < 0.2, "{:?}", l.bound());
        // A fast stream: the minimum holds.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(1)).await;
            l.events(10);
        }
        assert_eq!(l.bound(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_probes_double_the_bound_up_to_a_cap_and_an_event_resets_it() {
        let mut l = Liveness::new(20.0, Duration::from_secs(1));
        let mut bounds = Vec::new();
        for _ in 0..9 {
            l.probed();
            bounds.push(l.bound().as_secs());
        }
        assert_eq!(bounds, [2, 4, 8, 16, 32, 64, 64, 64, 64]);
        l.events(1);
        assert!(l.bound() >= Duration::from_secs(1) && l.bound() < Duration::from_secs(64));
        let before = l.deadline();
        tokio::time::advance(Duration::from_millis(300)).await;
        l.connected();
        assert!(l.deadline() > before);
    }
}
