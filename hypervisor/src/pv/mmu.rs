//! Guest page-table management: the hypercalls (`mmu_update`, with its
//! machine-to-physical updates, `mmuext_op`,
//! `update_va_mapping`, and `mov` to CR3) on top of the `pvmm` crate's validation and
//! reference counting, plus pinning a new domain's tables, relinquishing a dead one's, the
//! references that keep frames the hypervisor writes for a domain out of every protected
//! type ([`hold_for_hypervisor`]), and for `pv::grants` the grant mappings in a domain's L1
//! tables ([`map_grant`], [`unmap_grant`]) and the references a grant holds on the frame it
//! names ([`get_frame`], [`get_writable`]).
//!
//! Every operation runs under the domain's page-table lock (a [`crate::cpus::CallLock`]: a
//! type change may wait for other CPUs' flushes with it held); table frames are read and
//! written through temporary mappings. Stale translations follow the TLB discipline of
//! [`crate::tlb`]: when a frame takes a protected type (or the writable type after being a
//! table) the domain's dirty CPUs that may still hold a translation of it are flushed, and
//! when the last reference of a type goes the frame is stamped with the TLB clock. Flushes a
//! guest asks for reach the domain's dirty CPUs (`UVMF_ALL`, `MMUEXT_*_ALL`) or the CPUs
//! running the vCPUs it names (`UVMF_MULTI`, `MMUEXT_*_MULTI`), after the lock is dropped.
//!
//! The batches (`mmu_update`, `mmuext_op`) stop between entries when `crate::preempt` says
//! so and continue as Xen's do (the list advanced, the count reduced with
//! `MMU_UPDATE_PREEMPTED` set, `done` accumulated through the guest's pointer). pvmm's walks
//! (validating or devalidating a tree, relinquishing a domain) stop when a slice's work
//! budget is spent ([`Tables`]: a few thousand entries or ~30 us) and return
//! `MmError::Restart`: a guest's call runs one slice per stay ([`one_slice`]) and is issued
//! again; what no guest call can make long runs to the end ([`until_done`]).

use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayVec;
use abi::errno::Errno;
use abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use abi::ids::DomId;
use abi::mmu::{decode_uvmf, MmuUpdate, MmuextOp, UvmfFlush, UvmfScope};
use hypervisor::continuation::{Outcome, Stop};
use hypervisor::hypercall::{GuestVa, Request};
use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};
use pvmm::entry::PteFlags;
use pvmm::{AccessedDirty, BasePtr, Layout, Level, MmError, PvMmu, RelinquishProgress, TableMemory};
use smp::xcall::CpuBits;
use spin::Once;
use x86_64::VirtAddr;

use crate::arch::paging;
use crate::arch::uaccess;
use crate::cpus::CpuMask;
use crate::domain::{Domain, Vcpu};
use crate::memory::{self, FrameMapping};
use crate::preempt;
use crate::pv::hypercall::stopped;
use crate::tlb::{self, Flush};

static LAYOUT: Once<Layout> = Once::new();

/// The validation rules: the hypervisor's window entry in slot 511 of every window-L3 (the
/// L3 under L4 slot 511, which every L4 names; see `pvmm::policy`), and nowhere else; the
/// read-only M2P table in L4 slot 256 (built at boot, before any domain); the default
/// window-L3 in slot 511 of an L4 the guest left without one, as Xen fills its own slots.
fn layout() -> &'static Layout {
    LAYOUT.call_once(|| {
        let window = paging::default_window_l4_entry();
        Layout::new(paging::window_l3_entry(), crate::m2p::l4_entry(), window)
    })
}

/// Every view knows the device memory domain 0 may map (`crate::pci`): the same set for
/// the whole run, as `pvmm::device` requires.
fn mmu() -> PvMmu<'static> {
    PvMmu::new(memory::frames(), layout()).with_device_memory(&crate::pci::Devices)
}

fn errno(e: MmError) -> Errno {
    e.errno()
}

/// How a page-table operation's failure stops the hypercall it is part of: the guest gets
/// its errno. This is the one place to map a validation that stopped part-way (and can be
/// resumed) to [`Stop::Retry`]: the batches then continue from the entry that stopped, and
/// a single call (`update_va_mapping`) is issued again as it stands.
fn stop(e: MmError) -> Stop {
    match e {
        MmError::Restart => Stop::Retry,
        e => Stop::Failed(errno(e)),
    }
}

/// A batch's stop at entry `i` of `request` for `why`: a retry continues from that entry.
fn stop_at(request: Request, i: u64, why: Stop) -> Stop {
    match why {
        Stop::Retry => stopped(request, i),
        why => why,
    }
}

/// No CPU: the dirty CPUs of a frame whose domain no CPU can hold translations of.
static NO_CPU: CpuMask = CpuMask::new();

