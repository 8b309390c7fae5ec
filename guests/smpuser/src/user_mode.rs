//! The user-mode check, on vCPU 0: a kernel-mode page fault first (its error code's U bit
//! must be clear), then a user L4 ([`crate::user_tables`]), a syscall callback and a
//! `stack_switch` stack, and an `iret` into a small user program that
//!
//! 1. executes `int3`: the breakpoint handler must see it from user mode (frame cs RPL 3)
//!    with rip just after it, and returns to user mode through the runtime's `iret`;
//! 2. loads from an unmapped address: the page-fault handler must see the address and an
//!    error code with the U bit set (user, read, not present: 0x4), and resumes user mode
//!    after the load;
//! 3. reads cr3 into rax (holding [`CR3_MARKER`]) and writes rax to cr3: privileged
//!    instructions from guest user mode must raise #GP in the guest kernel, never be
//!    emulated (issue 15, hole 8: the user process read its kernel's base pointer and
//!    replaced it). The #GP handler records each and skips the 3-byte instruction;
//! 4. executes `syscall` with rax = [`SYSCALL_MAGIC`]: the hypervisor bounces it to the
//!    syscall callback in kernel mode with the frame {rcx, r11, rip, cs, rflags, rsp, ss}
//!    on the `stack_switch` stack, and the callback records it and returns to the kernel.
//!
//! [`smpuser_enter_user`] saves the kernel's callee-saved registers and stack pointer and
//! enters user mode with the `iret` hypercall (cs 0xe033: RPL 3); the callback, once it has
//! recorded the frame, switches back to that stack and returns from `smpuser_enter_user`,
//! abandoning the user context. `main` calls [`check`]. The program touches no memory but
//! the unmapped address; this module must never leave the handlers routed here.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{FLAT_KERNEL_SS64, FLAT_USER_CS64, FLAT_USER_SS64};
use guest_rt::abi::callback::CALLBACKF_MASK_EVENTS;
use guest_rt::abi::hypercall::{CallbackType, Hypercall};
use guest_rt::abi::hypercall_page::stub_offset;
use guest_rt::layout::VIRT_BASE;
use guest_rt::traps::{self, TrapFrame, Vector};
use guest_rt::{println, shared_info, StartInfo};

use crate::failure::{expect, fail, Call, Check, Failure};
use guest_rt::frames::FreeFrames;
use crate::user_tables;

/// rax of the user program's `syscall`.
const SYSCALL_MAGIC: u64 = 0x5C5C_A11E_D000_0042;
/// rax before the user program's `mov rax, cr3`: still there after it when the read was
/// refused (an emulated read would leave the user L4's address).
const CR3_MARKER: u64 = 0x0C3C_3C3C_0000_0000;
/// `mov rax, cr3` and `mov cr3, rax` are three bytes each.
const MOV_CR_LEN: u64 = 3;
/// An address nothing maps (its L2 entry is empty, past any initial mapping this guest
/// gets): both page faults load from it.
const UNMAPPED: u64 = VIRT_BASE + 0x3000_0000;
/// rflags the user program starts with: interrupts (events) on, reserved bit 1.
const USER_RFLAGS: u64 = 0x202;
/// Page-fault error codes: not present, read, from guest kernel mode or guest user mode.
const PF_KERNEL_READ_NOT_PRESENT: u64 = 0x0;
const PF_USER_READ_NOT_PRESENT: u64 = 0x4;
/// The stack the hypervisor switches to on entry from user mode, and the user stack.
const TRAP_STACK_SIZE: usize = 16 * 1024;
const USER_STACK_SIZE: usize = 4 * 1024;
/// The privilege level bits of a selector.
const RPL_MASK: u64 = 3;

