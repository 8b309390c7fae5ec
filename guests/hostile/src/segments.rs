//! Attacks on guest LDTs (issue 16), after the ways Xen's descriptor checks have been
//! attacked: a descriptor that reaches ring 0 (a call gate, ring-0 code), a descriptor frame
//! the guest can still write or that is something else too (its own page table, the
//! shared-info frame the hypervisor writes), an LDT in the hypervisor's part of the address
//! space, and a loaded LDT selector made unloadable behind the CPU's back.
//!
//! Survivable ([`run`]): `MMUEXT_SET_LDT` in the hypervisor's window, across the top
//! gigabyte's start, in Xen's reserved (M2P) slots, non-canonical, and with 8193 entries;
//! over a frame holding a DPL-3 call gate to the hypervisor's code selector; over a frame
//! mapped writable; over the guest's own L4 (a pinned table); over the shared-info frame;
//! then, with a good LDT in place, its frame mapped writable and a call gate written into it
//! with `update_descriptor`. Each must be refused; one that goes through is undone.
//!
//! Fatal ([`ldt_call_gate`], [`stale_ldt_ss`], [`stale_ldt_ds`]; one per domain through
//! [`crate::fatal`]): the first installs the gate and, if that is accepted, calls through
//! it (a ring-0 far call to a guest address: the machine would be the guest's); refused, it
//! powers off. The second loads ss from the LDT on vCPU 1, makes the descriptor not present
//! from vCPU 0, and waits for vCPU 1's next return from an interrupt, whose `iretq` must
//! fault into its failsafe callback ([`crate::contained`]), never in the hypervisor. The
//! third does the same with ds while vCPU 1 blocks and wakes: the hypervisor reloads ds on
//! each switch-in, and that load must fault into the failsafe callback too.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::callback::CALLBACKF_MASK_EVENTS;
use guest_rt::abi::hypercall::{CallbackType, Hypercall, MmuextCmd, SchedOp, ShutdownReason, VcpuOp};
use guest_rt::abi::sched::SchedPoll;
use guest_rt::abi::ids::{DomId, VcpuId};
use guest_rt::abi::mmu::{MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, decode, hypercall2, sched_yield, shutdown};
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use guest_rt::time::Clock;
use guest_rt::{println, start_info};

use crate::contained::{self, Landing};
use crate::targets::{Frame, Targets};
use crate::verdict::{Outcome, Tally};

/// A present call gate, DPL 3, to the hypervisor's ring-0 code selector 0xe008.
const CALL_GATE: u64 = 0x0000_ec00_e008_1000;
/// A 64-bit flat data segment, DPL 3, and the same not present.
const DATA_DPL3: u64 = 0x00cf_f200_0000_ffff;
const DATA_NOT_PRESENT: u64 = DATA_DPL3 & !(1 << 47);
/// LDT entry 0 with RPL 3, as a selector; entry 1 (the gate) likewise.
const LDT_ENTRY0: u16 = 0x7;
const LDT_ENTRY1: u16 = 0xf;
/// The spare frames (see [`Targets::spare_frame`]) this module uses.
const SPARE_LDT: u64 = 60;
const SPARE_GATE: u64 = 61;
/// Places an LDT must never be: the window, the last page before the top gigabyte (with
/// 8192 entries it runs into it), Xen's reserved slots, the non-canonical hole.
const WINDOW: u64 = 0xFFFF_FFFF_FC00_0000;
const BELOW_TOP_GIB: u64 = 0xFFFF_FFFF_BFFF_F000;
const M2P: u64 = 0xFFFF_8000_0000_0000;
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// How long vCPU 1's timer waits (ns), and vCPU 0's patience (yields).
const STALE_TIMER_NS: u64 = 200_000_000;
const MAX_YIELDS: u32 = 200_000;

fn set_ldt(base: u64, entries: u64) -> i64 {
    let op = MmuextOp { cmd: MmuextCmd::SetLdt.raw(), _pad: 0, arg1: base, arg2: entries };
    let mut done = 0u32;
    // SAFETY: at worst the LDT changes, which only the probes here use.
    unsafe { hypercall::hypercall4(Hypercall::MmuextOp, &op as *const MmuextOp as u64, 1, &mut done as *mut u32 as u64, u64::from(DomId::SELF.0)) }
}

