//! `memory_op`: a domain's reservation — how many pages it holds and may hold — and the
//! balloon operations that move frames out of a domain (scrubbed, back to the allocator)
//! and into it again, up to its maximum.
//!
//! PV guests manage their own pseudo-physical map, so frames travel as machine frame numbers
//! in the extent arrays. A frame leaves a domain only when nothing references it (the guest
//! unmapped it and it is no page table); extents are handled in order and the call returns
//! how many were done, as Xen's does. A long list stops between extents when
//! `crate::preempt` says so and continues through the start-extent bits of the command
//! (`MEMOP_EXTENT_SHIFT`), as Xen's does; each extent costs O(1) (see `DomainMemory`).
//!
//! The guest may have unmapped a frame without flushing (`UVMF_NONE`), so another of its
//! CPUs may still reach it through a stale TLB entry: frames leaving a domain are scrubbed
//! and freed only after every CPU that may hold the domain's translations has flushed, one
//! flush for up to [`FREE_BATCH`] frames (see `tlb`), and always before the call stops.

use abi::errno::Errno;
use abi::hypercall::MemoryOp;
use abi::ids::DomId;
use abi::memory::XenMemoryReservation;
use alloc::vec::Vec;
use arrayvec::ArrayVec;
use hypervisor::continuation::Outcome;
use hypervisor::hypercall::{GuestVa, Request};
use mm::addr::Mfn;
use mm::frame::Owner;

use crate::arch::uaccess;
use crate::domain::{self, Domain, Vcpu};
use crate::memory;
use crate::preempt;
use crate::pv::hypercall::stopped;
use crate::tlb::{self, Flush};

/// The most frames taken from a domain between two flushes of its CPUs.
const FREE_BATCH: usize = 256;

pub fn memory_op(vcpu: &Vcpu, request: Request, cmd: u32, start_extent: u64, arg: GuestVa) -> Outcome {
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
            let reservation = reservation(arg)?;
            increase(vcpu, request, &reservation, start_extent)
        }
        Some(MemoryOp::DecreaseReservation) => {
            let reservation = reservation(arg)?;
            decrease(vcpu, request, &reservation, start_extent)
        }
        _ => Err(Errno::Enosys.into()),
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
fn increase(vcpu: &Vcpu, request: Request, reservation: &XenMemoryReservation, start: u64) -> Outcome {
    let mut done = start;
    while done < reservation.nr_extents {
        if done > start && preempt::should_stop() {
            return Err(stopped(request, done - start));
        }
        let slot = extent_address(reservation, done)?;
        uaccess::check_range(slot, 8).map_err(|_| Errno::Efault)?;
        let mut got = Vec::with_capacity(1);
        if vcpu.domain.populate(1, &mut got).is_err() {
            break;
        }
        if uaccess::write_value(slot, &got[0].0).is_err() {
            // Never mapped: no CPU can hold a translation of it.
            if detach(&vcpu.domain, got[0]) {
                let mut one = ArrayVec::<Mfn, FREE_BATCH>::new();
                one.push(got[0]);
                scrub_and_free(&mut one);
            }
            return Err(Errno::Efault.into());
        }
        done += 1;
    }
    Ok(done)
}

/// Takes frames named in the extent array away from the domain, scrubbed.
fn decrease(vcpu: &Vcpu, request: Request, reservation: &XenMemoryReservation, start: u64) -> Outcome {
    // No page-table update of this domain may take a reference while frames leave it.
    let _tables = vcpu.domain.mmu_lock.lock();
    let mut done = start;
    let mut leaving = ArrayVec::<Mfn, FREE_BATCH>::new();
    let result = loop {
        if done >= reservation.nr_extents {
            break Ok(done);
        }
        if done > start && preempt::should_stop() {
            break Err(stopped(request, done - start));
        }
        let read = extent_address(reservation, done).and_then(|at| uaccess::read_value::<u64>(at).map_err(|_| Errno::Efault));
        let mfn = match read {
            Ok(mfn) => Mfn(mfn),
            Err(e) => break Err(e.into()),
        };
        // A frame named twice holds the reference `detach` took: the second is refused.
        if !releasable(vcpu, mfn) || !detach(&vcpu.domain, mfn) {
            break Ok(done);
        }
        leaving.push(mfn);
        if leaving.is_full() {
            release(&vcpu.domain, &mut leaving);
        }
        done += 1;
    };
    release(&vcpu.domain, &mut leaving);
    result
}

/// Whether `mfn` belongs to the domain's reservation and nothing references it.
fn releasable(vcpu: &Vcpu, mfn: Mfn) -> bool {
    let Ok(info) = memory::frames().frame(mfn) else { return false };
    info.owner() == Some(Owner::Domain(vcpu.domain.id))
        && mfn != vcpu.domain.shared_info
        && info.ref_count() == 0
        && info.type_info().count() == 0
}

/// Counts `mfn` out of the domain and takes a general reference on it, which it keeps until
/// it is freed (it stays the domain's in the frame table until then); false (and nothing
/// done) when the domain does not own it.
fn detach(domain: &Domain, mfn: Mfn) -> bool {
    if !domain.memory.lock().remove(domain.id, mfn) {
        return false;
    }
    memory::frames().frame(mfn).is_ok_and(|info| info.update_ref_count(|count| count.checked_add(1)).is_ok())
}

/// Scrubs and frees `frames` (detached from `domain`) once every CPU that may still hold a
/// translation of them has flushed.
fn release(domain: &Domain, frames: &mut ArrayVec<Mfn, FREE_BATCH>) {
    if frames.is_empty() {
        return;
    }
    tlb::flush_dirty(&domain.dirty_cpus, Flush::All);
    scrub_and_free(frames);
}

/// Drops the reference `detach` took on each frame, scrubs it and frees it.
fn scrub_and_free(frames: &mut ArrayVec<Mfn, FREE_BATCH>) {
    for mfn in frames.drain(..) {
        if let Ok(info) = memory::frames().frame(mfn) {
            let _ = info.update_ref_count(|count| count.checked_sub(1));
        }
        domain::zero_frame(mfn);
        if let Err(e) = memory::frames().free(mfn) {
            log::warn!("memory_op: frame {mfn} not freed: {e:?}");
        }
    }
}
