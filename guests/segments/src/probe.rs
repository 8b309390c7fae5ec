//! The instructions under test, each a tiny function in assembly, and what the guest
//! kernel's handlers saw when one of them faulted or trapped.
//!
//! Every probe loads r8 with the address to resume at if its instruction faults: the #GP
//! and #PF handlers ([`install`]) record the fault ([`Fault`]) and resume there, in guest
//! kernel or user mode alike. The software-interrupt handlers (vectors 0x80-0x83, raw
//! entries in the trap table with DPL 0 to 3) record the vector, the return rip and the
//! code selector's RPL, and return after the instruction. [`exec_user`] runs a probe in
//! guest user mode (as XTF's `exec_user`): an `iret` to ring-3 user mode with the rflags
//! asked for, the probe, then `int 0x90` (DPL 3) back to the kernel, whose handler resumes
//! the kernel's stack. `main` calls [`install`] once; nothing here changes a mapping.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::abi::arch_x86::{TrapInfo, FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, FLAT_USER_CS64, FLAT_USER_SS64};
use guest_rt::abi::hypercall::{Hypercall, ShutdownReason};
use guest_rt::abi::hypercall_page::stub_offset;
use guest_rt::hypercall::{self, HypercallError};
use guest_rt::println;
use guest_rt::traps::{self, TrapFrame, Vector};

/// The software-interrupt vectors under test: vector `SOFTINT_BASE + d` has DPL `d`.
pub const SOFTINT_BASE: u8 = 0x80;
/// The vector user mode returns to the kernel with (DPL 3).
pub const RETURN_VECTOR: u8 = 0x90;
/// The stack the hypervisor switches to on entry from user mode, and the user stack.
const TRAP_STACK_SIZE: usize = 16 * 1024;
const USER_STACK_SIZE: usize = 8 * 1024;

/// The last software interrupt delivered: vector, rip it returns to, cs (RPL: mode).
pub static SOFTINT_VECTOR: AtomicU64 = AtomicU64::new(0);
pub static SOFTINT_RIP: AtomicU64 = AtomicU64::new(0);
pub static SOFTINT_CS: AtomicU64 = AtomicU64::new(0);
/// Kernel stack pointer saved by [`exec_user`] for the return vector's handler.
#[unsafe(no_mangle)]
static SEGMENTS_KERNEL_RSP: AtomicU64 = AtomicU64::new(0);

