//! Tiny typed accessors for the local APIC registers (xAPIC MMIO or x2APIC MSRs) and the two
//! other MSRs this crate touches.
//!
//! Only [`crate::local`] and [`crate::apic_base`] call these. The register map is pure and
//! tested; each hardware access is one volatile load/store or one RDMSR/WRMSR. Nothing here
//! decides what to write, and nothing here may be used before the APIC is in the mode the
//! accessor was built for.

use core::ptr;
use x86_64::registers::model_specific::Msr;

use crate::consts::lapic::{
    REG_EOI, REG_ESR, REG_ICR_HIGH, REG_ICR_LOW, REG_ID, REG_LVT_ERROR, REG_LVT_LINT0,
    REG_LVT_LINT1, REG_LVT_TIMER, REG_SVR, REG_TIMER_CURRENT, REG_TIMER_DIVIDE, REG_TIMER_INITIAL,
    REG_TPR, X2APIC_MSR_BASE,
};
use crate::ApicMode;

/// The 32-bit local APIC registers this crate uses (the ICR has its own accessors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reg {
    Id,
    Tpr,
    Eoi,
    Svr,
    Esr,
    LvtTimer,
    LvtLint0,
    LvtLint1,
    LvtError,
    TimerInitial,
    TimerCurrent,
    TimerDivide,
}

impl Reg {
    /// Byte offset in the xAPIC MMIO page.
    pub(crate) const fn xapic_offset(self) -> usize {
        match self {
            Reg::Id => REG_ID,
            Reg::Tpr => REG_TPR,
            Reg::Eoi => REG_EOI,
            Reg::Svr => REG_SVR,
            Reg::Esr => REG_ESR,
            Reg::LvtTimer => REG_LVT_TIMER,
            Reg::LvtLint0 => REG_LVT_LINT0,
            Reg::LvtLint1 => REG_LVT_LINT1,
            Reg::LvtError => REG_LVT_ERROR,
            Reg::TimerInitial => REG_TIMER_INITIAL,
            Reg::TimerCurrent => REG_TIMER_CURRENT,
            Reg::TimerDivide => REG_TIMER_DIVIDE,
        }
    }

    /// Index of the x2APIC MSR for this register.
    pub(crate) const fn x2apic_msr(self) -> u32 {
        x2apic_msr_for(self.xapic_offset())
    }
}

/// x2APIC MSR index of the register at xAPIC offset `offset`.
const fn x2apic_msr_for(offset: usize) -> u32 {
    X2APIC_MSR_BASE + (offset >> 4) as u32
}

/// Register access for the current CPU's local APIC in one mode. Only the unsafe
/// constructors make one, so holding a value proves their contract was accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LapicRegs(Access);

#[derive(Clone, Copy, Debug)]
enum Access {
    X2Apic,
    XApic { base: u64 },
}

impl LapicRegs {
    /// Access through the x2APIC MSRs.
    ///
    /// # Safety
    ///
    /// Must be used at CPL 0, and only on CPUs whose local APIC is in x2APIC mode.
    pub(crate) unsafe fn x2apic() -> LapicRegs {
        LapicRegs(Access::X2Apic)
    }

    /// Access through the xAPIC page mapped at virtual address `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the virtual address of the xAPIC page, mapped uncached, readable and
    /// writable, for as long as the value (or a copy) is used; it must be used only on CPUs
    /// whose local APIC is in xAPIC mode.
    pub(crate) unsafe fn xapic(base: u64) -> LapicRegs {
        LapicRegs(Access::XApic { base })
    }

    /// The mode these accessors were built for.
    pub(crate) fn mode(self) -> ApicMode {
        match self.0 {
            Access::X2Apic => ApicMode::X2Apic,
            Access::XApic { .. } => ApicMode::XApic,
        }
    }

    /// Reads a 32-bit register.
    pub(crate) fn read(self, reg: Reg) -> u32 {
        match self.0 {
            // SAFETY: `x2apic`'s contract: CPL 0, x2APIC mode on; the MSR exists in that mode.
            // x2APIC registers hold 32 bits in the low half of the MSR.
            Access::X2Apic => unsafe { read_msr(reg.x2apic_msr()) as u32 },
            // SAFETY: `xapic`'s contract: `base` maps the xAPIC page uncached; the offset is a
            // 16-byte-aligned register inside that page.
            Access::XApic { base } => unsafe {
                ptr::read_volatile((base as usize + reg.xapic_offset()) as *const u32)
            },
        }
    }

