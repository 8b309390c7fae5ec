//! `vcpu_op`, as Xen's `do_vcpu_op` for a 64-bit PV guest: bringing up a domain's
//! secondary vCPUs (initialise from a guest context, then up), taking them down again,
//! asking whether one is up; moving a vCPU's `vcpu_info` into a guest frame and placing a
//! copy of its runstate in guest memory; its single-shot and periodic timers; its runstate
//! and (domain 0 only) the physical CPU under it. Other commands (`send_nmi`, the time
//! area, the `*_phys_area` forms of Xen 4.18) answer `ENOSYS`.
//!
//! A domain has the vCPU ids `0..max_vcpus` its creator gave it (`CreateDomain`, or
//! `vcpus=` on its boot module's line; one by default): every command on another id fails
//! with `ENOENT`, as in Xen. Within that range a vCPU that was never initialised behaves
//! as Xen's (which creates them all at once) does while down: it is not up, its runstate is
//! offline, and the guest may already register its `vcpu_info` and runstate area and set
//! its periodic timer (Linux does so for every possible vCPU at boot); these live in the
//! domain's `VcpuSlot` for the id.
//!
//! A new vCPU starts in guest kernel mode with the registers, page-table base, kernel
//! stack, trap table, callbacks, GDT, segment bases, CR0.TS, the CR4 bits a guest controls,
//! debug registers and (with `VGCF_I387_VALID`) FPU state of its `vcpu_guest_context`, each checked as the corresponding hypercall would check it,
//! or in the FPU's initial state. Its page tables are validated one slice per stay, the
//! call issued again until the walk is done (as Xen continues `VCPUOP_initialise`). It is placed on the CPUs its domain may use (see
//! [`placement`]), and once up it runs with its part of the domain's weight, which the
//! domain's other vCPUs then share with it. Creating one needs heap room
//! ([`crate::domain::vcpu::VCPU_HEAP_BYTES`]); without it the call fails with `ENOMEM`.
//!
//! `register_vcpu_info` (once per vCPU, on itself or on a vCPU that is down, as Xen's
//! `map_vcpu_info`): the 64 bytes must lie 8-aligned inside one frame of the domain's that
//! can take a writable type (not a page table or descriptor frame), which then holds that
//! type for the domain's life (`pv::mmu::hold_for_hypervisor`, dropped by the teardown), so
//! that what the hypervisor writes there can never become a table entry. The old contents
//! are copied over and every event is marked pending in the new place (nothing raised in
//! between is lost; the guest sees a spurious upcall, as with Xen). The runstate area is a
//! guest virtual address, written through `uaccess` on the guest's own tables and only while
//! the vCPU is in guest kernel mode (see `sched`).

use core::sync::atomic::Ordering;

use abi::arch_x86::VcpuGuestContext;
use abi::errno::Errno;
use abi::hypercall::VcpuOp;
use abi::vcpu::{
    Runstate as RunstateKind, VcpuGetPhysid, VcpuRegisterMemoryArea, VcpuRegisterVcpuInfo, VcpuRunstateInfo,
    VcpuSetPeriodicTimer, VcpuSetSingleshotTimer, VCPU_SSHOTTMR_FUTURE,
};
use alloc::sync::Arc;
use hypervisor::hypercall::GuestVa;
use hypervisor::runstate::{Runstate, VcpuInfoPlace};
use mm::addr::Mfn;
use x86_64::VirtAddr;

use crate::arch::gdt::{GUEST_CS64, GUEST_DS};
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::vcpu::{RunState, VCPU_HEAP_BYTES};
use crate::domain::{Domain, Ending, JoinError, Vcpu};
use crate::memory::FrameMapping;
use crate::pv::hypercall::HcResult;
use hypervisor::continuation::{Outcome, Stop};
use crate::pv::{descriptors, events, ldt, mmu, shared};
use crate::{cpus, memory, sched, time};

/// The shortest period of a periodic timer (Xen: one millisecond).
const MIN_PERIOD_NS: u64 = 1_000_000;
/// The longest period of a periodic timer (Xen's `STIME_DELTA_MAX`).
const MAX_PERIOD_NS: u64 = u64::MAX >> 2;

