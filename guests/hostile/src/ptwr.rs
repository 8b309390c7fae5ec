//! Attacks on writable-page-table emulation: with `VMASST_TYPE_writable_pagetables`
//! enabled, the guest writes its boot page tables directly, through their read-only
//! mappings, with what the emulation must refuse (the result must be the #PF, the entry
//! unchanged) or must do exactly as the processor would:
//! - the hypervisor's L4 slots 256 and 511 and the window-L3's entry 511;
//! - its L4 mapping itself writable in a free slot (XSA-182's writable linear table);
//! - an L1 entry mapping its own L4 writable;
//! - a store through a read-only mapping of an ordinary page (not a table: never written);
//! - a store straddling two entries, `rep stosq`, `cmpxchg16b` (not emulated);
//! - `lock bts` whose register bit offset wraps the address computation (XSA-195): the
//!   emulated address must be the processor's, and only that bit may change;
//! - `cmpxchg8b` with an operand-size prefix (XSA-200): still 8 bytes.
//!
//! The entries written are those of the hole (an unmapped page of the initial mapping,
//! which nothing uses) and free L4 slots; an attack that wrongly succeeds is undone with
//! `mmu_update`. Called by `main` after the page-table attacks. A page-fault handler of
//! this module's records each announced fault and resumes after the faulting instruction
//! (at the address the instruction's `asm!` leaves in r8); any other fault ends the guest.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::abi::hypercall::{Hypercall, MmuUpdateCmd, ShutdownReason, VmAssistCmd, VmAssistType};
use guest_rt::abi::ids::DomId;
use guest_rt::abi::mmu::{MmuUpdate, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, hypercall2, hypercall4, shutdown};
use guest_rt::layout::{kernel_rw_pte, PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER};
use guest_rt::println;
use guest_rt::traps::{self, TrapFrame, Vector};

use crate::targets::{Table, Targets, HYPERVISOR_SLOT};
use crate::verdict::{Outcome, Tally};

/// A fault is announced: the handler records it and resumes at r8.
static ARMED: AtomicBool = AtomicBool::new(false);
/// An announced fault happened.
static FAULTED: AtomicBool = AtomicBool::new(false);

/// The L4 slot of Xen's M2P table, which the hypervisor keeps.
const M2P_SLOT: usize = 256;
/// Bit 9 of an entry: available to software; a non-present entry may hold it.
const AVAILABLE_BIT: u64 = 9;

fn on_page_fault(frame: &mut TrapFrame) {
    if !ARMED.swap(false, Ordering::AcqRel) {
        println!("hostile: FAILED unexpected page fault at rip {:#x} (error code {:#x})", frame.rip, frame.error_code);
        shutdown(ShutdownReason::Crash);
    }
    FAULTED.store(true, Ordering::Release);
    frame.rip = frame.r8;
}

/// Runs `write` with a fault announced; whether it faulted.
fn faults(write: impl FnOnce()) -> bool {
    FAULTED.store(false, Ordering::Relaxed);
    ARMED.store(true, Ordering::Release);
    write();
    ARMED.store(false, Ordering::Release);
    FAULTED.load(Ordering::Acquire)
}

/// `mov [address], value`, resumed after it if it faults.
///
/// # Safety
/// `address` is an entry of a boot table (read-only) that maps nothing the program uses,
/// or a page nothing uses.
unsafe fn mov(address: u64, value: u64) {
    // SAFETY: the caller vouches for the address; a fault resumes at label 2 (r8).
    unsafe { asm!("lea r8, [rip + 2f]", "mov qword ptr [{a}], {v}", "2:", a = in(reg) address, v = in(reg) value, out("r8") _) };
}

/// Sets entry `index` of `table` back to `value` with `mmu_update` (after an attack that
/// wrongly got through).
fn restore(table: &Table, index: usize, value: u64) {
    let request = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, table.entry_address(index), value);
    let mut done = 0u32;
    // SAFETY: puts back the value the entry had before the attack.
    let _ = unsafe { hypercall4(Hypercall::MmuUpdate, &request as *const MmuUpdate as u64, 1, &mut done as *mut u32 as u64, DomId::SELF.0 as u64) };
}

/// A direct write of `value` to entry `index` of `table` that must be refused: the
/// outcome, the entry restored if it was not.
fn refused_write(tally: &mut Tally, what: &str, table: &Table, index: usize, value: u64) {
    let before = table.entry(index);
    // SAFETY: an attack on an entry that maps nothing the program uses, or a hypervisor
    // slot; restored below if it lands.
    let faulted = faults(|| unsafe { mov(table.va() + 8 * index as u64, value) });
    let after = table.entry(index);
    let outcome = if faulted && after == before { Outcome::Faulted("#PF to the guest") } else { Outcome::Succeeded };
    if tally.record(format_args!("ptwr: {what}"), outcome) && after != before {
        restore(table, index, before);
    }
}