/// Page-table frames as the validator sees them: entries read and written through
/// temporary mappings. The last few frames stay mapped for the length of one hypercall
/// (a batch of updates mostly touches one table), which saves a map, an unmap and an
/// `invlpg` per entry.
struct Tables<'a> {
    cache: RefCell<ArrayVec<(Mfn, FrameMapping), 4>>,
    /// The CPUs that may hold translations of the domain whose frames these are.
    dirty: &'a CpuMask,
    /// This slice's work so far: entries pvmm processed, and when the slice began (TSC).
    slice_entries: u32,
    slice_start: u64,
}

/// Entries one slice of a pvmm walk may process before it is told to stop.
const SLICE_ENTRIES: u32 = 4096;
/// Time one slice may take before it is told to stop, looked at every [`CLOCK_EVERY`]
/// entries (an entry costs well under a microsecond, even under TCG).
const SLICE_NS: u64 = 30_000;
const CLOCK_EVERY: u32 = 32;

impl<'a> Tables<'a> {
    fn with_dirty(dirty: &'a CpuMask) -> Tables<'a> {
        Tables { cache: RefCell::new(ArrayVec::new()), dirty, slice_entries: 0, slice_start: crate::time::rdtsc() }
    }

    fn for_domain(domain: &'a Domain) -> Tables<'a> {
        Tables::with_dirty(&domain.dirty_cpus)
    }

    /// For operations that only take types no CPU can hold stale translations of (a new
    /// domain's frames) or only drop references (which stamp frames, never flush).
    fn without_cpus() -> Tables<'static> {
        Tables::with_dirty(&NO_CPU)
    }

    /// Starts a new slice of work.
    fn fresh_budget(&mut self) {
        self.slice_entries = 0;
        self.slice_start = crate::time::rdtsc();
    }

    /// Runs `f` on entry `index` of table frame `mfn`. Other hypervisor writers of the
    /// domain's tables are held off by its page-table lock; processors' page walks update
    /// an entry's accessed and dirty bits atomically themselves.
    fn entry<R>(&self, mfn: Mfn, index: usize, f: impl FnOnce(&AtomicU64) -> R) -> R {
        let mut cache = self.cache.borrow_mut();
        let slot = match cache.iter().position(|(m, _)| *m == mfn) {
            Some(i) => i,
            None => {
                if cache.is_full() {
                    cache.remove(0);
                }
                cache.push((mfn, FrameMapping::new(mfn).expect("a temporary mapping slot is free")));
                cache.len() - 1
            }
        };
        f(cache[slot].1.atomic(index * 8))
    }
}

impl TableMemory for Tables<'_> {
    fn read(&self, mfn: Mfn, index: usize) -> u64 {
        self.entry(mfn, index, |entry| entry.load(Ordering::Relaxed))
    }

    fn write(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.entry(mfn, index, |entry| entry.store(value, Ordering::Relaxed));
    }

    /// One compare-and-swap, as a processor updating the entry's accessed and dirty bits
    /// would see it (for emulated read-modify-writes of guest entries).
    fn compare_exchange(&mut self, mfn: Mfn, index: usize, expected: u64, new: u64) -> bool {
        self.entry(mfn, index, |entry| {
            entry.compare_exchange(expected, new, Ordering::SeqCst, Ordering::Relaxed).is_ok()
        })
    }

    /// `MMU_PT_UPDATE_PRESERVE_AD` (which `XENVER_get_features` reports): a compare-and-swap
    /// loop, so that an accessed or dirty bit a processor sets while the entry is replaced
    /// is kept.
    fn write_preserving_ad(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.entry(mfn, index, |entry| {
            let mut current = entry.load(Ordering::Relaxed);
            while let Err(now) = entry.compare_exchange_weak(current, value | (current & PteFlags::ACCESSED.union(PteFlags::DIRTY).bits()), Ordering::SeqCst, Ordering::Relaxed) {
                current = now;
            }
        });
    }

    fn flush_stale_writable(&mut self, mfn: Mfn) {
        tlb::flush_stale(self.dirty, mfn, false);
    }

    fn flush_stale_tables(&mut self, mfn: Mfn) {
        tlb::flush_stale(self.dirty, mfn, true);
    }

    fn type_released(&mut self, mfn: Mfn, was: PageType) {
        tlb::stamp(mfn, Level::of_page_type(was).is_some());
    }

    fn should_preempt(&mut self) -> bool {
        self.slice_entries += 1;
        self.slice_entries >= SLICE_ENTRIES
            || (self.slice_entries.is_multiple_of(CLOCK_EVERY)
                && crate::time::tsc_to_ns(crate::time::rdtsc().wrapping_sub(self.slice_start)) >= SLICE_NS)
    }
}

