//! Descriptor tables: the guest's own GDT frame through `set_gdt`, and `update_descriptor`.
//!
//! A frame holding a system (TSS) descriptor must be refused as a GDT; without it the frame
//! is accepted, its ring-0 data descriptor comes back with DPL 3 and the accessed bit (the
//! hypervisor's fix-up), a selector into it loads, a system descriptor written with
//! `update_descriptor` is refused while a ring-0 code descriptor is accepted and fixed, and
//! the frame cannot be mapped writable while it is a GDT. Releasing the GDT (an empty
//! `set_gdt`) makes it an ordinary page again.

use core::arch::asm;

use guest_rt::abi::hypercall::Hypercall;
use guest_rt::hypercall::{self, decode};
use guest_rt::println;

use crate::frames::{self, FreeFrames};
use crate::{call, map_va, refused, take, tables, Failure, Step};

/// A 64-bit data segment with DPL 0, as a native kernel would write it.
const DATA_DPL0: u64 = 0x00cf_9200_0000_ffff;
/// A 64-bit code segment with DPL 0.
const CODE64_DPL0: u64 = 0x00af_9a00_0000_ffff;
/// A present 64-bit TSS descriptor (system): never allowed in a guest GDT.
const TSS: u64 = 0x0000_8900_0000_0067;
/// DPL 3 and accessed: what the hypervisor's fix-up adds.
const DPL3_ACCESSED: u64 = (3 << 45) | (1 << 40);
/// Selector of GDT entry 1 with RPL 3.
const DATA_SELECTOR: u16 = (1 << 3) | 3;

fn set_gdt(frames: &[u64]) -> Result<(), hypercall::HypercallError> {
    let entries = frames.len() as u64 * 512;
    // SAFETY: the hypervisor reads `frames.len()` frame numbers from the slice.
    decode(unsafe { hypercall::hypercall2(Hypercall::SetGdt, frames.as_ptr() as u64, entries) }).map(|_| ())
}

fn update_descriptor(maddr: u64, descriptor: u64) -> Result<(), hypercall::HypercallError> {
    // SAFETY: the hypervisor checks the frame and the descriptor; nothing in this program
    // depends on the descriptor's previous value.
    decode(unsafe { hypercall::hypercall2(Hypercall::UpdateDescriptor, maddr, descriptor) }).map(|_| ())
}

fn read(va: u64, index: u64) -> u64 {
    // SAFETY: `va` maps the GDT frame (read-only); entries are 8-byte aligned words.
    unsafe { core::ptr::read_volatile((va + index * 8) as *const u64) }
}

pub fn descriptor_tables(free: &mut FreeFrames) -> Result<(), Failure> {
    let frame = take(free)?;
    let (va, mfn) = (frame.va(), frame.mfn);
    // SAFETY: a free frame mapped writable at its address; nothing else uses it.
    unsafe {
        frames::zero(va);
        core::ptr::write_volatile((va + 8) as *mut u64, DATA_DPL0);
        core::ptr::write_volatile((va + 16) as *mut u64, TSS);
        map_va(Step::RemapGdtReadOnly, va, tables::ro_pte(mfn))?;
    }
    let error = refused(Step::SetGdtWithSystemDescriptor, set_gdt(&[mfn.0]))?;
    println!("pagetables: a GDT frame holding a TSS descriptor refused ({error:?})");
    // SAFETY: remapping our own unused frame writable to clear the TSS, then back.
    unsafe {
        map_va(Step::RemapGdtReadOnly, va, tables::rw_pte(mfn))?;
        core::ptr::write_volatile((va + 16) as *mut u64, 0);
        map_va(Step::RemapGdtReadOnly, va, tables::ro_pte(mfn))?;
    }
    call(Step::SetGdt, set_gdt(&[mfn.0]))?;
    let fixed = read(va, 1);
    if fixed != DATA_DPL0 | DPL3_ACCESSED {
        return Err(Failure::Descriptor { index: 1, seen: fixed });
    }
    // SAFETY: entry 1 is now a flat data segment with DPL 3: loading it into ds (and the
    // null selector back) changes nothing a 64-bit program relies on.
    unsafe { asm!("mov ds, {0:x}", "xor {1:e}, {1:e}", "mov ds, {1:x}", in(reg) DATA_SELECTOR, out(reg) _, options(nostack)) };
    let maddr = (mfn.0 << 12) + 3 * 8;
    let error = refused(Step::UpdateSystemDescriptor, update_descriptor(maddr, TSS))?;
    call(Step::UpdateDescriptor, update_descriptor(maddr, CODE64_DPL0))?;
    let code = read(va, 3);
    if code != CODE64_DPL0 | DPL3_ACCESSED {
        return Err(Failure::Descriptor { index: 3, seen: code });
    }
    println!(
        "pagetables: own GDT loaded: ring-0 descriptors raised to DPL 3 ({fixed:#x}), selector {DATA_SELECTOR:#x} loads, TSS via update_descriptor refused ({error:?})"
    );
    // SAFETY: must be refused; were it accepted it maps our own frame again.
    let attempt = unsafe { map_va(Step::MapGdtWritable, va, tables::rw_pte(mfn)) };
    if attempt.is_ok() {
        return Err(Failure::NotRefused(Step::MapGdtWritable));
    }
    call(Step::ReleaseGdt, set_gdt(&[]))?;
    // SAFETY: the frame is no descriptor page any more; nothing else uses it.
    unsafe { map_va(Step::MapReleasedGdtWritable, va, tables::rw_pte(mfn))? };
    println!("pagetables: GDT frame refused writable while in use, writable again once released");
    Ok(())
}
