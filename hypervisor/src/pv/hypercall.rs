//! Hypercall dispatch: decode the registers ([`hypervisor::hypercall::decode`]), run the
//! handler, put the result (0, a value, or a negative Xen errno) in the guest's rax.
//!
//! Handlers take validated, typed arguments; every guest pointer goes through `uaccess`,
//! which refuses hypervisor addresses and survives unmapped ones. A handler that finds the
//! guest beyond help (an unreadable iret frame, say) crashes the domain instead of returning.
//!
//! Handlers of guest-sized work (`mmu_update`, `mmuext_op`, `memory_op`'s reservation
//! changes, console writes, multicalls) stop after a bounded amount of it when
//! `crate::preempt` says so, and return a continuation ([`Stop`], see
//! [`hypervisor::continuation`] for the contract): the dispatcher rewrites the guest's
//! registers into the rest of the call and moves rip back over its `syscall`, and a
//! multicall rewrites the stopped entry in guest memory and continues from it. The guest
//! never sees a continuation as a result. Every other handler does a bounded amount of
//! work per call (the trap table: 256 entries; `set_gdt`: 14 frames; event channels, vCPU
//! and scheduler operations: one object each).

use abi::arch_x86::TrapInfo;
use abi::callback::{CallbackRegister, CallbackUnregister};
use abi::errno::Errno;
use abi::hypercall::{CallbackOp, CallbackType, Hypercall, MulticallEntry, SchedOp, XenVersionOp};
use abi::sched::SchedShutdown;
use hypervisor::continuation::{self, Outcome, Stop};
use hypervisor::hypercall::{decode, GuestVa, Request};
use x86_64::registers::model_specific::{FsBase, KernelGsBase};
use x86_64::VirtAddr;

use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::{Ending, Vcpu};
use crate::preempt;
use crate::pv::{console, control, descriptors, events, grants, memop, mmu, physdev, traps, vcpuop};

/// What a handler returns: a value for rax, or an errno.
pub type HcResult = Result<u64, Errno>;

/// The most trap-table entries read from one `set_trap_table` call.
const MAX_TRAP_ENTRIES: u64 = 256;

fn efault<E>(_: E) -> Errno {
    Errno::Efault
}

/// Handles the hypercall in `frame` (a guest-kernel `syscall`).
pub fn dispatch(vcpu: &Vcpu, frame: &mut TrapFrame) {
    vcpu.domain.counters.hypercalls.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    preempt::start();
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
    let request = match decode(frame.rax, args) {
        Ok(request) => request,
        Err(e) => {
            frame.rax = e.errno().as_return() as u64;
            return;
        }
    };
    if request == Request::Iret {
        traps::iret(vcpu, frame);
        return;
    }
    match handle(vcpu, frame, request) {
        Ok(value) => frame.rax = value,
        Err(Stop::Failed(errno)) => frame.rax = errno.as_return() as u64,
        Err(Stop::Continue(rest)) => continue_in_guest(frame, &rest),
        Err(Stop::Retry) => continue_in_guest(frame, &request),
    }
}

/// Makes the guest issue `rest` when it next runs: its registers hold the call and rip
/// points back at the 2-byte `syscall` (from a guest kernel, `syscall` is the only way in
/// here, so rip - 2 is that instruction). Only the call's own argument registers are
/// rewritten, as Xen's: the guest may keep values in the others across the call.
fn continue_in_guest(frame: &mut TrapFrame, rest: &Request) {
    let (number, args) = rest.encode();
    frame.rax = number;
    let registers = [&mut frame.rdi, &mut frame.rsi, &mut frame.rdx, &mut frame.r10, &mut frame.r8];
    for (register, value) in registers.into_iter().zip(args).take(rest.arg_count()) {
        *register = value;
    }
    frame.rip = frame.rip.wrapping_sub(2);
}