fn remap(frame: Frame, writable: bool) -> i64 {
    let pte = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER | if writable { PTE_WRITABLE } else { 0 };
    // SAFETY: a spare frame of this module's; nothing else uses it.
    unsafe { hypercall::hypercall3(Hypercall::UpdateVaMapping, frame.va, pte, UVMF_INVLPG | UVMF_LOCAL) }
}

/// A spare frame holding `descriptors` from entry 0, mapped read-only.
fn descriptor_frame(targets: &Targets, n: u64, descriptors: &[u64]) -> Result<Frame, &'static str> {
    let frame = targets.spare_frame(n).ok_or("no spare frame")?;
    let table = frame.va as *mut u64;
    // SAFETY: a spare frame mapped writable at its address; nothing else uses it.
    unsafe {
        core::ptr::write_bytes(table, 0, 512);
        for (i, &d) in descriptors.iter().enumerate() {
            table.add(i).write_volatile(d);
        }
    }
    if remap(frame, false) < 0 {
        return Err("remapping a descriptor frame read-only");
    }
    Ok(frame)
}

/// The survivable attacks.
pub fn run(tally: &mut Tally, targets: &Targets) {
    for (base, entries, what) in [
        (WINDOW, 1, "in the hypervisor's window"),
        (BELOW_TOP_GIB, 8192, "running into the hypervisor's top gigabyte"),
        (M2P, 1, "in Xen's reserved (M2P) slots"),
        (NON_CANONICAL, 1, "at a non-canonical address"),
    ] {
        let attack = format_args!("set_ldt of {entries} entries at {base:#x}, {what}");
        if tally.record(attack, Outcome::of_call(set_ldt(base, entries))) {
            set_ldt(0, 0);
        }
    }
    let gate = match descriptor_frame(targets, SPARE_GATE, &[DATA_DPL3, CALL_GATE]) {
        Ok(frame) => frame,
        Err(step) => {
            tally.record(format_args!("LDT attacks"), Outcome::NotPrepared { step, errno: 0 });
            return;
        }
    };
    if tally.record(format_args!("set_ldt over a frame holding a DPL-3 call gate to 0xe008"), Outcome::of_call(set_ldt(gate.va, 2))) {
        set_ldt(0, 0);
    }
    remap(gate, true);
    if tally.record(format_args!("set_ldt over a frame mapped writable"), Outcome::of_call(set_ldt(gate.va, 1))) {
        set_ldt(0, 0);
    }
    if tally.record(format_args!("set_ldt over the guest's own L4 (a pinned table)"), Outcome::of_call(set_ldt(start_info::pt_base(), 512))) {
        set_ldt(0, 0);
    }
    shared_info_ldt(tally, targets);
    let ldt = match descriptor_frame(targets, SPARE_LDT, &[DATA_DPL3]) {
        Ok(frame) => frame,
        Err(step) => {
            tally.record(format_args!("LDT attacks"), Outcome::NotPrepared { step, errno: 0 });
            return;
        }
    };
    let installed = set_ldt(ldt.va, 8);
    if installed < 0 {
        tally.record(format_args!("installing a good LDT"), Outcome::NotPrepared { step: "set_ldt", errno: installed.unsigned_abs() });
        return;
    }
    if tally.record(format_args!("map the loaded LDT frame writable"), Outcome::of_call(remap(ldt, true))) {
        remap(ldt, false);
    }
    // SAFETY: update_descriptor on our own LDT frame; refused, nothing changes.
    let ret = unsafe { hypercall2(Hypercall::UpdateDescriptor, ldt.mfn.address() + 8, CALL_GATE) };
    tally.record(format_args!("update_descriptor of a call gate into the loaded LDT"), Outcome::of_call(ret));
    set_ldt(0, 0);
    remap(ldt, true);
}

