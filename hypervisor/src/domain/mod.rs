//! Domains: the hypervisor's record of each guest — its memory (every frame it owns), its
//! shared-info page, its vCPUs, its console line and its life state — and the table of all
//! domains.
//!
//! A domain is created by the builder (`pv::build`), runs until it shuts down or crashes,
//! and is then destroyed: every frame it owned goes back to the frame allocator and every
//! hypervisor structure it used is dropped, so free memory returns to exactly what it was.
//! Domain and vCPU records are counted while they live in the heap ([`DOMAIN_RECORDS`],
//! [`vcpu::VCPU_RECORDS`]), so that a record something holds after its destruction shows.
//! Destruction happens only once no CPU runs any of its vCPUs (see [`Domain::destroy`]).

pub mod vcpu;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::hypercall::ShutdownReason;
use log::{info, warn};
use mm::addr::Mfn;
use mm::frame::{DomainId, Owner};
use spin::Mutex;

pub use vcpu::Vcpu;

use crate::memory::{self, FrameMapping};

/// Domain records in the heap (created, not yet dropped): a record destroyed but held
/// forever by something (a queue, a timer, a cycle of references) is a leak.
pub static DOMAIN_RECORDS: AtomicU32 = AtomicU32::new(0);

/// The most domains alive at once (ids 1..=MAX_DOMAINS; 0 is kept for domain 0).
pub const MAX_DOMAINS: usize = 4096;

/// Heap room a new domain must find: its own few KiB, its event channels grown to their
/// limit (1023 ports of 12 bytes), and the run and timer queues doubling as it joins.
pub const DOMAIN_HEAP_BYTES: u64 = 64 << 10;

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LifeState {
    Running = 0,
    /// Asked to shut down (or crashed); waiting for its vCPUs to stop running.
    ShuttingDown = 1,
    /// All memory returned.
    Dead = 2,
}

/// Why a domain ended, as reported in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    /// Killed by the hypervisor (a fault it could not deliver, a bad hypercall frame...).
    Killed,
    /// Destroyed by domain 0.
    Destroyed,
}

impl Ending {
    pub fn from_reason(reason: u32) -> Ending {
        match ShutdownReason::from_raw(reason) {
            Some(ShutdownReason::Poweroff) => Ending::Poweroff,
            Some(ShutdownReason::Reboot) => Ending::Reboot,
            Some(ShutdownReason::Suspend) => Ending::Suspend,
            Some(ShutdownReason::Watchdog) => Ending::Watchdog,
            _ => Ending::Crash,
        }
    }

    /// Whether this ending counts as a failure of the domain.
    pub fn is_failure(self) -> bool {
        matches!(self, Ending::Crash | Ending::Killed | Ending::Watchdog)
    }

    pub fn name(self) -> &'static str {
        match self {
            Ending::Poweroff => "poweroff",
            Ending::Reboot => "reboot",
            Ending::Suspend => "suspend",
            Ending::Crash => "crash",
            Ending::Watchdog => "watchdog",
            Ending::Killed => "killed",
            Ending::Destroyed => "destroyed",
        }
    }
}

/// The frames a domain owns and its reservation limits.
pub struct DomainMemory {
    /// Every frame of the guest's reservation (not the shared-info page).
    pub pages: Vec<Mfn>,
    /// The most pages the domain may hold.
    pub max_pages: u64,
}

/// Per-domain counters, read by the summary and the control interface.
#[derive(Default)]
pub struct Counters {
    pub hypercalls: AtomicU64,
    /// Time its vCPUs have run, in ns.
    pub cpu_time_ns: AtomicU64,
    pub events_sent: AtomicU64,
    pub exceptions_bounced: AtomicU64,
    pub console_bytes: AtomicU64,
    pub console_dropped_lines: AtomicU64,
}

