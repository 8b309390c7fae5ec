//! Guest entry through `syscall`, and the MSRs that route it.
//!
//! A guest kernel's `syscall` is a hypercall; a guest user's is bounced to its kernel. Both
//! arrive at [`syscall_entry`], which switches to the CPU's hypervisor stack, builds the same
//! [`super::trap::TrapFrame`] as an interrupt from ring 3 would (vector
//! [`SYSCALL_VECTOR`], RIP from rcx, RFLAGS from r11) and joins the common trap path, which
//! returns to the guest with `iretq`. Interrupts stay masked (SFMASK) until the hypervisor
//! stack is in use.

use core::arch::global_asm;

use x86_64::registers::model_specific::{LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::{PrivilegeLevel, VirtAddr};

use super::gdt::{GUEST_CS64, GUEST_DS, HYPERVISOR_CS, HYPERVISOR_DS};
use crate::percpu::{SCRATCH_OFFSET, STACK_TOP_OFFSET};

/// The pseudo-vector of a `syscall` in [`super::trap::TrapFrame::vector`].
pub const SYSCALL_VECTOR: u64 = 0x100;

global_asm!(
    r#"
    .section .text.syscall_entry, "ax"
    .global syscall_entry
    .p2align 4
syscall_entry:
    swapgs
    movq %rsp, %gs:{scratch}
    movq %gs:{stack_top}, %rsp
    pushq ${guest_ss}
    pushq %gs:{scratch}
    pushq %r11
    pushq ${guest_cs}
    pushq %rcx
    pushq $0
    pushq ${vector}
    jmp trap_save

    /* 32-bit syscall (compat mode) is not supported: raise #UD in the hypervisor's eyes. */
    .global syscall_entry_compat
syscall_entry_compat:
    ud2
"#,
    scratch = const SCRATCH_OFFSET,
    stack_top = const STACK_TOP_OFFSET,
    guest_ss = const GUEST_DS,
    guest_cs = const GUEST_CS64,
    vector = const SYSCALL_VECTOR,
    options(att_syntax)
);

unsafe extern "C" {
    static syscall_entry: u8;
}

/// Routes `syscall` on this CPU to [`syscall_entry`] with Xen's selector arithmetic:
/// entry CS 0xe008 / SS 0xe010, return CS 0xe033 / SS 0xe02b.
pub fn init_this_cpu() {
    let selector = |raw: u16| SegmentSelector::new(raw >> 3, PrivilegeLevel::from_u16(raw & 3));
    // STAR's user base is the 32-bit code selector: sysret uses +8 for SS and +16 for CS64.
    Star::write(selector(GUEST_CS64), selector(GUEST_DS), selector(HYPERVISOR_CS), selector(HYPERVISOR_DS))
        .expect("Xen's selectors satisfy SYSCALL/SYSRET arithmetic");
    LStar::write(VirtAddr::new(&raw const syscall_entry as u64));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK
            | RFlags::IOPL_HIGH
            | RFlags::IOPL_LOW,
    );
}
