//! The last attack: a fault inside the guest's own fault handler. The page-fault vector is
//! pointed at a handler whose first instruction reads an unmapped address (0x1000: L4 slot
//! 0, which the builder leaves empty), then the guest reads its unmapped hole.
//!
//! The hypervisor cannot deliver the second fault anywhere sensible and must kill the
//! domain: the QEMU guest test expects this domain to end "killed". Called by `main` after
//! the summary line. This function must never return: should the guest survive, it
//! reports the bug and powers off.

use core::arch::{asm, global_asm};

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::println;
use guest_rt::traps::{self, Vector};

/// An address in L4 slot 0, which the builder leaves empty.
const UNMAPPED_LOW: u64 = 0x1000;

global_asm!(
    ".pushsection .text.hostile_faulting_handler,\"ax\",@progbits",
    ".globl hostile_faulting_handler",
    "hostile_faulting_handler:",
    "    mov al, byte ptr [{unmapped}]",
    "    ud2",
    ".popsection",
    unmapped = const UNMAPPED_LOW,
);

extern "C" {
    /// The first byte of the page-fault handler above, which faults at once.
    static hostile_faulting_handler: u8;
}

/// Faults with a page-fault handler that faults; the hypervisor must kill the domain.
pub fn fault_in_fault_handler(hole: u64) -> ! {
    println!("hostile: last attack: a page fault whose handler faults at once (must be killed)");
    let handler = &raw const hostile_faulting_handler as u64;
    // SAFETY: the handler does not handle the bounce frame: it faults at once, which must
    // end the domain. Nothing runs after the fault below if the hypervisor does its job.
    if let Err(error) = unsafe { traps::install_entry(Vector::PAGE_FAULT, handler) } {
        println!("hostile: FAILED installing the faulting handler: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    // SAFETY: the hole is unmapped, so the load faults into the handler above; it reads
    // only, and its value is discarded.
    unsafe { asm!("mov {byte}, byte ptr [{hole}]", hole = in(reg) hole, byte = out(reg_byte) _) };
    println!("hostile: survived a fault in the fault handler (BUG)");
    shutdown(ShutdownReason::Poweroff)
}
