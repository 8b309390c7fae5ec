//! `memory_op`: a domain's reservation — how many pages it holds and may hold — the
//! balloon operations that move frames out of a domain (scrubbed, back to the allocator)
//! and into it again, up to its maximum, `exchange`, which trades frames for others
//! (machine-contiguous ones, or ones below an address limit), and the queries that
//! describe the machine-to-physical table (`m2p`) and the machine.
//!
//! PV guests manage their own pseudo-physical map, so frames travel as machine frame numbers
//! in the extent arrays: `increase_reservation` writes the new frames' numbers there,
//! `populate_physmap` reads the guest frame each extent is for, gives its frames those
//! guest frames in the M2P table and writes the machine frame back, as Xen does for a PV
//! guest. Extents hold `2^extent_order` machine-contiguous frames (up to order 9, 2 MiB;
//! 12 for domain 0, as Xen's `max_order`). A frame leaves a domain only when nothing
//! references it (the guest unmapped it and it is no page table); its M2P entry is cleared
//! before it is freed. Extents are handled in order and the call returns how many were
//! done, as Xen's does; a call Xen refuses before doing anything (an unreadable request, a
//! bad domain, order or address width, a list that is not guest memory: see
//! `hypervisor::memop`) returns its start extent. A long list stops between extents when
//! `crate::preempt` says so and continues through the start-extent bits of the command
//! (`MEMOP_EXTENT_SHIFT`); an exchange stops between chunks with `nr_exchanged` written
//! back and is issued again as it stands, as Xen's. Each frame costs O(1) (see
//! `DomainMemory`); a contiguous extent costs a scan of the frame table's metadata.
//!
//! The domain named is the caller (`DOMID_SELF` or its own id); domain 0 may name any
//! domain that runs, as Xen lets the control domain. Changes to a domain's frames run
//! under its page-table lock, so no page-table update takes a reference meanwhile and no
//! other `memory_op` or `MMU_MACHPHYS_UPDATE` of the domain interleaves.
//!
//! The guest may have unmapped a frame without flushing (`UVMF_NONE`), so another of its
//! CPUs may still reach it through a stale TLB entry: frames leaving a domain are scrubbed
//! and freed only after every CPU that may hold the domain's translations has flushed, one
//! flush for up to [`FREE_BATCH`] frames (see `tlb`), and always before the call stops.

use abi::errno::Errno;
use abi::hypercall::MemoryOp;
use abi::ids::DomId;
use abi::memory::{XenMachphysMfnList, XenMemoryExchange, XenMemoryMap, XenMemoryReservation, XENMEMF_POPULATE_ON_DEMAND};
use alloc::sync::Arc;
use alloc::vec::Vec;
use arrayvec::ArrayVec;
use hypervisor::continuation::Outcome;
use hypervisor::hypercall::{GuestVa, Request};
use hypervisor::memop::{plan_exchange, plan_reservation, frame_limit, Exchange, ExchangePlan, GuestRange, ReservationPlan};
use mm::addr::Mfn;
use mm::frame::{DomainId, Owner};

use crate::arch::uaccess;
use crate::domain::{self, Domain, LifeState, Vcpu};
use crate::m2p;
use crate::memory;
use crate::preempt;
use crate::pv::hypercall::stopped;
use crate::tlb::{self, Flush};

/// The most frames taken from a domain between two flushes of its CPUs.
const FREE_BATCH: usize = 256;
/// Byte offset of `nr_exchanged` in `xen_memory_exchange`.
const NR_EXCHANGED_OFFSET: u64 = 64;
/// Byte offset of `nr_extents` in `xen_machphys_mfn_list`.
const NR_EXTENTS_OFFSET: u64 = 16;

