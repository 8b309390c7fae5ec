//! The pages the grant test uses, all in the image's bss: pages of its own to grant
//! (filled with patterns), and windows, page-aligned addresses where it maps its grant
//! table, its status frame and the other domain's grants. Plus the words both domains
//! read and write through a granted mailbox page, volatile (the other domain changes them).
//!
//! A window's own frame stops being mapped there once something is mapped over it; the
//! program never uses a window as memory otherwise. This module never makes a hypercall.

use guest_rt::abi::ids::{Mfn, PAGE_SIZE};
use guest_rt::start_info;

/// One page of the image.
#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE_SIZE as usize]);

/// Pages of this domain that it grants or copies into.
pub const OWN_PAGES: usize = 8;
/// Addresses to map things at.
pub const WINDOWS: usize = 8;

static mut OWN: [Page; OWN_PAGES] = [const { Page([0; PAGE_SIZE as usize]) }; OWN_PAGES];
static mut WINDOW: [Page; WINDOWS] = [const { Page([0; PAGE_SIZE as usize]) }; WINDOWS];

/// Own page `i`'s address.
pub fn own(i: usize) -> u64 {
    // Only the address is taken; the page is accessed through volatile pointers.
    (&raw const OWN) as u64 + (i * PAGE_SIZE as usize) as u64
}

/// The machine frame of own page `i`.
pub fn own_mfn(i: usize) -> Mfn {
    start_info::virt_to_mfn(own(i)).expect("the image's bss is in the initial mapping")
}

/// Window `i`'s address.
pub fn window(i: usize) -> u64 {
    (&raw const WINDOW) as u64 + (i * PAGE_SIZE as usize) as u64
}

/// Word `index` of the pattern seeded with `seed`.
pub const fn pattern(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).rotate_left(29)
}

/// Fills the page at `va` with the pattern of `seed`.
pub fn fill(va: u64, seed: u64) {
    for index in 0..512 {
        write(va, index, pattern(seed, index));
    }
}

/// Whether the page at `va` holds the pattern of `seed` in words `words`.
pub fn holds(va: u64, seed: u64, words: core::ops::Range<usize>) -> bool {
    words.into_iter().all(|index| read(va, index) == pattern(seed, index))
}

/// Word `index` of the page mapped at `va`.
pub fn read(va: u64, index: usize) -> u64 {
    // SAFETY: every caller passes a page it owns or has mapped readable, index < 512.
    unsafe { ((va + index as u64 * 8) as *const u64).read_volatile() }
}

/// Sets word `index` of the page mapped writable at `va`.
pub fn write(va: u64, index: usize, value: u64) {
    // SAFETY: every caller passes a page it owns or has mapped writable, index < 512.
    unsafe { ((va + index as u64 * 8) as *mut u64).write_volatile(value) }
}

/// Byte `index` of the page at `va`.
pub fn byte(va: u64, index: usize) -> u8 {
    // SAFETY: as `read`, index < 4096.
    unsafe { ((va + index as u64) as *const u8).read_volatile() }
}
