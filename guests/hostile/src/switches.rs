//! Hypercalls whose guest pointers fault inside the hypervisor while the CPU is due to
//! switch vCPUs: vCPU 1 spins (so that vCPU 0's time slices end while it is in the
//! hypervisor, on one CPU), and vCPU 0 makes many `xen_version` calls that write through
//! an unmapped pointer, each a page fault taken and fixed up inside the hypercall.
//!
//! Before the fix, the scheduler also ran on the way out of such a fault (a trap taken in
//! the hypervisor itself): when a slice had ended, it switched vCPUs there, in the middle
//! of the hypercall, saving the hypervisor's own half-done frame as vCPU 0's context; the
//! next trap on that CPU reused the stack, and switching vCPU 0 back in returned into
//! the hypercall on a stack that was no longer its own (the hypervisor jumped to a stack
//! address and died). Every call must fail with `EFAULT`, and the machine live.
//!
//! Called by `main` in the survivable suite; vCPU 1 parks in a yield loop afterwards (the
//! domain ends with the last attack).

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{pfn_to_cr3, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, VGCF_IN_KERNEL};
use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::{VcpuOp, XenVersionOp};
use guest_rt::abi::ids::VcpuId;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::traps::{trap_table, EXCEPTION_COUNT};
use guest_rt::start_info;

use crate::targets::Targets;
use crate::verdict::{Outcome, Skip, Tally};

/// Faulting hypercalls vCPU 0 makes.
const CALLS: u32 = 40_000;
const STACK_SIZE: usize = 8 * 1024;

/// Set by vCPU 0 when it is done; vCPU 1 then only yields.
static DONE: AtomicBool = AtomicBool::new(false);
/// vCPU 1's spins (proof that it ran).
static SPINS: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".pushsection .bss.hostile_switch_stack,\"aw\",@nobits",
    ".balign 16",
    ".skip {size}",
    ".globl hostile_switch_stack_top",
    "hostile_switch_stack_top:",
    ".popsection",
    size = const STACK_SIZE,
);

extern "C" {
    static hostile_switch_stack_top: u8;
    static guest_rt_trap_stubs: u8;
}

pub fn run(tally: &mut Tally, targets: &Targets) {
    let attack = format_args!("{CALLS} hypercalls faulting on a guest pointer while vCPUs switch");
    if let Err(error) = start_spinner() {
        let errno = error.errno().map_or(0, |e| e.raw() as u64);
        tally.record(attack, Outcome::Skipped(Skip::NoReservation(errno)));
        return;
    }
    let mut wrong = 0;
    for _ in 0..CALLS {
        // SAFETY: the hole is unmapped: the hypervisor's write must fault and be refused.
        let result = unsafe { hypercall::xen_version_raw(XenVersionOp::Extraversion, targets.hole as *mut [u8; 16]) };
        wrong += u32::from(result != Err(HypercallError::Xen(Errno::Efault)));
    }
    DONE.store(true, Ordering::Release);
    let outcome = if wrong == 0 && SPINS.load(Ordering::Relaxed) > 0 {
        Outcome::Refused { errno: Errno::Efault.raw() as u64 }
    } else {
        Outcome::Succeeded
    };
    tally.record(attack, outcome);
}

/// Brings up vCPU 1 spinning on the boot page tables.
fn start_spinner() -> Result<(), HypercallError> {
    let info = start_info::start_info();
    let l4 = start_info::virt_to_mfn(info.pt_base).ok_or(HypercallError::BadArgument)?;
    let entry: extern "C" fn() -> ! = spinner;
    let mut context = VcpuGuestContext { flags: VGCF_IN_KERNEL, kernel_ss: FLAT_KERNEL_SS64.into(), ..VcpuGuestContext::default() };
    let regs = &mut context.user_regs;
    regs.rip = entry as usize as u64;
    regs.rsp = &raw const hostile_switch_stack_top as u64 - 8;
    regs.cs = FLAT_KERNEL_CS64;
    regs.ss = FLAT_KERNEL_SS64;
    regs.rflags = 0x202;
    let table = trap_table(&raw const guest_rt_trap_stubs as u64);
    for entry in &table[..EXCEPTION_COUNT] {
        context.trap_ctxt[usize::from(entry.vector)] = *entry;
    }
    context.ctrlreg[3] = pfn_to_cr3(l4.0);
    // SAFETY: a complete context: its own stack, an entry that never returns, the runtime's
    // trap table and the boot L4. The hypervisor only reads it.
    unsafe { hypercall::vcpu_op_raw(VcpuOp::Initialise, VcpuId(1), &raw mut context)? };
    hypercall::vcpu_control(hypercall::VcpuControl::Up, VcpuId(1))?;
    Ok(())
}

/// vCPU 1: spins until vCPU 0 is done, then yields forever.
extern "C" fn spinner() -> ! {
    while !DONE.load(Ordering::Acquire) {
        SPINS.fetch_add(1, Ordering::Relaxed);
        core::hint::spin_loop();
    }
    loop {
        let _ = hypercall::sched_yield();
    }
}
