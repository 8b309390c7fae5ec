//! Exceptions and callbacks into a PV guest: bounce frames, the `iret` hypercall, guest
//! exceptions (a page fault first offered to writable-page-table emulation, `pv::ptwr`)
//! and software interrupts, `syscall` from guest user mode and from 32-bit
//! code, `sysenter`, the failsafe callback, and killing a guest whose fault cannot be
//! delivered.
//!
//! A bounce writes Xen's x86_64 frame on the guest kernel stack — from low to high: rcx,
//! r11, [error code | ds, es, fs, gs for the failsafe callback], rip, cs (saved upcall mask
//! in bits 32-39; RPL 3 only when the guest was in user mode), rflags, rsp, ss — switching
//! to guest kernel mode (its stack from `stack_switch`, its kernel page tables) when the
//! guest was in user mode, and enters the registered handler with TF, NT, RF, VM and AC
//! clear (DF too for the syscall callbacks, Xen's fixed SYSCALL mask). A guest with no
//! handler, or one whose frame cannot be written, is crashed alone.
//!
//! Nothing a guest hands the `iret` hypercall reaches the hypervisor's `iretq` unchecked
//! ([`hypervisor::guest_return::check`]), and when an `iretq` to a guest faults all the same
//! (a descriptor changed under a loaded selector), [`exit_fault`] makes it the guest's
//! failsafe callback, with the frame that could not be loaded, as Xen does; without one the
//! domain is killed; so does a data selector that no longer loads when the vCPU is switched
//! in ([`selectors_failsafe`]). A #GP raised by a software interrupt is decoded at its rip
//! (`hypervisor::insn`), never trusted from the error code; so is a #GP(0) whose memory
//! operand decides between #SS and #GP or whose far pointer's selector decides the error
//! code, and a page fault that only QEMU's TCG raises for a far return under SMAP (carried
//! out as a processor would). Runs on the CPU running the vCPU, inside its trap.

use abi::arch_x86::{FLAT_KERNEL_CS64, FLAT_KERNEL_SS64, TI_DPL_MASK, TI_MASK_EVENTS, VGCF_IN_SYSCALL};
use abi::hypercall::VmAssistType;
use hypervisor::{guest_return, insn};
use log::{debug, warn};
use x86_64::registers::model_specific::KernelGsBase;
use x86_64::VirtAddr;

use crate::arch::gdt;
use crate::arch::trap::{FailedExit, TrapFrame};
use crate::arch::uaccess;
use crate::domain::vcpu::GuestContext;
use crate::domain::{Ending, Vcpu};
use crate::pv::{descriptors, emulate, ptwr, shared};

const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_IOPL: u64 = 3 << 12;

const VECTOR_DEBUG: u8 = 1;
const VECTOR_BREAKPOINT: u8 = 3;
const VECTOR_OVERFLOW: u8 = 4;
const VECTOR_INVALID_OPCODE: u8 = 6;
const VECTOR_DEVICE_NOT_AVAILABLE: u8 = 7;
const VECTOR_STACK_FAULT: u8 = 12;
const VECTOR_GENERAL_PROTECTION: u8 = 13;
const VECTOR_PAGE_FAULT: u8 = 14;
/// #GP error code bits: an IDT entry is named (a software interrupt's gate), and an event
/// external to the program caused it.
const GP_IDT: u64 = 1 << 1;
const GP_EXTERNAL: u64 = 1 << 0;
/// Page-fault error code bits: the access was a write; it came from user mode.
const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;

/// Exceptions that push an error code.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Kills the domain of `vcpu` for `why`; the scheduler takes it off the CPU on exit.
pub fn crash(vcpu: &Vcpu, frame: &TrapFrame, why: core::fmt::Arguments) {
    warn!("domain {} ({}) vcpu {}: {why} at rip {:#x}; killing it", vcpu.domain.id.0, vcpu.domain.name, vcpu.id, frame.rip);
    super::teardown::shutdown(&vcpu.domain, Ending::Killed);
}

