//! Memory accesses that may fault, as Linux's `xen_safe_read_ulong`: one word read or
//! written by a tiny assembly routine whose faulting instruction the page-fault (and
//! general-protection) handler recognises by its address and skips, so the access returns
//! the fault instead of crashing the guest. For guests that read what may not be mapped
//! (the machine-to-physical table past its end) or check that a write is refused.
//!
//! A guest calls [`install`] once (it takes vectors 13 and 14; any other fault there
//! reports itself and crashes the domain as the default handler does), then [`read`] and
//! [`write`]. One vCPU at a time: the fault is reported through one static. This module
//! must never touch memory other than the one word it is given.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::hypercall::ShutdownReason;

use crate::hypercall::shutdown;
use crate::traps::{self, TrapError, TrapFrame, Vector};

global_asm!(
    ".pushsection .text.guest_rt_probe,\"ax\",@progbits",
    // u64 guest_rt_probe_read(u64 address, u64 *out): 1 read (into *out), 0 faulted.
    ".globl guest_rt_probe_read",
    "guest_rt_probe_read:",
    "    mov eax, 1",
    ".globl guest_rt_probe_read_insn",
    "guest_rt_probe_read_insn:",
    "    mov rdx, qword ptr [rdi]",
    "    mov qword ptr [rsi], rdx",
    ".globl guest_rt_probe_read_resume",
    "guest_rt_probe_read_resume:",
    "    ret",
    // u64 guest_rt_probe_write(u64 address, u64 value): 1 written, 0 faulted.
    ".globl guest_rt_probe_write",
    "guest_rt_probe_write:",
    "    mov eax, 1",
    ".globl guest_rt_probe_write_insn",
    "guest_rt_probe_write_insn:",
    "    mov qword ptr [rdi], rsi",
    ".globl guest_rt_probe_write_resume",
    "guest_rt_probe_write_resume:",
    "    ret",
    ".popsection",
);

unsafe extern "C" {
    fn guest_rt_probe_read(address: u64, out: *mut u64) -> u64;
    fn guest_rt_probe_write(address: u64, value: u64) -> u64;
    static guest_rt_probe_read_insn: u8;
    static guest_rt_probe_read_resume: u8;
    static guest_rt_probe_write_insn: u8;
    static guest_rt_probe_write_resume: u8;
}

/// An access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// 14 (page fault) or 13 (general protection: a non-canonical address).
    pub vector: u8,
    /// The exception's error code (for a page fault: P, W/R, U/S... as the guest sees them).
    pub error_code: u64,
    /// The faulting address (`cr2`) of a page fault, else 0.
    pub address: u64,
}

/// The last fault, written by the handler before it resumes the probe.
static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
static LAST_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// Routes page faults and general-protection faults to this module's handler.
pub fn install() -> Result<(), TrapError> {
    traps::set_handler(Vector::PAGE_FAULT, on_fault)?;
    traps::set_handler(Vector::GENERAL_PROTECTION, on_fault)
}

/// Reads the word at `address`, or the fault that stopped the read.
pub fn read(address: u64) -> Result<u64, Fault> {
    let mut value = 0;
    // SAFETY: the routine reads one word at `address` or faults there, and the fault is
    // turned into a return of 0 ([`install`] routed it here); `value` is a local the
    // routine writes only after the read.
    let done = unsafe { guest_rt_probe_read(address, &raw mut value) != 0 };
    if done {
        Ok(value)
    } else {
        Err(last_fault())
    }
}

/// Writes `value` at `address`, or returns the fault that stopped the write (nothing
/// written).
///
/// # Safety
/// A write that does not fault changes the word: the caller vouches that nothing relies
/// on it.
pub unsafe fn write(address: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: as `read`; the caller vouches for the word.
    let done = unsafe { guest_rt_probe_write(address, value) != 0 };
    if done {
        Ok(())
    } else {
        Err(last_fault())
    }
}

fn last_fault() -> Fault {
    Fault {
        vector: LAST_VECTOR.load(Ordering::Acquire) as u8,
        error_code: LAST_ERROR.load(Ordering::Acquire),
        address: LAST_ADDRESS.load(Ordering::Acquire),
    }
}

/// A fault of one of the probe instructions resumes after it with rax = 0; any other
/// crashes the domain, as the runtime's default handler would.
fn on_fault(frame: &mut TrapFrame) {
    let resume = if frame.rip == &raw const guest_rt_probe_read_insn as u64 {
        &raw const guest_rt_probe_read_resume as u64
    } else if frame.rip == &raw const guest_rt_probe_write_insn as u64 {
        &raw const guest_rt_probe_write_resume as u64
    } else {
        crate::println!(
            "guest: unexpected exception {} at rip {:#x} (error code {:#x}, cr2 {:#x})",
            frame.vector,
            frame.rip,
            frame.error_code,
            frame.cr2
        );
        shutdown(ShutdownReason::Crash);
    };
    let page_fault = frame.vector == u64::from(Vector::PAGE_FAULT.0);
    LAST_VECTOR.store(frame.vector, Ordering::Release);
    LAST_ERROR.store(frame.error_code, Ordering::Release);
    LAST_ADDRESS.store(if page_fault { frame.cr2 } else { 0 }, Ordering::Release);
    frame.rip = resume;
    frame.rax = 0;
}
