//! A domain's end, the one place that carries it out: [`shutdown`] (its vCPUs stopped),
//! [`kill`], and [`destroy`], which the last CPU to stop running a shutting-down domain
//! calls (through `sched::Glue::destroy`); then the teardown in bounded slices, which the
//! CPUs finish between other work, so that a domain's death, however large its memory,
//! never keeps a CPU in the hypervisor with interrupts off for long (issue 15, hole 7).
//! Here, above `domain` (which keeps the records and their state) and beside the rest of
//! `pv` (whose event channels, grants, page tables and console it closes), so that
//! `domain` calls nothing of `pv` (issue 18: no import circle).
//!
//! [`destroy`] does only the constant part at once (the domain marked dead, its event
//! channels and grant table closed, its vCPUs stopped, their descriptor frames and base
//! pointers taken) and queues the rest here, in order: its frame list cut down to the
//! frames it owns; the hypervisor's holds on frames of its reservation dropped (where its
//! vCPUs' `vcpu_info` moved, its console ring: `pv::mmu::hold_for_hypervisor`); its page
//! tables relinquished (pvmm's walk stops when its slice's budget
//! is spent and continues at the next slice; its grant mappings' own references go with
//! them); every CPU that may hold its translations flushed; the grant mappings it holds
//! released, one per step (their granters' entries unpinned, only now that no CPU can
//! reach those frames through it); a wait until no other domain uses one of its grants or
//! references one of its frames (a mapper that outlives it unmaps, or dies, first); the
//! hypervisor's holds on its shared-info and grant-table frames dropped and those frames
//! relinquished; its frames' entries in the machine-to-physical table cleared and the frames
//! freed; and last it leaves the domain table (its id is free
//! again and the run's end can come: `pv::lifecycle::domain_destroyed`). Until then the
//! domain is in the table, dead.
//!
//! A teardown that waits for another domain (`Stage::AwaitForeign`) is *blocked*: the
//! workers pass it over until a grant somewhere lets go of another domain's frame
//! ([`foreign_reference_dropped`]), so that waiting costs nothing and [`pending`] and
//! [`work`] say "nothing to do" while only blocked teardowns remain (a `GetPhysInfo` then
//! answers without waiting for them). Two domains that map each other's grants both get
//! through: each releases its own mappings before it waits.
//!
//! Who runs the slices: the idle loop (interrupts taken between slices), every trap exit
//! while teardown work is queued (a slice of at most [`TRAP_SLICE_NS`]), and domain 0's
//! `GetPhysInfo`, which continues until no teardown is left so that the free memory it
//! reads includes every destroyed domain. One CPU works at a time (`WORKER`, taken with
//! `try_lock` only, so no CPU ever spins on it: the worker may wait for other CPUs' TLB
//! flushes while holding it). A call that finds work takes at least one step however
//! little of its budget is left (`hypervisor::budget`): the budget's clock starts before
//! the queue's bookkeeping, which nested virtualization can make longer than the budget.
//! The queue's room is reserved as each domain enters the table ([`reserve`], called by
//! `Domain::create` for the builder, which is refused with `ENOMEM` without it), so that queueing a
//! teardown never allocates. This module never decides when a domain dies.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use log::warn;
use mm::addr::Mfn;
use mm::frame::Owner;
use pvmm::{BasePtr, RelinquishProgress};
use spin::Mutex;

use crate::domain::{self, Domain, Ending, Vcpu};
use crate::memory;

/// Starts shutting `domain` down (once): marks it so and stops its vCPUs, whose CPUs drop
/// them at their next decision; the last CPU to stop running one destroys it.
pub fn shutdown(domain: &Domain, ending: Ending) {
    if domain.begin_shutdown(ending) {
        for vcpu in domain.vcpus() {
            stop(&vcpu);
        }
        if !domain.privileged {
            // Domain 0 learns of it (VIRQ_DOM_EXC) and drains what is left of its console
            // ring before it releases it.
            crate::pv::events::domain_ended();
        }
    }
}

/// Shuts `domain` down from outside (domain 0, or the hypervisor) and destroys it at once
/// if none of its vCPUs is on a CPU; otherwise the last CPU to leave it does.
pub fn kill(domain: &Arc<Domain>, ending: Ending) {
    shutdown(domain, ending);
    // SeqCst, as the state's change and the scheduler's count and reads: of this CPU's
    // (store state, load count) and a CPU's switch-in or leave (change count, load state),
    // one sees the other (see `Domain::begin_shutdown`).
    if domain.running_vcpus.load(Ordering::SeqCst) == 0 {
        destroy(domain);
    }
}

