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
//! - Every L4 names a window-L3 in slot 511, so every table CR3 may load maps the
//!   hypervisor. Either the guest's own (present in the guest's entry: validated as a
//!   window-L3 it owns), or the hypervisor's *default window-L3* ([`Layout::new`]'s
//!   `window_l4_entry`: a table outside every domain whose entries are empty but 511, the
//!   window), which validation installs when the guest left slot 511 empty, as Xen fills
//!   its own L4 slots whatever the guest left there (`init_xen_l4_slots`): an unmodified
//!   guest (XTF's, Linux's) knows nothing of our window. An entry naming the default
//!   window-L3 holds no reference and always has its one stored value
//!   ([`Layout::default_window`]), whatever flags the guest wrote with it (a guest that
//!   copies an L4 copies it). An update of slot 511 must name a window-L3 of the guest or
//!   the default one; clearing it is refused ([`must_be_present`]), as Xen refuses
//!   updates of its slots.
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

use crate::entry::{Pte, PteFlags};
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

/// Flags a present guest entry of any level may set (besides the address).
const GUEST_FLAGS: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::USER)
    .union(PteFlags::ACCESSED)
    .union(PteFlags::DIRTY)
    .union(PteFlags::AVAILABLE_LOW)
    .union(PteFlags::AVAILABLE_HIGH)
    .union(PteFlags::NO_EXECUTE);