/// `vcpu_op` of `cmd` on vCPU `id`: `initialise` may stop and be issued again (the
/// validation of the new vCPU's page tables runs one slice per stay); the others finish.
pub fn vcpu_op(vcpu: &Vcpu, cmd: VcpuOp, id: u32, arg: GuestVa) -> Outcome {
    if id >= vcpu.domain.max_vcpus {
        return Err(Errno::Enoent.into());
    }
    match cmd {
        VcpuOp::Initialise if vcpu.domain.vcpu(id).is_some() => Err(Errno::Eexist.into()),
        VcpuOp::Initialise => initialise(vcpu, id, arg),
        cmd => other_op(vcpu, cmd, id, arg).map_err(Stop::Failed),
    }
}

/// Every command but `initialise`, on vCPU `id` (below the domain's limit).
fn other_op(vcpu: &Vcpu, cmd: VcpuOp, id: u32, arg: GuestVa) -> HcResult {
    let domain = &vcpu.domain;
    let target = domain.vcpu(id);
    let itself = id == vcpu.id;
    match cmd {
        VcpuOp::IsUp => Ok(u64::from(target.as_deref().is_some_and(is_up))),
        VcpuOp::Initialise => Err(Errno::Einval), // `vcpu_op`'s own
        VcpuOp::Up => up(target.ok_or(Errno::Einval)?),
        VcpuOp::Down => down(domain, id, target),
        VcpuOp::GetRunstateInfo => {
            let info = runstate_of(target.as_deref(), false);
            write(arg, &info)
        }
        VcpuOp::RegisterRunstateMemoryArea => register_runstate_area(domain, id, target.as_deref(), itself, arg),
        VcpuOp::SetPeriodicTimer => {
            let request: VcpuSetPeriodicTimer = read(arg)?;
            if !(MIN_PERIOD_NS..=MAX_PERIOD_NS).contains(&request.period_ns) {
                return Err(Errno::Einval);
            }
            set_period(domain, id, target.as_deref(), request.period_ns)
        }
        VcpuOp::StopPeriodicTimer => set_period(domain, id, target.as_deref(), 0),
        // The single-shot timer is `set_timer_op`'s, and only a vCPU's own (Xen: EINVAL).
        VcpuOp::SetSingleshotTimer if !itself => Err(Errno::Einval),
        VcpuOp::SetSingleshotTimer => {
            let request: VcpuSetSingleshotTimer = read(arg)?;
            if request.flags & VCPU_SSHOTTMR_FUTURE != 0 && request.timeout_abs_ns < time::since_boot_ns() {
                return Err(Errno::Etime);
            }
            // A deadline already past (0 included) fires at once: `set_timer` takes 0 as
            // "cancel", hence the 1.
            events::set_timer(vcpu, request.timeout_abs_ns.max(1));
            Ok(0)
        }
        VcpuOp::StopSingleshotTimer if !itself => Err(Errno::Einval),
        VcpuOp::StopSingleshotTimer => {
            events::set_timer(vcpu, 0);
            Ok(0)
        }
        VcpuOp::RegisterVcpuInfo => register_vcpu_info(vcpu, id, target.as_ref(), arg),
        VcpuOp::GetPhysid => physid(domain, target.as_deref(), arg),
        VcpuOp::SendNmi | VcpuOp::RegisterVcpuTimeMemoryArea | VcpuOp::RegisterRunstatePhysArea | VcpuOp::RegisterVcpuTimePhysArea => {
            Err(Errno::Enosys)
        }
    }
}

/// Whether a vCPU is up (Xen's `!VPF_down`): runnable or blocked.
fn is_up(vcpu: &Vcpu) -> bool {
    matches!(vcpu.state(), RunState::Runnable | RunState::Blocked)
}

/// `VCPUOP_up`: a vCPU initialised and down starts (again); one up already stays up.
fn up(target: Arc<Vcpu>) -> HcResult {
    if target.start() {
        // Its part of the domain's weight, taken from its siblings.
        target.domain.vcpu_up();
        target.set_runstate(RunstateKind::Runnable);
        let domain = target.domain.clone();
        if target.sched.queued.load(Ordering::Acquire) {
            sched::resume(&target);
        } else {
            sched::add(target);
        }
        sched::reweigh(&domain);
    }
    Ok(0)
}

