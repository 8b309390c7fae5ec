//! The two vCPUs and how they work together: vCPU 0 brings up vCPU 1 (`VCPUOP_initialise`
//! with its own stack and the boot L4, then `VCPUOP_up`), checks that the two run on
//! different physical CPUs (otherwise no race crosses CPUs), and then hands it one race at a
//! time through [`COMMAND`]; vCPU 1 runs its half of that race and reports through [`DONE`].
//! Every wait is bounded in time ([`until`]), so a stuck vCPU shows as a failure, never as a
//! silent hang of the guest (a hung hypervisor shows as a hung machine).
//!
//! `main` calls [`bring_up`], [`run_on_secondary`] and [`park_secondary`]; the races call
//! [`until`]. vCPU 1 must never return from [`secondary_main`].

use core::arch::global_asm;
use core::fmt;
use core::hint::spin_loop;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::hypercall::{ShutdownReason, VcpuOp};
use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::{self, sched_yield, shutdown, HypercallError};
use guest_rt::time::Clock;
use guest_rt::traps::{trap_table, EXCEPTION_COUNT};
use guest_rt::{println, start_info, StartInfo};

/// What vCPU 1 runs next (one of the races' numbers, or [`PARK`]).
static COMMAND: AtomicU32 = AtomicU32::new(0);
/// The last command vCPU 1 finished.
static DONE: AtomicU32 = AtomicU32::new(0);
/// The APIC id of the physical CPU vCPU 1 started on (0 until it has).
static SECONDARY_APIC_ID: AtomicU64 = AtomicU64::new(u64::MAX);
/// vCPU 1's parting words: tells it to yield until the domain is gone.
pub const PARK: u32 = u32::MAX;

/// How long any wait for the other vCPU may take.
const WAIT_LIMIT_NS: u64 = 20_000_000_000;
const SECONDARY: VcpuId = VcpuId(1);
const SECONDARY_STACK_SIZE: usize = 16 * 1024;

global_asm!(
    ".pushsection .bss.hostile2_secondary_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    ".globl hostile2_secondary_stack_top",
    "hostile2_secondary_stack_top:",
    ".popsection",
    size = const SECONDARY_STACK_SIZE,
);

extern "C" {
    /// The top of vCPU 1's stack (defined above; only its address is used).
    static hostile2_secondary_stack_top: u8;
    /// guest-rt's exception entry stubs, which its trap table points at.
    static guest_rt_trap_stubs: u8;
}

/// Why the guest gave up (not a verdict on the hypervisor: a broken step of this guest).
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    Call(&'static str, HypercallError),
    Timeout(&'static str),
    NoFreeFrame,
    BadPtBase(u64),
    /// The boot tables do not map a probe page the way the builder promises.
    Walk(u64),
    /// Both vCPUs run on the CPU with this APIC id: nothing would cross CPUs.
    SameCpu(u32),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Call(what, error) => write!(f, "{what}: {error:?}"),
            Self::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Self::NoFreeFrame => f.write_str("no free frame left"),
            Self::BadPtBase(va) => write!(f, "pt_base {va:#x} outside the initial mapping"),
            Self::Walk(va) => write!(f, "no boot L1 entry maps {va:#x}"),
            Self::SameCpu(id) => write!(f, "both vCPUs run on the CPU with APIC id {id}: no race would cross CPUs"),
        }
    }
}

/// Reports `failure` and crashes the domain.
pub fn fail(failure: Failure) -> ! {
    println!("hostile2: FAILED {failure}");
    shutdown(ShutdownReason::Crash)
}

/// Spins until `ready` holds, for at most [`WAIT_LIMIT_NS`]; `what` names the wait.
pub fn until(what: &'static str, mut ready: impl FnMut() -> bool) -> Result<(), Failure> {
    let clock = Clock::mapped().ok_or(Failure::Timeout(what))?;
    let deadline = clock.now_ns().saturating_add(WAIT_LIMIT_NS);
    loop {
        for _ in 0..1024 {
            if ready() {
                return Ok(());
            }
            spin_loop();
        }
        if clock.now_ns() > deadline {
            return Err(Failure::Timeout(what));
        }
    }
}