/// Runs one slice of a pvmm operation with a fresh budget. A guest's hypercall runs one
/// slice per stay: an operation that stops half-way (`MmError::Restart`: its budget spent,
/// its progress kept in the frames) becomes [`Stop::Retry`] through [`stop`], the guest
/// issues the call again once it next runs (interrupts, events and cross-CPU calls are
/// taken in between), and the same operation continues.
fn one_slice<T>(tables: &mut Tables<'_>, op: impl FnOnce(&mut Tables<'_>) -> Result<T, MmError>) -> Result<T, MmError> {
    tables.fresh_budget();
    let result = op(tables);
    let slice_ns = crate::time::tsc_to_ns(crate::time::rdtsc().wrapping_sub(tables.slice_start));
    LONGEST_SLICE_NS.fetch_max(slice_ns, Ordering::Relaxed);
    SLICES.fetch_add(1, Ordering::Relaxed);
    if slice_ns > 100_000 {
        SLICES_OVER_100US.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// Runs a pvmm operation to completion, slice after slice, in this one stay: for what no
/// guest call can make long (a new domain's boot tables, whose size the hypervisor's
/// builder chose; a descriptor page) and for domain destruction, which runs once the domain's vCPUs are
/// off every CPU. Guest hypercalls use [`one_slice`] instead.
fn until_done<T>(tables: &mut Tables<'_>, mut op: impl FnMut(&mut Tables<'_>) -> Result<T, MmError>) -> Result<T, MmError> {
    let mut slices = 0;
    loop {
        let result = one_slice(tables, &mut op);
        slices += 1;
        MOST_SLICES.fetch_max(slices, Ordering::Relaxed);
        match result {
            Err(MmError::Restart) => continue,
            other => return other,
        }
    }
}

/// The longest slice of a pvmm operation, and the most slices one operation took, so far:
/// what a hypercall continuation will make the longest stay (see [`until_done`]).
static LONGEST_SLICE_NS: AtomicU64 = AtomicU64::new(0);
static MOST_SLICES: AtomicU64 = AtomicU64::new(0);
/// Slices in all, and those over 100 us (under TCG, mostly host stalls of the vCPU thread).
static SLICES: AtomicU64 = AtomicU64::new(0);
static SLICES_OVER_100US: AtomicU64 = AtomicU64::new(0);

/// Prints `summary: pvmm.slices=<all>/<over 100 us>`, `pvmm.longest_slice_us` and
/// `pvmm.most_slices` (end of the run).
pub fn report() {
    log::info!("summary: pvmm.slices={}/{}", SLICES.load(Ordering::Relaxed), SLICES_OVER_100US.load(Ordering::Relaxed));
    log::info!("summary: pvmm.longest_slice_us={}", LONGEST_SLICE_NS.load(Ordering::Relaxed) / 1000);
    log::info!("summary: pvmm.most_slices={}", MOST_SLICES.load(Ordering::Relaxed));
}

/// Releases a base pointer, finishing the teardown of its table if that stops half-way.
fn release_base(mmu: &PvMmu, base: BasePtr, tables: &mut Tables<'_>) {
    let l4 = base.mfn();
    let mut base = Some(base);
    let released = until_done(tables, |t| match base.take() {
        Some(base) => mmu.put_baseptr(base, t),
        None => mmu.finish_teardown(l4, t),
    });
    if let Err(e) = released {
        log::warn!("releasing base pointer {l4}: {e:?}");
    }
}

fn check_domid(vcpu: &Vcpu, domid: u16) -> Result<DomainId, Errno> {
    if domid == DomId::SELF.0 || domid == vcpu.domain.id.0 {
        Ok(vcpu.domain.id)
    } else {
        Err(Errno::Esrch)
    }
}

/// Pins a new domain's top-level table (validating its whole boot tree) and returns the
/// base pointer its vCPU runs on.
pub fn pin_initial_tables(domain: &Domain, l4: Mfn) -> Result<BasePtr, Errno> {
    let _lock = domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(domain);
    until_done(&mut tables, |t| mmu.pin_table(l4, Level::L4, domain.id, t)).map_err(errno)?;
    until_done(&mut tables, |t| mmu.new_baseptr(l4, domain.id, t)).map_err(errno)
}

/// Drops every page-table reference a dead domain holds, so that its frames can be freed.
pub fn relinquish(domain: &Domain, bases: Vec<BasePtr>, owned: &[Mfn]) {
    let _lock = domain.mmu_lock.lock();
    let mmu = mmu();
    let mut bases = bases.into_iter();
    let mut progress = RelinquishProgress::default();
    let result = until_done(&mut Tables::for_domain(domain), |t| mmu.relinquish(domain.id, owned, &mut bases, &mut progress, t));
    if let Err(e) = result {
        log::warn!("domain {}: relinquish stopped: {e:?}", domain.id.0);
    }
}

/// One slice of [`relinquish`], for the teardown of a dead domain (`pv::teardown`):
/// true once the relinquish is over (a failure is logged: the frames it names stay
/// referenced and will not be freed), false when it stopped and is to be called again with
/// the same arguments.
pub fn relinquish_slice(domain: &Domain, bases: &mut alloc::vec::IntoIter<BasePtr>, owned: &[Mfn], progress: &mut RelinquishProgress) -> bool {
    let _lock = domain.mmu_lock.lock();
    match one_slice(&mut Tables::for_domain(domain), |t| mmu().relinquish(domain.id, owned, bases, progress, t)) {
        Err(MmError::Restart) => false,
        Ok(()) => true,
        // Another domain still maps one of its frames through a grant: everything of its
        // own is released, and the teardown waits for the others (`pv::teardown`).
        Err(MmError::InUse { .. }) => true,
        Err(e) => {
            log::warn!("domain {}: relinquish stopped: {e:?}", domain.id.0);
            true
        }
    }
}

/// Takes a general and a writable-type reference on `mfn`, a frame of domain `dom` that the
/// hypervisor writes on its behalf (its shared-info page; later vcpu_info and runstate
/// areas, grant tables, rings), for as long as it does: a frame with a writable type can
/// never become a page table or a descriptor frame, whatever the guest does with it. Taken
/// before the domain's first vCPU runs; dropped with [`release_for_hypervisor`] at
/// destruction, before the domain's tables are relinquished and its frames freed.
pub fn hold_for_hypervisor(dom: DomainId, mfn: Mfn) -> Result<(), Errno> {
    until_done(&mut Tables::without_cpus(), |t| mmu().get_page_and_type(mfn, PageType::None, dom, t)).map_err(errno)
}

/// Drops the references [`hold_for_hypervisor`] took.
pub fn release_for_hypervisor(mfn: Mfn) {
    if let Err(e) = until_done(&mut Tables::without_cpus(), |t| mmu().put_page_and_type(mfn, t)) {
        log::warn!("releasing frame {mfn} held for the hypervisor: {e:?}");
    }
}

/// Takes a general and a descriptor-page type reference on `mfn` for the vCPU's domain
/// (refused if the guest maps it writable or uses it as a page table). Call with the
/// domain's page-table lock held: the type change may flush other CPUs.
pub fn get_descriptor_page(vcpu: &Vcpu, mfn: Mfn) -> Result<(), Errno> {
    let dom = vcpu.domain.id;
    until_done(&mut Tables::for_domain(&vcpu.domain), |t| mmu().get_page_and_type(mfn, PageType::SegmentDescriptors, dom, t)).map_err(errno)
}

/// The frame the vCPU's kernel page tables map at `va` (a present L1 entry; Xen's
/// `guest_get_eff_kern_l1e`), for the frames of an LDT the guest names by address: `EFAULT`
/// when nothing is mapped there. Call with the domain's page-table lock held.
pub fn kernel_frame_at(vcpu: &Vcpu, va: u64) -> Result<Mfn, Errno> {
    let l4 = vcpu.ctx.lock().kernel_l4().ok_or(Errno::Einval)?;
    let tables = Tables::for_domain(&vcpu.domain);
    let slot = mmu().l1_entry_of(l4, va, &tables).map_err(|_| Errno::Efault)?;
    let pte = pvmm::Pte(tables.read(slot.table, slot.index));
    if pte.is_present() { Ok(pte.mfn()) } else { Err(Errno::Efault) }
}

/// Drops a reference taken by [`get_descriptor_page`].
pub fn put_descriptor_page(mfn: Mfn) {
    if let Err(e) = until_done(&mut Tables::without_cpus(), |t| mmu().put_page_and_type(mfn, t)) {
        log::warn!("releasing descriptor page {mfn}: {e:?}");
    }
}

/// What the guest's `done` counter holds before a batch: the count done so far for a
/// continuation (`preempted`), else 0.
fn done_before(done: GuestVa, preempted: bool) -> Result<u32, Errno> {
    if preempted && !done.is_null() {
        uaccess::read_value(done.0).map_err(|_| Errno::Efault)
    } else {
        Ok(0)
    }
}

/// Adds a batch's `completed` entries to the guest's `done` counter.
fn report_done(done: GuestVa, before: u32, completed: u64) -> Result<(), Errno> {
    if done.is_null() {
        return Ok(());
    }
    uaccess::write_value(done.0, &before.wrapping_add(completed as u32)).map_err(|_| Errno::Efault)
}

/// `mmu_update`: checked updates of page-table entries named by machine address.
pub fn mmu_update(vcpu: &Vcpu, request: Request, requests: GuestVa, count: u64, done: GuestVa, domid: u16, preempted: bool) -> Outcome {
    let dom = check_domid(vcpu, domid)?;
    let before = done_before(done, preempted)?;
    let lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let mut m2p = crate::m2p::Writer::new();
    let mut completed = 0u64;
    let mut result = Ok(0);
    for i in 0..count {
        if i > 0 && preempt::should_stop() {
            result = Err(stopped(request, i));
            break;
        }
        let read = requests.offset::<MmuUpdate>(i).ok_or(()).and_then(|at| uaccess::read_value::<MmuUpdate>(at.0).map_err(drop));
        let Ok(update) = read else {
            result = Err(Stop::Failed(Errno::Efault));
            break;
        };
        let ad = match update.command() {
            Some(MmuUpdateCmd::NormalPtUpdate) => AccessedDirty::Overwrite,
            Some(MmuUpdateCmd::PtUpdatePreserveAd) => AccessedDirty::Preserve,
            Some(MmuUpdateCmd::MachphysUpdate) => {
                if let Err(e) = machphys_update(&mmu, Mfn(update.ptr >> 12), update.val, dom, &mut m2p) {
                    result = Err(Stop::Failed(e));
                    break;
                }
                completed += 1;
                continue;
            }
            _ => {
                result = Err(Stop::Failed(Errno::Einval));
                break;
            }
        };
        let entry_addr = update.ptr & !7;
        let table = Mfn(entry_addr >> 12);
        let index = ((entry_addr & 0xfff) >> 3) as usize;
        if let Err(e) = one_slice(&mut tables, |t| mmu.mod_entry(table, index, update.val, ad, dom, t)) {
            result = Err(stop_at(request, i, stop(e)));
            break;
        }
        completed += 1;
    }
    drop(m2p);
    drop(tables);
    drop(lock);
    if completed > 0 {
        // For the guest's sake (its vCPUs see the new entries at once), not the
        // hypervisor's: type changes flushed what they needed already.
        tlb::flush_dirty(&vcpu.domain.dirty_cpus, Flush::All);
    }
    report_done(done, before, completed)?;
    result
}

/// `MMU_MACHPHYS_UPDATE`: sets the machine-to-physical entry of `mfn`, a frame `dom` owns
/// (EINVAL for any other, as Xen's `get_page_from_mfn`), to `pfn`, whatever it is (the
/// guest's own layout is the guest's business). A general reference is held across the
/// write, and the caller holds the domain's page-table lock, which giving frames back
/// takes too: the frame cannot leave the domain (and have its entry cleared) meanwhile.
fn machphys_update(mmu: &PvMmu, mfn: Mfn, pfn: u64, dom: DomainId, m2p: &mut crate::m2p::Writer) -> Result<(), Errno> {
    mmu.get_owned_page(mfn, dom).map_err(|_| Errno::Einval)?;
    m2p.set(mfn, pfn);
    mmu.put_page(mfn);
    Ok(())
}

/// `update_va_mapping`: a checked update of the L1 entry that maps `va` in the current
/// kernel address space, then the flush the flags ask for (as Xen: `UVMF_NONE`,
/// `UVMF_TLB_FLUSH` or `UVMF_INVLPG`, of this vCPU (`UVMF_LOCAL`), of every vCPU
/// (`UVMF_ALL`) or of those in the bitmap whose address is OR-ed into the flags
/// (`UVMF_MULTI`)). The bitmap is read first: a bad one changes nothing.
pub fn update_va_mapping(vcpu: &Vcpu, va: u64, pte: u64, flags: u64) -> Outcome {
    uaccess::check_range(va, 1).map_err(|_| Errno::Einval)?;
    let (flush, scope) = decode_uvmf(flags);
    let flush = match flush {
        UvmfFlush::Nothing => None,
        UvmfFlush::Tlb => Some(Flush::All),
        UvmfFlush::Page => Some(Flush::Page(VirtAddr::new_truncate(va))),
    };
    let cpus = match (flush, scope) {
        (None, _) => None,
        (Some(_), UvmfScope::Local) => Some(Scope::Local),
        (Some(_), UvmfScope::All) => Some(Scope::Dirty),
        (Some(_), UvmfScope::Multi(bitmap)) => Some(Scope::Cpus(vcpu_mask(vcpu, GuestVa(bitmap))?)),
    };
    let l4 = vcpu.ctx.lock().active_l4().ok_or(Errno::Einval)?;
    {
        let _lock = vcpu.domain.mmu_lock.lock();
        let mmu = mmu();
        let mut tables = Tables::for_domain(&vcpu.domain);
        let slot = mmu.l1_entry_of(l4, va, &tables).map_err(stop)?;
        let dom = vcpu.domain.id;
        one_slice(&mut tables, |t| mmu.mod_entry(slot.table, slot.index, pte, AccessedDirty::Overwrite, dom, t)).map_err(stop)?;
    }
    if let (Some(flush), Some(cpus)) = (flush, cpus) {
        cpus.flush(vcpu, flush);
    }
    Ok(0)
}

/// What became of an emulated guest write to a page table ([`emulated_write`]).
pub enum TableWrite {
    /// Carried out (or, for a `cmpxchg` whose comparison failed, rightly nothing written):
    /// the instruction is complete.
    Done,
    /// The validation it needs stopped half-way (its progress kept in the frames), nothing
    /// written: the guest is to execute the instruction again, which continues it.
    Again,
    /// Not a write to one of the domain's page tables in use, or a value `mmu_update`
    /// would refuse: the guest gets its #PF.
    Refused,
}

/// Writable page tables: carries out an emulated write of the guest kernel to entry
/// `index` of the page table that `va` maps read-only in the L4 `l4` (the vCPU's active
/// one). Under the domain's page-table lock: the mapping of `va` must still be present and
/// read-only and name a page table of the domain in use; `compute` gets the entry's value
/// and returns the new one (`None`: write nothing), which is validated and stored exactly
/// as `mmu_update` would do it (`MMU_NORMAL_PT_UPDATE`), at any level. No flush: as with
/// Xen's emulation, the guest flushes what its own write needs.
///
/// The entry is read, computed and stored under the lock, so no other update of the
/// domain's tables comes between. A `read_modify_write` (anything but a whole-entry
/// `mov`) is stored only over the value it was computed from, with a compare-and-swap at
/// L1 (as Xen's emulator stores locked instructions): when a processor set an accessed or
/// dirty bit in between, nothing is stored and the guest runs the instruction again
/// ([`TableWrite::Again`]), so that `xchg` or `lock btr` never loses a dirty bit.
pub fn emulated_write(
    domain: &Domain,
    l4: Mfn,
    va: u64,
    index: usize,
    read_modify_write: bool,
    compute: impl FnOnce(u64) -> Option<u64>,
) -> TableWrite {
    let _lock = domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(domain);
    let Ok(slot) = mmu.l1_entry_of(l4, va, &tables) else { return TableWrite::Refused };
    let mapping = pvmm::Pte(tables.read(slot.table, slot.index));
    if !mapping.is_present() || mapping.is_writable() {
        return TableWrite::Refused;
    }
    let table = mapping.mfn();
    if mmu.table_level(table, domain.id).is_err() {
        return TableWrite::Refused;
    }
    let old = tables.read(table, index);
    let Some(new) = compute(old) else { return TableWrite::Done };
    let ad = if read_modify_write { AccessedDirty::CompareExchange { expected: old } } else { AccessedDirty::Overwrite };
    match one_slice(&mut tables, |t| mmu.mod_table_entry_only(table, index, new, ad, domain.id, t)) {
        Ok(()) => TableWrite::Done,
        Err(MmError::Changed(_)) => TableWrite::Again,
        // Stopped after the write (the old entry's sub-table is still being torn down, and
        // the next update of this table finishes it): the instruction is complete.
        Err(MmError::Restart) if tables.read(table, index) != old => TableWrite::Done,
        Err(MmError::Restart) => TableWrite::Again,
        Err(_) => TableWrite::Refused,
    }
}

/// Which CPUs a flush the guest asks for reaches.
enum Scope {
    /// This CPU (the calling vCPU's).
    Local,
    /// Every CPU that may hold the domain's translations.
    Dirty,
    /// The CPUs running the vCPUs the guest named.
    Cpus(CpuBits),
}

impl Scope {
    fn flush(&self, vcpu: &Vcpu, what: Flush) {
        match self {
            Scope::Local => match what {
                Flush::All => tlb::flush_local(),
                Flush::Page(va) => tlb::flush_local_page(va),
            },
            Scope::Dirty => tlb::flush_dirty(&vcpu.domain.dirty_cpus, what),
            Scope::Cpus(cpus) => tlb::flush_cpus(cpus, what),
        }
    }
}

/// The CPUs running the vCPUs named in the guest's vCPU bitmap at `bitmap` (one word: a
/// domain has at most 64 vCPUs), among those that may hold the domain's translations (Xen's
/// `vcpumask_to_pcpumask`). A vCPU not running anywhere needs no flush: it loads its tables
/// afresh when it next runs.
fn vcpu_mask(vcpu: &Vcpu, bitmap: GuestVa) -> Result<CpuBits, Errno> {
    let named: u64 = uaccess::read_value(bitmap.0).map_err(|_| Errno::Efault)?;
    let dirty = vcpu.domain.dirty_cpus.snapshot();
    let mut cpus = [0u64; smp::xcall::MAX_CPUS / 64];
    for other in vcpu.domain.vcpus().iter().filter(|v| v.id < 64 && named & (1 << v.id) != 0) {
        if let Some(cpu) = other.running_on() {
            let i = cpu.0 as usize % smp::xcall::MAX_CPUS;
            cpus[i / 64] |= dirty[i / 64] & (1 << (i % 64));
        }
    }
    Ok(cpus)
}

/// `mmuext_op`: pins, base pointers, TLB operations and the LDT, in a batch.
pub fn mmuext_op(vcpu: &Vcpu, request: Request, ops: GuestVa, count: u64, done: GuestVa, domid: u16, preempted: bool) -> Outcome {
    let dom = check_domid(vcpu, domid)?;
    let before = done_before(done, preempted)?;
    let mut completed = 0u64;
    let mut result = Ok(0);
    for i in 0..count {
        if i > 0 && preempt::should_stop() {
            result = Err(stopped(request, i));
            break;
        }
        let at = ops.offset::<MmuextOp>(i).ok_or(Errno::Efault);
        let read = at.and_then(|at| uaccess::read_value::<MmuextOp>(at.0).map_err(|_| Errno::Efault));
        if let Err(why) = read.map_err(Stop::from).and_then(|op| one_op(vcpu, dom, &op)) {
            result = Err(stop_at(request, i, why));
            break;
        }
        completed += 1;
    }
    report_done(done, before, completed)?;
    result
}

fn one_op(vcpu: &Vcpu, dom: DomainId, op: &MmuextOp) -> Result<(), Stop> {
    let mfn = Mfn(op.arg1);
    let pin = |level| {
        let _lock = vcpu.domain.mmu_lock.lock();
        one_slice(&mut Tables::for_domain(&vcpu.domain), |t| mmu().pin_table(mfn, level, dom, t)).map_err(stop)
    };
    let page = || VirtAddr::try_new(op.arg1).map(Flush::Page).map_err(|_| Errno::Einval);
    let named = || vcpu_mask(vcpu, GuestVa(op.arg2)).map(Scope::Cpus);
    let (what, scope) = match MmuextCmd::from_raw(op.cmd) {
        Some(MmuextCmd::PinL1Table) => return pin(Level::L1),
        Some(MmuextCmd::PinL2Table) => return pin(Level::L2),
        Some(MmuextCmd::PinL3Table) => return pin(Level::L3),
        Some(MmuextCmd::PinL4Table) => return pin(Level::L4),
        Some(MmuextCmd::UnpinTable) => {
            let _lock = vcpu.domain.mmu_lock.lock();
            return one_slice(&mut Tables::for_domain(&vcpu.domain), |t| mmu().unpin_table(mfn, dom, t)).map_err(stop);
        }
        Some(MmuextCmd::NewBaseptr) => return new_baseptr(vcpu, mfn, false).map_err(stop),
        Some(MmuextCmd::NewUserBaseptr) => return new_baseptr(vcpu, mfn, true).map_err(stop),
        // arg1: the LDT's linear address; arg2: its entry count (a C unsigned int).
        Some(MmuextCmd::SetLdt) => return crate::pv::ldt::set_ldt(vcpu, op.arg1, op.arg2 as u32).map_err(Stop::from),
        Some(MmuextCmd::TlbFlushLocal) => (Flush::All, Scope::Local),
        Some(MmuextCmd::InvlpgLocal) => (page()?, Scope::Local),
        // The CPUs running the vCPUs in the bitmap at `arg2`.
        Some(MmuextCmd::TlbFlushMulti) => (Flush::All, named()?),
        Some(MmuextCmd::InvlpgMulti) => (page()?, named()?),
        // Every CPU that may hold the domain's translations.
        Some(MmuextCmd::TlbFlushAll) => (Flush::All, Scope::Dirty),
        Some(MmuextCmd::InvlpgAll) => (page()?, Scope::Dirty),
        _ => return Err(Errno::Enosys.into()),
    };
    scope.flush(vcpu, what);
    Ok(())
}

/// Takes a base-pointer reference on `l4` for a vCPU a guest creates (`VCPUOP_initialise`):
/// one slice of validation per stay, [`Stop::Retry`] when the walk stopped (the partial
/// state stays in the frames; the call issued again continues it).
pub fn take_base_for_guest(vcpu: &Vcpu, l4: Mfn) -> Result<BasePtr, Stop> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let dom = vcpu.domain.id;
    one_slice(&mut Tables::for_domain(&vcpu.domain), |t| mmu().new_baseptr(l4, dom, t)).map_err(stop)
}

