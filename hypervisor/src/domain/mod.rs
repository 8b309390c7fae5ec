//! Domains: the hypervisor's record of each guest — its memory (every frame it owns), its
//! shared-info page, its vCPUs, its console line and its life state — and the table of all
//! domains.
//!
//! A domain is created by the builder (`pv::build`), runs until it shuts down or crashes,
//! and is then destroyed: every frame it owned goes back to the frame allocator and every
//! hypervisor structure it used is dropped, so free memory returns to exactly what it was.
//! Domain and vCPU records are counted while they live in the heap ([`DOMAIN_RECORDS`],
//! [`vcpu::VCPU_RECORDS`]), so that a record something holds after its destruction shows.
//! Destruction happens only once no CPU runs any of its vCPUs (see `pv::teardown::destroy`).
//!
//! Frames the hypervisor writes on a domain's behalf (its shared-info page, where event
//! bits and time go; its grant-table frames; the guest frames its vCPUs' `vcpu_info` moved
//! to; its console ring) hold, for as long as the hypervisor writes them, a general and a
//! writable-type reference (`pv::mmu::hold_for_hypervisor`, taken when the frame takes the
//! role, dropped by the teardown before the frame is relinquished and freed): a frame with
//! a writable type can never become a page table or a descriptor frame, so what the
//! hypervisor writes can never become an entry the guest steers. Destruction closes the
//! domain's event channels (under their lock, with the domain already marked dead) before
//! those frames go, so that no sender writes into them afterwards (`pv::events`). (Guest
//! virtual areas, the runstate area, are written through `uaccess` on the guest's own
//! tables instead, and need no hold.)
//!
//! # One owner for teardown
//! While the builder fills a domain, the domain is in the table (its id is taken) but
//! [`lookup`] does not find it: no control operation, event channel or other domain can
//! reach it, so only the builder may destroy it (when the build fails). It becomes visible
//! with [`Domain::publish`], once built. A vCPU joins a domain only while the domain runs
//! ([`Domain::add_vcpu`] checks under the lock that destruction takes the vCPU list with),
//! so no vCPU, which holds its domain, can be left in a domain that is gone.

pub mod vcpu;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::hypercall::ShutdownReason;
use log::{info, warn};
use mm::addr::Mfn;
use mm::frame::{DomainId, Owner};
use spin::Mutex;

pub use vcpu::Vcpu;

use crate::cpus::{CallLock, CpuMask};
use crate::memory;

/// Domain records in the heap (created, not yet dropped): a record destroyed but held
/// forever by something (a queue, a timer, a cycle of references) is a leak.
pub static DOMAIN_RECORDS: AtomicU32 = AtomicU32::new(0);

/// The most domains alive at once (ids 1..=MAX_DOMAINS; 0 is kept for domain 0).
pub const MAX_DOMAINS: usize = 4096;

/// Heap room a new domain must find: its own few KiB, its event channels grown to their
/// limit (1023 ports of 12 bytes), and the run and timer queues doubling as it joins.
pub const DOMAIN_HEAP_BYTES: u64 = 64 << 10;

/// How many vCPUs a domain may have and where they go (domain 0's `CreateDomain`, or a
/// boot module's line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuPlacement {
    /// vCPU ids `0..max_vcpus` may exist (1 to [`vcpu::MAX_VCPUS`]).
    pub max_vcpus: u32,
    /// The CPUs its vCPUs are placed on, bit `i` for CPU `i`; 0: every online CPU.
    pub cpu_mask: u64,
    /// Its vCPUs stay on the CPUs they were placed on (never stolen by idle CPUs).
    pub pinned: bool,
}

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
///
/// Giving a frame back costs no search: the list is not touched then, only the count of
/// frames held. The list may therefore also name frames the domain gave back since it was
/// last compacted (some since freed, some given to others, some given back to it again, so
/// named twice); the frame table's owner word says which are the domain's, and
/// [`DomainMemory::add`] compacts the list once more than half of it is stale. Give-backs
/// are serialized by the domain's page-table lock (a frame leaves only with no reference
/// on it), so a frame is counted out once.
pub struct DomainMemory {
    /// Every frame of the guest's reservation (not the shared-info page), in no order, and
    /// possibly stale entries (see above).
    list: Vec<Mfn>,
    /// How many frames the domain holds.
    held: usize,
    /// The most pages the domain may hold.
    pub max_pages: u64,
}