/// Where a probe resumes after a handled fault: the same counter, vector 0 (none).
static FAULT_VECTOR: AtomicU64 = AtomicU64::new(0);
static FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
static FAULT_CR2: AtomicU64 = AtomicU64::new(0);
static FAULT_RFLAGS: AtomicU64 = AtomicU64::new(0);
static FAULT_CS: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".pushsection .bss.segments_stacks,\"aw\",@nobits",
    ".balign 16",
    ".skip {trap_stack}",
    ".globl segments_trap_stack_top",
    "segments_trap_stack_top:",
    ".skip {user_stack}",
    ".globl segments_user_stack_top",
    "segments_user_stack_top:",
    ".popsection",
    ".pushsection .text.segments_probes,\"ax\",@progbits",
    // Software-interrupt handlers: frame {rcx, r11, rip, cs, rflags, rsp, ss}.
    ".macro segments_softint n",
    ".globl segments_softint_\\n",
    "segments_softint_\\n:",
    "    pop rcx",
    "    pop r11",
    "    push rax",
    "    mov qword ptr [rip + {vector}], \\n",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {rip}], rax",
    "    mov rax, [rsp + 16]",
    "    mov [rip + {cs}], rax",
    "    pop rax",
    "    push 0",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    ".endm",
    "segments_softint 0x80",
    "segments_softint 0x81",
    "segments_softint 0x82",
    "segments_softint 0x83",
    // Back from user mode: abandon the user frame, resume exec_user's caller.
    ".globl segments_return_to_kernel",
    "segments_return_to_kernel:",
    "    mov rsp, [rip + SEGMENTS_KERNEL_RSP]",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    // extern "C" fn segments_exec_user_with(probe: u64, rflags: u64, argument: u64)
    ".globl segments_exec_user_with",
    "segments_exec_user_with:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rip + SEGMENTS_KERNEL_RSP], rsp",
    "    push {user_ss}",
    "    lea rax, [rip + segments_user_stack_top]",
    "    push rax",
    "    push rsi",
    "    push {user_cs}",
    "    lea rax, [rip + segments_user_stub]",
    "    push rax",
    "    push 0",
    "    mov rsi, rdi",
    "    mov rdi, rdx",
    "    xor eax, eax",
    "    xor ecx, ecx",
    "    xor r11d, r11d",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    "segments_user_stub:",
    "    call rsi",
    "    int {return_vector}",
    "    ud2",
    // The probes. Each sets r8 to where a faulting instruction resumes.
    ".macro segments_int_probe n",
    ".globl segments_probe_int_\\n",
    "segments_probe_int_\\n:",
    "    lea r8, [rip + segments_after_int_\\n]",
    "    int \\n",
    ".globl segments_after_int_\\n",
    "segments_after_int_\\n:",
    "    ret",
    ".endm",
    "segments_int_probe 0x80",
    "segments_int_probe 0x81",
    "segments_int_probe 0x82",
    "segments_int_probe 0x83",
    // int 0x82 behind a cs override and an operand-size prefix: four bytes long.
    ".globl segments_probe_int_prefixed",
    "segments_probe_int_prefixed:",
    "    lea r8, [rip + segments_after_int_prefixed]",
    "    .byte 0x2e, 0x66, 0xcd, 0x82",
    ".globl segments_after_int_prefixed",
    "segments_after_int_prefixed:",
    "    ret",
    ".globl segments_probe_cli",
    "segments_probe_cli:",
    "    lea r8, [rip + 1f]",
    "    cli",
    "1:  ret",
    ".globl segments_probe_outb",
    "segments_probe_outb:",
    "    lea r8, [rip + 1f]",
    "    mov al, 0x5a",
    "    out 0x80, al",
    "1:  ret",
    // extern "C" fn(port: u64) -> u64: outb to the port in dx.
    ".globl segments_probe_outb_dx",
    "segments_probe_outb_dx:",
    "    lea r8, [rip + 1f]",
    "    mov rdx, rdi",
    "    mov al, 0x5a",
    "    out dx, al",
    "1:  ret",
    // -> rax after `in al, 0x71` with the upper bytes set: only al may change.
    ".globl segments_probe_inb",
    "segments_probe_inb:",
    "    lea r8, [rip + 1f]",
    "    movabs rax, 0x123456789abcde00",
    "    in al, 0x71",
    "1:  ret",
    // -> rax after `in eax, dx`: all ones, zero-extended.
    ".globl segments_probe_inl",
    "segments_probe_inl:",
    "    lea r8, [rip + 1f]",
    "    movabs rax, 0x1234567800000000",
    "    mov edx, 0xcf8",
    "    in eax, dx",
    "1:  ret",
    // extern "C" fn(buffer: u64, count: u64) -> u64 (rcx left): rep insb from port 0x80.
    ".globl segments_probe_rep_insb",
    "segments_probe_rep_insb:",
    "    lea r8, [rip + 1f]",
    "    mov rcx, rsi",
    "    mov edx, 0x80",
    "    rep insb",
    "1:  mov rax, rcx",
    "    ret",
    // extern "C" fn(source: u64, count: u64) -> u64 (rcx left): rep outsb to port 0x80.
    ".globl segments_probe_rep_outsb",
    "segments_probe_rep_outsb:",
    "    lea r8, [rip + 1f]",
    "    mov rcx, rsi",
    "    mov rsi, rdi",
    "    mov edx, 0x80",
    "    rep outsb",
    "1:  mov rax, rcx",
    "    ret",
    // extern "C" fn(selector: u64) -> u64: loads ds, reads it back, loads 0 again;
    // 0xdead if the load faulted.
    ".globl segments_probe_load_ds",
    "segments_probe_load_ds:",
    "    lea r8, [rip + 1f]",
    "    mov eax, 0xdead",
    "    mov ds, di",
    "    mov ax, ds",
    "1:  xor ecx, ecx",
    "    mov ds, cx",
    "    ret",
    // extern "C" fn(selector: u64): loads ds and leaves it loaded.
    ".globl segments_set_ds",
    "segments_set_ds:",
    "    mov ds, di",
    "    ret",
    // extern "C" fn() -> u64: ds.
    ".globl segments_get_ds",
    "segments_get_ds:",
    "    xor eax, eax",
    "    mov ax, ds",
    "    ret",
    // extern "C" fn(code_selector: u64) -> u64: iret (kernel mode) to the code segment
    // `code_selector`, read cs there, iret back to the flat code selector; the cs seen.
    ".globl segments_probe_far_code",
    "segments_probe_far_code:",
    "    mov rax, rsp",
    "    push {kernel_ss}",
    "    push rax",
    "    push 2",
    "    push rdi",
    "    lea rax, [rip + 2f]",
    "    push rax",
    "    push 0",
    "    jmp guest_rt_hypercall_page + {iret_stub}",
    // Back to the flat code selector with a far return (REX.W: 8-byte slots). QEMU's TCG
    // pops its frame with supervisor accesses, which SMAP refuses on a guest stack: the
    // hypervisor must carry it out as a processor would.
    "2:  mov edx, cs",
    "    push {kernel_cs}",
    "    lea rax, [rip + 3f]",
    "    push rax",
    "    .byte 0x48, 0xcb",
    "3:  mov eax, edx",
    "    ret",
    // extern "C" fn(address: u64) (user mode): `movb $0, (%rsp)` with rsp = address.
    ".globl segments_probe_store_rsp",
    "segments_probe_store_rsp:",
    "    lea r8, [rip + 1f]",
    "    mov rcx, rsp",
    "    mov rsp, rdi",
    "    mov byte ptr [rsp], 0",
    "1:  mov rsp, rcx",
    "    ret",
    // The same through rbp (SS too) and rax (DS).
    ".globl segments_probe_store_rbp",
    "segments_probe_store_rbp:",
    "    lea r8, [rip + 1f]",
    "    mov rcx, rbp",
    "    mov rbp, rdi",
    "    mov byte ptr [rbp], 0",
    "1:  mov rbp, rcx",
    "    ret",
    ".globl segments_probe_store_rax",
    "segments_probe_store_rax:",
    "    lea r8, [rip + 1f]",
    "    mov rax, rdi",
    "    mov byte ptr ds:[rax], 0",
    "1:  ret",
    // extern "C" fn(pointer: u64): `rex64 lcall *(%rdi)`.
    ".globl segments_probe_far_call",
    "segments_probe_far_call:",
    "    lea r8, [rip + 1f]",
    "    .byte 0x48, 0xff, 0x1f",
    "1:  ret",
    // extern "C" fn() -> u64: CPUID leaf 0's ebx (the vendor's first four letters),
    // through the hypervisor (the forced-emulation prefix).
    ".globl segments_vendor_ebx",
    "segments_vendor_ebx:",
    "    push rbx",
    "    xor eax, eax",
    "    xor ecx, ecx",
    "    ud2",
    "    .ascii \"xen\"",
    "    cpuid",
    "    mov eax, ebx",
    "    pop rbx",
    "    ret",
    ".popsection",
    trap_stack = const TRAP_STACK_SIZE,
    user_stack = const USER_STACK_SIZE,
    vector = sym SOFTINT_VECTOR,
    rip = sym SOFTINT_RIP,
    cs = sym SOFTINT_CS,
    iret_stub = const stub_offset(Hypercall::Iret),
    user_ss = const FLAT_USER_SS64,
    user_cs = const FLAT_USER_CS64,
    kernel_ss = const FLAT_KERNEL_SS64,
    kernel_cs = const FLAT_KERNEL_CS64,
    return_vector = const RETURN_VECTOR,
);