/// Marks a vCPU stopped (its domain is going away) and makes its CPU notice.
fn stop(vcpu: &Vcpu) {
    vcpu.sched.stop();
    crate::sched::stopped(vcpu);
}

/// Starts returning every frame and structure of a domain that no CPU runs any more.
/// Called by the scheduler once the domain is shutting down and `running_vcpus` is zero
/// (or by [`kill`]).
///
/// Order: marked dead, then its event channels closed (a sender holding its channel lock
/// has finished writing into the shared-info frame, and a later one sees it dead), its
/// grant table closed (no other domain may start using one of its grants), its vCPUs
/// stopped, their descriptor frames dropped and their base pointers taken; the
/// rest, whose cost grows with the domain's memory (its tables relinquished, every CPU
/// that may hold its translations flushed, the grant mappings it holds released, a wait
/// until no other domain uses its grants or references its frames, the hypervisor's
/// holds on its shared-info and grant-table frames dropped, its frames freed, its place
/// in the table given up), is queued here and done in bounded slices. No CPU can still
/// hold one of its translations by then: every CPU that ran it left its dirty CPUs when it
/// loaded another address space, before `running_vcpus` fell to zero; the teardown's
/// flush finds none (and would flush any).
pub fn destroy(domain: &Arc<Domain>) {
    if !domain.mark_dead() {
        return;
    }
    super::events::close_all(domain);
    super::grants::close(domain);
    let vcpus = domain.take_vcpus();
    for vcpu in &vcpus {
        // Stopped here too: a `shutdown` that raced with this destruction may have found
        // the list empty, and a vCPU left runnable (or parked) in its CPU's queue would
        // keep the domain in memory for good.
        stop(vcpu);
        super::descriptors::release(core::mem::take(&mut *vcpu.gdt.lock()));
        super::ldt::release(core::mem::take(&mut *vcpu.ldt.lock()));
    }
    let bases = vcpus.iter().flat_map(|v| v.take_bases()).collect();
    let pages = domain.memory.lock().take_list();
    enqueue(domain.clone(), vcpus, bases, pages);
}

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
    /// Where [`Stage::Filter`], [`Stage::AwaitForeign`] and [`Stage::Free`] are in `pages`.
    cursor: usize,
    progress: RelinquishProgress,
    /// Blocked in [`Stage::AwaitForeign`] since this value of [`RELEASES`].
    blocked_at: Option<u64>,
    /// It logged that it waits.
    said_waiting: bool,
    /// Its grant-table frames, taken once nothing else uses them.
    table_frames: Vec<Mfn>,
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
    /// Flush every CPU that may still hold one of its translations.
    Flush,
    /// Release the grant mappings it holds, one per step.
    Grants,
    /// Wait until no other domain uses its grants or references its frames.
    AwaitForeign,
    /// Drop the hypervisor's holds on the shared-info and grant-table frames and
    /// relinquish those frames.
    SharedInfo,
    /// Free its frames, its shared-info frame and its grant-table frames.
    Free,
    /// Leave the domain table.
    Forget,
}

static QUEUE: Mutex<VecDeque<Teardown>> = Mutex::new(VecDeque::new());
/// Teardowns queued or under way.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Counts the times a grant let go of another domain's frame (what a blocked teardown
/// waits for).
static RELEASES: AtomicU64 = AtomicU64::new(0);
/// Teardowns found blocked at [`RELEASES`] = [`BLOCKED_AT`] (written by the worker only).
static BLOCKED: AtomicUsize = AtomicUsize::new(0);
static BLOCKED_AT: AtomicU64 = AtomicU64::new(0);
/// Teardowns that ever had to wait for another domain (`summary: teardown.waited_for_grants`).
static WAITED: AtomicU64 = AtomicU64::new(0);

/// Held by the one CPU working on the teardown at the queue's front.
static WORKER: Mutex<()> = Mutex::new(());

/// The queue has room for no more teardowns than there are domains in the table
/// ([`reserve`]'s figure), and needs no more: a domain is queued at most once, and leaves
/// the table only at the end of its teardown.
#[derive(Debug)]
pub struct NoRoom;

/// Makes room in the queue for `domains` teardowns (one per domain in the table), so that
/// [`enqueue`] never grows it: a domain's destruction must never allocate (an allocation
/// the heap refuses stops the machine; at a thousand domains destroyed at once the queue
/// grew to 80 KiB). Called through `Domain::create` before a domain enters the table;
/// refused while the growth would take the heap room kept for the hypervisor
/// (`memory::heap_has_room_for`). The queue never shrinks.
pub fn reserve(domains: usize) -> Result<(), NoRoom> {
    let mut queue = QUEUE.lock();
    if queue.capacity() >= domains {
        return Ok(());
    }
    // The growth allocates the new capacity whole (at least double the old) while the old
    // is still in use.
    let grown = domains.max(queue.capacity().saturating_mul(2)).max(4);
    let bytes = grown.saturating_mul(core::mem::size_of::<Teardown>()) as u64;
    if !memory::heap_has_room_for(bytes) {
        return Err(NoRoom);
    }
    let additional = domains - queue.len();
    queue.try_reserve(additional).map_err(|_| NoRoom)
}

