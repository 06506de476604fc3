//! The dyno's load average, computed the way the kernel computes the host's.
//!
//! In: the number of the dyno's tasks in state R or D, every
//! [`LOAD_FREQ`] (5 s, the kernel's `LOAD_FREQ`). Out: the 1, 5 and 15 minute
//! averages.
//!
//! The kernel (`kernel/sched/loadavg.c`, `calc_load`) keeps each average in
//! 11-bit fixed point and, every 5 s, decays it towards the active count by
//! the factor `exp(-5 s / period)`: `EXP_1 = 1884`, `EXP_5 = 2014`,
//! `EXP_15 = 2037` out of `FIXED_1 = 2048`, rounding up while the load
//! rises. This does the same arithmetic, so a dyno's figure matches what
//! `/proc/loadavg` would say if the dyno were the whole machine.
//!
//! Must never: read `/proc/loadavg` (that is the host's).

use std::time::Duration;

/// How often the active tasks are counted (the kernel's `LOAD_FREQ`).
pub const LOAD_FREQ: Duration = Duration::from_secs(5);

const FSHIFT: u32 = 11;
const FIXED_1: u64 = 1 << FSHIFT;
/// `FIXED_1 * exp(-5/60)`, `exp(-5/300)`, `exp(-5/900)`, as in the kernel.
const EXP: [u64; 3] = [1884, 2014, 2037];

/// The 1, 5 and 15 minute load averages, in the kernel's fixed point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAvg {
    avenrun: [u64; 3],
}

impl LoadAvg {
    /// One tick: `active` tasks were R or D at this count.
    pub fn tick(&mut self, active: u64) {
        let active = active.saturating_mul(FIXED_1);
        for (load, exp) in self.avenrun.iter_mut().zip(EXP) {
            let mut new = load
                .saturating_mul(exp)
                .saturating_add(active.saturating_mul(FIXED_1 - exp));
            if active >= *load {
                new = new.saturating_add(FIXED_1 - 1);
            }
            *load = new / FIXED_1;
        }
    }

    /// The averages as numbers, `[1m, 5m, 15m]`.
    pub fn get(&self) -> [f64; 3] {
        #[allow(clippy::cast_precision_loss)]
        self.avenrun.map(|l| l as f64 / FIXED_1 as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_stays_zero() {
        let mut l = LoadAvg::default();
        for _ in 0..100 {
            l.tick(0);
        }
        assert_eq!(l.get(), [0.0; 3]);
    }

    #[test]
    fn one_busy_task_shows_after_one_tick_and_converges_to_one() {
        let mut l = LoadAvg::default();
        l.tick(1);
        let [m1, m5, m15] = l.get();
        // 1 - exp(-5/60) = 0.0799, in fixed point 164/2048.
        assert!((m1 - 164.0 / 2048.0).abs() < 1e-9, "{m1}");
        assert!(m1 > 0.05 && m5 > 0.0 && m15 > 0.0 && m5 < m1 && m15 < m5);
        for _ in 0..2000 {
            l.tick(1);
        }
        for v in l.get() {
            assert!((v - 1.0).abs() < 0.002, "{v}");
        }
    }

    #[test]
    fn decays_back_to_zero_when_the_work_stops() {
        let mut l = LoadAvg::default();
        for _ in 0..240 {
            l.tick(4);
        }
        assert!(l.get()[0] > 3.9, "{:?}", l.get());
        // Ten minutes idle: the 1-minute average is gone, the 15-minute one is not.
        for _ in 0..120 {
            l.tick(0);
        }
        let [m1, _, m15] = l.get();
        assert!(m1 < 0.01, "{m1}");
        assert!(m15 > 1.0, "{m15}");
    }
}
