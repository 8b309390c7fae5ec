//! This guest's view of memory: the machine-to-physical (M2P) table read at Xen's address,
//! the P2M list (`start_info.mfn_list`) read and written, and the pages at the initial
//! mapping (`VIRT_BASE + pfn * 4096`) mapped and unmapped.
//!
//! Only `main` and `calls` use it. The P2M list is reached through raw pointers only (the
//! runtime's slice of it is never held while it changes); nothing here touches a frame
//! below the first free one.

use guest_rt::abi::arch_x86::MACH2PHYS_VIRT_START;
use guest_rt::abi::ids::{Mfn, Pfn, PAGE_SIZE};
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::probe::{self, Fault};
use guest_rt::{layout, start_info};

/// A P2M entry of a frame the domain no longer has (Linux's `INVALID_P2M_ENTRY`), and an
/// M2P entry of a frame no domain has named (Xen's `INVALID_M2P_ENTRY`).
pub const INVALID: u64 = u64::MAX;

/// The address of `mfn`'s M2P entry.
pub const fn m2p_address(mfn: Mfn) -> u64 {
    MACH2PHYS_VIRT_START + mfn.0 * 8
}

/// `mfn`'s M2P entry, or the fault that reading it took (a frame past the table).
pub fn m2p(mfn: Mfn) -> Result<u64, Fault> {
    probe::read(m2p_address(mfn))
}

/// The machine frame the P2M list records for `pfn` (a frame of the reservation).
pub fn p2m(pfn: Pfn) -> Mfn {
    // SAFETY: the entry lies in the list, which the runtime checked is aligned and in the
    // initial mapping; nothing holds a reference into it.
    unsafe { p2m_entry(pfn).read_volatile() }
}

/// Records `mfn` behind `pfn`.
pub fn set_p2m(pfn: Pfn, mfn: Mfn) {
    // SAFETY: as in `p2m`; the list is ordinary writable memory of this guest.
    unsafe { p2m_entry(pfn).write_volatile(mfn) }
}

fn p2m_entry(pfn: Pfn) -> *mut Mfn {
    let info = start_info();
    assert!(pfn.0 < info.nr_pages, "{pfn:?} is beyond the P2M list");
    (info.mfn_list as *mut Mfn).wrapping_add(pfn.0 as usize)
}

/// The initial-mapping address of `pfn`.
pub fn page_address(pfn: Pfn) -> u64 {
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

/// Maps `mfn` writable at `pfn`'s page.
///
/// # Safety
/// The page must be unused, and `mfn` a frame of the domain nothing else uses.
pub unsafe fn map(pfn: Pfn, mfn: Mfn) -> Result<(), HypercallError> {
    let pte = layout::kernel_rw_pte(mfn.address());
    // SAFETY: the caller vouches for the page and the frame.
    unsafe { hypercall::update_va_mapping(page_address(pfn), pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// Whether `pfn`'s page (mapped) reads all zero, as a new frame must.
///
/// # Safety
/// The page must be mapped and used by nothing else.
pub unsafe fn is_zero(pfn: Pfn) -> bool {
    let page = page_address(pfn) as *const u64;
    // SAFETY: the caller vouches that the page is mapped and unused.
    (0..(PAGE_SIZE / 8) as usize).all(|i| unsafe { page.add(i).read_volatile() } == 0)
}
