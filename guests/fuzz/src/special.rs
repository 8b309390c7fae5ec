//! The procedures of several calls, and the calls that need assembly: building a page
//! table in an arena frame (random entries, unmapped, pinned at a random level, linked
//! into a boot table entry the program does not use), undoing those links and pins,
//! switching to a copy of the boot L4 and back, filling an arena page whose frame was
//! given back with a frame gained since, blocking with a timer armed, parking a third
//! vCPU, a long multicall, the `iret` hypercall with a frame that returns to the fuzzer,
//! and the calls meant to end the domain ([`fatal`]).
//!
//! Called by the families in [`crate::ops`]. Everything here checks each step's result
//! and stops at the first refusal: the other vCPU may have pinned, unpinned or given back
//! any frame meanwhile. This module must never switch to a base pointer it has not read
//! back (its slot 511 must map the program), except in [`fatal`].

use core::arch::{asm, global_asm};

use guest_fuzz::gen::pte;
use guest_fuzz::options::Class;
use guest_fuzz::world::{BOOT_L4_SLOT, ENTRIES, PAGE};
use guest_rt::abi::arch_x86::{VcpuGuestContext, VGCF_IN_SYSCALL};
use guest_rt::abi::hypercall::{Hypercall, MmuextCmd, MulticallEntry, SchedOp};
use guest_rt::abi::hypercall_page::stub_offset;
use guest_rt::abi::mmu::{MmuUpdate, UVMF_ALL, UVMF_INVLPG};
use guest_rt::abi::sched::SchedShutdown;

use crate::fuzzer::{after, raw, Call, Fuzzer};
use crate::{guard, memory, report};

extern "C" {
    static guest_rt_hypercall_page: u8;
    static guest_rt_trap_stubs: u8;
    static fuzz_park_entry: u8;
}

global_asm!(
    ".pushsection .text.fuzz_park,\"ax\",@progbits",
    // A parked vCPU blocks forever; an event wakes it into the event callback, after which
    // it blocks again.
    ".globl fuzz_park_entry",
    "fuzz_park_entry:",
    "    mov eax, {sched_op}",
    "    mov edi, {block}",
    "    xor esi, esi",
    "    syscall",
    "    jmp fuzz_park_entry",
    ".popsection",
    sched_op = const Hypercall::SchedOp.number(),
    block = const SchedOp::Block.raw(),
);

/// guest-rt's exception entry stubs (stub n at `+ n * 16`).
pub fn trap_stubs() -> u64 {
    &raw const guest_rt_trap_stubs as u64
}

/// Where a parked vCPU starts.
pub fn park_entry() -> u64 {
    &raw const fuzz_park_entry as u64
}

fn iret_stub() -> u64 {
    &raw const guest_rt_hypercall_page as u64 + stub_offset(Hypercall::Iret) as u64
}

/// An own arena slot that has a frame, drawn at random.
fn some_slot(f: &mut Fuzzer) -> Option<usize> {
    let n = f.frames.slots.len() as u64;
    let index = f.rng.below(n) as usize;
    (n > 0 && f.frames.slots[index].mfn != 0).then_some(index)
}

/// Writes `values` into arena slot `index`'s page (mapped writable by the caller).
fn fill_slot(f: &mut Fuzzer, index: usize, mut value: impl FnMut(&mut Fuzzer, usize) -> u64) {
    let va = f.frames.slot_va(f.world, index);
    for i in 0..ENTRIES {
        let v = value(f, i);
        // SAFETY: the slot's page is this vCPU's arena page, just mapped writable to its own
        // frame; only this vCPU changes that mapping, and no frame mapped writable can become
        // a table or descriptor frame meanwhile.
        unsafe { (va as *mut u64).add(i).write_volatile(v) };
    }
}

