//! Interrupt descriptor table, the assembly entry stubs for all 256 vectors, and the saved
//! register frame handed to Rust.
//!
//! Every vector enters through a 16-byte stub (pushing a dummy error code where the CPU
//! pushes none, then the vector) and one common path that swaps GS when it came from ring 3,
//! saves the general registers into a [`TrapFrame`] and calls `crate::traps::dispatch`
//! (by its link name, `hypervisor_trap_dispatch`: the arch layer imports nothing above it).
//! Double fault, NMI, machine check and debug run on their own IST stacks. This module
//! knows nothing about what a vector means; `crate::traps` decides, except for #DB.
//!
//! #DB (vector 1) has its own path, `debug_entry`, because a guest can make one arrive in
//! ring 0 where no other exception can: a data breakpoint of the guest's on memory the
//! hypervisor touches for it, or a breakpoint deferred by `mov ss`/`pop ss` past the next
//! instruction, which may be `syscall` (the #DB then comes at the first instruction of the
//! entry, with the guest's stack pointer and GS base) or `int3` (at the first instruction
//! of its stub, before `swapgs`): XSA-260. So the #DB gate has an IST stack, and a #DB from
//! ring 0 touches neither GS nor per-CPU data nor the interrupted stack: it resets DR6, sets
//! RF (so that an instruction breakpoint, which guests cannot set on hypervisor addresses
//! anyway, could not fault again), clears TF, counts itself and returns (Xen's `do_debug`
//! ignores such #DBs too; the guest sees nothing of them). A #DB from a guest moves its
//! frame to the CPU's kernel stack and goes the ordinary way (to `pv::debugreg`), so that a
//! #DB in ring 0 meanwhile, which restarts the IST stack from its top, cannot overwrite it.
//!
//! The way out is `swapgs` (when returning to ring 3) and one `iretq` at `trap_exit_iret`,
//! which loads the guest's code and stack selectors and may fault on them (#GP, #NP, #SS)
//! in ring 0 with the guest's GS base already in place. The common path recognises such a
//! fault by its rip before it touches per-CPU data, swaps GS back, and reports it as an
//! ordinary ring-0 exception whose [`failed_exit`] is the frame that could not be loaded;
//! the guest's registers are those of the new frame. It must never be confused with a
//! fault of an `iretq` to ring 0 (the idle loop), which needs no swap.
//!
//! Every entry clears RFLAGS.AC when SMAP is on ([`super::cpu`]): an interrupt or exception
//! keeps the interrupted AC (a guest's, or a user-access window's), which would otherwise
//! turn SMAP off in the hypervisor; the `iretq` restores it.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

use super::gdt::{self, HYPERVISOR_CS};
use super::paging::MapKind;

/// The registers saved at entry, lowest address first.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// All registers zero.
    pub const fn zeroed() -> TrapFrame {
        TrapFrame {
            r15: 0, r14: 0, r13: 0, r12: 0, r11: 0, r10: 0, r9: 0, r8: 0, rbp: 0, rdi: 0, rsi: 0,
            rdx: 0, rcx: 0, rbx: 0, rax: 0, vector: 0, error_code: 0, rip: 0, cs: 0, rflags: 0,
            rsp: 0, ss: 0,
        }
    }

    /// Whether the interrupted code ran in ring 3 (a guest).
    pub fn is_from_guest(&self) -> bool {
        self.cs & 3 == 3
    }
}

