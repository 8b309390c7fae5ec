//! What each vector means: exceptions in the hypervisor are fatal and reported in full
//! (except a guest-memory copy's fault, a fault loading a guest's data selector and a fault
//! of the return to a guest, all recovered); interrupts go to their handlers (timer, cross-CPU calls, spurious) and are
//! acknowledged; exceptions and `syscall`s from guests go to `pv`.
//!
//! Called only from the assembly entry path in `arch::trap`, with interrupts off.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::entry::{SYSCALL32_VECTOR, SYSCALL_VECTOR};
use crate::arch::exit::{exit, Outcome};
use crate::arch::trap::TrapFrame;
use crate::arch::vectors;
use crate::sched::Stay;
use crate::arch::percpu;
use crate::logger;

/// Whether the log has said once that `syscall`s arrive without their privilege change.
static SYSCALL_RECOVERY_NOTED: AtomicBool = AtomicBool::new(false);

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
    "device not available", "double fault", "coprocessor overrun", "invalid TSS",
    "segment not present", "stack fault", "general protection", "page fault", "reserved",
    "x87 floating point", "alignment check", "machine check", "SIMD floating point",
    "virtualization", "control protection", "reserved", "reserved", "reserved", "reserved",
    "reserved", "reserved", "hypervisor injection", "VMM communication", "security", "reserved",
];

/// Entry from `trap_common` (and the `syscall` entry), with interrupts off. Whatever the
/// trap was, the scheduler decides on the way out what the frame returns to. Exported by
/// name, which is how the entry path (below everything) reaches it.
// SAFETY: `hypervisor_trap_dispatch` is the one symbol of that name (the entry path in
// `arch::trap` (and through it the `syscall` entry) calls it by link name, with this
// signature).
#[unsafe(export_name = "hypervisor_trap_dispatch")]
pub extern "C" fn dispatch(frame: &mut TrapFrame) {
    let entered = crate::time::rdtsc();
    let from_guest = frame.is_from_guest();
    if !from_guest && frame.vector < 32 && resume_at_fixup(frame) {
        return;
    }
    if crate::arch::entry::recover_unswitched_syscall(frame)
        && !SYSCALL_RECOVERY_NOTED.swap(true, Ordering::Relaxed)
    {
        log::warn!("a guest syscall arrived without its privilege change (host virtualizer); taken as a syscall");
    }
    let cause = match frame.vector {
        SYSCALL_VECTOR | SYSCALL32_VECTOR => Stay::Syscall(frame.rax),
        vector => Stay::Vector(vector),
    };
    let domu = crate::sched::current().is_some_and(|vcpu| !vcpu.domain.privileged);
    match frame.vector {
        SYSCALL_VECTOR | SYSCALL32_VECTOR => crate::pv::guest_trap(frame),
        0..=31 if frame.is_from_guest() => crate::pv::guest_trap(frame),
        0..=31 => hypervisor_exception(frame),
        v if (vectors::PIC_BASE as u64..=0x2f).contains(&v) => {} // masked legacy PIC: spurious, no EOI owed
        v if v == vectors::SPURIOUS as u64 => {}
        v => crate::interrupts::handle(v as u8),
    }
    if from_guest {
        // A slice of a dead domain's teardown, if one is queued (not in a trap from
        // hypervisor code, which may hold locks the teardown takes).
        crate::pv::teardown::work(crate::pv::teardown::TRAP_SLICE_NS);
    }
    crate::sched::on_trap_exit(frame);
    if frame.is_from_guest() {
        if let Some(vcpu) = crate::sched::current() {
            crate::sched::release_held_timer(vcpu);
            crate::pv::traps::selectors_failsafe(vcpu, frame);
            crate::sched::periodic_tick(vcpu);
            crate::pv::events::deliver_upcall(vcpu, frame);
        }
    }
    let _ = crate::logger::drain(crate::logger::EXIT_SLICE_NS);
    if from_guest {
        // Console rings that waited for room in the console buffer.
        crate::pv::console::retry_rings();
        // A domain that ended: domain 0's VIRQ_DOM_EXC.
        crate::pv::events::tell_domain_ended();
    }
    crate::sched::record_stay(crate::time::tsc_to_ns(crate::time::rdtsc() - entered), cause, domu);
}

/// An exception in hypervisor code without a fix-up ([`resume_at_fixup`] took those): a
/// fault of the `iretq` returning to a guest becomes that guest's failsafe callback (or its
/// death); anything else is fatal.
fn hypervisor_exception(frame: &mut TrapFrame) {
    const SEGMENT_NOT_PRESENT: u64 = 11;
    const STACK_FAULT: u64 = 12;
    const GENERAL_PROTECTION: u64 = 13;
    if matches!(frame.vector, SEGMENT_NOT_PRESENT | STACK_FAULT | GENERAL_PROTECTION) {
        if let Some(failed) = crate::arch::trap::failed_exit(frame) {
            if crate::pv::traps::exit_fault(frame, failed) {
                return;
            }
        }
    }
    fatal_exception(frame)
}

/// A fault in hypervisor code that has a fix-up: a guest-memory copy's (#GP, #PF on a guest
/// pointer) or a guest data selector's load (#GP, #NP, on switching a vCPU in). Resumes
/// there; true when it did, and then the trap must return at once: the code it interrupted
/// (a hypercall, or the scheduler itself) is still running.
fn resume_at_fixup(frame: &mut TrapFrame) -> bool {
    const SEGMENT_NOT_PRESENT: u64 = 11;
    const GENERAL_PROTECTION: u64 = 13;
    const PAGE_FAULT: u64 = 14;
    let resume = match frame.vector {
        GENERAL_PROTECTION | PAGE_FAULT if crate::arch::uaccess::fixup(frame.rip).is_some() => crate::arch::uaccess::fixup(frame.rip),
        SEGMENT_NOT_PRESENT | GENERAL_PROTECTION => crate::arch::gdt::selector_load_fixup(frame.rip),
        _ => None,
    };
    resume.map(|rip| frame.rip = rip).is_some()
}

/// Reports an exception raised by the hypervisor itself and stops the machine.
fn fatal_exception(frame: &TrapFrame) -> ! {
    percpu::adopt_own_gs();
    logger::force_unlock();
    let vector = frame.vector as usize;
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    logger::emergency(format_args!(
        "FATAL: exception {} ({}) error code {:#x} on cpu {} cr2 {:#x}",
        vector,
        EXCEPTION_NAMES[vector],
        frame.error_code,
        percpu::current_index_or_boot(),
        cr2
    ));
    logger::emergency(format_args!(
        "  rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    ));
    logger::emergency(format_args!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    ));
    logger::emergency(format_args!(
        "  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        frame.rsi, frame.rdi, frame.rbp, frame.r8
    ));
    logger::emergency(format_args!(
        "  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        frame.r9, frame.r10, frame.r11, frame.r12
    ));
    logger::emergency(format_args!(
        "  r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        frame.r13, frame.r14, frame.r15
    ));
    exit(Outcome::Failure)
}
