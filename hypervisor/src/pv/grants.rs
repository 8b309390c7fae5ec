//! `grant_table_op`: Xen's grant tables for PV domains, versions 1 and 2, on top of the
//! pure `grants` crate (the tables, the pin protocol, the maptrack) and `pvmm` (grant
//! mappings in L1 tables, reference counts).
//!
//! Each domain has a grant table (`Domain::grants`: its shared frames, allocated to the
//! domain, zeroed and held writable for the hypervisor for as long as they are its table,
//! so that they never become page tables; in version 2 its status frames too) and a
//! maptrack (`Domain::maptrack`: the grants of others it maps). Sizes are bounded per
//! domain (`grants::table::DEFAULT_MAX_FRAMES` frames, `grants::maptrack::DEFAULT_MAX_MAPS`
//! mappings) and every frame or heap allocation is checked before it is made.
//!
//! # References
//! A pin of a grant (a map, host and/or device, or a copy) takes, under the granter's
//! table lock, a general reference on the frame for its owner (refused unless the granter
//! owns it), and for writable access a writable-type reference, so that the frame can be
//! neither freed (ballooned out, or its domain destroyed) nor made a page table,
//! descriptor or shared frame while another domain may write it. These references belong
//! to the maptrack entry (or the copy) and are dropped when it goes. A host mapping's L1
//! entry holds its own (it is an ordinary L1 entry for `pvmm`), so however the guest
//! removes it the counts stay exact. Unmapping removes the entries of a batch, flushes
//! every CPU that may hold the mapper's translations (`tlb`), and only then drops the
//! grants' references and unpins (clearing `GTF_writing`/`GTF_reading`), so that no CPU
//! can reach the granter's frame through a stale TLB entry once the granter may reuse it.
//!
//! # Death
//! A dying domain's table is closed at destruction (no new pin). Its teardown
//! (`pv::teardown`) relinquishes its page tables (dropping its grant mappings' own
//! references), flushes, releases every mapping it holds ([`release_one_map`]: the
//! granters' entries are unpinned), then waits until no other domain uses one of its
//! grants or references one of its frames, and only then frees its frames and table. A
//! mapper that outlives its granter keeps reading valid memory until it unmaps.
//!
//! # Locks
//! A domain's grant table and maptrack are leaf locks, held only for table work and
//! temporary mappings; never across a page-table lock or a TLB flush (the page-table work,
//! flushes and writable types happen with them released). `set_version` holds the
//! domain's page-table lock around its table lock, so the guest cannot map a status frame
//! between the check that none is mapped and its release.
//!
//! This module never decides what an entry may contain (`pvmm`) or how a grant is checked
//! (`grants`).

use alloc::sync::Arc;
use core::cell::RefCell;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use abi::errno::Errno;
use abi::grant_table::{
    GntSt, GnttabCacheFlush, GnttabCopy, GnttabGetStatusFrames, GnttabGetVersion, GnttabMapGrantRef, GnttabOp,
    GnttabQuerySize, GnttabSetVersion, GnttabSetupTable, GnttabSwapGrantRef, GnttabUnmapAndReplace,
    GnttabUnmapGrantRef, GNTMAP_CONTAINS_PTE, GNTMAP_DEVICE_MAP, GNTMAP_GUEST_AVAIL0_SHIFT, GNTMAP_HOST_MAP,
    GNTMAP_READONLY, GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL,
};
use abi::ids::DomId;
use arrayvec::ArrayVec;
use grants::copy::{self, End};
use grants::table::{PinKind, PinRequest, Purpose, DEFAULT_MAX_FRAMES};
use grants::{MapEntry, SharedMemory, UnmapPlan, Version};
use hypervisor::continuation::{Outcome, Stop};
use hypervisor::hypercall::{GuestVa, Request};
use log::warn;
use mm::addr::{Mfn, PAGE_SIZE};
use mm::frame::{DomainId, FrameState, Owner};

use crate::arch::uaccess;
use crate::domain::{self, Domain, LifeState, Vcpu};
use crate::arch::tempmap;
use crate::memory::{self, FrameMapping};
use crate::preempt;
use crate::pv::hypercall::stopped;
use crate::pv::mmu::{self, PteAt};
use crate::tlb::{self, Flush};

/// Unmaps removed between two TLB flushes (Xen's `GNTTAB_UNMAP_BATCH_SIZE`).
const UNMAP_BATCH: usize = 32;

fn efault<E>(_: E) -> Errno {
    Errno::Efault
}

// ---- The shared frames, as this CPU reaches them ---------------------------------------

/// A grant table's frames through temporary mappings on this CPU, the last two kept for
/// the length of one operation (an entry and its status). Every access is atomic: the
/// granter reads and writes the same words from its own CPUs.
struct Mapped {
    cache: RefCell<ArrayVec<(Mfn, FrameMapping), 2>>,
}

impl Mapped {
    fn new() -> Mapped {
        Mapped { cache: RefCell::new(ArrayVec::new()) }
    }

