//! The hypervisor's memory: the window layout, the heap, the frame table, per-CPU areas and
//! temporary mappings of arbitrary machine frames (writable, or read-only for reading boot
//! modules a page at a time: [`read_machine`]) — the glue between `mm` and the window's
//! page tables.
//!
//! Boot order matters and is encoded in the function names: the heap comes first (backed by
//! a small pool carved straight from usable memory, so that ACPI can be parsed with `alloc`),
//! then the CPU regions (once the CPU count is known), then the frame metadata, which takes
//! what is left of the window and so bounds the RAM the hypervisor can manage.
//!
//! The heap gives free pages back in [`trim_heap`], at safe points (after a domain is
//! destroyed, before free memory is reported): the pages are unmapped under the heap lock,
//! and their frames are freed only after every CPU has flushed its TLB, with no lock held.
//! Nothing here ever flushes other CPUs from inside the allocator.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use log::{info, warn};
use mm::addr::{pages_for, Mfn, PAGE_SIZE};
use mm::frame::{FrameInfo, FrameTable, Owner};
use mm::heap::{Heap, LockedHeap, PageBacker};
use mm::layout::{self, PerCpuArea, Region, WindowLayout, TEMP_SLOTS_PER_CPU};
use mm::memmap::{usable_memory, PhysRange, UsableMemory};
use spin::{Mutex, Once};

use crate::arch::paging::{self, MapKind};
use crate::arch::tempmap;
pub use crate::arch::tempmap::FrameMapping;
use crate::bootinfo::BootInfo;
use crate::arch::fwmap;
use crate::cpus;
use arrayvec::ArrayVec;

use crate::bootinfo::MAX_MODULES;
use crate::arch::percpu::{self, CpuIndex};
use hypervisor::cmdline::Options;

/// Window space for boot-time firmware mappings (released at the end of boot).
const FIRMWARE_WINDOW: u64 = 4 << 20;
/// Window space for device registers (local APIC, I/O APICs, HPET).
pub const MMIO_WINDOW: u64 = 256 << 10;
/// Memory carved for the heap before the frame table exists.
const EARLY_HEAP_POOL: u64 = 1 << 20;
/// Frames in the early pool.
const EARLY_POOL_FRAMES: usize = (EARLY_HEAP_POOL / PAGE_SIZE) as usize;
/// The most heap frames one trim round unmaps before the TLB flush that lets them go.
const TRIM_BATCH: usize = 128;

/// A boot failure in memory set-up.
#[derive(Debug)]
pub enum MemoryError {
    Layout(layout::LayoutError),
    Carve(mm::memmap::CarveError),
    Heap(mm::heap::HeapError),
    Frames(mm::frame::FrameError),
    Map(paging::MapError),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(e) => write!(f, "the hypervisor window does not fit: {e:?}"),
            Self::Carve(e) => write!(f, "not enough contiguous memory: {e:?}"),
            Self::Heap(e) => write!(f, "heap: {e:?}"),
            Self::Frames(e) => write!(f, "frame allocation: {e:?}"),
            Self::Map(e) => write!(f, "window mapping: {e:?}"),
        }
    }
}

impl From<layout::LayoutError> for MemoryError {
    fn from(e: layout::LayoutError) -> Self {
        Self::Layout(e)
    }
}

/// What memory set-up found, for the summary.
pub struct MemorySummary {
    pub usable_bytes: u64,
    pub metadata_bytes: u64,
    /// RAM above what the frame metadata can describe, left unused.
    pub capped_bytes: u64,
}

/// Usable memory between [`init_heap`] and [`init_frames`].
pub struct EarlyMemory {
    usable: UsableMemory,
}

static FRAMES: Once<FrameTable> = Once::new();
static EARLY_POOL: Mutex<Option<EarlyPool>> = Mutex::new(None);
static CPU_AREAS: Once<Vec<PerCpuArea>> = Once::new();

