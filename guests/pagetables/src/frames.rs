//! Free frames and the pages at them: the runtime's cursor over the frames the builder's
//! layout leaves unused (all mapped writable at start of day, `guest_rt::frames`), and
//! filling or checking a page through any address that maps it.
//!
//! The builder lays out, from pfn 0: the image, the P2M list, `start_info`, the boot page
//! tables (`nr_pt_frames` of them from `pt_base`) and one boot stack page; the frames after
//! the stack are free, and the initial mapping covers at least Xen's 512 KiB of slack
//! past the stack (within the reservation). `main` takes frames here for page tables, for
//! pages to map, and for holes to fault on. This module must never hand out a frame twice
//! or one below the first free frame.

use guest_rt::abi::ids::PAGE_SIZE;

pub use guest_rt::frames::{Frame, FreeFrames};

/// Words in a page.
const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

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