/// The boot L1 that maps the hole, and the hole's index in it.
fn hole_entry(targets: &Targets) -> Option<(Table, usize)> {
    let index = |level: u32| ((targets.hole >> (12 + 9 * (level - 1))) & 511) as usize;
    let l3 = targets.l4.next_table(index(4))?;
    let l2 = l3.next_table(index(3))?;
    let l1 = l2.next_table(index(2))?;
    Some((l1, index(1)))
}

/// Runs the attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    if let Err(error) = traps::set_handler(Vector::PAGE_FAULT, on_page_fault) {
        println!("hostile: FAILED installing the page-fault handler: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    // SAFETY: vm_assist reads no guest memory.
    let ret = unsafe { hypercall2(Hypercall::VmAssist, VmAssistCmd::Enable.raw().into(), VmAssistType::WritablePagetables.raw().into()) };
    if ret != 0 {
        tally.record(format_args!("ptwr"), Outcome::NotPrepared { step: "vm_assist(writable_pagetables)", errno: ret.unsigned_abs() });
        return;
    }
    let Some((l1, hole)) = hole_entry(targets) else {
        tally.record(format_args!("ptwr"), Outcome::NotPrepared { step: "finding the hole's L1", errno: 0 });
        return;
    };
    let l4 = &targets.l4;
    refused_write(tally, "L4 slot 256 (the M2P's) written directly", l4, M2P_SLOT, kernel_rw_pte(targets.spare.address()));
    refused_write(tally, "L4 slot 511 cleared directly", l4, HYPERVISOR_SLOT, 0);
    refused_write(tally, "window-L3 entry 511 cleared directly", &targets.window_l3, HYPERVISOR_SLOT, 0);
    if let Some(free) = (1..255).find(|&slot| l4.entry(slot) == 0) {
        refused_write(tally, "L4 mapping itself writable in a free slot (XSA-182)", l4, free, kernel_rw_pte(l4.mfn.address()));
    }
    refused_write(tally, "L1 entry mapping the L4 writable", &l1, hole, kernel_rw_pte(l4.mfn.address()));
    read_only_page(tally, targets);
    not_emulated(tally, &l1, hole);
    bit_offset_wraps(tally, &l1, hole);
    cmpxchg8b_with_operand_size(tally, &l1, hole);
}