    /// Runs `f` on the atomic `T` at byte `offset` of `mfn`, which must be aligned for `T`
    /// and inside the frame (the grant arithmetic guarantees it; anything else is a bug).
    /// The words are only ever accessed atomically by the hypervisor (the guest's own
    /// accesses are its own).
    fn with<T: tempmap::Shared, R>(&self, mfn: Mfn, offset: usize, f: impl FnOnce(&T) -> R) -> R {
        assert!(offset.is_multiple_of(size_of::<T>()) && offset + size_of::<T>() <= PAGE_SIZE as usize, "grant access at {offset}");
        let mut cache = self.cache.borrow_mut();
        let slot = match cache.iter().position(|(m, _)| *m == mfn) {
            Some(slot) => slot,
            None => {
                if cache.is_full() {
                    cache.remove(0);
                }
                cache.push((mfn, FrameMapping::new(mfn).expect("a temporary mapping slot is free")));
                cache.len() - 1
            }
        };
        f(cache[slot].1.atomic(offset))
    }

    fn u16<R>(&self, mfn: Mfn, offset: usize, f: impl FnOnce(&AtomicU16) -> R) -> R {
        self.with(mfn, offset, f)
    }

    fn u32<R>(&self, mfn: Mfn, offset: usize, f: impl FnOnce(&AtomicU32) -> R) -> R {
        self.with(mfn, offset, f)
    }

    fn u64<R>(&self, mfn: Mfn, offset: usize, f: impl FnOnce(&AtomicU64) -> R) -> R {
        self.with(mfn, offset, f)
    }
}

impl SharedMemory for Mapped {
    fn load_u16(&self, mfn: Mfn, offset: usize) -> u16 {
        self.u16(mfn, offset, |a| a.load(Ordering::Acquire))
    }

    fn load_u32(&self, mfn: Mfn, offset: usize) -> u32 {
        self.u32(mfn, offset, |a| a.load(Ordering::Acquire))
    }

    fn load_u64(&self, mfn: Mfn, offset: usize) -> u64 {
        self.u64(mfn, offset, |a| a.load(Ordering::Acquire))
    }

    fn store_u16(&self, mfn: Mfn, offset: usize, value: u16) {
        self.u16(mfn, offset, |a| a.store(value, Ordering::Release));
    }

    fn store_u32(&self, mfn: Mfn, offset: usize, value: u32) {
        self.u32(mfn, offset, |a| a.store(value, Ordering::Release));
    }

    fn store_u64(&self, mfn: Mfn, offset: usize, value: u64) {
        self.u64(mfn, offset, |a| a.store(value, Ordering::Release));
    }

    fn compare_exchange_u32(&self, mfn: Mfn, offset: usize, current: u32, new: u32) -> u32 {
        self.u32(mfn, offset, |a| match a.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(found) | Err(found) => found,
        })
    }

    fn fetch_or_u16(&self, mfn: Mfn, offset: usize, bits: u16) {
        self.u16(mfn, offset, |a| a.fetch_or(bits, Ordering::AcqRel));
    }

    fn fetch_clear_u16(&self, mfn: Mfn, offset: usize, bits: u16) {
        self.u16(mfn, offset, |a| a.fetch_and(!bits, Ordering::AcqRel));
    }

    fn zero(&self, mfn: Mfn) {
        crate::memory::zero_frame(mfn);
    }

    fn fence(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
}

// ---- Table frames -----------------------------------------------------------------------

/// A new frame for `domain`'s grant table: allocated to the domain (so it may map it),
/// zeroed, and held writable for the hypervisor. `None` when guests may take no more
/// frames.
fn alloc_table_frame(domain: &Domain) -> Option<Mfn> {
    if !memory::frames_for_guests(1) {
        return None;
    }
    let mfn = memory::frames().alloc(domain.owner()).ok()?;
    crate::memory::zero_frame(mfn);
    if mmu::hold_for_hypervisor(domain.id, mfn).is_err() {
        let _ = memory::frames().free(mfn);
        return None;
    }
    TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
    Some(mfn)
}

