//! The read-only machine-to-physical (M2P) table at Xen's address, `0xFFFF_8000_0000_0000`
//! (L4 slot 256) in every guest address space: one 8-byte entry per machine frame, the
//! guest frame its owner gave it or `INVALID_ENTRY` (~0). Its geometry is pure
//! (`pvmm::m2p`); this module owns the table.
//!
//! Built once at boot ([`init`], after the frame table, before any domain): 2 MiB chunks
//! of contiguous frames from the frame table (the hypervisor's: no guest can map them),
//! as many as the machine's frames need (2 MiB per GiB of RAM), filled with ~0, and one L3
//! and the L2s under it, also hypervisor frames, that map the chunks read-only and
//! user-accessible as 2 MiB pages. Every validated L4 holds [`l4_entry`] in slot 256
//! (`pvmm::Layout`'s fixed entry) and so does every L4 the builder makes; those tables are
//! never written again. None of it is in the window: the hypervisor reads and writes
//! entries through temporary mappings, one 8-byte atomic store each, so a guest reading
//! concurrently never sees half an entry.
//!
//! Kept current, as Xen does: the builder gives every frame of a new domain its pfn
//! (`pv::build`), `MMU_MACHPHYS_UPDATE` sets the entry of a frame the caller owns
//! (`pv::mmu`), `populate_physmap` and `exchange` set the new frames' entries
//! (`pv::memop`), and every frame that leaves a domain (given back, exchanged away,
//! freed at its domain's death) is cleared to ~0 before it is freed ([`Writer::clear`]),
//! so that every free frame's entry is ~0 and no domain learns another's layout. Callers
//! serialize the writes to one domain's frames (its page-table lock, or its death).
//!
//! What it must never do: map the table writable where a guest can reach it, hand a guest
//! one of its frames, or write an entry of a frame it was not asked about.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use log::info;
use mm::addr::{Mfn, PAGE_SIZE};
use mm::frame::Owner;
use pvmm::m2p::{self as geometry, entries, Geometry, CHUNK_FRAMES, CHUNK_ORDER, INVALID_ENTRY};
use pvmm::Pte;
use spin::Once;

use crate::arch::paging;
use crate::memory::{self, FrameMapping};

/// The table, once built.
struct Table {
    geometry: Geometry,
    /// The first frame of each 2 MiB chunk.
    chunks: Vec<Mfn>,
    /// The L3 under L4 slot 256, and its L2s.
    l3: Mfn,
    l2s: Vec<Mfn>,
    /// What every guest L4 holds in slot 256.
    l4_entry: u64,
}

static TABLE: Once<Table> = Once::new();

/// Why the table could not be built.
#[derive(Debug)]
pub enum M2pError {
    /// The frame table covers no frame, or more than the M2P window holds.
    Size(u64),
    /// No free run of 2 MiB, or no frame for a table.
    Frames(mm::frame::FrameError),
    /// The heap could not hold the list of chunks.
    Heap,
}

impl fmt::Display for M2pError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size(frames) => write!(f, "no table for {frames} frames"),
            Self::Frames(e) => write!(f, "frames: {e:?}"),
            Self::Heap => write!(f, "the heap is full"),
        }
    }
}

/// What was built, for the boot log and the summary.
pub struct M2pSummary {
    pub frames_covered: u64,
    pub table_bytes: u64,
    pub table_frames: u64,
}

