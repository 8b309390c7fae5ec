//! Checking a segment descriptor a PV guest puts in its GDT or LDT (`set_gdt`,
//! `update_descriptor`, `MMUEXT_SET_LDT`), so that no selector it loads can reach ring 0,
//! plus the few facts the hypervisor reads back from a descriptor (base, code mode) and the
//! LDT descriptor it writes for a guest's LDT.
//!
//! Pure and host-tested. Rules, after Xen's `check_descriptor` for 64-bit PV guests, made
//! stricter where Xen's extra cases are not needed: non-present descriptors pass as they
//! are; system descriptors (TSS, LDT, gates) are refused; conforming code and code segments
//! with both L and D set are refused; any other code or data segment has its DPL raised to 3
//! (the guest kernel runs in ring 3) and its accessed bit set, so the CPU never writes the
//! descriptor (guest GDT and LDT frames are mapped read-only in the hypervisor).
//!
//! The same rules hold for both tables. What an LDT may hold architecturally is code and
//! data segments and call gates (never TSS or LDT descriptors). Xen accepts a call gate
//! whose target is a guest code selector, forces its DPL to 0 so that every use faults, and
//! emulates the far transfer (`pv_emulate_gate_op`); this hypervisor has no gate emulation,
//! so a gate is refused at the table (`EINVAL`) rather than stored: a present gate with DPL
//! 3 would otherwise be a way into whatever code selector it names (XSA-type attacks on gate
//! emulation do not apply). No 64-bit PV kernel in use (Linux, the XTF tests) puts gates in
//! its tables; Linux's `modify_ldt` creates code and data segments only, and conforming code
//! only not present. No base or limit is checked: in 64-bit mode bases are ignored (fs and gs
//! take 32-bit ones from a descriptor), and compatibility-mode linear addresses are 32-bit,
//! far below the hypervisor.

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

/// The code mode of a present code segment descriptor (L: 64-bit; D: 32-bit default;
/// neither: 16-bit), or `None` for anything else.
pub fn code_mode(raw: u64) -> Option<crate::insn::CodeMode> {
    use crate::insn::CodeMode;
    if raw & (PRESENT | CODE_OR_DATA | CODE) != PRESENT | CODE_OR_DATA | CODE {
        return None;
    }
    Some(if raw & LONG_MODE != 0 {
        CodeMode::Long
    } else if raw & DEFAULT_32 != 0 {
        CodeMode::Compat32
    } else {
        CodeMode::Compat16
    })
}

/// The 32-bit base of a code or data segment descriptor.
pub const fn base(raw: u64) -> u64 {
    ((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24)
}

/// The byte limit of a segment descriptor (its granularity applied).
pub const fn limit(raw: u64) -> u64 {
    let units = (raw & 0xffff) | ((raw >> 32) & 0xf_0000);
    if raw & GRANULARITY != 0 { (units << 12) | 0xfff } else { units }
}

const GRANULARITY: u64 = 1 << 55;
/// System descriptor type 2: an LDT.
const TYPE_LDT: u64 = 2 << 40;

/// The two words of a present 64-bit LDT descriptor (DPL 0) for a table at `base` holding
/// `entries` descriptors (1 to 8192), as the hypervisor writes it in its reserved GDT page.
pub const fn ldt_descriptor(base: u64, entries: u32) -> [u64; 2] {
    let limit = entries as u64 * 8 - 1;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | TYPE_LDT
        | PRESENT
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
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
    fn ldt_frames_refuse_gates_and_lower_ring0_code() {
        // What an attacker would put in an LDT: a DPL-3 call gate to a ring-0 selector, a
        // ring-0 code segment, a nested LDT descriptor.
        let call_gate_to_ring0 = 0x0000_ec00_e008_1000;
        let nested_ldt = ldt_descriptor(0x1000, 1)[0];
        for raw in [call_gate_to_ring0, nested_ldt] {
            assert_eq!(check(raw), Err(DescriptorError::System), "{raw:#x}");
        }
        assert_eq!(check(KERNEL_CODE64).unwrap() & DPL_MASK, DPL_MASK);
    }

    #[test]
    fn code_modes_bases_and_limits() {
        use crate::insn::CodeMode;
        assert_eq!(code_mode(USER_CODE64), Some(CodeMode::Long));
        assert_eq!(code_mode(0x00cf_fa00_0000_ffff), Some(CodeMode::Compat32));
        assert_eq!(code_mode(0x0000_fa00_0000_ffff), Some(CodeMode::Compat16));
        assert_eq!(code_mode(DATA_DPL0), None);
        assert_eq!(code_mode(USER_CODE64 & !PRESENT), None);
        let based = 0x12cf_f234_5678_ffff; // base 0x12345678
        assert_eq!(base(based), 0x1234_5678);
        assert_eq!(limit(based), 0xffff_ffff);
        assert_eq!(limit(0x0000_f200_0000_0fff), 0xfff);
    }

    #[test]
    fn ldt_descriptors_encode_base_and_limit() {
        let [low, high] = ldt_descriptor(0xffff_ffff_fe12_3000, 8192);
        assert_eq!(high, 0xffff_ffff);
        assert_eq!(low & (0xf << 40), TYPE_LDT);
        assert_eq!(low & PRESENT, PRESENT);
        assert_eq!(low & DPL_MASK, 0);
        assert_eq!(base(low), 0xfe12_3000);
        assert_eq!(limit(low), 0xffff);
        assert_eq!(limit(ldt_descriptor(0, 1)[0]), 7);
    }

    #[test]
    fn conforming_and_reserved_code_is_refused() {
        assert_eq!(check(KERNEL_CODE64 | CONFORMING), Err(DescriptorError::Conforming));
        assert_eq!(check(KERNEL_CODE64 | DEFAULT_32), Err(DescriptorError::LongAndDefault32));
        // L and D together are fine on a data segment (the bits mean nothing there).
        assert!(check(DATA_DPL0 | LONG_MODE).is_ok());
    }
}
