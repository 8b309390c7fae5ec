//! The I/O privilege checks (`main`'s step 3), after XTF's pv-iopl and Xen's
//! `iopl_ok`/`guest_io_okay`:
//!
//! - `PHYSDEVOP_set_iopl` 0, 1, 3 (4 refused): `cli` and `outb` fault in the kernel at IOPL
//!   0 only (it counts as privilege 1) and in user mode below 3; the #GP's frame shows IOPL
//!   0 (without the assist the virtual IOPL never shows);
//! - with the kernel allowed: `in al` changes al alone (0xff), `in eax` gives all ones
//!   zero-extended, `rep insb` of 600 bytes (more than one trap's slice) fills them with
//!   0xff and no more, `rep outsb` from an unmapped page stops with #PF at it;
//! - the I/O bitmap at IOPL 0: port 0x80 allowed, 0x81 not, from both modes; removed again;
//! - `physdev_op_compat` sets the IOPL too; other sub-ops are ENOSYS;
//! - `vm_assist`: Xen's valid types accepted, others EINVAL, an unknown command ENOSYS;
//!   with `VMASST_TYPE_architectural_iopl` the kernel is never refused, the IOPL of each
//!   `iret` frame becomes the virtual IOPL, and bounce frames show it.

use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::Hypercall;
use guest_rt::abi::physdev::{PhysdevOp, PhysdevOpCompat, PhysdevSetIobitmap, PhysdevSetIopl};
use guest_rt::hypercall::{self, decode, HypercallError};
use guest_rt::layout::VIRT_BASE;
use guest_rt::println;

use guest_rt::frames::FreeFrames;
use crate::probe::{self, run_kernel, run_user, segments_probe_inb, segments_probe_inl, segments_probe_outb_dx};
use crate::probe::{segments_probe_rep_insb, segments_probe_rep_outsb};
use crate::softint::USER_RFLAGS;
use crate::{address, call, expect, refused, take, Failure};

const IOPL_SHIFT: u64 = 12;
const IOPL_MASK: u64 = 3 << IOPL_SHIFT;
/// VMASST types and commands (xen.h).
const ARCHITECTURAL_IOPL: u64 = 4;
const WRITABLE_PAGETABLES: u64 = 2;
const ENABLE: u64 = 0;
const DISABLE: u64 = 1;
/// An address nothing maps.
const UNMAPPED: u64 = VIRT_BASE + 0x3000_0000;
/// Bytes of the `rep insb` check: more than the hypervisor's 256 per trap.
const INSB_BYTES: usize = 600;

fn physdev<T>(cmd: u32, arg: &mut T) -> Result<u64, HypercallError> {
    // SAFETY: the hypervisor reads (and may write) the argument struct of `cmd`.
    decode(unsafe { hypercall::hypercall2(Hypercall::PhysdevOp, cmd.into(), arg as *mut T as u64) })
}

fn set_iopl(iopl: u32) -> Result<u64, HypercallError> {
    physdev(PhysdevOp::SetIopl.raw(), &mut PhysdevSetIopl { iopl })
}

fn vm_assist(cmd: u64, kind: u64) -> Result<u64, HypercallError> {
    // SAFETY: vm_assist takes no pointer.
    decode(unsafe { hypercall::hypercall2(Hypercall::VmAssist, cmd, kind) })
}

/// Runs `probe` in kernel (`user` false) or user mode; whether it faulted with #GP(0), and
/// the IOPL its frame showed.
fn faults(probe: u64, user: bool, rflags: u64) -> Result<Option<u64>, Failure> {
    if user { run_user(probe, rflags) } else { run_kernel(probe) }
    match probe::fault() {
        None => Ok(None),
        Some(fault) => {
            expect("vector of an I/O fault", fault.vector, 13)?;
            expect("error code of an I/O fault", fault.error_code, 0)?;
            Ok(Some((fault.rflags & IOPL_MASK) >> IOPL_SHIFT))
        }
    }
}