pub fn memory_op(vcpu: &Vcpu, request: Request, cmd: u32, start_extent: u64, arg: GuestVa) -> Outcome {
    let Some(op) = MemoryOp::from_raw(cmd) else { return Err(Errno::Enosys.into()) };
    match op {
        MemoryOp::IncreaseReservation | MemoryOp::DecreaseReservation | MemoryOp::PopulatePhysmap => {
            reservation_op(vcpu, request, op, start_extent, arg)
        }
        // The commands that take no start extent refuse one, as Xen's; the architecture's
        // own commands do not know a command with those bits set.
        MemoryOp::Exchange | MemoryOp::MaximumRamPage | MemoryOp::CurrentReservation | MemoryOp::MaximumReservation | MemoryOp::MaximumGpfn
            if start_extent != 0 =>
        {
            Err(Errno::Einval.into())
        }
        _ if start_extent != 0 => Err(Errno::Enosys.into()),
        MemoryOp::Exchange => exchange(vcpu, request, arg),
        MemoryOp::MaximumRamPage => Ok(m2p::max_page()),
        MemoryOp::CurrentReservation | MemoryOp::MaximumReservation | MemoryOp::MaximumGpfn => Ok(query(vcpu, op, arg)?),
        MemoryOp::MachphysMfnList => Ok(machphys_mfn_list(arg)?),
        MemoryOp::MachphysMapping => {
            let mapping = m2p::machphys_mapping(vcpu.domain.privileged);
            uaccess::write_value(arg.0, &mapping).map_err(|_| Errno::Efault)?;
            Ok(0)
        }
        MemoryOp::MemoryMap => {
            // Xen answers ENOSYS to a domain whose toolstack set no pseudo-physical map (a
            // PV domU's usual case; Linux then builds its map from its reservation), after
            // reading the request.
            let _: XenMemoryMap = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
            Err(Errno::Enosys.into())
        }
        _ => Err(Errno::Enosys.into()),
    }
}

/// The domain a request names: the caller for `DOMID_SELF` or its own id; for domain 0,
/// any domain that runs. ESRCH for a domain that does not exist (or no longer runs), EPERM
/// for another domain named by one that is not domain 0 (Xen's `XSM_TARGET`).
fn target_domain(vcpu: &Vcpu, domid: DomId) -> Result<Arc<Domain>, Errno> {
    if domid == DomId::SELF || domid.0 == vcpu.domain.id.0 {
        return Ok(vcpu.domain.clone());
    }
    let target = domain::lookup(DomainId(domid.0)).filter(|d| d.state() == LifeState::Running).ok_or(Errno::Esrch)?;
    if vcpu.domain.privileged { Ok(target) } else { Err(Errno::Eperm) }
}

/// The query commands, which take a `domid_t`.
fn query(vcpu: &Vcpu, op: MemoryOp, arg: GuestVa) -> Result<u64, Errno> {
    let domid: DomId = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let target = target_domain(vcpu, domid)?;
    Ok(match op {
        MemoryOp::CurrentReservation => target.tot_pages(),
        MemoryOp::MaximumReservation => target.memory.lock().max_pages,
        // A PV guest says how many entries its P2M has in its shared info (Xen's
        // `domain_get_maximum_gpfn`); the last is one fewer.
        _ => crate::pv::shared::with_shared(&target, |shared| shared.arch.max_pfn).max(1) - 1,
    })
}

/// `XENMEM_machphys_mfn_list`: the first frame of each 2 MiB chunk of the M2P table, as
/// many as the guest's array holds, and how many were written.
fn machphys_mfn_list(arg: GuestVa) -> Result<u64, Errno> {
    let request: XenMachphysMfnList = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let Some(geometry) = m2p::geometry() else { return Err(Errno::Enosys) };
    let count = pvmm::m2p::mfn_list_extents(&geometry, request.max_extents);
    for (i, chunk) in m2p::chunks().iter().take(count as usize).enumerate() {
        let at = GuestVa(request.extent_start).offset::<u64>(i as u64).ok_or(Errno::Efault)?;
        uaccess::write_value(at.0, &chunk.0).map_err(|_| Errno::Efault)?;
    }
    uaccess::write_value(arg.0 + NR_EXTENTS_OFFSET, &(count as u32)).map_err(|_| Errno::Efault)?;
    Ok(0)
}

