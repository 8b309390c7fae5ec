//! The free part of the reservation and the pages at its frames: which guest frames the
//! builder's layout leaves unused, mapping or unmapping one at its initial-mapping address
//! (`VIRT_BASE + pfn * 4096`), and the pattern test a regained page must pass.
//!
//! The builder lays out, from pfn 0: the image, the P2M list, `start_info`, the boot page
//! tables (`nr_pt_frames` of them from `pt_base`) and one boot stack page; the frames after
//! the stack are free. Its initial mapping reaches at least Xen's 512 KiB of slack past the
//! stack (within the reservation), so those free frames start out mapped writable. Only
//! `main` calls this module; it must never touch a frame below the first free one.

use core::ops::Range;

use guest_rt::abi::ids::{Mfn, Pfn, PAGE_SIZE};
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::{layout, StartInfo};

/// Xen's boot slack in pages (512 KiB): the initial mapping covers at least this many
/// frames after the boot stack, when the reservation has them.
const BOOT_SLACK_PAGES: u64 = 128;

/// Words in a page.
const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

/// The numbers of the free frames that start out mapped: from the frame after the boot
/// stack through the guaranteed slack, within the reservation. `None` when `pt_base` lies
/// outside the initial mapping.
pub fn mapped_free_frames(start: &StartInfo) -> Option<Range<u64>> {
    let first_table = layout::virt_to_pfn(start.pt_base)?;
    // The boot stack page follows the tables.
    let first_free = first_table
        .0
        .saturating_add(start.nr_pt_frames)
        .saturating_add(1);
    let end = first_free
        .saturating_add(BOOT_SLACK_PAGES)
        .min(start.nr_pages);
    Some(first_free..end.max(first_free))
}

/// The initial-mapping address of `pfn`, a frame of the reservation.
fn page_address(pfn: Pfn) -> u64 {
    // The runtime checked that nr_pages pages from VIRT_BASE fit the address space.
    layout::pfn_to_virt(pfn).expect("a frame of the reservation has an address")
}

/// Unmaps `pfn`'s page.
///
/// # Safety
/// Nothing may use the page any more.
pub unsafe fn unmap(pfn: Pfn) -> Result<(), HypercallError> {
    // SAFETY: the caller vouches that the page is unused.
    unsafe { hypercall::update_va_mapping(page_address(pfn), 0, UVMF_INVLPG | UVMF_LOCAL) }
}

/// Maps machine frame `mfn` writable at `pfn`'s page.
///
/// # Safety
/// The page must be unmapped (or unused), and `mfn` a frame of the domain that nothing else
/// uses.
pub unsafe fn map(pfn: Pfn, mfn: Mfn) -> Result<(), HypercallError> {
    let pte = layout::kernel_rw_pte(mfn.address());
    // SAFETY: the caller vouches that the page and the frame are unused.
    unsafe { hypercall::update_va_mapping(page_address(pfn), pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// The pattern word `index` of `pfn`'s page: unique to the frame and the word.
const fn pattern(pfn: Pfn, index: usize) -> u64 {
    (pfn.0 << 32 | index as u64) ^ 0xA5A5_5A5A_0F0F_F0F0
}

/// Fills `pfn`'s page with its pattern, then reads all of it back: whether every word held.
///
/// # Safety
/// The page must be mapped writable and used by nothing else.
pub unsafe fn pattern_holds(pfn: Pfn) -> bool {
    let page = page_address(pfn) as *mut u64;
    for index in 0..WORDS_PER_PAGE {
        // SAFETY: the caller vouches that the page is mapped and ours to write; volatile so
        // that the words really go to memory before they are read back.
        unsafe { page.add(index).write_volatile(pattern(pfn, index)) };
    }
    (0..WORDS_PER_PAGE).all(|index| {
        // SAFETY: as above.
        unsafe { page.add(index).read_volatile() == pattern(pfn, index) }
    })
}
