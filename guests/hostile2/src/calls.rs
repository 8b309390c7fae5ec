//! The hypercalls the races make, each as one small typed call returning rax decoded.
//!
//! Every race module calls these. They change only the probe pages and frames the races
//! took for themselves; this module must never be handed an address the program uses.

use guest_rt::abi::hypercall::{MemoryOp, MmuUpdateCmd, MmuextCmd};
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp};
use guest_rt::hypercall::{self, HypercallError};

/// `update_va_mapping(va, pte, flags)` of a probe page.
pub fn map(va: u64, pte: u64, flags: u64) -> Result<(), HypercallError> {
    // SAFETY: `va` is a probe page the races reach only through `probe`.
    unsafe { hypercall::update_va_mapping(va, pte, flags) }
}

/// One `mmuext_op` on a race's frame (pin, unpin, flushes).
pub fn extended(cmd: MmuextCmd, mfn: Mfn) -> Result<(), HypercallError> {
    let op = MmuextOp::with_mfn(cmd, mfn);
    let mut done = 0;
    // SAFETY: pins and flushes change no mapping the program uses.
    unsafe { hypercall::mmuext_op(core::slice::from_ref(&op), &mut done, DomId::SELF) }
}

/// One `mmu_update` writing `value` into the entry at machine address `entry`.
pub fn update(entry: u64, value: u64) -> Result<(), HypercallError> {
    let request = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, entry, value);
    let mut done = 0;
    // SAFETY: the races rewrite only their own probe pages' entries.
    unsafe { hypercall::mmu_update(core::slice::from_ref(&request), &mut done, DomId::SELF) }
}

/// `decrease_reservation` (`increase`: false) or `increase_reservation` of one frame in
/// `extent`; the number of extents done.
pub fn reservation(increase: bool, extent: &mut Mfn) -> Result<u64, HypercallError> {
    let mut request = XenMemoryReservation {
        extent_start: extent as *mut Mfn as u64,
        nr_extents: 1,
        domid: DomId::SELF,
        ..XenMemoryReservation::default()
    };
    let cmd = if increase { MemoryOp::IncreaseReservation } else { MemoryOp::DecreaseReservation };
    // SAFETY: the hypervisor reads or writes the one extent; a frame given back is no
    // longer mapped by this guest.
    unsafe { hypercall::memory_op(cmd, &raw mut request) }
}
