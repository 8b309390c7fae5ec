//! The exception handlers this guest installs and the instructions that raise them: a
//! page-fault handler that serves one announced fault by mapping a page where it hit,
//! (or records one announced fault and resumes after the faulting store),
//! and breakpoint and divide-error handlers that record where they were entered.
//!
//! The handlers run through guest-rt's trap stubs with the interrupted frame. `main` arms
//! the page-fault handler with [`expect_page_fault`] before each deliberate fault and reads
//! back what the handler saw; a fault nobody announced is reported and crashes the domain.
//! The faulting accesses are single instructions in `asm!`, so that the faulting address
//! and the retried instruction are exactly the ones the test names. Handlers must never
//! fix up anything but the one announced fault.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_rt::abi::hypercall::ShutdownReason;
use guest_rt::abi::ids::PAGE_SIZE;
use guest_rt::abi::mmu::{UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, shutdown};
use guest_rt::println;
use guest_rt::traps::{self, TrapError, TrapFrame, Vector};

/// Page-fault error code bit: the page was present (a protection fault).
pub const PF_PRESENT: u64 = 1 << 0;
/// Page-fault error code bit: the access was a write.
pub const PF_WRITE: u64 = 1 << 1;
/// Page-fault error code bit: the access came from user mode (for a PV guest: guest user
/// mode, never its kernel, although both run at CPL 3).
pub const PF_USER: u64 = 1 << 2;

/// Whether a page fault is announced.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The announced fault is to be skipped (resumed at the address in r8), not served.
static SKIP: AtomicBool = AtomicBool::new(false);
/// The page of the announced fault.
static EXPECTED_PAGE: AtomicU64 = AtomicU64::new(0);
/// The entry the handler maps at the announced page.
static FIX_PTE: AtomicU64 = AtomicU64::new(0);
/// The fault address (cr2) and error code of the last fault served.
static SERVED_ADDRESS: AtomicU64 = AtomicU64::new(0);
static SERVED_ERROR_CODE: AtomicU64 = AtomicU64::new(0);
/// Whether a fault was served since the last `expect_page_fault`.
static SERVED: AtomicBool = AtomicBool::new(false);
/// Where the breakpoint and divide-error handlers were last entered (frame rip).
static BREAKPOINT_RIP: AtomicU64 = AtomicU64::new(0);
static DIVIDE_ERROR_RIP: AtomicU64 = AtomicU64::new(0);

/// A page fault the handler served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// cr2, as the hypervisor reported it in `vcpu_info.arch.cr2`.
    pub address: u64,
    pub error_code: u64,
}

/// Routes page faults, breakpoints and divide errors to this module's handlers.
pub fn install() -> Result<(), TrapError> {
    traps::set_handler(Vector::PAGE_FAULT, on_page_fault)?;
    traps::set_handler(Vector::BREAKPOINT, on_breakpoint)?;
    traps::set_handler(Vector::DIVIDE_ERROR, on_divide_error)
}

/// Announces one page fault in the page holding `address`: the handler will map `pte`
/// there and return, so that the access is retried.
pub fn expect_page_fault(address: u64, pte: u64) {
    SKIP.store(false, Ordering::Relaxed);
    SERVED.store(false, Ordering::Relaxed);
    EXPECTED_PAGE.store(address & !(PAGE_SIZE - 1), Ordering::Relaxed);
    FIX_PTE.store(pte, Ordering::Relaxed);
    ARMED.store(true, Ordering::Release);
}

/// The fault served since the last [`expect_page_fault`], if there was one.
pub fn served_page_fault() -> Option<PageFault> {
    SERVED.load(Ordering::Acquire).then(|| PageFault {
        address: SERVED_ADDRESS.load(Ordering::Relaxed),
        error_code: SERVED_ERROR_CODE.load(Ordering::Relaxed),
    })
}

fn on_page_fault(frame: &mut TrapFrame) {
    let page = frame.cr2 & !(PAGE_SIZE - 1);
    let expected = EXPECTED_PAGE.load(Ordering::Relaxed);
    if !ARMED.swap(false, Ordering::Acquire) || page != expected {
        println!(
            "pagetables: FAILED unexpected page fault at {:#x} (rip {:#x}, error code {:#x}; \
             announced page {expected:#x})",
            frame.cr2, frame.rip, frame.error_code
        );
        shutdown(ShutdownReason::Crash);
    }
    SERVED_ADDRESS.store(frame.cr2, Ordering::Relaxed);
    SERVED_ERROR_CODE.store(frame.error_code, Ordering::Relaxed);
    if SKIP.load(Ordering::Relaxed) {
        frame.rip = frame.r8;
        SERVED.store(true, Ordering::Release);
        return;
    }
    let pte = FIX_PTE.load(Ordering::Relaxed);
    // SAFETY: the page is the one `main` left unmapped and announced; nothing uses it.
    if let Err(error) = unsafe { hypercall::update_va_mapping(page, pte, UVMF_INVLPG | UVMF_LOCAL) }
    {
        println!("pagetables: FAILED mapping {page:#x} in the page-fault handler: {error:?}");
        shutdown(ShutdownReason::Crash);
    }
    SERVED.store(true, Ordering::Release);
}

fn on_breakpoint(frame: &mut TrapFrame) {
    BREAKPOINT_RIP.store(frame.rip, Ordering::Release);
}

/// Records where the divide error hit and resumes at the address [`divide_by_zero`]
/// passes in r8.
fn on_divide_error(frame: &mut TrapFrame) {
    DIVIDE_ERROR_RIP.store(frame.rip, Ordering::Release);
    frame.rip = frame.r8;
}

