//! The knobs of the scheduler: a vCPU's BVT parameters, a run queue's configuration, the CPU
//! id they are keyed by, and the constants with meaning, all in one place.
//!
//! The hypervisor builds these (from its command line or domain 0's control interface) and
//! hands them to a [`RunQueue`](crate::RunQueue). Nothing here holds state or does work.

use core::num::NonZeroU32;

/// Default context switch allowance `C`: a rival must be ahead by more than `C / w` vns (for
/// the running vCPU's weight `w`) to take the CPU away. 5 ms, as in Xen's BVT.
pub const DEFAULT_CTX_SWITCH_ALLOWANCE_NS: u64 = 5_000_000;

/// Default minimum charging unit: no slice is shorter than 100 us.
pub const DEFAULT_MCU_NS: u64 = 100_000;

/// Default wake-up boost: a vCPU that woke from behind SVT goes ahead of an unboosted
/// running vCPU, without its allowance, for its first 500 us of running: a wake-up of an idle
/// domain under TCG takes about 100 us, so that the boost covers it with room for a delayed
/// one, and no boost lasts longer than a tenth of the allowance (see "Wake-up boost" in the
/// crate documentation).
pub const DEFAULT_WAKE_BOOST_NS: u64 = 500_000;

/// Default shortest sleep that earns a boost: 1 ms. A vCPU that wakes thousands of times a
/// second, each time within its share, would otherwise preempt the running vCPU at each
/// wake-up and make it pay two switches each time; from 1 ms of sleep on, a boost preempts
/// any vCPU at most once per millisecond per waking vCPU (a domain's idle wake-ups, 100 ms
/// apart, are boosted; a 1 ms ping's answers are not).
pub const DEFAULT_BOOST_MIN_SLEEP_NS: u64 = 1_000_000;

/// Default steal threshold: a vCPU is given to an idle CPU only once it has waited 1 ms
/// (one that waits less would run here sooner than the hand-over takes, and stays cache-hot).
pub const DEFAULT_STEAL_MIN_WAIT_NS: u64 = 1_000_000;

/// `warp_limit_ns` meaning "no limit": the warp lasts until the vCPU blocks.
pub const NO_WARP_LIMIT: u64 = 0;

/// A CPU is worth stealing from when this many vCPUs are runnable on it (the running one
/// counts): one runs, at least one waits.
pub const STEAL_MIN_LOAD: u32 = 2;

/// BVT weight per unit of a domain's weight, before it is split among the domain's vCPUs
/// ([`BvtParams::for_domain_vcpu`]): large enough that a split among up to 32 vCPUs rounds
/// by under 0.1%, small enough that weights up to 4 million fit a `u32`.
pub const WEIGHT_SCALE: u32 = 1 << 10;

/// A CPU's logical index, as the hypervisor numbers them (dense, 0 is the boot CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub u32);

/// One vCPU's BVT parameters; see the crate documentation for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BvtParams {
    /// Share of the CPU relative to the other vCPUs of its queue: `A` advances by
    /// `run_ns / weight`.
    pub weight: NonZeroU32,
    /// Warp `W` in virtual ns: while warped, `E = A - W`. 0 disables warping.
    pub warp_vns: u64,
    /// Warp time limit `L`: real ns a vCPU may run warped, summed over its warped stretches,
    /// before it is unwarped ([`NO_WARP_LIMIT`]: no limit).
    pub warp_limit_ns: u64,
    /// Unwarp requirement `U`: real ns a vCPU must have been unwarped (asleep, or runnable
    /// past its limit) for its warp limit to be renewed.
    pub unwarp_req_ns: u64,
    /// Hard affinity: never given to another CPU that steals work.
    pub pinned: bool,
}

impl BvtParams {
    /// Weight 1, no warp.
    pub const DEFAULT: BvtParams = BvtParams {
        weight: NonZeroU32::MIN,
        warp_vns: 0,
        warp_limit_ns: NO_WARP_LIMIT,
        unwarp_req_ns: 0,
        pinned: false,
    };

    /// The default parameters with `weight`.
    pub const fn weighted(weight: NonZeroU32) -> BvtParams {
        BvtParams { weight, ..BvtParams::DEFAULT }
    }