/// Frees frames a grant table no longer uses, which nothing but the hypervisor's hold
/// references and whose domain's CPUs have flushed since the guest last could map them.
fn free_table_frames(domain: &Domain, frames: &[Mfn]) {
    for &mfn in frames {
        mmu::release_for_hypervisor(mfn);
        crate::memory::zero_frame(mfn);
        if let Err(e) = memory::frames().free(mfn) {
            warn!("domain {}: grant frame {mfn} not freed: {e:?}", domain.id.0);
        }
        TABLE_FRAMES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The domain an operation names by id (`DOMID_SELF` or the caller's own id for the
/// caller): another domain only for a privileged caller (Xen's `XSM_TARGET`).
fn target(vcpu: &Vcpu, dom: DomId) -> Result<Arc<Domain>, GntSt> {
    let me = &vcpu.domain;
    if dom == DomId::SELF || dom.0 == me.id.0 {
        return Ok(me.clone());
    }
    let other = domain::lookup(DomainId(dom.0)).ok_or(GntSt::BadDomain)?;
    if me.privileged {
        Ok(other)
    } else {
        Err(GntSt::PermissionDenied)
    }
}

/// The domain an operation names to use its grants (`map`, `copy`): any domain by its id;
/// `DOMID_SELF` too where `self_ok` (copies), not for maps (as Xen).
fn granter(vcpu: &Vcpu, dom: DomId, self_ok: bool) -> Result<Arc<Domain>, GntSt> {
    if dom.0 == vcpu.domain.id.0 || (self_ok && dom == DomId::SELF) {
        return Ok(vcpu.domain.clone());
    }
    domain::lookup(DomainId(dom.0)).ok_or(GntSt::BadDomain)
}

fn grantee(vcpu: &Vcpu) -> DomId {
    DomId(vcpu.domain.id.0)
}

/// Writes field `value` of a guest struct at `base + offset`.
fn put_field<T: Copy>(base: u64, offset: usize, value: &T) -> Result<(), Errno> {
    uaccess::write_value(base + offset as u64, value).map_err(efault)
}

// ---- The hypercall --------------------------------------------------------------------

/// `grant_table_op`. Array commands run an element at a time, stop between elements when
/// the CPU should be let go and continue through Xen's continuation (the array advanced,
/// the count reduced); the single-struct ones want a count of 1.
pub fn grant_table_op(vcpu: &Vcpu, request: Request, op: GnttabOp, opaque: u32, uop: GuestVa, count: u64) -> Outcome {
    let single = |f: &dyn Fn() -> Result<u64, Errno>| if count == 1 { f().map_err(Stop::from) } else { Err(Errno::Einval.into()) };
    match op {
        GnttabOp::SetupTable => single(&|| setup_table(vcpu, uop.0)),
        GnttabOp::QuerySize => single(&|| query_size(vcpu, uop.0)),
        GnttabOp::GetStatusFrames => single(&|| get_status_frames(vcpu, uop.0)),
        GnttabOp::SetVersion => Ok(set_version(vcpu, uop.0)?),
        GnttabOp::GetVersion => Ok(get_version(vcpu, uop.0)?),
        GnttabOp::MapGrantRef => each::<GnttabMapGrantRef>(request, uop, count, |at, op| {
            map(vcpu, op);
            uaccess::write_value(at, op).map_err(efault)
        }),
        GnttabOp::UnmapGrantRef | GnttabOp::UnmapAndReplace => unmap_batches(vcpu, request, op, uop, count),
        GnttabOp::Copy => each::<GnttabCopy>(request, uop, count, |at, op| {
            let status = copy(vcpu, op).raw();
            put_field(at, offset_of!(GnttabCopy, status), &status)
        }),
        GnttabOp::SwapGrantRef => each::<GnttabSwapGrantRef>(request, uop, count, |at, op| {
            let status = vcpu.domain.grants.lock().swap(&Mapped::new(), op.ref_a, op.ref_b).raw();
            put_field(at, offset_of!(GnttabSwapGrantRef, status), &status)
        }),
        GnttabOp::CacheFlush => {
            // The continuation argument (a reference to resume a search from) is Xen's; this
            // hypervisor's searches never stop half-way, so it only says whether one did.
            let mut resume = opaque;
            let rest = Request::GrantTableOp { op, opaque: 0, uop, count };
            each::<GnttabCacheFlush>(rest, uop, count, |_, op| {
                let result = cache_flush(vcpu, op, resume);
                resume = 0;
                result
            })
        }
        // Page transfers between domains are not offered (netfront's long-gone "flip" mode);
        // XENFEAT flags and the rest of the interface do not depend on it.
        GnttabOp::Transfer => Err(Errno::Enosys.into()),
        // Not in Xen 4.17's dispatcher either.
        GnttabOp::DumpTable => Err(Errno::Enosys.into()),
    }
}

/// Runs `one` on each element of the guest array `uop[..count]`, read fresh; stops between
/// elements when the CPU should be let go. A fault reading an element, or `one`'s error,
/// ends the call with that error (what was done stays done).
fn each<T: Copy + Default>(
    request: Request,
    uop: GuestVa,
    count: u64,
    mut one: impl FnMut(u64, &mut T) -> Result<(), Errno>,
) -> Outcome {
    for i in 0..count {
        if i > 0 && preempt::should_stop() {
            return Err(stopped(request, i));
        }
        let at = uop.offset::<T>(i).ok_or(Errno::Efault)?.0;
        let mut op: T = uaccess::read_value(at).map_err(efault)?;
        one(at, &mut op)?;
    }
    Ok(0)
}

// ---- Setting up and asking ------------------------------------------------------------

fn setup_table(vcpu: &Vcpu, at: u64) -> Result<u64, Errno> {
    let op: GnttabSetupTable = uaccess::read_value(at).map_err(efault)?;
    if op.nr_frames > 0 {
        uaccess::check_range(op.frame_list, u64::from(op.nr_frames) * 8).map_err(efault)?;
    }
    let status = match target(vcpu, op.dom) {
        Err(status) => status,
        Ok(domain) => {
            let mut frames = ArrayVec::<Mfn, { DEFAULT_MAX_FRAMES as usize }>::new();
            let status = grow(&domain, op.nr_frames, &mut frames);
            let mut status = status;
            for (i, mfn) in (0u64..).zip(&frames) {
                if uaccess::write_value(op.frame_list + i * 8, &mfn.0).is_err() {
                    status = GntSt::BadVirtAddr;
                }
            }
            status
        }
    };
    put_field(at, offset_of!(GnttabSetupTable, status), &status.raw())?;
    Ok(0)
}

/// Grows `domain`'s table to `nr` frames and lists the first `nr` in `frames`.
fn grow(domain: &Domain, nr: u32, frames: &mut ArrayVec<Mfn, { DEFAULT_MAX_FRAMES as usize }>) -> GntSt {
    let mut table = domain.grants.lock();
    if nr > table.max_frames() || nr as usize > frames.capacity() {
        return GntSt::GeneralError;
    }
    if !memory::heap_has_room_for(u64::from(table.frames_to_grow(nr)) * 16) {
        return GntSt::GeneralError;
    }
    if table.grow(nr, &mut || alloc_table_frame(domain)).is_err() {
        return GntSt::GeneralError;
    }
    frames.extend(table.shared_frames()[..nr as usize].iter().copied());
    GntSt::Okay
}

fn query_size(vcpu: &Vcpu, at: u64) -> Result<u64, Errno> {
    let mut op: GnttabQuerySize = uaccess::read_value(at).map_err(efault)?;
    match target(vcpu, op.dom) {
        Err(status) => op.status = status.raw(),
        Ok(domain) => {
            let table = domain.grants.lock();
            op.nr_frames = table.nr_frames();
            op.max_nr_frames = table.max_frames();
            op.status = GntSt::Okay.raw();
        }
    }
    uaccess::write_value(at, &op).map_err(efault)?;
    Ok(0)
}

fn get_status_frames(vcpu: &Vcpu, at: u64) -> Result<u64, Errno> {
    let op: GnttabGetStatusFrames = uaccess::read_value(at).map_err(efault)?;
    let status = match target(vcpu, op.dom) {
        Err(status) => status,
        Ok(domain) => {
            let mut frames = ArrayVec::<Mfn, { DEFAULT_MAX_FRAMES as usize }>::new();
            let status = {
                let mut table = domain.grants.lock();
                if table.version() == Version::V2 && op.nr_frames > 0 && table.shared_frames().is_empty() {
                    // The first frame is allocated on demand; its status frame with it.
                    let _ = table.grow(1, &mut || alloc_table_frame(&domain));
                }
                if op.nr_frames > table.nr_status_frames() || op.nr_frames as usize > table.status_frames().len() {
                    GntSt::GeneralError
                } else {
                    frames.extend(table.status_frames()[..op.nr_frames as usize].iter().copied());
                    GntSt::Okay
                }
            };
            let mut status = status;
            for (i, mfn) in (0u64..).zip(&frames) {
                if uaccess::write_value(op.frame_list.wrapping_add(i * 8), &mfn.0).is_err() {
                    status = GntSt::BadVirtAddr;
                }
            }
            status
        }
    };
    put_field(at, offset_of!(GnttabGetStatusFrames, status), &status.raw())?;
    Ok(0)
}

fn get_version(vcpu: &Vcpu, at: u64) -> Result<u64, Errno> {
    let op: GnttabGetVersion = uaccess::read_value(at).map_err(efault)?;
    let domain = target(vcpu, op.dom).map_err(|status| match status {
        GntSt::PermissionDenied => Errno::Eperm,
        _ => Errno::Esrch,
    })?;
    let version = domain.grants.lock().version().number();
    put_field(at, offset_of!(GnttabGetVersion, version), &version)?;
    Ok(0)
}

/// `set_version`: see `grants::GrantTable::set_version`. Frames given up (status frames,
/// back to version 1) are freed only after the domain's CPUs have flushed, with the
/// page-table lock held throughout so that the guest cannot map them in between.
fn set_version(vcpu: &Vcpu, at: u64) -> Result<u64, Errno> {
    let mut op: GnttabSetVersion = uaccess::read_value(at).map_err(efault)?;
    let domain = &vcpu.domain;
    let result = match Version::from_number(op.version) {
        None => Err(Errno::Einval),
        Some(version) => {
            let _tables = domain.mmu_lock.lock();
            let (result, change) = domain.grants.lock().set_version(
                &Mapped::new(),
                version,
                &mut || alloc_table_frame(domain),
                &mmu::used_beyond_hold,
            );
            if !change.release.is_empty() {
                tlb::flush_dirty(&domain.dirty_cpus, Flush::All);
                free_table_frames(domain, &change.release);
            }
            result
        }
    };
    op.version = domain.grants.lock().version().number();
    uaccess::write_value(at, &op).map_err(efault)?;
    result.map(|()| 0)
}

// ---- Pins and the references that go with them ----------------------------------------

/// The pins one grant use holds on a granter's entry, and the references that go with
/// each: a general reference, plus a writable-type reference for a writable pin.
struct Held<'a> {
    granter: &'a Domain,
    gref: u32,
    mfn: Mfn,
    kinds: ArrayVec<PinKind, 2>,
    /// The writable-type references are taken.
    typed: bool,
}

impl Held<'_> {
    /// Drops the references, then the pins (clearing the granter's status bits with the
    /// last), and lets a teardown waiting for them look again.
    fn release(self) {
        for kind in &self.kinds {
            if self.typed && !kind.readonly {
                mmu::put_writable(self.granter, self.mfn);
            }
            mmu::put_frame(self.mfn);
        }
        let mut table = self.granter.grants.lock();
        let mem = Mapped::new();
        for &kind in &self.kinds {
            if !table.unpin(&mem, self.gref, kind) {
                warn!("grant: domain {} ref {} had no {kind:?} pin to drop", self.granter.id.0, self.gref);
            }
        }
        drop(table);
        super::teardown::foreign_reference_dropped();
    }
}

/// Pins `gref` of `granter` once per kind in `kinds` for the caller, taking a general
/// reference on the frame for each (the granter must own it), then the writable-type
/// references when the pins are writable.
fn hold<'a>(vcpu: &Vcpu, granter: &'a Domain, gref: u32, kinds: &[PinKind], purpose: Purpose) -> Result<(Held<'a>, grants::Pinned), GntSt> {
    let mem = Mapped::new();
    let mut table = granter.grants.lock();
    if granter.state() == LifeState::Dead {
        return Err(GntSt::GeneralError);
    }
    if !memory::heap_has_room_for(table.active_growth_bytes() as u64) {
        return Err(GntSt::NoSpace);
    }
    let mut held = Held { granter, gref, mfn: Mfn(0), kinds: ArrayVec::new(), typed: false };
    let mut pinned = None;
    for &kind in kinds {
        let request = PinRequest { gref, grantee: grantee(vcpu), kind, purpose };
        let now = match table.pin(&mem, request) {
            Ok(now) => now,
            Err(status) => {
                drop(table);
                held.release();
                return Err(status);
            }
        };
        if mmu::get_frame(granter.id, now.mfn).is_err() {
            // Not the granter's frame (any more): Xen's "could not pin" (a map), "bad page" (a copy).
            table.unpin(&mem, gref, kind);
            drop(table);
            held.release();
            return Err(if purpose == Purpose::Copy { GntSt::BadPage } else { GntSt::GeneralError });
        }
        held.mfn = now.mfn;
        held.kinds.push(kind);
        pinned = Some(now);
    }
    drop(table);
    let pinned = pinned.ok_or(GntSt::GeneralError)?;
    if kinds.iter().any(|k| !k.readonly) {
        held.typed = true;
        for (i, kind) in kinds.iter().enumerate() {
            if !kind.readonly && mmu::get_writable(granter, held.mfn).is_err() {
                // Drop the types taken so far; `release` then drops no type at all.
                for _ in 0..i {
                    mmu::put_writable(granter, held.mfn);
                }
                held.typed = false;
                held.release();
                return Err(GntSt::GeneralError);
            }
        }
    }
    Ok((held, pinned))
}