/// Runs one decoded request (also for each multicall entry).
fn handle(vcpu: &Vcpu, frame: &mut TrapFrame, request: Request) -> Outcome {
    let result = match request {
        Request::ConsoleWrite { buffer, count } => return console_write(vcpu, request, buffer, count),
        Request::MmuUpdate { requests, count, done, domid, preempted } => {
            return mmu::mmu_update(vcpu, request, requests, count, done, domid, preempted)
        }
        Request::MmuextOp { ops, count, done, domid, preempted } => {
            return mmu::mmuext_op(vcpu, request, ops, count, done, domid, preempted)
        }
        Request::MemoryOp { cmd, start_extent, arg } => return memop::memory_op(vcpu, request, cmd, start_extent, arg),
        Request::Multicall { calls, count } => return multicall(vcpu, frame, request, calls, count),
        Request::UpdateVaMapping { va, pte, flags } => return mmu::update_va_mapping(vcpu, va, pte, flags),
        Request::ConsoleRead { buffer, count } => console::read_input(&vcpu.domain, buffer.0, count),
        Request::XenVersion { cmd, arg } => xen_version(cmd, arg),
        Request::SchedOp { cmd, arg } => sched_op(vcpu, cmd, arg),
        Request::SetTrapTable { table } => set_trap_table(vcpu, table),
        Request::StackSwitch { ss, sp } => stack_switch(vcpu, ss, sp),
        Request::SetGdt { frames, entries } => descriptors::set_gdt(vcpu, frames, entries),
        Request::UpdateDescriptor { maddr, descriptor } => descriptors::update_descriptor(vcpu, maddr, descriptor),
        Request::SetCallbacks { event, failsafe, syscall } => set_callbacks(vcpu, event, failsafe, syscall),
        Request::CallbackOp { cmd, arg } => callback_op(vcpu, cmd, arg),
        Request::SetSegmentBase { which, base } => set_segment_base(vcpu, which, base),
        Request::FpuTaskswitch { set } => {
            crate::pv::fpu::taskswitch(vcpu, set);
            Ok(0)
        }
        Request::SetDebugreg { reg, value } => crate::pv::debugreg::set(vcpu, reg, value).map(|()| 0).map_err(|e| e.errno()),
        Request::GetDebugreg { reg } => crate::pv::debugreg::get(vcpu, reg).map_err(|e| e.errno()),
        Request::VmAssist { cmd, kind } => physdev::vm_assist(vcpu, cmd, kind),
        Request::PhysdevOp { cmd, arg } => physdev::physdev_op(vcpu, cmd, arg),
        Request::PhysdevOpCompat { arg } => physdev::physdev_op_compat(vcpu, arg),
        Request::VcpuOp { cmd, vcpu: id, arg } => return vcpuop::vcpu_op(vcpu, cmd, id, arg),
        // Timers, events, vCPU operations and the control interface come with the scheduler.
        Request::Domctl { arg } => return control::control(vcpu, arg),
        Request::GrantTableOp { op, opaque, uop, count } => return grants::grant_table_op(vcpu, request, op, opaque, uop, count),
        Request::SetTimerOp { deadline_ns } => {
            events::set_timer(vcpu, deadline_ns);
            Ok(0)
        }
        Request::EventChannelOp { cmd, arg } if events::is_reset(cmd) => return events::reset(vcpu, arg),
        Request::EventChannelOp { cmd, arg } => events::event_channel_op(vcpu, cmd, arg),
        Request::Iret => Err(Errno::Einval), // direct: `dispatch`; in a multicall: `multicall_iret`
    };
    result.map_err(Stop::Failed)
}

/// The continuation of `request` after `progress` units, as the stop of a handler that
/// has done them.
pub fn stopped(request: Request, progress: u64) -> Stop {
    match request.continuation(progress) {
        Some(rest) => Stop::Continue(rest),
        // Unreachable for the calls that stop (they stop only with work left, at addresses
        // they have read); should it happen, the guest learns that the call failed.
        None => Stop::Failed(Errno::Einval),
    }
}

/// The `iret` entry of a multicall at `entry`: its result (best effort, before the mode
/// changes) is the rax of the guest's frame, then the vCPU returns from that frame and the
/// multicall ends with the same value, so that the guest's rax is the frame's.
fn multicall_iret(vcpu: &Vcpu, frame: &mut TrapFrame, entry: GuestVa) -> u64 {
    if let Ok(saved) = uaccess::read_value::<abi::arch_x86::IretContext>(frame.rsp) {
        let result = entry.offset::<u8>(core::mem::offset_of!(MulticallEntry, result) as u64);
        if let Some(at) = result {
            let _ = uaccess::write_value(at.0, &saved.rax);
        }
    }
    traps::iret(vcpu, frame);
    frame.rax
}

/// Writes guest bytes to the console, in chunks; stops between chunks when the CPU should
/// be let go, and when the console takes no more now (the continuation resumes at the
/// first byte not taken; the vCPU then blocks until there is room, see
/// `console::wait_for_room`). Returns 0, as Xen's does.
fn console_write(vcpu: &Vcpu, request: Request, buffer: GuestVa, count: u64) -> Outcome {
    let mut chunk = [0u8; 256];
    let mut done = 0;
    // Running again: whatever it waited for, it writes now.
    vcpu.console_wait.store(false, core::sync::atomic::Ordering::SeqCst);
    while done < count {
        if done > 0 && preempt::should_stop() {
            return Err(stopped(request, done));
        }
        let n = (count - done).min(chunk.len() as u64) as usize;
        let at = buffer.offset::<u8>(done).ok_or(Errno::Efault)?;
        uaccess::read(at.0, &mut chunk[..n]).map_err(efault)?;
        let taken = console::write(&vcpu.domain, &chunk[..n]);
        done += taken as u64;
        if taken < n {
            console::wait_for_room(vcpu);
            return Err(stopped(request, done));
        }
    }
    Ok(0)
}

