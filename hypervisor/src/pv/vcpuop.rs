//! `vcpu_op`: bringing up a domain's secondary vCPUs (initialise from a guest context, then
//! up), and asking whether one is up.
//!
//! A domain has the vCPU ids `0..max_vcpus` its creator gave it (`CreateDomain`, or
//! `vcpus=` on its boot module's line; one by default): every command on another id fails
//! with `ENOENT`, as in Xen. A new vCPU starts in guest kernel mode with the registers,
//! page-table base, kernel stack, trap table, callbacks, GDT, segment bases, CR0.TS, the
//! CR4 bits a guest controls, debug registers and (with `VGCF_I387_VALID`) FPU state of
//! its `vcpu_guest_context`, each checked as the
//! corresponding hypercall would check it, or in the FPU's initial state. It is placed on
//! the CPUs its domain may use (see [`placement`]), and once up it runs with its part of the
//! domain's weight, which the domain's other vCPUs then share with it. Creating one needs
//! heap room ([`crate::domain::vcpu::VCPU_HEAP_BYTES`]); without it the call fails with
//! `ENOMEM`.

use core::sync::atomic::Ordering;

use abi::arch_x86::VcpuGuestContext;
use abi::errno::Errno;
use abi::hypercall::VcpuOp;
use hypervisor::hypercall::GuestVa;
use mm::addr::Mfn;
use x86_64::VirtAddr;

use crate::arch::gdt::{GUEST_CS64, GUEST_DS};
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::vcpu::{RunState, VCPU_HEAP_BYTES};
use crate::domain::{Domain, JoinError, Vcpu};
use crate::pv::hypercall::HcResult;
use crate::pv::{descriptors, ldt, mmu};
use crate::{cpus, memory, sched};

pub fn vcpu_op(vcpu: &Vcpu, cmd: VcpuOp, id: u32, arg: GuestVa) -> HcResult {
    if id >= vcpu.domain.max_vcpus {
        return Err(Errno::Enoent);
    }
    let target = vcpu.domain.vcpu(id);
    match cmd {
        VcpuOp::IsUp => Ok(u64::from(target.is_some_and(|v| v.state() == RunState::Runnable))),
        VcpuOp::Initialise if target.is_some() => Err(Errno::Eexist),
        VcpuOp::Initialise => initialise(vcpu, id, arg),
        VcpuOp::Up => {
            let target = target.ok_or(Errno::Einval)?;
            if target.start() {
                // Its part of the domain's weight, taken from its siblings.
                target.domain.vcpu_up();
                let domain = target.domain.clone();
                sched::add(target);
                sched::reweigh(&domain);
            }
            Ok(0)
        }
        _ => Err(Errno::Enosys),
    }
}

/// Creates vCPU `id` (down) from the guest context at `arg`.
fn initialise(vcpu: &Vcpu, id: u32, arg: GuestVa) -> HcResult {
    if !memory::heap_has_room_for(VCPU_HEAP_BYTES) {
        return Err(Errno::Enomem);
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
    let base = mmu::take_base(vcpu, Mfn(context.ctrlreg[3] >> 12))?;
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
        Err(errno)
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
    let first = domain.vcpu(0).map_or(0, |v| v.cpu.load(Ordering::Relaxed));
    if count == 0 {
        return first;
    }
    let start = online.clone().filter(|&c| allowed(c)).position(|c| c == first).unwrap_or(0);
    online.filter(|&c| allowed(c)).nth((start + id as usize) % count).unwrap_or(first)
}