// ---- map_grant_ref ---------------------------------------------------------------------

fn map(vcpu: &Vcpu, op: &mut GnttabMapGrantRef) {
    match try_map(vcpu, op) {
        Ok((handle, mfn)) => {
            op.status = GntSt::Okay.raw();
            op.handle = handle;
            op.dev_bus_addr = mfn.0 << 12;
            MAPS.fetch_add(1, Ordering::Relaxed);
        }
        Err(status) => op.status = status.raw(),
    }
}

fn try_map(vcpu: &Vcpu, op: &GnttabMapGrantRef) -> Result<(u32, Mfn), GntSt> {
    if op.flags & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP) == 0 {
        return Err(GntSt::BadGntref);
    }
    let rd = granter(vcpu, op.dom, false)?;
    let ld = &vcpu.domain;
    let handle = {
        let mut maptrack = ld.maptrack.lock();
        if !memory::heap_has_room_for(maptrack.growth_bytes() as u64) {
            return Err(GntSt::NoDeviceSpace);
        }
        maptrack.reserve()?
    };
    match map_with(vcpu, &rd, op) {
        Ok(mfn) => {
            let flags = op.flags & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP | GNTMAP_READONLY | GNTMAP_CONTAINS_PTE);
            ld.maptrack.lock().fill(handle, MapEntry { granter: DomId(rd.id.0), gref: op.ref_, flags, mfn });
            Ok((handle, mfn))
        }
        Err(status) => {
            ld.maptrack.lock().cancel(handle);
            Err(status)
        }
    }
}