/// A store through a read-only mapping of an ordinary page (the spare frame at the hole).
fn read_only_page(tally: &mut Tally, targets: &Targets) {
    let pte = (targets.spare.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the hole is unused; it maps the zeroed spare frame read-only for this attack.
    if unsafe { hypercall::update_va_mapping(targets.hole, pte, UVMF_INVLPG | UVMF_LOCAL) }.is_err() {
        tally.record(format_args!("ptwr: store to a read-only ordinary page"), Outcome::NotPrepared { step: "mapping the spare frame read-only", errno: 0 });
        return;
    }
    // SAFETY: the hole maps the spare frame, which nothing uses.
    let faulted = faults(|| unsafe { mov(targets.hole + 8, 0x1234) });
    // SAFETY: as above; the page is readable.
    let landed = unsafe { ((targets.hole + 8) as *const u64).read_volatile() } != 0;
    let outcome = if faulted && !landed { Outcome::Faulted("#PF to the guest") } else { Outcome::Succeeded };
    tally.record(format_args!("ptwr: store to a read-only ordinary page"), outcome);
    // SAFETY: unmaps the hole again (and the spare frame gets its zero back if it landed).
    unsafe {
        let _ = hypercall::update_va_mapping(targets.hole, 0, UVMF_INVLPG | UVMF_LOCAL);
        if landed {
            let _ = hypercall::update_va_mapping(targets.hole, kernel_rw_pte(targets.spare.address()), UVMF_INVLPG | UVMF_LOCAL);
            ((targets.hole + 8) as *mut u64).write_volatile(0);
            let _ = hypercall::update_va_mapping(targets.hole, 0, UVMF_INVLPG | UVMF_LOCAL);
        }
    }
}

/// Writes the emulation must not carry out: a store straddling two entries, `rep stosq`
/// and `cmpxchg16b` on entries of the hole's L1.
fn not_emulated(tally: &mut Tally, l1: &Table, hole: usize) {
    let pair = hole & !1;
    let entry = l1.va() + 8 * pair as u64;
    let before = (l1.entry(pair), l1.entry(pair + 1));
    let check = |tally: &mut Tally, what: &str, faulted: bool| {
        let after = (l1.entry(pair), l1.entry(pair + 1));
        let outcome = if faulted && after == before { Outcome::Faulted("#PF to the guest") } else { Outcome::Succeeded };
        if tally.record(format_args!("ptwr: {what}"), outcome) {
            restore(l1, pair, before.0);
            restore(l1, pair + 1, before.1);
        }
    };
    let value = AVAILABLE_BIT_VALUE;
    // The entries map nothing the program uses (the hole's and its neighbour in the initial
    // mapping's slack, whose values are put back on a wrong success); a fault resumes at
    // label 2 (r8).
    // SAFETY: as just said.
    let faulted = faults(|| unsafe { mov(entry + 4, value) });
    check(tally, "store straddling two entries", faulted);
    // SAFETY: as for the store above.
    let faulted = faults(|| unsafe {
        asm!("lea r8, [rip + 2f]", "rep stosq", "2:", inout("rdi") entry => _, inout("rcx") 1u64 => _, in("rax") value, out("r8") _)
    });
    check(tally, "rep stosq onto an entry", faulted);
    // SAFETY: as for the store above.
    let faulted = faults(|| unsafe {
        asm!(
            "xchg rbx, {new_low}",
            "lea r8, [rip + 2f]",
            "lock cmpxchg16b xmmword ptr [rdi]",
            "2:",
            "xchg rbx, {new_low}",
            new_low = inout(reg) value => _,
            in("rdi") entry,
            inout("rax") before.0 => _,
            inout("rdx") before.1 => _,
            in("rcx") value,
            out("r8") _,
        )
    });
    check(tally, "cmpxchg16b on two entries", faulted);
}

/// An entry value that maps nothing: only an available bit.
const AVAILABLE_BIT_VALUE: u64 = 1 << AVAILABLE_BIT;

/// `lock bts` on the hole's entry with a register bit offset of -2^63 + 9: the processor
/// adds -2^60 bytes to a base 2^60 above the entry (wrapping), so it writes bit 9 of the
/// entry; the emulation must compute the same address and change that bit only.
fn bit_offset_wraps(tally: &mut Tally, l1: &Table, hole: usize) {
    let before: [u64; 3] = core::array::from_fn(|i| l1.entry((hole + i).saturating_sub(1).min(511)));
    let entry = l1.va() + 8 * hole as u64;
    let base = entry.wrapping_add(1 << 60);
    let offset = (i64::MIN as u64) | AVAILABLE_BIT;
    // SAFETY: the address the processor computes is the hole's entry, which maps nothing
    // the program uses; a fault resumes at label 2 (r8).
    // SAFETY: as for the store above.
    let faulted = faults(|| unsafe {
        asm!("lea r8, [rip + 2f]", "lock bts qword ptr [{base}], {offset}", "2:", base = in(reg) base, offset = in(reg) offset, out("r8") _)
    });
    let after: [u64; 3] = core::array::from_fn(|i| l1.entry((hole + i).saturating_sub(1).min(511)));
    let mut expected = before;
    expected[1] |= AVAILABLE_BIT_VALUE;
    let outcome = if !faulted && after == expected {
        Outcome::Exact
    } else if faulted && after == before {
        Outcome::Faulted("#PF to the guest")
    } else {
        Outcome::Succeeded
    };
    tally.record(format_args!("ptwr: lock bts with a bit offset that wraps the address (XSA-195)"), outcome);
    restore(l1, hole, before[1]);
}

/// `cmpxchg8b` with an operand-size prefix on the hole's entry: 8 bytes compared and
/// stored, as the processor ignores the prefix.
fn cmpxchg8b_with_operand_size(tally: &mut Tally, l1: &Table, hole: usize) {
    let before = l1.entry(hole);
    let entry = l1.va() + 8 * hole as u64;
    let new = AVAILABLE_BIT_VALUE | (0xabc << 52);
    // SAFETY: the hole's entry maps nothing the program uses; rbx is swapped in and out
    // (LLVM reserves it); a fault resumes at label 2 (r8).
    // SAFETY: as for the store above.
    let faulted = faults(|| unsafe {
        asm!(
            "xchg rbx, {low}",
            "lea r8, [rip + 2f]",
            ".byte 0x66, 0xf0, 0x0f, 0xc7, 0x0f",
            "2:",
            "xchg rbx, {low}",
            low = inout(reg) new & 0xffff_ffff => _,
            in("rdi") entry,
            inout("rax") before & 0xffff_ffff => _,
            inout("rdx") before >> 32 => _,
            in("rcx") new >> 32,
            out("r8") _,
        )
    });
    let after = l1.entry(hole);
    let outcome = if !faulted && after == new {
        Outcome::Exact
    } else if faulted && after == before {
        Outcome::Faulted("#PF to the guest")
    } else {
        Outcome::Succeeded
    };
    tally.record(format_args!("ptwr: cmpxchg8b with an operand-size prefix (XSA-200)"), outcome);
    restore(l1, hole, before);
}
