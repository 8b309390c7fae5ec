//! Checking a segment descriptor a PV guest puts in its GDT (`set_gdt`,
//! `update_descriptor`), so that no selector it loads can reach ring 0.
//!
//! Pure and host-tested. Rules, after Xen's `check_descriptor` for 64-bit PV guests, made
//! stricter where Xen's extra cases are not needed: non-present descriptors pass as they
//! are; system descriptors (TSS, LDT, gates) are refused; conforming code and code segments
//! with both L and D set are refused; any other code or data segment has its DPL raised to 3
//! (the guest kernel runs in ring 3) and its accessed bit set, so the CPU never writes the
//! descriptor (guest GDT frames are mapped read-only in the hypervisor).

const PRESENT: u64 = 1 << 47;
const DPL_MASK: u64 = 3 << 45;
const CODE_OR_DATA: u64 = 1 << 44;
const CODE: u64 = 1 << 43;
const CONFORMING: u64 = 1 << 42;
const ACCESSED: u64 = 1 << 40;
const LONG_MODE: u64 = 1 << 53;
const DEFAULT_32: u64 = 1 << 54;

/// Why a descriptor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// A TSS, LDT or gate descriptor.
    System,
    /// A conforming code segment (its DPL would not bound the caller's privilege).
    Conforming,
    /// A code segment with both L and D set (reserved).
    LongAndDefault32,
}

/// The descriptor to store for `raw`, or why it is refused.
pub fn check(raw: u64) -> Result<u64, DescriptorError> {
    if raw & PRESENT == 0 {
        return Ok(raw);
    }
    if raw & CODE_OR_DATA == 0 {
        return Err(DescriptorError::System);
    }
    if raw & CODE != 0 {
        if raw & CONFORMING != 0 {
            return Err(DescriptorError::Conforming);
        }
        if raw & LONG_MODE != 0 && raw & DEFAULT_32 != 0 {
            return Err(DescriptorError::LongAndDefault32);
        }
    }
    Ok(raw | DPL_MASK | ACCESSED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_CODE64: u64 = 0x00af_9a00_0000_ffff; // DPL 0, L
    const USER_CODE64: u64 = 0x00af_fa00_0000_ffff; // DPL 3, L
    const DATA_DPL0: u64 = 0x00cf_9200_0000_ffff;

    #[test]
    fn ring0_segments_are_lowered_to_ring3() {
        let fixed = check(KERNEL_CODE64).unwrap();
        assert_eq!(fixed & DPL_MASK, DPL_MASK);
        assert_eq!(fixed & ACCESSED, ACCESSED);
        assert_eq!(fixed & !(DPL_MASK | ACCESSED), KERNEL_CODE64 & !(DPL_MASK | ACCESSED));
        assert_eq!(check(DATA_DPL0).unwrap() & DPL_MASK, DPL_MASK);
    }

    #[test]
    fn ring3_segments_only_gain_the_accessed_bit() {
        assert_eq!(check(USER_CODE64), Ok(USER_CODE64 | ACCESSED));
    }

    #[test]
    fn not_present_descriptors_pass_unchanged() {
        assert_eq!(check(0), Ok(0));
        assert_eq!(check(KERNEL_CODE64 & !PRESENT), Ok(KERNEL_CODE64 & !PRESENT));
        // Even a would-be gate, while not present.
        assert_eq!(check(0x0000_0c00_0008_0000), Ok(0x0000_0c00_0008_0000));
    }

    #[test]
    fn system_descriptors_are_refused() {
        let tss = 0x0000_8900_0000_0067; // present 64-bit TSS
        let call_gate = 0x0000_ec00_e008_1000; // present call gate, DPL 3
        let interrupt_gate = 0x0000_ee00_e008_1000;
        for raw in [tss, call_gate, interrupt_gate] {
            assert_eq!(check(raw), Err(DescriptorError::System), "{raw:#x}");
        }
    }

    #[test]
    fn conforming_and_reserved_code_is_refused() {
        assert_eq!(check(KERNEL_CODE64 | CONFORMING), Err(DescriptorError::Conforming));
        assert_eq!(check(KERNEL_CODE64 | DEFAULT_32), Err(DescriptorError::LongAndDefault32));
        // L and D together are fine on a data segment (the bits mean nothing there).
        assert!(check(DATA_DPL0 | LONG_MODE).is_ok());
    }
}
