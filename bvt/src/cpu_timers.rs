//! One CPU's timers and the programming of its one-shot timer: what the hypervisor's
//! `sched` module did inline before issue 18, now host-tested and shared with the stress
//! simulator (`stress_sim`).
//!
//! Two [`TimerQueue`]s: the latency-sensitive timers (of vCPUs whose domain warps), each
//! programmed early by the CPU's learnt delivery latency ([`TimerAdvance`]) so that the
//! hypervisor can hide it, and the others, fired up to the slop late so that timers falling
//! due close together take one interrupt (as Xen's `timer_slop`). [`CpuTimers::program`]
//! arms the hardware for the earliest of those and of the caller's own deadlines (the
//! slice's end, the next look for work) through [`TimerHardware`], and skips the write when
//! the deadline is the one already armed (an APIC write is a trap to the device model under
//! emulation, and every exit to a guest passes here).
//!
//! The owning CPU calls it (`&mut self`, no lock); it never reads a clock (every time is
//! passed in) and never touches hardware but through the trait. What a timer does when it
//! fires is the caller's: its payload comes back from [`CpuTimers::expire`].

use crate::timer_advance::TimerAdvance;
use crate::timer_queue::{TimerHandle, TimerQueue};

/// The hardware a CPU's timers are programmed on: the hypervisor's local APIC timer, or the
/// simulator's event list.
pub trait TimerHardware {
    /// Arms this CPU's one-shot timer `delay_ns` from now (replacing any armed one).
    fn arm_timer_ns(&mut self, delay_ns: u64);
}

/// The shortest delay programmed: a deadline already past fires this soon.
pub const MIN_TIMER_DELAY_NS: u64 = 1_000;

/// Where an inserted timer waits, for [`CpuTimers::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmedTimer {
    handle: TimerHandle,
    /// In the queue fired up to the slop late.
    lazy: bool,
}

/// One CPU's two timer queues, its learnt timer advance and what its hardware is armed for.
#[derive(Debug)]
pub struct CpuTimers<T> {
    /// Latency-sensitive: the hardware is armed for the first of them.
    early: TimerQueue<T>,
    /// The others: the hardware is armed the slop after the first of them.
    lazy: TimerQueue<T>,
    advance: TimerAdvance,
    slop_ns: u64,
    /// The deadline the hardware is armed for (`None`: not armed, or it has fired).
    armed_ns: Option<u64>,
}

impl<T> CpuTimers<T> {
    /// No timers; latency-sensitive ones are programmed at most `max_advance_ns` early, the
    /// others fire up to `slop_ns` late.
    pub fn new(max_advance_ns: u64, slop_ns: u64) -> CpuTimers<T> {
        CpuTimers { early: TimerQueue::new(), lazy: TimerQueue::new(), advance: TimerAdvance::new(max_advance_ns), slop_ns, armed_ns: None }
    }

    /// Inserts a timer due at `deadline_ns`; `payload` gets the time it is programmed for
    /// (the deadline, or for a latency-sensitive one, the learnt advance earlier).
    pub fn insert(&mut self, deadline_ns: u64, latency_sensitive: bool, payload: impl FnOnce(u64) -> T) -> ArmedTimer {
        if latency_sensitive {
            let fire_at_ns = deadline_ns.saturating_sub(self.advance.advance_ns());
            ArmedTimer { handle: self.early.insert(fire_at_ns, payload(fire_at_ns)), lazy: false }
        } else {
            ArmedTimer { handle: self.lazy.insert(deadline_ns, payload(deadline_ns)), lazy: true }
        }
    }

    /// Cancels a timer; its payload if it was still pending.
    pub fn cancel(&mut self, armed: ArmedTimer) -> Option<T> {
        let queue = if armed.lazy { &mut self.lazy } else { &mut self.early };
        queue.cancel(armed.handle)
    }

