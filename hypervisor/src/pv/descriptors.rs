//! Guest descriptor tables: `set_gdt` and `update_descriptor`, and mapping a vCPU's GDT
//! frames into its CPU's GDT area (below the hypervisor's reserved page at 0xe000) when it
//! runs.
//!
//! A GDT frame holds a segment-descriptor type reference (so the guest cannot map it
//! writable) and only descriptors that passed [`hypervisor::descriptor::check`]. Pages of the
//! GDT area the guest does not use map a shared zero frame: a selector into them loads a null
//! descriptor and faults in the guest, never in the hypervisor.

use abi::errno::Errno;
use arrayvec::ArrayVec;
use hypervisor::descriptor;
use hypervisor::hypercall::GuestVa;
use mm::addr::{Mfn, PAGE_SIZE};

use crate::arch::gdt;
use crate::arch::paging::{self, MapKind};
use crate::arch::uaccess;
use crate::domain::Vcpu;
use crate::memory::{self, FrameMapping};
use crate::arch::percpu;
use crate::pv::hypercall::HcResult;
use crate::pv::mmu;

/// Guest GDT frames (the reserved hypervisor page is the 15th of the GDT area).
pub const MAX_FRAMES: usize = crate::arch::gdt::GUEST_GDT_MAX_FRAMES;
const DESCRIPTORS_PER_FRAME: usize = 512;

pub use crate::domain::vcpu::GuestGdt;

/// `set_gdt`: validates and takes the frames listed at `list`, drops the old ones, and
/// installs the new table on this CPU.
pub fn set_gdt(vcpu: &Vcpu, list: GuestVa, entries: u64) -> HcResult {
    let count = (entries as usize).div_ceil(DESCRIPTORS_PER_FRAME);
    let mut frames = ArrayVec::<Mfn, MAX_FRAMES>::new();
    for i in 0..count as u64 {
        let at = list.offset::<u64>(i).ok_or(Errno::Efault)?;
        let mfn: u64 = uaccess::read_value(at.0).map_err(|_| Errno::Efault)?;
        frames.push(Mfn(mfn));
    }
    install(vcpu, &frames)?;
    load(&vcpu.gdt.lock());
    Ok(0)
}

/// Takes and checks `frames` as the vCPU's GDT, dropping the frames it had.
pub fn install(vcpu: &Vcpu, frames: &[Mfn]) -> Result<(), Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    for (taken, &mfn) in frames.iter().enumerate() {
        if let Err(e) = take_frame(vcpu, mfn) {
            frames[..taken].iter().for_each(|&m| mmu::put_descriptor_page(m));
            return Err(e);
        }
    }
    let new = GuestGdt { frames: frames.iter().copied().collect() };
    let old = core::mem::replace(&mut *vcpu.gdt.lock(), new);
    old.frames.iter().for_each(|&m| mmu::put_descriptor_page(m));
    Ok(())
}

/// Takes a descriptor-page reference on `mfn` and checks (fixing up) every descriptor in it
/// (for a GDT here, for an LDT in `pv::ldt`). Call with the domain's page-table lock held.
pub fn take_frame(vcpu: &Vcpu, mfn: Mfn) -> Result<(), Errno> {
    mmu::get_descriptor_page(vcpu, mfn)?;
    let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
    let bytes = map.bytes();
    for chunk in bytes.chunks_exact_mut(8) {
        let raw = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        match descriptor::check(raw) {
            Ok(fixed) => chunk.copy_from_slice(&fixed.to_le_bytes()),
            Err(_) => {
                drop(map);
                mmu::put_descriptor_page(mfn);
                return Err(Errno::Einval);
            }
        }
    }
    Ok(())
}

/// `update_descriptor`: checks one descriptor and writes it at machine address `maddr` of
/// a frame the domain owns that is (or can become) a descriptor page.
pub fn update_descriptor(vcpu: &Vcpu, maddr: u64, raw: u64) -> HcResult {
    if !maddr.is_multiple_of(8) {
        return Err(Errno::Einval);
    }
    let fixed = descriptor::check(raw).map_err(|_| Errno::Einval)?;
    let mfn = Mfn(maddr / PAGE_SIZE);
    let _lock = vcpu.domain.mmu_lock.lock();
    mmu::get_descriptor_page(vcpu, mfn)?;
    {
        let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
        let offset = (maddr % PAGE_SIZE) as usize;
        map.bytes()[offset..offset + 8].copy_from_slice(&fixed.to_le_bytes());
    }
    mmu::put_descriptor_page(mfn);
    Ok(0)
}

/// Maps `gdt`'s frames into this CPU's GDT area (the rest: the zero frame).
pub fn load(gdt: &GuestGdt) {
    let area = memory::percpu_area(percpu::current().index).gdt.start;
    let zero = memory::zero_page();
    for page in 0..MAX_FRAMES {
        let va = area + page as u64 * PAGE_SIZE;
        let target = gdt.frames.get(page).copied().unwrap_or(zero);
        if paging::translate(va) != Some(target.addr().0) {
            paging::unmap(va);
            paging::map(va, target.addr().0, MapKind::ReadOnly).expect("the GDT page was just unmapped");
        }
    }
}

/// The descriptor `selector` names for `vcpu`, which runs on this CPU: an entry of its GDT
/// below the reserved page (the zero frame's null descriptors past its frames) or of its
/// LDT; `None` for the reserved page's selectors and past the LDT's entries.
pub fn lookup(vcpu: &Vcpu, selector: u16) -> Option<u64> {
    if selector & 4 != 0 {
        crate::pv::ldt::descriptor(vcpu, selector)
    } else {
        gdt::guest_descriptor(selector >> 3)
    }
}

/// Drops a dead vCPU's GDT frame references.
pub fn release(gdt: GuestGdt) {
    gdt.frames.iter().for_each(|&m| mmu::put_descriptor_page(m));
}
