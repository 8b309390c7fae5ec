//! `memory_op`: a domain's reservation — how many pages it holds and may hold — and the
//! balloon operations that move frames out of a domain (scrubbed, back to the allocator)
//! and into it again, up to its maximum.
//!
//! PV guests manage their own pseudo-physical map, so frames travel as machine frame numbers
//! in the extent arrays. A frame leaves a domain only when nothing references it (the guest
//! unmapped it and it is no page table); extents are handled in order and the call returns
//! how many were done, as Xen's does.

use abi::errno::Errno;
use abi::hypercall::MemoryOp;
use abi::ids::DomId;
use abi::memory::XenMemoryReservation;
use alloc::vec::Vec;
use hypervisor::hypercall::GuestVa;
use mm::addr::Mfn;
use mm::frame::Owner;

use crate::arch::uaccess;
use crate::domain::{self, Vcpu};
use crate::memory;
use crate::pv::hypercall::HcResult;

/// Extents handled per call before the guest is asked to call again (not needed yet: the
/// count is bounded by the domain's maximum).
const EXTENTS_PER_BATCH: u64 = 1 << 16;

pub fn memory_op(vcpu: &Vcpu, cmd: u32, start_extent: u64, arg: GuestVa) -> HcResult {
    let domain = &vcpu.domain;
    match MemoryOp::from_raw(cmd) {
        Some(MemoryOp::CurrentReservation) => {
            own_domain(vcpu, arg)?;
            Ok(domain.tot_pages())
        }
        Some(MemoryOp::MaximumReservation) => {
            own_domain(vcpu, arg)?;
            Ok(domain.memory.lock().max_pages)
        }
        Some(MemoryOp::MaximumGpfn) => {
            own_domain(vcpu, arg)?;
            Ok(domain.memory.lock().max_pages.saturating_sub(1))
        }
        Some(MemoryOp::IncreaseReservation | MemoryOp::PopulatePhysmap) => {
            let request = reservation(arg)?;
            increase(vcpu, &request, start_extent)
        }
        Some(MemoryOp::DecreaseReservation) => {
            let request = reservation(arg)?;
            decrease(vcpu, &request, start_extent)
        }
        _ => Err(Errno::Enosys),
    }
}

/// The domain-id argument of the query commands must name the caller.
fn own_domain(_vcpu: &Vcpu, arg: GuestVa) -> Result<(), Errno> {
    let id: u16 = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    if id == DomId::SELF.0 { Ok(()) } else { Err(Errno::Esrch) }
}

fn reservation(arg: GuestVa) -> Result<XenMemoryReservation, Errno> {
    let request: XenMemoryReservation = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    if request.domid != DomId::SELF {
        return Err(Errno::Esrch);
    }
    if request.extent_order != 0 {
        // Only single pages: contiguous machine memory is not promised to guests.
        return Err(Errno::Einval);
    }
    Ok(request)
}

fn extent_address(request: &XenMemoryReservation, index: u64) -> Result<u64, Errno> {
    GuestVa(request.extent_start).offset::<u64>(index).map(|va| va.0).ok_or(Errno::Efault)
}

/// Gives the domain new frames, writing their numbers into the extent array.
fn increase(vcpu: &Vcpu, request: &XenMemoryReservation, start: u64) -> HcResult {
    let end = request.nr_extents.min(start.saturating_add(EXTENTS_PER_BATCH));
    let mut done = start;
    while done < end {
        let slot = extent_address(request, done)?;
        uaccess::check_range(slot, 8).map_err(|_| Errno::Efault)?;
        let mut got = Vec::with_capacity(1);
        if vcpu.domain.populate(1, &mut got).is_err() {
            break;
        }
        if uaccess::write_value(slot, &got[0].0).is_err() {
            give_back(vcpu, got[0]);
            return Err(Errno::Efault);
        }
        done += 1;
    }
    Ok(done)
}

/// Takes frames named in the extent array away from the domain, scrubbed.
fn decrease(vcpu: &Vcpu, request: &XenMemoryReservation, start: u64) -> HcResult {
    // No page-table update of this domain may take a reference while frames leave it.
    let _tables = vcpu.domain.mmu_lock.lock();
    let end = request.nr_extents.min(start.saturating_add(EXTENTS_PER_BATCH));
    let mut done = start;
    while done < end {
        let mfn: u64 = uaccess::read_value(extent_address(request, done)?).map_err(|_| Errno::Efault)?;
        if !releasable(vcpu, Mfn(mfn)) {
            break;
        }
        give_back(vcpu, Mfn(mfn));
        done += 1;
    }
    Ok(done)
}

/// Whether `mfn` belongs to the domain's reservation and nothing references it.
fn releasable(vcpu: &Vcpu, mfn: Mfn) -> bool {
    let Ok(info) = memory::frames().frame(mfn) else { return false };
    info.owner() == Some(Owner::Domain(vcpu.domain.id))
        && mfn != vcpu.domain.shared_info
        && info.ref_count() == 0
        && info.type_info().count() == 0
}

/// Removes `mfn` from the domain, scrubs it and frees it.
fn give_back(vcpu: &Vcpu, mfn: Mfn) {
    let mut mem = vcpu.domain.memory.lock();
    if let Some(i) = mem.pages.iter().position(|&p| p == mfn) {
        mem.pages.swap_remove(i);
        drop(mem);
        domain::zero_frame(mfn);
        let _ = memory::frames().free(mfn);
    }
}
