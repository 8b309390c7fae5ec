//! A PV vCPU's debug registers: `set_debugreg` and `get_debugreg` (hypercalls 8 and 9),
//! the same for an emulated `mov` to or from DR0-DR7, switching them with the vCPU, and the
//! #DB a guest's breakpoint or single step raises.
//!
//! The rules are Xen's (`hypervisor::debugreg`): breakpoints only on guest addresses, no
//! general detect, 32-bit DR6/DR7 with reserved bits forced, I/O breakpoints only with the
//! virtual CR4.DE and never in the hardware. The registers are loaded lazily: a vCPU whose
//! DR7 enables no breakpoint costs nothing at a switch (the hardware's DR7 is 0 whenever
//! such a vCPU runs); one that does has DR0-DR3 and DR7 loaded at [`switch_in`] and DR7
//! cleared at [`switch_out`]. The hardware's DR6 is kept at its default: the guest's DR6
//! lives in the vCPU and every #DB from the guest merges what the hardware reported into
//! it ([`debug_exception`]) before the #DB is bounced.
//!
//! A #DB in hypervisor context (a guest's data breakpoint on memory the hypervisor reads
//! or writes for it, or one deferred by `mov ss`/`pop ss` to the first instruction of an
//! entry path, XSA-260) never reaches this module: the #DB gate has a stack of its own and
//! the entry path resets DR6 and resumes (`arch::trap`), as Xen's `do_debug` does.
//!
//! DEBUGCTL (MSR 0x1d9) reads as 0 and takes 0 only (#GP for anything else): no branch
//! tracing or last-branch records for PV guests.

use hypervisor::debugreg::{DrError, Policy, Written, DR6_DEFAULT};

use crate::arch::debugreg as hw;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::vcpu::GuestContext;
use crate::domain::Vcpu;
use crate::pv::fpu::CR4_DE;
use crate::pv::traps;

/// IA32_DEBUGCTL.
pub const MSR_DEBUGCTL: u32 = 0x1d9;
const VECTOR_DEBUG: u8 = 1;

/// CPUID.(EAX=7, ECX=0) bits that change reserved debug-register bits.
const LEAF7_EBX_RTM: u32 = 1 << 11;
const LEAF7_ECX_BLD: u32 = 1 << 24;

/// What the guests' CPUID says of RTM and bus-lock detection.
pub fn policy() -> Policy {
    let (_, ebx, ecx, _) = crate::pv::emulate::cpuid_for_policy(7, 0);
    Policy { rtm: ebx & LEAF7_EBX_RTM != 0, bld: ecx & LEAF7_ECX_BLD != 0 }
}

/// Whether a breakpoint at `address` (naturally aligned, at most 8 bytes) covers guest
/// address space only.
pub fn address_ok(address: u64) -> bool {
    uaccess::check_range(address & !7, 8).is_ok()
}

/// `set_debugreg`, and an emulated `mov` to a debug register, on the running vCPU.
pub fn set(vcpu: &Vcpu, reg: u32, value: u64) -> Result<(), DrError> {
    let mut ctx = vcpu.ctx.lock();
    let de = ctx.cr4_guest & CR4_DE != 0;
    let written = ctx.debug.set(reg, value, de, policy(), address_ok)?;
    match written {
        Written::Address(index) if ctx.debug.active() => hw::write_address(index, value),
        Written::Address(_) | Written::Dr6 => {}
        Written::Dr7 { activated } => {
            if activated {
                for (index, &address) in ctx.debug.address.iter().enumerate() {
                    hw::write_address(index, address);
                }
            }
            hw::write_dr7(if ctx.debug.active() { ctx.debug.dr7 } else { 0 });
        }
    }
    Ok(())
}

/// `get_debugreg`, and an emulated `mov` from a debug register, on the running vCPU.
pub fn get(vcpu: &Vcpu, reg: u32) -> Result<u64, DrError> {
    let ctx = vcpu.ctx.lock();
    ctx.debug.get(reg, ctx.cr4_guest & CR4_DE != 0)
}

/// Takes the leaving vCPU's breakpoints out of this CPU.
pub fn switch_out(ctx: &GuestContext) {
    if ctx.debug.active() {
        hw::write_dr7(0);
    }
}

/// Loads the arriving vCPU's breakpoints, if it has any enabled.
pub fn switch_in(ctx: &GuestContext) {
    if ctx.debug.active() {
        for (index, &address) in ctx.debug.address.iter().enumerate() {
            hw::write_address(index, address);
        }
        hw::write_dr7(ctx.debug.dr7);
    }
}

/// A #DB from the guest (a breakpoint of its own, a single step, `int1`): what the
/// hardware's DR6 reports joins the guest's DR6, the hardware's is reset, and the #DB is
/// bounced to the guest.
pub fn debug_exception(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let reported = hw::read_dr6();
    hw::write_dr6(DR6_DEFAULT);
    vcpu.ctx.lock().debug.merge_dr6(policy(), reported ^ DR6_DEFAULT);
    traps::bounce(vcpu, frame, VECTOR_DEBUG, None);
}

/// `rdmsr` of DEBUGCTL.
pub fn read_debugctl() -> u64 {
    0
}

/// `wrmsr` of DEBUGCTL: only 0 (false: #GP).
pub fn write_debugctl(value: u64) -> bool {
    value == 0
}

/// The end-of-run count of #DB exceptions taken (and ignored) in hypervisor context.
pub fn report() {
    let count = crate::arch::trap::HYPERVISOR_DEBUG_EXCEPTIONS.load(core::sync::atomic::Ordering::Relaxed);
    log::info!("summary: debug.hypervisor_exceptions={count}");
}