global_asm!(
    ".pushsection .bss.smpuser_user_mode,\"aw\",@nobits",
    ".balign 16",
    ".skip {trap_stack}",
    ".globl smpuser_trap_stack_top",
    "smpuser_trap_stack_top:",
    ".skip {user_stack}",
    ".globl smpuser_user_stack_top",
    "smpuser_user_stack_top:",
    "smpuser_resume_rsp:",
    ".skip 8",
    ".popsection",
    "",
    ".pushsection .text.smpuser_user_mode,\"ax\",@progbits",
    // extern "C" fn smpuser_enter_user(rip: u64, rsp: u64): returns when the syscall
    // callback resumes the kernel.
    ".globl smpuser_enter_user",
    "smpuser_enter_user:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rip + smpuser_resume_rsp], rsp",
    // iret frame, top down: ss, rsp, rflags, cs, rip, flags; the stub adds rcx, r11, rax.
    "    push {user_ss}",
    "    push rsi",
    "    push {user_rflags}",
    "    push {user_cs}",
    "    push rdi",
    "    push 0",
    "    xor eax, eax",
    "    xor ecx, ecx",
    "    xor r11d, r11d",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    "",
    // The syscall callback: rsp points at {rcx, r11, rip, cs, rflags, rsp, ss}.
    ".globl smpuser_syscall_entry",
    "smpuser_syscall_entry:",
    "    mov rdi, rsp",
    "    mov rsi, rax",
    "    mov rdx, rbx",
    "    and rsp, -16",
    "    cld",
    "    call smpuser_syscall_arrived",
    "    mov rsp, [rip + smpuser_resume_rsp]",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    "",
    // The user program.
    ".globl smpuser_user_program",
    "smpuser_user_program:",
    "    int3",
    ".globl smpuser_user_after_int3",
    "smpuser_user_after_int3:",
    "    movabs rbx, {unmapped}",
    ".globl smpuser_user_load",
    "smpuser_user_load:",
    "    mov rax, qword ptr [rbx]",
    ".globl smpuser_user_after_load",
    "smpuser_user_after_load:",
    "    movabs rax, {cr3_marker}",
    ".globl smpuser_user_read_cr3",
    "smpuser_user_read_cr3:",
    "    mov rax, cr3",
    "    mov rbx, rax",
    ".globl smpuser_user_write_cr3",
    "smpuser_user_write_cr3:",
    "    mov cr3, rax",
    "    movabs rax, {magic}",
    "    syscall",
    ".globl smpuser_user_after_syscall",
    "smpuser_user_after_syscall:",
    "    ud2",
    "",
    // extern "C" fn smpuser_kernel_load(address: u64): a load in kernel mode.
    ".globl smpuser_kernel_load",
    "smpuser_kernel_load:",
    "    mov rax, qword ptr [rdi]",
    ".globl smpuser_kernel_after_load",
    "smpuser_kernel_after_load:",
    "    ret",
    ".popsection",
    trap_stack = const TRAP_STACK_SIZE,
    user_stack = const USER_STACK_SIZE,
    user_ss = const FLAT_USER_SS64,
    user_cs = const FLAT_USER_CS64,
    user_rflags = const USER_RFLAGS,
    iret_stub = const stub_offset(Hypercall::Iret),
    unmapped = const UNMAPPED,
    magic = const SYSCALL_MAGIC,
    cr3_marker = const CR3_MARKER,
);

extern "C" {
    /// Enters user mode at `rip` with stack `rsp`; returns once the syscall callback ran.
    fn smpuser_enter_user(rip: u64, rsp: u64);
    /// Loads from `address` in kernel mode.
    fn smpuser_kernel_load(address: u64);
    // Addresses only, defined above.
    static smpuser_trap_stack_top: u8;
    static smpuser_user_stack_top: u8;
    static smpuser_syscall_entry: u8;
    static smpuser_user_program: u8;
    static smpuser_user_after_int3: u8;
    static smpuser_user_load: u8;
    static smpuser_user_after_load: u8;
    static smpuser_user_after_syscall: u8;
    static smpuser_kernel_after_load: u8;
    static smpuser_user_read_cr3: u8;
    static smpuser_user_write_cr3: u8;
}