/// `cli` and `outb` from both modes at the current IOPL: each faults exactly when told.
fn pv_iopl(what: &'static str, kernel_faults: bool, user_faults: bool, rflags: u64, shown: u64) -> Result<(), Failure> {
    for probe in [address!(segments_probe_cli), address!(segments_probe_outb)] {
        for (user, wanted) in [(false, kernel_faults), (true, user_faults)] {
            let seen = faults(probe, user, rflags)?;
            expect(what, u64::from(seen.is_some()), u64::from(wanted))?;
            if let Some(iopl) = seen {
                expect("IOPL shown in the #GP frame", iopl, shown)?;
            }
        }
    }
    Ok(())
}

pub fn check(free: &mut FreeFrames) -> Result<(), Failure> {
    refused("set_iopl 4", set_iopl(4), Errno::Einval)?;
    for iopl in [0u32, 1, 3] {
        call("set_iopl", set_iopl(iopl))?;
        pv_iopl("cli/outb with set_iopl", iopl == 0, iopl < 3, USER_RFLAGS, 0)?;
    }
    println!("segments: set_iopl 0/1/3: kernel cli/outb refused at 0 only, user below 3 (pv-iopl~hypercall)");
    call("set_iopl", set_iopl(1))?;
    port_reads(free)?;
    io_bitmap(free)?;
    compat_and_refusals()?;
    architectural_iopl()
}

fn port_reads(free: &mut FreeFrames) -> Result<(), Failure> {
    probe::reset();
    // SAFETY: port reads, allowed at IOPL 1 in the kernel; they change only rax.
    let inb = unsafe { segments_probe_inb() };
    expect("rax after in al, 0x71", inb, 0x1234_5678_9abc_deff)?;
    // SAFETY: as above.
    let inl = unsafe { segments_probe_inl() };
    expect("rax after in eax, dx", inl, 0xffff_ffff)?;
    let buffer = take(free)?;
    let bytes = buffer.va() as *mut u8;
    // SAFETY: a free frame mapped writable at its address; nothing else uses it.
    unsafe { core::ptr::write_bytes(bytes, 0, 4096) };
    probe::reset();
    // SAFETY: rep insb writes INSB_BYTES bytes into the buffer.
    let left = unsafe { segments_probe_rep_insb(buffer.va(), INSB_BYTES as u64) };
    expect("rcx after rep insb", left, 0)?;
    // SAFETY: the buffer page is ours and mapped.
    let filled = (0..4096).filter(|&i| unsafe { bytes.add(i).read_volatile() } == 0xff).count();
    expect("bytes rep insb filled with 0xff", filled as u64, INSB_BYTES as u64)?;
    // SAFETY: as above.
    expect("first byte after the rep insb", u64::from(unsafe { bytes.add(INSB_BYTES).read_volatile() }), 0)?;
    probe::reset();
    // SAFETY: rep outsb reads the buffer, then faults on the unmapped page.
    let left = unsafe { segments_probe_rep_outsb(UNMAPPED, 10) };
    let fault = probe::fault().ok_or(Failure::Wrong { what: "rep outsb from an unmapped page", seen: 0, wanted: 14 })?;
    expect("rep outsb from an unmapped page", fault.vector, 14)?;
    expect("cr2 of the rep outsb fault", fault.cr2, UNMAPPED)?;
    expect("rcx after the faulting rep outsb", left, 10)?;
    probe::reset();
    // SAFETY: reads the buffer page.
    let left = unsafe { segments_probe_rep_outsb(buffer.va(), 300) };
    expect("rcx after rep outsb", left, 0)?;
    println!("segments: in al -> 0xff (rest kept), in eax -> 0xffffffff, rep insb of {INSB_BYTES} filled exactly, rep outsb faulted at {UNMAPPED:#x}");
    Ok(())
}

