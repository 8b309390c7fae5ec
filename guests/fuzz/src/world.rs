//! What the fuzzer knows of its own domain, as plain numbers: where its program lives
//! (which frames and addresses it must never let a call damage), its boot page tables and
//! which of their entries are in use, the arena of frames the vCPUs may turn into page
//! tables, descriptor frames or give back, and each vCPU's scratch buffers.
//!
//! The guest binary fills a [`World`] once at start from `start_info` and its own tables;
//! each vCPU keeps its mutable [`Frames`] (its share of the arena, the frames it got from
//! `increase_reservation`, its copy of the boot L4). The generators ([`crate::gen`]) read
//! both. This module only describes: it must never make a call or touch memory.

use core::ops::Range;

use arrayvec::ArrayVec;

use crate::options::MAX_VCPUS;

/// Bytes per page.
pub const PAGE: u64 = 4096;
/// Entries per page table.
pub const ENTRIES: usize = 512;
/// The L4 slot and L3 index of the boot mapping (`VIRT_BASE`), and the hypervisor's L3 index.
pub const BOOT_L4_SLOT: usize = 511;
pub const BOOT_L3_INDEX: usize = 510;
pub const WINDOW_L3_INDEX: usize = 511;
/// Xen's reserved L4 slots (the hypervisor fills slot 256 with the M2P table).
pub const RESERVED_L4: Range<usize> = 256..272;
/// The most L1 tables the boot mapping may use (a reservation of at most 16 MiB).
pub const MAX_BOOT_L1S: usize = 8;
/// The most arena frames a vCPU manages.
pub const MAX_ARENA: usize = 96;
/// The most frames a vCPU keeps from `increase_reservation`.
pub const MAX_EXTRA: usize = 24;

/// The hypervisor's window and its layout, as a guest sees it.
pub const WINDOW: u64 = 0xFFFF_FFFF_FC00_0000;
/// The size of the window (64 MiB).
pub const WINDOW_SIZE: u64 = 64 << 20;
/// The offset of the window's alias inside the 512 GiB of an L4 slot whose L3 a guest
/// installed (validation puts the window's entry in index 511 of every L3).
pub const ALIAS_OFFSET: u64 = 0x7F_FC00_0000;
/// The machine frame of the hypervisor's image (2 MiB): never the guest's.
pub const HYPERVISOR_IMAGE_MFN: u64 = 0x200;

/// The boot page tables by machine frame, and which of their entries the program's mapping
/// uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootTables {
    pub l4: u64,
    /// The L3 under L4 slot 511.
    pub l3: u64,
    /// The L2 under that L3's index 510.
    pub l2: u64,
    /// The L1s under that L2's entries 0, 1, ... (the initial mapping).
    pub l1s: ArrayVec<u64, MAX_BOOT_L1S>,
    /// Boot L4 entry 511 (to copy into an L4 of our own).
    pub l4_entry_511: u64,
}

impl BootTables {
    /// Whether `mfn` is one of them.
    pub fn contains(&self, mfn: u64) -> bool {
        mfn == self.l4 || mfn == self.l3 || mfn == self.l2 || self.l1s.contains(&mfn)
    }
}

/// The fuzzer's domain as the generators see it.
#[derive(Clone, Debug)]
pub struct World<'a> {
    /// The first byte of pfn 0.
    pub virt_base: u64,
    pub nr_pages: u64,
    /// Machine frame of each pfn, as at start of day.
    pub p2m: &'a [u64],
    /// Pfns the vCPUs share out as their arenas; everything below is the program's (image,
    /// P2M list, start info, boot tables, boot stack) and is never changed.
    pub arena: Range<u64>,
    pub tables: BootTables,
    pub shared_info_mfn: u64,
    /// The virtual range of the boot page tables (mapped read-only): L4, L3, L2, then the
    /// L1s, from pfn `tables_pfn` on.
    pub tables_va: Range<u64>,
    pub tables_pfn: u64,
    /// Each vCPU's scratch buffer: mapped read-write, written only by calls on its behalf.
    pub scratch: [Range<u64>; MAX_VCPUS as usize],
    /// Each vCPU's hole: the unmapped page right after its scratch buffer.
    pub hole: [u64; MAX_VCPUS as usize],
    /// The virtual range of the program's code and read-only data: the only part of the
    /// program a call may be given to read from (its writable memory holds pointers and
    /// frame numbers a call could be steered by).
    pub code_va: Range<u64>,
}