    /// The parameters of each of a domain's `vcpus` vCPUs that are up, from the domain's
    /// own (`weight`, warp `W`, limit `L`, requirement `U`, as domain 0 sets them): the
    /// domain's weight is split evenly among them, as Xen's credit scheduler divides a
    /// domain's credit among its vCPUs, so that its share of the machine does not grow with
    /// its vCPU count. Weights are in units of 1/[`WEIGHT_SCALE`] (clamped to `1..=u32::MAX`),
    /// and the warp in the virtual ns of those units (`W / WEIGHT_SCALE`), so that a
    /// one-vCPU domain is scheduled exactly as with its weight and warp taken as they are.
    pub fn for_domain_vcpu(weight: u32, warp_ns: u64, warp_limit_ns: u64, unwarp_req_ns: u64, pinned: bool, vcpus: u32) -> BvtParams {
        let split = u64::from(weight) * u64::from(WEIGHT_SCALE) / u64::from(vcpus.max(1));
        let weight = NonZeroU32::new(split.clamp(1, u64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        BvtParams { weight, warp_vns: warp_ns / u64::from(WEIGHT_SCALE), warp_limit_ns, unwarp_req_ns, pinned }
    }

    /// Whether this vCPU is latency-sensitive: it warps on wake-up.
    pub const fn warp_enabled(&self) -> bool {
        self.warp_vns > 0
    }
}

impl Default for BvtParams {
    fn default() -> BvtParams {
        BvtParams::DEFAULT
    }
}

/// A run queue's configuration (the same on every CPU in practice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Context switch allowance `C`, real ns (converted through the running vCPU's weight).
    pub ctx_switch_allowance_ns: u64,
    /// Minimum charging unit: the shortest slice handed out, real ns.
    pub mcu_ns: u64,
    /// A waiting vCPU may be stolen only after it has waited this long, real ns.
    pub steal_min_wait_ns: u64,
    /// A vCPU that wakes from behind SVT beats an unboosted running one without its
    /// allowance for its first this many real ns of running (see the crate documentation,
    /// "Wake-up boost"); 0: no boosts.
    pub wake_boost_ns: u64,
    /// Only a vCPU that slept at least this long, real ns, wakes boosted.
    pub boost_min_sleep_ns: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ctx_switch_allowance_ns: DEFAULT_CTX_SWITCH_ALLOWANCE_NS,
            mcu_ns: DEFAULT_MCU_NS,
            steal_min_wait_ns: DEFAULT_STEAL_MIN_WAIT_NS,
            wake_boost_ns: DEFAULT_WAKE_BOOST_NS,
            boost_min_sleep_ns: DEFAULT_BOOST_MIN_SLEEP_NS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_weight_is_split_among_its_vcpus() {
        let one = BvtParams::for_domain_vcpu(3, 50_000_000, 7, 9, true, 1);
        assert_eq!(one.weight.get(), 3 * WEIGHT_SCALE);
        assert_eq!(one.warp_vns, 50_000_000 / u64::from(WEIGHT_SCALE));
        assert_eq!((one.warp_limit_ns, one.unwarp_req_ns, one.pinned), (7, 9, true));
        let two = BvtParams::for_domain_vcpu(3, 0, 0, 0, false, 2);
        assert_eq!(two.weight.get() * 2, one.weight.get(), "two vCPUs: half each");
        assert_eq!(BvtParams::for_domain_vcpu(1, 0, 0, 0, false, 0).weight.get(), WEIGHT_SCALE, "no vCPU up counts as one");
        assert_eq!(BvtParams::for_domain_vcpu(u32::MAX, 0, 0, 0, false, 1).weight.get(), u32::MAX, "clamped");
        assert_eq!(BvtParams::for_domain_vcpu(0, 0, 0, 0, false, 32).weight.get(), 1, "never zero");
        let thirds = BvtParams::for_domain_vcpu(1, 0, 0, 0, false, 3).weight.get();
        assert!((f64::from(thirds) * 3.0 / f64::from(WEIGHT_SCALE) - 1.0).abs() < 0.001);
    }

    #[test]
    fn defaults_are_weight_one_without_warp() {
        let params = BvtParams::default();
        assert_eq!(params.weight.get(), 1);
        assert!(!params.warp_enabled());
        assert_eq!(params.warp_limit_ns, NO_WARP_LIMIT);
        let heavy = BvtParams::weighted(NonZeroU32::new(7).unwrap());
        assert_eq!(heavy.weight.get(), 7);
        assert_eq!(heavy.warp_vns, 0);
        assert!(BvtParams { warp_vns: 1, ..params }.warp_enabled());
    }

    #[test]
    fn default_config_matches_the_constants() {
        let config = Config::default();
        assert_eq!(config.ctx_switch_allowance_ns, DEFAULT_CTX_SWITCH_ALLOWANCE_NS);
        assert_eq!(config.mcu_ns, DEFAULT_MCU_NS);
        assert_eq!(config.steal_min_wait_ns, DEFAULT_STEAL_MIN_WAIT_NS);
        assert_eq!(config.wake_boost_ns, DEFAULT_WAKE_BOOST_NS);
    }
}