fn xen_version(cmd: XenVersionOp, arg: GuestVa) -> HcResult {
    fn put(arg: GuestVa, bytes: &[u8]) -> HcResult {
        uaccess::write(arg.0, bytes).map_err(efault)?;
        Ok(0)
    }
    fn padded<const N: usize>(text: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        out[..text.len()].copy_from_slice(text);
        out
    }
    match cmd {
        XenVersionOp::Version => Ok((4 << 16) | 17),
        XenVersionOp::Extraversion => put(arg, &padded::<16>(b"-rust")),
        XenVersionOp::Capabilities => put(arg, &padded::<1024>(b"xen-3.0-x86_64")),
        XenVersionOp::Changeset => put(arg, &padded::<64>(b"rust-hypervisor")),
        // Exactly the structure's 144 bytes (writing more overwrote the guest's stack
        // beyond it, as XTF's xsa-122 found): the compiler named, the rest empty.
        XenVersionOp::CompileInfo => {
            let info = abi::version::XenCompileInfo { compiler: padded::<64>(b"rustc"), ..Default::default() };
            uaccess::write_value(arg.0, &info).map_err(efault)?;
            Ok(0)
        }
        XenVersionOp::PlatformParameters => put(arg, &abi::arch_x86::HYPERVISOR_VIRT_START.to_le_bytes()),
        XenVersionOp::GetFeatures => {
            let info: abi::version::XenFeatureInfo = uaccess::read_value(arg.0).map_err(efault)?;
            let reply = abi::version::XenFeatureInfo { submap: hypervisor::features::reported(info.submap_idx), ..info };
            uaccess::write_value(arg.0, &reply).map_err(efault)?;
            Ok(0)
        }
        XenVersionOp::Pagesize => Ok(4096),
        _ => Err(Errno::Enosys),
    }
}

fn sched_op(vcpu: &Vcpu, cmd: SchedOp, arg: GuestVa) -> HcResult {
    match cmd {
        SchedOp::Yield => {
            vcpu.sched.yield_requested.store(true, core::sync::atomic::Ordering::Relaxed);
            Ok(0)
        }
        SchedOp::Block => {
            events::block(vcpu);
            Ok(0)
        }
        SchedOp::Poll => events::poll(vcpu, arg),
        SchedOp::Shutdown => {
            let request: SchedShutdown = uaccess::read_value(arg.0).map_err(efault)?;
            console::flush_partial(&vcpu.domain);
            super::teardown::shutdown(&vcpu.domain, Ending::from_reason(request.reason));
            Ok(0)
        }
        _ => Err(Errno::Enosys),
    }
}

/// Checks that a handler or stack address a guest registers is guest address space.
fn guest_code(address: u64) -> Result<u64, Errno> {
    uaccess::check_range(address, 1).map(|_| address).map_err(|_| Errno::Einval)
}

fn set_trap_table(vcpu: &Vcpu, table: GuestVa) -> HcResult {
    if table.is_null() {
        vcpu.ctx.lock().traps.clear();
        return Ok(0);
    }
    for i in 0..MAX_TRAP_ENTRIES {
        let at = table.offset::<TrapInfo>(i).ok_or(Errno::Efault)?;
        let entry: TrapInfo = uaccess::read_value(at.0).map_err(efault)?;
        if entry.address == 0 {
            return Ok(0);
        }
        guest_code(entry.address)?;
        vcpu.ctx.lock().set_trap(entry)?;
    }
    Ok(0)
}

fn stack_switch(vcpu: &Vcpu, ss: u64, sp: u64) -> HcResult {
    guest_code(sp.saturating_sub(1))?;
    let mut ctx = vcpu.ctx.lock();
    ctx.kernel_ss = ss | 3;
    ctx.kernel_sp = sp;
    Ok(0)
}

/// `set_callbacks`: Xen's three registrations with no flags (so the failsafe and syscall
/// callbacks no longer mask events), all checked before any is stored.
fn set_callbacks(vcpu: &Vcpu, event: u64, failsafe: u64, syscall: u64) -> HcResult {
    for address in [event, failsafe, syscall] {
        guest_code(address)?;
    }
    for (kind, address) in [(CallbackType::Event, event), (CallbackType::Failsafe, failsafe), (CallbackType::Syscall, syscall)] {
        register_callback(vcpu, CallbackRegister { kind: kind.raw(), flags: 0, _pad: 0, address })?;
    }
    Ok(0)
}