/// Queues the teardown of `domain`, which `destroy` has marked dead, with its vCPUs and
/// their base pointers, and its frame list. The queue has room for it ([`reserve`]): this
/// never allocates.
fn enqueue(domain: Arc<Domain>, vcpus: Vec<Arc<Vcpu>>, bases: Vec<BasePtr>, pages: Vec<Mfn>) {
    let teardown = Teardown {
        domain,
        vcpus,
        bases: bases.into_iter(),
        pages,
        stage: Stage::Filter,
        cursor: 0,
        progress: RelinquishProgress::default(),
        blocked_at: None,
        said_waiting: false,
        table_frames: Vec::new(),
    };
    PENDING.fetch_add(1, Ordering::AcqRel);
    let mut queue = QUEUE.lock();
    debug_assert!(queue.len() < queue.capacity(), "teardown queue room reserved at creation");
    queue.push_back(teardown);
}

/// Whether a teardown is queued or under way that is not blocked waiting for another
/// domain's grants.
pub fn pending() -> bool {
    let pending = PENDING.load(Ordering::Acquire);
    pending != 0 && (pending > BLOCKED.load(Ordering::Acquire) || RELEASES.load(Ordering::Acquire) != BLOCKED_AT.load(Ordering::Acquire))
}

/// A grant let go of another domain's frame (an unmap, a copy's end, a dead mapper's
/// mapping released): teardowns waiting for that look again.
pub fn foreign_reference_dropped() {
    RELEASES.fetch_add(1, Ordering::AcqRel);
}

/// Works on the queued teardowns for about `budget_ns` (at least one step, even when the
/// budget is spent before it: `hypervisor::budget`), unless another CPU is at it; blocked
/// ones are passed over. Returns whether teardown work that can progress is left.
pub fn work(budget_ns: u64) -> bool {
    if !pending() {
        return false;
    }
    let Some(_worker) = WORKER.try_lock() else { return true };
    let start = crate::time::rdtsc();
    let spent = || crate::time::tsc_to_ns(crate::time::rdtsc().wrapping_sub(start));
    let releases = RELEASES.load(Ordering::Acquire);
    if releases != BLOCKED_AT.load(Ordering::Acquire) {
        // Something was let go since: every blocked teardown looks again.
        BLOCKED.store(0, Ordering::Release);
        BLOCKED_AT.store(releases, Ordering::Release);
    }
    let mut visits = QUEUE.lock().len();
    let mut stepped = false;
    while visits > 0 {
        visits -= 1;
        let Some(mut teardown) = QUEUE.lock().pop_front() else { break };
        if teardown.blocked_at == Some(releases) {
            QUEUE.lock().push_back(teardown);
            continue;
        }
        if stepped && spent() >= budget_ns {
            // One teardown had its steps in this call: the next waits for the next call.
            QUEUE.lock().push_front(teardown);
            break;
        }
        teardown.blocked_at = None;
        // At least one step, however much of the budget the bookkeeping above took (under
        // nested virtualization, where `rdtsc` traps, it took all of it, every time).
        hypervisor::budget::run_steps(&mut teardown, &spent, budget_ns);
        stepped = true;
        if teardown.stage == Stage::Forget {
            teardown.forget();
            PENDING.fetch_sub(1, Ordering::AcqRel);
            if spent() < budget_ns {
                continue;
            }
            break;
        }
        if let Some(at) = teardown.blocked_at {
            if at == releases {
                BLOCKED.fetch_add(1, Ordering::AcqRel);
            }
            QUEUE.lock().push_back(teardown);
            continue;
        }
        QUEUE.lock().push_front(teardown);
        break;
    }
    pending()
}

