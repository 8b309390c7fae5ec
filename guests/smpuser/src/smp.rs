//! The SMP check: vCPU 0 brings up vCPU 1 with `VCPUOP_initialise` and `VCPUOP_up`
//! (checking `VCPUOP_is_up` before and after), vCPU 1 proves it started with the context
//! it was given and counts up a shared counter, yielding in between; then both run the
//! TLB-shootdown check ([`crate::shootdown`]), after which vCPU 1 parks in a yield loop
//! until vCPU 0 shuts the domain down.
//!
//! vCPU 1's context: its own stack (in the image's bss), the boot L4 (`pt_base`'s machine
//! frame in `ctrlreg[3]`), rip = [`secondary_main`] with rdi = its vCPU id and rsi =
//! [`SECONDARY_RSI`], guest kernel mode, and the runtime's trap table (no `kernel_sp`: vCPU
//! 1 never enters user mode). vCPU 0 reports whether the two vCPUs ran on different
//! physical CPUs (forced-emulation CPUID), as only then does the shootdown cross CPUs;
//! placement is the hypervisor's choice, so it is reported, not checked. `main` calls
//! [`check`] on vCPU 0. The two vCPUs share only the atomics here and in `shootdown`; each
//! step's printed line comes before the flag that lets the other vCPU go on, so the
//! console order is fixed. vCPU 1 must never return: it has nothing to return to.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{
    pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL,
};
use guest_rt::abi::hypercall::VcpuOp;
use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::{self, sched_yield};
use guest_rt::traps::{trap_table, EXCEPTION_COUNT};
use guest_rt::{println, start_info, StartInfo};

use crate::cpu_id::physical_apic_id;
use crate::failure::{expect, fail, Call, Check, Failure, Wait};
use guest_rt::frames::FreeFrames;
use crate::shootdown;
use crate::wait::{yield_until, MAX_YIELDS};

/// The vCPU brought up.
const SECONDARY: VcpuId = VcpuId(1);
/// rsi vCPU 1 starts with (rdi is its id): a value nothing else produces.
const SECONDARY_RSI: u64 = 0x5EC0_4DA2_C0DE_0001;
/// Size of vCPU 1's stack.
const SECONDARY_STACK_SIZE: usize = 16 * 1024;
/// Increments vCPU 1 makes to the shared counter, one yield after each.
const COUNT_TARGET: u64 = 1000;
/// rflags vCPU 1 starts with: interrupts (events) on, reserved bit 1.
const INITIAL_RFLAGS: u64 = 0x202;
/// Yields vCPU 1 makes while parked before it decides the shutdown is not coming: a few
/// waits' worth, as vCPU 0 still has the user-mode check to run (milliseconds).
const MAX_PARK_YIELDS: u32 = 3 * MAX_YIELDS;

/// vCPU 1's progress, each step announced after its line is printed.
const PROGRESS_STARTED: u32 = 1;
const PROGRESS_COUNTED: u32 = 2;

static PROGRESS: AtomicU32 = AtomicU32::new(0);
/// Set by vCPU 0 once it has printed that vCPU 1 is up: vCPU 1 prints only then.
static RELEASED: AtomicBool = AtomicBool::new(false);
/// The APIC id of the physical CPU vCPU 1 runs on.
static SECONDARY_APIC_ID: AtomicU32 = AtomicU32::new(0);
/// The registers vCPU 1 started with.
static STARTED_RDI: AtomicU64 = AtomicU64::new(0);
static STARTED_RSI: AtomicU64 = AtomicU64::new(0);
/// Incremented by vCPU 1.
static COUNTER: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".pushsection .bss.smpuser_secondary_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    ".globl smpuser_secondary_stack_top",
    "smpuser_secondary_stack_top:",
    ".popsection",
    size = const SECONDARY_STACK_SIZE,
);

extern "C" {
    /// The top of vCPU 1's stack (defined above; only its address is used).
    static smpuser_secondary_stack_top: u8;
    /// guest-rt's exception entry stubs, which its trap table points at.
    static guest_rt_trap_stubs: u8;
}

/// Runs the SMP check on vCPU 0; `free` gives the shootdown check its two frames.
pub fn check(start: &StartInfo, free: &mut FreeFrames) -> Result<(), Failure> {
    let primary_apic_id = physical_apic_id();
    println!("smpuser: vcpu0 running on the CPU with APIC id {primary_apic_id}");
    bring_up(start)?;
    println!("smpuser: vcpu0 brought up vcpu1 (is_up 0 before up, 1 after)");
    RELEASED.store(true, Ordering::Release);
    yield_until(Wait::SecondaryStart, || {
        PROGRESS.load(Ordering::Acquire) >= PROGRESS_STARTED
    })?;
    let rdi = STARTED_RDI.load(Ordering::Relaxed);
    let rsi = STARTED_RSI.load(Ordering::Relaxed);
    expect(Check::SecondaryRdi, rdi, u64::from(SECONDARY.0))?;
    expect(Check::SecondaryRsi, rsi, SECONDARY_RSI)?;
    println!("smpuser: vcpu0 sees vcpu1 started with rdi={rdi} rsi={rsi:#x}");
    yield_until(Wait::SecondaryCount, || {
        PROGRESS.load(Ordering::Acquire) >= PROGRESS_COUNTED
    })?;
    println!(
        "smpuser: vcpu0 sees the counter at {}",
        COUNTER.load(Ordering::Relaxed)
    );
    let a = free.take().ok_or(Failure::NoFreeFrame)?;
    let b = free.take().ok_or(Failure::NoFreeFrame)?;
    shootdown::run_primary(a, b)?;
    println!("smpuser: vcpu0 checked the shootdown: vcpu1 saw frame B after the remap");
    report_placement(primary_apic_id, SECONDARY_APIC_ID.load(Ordering::Relaxed));
    Ok(())
}

