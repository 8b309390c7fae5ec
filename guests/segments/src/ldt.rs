//! The LDT checks (`main`'s step 1): `MMUEXT_SET_LDT` refused for a frame mapped writable,
//! an unaligned address, more than 8192 entries, the hypervisor's range (its window and
//! Xen's reserved slots), an unmapped address and a frame holding a call gate; accepted for
//! a read-only frame of four descriptors, whose ring-0 data descriptor comes back raised
//! to DPL 3 and accessed. Selectors 0x7 and 0x17 (entries 0 and 2) load into ds, 0x27 (past
//! the count) raises #GP(0x24) in the guest, an `iret` to code selector 0xc runs 64-bit code
//! from entry 1 (cs reads 0xf there); `update_descriptor` refuses a call gate in the LDT
//! frame and fixes a ring-0 code descriptor; the frame cannot be mapped writable while it
//! is an LDT. The LDT, and ds loaded from it, must survive yields (with another domain on
//! the CPU holding another selector in ds: the `ds=0x17` word on one domain's command
//! line) and, once released, the frame maps writable again and 0x7 faults.

use guest_rt::abi::errno::Errno;
use guest_rt::abi::hypercall::{Hypercall, MmuextCmd};
use guest_rt::abi::ids::DomId;
use guest_rt::abi::mmu::{MmuextOp, UVMF_INVLPG, UVMF_LOCAL};
use guest_rt::hypercall::{self, decode, HypercallError};
use guest_rt::layout::{PTE_ADDRESS_MASK, PTE_PRESENT, PTE_USER, PTE_WRITABLE, VIRT_BASE};
use guest_rt::println;

use guest_rt::frames::{Frame, FreeFrames};
use crate::probe::{self, segments_get_ds, segments_probe_far_code, segments_probe_load_ds, segments_set_ds};
use crate::{call, expect, refused, take, Failure};

/// A 32-bit flat data segment with DPL 0, as a native kernel writes it.
const DATA_DPL0: u64 = 0x00cf_9200_0000_ffff;
/// A 64-bit code segment with DPL 0.
const CODE64_DPL0: u64 = 0x00af_9a00_0000_ffff;
/// A present call gate, DPL 3, to the hypervisor's ring-0 code selector.
const CALL_GATE: u64 = 0x0000_ec00_e008_1000;
/// What the hypervisor's fix-up adds: DPL 3 and accessed.
const DPL3_ACCESSED: u64 = (3 << 45) | (1 << 40);
/// Selectors (RPL 3, LDT): entries 0, 2 and 4 (past a count of 4), and entry 1 as code
/// with RPL 0 (the kernel's `iret` frames carry RPL 0).
const LDT_DATA: u64 = 0x7;
const LDT_DATA2: u64 = 0x17;
const LDT_PAST: u64 = 0x27;
const LDT_CODE_KERNEL: u64 = 0xc;
const LDT_CODE_SEEN: u64 = 0xf;
/// An address nothing maps, the start of the hypervisor's window, Xen's M2P area.
const UNMAPPED: u64 = VIRT_BASE + 0x3000_0000;
const WINDOW: u64 = 0xFFFF_FFFF_FC00_0000;
const M2P: u64 = 0xFFFF_8000_0000_0000;
/// Yields with the LDT loaded, each followed by a selector load from it.
const YIELDS: usize = 20;

fn set_ldt(base: u64, entries: u64) -> Result<(), HypercallError> {
    let op = MmuextOp { cmd: MmuextCmd::SetLdt.raw(), _pad: 0, arg1: base, arg2: entries };
    let mut done = 0;
    // SAFETY: the LDT only changes which segments selectors with TI set name; this program
    // loads them only in the probes.
    unsafe { hypercall::mmuext_op(&[op], &mut done, DomId::SELF) }
}