/// The heap: the global allocator, or behind the heap tracer with feature `heap-trace`.
#[cfg_attr(not(feature = "heap-trace"), global_allocator)]
pub(crate) static HEAP: LockedHeap<WindowBacker> = LockedHeap::new();
#[cfg(feature = "heap-trace")]
#[global_allocator]
static TRACED: crate::heaptrace::Traced<LockedHeap<WindowBacker>> = crate::heaptrace::Traced(&HEAP);
/// Frames unmapped from the heap whose old translations other CPUs may still hold: freed
/// by [`trim_heap`] after it has flushed every CPU.
static UNMAPPED: Mutex<ArrayVec<Mfn, TRIM_BATCH>> = Mutex::new(ArrayVec::new_const());
/// Held by the one CPU running [`trim_heap`] or [`compact_heap`] (one round's flush must
/// cover every page it lets the heap reuse or moves).
static TRIMMING: Mutex<()> = Mutex::new(());
/// The heap's window range, for [`rebase_heap`].
static HEAP_RANGE: Once<core::ops::Range<u64>> = Once::new();
/// One [`rebase_heap`] round: the CPU that moves pages, how many others are parked, and
/// its word that they may go on; the frames it moved pages off.
static REBASE_LEADER: AtomicUsize = AtomicUsize::new(usize::MAX);
static REBASE_PARKED: AtomicUsize = AtomicUsize::new(0);
static REBASE_DONE: AtomicBool = AtomicBool::new(false);
static REBASED: Mutex<ArrayVec<Mfn, TRIM_BATCH>> = Mutex::new(ArrayVec::new_const());

/// Backs heap growth with frames mapped into the heap's window range, and unmaps the pages
/// the heap gives back (under the heap lock: no flush of other CPUs here, see [`trim_heap`]).
pub(crate) struct WindowBacker;

impl PageBacker for WindowBacker {
    fn back(&mut self, vaddr: usize, pages: usize) -> usize {
        for i in 0..pages {
            let Some(mfn) = alloc_hypervisor_frame() else { return i };
            if paging::map(vaddr as u64 + i as u64 * PAGE_SIZE, mfn.addr().0, MapKind::Data).is_err() {
                // Never mapped, so no CPU can hold a translation to it: free it at once.
                release_hypervisor_frame(mfn);
                return i;
            }
        }
        pages
    }

    fn unback(&mut self, vaddr: usize, pages: usize) -> usize {
        let mut unmapped = UNMAPPED.lock();
        let taken = pages.min(unmapped.remaining_capacity());
        for i in 0..taken {
            // Invalidated on this CPU only; `trim_heap` flushes the others before the frame
            // is freed. (No logging here: the heap lock is held.)
            if let Some(phys) = paging::unmap(vaddr as u64 + i as u64 * PAGE_SIZE) {
                unmapped.push(Mfn(phys / PAGE_SIZE));
            }
        }
        taken
    }
}

/// The frames carved for the heap before the frame table exists. The frame table counts
/// them reserved (they are outside the ranges it is built from, and `FrameTable::free`
/// refuses reserved frames), so they never go to it: the heap takes frames from here first,
/// and heap frames given back return here. Free memory as the frame table counts it is
/// therefore unchanged by heap use that fits in the pool.
struct EarlyPool {
    range: PhysRange,
    /// Frames of the range never handed out start here.
    next: u64,
    /// Frames handed out and given back, one bit per frame of the range.
    returned: [u64; EARLY_POOL_FRAMES.div_ceil(64)],
}

impl EarlyPool {
    fn new(range: PhysRange) -> EarlyPool {
        EarlyPool { range, next: range.start, returned: [0; EARLY_POOL_FRAMES.div_ceil(64)] }
    }