/// Stores `value` at `address` with one `mov`.
///
/// # Safety
/// `address` must be 8-byte aligned in a page that is mapped writable, or unmapped and
/// announced with [`expect_page_fault`]; nothing else may use the word as memory.
pub unsafe fn store(address: u64, value: u64) {
    // SAFETY: the caller vouches for the address; a page fault on it is served by the
    // handler and the instruction retried.
    unsafe {
        asm!("mov qword ptr [{address}], {value}", address = in(reg) address, value = in(reg) value)
    };
}

/// Stores `value` at `address` with one `mov` that must fault: the fault is announced, and
/// the handler records it and resumes after the `mov` (at the address in r8).
///
/// # Safety
/// `address` must be 8-byte aligned in a page that is mapped read-only (or not at all);
/// were the store to land, nothing else may use the word as memory.
pub unsafe fn store_expecting_fault(address: u64, value: u64) {
    SERVED.store(false, Ordering::Relaxed);
    EXPECTED_PAGE.store(address & !(PAGE_SIZE - 1), Ordering::Relaxed);
    SKIP.store(true, Ordering::Relaxed);
    ARMED.store(true, Ordering::Release);
    // SAFETY: the caller vouches for the address; the fault is announced and skipped to
    // label 2, whose address is in r8.
    unsafe {
        asm!(
            "lea r8, [rip + 2f]",
            "mov qword ptr [{address}], {value}",
            "2:",
            address = in(reg) address,
            value = in(reg) value,
            out("r8") _,
        )
    };
    ARMED.store(false, Ordering::Relaxed);
}

/// Loads the word at `address` with one `mov`.
///
/// # Safety
/// As [`store`], for reading.
pub unsafe fn load(address: u64) -> u64 {
    let value;
    // SAFETY: as in `store`.
    unsafe {
        asm!("mov {value}, qword ptr [{address}]", address = in(reg) address, value = out(reg) value)
    };
    value
}

/// Runs `int3`; returns the address after it, where the breakpoint handler must have been
/// told the guest stopped, and the rip the handler recorded.
pub fn breakpoint() -> (u64, u64) {
    BREAKPOINT_RIP.store(0, Ordering::Relaxed);
    let after: u64;
    // SAFETY: int3 traps to the breakpoint handler (or the runtime's default one, which
    // ends the domain); execution continues after it, and nothing else changes.
    unsafe { asm!("lea {after}, [rip + 2f]", "int3", "2:", after = out(reg) after) };
    (after, BREAKPOINT_RIP.load(Ordering::Acquire))
}

/// Divides by zero; returns the address of the `div`, where the divide-error handler must
/// have been entered, and the rip the handler recorded. The handler resumes after the
/// `div` at the address this passes in r8.
pub fn divide_by_zero() -> (u64, u64) {
    DIVIDE_ERROR_RIP.store(0, Ordering::Relaxed);
    let div_at: u64;
    // SAFETY: the div faults (rcx = 0); the handler resumes at label 3, whose address is
    // in r8. The registers the div and the handler touch are declared clobbered.
    unsafe {
        asm!(
            "lea {div_at}, [rip + 2f]",
            "lea r8, [rip + 3f]",
            "xor ecx, ecx",
            "mov eax, 1",
            "xor edx, edx",
            "2:",
            "div rcx",
            "3:",
            div_at = out(reg) div_at,
            out("r8") _,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
        );
    }
    (div_at, DIVIDE_ERROR_RIP.load(Ordering::Acquire))
}

/// The vector `int 0x80` is given to, with DPL 3, as PV kernels give it their 32-bit
/// system calls; through the hypervisor's IDT (DPL 0 there) it raises #GP, and the
/// hypervisor must deliver vector 0x80 itself.
pub const SOFTWARE_VECTOR: u8 = 0x80;

/// Set by [`pagetables_int80_entry`]: the rip it was entered with.
static SOFTWARE_RIP: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".pushsection .text.pagetables_int80,\"ax\",@progbits",
    ".globl pagetables_int80_entry",
    "pagetables_int80_entry:",
    // Bounce frame: rcx, r11, rip, cs, rflags, rsp, ss (no error code).
    "    pop rcx",
    "    pop r11",
    "    push rax",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {seen}], rax",
    "    pop rax",
    "    push 0",
    "    jmp guest_rt_hypercall_page + {iret}",
    ".popsection",
    seen = sym SOFTWARE_RIP,
    iret = const guest_rt::abi::hypercall_page::stub_offset(guest_rt::abi::hypercall::Hypercall::Iret),
);

extern "C" {
    static pagetables_int80_entry: u8;
}

/// Points vector 0x80 (DPL 3) at [`pagetables_int80_entry`], runs `int 0x80`, and returns
/// the address after it and the rip the entry saw (0: it never ran).
pub fn software_interrupt() -> Result<(u64, u64), hypercall::HypercallError> {
    let table = [
        guest_rt::abi::arch_x86::TrapInfo {
            vector: SOFTWARE_VECTOR,
            flags: 3,
            cs: guest_rt::abi::arch_x86::FLAT_KERNEL_CS64,
            _pad: 0,
            address: &raw const pagetables_int80_entry as u64,
        },
        guest_rt::abi::arch_x86::TrapInfo::default(),
    ];
    // SAFETY: the entry handles the bounce frame of a software interrupt and returns
    // with the iret hypercall; the table is terminated.
    unsafe { hypercall::set_trap_table(&table)? };
    SOFTWARE_RIP.store(0, Ordering::Relaxed);
    let after: u64;
    // SAFETY: int 0x80 reaches the entry above (or, misdelivered, the runtime's default
    // handler, which ends the domain); execution continues after it.
    unsafe { asm!("lea {after}, [rip + 2f]", "int 0x80", "2:", after = out(reg) after) };
    Ok((after, SOFTWARE_RIP.load(Ordering::Acquire)))
}