fn update_descriptor(maddr: u64, descriptor: u64) -> Result<u64, HypercallError> {
    // SAFETY: the hypervisor checks the frame and the descriptor; only the probes use it.
    decode(unsafe { hypercall::hypercall2(Hypercall::UpdateDescriptor, maddr, descriptor) })
}

fn pte(frame: Frame, writable: bool) -> u64 {
    (frame.mfn.address() & PTE_ADDRESS_MASK) | PTE_PRESENT | PTE_USER | if writable { PTE_WRITABLE } else { 0 }
}

fn remap(frame: Frame, writable: bool) -> Result<(), HypercallError> {
    // SAFETY: the frame is one of ours that nothing but these checks uses.
    unsafe { hypercall::update_va_mapping(frame.va(), pte(frame, writable), UVMF_INVLPG | UVMF_LOCAL) }
}

/// Writes `descriptors` at the start of the zeroed frame, then maps it read-only.
fn descriptor_frame(free: &mut FreeFrames, descriptors: &[u64], read_only: bool) -> Result<Frame, Failure> {
    let frame = take(free)?;
    let table = frame.va() as *mut u64;
    // SAFETY: a free frame mapped writable at its address; nothing else uses it.
    unsafe {
        core::ptr::write_bytes(table, 0, 512);
        for (i, &d) in descriptors.iter().enumerate() {
            table.add(i).write_volatile(d);
        }
    }
    if read_only {
        call("remapping a descriptor frame read-only", remap(frame, false))?;
    }
    Ok(frame)
}

fn load_ds(selector: u64) -> u64 {
    probe::reset();
    // SAFETY: the probe loads ds and restores the null selector; a fault resumes in it.
    unsafe { segments_probe_load_ds(selector) }
}

/// `rex64 lcall *` through a far pointer naming `selector`, laid out as XTF's xsa-298 lays
/// it out for this vendor: AMD's processors read m16:32 whatever REX.W says (the selector
/// at +4, the bytes at +8 zero, a null selector for a reader of m16:64), Intel's m16:64 (the
/// selector at +8). A processor refuses it with #GP(selector); QEMU's TCG, which reads
/// m16:64 on an AMD-named CPU too, finds the null selector and raises #GP(0), which the
/// hypervisor must correct.
fn far_call(selector: u16) {
    let amd = u32::from_le_bytes(*b"Auth");
    // SAFETY: CPUID through the hypervisor.
    let vendor = unsafe { crate::probe::segments_vendor_ebx() } as u32;
    let mut pointer = [0u8; 16];
    let at = if vendor == amd { 4 } else { 8 };
    pointer[at..at + 2].copy_from_slice(&selector.to_le_bytes());
    probe::reset();
    // SAFETY: the far call faults (the selector is past the LDT) and resumes in the probe.
    unsafe { crate::probe::segments_probe_far_call(pointer.as_ptr() as u64) };
}

fn expect_gp(what: &'static str, error_code: u64) -> Result<(), Failure> {
    let fault = probe::fault().ok_or(Failure::Wrong { what, seen: 0, wanted: 13 })?;
    expect(what, fault.vector, 13)?;
    expect(what, fault.error_code, error_code)
}

