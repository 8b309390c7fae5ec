//! The hypervisor window's page tables: one top-level slot, one L3, one L2 and 32 statically
//! allocated L1 tables that describe the whole 64 MiB window at 4 KiB granularity; and the
//! default window-L3 that guest L4s left without a slot 511 get ([`default_window_l4_entry`]).
//!
//! Mapping anything in the window is writing one L1 entry; no table is ever allocated at run
//! time. The L2 ([`window_l2_phys`]) is what every guest address space will share, so a
//! window mapping made here is visible in all of them at once. All window pages are
//! supervisor-only and global. Callers outside `arch` use [`map`], [`unmap`] and
//! [`translate`]; this module never decides *what* goes where (that is `mm::layout`).

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::registers::control::{Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::structures::paging::PhysFrame;
use pvmm::entry::{Pte, PteFlags, ADDRESS_MASK};
use x86_64::{PhysAddr, VirtAddr};

use super::view::AnyBitPattern;

/// First address of the window (top 64 MiB).
pub const WINDOW_BASE: u64 = 0xFFFF_FFFF_FC00_0000;
/// Size of the window in bytes.
pub const WINDOW_SIZE: u64 = 64 << 20;
const PAGE_SIZE: u64 = 4096;
const ENTRIES: usize = 512;
const WINDOW_L1_TABLES: usize = (WINDOW_SIZE >> 21) as usize;
/// L2 index of the window's first 2 MiB.
const WINDOW_L2_FIRST: usize = ENTRIES - WINDOW_L1_TABLES;

/// The flags of the window's table entries (L4 slot 511, its L3 and its L2).
const TABLE_FLAGS: PteFlags = PteFlags::PRESENT.union(PteFlags::WRITABLE);

/// What a window page is used for; decides its permission and cache bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Hypervisor code: read and execute.
    Text,
    /// Read-only data.
    ReadOnly,
    /// Ordinary read-write data, never executable.
    Data,
    /// Device registers: read-write, uncached.
    Mmio,
}

/// Why a window mapping request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The virtual address is outside the window or not page aligned.
    BadVirtual(u64),
    /// The physical address is not page aligned or beyond the physical address width.
    BadPhysical(u64),
    /// The page is already mapped (to this physical address).
    AlreadyMapped(u64),
}

#[repr(C, align(4096))]
struct Table([AtomicU64; ENTRIES]);

impl Table {
    const fn new() -> Self {
        Table([const { AtomicU64::new(0) }; ENTRIES])
    }

    fn phys(&self) -> u64 {
        image_phys(self as *const Table as u64)
    }
}

/// The hypervisor's own top-level table (its "idle" address space).
static PML4: Table = Table::new();
/// L3 for top-level slot 511.
static L3: Table = Table::new();
/// L2 for the last GiB; entries 480..511 are the window.
static L2: Table = Table::new();
/// The default window-L3 of guest address spaces: entry 511 the window's L2, every other
/// entry empty, forever. Validation installs it in slot 511 of a guest L4 that leaves the
/// slot empty ([`default_window_l4_entry`]); no domain owns it, so no guest can name it.
static DEFAULT_WINDOW_L3: Table = Table::new();
/// The window's L1 tables, one per 2 MiB.
static L1: [Table; WINDOW_L1_TABLES] = [const { Table::new() }; WINDOW_L1_TABLES];

/// A software bit (the lowest of the entry's available bits, which the processor ignores)
/// on window pages that references handed out by the arch layer depend on: `tempmap`'s
/// frame mappings, [`map_for_good`]'s regions, `fwmap`'s firmware pages. [`unmap`] and
/// [`protect`] refuse such pages; only their owner in `arch` unmaps them
/// ([`unmap_pinned`]), so that no safe call elsewhere can pull a page from under a view.
const PINNED: u64 = 1 << 9;
const _: () = assert!(PteFlags::AVAILABLE_LOW.bits() & PINNED != 0);

/// NX is used only when the CPU offers it (EFER.NXE was set by the boot stub).
static NX_MASK: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __image_phys_start: u8;
}

/// Physical address of a location inside the loaded image (window offset + load address).
pub fn image_phys(vaddr: u64) -> u64 {
    let load = &raw const __image_phys_start as u64;
    vaddr - WINDOW_BASE + load
}

fn flags(kind: MapKind) -> PteFlags {
    let nx = PteFlags::from_bits_retain(NX_MASK.load(Ordering::Relaxed));
    PteFlags::PRESENT
        | PteFlags::GLOBAL
        | match kind {
            MapKind::Text => PteFlags::empty(),
            MapKind::ReadOnly => nx,
            MapKind::Data => PteFlags::WRITABLE | nx,
            MapKind::Mmio => PteFlags::WRITABLE | PteFlags::WRITE_THROUGH | PteFlags::CACHE_DISABLE | nx,
        }
}

fn l1_entry(vaddr: u64) -> Result<&'static AtomicU64, MapError> {
    if vaddr < WINDOW_BASE || !vaddr.is_multiple_of(PAGE_SIZE) {
        return Err(MapError::BadVirtual(vaddr));
    }
    let page = ((vaddr - WINDOW_BASE) / PAGE_SIZE) as usize;
    Ok(&L1[page / ENTRIES].0[page % ENTRIES])
}

