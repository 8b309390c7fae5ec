//! One vCPU's BVT accounting: its actual virtual time, warp and warp limits, and the portable
//! form ([`VcpuState`]) in which it travels from one CPU's run queue to another's.
//!
//! Only the run queue that holds the vCPU calls these; they are pure arithmetic on times
//! passed in. Nothing here may compare virtual times of two different CPUs: a departing vCPU
//! keeps its lag behind its queue's SVT, never its raw `A`.

use crate::params::{BvtParams, NO_WARP_LIMIT};

/// A vCPU's warp: whether it is warped now, how much of its warp limit it has used, and when
/// it last stopped running warped.
///
/// Blocking only pauses a warp: the limit `L` bounds the warped run time summed over the
/// vCPU's warped stretches, and only `U` of unwarped time (asleep, or runnable past the
/// limit) renews it. A vCPU preempted in the middle of a wake-up that then finishes late and
/// sleeps briefly therefore wakes warped again, while one that sleeps briefly between long
/// runs still loses its warp once the runs add up to `L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Warp {
    warped: bool,
    /// Real ns run warped since the limit was last renewed.
    used_ns: u64,
    /// System time the vCPU last stopped running warped (`None`: never warped, so `U` is met).
    unwarped_at_ns: Option<u64>,
}

impl Warp {
    const OFF: Warp = Warp { warped: false, used_ns: 0, unwarped_at_ns: None };

    /// Whether the vCPU has been unwarped for at least `unwarp_req_ns` at `now_ns`.
    fn requirement_met(&self, unwarp_req_ns: u64, now_ns: u64) -> bool {
        self.unwarped_at_ns.is_none_or(|since| now_ns.saturating_sub(since) >= unwarp_req_ns)
    }

    /// Whether `used_ns` has reached the limit.
    fn limit_used(&self, warp_limit_ns: u64) -> bool {
        warp_limit_ns != NO_WARP_LIMIT && self.used_ns >= warp_limit_ns
    }
}

/// A vCPU's BVT accounting while it sits on a run queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    params: BvtParams,
    /// Actual virtual time `A`, vns of this queue's virtual clock.
    a: u64,
    /// Run ns not yet turned into vns (always below the weight).
    remainder_ns: u64,
    warp: Warp,
    /// Real ns of its wake-up boost left: it woke from behind SVT (it had used less than its
    /// share while asleep), and while it has run less than the boost since, it takes the CPU
    /// from an unboosted running vCPU without the context switch allowance (see the crate
    /// documentation, "Wake-up boost"). 0: not boosted.
    boost_left_ns: u64,
}

impl Account {
    /// Parameters in force.
    pub(crate) fn params(&self) -> BvtParams {
        self.params
    }

    /// Actual virtual time `A`.
    pub(crate) fn actual(&self) -> u64 {
        self.a
    }

    /// Whether the vCPU is warped now.
    pub(crate) fn warped(&self) -> bool {
        self.warp.warped
    }

    /// Whether the vCPU woke from behind SVT and has not yet run its boost out.
    pub(crate) fn boosted(&self) -> bool {
        self.boost_left_ns > 0
    }

    /// Real ns of its boost left (0: not boosted).
    pub(crate) fn boost_left_ns(&self) -> u64 {
        self.boost_left_ns
    }

    /// Effective virtual time `E = A - W` while warped, else `A`.
    pub(crate) fn effective(&self) -> i128 {
        let bias = if self.warp.warped { self.params.warp_vns } else { 0 };
        i128::from(self.a) - i128::from(bias)
    }

