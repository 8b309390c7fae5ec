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

/// Default steal threshold: a vCPU is given to an idle CPU only once it has waited 1 ms
/// (one that waits less would run here sooner than the hand-over takes, and stays cache-hot).
pub const DEFAULT_STEAL_MIN_WAIT_NS: u64 = 1_000_000;

/// `warp_limit_ns` meaning "no limit": the warp lasts until the vCPU blocks.
pub const NO_WARP_LIMIT: u64 = 0;

/// A CPU is worth stealing from when this many vCPUs are runnable on it (the running one
/// counts): one runs, at least one waits.
pub const STEAL_MIN_LOAD: u32 = 2;

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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ctx_switch_allowance_ns: DEFAULT_CTX_SWITCH_ALLOWANCE_NS,
            mcu_ns: DEFAULT_MCU_NS,
            steal_min_wait_ns: DEFAULT_STEAL_MIN_WAIT_NS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