/// Builds the window tables, maps the image at 4 KiB granularity with its permissions, keeps
/// the boot stub's identity map (slot 0) until [`drop_identity_map`], and switches to them.
///
/// `sections` lists `(start, end, kind)` window ranges of the image; `nx` says whether the
/// CPU supports no-execute. Runs once, on the boot CPU, before anything else is mapped.
pub fn init(sections: &[(u64, u64, MapKind)], nx: bool, identity_slot: u64) {
    NX_MASK.store(if nx { PteFlags::NO_EXECUTE.bits() } else { 0 }, Ordering::Relaxed);
    for (i, table) in L1.iter().enumerate() {
        L2.0[WINDOW_L2_FIRST + i].store(table.phys() | TABLE_FLAGS.bits(), Ordering::Relaxed);
    }
    L3.0[ENTRIES - 1].store(L2.phys() | TABLE_FLAGS.bits(), Ordering::Relaxed);
    DEFAULT_WINDOW_L3.0[ENTRIES - 1].store(window_l3_entry(), Ordering::Relaxed);
    PML4.0[ENTRIES - 1].store(L3.phys() | TABLE_FLAGS.bits(), Ordering::Relaxed);
    PML4.0[0].store(identity_slot, Ordering::Relaxed);
    for &(start, end, kind) in sections {
        let mut va = start & !(PAGE_SIZE - 1);
        while va < end {
            map(va, image_phys(va), kind).expect("image pages map once");
            va += PAGE_SIZE;
        }
    }
    load_hypervisor_tables();
    // SAFETY: setting CR4.PGE (already on from the boot stub) keeps global pages enabled; it
    // does not change any mapping.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL)) };
}

/// Loads the hypervisor's own top-level table on this CPU.
pub fn load_hypervisor_tables() {
    let frame = PhysFrame::containing_address(PhysAddr::new(PML4.phys()));
    // SAFETY: the hypervisor tables map the whole image and every window mapping, which is
    // all the hypervisor touches after boot; the stack and code in use live in the window.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

/// Loads a guest's top-level table (validated by the caller: validation gives every L4 a
/// window-L3 in slot 511, the guest's or the default one, whose entry 511 is the window's
/// L2).
pub fn load_guest_tables(l4_phys: u64) {
    let frame = PhysFrame::containing_address(PhysAddr::new(l4_phys));
    // SAFETY: the caller passes a validated guest L4, which maps the whole window (code,
    // stacks, per-CPU data) exactly as the hypervisor's own tables do.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

/// Physical address of the hypervisor's top-level table (for the AP trampoline).
pub fn hypervisor_pml4_phys() -> u64 {
    PML4.phys()
}

/// Physical address of the window's L2, which every guest address space shares.
pub fn window_l2_phys() -> u64 {
    L2.phys()
}

/// The L3 entry that puts the window in a guest address space, in slot 511 of its window-L3:
/// the window's L2, present and writable, supervisor-only (the guest kernel runs in ring 3
/// and cannot reach it).
pub fn window_l3_entry() -> u64 {
    window_l2_phys() | TABLE_FLAGS.bits()
}

/// The L4 entry that names the default window-L3 (present, writable, user: the stored form
/// of a guest's table entries; the window below it is supervisor-only), for slot 511 of a
/// guest L4 that leaves the slot to the hypervisor.
pub fn default_window_l4_entry() -> u64 {
    DEFAULT_WINDOW_L3.phys() | (TABLE_FLAGS | PteFlags::USER | PteFlags::ACCESSED).bits()
}

/// Removes the boot-time identity map. The caller flushes TLBs on every CPU.
pub fn drop_identity_map() {
    PML4.0[0].store(0, Ordering::SeqCst);
    flush_all_local();
}

/// Whether the boot-time identity map is still installed.
pub fn identity_map_present() -> bool {
    PML4.0[0].load(Ordering::Acquire) != 0
}

/// Maps one window page at `vaddr` to `phys`.
pub fn map(vaddr: u64, phys: u64, kind: MapKind) -> Result<(), MapError> {
    map_entry(vaddr, phys, flags(kind).bits())
}

/// [`map`], pinned: only [`unmap_pinned`] removes it.
pub(super) fn map_pinned(vaddr: u64, phys: u64, kind: MapKind) -> Result<(), MapError> {
    map_entry(vaddr, phys, flags(kind).bits() | PINNED)
}

fn map_entry(vaddr: u64, phys: u64, bits: u64) -> Result<(), MapError> {
    if !phys.is_multiple_of(PAGE_SIZE) || phys & !ADDRESS_MASK != 0 {
        return Err(MapError::BadPhysical(phys));
    }
    let entry = l1_entry(vaddr)?;
    entry
        .compare_exchange(0, phys | bits, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| ())
        .map_err(|_| MapError::AlreadyMapped(vaddr))
}

/// Maps `pages` frames from `phys` at window address `va` (`Data`) for the rest of the
/// run and returns the memory as `count` values of `T` (at most what the pages hold):
/// for a region whose only mapper is the caller, never unmapped (the frame metadata).
/// Every page must have been unmapped: no reference into the range can exist yet.
pub fn map_for_good<T: AnyBitPattern>(va: u64, phys: u64, pages: u64, count: usize) -> Result<&'static mut [T], MapError> {
    assert!(align_of::<T>() as u64 <= PAGE_SIZE && (count * size_of::<T>()) as u64 <= pages * PAGE_SIZE, "{count} values in {pages} pages");
    for page in 0..pages {
        map_pinned(va + page * PAGE_SIZE, phys + page * PAGE_SIZE, MapKind::Data)?;
    }
    // SAFETY: `map_pinned` refused any page that was mapped, so every page of the range
    // was unmapped until now and no reference into it exists; now they are mapped
    // writable, page aligned, and pinned: nothing unmaps them for the rest of the run (no
    // `unmap_pinned` of them); the values fit (checked) and any bits are a valid `T`.
    Ok(unsafe { core::slice::from_raw_parts_mut(va as *mut T, count) })
}

/// Unmaps one window page and invalidates it on this CPU; returns the physical address it
/// mapped. Other CPUs that may hold the translation must be flushed by the caller. A
/// pinned page is left as it is (`None`).
pub fn unmap(vaddr: u64) -> Option<u64> {
    unmap_entry(vaddr, false)
}

/// [`unmap`] of a pinned page (its owner's, in `arch`); an unpinned one is left (`None`).
pub(super) fn unmap_pinned(vaddr: u64) -> Option<u64> {
    unmap_entry(vaddr, true)
}

fn unmap_entry(vaddr: u64, pinned: bool) -> Option<u64> {
    let entry = l1_entry(vaddr).ok()?;
    let mut old = entry.load(Ordering::Acquire);
    loop {
        if (old & PINNED != 0) != pinned {
            return None;
        }
        match entry.compare_exchange_weak(old, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => old = now,
        }
    }
    x86_64::instructions::tlb::flush(VirtAddr::new(vaddr));
    Pte(old).is_present().then_some(old & ADDRESS_MASK)
}

/// Gives the mapped window page at `vaddr` the permissions of `kind`, keeping its frame,
/// and invalidates it on this CPU (the caller flushes other CPUs that may hold it).
pub fn protect(vaddr: u64, kind: MapKind) -> Result<(), MapError> {
    let entry = l1_entry(vaddr)?;
    let old = entry.load(Ordering::Acquire);
    if !Pte(old).is_present() || old & PINNED != 0 {
        return Err(MapError::BadVirtual(vaddr));
    }
    entry.store((old & ADDRESS_MASK) | flags(kind).bits(), Ordering::Release);
    x86_64::instructions::tlb::flush(VirtAddr::new(vaddr));
    Ok(())
}

/// How a mapped window page may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub writable: bool,
    pub executable: bool,
}