    fn take(&mut self) -> Option<Mfn> {
        if let Some((word, bits)) = self.returned.iter_mut().enumerate().find(|(_, b)| **b != 0) {
            let bit = bits.trailing_zeros() as u64;
            *bits &= !(1 << bit);
            return Some(Mfn(self.range.start / PAGE_SIZE + word as u64 * 64 + bit));
        }
        (self.next < self.range.end).then(|| {
            self.next += PAGE_SIZE;
            Mfn((self.next - PAGE_SIZE) / PAGE_SIZE)
        })
    }

    /// Whether `mfn` is one of the pool's frames (handed out or given back).
    fn holds(&self, mfn: Mfn) -> bool {
        (self.range.start..self.next).contains(&mfn.addr().0)
    }

    /// Whether a frame is left to take.
    fn has_free(&self) -> bool {
        self.next < self.range.end || self.returned.iter().any(|&bits| bits != 0)
    }

    /// Takes `mfn` back if it is one of the pool's frames.
    fn give_back(&mut self, mfn: Mfn) -> bool {
        let addr = mfn.addr().0;
        if !self.holds(mfn) {
            return false;
        }
        let index = ((addr - self.range.start) / PAGE_SIZE) as usize;
        self.returned[index / 64] |= 1 << (index % 64);
        true
    }
}

/// One frame for the hypervisor's own use: from the early pool while it lasts, then from
/// the frame table.
fn alloc_hypervisor_frame() -> Option<Mfn> {
    if let Some(mfn) = EARLY_POOL.lock().as_mut().and_then(EarlyPool::take) {
        return Some(mfn);
    }
    FRAMES.get()?.alloc(Owner::Hypervisor).ok()
}

/// Returns a frame from [`alloc_hypervisor_frame`] that nothing maps any more, on any CPU.
fn release_hypervisor_frame(mfn: Mfn) {
    if EARLY_POOL.lock().as_mut().is_some_and(|pool| pool.give_back(mfn)) {
        return;
    }
    if let Some(Err(e)) = FRAMES.get().map(|frames| frames.free(mfn)) {
        warn!("memory: heap frame {mfn} not freed: {e:?}");
    }
}

/// Gives the heap's free pages back: the heap unmaps them (in rounds of at most
/// [`TRIM_BATCH`]), every CPU flushes its TLB, then their frames go back to the frame table
/// (or the early pool) and the heap may map those pages again. Returns the pages given back.
///
/// Call it at a safe point: with no lock held that a CPU may spin on with interrupts off
/// (the flush waits for every CPU), in particular not from the allocator, and only once the
/// other CPUs answer cross-CPU calls (after boot). If another CPU is trimming, it waits for
/// its turn, answering cross-CPU calls meanwhile (that CPU's flush waits for this one), so
/// that on return every page that was free when it was called has been given back (or
/// allocated again).
pub fn trim_heap() -> usize {
    let _only = trimming();
    trim_locked()
}

/// [`trim_heap`], then [`rebase_heap`]: afterwards the heap holds no frame of the frame
/// table that a free early-pool frame could replace, so free memory reads the same for the
/// same live heap whatever the heap's peak was. For exact free-memory figures (domain 0's
/// `physinfo`, the end-of-run leak check); it stops every CPU briefly when it moves pages.
/// Returns the pages given back and the pages moved.
pub fn compact_heap() -> (usize, usize) {
    let _only = trimming();
    (trim_locked(), rebase_heap())
}

/// Takes [`TRIMMING`], answering cross-CPU calls while another CPU holds it.
fn trimming() -> spin::MutexGuard<'static, ()> {
    loop {
        if let Some(guard) = TRIMMING.try_lock() {
            return guard;
        }
        cpus::service_calls();
        core::hint::spin_loop();
    }
}

fn trim_locked() -> usize {
    let mut pages = 0;
    loop {
        let given = HEAP.trim();
        if given == 0 {
            return pages;
        }
        let frames = core::mem::take(&mut *UNMAPPED.lock());
        cpus::call_all(|_| paging::flush_all_local(), 0);
        for &mfn in &frames {
            release_hypervisor_frame(mfn);
        }
        HEAP.reuse_unbacked();
        pages += given;
    }
}