impl World<'_> {
    /// The virtual address of `pfn` in the initial mapping.
    pub fn va_of(&self, pfn: u64) -> u64 {
        self.virt_base + pfn * PAGE
    }

    /// The pfns of vCPU `vcpu`'s share of the arena.
    pub fn arena_of(&self, vcpu: usize, vcpus: usize) -> Range<u64> {
        let len = (self.arena.end - self.arena.start) / vcpus.max(1) as u64;
        let len = len.min(MAX_ARENA as u64);
        let start = self.arena.start + len * vcpu as u64;
        start..start + len
    }

    /// The boot L2 entries the initial mapping uses.
    pub fn used_l2(&self) -> Range<usize> {
        0..self.tables.l1s.len()
    }

    /// Whether `mfn` is a frame of the program (mapped writable at start of day, so never
    /// to be mapped writable again elsewhere).
    pub fn is_program_frame(&self, mfn: u64) -> bool {
        self.p2m[..self.arena.start as usize].contains(&mfn) || mfn == self.shared_info_mfn
    }

    /// Whether a write to `[va, va + len)` could land in the program's own memory: its image,
    /// P2M, start info, stacks (everything below the arena but the read-only tables and the
    /// scratch buffers).
    pub fn write_hits_program(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len.max(1));
        let program = self.virt_base..self.va_of(self.arena.start);
        let overlaps = |r: &Range<u64>| va < r.end && end > r.start;
        if !overlaps(&program) {
            return false;
        }
        let inside = |r: &Range<u64>| va >= r.start && end <= r.end;
        let allowed = inside(&self.tables_va)
            || self.scratch.iter().any(inside)
            || self.hole.iter().any(|&h| inside(&(h..h + PAGE)))
            // A page-crossing write from a scratch buffer into its hole.
            || self.scratch.iter().zip(self.hole.iter()).any(|(s, &h)| va >= s.start && end <= h + PAGE && s.end == h);
        !allowed
    }
}

/// One of a vCPU's arena frames: its frame now (0 when given back) and whether this vCPU
/// believes it is mapped writable at its initial address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub mfn: u64,
    pub writable: bool,
}

/// A vCPU's frames, as it believes them to be: the other vCPU may pin, unpin, give back
/// or link any of them, so every call that uses one must survive finding it otherwise.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    pub vcpu: usize,
    /// Its share of the arena: pfns, and each slot by `pfn - arena.start`.
    pub arena: Range<u64>,
    pub slots: ArrayVec<Slot, MAX_ARENA>,
    /// Frames from `increase_reservation`, never mapped.
    pub extra: ArrayVec<u64, MAX_EXTRA>,
    /// Its own L4, a copy of the boot L4 (pinned), when built.
    pub clone_l4: Option<u64>,
    /// L4 slots an L3 was linked at (bit per slot): where the window's aliases may be.
    pub linked_l4_slots: [u64; 8],
}

impl Frames {
    /// vCPU `vcpu`'s frames at start: its share of the arena, all mapped writable.
    pub fn new(world: &World<'_>, vcpu: usize, vcpus: usize) -> Self {
        let arena = world.arena_of(vcpu, vcpus);
        let slots = arena
            .clone()
            .map(|pfn| Slot { mfn: world.p2m[pfn as usize], writable: true })
            .collect();
        Self { vcpu, arena, slots, ..Self::default() }
    }

    /// The virtual address of slot `index`.
    pub fn slot_va(&self, world: &World<'_>, index: usize) -> u64 {
        world.va_of(self.arena.start + index as u64)
    }

    /// Notes that an L3 may now sit at L4 slot `slot`.
    pub fn note_linked(&mut self, slot: usize) {
        if slot < ENTRIES {
            self.linked_l4_slots[slot / 64] |= 1 << (slot % 64);
        }
    }