/// Increase, decrease and populate: checked as Xen does (anything refused returns the
/// start extent), then done extent by extent.
fn reservation_op(vcpu: &Vcpu, request: Request, op: MemoryOp, start: u64, arg: GuestVa) -> Outcome {
    let Ok(reservation) = uaccess::read_value::<XenMemoryReservation>(arg.0) else { return Ok(start) };
    let Ok(target) = target_domain(vcpu, reservation.domid) else { return Ok(start) };
    let list_optional = op == MemoryOp::IncreaseReservation;
    let plan = plan_reservation(&reservation, start, vcpu.domain.privileged, m2p::max_page(), list_optional);
    let Some(plan) = plan.filter(|p| p.list.is_none_or(is_guest)) else { return Ok(start) };
    match op {
        MemoryOp::IncreaseReservation => increase(request, &target, &plan),
        // Populate-on-demand is for translated (HVM) domains; a PV domain gets nothing.
        MemoryOp::PopulatePhysmap if reservation.mem_flags & XENMEMF_POPULATE_ON_DEMAND != 0 => Ok(start),
        MemoryOp::PopulatePhysmap => populate(request, &target, &plan),
        _ => decrease(request, &target, &plan),
    }
}

fn is_guest(range: GuestRange) -> bool {
    uaccess::check_range(range.start, range.len).is_ok()
}

/// The address of entry `index` of the extent list `plan` checked (from its start).
fn list_entry(plan: &ReservationPlan, index: u64) -> Option<u64> {
    plan.list.map(|list| list.start + (index - plan.start) * 8)
}

/// Gives the domain new extents, writing their first frames into the extent list (when
/// there is one). An extent whose number cannot be written stays the domain's and the call
/// ends there, as Xen's.
fn increase(request: Request, target: &Domain, plan: &ReservationPlan) -> Outcome {
    let mut done = plan.start;
    while done < plan.count {
        if done > plan.start && preempt::should_stop() {
            return Err(stopped(request, done - plan.start));
        }
        let Ok(first) = target.populate_extent(plan.order, plan.below) else { break };
        if let Some(at) = list_entry(plan, done) {
            if uaccess::write_value(at, &first.0).is_err() {
                break;
            }
        }
        done += 1;
    }
    Ok(done)
}

/// `populate_physmap` for a PV domain: each entry of the list names the guest frame an
/// extent is for; the new frames get those guest frames in the M2P table, and the entry
/// gets the extent's first machine frame.
fn populate(request: Request, target: &Domain, plan: &ReservationPlan) -> Outcome {
    // M2P entries of the domain's frames change only under its page-table lock (a frame
    // given back meanwhile would keep a stale entry).
    let _tables = target.mmu_lock.lock();
    let mut m2p = m2p::Writer::new();
    let mut done = plan.start;
    while done < plan.count {
        if done > plan.start && preempt::should_stop() {
            return Err(stopped(request, done - plan.start));
        }
        let Some(at) = list_entry(plan, done) else { break };
        let Ok(gpfn) = uaccess::read_value::<u64>(at) else { break };
        let Ok(first) = target.populate_extent(plan.order, plan.below) else { break };
        for k in 0..1u64 << plan.order {
            m2p.set(Mfn(first.0 + k), gpfn.wrapping_add(k));
        }
        if uaccess::write_value(at, &first.0).is_err() {
            break;
        }
        done += 1;
    }
    Ok(done)
}

/// Takes the extents named in the list away from the domain, scrubbed: an extent goes
/// whole or not at all, and the call ends at the first that cannot go.
fn decrease(request: Request, target: &Domain, plan: &ReservationPlan) -> Outcome {
    // No page-table update of this domain may take a reference while frames leave it.
    let _tables = target.mmu_lock.lock();
    let mut done = plan.start;
    let mut leaving = ArrayVec::<Mfn, FREE_BATCH>::new();
    let mut m2p = m2p::Writer::new();
    let result = loop {
        if done >= plan.count {
            break Ok(done);
        }
        if done > plan.start && preempt::should_stop() {
            break Err(stopped(request, done - plan.start));
        }
        let read = list_entry(plan, done).ok_or(Errno::Efault).and_then(|at| uaccess::read_value::<u64>(at).map_err(|_| Errno::Efault));
        let Ok(first) = read else { break Ok(done) };
        let frames = extent_frames(first, plan.order);
        // A frame named twice holds the reference `detach` took: the second is refused.
        if frames.clone().any(|mfn| !releasable(target, mfn)) {
            break Ok(done);
        }
        for mfn in frames {
            if !detach(target, mfn) {
                // Unreachable: checked releasable under the lock. Counted out all the same.
                continue;
            }
            if leaving.is_full() {
                release(target, &mut leaving, &mut m2p);
            }
            leaving.push(mfn);
        }
        done += 1;
    };
    release(target, &mut leaving, &mut m2p);
    result
}

