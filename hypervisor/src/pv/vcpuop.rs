//! `vcpu_op`: bringing up a domain's secondary vCPUs (initialise from a guest context, then
//! up), and asking whether one is up.
//!
//! A new vCPU starts in guest kernel mode with the registers, page-table base, kernel stack,
//! trap table, callbacks, GDT and segment bases of its `vcpu_guest_context`, each checked as
//! the corresponding hypercall would check it. It runs on another CPU than its siblings
//! where there is one.

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
use crate::cpus;
use crate::domain::vcpu::RunState;
use crate::domain::Vcpu;
use crate::pv::hypercall::HcResult;
use crate::pv::{descriptors, mmu};

/// vCPUs per domain: the vcpu_info slots in shared_info.
pub const MAX_VCPUS: u32 = 32;

pub fn vcpu_op(vcpu: &Vcpu, cmd: VcpuOp, id: u32, arg: GuestVa) -> HcResult {
    if id >= MAX_VCPUS {
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
                crate::sched::add(target);
            }
            Ok(0)
        }
        _ => Err(Errno::Enosys),
    }
}

/// Creates vCPU `id` (down) from the guest context at `arg`.
fn initialise(vcpu: &Vcpu, id: u32, arg: GuestVa) -> HcResult {
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
    let new = Vcpu::new(domain.clone(), id, regs, base, placement(vcpu, id));
    new.set_down();
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
        for trap in context.trap_ctxt.iter().filter(|t| t.address != 0) {
            if uaccess::check_range(trap.address, 1).is_ok() {
                ctx.set_trap(*trap);
            }
        }
    }
    let frames = (context.gdt_ents as usize).div_ceil(512).min(descriptors::MAX_FRAMES);
    let gdt: arrayvec::ArrayVec<Mfn, { descriptors::MAX_FRAMES }> = context.gdt_frames[..frames].iter().map(|&m| Mfn(m)).collect();
    if let Err(e) = descriptors::install(&new, &gdt) {
        mmu::release_bases(&new);
        return Err(e);
    }
    domain.add_vcpu(new);
    Ok(0)
}

/// The CPU for vCPU `id`: the `id`-th online CPU after vCPU 0's, so that a domain's vCPUs
/// land on different CPUs while there are enough of them.
fn placement(caller: &Vcpu, id: u32) -> u32 {
    let online: alloc::vec::Vec<u32> = cpus::all()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() == cpus::CpuState::Online)
        .map(|(i, _)| i as u32)
        .collect();
    let first = caller.domain.vcpu(0).map_or(0, |v| v.cpu.load(Ordering::Relaxed));
    let start = online.iter().position(|&c| c == first).unwrap_or(0);
    online[(start + id as usize) % online.len()]
}
