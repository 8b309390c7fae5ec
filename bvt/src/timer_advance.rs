//! How early to program the local timer for a latency-sensitive timer, so that its
//! interrupt arrives at the deadline rather than one delivery latency after it.
//!
//! A timer interrupt reaches the CPU some time after the moment programmed (the platform's
//! delivery latency: tens of microseconds on real machines, about a hundred under QEMU's
//! TCG, where a halted vCPU thread must be woken). Like KVM's adaptive
//! `lapic_timer_advance_ns`, the hypervisor programs such timers `advance` ns early and, if
//! the interrupt then arrives before the deadline, waits out the rest. [`TimerAdvance`]
//! learns `advance` from the latencies it observes: a smoothed mean plus one smoothed mean
//! deviation (as TCP's retransmission timer does), capped, so that most interrupts arrive
//! just before their deadline and few after it. Integer arithmetic only; one per CPU.

/// Smoothing: each observation moves the estimates by 1/8 (mean) and 1/4 (deviation) of
/// the difference, as in RFC 6298.
const MEAN_SHIFT: u32 = 3;
const DEV_SHIFT: u32 = 2;

/// A CPU's estimate of its timer delivery latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerAdvance {
    mean_ns: u64,
    dev_ns: u64,
    max_ns: u64,
    observed: bool,
}

impl TimerAdvance {
    /// No observation yet (advance 0); never advances by more than `max_ns`.
    pub const fn new(max_ns: u64) -> TimerAdvance {
        TimerAdvance { mean_ns: 0, dev_ns: 0, max_ns, observed: false }
    }

    /// Takes in one delivery latency: how long after the programmed moment the interrupt
    /// was handled.
    pub fn observe(&mut self, latency_ns: u64) {
        let latency = latency_ns.min(self.max_ns.saturating_mul(4));
        if !self.observed {
            self.observed = true;
            self.mean_ns = latency;
            self.dev_ns = latency / 2;
            return;
        }
        let diff = latency.abs_diff(self.mean_ns);
        self.dev_ns = self.dev_ns - (self.dev_ns >> DEV_SHIFT) + (diff >> DEV_SHIFT);
        self.mean_ns = if latency >= self.mean_ns {
            self.mean_ns + ((latency - self.mean_ns) >> MEAN_SHIFT)
        } else {
            self.mean_ns - ((self.mean_ns - latency) >> MEAN_SHIFT)
        };
    }

    /// How early to program a latency-sensitive timer.
    pub fn advance_ns(&self) -> u64 {
        (self.mean_ns + self.dev_ns).min(self.max_ns)
    }

    /// The smoothed mean latency observed.
    pub fn mean_ns(&self) -> u64 {
        self.mean_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    #[test]
    fn nothing_observed_means_no_advance() {
        assert_eq!(TimerAdvance::new(200 * US).advance_ns(), 0);
    }

    #[test]
    fn a_steady_latency_is_learned_and_the_deviation_fades() {
        let mut advance = TimerAdvance::new(200 * US);
        for _ in 0..200 {
            advance.observe(80 * US);
        }
        assert_eq!(advance.mean_ns(), 80 * US);
        assert!(advance.advance_ns() >= 80 * US && advance.advance_ns() < 81 * US, "{advance:?}");
    }

    #[test]
    fn jitter_widens_the_advance_beyond_the_mean() {
        let mut advance = TimerAdvance::new(500 * US);
        for i in 0..400 {
            advance.observe(if i % 2 == 0 { 40 * US } else { 120 * US });
        }
        let mean = advance.mean_ns();
        assert!((70 * US..=90 * US).contains(&mean), "mean {mean}");
        let extra = advance.advance_ns() - mean;
        assert!((30 * US..=50 * US).contains(&extra), "mean deviation {extra}");
    }

    #[test]
    fn the_advance_is_capped_and_outliers_are_clipped() {
        let mut advance = TimerAdvance::new(100 * US);
        advance.observe(90 * US);
        for _ in 0..50 {
            advance.observe(u64::MAX);
        }
        assert_eq!(advance.advance_ns(), 100 * US);
        assert!(advance.mean_ns() <= 400 * US, "one stalled interrupt cannot push the mean past 4x the cap");
        for _ in 0..200 {
            advance.observe(10 * US);
        }
        assert!(advance.advance_ns() < 15 * US, "it comes back down: {advance:?}");
    }
}
