//! TSC and crystal frequencies as CPUID states them (leaves 0x15 and 0x16), when it does.
//!
//! Read once at boot by [`CpuInfo::read`](super::CpuInfo::read). These are hints: the
//! timer code still calibrates when they are absent, and nothing here measures anything.

use super::{leaf, CpuidSource, Leaves};

/// Frequencies CPUID reports; each is `None` when the CPU leaves it at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockInfo {
    /// Leaf 0x15: crystal × numerator / denominator, when all three are given.
    pub tsc_hz: Option<u64>,
    /// Leaf 0x15 ECX: the core crystal clock.
    pub crystal_hz: Option<u32>,
    /// Leaf 0x16 EAX: processor base frequency, close to the TSC rate on most Intel parts.
    pub base_mhz: Option<u16>,
}

impl ClockInfo {
    pub(crate) fn decode<S: CpuidSource + ?Sized>(leaves: &Leaves<'_, S>) -> ClockInfo {
        let tsc = leaves.get(leaf::TSC_CRYSTAL, 0).unwrap_or_default();
        let crystal_hz = Some(tsc.ecx).filter(|&hz| hz != 0);
        let (denominator, numerator) = (u64::from(tsc.eax), u64::from(tsc.ebx));
        let tsc_hz = crystal_hz
            .filter(|_| denominator != 0 && numerator != 0)
            .map(|hz| u64::from(hz) * numerator / denominator);
        let base_mhz = leaves
            .get(leaf::FREQUENCY, 0)
            .map(|r| r.eax as u16)
            .filter(|&mhz| mhz != 0);
        ClockInfo {
            tsc_hz,
            crystal_hz,
            base_mhz,
        }
    }
}
