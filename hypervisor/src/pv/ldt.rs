//! Guest local descriptor tables: `MMUEXT_SET_LDT` (and the LDT of `VCPUOP_initialise`),
//! and mapping a vCPU's LDT frames into its CPU's LDT area, where the LDT descriptor of the
//! reserved GDT page (selector 0xe050) points, when it runs.
//!
//! A guest names its LDT by linear address and entry count in its own address space (at
//! most 8192 entries, page aligned, never in the hypervisor's part). Every frame of it
//! holds a segment-descriptor type reference (so the guest cannot map it writable while it
//! is an LDT, nor use it as a page table) and only descriptors that passed
//! [`hypervisor::descriptor::check`], exactly as GDT frames (`pv::descriptors`).
//!
//! The frames are found and taken eagerly, when the LDT is set, by walking the guest's
//! kernel page tables (Xen's `guest_get_eff_kern_l1e`); Xen instead maps each LDT page
//! lazily from its #PF handler. Eager is simpler (no fault path that maps guest frames into
//! the hypervisor's area, no shadow mappings to invalidate when the guest drops an L1 entry)
//! and costs at most 16 walks per `set_ldt`, which a guest issues when an address space
//! with an LDT is switched to. What differs: a guest whose LDT is not mapped (or holds a
//! descriptor the check refuses) is told so at `set_ldt` (`EFAULT`, `EINVAL`) instead of
//! taking a #PF when it first uses a selector, and a later change of the guest's own mapping
//! of that address does not change the LDT until the next `set_ldt` of another range (as
//! with Xen's mappings made before the change). The frames hold their references until the
//! LDT is replaced or the vCPU is destroyed.
//!
//! Loading (on switch-in and on `set_ldt`) maps the frames read-only into the CPU's LDT
//! area (the zero frame elsewhere), writes the LDT descriptor with the exact limit (entries
//! x 8 - 1, so a selector past the guest's count faults in the guest) and `lldt`s it; a
//! vCPU without an LDT runs with LDTR null. Runs on the CPU running the vCPU.

use abi::errno::Errno;
use arrayvec::ArrayVec;
use mm::addr::{Mfn, PAGE_SIZE};

use crate::arch::paging::{self, MapKind};
use crate::arch::uaccess;
use crate::domain::Vcpu;
use crate::memory;
use crate::arch::percpu;
use crate::pv::{descriptors, mmu};

/// The most descriptors an LDT may hold (Xen's limit, 64 KiB).
pub const MAX_ENTRIES: u32 = 8192;
/// Frames of the largest LDT.
pub const MAX_FRAMES: usize = crate::arch::gdt::LDT_MAX_FRAMES;
const DESCRIPTORS_PER_FRAME: u64 = PAGE_SIZE / 8;

pub use crate::domain::vcpu::GuestLdt;

/// `MMUEXT_SET_LDT` for the calling vCPU: checks the range, takes the new frames, loads the
/// new LDT on this CPU and drops the old frames. Nothing changes on failure, and nothing
/// is done when the LDT is the one already set (as Xen).
pub fn set_ldt(vcpu: &Vcpu, base: u64, entries: u32) -> Result<(), Errno> {
    install(vcpu, base, entries)?;
    load(&vcpu.ldt.lock());
    Ok(())
}

/// Takes and checks the LDT at `base` (`entries` descriptors) in `vcpu`'s kernel address
/// space as its LDT, dropping the frames it had; the caller loads it where the vCPU runs.
pub fn install(vcpu: &Vcpu, base: u64, entries: u32) -> Result<(), Errno> {
    let base = if entries == 0 { 0 } else { base };
    if entries > MAX_ENTRIES || !base.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::Einval);
    }
    if entries > 0 {
        uaccess::check_range(base, u64::from(entries) * 8).map_err(|_| Errno::Einval)?;
    }
    {
        let current = vcpu.ldt.lock();
        if current.base == base && current.entries == entries {
            return Ok(());
        }
    }
    let frames = take_frames(vcpu, base, entries)?;
    let old = core::mem::replace(&mut *vcpu.ldt.lock(), GuestLdt { base, entries, frames });
    // The old frames stay mapped in this CPU's LDT area until the caller loads the new
    // table, with no guest code running in between: nothing reads them.
    release(old);
    Ok(())
}

/// The frames the guest's kernel tables map at the LDT's pages, each taken as a descriptor
/// page and checked.
fn take_frames(vcpu: &Vcpu, base: u64, entries: u32) -> Result<ArrayVec<Mfn, MAX_FRAMES>, Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let pages = u64::from(entries).div_ceil(DESCRIPTORS_PER_FRAME);
    let mut frames = ArrayVec::new();
    for page in 0..pages {
        let taken = mmu::kernel_frame_at(vcpu, base + page * PAGE_SIZE).and_then(|mfn| descriptors::take_frame(vcpu, mfn).map(|()| mfn));
        match taken {
            Ok(mfn) => frames.push(mfn),
            Err(e) => {
                frames.iter().for_each(|&m| mmu::put_descriptor_page(m));
                return Err(e);
            }
        }
    }
    Ok(frames)
}

/// Makes `ldt` this CPU's LDT: its frames mapped in the CPU's LDT area (the rest: the zero
/// frame), the LDT descriptor pointing there with its limit, LDTR loaded (null without one).
pub fn load(ldt: &GuestLdt) {
    let area = memory::percpu_area(percpu::current().index);
    let zero = memory::zero_page();
    for page in 0..MAX_FRAMES {
        let va = area.ldt.start + page as u64 * PAGE_SIZE;
        let target = ldt.frames.get(page).copied().unwrap_or(zero);
        if paging::translate(va) != Some(target.addr().0) {
            paging::unmap(va);
            paging::map(va, target.addr().0, MapKind::ReadOnly).expect("the LDT page was just unmapped");
        }
    }
    crate::arch::ldt::load(ldt.entries);
}

/// The descriptor `selector` names in the LDT of `vcpu`, which runs on this CPU; `None`
/// past its entries (or without an LDT).
pub fn descriptor(vcpu: &Vcpu, selector: u16) -> Option<u64> {
    let index = selector >> 3;
    if u32::from(index) >= vcpu.ldt.lock().entries {
        return None;
    }
    // The running vCPU's LDT is loaded in this CPU's area: the page holding an index below
    // its count maps one of its frames.
    crate::arch::ldt::entry(index)
}

/// Drops an LDT's frame references (replaced, or its vCPU destroyed).
pub fn release(ldt: GuestLdt) {
    ldt.frames.iter().for_each(|&m| mmu::put_descriptor_page(m));
}
