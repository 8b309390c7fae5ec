//! The hypercalls the races make, each as one small typed call returning rax decoded, and
//! batches of them (a multicall of `update_va_mapping`s, one `mmuext_op` of many ops, one
//! reservation change of many extents), so that a race round can act on many frames at once.
//!
//! Every race module calls these. They change only the probe pages and frames the races
//! took for themselves; this module must never be handed an address the program uses.

use guest_rt::abi::hypercall::{Hypercall, MemoryOp, MmuUpdateCmd, MmuextCmd, MulticallEntry};
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::memory::XenMemoryReservation;
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp};
use guest_rt::hypercall::{self, HypercallError};

/// The most frames one batch handles.
pub const MAX_BATCH: usize = 32;

/// `update_va_mapping(va, pte, flags)` of a probe page.
pub fn map(va: u64, pte: u64, flags: u64) -> Result<(), HypercallError> {
    // SAFETY: `va` is a probe page the races reach only through `probe`.
    unsafe { hypercall::update_va_mapping(va, pte, flags) }
}

/// `update_va_mapping(va, pte, flags)` of each `(va, pte)`, in one multicall.
pub fn map_many(pages: &[(u64, u64)], flags: u64) -> Result<(), HypercallError> {
    let mut calls = [MulticallEntry { op: Hypercall::UpdateVaMapping.number(), result: u64::MAX, args: [0; 6] }; MAX_BATCH];
    let calls = calls.get_mut(..pages.len()).ok_or(HypercallError::BadArgument)?;
    for (call, &(va, pte)) in calls.iter_mut().zip(pages) {
        call.args[..3].copy_from_slice(&[va, pte, flags]);
    }
    // SAFETY: each entry remaps a probe page the races reach only through `probe`.
    unsafe { hypercall::multicall(calls)? };
    match calls.iter().find(|c| c.result != 0) {
        Some(failed) => Err(hypercall::decode(failed.result as i64).err().unwrap_or(HypercallError::BadArgument)),
        None => Ok(()),
    }
}

/// One `mmuext_op` on a race's frame (pin, unpin, flushes).
pub fn extended(cmd: MmuextCmd, mfn: Mfn) -> Result<(), HypercallError> {
    extended_many(cmd, &[mfn])
}

/// One `mmuext_op` of `cmd` on each of `mfns`; fails unless all were done.
pub fn extended_many(cmd: MmuextCmd, mfns: &[Mfn]) -> Result<(), HypercallError> {
    let mut ops = [MmuextOp::with_mfn(cmd, Mfn(0)); MAX_BATCH];
    let ops = ops.get_mut(..mfns.len()).ok_or(HypercallError::BadArgument)?;
    for (op, &mfn) in ops.iter_mut().zip(mfns) {
        op.arg1 = mfn.0;
    }
    let mut done = 0;
    // SAFETY: pins, unpins and flushes of the races' frames change no mapping they use.
    unsafe { hypercall::mmuext_op(ops, &mut done, DomId::SELF) }
}

/// One `mmu_update` writing `value` into the entry at machine address `entry`.
pub fn update(entry: u64, value: u64) -> Result<(), HypercallError> {
    let request = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, entry, value);
    let mut done = 0;
    // SAFETY: the races rewrite only their own probe pages' entries.
    unsafe { hypercall::mmu_update(core::slice::from_ref(&request), &mut done, DomId::SELF) }
}

/// `decrease_reservation` (`increase`: false) or `increase_reservation` of the frames in
/// `extents`; the number of extents done.
pub fn reservation(increase: bool, extents: &mut [Mfn]) -> Result<u64, HypercallError> {
    let mut request = XenMemoryReservation {
        extent_start: extents.as_mut_ptr() as u64,
        nr_extents: extents.len() as u64,
        domid: DomId::SELF,
        ..XenMemoryReservation::default()
    };
    let cmd = if increase { MemoryOp::IncreaseReservation } else { MemoryOp::DecreaseReservation };
    // SAFETY: the hypervisor reads or writes the extents; frames given back are no longer
    // mapped by this guest.
    unsafe { hypercall::memory_op(cmd, &raw mut request) }
}
