//! Domain teardown in bounded slices: what [`super::Domain::destroy`] starts and the CPUs
//! finish between other work, so that a domain's death, however large its memory, never
//! keeps a CPU in the hypervisor with interrupts off for long (issue 15, hole 7).
//!
//! `destroy` does only the constant part at once (the domain marked dead, its event
//! channels closed, its vCPUs stopped, their descriptor frames and base pointers taken) and
//! queues the rest here, in order: its frame list cut down to the frames it owns; the
//! hypervisor's holds on frames of its reservation dropped (where its vCPUs' `vcpu_info`
//! moved, its console ring: `pv::mmu::hold_for_hypervisor`), so that nothing but its own
//! tables references its frames any more; its page tables relinquished (pvmm's walk stops when its slice's budget is spent and continues at
//! the next slice); the hypervisor's hold on its shared-info frame dropped and that frame
//! relinquished; every CPU that may hold its translations flushed; its frames freed; and
//! last it leaves the domain table (its id is free again and the run's end can come:
//! `pv::lifecycle::domain_destroyed`). Until then the domain is in the table, dead.
//!
//! Who runs the slices: the idle loop (interrupts taken between slices), every trap exit
//! while teardown work is queued (a slice of at most [`TRAP_SLICE_NS`]), and domain 0's
//! `GetPhysInfo`, which continues until no teardown is left so that the free memory it
//! reads includes every destroyed domain. One CPU works at a time (`WORKER`, taken with
//! `try_lock` only, so no CPU ever spins on it: the worker may wait for other CPUs' TLB
//! flushes while holding it). This module never decides when a domain dies.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use log::warn;
use mm::addr::Mfn;
use mm::frame::Owner;
use pvmm::{BasePtr, RelinquishProgress};
use spin::Mutex;

use super::{Domain, Ending, Vcpu, DOMAINS, MAX_FAILURES_KEPT};
use crate::memory;

/// The longest teardown slice a trap exit runs.
pub const TRAP_SLICE_NS: u64 = 20_000;
/// The longest teardown slice the idle loop runs before it takes interrupts.
pub const IDLE_SLICE_NS: u64 = 50_000;
/// Frames looked at per step of the list filter and of the freeing.
const FRAMES_PER_STEP: usize = 64;

/// One dead domain's teardown.
struct Teardown {
    domain: Arc<Domain>,
    /// Its vCPUs, held until the end (each holds the domain).
    vcpus: Vec<Arc<Vcpu>>,
    /// Its vCPUs' base pointers, released by the relinquish.
    bases: alloc::vec::IntoIter<BasePtr>,
    /// Its frame list (stale and repeated entries until [`Stage::Filter`] is done).
    pages: Vec<Mfn>,
    stage: Stage,
    /// Where [`Stage::Filter`] and [`Stage::Free`] are in `pages`.
    cursor: usize,
    progress: RelinquishProgress,
}

/// The steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Keep only frames the domain owns (the list may name frames it gave back).
    Filter,
    /// Drop the hypervisor's holds on frames of the reservation.
    Release,
    /// Relinquish its tables' references to its frames (and its base pointers).
    Relinquish,
    /// Drop the hypervisor's hold on the shared-info frame and relinquish that frame.
    SharedInfo,
    /// Flush every CPU that may still hold one of its translations.
    Flush,
    /// Free its frames and its shared-info frame.
    Free,
    /// Leave the domain table.
    Forget,
}

static QUEUE: Mutex<VecDeque<Teardown>> = Mutex::new(VecDeque::new());
/// Teardowns queued or under way.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Held by the one CPU working on the teardown at the queue's front.
static WORKER: Mutex<()> = Mutex::new(());

/// Queues the teardown of `domain`, which `destroy` has marked dead, with its vCPUs and
/// their base pointers, and its frame list.
pub(super) fn enqueue(domain: Arc<Domain>, vcpus: Vec<Arc<Vcpu>>, bases: Vec<BasePtr>, pages: Vec<Mfn>) {
    let teardown = Teardown {
        domain,
        vcpus,
        bases: bases.into_iter(),
        pages,
        stage: Stage::Filter,
        cursor: 0,
        progress: RelinquishProgress::default(),
    };
    PENDING.fetch_add(1, Ordering::AcqRel);
    QUEUE.lock().push_back(teardown);
}

/// Whether any teardown is queued or under way.
pub fn pending() -> bool {
    PENDING.load(Ordering::Acquire) != 0
}

