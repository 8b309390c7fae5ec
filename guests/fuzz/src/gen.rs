//! The generators: the values the fuzzer puts in its calls. Pointers are drawn from
//! classes (the buffer the call should get, the scratch page's end running into an
//! unmapped hole, the program's read-only memory, the arena, null and low addresses,
//! unmapped ones, the hypervisor's window, the window's aliases, non-canonical addresses,
//! the edges of the canonical halves); counts from the small, the edges of every limit and
//! the absurd; page-table entries from the domain's own frames (arena, extra, its page
//! tables, its program, the shared-info frame) and foreign ones, with random flags;
//! `mmu_update` targets from entries of its own tables that its program does not use;
//! selectors, descriptors, flags and code addresses likewise.
//!
//! What keeps the fuzzer alive is decided here, and tested on the host: a pointer the
//! hypervisor writes through never lands in the program's memory, and one it reads
//! through never lands in the program's writable memory (a structure read from there
//! could carry a pointer to write through, a frame to switch to); an entry that maps a
//! program frame (or the shared-info frame) is never writable; an update never touches a
//! boot-table entry the program's mapping uses; and with a class avoided
//! ([`crate::options::Class`]) nothing of it is drawn. This module draws numbers only: it
//! must never make a call or touch memory.

use crate::options::{Avoid, Class};
use crate::rng::Rng;
use crate::world::{
    alias_of, Frames, World, BOOT_L3_INDEX, BOOT_L4_SLOT, ENTRIES, HYPERVISOR_IMAGE_MFN, PAGE, RESERVED_L4, WINDOW,
    WINDOW_L3_INDEX, WINDOW_SIZE,
};

/// What the hypervisor does with a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads through it only.
    Read,
    /// Writes through it (maybe reads too).
    Write,
}

/// Page-table entry bits.
pub mod pte {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const ACCESSED: u64 = 1 << 5;
    pub const DIRTY: u64 = 1 << 6;
    pub const HUGE: u64 = 1 << 7;
    pub const GLOBAL: u64 = 1 << 8;
    pub const AVAIL_LOW: u64 = 7 << 9;
    pub const AVAIL_HIGH: u64 = 0x7FF << 52;
    pub const NX: u64 = 1 << 63;
    pub const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
}

/// Where a frame drawn by [`Gen::frame`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// This vCPU's arena.
    OwnArena,
    /// The other vCPU's arena.
    OtherArena,
    /// From `increase_reservation`.
    Extra,
    /// A boot page table.
    BootTable,
    /// This vCPU's copy of the boot L4.
    CloneL4,
    /// The program's (image, P2M, start info, stacks).
    Program,
    SharedInfo,
    /// Not the domain's.
    Foreign,
}

impl FrameKind {
    /// Whether an entry may map it writable without the program's memory changing under it.
    pub const fn may_map_writable(self) -> bool {
        matches!(self, Self::OwnArena | Self::OtherArena | Self::Extra | Self::BootTable | Self::CloneL4 | Self::Foreign)
    }
}

/// Selectors worth trying: null, the reserved page's (ring-0 code and data, ring-3 32- and
/// 64-bit code and data), and the guest's own GDT range.
pub const SELECTORS: [u16; 9] = [0, 0xe008, 0xe010, 0xe023, 0xe02b, 0xe033, 0xe030, 0xe028, 0xe02a];

/// Draws values for one vCPU's calls.
pub struct Gen<'a, 'w> {
    pub rng: &'a mut Rng,
    pub world: &'a World<'w>,
    pub frames: &'a Frames,
    pub avoid: Avoid,
}

impl Gen<'_, '_> {
    fn avoids(&self, class: Class) -> bool {
        self.avoid.has(class)
    }

    /// A pointer for a call whose proper buffer is `valid` (`len` bytes), drawn from the
    /// classes; most often `valid` itself.
    pub fn pointer(&mut self, valid: u64, len: u64, access: Access) -> u64 {
        if self.rng.chance(650) {
            return valid;
        }
        loop {
            let candidate = self.any_pointer(len, access);
            // The generator's promises: a write never reaches the program, and with aliases
            // avoided no pointer reaches one, whatever class drew it.
            let harmless = access == Access::Read || !self.world.write_hits_program(candidate, len);
            if harmless && !(self.avoids(Class::Alias) && touches_alias(candidate, len)) {
                return candidate;
            }
        }
    }