/// Drops the base-pointer references of a vCPU that will not run.
pub fn release_bases(vcpu: &Vcpu) {
    let _lock = vcpu.domain.mmu_lock.lock();
    for base in vcpu.take_bases() {
        release_base(&mmu(), base, &mut Tables::for_domain(&vcpu.domain));
    }
}

/// Switches the vCPU's kernel (or user) top-level table to `l4`, validated as an L4; the
/// old one's reference is dropped. Loads CR3 when that mode is the current one. Runs one
/// slice: `MmError::Restart` means the validation of `l4`'s tree stopped half-way and the
/// caller must have the guest ask again (a hypercall continuation, or the `mov` to CR3
/// executed again). The old table's teardown, if it stops, is finished by whoever next
/// takes a type on it, or by the domain's destruction.
pub fn new_baseptr(vcpu: &Vcpu, l4: Mfn, user: bool) -> Result<(), MmError> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let dom = vcpu.domain.id;
    let mut tables = Tables::for_domain(&vcpu.domain);
    let base = one_slice(&mut tables, |t| mmu.new_baseptr(l4, dom, t))?;
    let mut ctx = vcpu.ctx.lock();
    let load = ctx.in_kernel != user;
    let old = if user { ctx.user_base.replace(base) } else { ctx.kernel_base.replace(base) };
    if load {
        tlb::load_guest_tables(l4);
    }
    drop(ctx);
    if let Some(old) = old {
        let released = one_slice(&mut tables, |t| mmu.put_baseptr(old, t));
        if let Err(e) = released.or_else(|e| if e == MmError::Restart { Ok(()) } else { Err(e) }) {
            log::warn!("releasing base pointer {}: {e:?}", l4);
        }
    }
    Ok(())
}

