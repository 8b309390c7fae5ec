//! A PV vCPU's FPU as its kernel sees it, as Xen keeps it: `fpu_taskswitch` and the
//! virtual CR0.TS, the #NM that follows, `clts` and `mov` to and from CR0 and CR4, `xsetbv`,
//! and the state switch the scheduler runs ([`switch_out`], [`switch_in`]).
//!
//! State is switched eagerly (every switch saves and loads it; `arch::fpu`), so the
//! hypervisor never needs #NM itself and never shows the guest one of its own making
//! (linux-pv-domu.md item 21). CR0.TS is the guest's alone: `fpu_taskswitch(1)` sets the
//! virtual TS and the hardware's, so that the guest's next FPU instruction raises #NM,
//! which is bounced to the guest's handler with the virtual TS cleared, as Xen's
//! `do_device_not_available` does (the guest then does its lazy switch); `fpu_taskswitch(0)`
//! and an emulated `clts` clear both. A `mov` to CR0 may change TS only (anything else is
//! #GP, as in Xen); a read shows the hardware's CR0 with the virtual TS.
//!
//! CR4 as the guest reads it is the hardware's PAE, MCE, OSFXSR and OSXMMEXCPT plus the
//! bits it controls: DE (I/O breakpoints, DR4/DR5; see `pv::debugreg`) and OSXSAVE where
//! XSAVE is used (it only changes what CPUID reports, as in Xen; the hardware's stays set).
//! `xsetbv` from the guest kernel (which faults at CPL 3) is emulated as Xen's
//! `handle_xsetbv`: #UD unless the virtual CR4.OSXSAVE is set, #GP(0) for an XCR other than
//! XCR0 or a value `valid_xcr0` refuses, else the guest's XCR0 becomes the value and is
//! loaded. Runs on the CPU running the vCPU, inside its trap.

use abi::arch_x86::VcpuGuestContext;
use hypervisor::fpu::valid_xcr0;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};

use crate::arch::fpu as hw;
use crate::arch::trap::TrapFrame;
use crate::domain::vcpu::GuestContext;
use crate::domain::Vcpu;
use crate::pv::traps;

/// CR0.TS.
const CR0_TS: u64 = 1 << 3;
/// CR4 bits the guest sees from the hardware (Xen's `PV_CR4_GUEST_VISIBLE_MASK`).
const CR4_VISIBLE: u64 = Cr4Flags::PHYSICAL_ADDRESS_EXTENSION.bits()
    | Cr4Flags::MACHINE_CHECK_EXCEPTION.bits()
    | Cr4Flags::OSFXSR.bits()
    | Cr4Flags::OSXMMEXCPT_ENABLE.bits();
pub const CR4_DE: u64 = Cr4Flags::DEBUGGING_EXTENSIONS.bits();
pub const CR4_OSXSAVE: u64 = Cr4Flags::OSXSAVE.bits();

const VECTOR_INVALID_OPCODE: u8 = 6;
const VECTOR_DEVICE_NOT_AVAILABLE: u8 = 7;
const VECTOR_GENERAL_PROTECTION: u8 = 13;

/// The CR4 bits a guest may set on this machine.
fn cr4_controllable() -> u64 {
    CR4_DE | if hw::setup().xsave { CR4_OSXSAVE } else { 0 }
}

/// `fpu_taskswitch`: sets (`set`) or clears the virtual CR0.TS and the hardware's.
pub fn taskswitch(vcpu: &Vcpu, set: bool) {
    vcpu.ctx.lock().cr0_ts = set;
    if set { hw::stts() } else { hw::clts() }
}

/// A #NM from the guest: with the virtual TS set, it is the guest's (its lazy FPU switch):
/// the virtual TS is cleared and the #NM bounced. Otherwise the hardware's TS was stale:
/// cleared, and the instruction runs again.
pub fn device_not_available(vcpu: &Vcpu, frame: &mut TrapFrame) {
    hw::clts();
    let was_set = core::mem::replace(&mut vcpu.ctx.lock().cr0_ts, false);
    if was_set {
        traps::bounce(vcpu, frame, VECTOR_DEVICE_NOT_AVAILABLE, None);
    }
}

/// CR0 as the guest reads it.
pub fn read_cr0(vcpu: &Vcpu) -> u64 {
    let ts = if vcpu.ctx.lock().cr0_ts { CR0_TS } else { 0 };
    (Cr0::read_raw() & !CR0_TS) | ts
}

