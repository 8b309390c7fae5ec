//! The `IA32_APIC_BASE` MSR: decoding it, and the writes that move a local APIC into the
//! requested mode.
//!
//! The hypervisor reads it (through [`read_apic_base`]) to learn the physical address of the
//! xAPIC page it must map; [`crate::local::LocalApic::enable`] uses `mode_switch_writes` to
//! enable the APIC. The decision is pure and host-tested; this module never writes the MSR
//! itself, and never leaves x2APIC mode (that would need a full disable first).

use crate::consts::lapic::{
    APIC_BASE_ADDR_MASK, APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, MSR_APIC_BASE,
};
use crate::lapic_regs;
use crate::local::ApicError;
use crate::ApicMode;

/// A decoded value of `IA32_APIC_BASE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicBase(pub u64);

impl ApicBase {
    /// Physical address of the xAPIC MMIO page.
    pub const fn phys_base(self) -> u64 {
        self.0 & APIC_BASE_ADDR_MASK
    }

    /// Whether this CPU is the boot processor.
    pub const fn is_bsp(self) -> bool {
        self.0 & APIC_BASE_BSP != 0
    }

    /// Whether the APIC is globally enabled (EN).
    pub const fn is_enabled(self) -> bool {
        self.0 & APIC_BASE_EN != 0
    }

    /// Whether x2APIC mode is on (EXTD).
    pub const fn is_x2apic(self) -> bool {
        self.0 & APIC_BASE_EXTD != 0
    }
}

/// Reads `IA32_APIC_BASE` of the current CPU.
///
/// # Safety
///
/// Must run at CPL 0 on a CPU with a local APIC (every x86_64 CPU has one).
pub unsafe fn read_apic_base() -> ApicBase {
    // SAFETY: the caller guarantees CPL 0; IA32_APIC_BASE exists on every x86_64 CPU.
    ApicBase(unsafe { lapic_regs::read_msr(MSR_APIC_BASE) })
}

/// The `IA32_APIC_BASE` values to write, in order, to reach `mode` from `current`.
///
/// Legal transitions only: disabled -> xAPIC -> x2APIC, each step one write. Returns no writes
/// when the APIC already is in `mode`.
pub(crate) fn mode_switch_writes(
    current: ApicBase,
    mode: ApicMode,
) -> Result<[Option<u64>; 2], ApicError> {
    if current.is_x2apic() && !current.is_enabled() {
        return Err(ApicError::InvalidApicBaseState(current.0));
    }
    let xapic = (current.0 & !APIC_BASE_EXTD) | APIC_BASE_EN;
    let to_xapic = (!current.is_enabled()).then_some(xapic);
    match mode {
        ApicMode::XApic if current.is_x2apic() => Err(ApicError::X2ApicAlreadyEnabled),
        ApicMode::XApic => Ok([to_xapic, None]),
        ApicMode::X2Apic if current.is_x2apic() => Ok([None, None]),
        ApicMode::X2Apic => Ok([to_xapic, Some(xapic | APIC_BASE_EXTD)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHYS: u64 = 0xFEE0_0000;
    const BSP: u64 = APIC_BASE_BSP;
    const EN: u64 = APIC_BASE_EN;
    const EXTD: u64 = APIC_BASE_EXTD;

    #[test]
    fn decodes_fields() {
        let b = ApicBase(PHYS | BSP | EN);
        assert_eq!(b.phys_base(), PHYS);
        assert!(b.is_bsp() && b.is_enabled() && !b.is_x2apic());
        let ap = ApicBase(0x1_2345_6000 | EN | EXTD | 0xFFF0_0000_0000_0000);
        assert_eq!(
            ap.phys_base(),
            0x1_2345_6000,
            "reserved high bits are not address"
        );
        assert!(!ap.is_bsp() && ap.is_x2apic());
    }

    #[test]
    fn enabled_xapic_needs_no_write() {
        let writes = mode_switch_writes(ApicBase(PHYS | BSP | EN), ApicMode::XApic).unwrap();
        assert_eq!(writes, [None, None]);
    }

    #[test]
    fn disabled_apic_is_enabled_keeping_base_and_bsp() {
        let writes = mode_switch_writes(ApicBase(PHYS | BSP), ApicMode::XApic).unwrap();
        assert_eq!(writes, [Some(PHYS | BSP | EN), None]);
    }

    #[test]
    fn xapic_to_x2apic_is_one_write() {
        let writes = mode_switch_writes(ApicBase(PHYS | EN), ApicMode::X2Apic).unwrap();
        assert_eq!(writes, [None, Some(PHYS | EN | EXTD)]);
    }

    #[test]
    fn disabled_to_x2apic_goes_through_xapic() {
        let writes = mode_switch_writes(ApicBase(PHYS), ApicMode::X2Apic).unwrap();
        assert_eq!(writes, [Some(PHYS | EN), Some(PHYS | EN | EXTD)]);
    }

    #[test]
    fn x2apic_stays_without_writes() {
        let writes = mode_switch_writes(ApicBase(PHYS | EN | EXTD), ApicMode::X2Apic).unwrap();
        assert_eq!(writes, [None, None]);
    }

    #[test]
    fn refuses_to_leave_x2apic() {
        let err = mode_switch_writes(ApicBase(PHYS | EN | EXTD), ApicMode::XApic);
        assert_eq!(err, Err(ApicError::X2ApicAlreadyEnabled));
    }

    #[test]
    fn rejects_the_invalid_extd_without_en_state() {
        for mode in [ApicMode::XApic, ApicMode::X2Apic] {
            let err = mode_switch_writes(ApicBase(PHYS | EXTD), mode);
            assert_eq!(err, Err(ApicError::InvalidApicBaseState(PHYS | EXTD)));
        }
    }
}