/// Pins the grant for the kinds of mapping asked for and writes the host mapping; on
/// failure undoes all of it.
fn map_with(vcpu: &Vcpu, rd: &Domain, op: &GnttabMapGrantRef) -> Result<Mfn, GntSt> {
    let readonly = op.flags & GNTMAP_READONLY != 0;
    let mut kinds = ArrayVec::<PinKind, 2>::new();
    if op.flags & GNTMAP_DEVICE_MAP != 0 {
        kinds.push(PinKind { device: true, readonly });
    }
    if op.flags & GNTMAP_HOST_MAP != 0 {
        kinds.push(PinKind { device: false, readonly });
    }
    let (held, _) = hold(vcpu, rd, op.ref_, &kinds, Purpose::Map)?;
    let mfn = held.mfn;
    if op.flags & GNTMAP_HOST_MAP != 0 {
        let at = if op.flags & GNTMAP_CONTAINS_PTE != 0 { PteAt::Machine(op.host_addr) } else { PteAt::Virtual(op.host_addr) };
        let value = pvmm::grant_entry(mfn, !readonly, u64::from(op.flags >> GNTMAP_GUEST_AVAIL0_SHIFT));
        if mmu::map_grant(vcpu, at, mfn, value).is_err() {
            held.release();
            return Err(GntSt::GeneralError);
        }
    }
    // The maptrack entry owns the pins and references from here on.
    core::mem::forget(held);
    Ok(mfn)
}

