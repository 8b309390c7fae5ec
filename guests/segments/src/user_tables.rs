//! The guest user mode's top-level page table: a free frame, zeroed and filled with the
//! kernel L4's entries through its writable initial mapping while it is still ordinary
//! memory, then mapped read-only (a page-table frame may have no writable mapping),
//! pinned as an L4 and installed with `MMUEXT_NEW_USER_BASEPTR`.
//!
//! Guest kernel and user share every mapping here (the hypervisor forces the User bit on
//! all guest entries anyway); the hypervisor's reserved L4 slots are left empty, as the
//! validator fills them itself. `main` calls [`install`] once. This module
//! must never write the frame once it is a table.

use core::ops::Range;

use guest_rt::abi::arch_x86::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};
use guest_rt::abi::hypercall::MmuextCmd;
use guest_rt::abi::ids::DomId;
use guest_rt::abi::mmu::{MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall;
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER};

use crate::Failure;
use guest_rt::frames::Frame;

/// Entries in a page table.
const ENTRIES: usize = 512;
/// Bits of a virtual address above the L4 index.
const L4_SHIFT: u32 = 39;
/// The L4 slots reserved for the hypervisor (Xen's 256-271).
const RESERVED_SLOTS: Range<usize> = l4_slot(HYPERVISOR_VIRT_START)..l4_slot(HYPERVISOR_VIRT_END);

/// The L4 slot that maps `va`.
const fn l4_slot(va: u64) -> usize {
    ((va >> L4_SHIFT) as usize) % ENTRIES
}

/// Builds the user L4 in `frame` from the kernel L4 at `kernel_l4` (its read-only
/// initial-mapping address), pins it and makes it the user top-level table.
///
/// # Safety
/// `frame` must be a free frame mapped writable at its own address that nothing else uses;
/// it stays a page table for the rest of the domain's life.
pub unsafe fn install(frame: Frame, kernel_l4: u64) -> Result<(), Failure> {
    // SAFETY: the caller vouches for the frame; the kernel L4 is mapped readable.
    unsafe { fill(frame.va() as *mut u64, kernel_l4 as *const u64) };
    let read_only = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the frame's initial mapping loses only its write permission; nothing writes
    // the frame from now on.
    unsafe { hypercall::update_va_mapping(frame.va(), read_only, UVMF_INVLPG | UVMF_LOCAL) }
        .map_err(|e| Failure::Call("remapping the user L4 read-only", e))?;
    mmuext(
        MmuextOp::with_mfn(MmuextCmd::PinL4Table, frame.mfn),
        "pinning the user L4",
    )?;
    mmuext(
        MmuextOp::with_mfn(MmuextCmd::NewUserBaseptr, frame.mfn),
        "new_user_baseptr",
    )
}

/// Zeroes the table at `table`, then copies the kernel L4's guest entries into it.
///
/// # Safety
/// `table` must be a writable page nothing else uses; `kernel_l4` a readable table.
unsafe fn fill(table: *mut u64, kernel_l4: *const u64) {
    // SAFETY: the caller vouches for the page, which holds ENTRIES words.
    unsafe { core::ptr::write_bytes(table, 0, ENTRIES) };
    for slot in (0..ENTRIES).filter(|slot| !RESERVED_SLOTS.contains(slot)) {
        // SAFETY: both pages hold ENTRIES words; the kernel L4 may change under us only by
        // our own hypercalls, none of which run here.
        unsafe {
            table
                .add(slot)
                .write_volatile(kernel_l4.add(slot).read_volatile())
        };
    }
}

/// One `mmuext_op`, reported as `call` when it fails.
fn mmuext(op: MmuextOp, call: &'static str) -> Result<(), Failure> {
    let mut done = 0;
    // SAFETY: pinning and setting the user base pointer leave the kernel's own mappings
    // untouched; the table's frame is no longer written.
    unsafe { hypercall::mmuext_op(&[op], &mut done, DomId::SELF) }
        .map_err(|e| Failure::Call(call, e))
}