/// The address of a symbol defined in the assembly above.
macro_rules! address {
    ($symbol:ident) => {
        &raw const $symbol as u64
    };
}

/// What a handler or the syscall callback saw, as it records it.
struct Record {
    count: AtomicU64,
    rax: AtomicU64,
    rcx: AtomicU64,
    rip: AtomicU64,
    cs: AtomicU64,
    rsp: AtomicU64,
    ss: AtomicU64,
    error_code: AtomicU64,
    cr2: AtomicU64,
}

impl Record {
    const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            rax: AtomicU64::new(0),
            rcx: AtomicU64::new(0),
            rip: AtomicU64::new(0),
            cs: AtomicU64::new(0),
            rsp: AtomicU64::new(0),
            ss: AtomicU64::new(0),
            error_code: AtomicU64::new(0),
            cr2: AtomicU64::new(0),
        }
    }

    /// Records an exception frame.
    fn trap(&self, frame: &TrapFrame) {
        self.fields(
            frame.rax, frame.rcx, frame.rip, frame.cs, frame.rsp, frame.ss,
        );
        self.error_code.store(frame.error_code, Ordering::Relaxed);
        self.cr2.store(frame.cr2, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Release);
    }

    fn fields(&self, rax: u64, rcx: u64, rip: u64, cs: u64, rsp: u64, ss: u64) {
        self.rax.store(rax, Ordering::Relaxed);
        self.rcx.store(rcx, Ordering::Relaxed);
        self.rip.store(rip, Ordering::Relaxed);
        self.cs.store(cs, Ordering::Relaxed);
        self.rsp.store(rsp, Ordering::Relaxed);
        self.ss.store(ss, Ordering::Relaxed);
    }

    /// What was recorded, once [`Record::count`] says how often.
    fn snapshot(&self) -> Seen {
        let count = self.count.load(Ordering::Acquire);
        let load = |field: &AtomicU64| field.load(Ordering::Relaxed);
        Seen {
            count,
            rax: load(&self.rax),
            rcx: load(&self.rcx),
            rip: load(&self.rip),
            cs_rpl: load(&self.cs) & RPL_MASK,
            rsp: load(&self.rsp),
            ss: load(&self.ss),
            error_code: load(&self.error_code),
            cr2: load(&self.cr2),
        }
    }
}

/// A copy of a [`Record`], for the checks.
struct Seen {
    count: u64,
    rax: u64,
    rcx: u64,
    rip: u64,
    cs_rpl: u64,
    rsp: u64,
    ss: u64,
    error_code: u64,
    cr2: u64,
}

static KERNEL_FAULT: Record = Record::new();
static USER_FAULT: Record = Record::new();
static USER_BREAKPOINT: Record = Record::new();
static SYSCALL: Record = Record::new();
static USER_CR3: Record = Record::new();
/// rbx at the user program's `syscall`: rax as its `mov rax, cr3` left it.
static USER_CR3_RAX: AtomicU64 = AtomicU64::new(0);