impl DomainMemory {
    pub const fn new(max_pages: u64) -> DomainMemory {
        DomainMemory { list: Vec::new(), held: 0, max_pages }
    }

    /// How many frames the domain holds.
    pub fn held(&self) -> u64 {
        self.held as u64
    }

    /// Heap bytes the list may take on to hold `count` more frames (it grows to twice its
    /// length), for the heap-room check before allocating them.
    pub fn growth_for(&self, count: u64) -> u64 {
        let wanted = (self.list.len() as u64).saturating_add(count);
        if wanted > self.list.capacity() as u64 { wanted.saturating_mul(2 * core::mem::size_of::<Mfn>() as u64) } else { 0 }
    }

    /// Appends `count` frames that `alloc` allocates to domain `dom` onto the list (after
    /// dropping the stale entries, once more than half of the list is stale), zeroed;
    /// returns where they start. The list grows fallibly: ENOMEM when the heap cannot hold
    /// it.
    pub fn add(
        &mut self,
        dom: DomainId,
        count: usize,
        alloc: impl FnOnce(&mut Vec<Mfn>) -> Result<(), abi::errno::Errno>,
    ) -> Result<usize, abi::errno::Errno> {
        if self.list.len() >= 2 * self.held + 64 {
            self.compact(dom);
        }
        self.list.try_reserve(count).map_err(|_| abi::errno::Errno::Enomem)?;
        let start = self.list.len();
        alloc(&mut self.list)?;
        for &mfn in &self.list[start..] {
            memory::zero_frame(mfn);
        }
        self.held += self.list.len() - start;
        Ok(start)
    }

    /// The frames appended from list position `start` on (see [`Self::add`]).
    pub fn since(&self, start: usize) -> &[Mfn] {
        &self.list[start..]
    }

    /// Counts `mfn` out of domain `dom`, which the caller frees next; false (nothing done)
    /// when `dom` does not own it.
    pub fn remove(&mut self, dom: DomainId, mfn: Mfn) -> bool {
        let owned = memory::frames().frame(mfn).is_ok_and(|info| info.owner() == Some(Owner::Domain(dom)));
        if owned && self.held > 0 {
            self.held -= 1;
        }
        owned
    }

    /// Counts `mfn` back in after [`Self::remove`] counted it out but the frame stayed
    /// (an exchange that failed part-way keeps its input frames); false (nothing done)
    /// when `dom` does not own it.
    pub fn keep(&mut self, dom: DomainId, mfn: Mfn) -> bool {
        let owned = memory::frames().frame(mfn).is_ok_and(|info| info.owner() == Some(Owner::Domain(dom)));
        if owned {
            self.held += 1;
        }
        owned
    }

    /// Takes out the list, stale and repeated entries included, at destruction (the
    /// teardown keeps the frames the domain owns, in slices).
    pub fn take_list(&mut self) -> Vec<Mfn> {
        self.held = 0;
        core::mem::take(&mut self.list)
    }

