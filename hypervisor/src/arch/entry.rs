//! Guest entry through `syscall`, and the MSRs that route it and `sysenter`.
//!
//! A guest kernel's `syscall` is a hypercall; a guest user's is bounced to its kernel. Both
//! arrive at [`syscall_entry`] (LSTAR), which switches to the CPU's hypervisor stack, builds
//! the same [`super::trap::TrapFrame`] as an interrupt from ring 3 would (vector
//! [`SYSCALL_VECTOR`], RIP from rcx, RFLAGS from r11) and joins the common trap path, which
//! returns to the guest with `iretq`. A `syscall` from 32-bit (compatibility-mode) guest
//! code arrives at `syscall32_entry` (CSTAR), which builds the same frame with vector
//! [`SYSCALL32_VECTOR`] and Xen's assumed selectors (cs 0xe023, ss 0xe02b); it is never a
//! hypercall. Interrupts stay masked (SFMASK, which also clears TF, AC and DF) until the
//! hypervisor stack is in use.
//!
//! `sysenter` gets no entry: IA32_SYSENTER_CS is 0, so the CPU raises #GP (Intel; #UD on
//! AMD in long mode) in the guest, where it is delivered to the guest's sysenter callback
//! or as that exception (`pv::traps`). An entry stub would run its first instruction in
//! ring 0 with the guest's GS and RFLAGS.TF (`sysenter` keeps TF), and firmware values
//! left in these MSRs would send a guest's `sysenter` anywhere: every CPU writes all of
//! them, and CSTAR, in [`init_this_cpu`].
//!
//! Some virtualizers carry out a guest's `syscall` without its privilege change; the page
//! fault that follows is turned into the same frame by [`recover_unswitched_syscall`].

use core::arch::global_asm;

use x86_64::registers::model_specific::{LStar, Msr, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::{PrivilegeLevel, VirtAddr};

use super::gdt::{GUEST_CS32, GUEST_CS64, GUEST_DS, HYPERVISOR_CS, HYPERVISOR_DS};
use super::trap::TrapFrame;
use super::percpu::{SCRATCH_OFFSET, STACK_TOP_OFFSET};

/// The pseudo-vector of a `syscall` in [`super::trap::TrapFrame::vector`].
pub const SYSCALL_VECTOR: u64 = 0x100;
/// The pseudo-vector of a `syscall` from 32-bit guest code.
pub const SYSCALL32_VECTOR: u64 = 0x101;

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

    .global syscall32_entry
    .p2align 4
syscall32_entry:
    swapgs
    movq %rsp, %gs:{scratch}
    movq %gs:{stack_top}, %rsp
    pushq ${guest_ss}
    pushq %gs:{scratch}
    pushq %r11
    pushq ${guest_cs32}
    pushq %rcx
    pushq $0
    pushq ${vector32}
    jmp trap_save
"#,
    scratch = const SCRATCH_OFFSET,
    stack_top = const STACK_TOP_OFFSET,
    guest_ss = const GUEST_DS,
    guest_cs = const GUEST_CS64,
    guest_cs32 = const GUEST_CS32,
    vector = const SYSCALL_VECTOR,
    vector32 = const SYSCALL32_VECTOR,
    options(att_syntax)
);

unsafe extern "C" {
    static syscall_entry: u8;
    static syscall32_entry: u8;
}

/// IA32_CSTAR: where `syscall` from compatibility mode enters.
const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_SYSENTER_CS, _ESP and _EIP.
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;

/// Routes `syscall` on this CPU to [`syscall_entry`] (64-bit code) and `syscall32_entry`
/// (32-bit code) with Xen's selector arithmetic: entry CS 0xe008 / SS 0xe010, return CS
/// 0xe033 / SS 0xe02b; and makes `sysenter` fault (SYSENTER_CS 0).
pub fn init_this_cpu() {
    let selector = |raw: u16| SegmentSelector::new(raw >> 3, PrivilegeLevel::from_u16(raw & 3));
    // STAR's user base is the 32-bit code selector: sysret uses +8 for SS and +16 for CS64.
    Star::write(selector(GUEST_CS64), selector(GUEST_DS), selector(HYPERVISOR_CS), selector(HYPERVISOR_DS))
        .expect("Xen's selectors satisfy SYSCALL/SYSRET arithmetic");
    LStar::write(VirtAddr::new(&raw const syscall_entry as u64));
    // SAFETY: CSTAR takes the address of an entry stub that builds a frame on this CPU's
    // own stack exactly as `syscall_entry` does; the SYSENTER MSRs take zeroes, with which
    // `sysenter` raises #GP (or #UD) instead of entering ring 0.
    unsafe {
        Msr::new(MSR_CSTAR).write(&raw const syscall32_entry as u64);
        Msr::new(MSR_SYSENTER_CS).write(0);
        Msr::new(MSR_SYSENTER_ESP).write(0);
        Msr::new(MSR_SYSENTER_EIP).write(0);
    }
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

/// Turns the page fault of a `syscall` that reached [`syscall_entry`] (or
/// `syscall32_entry`) without its privilege change into the frame the entry stub builds
/// (vector [`SYSCALL_VECTOR`] or [`SYSCALL32_VECTOR`], RIP from rcx, RFLAGS from r11).
/// Returns whether `frame` was such a fault and has been rewritten.
///
/// The `kvm_pvm` host module (it runs the whole machine in ring 3 and emulates ring 0) does
/// only part of a guest's `syscall`: it sets rcx and r11, applies SFMASK and jumps to LSTAR,
/// but leaves the CPU in ring 3 with the guest's CS and SS. Fetching the supervisor-only
/// entry stub then faults at once. Only such a `syscall` can raise that fault with
/// RFLAGS.IF clear: guest code always runs with IF set, and at IOPL 0 neither `cli` nor
/// `popf` can clear it. SFMASK can. IOPL and VM are cleared from r11 as the `iret`
/// hypercall does, so the guest gains nothing it could not get from a real `syscall`.
pub fn recover_unswitched_syscall(frame: &mut TrapFrame) -> bool {
    const PAGE_FAULT: u64 = 14;
    const PF_USER_FETCH: u64 = (1 << 2) | (1 << 4);
    let (vector, cs) = match frame.rip {
        rip if rip == &raw const syscall_entry as u64 => (SYSCALL_VECTOR, GUEST_CS64),
        rip if rip == &raw const syscall32_entry as u64 => (SYSCALL32_VECTOR, GUEST_CS32),
        _ => return false,
    };
    let landed_in_ring3 = frame.vector == PAGE_FAULT
        && frame.is_from_guest()
        && frame.error_code & PF_USER_FETCH == PF_USER_FETCH
        && !RFlags::from_bits_truncate(frame.rflags).contains(RFlags::INTERRUPT_FLAG);
    if !landed_in_ring3 {
        return false;
    }
    let saved = RFlags::from_bits_truncate(frame.r11);
    frame.vector = vector;
    frame.error_code = 0;
    frame.rip = frame.rcx;
    frame.cs = cs.into();
    frame.rflags = ((saved - RFlags::IOPL_HIGH - RFlags::IOPL_LOW - RFlags::VIRTUAL_8086_MODE)
        | RFlags::INTERRUPT_FLAG)
        .bits();
    frame.ss = GUEST_DS.into();
    true
}