/// The NX bit when the CPU offers it (EFER.NXE set), else 0: for entries built elsewhere
/// (the M2P table's).
pub fn no_execute_bit() -> u64 {
    NX_MASK.load(Ordering::Relaxed)
}

/// Whether the window page at `vaddr` is mapped with caching disabled (a device page).
pub fn is_uncached(vaddr: u64) -> bool {
    l1_entry(vaddr & !(PAGE_SIZE - 1))
        .is_ok_and(|entry| Pte(entry.load(Ordering::Acquire)).flags().contains(PteFlags::PRESENT | PteFlags::CACHE_DISABLE))
}

/// The access a window page allows, as its L1 entry says (every upper level allows all),
/// if it is mapped. Pages are never executable when the CPU has no NX.
pub fn access(vaddr: u64) -> Option<Access> {
    let entry = l1_entry(vaddr & !(PAGE_SIZE - 1)).ok()?.load(Ordering::Acquire);
    let nx = NX_MASK.load(Ordering::Relaxed);
    let pte = Pte(entry);
    pte.is_present().then_some(Access { writable: pte.is_writable(), executable: nx == 0 || entry & nx == 0 })
}

/// The physical address a window page maps, if any.
pub fn translate(vaddr: u64) -> Option<u64> {
    let entry = l1_entry(vaddr & !(PAGE_SIZE - 1)).ok()?.load(Ordering::Acquire);
    Pte(entry).is_present().then_some((entry & ADDRESS_MASK) | (vaddr & (PAGE_SIZE - 1)))
}

/// Flushes this CPU's non-global TLB entries (every guest translation: guest entries are
/// never global) by reloading CR3; the window's global entries stay.
pub fn flush_guest_local() {
    let (frame, flags) = Cr3::read();
    // SAFETY: reloading the table CR3 already holds changes no mapping.
    unsafe { Cr3::write(frame, flags) };
}

/// Flushes every TLB entry on this CPU, global ones included.
pub fn flush_all_local() {
    // SAFETY: toggling CR4.PGE flushes the whole TLB, global entries included, and changes
    // no mapping.
    unsafe {
        Cr4::update(|f| f.remove(Cr4Flags::PAGE_GLOBAL));
        Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL));
    }
}