// ---- Grant mappings and the references grants hold (`pv::grants`) ----

/// Where a grant's host mapping goes: a virtual address of the current address space, or
/// (`GNTMAP_contains_pte`) the machine address of the L1 entry itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteAt {
    Virtual(u64),
    Machine(u64),
}

/// The L1 entry `at` names for `vcpu`: a virtual address must be guest address space and
/// mapped down to an L1; a machine address must be 8-byte aligned (XSA-227: a misaligned
/// one would straddle two entries). Whether the frame is a validated L1 of the domain is
/// checked by the update itself.
fn grant_slot(vcpu: &Vcpu, at: PteAt, tables: &Tables<'_>) -> Result<pvmm::EntrySlot, MmError> {
    match at {
        PteAt::Machine(maddr) if !maddr.is_multiple_of(8) => Err(MmError::BadIndex((maddr & 0xfff) as usize)),
        PteAt::Machine(maddr) => Ok(pvmm::EntrySlot { table: Mfn(maddr >> 12), index: ((maddr & 0xfff) / 8) as usize }),
        PteAt::Virtual(va) => {
            uaccess::check_range(va, 1).map_err(|_| MmError::NonCanonical(va))?;
            let l4 = vcpu.ctx.lock().active_l4().ok_or(MmError::NotMapped { level: Level::L4, virtual_address: va })?;
            mmu().l1_entry_of(l4, va, tables)
        }
    }
}