/// An exception raised while the guest ran (vector < 32).
pub fn guest_exception(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    match vector {
        VECTOR_DEBUG => crate::pv::debugreg::debug_exception(vcpu, frame),
        VECTOR_DEVICE_NOT_AVAILABLE => crate::pv::fpu::device_not_available(vcpu, frame),
        VECTOR_INVALID_OPCODE if emulate::forced_cpuid(vcpu, frame) => {}
        VECTOR_INVALID_OPCODE | VECTOR_GENERAL_PROTECTION if sysenter(vcpu, frame) => {}
        VECTOR_GENERAL_PROTECTION if frame.error_code & (GP_IDT | GP_EXTERNAL) == GP_IDT => software_interrupt(vcpu, frame),
        VECTOR_GENERAL_PROTECTION if frame.error_code == 0 && emulate::port_io(vcpu, frame) => {}
        VECTOR_GENERAL_PROTECTION if emulate::privileged(vcpu, frame) => {}
        VECTOR_GENERAL_PROTECTION if frame.error_code == 0 && memory_operand_fault(vcpu, frame) => {}
        VECTOR_PAGE_FAULT => {
            let cr2 = x86_64::registers::control::Cr2::read_raw();
            if ptwr::page_fault(vcpu, frame, cr2) || far_return_refused_by_smap(vcpu, frame, cr2) {
                return;
            }
            shared::with_vcpu_info(vcpu, |info| info.arch.cr2 = cr2);
            let in_kernel = vcpu.ctx.lock().in_kernel;
            // The hardware always sees CPL 3: report the guest's own mode instead.
            let error = if in_kernel { frame.error_code & !PF_USER } else { frame.error_code | PF_USER };
            bounce(vcpu, frame, vector, Some(error));
        }
        _ => {
            let error = has_error_code(vector).then_some(frame.error_code);
            bounce(vcpu, frame, vector, error);
        }
    }
}

/// Delivers a page fault at `address` that the hypervisor met while carrying out an
/// instruction for the guest (rip still at it): cr2 and an error code of a not-present
/// access, a write or a read, from the guest's mode (as Xen's emulator reports one).
pub fn page_fault(vcpu: &Vcpu, frame: &mut TrapFrame, address: u64, write: bool) {
    shared::with_vcpu_info(vcpu, |info| info.arch.cr2 = address);
    let user = if vcpu.ctx.lock().in_kernel { 0 } else { PF_USER };
    bounce(vcpu, frame, VECTOR_PAGE_FAULT, Some(user | if write { PF_WRITE } else { 0 }));
}

/// A #GP that the hardware says a software interrupt raised (error code with the IDT bit,
/// not external): the instruction at rip is decoded rather than the error code trusted
/// (QEMU's TCG reports vector `2n` for a faulting `int n`), as Xen's
/// `pv_emulate_sw_interrupt` does. `int n` the guest's trap table allows from its mode
/// (DPL 1-3 from the kernel, 3 from user mode: [`insn::permit_softint`]) is delivered as
/// vector n with rip after the instruction, prefixes included; otherwise the guest gets
/// #GP with the architectural error code (n*8+2) at the instruction. `int3`, `into` and
/// `int1` reach their vectors whatever their DPL (the IDT's gates for 3 and 4 are DPL 3, so
/// a guest DPL could not be enforced for them anyway, as in Xen); they only come here from
/// a virtualizer that raised #GP for them. Anything else (the bytes changed under the
/// fault, or cannot be read) gets the #GP as the hardware raised it.
fn software_interrupt(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let decoded = code_mode(vcpu, frame.cs as u16).and_then(|(mode, base)| {
        let mut bytes = [0u8; insn::MAX_LENGTH];
        let readable = read_code(base.wrapping_add(frame.rip), &mut bytes);
        insn::decode(&bytes[..readable], mode)
    });
    let Some(insn::Decoded { insn: insn::Insn::SoftInt(soft), len }) = decoded else {
        bounce(vcpu, frame, VECTOR_GENERAL_PROTECTION, Some(frame.error_code));
        return;
    };
    let vector = soft.vector();
    let allowed = match soft {
        insn::SoftInt::Int(v) if v != VECTOR_BREAKPOINT && v != VECTOR_OVERFLOW => {
            let ctx = vcpu.ctx.lock();
            ctx.trap(v).is_some_and(|t| insn::permit_softint(t.flags & TI_DPL_MASK, ctx.in_kernel))
        }
        _ => true,
    };
    if allowed {
        frame.rip = frame.rip.wrapping_add(u64::from(len));
        software_trap(vcpu, frame, vector);
    } else {
        bounce(vcpu, frame, VECTOR_GENERAL_PROTECTION, Some(insn::idt_error_code(vector)));
    }
}