    /// Drops the stale entries: frames `dom` no longer owns, and repeats.
    fn compact(&mut self, dom: DomainId) {
        let frames = memory::frames();
        self.list.retain(|&mfn| frames.frame(mfn).is_ok_and(|info| info.owner() == Some(Owner::Domain(dom))));
        self.list.sort_unstable();
        self.list.dedup();
    }
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
    /// vCPU ids `0..max_vcpus` may exist.
    pub max_vcpus: u32,
    /// The CPUs its vCPUs are placed on (bit `i`: CPU `i`; 0: every online CPU).
    pub cpu_mask: u64,
    /// Its vCPUs that are up (vCPU 0 from the start): its weight is split among them.
    vcpus_up: AtomicU32,
    /// Being built: in the table, but invisible to [`lookup`] until [`Domain::publish`].
    building: AtomicBool,
    /// Paused by domain 0: its vCPUs wait, parked, until unpaused.
    pub paused: core::sync::atomic::AtomicBool,
    /// Created by domain 0 as hostile (a fuzzer, an attack): however it ends is no failure
    /// of the run, and its ending is counted apart from the others'.
    pub hostile: core::sync::atomic::AtomicBool,
    /// Its vCPUs blocked in `sched_op poll` (senders look for them only when nonzero).
    pub pollers: AtomicU32,
    pub shared_info: Mfn,
    /// What the guest registered for each vCPU id `0..max_vcpus` (see [`vcpu::VcpuSlot`]).
    slots: alloc::boxed::Box<[vcpu::VcpuSlot]>,
    pub memory: Mutex<DomainMemory>,
    /// Serializes this domain's page-table updates (held across TLB shootdowns, so a
    /// [`CallLock`]).
    pub mmu_lock: CallLock<()>,
    /// The CPUs that may hold translations of this domain's address spaces: each adds itself
    /// before it loads one of its tables and removes itself once it has loaded another
    /// address space (`sched`). See `tlb`.
    pub dirty_cpus: CpuMask,
    vcpus: Mutex<Vec<Arc<Vcpu>>>,
    state: AtomicU8,
    ending: Mutex<Option<Ending>>,
    pub console: Mutex<hypervisor::console_line::ConsoleLine>,
    /// Event channels.
    pub channels: Mutex<events::Channels>,
    /// Its grant table (`pv::grants`): the grants it gives.
    pub grants: Mutex<grants::GrantTable>,
    /// Its console and store rings served by domain 0, set once by the builder for a
    /// domain domain 0 creates (`ControlCmd::GetDomainDevices`).
    pub devices: Mutex<Option<abi::control::DomainDevices>>,
    /// Its maptrack: the grants of others (or its own) it maps.
    pub maptrack: Mutex<grants::Maptrack>,
    pub counters: Counters,
    /// vCPUs currently running on some CPU (destruction waits for zero).
    pub running_vcpus: AtomicU32,
    /// Time the build took, for the summary.
    pub build_ns: AtomicU64,
    /// The `vm_assist` types it enabled (bit n: `VMASST_TYPE` n; see `pv::physdev`).
    vm_assists: AtomicU64,
}

/// Domain records the hypervisor holds in memory: the table's, and any destroyed domain
/// that something still references (which would be a leak): [`DOMAIN_RECORDS`].
pub fn held_count() -> u32 {
    DOMAIN_RECORDS.load(Ordering::Relaxed)
}

struct Table {
    slots: Vec<Option<Arc<Domain>>>,
    next: usize,
    created: u64,
    /// Domains in `slots` (alive, or dead with their teardown not finished).
    live: usize,
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
        live: 0,
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

/// Why a vCPU could not join its domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The domain is shutting down or gone.
    Dying,
    /// Its id is at or past the domain's `max_vcpus`, or taken.
    NoSlot,
}

/// Why a domain could not be created.
#[derive(Debug)]
pub enum CreateError {
    TooManyDomains,
    OutOfMemory(mm::frame::FrameError),
    /// The hypervisor heap is too full to hold another domain.
    HeapFull,
    /// The new shared-info frame could not be given its permanent writable type.
    SharedInfo(abi::errno::Errno),
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManyDomains => write!(f, "no free domain id (at most {MAX_DOMAINS} domains)"),
            Self::OutOfMemory(e) => write!(f, "not enough memory: {e:?}"),
            Self::HeapFull => write!(f, "the hypervisor heap is too full for another domain"),
            Self::SharedInfo(e) => write!(f, "the shared-info frame could not be held: {e:?}"),
        }
    }
}

impl Domain {
    /// Whether the domain enabled `kind` with `vm_assist`.
    pub fn vm_assist(&self, kind: abi::hypercall::VmAssistType) -> bool {
        kind.raw() < 64 && self.vm_assists.load(Ordering::Relaxed) & (1 << kind.raw()) != 0
    }

    /// Sets or clears `vm_assist` type `kind` (< 64; `pv::physdev` checks which are valid).
    pub fn set_vm_assist(&self, kind: u32, on: bool) {
        if on {
            self.vm_assists.fetch_or(1 << kind, Ordering::Relaxed);
        } else {
            self.vm_assists.fetch_and(!(1 << kind), Ordering::Relaxed);
        }
    }

