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
//! it ([`debug_exception`]) before the #DB is bounced. A data breakpoint that a `mov ss`
//! hit is held back over the next instruction, as the processor does, even where the
//! processor (QEMU's TCG) reports it at once ([`debug_exception`], [`drop_deferred`]).
//!
//! A #DB in hypervisor context (a guest's data breakpoint on memory the hypervisor reads
//! or writes for it, or one deferred by `mov ss`/`pop ss` to the first instruction of an
//! entry path, XSA-260) never reaches this module: the #DB gate has a stack of its own and
//! the entry path resets DR6 and resumes (`arch::trap`), as Xen's `do_debug` does.
//!
//! DEBUGCTL (MSR 0x1d9) reads as 0 and takes 0 only (#GP for anything else): no branch
//! tracing or last-branch records for PV guests.

use hypervisor::debugreg::{Deferred, DrError, Policy, Written, DR6_BP_MASK, DR6_BS, DR6_DEFAULT};
use hypervisor::insn;

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
const RFLAGS_TF: u64 = 1 << 8;

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
///
/// A data breakpoint hit by a `mov` to SS is held back until the next instruction
/// completes, as the processor does (`hypervisor::debugreg::Deferred`): when the
/// processor reports it at once (QEMU's TCG), rip is just past the `mov ss`, and the
/// guest is single-stepped over the next instruction first; the #DB that single step
/// raises delivers the breakpoint's bits (with BS only if the guest had TF set itself).
/// If that instruction enters the hypervisor instead, [`drop_deferred`] drops them.
pub fn debug_exception(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let reported = hw::read_dr6();
    hw::write_dr6(DR6_DEFAULT);
    let mut hit = reported ^ DR6_DEFAULT;
    let deferred = vcpu.ctx.lock().debug.deferred.take();
    if let Some(deferred) = deferred {
        if deferred.added_tf {
            hit &= !DR6_BS;
            frame.rflags &= !RFLAGS_TF;
        }
        hit |= deferred.dr6;
    } else if hit & DR6_BP_MASK != 0 && hit & DR6_BS == 0 && after_mov_ss(vcpu, frame, hit) {
        let added_tf = frame.rflags & RFLAGS_TF == 0;
        vcpu.ctx.lock().debug.deferred = Some(Deferred { dr6: hit, added_tf });
        frame.rflags |= RFLAGS_TF;
        return;
    }
    vcpu.ctx.lock().debug.merge_dr6(policy(), hit);
    traps::bounce(vcpu, frame, VECTOR_DEBUG, None);
}

/// Whether the instruction that ended at rip is a `mov` to SS from memory that the data
/// breakpoints in `hit` watch (its operand, computed from the registers, which `mov ss`
/// leaves alone, meets one of them; every way the bytes can be read is tried): the bytes before rip decoded back
/// (`hypervisor::insn::mov_ss_before`), in 64-bit or 32-bit guest code.
fn after_mov_ss(vcpu: &Vcpu, frame: &TrapFrame, hit: u64) -> bool {
    let long = match traps::code_mode(vcpu, frame.cs as u16) {
        Some((insn::CodeMode::Long, 0)) => true,
        Some((insn::CodeMode::Compat32, 0)) => false,
        _ => return false,
    };
    let mut bytes = [0u8; insn::MAX_LENGTH];
    let start = frame.rip.wrapping_sub(insn::MAX_LENGTH as u64);
    // Only from rip's own page when the one before cannot be read: the instruction
    // cannot have begun on a page the processor could not fetch from.
    let page = frame.rip & !0xfff;
    let from = if traps::read_code(start, &mut bytes) == bytes.len() {
        0
    } else {
        let from = page.wrapping_sub(start);
        if from == 0 || from >= bytes.len() as u64 {
            return false;
        }
        let from = from as usize;
        if traps::read_code(page, &mut bytes[from..]) != bytes.len() - from {
            return false;
        }
        from
    };
    let f = frame;
    let registers = [f.rax, f.rcx, f.rdx, f.rbx, f.rsp, f.rbp, f.rsi, f.rdi, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
    let debug = vcpu.ctx.lock().debug;
    let covered = insn::mov_ss_before(&bytes[from..], long).any(|operand| {
        let mut address = if operand.rip_relative {
            frame.rip.wrapping_add(operand.disp as u64)
        } else {
            operand.effective_address(|n| registers[usize::from(n & 15)])
        };
        if !long {
            address &= 0xffff_ffff;
        }
        debug.data_breakpoint_covers(hit, address, 2)
    });
    covered
}

/// Drops a held-back #DB ([`debug_exception`]) when the vCPU enters the hypervisor by
/// anything but the single step it was waiting for (`syscall`, an exception): the
/// processor would have raised it in the hypervisor's entry path, where Xen ignores it.
/// The TF the hypervisor set comes off the frame (and off r11, where `syscall` saved
/// RFLAGS). Interrupts leave it held: the guest has not run its instruction yet.
pub fn drop_deferred(vcpu: &Vcpu, frame: &mut TrapFrame, syscall: bool) {
    let deferred = vcpu.ctx.lock().debug.deferred.take();
    if let Some(Deferred { added_tf: true, .. }) = deferred {
        frame.rflags &= !RFLAGS_TF;
        if syscall {
            frame.r11 &= !RFLAGS_TF;
        }
    }
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