    /// A pointer from any class but "the right one".
    fn any_pointer(&mut self, len: u64, access: Access) -> u64 {
        let avoid = self.avoid;
        let w = self.world;
        let me = self.frames.vcpu;
        let scratch = w.scratch[me].clone();
        let r = &mut *self.rng;
        let small = r.below(PAGE);
        match r.below(13) {
            // The scratch buffer's end, running `small` bytes into the unmapped hole.
            0 => scratch.end - len.min(PAGE) + 1 + r.below(len.clamp(1, PAGE)),
            1 => w.hole[me] + r.below(PAGE - len.clamp(1, PAGE) + 1),
            // Read-only memory of the program: its boot tables; for reads, its code.
            2 if access == Access::Write => w.tables_va.start + r.below(w.tables_va.end - w.tables_va.start),
            2 => w.code_va.start + r.below(w.code_va.end - w.code_va.start),
            // The arena, whatever each page maps now.
            3 => w.va_of(w.arena.start) + r.below((w.arena.end - w.arena.start) * PAGE),
            4 => r.pick(&[0, 8, PAGE - 8, PAGE, 0x10_0000]) + r.below(16),
            // Unmapped: past the reservation, low memory, a random lower-half address.
            5 => match r.below(3) {
                0 => w.va_of(w.nr_pages) + r.below(64) * PAGE + small,
                1 => 0x4000_0000 + r.bits(30),
                _ => r.bits(47),
            },
            6 => WINDOW + r.below(WINDOW_SIZE),
            7 => u64::MAX - r.below(PAGE),
            8 if !avoid.has(Class::Alias) => {
                let linked = self.frames.linked().count() as u64;
                let slot = if linked > 0 && r.chance(700) {
                    self.frames.linked().nth(r.below(linked) as usize).unwrap_or(0)
                } else {
                    r.below(ENTRIES as u64) as usize
                };
                alias_of(slot) + r.below(WINDOW_SIZE)
            }
            // Non-canonical.
            9 => match r.below(3) {
                0 => 0x0000_8000_0000_0000 + r.bits(20),
                1 => 0xFFFF_7FFF_FFFF_F000 + r.bits(12),
                _ => r.next_u64() & !0xFFFF_0000_0000_0000 | r.bits(15) << 48 | 1 << 47,
            },
            // The edges: the lower half's end, the upper half's start, the window's start,
            // each reached from below so that a range crosses it.
            10 => r.pick(&[0x0000_8000_0000_0000, 0xFFFF_8000_0000_0000, WINDOW]) - 1 - r.below(len.max(1)),
            11 => w.va_of(w.nr_pages) - 1 - r.below(len.max(1)),
            _ => r.next_u64(),
        }
    }

    /// A pointer the hypervisor can neither read nor write, whatever the fuzzer mapped: the
    /// vCPU's hole, the window, a non-canonical address (for calls whose success would end
    /// the fuzzer, as `shutdown` with a readable reason).
    pub fn unreadable(&mut self) -> u64 {
        let hole = self.world.hole[self.frames.vcpu];
        let r = &mut *self.rng;
        match r.below(3) {
            0 => hole + r.below(PAGE - 16),
            1 => WINDOW + r.below(WINDOW_SIZE - 16),
            _ => 0x0000_8000_0000_0000 + r.bits(40),
        }
    }

    /// A count for an array whose natural length is up to `typical`.
    pub fn count(&mut self, typical: u64) -> u64 {
        let avoid = self.avoid;
        let r = &mut *self.rng;
        match r.below(20) {
            0 => 0,
            1..=14 => r.between(1, typical.max(1)),
            15 => r.pick(&[1 << 20, (1 << 20) + 1, 0x7FFF_FFFF, 0xFFFF_FFFF, u64::MAX, 1 << 31, 1 << 32]),
            16 => (1 << 31) | r.below(typical.max(1) + 1),
            17 => (1 << 32) | r.below(typical.max(1) + 1),
            18 if !avoid.has(Class::Long) => r.between(typical, 1 << 20),
            _ => typical.saturating_add(r.below(4)),
        }
    }

