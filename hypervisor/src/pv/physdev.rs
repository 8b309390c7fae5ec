//! `physdev_op` (and the legacy `physdev_op_compat`) as far as a PV domain without devices
//! uses it, `vm_assist`, and the virtual I/O privilege level they feed: whether a guest's
//! port I/O and `cli`/`sti` are carried out for it (`pv::emulate`) or raise #GP.
//!
//! As in Xen, a PV vCPU never runs with a real IOPL above 0 (it could then turn interrupts
//! off behind the hypervisor's back): its wanted IOPL is kept here (`PHYSDEVOP_set_iopl`,
//! or, with `VMASST_TYPE_architectural_iopl`, the IOPL field of each `iret` frame) and
//! consulted when an I/O instruction faults (Xen's `iopl_ok`/`guest_io_okay`). The guest
//! kernel counts as privilege 1 for that check (even a 64-bit one, in ring 3), or 0 with
//! the architectural IOPL assist; guest user mode as 3. A `PHYSDEVOP_set_iobitmap` bitmap
//! (in guest kernel memory, a set bit refusing its port) allows single ports past the
//! IOPL. The real RFLAGS.IOPL stays 0, so the guest's own `pushf` never shows the virtual
//! IOPL and `popf` cannot change it; only bounce frames do, with the assist (as in Xen).
//!
//! `vm_assist` takes exactly the types Xen 4.17 takes from a 64-bit PV guest
//! ([`VM_ASSIST_VALID`]: EINVAL for others, ENOSYS for an unknown command) and records them
//! per domain. What each changes here: `architectural_iopl` as above; the x86-32 ones
//! (4gb_segments, its notify, pae_extended_cr3) nothing, as in Xen for a 64-bit guest;
//! `writable_pagetables` turns on the emulation of direct writes to page tables (`pv::ptwr`);
//! `runstate_update_flag` and `m2p_strict` are recorded for the
//! code that implements those features to consult ([`crate::domain::Domain::vm_assist`]).
//!
//! Domain 0's device interrupts (`map_pirq` for GSIs, `eoi`, `irq_status_query`) are
//! `pv::pirq`'s; another domain gets EPERM from them. Every other `physdev_op` answers
//! ENOSYS: MSI and PCI management are not offered (the `PHYSDEVOP_pirq_eoi_gmfn_v2` a
//! Linux domU tries at boot is refused and it does without). Runs on the CPU running the
//! calling vCPU.

use abi::errno::Errno;
use abi::hypercall::{VmAssistCmd, VmAssistType};
use abi::physdev::{PhysdevOp, PhysdevSetIobitmap, PhysdevSetIopl, COMPAT_ARG_OFFSET, IOBMP_BYTES, MAX_PORTS};
use hypervisor::hypercall::GuestVa;

use crate::arch::uaccess;
use crate::domain::Vcpu;
use crate::pv::hypercall::HcResult;
use crate::pv::pirq;

/// The `vm_assist` types a 64-bit PV guest may enable (Xen 4.17's `NATIVE_VM_ASSIST_VALID`).
pub const VM_ASSIST_VALID: u64 = 1 << VmAssistType::FourGbSegments.raw()
    | 1 << VmAssistType::FourGbSegmentsNotify.raw()
    | 1 << VmAssistType::WritablePagetables.raw()
    | 1 << VmAssistType::PaeExtendedCr3.raw()
    | 1 << VmAssistType::ArchitecturalIopl.raw()
    | 1 << VmAssistType::RunstateUpdateFlag.raw()
    | 1 << VmAssistType::M2pStrict.raw();

/// `vm_assist(cmd, type)`: the type's bit in the domain, set (`VMASST_CMD_enable`) or
/// cleared (`VMASST_CMD_disable`).
pub fn vm_assist(vcpu: &Vcpu, cmd: u32, kind: u32) -> HcResult {
    if kind >= 64 || VM_ASSIST_VALID & (1 << kind) == 0 {
        return Err(Errno::Einval);
    }
    match VmAssistCmd::from_raw(cmd) {
        Some(VmAssistCmd::Enable) => vcpu.domain.set_vm_assist(kind, true),
        Some(VmAssistCmd::Disable) => vcpu.domain.set_vm_assist(kind, false),
        None => return Err(Errno::Enosys),
    }
    Ok(0)
}