unsafe extern "C" {
    fn segments_exec_user_with(probe: u64, rflags: u64, argument: u64);
    pub fn segments_probe_inb() -> u64;
    pub fn segments_probe_inl() -> u64;
    pub fn segments_probe_outb_dx(port: u64);
    pub fn segments_probe_rep_insb(buffer: u64, count: u64) -> u64;
    pub fn segments_probe_rep_outsb(source: u64, count: u64) -> u64;
    pub fn segments_probe_load_ds(selector: u64) -> u64;
    pub fn segments_probe_far_code(code_selector: u64) -> u64;
    pub fn segments_set_ds(selector: u64);
    pub fn segments_get_ds() -> u64;
    pub fn segments_vendor_ebx() -> u64;
    pub static segments_probe_store_rsp: u8;
    pub static segments_probe_store_rbp: u8;
    pub static segments_probe_store_rax: u8;
    pub fn segments_probe_far_call(pointer: u64);
    static segments_trap_stack_top: u8;
    static segments_softint_0x80: u8;
    static segments_softint_0x81: u8;
    static segments_softint_0x82: u8;
    static segments_softint_0x83: u8;
    static segments_return_to_kernel: u8;
    pub static segments_probe_int_0x80: u8;
    pub static segments_probe_int_0x81: u8;
    pub static segments_probe_int_0x82: u8;
    pub static segments_probe_int_0x83: u8;
    pub static segments_after_int_0x80: u8;
    pub static segments_after_int_0x81: u8;
    pub static segments_after_int_0x82: u8;
    pub static segments_after_int_0x83: u8;
    pub static segments_probe_int_prefixed: u8;
    pub static segments_after_int_prefixed: u8;
    pub static segments_probe_cli: u8;
    pub static segments_probe_outb: u8;
}

/// The address of a symbol defined in the assembly above.
#[macro_export]
macro_rules! address {
    ($symbol:ident) => {
        &raw const $crate::probe::$symbol as u64
    };
}

/// A fault a probe took, as its handler saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u64,
    pub error_code: u64,
    pub cr2: u64,
    pub rflags: u64,
    pub cs: u64,
}

