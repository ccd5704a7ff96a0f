//! Kills at arbitrary moments: a seeded schedule of instants at which the host kills a busy
//! instance (SIGKILL, as when a Lambda execution environment dies: out of memory, a host
//! failure), to test that the worker's guarantees survive a process dying anywhere.

use std::time::Duration;

/// `kills` kills at instants drawn uniformly from `[0, window)` after the host starts, each of a
/// busy instance drawn at random. The same seed gives the same instants and the same sequence
/// of draws; which invocation dies still depends on timing, so a run is reproducible in its
/// schedule, not in its outcome.
///
/// A kill whose instant finds no instance busy waits for one: it is tried again after a short
/// random pause (1–20 ms) until an invocation is running, so it lands early in the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillPlan {
    pub seed: u64,
    pub kills: usize,
    pub window: Duration,
}

impl KillPlan {
    /// The kill instants, as offsets from the host's start, in order.
    pub fn schedule(&self) -> Vec<Duration> {
        let mut random = SplitMix64::new(self.seed);
        let mut offsets: Vec<Duration> = (0..self.kills)
            .map(|_| self.window.mul_f64(random.next_f64()))
            .collect();
        offsets.sort();
        offsets
    }

    /// The generator the host draws victims and retry pauses from (after the schedule's draws).
    pub(crate) fn draws(&self) -> SplitMix64 {
        let mut random = SplitMix64::new(self.seed);
        for _ in 0..self.kills {
            random.next_u64();
        }
        random
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, well-mixed seeded generator, enough for
/// schedules and ids (not for cryptography), without a dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the clock and the process id: distinct per call in practice.
    pub fn from_time() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let mut random = Self(nanos ^ (u64::from(std::process::id()) << 32));
        random.next_u64();
        random
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, bound)`; 0 when `bound` is 0.
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        (self.next_f64() * bound as f64) as usize % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sorted_schedule_within_the_window() {
        let plan = KillPlan {
            seed: 7,
            kills: 20,
            window: Duration::from_secs(3),
        };
        let schedule = plan.schedule();
        assert_eq!(schedule, plan.schedule());
        assert_eq!(schedule.len(), 20);
        assert!(schedule.windows(2).all(|pair| pair[0] <= pair[1]));
        assert!(schedule.iter().all(|at| *at < plan.window));
        let other = KillPlan { seed: 8, ..plan };
        assert_ne!(schedule, other.schedule());
    }

    #[test]
    fn draws_stay_in_range() {
        let mut random = SplitMix64::new(1);
        for _ in 0..1000 {
            assert!(random.below(3) < 3);
            let x = random.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
        assert_eq!(random.below(0), 0);
    }
}