/// `VCPUOP_down`: the vCPU leaves its CPU at its next decision and runs no more until it is
/// brought up again; its weight goes back to its siblings. As in Xen, taking down the last
/// vCPU that is up shuts the domain down (poweroff).
fn down(domain: &Arc<Domain>, id: u32, target: Option<Arc<Vcpu>>) -> HcResult {
    if !domain.vcpus().iter().any(|v| v.id != id && is_up(v)) {
        crate::pv::console::flush_partial(domain);
        super::teardown::shutdown(domain, Ending::Poweroff);
        return Ok(0);
    }
    // A vCPU never initialised is down already.
    let Some(target) = target else { return Ok(0) };
    if target.take_down() {
        domain.vcpu_down();
        target.set_runstate(RunstateKind::Offline);
        sched::reweigh(domain);
        // A vCPU running elsewhere notices at its CPU's next decision: make it come now
        // (the caller taking itself down leaves on the way out of this call).
        if let Some(cpu) = target.running_on() {
            sched::kick(cpu.0);
        }
    }
    Ok(0)
}

/// A vCPU's runstate: as of its last change (`record`, what its area holds: Xen copies
/// `v->runstate` as it stands) or up to now (`VCPUOP_get_runstate_info`). A vCPU never
/// initialised is offline since the start.
fn runstate_of(target: Option<&Vcpu>, record: bool) -> VcpuRunstateInfo {
    match target {
        Some(v) if record => v.runstate.lock().record(),
        Some(v) => v.runstate.lock().snapshot(time::since_boot_ns()),
        None => Runstate::new(RunstateKind::Offline, 0).snapshot(time::since_boot_ns()),
    }
}

/// `VCPUOP_register_runstate_memory_area`: the runstate copy of vCPU `id` goes to the guest
/// virtual address named from now on (0: none), checked to be guest address space
/// (`EFAULT` otherwise, as Xen's `guest_handle_okay`). The current runstate is written there
/// at once, through the caller's address space, as Xen does; a write that faults (the area
/// not mapped, or read-only) is ignored, as Xen ignores it.
fn register_runstate_area(domain: &Domain, id: u32, target: Option<&Vcpu>, itself: bool, arg: GuestVa) -> HcResult {
    let area: VcpuRegisterMemoryArea = read(arg)?;
    let size = core::mem::size_of::<VcpuRunstateInfo>() as u64;
    if area.addr != 0 {
        uaccess::check_range(area.addr, size).map_err(|_| Errno::Efault)?;
    }
    let slot = domain.slot(id).ok_or(Errno::Enoent)?;
    slot.runstate_area.store(area.addr, Ordering::Release);
    if area.addr != 0 {
        let _ = uaccess::write_value(area.addr, &runstate_of(target, itself));
    }
    if let Some(target) = target {
        target.runstate_stale.store(false, Ordering::Release);
    }
    Ok(0)
}

/// `VCPUOP_set_periodic_timer` (`period_ns` checked) and `stop_periodic_timer` (0). The
/// timer raises VIRQ_TIMER every period while the vCPU runs (see `sched`); a vCPU running
/// on another CPU picks the new period up at its next exit, which the kick brings forward.
fn set_period(domain: &Domain, id: u32, target: Option<&Vcpu>, period_ns: u64) -> HcResult {
    let slot = domain.slot(id).ok_or(Errno::Enoent)?;
    slot.periodic_ns.store(period_ns, Ordering::Release);
    if let Some(cpu) = target.and_then(Vcpu::running_on) {
        sched::kick(cpu.0);
    }
    Ok(0)
}

/// `VCPUOP_get_physid`: the physical CPU under a vCPU, for domain 0 with its vCPUs pinned
/// only (Xen's `is_hwdom_pinned_vcpu`; `EINVAL` for everyone else): its APIC id, and its
/// index in the firmware's CPU order as the ACPI id.
fn physid(domain: &Domain, target: Option<&Vcpu>, arg: GuestVa) -> HcResult {
    let target = target.ok_or(Errno::Einval)?;
    if !domain.privileged || !domain.pinned {
        return Err(Errno::Einval);
    }
    let cpu = target.sched.home.load(Ordering::Acquire);
    let apic_id = cpus::all().get(cpu as usize).ok_or(Errno::Einval)?.apic_id;
    write(arg, &VcpuGetPhysid { phys_id: u64::from(apic_id) | (u64::from(cpu) << 32) })
}