// ---- unmap_grant_ref and unmap_and_replace ------------------------------------------------

/// What one unmap removed, to be released after the batch's flush.
struct Undone {
    entry: MapEntry,
    plan: UnmapPlan,
}

impl Undone {
    fn release(&self) {
        let Some(granter) = domain::lookup(DomainId(self.entry.granter.0)) else {
            // A granter is kept until nothing uses its grants: this cannot happen.
            warn!("grant: granter {} of a mapping is gone", self.entry.granter.0);
            return;
        };
        let readonly = self.entry.readonly();
        let mut kinds = ArrayVec::<PinKind, 2>::new();
        if self.plan.device {
            kinds.push(PinKind { device: true, readonly });
        }
        if self.plan.host {
            kinds.push(PinKind { device: false, readonly });
        }
        Held { granter: &granter, gref: self.entry.gref, mfn: self.entry.mfn, kinds, typed: true }.release();
        UNMAPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unmaps the elements of `uop` in batches of [`UNMAP_BATCH`]: each batch's mappings are
/// removed, the caller's CPUs flushed, then the grants' references dropped and their
/// entries unpinned (Xen's `unmap_common` and `unmap_common_complete`).
fn unmap_batches(vcpu: &Vcpu, request: Request, op: GnttabOp, uop: GuestVa, count: u64) -> Outcome {
    let replace = op == GnttabOp::UnmapAndReplace;
    let size = if replace { size_of::<GnttabUnmapAndReplace>() } else { size_of::<GnttabUnmapGrantRef>() } as u64;
    let mut i = 0;
    while i < count {
        if i > 0 && preempt::should_stop() {
            return Err(stopped(request, i));
        }
        let mut batch = ArrayVec::<Undone, UNMAP_BATCH>::new();
        let mut fault = None;
        let end = (i + UNMAP_BATCH as u64).min(count);
        while i < end {
            let Some(at) = i.checked_mul(size).and_then(|o| uop.0.checked_add(o)) else {
                fault = Some(Errno::Efault);
                break;
            };
            let (handle, host_addr, dev_bus_addr, new_addr) = if replace {
                match uaccess::read_value::<GnttabUnmapAndReplace>(at) {
                    Ok(op) => (op.handle, op.host_addr, 0, Some(op.new_addr).filter(|&a| a != 0)),
                    Err(_) => {
                        fault = Some(Errno::Efault);
                        break;
                    }
                }
            } else {
                match uaccess::read_value::<GnttabUnmapGrantRef>(at) {
                    Ok(op) => (op.handle, op.host_addr, op.dev_bus_addr, None),
                    Err(_) => {
                        fault = Some(Errno::Efault);
                        break;
                    }
                }
            };
            let status = match unmap(vcpu, handle, host_addr, dev_bus_addr, new_addr) {
                Ok(undone) => {
                    batch.push(undone);
                    GntSt::Okay
                }
                Err(status) => status,
            };
            i += 1;
            let status_at = if replace { offset_of!(GnttabUnmapAndReplace, status) } else { offset_of!(GnttabUnmapGrantRef, status) };
            if put_field(at, status_at, &status.raw()).is_err() {
                fault = Some(Errno::Efault);
                break;
            }
        }
        if batch.iter().any(|u| u.plan.host) {
            tlb::flush_dirty(&vcpu.domain.dirty_cpus, Flush::All);
        }
        for undone in &batch {
            undone.release();
        }
        if let Some(errno) = fault {
            return Err(errno.into());
        }
    }
    Ok(0)
}

/// Removes the mapping(s) one unmap names, leaving the references to its caller.
fn unmap(vcpu: &Vcpu, handle: u32, host_addr: u64, dev_bus_addr: u64, new_addr: Option<u64>) -> Result<Undone, GntSt> {
    let ld = &vcpu.domain;
    let entry = ld.maptrack.lock().begin_unmap(handle)?;
    let plan = match UnmapPlan::for_request(&entry, host_addr, dev_bus_addr) {
        Ok(plan) => plan,
        Err(status) => {
            ld.maptrack.lock().end_unmap(handle, 0);
            return Err(status);
        }
    };
    if plan.host {
        let contains_pte = entry.flags & GNTMAP_CONTAINS_PTE != 0;
        let at = if contains_pte { PteAt::Machine(host_addr) } else { PteAt::Virtual(host_addr) };
        // A replacement exists only for virtual addresses (Xen).
        let removed = if contains_pte && new_addr.is_some() {
            Err(GntSt::GeneralError)
        } else {
            mmu::unmap_grant(vcpu, at, entry.mfn, !entry.readonly(), new_addr).map_err(|_| GntSt::GeneralError)
        };
        if let Err(status) = removed {
            ld.maptrack.lock().end_unmap(handle, 0);
            return Err(status);
        }
    }
    ld.maptrack.lock().end_unmap(handle, plan.flags());
    Ok(Undone { entry, plan })
}

// ---- copy ------------------------------------------------------------------------------

/// One end of a copy, claimed: the frame, the window of it the request may touch, and
/// what to give back.
struct Claimed<'a> {
    mfn: Mfn,
    start: u16,
    length: u16,
    grant: Option<Held<'a>>,
    /// A frame of the caller's: its general (and, as a destination, writable-type)
    /// reference.
    own: Option<(&'a Domain, bool)>,
}

impl Claimed<'_> {
    fn release(self) {
        if let Some(held) = self.grant {
            held.release();
        }
        if let Some((owner, writable)) = self.own {
            if writable {
                mmu::put_writable(owner, self.mfn);
            }
            mmu::put_frame(self.mfn);
        }
    }
}

fn claim<'a>(vcpu: &'a Vcpu, end: End, granter: Option<&'a Domain>, source: bool) -> Result<Claimed<'a>, GntSt> {
    match (end, granter) {
        (End::Grant { gref, .. }, Some(granter)) => {
            let kind = PinKind { device: false, readonly: source };
            let (held, pinned) = hold(vcpu, granter, gref, &[kind], Purpose::Copy)?;
            Ok(Claimed { mfn: pinned.mfn, start: pinned.start, length: pinned.length, grant: Some(held), own: None })
        }
        (End::Frame { mfn }, _) => {
            let owner: &Domain = &vcpu.domain;
            let mfn = Mfn(mfn);
            mmu::get_frame(owner.id, mfn).map_err(|_| GntSt::BadPage)?;
            if !source && mmu::get_writable(owner, mfn).is_err() {
                mmu::put_frame(mfn);
                return Err(GntSt::GeneralError);
            }
            Ok(Claimed { mfn, start: 0, length: PAGE_SIZE as u16, grant: None, own: Some((owner, !source)) })
        }
        (End::Grant { .. }, None) => Err(GntSt::BadDomain),
    }
}

/// One `GNTTABOP_copy`: both ends claimed (pinned or referenced, the destination
/// writable), the bounds checked, the bytes copied through temporary mappings, then all
/// given back.
fn copy(vcpu: &Vcpu, op: &GnttabCopy) -> GntSt {
    let (source, dest) = match copy::check_ends(op) {
        Ok(ends) => ends,
        Err(status) => return status,
    };
    let domain_of = |end: End| match end {
        End::Grant { domid, .. } => granter(vcpu, domid, true).map(Some),
        End::Frame { .. } => Ok(None),
    };
    let (source_domain, dest_domain) = match (domain_of(source), domain_of(dest)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(status), _) | (_, Err(status)) => return status,
    };
    let source = match claim(vcpu, source, source_domain.as_deref(), true) {
        Ok(claimed) => claimed,
        Err(status) => return status,
    };
    let dest = match claim(vcpu, dest, dest_domain.as_deref(), false) {
        Ok(claimed) => claimed,
        Err(status) => {
            source.release();
            return status;
        }
    };
    let checked = copy::check_page(op)
        .and_then(|()| copy::check_window(op.source.offset, op.len, source.start, source.length))
        .and_then(|()| copy::check_window(op.dest.offset, op.len, dest.start, dest.length));
    if checked.is_ok() {
        let (from, to, len) = (usize::from(op.source.offset), usize::from(op.dest.offset), usize::from(op.len));
        if source.mfn == dest.mfn {
            let mut frame = FrameMapping::new(source.mfn).expect("a temporary mapping slot is free");
            frame.bytes().copy_within(from..from + len, to);
        } else {
            let mut from_frame = FrameMapping::new(source.mfn).expect("a temporary mapping slot is free");
            let mut to_frame = FrameMapping::new(dest.mfn).expect("a temporary mapping slot is free");
            to_frame.bytes()[to..to + len].copy_from_slice(&from_frame.bytes()[from..from + len]);
        }
        COPIES.fetch_add(1, Ordering::Relaxed);
    }
    dest.release();
    source.release();
    match checked {
        Ok(()) => GntSt::Okay,
        Err(status) => status,
    }
}

