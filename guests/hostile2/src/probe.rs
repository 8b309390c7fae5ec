//! Accesses that may fault: one word written or read through a virtual address that a race
//! may have unmapped, each a tiny assembly routine whose faulting instruction the page-fault
//! handler ([`page_fault`]) recognises by its address and skips, returning "faulted" instead.
//!
//! Both vCPUs call [`try_write`] and [`try_read`]; `main` installs [`page_fault`] before the
//! races. Any other page fault is a bug of this guest and crashes the domain. This module
//! must never touch memory other than the one word it is given.

use core::arch::global_asm;

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::hypercall::shutdown;
use guest_rt::println;
use guest_rt::traps::TrapFrame;

global_asm!(
    ".pushsection .text.hostile2_probe,\"ax\",@progbits",
    // u64 hostile2_try_write(u64 address, u64 value): 1 written, 0 faulted.
    ".globl hostile2_try_write",
    "hostile2_try_write:",
    "    mov eax, 1",
    ".globl hostile2_write_insn",
    "hostile2_write_insn:",
    "    mov qword ptr [rdi], rsi",
    ".globl hostile2_write_resume",
    "hostile2_write_resume:",
    "    ret",
    // u64 hostile2_try_read(u64 address, u64 *out): 1 read (into *out), 0 faulted.
    ".globl hostile2_try_read",
    "hostile2_try_read:",
    "    mov eax, 1",
    ".globl hostile2_read_insn",
    "hostile2_read_insn:",
    "    mov rdx, qword ptr [rdi]",
    "    mov qword ptr [rsi], rdx",
    ".globl hostile2_read_resume",
    "hostile2_read_resume:",
    "    ret",
    ".popsection",
);

extern "C" {
    fn hostile2_try_write(address: u64, value: u64) -> u64;
    fn hostile2_try_read(address: u64, out: *mut u64) -> u64;
    static hostile2_write_insn: u8;
    static hostile2_write_resume: u8;
    static hostile2_read_insn: u8;
    static hostile2_read_resume: u8;
}

/// Writes `value` at `address`; false if the write faulted (nothing written).
pub fn try_write(address: u64, value: u64) -> bool {
    // SAFETY: the routine writes one word at `address` or faults there, and the fault is
    // turned into a return of 0; the races only pass addresses of their own probe pages.
    unsafe { hostile2_try_write(address, value) != 0 }
}

/// Reads the word at `address`; `None` if the read faulted.
pub fn try_read(address: u64) -> Option<u64> {
    let mut value = 0;
    // SAFETY: as `try_write`; `value` is a local the routine writes only after the read.
    let read = unsafe { hostile2_try_read(address, &raw mut value) != 0 };
    read.then_some(value)
}

/// The page-fault handler: a fault of one of the probe instructions resumes after it with
/// rax = 0; any other fault crashes the domain.
pub fn page_fault(frame: &mut TrapFrame) {
    let resume = if frame.rip == &raw const hostile2_write_insn as u64 {
        &raw const hostile2_write_resume as u64
    } else if frame.rip == &raw const hostile2_read_insn as u64 {
        &raw const hostile2_read_resume as u64
    } else {
        println!("hostile2: FAILED unexpected page fault at rip {:#x} (error code {:#x})", frame.rip, frame.error_code);
        shutdown(ShutdownReason::Crash);
    };
    frame.rip = resume;
    frame.rax = 0;
}