/// Builds the table for every frame of the frame table. Runs once, on the boot CPU,
/// before any domain exists.
pub fn init() -> Result<M2pSummary, M2pError> {
    let frames = memory::frames();
    let geometry = Geometry::for_frames(frames.len()).ok_or(M2pError::Size(frames.len()))?;
    let mut chunks = Vec::new();
    let mut l2s = Vec::new();
    chunks.try_reserve_exact(geometry.chunks() as usize).map_err(|_| M2pError::Heap)?;
    l2s.try_reserve_exact(geometry.l2_tables() as usize).map_err(|_| M2pError::Heap)?;
    for _ in 0..geometry.chunks() {
        let chunk = frames.alloc_run(Owner::Hypervisor, CHUNK_ORDER, u64::MAX).map_err(M2pError::Frames)?;
        for frame in 0..CHUNK_FRAMES {
            let mut map = FrameMapping::new(Mfn(chunk.0 + frame)).expect("a temporary mapping slot is free");
            map.bytes().fill(0xff);
        }
        chunks.push(chunk);
    }
    let no_execute = paging::no_execute_bit();
    let l3 = table_frame()?;
    for index in 0..geometry.l2_tables() {
        let l2 = table_frame()?;
        write_entry(l3, index as usize, entries::l3(l2, no_execute));
        l2s.push(l2);
    }
    for (chunk, &base) in chunks.iter().enumerate() {
        let (l3_index, l2_index) = Geometry::chunk_position(chunk as u64);
        write_entry(l2s[l3_index], l2_index, entries::l2(base, no_execute));
    }
    let table = TABLE.call_once(|| Table { geometry, chunks, l3, l2s, l4_entry: entries::l4(l3, no_execute) });
    let summary = M2pSummary {
        frames_covered: table.geometry.entries(),
        table_bytes: table.geometry.bytes(),
        table_frames: table.geometry.chunks() * CHUNK_FRAMES + 1 + table.l2s.len() as u64,
    };
    info!("summary: memory.m2p_kib={}", summary.table_bytes >> 10);
    Ok(summary)
}

/// A zeroed frame for one of the table's L3 and L2s.
fn table_frame() -> Result<Mfn, M2pError> {
    let mfn = memory::frames().alloc(Owner::Hypervisor).map_err(M2pError::Frames)?;
    crate::memory::zero_frame(mfn);
    Ok(mfn)
}

fn write_entry(table: Mfn, index: usize, value: u64) {
    let mut map = FrameMapping::new(table).expect("a temporary mapping slot is free");
    map.bytes()[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
}

/// What every guest L4 holds in slot 256: the table's L3, read-only and user-accessible.
/// `None` before [`init`].
pub fn l4_entry() -> Option<u64> {
    TABLE.get().map(|t| t.l4_entry)
}

/// The table's size, once built.
pub fn geometry() -> Option<Geometry> {
    TABLE.get().map(|t| t.geometry)
}

/// The first frame of each 2 MiB chunk, in order (`XENMEM_machphys_mfn_list`).
pub fn chunks() -> &'static [Mfn] {
    TABLE.get().map_or(&[], |t| t.chunks.as_slice())
}

/// One past the machine's highest frame (Xen's `max_page`, `XENMEM_maximum_ram_page`).
pub fn max_page() -> u64 {
    memory::frames().len()
}

/// Writes and reads entries, keeping the last table frame it touched mapped (a batch
/// mostly touches neighbouring frames). Lives within one hypercall or one step of work on
/// one CPU: its mapping is this CPU's.
pub struct Writer {
    mapped: Option<(Mfn, FrameMapping)>,
}

impl Writer {
    pub const fn new() -> Writer {
        Writer { mapped: None }
    }

    /// Sets `mfn`'s entry to `pfn` (which the guest chose: any value). Nothing for a frame
    /// beyond the table, or before it is built.
    pub fn set(&mut self, mfn: Mfn, pfn: u64) {
        if let Some(entry) = self.entry(mfn) {
            entry.store(pfn, Ordering::Relaxed);
        }
    }

    /// Clears `mfn`'s entry (~0): the frame is leaving its domain.
    pub fn clear(&mut self, mfn: Mfn) {
        self.set(mfn, INVALID_ENTRY);
    }

    /// `mfn`'s entry; `None` for a frame beyond the table.
    pub fn get(&mut self, mfn: Mfn) -> Option<u64> {
        self.entry(mfn).map(|entry| entry.load(Ordering::Relaxed))
    }