/// The frames of an extent of `2^order` frames from `first` (none past the last frame).
fn extent_frames(first: u64, order: u32) -> impl Iterator<Item = Mfn> + Clone {
    (0..1u64 << order).map_while(move |k| first.checked_add(k).map(Mfn))
}

/// Whether `mfn` belongs to the domain's reservation and nothing references it.
fn releasable(domain: &Domain, mfn: Mfn) -> bool {
    let Ok(info) = memory::frames().frame(mfn) else { return false };
    info.owner() == Some(Owner::Domain(domain.id)) && mfn != domain.shared_info && info.ref_count() == 0 && info.type_info().count() == 0
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

/// Undoes [`detach`] for frames that stay the domain's after all.
fn keep(domain: &Domain, frames: &[Mfn]) {
    for &mfn in frames {
        domain.memory.lock().keep(domain.id, mfn);
        if let Ok(info) = memory::frames().frame(mfn) {
            let _ = info.update_ref_count(|count| count.checked_sub(1));
        }
    }
}

/// Scrubs and frees `frames` (detached from `domain`) once every CPU that may still hold a
/// translation of them has flushed.
fn release(domain: &Domain, frames: &mut ArrayVec<Mfn, FREE_BATCH>, m2p: &mut m2p::Writer) {
    if frames.is_empty() {
        return;
    }
    tlb::flush_dirty(&domain.dirty_cpus, Flush::All);
    scrub_and_free(frames.drain(..), m2p);
}

/// Drops the reference `detach` took on each frame, clears its M2P entry, scrubs it and
/// frees it.
fn scrub_and_free(frames: impl Iterator<Item = Mfn>, m2p: &mut m2p::Writer) {
    for mfn in frames {
        if let Ok(info) = memory::frames().frame(mfn) {
            let _ = info.update_ref_count(|count| count.checked_sub(1));
        }
        m2p.clear(mfn);
        crate::memory::zero_frame(mfn);
        if let Err(e) = memory::frames().free(mfn) {
            log::warn!("memory_op: frame {mfn} not freed: {e:?}");
        }
    }
}

/// `XENMEM_exchange`, as Xen's `memory_exchange`: checked whole first (see
/// `hypervisor::memop::plan_exchange`), then chunk by chunk, each all or nothing: its
/// input frames are taken from the domain (each must be the domain's and unreferenced,
/// EINVAL otherwise), its output extents allocated (ENOMEM when none is free below the
/// output's address limit), and only then do the inputs leave (flushed, their M2P entries
/// cleared, scrubbed and freed, [`FREE_BATCH`] at a time and always before the call ends
/// or stops) and the outputs get their guest frames' M2P entries and their machine frames
/// written into the output list. `nr_exchanged` is written back whenever the call ends
/// (done, failed or stopped between chunks, to be issued again as it stands).
fn exchange(vcpu: &Vcpu, request: Request, arg: GuestVa) -> Outcome {
    let mut x: XenMemoryExchange = uaccess::read_value(arg.0).map_err(|_| Errno::Efault)?;
    let plan = match plan_exchange(&x, vcpu.domain.privileged, is_guest) {
        Ok(Exchange::Done) => return Ok(0),
        Ok(Exchange::Chunks(plan)) => plan,
        Err(e) => {
            written_back(arg, &x)?;
            return Err(e.into());
        }
    };
    let target = match target_domain(vcpu, x.input.domid) {
        Ok(target) => target,
        Err(e) => {
            written_back(arg, &x)?;
            return Err(e.into());
        }
    };
    // Xen takes any width here: one of a page or less leaves no frame to allocate.
    let below = frame_limit(x.output.address_bits(), m2p::max_page()).unwrap_or(0);
    // M2P entries and frames of the domain change only under its page-table lock.
    let tables = target.mmu_lock.lock();
    let mut leaving = ArrayVec::<Mfn, FREE_BATCH>::new();
    let mut m2p = m2p::Writer::new();
    let mut result = Ok(0);
    x.nr_exchanged = x.input.nr_extents;
    for chunk in plan.first_chunk..plan.chunks {
        if chunk != plan.first_chunk && preempt::should_stop() {
            x.nr_exchanged = plan.exchanged_at(chunk);
            result = Err(stopped(request, 0));
            break;
        }
        if let Err(e) = exchange_chunk(&target, &x, &plan, chunk, below, &mut leaving, &mut m2p) {
            x.nr_exchanged = plan.exchanged_at(chunk);
            result = Err(e.into());
            break;
        }
    }
    release(&target, &mut leaving, &mut m2p);
    drop(m2p);
    drop(tables);
    written_back(arg, &x)?;
    result
}

/// Writes `nr_exchanged` back into the guest's request.
fn written_back(arg: GuestVa, x: &XenMemoryExchange) -> Result<(), Errno> {
    uaccess::write_value(arg.0 + NR_EXCHANGED_OFFSET, &x.nr_exchanged).map_err(|_| Errno::Efault)
}

/// One chunk of an exchange (see [`exchange`]), with the domain's page-table lock held;
/// its input frames join `leaving` once the chunk cannot fail.
fn exchange_chunk(
    target: &Domain,
    x: &XenMemoryExchange,
    plan: &ExchangePlan,
    chunk: u64,
    below: u64,
    leaving: &mut ArrayVec<Mfn, FREE_BATCH>,
    m2p: &mut m2p::Writer,
) -> Result<(), Errno> {
    let frames = plan.frames_per_chunk();
    let (mut taken, mut outputs) = (Vec::new(), Vec::new());
    if !memory::heap_has_room_for((frames + plan.out_per_chunk()) * 8)
        || taken.try_reserve_exact(frames as usize).is_err()
        || outputs.try_reserve_exact(plan.out_per_chunk() as usize).is_err()
    {
        return Err(Errno::Enomem);
    }
    let entry = |list: u64, index: u64| GuestVa(list).offset::<u64>(index).map(|va| va.0).ok_or(Errno::Efault);
    let steal = |taken: &mut Vec<Mfn>| -> Result<(), Errno> {
        for j in 0..plan.in_per_chunk() {
            let at = entry(x.input.extent_start, plan.in_index(chunk, j))?;
            let first: u64 = uaccess::read_value(at).map_err(|_| Errno::Efault)?;
            let extent = extent_frames(first, plan.in_order);
            if extent.clone().count() as u64 != 1 << plan.in_order {
                return Err(Errno::Einval);
            }
            for mfn in extent {
                // A frame named twice holds the reference `detach` took: refused.
                if !releasable(target, mfn) || !detach(target, mfn) {
                    return Err(Errno::Einval);
                }
                taken.push(mfn);
            }
        }
        Ok(())
    };
    if let Err(e) = steal(&mut taken) {
        keep(target, &taken);
        return Err(e);
    }
    for _ in 0..plan.out_per_chunk() {
        match target.populate_extent(plan.out_order, below) {
            Ok(first) => outputs.push(first),
            Err(_) => {
                // Never mapped (the lock is held, and the guest never learnt them).
                for &first in &outputs {
                    for mfn in extent_frames(first.0, plan.out_order) {
                        if detach(target, mfn) {
                            scrub_and_free(core::iter::once(mfn), m2p);
                        }
                    }
                }
                keep(target, &taken);
                return Err(Errno::Enomem);
            }
        }
    }
    // The chunk cannot fail from here on: the inputs leave, the outputs are the guest's.
    for mfn in taken {
        if leaving.is_full() {
            release(target, leaving, m2p);
        }
        leaving.push(mfn);
    }
    let mut result = Ok(());
    for (j, &first) in outputs.iter().enumerate() {
        let Ok(at) = entry(x.output.extent_start, plan.out_index(chunk, j as u64)) else {
            result = Err(Errno::Efault);
            continue;
        };
        let Ok(gpfn) = uaccess::read_value::<u64>(at) else {
            result = Err(Errno::Efault);
            continue;
        };
        for k in 0..1u64 << plan.out_order {
            m2p.set(Mfn(first.0 + k), gpfn.wrapping_add(k));
        }
        if uaccess::write_value(at, &first.0).is_err() {
            result = Err(Errno::Efault);
        }
    }
    result
}