/// The syscall callback's frame, lowest address first.
#[repr(C)]
struct SyscallFrame {
    rcx: u64,
    r11: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Called by the syscall callback with its frame and the user's rax and rbx.
#[unsafe(no_mangle)]
extern "C" fn smpuser_syscall_arrived(frame: *const SyscallFrame, rax: u64, rbx: u64) {
    USER_CR3_RAX.store(rbx, Ordering::Relaxed);
    // SAFETY: the callback passes the frame the hypervisor just wrote on this stack, which
    // nothing else uses.
    let frame = unsafe { &*frame };
    SYSCALL.fields(rax, frame.rcx, frame.rip, frame.cs, frame.rsp, frame.ss);
    SYSCALL.count.fetch_add(1, Ordering::Release);
}

/// Runs the user-mode check on vCPU 0; `free` gives the user L4 its frame.
pub fn check(start: &StartInfo, free: &mut FreeFrames) -> Result<(), Failure> {
    shared_info::map_shared_info().map_err(|e| Failure::Call(Call::MapSharedInfo, e))?;
    route(Vector::PAGE_FAULT, on_page_fault)?;
    route(Vector::BREAKPOINT, on_breakpoint)?;
    route(Vector::GENERAL_PROTECTION, on_general_protection)?;
    let outcome = kernel_fault().and_then(|()| user_program(start, free));
    // Clearing a vector below 32 cannot fail.
    let _ = traps::clear_handler(Vector::PAGE_FAULT);
    let _ = traps::clear_handler(Vector::BREAKPOINT);
    let _ = traps::clear_handler(Vector::GENERAL_PROTECTION);
    outcome
}

fn route(vector: Vector, handler: traps::TrapHandler) -> Result<(), Failure> {
    traps::set_handler(vector, handler).map_err(Failure::Trap)
}

/// A load from the unmapped address in kernel mode: the U bit must be clear.
fn kernel_fault() -> Result<(), Failure> {
    // SAFETY: the load faults; the page-fault handler resumes after it.
    unsafe { smpuser_kernel_load(UNMAPPED) };
    let seen = KERNEL_FAULT.snapshot();
    expect(Check::KernelFaults, seen.count, 1)?;
    expect(
        Check::KernelFaultErrorCode,
        seen.error_code,
        PF_KERNEL_READ_NOT_PRESENT,
    )?;
    expect(Check::KernelFaultAddress, seen.cr2, UNMAPPED)?;
    expect(Check::KernelFaultCsRpl, seen.cs_rpl, 0)?;
    println!(
        "smpuser: kernel-mode page fault: error code {:#x} (U clear), frame cs RPL 0",
        seen.error_code
    );
    Ok(())
}

/// Sets up user mode, runs the program, and checks what the handlers and callback saw.
fn user_program(start: &StartInfo, free: &mut FreeFrames) -> Result<(), Failure> {
    let l4 = free.take().ok_or(Failure::NoFreeFrame)?;
    // SAFETY: a free frame nothing else uses; it becomes the user L4 for good.
    unsafe { user_tables::install(l4, start.pt_base)? };
    println!(
        "smpuser: user L4 in mfn {:#x}: pinned, set as the user base pointer",
        l4.mfn.0
    );
    // SAFETY: the callback handles the syscall frame and never returns to the hypervisor.
    unsafe {
        guest_rt::hypercall::callback_register(
            CallbackType::Syscall,
            address!(smpuser_syscall_entry),
            CALLBACKF_MASK_EVENTS,
        )
    }
    .map_err(|e| Failure::Call(Call::RegisterSyscallCallback, e))?;
    // SAFETY: the trap stack is reserved for bounces from user mode; nothing else uses it.
    unsafe {
        guest_rt::hypercall::stack_switch(FLAT_KERNEL_SS64, address!(smpuser_trap_stack_top))
    }
    .map_err(|e| Failure::Call(Call::StackSwitch, e))?;
    let user_stack = address!(smpuser_user_stack_top);
    // SAFETY: the user L4, syscall callback and trap stack are in place; the program ends
    // in `syscall`, whose callback returns here with the kernel's registers.
    unsafe { smpuser_enter_user(address!(smpuser_user_program), user_stack) };
    check_breakpoint()?;
    check_user_fault()?;
    check_user_cr3()?;
    check_syscall(user_stack)
}

fn check_user_cr3() -> Result<(), Failure> {
    let seen = USER_CR3.snapshot();
    let rax = USER_CR3_RAX.load(Ordering::Relaxed);
    println!("smpuser: user-mode mov from and to cr3: {} #GP in the guest kernel, rax after the read {rax:#x}", seen.count);
    expect(Check::UserCr3Faults, seen.count, 2)?;
    expect(Check::UserCr3Rax, rax, CR3_MARKER)?;
    expect(Check::UserCr3CsRpl, seen.cs_rpl, 3)?;
    println!("smpuser: user-mode cr3 access refused: both raised #GP in the guest kernel, nothing emulated");
    Ok(())
}

/// The general-protection handler: records the user program's `mov` from or to cr3 and
/// resumes after it.
fn on_general_protection(frame: &mut TrapFrame) {
    let at = frame.rip;
    if at != address!(smpuser_user_read_cr3) && at != address!(smpuser_user_write_cr3) {
        unexpected(frame);
    }
    USER_CR3.trap(frame);
    frame.rip = at + MOV_CR_LEN;
}

fn check_breakpoint() -> Result<(), Failure> {
    let seen = USER_BREAKPOINT.snapshot();
    expect(Check::UserBreakpoints, seen.count, 1)?;
    expect(
        Check::UserBreakpointRip,
        seen.rip,
        address!(smpuser_user_after_int3),
    )?;
    expect(Check::UserBreakpointCsRpl, seen.cs_rpl, 3)?;
    println!(
        "smpuser: user-mode int3 reached the breakpoint handler: rip {:#x}, frame cs RPL 3",
        seen.rip
    );
    Ok(())
}

fn check_user_fault() -> Result<(), Failure> {
    let seen = USER_FAULT.snapshot();
    expect(Check::UserFaults, seen.count, 1)?;
    expect(
        Check::UserFaultErrorCode,
        seen.error_code,
        PF_USER_READ_NOT_PRESENT,
    )?;
    expect(Check::UserFaultAddress, seen.cr2, UNMAPPED)?;
    expect(Check::UserFaultCsRpl, seen.cs_rpl, 3)?;
    println!(
        "smpuser: user-mode page fault at {UNMAPPED:#x}: error code {:#x} (U set), frame cs RPL 3",
        seen.error_code
    );
    Ok(())
}

fn check_syscall(user_stack: u64) -> Result<(), Failure> {
    let seen = SYSCALL.snapshot();
    expect(Check::Syscalls, seen.count, 1)?;
    expect(Check::SyscallRax, seen.rax, SYSCALL_MAGIC)?;
    let after = address!(smpuser_user_after_syscall);
    expect(Check::SyscallRip, seen.rip, after)?;
    expect(Check::SyscallRcx, seen.rcx, after)?;
    expect(Check::SyscallCsRpl, seen.cs_rpl, 3)?;
    expect(Check::SyscallRsp, seen.rsp, user_stack)?;
    expect(Check::SyscallSs, seen.ss, FLAT_USER_SS64.into())?;
    println!(
        "smpuser: user-mode syscall reached the callback: rax {:#x}, rip = rcx = {after:#x}, frame cs RPL 3",
        seen.rax
    );
    Ok(())
}

/// The breakpoint handler: records the user program's `int3` and lets it go on.
fn on_breakpoint(frame: &mut TrapFrame) {
    if frame.rip != address!(smpuser_user_after_int3) {
        unexpected(frame);
    }
    USER_BREAKPOINT.trap(frame);
}

/// The page-fault handler: records the kernel's or the user program's load and resumes
/// after it.
fn on_page_fault(frame: &mut TrapFrame) {
    let kernel_load: unsafe extern "C" fn(u64) = smpuser_kernel_load;
    let (record, resume) = if frame.rip == kernel_load as usize as u64 {
        (&KERNEL_FAULT, address!(smpuser_kernel_after_load))
    } else if frame.rip == address!(smpuser_user_load) {
        (&USER_FAULT, address!(smpuser_user_after_load))
    } else {
        unexpected(frame)
    };
    record.trap(frame);
    frame.rip = resume;
}

fn unexpected(frame: &TrapFrame) -> ! {
    fail(Failure::UnexpectedTrap {
        vector: frame.vector,
        rip: frame.rip,
    })
}
