//! The send rate, adapted to what SES accepts. It starts at the configured rate (the ceiling);
//! a throttling answer cuts it, and it climbs back while SES keeps accepting. Without this, a
//! worker configured above the account's real rate would spend its sends on throttling answers.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// A throttling answer cuts the rate to this fraction of what it was.
const CUT: f64 = 0.7;
/// Throttling answers cut the rate at most this often. SES's limit is per second, and the
/// cost is lopsided: a send over it is answered "throttled" and retried, a send under it is
/// throughput lost for good. Cutting again on every answer of the same second (as a TCP-like
/// once-per-round-trip rule would, at 20 ms per send) drives the rate far below the limit.
const CUT_INTERVAL: Duration = Duration::from_secs(1);
/// While nothing is throttled, the rate climbs back by this fraction of the ceiling per second:
/// from a cut to the ceiling in 3 s, before SES's one-second burst allowance (which fills while
/// we send below its rate) is full, so little of it goes unused.
const RECOVERY_PER_SECOND: f64 = 0.1;
/// The rate never falls below this fraction of the ceiling.
const FLOOR: f64 = 0.01;
/// Sends allowed at once after a pause, in seconds' worth of the current rate, as SES allows.
const BURST: f64 = 1.0;

pub struct AdaptiveRate {
    ceiling: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Emails per second now.
    rate: f64,
    /// When `rate` was last brought up to date.
    updated: Instant,
    /// The slot the next send would get at the current rate, burst aside.
    next: Instant,
    /// When the rate was last cut.
    cut_at: Option<Instant>,
}

impl AdaptiveRate {
    /// `emails_per_second` is the most this sender may use.
    pub fn new(emails_per_second: f64) -> Self {
        let ceiling = emails_per_second.max(0.001);
        let now = Instant::now();
        Self {
            ceiling,
            state: Mutex::new(State {
                rate: ceiling,
                updated: now,
                next: now,
                cut_at: None,
            }),
        }
    }

    /// Emails per second this sender is allowed now.
    pub fn current(&self) -> f64 {
        let mut state = self.lock();
        self.recover(&mut state, Instant::now());
        state.rate
    }

    /// Books the next send's turn, if it comes no later than `not_after`: the caller waits until
    /// the returned instant, then sends. A turn past `not_after` is not booked, so a send that
    /// could not start in time takes nothing from the sends that can.
    pub fn reserve(&self, not_after: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        self.recover(&mut state, now);
        let (interval, burst) = state.spacing();
        // GCRA: a send may start up to `burst` ahead of its place in the even spacing.
        let slot = now.max(state.next.checked_sub(burst).unwrap_or(now));
        if slot > not_after {
            return None;
        }
        state.next = state.next.max(slot) + interval;
        Some(slot)
    }

    /// SES throttled a send: slow down, unless the rate was cut less than a second ago.
    pub fn throttled(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        if state
            .cut_at
            .is_some_and(|cut_at| now.duration_since(cut_at) < CUT_INTERVAL)
        {
            return;
        }
        self.recover(&mut state, now);
        state.rate = (state.rate * CUT).max(self.ceiling * FLOOR);
        state.cut_at = Some(now);
        // SES's allowance is spent: no burst credit, and the next send waits one new interval.
        let (interval, burst) = state.spacing();
        state.next = state.next.max(now + burst + interval);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recover(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.rate = (state.rate + self.ceiling * RECOVERY_PER_SECOND * elapsed).min(self.ceiling);
        state.updated = now;
    }
}

impl State {
    /// The even spacing of sends at the current rate, and how far ahead of it a burst may go.
    fn spacing(&self) -> (Duration, Duration) {
        let interval = Duration::from_secs_f64(1.0 / self.rate);
        (
            interval,
            interval.mul_f64((self.rate * BURST - 1.0).max(0.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `count` sends one after another, as fast as the rate lets them.
    async fn starts(rate: &AdaptiveRate, count: usize) -> Vec<Instant> {
        let mut started = Vec::with_capacity(count);
        let never = Instant::now() + Duration::from_secs(3600);
        for _ in 0..count {
            let slot = rate.reserve(never).unwrap();
            tokio::time::sleep_until(slot).await;
            started.push(Instant::now());
        }
        started
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_one_seconds_worth_then_one_send_per_interval() {
        let rate = AdaptiveRate::new(10.0);
        let begin = Instant::now();
        let started = starts(&rate, 30).await;
        assert!(started[..10].iter().all(|&at| at == begin), "{started:?}");
        // The next 20 at 10/s: the 30th starts 2 s in.
        let last = started[29] - begin;
        assert!(
            last >= Duration::from_millis(1990) && last <= Duration::from_millis(2010),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_cuts_the_rate_once_a_second_and_it_recovers_to_the_ceiling() {
        let rate = AdaptiveRate::new(100.0);
        rate.throttled();
        assert!((rate.current() - 70.0).abs() < 1e-6, "{}", rate.current());
        // More answers of the same second were caused by the old rate: no further cut.
        tokio::time::advance(Duration::from_millis(500)).await;
        rate.throttled();
        assert!((rate.current() - 75.0).abs() < 1e-6, "{}", rate.current());

        // A second on, still throttled: cut again (from 80 after recovering 10 more).
        tokio::time::advance(Duration::from_millis(500)).await;
        rate.throttled();
        assert!((rate.current() - 56.0).abs() < 1e-6, "{}", rate.current());

        // 10 % of the ceiling per second without throttling, never above the ceiling.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!((rate.current() - 76.0).abs() < 1e-6, "{}", rate.current());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(rate.current(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_throttle_there_is_no_burst() {
        let rate = AdaptiveRate::new(10.0);
        starts(&rate, 1).await;
        let throttled_at = Instant::now();
        rate.throttled();
        let after = starts(&rate, 3).await;
        // 7/s (recovering slowly): one send every ~140 ms, the first one interval after the
        // throttle, where 10/s with its burst would have sent all three at once.
        let gaps: Vec<_> = after.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert!(
            after[0] - throttled_at >= Duration::from_millis(130),
            "{after:?}"
        );
        assert!(
            gaps.iter().all(|gap| *gap >= Duration::from_millis(130)),
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_has_a_floor() {
        let rate = AdaptiveRate::new(100.0);
        for _ in 0..50 {
            tokio::time::advance(CUT_INTERVAL).await;
            // Throttled again just as the second's recovery lands.
            rate.throttled();
        }
        // A cut every second against 10/s of recovery settles where 0.7 × (r + 10) = r.
        let settled = rate.current();
        assert!((settled - 23.33).abs() < 0.1, "{settled}");

        let rate = AdaptiveRate::new(100.0);
        for _ in 0..50 {
            // Cuts in a row with no time to recover (as if the interval were zero) stop at 1 %.
            rate.lock().cut_at = None;
            rate.throttled();
        }
        assert!((rate.current() - 1.0).abs() < 1e-6, "{}", rate.current());
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_past_the_limit_is_not_booked() {
        let rate = AdaptiveRate::new(1.0);
        let now = Instant::now();
        assert_eq!(rate.reserve(now), Some(now), "the first send goes at once");
        // The next turn is a second away: refused for a limit half a second away, and the
        // refusal books nothing, so the turn is still there for a later limit.
        assert_eq!(rate.reserve(now + Duration::from_millis(500)), None);
        assert_eq!(
            rate.reserve(now + Duration::from_secs(5)),
            Some(now + Duration::from_secs(1))
        );
    }
}
