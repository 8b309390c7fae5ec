//! The read-only machine-to-physical (M2P) table's geometry: how much table a machine of
//! so many frames needs, where a frame's entry lies, the entries of the hypervisor-owned
//! tables that map it at Xen's address in every guest address space, and the answers of
//! `XENMEM_machphys_mapping` and `XENMEM_machphys_mfn_list`.
//!
//! The table holds one 8-byte entry per machine frame, indexed by frame number: the
//! guest frame (pfn) its owner gave it, or [`INVALID_ENTRY`]. As Xen's (`paging_init`), it
//! is made of 2 MiB chunks of contiguous, aligned frames (each chunk holds the entries of
//! 2^18 frames, 1 GiB of RAM) and mapped read-only and user-accessible at
//! `MACH2PHYS_VIRT_START` (L4 slot 256, [`crate::policy::M2P_L4_SLOT`]) by one L3 and as
//! many L2s as it needs, whose L2 entries are 2 MiB pages. Those tables and chunks are the
//! hypervisor's: no guest frame, never validated, shared by every guest (the L4 entry is
//! [`crate::Layout`]'s fixed entry for slot 256). Past the last chunk nothing is mapped,
//! so a guest reading the entry of a frame beyond the table takes a page fault, as in Xen.
//!
//! The hypervisor's `m2p` module allocates the chunks and tables and keeps the entries
//! current; this module is arithmetic only: it never reads or writes a table or an entry.

use abi::arch_x86::{MACH2PHYS_NR_ENTRIES, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};
use abi::memory::XenMachphysMapping;
use mm::addr::{Mfn, PAGE_SIZE};

use crate::entry::{Pte, PteFlags, ENTRIES};

/// The entry of a frame no domain has given a guest frame number (Xen's
/// `INVALID_M2P_ENTRY`): every entry at boot, and every frame's once it leaves a domain.
pub const INVALID_ENTRY: u64 = u64::MAX;
/// Bytes per entry.
pub const ENTRY_BYTES: u64 = 8;
/// Entries in one 4 KiB frame of the table.
pub const ENTRIES_PER_FRAME: u64 = PAGE_SIZE / ENTRY_BYTES;
/// A chunk is 2^9 frames (2 MiB), mapped by one L2 entry.
pub const CHUNK_ORDER: u32 = 9;
/// Frames per chunk.
pub const CHUNK_FRAMES: u64 = 1 << CHUNK_ORDER;
/// Entries per chunk: the machine frames (1 GiB of RAM) one chunk describes.
pub const ENTRIES_PER_CHUNK: u64 = CHUNK_FRAMES * ENTRIES_PER_FRAME;
/// Chunks one L2 table maps (1 GiB of table).
pub const CHUNKS_PER_L2: u64 = ENTRIES as u64;
/// Chunks the M2P window holds (256 GiB of table, an L3's first 256 entries).
pub const MAX_CHUNKS: u64 = MACH2PHYS_NR_ENTRIES / ENTRIES_PER_CHUNK;
const _: () = assert!(ENTRIES_PER_CHUNK == 1 << 18 && MAX_CHUNKS == 1 << 17);
const _: () = assert!(MAX_CHUNKS / CHUNKS_PER_L2 <= ENTRIES as u64);

/// Where the entry of one machine frame lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The chunk (0 for frames 0 to 2^18 - 1).
    pub chunk: u64,
    /// The frame within the chunk (0..512).
    pub frame: u64,
    /// The byte offset within that frame (a multiple of 8).
    pub offset: usize,
}

/// The size of the table for a machine of a given number of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    chunks: u64,
}

impl Geometry {
    /// The table for machine frames `0..frames` (Xen's `max_page`: one past the highest
    /// frame of RAM): the entries rounded up to whole chunks. `None` for no frame at all,
    /// or for more than the M2P window holds (2^35 frames: 128 TiB).
    pub const fn for_frames(frames: u64) -> Option<Geometry> {
        if frames == 0 || frames > MACH2PHYS_NR_ENTRIES {
            return None;
        }
        Some(Geometry {
            chunks: frames.div_ceil(ENTRIES_PER_CHUNK),
        })
    }