fn io_bitmap(free: &mut FreeFrames) -> Result<(), Failure> {
    call("set_iopl", set_iopl(0))?;
    let bitmap = take(free)?;
    let bits = bitmap.va() as *mut u8;
    // SAFETY: a free frame mapped writable; ports 0-1023 are described by its first 128
    // bytes: all refused but 0x80.
    unsafe {
        core::ptr::write_bytes(bits, 0xff, 4096);
        bits.add(0x80 / 8).write_volatile(!1);
    }
    call("set_iobitmap", physdev(PhysdevOp::SetIobitmap.raw(), &mut PhysdevSetIobitmap { bitmap: bitmap.va(), nr_ports: 1024, _pad: 0 }))?;
    for (user, what) in [(false, "kernel"), (true, "user")] {
        let allowed = faults(address!(segments_probe_outb), user, USER_RFLAGS)?;
        expect(what, u64::from(allowed.is_some()), 0)?;
    }
    probe::reset();
    // SAFETY: an outb to port 0x81, refused by the bitmap: a #GP resumes in the probe.
    unsafe { segments_probe_outb_dx(0x81) };
    expect("outb 0x81 with the bitmap allowing only 0x80", u64::from(probe::fault().is_some()), 1)?;
    call("clearing the I/O bitmap", physdev(PhysdevOp::SetIobitmap.raw(), &mut PhysdevSetIobitmap { bitmap: 0, nr_ports: 0, _pad: 0 }))?;
    let refused_again = faults(address!(segments_probe_outb), false, USER_RFLAGS)?;
    expect("outb 0x80 with no bitmap at IOPL 0", u64::from(refused_again.is_some()), 1)?;
    println!("segments: I/O bitmap at IOPL 0: port 0x80 allowed from kernel and user, 0x81 refused; cleared");
    Ok(())
}

fn compat_and_refusals() -> Result<(), Failure> {
    let mut op = PhysdevOpCompat { cmd: PhysdevOp::SetIopl.raw(), _pad: 0, u: [3, 0] };
    // SAFETY: physdev_op_compat reads the struct.
    call("physdev_op_compat set_iopl 3", decode(unsafe { hypercall::hypercall1(Hypercall::PhysdevOpCompat, &mut op as *mut _ as u64) }))?;
    pv_iopl("cli/outb after physdev_op_compat set_iopl 3", false, false, USER_RFLAGS, 0)?;
    // A domain without devices has no pirqs to acknowledge (domain 0's alone: pv::pirq).
    refused("physdev_op eoi", physdev(PhysdevOp::Eoi.raw(), &mut [0u64; 2]), Errno::Eperm)?;
    refused("physdev_op apic_read", physdev(PhysdevOp::ApicRead.raw(), &mut [0u64; 2]), Errno::Enosys)?;
    refused("physdev_op 99", physdev(99, &mut [0u64; 2]), Errno::Enosys)?;
    for kind in [6u64, 31, 33, 63, 64, u64::from(u32::MAX)] {
        refused("vm_assist of a type Xen does not take", vm_assist(ENABLE, kind), Errno::Einval)?;
    }
    refused("vm_assist command 2", vm_assist(2, ARCHITECTURAL_IOPL), Errno::Enosys)?;
    for kind in [0u64, 1, WRITABLE_PAGETABLES, 3, 5, 32] {
        call("vm_assist enable", vm_assist(ENABLE, kind))?;
        call("vm_assist disable", vm_assist(DISABLE, kind))?;
    }
    println!("segments: physdev_op_compat set_iopl; other physdev_ops ENOSYS; vm_assist takes types 0-5 and 32, refuses others (EINVAL) and command 2 (ENOSYS)");
    Ok(())
}

fn architectural_iopl() -> Result<(), Failure> {
    call("set_iopl 0", set_iopl(0))?;
    call("vm_assist architectural_iopl", vm_assist(ENABLE, ARCHITECTURAL_IOPL))?;
    for iopl in [0u64, 1, 3] {
        // Each user run starts with an iret whose IOPL becomes the virtual IOPL; the kernel
        // counts as privilege 0 and is never refused; bounce frames show the IOPL.
        let rflags = USER_RFLAGS | iopl << IOPL_SHIFT;
        pv_iopl("cli/outb with the architectural IOPL", false, iopl < 3, rflags, iopl)?;
    }
    call("vm_assist disable architectural_iopl", vm_assist(DISABLE, ARCHITECTURAL_IOPL))?;
    call("set_iopl 0", set_iopl(0))?;
    pv_iopl("cli/outb at IOPL 0 without the assist", true, true, USER_RFLAGS, 0)?;
    println!("segments: architectural IOPL: kernel never refused, iret sets the IOPL (0/1/3), bounce frames show it (pv-iopl~vmassist)");
    Ok(())
}
