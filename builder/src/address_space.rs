//! The facts of the x86-64 address space that the start-of-day layout obeys, in one
//! place: page-table geometry, the canonical halves, the two hypervisor-provided regions a
//! guest's initial mapping must stay out of, and Xen's slack and rounding rules.
//!
//! The layout planner and the page-table writer use these constants; the check of a
//! planned initial mapping lives here too. Addresses are handled as virtual page numbers
//! (address >> 12), which cannot overflow while adding frame counts. This module must
//! never decide where the hypervisor itself lives beyond these two regions.

use abi::arch_x86::MACH2PHYS_VIRT_START;

use crate::error::BuildError;

// ---- Page-table geometry (4-level paging). ----

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = abi::ids::PAGE_SHIFT;
/// Bytes per page.
pub const PAGE_SIZE: u64 = abi::ids::PAGE_SIZE;
/// Entries in one page-table frame.
pub const ENTRIES_PER_TABLE: usize = 512;
/// Virtual-address bits translated by one page-table level.
pub const BITS_PER_LEVEL: u32 = 9;
/// P2M entries (8 bytes each) per frame.
pub const P2M_ENTRIES_PER_FRAME: u64 = PAGE_SIZE / 8;

// ---- Hypervisor-provided regions. ----

/// L4 slot of Xen's read-only machine-to-physical table (0xFFFF_8000_0000_0000).
pub const M2P_L4_SLOT: usize = 256;
/// L4 slot holding the hypervisor (the top 512 GiB).
pub const HYPERVISOR_L4_SLOT: usize = 511;
/// Entry of the slot-511 L3 that maps the hypervisor (the top 1 GiB, which holds the
/// hypervisor's top 64 MiB).
pub const HYPERVISOR_L3_SLOT: usize = 511;

// ---- Xen's start-of-day rules. ----

/// Free space the initial mapping leaves after the boot stack, at least.
pub const BOOT_SLACK: u64 = 512 << 10;
/// The initial mapping ends on a multiple of this.
pub const MAPPING_ALIGN: u64 = 4 << 20;

// ---- The same, in virtual page numbers. ----

/// Pages of the lower canonical half (addresses below 2^47).
const LOWER_HALF_END_PAGE: u64 = 1 << (47 - PAGE_SHIFT);
/// First page of the upper canonical half.
const UPPER_HALF_START_PAGE: u64 = ADDRESS_SPACE_END_PAGE - LOWER_HALF_END_PAGE;
/// One past the last page of the address space (2^64 / 4096).
const ADDRESS_SPACE_END_PAGE: u64 = 1 << (64 - PAGE_SHIFT);
/// Pages one L4 slot covers.
const PAGES_PER_L4_SLOT: u64 = 1 << (3 * BITS_PER_LEVEL);
/// Pages one L3 entry covers.
const PAGES_PER_L3_ENTRY: u64 = 1 << (2 * BITS_PER_LEVEL);
/// First page of the M2P slot.
const M2P_START_PAGE: u64 = MACH2PHYS_VIRT_START >> PAGE_SHIFT;
/// First page the hypervisor's L3 entry covers (0xFFFF_FFFF_C000_0000).
const HYPERVISOR_START_PAGE: u64 = ADDRESS_SPACE_END_PAGE - PAGES_PER_L3_ENTRY;

/// [`BOOT_SLACK`] in pages.
pub const BOOT_SLACK_PAGES: u64 = BOOT_SLACK / PAGE_SIZE;
/// [`MAPPING_ALIGN`] in pages.
pub const MAPPING_ALIGN_PAGES: u64 = MAPPING_ALIGN / PAGE_SIZE;

/// The virtual page number of an address.
pub const fn page_of(address: u64) -> u64 {
    address >> PAGE_SHIFT
}

/// Index into a level-`level` table (1 = L1 ... 4 = L4) of a virtual page number.
pub const fn table_index(page: u64, level: u32) -> usize {
    ((page >> ((level - 1) * BITS_PER_LEVEL)) as usize) & (ENTRIES_PER_TABLE - 1)
}