/// `callback_op`, after Xen's `register_guest_callback` / `unregister_guest_callback`:
/// every type a 64-bit guest has may be registered (ENOSYS for the others); only the NMI
/// callback may be unregistered (EINVAL for the rest, which a guest cannot do without).
fn callback_op(vcpu: &Vcpu, cmd: CallbackOp, arg: GuestVa) -> HcResult {
    match cmd {
        CallbackOp::Register => register_callback(vcpu, uaccess::read_value(arg.0).map_err(efault)?),
        CallbackOp::Unregister => {
            let request: CallbackUnregister = uaccess::read_value(arg.0).map_err(efault)?;
            match CallbackType::from_raw(request.kind) {
                Some(CallbackType::Nmi) => {
                    vcpu.ctx.lock().nmi_callback = 0;
                    Ok(0)
                }
                Some(CallbackType::Event | CallbackType::Failsafe | CallbackType::Syscall | CallbackType::Syscall32 | CallbackType::Sysenter) => {
                    Err(Errno::Einval)
                }
                _ => Err(Errno::Enosys),
            }
        }
    }
}

/// Stores one callback (`CALLBACKOP_register`); its address must be guest code space.
fn register_callback(vcpu: &Vcpu, request: CallbackRegister) -> HcResult {
    let address = guest_code(request.address)?;
    let masks = request.masks_events();
    let mut ctx = vcpu.ctx.lock();
    match CallbackType::from_raw(request.kind) {
        Some(CallbackType::Event) => ctx.event_callback = address,
        Some(CallbackType::Failsafe) => (ctx.failsafe_callback, ctx.failsafe_masks_events) = (address, masks),
        Some(CallbackType::Syscall) => (ctx.syscall_callback, ctx.syscall_masks_events) = (address, masks),
        Some(CallbackType::Syscall32) => (ctx.syscall32_callback, ctx.syscall32_masks_events) = (address, masks),
        Some(CallbackType::Sysenter) => (ctx.sysenter_callback, ctx.sysenter_masks_events) = (address, masks),
        // Kept for when NMIs reach guests; nothing delivers one yet.
        Some(CallbackType::Nmi) => ctx.nmi_callback = address,
        _ => return Err(Errno::Enosys),
    }
    Ok(0)
}

fn set_segment_base(vcpu: &Vcpu, which: u32, base: u64) -> HcResult {
    let base = VirtAddr::try_new(base).map_err(|_| Errno::Einval)?;
    let mut ctx = vcpu.ctx.lock();
    match which {
        0 => FsBase::write(base),
        1 => {
            ctx.gs_base_kernel = base.as_u64();
            if ctx.in_kernel {
                KernelGsBase::write(base);
            }
        }
        2 => {
            ctx.gs_base_user = base.as_u64();
            if !ctx.in_kernel {
                KernelGsBase::write(base);
            }
        }
        _ => return Err(Errno::Einval),
    }
    Ok(0)
}

/// Runs a batch of hypercalls, storing each result in its entry. Stops between entries
/// when the CPU should be let go (continuing from the next entry); an entry whose call
/// stops part-way is rewritten in guest memory into the rest of that call, and the
/// multicall continues from it. A nested multicall is refused (`EINVAL`); an `iret` entry
/// returns from the guest's frame and ends the batch there, as Xen's does since XSA-213
/// (the entries after it never run, so none runs in the user mode it may return to).
fn multicall(vcpu: &Vcpu, frame: &mut TrapFrame, request: Request, calls: GuestVa, count: u64) -> Outcome {
    for i in 0..count {
        if i > 0 && preempt::should_stop() {
            return Err(stopped(request, i));
        }
        let at = calls.offset::<MulticallEntry>(i).ok_or(Errno::Efault)?;
        let mut entry: MulticallEntry = uaccess::read_value(at.0).map_err(efault)?;
        if Hypercall::from_number(entry.op) == Some(Hypercall::Iret) {
            return Ok(multicall_iret(vcpu, frame, at));
        }
        let nested = Hypercall::from_number(entry.op) == Some(Hypercall::Multicall);
        let args = [entry.args[0], entry.args[1], entry.args[2], entry.args[3], entry.args[4]];
        let result = match decode(entry.op, args) {
            Ok(_) if nested => Err(Stop::Failed(Errno::Einval)),
            Ok(call) => handle(vcpu, frame, call),
            Err(e) => Err(Stop::Failed(e.errno())),
        };
        entry.result = match result {
            Ok(value) => value,
            Err(Stop::Failed(errno)) => errno.as_return() as u64,
            Err(Stop::Continue(rest)) => {
                continuation::resume_entry(&mut entry, &rest);
                uaccess::write_value(at.0, &entry).map_err(efault)?;
                return Err(stopped(request, i));
            }
            // Stopped before changing anything: the entry is issued again as it is.
            Err(Stop::Retry) => return Err(stopped(request, i)),
        };
        uaccess::write_value(at.0, &entry).map_err(efault)?;
        if vcpu.domain.state() != crate::domain::LifeState::Running {
            break;
        }
    }
    Ok(0)
}