/// `physdev_op(cmd, arg)`.
pub fn physdev_op(vcpu: &Vcpu, cmd: u32, arg: GuestVa) -> HcResult {
    match PhysdevOp::from_raw(cmd) {
        Some(PhysdevOp::SetIopl) => {
            let request: PhysdevSetIopl = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
            if request.iopl > 3 {
                return Err(Errno::Einval);
            }
            vcpu.ctx.lock().iopl = request.iopl as u8;
            Ok(0)
        }
        Some(PhysdevOp::SetIobitmap) => {
            let request: PhysdevSetIobitmap = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
            if uaccess::check_range(request.bitmap, IOBMP_BYTES).is_err() || request.nr_ports > MAX_PORTS {
                return Err(Errno::Einval);
            }
            let mut ctx = vcpu.ctx.lock();
            ctx.iobitmap = request.bitmap;
            ctx.iobitmap_ports = request.nr_ports;
            Ok(0)
        }
        Some(PhysdevOp::MapPirq) => pirq::map_pirq(vcpu, arg),
        Some(PhysdevOp::Eoi) => pirq::eoi(vcpu, arg),
        Some(PhysdevOp::IrqStatusQuery) => pirq::irq_status_query(vcpu, arg),
        _ => Err(Errno::Enosys),
    }
}

/// `physdev_op_compat(arg)`: `arg` names a `struct physdev_op`, its command first and its
/// argument after.
pub fn physdev_op_compat(vcpu: &Vcpu, arg: GuestVa) -> HcResult {
    let cmd: u32 = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let inner = arg.0.checked_add(COMPAT_ARG_OFFSET).ok_or(Errno::Efault)?;
    physdev_op(vcpu, cmd, GuestVa(inner))
}

/// Whether the vCPU's virtual IOPL covers its current mode (Xen's `iopl_ok`).
pub fn iopl_ok(vcpu: &Vcpu) -> bool {
    let (in_kernel, iopl) = {
        let ctx = vcpu.ctx.lock();
        (ctx.in_kernel, ctx.iopl)
    };
    let cpl = match (in_kernel, vcpu.domain.vm_assist(VmAssistType::ArchitecturalIopl)) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => 3,
    };
    cpl <= iopl
}

/// Whether the vCPU may access ports `port..port + size` (Xen's `guest_io_okay`): its IOPL,
/// or its I/O bitmap (read from guest kernel memory; unreadable bytes refuse).
pub fn io_allowed(vcpu: &Vcpu, port: u16, size: u8) -> bool {
    if iopl_ok(vcpu) {
        return true;
    }
    let (bitmap, ports, in_kernel, kernel_l4, user_l4) = {
        let ctx = vcpu.ctx.lock();
        (ctx.iobitmap, ctx.iobitmap_ports, ctx.in_kernel, ctx.kernel_l4(), ctx.user_l4())
    };
    if u32::from(port) + u32::from(size) >= ports {
        return false;
    }
    let mut bytes = [0xffu8; 2];
    let at = bitmap + u64::from(port >> 3);
    // The bitmap is in guest kernel memory: read it through the kernel tables from user mode.
    let switch = !in_kernel && kernel_l4.is_some();
    if switch {
        crate::tlb::load_guest_tables(kernel_l4.expect("checked"));
    }
    // A copy that faults leaves the bytes it did not reach as they were: 0xff, refusing.
    let _ = uaccess::read(at, &mut bytes);
    if switch {
        if let Some(l4) = user_l4.or(kernel_l4) {
            crate::tlb::load_guest_tables(l4);
        }
    }
    let mask = u16::from_le_bytes(bytes);
    let wanted = ((1u32 << size) - 1) << (port & 7);
    u32::from(mask) & wanted == 0
}