/// Brings vCPU 1 up and checks it runs on another physical CPU than vCPU 0.
pub fn bring_up(start: &StartInfo) -> Result<(), Failure> {
    Clock::new().map_err(|e| Failure::Call("map shared info", e))?;
    let mut context = secondary_context(start)?;
    // SAFETY: a complete context: a stack nothing else uses, the boot L4, an entry that
    // never returns, the runtime's trap table. The hypervisor only reads it.
    unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, SECONDARY, &raw mut context) }
        .map_err(|e| Failure::Call("VCPUOP_initialise", e))?;
    hypercall::vcpu_control(hypercall::VcpuControl::Up, SECONDARY)
        .map_err(|e| Failure::Call("VCPUOP_up", e))?;
    until("vCPU 1 to start", || SECONDARY_APIC_ID.load(Ordering::Acquire) != u64::MAX)?;
    let (mine, theirs) = (physical_apic_id(), SECONDARY_APIC_ID.load(Ordering::Acquire) as u32);
    if mine == theirs {
        return Err(Failure::SameCpu(mine));
    }
    println!("hostile2: vCPU 0 on the CPU with APIC id {mine}, vCPU 1 on APIC id {theirs}");
    Ok(())
}

/// Has vCPU 1 run `command` (its half of a race, which returns when the race is over),
/// without waiting.
pub fn start_on_secondary(command: u32) {
    COMMAND.store(command, Ordering::Release);
}

/// Waits until vCPU 1 has finished `command`.
pub fn wait_for_secondary(command: u32) -> Result<(), Failure> {
    until("vCPU 1 to finish its half of a race", || DONE.load(Ordering::Acquire) == command)
}

/// vCPU 1's initial state.
fn secondary_context(start: &StartInfo) -> Result<VcpuGuestContext, Failure> {
    let l4 = start_info::virt_to_mfn(start.pt_base).ok_or(Failure::BadPtBase(start.pt_base))?;
    let entry: extern "C" fn() -> ! = secondary_main;
    let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    // As if `call`ed: rsp + 8 aligned to 16 at a function's first instruction.
    regs.rsp = &raw const hostile2_secondary_stack_top as u64 - 8;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = 0x202;
    let table = trap_table(&raw const guest_rt_trap_stubs as u64);
    for entry in &table[..EXCEPTION_COUNT] {
        context.trap_ctxt[usize::from(entry.vector)] = *entry;
    }
    context.ctrlreg[3] = pfn_to_cr3(l4.0);
    Ok(context)
}

/// vCPU 1: runs each command vCPU 0 gives it, then yields until the domain is gone.
extern "C" fn secondary_main() -> ! {
    SECONDARY_APIC_ID.store(u64::from(physical_apic_id()), Ordering::Release);
    let mut last = 0;
    loop {
        let command = COMMAND.load(Ordering::Acquire);
        if command == last {
            spin_loop();
            continue;
        }
        if command == PARK {
            loop {
                // The domain's shutdown stops this vCPU inside a yield.
                let _ = sched_yield();
            }
        }
        if let Err(failure) = crate::run_secondary_half(command) {
            fail(failure);
        }
        last = command;
        DONE.store(command, Ordering::Release);
    }
}

/// The initial APIC id of the physical CPU running this vCPU (CPUID leaf 1 through Xen's
/// forced-emulation prefix, which the hypervisor answers for the CPU it runs us on).
fn physical_apic_id() -> u32 {
    let ebx: u32;
    // SAFETY: `ud2; .ascii "xen"; cpuid` is Xen's forced-emulation CPUID: the hypervisor
    // emulates it and resumes after the 7 bytes, writing only eax, ebx, ecx and edx. rbx is
    // reserved by the compiler, so it is saved in a scratch register and restored.
    unsafe {
        core::arch::asm!(
            "mov {saved:r}, rbx",
            ".byte 0x0f, 0x0b, 0x78, 0x65, 0x6e",
            "cpuid",
            "mov {ebx:e}, ebx",
            "mov rbx, {saved:r}",
            saved = out(reg) _,
            ebx = out(reg) ebx,
            inout("eax") 1u32 => _,
            inout("ecx") 0u32 => _,
            out("edx") _,
            options(nostack),
        );
    }
    ebx >> 24
}