    /// A frame of some kind.
    pub fn frame(&mut self) -> (u64, FrameKind) {
        self.frame_of(true)
    }

    /// A frame of some kind; with `tables` false never one of the program's page tables
    /// (the boot tables, this vCPU's L4): what a non-leaf entry may point at. A boot table
    /// linked anywhere else is a second way to its entries, through which an update at an
    /// address of no importance would remap the program.
    fn frame_of(&mut self, tables: bool) -> (u64, FrameKind) {
        loop {
            let (mfn, kind) = self.any_frame();
            let table = self.world.tables.contains(mfn) || Some(mfn) == self.frames.clone_l4;
            if tables || !table {
                return (mfn, kind);
            }
        }
    }

    fn any_frame(&mut self) -> (u64, FrameKind) {
        let w = self.world;
        let f = self.frames;
        let r = &mut *self.rng;
        let kind = match r.weighted(&[30, 8, 20, 10, 3, 6, 2, 8]) {
            0 => FrameKind::OwnArena,
            1 => FrameKind::OtherArena,
            2 => FrameKind::Extra,
            3 => FrameKind::BootTable,
            4 => FrameKind::CloneL4,
            5 => FrameKind::Program,
            6 => FrameKind::SharedInfo,
            _ => FrameKind::Foreign,
        };
        let pick_arena = |r: &mut Rng, range: core::ops::Range<u64>| w.p2m[(range.start + r.below(range.end - range.start)) as usize];
        let mfn = match kind {
            FrameKind::OwnArena if !f.slots.is_empty() => f.slots[r.below(f.slots.len() as u64) as usize].mfn,
            FrameKind::OtherArena if w.arena.end > w.arena.start => pick_arena(r, w.arena.clone()),
            FrameKind::Extra if !f.extra.is_empty() => r.pick(&f.extra),
            FrameKind::BootTable => match r.below(4) {
                0 => w.tables.l4,
                1 => w.tables.l3,
                2 => w.tables.l2,
                _ => r.pick(&w.tables.l1s),
            },
            FrameKind::CloneL4 if f.clone_l4.is_some() => f.clone_l4.unwrap_or(0),
            FrameKind::Program => w.p2m[r.below(w.arena.start) as usize],
            FrameKind::SharedInfo if !self.avoid.has(Class::Shinfo) => w.shared_info_mfn,
            _ => {
                let foreign = match r.below(5) {
                    0 => 0,
                    1 => HYPERVISOR_IMAGE_MFN + r.below(64),
                    2 => r.bits(16),
                    3 => r.bits(40),
                    _ => pte::ADDRESS >> 12,
                };
                // A foreign draw that happens to be the program's is taken as the program's.
                let kind = if w.is_program_frame(foreign) { FrameKind::Program } else { FrameKind::Foreign };
                return (foreign, kind);
            }
        };
        (mfn, kind)
    }

    /// A page-table entry for a table of any level: present or not, to some frame, with
    /// random flags; never a writable mapping of the program's frames or the shared-info
    /// frame, never a link to the program's page tables.
    pub fn pte(&mut self) -> u64 {
        self.entry(false)
    }

    /// An entry for an L1 table (a leaf): as [`Self::pte`], but it may map the program's
    /// page tables (read-only, or refused).
    pub fn leaf_pte(&mut self) -> u64 {
        self.entry(true)
    }

    /// The entry for the `mmu_update` aimed at `target`: a leaf's when the target is an
    /// entry of a boot L1.
    pub fn pte_for(&mut self, target: u64) -> u64 {
        let mfn = (target & pte::ADDRESS) >> 12;
        if self.world.tables.l1s.contains(&mfn) { self.leaf_pte() } else { self.pte() }
    }