/// A #GP(0) from 64-bit code, decided again from the instruction at rip where the
/// hardware's error code may not be what a real processor gives (QEMU's TCG raises #GP for
/// every non-canonical address, and reads `rex64 lcall`'s far pointer as m16:64 even on a
/// processor that calls itself AMD); true when it delivered the fault itself:
/// - an ordinary instruction whose memory operand goes through SS (a base of rsp or rbp,
///   no FS/GS override) to a non-canonical address raises #SS(0), as the processor does
///   (XTF's memop-seg);
/// - `call far`/`jmp far` through memory whose selector (where this vendor's processor
///   reads it) names an LDT entry past the LDT's limit, or a GDT entry past the GDT's,
///   raises #GP(selector) (XTF's xsa-298: a gate in a guest page at LDT offset 0x1000
///   with no LDT set must not be used; the processor refuses it with its selector).
///
/// Anything it does not decode, or cannot read, keeps the hardware's #GP(0).
fn memory_operand_fault(vcpu: &Vcpu, frame: &mut TrapFrame) -> bool {
    let Some((insn::CodeMode::Long, base)) = code_mode(vcpu, frame.cs as u16) else {
        return false;
    };
    let mut bytes = [0u8; insn::MAX_LENGTH];
    let readable = read_code(base.wrapping_add(frame.rip), &mut bytes);
    let Some(access) = insn::memory_access(&bytes[..readable]) else {
        return false;
    };
    if access.operand.rip_relative {
        return false;
    }
    let f = &*frame;
    let registers = [f.rax, f.rcx, f.rdx, f.rbx, f.rsp, f.rbp, f.rsi, f.rdi, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
    let address = access.operand.effective_address(|n| registers[usize::from(n & 15)]);
    if access.operand.segment == insn::Segment::Ss && !insn::canonical(address) {
        bounce(vcpu, frame, VECTOR_STACK_FAULT, Some(0));
        return true;
    }
    let Some(far) = access.far else {
        return false;
    };
    if access.operand.segment != insn::Segment::Ds || !insn::canonical(address) {
        return false;
    }
    let (_, vendor_ebx, _, _) = emulate::cpuid_for_policy(0, 0);
    let intel = vendor_ebx == u32::from_le_bytes(*b"Genu");
    let Ok(selector) = uaccess::read_value::<u16>(address.wrapping_add(far.offset_bytes(intel))) else {
        return false;
    };
    let index = u64::from(selector >> 3);
    let past_limit = if selector & 4 != 0 {
        descriptors::lookup(vcpu, selector).is_none()
    } else {
        index * 8 + 7 > u64::from(x86_64::instructions::tables::sgdt().limit)
    };
    if selector & !3 == 0 || !past_limit {
        return false;
    }
    bounce(vcpu, frame, VECTOR_GENERAL_PROTECTION, Some(u64::from(selector & !3)));
    true
}

/// A page fault that only QEMU's TCG raises: a far return (`lret`) from guest code pops
/// its stack with supervisor accesses there, which SMAP refuses on the guest's (user)
/// pages; a processor pops it as the CPL-3 code it is. Told apart by its error code (a
/// protection fault of a supervisor data access at a guest address: guest code runs at
/// CPL 3, whose only supervisor accesses are to the descriptor tables, in the
/// hypervisor's part) and the instruction at rip. The return is carried out as the
/// processor would, to the same privilege: offset and selector popped (slots of the
/// instruction's operand size, then its immediate released), the selector a present code
/// segment of the guest (RPL 3; the guest's descriptors all have DPL 3) and the offset
/// canonical for 64-bit code (32-bit code takes its low half). Anything else keeps the
/// page fault. True when it returned.
fn far_return_refused_by_smap(vcpu: &Vcpu, frame: &mut TrapFrame, cr2: u64) -> bool {
    const PF_PRESENT: u64 = 1 << 0;
    const PF_FETCH: u64 = 1 << 4;
    if frame.error_code & (PF_PRESENT | PF_USER | PF_FETCH) != PF_PRESENT || uaccess::check_range(cr2, 1).is_err() {
        return false;
    }
    let Some((mode, base)) = code_mode(vcpu, frame.cs as u16) else {
        return false;
    };
    let mut bytes = [0u8; insn::MAX_LENGTH];
    let readable = read_code(base.wrapping_add(frame.rip), &mut bytes);
    let Some(ret) = insn::far_return(&bytes[..readable], mode) else {
        return false;
    };
    let slot = u64::from(ret.slot_bytes);
    let mut offset = [0u8; 8];
    let mut selector = [0u8; 2];
    if uaccess::read(frame.rsp, &mut offset[..slot as usize]).is_err()
        || uaccess::read(frame.rsp.wrapping_add(slot), &mut selector).is_err()
    {
        return false;
    }
    let (offset, selector) = (u64::from_le_bytes(offset), u16::from_le_bytes(selector));
    if selector & 3 != 3 {
        return false;
    }
    let Some((target_mode, _)) = code_mode(vcpu, selector) else {
        return false;
    };
    let rip = if target_mode == insn::CodeMode::Long { offset } else { offset & 0xffff_ffff };
    if !insn::canonical(rip) {
        return false;
    }
    frame.rip = rip;
    frame.cs = u64::from(selector);
    frame.rsp = frame.rsp.wrapping_add(2 * slot + u64::from(ret.release));
    true
}

/// The code mode and base of the guest's code selector `cs`: the flat ones, or the GDT or
/// LDT descriptor it names; `None` if that is no present code segment.
pub fn code_mode(vcpu: &Vcpu, cs: u16) -> Option<(insn::CodeMode, u64)> {
    match cs {
        gdt::GUEST_CS64 => Some((insn::CodeMode::Long, 0)),
        gdt::GUEST_CS32 => Some((insn::CodeMode::Compat32, 0)),
        _ => {
            let raw = descriptors::lookup(vcpu, cs)?;
            Some((hypervisor::descriptor::code_mode(raw)?, hypervisor::descriptor::base(raw)))
        }
    }
}

/// Reads up to `bytes.len()` bytes of guest code at `at`, stopping at the first page it
/// cannot read; returns how many it read.
pub fn read_code(at: u64, bytes: &mut [u8]) -> usize {
    let in_first_page = (4096 - (at & 0xfff) as usize).min(bytes.len());
    if uaccess::read(at, &mut bytes[..in_first_page]).is_err() {
        return 0;
    }
    if in_first_page < bytes.len() && uaccess::read(at.wrapping_add(in_first_page as u64), &mut bytes[in_first_page..]).is_err() {
        return in_first_page;
    }
    bytes.len()
}

/// Delivers a software interrupt (or trap-like exception) of `vector`, rip already past
/// the instruction: no error code, and no "fault in its own handler" check (the return
/// address may well be a handler's first byte).
fn software_trap(vcpu: &Vcpu, frame: &mut TrapFrame, vector: u8) {
    let Some(trap) = vcpu.ctx.lock().trap(vector).copied() else {
        crash(vcpu, frame, format_args!("software interrupt {vector} with no handler"));
        return;
    };
    vcpu.domain.counters.exceptions_bounced.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    deliver(vcpu, frame, trap.address, None, trap.flags & TI_MASK_EVENTS != 0);
}

/// Delivers `vector` to the guest's registered handler.
pub fn bounce(vcpu: &Vcpu, frame: &mut TrapFrame, vector: u8, error: Option<u64>) {
    let Some(trap) = vcpu.ctx.lock().trap(vector).copied() else {
        crash(vcpu, frame, format_args!("exception {vector} (error {:#x}) with no handler", error.unwrap_or(0)));
        return;
    };
    if vector != VECTOR_BREAKPOINT && frame.rip == trap.address {
        crash(vcpu, frame, format_args!("exception {vector} in its own handler"));
        return;
    }
    vcpu.domain.counters.exceptions_bounced.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    deliver(vcpu, frame, trap.address, error, trap.flags & TI_MASK_EVENTS != 0);
}

/// What a bounce frame holds between r11 and rip.
enum Extra {
    None,
    ErrorCode(u64),
    /// The failsafe callback's ds, es, fs and gs.
    Segments([u16; 4]),
}

/// Builds the bounce frame and enters `handler` in guest kernel mode.
pub fn deliver(vcpu: &Vcpu, frame: &mut TrapFrame, handler: u64, error: Option<u64>, mask_events: bool) {
    deliver_frame(vcpu, frame, handler, error.map_or(Extra::None, Extra::ErrorCode), mask_events);
}

fn deliver_frame(vcpu: &Vcpu, frame: &mut TrapFrame, handler: u64, extra: Extra, mask_events: bool) {
    let mut ctx = vcpu.ctx.lock();
    if ctx.delivering {
        drop(ctx);
        crash(vcpu, frame, format_args!("fault while delivering a fault"));
        return;
    }
    let was_kernel = ctx.in_kernel;
    let stack = if was_kernel {
        frame.rsp
    } else {
        if ctx.kernel_sp == 0 {
            drop(ctx);
            crash(vcpu, frame, format_args!("bounce from user mode with no kernel stack (stack_switch)"));
            return;
        }
        switch_to_kernel_mode(&mut ctx);
        ctx.kernel_sp
    };
    if !was_kernel && vcpu.runstate_stale.load(core::sync::atomic::Ordering::Acquire) {
        // The runstate area missed an update in user mode: its kernel tables are loaded now.
        drop(ctx);
        crate::pv::vcpuop::update_runstate_area(vcpu, true);
        ctx = vcpu.ctx.lock();
    }
    let upcall_mask = shared::with_vcpu_info(vcpu, |info| info.evtchn_upcall_mask) as u64;
    // The frame shows the virtual IF (the inverse of the upcall mask) and, with the
    // architectural IOPL assist, the virtual IOPL (as Xen's bounce frames).
    let virtual_iopl = if vcpu.domain.vm_assist(VmAssistType::ArchitecturalIopl) { u64::from(ctx.iopl) << 12 } else { 0 };
    let guest_rflags = (frame.rflags & !(RFLAGS_IF | RFLAGS_IOPL)) | virtual_iopl | if upcall_mask == 0 { RFLAGS_IF } else { 0 };
    let cs = if was_kernel { frame.cs & !3 } else { frame.cs } | (upcall_mask << 32);
    let mut words = arrayvec::ArrayVec::<u64, 11>::new();
    words.push(frame.rcx);
    words.push(frame.r11);
    match extra {
        Extra::None => {}
        Extra::ErrorCode(error) => words.push(error),
        Extra::Segments(selectors) => words.extend(selectors.map(u64::from)),
    }
    words.extend([frame.rip, cs, guest_rflags, frame.rsp, frame.ss]);
    let sp = (stack & !15) - (words.len() as u64) * 8;
    let mut frame_bytes = [0u8; 11 * 8];
    for (word, bytes) in words.iter().zip(frame_bytes.chunks_exact_mut(8)) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    let bytes = &frame_bytes[..words.len() * 8];
    ctx.delivering = true;
    drop(ctx);
    let written = uaccess::write(sp, bytes);
    vcpu.ctx.lock().delivering = false;
    if written.is_err() {
        crash(vcpu, frame, format_args!("cannot write an exception frame at {sp:#x}"));
        return;
    }
    if mask_events {
        shared::with_vcpu_info(vcpu, |info| info.evtchn_upcall_mask = 1);
    }
    frame.rip = handler;
    frame.cs = FLAT_KERNEL_CS64 as u64;
    frame.ss = FLAT_KERNEL_SS64 as u64;
    frame.rsp = sp;
    frame.rflags = (frame.rflags & !(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM | RFLAGS_AC)) | RFLAGS_IF;
}

/// Switches a vCPU from guest user to guest kernel mode on this CPU.
fn switch_to_kernel_mode(ctx: &mut GuestContext) {
    ctx.gs_base_user = KernelGsBase::read().as_u64();
    KernelGsBase::write(VirtAddr::new_truncate(ctx.gs_base_kernel));
    ctx.in_kernel = true;
    if let Some(l4) = ctx.kernel_l4() {
        crate::tlb::load_guest_tables(l4);
    }
}

/// Switches a vCPU from guest kernel to guest user mode on this CPU.
fn switch_to_user_mode(ctx: &mut GuestContext) {
    ctx.gs_base_kernel = KernelGsBase::read().as_u64();
    KernelGsBase::write(VirtAddr::new_truncate(ctx.gs_base_user));
    ctx.in_kernel = false;
    if let Some(l4) = ctx.user_l4() {
        crate::tlb::load_guest_tables(l4);
    }
}

/// The `iret` hypercall: returns from a bounce frame the guest left on its stack,
/// {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}, to guest user mode when cs has RPL 3.
/// With the architectural IOPL assist the frame's IOPL becomes the virtual IOPL (the real
/// one stays 0). A frame the `iretq` could not load goes to the failsafe callback instead,
/// as the fault of that `iretq` would.
pub fn iret(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let Ok(saved) = uaccess::read_value::<abi::arch_x86::IretContext>(frame.rsp) else {
        crash(vcpu, frame, format_args!("iret frame at {:#x} unreadable", frame.rsp));
        return;
    };
    {
        let mut ctx = vcpu.ctx.lock();
        if vcpu.domain.vm_assist(VmAssistType::ArchitecturalIopl) {
            ctx.iopl = ((saved.rflags & RFLAGS_IOPL) >> 12) as u8;
        }
        if saved.cs & 3 == 3 && ctx.in_kernel {
            if ctx.user_base.is_none() {
                drop(ctx);
                crash(vcpu, frame, format_args!("iret to user mode with no user page tables"));
                return;
            }
            switch_to_user_mode(&mut ctx);
        }
    }
    frame.rax = saved.rax;
    if saved.flags & VGCF_IN_SYSCALL == 0 {
        frame.r11 = saved.r11;
        frame.rcx = saved.rcx;
    }
    frame.rip = saved.rip;
    frame.cs = (saved.cs & 0xffff) | 3;
    frame.rflags = (saved.rflags & !(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF;
    frame.rsp = saved.rsp;
    frame.ss = (saved.ss & 0xffff) | 3;
    // The guest's virtual interrupt flag is the inverse of its upcall mask.
    let unmask = saved.rflags & RFLAGS_IF != 0;
    shared::with_vcpu_info(vcpu, |info| info.evtchn_upcall_mask = u8::from(!unmask));
    if let Err(bad) = guest_return::check(frame.rip, frame.cs as u16, frame.ss as u16, |selector| descriptors::lookup(vcpu, selector)) {
        failsafe(vcpu, frame, format_args!("iret to an unloadable frame ({bad:?})"));
    }
}

/// The exit path's `iretq` faulted on `failed` (`frame` is that fault, with the guest's
/// registers): the guest gets its failsafe callback as if it had been interrupted at the
/// frame it could not return to, or dies. False when no vCPU runs here (not a guest's).
pub fn exit_fault(frame: &mut TrapFrame, failed: FailedExit) -> bool {
    let Some(vcpu) = crate::sched::current() else { return false };
    let (vector, error) = (frame.vector, frame.error_code);
    frame.rip = failed.rip;
    frame.cs = failed.cs;
    frame.rflags = failed.rflags;
    frame.rsp = failed.rsp;
    frame.ss = failed.ss;
    failsafe(vcpu, frame, format_args!("return to the guest faulted (vector {vector}, error {error:#x})"));
    true
}

/// The data selectors the vCPU had when it was switched in that would not load again
/// (their descriptors changed meanwhile): its failsafe callback, with those selectors in
/// the frame, as Xen's `load_segments` does (or its death without one).
pub fn selectors_failsafe(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let Some(selectors) = vcpu.ctx.lock().bad_selectors.take() else { return };
    failsafe_with(vcpu, frame, selectors, format_args!("data selectors {selectors:x?} no longer load"));
}

/// Delivers the failsafe callback for the state in `frame`, which cannot be resumed; a
/// guest without one is killed. Logged at debug level only: a guest may do this at will.
fn failsafe(vcpu: &Vcpu, frame: &mut TrapFrame, why: core::fmt::Arguments) {
    failsafe_with(vcpu, frame, gdt::data_selectors(), why);
}

fn failsafe_with(vcpu: &Vcpu, frame: &mut TrapFrame, selectors: [u16; 4], why: core::fmt::Arguments) {
    let (callback, mask) = {
        let ctx = vcpu.ctx.lock();
        (ctx.failsafe_callback, ctx.failsafe_masks_events)
    };
    if callback == 0 {
        crash(vcpu, frame, format_args!("{why} with no failsafe callback (cs {:#x} ss {:#x})", frame.cs, frame.ss));
        return;
    }
    debug!(
        "domain {} vcpu {}: {why}: failsafe callback for rip {:#x} cs {:#x} ss {:#x}",
        vcpu.domain.id.0, vcpu.id, frame.rip, frame.cs, frame.ss
    );
    vcpu.domain.counters.exceptions_bounced.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    deliver_frame(vcpu, frame, callback, Extra::Segments(selectors), mask);
}

/// A `syscall` from guest user mode goes to the guest kernel's syscall callback.
pub fn user_syscall(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let (callback, mask) = {
        let ctx = vcpu.ctx.lock();
        (ctx.syscall_callback, ctx.syscall_masks_events)
    };
    syscall_callback(vcpu, frame, callback, mask);
}

/// A `syscall` from 32-bit guest code, in either guest mode, goes to the syscall32
/// callback (Xen's `cstar_enter`).
pub fn syscall32(vcpu: &Vcpu, frame: &mut TrapFrame) {
    let (callback, mask) = {
        let ctx = vcpu.ctx.lock();
        (ctx.syscall32_callback, ctx.syscall32_masks_events)
    };
    syscall_callback(vcpu, frame, callback, mask);
}

/// Enters a syscall callback with DF clear, or, without one, raises #UD at the `syscall`
/// in the guest kernel, as hardware without SYSCALL would.
fn syscall_callback(vcpu: &Vcpu, frame: &mut TrapFrame, callback: u64, mask: bool) {
    if callback == 0 {
        frame.rip = frame.rip.wrapping_sub(2);
        bounce(vcpu, frame, VECTOR_INVALID_OPCODE, None);
        return;
    }
    deliver(vcpu, frame, callback, None, mask);
    frame.rflags &= !RFLAGS_DF;
}

/// A #GP(0) or #UD at a `sysenter` (SYSENTER_CS is 0, see `arch::entry`) goes to the
/// sysenter callback, as after the instruction, when the guest registered one; otherwise
/// the exception is delivered as it is. Xen's frame holds rip 0 and rsp 0 (`sysenter`
/// saves neither); this one holds the guest's, which a callback ignores either way.
fn sysenter(vcpu: &Vcpu, frame: &mut TrapFrame) -> bool {
    const SYSENTER: [u8; 2] = [0x0f, 0x34];
    if frame.vector == u64::from(VECTOR_GENERAL_PROTECTION) && frame.error_code != 0 {
        return false;
    }
    let (callback, mask) = {
        let ctx = vcpu.ctx.lock();
        (ctx.sysenter_callback, ctx.sysenter_masks_events)
    };
    let mut bytes = [0u8; 2];
    if callback == 0 || uaccess::read(frame.rip, &mut bytes).is_err() || bytes != SYSENTER {
        return false;
    }
    frame.rip += 2;
    deliver(vcpu, frame, callback, None, mask);
    true
}