    /// Creates an empty domain (no memory yet but its zeroed shared-info page) and enters it
    /// in the table under a fresh id: domain 0 (`privileged`) takes id 0, others the next
    /// free one. Refused while the heap has less than [`DOMAIN_HEAP_BYTES`] to spare, or no
    /// room to grow the teardown queue to one place per domain in the table (its
    /// destruction must not allocate: `reserve_teardown(domains)` makes the room, or says
    /// there is none: `pv::teardown::reserve`). The shared-info frame is held writable for
    /// the hypervisor with `hold` (`pv::mmu::hold_for_hypervisor`). The
    /// domain is invisible to [`lookup`] until its builder calls [`Domain::publish`].
    pub fn create(
        name: &str,
        max_pages: u64,
        privileged: bool,
        params: abi::control::SchedParams,
        placement: VcpuPlacement,
        reserve_teardown: impl FnOnce(usize) -> bool,
        hold: impl FnOnce(DomainId, Mfn) -> Result<(), abi::errno::Errno>,
    ) -> Result<Arc<Domain>, CreateError> {
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
        // Its teardown will need a place in the queue: reserved now, as it enters the table.
        if !reserve_teardown(table.live + 1) {
            return Err(CreateError::HeapFull);
        }
        let owner = Owner::Domain(id);
        let shared_info = memory::frames().alloc(owner).map_err(CreateError::OutOfMemory)?;
        memory::zero_frame(shared_info);
        if let Err(e) = hold(id, shared_info) {
            let _ = memory::frames().free(shared_info);
            return Err(CreateError::SharedInfo(e));
        }
        let mut short_name = arrayvec::ArrayString::new();
        for c in name.chars().take(32) {
            let _ = short_name.try_push(c);
        }
        let max_vcpus = placement.max_vcpus.clamp(1, vcpu::MAX_VCPUS);
        let domain = Arc::new(Domain {
            id,
            name: short_name,
            privileged,
            params: Mutex::new(params),
            pinned: placement.pinned,
            max_vcpus,
            cpu_mask: placement.cpu_mask,
            vcpus_up: AtomicU32::new(1),
            building: AtomicBool::new(true),
            paused: core::sync::atomic::AtomicBool::new(false),
            hostile: core::sync::atomic::AtomicBool::new(false),
            pollers: AtomicU32::new(0),
            shared_info,
            slots: (0..max_vcpus).map(|_| vcpu::VcpuSlot::new()).collect(),
            memory: Mutex::new(DomainMemory::new(max_pages)),
            mmu_lock: CallLock::new(()),
            dirty_cpus: CpuMask::new(),
            vcpus: Mutex::new(Vec::with_capacity(max_vcpus as usize)),
            state: AtomicU8::new(LifeState::Running as u8),
            ending: Mutex::new(None),
            console: Mutex::new(hypervisor::console_line::ConsoleLine::new()),
            channels: Mutex::new(events::Channels::new(abi::ids::DomId(id.0), max_vcpus, events::limits::DEFAULT_MAX_PORTS)),
            grants: Mutex::new(grants::GrantTable::new(grants::table::DEFAULT_MAX_FRAMES)),
            devices: Mutex::new(None),
            maptrack: Mutex::new(grants::Maptrack::new(grants::maptrack::DEFAULT_MAX_MAPS)),
            counters: Counters::default(),
            running_vcpus: AtomicU32::new(0),
            build_ns: AtomicU64::new(0),
            vm_assists: AtomicU64::new(0),
        });
        table.insert(id, domain.clone());
        DOMAIN_RECORDS.fetch_add(1, Ordering::Relaxed);
        Ok(domain)
    }

    pub fn owner(&self) -> Owner {
        Owner::Domain(self.id)
    }

    pub fn state(&self) -> LifeState {
        match self.state.load(Ordering::SeqCst) {
            0 => LifeState::Running,
            1 => LifeState::ShuttingDown,
            _ => LifeState::Dead,
        }
    }

    /// Makes the builder's domain visible to [`lookup`] (and so to domain 0 and other
    /// domains): its build is over.
    pub fn publish(&self) {
        self.building.store(false, Ordering::Release);
    }

