//! The debug registers DR0-DR3, DR6 and DR7 of this CPU: typed accessors, nothing else.
//!
//! Only `pv::debugreg` writes them, with values `hypervisor::debugreg` accepted (guest
//! addresses in DR0-DR3, DR7 without GD, reserved bits as the processor holds them), and
//! the #DB path reads and resets DR6. The hypervisor sets no breakpoint of its own.

use core::arch::asm;

/// Writes breakpoint address register `index` (0-3).
pub fn write_address(index: usize, value: u64) {
    // SAFETY: a breakpoint address alone changes nothing until DR7 enables it, and DR7 only
    // ever holds a guest's validated value, whose breakpoints can only match guest
    // addresses. DR7.GD is never set, so the `mov` cannot fault.
    unsafe {
        match index {
            0 => asm!("mov dr0, {}", in(reg) value, options(nomem, nostack, preserves_flags)),
            1 => asm!("mov dr1, {}", in(reg) value, options(nomem, nostack, preserves_flags)),
            2 => asm!("mov dr2, {}", in(reg) value, options(nomem, nostack, preserves_flags)),
            _ => asm!("mov dr3, {}", in(reg) value, options(nomem, nostack, preserves_flags)),
        }
    }
}

/// Reads DR6.
pub fn read_dr6() -> u64 {
    let value: u64;
    // SAFETY: reading DR6 has no effect; DR7.GD is never set, so it cannot fault.
    unsafe { asm!("mov {}, dr6", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes DR6 (the 32 bits the processor keeps).
pub fn write_dr6(value: u64) {
    // SAFETY: DR6 only reports; a value with the upper half clear cannot fault.
    unsafe { asm!("mov dr6, {}", in(reg) value & 0xffff_ffff, options(nomem, nostack, preserves_flags)) };
}

/// Writes DR7 (a value `hypervisor::debugreg` accepted, or 0).
pub fn write_dr7(value: u64) {
    // SAFETY: the value has no upper bits and no GD, so the `mov` cannot fault; the
    // breakpoints it enables match guest addresses only (see the module documentation).
    unsafe { asm!("mov dr7, {}", in(reg) value & 0xffff_ffff, options(nomem, nostack, preserves_flags)) };
}