/// The shared-info frame, mapped read-only at the hole, as an LDT.
fn shared_info_ldt(tally: &mut Tally, targets: &Targets) {
    let pte = (targets.shared_info.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the hole is this guest's unmapped page; the frame is only mapped there.
    let mapped = unsafe { hypercall::hypercall3(Hypercall::UpdateVaMapping, targets.hole, pte, UVMF_INVLPG | UVMF_LOCAL) };
    if mapped < 0 {
        tally.record(format_args!("set_ldt over the shared-info frame"), Outcome::NotPrepared { step: "mapping shared info at the hole", errno: mapped.unsigned_abs() });
        return;
    }
    if tally.record(format_args!("set_ldt over the shared-info frame"), Outcome::of_call(set_ldt(targets.hole, 1))) {
        set_ldt(0, 0);
    }
    // SAFETY: unmapping the hole again.
    unsafe { hypercall::hypercall3(Hypercall::UpdateVaMapping, targets.hole, 0, UVMF_INVLPG | UVMF_LOCAL) };
}

/// Fatal: a call gate in the LDT and, if accepted, a far call through it.
pub fn ldt_call_gate(targets: &Targets) -> ! {
    println!("hostile: attack ldt_call_gate: an LDT holding a DPL-3 call gate to the hypervisor's code selector, then a far call through it");
    let gate = descriptor_frame(targets, SPARE_GATE, &[0, CALL_GATE, 0]).unwrap_or_else(|step| {
        println!("hostile: attack ldt_call_gate: FAILED {step}");
        shutdown(ShutdownReason::Crash)
    });
    let ret = set_ldt(gate.va, 3);
    if ret < 0 {
        println!("hostile: attack ldt_call_gate: refused (errno {})", ret.unsigned_abs());
        shutdown(ShutdownReason::Poweroff);
    }
    let pointer: [u64; 2] = [0, u64::from(LDT_ENTRY1)];
    // SAFETY: none: the gate would run ring-0 code at a guest address. It is the attack.
    // `call far [rdi]` with REX.W (FF /3): a 64-bit offset, then the selector.
    unsafe { asm!(".byte 0x48, 0xff, 0x1f", in("rdi") pointer.as_ptr(), options(nostack)) };
    println!("hostile: attack ldt_call_gate: the far call returned (SUCCEEDED (BUG))");
    shutdown(ShutdownReason::Crash)
}

/// vCPU 1's progress: 0 starting, 1 ss loaded, 2 failed.
static SECONDARY_STATE: AtomicU32 = AtomicU32::new(0);
static LDT_VA: AtomicU64 = AtomicU64::new(0);
static DEADLINE_NS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// vCPU 1's stack (`exit_path`'s: one attack runs per domain).
    static hostile_secondary_stack_top: u8;
}

/// Which register vCPU 1 loads from its LDT: 0 ss, 1 ds.
static TARGET_REGISTER: AtomicU32 = AtomicU32::new(0);

/// Fatal, two vCPUs: a stack selector from the LDT made not present while loaded.
pub fn stale_ldt_ss(targets: &Targets) -> ! {
    stale_ldt_selector(targets, "stale_ldt_ss", 0)
}

/// Fatal, two vCPUs: a data selector (ds) from the LDT made not present while loaded; vCPU
/// 1 blocks and wakes again and again, so that the hypervisor loads ds for it on every
/// switch-in, where the load must fault into its failsafe callback.
pub fn stale_ldt_ds(targets: &Targets) -> ! {
    stale_ldt_selector(targets, "stale_ldt_ds", 1)
}