    fn entry(&mut self, leaf: bool) -> u64 {
        let (mfn, kind) = self.frame_of(leaf);
        let r = &mut *self.rng;
        if r.chance(60) {
            // Raw bits; writable only where the frame allows it.
            let raw = r.next_u64();
            let mapped = (raw & pte::ADDRESS) >> 12;
            let table = self.world.tables.contains(mapped) || Some(mapped) == self.frames.clone_l4;
            if raw & pte::PRESENT != 0 && table && !leaf {
                return raw & !pte::PRESENT;
            }
            let ok = !self.world.is_program_frame(mapped) || raw & pte::PRESENT == 0;
            return if ok { raw } else { raw & !pte::WRITABLE };
        }
        if r.chance(120) {
            // Not present: anything else may be there (a swap entry).
            return r.next_u64() & !pte::PRESENT;
        }
        let mut flags = pte::PRESENT | pte::USER;
        if r.chance(550) && kind.may_map_writable() {
            flags |= pte::WRITABLE;
        }
        if r.chance(50) {
            flags &= !pte::USER;
        }
        flags |= r.bits(2) << 5; // accessed, dirty
        if r.chance(200) {
            flags |= pte::NX;
        }
        if r.chance(30) {
            flags |= r.pick(&[pte::PWT, pte::PCD, pte::HUGE, pte::GLOBAL]);
        }
        if r.chance(100) {
            flags |= r.next_u64() & (pte::AVAIL_LOW | pte::AVAIL_HIGH);
        }
        (mfn << 12 & pte::ADDRESS) | flags
    }

    /// The machine address (with command bits) an `mmu_update` is aimed at: an entry of a
    /// table the domain may own, never one its program's mapping uses.
    pub fn mmu_target(&mut self) -> u64 {
        let w = self.world;
        let no_511 = self.avoids(Class::Slot511);
        let (table, index) = loop {
            let (mfn, kind) = self.frame();
            let r = &mut *self.rng;
            let index = r.below(ENTRIES as u64) as usize;
            // Judged by the frame, whatever class drew it (a foreign draw may be ours).
            let t = &w.tables;
            let allowed = if mfn == t.l4 {
                index != BOOT_L4_SLOT || (!no_511 && !self.avoid.has(Class::Fatal) && r.chance(20))
            } else if mfn == t.l3 {
                index != BOOT_L3_INDEX
            } else if mfn == t.l2 {
                !w.used_l2().contains(&index)
            } else if let Some(l1) = t.l1s.iter().position(|&l1| l1 == mfn) {
                // An L1 of the initial mapping: only the entries of this vCPU's arena.
                let pfn = (l1 * ENTRIES + index) as u64;
                self.frames.arena.contains(&pfn)
            } else if w.is_program_frame(mfn) {
                // A frame that is no page table takes the update as a plain write (as in
                // Xen): the program's code, data or shared-info page would be overwritten.
                false
            } else if Some(mfn) == self.frames.clone_l4 || kind == FrameKind::CloneL4 {
                // This vCPU's own L4 is its live base at times: its slot 511 stays.
                index != BOOT_L4_SLOT
            } else {
                // Any entry 511 may be an L4's (an arena or extra frame pinned as one).
                index != BOOT_L4_SLOT || !no_511
            };
            if allowed {
                break (mfn, index);
            }
        };
        let r = &mut *self.rng;
        let command = match r.below(20) {
            0..=15 => 0,
            16 | 17 => 2,
            _ => r.bits(3),
        };
        if r.chance(20) {
            // A raw address: the command bits and all.
            let raw = r.next_u64();
            let mfn = (raw & pte::ADDRESS) >> 12;
            let index = (raw & 0xFF8) as usize / 8;
            let forbidden = w.is_program_frame(mfn)
                || Some(mfn) == self.frames.clone_l4
                || (index == BOOT_L4_SLOT && no_511);
            if !forbidden {
                return raw;
            }
        }
        (table << 12) + index as u64 * 8 + command
    }

