//! The x87/MMX/SSE registers: set up on every CPU for guests, saved and loaded per vCPU.
//!
//! [`init_this_cpu`] runs once on each CPU at boot: the FPU native (CR0.NE), no emulation
//! or lazy switching (CR0.EM and CR0.TS clear, CR0.MP set), and FXSAVE/FXRSTOR with SSE
//! and its exceptions enabled (CR4.OSFXSR, CR4.OSXMMEXCPT). CR4.OSXSAVE stays clear, so
//! that AVX and later state, which FXSAVE does not cover, stays unusable by guests (their
//! AVX instructions fault) until the scheduler saves it with XSAVE.
//!
//! The hypervisor is soft-float and never touches these registers, so they always hold the
//! state of the last vCPU that ran on the CPU: the scheduler saves it with [`save`] when
//! that vCPU leaves and loads the next one's with [`restore`].

use core::sync::atomic::{AtomicU32, Ordering};

use hypervisor::fpu::FxArea;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// The MXCSR bits this machine supports, as the boot CPU's FXSAVE reports them (0: the
/// default mask).
static MXCSR_MASK: AtomicU32 = AtomicU32::new(0);

/// Enables native x87 and SSE with FXSAVE on this CPU, with no lazy switching and no
/// XSAVE; the boot CPU also records the MXCSR mask.
pub fn init_this_cpu() {
    // SAFETY: the hypervisor never uses the FPU (soft-float), so changing how it traps
    // changes nothing for the hypervisor; guests get a native, eagerly switched FPU.
    unsafe {
        Cr0::update(|f| {
            f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            f.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
        });
        Cr4::update(|f| {
            f.remove(Cr4Flags::OSXSAVE);
            f.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
        });
    }
    let mut probe = FxArea([0; 512]);
    save(&mut probe);
    let mask = u32::from_le_bytes([probe.0[28], probe.0[29], probe.0[30], probe.0[31]]);
    let _ = MXCSR_MASK.compare_exchange(0, mask, Ordering::Relaxed, Ordering::Relaxed);
}

/// The MXCSR bits FXRSTOR accepts here (0 before boot recorded them: the default mask).
pub fn mxcsr_mask() -> u32 {
    MXCSR_MASK.load(Ordering::Relaxed)
}

/// Saves this CPU's x87/MMX/SSE registers into `area`.
pub fn save(area: &mut FxArea) {
    // SAFETY: FXSAVE64 writes 512 bytes to a 16-byte aligned area (`FxArea` is), and
    // CR4.OSFXSR makes it cover the SSE registers; it changes no register.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags)) };
}

/// Loads this CPU's x87/MMX/SSE registers from `area`, which must be an image FXSAVE made
/// or one made safe by [`FxArea::from_guest`] or [`FxArea::initial`] (FXRSTOR faults on
/// MXCSR bits the CPU does not support).
pub fn restore(area: &FxArea) {
    // SAFETY: FXRSTOR64 reads 512 bytes from a 16-byte aligned area; its MXCSR is one the
    // CPU accepts (see above), so it cannot fault. The hypervisor does not use the registers
    // it loads.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, preserves_flags, readonly)) };
}