/// Moves live heap pages off frames of the frame table onto free early-pool frames (the
/// pool is the heap's own; the frame table's frames are everyone's). After a peak (a
/// thousand domains) the few heap pages still live, such as a table shrunk back to its
/// minimum or a queue's current block, may sit on frames the heap took from the frame table
/// while pool frames freed by trimming lie idle; free memory would read lower than before
/// for as long as they live. Returns how many pages it moved. Call with [`TRIMMING`] held.
///
/// Each round parks every other CPU in a cross-CPU call: they take it with interrupts on
/// (from a guest or idle) or in a wait that holds no heap lock, so none is inside the heap
/// or writing a heap page. The leader then copies up to [`TRIM_BATCH`] pages under the heap
/// lock and remaps them, every CPU flushes its TLB, and only then are the old frames freed.
fn rebase_heap() -> usize {
    let Some(range) = HEAP_RANGE.get() else { return 0 };
    let mut moved = 0;
    loop {
        let pool_has_room = EARLY_POOL.lock().as_ref().is_some_and(EarlyPool::has_free);
        let on_table_frames = || {
            let pool = EARLY_POOL.lock();
            let Some(pool) = pool.as_ref() else { return false };
            range.clone().step_by(PAGE_SIZE as usize).filter_map(paging::translate).any(|phys| !pool.holds(Mfn(phys / PAGE_SIZE)))
        };
        if !pool_has_room || !on_table_frames() {
            return moved;
        }
        REBASE_LEADER.store(percpu::current().index.0 as usize, Ordering::SeqCst);
        REBASE_PARKED.store(0, Ordering::SeqCst);
        REBASE_DONE.store(false, Ordering::SeqCst);
        cpus::call_all(rebase_round, 0);
        let frames = core::mem::take(&mut *REBASED.lock());
        if frames.is_empty() {
            return moved;
        }
        moved += frames.len();
        for mfn in frames {
            release_hypervisor_frame(mfn);
        }
    }
}

/// One CPU's part of a [`rebase_heap`] round (a cross-CPU call, run by every online CPU).
fn rebase_round(_: usize) {
    if percpu::current().index.0 as usize == REBASE_LEADER.load(Ordering::SeqCst) {
        let others = cpus::online_count() - 1;
        while REBASE_PARKED.load(Ordering::SeqCst) < others {
            core::hint::spin_loop();
        }
        let range = HEAP_RANGE.get().expect("set before any round").clone();
        HEAP.while_locked(|| move_heap_pages(range, &mut REBASED.lock()));
        REBASE_DONE.store(true, Ordering::SeqCst);
    } else {
        REBASE_PARKED.fetch_add(1, Ordering::SeqCst);
        while !REBASE_DONE.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
    }
    paging::flush_all_local();
}

/// Copies heap pages that sit on frame-table frames onto free pool frames and remaps them,
/// until `moved` (the old frames) is full or the pool is empty. Every other CPU is parked
/// and the heap locked; this CPU's old translations are invalidated by `unmap`.
fn move_heap_pages(range: core::ops::Range<u64>, moved: &mut ArrayVec<Mfn, TRIM_BATCH>) {
    let mut pool = EARLY_POOL.lock();
    let Some(pool) = pool.as_mut() else { return };
    for va in range.step_by(PAGE_SIZE as usize) {
        let Some(phys) = paging::translate(va) else { continue };
        let old = Mfn(phys / PAGE_SIZE);
        if pool.holds(old) {
            continue;
        }
        if moved.is_full() {
            return;
        }
        let Some(new) = pool.take() else { return };
        let (Some(mut copy), Some(mut from)) = (FrameMapping::new(new), FrameMapping::read_only(old)) else {
            pool.give_back(new);
            return;
        };
        // Every other CPU is parked and the heap is locked, so nothing writes the page (at
        // `va`, and `from` maps its frame) while it is copied or until `va` maps `new`.
        copy.bytes().copy_from_slice(from.bytes_ref());
        drop((copy, from));
        paging::unmap(va);
        paging::map(va, new.addr().0, MapKind::Data).expect("a heap page just unmapped maps again");
        moved.push(old);
    }
}