    /// The L4 slots noted by [`Self::note_linked`].
    pub fn linked(&self) -> impl Iterator<Item = usize> + '_ {
        (0..ENTRIES).filter(|&s| self.linked_l4_slots[s / 64] & (1 << (s % 64)) != 0)
    }
}

/// The address of the window's alias under L4 slot `slot` (sign-extended).
pub const fn alias_of(slot: usize) -> u64 {
    let raw = ((slot as u64) << 39) + ALIAS_OFFSET;
    if raw & (1 << 47) != 0 {
        raw | 0xFFFF_0000_0000_0000
    } else {
        raw
    }
}

#[cfg(test)]
pub mod testing {
    //! A world shaped like the builder's for a 2 MiB fuzzer domain, for the tests.
    use super::*;
    use std::vec::Vec;

    pub const VIRT_BASE: u64 = 0xFFFF_FFFF_8000_0000;

    /// 512 pages: pfn n is mfn 0x1000 + n; the program is pfns 0..120 (tables at 100..104),
    /// scratch at pfns 40..48 and 49..57, holes at 48 and 57.
    pub fn p2m() -> Vec<u64> {
        (0..512).map(|pfn| 0x1000 + pfn).collect()
    }

    pub fn world(p2m: &[u64]) -> World<'_> {
        let mut l1s = ArrayVec::new();
        l1s.push(p2m[103]);
        World {
            virt_base: VIRT_BASE,
            nr_pages: 512,
            p2m,
            arena: 120..512,
            tables: BootTables { l4: p2m[100], l3: p2m[101], l2: p2m[102], l1s, l4_entry_511: (p2m[101] << 12) | 0x67 },
            shared_info_mfn: 0x9000,
            tables_va: VIRT_BASE + 100 * PAGE..VIRT_BASE + 104 * PAGE,
            tables_pfn: 100,
            scratch: [VIRT_BASE + 40 * PAGE..VIRT_BASE + 48 * PAGE, VIRT_BASE + 49 * PAGE..VIRT_BASE + 57 * PAGE],
            hole: [VIRT_BASE + 48 * PAGE, VIRT_BASE + 57 * PAGE],
            code_va: VIRT_BASE..VIRT_BASE + 20 * PAGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn aliases_sit_in_the_top_gib_of_each_slot() {
        assert_eq!(alias_of(0), 0x7F_FC00_0000);
        assert_eq!(alias_of(511), WINDOW, "slot 511's alias is the window itself");
        assert_eq!(alias_of(256), 0xFFFF_807F_FC00_0000);
    }

    #[test]
    fn arenas_are_disjoint_and_bounded() {
        let p2m = p2m();
        let world = world(&p2m);
        let a = world.arena_of(0, 2);
        let b = world.arena_of(1, 2);
        assert!(a.end <= b.start);
        assert!(b.end <= world.arena.end);
        assert_eq!(a.end - a.start, MAX_ARENA as u64);
        let frames = Frames::new(&world, 1, 2);
        assert_eq!(frames.slots[0].mfn, p2m[b.start as usize]);
        assert_eq!(frames.slot_va(&world, 0), world.va_of(b.start));
    }

    #[test]
    fn program_writes_are_recognised() {
        let p2m = p2m();
        let world = world(&p2m);
        assert!(world.write_hits_program(VIRT_BASE, 8), "the image");
        assert!(world.write_hits_program(VIRT_BASE + 119 * PAGE, 8), "the boot stack");
        assert!(world.write_hits_program(VIRT_BASE + 39 * PAGE + 4090, 16), "into scratch from below");
        assert!(!world.write_hits_program(VIRT_BASE + 40 * PAGE, 8), "scratch");
        assert!(!world.write_hits_program(VIRT_BASE + 48 * PAGE - 4, 16), "scratch into its hole");
        assert!(!world.write_hits_program(VIRT_BASE + 101 * PAGE, 8), "read-only tables");
        assert!(!world.write_hits_program(VIRT_BASE + 200 * PAGE, 8), "the arena");
        assert!(!world.write_hits_program(WINDOW, 8), "not the program's");
        assert!(world.is_program_frame(p2m[5]) && world.is_program_frame(0x9000));
        assert!(!world.is_program_frame(p2m[300]));
    }
}
