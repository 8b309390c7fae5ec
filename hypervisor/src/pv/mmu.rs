//! Guest page-table management: the hypercalls (`mmu_update`, `mmuext_op`,
//! `update_va_mapping`, and `mov` to CR3) on top of the `pvmm` crate's validation and
//! reference counting, plus pinning a new domain's tables, relinquishing a dead one's, and
//! the references that keep frames the hypervisor writes for a domain out of every
//! protected type ([`hold_for_hypervisor`]).
//!
//! Every operation runs under the domain's page-table lock (a [`crate::cpus::CallLock`]: a
//! type change may wait for other CPUs' flushes with it held); table frames are read and
//! written through temporary mappings. Stale translations follow the TLB discipline of
//! [`crate::tlb`]: when a frame takes a protected type (or the writable type after being a
//! table) the domain's dirty CPUs that may still hold a translation of it are flushed, and
//! when the last reference of a type goes the frame is stamped with the TLB clock. Flushes a
//! guest asks for reach the domain's dirty CPUs (`UVMF_ALL`, `MMUEXT_*_ALL`) or the CPUs
//! running the vCPUs it names (`UVMF_MULTI`, `MMUEXT_*_MULTI`), after the lock is dropped.

use alloc::vec::Vec;
use core::cell::RefCell;

use arrayvec::ArrayVec;
use abi::errno::Errno;
use abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use abi::ids::DomId;
use abi::mmu::{decode_uvmf, MmuUpdate, MmuextOp, UvmfFlush, UvmfScope};
use hypervisor::hypercall::GuestVa;
use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};
use pvmm::{AccessedDirty, BasePtr, Layout, Level, MmError, PvMmu, TableMemory};
use smp::xcall::CpuBits;
use spin::Once;
use x86_64::VirtAddr;

use crate::arch::paging;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::cpus::CpuMask;
use crate::domain::{Domain, Vcpu};
use crate::memory::{self, FrameMapping};
use crate::pv::hypercall::HcResult;
use crate::tlb::{self, Flush};

static LAYOUT: Once<Layout> = Once::new();

/// The validation rules: the hypervisor's window entry in every L3's slot 511.
fn layout() -> &'static Layout {
    LAYOUT.call_once(|| Layout::new(paging::window_l3_entry(), None))
}

fn mmu() -> PvMmu<'static> {
    PvMmu::new(memory::frames(), layout())
}

fn errno(e: MmError) -> Errno {
    e.errno()
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
}