pub fn check(free: &mut FreeFrames) -> Result<(), Failure> {
    let ldt = descriptor_frame(free, &[DATA_DPL0, CODE64_DPL0, DATA_DPL0, DATA_DPL0], false)?;
    let va = ldt.va();
    refused("set_ldt on a frame mapped writable", set_ldt(va, 4), Errno::Einval)?;
    call("remapping the LDT frame read-only", remap(ldt, false))?;
    refused("set_ldt at an unaligned address", set_ldt(va + 8, 4), Errno::Einval)?;
    refused("set_ldt of 8193 entries", set_ldt(va, 8193), Errno::Einval)?;
    refused("set_ldt in the hypervisor's window", set_ldt(WINDOW, 1), Errno::Einval)?;
    refused("set_ldt in Xen's reserved slots", set_ldt(M2P, 1), Errno::Einval)?;
    refused("set_ldt where nothing is mapped", set_ldt(UNMAPPED, 1), Errno::Efault)?;
    let gate = descriptor_frame(free, &[0, CALL_GATE], true)?;
    refused("set_ldt with a call gate in the frame", set_ldt(gate.va(), 2), Errno::Einval)?;
    println!("segments: set_ldt refused a writable frame, bad ranges (EINVAL), an unmapped one (EFAULT), a call gate (EINVAL)");

    call("set_ldt", set_ldt(va, 4))?;
    // SAFETY: the frame is mapped read-only at `va`; entries are aligned words.
    let fixed = unsafe { (va as *const u64).read_volatile() };
    expect("LDT entry 0 after set_ldt", fixed, DATA_DPL0 | DPL3_ACCESSED)?;
    expect("ds loaded with LDT selector 0x7", load_ds(LDT_DATA), LDT_DATA)?;
    expect("ds loaded with LDT selector 0x17", load_ds(LDT_DATA2), LDT_DATA2)?;
    load_ds(LDT_PAST);
    expect_gp("ds loaded with 0x27, past the LDT's 4 entries", LDT_PAST & !3)?;
    far_call(LDT_PAST as u16);
    expect_gp("rex64 lcall through 0x27, past the LDT's 4 entries", LDT_PAST & !3)?;
    probe::reset();
    // SAFETY: the probe returns through an iret into the LDT's code segment (64-bit) and a
    // far return to the flat one; nothing else changes.
    let cs = unsafe { segments_probe_far_code(LDT_CODE_KERNEL) };
    expect("cs in the LDT's code segment", cs, LDT_CODE_SEEN)?;
    println!("segments: LDT of 4 entries: ring-0 data raised to DPL 3 ({fixed:#x}), ds 0x7 and 0x17 load, 0x27 #GP(0x24) (and through a far call), iret to LDT code (cs {cs:#x}) and lret back");

    let maddr = ldt.mfn.address() + 3 * 8;
    refused("update_descriptor of a call gate into the LDT", update_descriptor(maddr, CALL_GATE), Errno::Einval)?;
    call("update_descriptor of ring-0 code into the LDT", update_descriptor(maddr, CODE64_DPL0))?;
    // SAFETY: as above.
    let updated = unsafe { ((va + 24) as *const u64).read_volatile() };
    expect("LDT entry 3 after update_descriptor", updated, CODE64_DPL0 | DPL3_ACCESSED)?;
    refused("mapping the LDT frame writable", remap(ldt, true), Errno::Einval)?;
    // ds stays loaded with this domain's selector over the yields: another domain running
    // in between has its own (the QEMU case gives the second domain 0x17), and the
    // hypervisor must give each vCPU its own back.
    let selector = if crate::cmdline_has(b"ds=0x17") { LDT_DATA2 } else { LDT_DATA };
    // SAFETY: an LDT data segment with DPL 3; 64-bit code ignores ds's base.
    unsafe { segments_set_ds(selector) };
    for _ in 0..YIELDS {
        call("yield", hypercall::sched_yield())?;
        // SAFETY: reads ds.
        expect("ds after a yield", unsafe { segments_get_ds() }, selector)?;
        expect("ds 0x7 reloaded after a yield", load_ds(LDT_DATA), LDT_DATA)?;
        // SAFETY: as above.
        unsafe { segments_set_ds(selector) };
    }
    // SAFETY: the null selector.
    unsafe { segments_set_ds(0) };
    println!("segments: update_descriptor in the LDT checked; the frame refused writable; ds {selector:#x} and the LDT kept over {YIELDS} yields");

    call("releasing the LDT", set_ldt(0, 0))?;
    call("mapping the released LDT frame writable", remap(ldt, true))?;
    load_ds(LDT_DATA);
    expect_gp("ds loaded with 0x7 with no LDT", LDT_DATA & !3)?;
    println!("segments: LDT released: frame writable again, 0x7 #GP(0x4)");
    Ok(())
}