/// Writes the grant mapping `value` of `mfn` (a frame of another domain, or the caller's
/// own) at `at`, under the domain's page-table lock; the entry takes its own references
/// (see `pvmm::foreign`). Only `mfn`, and only for this domain, is let through as a
/// foreign frame.
pub fn map_grant(vcpu: &Vcpu, at: PteAt, mfn: Mfn, value: u64) -> Result<(), MmError> {
    let dom = vcpu.domain.id;
    let only_this = move |frame: Mfn, who: DomainId| frame == mfn && who == dom;
    let _lock = vcpu.domain.mmu_lock.lock();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let slot = grant_slot(vcpu, at, &tables)?;
    one_slice(&mut tables, |t| mmu().with_sharing(&only_this).set_grant_entry(slot, value, dom, t))
}

/// Removes the grant mapping of `mfn` at `at` (it must map `mfn`, writable exactly when
/// `writable`), moving the L1 entry that maps `steal` (a virtual address) into its place
/// when given. The caller flushes the domain's CPUs before it drops the grant's own
/// references.
pub fn unmap_grant(vcpu: &Vcpu, at: PteAt, mfn: Mfn, writable: bool, steal: Option<u64>) -> Result<(), MmError> {
    let dom = vcpu.domain.id;
    let _lock = vcpu.domain.mmu_lock.lock();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let slot = grant_slot(vcpu, at, &tables)?;
    let steal = steal.map(|va| grant_slot(vcpu, PteAt::Virtual(va), &tables)).transpose()?;
    one_slice(&mut tables, |t| mmu().clear_grant_entry(slot, mfn, writable, steal, dom, t))
}