/// A `mov` to CR0: only TS may change (false: not emulated, the #GP stands).
pub fn write_cr0(vcpu: &Vcpu, value: u64) -> bool {
    if (value ^ Cr0::read_raw()) & !CR0_TS != 0 {
        return false;
    }
    taskswitch(vcpu, value & CR0_TS != 0);
    true
}

/// CR4 as the guest reads it.
pub fn read_cr4(vcpu: &Vcpu) -> u64 {
    (Cr4::read_raw() & CR4_VISIBLE) | vcpu.ctx.lock().cr4_guest
}

/// A `mov` to CR4: the bits the guest controls are taken, the rest ignored (Xen's
/// `pv_fixup_guest_cr4`).
pub fn write_cr4(vcpu: &Vcpu, value: u64) {
    vcpu.ctx.lock().cr4_guest = value & cr4_controllable();
}

/// An exception an emulated instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raise {
    /// #UD.
    InvalidOpcode,
    /// #GP(0).
    GeneralProtection,
}

impl Raise {
    /// Delivers it to the guest at the instruction.
    pub fn deliver(self, vcpu: &Vcpu, frame: &mut TrapFrame) {
        match self {
            Raise::InvalidOpcode => traps::bounce(vcpu, frame, VECTOR_INVALID_OPCODE, None),
            Raise::GeneralProtection => traps::bounce(vcpu, frame, VECTOR_GENERAL_PROTECTION, Some(0)),
        }
    }
}

/// `xsetbv` (0f 01 d1) from the guest kernel, with the registers in `frame`.
pub fn xsetbv(vcpu: &Vcpu, frame: &TrapFrame) -> Result<(), Raise> {
    let setup = hw::setup();
    let osxsave = vcpu.ctx.lock().cr4_guest & CR4_OSXSAVE != 0;
    if !setup.xsave || !osxsave {
        return Err(Raise::InvalidOpcode);
    }
    let value = (frame.rax & 0xffff_ffff) | (frame.rdx << 32);
    if frame.rcx as u32 != 0 || !valid_xcr0(value, setup.xcr0_max) {
        return Err(Raise::GeneralProtection);
    }
    vcpu.ctx.lock().xcr0 = value;
    hw::load_xcr0(value);
    Ok(())
}

/// Whether CPUID should report OSXSAVE to this vCPU (Xen's rule for PV guests): its virtual
/// CR4.OSXSAVE, or, for its kernel's forced-emulation CPUID, the hardware's (Linux relies
/// on that leak: see Xen's `guest_cpuid`).
pub fn cpuid_osxsave(vcpu: &Vcpu) -> bool {
    let ctx = vcpu.ctx.lock();
    ctx.cr4_guest & CR4_OSXSAVE != 0 || (ctx.in_kernel && hw::setup().xsave)
}

/// A new vCPU's FPU and control state from its `vcpu_guest_context`: the FXSAVE image
/// when `VGCF_I387_VALID` says so, CR0.TS and the CR4 bits the guest controls, and the
/// debug registers, each as the corresponding call would take it (a value refused there
/// is dropped here, as Xen's `arch_set_info_guest` does).
pub fn init_from_context(ctx: &mut GuestContext, context: &VcpuGuestContext) {
    if context.flags & abi::arch_x86::VGCF_I387_VALID != 0 {
        ctx.fpu.load_fx_image(&context.fpu_ctxt, hw::mxcsr_mask());
    }
    ctx.cr0_ts = context.ctrlreg[0] & CR0_TS != 0;
    ctx.cr4_guest = context.ctrlreg[4] & cr4_controllable();
    let de = ctx.cr4_guest & CR4_DE != 0;
    for (reg, &value) in context.debugreg.iter().enumerate() {
        let _ = ctx.debug.set(reg as u32, value, de, crate::pv::debugreg::policy(), crate::pv::debugreg::address_ok);
    }
}

/// Saves the leaving vCPU's FPU state on this CPU (its debug registers too); the
/// registers stay as they are (the scheduler may resume it without a load).
pub fn switch_out(ctx: &mut GuestContext) {
    if ctx.cr0_ts {
        hw::clts();
    }
    hw::save(&mut ctx.fpu);
    crate::pv::debugreg::switch_out(ctx);
}

/// Loads the arriving vCPU's FPU state on this CPU, unless `resident` (its registers are
/// still here: no other vCPU ran since it left), then its XCR0, TS and debug registers.
pub fn switch_in(ctx: &GuestContext, resident: bool) {
    if resident {
        hw::load_xcr0(ctx.xcr0);
    } else {
        hw::restore(&ctx.fpu, ctx.xcr0);
    }
    if ctx.cr0_ts {
        hw::stts();
    }
    crate::pv::debugreg::switch_in(ctx);
}
