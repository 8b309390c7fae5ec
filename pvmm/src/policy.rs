//! What a guest may put in its page tables: the hypervisor-owned slots ([`Layout`]) and the
//! per-level entry rules ([`Layout::check`]).
//!
//! Validation and `mmu_update` ask this module about every entry before taking any
//! reference; the hypervisor builds one [`Layout`] at boot. This module judges entry
//! *values* only: it never looks at frame ownership or types (that is [`crate::refs`]) and
//! never touches a table.
//!
//! The rules, following Xen's `base_disallow_mask` for a PV domain without I/O access:
//! - A non-present entry may hold anything (guests keep swap entries there) and takes no
//!   reference.
//! - A present entry may set only P, R/W, U/S, A, D, the available bits 9-11 and 52-62,
//!   NX (the hypervisor must enable EFER.NXE) and the address. PWT, PCD and PAT are
//!   refused at every level (cache attributes are for domains with device access, which
//!   this design has not got); PS in an L2 or L3 entry is a huge page and refused; PS in
//!   an L4 entry is a reserved bit and refused; G is refused in L2-L4 entries.
//! - G in an L1 entry is accepted and stripped: the guest kernel and guest user run on
//!   separate L4 tables with every entry user-accessible, so a global translation of a
//!   kernel page would survive the switch to the user tables.
//! - U/S is forced on in every present entry: the guest kernel runs at CPL 3.
//! - L4 slots 256-271 (Xen's reserved range, where compatible guests find the read-only
//!   M2P table at slot 256) and entry 511 of every L3 table (the hypervisor's 64 MiB
//!   window at the top of the address space) belong to the hypervisor: guest updates to
//!   them are refused, and validation overwrites them with [`Layout::fixed_entry`], as
//!   Xen does for its L4 slots, whatever the guest left there. Consequence: the top 1 GiB
//!   of every 512 GiB region a guest maps is not the guest's.

use core::ops::Range;

use abi::arch_x86::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_START};
use mm::addr::Mfn;

use crate::entry::{
    Pte, ACCESSED, ADDRESS_MASK, AVAILABLE_HIGH, AVAILABLE_LOW, DIRTY, GLOBAL, HUGE_PAGE,
    NO_EXECUTE, PRESENT, USER, WRITABLE,
};
use crate::error::MmError;
use crate::level::Level;

/// L4 slots reserved for the hypervisor: Xen's range, 256-271.
pub const RESERVED_L4_SLOTS: Range<usize> =
    Level::L4.index_of(HYPERVISOR_VIRT_START)..Level::L4.index_of(HYPERVISOR_VIRT_END);
/// The L4 slot of the read-only machine-to-physical table (256).
pub const M2P_L4_SLOT: usize = Level::L4.index_of(MACH2PHYS_VIRT_START);
/// The L3 index every validated L3 table gives to the hypervisor's window (511).
pub const HYPERVISOR_L3_INDEX: usize = 511;
const _: () = assert!(RESERVED_L4_SLOTS.start == 256 && RESERVED_L4_SLOTS.end == 272);
const _: () = assert!(M2P_L4_SLOT == 256);

/// Bits a present guest entry of any level may set.
const GUEST_BITS: u64 = PRESENT
    | WRITABLE
    | USER
    | ACCESSED
    | DIRTY
    | AVAILABLE_LOW
    | AVAILABLE_HIGH
    | NO_EXECUTE
    | ADDRESS_MASK;

/// The hypervisor's entries in guest tables, fixed at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    hypervisor_l3_entry: u64,
    m2p_l4_entry: Option<u64>,
}

/// A present entry that passed [`Layout::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The frame it points at: a page (L1) or the next-level table.
    pub mfn: Mfn,
    /// Whether the R/W bit is set.
    pub writable: bool,
    /// The value to store: the guest's entry with U/S forced on (and G stripped in L1).
    pub value: u64,
}

/// The verdict on an entry value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Not present: stored as the guest wrote it, takes no reference.
    NotPresent,
    /// Present and allowed.
    Present(Mapping),
}

impl Layout {
    /// A layout whose L3 tables all end with `hypervisor_l3_entry` (the hypervisor's L2
    /// of its 64 MiB window) and whose L4 slot 256 holds `m2p_l4_entry` (the read-only
    /// M2P window; `None` leaves it empty). The other reserved L4 slots stay empty.
    pub const fn new(hypervisor_l3_entry: u64, m2p_l4_entry: Option<u64>) -> Layout {
        Layout {
            hypervisor_l3_entry,
            m2p_l4_entry,
        }
    }

    /// Whether entry `index` of a `level` table belongs to the hypervisor.
    pub const fn is_reserved(&self, level: Level, index: usize) -> bool {
        match level {
            Level::L4 => index >= RESERVED_L4_SLOTS.start && index < RESERVED_L4_SLOTS.end,
            Level::L3 => index == HYPERVISOR_L3_INDEX,
            Level::L2 | Level::L1 => false,
        }
    }

    /// The value validation installs in a reserved entry; `None` for guest entries.
    pub const fn fixed_entry(&self, level: Level, index: usize) -> Option<u64> {
        if !self.is_reserved(level, index) {
            return None;
        }
        match (level, index) {
            (Level::L3, _) => Some(self.hypervisor_l3_entry),
            (Level::L4, M2P_L4_SLOT) => match self.m2p_l4_entry {
                Some(entry) => Some(entry),
                None => Some(0),
            },
            _ => Some(0),
        }
    }