/// Builds a page table in an arena frame: random entries, unmapped, pinned at a random
/// level, and linked where the program's mapping does not look.
pub fn build_table(f: &mut Fuzzer) {
    let Some(index) = some_slot(f) else { return };
    if !f.map_slot(index) {
        return;
    }
    let density = f.rng.pick(&[0, 10, 60, 300]);
    fill_slot(f, index, |f, _| if f.rng.chance(density) { f.gen().pte() } else { 0 });
    if !f.unmap_slot(index) {
        return;
    }
    let mfn = f.frames.slots[index].mfn;
    let level = f.rng.below(4);
    let pin = [MmuextCmd::PinL1Table, MmuextCmd::PinL2Table, MmuextCmd::PinL3Table, MmuextCmd::PinL4Table][level as usize];
    if !f.ext("pin_table", pin, mfn) {
        return;
    }
    if !f.pinned.is_full() {
        f.pinned.push(mfn);
    }
    let tables = &f.world.tables;
    let target = match level {
        0 => Some(tables.l2 * PAGE + f.gen().free_l2_index() as u64 * 8),
        1 => Some(tables.l3 * PAGE + f.gen().free_l3_index() as u64 * 8),
        2 => {
            let slot = f.gen().free_l4_slot();
            f.frames.note_linked(slot);
            Some(tables.l4 * PAGE + slot as u64 * 8)
        }
        _ => {
            if !f.avoid.has(Class::Slot511) {
                f.ext("new_user_baseptr", MmuextCmd::NewUserBaseptr, mfn);
            }
            None
        }
    };
    if let Some(entry) = target {
        let link = mfn << 12 | pte::PRESENT | pte::WRITABLE | pte::USER | pte::ACCESSED;
        if f.update_entry("link_table", entry, link) && !f.links.is_full() {
            f.links.push(entry);
        }
    }
}

/// Undoes this vCPU's links and pins, and maps its arena pages writable again.
pub fn cleanup(f: &mut Fuzzer) {
    while let Some(entry) = f.links.pop() {
        f.update_entry("unlink_table", entry, 0);
    }
    while let Some(mfn) = f.pinned.pop() {
        f.ext("unpin_table", MmuextCmd::UnpinTable, mfn);
    }
    for index in 0..f.frames.slots.len() {
        let slot = f.frames.slots[index];
        if slot.mfn != 0 && !slot.writable {
            f.map_slot(index);
        }
    }
}

/// Switches this vCPU's kernel base to its own copy of the boot L4 (building the copy from
/// a gained frame first), or back to the boot L4.
pub fn clone_dance(f: &mut Fuzzer) {
    if f.on_clone {
        if f.ext("baseptr_boot", MmuextCmd::NewBaseptr, f.world.tables.l4) {
            f.on_clone = false;
            if f.rng.chance(300) {
                if let Some(clone) = f.frames.clone_l4.take() {
                    f.ext("unpin_clone", MmuextCmd::UnpinTable, clone);
                    if !f.frames.extra.is_full() {
                        f.frames.extra.push(clone);
                    }
                }
            }
        }
        return;
    }
    let clone = match f.frames.clone_l4 {
        Some(clone) => clone,
        None => {
            let Some(frame) = f.frames.extra.pop() else { return };
            if !f.ext("pin_clone", MmuextCmd::PinL4Table, frame)
                || !f.update_entry("clone_slot_511", frame * PAGE + BOOT_L4_SLOT as u64 * 8, f.boot_l4_entry())
            {
                f.ext("unpin_clone", MmuextCmd::UnpinTable, frame);
                f.frames.extra.push(frame);
                return;
            }
            f.frames.clone_l4 = Some(frame);
            frame
        }
    };
    // Read entry 511 back through the view page before trusting the copy with our lives.
    let view = memory::view(f.vcpu);
    let readonly = clone << 12 | pte::PRESENT | pte::USER;
    if f.exec(&Call::new("view_clone", Hypercall::UpdateVaMapping, [view, readonly, UVMF_INVLPG, 0, 0])) != 0 {
        return;
    }
    // SAFETY: the view page maps the clone read-only; entry 511 is inside it.
    let entry = unsafe { ((view + BOOT_L4_SLOT as u64 * 8) as *const u64).read_volatile() };
    f.exec(&Call::new("unview", Hypercall::UpdateVaMapping, [view, 0, UVMF_INVLPG, 0, 0]));
    if entry & pte::ADDRESS != f.boot_l4_entry() & pte::ADDRESS || entry & pte::PRESENT == 0 {
        return;
    }
    if f.ext("baseptr_clone", MmuextCmd::NewBaseptr, clone) {
        f.on_clone = true;
    }
}

