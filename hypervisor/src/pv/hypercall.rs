//! Hypercall dispatch: decode the registers ([`hypervisor::hypercall::decode`]), run the
//! handler, put the result (0, a value, or a negative Xen errno) in the guest's rax.
//!
//! Handlers take validated, typed arguments; every guest pointer goes through `uaccess`,
//! which refuses hypervisor addresses and survives unmapped ones. A handler that finds the
//! guest beyond help (an unreadable iret frame, say) crashes the domain instead of returning.

use abi::arch_x86::TrapInfo;
use abi::callback::CallbackRegister;
use abi::errno::Errno;
use abi::hypercall::{CallbackOp, CallbackType, Hypercall, MulticallEntry, SchedOp, XenVersionOp};
use abi::sched::SchedShutdown;
use hypervisor::hypercall::{decode, GuestVa, Request};
use x86_64::registers::model_specific::{FsBase, KernelGsBase};
use x86_64::VirtAddr;

use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::{Ending, Vcpu};
use crate::pv::{console, control, descriptors, events, memop, mmu, traps, vcpuop};

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
    let result = handle(vcpu, frame, request);
    frame.rax = match result {
        Ok(value) => value,
        Err(errno) => errno.as_return() as u64,
    };
}

/// Runs one decoded request (also for each multicall entry).
fn handle(vcpu: &Vcpu, frame: &mut TrapFrame, request: Request) -> HcResult {
    match request {
        Request::ConsoleWrite { buffer, count } => console_write(vcpu, buffer, count),
        Request::ConsoleRead { .. } => Ok(0),
        Request::XenVersion { cmd, arg } => xen_version(cmd, arg),
        Request::SchedOp { cmd, arg } => sched_op(vcpu, cmd, arg),
        Request::SetTrapTable { table } => set_trap_table(vcpu, table),
        Request::StackSwitch { ss, sp } => stack_switch(vcpu, ss, sp),
        Request::SetGdt { frames, entries } => descriptors::set_gdt(vcpu, frames, entries),
        Request::UpdateDescriptor { maddr, descriptor } => descriptors::update_descriptor(vcpu, maddr, descriptor),
        Request::SetCallbacks { event, failsafe, syscall } => set_callbacks(vcpu, event, failsafe, syscall),
        Request::CallbackOp { cmd, arg } => callback_op(vcpu, cmd, arg),
        Request::SetSegmentBase { which, base } => set_segment_base(vcpu, which, base),
        Request::FpuTaskswitch { .. } => Ok(0),
        Request::VmAssist { cmd: 0 | 1, kind: 0 | 1 | 3 } => Ok(0),
        Request::VmAssist { .. } => Err(Errno::Einval),
        Request::VcpuOp { cmd, vcpu: id, arg } => vcpuop::vcpu_op(vcpu, cmd, id, arg),
        Request::MmuUpdate { requests, count, done, domid } => mmu::mmu_update(vcpu, frame, requests, count, done, domid),
        Request::MmuextOp { ops, count, done, domid } => mmu::mmuext_op(vcpu, frame, ops, count, done, domid),
        Request::UpdateVaMapping { va, pte, flags } => mmu::update_va_mapping(vcpu, va, pte, flags),
        Request::MemoryOp { cmd, start_extent, arg } => memop::memory_op(vcpu, cmd, start_extent, arg),
        Request::Multicall { calls, count } => multicall(vcpu, frame, calls, count),
        // Timers, events, vCPU operations and the control interface come with the scheduler.
        Request::Domctl { arg } => control::control(vcpu, arg),
        Request::SetTimerOp { deadline_ns } => {
            events::set_timer(vcpu, deadline_ns);
            Ok(0)
        }
        Request::EventChannelOp { cmd, arg } => events::event_channel_op(vcpu, cmd, arg),
        Request::Iret => Err(Errno::Einval), // only as a direct hypercall, never in a multicall
    }
}

fn console_write(vcpu: &Vcpu, buffer: GuestVa, count: u64) -> HcResult {
    let mut chunk = [0u8; 256];
    let mut done = 0;
    while done < count {
        let n = (count - done).min(chunk.len() as u64) as usize;
        uaccess::read(buffer.0 + done, &mut chunk[..n]).map_err(efault)?;
        console::write(&vcpu.domain, &chunk[..n]);
        done += n as u64;
    }
    Ok(count)
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
        XenVersionOp::CompileInfo => put(arg, &[0u8; 4 * 64]),
        XenVersionOp::PlatformParameters => put(arg, &abi::arch_x86::HYPERVISOR_VIRT_START.to_le_bytes()),
        XenVersionOp::GetFeatures => {
            let info: abi::version::XenFeatureInfo = uaccess::read_value(arg.0).map_err(efault)?;
            // No optional features are offered yet (submap 0 and up: all zero).
            let reply = abi::version::XenFeatureInfo { submap: 0, ..info };
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
            vcpu.yield_requested.store(true, core::sync::atomic::Ordering::Relaxed);
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
            vcpu.domain.shutdown(Ending::from_reason(request.reason));
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

fn set_callbacks(vcpu: &Vcpu, event: u64, failsafe: u64, syscall: u64) -> HcResult {
    for address in [event, failsafe, syscall] {
        if address != 0 {
            guest_code(address)?;
        }
    }
    let mut ctx = vcpu.ctx.lock();
    ctx.event_callback = event;
    ctx.failsafe_callback = failsafe;
    ctx.syscall_callback = syscall;
    Ok(0)
}

fn callback_op(vcpu: &Vcpu, cmd: CallbackOp, arg: GuestVa) -> HcResult {
    if cmd != CallbackOp::Register {
        return Err(Errno::Enosys);
    }
    let request: CallbackRegister = uaccess::read_value(arg.0).map_err(efault)?;
    let address = guest_code(request.address)?;
    let mut ctx = vcpu.ctx.lock();
    match CallbackType::from_raw(request.kind) {
        Some(CallbackType::Event) => ctx.event_callback = address,
        Some(CallbackType::Failsafe) => ctx.failsafe_callback = address,
        Some(CallbackType::Syscall) => {
            ctx.syscall_callback = address;
            ctx.syscall_masks_events = request.flags & abi::callback::CALLBACKF_MASK_EVENTS != 0;
        }
        _ => return Err(Errno::Einval),
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

/// Runs a batch of hypercalls, storing each result in its entry.
fn multicall(vcpu: &Vcpu, frame: &mut TrapFrame, calls: GuestVa, count: u64) -> HcResult {
    for i in 0..count {
        let at = calls.offset::<MulticallEntry>(i).ok_or(Errno::Efault)?;
        let mut entry: MulticallEntry = uaccess::read_value(at.0).map_err(efault)?;
        let nested = matches!(Hypercall::from_number(entry.op), Some(Hypercall::Multicall | Hypercall::Iret));
        let args = [entry.args[0], entry.args[1], entry.args[2], entry.args[3], entry.args[4]];
        let result = match decode(entry.op, args) {
            Ok(_) if nested => Err(Errno::Einval),
            Ok(request) => handle(vcpu, frame, request),
            Err(e) => Err(e.errno()),
        };
        entry.result = match result {
            Ok(value) => value,
            Err(errno) => errno.as_return() as u64,
        };
        uaccess::write_value(at.0, &entry).map_err(efault)?;
        if vcpu.domain.state() != crate::domain::LifeState::Running {
            break;
        }
    }
    Ok(0)
}