/// Checks that an initial mapping of `pages` pages from `start` (a page-aligned virtual
/// address) is canonical and stays out of the M2P slot and the hypervisor's gigabyte.
pub fn check_initial_mapping(start: u64, pages: u64) -> Result<(), BuildError> {
    let first = page_of(start);
    let end = first.saturating_add(pages);
    let in_lower = end <= LOWER_HALF_END_PAGE;
    let in_upper = first >= UPPER_HALF_START_PAGE && end <= ADDRESS_SPACE_END_PAGE;
    if !in_lower && !in_upper && pages != 0 {
        return Err(BuildError::NonCanonical { start, pages });
    }
    if first < M2P_START_PAGE + PAGES_PER_L4_SLOT && end > M2P_START_PAGE {
        return Err(BuildError::CollidesWithM2p { start, pages });
    }
    if end > HYPERVISOR_START_PAGE {
        return Err(BuildError::CollidesWithHypervisor { start, pages });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_addresses() {
        assert_eq!(UPPER_HALF_START_PAGE << PAGE_SHIFT, 0xFFFF_8000_0000_0000);
        assert_eq!(
            M2P_START_PAGE, UPPER_HALF_START_PAGE,
            "slot 256 opens the upper half"
        );
        assert_eq!(HYPERVISOR_START_PAGE << PAGE_SHIFT, 0xFFFF_FFFF_C000_0000);
        assert_eq!(BOOT_SLACK_PAGES, 128);
        assert_eq!(MAPPING_ALIGN_PAGES, 1024);
    }

    #[test]
    fn table_indices() {
        let page = page_of(0xFFFF_FFFF_8020_3000);
        assert_eq!(table_index(page, 4), 511);
        assert_eq!(table_index(page, 3), 510);
        assert_eq!(table_index(page, 2), 1);
        assert_eq!(table_index(page, 1), 3);
        assert_eq!(table_index(page_of(0xFFFF_8000_0000_0000), 4), M2P_L4_SLOT);
    }

    #[test]
    fn accepts_ordinary_mappings() {
        assert_eq!(check_initial_mapping(0, 1024), Ok(()));
        assert_eq!(check_initial_mapping(0xFFFF_FFFF_8000_0000, 1024), Ok(()));
        // Up to, not into, the hypervisor's gigabyte.
        assert_eq!(
            check_initial_mapping(0xFFFF_FFFF_8000_0000, PAGES_PER_L3_ENTRY),
            Ok(())
        );
        // Right after the M2P slot.
        assert_eq!(check_initial_mapping(0xFFFF_8080_0000_0000, 1024), Ok(()));
    }

    #[test]
    fn refuses_the_non_canonical_hole() {
        let start = 0x7FFF_FFE0_0000;
        assert_eq!(
            check_initial_mapping(start, 1024),
            Err(BuildError::NonCanonical { start, pages: 1024 })
        );
        assert!(check_initial_mapping(0xFFFF_0000_0000_0000, 1).is_err());
    }

    #[test]
    fn refuses_the_m2p_slot() {
        let start = 0xFFFF_8000_0000_0000;
        assert_eq!(
            check_initial_mapping(start, 1),
            Err(BuildError::CollidesWithM2p { start, pages: 1 })
        );
        let last_page = 0xFFFF_807F_FFFF_F000;
        assert!(check_initial_mapping(last_page, 1).is_err());
    }

    #[test]
    fn refuses_the_hypervisor_gigabyte() {
        let start = 0xFFFF_FFFF_BFE0_0000;
        assert_eq!(
            check_initial_mapping(start, 1024),
            Err(BuildError::CollidesWithHypervisor { start, pages: 1024 })
        );
        assert!(check_initial_mapping(0xFFFF_FFFF_FFFF_F000, 1).is_err());
        assert!(matches!(
            check_initial_mapping(0xFFFF_FFFF_FFFF_F000, 2),
            Err(BuildError::NonCanonical { .. })
        ));
    }
}