/// Maps a gained frame at an arena page whose frame was given back.
pub fn refill(f: &mut Fuzzer) {
    let Some(index) = f.frames.slots.iter().position(|s| s.mfn == 0) else { return };
    let Some(&frame) = f.frames.extra.last() else { return };
    let va = f.frames.slot_va(f.world, index);
    let entry = frame << 12 | pte::PRESENT | pte::WRITABLE | pte::USER;
    if f.exec(&Call::new("refill_slot", Hypercall::UpdateVaMapping, [va, entry, UVMF_INVLPG | UVMF_ALL, 0, 0])) == 0 {
        f.frames.extra.pop();
        f.frames.slots[index].mfn = frame;
        f.frames.slots[index].writable = true;
    }
}

/// Blocks with the one-shot timer armed a little ahead (`VIRQ_TIMER` bound first).
pub fn block(f: &mut Fuzzer) {
    if !f.timer_bound() {
        return;
    }
    let deadline = f.clock.now_ns() + f.rng.between(50_000, 2_000_000);
    f.exec(&Call::new("set_timer_op", Hypercall::SetTimerOp, [deadline, 0, 0, 0, 0]));
    f.exec(&Call::new("sched_block", Hypercall::SchedOp, [u64::from(SchedOp::Block.raw()), 0, 0, 0, 0]).then(after::MASK));
}

/// Brings up a third (or later) vCPU that only blocks (`vcpu_op` initialise and up).
pub fn park_vcpu(f: &mut Fuzzer) {
    let id = f.rng.between(2, 31) as u32;
    let context = f.park_context(id);
    let Some(at) = f.scratch.alloc(size_of::<VcpuGuestContext>() as u64) else { return };
    // SAFETY: `at` is this vCPU's scratch, with room for the context (just taken).
    unsafe { (at as *mut VcpuGuestContext).write_unaligned(context) };
    f.exec(&Call::new("vcpu_initialise_park", Hypercall::VcpuOp, [0, u64::from(id), at, 0, 0]));
    f.exec(&Call::new("vcpu_up_park", Hypercall::VcpuOp, [1, u64::from(id), 0, 0, 0]));
}

/// A long multicall: hundreds of entries, each an `mmu_update` of hundreds of valid
/// updates (of one of this vCPU's arena entries, unmapping its page).
pub fn long_multicall(f: &mut Fuzzer) {
    const UPDATES: u64 = 256;
    let Some(index) = some_slot(f) else { return };
    let pfn = f.frames.arena.start + index as u64;
    let l1 = f.world.tables.l1s[(pfn / ENTRIES as u64) as usize];
    let entry = l1 * PAGE + (pfn % ENTRIES as u64) * 8;
    let Some(requests) = f.scratch.alloc(UPDATES * 16) else { return };
    for i in 0..UPDATES {
        // SAFETY: inside this vCPU's scratch (just taken, room for UPDATES requests).
        unsafe { ((requests + i * 16) as *mut MmuUpdate).write_unaligned(MmuUpdate { ptr: entry, val: 0 }) };
    }
    let entries = f.scratch.left() / 64;
    let Some(array) = f.scratch.alloc(entries * 64) else { return };
    let self_id = u64::from(guest_rt::abi::ids::DomId::SELF.0);
    for i in 0..entries {
        let call = MulticallEntry { op: Hypercall::MmuUpdate.number(), result: 0, args: [requests, UPDATES, 0, self_id, 0, 0] };
        // SAFETY: inside this vCPU's scratch (just taken, room for `entries` entries).
        unsafe { ((array + i * 64) as *mut MulticallEntry).write_unaligned(call) };
    }
    f.exec(&Call::new("long_multicall", Hypercall::Multicall, [array, entries, 0, 0, 0]));
    f.frames.slots[index].writable = false;
}

/// The `iret` hypercall with a frame that returns to the fuzzer: kernel code selector with
/// RPL 0-2, the flat stack selector, random flags and `VGCF_in_syscall`.
pub fn iret(f: &mut Fuzzer) {
    let cs = 0xe030 | f.rng.below(3);
    let ss = 0xe028 | f.rng.below(4);
    const RFLAGS_DF: u64 = 1 << 10;
    let rflags = f.gen().rflags() & !RFLAGS_DF;
    let any = f.rng.bits(16) & !VGCF_IN_SYSCALL;
    let flags = f.rng.pick(&[0, VGCF_IN_SYSCALL, 0, any]);
    iret_to(f, "iret", cs, ss, rflags, flags);
    f.restore(after::MASK);
}