    /// Chunks in the table.
    pub const fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Machine frames with an entry: `0..entries()` (whole chunks, so at least the frames
    /// asked for).
    pub const fn entries(&self) -> u64 {
        self.chunks * ENTRIES_PER_CHUNK
    }

    /// Bytes of table (2 MiB per chunk).
    pub const fn bytes(&self) -> u64 {
        self.chunks * CHUNK_FRAMES * PAGE_SIZE
    }

    /// L2 tables needed to map the chunks (each maps [`CHUNKS_PER_L2`]); the one L3 names
    /// them in its first entries.
    pub const fn l2_tables(&self) -> u64 {
        self.chunks.div_ceil(CHUNKS_PER_L2)
    }

    /// Where chunk `chunk` is mapped: (L3 index, L2 index).
    pub const fn chunk_position(chunk: u64) -> (usize, usize) {
        (
            (chunk / CHUNKS_PER_L2) as usize,
            (chunk % CHUNKS_PER_L2) as usize,
        )
    }

    /// Where `mfn`'s entry lies; `None` for a frame beyond the table.
    pub const fn slot(&self, mfn: Mfn) -> Option<Slot> {
        if mfn.0 >= self.entries() {
            return None;
        }
        Some(Slot {
            chunk: mfn.0 / ENTRIES_PER_CHUNK,
            frame: (mfn.0 % ENTRIES_PER_CHUNK) / ENTRIES_PER_FRAME,
            offset: ((mfn.0 % ENTRIES_PER_FRAME) * ENTRY_BYTES) as usize,
        })
    }

    /// The guest virtual address of `mfn`'s entry (mapped only for frames with a slot).
    pub const fn entry_address(mfn: Mfn) -> Option<u64> {
        if mfn.0 >= MACH2PHYS_NR_ENTRIES {
            return None;
        }
        Some(MACH2PHYS_VIRT_START + mfn.0 * ENTRY_BYTES)
    }
}

/// The entries of the hypervisor tables that map the table: read-only, user-accessible
/// (the guest kernel runs at CPL 3), never global (each guest address space holds its own
/// translations), accessed (and dirty) already so the processor never writes them, and
/// with `no_execute` (`NO_EXECUTE`, or 0 where the processor has no NX) at every level.
pub mod entries {
    use super::*;

    fn table_flags(no_execute: u64) -> PteFlags {
        PteFlags::PRESENT
            | PteFlags::USER
            | PteFlags::ACCESSED
            | (PteFlags::from_bits_retain(no_execute) & PteFlags::NO_EXECUTE)
    }

    /// L4 slot 256: the M2P L3.
    pub fn l4(l3: Mfn, no_execute: u64) -> u64 {
        Pte::new(l3, table_flags(no_execute)).raw()
    }

    /// An entry of the M2P L3: one of its L2s.
    pub fn l3(l2: Mfn, no_execute: u64) -> u64 {
        Pte::new(l2, table_flags(no_execute)).raw()
    }

