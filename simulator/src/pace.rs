//! Message pacing shared by per-connection producers and the broadcast
//! generator: one timer per tick, never one per message.

use std::time::Duration;

use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// Shortest tick: at high rates a tick releases rate/100 messages.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Credit is counted in billionths of a message.
const ONE: u64 = 1_000_000_000;

/// Releases messages at `rate` per second (0 = unthrottled).
///
/// The tick is 10 ms, or one message interval when that is longer, so a
/// thousand connections at rate 1 wake once a second each, not 100 times.
pub(crate) struct Pacer {
    rate: u64,
    ticker: Interval,
    credit: u64,
    per_tick: u64,
    cap: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u32) -> Pacer {
        let rate = u64::from(rate);
        let period = match rate {
            0 => MIN_TICK,
            r => MIN_TICK.max(Duration::from_nanos(ONE / r)),
        };
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let per_tick = rate.saturating_mul(period_ns);
        // The first tick is one period away: the first message goes out at
        // once on the initial credit, the second a period later.
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // At most one tick's worth plus one message is ever owed.
        Pacer { rate, ticker, credit: ONE, per_tick, cap: per_tick.saturating_add(ONE) }
    }

    /// Whether pacing applies at all.
    pub(crate) fn throttled(&self) -> bool {
        self.rate > 0
    }

    /// Takes one message's credit if there is enough.
    pub(crate) fn try_take(&mut self) -> bool {
        if self.rate == 0 {
            return true;
        }
        if self.credit >= ONE {
            self.credit -= ONE;
            true
        } else {
            false
        }
    }

    /// Waits for the next tick and adds its credit. Cancel-safe: the credit is
    /// added in the same poll that sees the tick.
    pub(crate) async fn tick(&mut self) {
        self.ticker.tick().await;
        self.credit = self.credit.saturating_add(self.per_tick).min(self.cap);
    }

    /// Restarts the tick schedule from now (after a scripted silence).
    pub(crate) fn reset(&mut self) {
        self.ticker.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn low_rates_get_long_ticks_and_the_first_message_is_free() {
        let mut p = Pacer::new(1);
        assert_eq!(p.ticker.period(), Duration::from_secs(1));
        assert!(p.try_take());
        assert!(!p.try_take());
        let p = Pacer::new(200);
        assert_eq!(p.ticker.period(), MIN_TICK);
        assert_eq!(p.per_tick, 2 * ONE);
        let mut p = Pacer::new(0);
        assert!(!p.throttled());
        assert!((0..1000).all(|_| p.try_take()));
    }
}