/// Installs the #GP, #PF and #SS handlers, the software-interrupt vectors and the return
/// vector, and the stack bounces from user mode land on.
pub fn install() -> Result<(), HypercallError> {
    let _ = traps::set_handler(Vector::GENERAL_PROTECTION, on_fault);
    let _ = traps::set_handler(Vector::PAGE_FAULT, on_fault);
    let _ = traps::set_handler(Vector::STACK_FAULT, on_fault);
    let entry = |vector: u8, dpl: u8, address: u64| TrapInfo { vector, flags: dpl, cs: FLAT_KERNEL_CS64, _pad: 0, address };
    let handlers = [
        &raw const segments_softint_0x80 as u64,
        &raw const segments_softint_0x81 as u64,
        &raw const segments_softint_0x82 as u64,
        &raw const segments_softint_0x83 as u64,
    ];
    let mut table = [TrapInfo::default(); 6];
    for (dpl, &handler) in handlers.iter().enumerate() {
        table[dpl] = entry(SOFTINT_BASE + dpl as u8, dpl as u8, handler);
    }
    table[4] = entry(RETURN_VECTOR, 3, &raw const segments_return_to_kernel as u64);
    // SAFETY: each handler takes its vector's bounce frame and returns with iret (or, for
    // the return vector, resumes the kernel stack exec_user saved); the table is terminated.
    unsafe { hypercall::set_trap_table(&table)? };
    // SAFETY: the trap stack is reserved for bounces from user mode.
    unsafe { hypercall::stack_switch(FLAT_KERNEL_SS64, &raw const segments_trap_stack_top as u64) }
}

fn on_fault(frame: &mut TrapFrame) {
    if frame.r8 == 0 {
        println!(
            "segments: FAILED unexpected exception {} at rip {:#x} (error code {:#x}, cr2 {:#x})",
            frame.vector, frame.rip, frame.error_code, frame.cr2
        );
        hypercall::shutdown(ShutdownReason::Crash);
    }
    FAULT_ERROR.store(frame.error_code, Ordering::Relaxed);
    FAULT_CR2.store(frame.cr2, Ordering::Relaxed);
    FAULT_RFLAGS.store(frame.rflags, Ordering::Relaxed);
    FAULT_CS.store(frame.cs, Ordering::Relaxed);
    FAULT_VECTOR.store(frame.vector, Ordering::Release);
    frame.rip = frame.r8;
    frame.r8 = 0;
}

/// Forgets the last fault and software interrupt (before a probe).
pub fn reset() {
    FAULT_VECTOR.store(0, Ordering::Relaxed);
    SOFTINT_VECTOR.store(0, Ordering::Relaxed);
    SOFTINT_RIP.store(0, Ordering::Relaxed);
}

/// The fault taken since [`reset`], if any.
pub fn fault() -> Option<Fault> {
    match FAULT_VECTOR.load(Ordering::Acquire) {
        0 => None,
        vector => Some(Fault {
            vector,
            error_code: FAULT_ERROR.load(Ordering::Relaxed),
            cr2: FAULT_CR2.load(Ordering::Relaxed),
            rflags: FAULT_RFLAGS.load(Ordering::Relaxed),
            cs: FAULT_CS.load(Ordering::Relaxed),
        }),
    }
}

/// The software interrupt delivered since [`reset`]: vector, return rip, cs.
pub fn softint() -> Option<(u64, u64, u64)> {
    match SOFTINT_VECTOR.load(Ordering::Acquire) {
        0 => None,
        vector => Some((vector, SOFTINT_RIP.load(Ordering::Relaxed), SOFTINT_CS.load(Ordering::Relaxed))),
    }
}

/// Runs the probe at `probe` (an `extern "C" fn()` that keeps to its own registers) in
/// guest kernel mode.
pub fn run_kernel(probe: u64) {
    reset();
    // SAFETY: the probes are the functions above: they touch no memory, and a fault in them
    // resumes at their r8.
    let f: extern "C" fn() = unsafe { core::mem::transmute::<u64, extern "C" fn()>(probe) };
    f();
}

/// Runs the probe at `probe` in guest user mode with `rflags` (IOPL bits included).
pub fn run_user(probe: u64, rflags: u64) {
    run_user_with(probe, rflags, 0);
}

/// [`run_user`] for a probe that takes one argument (in rdi).
pub fn run_user_with(probe: u64, rflags: u64, argument: u64) {
    reset();
    // SAFETY: the user L4, the trap stack and the return vector are in place (`main`); the
    // probe returns to the user stub, whose `int 0x90` resumes here; rdi reaches the probe
    // untouched.
    unsafe { segments_exec_user_with(probe, rflags, argument) };
}