    /// An entry of an M2P L2: one chunk, as a 2 MiB page.
    pub fn l2(chunk: Mfn, no_execute: u64) -> u64 {
        Pte::new(chunk, table_flags(no_execute) | PteFlags::DIRTY | PteFlags::HUGE_PAGE).raw()
    }
}

/// `XENMEM_machphys_mapping`'s answer, as Xen's: the whole M2P window, and the highest
/// frame a guest may look up in it (for the hardware domain the machine's last frame,
/// `max_page - 1`; for the others the window's last entry). Entries of frames past the
/// table are not mapped: reading one faults.
pub const fn machphys_mapping(max_page: u64, hardware_domain: bool) -> XenMachphysMapping {
    XenMachphysMapping {
        v_start: MACH2PHYS_VIRT_START,
        v_end: MACH2PHYS_VIRT_END,
        max_mfn: if hardware_domain {
            max_page.saturating_sub(1)
        } else {
            MACH2PHYS_NR_ENTRIES - 1
        },
    }
}

/// How many extents `XENMEM_machphys_mfn_list` reports when asked for at most
/// `max_extents`: one per chunk (the first frame of each 2 MiB chunk), as Xen's, which
/// stops at the chunk holding `max_page`'s entry.
pub const fn mfn_list_extents(geometry: &Geometry, max_extents: u32) -> u64 {
    let chunks = geometry.chunks();
    if (max_extents as u64) < chunks {
        max_extents as u64
    } else {
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::PteFlags;
    use crate::policy::M2P_L4_SLOT;
    use crate::Level;

    #[test]
    fn a_chunk_describes_a_gibibyte() {
        // 256 MiB of RAM: 65536 frames, 512 KiB of entries, one 2 MiB chunk.
        let small = Geometry::for_frames(65536).unwrap();
        assert_eq!(small.chunks(), 1);
        assert_eq!(small.bytes(), 2 << 20);
        assert_eq!(small.entries(), 1 << 18);
        assert_eq!(small.l2_tables(), 1);
        // Exactly 1 GiB, and one frame more.
        assert_eq!(Geometry::for_frames(1 << 18).unwrap().chunks(), 1);
        assert_eq!(Geometry::for_frames((1 << 18) + 1).unwrap().chunks(), 2);
        // 16 GiB: 32 MiB of table. 512 GiB: the first L2 is full; one frame more needs a
        // second.
        assert_eq!(Geometry::for_frames(4 << 20).unwrap().bytes(), 32 << 20);
        assert_eq!(Geometry::for_frames(1 << 27).unwrap().l2_tables(), 1);
        assert_eq!(Geometry::for_frames((1 << 27) + 1).unwrap().l2_tables(), 2);
        assert_eq!(Geometry::for_frames(0), None);
        let full = Geometry::for_frames(MACH2PHYS_NR_ENTRIES).unwrap();
        assert_eq!(full.chunks(), MAX_CHUNKS);
        assert_eq!(full.bytes(), MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START);
        assert_eq!(Geometry::for_frames(MACH2PHYS_NR_ENTRIES + 1), None);
    }

    #[test]
    fn slots_follow_the_virtual_layout() {
        let geometry = Geometry::for_frames(3 << 18).unwrap();
        for mfn in [
            0,
            1,
            511,
            512,
            513,
            (1 << 18) - 1,
            1 << 18,
            0x5_4321,
            (3 << 18) - 1,
        ] {
            let slot = geometry.slot(Mfn(mfn)).unwrap();
            let va = Geometry::entry_address(Mfn(mfn)).unwrap();
            let offset = va - MACH2PHYS_VIRT_START;
            // The chunk is the 2 MiB page, the frame the 4 KiB page in it, the offset the
            // byte in that page.
            assert_eq!(slot.chunk, offset >> 21, "mfn {mfn:#x}");
            assert_eq!(slot.frame, (offset >> 12) & 511, "mfn {mfn:#x}");
            assert_eq!(slot.offset as u64, offset & 0xfff, "mfn {mfn:#x}");
            let (l3, l2) = Geometry::chunk_position(slot.chunk);
            assert_eq!(l3, Level::L3.index_of(va), "mfn {mfn:#x}");
            assert_eq!(l2, Level::L2.index_of(va), "mfn {mfn:#x}");
        }
        assert_eq!(geometry.slot(Mfn(3 << 18)), None);
        assert_eq!(geometry.slot(Mfn(u64::MAX)), None);
        assert_eq!(Level::L4.index_of(MACH2PHYS_VIRT_START), M2P_L4_SLOT);
        assert_eq!(
            Geometry::entry_address(Mfn(MACH2PHYS_NR_ENTRIES - 1)),
            Some(MACH2PHYS_VIRT_END - 8)
        );
        assert_eq!(Geometry::entry_address(Mfn(MACH2PHYS_NR_ENTRIES)), None);
    }

    #[test]
    fn mapping_entries_are_read_only_user_and_never_global() {
        for nx in [0, PteFlags::NO_EXECUTE.bits()] {
            for entry in [
                entries::l4(Mfn(0x1234), nx),
                entries::l3(Mfn(0x1234), nx),
                entries::l2(Mfn(0x1200), nx),
            ] {
                let pte = Pte(entry);
                assert!(pte.is_present());
                assert_eq!(entry & PteFlags::WRITABLE.bits(), 0);
                assert_ne!(entry & PteFlags::USER.bits(), 0);
                assert_eq!(entry & PteFlags::GLOBAL.bits(), 0);
                assert_ne!(entry & PteFlags::ACCESSED.bits(), 0);
                assert_eq!(entry & PteFlags::NO_EXECUTE.bits(), nx);
            }
            assert_eq!(Pte(entries::l2(Mfn(0x1200), nx)).mfn(), Mfn(0x1200));
            assert_ne!(entries::l2(Mfn(0x1200), nx) & PteFlags::HUGE_PAGE.bits(), 0);
            assert_eq!(entries::l3(Mfn(0x1200), nx) & PteFlags::HUGE_PAGE.bits(), 0);
            assert_eq!(entries::l4(Mfn(0x1200), nx) & PteFlags::HUGE_PAGE.bits(), 0);
        }
        // A stray NX request without the bit changes nothing but NX.
        assert_eq!(
            entries::l4(Mfn(1), u64::MAX),
            entries::l4(Mfn(1), PteFlags::NO_EXECUTE.bits())
        );
    }

    #[test]
    fn queries_answer_as_xen() {
        let guest = machphys_mapping(65536, false);
        assert_eq!(guest.v_start, 0xFFFF_8000_0000_0000);
        assert_eq!(guest.v_end, 0xFFFF_8040_0000_0000);
        assert_eq!(guest.max_mfn, (1 << 35) - 1);
        assert_eq!(machphys_mapping(65536, true).max_mfn, 65535);
        assert_eq!(machphys_mapping(0, true).max_mfn, 0);
        let geometry = Geometry::for_frames(5 << 18).unwrap();
        assert_eq!(mfn_list_extents(&geometry, 0), 0);
        assert_eq!(mfn_list_extents(&geometry, 3), 3);
        assert_eq!(mfn_list_extents(&geometry, u32::MAX), 5);
    }
}