    /// Adds a vCPU, unless the domain no longer runs or the vCPU's id is at or past its
    /// `max_vcpus` or taken. Checked under the lock that `pv::teardown::destroy` takes the vCPU
    /// list with, after it marks the domain dead: a vCPU (which holds its domain) can never
    /// join a domain that destruction has passed, where it would keep the domain alive.
    pub fn add_vcpu(&self, vcpu: Arc<Vcpu>) -> Result<(), JoinError> {
        let mut vcpus = self.vcpus.lock();
        if self.state() != LifeState::Running {
            return Err(JoinError::Dying);
        }
        if vcpu.id >= self.max_vcpus || vcpus.iter().any(|v| v.id == vcpu.id) {
            return Err(JoinError::NoSlot);
        }
        // At most `max_vcpus` entries (32): the room was reserved with the domain's.
        vcpus.push(vcpu);
        Ok(())
    }

    /// Counts one more vCPU up (`VCPUOP_up`); returns how many are up.
    pub fn vcpu_up(&self) -> u32 {
        self.vcpus_up.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts one vCPU fewer up (`VCPUOP_down`); returns how many are up.
    pub fn vcpu_down(&self) -> u32 {
        self.vcpus_up.fetch_sub(1, Ordering::AcqRel).saturating_sub(1)
    }

    /// How many of its vCPUs are up (vCPU 0 counts from the start).
    pub fn vcpus_up(&self) -> u32 {
        self.vcpus_up.load(Ordering::Acquire)
    }

    pub fn vcpus(&self) -> Vec<Arc<Vcpu>> {
        self.vcpus.lock().clone()
    }

    /// What the guest registered for vCPU id `id` (`None` at or past `max_vcpus`).
    pub fn slot(&self, id: u32) -> Option<&vcpu::VcpuSlot> {
        self.slots.get(id as usize)
    }

    /// Every vCPU id's slot.
    pub fn slots(&self) -> &[vcpu::VcpuSlot] {
        &self.slots
    }

    /// vCPU `id`, if it exists.
    pub fn vcpu(&self, id: u32) -> Option<Arc<Vcpu>> {
        self.vcpus.lock().iter().find(|v| v.id == id).cloned()
    }

    /// Allocates one extent of `2^order` machine-contiguous frames for the guest, the first
    /// a multiple of `2^order` and all below frame `below`, within its maximum; returns the
    /// first frame. Every heap allocation this needs (the domain's frame list growing) is
    /// checked first and made fallibly: a request the heap cannot hold, or for which no such
    /// run is free, gets `ENOMEM`, never an allocation failure.
    pub fn populate_extent(&self, order: u32, below: u64) -> Result<Mfn, abi::errno::Errno> {
        use abi::errno::Errno;
        let count = 1u64.checked_shl(order).ok_or(Errno::Enomem)?;
        let alloc = |list: &mut Vec<Mfn>| {
            let first = memory::frames().alloc_run(self.owner(), order, below).map_err(|_| Errno::Enomem)?;
            list.extend((0..count).map(|i| Mfn(first.0 + i)));
            Ok(())
        };
        let mut mem = self.memory.lock();
        let start = self.populate_locked(&mut mem, count, 0, |_| true, alloc)?;
        Ok(mem.since(start)[0])
    }

    /// Allocates `count` frames for the guest, within its maximum, into the domain's own
    /// list (the builder reads them there, under the lock, so no copy of a reservation's
    /// frame list is made), with the checks of [`Domain::populate_extent`].
    pub fn populate_into<'a>(&self, mem: &'a mut DomainMemory, count: u64) -> Result<&'a [Mfn], abi::errno::Errno> {
        let start = self.populate_locked(mem, count, 0, |_| true, self.alloc_frames(count))?;
        Ok(mem.since(start))
    }

    /// Appends `count` frames from anywhere in the frame table to a list.
    fn alloc_frames(&self, count: u64) -> impl FnOnce(&mut Vec<Mfn>) -> Result<(), abi::errno::Errno> + '_ {
        move |list| memory::frames().alloc_many(self.owner(), count as usize, list).map_err(|_| abi::errno::Errno::Enomem)
    }

    /// Takes `count` frames into `mem` with `alloc` after checking that the domain is not
    /// dead (its frame list, once `pv::teardown::destroy` took it, would never see them), the
    /// maximum, the free frames and the heap room for the list to grow (plus
    /// `extra_bytes`, which `reserve_extra` then takes); returns where they start in the
    /// list.
    fn populate_locked(
        &self,
        mem: &mut DomainMemory,
        count: u64,
        extra_bytes: u64,
        reserve_extra: impl FnOnce(usize) -> bool,
        alloc: impl FnOnce(&mut Vec<Mfn>) -> Result<(), abi::errno::Errno>,
    ) -> Result<usize, abi::errno::Errno> {
        use abi::errno::Errno;
        if self.state() == LifeState::Dead {
            return Err(Errno::Esrch);
        }
        let wanted = mem.held().checked_add(count).ok_or(Errno::Enomem)?;
        if wanted > mem.max_pages || !memory::frames_for_guests(count) {
            return Err(Errno::Enomem);
        }
        if !memory::heap_has_room_for(mem.growth_for(count).saturating_add(extra_bytes)) {
            return Err(Errno::Enomem);
        }
        let count = usize::try_from(count).map_err(|_| Errno::Enomem)?;
        if !reserve_extra(count) {
            return Err(Errno::Enomem);
        }
        mem.add(self.id, count, alloc)
    }

    /// Number of pages the guest holds now.
    pub fn tot_pages(&self) -> u64 {
        self.memory.lock().held()
    }

    /// Marks the domain shutting down with `ending` and says so in the log; false (nothing
    /// done) if it was shutting down already. The caller stops its vCPUs
    /// (`pv::teardown::shutdown`, the one owner of a domain's end).
    pub fn begin_shutdown(&self, ending: Ending) -> bool {
        let mut slot = self.ending.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(ending);
        drop(slot);
        // SeqCst, and so are the count of CPUs running its vCPUs and the reads of both:
        // `pv::teardown::kill` stores this then reads the count, a CPU switching a vCPU in
        // (or leaving one) changes the count then reads this; with weaker orders both loads
        // may miss the other's write (a store-load reordering): the vCPU then ran on a domain
        // being destroyed, or the domain was never destroyed. (On x86 the logger's lock
        // below happened to order them.)
        self.state.store(LifeState::ShuttingDown as u8, Ordering::SeqCst);
        if ending.is_failure() {
            warn!("domain {} ({}) ended: {}", self.id.0, self.name, ending.name());
        } else {
            info!("domain {} ({}) ended: {}", self.id.0, self.name, ending.name());
        }
        true
    }

    pub fn ending(&self) -> Option<Ending> {
        *self.ending.lock()
    }

    /// Marks the domain dead; false if it was dead already (its destruction has begun).
    pub fn mark_dead(&self) -> bool {
        self.state.swap(LifeState::Dead as u8, Ordering::SeqCst) != LifeState::Dead as u8
    }

    /// Takes its vCPUs out of it, for its destruction (after [`Domain::mark_dead`], under the
    /// lock [`Domain::add_vcpu`] checks the state under, so none joins afterwards).
    pub fn take_vcpus(&self) -> Vec<Arc<Vcpu>> {
        core::mem::take(&mut *self.vcpus.lock())
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
        self.live += 1;
    }

    fn remove(&mut self, id: DomainId) {
        if self.slots[id.0 as usize].take().is_some() {
            self.live -= 1;
        }
    }
}

