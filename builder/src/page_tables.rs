//! The boot page tables: how many frames a mapping needs, and the 4-level tree that maps
//! a planned initial mapping, built in memory before the builder writes it out.
//!
//! The layout planner calls [`table_frames_for`]; the builder calls `build_tables` and
//! copies each table into its frame. The tree maps `VIRT_BASE + pfn * 4096` to the
//! frame's machine address for every frame of the initial mapping, with
//! Present|Writable|User|Accessed|Dirty, except that the page-table frames themselves are
//! mapped read-only. Tables are taken from the plan's page-table frames in the order the
//! walk first needs them, the L4 first. The two hypervisor-provided entries are copied
//! verbatim: the hypervisor's entry into slot 511 of the window-L3, the L3 under L4 slot
//! 511 (added when the guest's mapping does not use slot 511: every L4 must name one
//! there), and the M2P entry into L4 slot 256; no other L3 gets the hypervisor's entry
//! (the hypervisor validates the L3 under slot 511 as a window-L3 and every other as a
//! plain L3, whose entry 511 is the guest's). The layout has already checked that the
//! guest's mapping avoids both. This module must never write guest memory or give frames
//! their page-table types.

use alloc::vec;
use alloc::vec::Vec;

use abi::ids::{Mfn, Pfn};

use crate::address_space::{
    page_of, table_index, BITS_PER_LEVEL, ENTRIES_PER_TABLE, HYPERVISOR_L3_SLOT,
    HYPERVISOR_L4_SLOT, M2P_L4_SLOT,
};
use crate::layout::Plan;

/// Entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Entry bit: user accessible (the PV guest kernel runs at CPL 3).
pub const PTE_USER: u64 = 1 << 2;
/// Entry bit: accessed.
pub const PTE_ACCESSED: u64 = 1 << 5;
/// Entry bit: dirty (leaf entries only).
pub const PTE_DIRTY: u64 = 1 << 6;
/// Bits of an entry holding the machine address of the frame it points to.
pub const PTE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Flags of an entry pointing to a lower-level table.
pub const TABLE_ENTRY_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED;
/// Flags of an entry mapping an ordinary frame.
pub const PAGE_ENTRY_FLAGS: u64 = TABLE_ENTRY_FLAGS | PTE_DIRTY;
/// Flags of an entry mapping a page-table frame: read-only.
pub const PAGE_TABLE_ENTRY_FLAGS: u64 = PAGE_ENTRY_FLAGS & !PTE_WRITABLE;

/// A page-table level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    L1 = 1,
    L2 = 2,
    L3 = 3,
    L4 = 4,
}

impl Level {
    /// The level's number, 1 to 4.
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// log2 of the pages one table of this level covers.
    const fn coverage_shift(self) -> u32 {
        self.number() * BITS_PER_LEVEL
    }
}

/// A boot page-table frame and its level, for the hypervisor to type (and pin, the L4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableFrame {
    pub pfn: Pfn,
    pub level: Level,
}

/// The number of table frames (the L4 included) that map `pages` pages from virtual page
/// `first_page`, plus the L3 for the hypervisor's slot when the mapping does not use it.
pub fn table_frames_for(first_page: u64, pages: u64) -> u64 {
    if pages == 0 {
        return 2;
    }
    let last_page = first_page.saturating_add(pages - 1);
    let tables_at = |level: Level| {
        (last_page >> level.coverage_shift()) - (first_page >> level.coverage_shift()) + 1
    };
    let uses_hypervisor_slot = table_index(last_page, Level::L4.number()) == HYPERVISOR_L4_SLOT;
    1 + tables_at(Level::L3)
        + tables_at(Level::L2)
        + tables_at(Level::L1)
        + u64::from(!uses_hypervisor_slot)
}

/// One table: its frame and its 512 entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    pub frame: PageTableFrame,
    pub entries: Vec<u64>,
}

/// The entries a build copies verbatim from the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HypervisorEntries {
    /// For entry 511 of the L3 under L4 slot 511.
    pub hypervisor_l3_entry: u64,
    /// For L4 slot 256, if any.
    pub m2p_l4_entry: Option<u64>,
}