/// Starts the window layout: the image, then the firmware and device-register regions.
pub fn start_layout(image_bytes: u64) -> WindowLayout {
    let mut layout = WindowLayout::new(image_bytes).unwrap_or_else(|e| panic!("image does not fit the window: {e:?}"));
    let firmware = layout.place(Region::Firmware, FIRMWARE_WINDOW).expect("firmware region fits after the image");
    fwmap::init(firmware.start, firmware.size);
    let mmio = layout.place(Region::Mmio, MMIO_WINDOW).expect("device region fits after the image");
    crate::platform::set_mmio_window(mmio.start, mmio.size);
    layout
}

/// Decodes usable memory and starts the heap on a pool carved from it.
pub fn init_heap(boot: &BootInfo, layout: &mut WindowLayout, options: &Options) -> Result<EarlyMemory, MemoryError> {
    let reserved = reserved_ranges(boot);
    let mut usable = usable_memory(&boot.memory, &reserved);
    if usable.dropped_bytes() > 0 {
        warn!("memory: map has too many ranges; {} KiB in small ranges ignored", usable.dropped_bytes() >> 10);
    }
    if boot.dropped_regions > 0 {
        warn!("memory: the loader's map had more entries than fit; {} ignored", boot.dropped_regions);
    }
    let pool = usable.carve(pages_for(EARLY_HEAP_POOL)).map_err(MemoryError::Carve)?;
    *EARLY_POOL.lock() = Some(EarlyPool::new(pool));
    let heap = layout.place(Region::Heap, (options.heap_mib as u64) << 20)?;
    HEAP_RANGE.call_once(|| heap.start..heap.start + heap.size);
    // SAFETY: the heap range was just placed in the window for the heap alone; nothing else
    // maps or uses it. `WindowBacker` keeps the backer's contract: it reports a page mapped
    // only once it has mapped a frame of the hypervisor's own there (early pool or frame
    // table, `alloc_hypervisor_frame`), and unmaps only pages the heap gives back.
    let heap = unsafe { Heap::new(heap.start as usize, heap.size as usize, WindowBacker) }.map_err(MemoryError::Heap)?;
    HEAP.init(heap).map_err(MemoryError::Heap)?;
    info!("memory: {} MiB usable in {} ranges; heap started", usable.total_bytes() >> 20, usable.ranges().len());
    Ok(EarlyMemory { usable })
}

/// The physical ranges the allocator must never hand out (built before the heap exists).
fn reserved_ranges(boot: &BootInfo) -> ArrayVec<PhysRange, { MAX_MODULES + 8 }> {
    let image = PhysRange { start: paging::image_phys(paging::WINDOW_BASE), end: paging::image_phys(image_end_va()) };
    let mut ranges = ArrayVec::new();
    ranges.push(PhysRange { start: 0, end: 1 << 20 }); // real-mode area, BIOS, AP trampoline
    ranges.push(image);
    ranges.extend(boot.loader_ranges.iter().map(|&(start, end)| PhysRange { start, end }));
    // Modules refused at boot are never read, so their ranges (perhaps nonsense) stay free.
    ranges.extend(boot.modules.iter().filter(|m| m.refused.is_none()).map(|m| PhysRange { start: m.start, end: m.end }));
    ranges
}

/// One past the hypervisor image's last virtual address.
pub fn image_end_va() -> u64 {
    crate::arch::boot::image_sections().end
}