// ---- cache_flush -------------------------------------------------------------------------

/// One `GNTTABOP_cache_flush`, as Xen on x86: the checks (a frame of the caller, or one a
/// grant of another domain lets it use), then nothing to write back: x86 caches are
/// coherent, and invalidating without writing back is not offered (`EOPNOTSUPP`).
/// `resume`: Xen's continuation argument, non-zero only if Xen stopped in a search.
fn cache_flush(vcpu: &Vcpu, op: &GnttabCacheFlush, resume: u32) -> Result<(), Errno> {
    let (offset, length) = (u32::from(op.offset), u32::from(op.length));
    let page = PAGE_SIZE as u32;
    if offset >= page || length > page || offset + length > page || op.op & !(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN) != 0 {
        return Err(Errno::Einval);
    }
    if length == 0 || op.op == 0 {
        return if resume == 0 { Ok(()) } else { Err(Errno::Eilseq) };
    }
    let mfn = Mfn(op.a >> 12);
    let info = memory::frames().frame(mfn).map_err(|_| Errno::Einval)?;
    let FrameState::Allocated(Owner::Domain(owner)) = info.state() else { return Err(Errno::Eperm) };
    if owner != vcpu.domain.id {
        let owner = domain::lookup(owner).ok_or(Errno::Eperm)?;
        if !owner.grants.lock().is_used_by(grantee(vcpu), mfn) {
            return Err(Errno::Einval);
        }
    }
    if op.op & GNTTAB_CACHE_CLEAN == 0 {
        return Err(Errno::Eopnotsupp);
    }
    Ok(())
}

