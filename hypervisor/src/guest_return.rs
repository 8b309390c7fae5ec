//! Checking a return to a PV guest before the hypervisor's `iretq` loads it: the `iret`
//! hypercall's frame carries a guest-chosen instruction pointer and code and stack
//! selectors, and an `iretq` that cannot load them faults in ring 0.
//!
//! Pure and host-tested; the `iret` hypercall (`pv::traps::iret`) calls [`check`] with the
//! selectors' RPL already forced to 3 and a lookup of the running vCPU's GDT and LDT entries. A
//! refused return gets the same answer as an `iretq` that faults: the guest's failsafe
//! callback, or its death. Xen itself checks none of this in `do_iret` and leaves it all to
//! its fault fix-up; checking first makes the answer the same on every CPU (Intel faults in
//! ring 0 on a non-canonical rip, AMD in the guest after the return). The exit path's fault
//! fix-up stays the real guarantee (a descriptor can change between check and `iretq`);
//! this module must never be the only defence.
//!
//! Accepted: a canonical rip (within the segment limit for 32-bit code); cs the flat 64-bit
//! or 32-bit ring-3 code selector (0xe033, 0xe023) or a guest GDT or LDT entry holding a
//! present code segment that ring 3 may run (DPL 3, or conforming), not both L and D; ss the
//! flat ring-3 data selector (0xe02b) or a guest GDT or LDT entry holding a present writable
//! data segment of DPL 3. Refused: null selectors, selectors beyond their table (an LDT
//! selector while the vCPU has no LDT, or past its entry count), and every other selector in
//! the hypervisor's reserved GDT page.

/// First selector of the hypervisor's reserved GDT page (Xen's `FIRST_RESERVED_GDT_BYTE`).
pub const FIRST_RESERVED_SELECTOR: u16 = 0xe000;
/// The flat ring-3 selectors a guest may always return to.
pub const FLAT_CS64: u16 = 0xe033;
pub const FLAT_CS32: u16 = 0xe023;
pub const FLAT_SS: u16 = 0xe02b;

const TABLE_INDICATOR: u16 = 1 << 2;
const PRESENT: u64 = 1 << 47;
const DPL_SHIFT: u32 = 45;
const CODE_OR_DATA: u64 = 1 << 44;
const CODE: u64 = 1 << 43;
const CONFORMING: u64 = 1 << 42;
const WRITABLE: u64 = 1 << 41;
const LONG_MODE: u64 = 1 << 53;
const DEFAULT_32: u64 = 1 << 54;
const GRANULARITY: u64 = 1 << 55;

/// Which selector of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Code,
    Stack,
}

/// Why a return was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadReturn {
    /// rip is not canonical.
    NonCanonicalRip(u64),
    /// rip is beyond the limit of a 32-bit code segment.
    RipBeyondLimit { rip: u64, limit: u64 },
    /// A null selector.
    Null(Role),
    /// A selector beyond its table's limit (any LDT selector when there is no LDT).
    OutsideTable(Role, u16),
    /// A selector of the hypervisor's reserved page other than the flat ones.
    Reserved(Role, u16),
    /// A guest GDT entry whose descriptor cannot be loaded in this role.
    Descriptor { role: Role, selector: u16, descriptor: u64 },
}