/// Places the regions that scale with the CPU count (temporary mappings, per-CPU areas) and
/// returns each CPU's area.
pub fn place_cpu_regions(layout: &mut WindowLayout, cpus: usize) -> Result<&'static [PerCpuArea], MemoryError> {
    let temp = layout.place(Region::TempMappings, cpus as u64 * TEMP_SLOTS_PER_CPU * PAGE_SIZE)?;
    tempmap::set_base(temp.start);
    layout.place(Region::PerCpu, cpus as u64 * layout::PER_CPU_BYTES)?;
    let areas = (0..cpus as u32).map(|cpu| layout.per_cpu(cpu).expect("per-CPU region was sized for every CPU")).collect();
    Ok(CPU_AREAS.call_once(|| areas))
}

/// CPU `cpu`'s area (after [`place_cpu_regions`]).
pub fn percpu_area(cpu: CpuIndex) -> &'static PerCpuArea {
    &CPU_AREAS.get().expect("per-CPU areas are placed before any CPU enters one")[cpu.0 as usize]
}

/// Builds the frame table over the rest of usable memory, its metadata taking what is left
/// of the window (RAM beyond that is left unused, with a warning).
pub fn init_frames(early: EarlyMemory, layout: &mut WindowLayout) -> Result<MemorySummary, MemoryError> {
    let EarlyMemory { mut usable } = early;
    let cap = layout.max_ram_bytes(&[]);
    let capped_bytes = if usable.max_addr() > cap { usable.truncate_above(cap) } else { 0 };
    if capped_bytes > 0 {
        warn!("memory: frame metadata fits {} MiB of address space in the window; {} MiB of RAM above it unused", cap >> 20, capped_bytes >> 20);
    }
    let metadata_bytes = layout::metadata_bytes_for(usable.max_addr());
    let pages = pages_for(metadata_bytes);
    let backing = usable.carve(pages).map_err(MemoryError::Carve)?;
    let region = layout.place(Region::FrameMetadata, pages * PAGE_SIZE)?;
    let entries = (metadata_bytes / core::mem::size_of::<FrameInfo>() as u64) as usize;
    // Freshly carved memory that nothing else uses; `FrameTable::new` resets the entries.
    let storage = paging::map_for_good::<FrameInfo>(region.start, backing.start, pages, entries).map_err(MemoryError::Map)?;
    layout.set_used(Region::FrameMetadata, metadata_bytes)?;
    let table = FRAMES.call_once(|| FrameTable::new(storage, usable.ranges()));
    info!("memory: frame table: {} MiB free of {} MiB usable, metadata {} KiB", (table.free_count() * PAGE_SIZE) >> 20, usable.total_bytes() >> 20, metadata_bytes >> 10);
    Ok(MemorySummary { usable_bytes: usable.total_bytes(), metadata_bytes, capped_bytes })
}

/// The frame table (after [`init_frames`]).
pub fn frames() -> &'static FrameTable {
    FRAMES.get().expect("the frame table is built during boot")
}

static ZERO_PAGE: Once<Mfn> = Once::new();

/// A frame of zeroes, mapped read-only wherever a page must exist but hold nothing (the
/// unused part of each CPU's GDT and LDT areas).
pub fn zero_page() -> Mfn {
    *ZERO_PAGE.get().expect("allocated with the per-CPU areas")
}

/// Backs every CPU's area with fresh frames; its guest-GDT and LDT pages map the zero page.
pub fn back_percpu_areas(areas: &[PerCpuArea]) -> Result<(), MemoryError> {
    let zero = frames().alloc(Owner::Hypervisor).map_err(MemoryError::Frames)?;
    zero_frame(zero);
    ZERO_PAGE.call_once(|| zero);
    for area in areas {
        for page in 0..crate::arch::gdt::GUEST_GDT_MAX_FRAMES as u64 {
            paging::map(area.gdt.start + page * PAGE_SIZE, zero.addr().0, MapKind::ReadOnly).map_err(MemoryError::Map)?;
        }
        for page in 0..crate::arch::gdt::LDT_MAX_FRAMES as u64 {
            paging::map(area.ldt.start + page * PAGE_SIZE, zero.addr().0, MapKind::ReadOnly).map_err(MemoryError::Map)?;
        }
        for page in area.backed_pages() {
            let mfn = frames().alloc(Owner::Hypervisor).map_err(MemoryError::Frames)?;
            zero_frame(mfn);
            paging::map(page, mfn.addr().0, MapKind::Data).map_err(MemoryError::Map)?;
        }
    }
    Ok(())
}

