//! Free frames and the pages at them: a cursor over the frames the builder's layout leaves
//! unused (all mapped writable at start of day), and filling or checking a page through
//! any address that maps it.
//!
//! The builder lays out, from pfn 0: the image, the P2M list, `start_info`, the boot page
//! tables (`nr_pt_frames` of them from `pt_base`) and one boot stack page; the frames after
//! the stack are free, and the initial mapping covers at least Xen's 512 KiB of slack
//! past the stack (within the reservation). `main` takes frames here for page tables, for
//! pages to map, and for holes to fault on. This module must never hand out a frame twice
//! or one below the first free frame.

use core::ops::Range;

use guest_rt::abi::ids::{Mfn, Pfn, PAGE_SIZE};
use guest_rt::{layout, start_info, StartInfo};

/// Xen's boot slack in pages (512 KiB): the initial mapping covers at least this many
/// frames after the boot stack, when the reservation has them.
const BOOT_SLACK_PAGES: u64 = 128;

/// Words in a page.
const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

/// A free frame of the domain.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub pfn: Pfn,
    pub mfn: Mfn,
}

impl Frame {
    /// The frame's address in the initial mapping.
    pub fn va(&self) -> u64 {
        // The frame lies below nr_pages, whose mapping the runtime checked fits.
        layout::pfn_to_virt(self.pfn).expect("a frame of the reservation has an address")
    }
}

/// The free frames not yet taken.
#[derive(Debug)]
pub struct FreeFrames {
    pfns: Range<u64>,
}

impl FreeFrames {
    /// The free frames that start out mapped; `None` when `pt_base` lies outside the
    /// initial mapping.
    pub fn new(start: &StartInfo) -> Option<Self> {
        let first_table = layout::virt_to_pfn(start.pt_base)?;
        // The boot stack page follows the tables.
        let first_free = first_table
            .0
            .saturating_add(start.nr_pt_frames)
            .saturating_add(1);
        let end = first_free
            .saturating_add(BOOT_SLACK_PAGES)
            .min(start.nr_pages);
        Some(Self {
            pfns: first_free..end.max(first_free),
        })
    }

    /// The next free frame, still mapped writable at its own address; `None` when all are
    /// taken.
    pub fn take(&mut self) -> Option<Frame> {
        let pfn = Pfn(self.pfns.next()?);
        let mfn = start_info::pfn_to_mfn(pfn)?;
        Some(Frame { pfn, mfn })
    }
}

/// Word `index` of the page pattern seeded with `marker`.
pub const fn pattern(marker: u64, index: usize) -> u64 {
    marker ^ (index as u64).rotate_left(40)
}

/// Fills the page at `va` with the pattern seeded with `marker`.
///
/// # Safety
/// `va` must be page aligned and map a writable page that nothing else uses as memory.
pub unsafe fn fill(va: u64, marker: u64) {
    let page = va as *mut u64;
    for index in 0..WORDS_PER_PAGE {
        // SAFETY: the caller vouches for the page; volatile, so that the words reach the
        // frame however it is mapped.
        unsafe { page.add(index).write_volatile(pattern(marker, index)) };
    }
}

/// Whether the page at `va` holds the pattern seeded with `marker`.
///
/// # Safety
/// `va` must be page aligned and map a readable page.
pub unsafe fn holds(va: u64, marker: u64) -> bool {
    let page = va as *const u64;
    (0..WORDS_PER_PAGE).all(|index| {
        // SAFETY: the caller vouches for the page; volatile, so that the frame behind the
        // current mapping is read.
        unsafe { page.add(index).read_volatile() == pattern(marker, index) }
    })
}

/// Zeroes the page at `va`.
///
/// # Safety
/// As [`fill`].
pub unsafe fn zero(va: u64) {
    // SAFETY: the caller vouches for the page.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE as usize) };
}
