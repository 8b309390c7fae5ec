//! Writable page tables: with `VMASST_TYPE_writable_pagetables` enabled, the guest kernel
//! writes entries of its own pinned L1 directly, through the table's read-only mapping,
//! and the hypervisor emulates each faulting instruction (validating the new entry as
//! `mmu_update` would). The instructions are the ones Linux uses on page-table entries
//! (`mov`, `xchg`, `lock btr`, `lock cmpxchg`, a locked byte `or`), each a single `asm!`
//! instruction on the entry's address, so that what faults is exactly what the test names.
//!
//! `main` calls [`run`] with its pinned L1 hooked into the boot L2 (window pages unmapped)
//! and checks what the entries and window pages hold. This module never writes an entry
//! it does not name, and puts every entry it used back to 0.

use core::arch::asm;

use guest_rt::abi::hypercall::{Hypercall, VmAssistCmd, VmAssistType};
use guest_rt::abi::version::XenFeatureInfo;
use guest_rt::hypercall::{self, HypercallError};

/// Turns the emulation of direct page-table writes on (or off) for this domain.
pub fn set_writable_pagetables(enable: bool) -> Result<(), HypercallError> {
    let cmd = if enable { VmAssistCmd::Enable } else { VmAssistCmd::Disable };
    // SAFETY: vm_assist reads no guest memory.
    let ret = unsafe { hypercall::hypercall2(Hypercall::VmAssist, cmd.raw().into(), VmAssistType::WritablePagetables.raw().into()) };
    hypercall::decode(ret).map(drop)
}

/// `vm_assist` with a type the hypervisor does not offer (the return value).
pub fn vm_assist_unoffered() -> i64 {
    // SAFETY: as above; type 31 is no VMASST type.
    unsafe { hypercall::hypercall2(Hypercall::VmAssist, VmAssistCmd::Enable.raw().into(), 31) }
}

/// Feature submap 0 (`XENVER_get_features`).
pub fn features() -> Result<u32, HypercallError> {
    let mut info = XenFeatureInfo { submap_idx: 0, submap: 0 };
    hypercall::xen_version(&mut info)?;
    Ok(info.submap)
}

/// `mov [entry], value`.
///
/// # Safety
/// `entry` is an entry of a pinned table of this domain, mapped read-only, whose change
/// affects no mapping the program uses.
pub unsafe fn mov(entry: u64, value: u64) {
    // SAFETY: the caller vouches for the entry; the write faults and is emulated.
    unsafe { asm!("mov qword ptr [{entry}], {value}", entry = in(reg) entry, value = in(reg) value) };
}

/// `xchg [entry], value`: returns the entry's old value.
///
/// # Safety
/// As [`mov`].
pub unsafe fn xchg(entry: u64, value: u64) -> u64 {
    let mut value = value;
    // SAFETY: as in `mov`.
    unsafe { asm!("xchg qword ptr [{entry}], {value}", entry = in(reg) entry, value = inout(reg) value) };
    value
}

/// `lock btr [entry], bit`: returns the bit's old value (CF).
///
/// # Safety
/// As [`mov`].
pub unsafe fn lock_btr(entry: u64, bit: u64) -> bool {
    let carry: u8;
    // SAFETY: as in `mov`.
    unsafe {
        asm!("lock btr qword ptr [{entry}], {bit}", "setc {carry}", entry = in(reg) entry, bit = in(reg) bit, carry = out(reg_byte) carry)
    };
    carry != 0
}

/// `lock cmpxchg [entry], new` with `expected` in rax: whether it stored (ZF), and rax
/// after it (the entry's value when it did not).
///
/// # Safety
/// As [`mov`].
pub unsafe fn lock_cmpxchg(entry: u64, expected: u64, new: u64) -> (bool, u64) {
    let stored: u8;
    let mut rax = expected;
    // SAFETY: as in `mov`.
    unsafe {
        asm!(
            "lock cmpxchg qword ptr [{entry}], {new}",
            "setz {stored}",
            entry = in(reg) entry,
            new = in(reg) new,
            stored = out(reg_byte) stored,
            inout("rax") rax,
        )
    };
    (stored != 0, rax)
}

/// `lock or byte ptr [entry + 1], 2`: sets bit 9 of the entry (an available bit) with a
/// one-byte write in the middle of it.
///
/// # Safety
/// As [`mov`].
pub unsafe fn lock_or_byte1(entry: u64) {
    // SAFETY: as in `mov`.
    unsafe { asm!("lock or byte ptr [{entry} + 1], 2", entry = in(reg) entry) };
}