    fn entry(&mut self, mfn: Mfn) -> Option<&AtomicU64> {
        let table = TABLE.get()?;
        let slot = table.geometry.slot(mfn)?;
        let frame = Mfn(table.chunks[slot.chunk as usize].0 + slot.frame);
        if self.mapped.as_ref().is_none_or(|(mapped, _)| *mapped != frame) {
            // The old mapping goes first: it frees its slot.
            self.mapped = None;
            self.mapped = Some((frame, FrameMapping::new(frame).expect("a temporary mapping slot is free")));
        }
        let (_, map) = self.mapped.as_ref()?;
        // `slot.offset` is a multiple of 8 inside the frame; the table's frames are the
        // hypervisor's and only ever accessed as atomic words (guests read them).
        Some(map.atomic(slot.offset))
    }
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

/// Self-check: the tables map every chunk read-only and user-accessible where the guest
/// reads it, every entry reads ~0 (no frame belongs to a domain yet), and an entry written
/// reads back (then ~0 again).
pub fn check() -> (bool, alloc::string::String) {
    let Some(table) = TABLE.get() else { return (false, "not built".into()) };
    let read = |frame: Mfn, index: usize| {
        let mut map = FrameMapping::new(frame).expect("a temporary mapping slot is free");
        u64::from_le_bytes(map.bytes()[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
    };
    let mut wrong = Vec::new();
    if Pte(table.l4_entry).mfn() != table.l3 {
        wrong.push(alloc::format!("L4 entry {:#x} does not name the L3 {}", table.l4_entry, table.l3));
    }
    let no_execute = paging::no_execute_bit();
    for (chunk, &base) in table.chunks.iter().enumerate() {
        let (l3_index, l2_index) = Geometry::chunk_position(chunk as u64);
        let l3e = read(table.l3, l3_index);
        let l2e = read(Pte(l3e).mfn(), l2_index);
        if l3e != entries::l3(table.l2s[l3_index], no_execute) || l2e != entries::l2(base, no_execute) {
            wrong.push(alloc::format!("chunk {chunk}: L3 entry {l3e:#x}, L2 entry {l2e:#x}"));
        }
    }
    let mut set = 0u64;
    for (chunk, &base) in table.chunks.iter().enumerate() {
        for frame in 0..CHUNK_FRAMES {
            let mut map = FrameMapping::new(Mfn(base.0 + frame)).expect("a temporary mapping slot is free");
            let valid = map.bytes().chunks_exact(8).filter(|entry| entry.iter().any(|&b| b != 0xff)).count();
            if valid > 0 {
                set += valid as u64;
                if wrong.len() < 4 {
                    wrong.push(alloc::format!("chunk {chunk} frame {frame}: {valid} entries not ~0"));
                }
            }
        }
    }
    let probe = Mfn(max_page() - 1);
    let mut writer = Writer::new();
    let before = writer.get(probe);
    writer.set(probe, 0x1234_5678);
    let written = writer.get(probe);
    writer.clear(probe);
    if (before, written, writer.get(probe)) != (Some(INVALID_ENTRY), Some(0x1234_5678), Some(INVALID_ENTRY)) {
        wrong.push(alloc::format!("entry of {probe}: {before:?} then {written:?}"));
    }
    let detail = alloc::format!(
        "{} chunks of {} KiB for {} frames, L4 slot 256 entry {:#x}, {set} entries set{}{}",
        table.chunks.len(),
        (CHUNK_FRAMES * PAGE_SIZE) >> 10,
        table.geometry.entries(),
        table.l4_entry,
        if wrong.is_empty() { "" } else { ": " },
        wrong.join(", ")
    );
    (wrong.is_empty(), detail)
}

/// `XENMEM_machphys_mapping`'s answer for a domain (see `pvmm::m2p`).
pub fn machphys_mapping(hardware_domain: bool) -> abi::memory::XenMachphysMapping {
    geometry::machphys_mapping(max_page(), hardware_domain)
}