/// Records how much of each region is in use, for the layout table and summary.
pub fn record_usage(layout: &mut WindowLayout, firmware_peak: u64, cpus_online: usize) {
    let per_cpu_backed = layout::KERNEL_STACK_BYTES + 3 * layout::IST_STACK_BYTES + 2 * PAGE_SIZE;
    let _ = layout.set_used(Region::Heap, heap_mapped_bytes());
    let _ = layout.set_used(Region::Firmware, firmware_peak);
    let _ = layout.set_used(Region::Mmio, crate::platform::mmio_used());
    let _ = layout.set_used(Region::PerCpu, cpus_online as u64 * per_cpu_backed);
}

/// Free memory in bytes.
pub fn free_bytes() -> u64 {
    FRAMES.get().map_or(0, |t| t.free_count() * PAGE_SIZE)
}

/// Heap room kept for the hypervisor's own allocations, which cannot fail gracefully (an
/// allocation the heap refuses stops the machine): allocations a guest or domain 0 asks
/// for are refused first, with `ENOMEM` (see [`heap_has_room_for`]).
const HEAP_RESERVE_BYTES: u64 = 512 << 10;

/// Heap bytes domains may use in all: the reservation less what the hypervisor keeps for
/// itself and `last_domain_bytes`, the room the last domain must find (for capacity
/// planning).
pub fn heap_for_domains_bytes(last_domain_bytes: u64) -> u64 {
    HEAP.stats().map_or(0, |s| (s.reserved as u64).saturating_sub(HEAP_RESERVE_BYTES + last_domain_bytes))
}

/// Whether the heap can take `bytes` more for a guest's (or domain 0's) request and still
/// keep [`HEAP_RESERVE_BYTES`] of its reservation for the hypervisor's own use.
pub fn heap_has_room_for(bytes: u64) -> bool {
    HEAP.stats().is_some_and(|s| (s.reserved as u64).saturating_sub(s.in_use as u64) >= bytes + HEAP_RESERVE_BYTES)
}

/// Whether `count` frames may go to guests: frames enough must stay free for the heap to
/// grow to its whole reservation, or a hypervisor allocation would fail for lack of memory
/// once guests had taken everything (the early pool covers the first part of it).
pub fn frames_for_guests(count: u64) -> bool {
    let Some(stats) = HEAP.stats() else { return true };
    let heap_may_need = (stats.reserved.saturating_sub(stats.mapped) as u64 / PAGE_SIZE).saturating_sub(EARLY_POOL_FRAMES as u64);
    free_bytes() / PAGE_SIZE >= count + heap_may_need
}

/// Heap memory in use.
pub fn heap_used_bytes() -> u64 {
    HEAP.stats().map_or(0, |s| s.in_use as u64)
}

/// Heap memory mapped (the heap region's "used" part).
pub fn heap_mapped_bytes() -> u64 {
    HEAP.stats().map_or(0, |s| s.mapped as u64)
}

/// Copies machine memory at `maddr` into `buf` through read-only temporary mappings, a page
/// at a time (boot modules, which are never mapped otherwise). `false` when no mapping slot
/// was free.
pub fn read_machine(maddr: u64, buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let at = maddr + done as u64;
        let offset = (at % PAGE_SIZE) as usize;
        let len = (buf.len() - done).min(PAGE_SIZE as usize - offset);
        let Some(mut map) = FrameMapping::read_only(Mfn(at / PAGE_SIZE)) else { return false };
        buf[done..done + len].copy_from_slice(&map.bytes_ref()[offset..offset + len]);
        done += len;
    }
    true
}

