//! Guest page-table management: the hypercalls (`mmu_update`, `mmuext_op`,
//! `update_va_mapping`, and `mov` to CR3) on top of the `pvmm` crate's validation and
//! reference counting, plus pinning a new domain's tables and relinquishing a dead one's.
//!
//! Every operation runs under the domain's page-table lock; table frames are read and
//! written through temporary mappings. The batches (`mmu_update`, `mmuext_op`) stop
//! between entries when `crate::preempt` says so and continue as Xen's do (the list
//! advanced, the count reduced with `MMU_UPDATE_PREEMPTED` set, `done` accumulated through
//! the guest's pointer), after flushing what they changed and releasing the lock. Stale translations: guest entries are never global,
//! so only CPUs running one of the domain's vCPUs can cache them; flushes go to exactly
//! those (today: this CPU, as domains have one vCPU).
//!
//! pvmm's walks (validating or devalidating a tree, relinquishing a domain) stop when a
//! slice's work budget is spent ([`Tables`]: a few thousand entries or ~30 us) and return
//! `MmError::Restart`; every call here goes through [`until_done`], which for now calls
//! again with a fresh budget until the operation completes.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayVec;
use abi::errno::Errno;
use abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use abi::ids::DomId;
use abi::mmu::{MmuUpdate, MmuextOp, UVMF_ALL, UVMF_FLUSHTYPE_MASK, UVMF_INVLPG, UVMF_TLB_FLUSH};
use hypervisor::continuation::{Outcome, Stop};
use hypervisor::hypercall::{GuestVa, Request};
use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};
use pvmm::{AccessedDirty, BasePtr, Layout, Level, MmError, PvMmu, RelinquishProgress, TableMemory};
use spin::Once;
use x86_64::VirtAddr;

use crate::arch::paging;
use crate::arch::uaccess;
use crate::domain::{Domain, Vcpu};
use crate::memory::{self, FrameMapping};
use crate::preempt;
use crate::pv::hypercall::stopped;

static LAYOUT: Once<Layout> = Once::new();

/// The validation rules: the hypervisor's window entry in slot 511 of every window-L3 (the
/// L3 under L4 slot 511, which every L4 must name; see `pvmm::policy`), and nowhere else.
fn layout() -> &'static Layout {
    LAYOUT.call_once(|| Layout::new(paging::window_l3_entry(), None))
}

fn mmu() -> PvMmu<'static> {
    PvMmu::new(memory::frames(), layout())
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

/// Page-table frames as the validator sees them: entries read and written through
/// temporary mappings. The last few frames stay mapped for the length of one hypercall
/// (a batch of updates mostly touches one table), which saves a map, an unmap and an
/// `invlpg` per entry.
struct Tables {
    cache: RefCell<ArrayVec<(Mfn, FrameMapping), 4>>,
    /// The domain has vCPUs on other CPUs: flushes must reach every CPU.
    smp: bool,
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

impl Tables {
    fn new() -> Tables {
        Tables { cache: RefCell::new(ArrayVec::new()), smp: false, slice_entries: 0, slice_start: crate::time::rdtsc() }
    }

    /// Starts a new slice of work.
    fn fresh_budget(&mut self) {
        self.slice_entries = 0;
        self.slice_start = crate::time::rdtsc();
    }

    fn for_domain(domain: &Domain) -> Tables {
        Tables { smp: domain.is_smp(), ..Tables::new() }
    }

    /// Flushes stale translations of this domain's address spaces: only CPUs running one of
    /// its vCPUs can hold them (guest entries are never global, and switching a CPU to
    /// another address space flushes them).
    fn flush(&self) {
        if self.smp {
            crate::cpus::call_all(|_| paging::flush_all_local(), 0);
        } else {
            paging::flush_all_local();
        }
    }

    fn entry<R>(&self, mfn: Mfn, index: usize, f: impl FnOnce(&mut [u8; 8]) -> R) -> R {
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
        let bytes = cache[slot].1.bytes();
        f((&mut bytes[index * 8..index * 8 + 8]).try_into().expect("8 bytes"))
    }
}

impl TableMemory for Tables {
    fn read(&self, mfn: Mfn, index: usize) -> u64 {
        self.entry(mfn, index, |bytes| u64::from_le_bytes(*bytes))
    }

    fn write(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.entry(mfn, index, |bytes| *bytes = value.to_le_bytes());
    }