/// The hypervisor's entries in guest tables, fixed at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    hypervisor_l3_entry: u64,
    m2p_l4_entry: Option<u64>,
    window_l4_entry: u64,
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
    /// L2 of its 64 MiB window), whose L4 slot 256 holds `m2p_l4_entry` (the read-only
    /// M2P window; `None` leaves it empty) and whose L4 slot 511, when the guest leaves it
    /// empty, holds `window_l4_entry`: a present entry naming the hypervisor's default
    /// window-L3, a frame no domain owns whose only entry is `hypervisor_l3_entry` at 511
    /// (the caller keeps it so). The other reserved L4 slots stay empty.
    pub const fn new(
        hypervisor_l3_entry: u64,
        m2p_l4_entry: Option<u64>,
        window_l4_entry: u64,
    ) -> Layout {
        Layout {
            hypervisor_l3_entry,
            m2p_l4_entry,
            window_l4_entry,
        }
    }

    /// The value stored in L4 slot 511 for a guest value `raw` that stands for the
    /// hypervisor's default window-L3: not present (the guest left the slot to the
    /// hypervisor) or naming the default window-L3's frame, with any flags. `None` for
    /// any other present value: a window-L3 of the guest's, checked as such.
    pub const fn default_window(&self, raw: u64) -> Option<u64> {
        let pte = Pte(raw);
        if !pte.is_present() || self.names_default_window(raw) {
            Some(self.window_l4_entry)
        } else {
            None
        }
    }

    /// Whether `raw` is present and names the default window-L3's frame: as L4 slot 511
    /// it holds no reference (the frame is no domain's).
    pub const fn names_default_window(&self, raw: u64) -> bool {
        let pte = Pte(raw);
        pte.is_present() && pte.mfn().0 == Pte(self.window_l4_entry).mfn().0
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

    /// The value entry `index` of a table of type `table` holds when the entry is the
    /// hypervisor's, the guest's value being `raw`: a reserved slot's
    /// [`Self::fixed_entry`], or in L4 slot 511 the default window-L3
    /// ([`Self::default_window`]). Such an entry holds no reference. `None` for guest
    /// entries.
    pub const fn hypervisor_entry(&self, table: PageType, index: usize, raw: u64) -> Option<u64> {
        if let Some(fixed) = self.fixed_entry(table, index) {
            return Some(fixed);
        }
        match table {
            PageType::L4 if index == WINDOW_L4_SLOT => self.default_window(raw),
            _ => None,
        }
    }

    /// Judges `raw` as the value of a guest-owned entry of a `level` table. Says nothing
    /// about the frame it points at.
    pub const fn check(&self, level: Level, raw: u64) -> Result<Checked, MmError> {
        let pte = Pte(raw);
        if !pte.is_present() {
            return Ok(Checked::NotPresent);
        }
        if pte.flags().contains(PteFlags::HUGE_PAGE) && matches!(level, Level::L2 | Level::L3) {
            return Err(MmError::HugePage { level });
        }
        let bits = pte.flags().difference(allowed_flags(level));
        if !bits.is_empty() {
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
/// names the window-L3 that maps the hypervisor (validation installs the default one
/// there when it is empty; an update may not clear it).
pub const fn must_be_present(table: PageType, index: usize) -> bool {
    matches!(table, PageType::L4) && index == WINDOW_L4_SLOT
}

/// Flags a present entry of `level` may set besides the address (before normalization).
const fn allowed_flags(level: Level) -> PteFlags {
    match level {
        Level::L1 => GUEST_FLAGS.union(PteFlags::GLOBAL),
        Level::L2 | Level::L3 | Level::L4 => GUEST_FLAGS,
    }
}

/// The stored form of an allowed present entry: U/S on, and G off in L1.
pub(crate) const fn normalize(level: Level, raw: u64) -> u64 {
    let forced = Pte(raw).with(PteFlags::USER);
    match level {
        Level::L1 => forced.without(PteFlags::GLOBAL).raw(),
        Level::L2 | Level::L3 | Level::L4 => forced.raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PteFlags;

    const HV_L3: u64 = 0x5000 | PteFlags::PRESENT.bits() | PteFlags::WRITABLE.bits();
    const M2P: u64 = 0x6000 | PteFlags::PRESENT.bits() | PteFlags::USER.bits();
    const WINDOW: u64 = 0x7000 | PteFlags::PRESENT.bits() | PteFlags::WRITABLE.bits() | PteFlags::USER.bits() | PteFlags::ACCESSED.bits();

    fn layout() -> Layout {
        Layout::new(HV_L3, Some(M2P), WINDOW)
    }

    fn entry(flags: PteFlags) -> u64 {
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
        let no_m2p = Layout::new(HV_L3, None, WINDOW);
        assert_eq!(no_m2p.fixed_entry(PageType::L4, 256), Some(0));
    }

    #[test]
    fn slot_511_left_empty_or_naming_the_default_window_l3_is_the_hypervisors() {
        let layout = layout();
        let own_window_l3 = entry(PteFlags::PRESENT | PteFlags::WRITABLE);
        for raw in [0, !PteFlags::PRESENT.bits(), 0x7000 | PteFlags::PRESENT.bits(), 0x7000 | PteFlags::PRESENT.bits() | PteFlags::NO_EXECUTE.bits() | PteFlags::CACHE_DISABLE.bits()] {
            assert_eq!(layout.default_window(raw), Some(WINDOW), "{raw:#x}");
            assert_eq!(layout.hypervisor_entry(PageType::L4, 511, raw), Some(WINDOW));
        }
        assert!(layout.names_default_window(WINDOW));
        assert!(!layout.names_default_window(0x7000), "not present");
        assert_eq!(layout.default_window(own_window_l3), None);
        assert_eq!(layout.hypervisor_entry(PageType::L4, 511, own_window_l3), None);
        // Only L4 slot 511: the same values elsewhere are the guest's (or refused).
        for (table, index) in [(PageType::L4, 510), (PageType::L3, 511), (PageType::WindowL3, 0)] {
            assert_eq!(layout.hypervisor_entry(table, index, 0), None, "{table:?}[{index}]");
            assert_eq!(layout.hypervisor_entry(table, index, WINDOW), None);
        }
        // Reserved slots keep their fixed entries whatever the guest wrote.
        assert_eq!(layout.hypervisor_entry(PageType::L4, 256, WINDOW), Some(M2P));
        assert_eq!(layout.hypervisor_entry(PageType::WindowL3, 511, 0), Some(HV_L3));
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
        for raw in [0, !PteFlags::PRESENT.bits(), 0xdead_beef_0000_0000] {
            for level in Level::ALL {
                assert_eq!(layout().check(level, raw), Ok(Checked::NotPresent));
            }
        }
    }

    #[test]
    fn present_entries_are_normalized() {
        let layout = layout();
        let kernel_rw = entry(PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::NO_EXECUTE);
        for level in Level::ALL {
            let Ok(Checked::Present(mapping)) = layout.check(level, kernel_rw) else {
                panic!("{level:?} refused a plain entry");
            };
            assert_eq!(mapping.mfn, Mfn(0x42));
            assert!(mapping.writable);
            assert_eq!(mapping.value, kernel_rw | PteFlags::USER.bits());
        }
        let global = entry(PteFlags::PRESENT | PteFlags::GLOBAL | PteFlags::AVAILABLE_LOW | PteFlags::AVAILABLE_HIGH);
        let Ok(Checked::Present(mapping)) = layout.check(Level::L1, global) else {
            panic!("L1 refused a global entry");
        };
        assert!(!mapping.writable);
        assert_eq!(mapping.value, (global | PteFlags::USER.bits()) & !PteFlags::GLOBAL.bits());
    }

    #[test]
    fn refused_bits_are_reported_per_level() {
        let layout = layout();
        let cases = [
            (Level::L1, PteFlags::WRITE_THROUGH),
            (Level::L1, PteFlags::CACHE_DISABLE),
            (Level::L1, PteFlags::PAT_4K),
            (Level::L2, PteFlags::GLOBAL),
            (Level::L3, PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH),
            (Level::L4, PteFlags::HUGE_PAGE),
            (Level::L4, PteFlags::GLOBAL),
        ];
        for (level, bits) in cases {
            assert_eq!(
                layout.check(level, entry(PteFlags::PRESENT | bits)),
                Err(MmError::BadFlags { level, bits }),
                "{level:?} {bits:?}"
            );
        }
        for level in [Level::L2, Level::L3] {
            assert_eq!(
                layout.check(level, entry(PteFlags::PRESENT | PteFlags::HUGE_PAGE)),
                Err(MmError::HugePage { level })
            );
        }
    }
}
