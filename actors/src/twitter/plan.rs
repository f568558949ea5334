//! Pure planning for a Twitter source's connections: seed 002's
//! predicate-update delay curve and schedule (where site-stream follows go
//! is `crate::packing`). No actors, no IO.

pub use crate::packing::{consolidate, solve_site, Assignment, Move, SitePlan};
use std::time::{Duration, Instant};

/// Seed 002's delay before a predicate restart with `pending` changes
/// waiting: `int(60 - 60*sqrt(n)/12) * max/60`, clamped to [min, max]
/// (the seed's `d == mins` never clamped; this does).
pub fn update_delay(pending: u32, min: Duration, max: Duration) -> Duration {
    let minutes_factor = (60.0 - 60.0 * f64::from(pending).sqrt() / 12.0).trunc();
    let secs = minutes_factor * max.as_secs_f64() / 60.0;
    let d = if secs.is_finite() && secs > 0.0 { Duration::from_secs_f64(secs) } else { Duration::ZERO };
    d.clamp(min, max.max(min))
}

/// When to apply predicate changes (seed 002's manager): the first update at
/// once, later ones at most one per `min`, sooner the more are pending.
#[derive(Debug, Clone)]
pub struct UpdateScheduler {
    min: Duration,
    max: Duration,
    last_applied: Option<Instant>,
    pending: u32,
}

impl UpdateScheduler {
    /// A scheduler with the source's `update` settings.
    pub fn new(min: Duration, max: Duration) -> Self {
        UpdateScheduler { min, max, last_applied: None, pending: 0 }
    }

    /// A change arrived: returns how long to wait before applying (the caller
    /// replaces any timer it had with one of this length).
    pub fn request(&mut self, now: Instant) -> Duration {
        let delay = match self.last_applied {
            None => Duration::ZERO,
            Some(last) => update_delay(self.pending, self.min, self.max).saturating_sub(now.duration_since(last)),
        };
        self.pending = self.pending.saturating_add(1);
        delay
    }

    /// The restart happened.
    pub fn applied(&mut self, now: Instant) {
        self.last_applied = Some(now);
        self.pending = 0;
    }

    /// Changes waiting.
    pub fn pending(&self) -> u32 {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 002's doctest: [600, 440, 370, 320, 280, 240, 210, 180, 150, 120].
    #[test]
    fn update_delay_matches_seed_002_and_clamps() {
        let (min, max) = (Duration::from_secs(120), Duration::from_secs(600));
        let got: Vec<u64> = (0..100).step_by(10).map(|n| update_delay(n, min, max).as_secs()).collect();
        assert_eq!(got, vec![600, 440, 370, 320, 280, 240, 210, 180, 150, 120]);
        for n in [100, 144, 200, 10_000, u32::MAX] {
            assert_eq!(update_delay(n, min, max), min, "n = {n}");
        }
    }

    #[test]
    fn scheduler_applies_the_first_update_at_once_then_paces() {
        let (min, max) = (Duration::from_secs(120), Duration::from_secs(600));
        let mut s = UpdateScheduler::new(min, max);
        let t0 = Instant::now();
        assert_eq!(s.request(t0), Duration::ZERO);
        s.applied(t0);
        // One change 10 s later: 600 s after the last restart, minus the 10 s gone.
        assert_eq!(s.request(t0 + Duration::from_secs(10)), Duration::from_secs(590));
        // Ten pending: delay(10) = 440 s, minus 20 s elapsed.
        for _ in 0..9 {
            s.request(t0 + Duration::from_secs(20));
        }
        assert_eq!(s.request(t0 + Duration::from_secs(20)), Duration::from_secs(420));
        // Long after: no wait, but never before min after the last restart.
        assert_eq!(s.request(t0 + Duration::from_secs(1000)), Duration::ZERO);
        s.applied(t0 + Duration::from_secs(1000));
        assert_eq!(s.pending(), 0);
    }
}