/// `VCPUOP_register_vcpu_info`: moves vCPU `id`'s `vcpu_info` into a guest frame, once.
fn register_vcpu_info(caller: &Vcpu, id: u32, target: Option<&Arc<Vcpu>>, arg: GuestVa) -> HcResult {
    let request: VcpuRegisterVcpuInfo = read(arg)?;
    let place = VcpuInfoPlace::new(request.mfn.0, request.offset)?;
    let domain = &caller.domain;
    let slot = domain.slot(id).ok_or(Errno::Enoent)?;
    if slot.vcpu_info.load(Ordering::Acquire) != 0 {
        return Err(Errno::Einval);
    }
    // On itself, or on a vCPU that is down (never initialised, or not brought up): no other
    // CPU writes its old vcpu_info while it moves (events aside: see below).
    if id != caller.id && target.is_some_and(|v| v.state() != RunState::Down) {
        return Err(Errno::Einval);
    }
    // A frame of the domain's that takes a writable type (not a table or descriptor frame),
    // held for the domain's life: what the hypervisor writes there stays data.
    let mfn = Mfn(place.mfn);
    mmu::hold_for_hypervisor(domain.id, mfn).map_err(|_| Errno::Einval)?;
    let old = shared::with_vcpu_info_of(domain, id, |info| *info);
    {
        let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
        // The 64 bytes are inside the page, 8-aligned (`VcpuInfoPlace::new`).
        map.write(usize::from(place.offset), old);
    }
    if slot.vcpu_info.compare_exchange(0, place.encode(), Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Another vCPU registered this one meanwhile.
        mmu::release_for_hypervisor(mfn);
        return Err(Errno::Einval);
    }
    // An event raised into the old place after the copy is not lost: everything is marked
    // pending in the new one (the guest scans and finds nothing new, or what was raised).
    events::mark_all_pending(domain, id);
    shared::publish_time_of(domain, id);
    Ok(0)
}

/// Copies `vcpu`'s runstate (as of its last change) into its registered area, if any, on
/// the address space loaded now, which must be the vCPU's own: called as it is switched out
/// (before CR3 leaves its tables) and in (after they are loaded), and when it enters guest
/// kernel mode with the area stale. Written only in guest kernel mode (`in_kernel`): in user
/// mode the area (kernel memory, for Linux) need not be mapped, or may map something else,
/// so the update waits for the next entry to kernel mode (Linux updates it only in kernel
/// mode too, and reads it there). The copy goes through `uaccess`, so an area that is
/// unmapped, read-only or not guest address space any more costs a fault the fix-up turns
/// into nothing, never a fault of the hypervisor.
pub fn update_runstate_area(vcpu: &Vcpu, in_kernel: bool) {
    let Some(slot) = vcpu.domain.slot(vcpu.id) else { return };
    let area = slot.runstate_area.load(Ordering::Acquire);
    if area == 0 {
        return;
    }
    if !in_kernel {
        vcpu.runstate_stale.store(true, Ordering::Release);
        return;
    }
    let record = vcpu.runstate.lock().record();
    let _ = uaccess::write_value(area, &record);
    vcpu.runstate_stale.store(false, Ordering::Release);
}

fn read<T: Copy + Default>(arg: GuestVa) -> Result<T, Errno> {
    uaccess::read_value(arg.0).map_err(|_| Errno::Efault)
}