    /// Judges `raw` as the value of a guest-owned entry of a `level` table. Says nothing
    /// about the frame it points at.
    pub const fn check(&self, level: Level, raw: u64) -> Result<Checked, MmError> {
        let pte = Pte(raw);
        if !pte.is_present() {
            return Ok(Checked::NotPresent);
        }
        if raw & HUGE_PAGE != 0 && matches!(level, Level::L2 | Level::L3) {
            return Err(MmError::HugePage { level });
        }
        let bits = raw & !allowed_bits(level);
        if bits != 0 {
            return Err(MmError::BadFlags { level, bits });
        }
        Ok(Checked::Present(Mapping {
            mfn: pte.mfn(),
            writable: pte.is_writable(),
            value: normalize(level, raw),
        }))
    }
}

/// Bits a present entry of `level` may set (before normalization).
const fn allowed_bits(level: Level) -> u64 {
    match level {
        Level::L1 => GUEST_BITS | GLOBAL,
        Level::L2 | Level::L3 | Level::L4 => GUEST_BITS,
    }
}

/// The stored form of an allowed present entry: U/S on, and G off in L1.
pub(crate) const fn normalize(level: Level, raw: u64) -> u64 {
    let forced = raw | USER;
    match level {
        Level::L1 => forced & !GLOBAL,
        Level::L2 | Level::L3 | Level::L4 => forced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{CACHE_DISABLE, PAT_4K, WRITE_THROUGH};

    const HV_L3: u64 = 0x5000 | PRESENT | WRITABLE;
    const M2P: u64 = 0x6000 | PRESENT | USER;

    fn layout() -> Layout {
        Layout::new(HV_L3, Some(M2P))
    }

    fn entry(flags: u64) -> u64 {
        Pte::new(Mfn(0x42), flags).raw()
    }

    #[test]
    fn reserved_slots_are_exactly_the_hypervisors() {
        let layout = layout();
        let reserved: Vec<(Level, usize)> = Level::ALL
            .into_iter()
            .flat_map(|level| (0..512).map(move |index| (level, index)))
            .filter(|&(level, index)| layout.is_reserved(level, index))
            .collect();
        let mut expected: Vec<(Level, usize)> = vec![(Level::L3, 511)];
        expected.extend((256..272).map(|slot| (Level::L4, slot)));
        assert_eq!(reserved, expected);
    }

    #[test]
    fn fixed_entries_fill_reserved_slots() {
        let layout = layout();
        assert_eq!(layout.fixed_entry(Level::L3, 511), Some(HV_L3));
        assert_eq!(layout.fixed_entry(Level::L4, 256), Some(M2P));
        assert_eq!(layout.fixed_entry(Level::L4, 257), Some(0));
        assert_eq!(layout.fixed_entry(Level::L4, 271), Some(0));
        assert_eq!(layout.fixed_entry(Level::L4, 272), None);
        assert_eq!(layout.fixed_entry(Level::L4, 511), None);
        assert_eq!(layout.fixed_entry(Level::L3, 510), None);
        assert_eq!(layout.fixed_entry(Level::L2, 511), None);
        let no_m2p = Layout::new(HV_L3, None);
        assert_eq!(no_m2p.fixed_entry(Level::L4, 256), Some(0));
    }

    #[test]
    fn non_present_entries_may_hold_anything() {
        for raw in [0, !PRESENT, 0xdead_beef_0000_0000] {
            for level in Level::ALL {
                assert_eq!(layout().check(level, raw), Ok(Checked::NotPresent));
            }
        }
    }

    #[test]
    fn present_entries_are_normalized() {
        let layout = layout();
        let kernel_rw = entry(PRESENT | WRITABLE | ACCESSED | DIRTY | NO_EXECUTE);
        for level in Level::ALL {
            let Ok(Checked::Present(mapping)) = layout.check(level, kernel_rw) else {
                panic!("{level:?} refused a plain entry");
            };
            assert_eq!(mapping.mfn, Mfn(0x42));
            assert!(mapping.writable);
            assert_eq!(mapping.value, kernel_rw | USER);
        }
        let global = entry(PRESENT | GLOBAL | AVAILABLE_LOW | AVAILABLE_HIGH);
        let Ok(Checked::Present(mapping)) = layout.check(Level::L1, global) else {
            panic!("L1 refused a global entry");
        };
        assert!(!mapping.writable);
        assert_eq!(mapping.value, (global | USER) & !GLOBAL);
    }

    #[test]
    fn refused_bits_are_reported_per_level() {
        let layout = layout();
        let cases = [
            (Level::L1, WRITE_THROUGH),
            (Level::L1, CACHE_DISABLE),
            (Level::L1, PAT_4K),
            (Level::L2, GLOBAL),
            (Level::L3, CACHE_DISABLE | WRITE_THROUGH),
            (Level::L4, HUGE_PAGE),
            (Level::L4, GLOBAL),
        ];
        for (level, bits) in cases {
            assert_eq!(
                layout.check(level, entry(PRESENT | bits)),
                Err(MmError::BadFlags { level, bits }),
                "{level:?} {bits:#x}"
            );
        }
        for level in [Level::L2, Level::L3] {
            assert_eq!(
                layout.check(level, entry(PRESENT | HUGE_PAGE)),
                Err(MmError::HugePage { level })
            );
        }
    }
}
