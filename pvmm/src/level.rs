//! The four levels of an x86-64 page-table tree, and how each maps to the frame types
//! ([`PageType`]) a table of that level is validated for: one per level, plus the
//! window-L3 ([`PageType::WindowL3`]), the L3 under L4 slot 511 (see [`crate::policy`]).
//!
//! Used by every module that walks, validates or updates tables. Pure arithmetic: it never
//! touches a table or the frame metadata.

use mm::frame::PageType;

/// A page-table level: `L1` tables map 4 KiB pages, `L4` is the root CR3 points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Page table (PT): entries map 4 KiB pages.
    L1,
    /// Page directory (PD): entries point at L1 tables.
    L2,
    /// Page-directory-pointer table (PDPT): entries point at L2 tables.
    L3,
    /// PML4: entries point at L3 tables.
    L4,
}

impl Level {
    /// Every level, from the leaves up.
    pub const ALL: [Level; 4] = [Level::L1, Level::L2, Level::L3, Level::L4];

    /// The frame type a plain table of this level is validated for (what a pin of this
    /// level takes). An L3 under L4 slot 511 takes [`PageType::WindowL3`] instead
    /// ([`crate::policy::child_type`]).
    pub const fn page_type(self) -> PageType {
        match self {
            Level::L1 => PageType::L1,
            Level::L2 => PageType::L2,
            Level::L3 => PageType::L3,
            Level::L4 => PageType::L4,
        }
    }

    /// The level whose tables are validated for `page_type`; `None` for the types that
    /// are not page tables.
    pub const fn of_page_type(page_type: PageType) -> Option<Level> {
        match page_type {
            PageType::L1 => Some(Level::L1),
            PageType::L2 => Some(Level::L2),
            PageType::L3 | PageType::WindowL3 => Some(Level::L3),
            PageType::L4 => Some(Level::L4),
            PageType::None | PageType::SegmentDescriptors | PageType::Shared => None,
        }
    }

    /// The level of the tables this level's entries point at; `None` for L1, whose
    /// entries map pages.
    pub const fn child(self) -> Option<Level> {
        match self {
            Level::L1 => None,
            Level::L2 => Some(Level::L1),
            Level::L3 => Some(Level::L2),
            Level::L4 => Some(Level::L3),
        }
    }

    /// The index of `virtual_address` in a table of this level.
    pub const fn index_of(self, virtual_address: u64) -> usize {
        let shift = 12 + 9 * (self as u32);
        ((virtual_address >> shift) & 0x1ff) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_types_round_trip() {
        for level in Level::ALL {
            assert_eq!(Level::of_page_type(level.page_type()), Some(level));
        }
        assert_eq!(Level::of_page_type(PageType::WindowL3), Some(Level::L3));
        for other in [
            PageType::None,
            PageType::SegmentDescriptors,
            PageType::Shared,
        ] {
            assert_eq!(Level::of_page_type(other), None);
        }
    }

    #[test]
    fn children_descend_one_level() {
        assert_eq!(Level::L4.child(), Some(Level::L3));
        assert_eq!(Level::L3.child(), Some(Level::L2));
        assert_eq!(Level::L2.child(), Some(Level::L1));
        assert_eq!(Level::L1.child(), None);
    }

    #[test]
    fn indices_follow_the_hardware_split() {
        // 0xFFFF_8000_0000_0000: L4 slot 256, the M2P window's slot in Xen's layout.
        assert_eq!(Level::L4.index_of(0xFFFF_8000_0000_0000), 256);
        // The top 64 MiB window: L4 511, L3 511, L2 480.
        let window = 0xFFFF_FFFF_FC00_0000;
        assert_eq!(Level::L4.index_of(window), 511);
        assert_eq!(Level::L3.index_of(window), 511);
        assert_eq!(Level::L2.index_of(window), 480);
        assert_eq!(Level::L1.index_of(window), 0);
        let va = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0xabc;
        let indices = Level::ALL.map(|level| level.index_of(va));
        assert_eq!(indices, [9, 7, 5, 3]);
    }
}