// ---- Death -----------------------------------------------------------------------------

/// Closes `domain`'s grant table at its destruction: no new pin of its grants.
pub fn close(domain: &Domain) {
    domain.grants.lock().close();
}

/// Releases one mapping `domain` holds (its teardown, after its page tables are
/// relinquished and its CPUs flushed): false once none is left.
pub fn release_one_map(domain: &Domain) -> bool {
    let Some(entry) = domain.maptrack.lock().take_next() else {
        domain.maptrack.lock().shrink_if_empty();
        return false;
    };
    let plan = UnmapPlan { host: entry.host(), device: entry.device() };
    Undone { entry, plan }.release();
    true
}

/// Whether another domain still uses one of `domain`'s grants.
/// The builder's seeding of a new domain's table (libxl's): its first frame allocated and
/// each `(gref, frame)` of `entries` granted read-write to `backend`. The entries are the
/// guest's afterwards. `ENOMEM` when the frame cannot be had.
pub fn seed(domain: &Domain, backend: DomId, entries: &[(u32, Mfn)]) -> Result<(), Errno> {
    let mut frames = ArrayVec::<Mfn, { DEFAULT_MAX_FRAMES as usize }>::new();
    if grow(domain, 1, &mut frames) != GntSt::Okay {
        return Err(Errno::Enomem);
    }
    let table = domain.grants.lock();
    let mapped = Mapped::new();
    for &(gref, mfn) in entries {
        if !table.seed(&mapped, gref, backend, mfn.0) {
            return Err(Errno::Einval);
        }
    }
    Ok(())
}

pub fn in_use(domain: &Domain) -> bool {
    !domain.grants.lock().active().is_empty()
}

/// The frames of `domain`'s table, for its teardown (with their hold still on them).
pub fn table_frames(domain: &Domain) -> alloc::vec::Vec<Mfn> {
    let table = domain.grants.lock();
    let mut frames = alloc::vec::Vec::new();
    if frames.try_reserve(table.shared_frames().len() + table.status_frames().len()).is_ok() {
        frames.extend_from_slice(table.shared_frames());
        frames.extend_from_slice(table.status_frames());
    }
    frames
}

/// Drops the table's frames at the end of its domain's teardown (nothing else references
/// them by then): the hold released, the frames freed.
pub fn free_table(domain: &Domain) {
    let frames = domain.grants.lock().take_frames();
    free_table_frames(domain, &frames);
}

// ---- Figures -----------------------------------------------------------------------------

static MAPS: AtomicU64 = AtomicU64::new(0);
static UNMAPS: AtomicU64 = AtomicU64::new(0);
static COPIES: AtomicU64 = AtomicU64::new(0);
static TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// `summary: grants.maps`, `.unmaps`, `.copies` and `.table_frames` (frames of grant tables
/// still allocated: 0 once every domain is gone).
pub fn report() {
    log::info!("summary: grants.maps={}", MAPS.load(Ordering::Relaxed));
    log::info!("summary: grants.unmaps={}", UNMAPS.load(Ordering::Relaxed));
    log::info!("summary: grants.copies={}", COPIES.load(Ordering::Relaxed));
    log::info!("summary: grants.table_frames={}", TABLE_FRAMES.load(Ordering::Relaxed));
}
