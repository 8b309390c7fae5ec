//! What a guest may put in its page tables: the hypervisor-owned slots ([`Layout`]) and the
//! per-level entry rules ([`Layout::check`]).
//!
//! Validation and `mmu_update` ask this module about every entry before taking any
//! reference; the hypervisor builds one [`Layout`] at boot. This module judges entry
//! *values* and positions only: it never looks at a frame's owner or current type (that is
//! [`crate::refs`]) and never touches a table.
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
//!   M2P table at slot 256) belong to the hypervisor: guest updates to them are refused,
//!   and validation overwrites them with [`Layout::fixed_entry`], as Xen does for its L4
//!   slots, whatever the guest left there.
//! - The hypervisor's 64 MiB window lives in the top gigabyte of the address space: entry
//!   511 of the L3 under L4 slot 511. That L3 is a *window-L3* ([`PageType::WindowL3`], as
//!   Xen's `PGT_pae_xen_l2` for 32-bit PAE guests): a type of its own, taken by a table
//!   referenced from L4 slot 511 and only there ([`child_type`]). Its entry 511 is the
//!   hypervisor's (installed by validation, updates refused); its other entries are the
//!   guest's. A plain L3 (linked at any other L4 slot, or pinned with
//!   `MMUEXT_PIN_L3_TABLE`) has no hypervisor entry: all 512 are the guest's. A table of
//!   one type cannot be used as the other while it has references (a type conflict), so
//!   the window appears at `0xFFFF_FFFF_C000_0000` and nowhere else.
//! - An L4 is valid only if slot 511 is present ([`must_be_present`]) and names a
//!   window-L3, so every table CR3 may load maps the hypervisor; an update of that slot
//!   must name another window-L3 (clearing it is refused).
//!
//! Pinning an L3 (`MMUEXT_PIN_L3_TABLE`) takes the window-L3 type when the frame already
//! is a window-L3 in use, and the plain L3 type otherwise ([`crate::PvMmu::pin_table`]).
//! Linux's x86-64 PV code pins one L3 that it links at L4 slot 511 of user tables (its
//! vsyscall L3, pinned before any link); that layout cannot work here anyway, as entry
//! 511 of that L3 (the top gigabyte, where Linux keeps its fixmap and vsyscall page) is the
//! hypervisor's. A guest for this hypervisor links its own window-L3 at slot 511 (the
//! builder provides one) and may pin it once it is in use there.

use core::ops::Range;

use abi::arch_x86::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_START};
use mm::addr::Mfn;
use mm::frame::PageType;

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
/// The L4 slot whose entry must name a window-L3 (511: the top 512 GiB).
pub const WINDOW_L4_SLOT: usize = 511;
/// The index of a window-L3 that holds the hypervisor's window entry (511: the top GiB).
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
    /// A layout whose window-L3 tables end with `hypervisor_l3_entry` (the hypervisor's
    /// L2 of its 64 MiB window) and whose L4 slot 256 holds `m2p_l4_entry` (the read-only
    /// M2P window; `None` leaves it empty). The other reserved L4 slots stay empty.
    pub const fn new(hypervisor_l3_entry: u64, m2p_l4_entry: Option<u64>) -> Layout {
        Layout {
            hypervisor_l3_entry,
            m2p_l4_entry,
        }
    }

    /// Whether entry `index` of a table of type `table` belongs to the hypervisor: L4
    /// slots 256-271 and entry 511 of a window-L3.
    pub const fn is_reserved(&self, table: PageType, index: usize) -> bool {
        match table {
            PageType::L4 => index >= RESERVED_L4_SLOTS.start && index < RESERVED_L4_SLOTS.end,
            PageType::WindowL3 => index == HYPERVISOR_L3_INDEX,
            _ => false,
        }
    }

    /// The value validation installs in a reserved entry of a table of type `table`;
    /// `None` for guest entries.
    pub const fn fixed_entry(&self, table: PageType, index: usize) -> Option<u64> {
        if !self.is_reserved(table, index) {
            return None;
        }
        match (table, index) {
            (PageType::WindowL3, _) => Some(self.hypervisor_l3_entry),
            (PageType::L4, M2P_L4_SLOT) => match self.m2p_l4_entry {
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

/// The type the table named by a present entry `index` of a `level` table must take:
/// [`PageType::WindowL3`] under L4 slot 511, the next level's plain type elsewhere, `None`
/// for L1 entries (which map pages).
pub const fn child_type(level: Level, index: usize) -> Option<PageType> {
    match level {
        Level::L4 if index == WINDOW_L4_SLOT => Some(PageType::WindowL3),
        Level::L4 => Some(PageType::L3),
        Level::L3 => Some(PageType::L2),
        Level::L2 => Some(PageType::L1),
        Level::L1 => None,
    }
}

/// Whether entry `index` of a table of type `table` must be present: L4 slot 511, which
/// names the window-L3 that maps the hypervisor.
pub const fn must_be_present(table: PageType, index: usize) -> bool {
    matches!(table, PageType::L4) && index == WINDOW_L4_SLOT
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

    const TABLE_TYPES: [PageType; 5] = [
        PageType::L1,
        PageType::L2,
        PageType::L3,
        PageType::WindowL3,
        PageType::L4,
    ];

    #[test]
    fn reserved_slots_are_exactly_the_hypervisors() {
        let layout = layout();
        let reserved: Vec<(PageType, usize)> = TABLE_TYPES
            .into_iter()
            .flat_map(|table| (0..512).map(move |index| (table, index)))
            .filter(|&(table, index)| layout.is_reserved(table, index))
            .collect();
        let mut expected: Vec<(PageType, usize)> = vec![(PageType::WindowL3, 511)];
        expected.extend((256..272).map(|slot| (PageType::L4, slot)));
        assert_eq!(reserved, expected);
    }

    #[test]
    fn fixed_entries_fill_reserved_slots() {
        let layout = layout();
        assert_eq!(layout.fixed_entry(PageType::WindowL3, 511), Some(HV_L3));
        assert_eq!(
            layout.fixed_entry(PageType::L3, 511),
            None,
            "a plain L3's 511 is the guest's"
        );
        assert_eq!(layout.fixed_entry(PageType::L4, 256), Some(M2P));
        assert_eq!(layout.fixed_entry(PageType::L4, 257), Some(0));
        assert_eq!(layout.fixed_entry(PageType::L4, 271), Some(0));
        assert_eq!(layout.fixed_entry(PageType::L4, 272), None);
        assert_eq!(layout.fixed_entry(PageType::L4, 511), None);
        assert_eq!(layout.fixed_entry(PageType::WindowL3, 510), None);
        assert_eq!(layout.fixed_entry(PageType::L2, 511), None);
        let no_m2p = Layout::new(HV_L3, None);
        assert_eq!(no_m2p.fixed_entry(PageType::L4, 256), Some(0));
    }

    #[test]
    fn only_l4_slot_511_names_a_window_l3_and_must_be_present() {
        for index in 0..512 {
            let want = if index == 511 {
                PageType::WindowL3
            } else {
                PageType::L3
            };
            assert_eq!(child_type(Level::L4, index), Some(want));
            assert_eq!(child_type(Level::L3, index), Some(PageType::L2));
            assert_eq!(child_type(Level::L2, index), Some(PageType::L1));
            assert_eq!(child_type(Level::L1, index), None);
            for table in TABLE_TYPES {
                let required = table == PageType::L4 && index == 511;
                assert_eq!(
                    must_be_present(table, index),
                    required,
                    "{table:?}[{index}]"
                );
            }
        }
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