    /// The timers due at `now_ns`, latency-sensitive ones first, each removed as the
    /// iterator yields it (dropping it early leaves the rest for the next call).
    pub fn expire(&mut self, now_ns: u64) -> impl Iterator<Item = T> + '_ {
        self.early.expire(now_ns).chain(self.lazy.expire(now_ns))
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.early.len() + self.lazy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hardware's one-shot timer has fired: nothing is armed until the next
    /// [`CpuTimers::program`]. Returns the time it was armed for (`None`: it was not
    /// armed, or already fired), so that the caller can tell how late the interrupt came.
    pub fn fired(&mut self) -> Option<u64> {
        self.armed_ns.take()
    }

    /// Learns one delivery latency of a latency-sensitive timer (see [`TimerAdvance`]).
    pub fn observe(&mut self, latency_ns: u64) {
        self.advance.observe(latency_ns);
    }

    /// Arms `hardware` at `now_ns` for the earliest of the next latency-sensitive timer, the
    /// next other timer plus the slop, and `others` (the caller's deadlines), unless it is
    /// armed for that already; with none of them it is left as it is.
    pub fn program(&mut self, now_ns: u64, others: impl IntoIterator<Item = Option<u64>>, hardware: &mut impl TimerHardware) {
        let lazy = self.lazy.next_deadline().map(|d| d.saturating_add(self.slop_ns));
        let next = [self.early.next_deadline(), lazy].into_iter().chain(others).flatten().min();
        if let Some(next) = next.filter(|&next| self.armed_ns != Some(next)) {
            hardware.arm_timer_ns(next.saturating_sub(now_ns).max(MIN_TIMER_DELAY_NS));
            self.armed_ns = Some(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Default)]
    struct Apic(Vec<u64>);

    impl TimerHardware for Apic {
        fn arm_timer_ns(&mut self, delay_ns: u64) {
            self.0.push(delay_ns);
        }
    }

    #[test]
    fn lazy_timers_fire_the_slop_late_and_latency_sensitive_ones_on_time() {
        let mut timers = CpuTimers::new(200_000, 50_000);
        let mut apic = Apic::default();
        timers.insert(1_000_000, false, |at| ("lazy", at));
        timers.program(0, [], &mut apic);
        assert_eq!(apic.0, [1_050_000]);
        timers.insert(1_020_000, true, |at| ("early", at));
        timers.program(0, [], &mut apic);
        assert_eq!(apic.0, [1_050_000, 1_020_000], "no advance learnt yet: programmed at its deadline");
        timers.program(0, [Some(2_000_000)], &mut apic);
        assert_eq!(apic.0.len(), 2, "armed for that deadline already: no write");
        assert_eq!(timers.fired(), Some(1_020_000), "what the interrupt came for");
        assert_eq!(timers.fired(), None);
        let due: Vec<_> = timers.expire(1_030_000).collect();
        assert_eq!(due, [("early", 1_020_000), ("lazy", 1_000_000)], "latency-sensitive first");
        timers.program(1_030_000, [Some(2_000_000), None], &mut apic);
        assert_eq!(apic.0[2], 970_000);
        assert!(timers.is_empty());
    }

    #[test]
    fn a_learnt_latency_programs_latency_sensitive_timers_early() {
        let mut timers = CpuTimers::new(200_000, 50_000);
        for _ in 0..64 {
            timers.observe(30_000);
        }
        timers.insert(1_000_000, true, |at| at);
        let armed = timers.insert(1_000_000, false, |at| at);
        let due: Vec<u64> = timers.expire(990_000).collect();
        assert!(due.len() == 1 && due[0] < 1_000_000 && due[0] >= 800_000, "programmed early: {due:?}");
        assert_eq!(timers.cancel(armed), Some(1_000_000));
        assert_eq!(timers.cancel(armed), None);
    }

    #[test]
    fn a_deadline_already_past_is_programmed_the_minimum_delay_ahead() {
        let mut timers = CpuTimers::new(0, 0);
        let mut apic = Apic::default();
        timers.insert(5, false, |_| ());
        timers.program(1_000, [], &mut apic);
        assert_eq!(apic.0, [MIN_TIMER_DELAY_NS]);
    }
}