impl<'a> Tables<'a> {
    fn for_domain(domain: &'a Domain) -> Tables<'a> {
        Tables { cache: RefCell::new(ArrayVec::new()), dirty: &domain.dirty_cpus }
    }

    /// For operations that only take types no CPU can hold stale translations of (a new
    /// domain's frames) or only drop references (which stamp frames, never flush).
    fn without_cpus() -> Tables<'static> {
        Tables { cache: RefCell::new(ArrayVec::new()), dirty: &NO_CPU }
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

impl TableMemory for Tables<'_> {
    fn read(&self, mfn: Mfn, index: usize) -> u64 {
        self.entry(mfn, index, |bytes| u64::from_le_bytes(*bytes))
    }

    fn write(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.entry(mfn, index, |bytes| *bytes = value.to_le_bytes());
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
    mmu.pin_table(l4, Level::L4, domain.id, &mut tables).map_err(errno)?;
    mmu.new_baseptr(l4, domain.id, &mut tables).map_err(errno)
}

/// Drops every page-table reference a dead domain holds, so that its frames can be freed.
pub fn relinquish(domain: &Domain, bases: Vec<BasePtr>, owned: &[Mfn]) {
    let _lock = domain.mmu_lock.lock();
    if let Err(e) = mmu().relinquish(domain.id, owned, bases, &mut Tables::for_domain(domain)) {
        log::warn!("domain {}: relinquish stopped: {e:?}", domain.id.0);
    }
}

/// Takes a general and a writable-type reference on `mfn`, a frame of domain `dom` that the
/// hypervisor writes on its behalf (its shared-info page; later vcpu_info and runstate
/// areas, grant tables, rings), for as long as it does: a frame with a writable type can
/// never become a page table or a descriptor frame, whatever the guest does with it. Taken
/// before the domain's first vCPU runs; dropped with [`release_for_hypervisor`] at
/// destruction, before the domain's tables are relinquished and its frames freed.
pub fn hold_for_hypervisor(dom: DomainId, mfn: Mfn) -> Result<(), Errno> {
    mmu().get_page_and_type(mfn, PageType::None, dom, &mut Tables::without_cpus()).map_err(errno)
}

/// Drops the references [`hold_for_hypervisor`] took.
pub fn release_for_hypervisor(mfn: Mfn) {
    mmu().put_page_and_type(mfn, &mut Tables::without_cpus());
}

/// Takes a general and a descriptor-page type reference on `mfn` for the vCPU's domain
/// (refused if the guest maps it writable or uses it as a page table). Call with the
/// domain's page-table lock held: the type change may flush other CPUs.
pub fn get_descriptor_page(vcpu: &Vcpu, mfn: Mfn) -> Result<(), Errno> {
    mmu().get_page_and_type(mfn, PageType::SegmentDescriptors, vcpu.domain.id, &mut Tables::for_domain(&vcpu.domain)).map_err(errno)
}

/// Drops a reference taken by [`get_descriptor_page`].
pub fn put_descriptor_page(mfn: Mfn) {
    mmu().put_page_and_type(mfn, &mut Tables::without_cpus());
}

/// `mmu_update`: checked updates of page-table entries named by machine address.
pub fn mmu_update(vcpu: &Vcpu, _frame: &mut TrapFrame, requests: GuestVa, count: u64, done: GuestVa, domid: u16) -> HcResult {
    let dom = check_domid(vcpu, domid)?;
    let lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let mut completed = 0u64;
    let mut result = Ok(0);
    for i in 0..count {
        let at = requests.offset::<MmuUpdate>(i).ok_or(Errno::Efault)?;
        let request: MmuUpdate = match uaccess::read_value(at.0) {
            Ok(r) => r,
            Err(_) => {
                result = Err(Errno::Efault);
                break;
            }
        };
        let ad = match request.command() {
            Some(MmuUpdateCmd::NormalPtUpdate) => AccessedDirty::Overwrite,
            Some(MmuUpdateCmd::PtUpdatePreserveAd) => AccessedDirty::Preserve,
            _ => {
                result = Err(Errno::Einval);
                break;
            }
        };
        let entry_addr = request.ptr & !7;
        let table = Mfn(entry_addr >> 12);
        let index = ((entry_addr & 0xfff) >> 3) as usize;
        if let Err(e) = mmu.mod_entry(table, index, request.val, ad, dom, &mut tables) {
            result = Err(errno(e));
            break;
        }
        completed += 1;
    }
    drop(tables);
    drop(lock);
    if completed > 0 {
        // For the guest's sake (its vCPUs see the new entries at once), not the
        // hypervisor's: type changes flushed what they needed already.
        tlb::flush_dirty(&vcpu.domain.dirty_cpus, Flush::All);
    }
    if !done.is_null() {
        uaccess::write_value(done.0, &(completed as u32)).map_err(|_| Errno::Efault)?;
    }
    result
}

/// `update_va_mapping`: a checked update of the L1 entry that maps `va` in the current
/// kernel address space, then the flush the flags ask for (as Xen: `UVMF_NONE`,
/// `UVMF_TLB_FLUSH` or `UVMF_INVLPG`, of this vCPU (`UVMF_LOCAL`), of every vCPU
/// (`UVMF_ALL`) or of those in the bitmap whose address is OR-ed into the flags
/// (`UVMF_MULTI`)). The bitmap is read first: a bad one changes nothing.
pub fn update_va_mapping(vcpu: &Vcpu, va: u64, pte: u64, flags: u64) -> HcResult {
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
        let slot = mmu.l1_entry_of(l4, va, &tables).map_err(errno)?;
        mmu.mod_entry(slot.table, slot.index, pte, AccessedDirty::Overwrite, vcpu.domain.id, &mut tables).map_err(errno)?;
    }
    if let (Some(flush), Some(cpus)) = (flush, cpus) {
        cpus.flush(vcpu, flush);
    }
    Ok(0)
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

/// `mmuext_op`: pins, base pointers and TLB operations, in a batch.
pub fn mmuext_op(vcpu: &Vcpu, _frame: &mut TrapFrame, ops: GuestVa, count: u64, done: GuestVa, domid: u16) -> HcResult {
    let dom = check_domid(vcpu, domid)?;
    let mut completed = 0u64;
    let mut result = Ok(0);
    for i in 0..count {
        let at = ops.offset::<MmuextOp>(i).ok_or(Errno::Efault)?;
        let outcome = uaccess::read_value::<MmuextOp>(at.0).map_err(|_| Errno::Efault).and_then(|op| one_op(vcpu, dom, &op));
        if let Err(e) = outcome {
            result = Err(e);
            break;
        }
        completed += 1;
    }
    if !done.is_null() {
        uaccess::write_value(done.0, &(completed as u32)).map_err(|_| Errno::Efault)?;
    }
    result
}

fn one_op(vcpu: &Vcpu, dom: DomainId, op: &MmuextOp) -> Result<(), Errno> {
    let mfn = Mfn(op.arg1);
    let pin = |level| {
        let _lock = vcpu.domain.mmu_lock.lock();
        mmu().pin_table(mfn, level, dom, &mut Tables::for_domain(&vcpu.domain)).map_err(errno)
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
            return mmu().unpin_table(mfn, dom, &mut Tables::for_domain(&vcpu.domain)).map_err(errno);
        }
        Some(MmuextCmd::NewBaseptr) => return new_baseptr(vcpu, mfn, false),
        Some(MmuextCmd::NewUserBaseptr) => return new_baseptr(vcpu, mfn, true),
        Some(MmuextCmd::TlbFlushLocal) => (Flush::All, Scope::Local),
        Some(MmuextCmd::InvlpgLocal) => (page()?, Scope::Local),
        // The CPUs running the vCPUs in the bitmap at `arg2`.
        Some(MmuextCmd::TlbFlushMulti) => (Flush::All, named()?),
        Some(MmuextCmd::InvlpgMulti) => (page()?, named()?),
        // Every CPU that may hold the domain's translations.
        Some(MmuextCmd::TlbFlushAll) => (Flush::All, Scope::Dirty),
        Some(MmuextCmd::InvlpgAll) => (page()?, Scope::Dirty),
        _ => return Err(Errno::Enosys),
    };
    scope.flush(vcpu, what);
    Ok(())
}

/// Takes a base-pointer reference on `l4` for a vCPU being created.
pub fn take_base(vcpu: &Vcpu, l4: Mfn) -> Result<BasePtr, Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    mmu().new_baseptr(l4, vcpu.domain.id, &mut Tables::for_domain(&vcpu.domain)).map_err(errno)
}

/// Drops the base-pointer references of a vCPU that will not run.
pub fn release_bases(vcpu: &Vcpu) {
    let _lock = vcpu.domain.mmu_lock.lock();
    for base in vcpu.take_bases() {
        mmu().put_baseptr(base, &mut Tables::for_domain(&vcpu.domain));
    }
}

/// Switches the vCPU's kernel (or user) top-level table to `l4`, validated as an L4; the
/// old one's reference is dropped. Loads CR3 when that mode is the current one.
pub fn new_baseptr(vcpu: &Vcpu, l4: Mfn, user: bool) -> Result<(), Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let base = mmu.new_baseptr(l4, vcpu.domain.id, &mut tables).map_err(errno)?;
    let mut ctx = vcpu.ctx.lock();
    let load = ctx.in_kernel != user;
    let old = if user { ctx.user_base.replace(base) } else { ctx.kernel_base.replace(base) };
    if load {
        tlb::load_guest_tables(l4);
    }
    drop(ctx);
    if let Some(old) = old {
        mmu.put_baseptr(old, &mut tables);
    }
    Ok(())
}