/// Makes the `iret` hypercall with a frame of `cs`, `ss`, `rflags` and `flags` whose rip
/// and rsp return here.
fn iret_to(f: &mut Fuzzer, name: &'static str, cs: u64, ss: u64, rflags: u64, flags: u64) {
    let n = report::begin(f.vcpu, name);
    if report::traced(n) {
        report::trace(f.vcpu, n, name, Hypercall::Iret.number(), &[cs, ss, rflags, flags]);
    }
    let rax = f.rng.next_u64();
    // SAFETY: the frame returns to label 2 with the stack pointer it had (r8), in guest
    // kernel mode (RPL 0-2) on the flat stack selector; the flags the hypervisor lets
    // through are cleaned up there (direction, alignment check, single step, nested task).
    // rax comes back as given; rcx and r11 are clobbered (with VGCF_in_syscall the
    // hypervisor does not restore them); r8 and r9 are scratch.
    unsafe {
        asm!(
            "mov r8, rsp",
            "sub rsp, 48",
            "mov [rsp], {flags}",
            "lea r9, [rip + 2f]",
            "mov [rsp + 8], r9",
            "mov [rsp + 16], {cs}",
            "mov [rsp + 24], {rflags}",
            "mov [rsp + 32], r8",
            "mov [rsp + 40], {ss}",
            "jmp {stub}",
            "2:",
            "cld",
            "pushfq",
            "and qword ptr [rsp], 0xfffffffffffbbeff",
            "popfq",
            flags = in(reg) flags,
            cs = in(reg) cs,
            rflags = in(reg) rflags,
            ss = in(reg) ss,
            stub = in(reg) iret_stub(),
            inout("rax") rax => _,
            out("rcx") _,
            out("r11") _,
            out("r8") _,
            out("r9") _,
        );
    }
}