    fn flush_stale_writable(&mut self, _mfn: Mfn) {
        self.flush();
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
fn one_slice<T>(tables: &mut Tables, op: impl FnOnce(&mut Tables) -> Result<T, MmError>) -> Result<T, MmError> {
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
/// builder chose; a vCPU's initial base pointer, which its creator validated; a
/// descriptor page) and for domain destruction, which runs once the domain's vCPUs are
/// off every CPU. Guest hypercalls use [`one_slice`] instead.
fn until_done<T>(tables: &mut Tables, mut op: impl FnMut(&mut Tables) -> Result<T, MmError>) -> Result<T, MmError> {
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
fn release_base(mmu: &PvMmu, base: BasePtr, tables: &mut Tables) {
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
    let mut tables = Tables::new();
    until_done(&mut tables, |t| mmu.pin_table(l4, Level::L4, domain.id, t)).map_err(errno)?;
    until_done(&mut tables, |t| mmu.new_baseptr(l4, domain.id, t)).map_err(errno)
}

/// Drops every page-table reference a dead domain holds, so that its frames can be freed.
pub fn relinquish(domain: &Domain, bases: Vec<BasePtr>, owned: &[Mfn]) {
    let _lock = domain.mmu_lock.lock();
    let mmu = mmu();
    let mut bases = bases.into_iter();
    let mut progress = RelinquishProgress::default();
    let result = until_done(&mut Tables::new(), |t| mmu.relinquish(domain.id, owned, &mut bases, &mut progress, t));
    if let Err(e) = result {
        log::warn!("domain {}: relinquish stopped: {e:?}", domain.id.0);
    }
}

/// Takes a general and a descriptor-page type reference on `mfn` for the vCPU's domain
/// (refused if the guest maps it writable or uses it as a page table).
pub fn get_descriptor_page(vcpu: &Vcpu, mfn: Mfn) -> Result<(), Errno> {
    let dom = vcpu.domain.id;
    until_done(&mut Tables::new(), |t| mmu().get_page_and_type(mfn, PageType::SegmentDescriptors, dom, t)).map_err(errno)
}

/// Drops a reference taken by [`get_descriptor_page`].
pub fn put_descriptor_page(mfn: Mfn) {
    if let Err(e) = until_done(&mut Tables::new(), |t| mmu().put_page_and_type(mfn, t)) {
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
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
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
    if completed > 0 {
        tables.flush();
    }
    report_done(done, before, completed)?;
    result
}

/// `update_va_mapping`: a checked update of the L1 entry that maps `va` in the current
/// kernel address space, then the requested flush.
pub fn update_va_mapping(vcpu: &Vcpu, va: u64, pte: u64, flags: u64) -> Outcome {
    uaccess::check_range(va, 1).map_err(|_| Errno::Einval)?;
    let l4 = vcpu.ctx.lock().active_l4().ok_or(Errno::Einval)?;
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let slot = mmu.l1_entry_of(l4, va, &tables).map_err(stop)?;
    let dom = vcpu.domain.id;
    one_slice(&mut tables, |t| mmu.mod_entry(slot.table, slot.index, pte, AccessedDirty::Overwrite, dom, t)).map_err(stop)?;
    let everywhere = flags & UVMF_ALL != 0 && tables.smp;
    match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_INVLPG if !everywhere => x86_64::instructions::tlb::flush(VirtAddr::new_truncate(va)),
        UVMF_INVLPG | UVMF_TLB_FLUSH => tables.flush(),
        _ => {}
    }
    Ok(0)
}

/// `mmuext_op`: pins, base pointers and TLB operations, in a batch.
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
        one_slice(&mut Tables::new(), |t| mmu().pin_table(mfn, level, dom, t)).map_err(stop)
    };
    match MmuextCmd::from_raw(op.cmd) {
        Some(MmuextCmd::PinL1Table) => pin(Level::L1),
        Some(MmuextCmd::PinL2Table) => pin(Level::L2),
        Some(MmuextCmd::PinL3Table) => pin(Level::L3),
        Some(MmuextCmd::PinL4Table) => pin(Level::L4),
        Some(MmuextCmd::UnpinTable) => {
            let _lock = vcpu.domain.mmu_lock.lock();
            one_slice(&mut Tables::new(), |t| mmu().unpin_table(mfn, dom, t)).map_err(stop)
        }
        Some(MmuextCmd::NewBaseptr) => new_baseptr(vcpu, mfn, false).map_err(stop),
        Some(MmuextCmd::NewUserBaseptr) => new_baseptr(vcpu, mfn, true).map_err(stop),
        Some(MmuextCmd::TlbFlushLocal) => {
            paging::flush_all_local();
            Ok(())
        }
        Some(MmuextCmd::InvlpgLocal) => {
            let va = VirtAddr::try_new(op.arg1).map_err(|_| Errno::Einval)?;
            x86_64::instructions::tlb::flush(va);
            Ok(())
        }
        // Flushes of other vCPUs: every CPU that runs one of this domain's vCPUs.
        Some(MmuextCmd::TlbFlushMulti | MmuextCmd::TlbFlushAll | MmuextCmd::InvlpgMulti | MmuextCmd::InvlpgAll) => {
            Tables::for_domain(&vcpu.domain).flush();
            Ok(())
        }
        _ => Err(Errno::Enosys.into()),
    }
}

/// Takes a base-pointer reference on `l4` for a vCPU being created.
pub fn take_base(vcpu: &Vcpu, l4: Mfn) -> Result<BasePtr, Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let dom = vcpu.domain.id;
    until_done(&mut Tables::for_domain(&vcpu.domain), |t| mmu().new_baseptr(l4, dom, t)).map_err(errno)
}

/// Drops the base-pointer references of a vCPU that will not run.
pub fn release_bases(vcpu: &Vcpu) {
    let _lock = vcpu.domain.mmu_lock.lock();
    for base in vcpu.take_bases() {
        release_base(&mmu(), base, &mut Tables::new());
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
    let base = one_slice(&mut Tables::new(), |t| mmu.new_baseptr(l4, dom, t))?;
    let mut ctx = vcpu.ctx.lock();
    let load = ctx.in_kernel != user;
    let old = if user { ctx.user_base.replace(base) } else { ctx.kernel_base.replace(base) };
    if load {
        paging::load_guest_tables(l4.addr().0);
    }
    drop(ctx);
    if let Some(old) = old {
        let released = one_slice(&mut Tables::new(), |t| mmu.put_baseptr(old, t));
        if let Err(e) = released.or_else(|e| if e == MmError::Restart { Ok(()) } else { Err(e) }) {
            log::warn!("releasing base pointer {}: {e:?}", l4);
        }
    }
    Ok(())
}