/// Says whether the shootdown crossed physical CPUs: with both vCPUs on one CPU, switching
/// between them reloads the page-table base, which flushes the TLB whatever the remap did.
fn report_placement(primary: u32, secondary: u32) {
    if primary == secondary {
        println!("smpuser: both vCPUs ran on the CPU with APIC id {primary}: the shootdown did not cross CPUs");
    } else {
        println!(
            "smpuser: the shootdown crossed physical CPUs (APIC ids {primary} and {secondary})"
        );
    }
}

/// Initialises and starts vCPU 1, checking `VCPUOP_is_up` on both sides of `VCPUOP_up`.
fn bring_up(start: &StartInfo) -> Result<(), Failure> {
    let mut context = secondary_context(start)?;
    // SAFETY: the context is complete: a stack nothing else uses, the boot L4 every vCPU
    // shares, an entry that never returns, and the runtime's trap table. The hypervisor
    // only reads it.
    unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, SECONDARY, &raw mut context) }
        .map_err(|e| Failure::Call(Call::VcpuInitialise, e))?;
    expect(Check::IsUpBeforeUp, is_up()?, 0)?;
    hypercall::vcpu_control(hypercall::VcpuControl::Up, SECONDARY)
        .map_err(|e| Failure::Call(Call::VcpuUp, e))?;
    expect(Check::IsUpAfterUp, is_up()?, 1)
}

/// `VCPUOP_is_up` of vCPU 1.
fn is_up() -> Result<u64, Failure> {
    hypercall::vcpu_control(hypercall::VcpuControl::IsUp, SECONDARY)
        .map_err(|e| Failure::Call(Call::VcpuIsUp, e))
}

/// vCPU 1's initial state.
fn secondary_context(start: &StartInfo) -> Result<VcpuGuestContext, Failure> {
    let l4 = start_info::virt_to_mfn(start.pt_base).ok_or(Failure::BadPtBase(start.pt_base))?;
    let stack_top = &raw const smpuser_secondary_stack_top as u64;
    let entry: extern "C" fn(u64, u64) -> ! = secondary_main;
    let mut context = VcpuGuestContext {
        flags: VGCF_IN_KERNEL,
        kernel_ss: FLAT_KERNEL_SS64.into(),
        ..VcpuGuestContext::default()
    };
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    // As if `call`ed: the ABI wants rsp + 8 aligned to 16 at a function's first instruction.
    regs.rsp = stack_top - 8;
    regs.rdi = u64::from(SECONDARY.0);
    regs.rsi = SECONDARY_RSI;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = INITIAL_RFLAGS;
    let table = trap_table(&raw const guest_rt_trap_stubs as u64);
    for entry in &table[..EXCEPTION_COUNT] {
        context.trap_ctxt[usize::from(entry.vector)] = *entry;
    }
    context.ctrlreg[3] = pfn_to_cr3(l4.0);
    Ok(context)
}

/// vCPU 1's entry, with rdi and rsi from its context.
extern "C" fn secondary_main(rdi: u64, rsi: u64) -> ! {
    STARTED_RDI.store(rdi, Ordering::Relaxed);
    STARTED_RSI.store(rsi, Ordering::Relaxed);
    if let Err(failure) = yield_until(Wait::Release, || RELEASED.load(Ordering::Acquire)) {
        fail(failure);
    }
    let apic_id = physical_apic_id();
    SECONDARY_APIC_ID.store(apic_id, Ordering::Relaxed);
    println!("smpuser: vcpu1 started on the CPU with APIC id {apic_id}");
    PROGRESS.store(PROGRESS_STARTED, Ordering::Release);
    for _ in 0..COUNT_TARGET {
        COUNTER.fetch_add(1, Ordering::Relaxed);
        // A refused yield only makes the count go faster.
        let _ = sched_yield();
    }
    println!("smpuser: vcpu1 counted to {COUNT_TARGET}");
    PROGRESS.store(PROGRESS_COUNTED, Ordering::Release);
    if let Err(failure) = shootdown::run_secondary() {
        fail(failure);
    }
    park()
}

/// Yields until the domain is shut down (which stops this vCPU inside a yield); crashes
/// the domain if that does not happen within [`MAX_PARK_YIELDS`].
fn park() -> ! {
    for _ in 0..MAX_PARK_YIELDS {
        let _ = sched_yield();
    }
    fail(Failure::Timeout(Wait::Shutdown))
}
