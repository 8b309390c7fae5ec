//! The TLB discipline (issue 15, hole 3): no frame becomes a page table, a descriptor frame
//! or free while some CPU may still hold a translation of it (a writable one, for a type
//! change; any, for a free) that a since-removed guest entry created.
//!
//! Guest entries are never global and there is no PCID, so a CPU can hold a domain's
//! translations only while, or since the last time, its CR3 held one of that domain's tables.
//! Each domain keeps the set of such CPUs, its dirty CPUs (`Domain::dirty_cpus`): `sched`
//! adds a CPU before it loads one of the domain's tables and removes it once the CPU has
//! loaded another address space. Every flush of guest translations and every CR3 load goes
//! through here and ticks the TLB clock ([`smp::tlbclock`]); `pv::mmu` stamps a frame when
//! the last reference of one of its types goes. Then, waiting for every CPU it flushes:
//! - a frame taking a protected type (page table, descriptor, shared) flushes those of its
//!   domain's dirty CPUs that have not flushed since the frame's stamp ([`flush_stale`]);
//! - so does a frame taking the writable type whose stamp says it was a page table (a CPU
//!   may cache translations *through* it);
//! - a guest frame is freed (ballooned out) only after every dirty CPU of its domain has
//!   flushed ([`flush_cpus`]), once per batch of frames; a destroyed domain has no dirty CPU
//!   left. (A frame changing owner, which nothing does yet, must follow the same rule);
//! - guest-requested flushes (`update_va_mapping`, `mmuext_op`) reach the domain's dirty
//!   CPUs, or the CPUs running the vCPUs the guest names.
//!
//! Callers may hold [`crate::cpus::CallLock`]s while flushing, never a plain lock. This
//! module decides only which CPUs flush, never what changes or when a frame is freed.

use core::sync::atomic::{AtomicU64, Ordering};

use mm::addr::Mfn;
use smp::tlbclock::TlbClock;
use smp::xcall::{CpuBits, MAX_CPUS};
use x86_64::VirtAddr;

use crate::arch::paging;
use crate::cpus::{self, CpuMask};
use crate::arch::percpu;
use crate::memory;

static CLOCK: TlbClock = TlbClock::new();

/// Counters for the end-of-run report: full flushes of guest translations this module made
/// on the asking CPU and on others, CPUs a flush left out because the clock said they had
/// flushed since, and flushes that found no CPU to flush.
static FLUSHED_LOCAL: AtomicU64 = AtomicU64::new(0);
static FLUSHED_REMOTE: AtomicU64 = AtomicU64::new(0);
static SPARED: AtomicU64 = AtomicU64::new(0);
static NOTHING_TO_FLUSH: AtomicU64 = AtomicU64::new(0);
/// Page tables released (each would flush under an eager rule), and frames taking the
/// writable type whose stamp says they were no table since (each would flush under a rule
/// without the stamp's table bit).
static TABLES_RELEASED: AtomicU64 = AtomicU64::new(0);
static WRITABLE_NOT_TABLE: AtomicU64 = AtomicU64::new(0);

/// What a flush drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Every guest translation.
    All,
    /// The translations of one guest page.
    Page(VirtAddr),
}

fn this_cpu() -> usize {
    percpu::current().index.0 as usize
}

/// Runs `load` (which drops every guest translation on this CPU) as a tick of the clock.
fn counted(load: impl FnOnce()) {
    let at = CLOCK.begin_flush();
    load();
    CLOCK.end_flush(this_cpu(), at);
}

/// Loads a guest's top-level table on this CPU. The caller has put this CPU in the
/// domain's dirty CPUs first.
pub fn load_guest_tables(l4: Mfn) {
    counted(|| paging::load_guest_tables(l4.addr().0));
}

/// Loads the hypervisor's own top-level table on this CPU.
pub fn load_hypervisor_tables() {
    counted(paging::load_hypervisor_tables);
}

/// Drops every guest translation on this CPU.
pub fn flush_local() {
    counted(paging::flush_guest_local);
}

/// Drops this CPU's translations of one guest page.
pub fn flush_local_page(va: VirtAddr) {
    x86_64::instructions::tlb::flush(va);
}

/// Records on `mfn` that the last reference of a type went just now (after the entries
/// that held it were removed); `table` when it was a page table.
pub fn stamp(mfn: Mfn, table: bool) {
    TABLES_RELEASED.fetch_add(u64::from(table), Ordering::Relaxed);
    if let Ok(info) = memory::frames().frame(mfn) {
        info.set_tlbflush_stamp(CLOCK.stamp(table));
    }
}

/// Flushes the CPUs of `dirty` that may still hold a translation of `mfn` removed before its
/// stamp; with `only_tables`, only if the stamp says the frame was a page table.
pub fn flush_stale(dirty: &CpuMask, mfn: Mfn, only_tables: bool) {
    let Ok(info) = memory::frames().frame(mfn) else { return };
    let stamp = info.tlbflush_stamp();
    if only_tables && !TlbClock::was_table(stamp) {
        WRITABLE_NOT_TABLE.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let candidates = dirty.snapshot();
    let stale = CLOCK.stale(&candidates, stamp);
    let spared: u32 = candidates.iter().zip(&stale).map(|(c, s)| (c & !s).count_ones()).sum();
    SPARED.fetch_add(u64::from(spared), Ordering::Relaxed);
    flush_cpus(&stale, Flush::All);
}

/// Flushes `what` on every online CPU of `cpus` (this one directly) and waits for them.
pub fn flush_cpus(cpus: &CpuBits, what: Flush) {
    let me = this_cpu();
    let count: u32 = cpus.iter().map(|w| w.count_ones()).sum();
    if count == 0 {
        NOTHING_TO_FLUSH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mine = me < MAX_CPUS && cpus[me / 64] & (1 << (me % 64)) != 0;
    if what == Flush::All {
        FLUSHED_LOCAL.fetch_add(u64::from(mine), Ordering::Relaxed);
        FLUSHED_REMOTE.fetch_add(u64::from(count - u32::from(mine)), Ordering::Relaxed);
    }
    if count == 1 && mine {
        return run(what);
    }
    match what {
        Flush::All => cpus::call_mask(cpus, |_| flush_local(), 0),
        Flush::Page(va) => cpus::call_mask(cpus, |va| flush_local_page(VirtAddr::new_truncate(va as u64)), va.as_u64() as usize),
    };
}

fn run(what: Flush) {
    match what {
        Flush::All => flush_local(),
        Flush::Page(va) => flush_local_page(va),
    }
}

/// Flushes `what` on every dirty CPU of a domain.
pub fn flush_dirty(dirty: &CpuMask, what: Flush) {
    flush_cpus(&dirty.snapshot(), what);
}

/// The summary lines: how many flushes the discipline made and spared.
pub fn report() {
    log::info!("summary: tlb.flushes_local={}", FLUSHED_LOCAL.load(Ordering::Relaxed));
    log::info!("summary: tlb.flushes_remote={}", FLUSHED_REMOTE.load(Ordering::Relaxed));
    log::info!("summary: tlb.flushes_spared_by_clock={}", SPARED.load(Ordering::Relaxed));
    log::info!("summary: tlb.flushes_with_no_cpu={}", NOTHING_TO_FLUSH.load(Ordering::Relaxed));
    log::info!("summary: tlb.tables_released={}", TABLES_RELEASED.load(Ordering::Relaxed));
    log::info!("summary: tlb.writable_not_after_table={}", WRITABLE_NOT_TABLE.load(Ordering::Relaxed));
}