    /// A virtual address for `update_va_mapping`: this vCPU's arena pages mostly (their L1
    /// is a boot table), pages under tables the fuzzer linked, and the hostile classes;
    /// never a page of the program.
    pub fn mapping_va(&mut self) -> u64 {
        let avoid = self.avoid;
        let w = self.world;
        let f = self.frames;
        let r = &mut *self.rng;
        match r.below(10) {
            0..=5 if !f.slots.is_empty() => f.slot_va(w, r.below(f.slots.len() as u64) as usize),
            // Under boot L2 entries the program does not use (2 MiB each).
            6 => w.virt_base + (w.used_l2().end as u64 + r.below(64)) * (2 << 20) + r.below(512) * PAGE,
            // Under other L3 entries of the boot L3 (1 GiB each, below VIRT_BASE's).
            7 => (w.virt_base & !((1u64 << 39) - 1)) + r.below(BOOT_L3_INDEX as u64) * (1 << 30) + r.bits(30),
            _ => {
                let candidate = self.any_pointer(8, Access::Write);
                let in_program = candidate >= w.virt_base && candidate < w.va_of(w.arena.start);
                if in_program || (avoid.has(Class::Alias) && touches_alias(candidate, PAGE)) {
                    w.va_of(w.nr_pages)
                } else {
                    candidate & !(PAGE - 1) | self.rng.bits(2)
                }
            }
        }
    }

    /// A frame to pin, unpin, load as a base pointer's candidate or list as a GDT frame.
    pub fn table_frame(&mut self) -> u64 {
        self.frame().0
    }

    /// A selector: the interesting ones mostly, random otherwise.
    pub fn selector(&mut self) -> u16 {
        let r = &mut *self.rng;
        match r.below(4) {
            0 | 1 => r.pick(&SELECTORS),
            2 => (r.below(14 * 512) as u16) << 3 | r.bits(3) as u16,
            _ => r.bits(16) as u16,
        }
    }

    /// A segment descriptor: random bits, or a code, data, system or gate descriptor with
    /// random fields.
    pub fn descriptor(&mut self) -> u64 {
        let r = &mut *self.rng;
        if r.chance(300) {
            return r.next_u64();
        }
        let base = r.bits(32);
        let limit = r.bits(20);
        let kind = r.bits(4); // type
        let system = u64::from(r.chance(700)); // S: code/data
        let dpl = r.bits(2);
        let present = u64::from(r.chance(850));
        let long = r.bits(1);
        let db = r.bits(1);
        let gran = r.bits(1);
        (limit & 0xFFFF)
            | (base & 0xFF_FFFF) << 16
            | kind << 40
            | system << 44
            | dpl << 45
            | present << 47
            | (limit >> 16) << 48
            | long << 53
            | db << 54
            | gran << 55
            | (base >> 24) << 56
    }

    /// An `rflags` value for a frame the guest hands the hypervisor.
    pub fn rflags(&mut self) -> u64 {
        let r = &mut *self.rng;
        match r.below(4) {
            0 => r.next_u64(),
            1 => r.bits(22),
            _ => 0x202 | r.pick(&[0, 1 << 8, 1 << 10, 3 << 12, 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 21]),
        }
    }

    /// A code address for a handler or callback: `valid` mostly, else any pointer class.
    pub fn code_address(&mut self, valid: u64) -> u64 {
        if self.rng.chance(500) {
            return valid;
        }
        self.any_pointer(1, Access::Read)
    }

    /// The L4 slot an L3 may be linked at: any the program does not use (the hypervisor's
    /// own are refused, which is worth trying too).
    pub fn free_l4_slot(&mut self) -> usize {
        loop {
            let slot = self.rng.below(ENTRIES as u64) as usize;
            if slot != BOOT_L4_SLOT && (!RESERVED_L4.contains(&slot) || self.rng.chance(100)) {
                return slot;
            }
        }
    }

    /// An L3 index an L2 may be linked at in the boot L3.
    pub fn free_l3_index(&mut self) -> usize {
        loop {
            let index = self.rng.below(ENTRIES as u64) as usize;
            if index != BOOT_L3_INDEX && (index != WINDOW_L3_INDEX || self.rng.chance(100)) {
                return index;
            }
        }
    }

    /// An L2 index of the boot L2 the initial mapping does not use.
    pub fn free_l2_index(&mut self) -> usize {
        let used = self.world.used_l2().end as u64;
        (used + self.rng.below(ENTRIES as u64 - used)) as usize
    }
}

