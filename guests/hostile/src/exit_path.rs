//! Attacks on the way out of the hypervisor (issue 15, hole 5): `iret` frames whose code or
//! stack selector, or instruction pointer, the hypervisor's own `iretq` cannot load. Before
//! the fix each made that `iretq` fault in ring 0, after `swapgs`, on the guest's GS: the
//! machine died. Contained, the guest gets its failsafe callback with the frame that could
//! not be loaded (Xen's behaviour), or is killed alone when it registered none.
//!
//! Each attack returns to guest *kernel* mode (cs RPL 0 in the frame, as a kernel's own
//! iret does) with rsp on a stack of its own, so that the failsafe frame has somewhere to
//! go; the failsafe callback is [`crate::contained`]'s, which reports and powers off.
//!
//! - `iret_cs_null`: cs 0; `iret_cs_null_unhandled`: the same with no failsafe callback
//!   (must be killed);
//! - `iret_cs_ldt`: cs 0x4, an LDT selector (there is no LDT);
//! - `iret_cs_not_present`: cs 0x8, entry 1 of the guest's own GDT (`set_gdt`), a 64-bit
//!   code descriptor with its present bit clear (which the descriptor check lets through);
//! - `iret_rip_noncanonical`: rip 0x8000_0000_0000 (Intel faults in ring 0 on it; AMD and
//!   QEMU fault in the guest after the return);
//! - `iret_ss_null`: ss 0;
//! - `stale_ss` (two vCPUs): a stack selector that was valid when loaded, made not present
//!   behind the CPU's back; the `iretq` after an interrupt faults on it (see [`stale_ss`]).
//!
//! Called by [`crate::fatal`], one attack per domain; this module must never return.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{pfn_to_cr3, IretContext, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::callback::CALLBACKF_MASK_EVENTS;
use guest_rt::abi::hypercall::{CallbackType, Hypercall, ShutdownReason, VcpuOp};
use guest_rt::abi::ids::{VcpuId, PAGE_SIZE};
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, decode, sched_yield, shutdown};
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER};
use guest_rt::time::Clock;
use guest_rt::{println, start_info};

use crate::contained::{self, Landing};
use crate::targets::Targets;

/// The kernel's 64-bit code selector as a kernel iret frame carries it (RPL 0).
const KERNEL_CS_RPL0: u64 = 0xe030;
/// rflags of the return: interrupts (events) on, reserved bit 1.
const RFLAGS: u64 = 0x202;
/// A 64-bit code descriptor, DPL 3, with the present bit clear.
const CODE64_NOT_PRESENT: u64 = 0x00af_fa00_0000_ffff & !(1 << 47);
/// Size of the stack the iret returns to (and the failsafe frame is written on).
const IRET_STACK_SIZE: usize = 4096;

global_asm!(
    ".pushsection .bss.hostile_iret_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    ".globl hostile_iret_stack_top",
    "hostile_iret_stack_top:",
    ".popsection",
    size = const IRET_STACK_SIZE,
);

extern "C" {
    static hostile_iret_stack_top: u8;
}

/// Where a frame that wrongly loads resumes: it reports the bug.
extern "C" fn iret_went_through() -> ! {
    println!("hostile: the bad iret frame was loaded and ran (SUCCEEDED (BUG))");
    shutdown(ShutdownReason::Crash)
}

/// The frame every attack starts from: a valid return to [`iret_went_through`].
fn good_frame() -> IretContext {
    IretContext {
        rax: 0,
        r11: 0,
        rcx: 0,
        flags: 0,
        rip: iret_went_through as *const () as u64,
        cs: KERNEL_CS_RPL0,
        rflags: RFLAGS,
        rsp: &raw const hostile_iret_stack_top as u64 - 8,
        ss: u64::from(FLAT_KERNEL_SS64),
    }
}