/// One guest.
pub struct Domain {
    pub id: DomainId,
    pub name: arrayvec::ArrayString<32>,
    /// Domain 0: may use the control interface.
    pub privileged: bool,
    /// Scheduling parameters (set at creation, changed by domain 0).
    pub params: Mutex<abi::control::SchedParams>,
    /// Its vCPUs stay on the CPUs they were placed on (domain 0 chose them): idle CPUs
    /// never steal them.
    pub pinned: bool,
    /// Paused by domain 0: its vCPUs wait, parked, until unpaused.
    pub paused: core::sync::atomic::AtomicBool,
    /// Created by domain 0 as hostile (a fuzzer, an attack): however it ends is no failure
    /// of the run, and its ending is counted apart from the others'.
    pub hostile: core::sync::atomic::AtomicBool,
    /// Its vCPUs blocked in `sched_op poll` (senders look for them only when nonzero).
    pub pollers: AtomicU32,
    pub shared_info: Mfn,
    pub memory: Mutex<DomainMemory>,
    /// Serializes this domain's page-table updates.
    pub mmu_lock: Mutex<()>,
    vcpus: Mutex<Vec<Arc<Vcpu>>>,
    state: AtomicU8,
    ending: Mutex<Option<Ending>>,
    pub console: Mutex<crate::pv::console::ConsoleLine>,
    /// Event channels.
    pub channels: Mutex<events::Channels>,
    pub counters: Counters,
    /// vCPUs currently running on some CPU (destruction waits for zero).
    pub running_vcpus: AtomicU32,
    /// Time the build took, for the summary.
    pub build_ns: AtomicU64,
}

struct Table {
    slots: Vec<Option<Arc<Domain>>>,
    next: usize,
    created: u64,
    /// Endings of boot domains, and of the first [`MAX_FAILURES_KEPT`] others that failed.
    endings: Vec<(DomainId, arrayvec::ArrayString<32>, Ending)>,
    /// Domains created by domain 0 that are gone, and how many of them failed: counted, not
    /// kept, so that a hypervisor that creates and destroys domains forever does not grow.
    others_ended: u64,
    others_failed: u64,
    /// Hostile domains created by domain 0 that are gone, by ending.
    hostile: HostileEndings,
}

/// How the hostile domains domain 0 created ended (killed by the hypervisor, crashed by
/// their own choice, or anything else: powered off, destroyed by domain 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostileEndings {
    pub ended: u64,
    pub killed: u64,
    pub crashed: u64,
}

/// How many failed endings of domains created by domain 0 are kept for the summary.
const MAX_FAILURES_KEPT: u64 = 64;

static DOMAINS: Mutex<Table> =
    Mutex::new(Table {
        slots: Vec::new(),
        next: 1,
        created: 0,
        endings: Vec::new(),
        others_ended: 0,
        others_failed: 0,
        hostile: HostileEndings { ended: 0, killed: 0, crashed: 0 },
    });

/// What the domain table remembers of domains that are gone.
pub struct History {
    pub created: u64,
    /// Boot domains' endings, then the first failed endings of the others.
    pub endings: Vec<(DomainId, arrayvec::ArrayString<32>, Ending)>,
    pub others_ended: u64,
    pub others_failed: u64,
    pub hostile: HostileEndings,
}

/// Why a domain could not be created.
#[derive(Debug)]
pub enum CreateError {
    TooManyDomains,
    OutOfMemory(mm::frame::FrameError),
    /// The hypervisor heap is too full to hold another domain.
    HeapFull,
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManyDomains => write!(f, "no free domain id (at most {MAX_DOMAINS} domains)"),
            Self::OutOfMemory(e) => write!(f, "not enough memory: {e:?}"),
            Self::HeapFull => write!(f, "the hypervisor heap is too full for another domain"),
        }
    }
}