    /// Charges `ran_ns` of running that ended at `now_ns`: `A` advances by `ran_ns / weight`
    /// (remainder carried), and a warped vCPU that has used up its warp limit is unwarped.
    pub(crate) fn charge(&mut self, ran_ns: u64, now_ns: u64) {
        let weight = u128::from(self.params.weight.get());
        let total = u128::from(self.remainder_ns) + u128::from(ran_ns);
        let advance = u64::try_from(total / weight).unwrap_or(u64::MAX);
        self.a = self.a.saturating_add(advance);
        self.remainder_ns = u64::try_from(total % weight).expect("a remainder is below a u32 weight");
        self.boost_left_ns = self.boost_left_ns.saturating_sub(ran_ns);
        if self.warp.warped {
            self.warp.used_ns = self.warp.used_ns.saturating_add(ran_ns);
            if self.warp.limit_used(self.params.warp_limit_ns) {
                self.unwarp(now_ns);
            }
        }
    }

    /// The vCPU becomes runnable at `now_ns` on a queue whose SVT is `svt`: it earns no
    /// credit for sleeping (`A = max(A, SVT)`), is boosted for its next `boost_ns` of running
    /// if it was behind SVT (it used less than its share while asleep), and it warps if warping is enabled and it has
    /// warp time left, after renewing its limit if it has been unwarped for at least `U`.
    pub(crate) fn wake(&mut self, svt: u64, boost_ns: u64, now_ns: u64) {
        self.boost_left_ns = if self.a < svt { boost_ns } else { 0 };
        self.a = self.a.max(svt);
        if !self.params.warp_enabled() || self.warp.warped {
            return;
        }
        if self.warp.requirement_met(self.params.unwarp_req_ns, now_ns) {
            self.warp.used_ns = 0;
        }
        if !self.warp.limit_used(self.params.warp_limit_ns) {
            self.warp.warped = true;
        }
    }

    /// Stops the warp (if any) at `now_ns`, which starts the unwarp requirement's clock. The
    /// warp time used is kept: only `U` of unwarped time renews the limit.
    pub(crate) fn unwarp(&mut self, now_ns: u64) {
        if self.warp.warped {
            self.warp.warped = false;
            self.warp.unwarped_at_ns = Some(now_ns);
        }
    }

    /// Puts new parameters in force at `now_ns`. A changed weight drops the sub-vns
    /// remainder; a warp that is disabled or whose new limit is already used up ends.
    pub(crate) fn set_params(&mut self, params: BvtParams, now_ns: u64) {
        if params.weight != self.params.weight {
            self.remainder_ns = 0;
        }
        self.params = params;
        if !params.warp_enabled() || self.warp.limit_used(params.warp_limit_ns) {
            self.unwarp(now_ns);
        }
    }

    /// Real ns of running after which `A` will have advanced by at least `vns`.
    pub(crate) fn ns_to_advance(&self, vns: u64) -> u64 {
        let needed = u128::from(vns) * u128::from(self.params.weight.get());
        u64::try_from(needed.saturating_sub(u128::from(self.remainder_ns))).unwrap_or(u64::MAX)
    }

    /// Real ns the vCPU may still run warped (`None`: not warped, or no limit).
    pub(crate) fn warp_left_ns(&self) -> Option<u64> {
        let limit = self.params.warp_limit_ns;
        (self.warp.warped && limit != NO_WARP_LIMIT).then(|| limit.saturating_sub(self.warp.used_ns))
    }

    /// The portable state of this vCPU leaving a queue whose SVT is `svt`.
    pub(crate) fn depart(&self, svt: u64, runnable: bool) -> VcpuState {
        VcpuState {
            params: self.params,
            lag_vns: self.a.saturating_sub(svt),
            remainder_ns: self.remainder_ns,
            warp: self.warp,
            runnable,
        }
    }

    /// The accounting of a vCPU arriving on a queue whose SVT is `svt`.
    pub(crate) fn arrive(state: &VcpuState, svt: u64) -> Account {
        Account {
            params: state.params,
            a: svt.saturating_add(state.lag_vns),
            remainder_ns: state.remainder_ns,
            warp: state.warp,
            boost_left_ns: 0,
        }
    }
}