global_asm!(
    r#"
    .section .text.trap_entry, "ax"
    .p2align 4
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 256
    .p2align 4
    .if (vector == 8) || (vector >= 10 && vector <= 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    pushq $vector
    .else
    pushq $0
    pushq $vector
    .endif
    .if vector == 1
    jmp debug_entry
    .else
    jmp trap_common
    .endif
    .set vector, vector + 1
    .endr

debug_entry:
    /* On the #DB IST stack: vector, error code, then the hardware frame. */
    testb $3, 24(%rsp)
    jz 4f
    /* From a guest: GS as for any entry from ring 3, then the frame onto this CPU's
       kernel stack (where the hardware would have put it without IST: it is empty while
       a guest runs) and the common path. */
    swapgs
    movq %rax, %gs:{scratch}
    movq %rsp, %rax
    movq %gs:{stack_top}, %rsp
    pushq 48(%rax)
    pushq 40(%rax)
    pushq 32(%rax)
    pushq 24(%rax)
    pushq 16(%rax)
    pushq 8(%rax)
    pushq (%rax)
    movq %gs:{scratch}, %rax
    jmp trap_save
4:  /* From the hypervisor (GS may be the guest's, the stack anything before the entry
       switched it): reset DR6, resume with RF set and TF clear, count it. */
    pushq %rax
    movl ${dr6_default}, %eax
    movq %rax, %dr6
    orq ${rflags_rf}, 40(%rsp)
    andq $~{rflags_tf}, 40(%rsp)
    lock incq {hypervisor_db}(%rip)
    popq %rax
    addq $16, %rsp
    iretq

trap_common:
    testb $3, 24(%rsp)
    jnz 1f
    /* From ring 0. GS is the guest's only between the exit path's swapgs and its iretq,
       and only a #NP, #SS or #GP of that iretq on a frame returning to ring 3 can arrive
       there with interrupts off (NMI and machine checks are not handled). */
    pushq %rax
    movq 8(%rsp), %rax
    subq $11, %rax
    cmpq $2, %rax
    ja 2f
    leaq trap_exit_iret(%rip), %rax
    cmpq %rax, 24(%rsp)
    jne 2f
    movq 48(%rsp), %rax
    testb $3, 8(%rax)
    jz 2f
    popq %rax
1:  swapgs
    jmp trap_save
2:  popq %rax
    .global trap_save
trap_save:
    /* With SMAP on, clear RFLAGS.AC if the interrupted code had it set: an interrupt or
       exception keeps it, so the frame's rflags say (a syscall frame's may say so after
       SFMASK cleared it: harmless). popf, not clac: see arch::cpu. */
    testl ${ac}, 32(%rsp)
    jz 3f
    cmpb $0, {smap_on}(%rip)
    je 3f
    pushfq
    andl $~{ac}, (%rsp)
    popfq
3:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    callq {dispatch}
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    testb $3, 24(%rsp)
    jz 2f
    swapgs
2:  addq $16, %rsp
    .global trap_exit_iret
trap_exit_iret:
    iretq
"#,
    dispatch = sym hypervisor_trap_dispatch,
    smap_on = sym super::cpu::SMAP_ON,
    scratch = const super::percpu::SCRATCH_OFFSET,
    stack_top = const super::percpu::STACK_TOP_OFFSET,
    dr6_default = const hypervisor::debugreg::DR6_DEFAULT,
    rflags_rf = const 1u64 << 16,
    rflags_tf = const 1u64 << 8,
    hypervisor_db = sym HYPERVISOR_DEBUG_EXCEPTIONS,
    ac = const super::cpu::RFLAGS_AC,
    options(att_syntax)
);

/// #DB exceptions taken in hypervisor context and ignored (see the module documentation).
pub static HYPERVISOR_DEBUG_EXCEPTIONS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// What each vector means (`crate::traps::dispatch`), with interrupts off.
    fn hypervisor_trap_dispatch(frame: &mut TrapFrame);
    static trap_stubs: u8;
    static trap_exit_iret: u8;
}

/// The return frame an `iretq` to a guest could not load (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedExit {
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// If `frame` is the fault of the exit path's `iretq` to a guest, the frame that `iretq`
/// was loading. The guest's general registers are `frame`'s own: the fault came before any
/// of them changed.
pub fn failed_exit(frame: &TrapFrame) -> Option<FailedExit> {
    if frame.is_from_guest() || frame.rip != &raw const trap_exit_iret as u64 {
        return None;
    }
    // SAFETY: a fault of that `iretq` pushed the stack pointer it had, which points at the
    // five words it was loading, on this CPU's stack below the fault's own frame (the CPU
    // pushed the new frame beneath it); nothing has written there since.
    let [rip, cs, rflags, rsp, ss] = unsafe { (frame.rsp as *const [u64; 5]).read() };
    (cs & 3 == 3).then_some(FailedExit { rip, cs, rflags, rsp, ss })
}

/// Bytes per entry stub (each is 16-byte aligned).
const STUB_SIZE: u64 = 16;

#[repr(C, align(4096))]
struct Idt([AtomicU64; 512]);

/// One IDT for every CPU: the gates are the same everywhere. Read-only once built.
static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);

/// Builds the gates (once, on the boot CPU, with the window page tables in use), then maps
/// the IDT read-only: nothing may change a gate afterwards.
pub fn init() {
    let stubs = &raw const trap_stubs as u64;
    for vector in 0..256u64 {
        let ist = match vector {
            1 => gdt::IST_DEBUG,
            2 => gdt::IST_NMI,
            8 => gdt::IST_DOUBLE_FAULT,
            18 => gdt::IST_MACHINE_CHECK,
            _ => 0,
        };
        // int3 and into may be used by guests (ring 3): their gates are DPL 3. Every other
        // software `int` from a guest raises #GP and is checked against its trap table.
        let dpl = if matches!(vector, 3 | 4) { 3 } else { 0 };
        let (low, high) = interrupt_gate(stubs + vector * STUB_SIZE, ist, dpl);
        IDT.0[vector as usize * 2].store(low, Ordering::Relaxed);
        IDT.0[vector as usize * 2 + 1].store(high, Ordering::Relaxed);
    }
    super::paging::protect(idt_address(), MapKind::ReadOnly).expect("the IDT is a page of the image");
}

/// The IDT's address (one page).
pub fn idt_address() -> u64 {
    &IDT as *const Idt as u64
}

/// A present 64-bit interrupt gate (interrupts off on entry) to `handler`.
fn interrupt_gate(handler: u64, ist: u16, dpl: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | ((HYPERVISOR_CS as u64) << 16)
        | ((ist as u64 & 7) << 32)
        | ((0x8e | (dpl << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    (low, handler >> 32)
}

/// Loads the IDT on this CPU.
pub fn load() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(&IDT as *const Idt as u64),
    };
    // SAFETY: the IDT is a static with gates to the entry stubs above, built by `init`.
    unsafe { lidt(&pointer) };
}