impl Domain {
    /// Creates an empty domain (no memory yet but its zeroed shared-info page) and enters it
    /// in the table under a fresh id: domain 0 (`privileged`) takes id 0, others the next
    /// free one. Refused while the heap has less than [`DOMAIN_HEAP_BYTES`] to spare.
    pub fn create(name: &str, max_pages: u64, privileged: bool, params: abi::control::SchedParams, pinned: bool) -> Result<Arc<Domain>, CreateError> {
        if !memory::heap_has_room_for(DOMAIN_HEAP_BYTES) {
            return Err(CreateError::HeapFull);
        }
        if !memory::frames_for_guests(1) {
            // The free frames left are the heap's, to grow to its reservation.
            let free = memory::free_bytes() / mm::addr::PAGE_SIZE;
            return Err(CreateError::OutOfMemory(mm::frame::FrameError::OutOfMemory { requested: 1, free }));
        }
        let mut table = DOMAINS.lock();
        let id = if privileged { DomainId(0) } else { table.free_id().ok_or(CreateError::TooManyDomains)? };
        if table.slots[id.0 as usize].is_some() {
            return Err(CreateError::TooManyDomains);
        }
        let owner = Owner::Domain(id);
        let shared_info = memory::frames().alloc(owner).map_err(CreateError::OutOfMemory)?;
        zero_frame(shared_info);
        let mut short_name = arrayvec::ArrayString::new();
        for c in name.chars().take(32) {
            let _ = short_name.try_push(c);
        }
        let domain = Arc::new(Domain {
            id,
            name: short_name,
            privileged,
            params: Mutex::new(params),
            pinned,
            paused: core::sync::atomic::AtomicBool::new(false),
            hostile: core::sync::atomic::AtomicBool::new(false),
            pollers: AtomicU32::new(0),
            shared_info,
            memory: Mutex::new(DomainMemory { pages: Vec::new(), max_pages }),
            mmu_lock: Mutex::new(()),
            vcpus: Mutex::new(Vec::new()),
            state: AtomicU8::new(LifeState::Running as u8),
            ending: Mutex::new(None),
            console: Mutex::new(crate::pv::console::ConsoleLine::new()),
            channels: Mutex::new(events::Channels::new(abi::ids::DomId(id.0), 32, events::limits::DEFAULT_MAX_PORTS)),
            counters: Counters::default(),
            running_vcpus: AtomicU32::new(0),
            build_ns: AtomicU64::new(0),
        });
        table.insert(id, domain.clone());
        DOMAIN_RECORDS.fetch_add(1, Ordering::Relaxed);
        Ok(domain)
    }

    pub fn owner(&self) -> Owner {
        Owner::Domain(self.id)
    }

    pub fn state(&self) -> LifeState {
        match self.state.load(Ordering::Acquire) {
            0 => LifeState::Running,
            1 => LifeState::ShuttingDown,
            _ => LifeState::Dead,
        }
    }

    pub fn add_vcpu(&self, vcpu: Arc<Vcpu>) {
        self.vcpus.lock().push(vcpu);
    }

    pub fn vcpus(&self) -> Vec<Arc<Vcpu>> {
        self.vcpus.lock().clone()
    }

    /// vCPU `id`, if it exists.
    pub fn vcpu(&self, id: u32) -> Option<Arc<Vcpu>> {
        self.vcpus.lock().iter().find(|v| v.id == id).cloned()
    }

    /// Whether more than one vCPU exists (TLB flushes must then reach other CPUs).
    pub fn is_smp(&self) -> bool {
        self.vcpus.lock().len() > 1
    }

    /// Allocates `count` frames for the guest, within its maximum.
    pub fn populate(&self, count: u64, out: &mut Vec<Mfn>) -> Result<(), abi::errno::Errno> {
        let mut mem = self.memory.lock();
        let wanted = mem.pages.len() + count as usize;
        // The list of its frames may have to grow (to twice the length) in the heap.
        let list_growth = if wanted > mem.pages.capacity() { (wanted * 2 * core::mem::size_of::<Mfn>()) as u64 } else { 0 };
        if wanted as u64 > mem.max_pages || !memory::frames_for_guests(count) || !memory::heap_has_room_for(list_growth) {
            return Err(abi::errno::Errno::Enomem);
        }
        let start = out.len();
        memory::frames()
            .alloc_many(self.owner(), count as usize, out)
            .map_err(|_| abi::errno::Errno::Enomem)?;
        for &mfn in &out[start..] {
            zero_frame(mfn);
        }
        mem.pages.extend_from_slice(&out[start..]);
        Ok(())
    }

    /// Number of pages the guest holds now.
    pub fn tot_pages(&self) -> u64 {
        self.memory.lock().pages.len() as u64
    }

    /// Starts shutting the domain down (once); the last CPU to stop running one of its vCPUs
    /// destroys it.
    pub fn shutdown(&self, ending: Ending) {
        let mut slot = self.ending.lock();
        if slot.is_some() {
            return;
        }
        *slot = Some(ending);
        drop(slot);
        self.state.store(LifeState::ShuttingDown as u8, Ordering::Release);
        if ending.is_failure() {
            warn!("domain {} ({}) ended: {}", self.id.0, self.name, ending.name());
        } else {
            info!("domain {} ({}) ended: {}", self.id.0, self.name, ending.name());
        }
        for vcpu in self.vcpus() {
            vcpu.stop();
        }
    }

