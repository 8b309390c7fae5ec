//! The shared info page: mapping it, and reading what the hypervisor writes there that the
//! runtime needs (the page-fault address of vCPU 0).
//!
//! `start_info.shared_info` is a machine address, not mapped at start of day. The runtime
//! reserves one page-aligned page of its own bss for it (`guest_rt_shared_info_page`,
//! defined in assembly so that Rust never treats it as ordinary memory) and points that
//! virtual page at the shared frame with `update_va_mapping`, as Mini-OS does: the page's
//! L1 table is one of the boot tables, so no page-table memory is needed. Guests call
//! [`map_shared_info`]; the trap dispatcher uses [`fault_address`]. Everything the
//! hypervisor writes is read with volatile loads. This module must never cache values
//! from the page.

use core::arch::global_asm;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use abi::ids::PAGE_SIZE;
use abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
pub use abi::shared_info::SharedInfo;

use crate::hypercall::{self, HypercallError};
use crate::layout;
use crate::start_info::start_info;

global_asm!(
    ".pushsection .bss.guest_rt_shared_info,\"aw\",@nobits",
    ".balign {page}",
    ".globl guest_rt_shared_info_page",
    "guest_rt_shared_info_page:",
    ".skip {page}",
    ".popsection",
    page = const PAGE_SIZE,
);

extern "C" {
    /// The virtual page the shared info frame is mapped at (defined above).
    static guest_rt_shared_info_page: [u8; PAGE_SIZE as usize];
}

/// Whether the page now maps the shared info frame.
static MAPPED: AtomicBool = AtomicBool::new(false);

/// The virtual address the shared info page is (or will be) mapped at.
fn page_address() -> *mut SharedInfo {
    (&raw const guest_rt_shared_info_page)
        .cast::<SharedInfo>()
        .cast_mut()
}

/// Maps the shared info page (once; later calls return the same pointer) and returns it.
/// Read fields the hypervisor writes with volatile loads.
pub fn map_shared_info() -> Result<NonNull<SharedInfo>, HypercallError> {
    let page = page_address();
    if !MAPPED.load(Ordering::Acquire) {
        let pte = layout::kernel_rw_pte(start_info().shared_info);
        // SAFETY: the page is the runtime's own, reserved for this mapping; no Rust
        // reference to it exists (it is only reached through raw pointers once mapped), so
        // replacing its frame invalidates nothing. The frame it held before stays the
        // domain's, merely unmapped.
        unsafe { hypercall::update_va_mapping(page as u64, pte, UVMF_INVLPG | UVMF_LOCAL)? };
        MAPPED.store(true, Ordering::Release);
    }
    NonNull::new(page).ok_or(HypercallError::BadArgument)
}

/// The shared info page, if [`map_shared_info`] has mapped it.
pub fn shared_info() -> Option<NonNull<SharedInfo>> {
    if MAPPED.load(Ordering::Acquire) {
        NonNull::new(page_address())
    } else {
        None
    }
}

/// The address of vCPU 0's last page fault (`vcpu_info[0].arch.cr2`), if the page is
/// mapped. The runtime runs on vCPU 0 only.
pub fn fault_address() -> Option<u64> {
    let page = shared_info()?;
    // SAFETY: the page is mapped to the shared info frame; the hypervisor may write the
    // field at any time, hence a volatile read through a raw pointer.
    Some(unsafe { ptr::addr_of!((*page.as_ptr()).vcpu_info[0].arch.cr2).read_volatile() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_page_is_page_aligned() {
        assert_eq!(page_address() as u64 % PAGE_SIZE, 0);
        assert!(size_of::<SharedInfo>() as u64 <= PAGE_SIZE);
    }

    #[test]
    fn nothing_is_read_before_mapping() {
        assert_eq!(shared_info(), None);
        assert_eq!(fault_address(), None);
    }
}