/// Works on the queued teardowns for about `budget_ns` (at least one step), unless another
/// CPU is at it. Returns whether teardown work is left.
pub fn work(budget_ns: u64) -> bool {
    if !pending() {
        return false;
    }
    let Some(_worker) = WORKER.try_lock() else { return true };
    let start = crate::time::rdtsc();
    let spent = || crate::time::tsc_to_ns(crate::time::rdtsc().wrapping_sub(start));
    loop {
        let Some(mut teardown) = QUEUE.lock().pop_front() else { return false };
        while teardown.stage != Stage::Forget && spent() < budget_ns {
            teardown.step();
        }
        if teardown.stage == Stage::Forget {
            teardown.forget();
            PENDING.fetch_sub(1, Ordering::AcqRel);
            if spent() < budget_ns {
                continue;
            }
            return pending();
        }
        QUEUE.lock().push_front(teardown);
        return true;
    }
}

impl Teardown {
    fn owns(&self, mfn: Mfn) -> bool {
        memory::frames().frame(mfn).is_ok_and(|info| info.owner() == Some(Owner::Domain(self.domain.id)))
    }

    /// One bounded step of the current stage.
    fn step(&mut self) {
        match self.stage {
            Stage::Filter => {
                let end = (self.cursor + FRAMES_PER_STEP).min(self.pages.len());
                let mut i = self.cursor;
                while i < end.min(self.pages.len()) {
                    if self.owns(self.pages[i]) {
                        i += 1;
                    } else {
                        // A frame given back since the list was last compacted.
                        self.pages.swap_remove(i);
                    }
                }
                self.cursor = i;
                if self.cursor >= self.pages.len() {
                    self.cursor = 0;
                    self.stage = Stage::Release;
                }
            }
            Stage::Release => {
                release_holds(&self.domain);
                self.stage = Stage::Relinquish;
            }
            Stage::Relinquish => {
                let domain = self.domain.clone();
                if crate::pv::mmu::relinquish_slice(&domain, &mut self.bases, &self.pages, &mut self.progress) {
                    self.progress = RelinquishProgress::default();
                    self.stage = Stage::SharedInfo;
                }
            }
            Stage::SharedInfo => {
                let domain = self.domain.clone();
                crate::pv::mmu::release_for_hypervisor(domain.shared_info);
                crate::pv::mmu::relinquish(&domain, Vec::new(), &[domain.shared_info]);
                self.stage = Stage::Flush;
            }
            Stage::Flush => {
                crate::tlb::flush_dirty(&self.domain.dirty_cpus, crate::tlb::Flush::All);
                self.stage = Stage::Free;
            }
            Stage::Free => {
                let end = (self.cursor + FRAMES_PER_STEP).min(self.pages.len());
                for i in self.cursor..end {
                    // A frame named twice in the list was freed the first time: it is no
                    // longer the domain's (and may be someone else's by now).
                    let mfn = self.pages[i];
                    if self.owns(mfn) {
                        free(&self.domain, mfn);
                    }
                }
                self.cursor = end;
                if self.cursor >= self.pages.len() {
                    free(&self.domain, self.domain.shared_info);
                    self.pages = Vec::new();
                    self.stage = Stage::Forget;
                }
            }
            Stage::Forget => {}
        }
    }

    /// Takes the domain out of the table and records how it ended.
    fn forget(self) {
        let domain = self.domain;
        let ending = domain.ending().unwrap_or(Ending::Killed);
        let boot = crate::pv::lifecycle::is_boot_domain(domain.id);
        let mut table = DOMAINS.lock();
        table.remove(domain.id);
        if !boot {
            table.others_ended += 1;
            table.others_failed += u64::from(ending.is_failure());
        }
        if boot || (ending.is_failure() && table.others_failed <= MAX_FAILURES_KEPT) {
            table.endings.push((domain.id, domain.name, ending));
        }
        drop(table);
        drop(self.vcpus);
        drop(domain);
        crate::pv::lifecycle::domain_destroyed();
    }
}

/// Drops the holds the hypervisor took on frames of the domain's reservation: every
/// moved `vcpu_info` (each registration holds its frame once, however many share it) and
/// the console ring. Nothing writes them any more: the domain is dead, its event channels
/// closed and no CPU runs its vCPUs.
fn release_holds(domain: &Domain) {
    for slot in domain.slots() {
        let place = slot.vcpu_info.swap(0, Ordering::AcqRel);
        if let Some(place) = hypervisor::runstate::VcpuInfoPlace::decode(place) {
            crate::pv::mmu::release_for_hypervisor(Mfn(place.mfn));
        }
    }
    crate::pv::console::release_ring(domain);
}

fn free(domain: &Domain, mfn: Mfn) {
    if let Err(e) = memory::frames().free(mfn) {
        warn!("domain {}: frame {mfn} not freed: {e:?}", domain.id.0);
    }
}