/// A call meant to end the domain (one not avoided): it prints "fuzz: fatal ..." first, so
/// that its end is told from an unexpected one. If the hypervisor refuses it, the fuzzer
/// goes on.
pub fn fatal(f: &mut Fuzzer, which: Option<u8>) {
    let avoid = f.avoid;
    // In the order of `guest_fuzz::options::FATAL_KINDS`.
    let kinds: [(&str, Option<Class>); 8] = [
        ("fatal_iret_rip", None),
        ("fatal_iret_selectors", Some(Class::Iret)),
        ("fatal_shutdown", None),
        ("fatal_baseptr", Some(Class::Slot511)),
        ("fatal_cr3", None),
        ("fatal_fault_in_handler", None),
        ("fatal_vcpu_garbage", Some(Class::Vcpus)),
        ("fatal_no_stack", None),
    ];
    let (name, class) = match which {
        Some(index) => kinds[usize::from(index) % kinds.len()],
        None => f.rng.pick(&kinds),
    };
    if class.is_some_and(|c| avoid.has(c)) && which.is_none() {
        return;
    }
    report::fatal(f.vcpu, name);
    match name {
        "fatal_iret_rip" => {
            // A non-canonical rip faults the hypervisor's own return (hole 5).
            let non_canonical = if avoid.has(Class::Iret) { 0 } else { 0xFFFF_8000_0000_0000 - 8 };
            let rip = f.rng.pick(&[0, 0x1000, f.world.hole[f.vcpu], non_canonical]);
            // So does a non-canonical rsp.
            let rsp = if avoid.has(Class::Iret) { f.world.hole[f.vcpu] + 0x800 } else { f.rng.next_u64() };
            // SAFETY: a return to garbage: the domain is expected to die.
            // Kernel mode (RPL 0): RPL 3 would go to user mode, on a user L4 that may lack
            // slot 511 unless that class is avoided (hole 4).
            let cs = if avoid.has(Class::Slot511) { 0xe030 } else { f.rng.pick(&[0xe030, 0xe033]) };
            // SAFETY: a return to garbage: the domain is expected to die.
            unsafe { iret_garbage(rip, cs, rsp, 0xe02b) };
        }
        "fatal_iret_selectors" => {
            let mut gen = f.gen();
            let (cs, ss) = (gen.selector(), gen.selector());
            iret_to(f, name, u64::from(cs), u64::from(ss), 0x202, 0);
        }
        "fatal_shutdown" => {
            let any = f.rng.bits(32);
            let reason = f.rng.pick(&[0, 1, 2, 3, 4, 5, any]) as u32;
            let arg = SchedShutdown { reason };
            // SAFETY: the domain asks to end.
            unsafe { raw(Hypercall::SchedOp.number(), [u64::from(SchedOp::Shutdown.raw()), &raw const arg as u64, 0, 0, 0]) };
        }
        "fatal_baseptr" => {
            let frame = f.gen().table_frame();
            f.ext("fatal_pin", MmuextCmd::PinL4Table, frame);
            f.ext(name, MmuextCmd::NewBaseptr, frame);
        }
        "fatal_cr3" => {
            let value = f.gen().table_frame() << 12;
            // SAFETY: a base pointer of garbage: the hypervisor kills the domain.
            unsafe { asm!("mov cr3, {}", in(reg) value) };
        }
        "fatal_fault_in_handler" => {
            let table = [guest_rt::abi::arch_x86::TrapInfo { vector: 6, flags: 0, cs: 0xe033, _pad: 0, address: f.world.hole[f.vcpu] }, Default::default()];
            // SAFETY: #UD's handler is now an unmapped page: the fault there cannot be
            // delivered.
            unsafe {
                raw(Hypercall::SetTrapTable.number(), [table.as_ptr() as u64, 0, 0, 0, 0]);
                asm!("ud2");
            }
        }
        "fatal_vcpu_garbage" => {
            let id = f.rng.between(2, 31);
            if let Some(at) = f.scratch.alloc(size_of::<VcpuGuestContext>() as u64) {
                for i in 0..size_of::<VcpuGuestContext>() as u64 / 8 {
                    let value = f.rng.next_u64();
                    f.scratch.fill(at + i * 8, 1, value as u8);
                }
                // SAFETY: a vCPU started from garbage: it is expected to get the domain killed.
                unsafe {
                    raw(Hypercall::VcpuOp.number(), [0, id, at, 0, 0]);
                    raw(Hypercall::VcpuOp.number(), [1, id, 0, 0, 0]);
                }
            }
        }
        _ => {
            let hole = f.world.hole[f.vcpu];
            // SAFETY: an exception with the stack in the unmapped hole: no frame can be
            // written, the domain is killed.
            unsafe { asm!("mov rsp, {}", "ud2", in(reg) hole + 64, options(noreturn)) };
        }
    }
    guard::set_upcall_mask(f.vcpu as u32, true);
    f.restore(after::ALL);
}

/// `iret` to `cs:rip` with `ss:rsp`: never returns here.
///
/// # Safety
/// The domain is expected to die.
unsafe fn iret_garbage(rip: u64, cs: u64, rsp: u64, ss: u64) {
    // SAFETY: the caller expects the domain to end.
    unsafe {
        asm!(
            "sub rsp, 48",
            "mov qword ptr [rsp], 0",
            "mov [rsp + 8], {rip}",
            "mov [rsp + 16], {cs}",
            "mov qword ptr [rsp + 24], 0x202",
            "mov [rsp + 32], {rsp_}",
            "mov [rsp + 40], {ss}",
            "jmp {stub}",
            rip = in(reg) rip,
            cs = in(reg) cs,
            rsp_ = in(reg) rsp,
            ss = in(reg) ss,
            stub = in(reg) iret_stub(),
            options(noreturn),
        );
    }
}

/// An arena frame full of random descriptors, unmapped so that it may become a GDT frame.
pub fn descriptor_frame(f: &mut Fuzzer) -> Option<u64> {
    let index = some_slot(f)?;
    if !f.map_slot(index) {
        return None;
    }
    fill_slot(f, index, |f, _| f.gen().descriptor());
    f.unmap_slot(index).then_some(f.frames.slots[index].mfn)
}