    pub fn ending(&self) -> Option<Ending> {
        *self.ending.lock()
    }

    /// Shuts the domain down from outside (domain 0, or the hypervisor) and destroys it at
    /// once if none of its vCPUs is on a CPU; otherwise the last CPU to leave it does.
    pub fn kill(self: &Arc<Self>, ending: Ending) {
        self.shutdown(ending);
        if self.running_vcpus.load(Ordering::Acquire) == 0 {
            self.destroy();
        }
    }

    /// Returns every frame and structure of a domain that no CPU runs any more. Called by the
    /// scheduler once the domain is shutting down and `running_vcpus` is zero.
    pub fn destroy(self: &Arc<Self>) {
        if self.state.swap(LifeState::Dead as u8, Ordering::AcqRel) == LifeState::Dead as u8 {
            return;
        }
        crate::pv::events::close_all(self);
        let vcpus = core::mem::take(&mut *self.vcpus.lock());
        for vcpu in &vcpus {
            crate::pv::descriptors::release(core::mem::take(&mut *vcpu.gdt.lock()));
        }
        let bases = vcpus.iter().flat_map(|v| v.take_bases()).collect();
        let pages = core::mem::take(&mut self.memory.lock().pages);
        let mut owned = pages.clone();
        owned.push(self.shared_info);
        crate::pv::mmu::relinquish(self, bases, &owned);
        for &mfn in pages.iter().chain(core::iter::once(&self.shared_info)) {
            if let Err(e) = memory::frames().free(mfn) {
                warn!("domain {}: frame {mfn} not freed: {e:?}", self.id.0);
            }
        }
        let ending = self.ending().unwrap_or(Ending::Killed);
        let boot = crate::pv::lifecycle::is_boot_domain(self.id);
        let hostile = !boot && self.hostile.load(Ordering::Relaxed);
        let mut table = DOMAINS.lock();
        table.remove(self.id);
        if hostile {
            table.hostile.ended += 1;
            table.hostile.killed += u64::from(ending == Ending::Killed);
            table.hostile.crashed += u64::from(ending == Ending::Crash);
        } else if !boot {
            table.others_ended += 1;
            table.others_failed += u64::from(ending.is_failure());
        }
        if boot || (!hostile && ending.is_failure() && table.others_failed <= MAX_FAILURES_KEPT) {
            table.endings.push((self.id, self.name, ending));
        }
        drop(table);
        drop(vcpus);
        crate::pv::lifecycle::domain_destroyed();
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        DOMAIN_RECORDS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Allocates the domain table (once, at boot, so that its size is not charged to domains).
pub fn init() {
    DOMAINS.lock().slots.resize(MAX_DOMAINS + 1, None);
}

impl Table {
    fn free_id(&mut self) -> Option<DomainId> {
        for _ in 0..MAX_DOMAINS {
            let id = self.next;
            self.next = if self.next >= MAX_DOMAINS { 1 } else { self.next + 1 };
            if self.slots[id].is_none() {
                return Some(DomainId(id as u16));
            }
        }
        None
    }

    fn insert(&mut self, id: DomainId, domain: Arc<Domain>) {
        self.slots[id.0 as usize] = Some(domain);
        self.created += 1;
    }

    fn remove(&mut self, id: DomainId) {
        self.slots[id.0 as usize] = None;
    }
}

/// The live domain with this id.
pub fn lookup(id: DomainId) -> Option<Arc<Domain>> {
    DOMAINS.lock().slots.get(id.0 as usize).cloned().flatten()
}

/// Number of live domains.
pub fn live_count() -> usize {
    DOMAINS.lock().slots.iter().filter(|s| s.is_some()).count()
}

/// Domains created and how those that are gone ended.
pub fn history() -> History {
    let table = DOMAINS.lock();
    History {
        created: table.created,
        endings: table.endings.clone(),
        others_ended: table.others_ended,
        others_failed: table.others_failed,
        hostile: table.hostile,
    }
}

/// Fills a frame with zeroes through a temporary mapping.
pub fn zero_frame(mfn: Mfn) {
    let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
    map.bytes().fill(0);
}