/// Self-check: allocates `count` frames, writes and reads each through a temporary mapping,
/// frees them, and checks that the free count came back.
pub fn check_frames_round_trip(count: usize) -> (bool, String) {
    let before = frames().stats();
    let mut mfns = Vec::with_capacity(count);
    if frames().alloc_many(Owner::Hypervisor, count, &mut mfns).is_err() {
        return (false, alloc::format!("could not allocate {count} frames"));
    }
    let mut intact = true;
    for &mfn in &mfns {
        let Some(mut map) = FrameMapping::new(mfn) else { intact = false; break };
        let pattern = (mfn.0 as u8) ^ 0xa5;
        map.bytes().fill(pattern);
        intact &= map.bytes().iter().all(|&b| b == pattern);
        map.bytes().fill(0);
    }
    let freed = mfns.iter().all(|&mfn| frames().free(mfn).is_ok());
    let after = frames().stats();
    let ok = intact && freed && after == before;
    (ok, alloc::format!("{count} frames written through temporary mappings and freed; free {} -> {}", before.free, after.free))
}

/// Self-check: the heap grows past its early pool, keeps only its last block (on frames
/// from the frame table), and [`compact_heap`] moves that block onto pool frames with its
/// contents intact, so that free memory reads as before. Skipped (and passed) when the heap
/// or free memory cannot grow that far.
pub fn check_heap_rebase() -> (bool, String) {
    const BLOCK: usize = 64 << 10;
    let count = (EARLY_HEAP_POOL as usize).div_ceil(BLOCK) + 4;
    let room = HEAP_RANGE.get().map_or(0, |r| (r.end - r.start) as usize);
    if room < (count + 8) * BLOCK || free_bytes() < 4 * (count * BLOCK) as u64 {
        return (true, alloc::format!("skipped: the heap ({} KiB) or free memory is too small", room >> 10));
    }
    compact_heap();
    let before = free_bytes();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..count {
        let mut block = Vec::new();
        if block.try_reserve_exact(BLOCK).is_err() || blocks.try_reserve(1).is_err() {
            return (false, alloc::format!("the heap could not grow to {} blocks of {} KiB", i + 1, BLOCK >> 10));
        }
        block.resize(BLOCK, i as u8);
        blocks.push(block);
    }
    let kept = blocks.pop().unwrap_or_default();
    drop(blocks);
    trim_heap();
    let pinned = before.saturating_sub(free_bytes()) / PAGE_SIZE;
    let (_, moved) = compact_heap();
    let after = free_bytes();
    let intact = kept.iter().all(|&b| b as usize == count - 1);
    drop(kept);
    compact_heap();
    let detail = alloc::format!(
        "{pinned} frame-table frames held by a {} KiB block after the peak, {moved} pages moved, free {} -> {} KiB, contents {}",
        BLOCK >> 10,
        before >> 10,
        after >> 10,
        if intact { "intact" } else { "CORRUPTED" }
    );
    (pinned > 0 && after == before && intact, detail)
}

/// Self-check: a burst of heap allocations is returned in full.
pub fn check_heap_round_trip() -> (bool, String) {
    let before = heap_used_bytes();
    {
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| alloc::vec![i as u8; 16 + i * 24]).collect();
        if blocks.iter().enumerate().any(|(i, b)| b.iter().any(|&x| x != i as u8)) {
            return (false, String::from("heap block contents corrupted"));
        }
    }
    let after = heap_used_bytes();
    (after == before, alloc::format!("in use {before} -> {after} bytes after 256 blocks"))
}

/// Fills a frame with zeroes through a temporary mapping.
pub fn zero_frame(mfn: Mfn) {
    let mut map = FrameMapping::new(mfn).expect("a temporary mapping slot is free");
    map.bytes().fill(0);
}
