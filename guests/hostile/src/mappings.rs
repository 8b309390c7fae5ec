//! Attacks on the page tables: mapping frames the guest does not own (the hypervisor's
//! image, other frames of the machine, a frame beyond RAM), mapping its own page tables
//! writable, rewriting the hypervisor's L4 slot 256 and the window-L3's entry 511, pinning a table that
//! maps itself writable or a frame it does not own, and switching to a foreign L4.
//!
//! Mappings are attempted at the hole, which the program does not use, so a mapping that
//! wrongly goes through is simply removed again. Called by `main`, the foreign L4 last of
//! all attacks but the final one. This module must never change a mapping the program
//! uses, except through an attack that the hypervisor must refuse.

use guest_rt::abi::hypercall::{Hypercall, MmuUpdateCmd, MmuextCmd};
use guest_rt::abi::ids::{DomId, Mfn, Pfn};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall3, hypercall4};
use guest_rt::layout::{self, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::start_info;

use crate::targets::{Targets, HYPERVISOR_IMAGE, HYPERVISOR_SLOT};
use crate::verdict::{Outcome, Tally};

/// Frames the guest must not map: what they are, and their numbers.
const FOREIGN_FRAMES: [(&str, Mfn); 4] = [
    ("the hypervisor image", HYPERVISOR_IMAGE),
    ("a foreign frame", Mfn(1)),
    ("a foreign frame", Mfn(0x10000)),
    ("a frame beyond RAM", Mfn(0xFFFF_FFFF)),
];
/// The L4 slot of Xen's read-only M2P table, which the hypervisor keeps.
const M2P_SLOT: usize = 256;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;

/// Runs the page-table attacks but the foreign L4.
pub fn run(tally: &mut Tally, targets: &Targets) {
    foreign_frames(tally, targets);
    own_tables_writable(tally, targets);
    hypervisor_slots(tally, targets);
    pins(tally, targets);
}

/// `update_va_mapping` of the hole to `pte`; rax after it.
fn map_hole(targets: &Targets, pte: u64) -> i64 {
    // SAFETY: the program does not use the hole; whatever it maps is never accessed.
    unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            targets.hole,
            pte,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    }
}

/// One `mmu_update` request; rax after it.
fn update_one(request: MmuUpdate) -> i64 {
    let mut done = 0u32;
    // SAFETY: the request names a hypervisor slot and must be refused; were it accepted,
    // the caller restores the entry. The program uses nothing that slot maps.
    unsafe {
        hypercall4(
            Hypercall::MmuUpdate,
            &raw const request as u64,
            1,
            &raw mut done as u64,
            SELF,
        )
    }
}

/// One `mmuext_op`; rax after it.
fn extended(op: MmuextOp) -> i64 {
    let mut done = 0u32;
    // SAFETY: pins and unpins change no mapping. A new base pointer to a foreign frame
    // must be refused; were it accepted, the guest would be lost (and killed).
    unsafe {
        hypercall4(
            Hypercall::MmuextOp,
            &raw const op as u64,
            1,
            &raw mut done as u64,
            SELF,
        )
    }
}

/// A writable leaf entry for `mfn`.
const fn writable(mfn: Mfn) -> u64 {
    layout::kernel_rw_pte(mfn.address())
}

/// Maps frames the guest does not own at the hole.
fn foreign_frames(tally: &mut Tally, targets: &Targets) {
    for (what, mfn) in FOREIGN_FRAMES {
        let outcome =
            targets.unless_own(mfn, || Outcome::of_call(map_hole(targets, writable(mfn))));
        if tally.record(format_args!("map {what} (mfn {:#x})", mfn.0), outcome) {
            map_hole(targets, 0);
        }
    }
}

/// Maps each boot page table writable at the hole.
fn own_tables_writable(tally: &mut Tally, targets: &Targets) {
    for pfn in targets.tables.clone() {
        let Some(mfn) = start_info::pfn_to_mfn(Pfn(pfn)) else {
            continue;
        };
        let outcome = Outcome::of_call(map_hole(targets, writable(mfn)));
        let attack = format_args!(
            "map own boot page table (pfn {pfn:#x}, mfn {:#x}) writable",
            mfn.0
        );
        if tally.record(attack, outcome) {
            map_hole(targets, 0);
        }
    }
}

/// Rewrites the hypervisor's slots: L4 slot 256 to an own (empty) table, entry 511 of the
/// window-L3 (the L3 under L4 slot 511) to its current value.
fn hypervisor_slots(tally: &mut Tally, targets: &Targets) {
    let l4 = &targets.l4;
    let original = l4.entry(M2P_SLOT);
    let own_table = targets.spare.address() | PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    let request = MmuUpdate::new(
        MmuUpdateCmd::NormalPtUpdate,
        l4.entry_address(M2P_SLOT),
        own_table,
    );
    let attack = format_args!("point L4 slot {M2P_SLOT} (the hypervisor's) at an own table");
    if tally.record(attack, Outcome::of_call(update_one(request))) {
        update_one(MmuUpdate {
            val: original,
            ..request
        });
    }

    let l3 = &targets.window_l3;
    let current = l3.entry(HYPERVISOR_SLOT);
    let request = MmuUpdate::new(
        MmuUpdateCmd::NormalPtUpdate,
        l3.entry_address(HYPERVISOR_SLOT),
        current,
    );
    let attack = format_args!(
        "rewrite window-L3 entry {HYPERVISOR_SLOT} (the hypervisor's), even unchanged"
    );
    tally.record(attack, Outcome::of_call(update_one(request)));
}

/// Pins a table that maps itself writable, and a frame the guest does not own.
fn pins(tally: &mut Tally, targets: &Targets) {
    let pin = |mfn| Outcome::of_call(extended(MmuextOp::with_mfn(MmuextCmd::PinL1Table, mfn)));
    let unpin = |mfn| extended(MmuextOp::with_mfn(MmuextCmd::UnpinTable, mfn));
    let mfn = targets.self_map;
    let attack = format_args!("pin an L1 that maps itself writable (mfn {:#x})", mfn.0);
    if tally.record(attack, pin(mfn)) {
        unpin(mfn);
    }
    let mfn = HYPERVISOR_IMAGE;
    let attack = format_args!("pin the hypervisor image as an L1 (mfn {:#x})", mfn.0);
    if tally.record(attack, targets.unless_own(mfn, || pin(mfn))) {
        unpin(mfn);
    }
}

/// Switches to the hypervisor's image as the L4 (`MMUEXT_NEW_BASEPTR`).
pub fn switch_to_foreign_l4(tally: &mut Tally, targets: &Targets) {
    let outcome = targets.unless_own(HYPERVISOR_IMAGE, || {
        Outcome::of_call(extended(MmuextOp::with_mfn(
            MmuextCmd::NewBaseptr,
            HYPERVISOR_IMAGE,
        )))
    });
    let attack = format_args!(
        "switch to the hypervisor image as L4 (mfn {:#x})",
        HYPERVISOR_IMAGE.0
    );
    tally.record(attack, outcome);
}
