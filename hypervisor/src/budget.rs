//! Work in slices under a time budget that always makes progress: at least one step, then
//! more while the budget lasts.
//!
//! `pv::teardown::work` runs a dead domain's teardown through [`run_steps`] (from the
//! idle loop, trap exits and domain 0's `GetPhysInfo`). The budget is measured from before
//! the caller's own bookkeeping (locks, queue moves), so a check made before the first
//! step may find the budget spent already: on a machine where that bookkeeping or the
//! clock read is slow (nested virtualization traps `rdtsc`; a host that preempts the vCPU)
//! such a loop would do nothing, call after call, for ever. Pure and host-tested; it never
//! reads the clock itself.

/// One unit of bounded work that [`run_steps`] drives.
pub trait Steps {
    /// Does one bounded step.
    fn step(&mut self);
    /// Whether the work is over or cannot go on for now (done, or blocked waiting): no
    /// further step is to be taken in this slice.
    fn stopped(&self) -> bool;
}

/// Takes one step of `work`, then more while it is not [`Steps::stopped`] and `spent()` is
/// below `budget_ns`. Returns the number of steps taken (at least one).
pub fn run_steps<W: Steps + ?Sized>(work: &mut W, mut spent: impl FnMut() -> u64, budget_ns: u64) -> usize {
    let mut steps = 0;
    loop {
        work.step();
        steps += 1;
        if work.stopped() || spent() >= budget_ns {
            return steps;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that needs `left` steps.
    struct Countdown {
        left: usize,
    }

    impl Steps for Countdown {
        fn step(&mut self) {
            self.left = self.left.checked_sub(1).expect("no step after the work stopped");
        }
        fn stopped(&self) -> bool {
            self.left == 0
        }
    }

    #[test]
    fn a_budget_spent_before_the_first_step_still_gets_one_step() {
        // The clock says the budget is gone every time it is read (the caller's locks and
        // queue moves took it, or the clock read itself is slow): one step per call, and
        // the work still ends.
        let mut work = Countdown { left: 3 };
        let mut calls = 0;
        while !work.stopped() {
            assert_eq!(run_steps(&mut work, || u64::MAX, 50_000), 1);
            calls += 1;
            assert!(calls <= 3, "the work never ends");
        }
        assert_eq!(calls, 3);
    }

    #[test]
    fn steps_continue_while_the_budget_lasts_and_stop_when_it_is_spent() {
        let mut work = Countdown { left: 100 };
        let mut now = 0;
        // Each clock read finds 10 ns more spent: steps until 50 ns are spent.
        let taken = run_steps(&mut work, || {
            now += 10;
            now
        }, 50);
        assert_eq!(taken, 5);
        assert_eq!(work.left, 95);
    }

    #[test]
    fn stopped_work_takes_no_further_step() {
        let mut work = Countdown { left: 2 };
        assert_eq!(run_steps(&mut work, || 0, u64::MAX), 2);
        assert!(work.stopped());
    }
}