/// Takes a general reference on `mfn` for its owner `owner` (refused unless `owner` owns
/// it): what a grant holds on the frame it names, and what a copy holds on a frame of the
/// caller's.
pub fn get_frame(owner: DomainId, mfn: Mfn) -> Result<(), MmError> {
    mmu().get_page(mfn, owner)
}

/// Drops a reference [`get_frame`] took.
pub fn put_frame(mfn: Mfn) {
    mmu().put_page(mfn);
}

/// Takes a writable-type reference on `mfn`, a frame of `owner` that the caller holds a
/// general reference on (a writable grant mapping or a copy's destination): refused while
/// the frame is a page table, descriptor or shared frame, and from then on it cannot become
/// one. Under the owner's page-table lock, flushing the owner's CPUs that may still hold
/// translations through the frame from a time it was a table.
pub fn get_writable(owner: &Domain, mfn: Mfn) -> Result<(), MmError> {
    let _lock = owner.mmu_lock.lock();
    until_done(&mut Tables::for_domain(owner), |t| mmu().get_page_type(mfn, PageType::None, owner.id, t))
}

/// Drops a reference [`get_writable`] took (stamping the frame when it was the last).
pub fn put_writable(owner: &Domain, mfn: Mfn) {
    let _lock = owner.mmu_lock.lock();
    if let Err(e) = until_done(&mut Tables::for_domain(owner), |t| mmu().put_page_type(mfn, t)) {
        log::warn!("grant: writable reference on {mfn}: {e:?}");
    }
}

/// Whether anything but the hypervisor's own hold references `mfn`, a frame held with
/// [`hold_for_hypervisor`] (a guest mapping of a grant status frame, say).
pub fn used_beyond_hold(mfn: Mfn) -> bool {
    memory::frames().frame(mfn).map_or(true, |info| info.ref_count() > 1 || info.type_info().count() > 1)
}