impl hypervisor::budget::Steps for Teardown {
    fn step(&mut self) {
        Teardown::step(self);
    }
    fn stopped(&self) -> bool {
        self.stage == Stage::Forget || self.blocked_at.is_some()
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
                if super::mmu::relinquish_slice(&domain, &mut self.bases, &self.pages, &mut self.progress) {
                    self.progress = RelinquishProgress::default();
                    self.stage = Stage::Flush;
                }
            }
            Stage::Flush => {
                crate::tlb::flush_dirty(&self.domain.dirty_cpus, crate::tlb::Flush::All);
                self.stage = Stage::Grants;
            }
            Stage::Grants => {
                if !super::grants::release_one_map(&self.domain) {
                    self.table_frames = super::grants::table_frames(&self.domain);
                    self.cursor = 0;
                    self.stage = Stage::AwaitForeign;
                }
            }
            Stage::AwaitForeign => self.await_foreign(),
            Stage::SharedInfo => {
                let domain = self.domain.clone();
                super::mmu::release_for_hypervisor(domain.shared_info);
                super::mmu::relinquish(&domain, Vec::new(), &[domain.shared_info]);
                self.stage = Stage::Free;
            }
            Stage::Free => {
                let end = (self.cursor + FRAMES_PER_STEP).min(self.pages.len());
                let mut m2p = crate::m2p::Writer::new();
                for i in self.cursor..end {
                    // A frame named twice in the list was freed the first time: it is no
                    // longer the domain's (and may be someone else's by now).
                    let mfn = self.pages[i];
                    if self.owns(mfn) {
                        free(&self.domain, mfn, &mut m2p);
                    }
                }
                self.cursor = end;
                if self.cursor >= self.pages.len() {
                    free(&self.domain, self.domain.shared_info, &mut m2p);
                    super::grants::free_table(&self.domain);
                    self.pages = Vec::new();
                    self.stage = Stage::Forget;
                }
            }
            Stage::Forget => {}
        }
    }

    /// One step of [`Stage::AwaitForeign`]: the next frames of its list must be
    /// unreferenced, its shared-info and grant-table frames referenced by the hypervisor's
    /// hold alone, and none of its grants in use; else it is blocked until a grant lets go
    /// of something.
    fn await_foreign(&mut self) {
        let releases = RELEASES.load(Ordering::Acquire);
        let frames = memory::frames();
        let counts = |mfn: Mfn| frames.frame(mfn).map_or((0, 0), |info| (info.ref_count(), info.type_info().count()));
        let end = (self.cursor + FRAMES_PER_STEP).min(self.pages.len());
        let mut busy = None;
        while self.cursor < end {
            let mfn = self.pages[self.cursor];
            if counts(mfn) != (0, 0) {
                busy = Some(mfn);
                break;
            }
            self.cursor += 1;
        }
        if busy.is_none() && self.cursor >= self.pages.len() {
            let held = core::iter::once(self.domain.shared_info).chain(self.table_frames.iter().copied());
            busy = held.into_iter().find(|&mfn| counts(mfn) != (1, 1));
            if busy.is_none() && super::grants::in_use(&self.domain) {
                busy = Some(Mfn(u64::MAX));
            }
            if busy.is_none() {
                self.cursor = 0;
                self.stage = Stage::SharedInfo;
                return;
            }
        }
        let Some(mfn) = busy else { return };
        self.blocked_at = Some(releases);
        if !self.said_waiting {
            self.said_waiting = true;
            WAITED.fetch_add(1, Ordering::Relaxed);
            let (refs, types) = counts(mfn);
            log::info!(
                "domain {}: teardown waits for other domains' grant mappings (frame {mfn}: {refs} references, {types} typed)",
                self.domain.id.0
            );
        }
    }

    /// Takes the domain out of the table and records how it ended.
    fn forget(self) {
        let domain = self.domain;
        domain::forget(&domain, super::lifecycle::is_boot_domain(domain.id));
        drop(self.vcpus);
        drop(domain);
        super::lifecycle::domain_destroyed();
    }
}

/// `summary: teardown.waited_for_grants`: teardowns that had to wait for another domain's
/// grant mappings of their frames.
pub fn report() {
    log::info!("summary: teardown.waited_for_grants={}", WAITED.load(Ordering::Relaxed));
}

/// Drops the holds the hypervisor took on frames of the domain's reservation: every
/// moved `vcpu_info` (each registration holds its frame once, however many share it) and
/// the console ring. Nothing writes them any more: the domain is dead, its event channels
/// closed and no CPU runs its vCPUs.
fn release_holds(domain: &Domain) {
    for slot in domain.slots() {
        let place = slot.vcpu_info.swap(0, Ordering::AcqRel);
        if let Some(place) = hypervisor::runstate::VcpuInfoPlace::decode(place) {
            super::mmu::release_for_hypervisor(Mfn(place.mfn));
        }
    }
    super::console::release_ring(domain);
}

/// Clears the machine-to-physical entry of a frame of the dead domain (nobody else may
/// learn what it was) and frees the frame.
fn free(domain: &Domain, mfn: Mfn, m2p: &mut crate::m2p::Writer) {
    m2p.clear(mfn);
    if let Err(e) = memory::frames().free(mfn) {
        warn!("domain {}: frame {mfn} not freed: {e:?}", domain.id.0);
    }
}
