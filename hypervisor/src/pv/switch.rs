//! The guest-visible half of a context switch: what `sched` asks of `pv` through its
//! [`Glue`](crate::sched::Glue) when it switches a PV vCPU in or out on this CPU. The
//! scheduler keeps the bookkeeping (which vCPU runs where, the domain's running count and
//! dirty CPUs, runstates and CPU time); this saves and loads the vCPU's machine state:
//! registers, page tables, x87/SSE/AVX state, descriptor tables, data selectors and segment
//! bases, and writes its runstate area and time.

use x86_64::registers::model_specific::{FsBase, KernelGsBase};
use x86_64::VirtAddr;

use crate::arch::percpu;
use crate::arch::trap::TrapFrame;
use crate::domain::Vcpu;

/// Loads `vcpu` onto this CPU: registers into the frame, its tables into CR3, its
/// x87/SSE/AVX state into the registers (not when `fpu_here`, this CPU's registers held its
/// state last, and it was saved here last), its XCR0, CR0.TS and debug registers, its GDT,
/// LDT and data selectors. The scheduler has counted it running and made this CPU one of its
/// domain's dirty CPUs before this loads CR3.
pub fn load(vcpu: &Vcpu, frame: &mut TrapFrame, fpu_here: bool) {
    let in_kernel = {
        let ctx = vcpu.ctx.lock();
        *frame = ctx.regs.clone();
        let resident = fpu_here && ctx.fpu_saved_on == percpu::current().index.0;
        super::fpu::switch_in(&ctx, resident);
        let l4 = ctx.active_l4().expect("a runnable vCPU has page tables");
        crate::tlb::load_guest_tables(l4);
        ctx.in_kernel
    };
    super::vcpuop::update_runstate_area(vcpu, in_kernel);
    super::shared::publish_time(vcpu);
    super::descriptors::load(&vcpu.gdt.lock());
    super::ldt::load(&vcpu.ldt.lock());
    // Its data selectors, from the tables just loaded (fs and gs loads replace their bases:
    // the guest's are written after); one that no longer loads is nulled and the vCPU gets
    // its failsafe callback on the way out (Xen's `load_segments`).
    let mut ctx = vcpu.ctx.lock();
    if crate::arch::gdt::load_data_selectors(ctx.selectors) != 0 {
        ctx.bad_selectors = Some(ctx.selectors);
    }
    FsBase::write(VirtAddr::new_truncate(ctx.fs_base));
    let gs = if ctx.in_kernel { ctx.gs_base_kernel } else { ctx.gs_base_user };
    KernelGsBase::write(VirtAddr::new_truncate(gs));
}

/// Saves the state of `vcpu`, which `frame` would have returned to, from this CPU, and
/// writes its runstate area while its tables are still loaded (in its own address space).
pub fn save(vcpu: &Vcpu, frame: &TrapFrame) {
    let in_kernel = {
        let mut ctx = vcpu.ctx.lock();
        ctx.regs = frame.clone();
        super::fpu::switch_out(&mut ctx);
        ctx.fpu_saved_on = percpu::current().index.0;
        ctx.fs_base = FsBase::read().as_u64();
        // The guest's GS base sits in KERNEL_GS_BASE while the hypervisor runs (swapgs).
        let gs = KernelGsBase::read().as_u64();
        if ctx.in_kernel { ctx.gs_base_kernel = gs } else { ctx.gs_base_user = gs }
        ctx.selectors = crate::arch::gdt::data_selectors();
        ctx.in_kernel
    };
    super::vcpuop::update_runstate_area(vcpu, in_kernel);
}