/// Registers the failsafe callback of [`crate::contained`].
fn register_failsafe() {
    // SAFETY: the landing handles a failsafe frame and never returns.
    if let Err(error) = unsafe { hypercall::callback_register(CallbackType::Failsafe, Landing::Failsafe.entry(), CALLBACKF_MASK_EVENTS) } {
        println!("hostile: FAILED registering the failsafe callback: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
}

/// The iret context is read from the guest stack at the `syscall`.
static mut CONTEXT: IretContext = IretContext { rax: 0, r11: 0, rcx: 0, flags: 0, rip: 0, cs: 0, rflags: 0, rsp: 0, ss: 0 };

/// Makes the `iret` hypercall with `frame`; never returns.
fn iret(name: &'static str, what: &str, frame: IretContext) -> ! {
    println!(
        "hostile: attack {name}: {what}: iret to rip {:#x} cs {:#x} ss {:#x}",
        frame.rip, frame.cs, frame.ss
    );
    contained::strike(name);
    let context = &raw mut CONTEXT;
    // SAFETY: one vCPU, one attack: nothing else uses the static.
    unsafe { context.write(frame) };
    // SAFETY: the iret hypercall reads the context at rsp and never returns here: it
    // resumes the frame, or the failsafe callback, or the domain dies.
    unsafe {
        asm!(
            "mov rsp, {context}",
            "mov eax, {iret}",
            "syscall",
            "ud2",
            context = in(reg) context,
            iret = const Hypercall::Iret as u32,
            options(noreturn)
        )
    }
}

pub fn iret_cs_null(_: &Targets) -> ! {
    register_failsafe();
    iret("iret_cs_null", "a null code selector", IretContext { cs: 0, ..good_frame() })
}

pub fn iret_cs_null_unhandled(_: &Targets) -> ! {
    iret("iret_cs_null_unhandled", "a null code selector and no failsafe callback (must be killed)", IretContext { cs: 0, ..good_frame() })
}

pub fn iret_cs_ldt(_: &Targets) -> ! {
    register_failsafe();
    iret("iret_cs_ldt", "an LDT code selector", IretContext { cs: 0x4, ..good_frame() })
}

pub fn iret_rip_noncanonical(_: &Targets) -> ! {
    register_failsafe();
    iret("iret_rip_noncanonical", "a non-canonical rip", IretContext { rip: 0x0000_8000_0000_0000, ..good_frame() })
}

pub fn iret_ss_null(_: &Targets) -> ! {
    register_failsafe();
    iret("iret_ss_null", "a null stack selector", IretContext { ss: 0, ..good_frame() })
}

pub fn iret_cs_not_present(targets: &Targets) -> ! {
    register_failsafe();
    // The guard page becomes a one-frame GDT whose entry 1 is a code segment not present.
    let frame = targets.guard;
    // SAFETY: the guard frame is free and mapped writable; nothing else uses it in a
    // single attack.
    unsafe {
        core::ptr::write_bytes(frame.va as *mut u8, 0, PAGE_SIZE as usize);
        ((frame.va + 8) as *mut u64).write_volatile(CODE64_NOT_PRESENT);
    }
    let read_only = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the guard page loses its write permission; nothing writes it any more.
    if let Err(error) = unsafe { hypercall::update_va_mapping(frame.va, read_only, UVMF_INVLPG | UVMF_LOCAL) } {
        println!("hostile: FAILED remapping the GDT frame read-only: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    let frames = [frame.mfn.0];
    // SAFETY: the hypervisor reads one frame number from the slice.
    let set = decode(unsafe { hypercall::hypercall2(Hypercall::SetGdt, frames.as_ptr() as u64, 512) });
    if let Err(error) = set {
        println!("hostile: FAILED loading the GDT: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    iret("iret_cs_not_present", "a code selector of its own GDT whose descriptor is not present", IretContext { cs: 0x8, ..good_frame() })
}

/// A flat data descriptor, DPL 3, present and writable.
const DATA_DPL3: u64 = 0x00cf_f200_0000_ffff;
/// The same, not present.
const DATA_NOT_PRESENT: u64 = DATA_DPL3 & !(1 << 47);
/// Entry 1 of the guest's own GDT, RPL 3.
const GDT_ENTRY1_RPL3: u16 = (1 << 3) | 3;
/// How long after vCPU 1 loads the stale selector its timer interrupts it.
const STALE_TIMER_NS: u64 = 200_000_000;
/// Yields vCPU 0 waits for vCPU 1 (each 15-70 us under TCG) before it gives up.
const MAX_YIELDS: u32 = 200_000;
/// Size of vCPU 1's stack.
const SECONDARY_STACK_SIZE: usize = 16 * 1024;

global_asm!(
    ".pushsection .bss.hostile_secondary_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    ".globl hostile_secondary_stack_top",
    "hostile_secondary_stack_top:",
    ".popsection",
    size = const SECONDARY_STACK_SIZE,
);

extern "C" {
    static hostile_secondary_stack_top: u8;
}

/// vCPU 1 has loaded the selector (1), or failed to set itself up (2).
static SECONDARY_STATE: AtomicU32 = AtomicU32::new(0);
/// The GDT frame both vCPUs use, and vCPU 1's timer deadline.
static GDT_MFN: AtomicU64 = AtomicU64::new(0);
static DEADLINE_NS: AtomicU64 = AtomicU64::new(0);

/// `stale_ss`: vCPU 1 loads ss from its own GDT (a valid data segment) and spins; vCPU 0
/// then makes that descriptor not present with `update_descriptor`. Nothing checks the
/// selector the CPU pushed when vCPU 1 is interrupted, so the `iretq` that returns to it
/// (after its timer interrupt, or when it is switched back in) raises #SS in ring 0. An
/// `iret` hypercall check cannot see this: only the exit path's fault fix-up contains it.
pub fn stale_ss(targets: &Targets) -> ! {
    contained::strike("stale_ss");
    let frame = targets.guard;
    // SAFETY: the guard frame is free and mapped writable; nothing else uses it in a
    // single attack.
    unsafe {
        core::ptr::write_bytes(frame.va as *mut u8, 0, PAGE_SIZE as usize);
        ((frame.va + 8) as *mut u64).write_volatile(DATA_DPL3);
    }
    let read_only = (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER;
    // SAFETY: the guard page loses its write permission; nothing writes it any more.
    if let Err(error) = unsafe { hypercall::update_va_mapping(frame.va, read_only, UVMF_INVLPG | UVMF_LOCAL) } {
        println!("hostile: FAILED remapping the GDT frame read-only: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    let clock = match Clock::new() {
        Ok(clock) => clock,
        Err(error) => {
            println!("hostile: FAILED mapping the shared info page: {error:?}");
            shutdown(ShutdownReason::Crash);
        }
    };
    GDT_MFN.store(frame.mfn.0, Ordering::Relaxed);
    DEADLINE_NS.store(clock.now_ns() + STALE_TIMER_NS, Ordering::Release);
    println!("hostile: attack stale_ss: vcpu1 loads ss {GDT_ENTRY1_RPL3:#x} from its GDT, then vcpu0 makes the descriptor not present");
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
    let maddr = frame.mfn.address() + 8;
    // SAFETY: the frame is the guest's own GDT frame; only entry 1 changes.
    let update = decode(unsafe { hypercall::hypercall2(Hypercall::UpdateDescriptor, maddr, DATA_NOT_PRESENT) });
    if let Err(error) = update {
        println!("hostile: FAILED update_descriptor: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    println!("hostile: attack stale_ss: descriptor of the loaded ss now not present; waiting for vcpu1's next return");
    for _ in 0..MAX_YIELDS {
        let _ = sched_yield();
    }
    println!("hostile: attack stale_ss: vcpu1 was never returned to (the selector was not reloaded)");
    shutdown(ShutdownReason::Crash)
}

/// Initialises and starts vCPU 1 at [`secondary_main`].
fn bring_up_secondary() {
    let l4 = start_info::virt_to_mfn(start_info::pt_base()).expect("pt_base is mapped");
    let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
    let entry: extern "C" fn() -> ! = secondary_main;
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    regs.rsp = &raw const hostile_secondary_stack_top as u64 - 8;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = RFLAGS;
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

/// vCPU 1: its own GDT, a timer, the selector, then spin with interrupts on.
extern "C" fn secondary_main() -> ! {
    let fail = |what: &str, error: hypercall::HypercallError| -> ! {
        println!("hostile: FAILED on vcpu1: {what}: {error:?}");
        SECONDARY_STATE.store(2, Ordering::Release);
        shutdown(ShutdownReason::Crash)
    };
    // SAFETY: the landing handles a failsafe frame and never returns.
    if let Err(error) = unsafe { hypercall::callback_register(CallbackType::Failsafe, Landing::Failsafe.entry(), CALLBACKF_MASK_EVENTS) } {
        fail("registering the failsafe callback", error);
    }
    let frames = [GDT_MFN.load(Ordering::Relaxed)];
    // SAFETY: the hypervisor reads one frame number from the slice.
    if let Err(error) = decode(unsafe { hypercall::hypercall2(Hypercall::SetGdt, frames.as_ptr() as u64, 512) }) {
        fail("set_gdt", error);
    }
    if let Err(error) = hypercall::set_timer_op(DEADLINE_NS.load(Ordering::Acquire)) {
        fail("set_timer_op", error);
    }
    // SAFETY: entry 1 is a flat writable data segment with DPL 3; the stack keeps working.
    // From here on no hypercall is made (a syscall would reload the flat ss on return).
    unsafe { asm!("mov ss, {0:x}", in(reg) GDT_ENTRY1_RPL3, options(nostack)) };
    SECONDARY_STATE.store(1, Ordering::Release);
    loop {
        core::hint::spin_loop();
    }
}