fn stale_ldt_selector(targets: &Targets, name: &'static str, register: u32) -> ! {
    contained::strike(name);
    TARGET_REGISTER.store(register, Ordering::Relaxed);
    let ldt = descriptor_frame(targets, SPARE_LDT, &[DATA_DPL3]).unwrap_or_else(|step| {
        println!("hostile: attack {name}: FAILED {step}");
        shutdown(ShutdownReason::Crash)
    });
    let clock = Clock::new().unwrap_or_else(|error| {
        println!("hostile: FAILED mapping the shared info page: {error:?}");
        shutdown(ShutdownReason::Crash)
    });
    LDT_VA.store(ldt.va, Ordering::Relaxed);
    DEADLINE_NS.store(clock.now_ns() + STALE_TIMER_NS, Ordering::Release);
    let which = if register == 0 { "ss" } else { "ds" };
    println!("hostile: attack {name}: vcpu1 loads {which} {LDT_ENTRY0:#x} from its LDT, then vcpu0 makes the descriptor not present");
    bring_up_secondary();
    for _ in 0..MAX_YIELDS {
        match SECONDARY_STATE.load(Ordering::Acquire) {
            0 => {
                let _ = sched_yield();
            }
            1 => break,
            _ => shutdown(ShutdownReason::Crash),
        }
    }
    // SAFETY: the frame is vCPU 1's LDT; only entry 0 changes.
    let update = decode(unsafe { hypercall2(Hypercall::UpdateDescriptor, ldt.mfn.address(), DATA_NOT_PRESENT) });
    if let Err(error) = update {
        println!("hostile: FAILED update_descriptor: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    println!("hostile: attack {name}: descriptor of the loaded {which} now not present; waiting for vcpu1's next return");
    for _ in 0..MAX_YIELDS {
        let _ = sched_yield();
    }
    println!("hostile: attack {name}: vcpu1 was never returned to (the selector was not reloaded)");
    shutdown(ShutdownReason::Crash)
}

fn bring_up_secondary() {
    let l4 = start_info::virt_to_mfn(start_info::pt_base()).expect("pt_base is mapped");
    let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
    let entry: extern "C" fn() -> ! = secondary_main;
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    regs.rsp = &raw const hostile_secondary_stack_top as u64 - 8;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = 0x202;
    context.ctrlreg[3] = pfn_to_cr3(l4.0);
    context.failsafe_callback_eip = Landing::Failsafe.entry();
    // SAFETY: a stack nothing else uses, the boot L4, an entry that never returns.
    let up = unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, VcpuId(1), &raw mut context) }
        .and_then(|_| hypercall::vcpu_control(hypercall::VcpuControl::Up, VcpuId(1)));
    if let Err(error) = up {
        println!("hostile: FAILED bringing up vcpu1: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
}

/// vCPU 1: its LDT, a timer, ss from the LDT, then spin with interrupts on.
extern "C" fn secondary_main() -> ! {
    let fail = |what: &str, errno: i64| -> ! {
        println!("hostile: FAILED on vcpu1: {what}: {errno}");
        SECONDARY_STATE.store(2, Ordering::Release);
        shutdown(ShutdownReason::Crash)
    };
    // SAFETY: the landing handles a failsafe frame and never returns.
    if let Err(error) = unsafe { hypercall::callback_register(CallbackType::Failsafe, Landing::Failsafe.entry(), CALLBACKF_MASK_EVENTS) } {
        println!("hostile: FAILED on vcpu1: registering the failsafe callback: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    let ret = set_ldt(LDT_VA.load(Ordering::Relaxed), 1);
    if ret < 0 {
        fail("set_ldt", ret);
    }
    if let Err(error) = hypercall::set_timer_op(DEADLINE_NS.load(Ordering::Acquire)) {
        println!("hostile: FAILED on vcpu1: set_timer_op: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    if TARGET_REGISTER.load(Ordering::Relaxed) == 1 {
        // SAFETY: LDT entry 0 is a flat data segment with DPL 3; 64-bit code ignores ds.
        unsafe { asm!("mov ds, {0:x}", in(reg) LDT_ENTRY0, options(nostack)) };
        SECONDARY_STATE.store(1, Ordering::Release);
        let clock = Clock::new().unwrap_or_else(|_| shutdown(ShutdownReason::Crash));
        loop {
            // Block for 2 ms (a poll of no port): switched out, then in again.
            let mut poll = SchedPoll { ports: 0, nr_ports: 0, _pad: 0, timeout: clock.now_ns() + 2_000_000 };
            // SAFETY: the hypervisor reads the poll request; no port is named.
            unsafe { hypercall2(Hypercall::SchedOp, u64::from(SchedOp::Poll.raw()), &raw mut poll as u64) };
        }
    }
    // SAFETY: LDT entry 0 is a flat writable data segment with DPL 3: the stack keeps
    // working. From here on no hypercall is made (a syscall would reload the flat ss).
    unsafe { asm!("mov ss, {0:x}", in(reg) LDT_ENTRY0, options(nostack)) };
    SECONDARY_STATE.store(1, Ordering::Release);
    loop {
        core::hint::spin_loop();
    }
}