/// Whether `[p, p + len)` reaches the last 64 MiB of some 512 GiB slot below the window:
/// where the window's alias is when an L3 sits in that slot.
pub fn touches_alias(p: u64, len: u64) -> bool {
    let end = p.saturating_add(len.max(1) - 1);
    let canonical = |a: u64| a >> 47 == 0 || a >> 47 == 0x1FFFF;
    [p, end].into_iter().any(|a| {
        let offset = a & ((1 << 39) - 1);
        canonical(a) && a < WINDOW && offset >= crate::world::ALIAS_OFFSET
    }) || (p < WINDOW && end >= WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::testing::{p2m, world};
    use crate::world::{Frames, World};

    fn frames(world: &World<'_>, vcpu: usize) -> Frames {
        let mut frames = Frames::new(world, vcpu, 2);
        frames.extra.push(0x7000);
        frames.extra.push(0x7001);
        frames.clone_l4 = Some(0x7002);
        frames.note_linked(3);
        frames
    }

    const DRAWS: usize = 200_000;

    #[test]
    fn writes_never_reach_the_program() {
        let p2m = p2m();
        let w = world(&p2m);
        for vcpu in 0..2 {
            let f = frames(&w, vcpu);
            let mut rng = Rng::new(vcpu as u64);
            let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
            let valid = w.scratch[vcpu].start + 64;
            for _ in 0..DRAWS {
                let len = gen.rng.between(1, 64);
                let p = gen.pointer(valid, len, Access::Write);
                assert!(!w.write_hits_program(p, len), "{p:#x}+{len}");
                let va = gen.mapping_va();
                assert!(!(va >= w.virt_base && va < w.va_of(w.arena.start)), "update_va_mapping of program page {va:#x}");
            }
        }
    }

    #[test]
    fn reads_never_reach_the_programs_writable_memory() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 0);
        let mut rng = Rng::new(21);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
        let valid = w.scratch[0].start;
        for _ in 0..DRAWS {
            let p = gen.pointer(valid, 16, Access::Read);
            let program = w.virt_base..w.va_of(w.arena.start);
            if program.contains(&p) && !w.code_va.contains(&p) && !w.tables_va.contains(&p) {
                assert!(!w.write_hits_program(p, 16), "a read of writable program memory at {p:#x}");
            }
        }
    }

    #[test]
    fn program_frames_are_never_mapped_writable() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 0);
        let mut rng = Rng::new(5);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
        let mut writable = 0;
        for _ in 0..DRAWS {
            let entry = if gen.rng.chance(500) { gen.pte() } else { gen.leaf_pte() };
            let mfn = (entry & pte::ADDRESS) >> 12;
            let present_rw = entry & (pte::PRESENT | pte::WRITABLE) == pte::PRESENT | pte::WRITABLE;
            // (A boot table mapped writable is refused: it is a live page table.)
            assert!(!(present_rw && w.is_program_frame(mfn) && !w.tables.contains(mfn)), "{entry:#x}");
            writable += usize::from(present_rw);
        }
        assert!(writable > DRAWS / 5, "writable entries are drawn too ({writable})");
    }

    #[test]
    fn only_leaves_point_at_the_programs_tables() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 0);
        let mut rng = Rng::new(6);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
        let mut leaves = 0;
        for _ in 0..DRAWS {
            let entry = gen.pte();
            let mfn = (entry & pte::ADDRESS) >> 12;
            let table = w.tables.contains(mfn) || Some(mfn) == f.clone_l4;
            assert!(!(entry & pte::PRESENT != 0 && table), "a link to the program's table {mfn:#x}");
            let leaf = gen.leaf_pte();
            leaves += usize::from(leaf & pte::PRESENT != 0 && w.tables.contains((leaf & pte::ADDRESS) >> 12));
        }
        assert!(leaves > 100, "leaves do map the tables ({leaves})");
    }

    #[test]
    fn updates_spare_the_programs_entries() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 1);
        for avoid in [Avoid::default(), Avoid::default().with(Class::Slot511)] {
            let mut rng = Rng::new(11);
            let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid };
            let mut l1_hits = 0;
            for _ in 0..DRAWS {
                let ptr = gen.mmu_target();
                let (mfn, index) = (ptr >> 12 & (pte::ADDRESS >> 12), (ptr & 0xFFF) as usize / 8);
                let t = &w.tables;
                if mfn == t.l4 {
                    assert!(index != BOOT_L4_SLOT || !avoid.has(Class::Slot511));
                }
                assert!(!(mfn == t.l3 && index == BOOT_L3_INDEX), "the boot L3's entry 510");
                assert!(!(mfn == t.l2 && w.used_l2().contains(&index)), "a used boot L2 entry");
                if t.l1s.contains(&mfn) {
                    assert!(f.arena.contains(&(index as u64)), "L1 entry {index} is not this vCPU's arena");
                    l1_hits += 1;
                }
                if Some(mfn) == f.clone_l4 {
                    assert_ne!(index, BOOT_L4_SLOT, "the clone's slot 511");
                }
                assert!(!w.is_program_frame(mfn) || t.contains(mfn), "a plain write into program frame {mfn:#x}");
                let known_lower = mfn == t.l3 || mfn == t.l2 || t.l1s.contains(&mfn);
                if avoid.has(Class::Slot511) && !known_lower {
                    assert_ne!(index, BOOT_L4_SLOT, "entry 511 of {mfn:#x}, maybe an L4");
                }
            }
            assert!(l1_hits > 100, "the arena's own L1 entries are fuzzed ({l1_hits})");
        }
    }

    #[test]
    fn avoided_classes_are_never_drawn() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 0);
        let avoid = Avoid::default().with(Class::Alias).with(Class::Shinfo).with(Class::Long);
        let mut rng = Rng::new(3);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid };
        for _ in 0..DRAWS {
            let p = gen.pointer(0, 8, Access::Read);
            assert!(!touches_alias(p, 8), "{p:#x} is in an alias");
            assert!(!touches_alias(gen.mapping_va(), PAGE));
            assert_ne!(gen.frame().0, w.shared_info_mfn);
            let count = gen.count(16);
            assert!(count <= 19 || count >= 1 << 20, "a long batch under avoid=long: {count}");
        }
    }

    #[test]
    fn without_avoid_every_class_appears() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 0);
        let mut rng = Rng::new(8);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
        let (mut window, mut alias, mut noncanonical, mut shinfo) = (0, 0, 0, 0);
        for _ in 0..DRAWS {
            let p = gen.pointer(0, 8, Access::Write);
            window += usize::from(p >= WINDOW);
            alias += usize::from((alias_of(3)..alias_of(3) + WINDOW_SIZE).contains(&p));
            noncanonical += usize::from(p >> 47 != 0 && p >> 47 != 0x1FFFF);
            shinfo += usize::from(gen.frame().0 == w.shared_info_mfn);
        }
        assert!(window > 100 && alias > 100 && noncanonical > 100 && shinfo > 100, "{window} {alias} {noncanonical} {shinfo}");
    }

    #[test]
    fn unreadable_pointers_are_unmapped_or_refused() {
        let p2m = p2m();
        let w = world(&p2m);
        let f = frames(&w, 1);
        let mut rng = Rng::new(4);
        let mut gen = Gen { rng: &mut rng, world: &w, frames: &f, avoid: Avoid::default() };
        for _ in 0..DRAWS {
            let p = gen.unreadable();
            let hole = (w.hole[1]..w.hole[1] + PAGE).contains(&(p + 15));
            let refused = p >= WINDOW || (p >> 47 != 0 && p >> 47 != 0x1FFFF);
            assert!(hole || refused, "{p:#x}");
        }
    }

    #[test]
    fn aliases_are_recognised() {
        assert!(touches_alias(alias_of(0), 8));
        assert!(touches_alias(alias_of(300) + 5, 8));
        assert!(touches_alias(alias_of(7) - 4, 8), "running into one");
        assert!(!touches_alias(alias_of(7) - 16, 8));
        assert!(!touches_alias(WINDOW, 8), "the window itself is not an alias");
        assert!(touches_alias(WINDOW - 4, 8), "running into the window");
        assert!(!touches_alias(0x1000, 8));
        assert!(!touches_alias(0x0000_8000_0000_0000, 8), "non-canonical");
    }
}