/// A vCPU's BVT state between two run queues: what [`RunQueue::remove`](crate::RunQueue::remove)
/// returns and [`RunQueue::admit`](crate::RunQueue::admit) takes. Opaque on purpose: it holds
/// the vCPU's lag behind the SVT of the queue it left, which only means something to the
/// next queue's `admit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    params: BvtParams,
    /// `A - SVT` on the queue left (0 when the vCPU was behind, e.g. asleep).
    lag_vns: u64,
    remainder_ns: u64,
    warp: Warp,
    runnable: bool,
}

impl VcpuState {
    /// The state of a vCPU that has never run: blocked, no lag, never warped.
    pub(crate) fn fresh(params: BvtParams) -> VcpuState {
        VcpuState { params, lag_vns: 0, remainder_ns: 0, warp: Warp::OFF, runnable: false }
    }

    /// The vCPU's parameters.
    pub fn params(&self) -> BvtParams {
        self.params
    }

    /// Whether the vCPU was runnable when it left (it arrives runnable too).
    pub fn is_runnable(&self) -> bool {
        self.runnable
    }

    /// How far ahead of its old queue's SVT the vCPU was, in vns.
    pub fn lag_vns(&self) -> u64 {
        self.lag_vns
    }

    /// Whether the vCPU was warped when it left (it keeps its warp).
    pub fn is_warped(&self) -> bool {
        self.warp.warped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::num::NonZeroU32;

    fn account(weight: u32, warp_vns: u64, warp_limit_ns: u64, unwarp_req_ns: u64) -> Account {
        let weight = NonZeroU32::new(weight).unwrap();
        let params = BvtParams { weight, warp_vns, warp_limit_ns, unwarp_req_ns, pinned: false };
        Account::arrive(&VcpuState::fresh(params), 0)
    }

    #[test]
    fn only_a_vcpu_that_slept_behind_svt_wakes_boosted_for_its_boost_of_running() {
        let mut acc = account(1, 0, 0, 0);
        acc.charge(100, 0);
        acc.wake(50, 30, 0);
        assert!(!acc.boosted(), "ahead of SVT: it used more than its share");
        assert_eq!(acc.actual(), 100);
        acc.wake(100, 30, 0);
        assert!(!acc.boosted(), "level with SVT is not behind it");
        acc.wake(150, 30, 0);
        assert!(acc.boosted(), "behind SVT");
        assert_eq!(acc.actual(), 150, "and no credit for it");
        let moved = Account::arrive(&acc.depart(0, true), 0);
        assert!(!moved.boosted(), "an arrival is not a wake-up");
        acc.charge(20, 0);
        assert_eq!(acc.boost_left_ns(), 10);
        acc.charge(10, 0);
        assert!(!acc.boosted(), "run out");
        let mut off = account(1, 0, 0, 0);
        off.wake(150, 0, 0);
        assert!(!off.boosted(), "no boost when boosts are off");
    }

    #[test]
    fn charging_divides_by_weight_and_carries_the_remainder() {
        let mut acc = account(3, 0, 0, 0);
        for _ in 0..10 {
            acc.charge(1, 0);
        }
        assert_eq!(acc.actual(), 3, "10 ns at weight 3 is floor(10 / 3) vns");
        acc.charge(2, 0);
        assert_eq!(acc.actual(), 4, "the carried 1 ns plus 2 ns make one more vns");
        assert_eq!(acc.ns_to_advance(1), 3);
        acc.charge(1, 0);
        assert_eq!(acc.ns_to_advance(1), 2, "1 ns is already carried");
    }

    #[test]
    fn hostile_charges_saturate_instead_of_wrapping() {
        let mut acc = account(1, 0, 0, 0);
        acc.charge(u64::MAX, 0);
        acc.charge(u64::MAX, 0);
        assert_eq!(acc.actual(), u64::MAX);
        assert_eq!(acc.ns_to_advance(u64::MAX), u64::MAX);
        let mut heavy = account(u32::MAX, 0, 0, 0);
        heavy.charge(u64::MAX, 0);
        assert_eq!(heavy.actual(), u64::MAX / u64::from(u32::MAX));
    }

    #[test]
    fn waking_raises_a_to_svt_but_never_lowers_it() {
        let mut acc = account(1, 0, 0, 0);
        acc.wake(1_000, 0, 0);
        assert_eq!(acc.actual(), 1_000);
        acc.charge(500, 0);
        acc.wake(10, 0, 0);
        assert_eq!(acc.actual(), 1_500);
    }

    #[test]
    fn warp_lowers_effective_time_until_its_limit_is_used() {
        let mut acc = account(1, 700, 100, 0);
        acc.wake(1_000, 0, 0);
        assert!(acc.warped());
        assert_eq!(acc.effective(), 300);
        assert_eq!(acc.warp_left_ns(), Some(100));
        acc.charge(60, 60);
        assert_eq!(acc.warp_left_ns(), Some(40));
        acc.charge(40, 100);
        assert!(!acc.warped());
        assert_eq!(acc.effective(), 1_100);
        assert_eq!(acc.warp_left_ns(), None);
    }

    #[test]
    fn the_unwarp_requirement_counts_from_the_end_of_the_last_warp() {
        let mut acc = account(1, 700, 100, 1_000);
        acc.wake(0, 0, 0);
        assert!(acc.warped(), "a vCPU that never warped meets U");
        acc.charge(100, 100);
        assert!(!acc.warped(), "L used up at 100");
        acc.wake(0, 0, 1_099);
        assert!(!acc.warped(), "999 ns unwarped is short of U");
        acc.wake(0, 0, 1_100);
        assert!(acc.warped());
        assert_eq!(acc.warp_left_ns(), Some(100), "U of unwarped time renewed the limit");
    }

    #[test]
    fn a_short_sleep_pauses_the_warp_without_renewing_its_limit() {
        let mut acc = account(1, 700, 100, 1_000);
        acc.wake(0, 0, 0);
        acc.charge(60, 60);
        acc.unwarp(60); // blocked
        acc.wake(0, 0, 70);
        assert!(acc.warped(), "10 ns asleep: the warp goes on");
        assert_eq!(acc.warp_left_ns(), Some(40), "and so does its limit");
        acc.charge(30, 100);
        acc.unwarp(100);
        acc.wake(0, 0, 1_100);
        assert_eq!(acc.warp_left_ns(), Some(100), "U asleep renews it");
    }

    #[test]
    fn without_a_limit_the_unwarp_requirement_has_nothing_to_renew() {
        let mut acc = account(1, 700, NO_WARP_LIMIT, 1_000);
        acc.wake(0, 0, 0);
        acc.charge(5_000, 5_000);
        acc.unwarp(5_000);
        acc.wake(0, 0, 5_001);
        assert!(acc.warped());
        assert_eq!(acc.warp_left_ns(), None);
    }

    #[test]
    fn set_params_ends_a_disabled_or_used_up_warp() {
        let mut acc = account(2, 700, 0, 0);
        acc.wake(0, 0, 0);
        acc.charge(50, 50);
        acc.set_params(BvtParams { warp_limit_ns: 50, ..acc.params() }, 60);
        assert!(!acc.warped(), "the new limit is already used");
        acc.wake(0, 0, 70);
        acc.set_params(BvtParams { warp_vns: 0, ..acc.params() }, 80);
        assert!(!acc.warped());
        acc.charge(1, 80);
        acc.set_params(BvtParams::DEFAULT, 90);
        assert_eq!(acc.ns_to_advance(1), 1, "the remainder of the old weight is dropped");
    }

    #[test]
    fn departure_keeps_the_lag_not_the_raw_virtual_time() {
        let mut acc = account(1, 0, 0, 0);
        acc.wake(5_000, 0, 0);
        acc.charge(300, 0);
        let state = acc.depart(5_100, true);
        assert_eq!(state.lag_vns(), 200);
        assert!(state.is_runnable());
        assert_eq!(Account::arrive(&state, 90).actual(), 290);
        assert_eq!(acc.depart(9_999, false).lag_vns(), 0, "behind SVT travels as no lag");
    }
}