fn write<T: Copy>(arg: GuestVa, value: &T) -> HcResult {
    uaccess::write_value(arg.0, value).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// Creates vCPU `id` (down) from the guest context at `arg`. Its page tables are validated
/// one slice per stay, as a pin is: a table tree too big for one slice leaves its walk
/// partial in the frames and the call is issued again ([`Stop::Retry`]: nothing else has
/// been done yet), reading the context again and continuing the walk (Xen's continuation
/// of `VCPUOP_initialise`, XSA-296's path).
fn initialise(vcpu: &Vcpu, id: u32, arg: GuestVa) -> Outcome {
    if !memory::heap_has_room_for(VCPU_HEAP_BYTES) {
        return Err(Errno::Enomem.into());
    }
    let context: VcpuGuestContext = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let user = &context.user_regs;
    for address in [user.rip, user.rsp, context.kernel_sp, context.event_callback_eip, context.failsafe_callback_eip, context.syscall_callback_eip] {
        if address != 0 {
            uaccess::check_range(address.saturating_sub(1), 1).map_err(|_| Errno::Einval)?;
        }
    }
    for base in [context.fs_base, context.gs_base_kernel, context.gs_base_user] {
        VirtAddr::try_new(base).map_err(|_| Errno::Einval)?;
    }
    let base = mmu::take_base_for_guest(vcpu, Mfn(context.ctrlreg[3] >> 12))?;
    let regs = TrapFrame {
        r15: user.r15, r14: user.r14, r13: user.r13, r12: user.r12, rbp: user.rbp, rbx: user.rbx,
        r11: user.r11, r10: user.r10, r9: user.r9, r8: user.r8, rax: user.rax, rcx: user.rcx,
        rdx: user.rdx, rsi: user.rsi, rdi: user.rdi,
        rip: user.rip,
        cs: GUEST_CS64 as u64,
        rflags: (user.rflags & 0xcd5) | 0x202,
        rsp: user.rsp,
        ss: GUEST_DS as u64,
        ..TrapFrame::zeroed()
    };
    let domain = vcpu.domain.clone();
    let new = Vcpu::new(domain.clone(), id, regs, base, placement(&domain, id));
    new.set_down();
    let refused = |new: &Vcpu, errno: Errno| {
        mmu::release_bases(new);
        Err(Stop::Failed(errno))
    };
    {
        let mut ctx = new.ctx.lock();
        ctx.kernel_ss = context.kernel_ss | 3;
        ctx.kernel_sp = context.kernel_sp;
        ctx.event_callback = context.event_callback_eip;
        ctx.failsafe_callback = context.failsafe_callback_eip;
        ctx.syscall_callback = context.syscall_callback_eip;
        ctx.fs_base = context.fs_base;
        ctx.gs_base_kernel = context.gs_base_kernel;
        ctx.gs_base_user = context.gs_base_user;
        crate::pv::fpu::init_from_context(&mut ctx, &context);
        for trap in context.trap_ctxt.iter().filter(|t| t.address != 0) {
            if uaccess::check_range(trap.address, 1).is_ok() && ctx.set_trap(*trap).is_err() {
                drop(ctx);
                return refused(&new, Errno::Enomem);
            }
        }
    }
    let frames = (context.gdt_ents as usize).div_ceil(512).min(descriptors::MAX_FRAMES);
    let gdt: arrayvec::ArrayVec<Mfn, { descriptors::MAX_FRAMES }> = context.gdt_frames[..frames].iter().map(|&m| Mfn(m)).collect();
    if let Err(e) = descriptors::install(&new, &gdt) {
        return refused(&new, e);
    }
    // Xen checks the LDT's alignment and size here; its frames are taken now (see `ldt`).
    let ldt_entries = u32::try_from(context.ldt_ents).unwrap_or(u32::MAX);
    if let Err(e) = ldt::install(&new, context.ldt_base, ldt_entries) {
        descriptors::release(core::mem::take(&mut *new.gdt.lock()));
        return refused(&new, e);
    }
    match domain.add_vcpu(new.clone()) {
        Ok(()) => Ok(0),
        Err(refusal) => {
            // The domain is going (or another vCPU took the id meanwhile): nothing of the new
            // vCPU may outlive this call.
            descriptors::release(core::mem::take(&mut *new.gdt.lock()));
            ldt::release(core::mem::take(&mut *new.ldt.lock()));
            refused(&new, if refusal == JoinError::Dying { Errno::Esrch } else { Errno::Eexist })
        }
    }
}

/// The CPU for vCPU `id` of `domain`: among the online CPUs its mask allows (all when the
/// mask is 0), the `id`-th after vCPU 0's, so that a domain's vCPUs land on different CPUs
/// while there are enough of them.
fn placement(domain: &Domain, id: u32) -> u32 {
    let mask = domain.cpu_mask;
    let allowed = |cpu: u32| mask == 0 || (cpu < 64 && mask & (1 << cpu) != 0);
    let online = cpus::all().iter().enumerate().filter(|(_, s)| s.state() == cpus::CpuState::Online).map(|(i, _)| i as u32);
    let count = online.clone().filter(|&c| allowed(c)).count();
    let first = domain.vcpu(0).map_or(0, |v| v.sched.home.load(Ordering::Relaxed));
    if count == 0 {
        return first;
    }
    let start = online.clone().filter(|&c| allowed(c)).position(|c| c == first).unwrap_or(0);
    online.filter(|&c| allowed(c)).nth((start + id as usize) % count).unwrap_or(first)
}