    /// Writes a 32-bit register.
    pub(crate) fn write(self, reg: Reg, value: u32) {
        match self.0 {
            // SAFETY: as in `read`; writing an APIC register has no effect on memory.
            Access::X2Apic => unsafe { write_msr(reg.x2apic_msr(), u64::from(value)) },
            // SAFETY: as in `read`.
            Access::XApic { base } => unsafe {
                ptr::write_volatile((base as usize + reg.xapic_offset()) as *mut u32, value)
            },
        }
    }

    /// Writes the interrupt command register, which sends the IPI it describes.
    ///
    /// `icr` is the 64-bit image for this mode (see [`crate::icr`]). The caller keeps
    /// interrupts off so that no handler writes the xAPIC high half in between.
    pub(crate) fn write_icr(self, icr: u64) {
        match self.0 {
            Access::X2Apic => {
                // WRMSR to x2APIC registers is not serializing: make the sender's earlier
                // stores visible before the IPI can arrive.
                store_fence_before_wrmsr();
                // SAFETY: as in `read`; the x2APIC ICR is one 64-bit MSR.
                unsafe { write_msr(x2apic_msr_for(REG_ICR_LOW), icr) }
            }
            Access::XApic { base } => {
                let high = (base as usize + REG_ICR_HIGH) as *mut u32;
                let low = (base as usize + REG_ICR_LOW) as *mut u32;
                // SAFETY: as in `read`. The high half (destination) must be written first:
                // the write to the low half sends.
                unsafe {
                    ptr::write_volatile(high, (icr >> 32) as u32);
                    ptr::write_volatile(low, icr as u32);
                }
            }
        }
    }

    /// Reads the low half of the ICR (xAPIC: holds the delivery-status bit).
    pub(crate) fn read_icr_low(self) -> u32 {
        match self.0 {
            // SAFETY: as in `read`.
            Access::X2Apic => unsafe { read_msr(x2apic_msr_for(REG_ICR_LOW)) as u32 },
            // SAFETY: as in `read`.
            Access::XApic { base } => unsafe {
                ptr::read_volatile((base as usize + REG_ICR_LOW) as *const u32)
            },
        }
    }
}

/// Orders earlier memory accesses before a following non-serializing WRMSR (MFENCE; LFENCE,
/// as the SDM recommends for x2APIC and TSC-deadline writes).
pub(crate) fn store_fence_before_wrmsr() {
    // SAFETY: fences have no operands and no effect other than ordering.
    unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) }
}

/// Reads an MSR.
///
/// # Safety
///
/// Must run at CPL 0, and `msr` must exist on this CPU in its current mode.
pub(crate) unsafe fn read_msr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).read() }
}

/// Writes an MSR.
///
/// # Safety
///
/// Must run at CPL 0, `msr` must exist and accept `value`, and the write must not break
/// memory safety (the APIC and TSC-deadline MSRs this crate writes cannot).
pub(crate) unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).write(value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x2apic_msr_indices_match_the_sdm_table() {
        assert_eq!(Reg::Id.x2apic_msr(), 0x802);
        assert_eq!(Reg::Tpr.x2apic_msr(), 0x808);
        assert_eq!(Reg::Eoi.x2apic_msr(), 0x80B);
        assert_eq!(Reg::Svr.x2apic_msr(), 0x80F);
        assert_eq!(Reg::Esr.x2apic_msr(), 0x828);
        assert_eq!(x2apic_msr_for(REG_ICR_LOW), 0x830);
        assert_eq!(Reg::LvtTimer.x2apic_msr(), 0x832);
        assert_eq!(Reg::LvtLint0.x2apic_msr(), 0x835);
        assert_eq!(Reg::LvtLint1.x2apic_msr(), 0x836);
        assert_eq!(Reg::LvtError.x2apic_msr(), 0x837);
        assert_eq!(Reg::TimerInitial.x2apic_msr(), 0x838);
        assert_eq!(Reg::TimerCurrent.x2apic_msr(), 0x839);
        assert_eq!(Reg::TimerDivide.x2apic_msr(), 0x83E);
    }

    #[test]
    fn xapic_offsets_are_aligned_and_inside_the_page() {
        let all = [
            Reg::Id,
            Reg::Tpr,
            Reg::Eoi,
            Reg::Svr,
            Reg::Esr,
            Reg::LvtTimer,
            Reg::LvtLint0,
            Reg::LvtLint1,
            Reg::LvtError,
            Reg::TimerInitial,
            Reg::TimerCurrent,
            Reg::TimerDivide,
        ];
        for reg in all {
            let offset = reg.xapic_offset();
            assert_eq!(offset % 16, 0, "{reg:?}");
            assert!(offset < 4096, "{reg:?}");
        }
    }
}