/// Builds the boot page tables of `plan`, the L4 first; `mfn_of` gives each frame's
/// machine frame.
pub(crate) fn build_tables(
    plan: &Plan,
    mfn_of: impl Fn(Pfn) -> Mfn,
    hypervisor: HypervisorEntries,
) -> Vec<Table> {
    let mut tree = Tree {
        tables: Vec::new(),
        next: plan.page_tables.start,
        mfn_of,
    };
    let l4 = tree.alloc(Level::L4);
    // The tables currently being filled at levels 3, 2 and 1.
    let mut path: [Option<Cursor>; 3] = [None; 3];
    for pfn in plan.mapping().iter() {
        let page = page_of(plan.va(pfn));
        let mut table = l4;
        for (cursor, level) in path.iter_mut().zip([Level::L3, Level::L2, Level::L1]) {
            table = tree.descend(table, cursor, page, level);
        }
        let flags = if plan.page_tables.contains(pfn) {
            PAGE_TABLE_ENTRY_FLAGS
        } else {
            PAGE_ENTRY_FLAGS
        };
        let entry = (tree.mfn_of)(pfn).address() | flags;
        tree.tables[table].entries[table_index(page, Level::L1.number())] = entry;
    }
    let hypervisor_l3 = match path[0] {
        Some(cursor) if table_index(cursor.key, 1) == HYPERVISOR_L4_SLOT => cursor.table,
        _ => {
            let l3 = tree.alloc(Level::L3);
            tree.link(l4, HYPERVISOR_L4_SLOT, l3);
            l3
        }
    };
    tree.tables[hypervisor_l3].entries[HYPERVISOR_L3_SLOT] = hypervisor.hypervisor_l3_entry;
    if let Some(entry) = hypervisor.m2p_l4_entry {
        tree.tables[l4].entries[M2P_L4_SLOT] = entry;
    }
    debug_assert_eq!(tree.tables.len() as u64, plan.nr_pt_frames);
    tree.tables
}

/// The table being filled at one level and the key (virtual page >> coverage) it covers.
#[derive(Clone, Copy)]
struct Cursor {
    key: u64,
    table: usize,
}

/// Tables under construction.
struct Tree<F> {
    tables: Vec<Table>,
    next: Pfn,
    mfn_of: F,
}

impl<F: Fn(Pfn) -> Mfn> Tree<F> {
    /// Takes the next page-table frame for an empty table.
    fn alloc(&mut self, level: Level) -> usize {
        self.tables.push(Table {
            frame: PageTableFrame {
                pfn: self.next,
                level,
            },
            entries: vec![0; ENTRIES_PER_TABLE],
        });
        self.next.0 += 1;
        self.tables.len() - 1
    }

    /// Points entry `slot` of table `parent` to table `child`.
    fn link(&mut self, parent: usize, slot: usize, child: usize) {
        let mfn = (self.mfn_of)(self.tables[child].frame.pfn);
        self.tables[parent].entries[slot] = mfn.address() | TABLE_ENTRY_FLAGS;
    }

    /// The level-`level` table under `parent` that covers `page`, created and linked when
    /// `page` leaves the one `cursor` holds. (The mapping is walked in address order, so
    /// each table is needed over one contiguous run of pages.)
    fn descend(
        &mut self,
        parent: usize,
        cursor: &mut Option<Cursor>,
        page: u64,
        level: Level,
    ) -> usize {
        let key = page >> level.coverage_shift();
        match *cursor {
            Some(current) if current.key == key => current.table,
            _ => {
                let table = self.alloc(level);
                self.link(parent, table_index(page, level.number() + 1), table);
                *cursor = Some(Cursor { key, table });
                table
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_BASE_PAGE: u64 = 0xFFFF_FFFF_8000_0000 >> 12;

    #[test]
    fn entry_flags_are_the_hardware_bits() {
        assert_eq!(TABLE_ENTRY_FLAGS, 0x27);
        assert_eq!(PAGE_ENTRY_FLAGS, 0x67);
        assert_eq!(PAGE_TABLE_ENTRY_FLAGS, 0x65);
    }

    #[test]
    fn an_empty_mapping_needs_the_l4_and_the_hypervisor_l3() {
        assert_eq!(table_frames_for(LINUX_BASE_PAGE, 0), 2);
    }

    #[test]
    fn counts_one_table_per_level_and_boundary() {
        // Within one L1 in slot 511: L4, L3, L2, L1.
        assert_eq!(table_frames_for(LINUX_BASE_PAGE, 512), 4);
        // One page more crosses into a second L1.
        assert_eq!(table_frames_for(LINUX_BASE_PAGE, 513), 5);
        // From the last page below a 1 GiB boundary: two L2s and two L1s.
        assert_eq!(table_frames_for(LINUX_BASE_PAGE - 1, 2), 1 + 1 + 2 + 2);
        // In the lower half, the hypervisor's slot needs its own L3.
        assert_eq!(table_frames_for(0x400, 1024), 1 + 1 + 1 + 2 + 1);
        // Across an L4 slot boundary below slot 511: two L3s, L2s and L1s, plus one.
        let slot_1 = 1u64 << 27;
        assert_eq!(table_frames_for(slot_1 - 1, 2), 1 + 2 + 2 + 2 + 1);
    }
}
