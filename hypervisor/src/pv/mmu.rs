//! Guest page-table management: the hypercalls (`mmu_update`, `mmuext_op`,
//! `update_va_mapping`, and `mov` to CR3) on top of the `pvmm` crate's validation and
//! reference counting, plus pinning a new domain's tables and relinquishing a dead one's.
//!
//! Every operation runs under the domain's page-table lock; table frames are read and
//! written through temporary mappings. Stale translations: guest entries are never global,
//! so only CPUs running one of the domain's vCPUs can cache them; flushes go to exactly
//! those (today: this CPU, as domains have one vCPU).

use alloc::vec::Vec;
use core::cell::RefCell;

use arrayvec::ArrayVec;
use abi::errno::Errno;
use abi::hypercall::{MmuUpdateCmd, MmuextCmd};
use abi::ids::DomId;
use abi::mmu::{MmuUpdate, MmuextOp, UVMF_ALL, UVMF_FLUSHTYPE_MASK, UVMF_INVLPG, UVMF_TLB_FLUSH};
use hypervisor::hypercall::GuestVa;
use mm::addr::Mfn;
use mm::frame::{DomainId, PageType};
use pvmm::{AccessedDirty, BasePtr, Layout, Level, MmError, PvMmu, TableMemory};
use spin::Once;
use x86_64::VirtAddr;

use crate::arch::paging;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess;
use crate::domain::{Domain, Vcpu};
use crate::memory::{self, FrameMapping};
use crate::pv::hypercall::HcResult;

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

/// Page-table frames as the validator sees them: entries read and written through
/// temporary mappings. The last few frames stay mapped for the length of one hypercall
/// (a batch of updates mostly touches one table), which saves a map, an unmap and an
/// `invlpg` per entry.
struct Tables {
    cache: RefCell<ArrayVec<(Mfn, FrameMapping), 4>>,
    /// The domain has vCPUs on other CPUs: flushes must reach every CPU.
    smp: bool,
}

impl Tables {
    fn new() -> Tables {
        Tables { cache: RefCell::new(ArrayVec::new()), smp: false }
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
    mmu.pin_table(l4, Level::L4, domain.id, &mut tables).map_err(errno)?;
    mmu.new_baseptr(l4, domain.id, &mut tables).map_err(errno)
}

/// Drops every page-table reference a dead domain holds, so that its frames can be freed.
pub fn relinquish(domain: &Domain, bases: Vec<BasePtr>, owned: &[Mfn]) {
    let _lock = domain.mmu_lock.lock();
    if let Err(e) = mmu().relinquish(domain.id, owned, bases, &mut Tables::new()) {
        log::warn!("domain {}: relinquish stopped: {e:?}", domain.id.0);
    }
}

/// Takes a general and a descriptor-page type reference on `mfn` for the vCPU's domain
/// (refused if the guest maps it writable or uses it as a page table).
pub fn get_descriptor_page(vcpu: &Vcpu, mfn: Mfn) -> Result<(), Errno> {
    mmu().get_page_and_type(mfn, PageType::SegmentDescriptors, vcpu.domain.id, &mut Tables::new()).map_err(errno)
}

/// Drops a reference taken by [`get_descriptor_page`].
pub fn put_descriptor_page(mfn: Mfn) {
    mmu().put_page_and_type(mfn, &mut Tables::new());
}

/// `mmu_update`: checked updates of page-table entries named by machine address.
pub fn mmu_update(vcpu: &Vcpu, _frame: &mut TrapFrame, requests: GuestVa, count: u64, done: GuestVa, domid: u16) -> HcResult {
    let dom = check_domid(vcpu, domid)?;
    let _lock = vcpu.domain.mmu_lock.lock();
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
    if completed > 0 {
        tables.flush();
    }
    if !done.is_null() {
        uaccess::write_value(done.0, &(completed as u32)).map_err(|_| Errno::Efault)?;
    }
    result
}

/// `update_va_mapping`: a checked update of the L1 entry that maps `va` in the current
/// kernel address space, then the requested flush.
pub fn update_va_mapping(vcpu: &Vcpu, va: u64, pte: u64, flags: u64) -> HcResult {
    uaccess::check_range(va, 1).map_err(|_| Errno::Einval)?;
    let l4 = vcpu.ctx.lock().active_l4().ok_or(Errno::Einval)?;
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let mut tables = Tables::for_domain(&vcpu.domain);
    let slot = mmu.l1_entry_of(l4, va, &tables).map_err(errno)?;
    mmu.mod_entry(slot.table, slot.index, pte, AccessedDirty::Overwrite, vcpu.domain.id, &mut tables).map_err(errno)?;
    let everywhere = flags & UVMF_ALL != 0 && tables.smp;
    match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_INVLPG if !everywhere => x86_64::instructions::tlb::flush(VirtAddr::new_truncate(va)),
        UVMF_INVLPG | UVMF_TLB_FLUSH => tables.flush(),
        _ => {}
    }
    Ok(0)
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
        mmu().pin_table(mfn, level, dom, &mut Tables::new()).map_err(errno)
    };
    match MmuextCmd::from_raw(op.cmd) {
        Some(MmuextCmd::PinL1Table) => pin(Level::L1),
        Some(MmuextCmd::PinL2Table) => pin(Level::L2),
        Some(MmuextCmd::PinL3Table) => pin(Level::L3),
        Some(MmuextCmd::PinL4Table) => pin(Level::L4),
        Some(MmuextCmd::UnpinTable) => {
            let _lock = vcpu.domain.mmu_lock.lock();
            mmu().unpin_table(mfn, dom, &mut Tables::new()).map_err(errno)
        }
        Some(MmuextCmd::NewBaseptr) => new_baseptr(vcpu, mfn, false),
        Some(MmuextCmd::NewUserBaseptr) => new_baseptr(vcpu, mfn, true),
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
        _ => Err(Errno::Enosys),
    }
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
        mmu().put_baseptr(base, &mut Tables::new());
    }
}

/// Switches the vCPU's kernel (or user) top-level table to `l4`, validated as an L4; the
/// old one's reference is dropped. Loads CR3 when that mode is the current one.
pub fn new_baseptr(vcpu: &Vcpu, l4: Mfn, user: bool) -> Result<(), Errno> {
    let _lock = vcpu.domain.mmu_lock.lock();
    let mmu = mmu();
    let base = mmu.new_baseptr(l4, vcpu.domain.id, &mut Tables::new()).map_err(errno)?;
    let mut ctx = vcpu.ctx.lock();
    let load = ctx.in_kernel != user;
    let old = if user { ctx.user_base.replace(base) } else { ctx.kernel_base.replace(base) };
    if load {
        paging::load_guest_tables(l4.addr().0);
    }
    drop(ctx);
    if let Some(old) = old {
        mmu.put_baseptr(old, &mut Tables::new());
    }
    Ok(())
}