/// Whether `address` is canonical with 48-bit virtual addresses.
pub const fn is_canonical(address: u64) -> bool {
    let top = address >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Checks a return to `rip` with code selector `cs` and stack selector `ss` (RPL already
/// 3); `descriptor(selector)` reads the descriptor a selector names in the running vCPU's
/// GDT (below the reserved page) or LDT, `None` beyond that table's limit.
pub fn check(rip: u64, cs: u16, ss: u16, descriptor: impl Fn(u16) -> Option<u64>) -> Result<(), BadReturn> {
    let code = selector(Role::Code, cs, &descriptor)?;
    if let Some(raw) = code {
        if !is_code(raw) {
            return Err(BadReturn::Descriptor { role: Role::Code, selector: cs, descriptor: raw });
        }
    }
    if let Some(raw) = selector(Role::Stack, ss, &descriptor)? {
        if !is_stack(raw) {
            return Err(BadReturn::Descriptor { role: Role::Stack, selector: ss, descriptor: raw });
        }
    }
    if !is_canonical(rip) {
        return Err(BadReturn::NonCanonicalRip(rip));
    }
    let limit = match (cs, code) {
        (FLAT_CS32, _) => Some(u64::from(u32::MAX)),
        (_, Some(raw)) if raw & LONG_MODE == 0 => Some(limit(raw)),
        _ => None,
    };
    match limit {
        Some(limit) if rip > limit => Err(BadReturn::RipBeyondLimit { rip, limit }),
        _ => Ok(()),
    }
}

/// The guest GDT or LDT descriptor `sel` names (`None` for an accepted flat selector).
fn selector(role: Role, sel: u16, descriptor: &impl Fn(u16) -> Option<u64>) -> Result<Option<u64>, BadReturn> {
    let flat = match role {
        Role::Code => sel == FLAT_CS64 || sel == FLAT_CS32,
        Role::Stack => sel == FLAT_SS,
    };
    if flat {
        return Ok(None);
    }
    let in_gdt = sel & TABLE_INDICATOR == 0;
    if in_gdt && sel >> 3 == 0 {
        return Err(BadReturn::Null(role));
    }
    if in_gdt && sel >= FIRST_RESERVED_SELECTOR {
        return Err(BadReturn::Reserved(role, sel));
    }
    descriptor(sel).map(Some).ok_or(BadReturn::OutsideTable(role, sel))
}

fn dpl(raw: u64) -> u64 {
    (raw >> DPL_SHIFT) & 3
}

fn is_code(raw: u64) -> bool {
    let usable = raw & (PRESENT | CODE_OR_DATA | CODE) == PRESENT | CODE_OR_DATA | CODE;
    let ring3 = raw & CONFORMING != 0 || dpl(raw) == 3;
    let reserved = raw & LONG_MODE != 0 && raw & DEFAULT_32 != 0;
    usable && ring3 && !reserved
}

fn is_stack(raw: u64) -> bool {
    raw & (PRESENT | CODE_OR_DATA | CODE | WRITABLE) == PRESENT | CODE_OR_DATA | WRITABLE && dpl(raw) == 3
}

/// The byte limit of a segment descriptor.
fn limit(raw: u64) -> u64 {
    let units = (raw & 0xffff) | ((raw >> 32) & 0xf_0000);
    if raw & GRANULARITY != 0 { (units << 12) | 0xfff } else { units }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE64: u64 = 0x00af_fb00_0000_ffff; // DPL 3, L, accessed
    const CODE32: u64 = 0x00cf_fb00_0000_ffff; // DPL 3, D, 4 GiB
    const CODE16_SMALL: u64 = 0x0000_fb00_0000_0fff; // DPL 3, byte granular, limit 0xfff
    const DATA: u64 = 0x00cf_f300_0000_ffff; // DPL 3, writable, accessed
    const READ_ONLY_DATA: u64 = 0x00cf_f100_0000_ffff;

    /// A GDT of `entries` (the rest of the guest part: null descriptors) and no LDT.
    fn gdt(entries: &[u64]) -> impl Fn(u16) -> Option<u64> + '_ {
        tables(entries, &[])
    }

    /// A GDT and an LDT of exactly `ldt.len()` entries.
    fn tables<'a>(gdt: &'a [u64], ldt: &'a [u64]) -> impl Fn(u16) -> Option<u64> + 'a {
        move |sel| {
            let index = usize::from(sel >> 3);
            if sel & TABLE_INDICATOR == 0 { Some(gdt.get(index).copied().unwrap_or(0)) } else { ldt.get(index).copied() }
        }
    }

    const KERNEL_RIP: u64 = 0xffff_ffff_8000_1000;

    #[test]
    fn flat_selectors_and_canonical_rips_pass() {
        assert_eq!(check(KERNEL_RIP, FLAT_CS64, FLAT_SS, gdt(&[])), Ok(()));
        assert_eq!(check(0x1000, FLAT_CS64, FLAT_SS, gdt(&[])), Ok(()));
        assert_eq!(check(0x7fff_ffff_ffff, FLAT_CS64, FLAT_SS, gdt(&[])), Ok(()));
        assert_eq!(check(0x800, FLAT_CS32, FLAT_SS, gdt(&[])), Ok(()));
    }

    #[test]
    fn non_canonical_rips_are_refused() {
        for rip in [0x8000_0000_0000, 0xffff_7fff_ffff_ffff, 0x0001_0000_0000_0000] {
            assert_eq!(check(rip, FLAT_CS64, FLAT_SS, gdt(&[])), Err(BadReturn::NonCanonicalRip(rip)));
        }
    }

    #[test]
    fn a_32_bit_code_segment_bounds_rip() {
        assert_eq!(
            check(KERNEL_RIP, FLAT_CS32, FLAT_SS, gdt(&[])),
            Err(BadReturn::RipBeyondLimit { rip: KERNEL_RIP, limit: 0xffff_ffff })
        );
        let table = [0, CODE16_SMALL];
        assert_eq!(check(0xfff, 0xb, FLAT_SS, gdt(&table)), Ok(()));
        assert_eq!(check(0x1000, 0xb, FLAT_SS, gdt(&table)), Err(BadReturn::RipBeyondLimit { rip: 0x1000, limit: 0xfff }));
    }

    #[test]
    fn null_ldt_and_reserved_selectors_are_refused() {
        assert_eq!(check(KERNEL_RIP, 3, FLAT_SS, gdt(&[])), Err(BadReturn::Null(Role::Code)));
        assert_eq!(check(KERNEL_RIP, FLAT_CS64, 3, gdt(&[])), Err(BadReturn::Null(Role::Stack)));
        assert_eq!(check(KERNEL_RIP, 0x7, FLAT_SS, gdt(&[])), Err(BadReturn::OutsideTable(Role::Code, 0x7)));
        assert_eq!(check(KERNEL_RIP, FLAT_CS64, 0xf, gdt(&[])), Err(BadReturn::OutsideTable(Role::Stack, 0xf)));
        // Ring-0 code and data, the data selector as code, the TSS, past the table.
        for cs in [0xe00b, 0xe013, FLAT_SS, 0xe043, 0xfff3] {
            assert_eq!(check(KERNEL_RIP, cs, FLAT_SS, gdt(&[])), Err(BadReturn::Reserved(Role::Code, cs)), "{cs:#x}");
        }
        for ss in [0xe013, FLAT_CS64, FLAT_CS32] {
            assert_eq!(check(KERNEL_RIP, FLAT_CS64, ss, gdt(&[])), Err(BadReturn::Reserved(Role::Stack, ss)), "{ss:#x}");
        }
    }

    #[test]
    fn guest_gdt_segments_must_suit_their_role() {
        let table = [0, CODE64, DATA, CODE32, READ_ONLY_DATA];
        assert_eq!(check(KERNEL_RIP, 0xb, 0x13, gdt(&table)), Ok(()));
        assert_eq!(check(0x1000, 0x1b, 0x13, gdt(&table)), Ok(()));
        let refused = |cs, ss, role, selector, descriptor| {
            assert_eq!(check(0x1000, cs, ss, gdt(&table)), Err(BadReturn::Descriptor { role, selector, descriptor }));
        };
        refused(0x13, FLAT_SS, Role::Code, 0x13, DATA);
        refused(FLAT_CS64, 0xb, Role::Stack, 0xb, CODE64);
        refused(FLAT_CS64, 0x23, Role::Stack, 0x23, READ_ONLY_DATA);
        // Beyond the guest's entries: the zero frame's null descriptors.
        refused(0x2b, FLAT_SS, Role::Code, 0x2b, 0);
        refused(FLAT_CS64, 0x1ff3, Role::Stack, 0x1ff3, 0);
    }

    #[test]
    fn ldt_segments_are_checked_like_gdt_ones_within_the_ldt_limit() {
        let ldt = [CODE32, DATA, CODE64 & !(3 << DPL_SHIFT)];
        let both = tables(&[], &ldt);
        // Entry 0 of the LDT is usable (the null selector is a GDT thing).
        assert_eq!(check(0x1000, 0x7, 0xf, &both), Ok(()));
        assert_eq!(check(0x1_0000_0000, 0x7, 0xf, &both), Err(BadReturn::RipBeyondLimit { rip: 0x1_0000_0000, limit: 0xffff_ffff }));
        // Ring-0 code in the LDT, and selectors past its three entries.
        assert_eq!(
            check(0x1000, 0x17, 0xf, &both),
            Err(BadReturn::Descriptor { role: Role::Code, selector: 0x17, descriptor: ldt[2] })
        );
        assert_eq!(check(0x1000, 0x1f, 0xf, &both), Err(BadReturn::OutsideTable(Role::Code, 0x1f)));
        assert_eq!(check(0x1000, 0x7, 0x1f, &both), Err(BadReturn::OutsideTable(Role::Stack, 0x1f)));
        assert_eq!(check(0x1000, 0xf, 0xf, &both), Err(BadReturn::Descriptor { role: Role::Code, selector: 0xf, descriptor: DATA }));
    }

    #[test]
    fn absent_ring0_and_reserved_code_descriptors_are_refused() {
        let not_present = CODE64 & !PRESENT;
        let ring0 = CODE64 & !(3 << DPL_SHIFT);
        let long_and_32 = CODE64 | DEFAULT_32;
        let system = 0x0000_8900_0000_0067;
        for raw in [not_present, ring0, long_and_32, system] {
            let table = [0, raw];
            assert_eq!(
                check(KERNEL_RIP, 0xb, FLAT_SS, gdt(&table)),
                Err(BadReturn::Descriptor { role: Role::Code, selector: 0xb, descriptor: raw }),
                "{raw:#x}"
            );
        }
        // A conforming ring-0 segment may be entered from ring 3.
        let conforming = ring0 | CONFORMING;
        assert_eq!(check(KERNEL_RIP, 0xb, FLAT_SS, gdt(&[0, conforming])), Ok(()));
        for raw in [DATA & !PRESENT, DATA & !(3 << DPL_SHIFT)] {
            assert_eq!(
                check(KERNEL_RIP, FLAT_CS64, 0xb, gdt(&[0, raw])),
                Err(BadReturn::Descriptor { role: Role::Stack, selector: 0xb, descriptor: raw })
            );
        }
    }

    #[test]
    fn canonical_boundaries() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x7fff_ffff_ffff));
        assert!(!is_canonical(0x8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0xfffe_ffff_ffff_ffff));
        assert!(is_canonical(u64::MAX));
    }
}