/// Takes a destroyed domain out of the table (its id is free again) and records how it
/// ended (`boot`: it was a boot domain); the end of its teardown (`pv::teardown`).
pub fn forget(domain: &Domain, boot: bool) {
    let ending = domain.ending().unwrap_or(Ending::Killed);
    // A hostile domain (a fuzzer, an attack domain 0 made) ending badly is no failure.
    let hostile = !boot && domain.hostile.load(Ordering::Relaxed);
    let mut table = DOMAINS.lock();
    table.remove(domain.id);
    if hostile {
        table.hostile.ended += 1;
        table.hostile.killed += u64::from(ending == Ending::Killed);
        table.hostile.crashed += u64::from(ending == Ending::Crash);
    } else if !boot {
        table.others_ended += 1;
        table.others_failed += u64::from(ending.is_failure());
    }
    if boot || (!hostile && ending.is_failure() && table.others_failed <= MAX_FAILURES_KEPT) {
        table.endings.push((domain.id, domain.name, ending));
    }
}

/// The live domain with this id, unless it is still being built (see [`Domain::publish`]).
pub fn lookup(id: DomainId) -> Option<Arc<Domain>> {
    DOMAINS.lock().slots.get(id.0 as usize).cloned().flatten().filter(|d| !d.building.load(Ordering::Acquire))
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
