//! Test fixtures: a frame table with one guest domain, table memory backed by a map, a
//! ready-made 4-level tree, and an auditor that recomputes every count from the tables.

use std::collections::HashMap;

use mm::addr::{Mfn, PAGE_SIZE};
use mm::frame::{DomainId, FrameInfo, FrameTable, Owner, PageType, TypeFlags, TypeInfo};
use mm::memmap::PhysRange;

use crate::entry::{Pte, ENTRIES, GLOBAL, PRESENT, USER, WRITABLE};
use crate::level::Level;
use crate::memory::TableMemory;
use crate::policy::{child_type, must_be_present, Layout, WINDOW_L4_SLOT};
use crate::refs::PvMmu;

/// The guest domain under test.
pub const DOM: DomainId = DomainId(1);
/// Another guest domain.
pub const OTHER: DomainId = DomainId(2);
/// Frames the table covers; frames below [`FIRST_USABLE`] are reserved.
pub const TABLE_FRAMES: u64 = 128;
/// First usable frame.
pub const FIRST_USABLE: u64 = 16;
/// Frames given to [`DOM`].
pub const DOM_FRAMES: usize = 64;

/// Entry value of a present mapping of `mfn` with `flags` (P is added).
pub fn pte(mfn: Mfn, flags: u64) -> u64 {
    Pte::new(mfn, flags | PRESENT).raw()
}

/// Table memory over a map of frames (absent frames read as zero), recording flushes and
/// type releases, and asking operations to stop as [`Preempt`] says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Ram {
    pages: HashMap<Mfn, Vec<u64>>,
    pub flushes: Vec<Mfn>,
    pub preempt: Preempt,
    /// How often operations asked whether to stop, and how often they were told to.
    pub asked: u64,
    pub stops: u64,
    /// Frames that took the writable type at count zero ([`TableMemory::flush_stale_tables`]).
    pub writable_flushes: Vec<Mfn>,
    /// Frames whose last type reference went, and the type it was.
    pub released: Vec<(Mfn, PageType)>,
    /// The next compare-and-exchange fails as if a processor had just set a bit.
    pub fail_next_compare_exchange: bool,
}

/// When [`Ram::should_preempt`] says stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preempt {
    /// Never.
    #[default]
    Never,
    /// At every `n`th question.
    Every(u64),
    /// At random, once in `one_in` questions on average (xorshift state `seed`).
    Random { seed: u64, one_in: u64 },
}

impl TableMemory for Ram {
    fn read(&self, mfn: Mfn, index: usize) -> u64 {
        assert!(index < ENTRIES, "read index {index}");
        self.pages.get(&mfn).map_or(0, |page| page[index])
    }

    fn write(&mut self, mfn: Mfn, index: usize, value: u64) {
        assert!(index < ENTRIES, "write index {index}");
        self.pages.entry(mfn).or_insert_with(|| vec![0; ENTRIES])[index] = value;
    }

    fn flush_stale_writable(&mut self, mfn: Mfn) {
        self.flushes.push(mfn);
    }

    fn compare_exchange(&mut self, mfn: Mfn, index: usize, expected: u64, new: u64) -> bool {
        if std::mem::take(&mut self.fail_next_compare_exchange) || self.read(mfn, index) != expected {
            return false;
        }
        self.write(mfn, index, new);
        true
    }

    fn should_preempt(&mut self) -> bool {
        self.asked += 1;
        let stop = match &mut self.preempt {
            Preempt::Never => false,
            Preempt::Every(n) => self.asked.is_multiple_of(*n),
            Preempt::Random { seed, one_in } => {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed).is_multiple_of(*one_in)
            }
        };
        self.stops += u64::from(stop);
        stop
    }

    fn flush_stale_tables(&mut self, mfn: Mfn) {
        self.writable_flushes.push(mfn);
    }

    fn type_released(&mut self, mfn: Mfn, was: PageType) {
        self.released.push((mfn, was));
    }
}

impl Ram {
    /// The contents of every frame written so far (flushes and preemption ignored).
    pub fn contents(&self) -> Vec<(Mfn, Vec<u64>)> {
        let mut pages: Vec<_> = self.pages.iter().map(|(&m, p)| (m, p.clone())).collect();
        pages.sort_by_key(|&(mfn, _)| mfn);
        pages
    }
}

/// A frame table with [`DOM`]'s frames, a few of [`OTHER`]'s, one hypervisor frame and
/// some free frames, plus the layout and table memory.
pub struct World {
    pub frames: &'static FrameTable,
    pub layout: &'static Layout,
    pub ram: Ram,
    pub owned: Vec<Mfn>,
    pub foreign: Vec<Mfn>,
    pub hypervisor: Mfn,
    pub free: Mfn,
}

/// The first address [`Tree`] maps: L4 slot 511, L3 index 0.
pub const TREE_BASE: u64 = 0xFFFF_FF80_0000_0000;

/// The hypervisor's fixed L3 entry in every test layout.
pub const HV_L3_ENTRY: u64 = 0x5000 | PRESENT | WRITABLE;
/// The M2P entry in every test layout.
pub const M2P_L4_ENTRY: u64 = 0x6000 | PRESENT | USER;

/// Relinquishes `dom`'s frames with `bases`, calling again while it says `Restart`.
pub fn relinquish(
    mmu: &PvMmu<'_>,
    dom: DomainId,
    owned: &[Mfn],
    bases: impl IntoIterator<Item = crate::pin::BasePtr>,
    mem: &mut impl TableMemory,
) -> Result<(), crate::error::MmError> {
    let mut bases = bases.into_iter();
    let mut progress = crate::relinquish::RelinquishProgress::default();
    loop {
        match mmu.relinquish(dom, owned, &mut bases, &mut progress, mem) {
            Err(crate::error::MmError::Restart) => continue,
            other => return other,
        }
    }
}

impl World {
    pub fn new() -> World {
        let storage: Vec<FrameInfo> = (0..TABLE_FRAMES).map(|_| FrameInfo::new()).collect();
        let usable = PhysRange {
            start: FIRST_USABLE * PAGE_SIZE,
            end: TABLE_FRAMES * PAGE_SIZE,
        };
        let frames: &'static FrameTable = Box::leak(Box::new(FrameTable::new(
            Box::leak(storage.into_boxed_slice()),
            &[usable],
        )));
        let hypervisor = frames.alloc(Owner::Hypervisor).unwrap();
        let mut owned = Vec::new();
        frames
            .alloc_many(Owner::Domain(DOM), DOM_FRAMES, &mut owned)
            .unwrap();
        let mut foreign = Vec::new();
        frames
            .alloc_many(Owner::Domain(OTHER), 8, &mut foreign)
            .unwrap();
        let free = Mfn(TABLE_FRAMES - 1);
        assert_eq!(frames.frame(free).unwrap().owner(), None);
        World {
            frames,
            layout: Box::leak(Box::new(Layout::new(HV_L3_ENTRY, Some(M2P_L4_ENTRY)))),
            ram: Ram::default(),
            owned,
            foreign,
            hypervisor,
            free,
        }
    }

    pub fn mmu(&self) -> PvMmu<'static> {
        PvMmu::new(self.frames, self.layout)
    }

    /// General reference count and type word of `mfn`.
    pub fn counts(&self, mfn: Mfn) -> (u32, TypeInfo) {
        let info = self.frames.frame(mfn).unwrap();
        (info.ref_count(), info.type_info())
    }

    /// Counts and type words of every frame, for "nothing changed" checks.
    pub fn snapshot(&self) -> Vec<(u32, TypeInfo)> {
        (0..TABLE_FRAMES).map(|m| self.counts(Mfn(m))).collect()
    }

    /// Recomputes every frame's counts from the validated tables' entries, the pins and
    /// `bases` (frames held as base pointers), and checks them against the frame table,
    /// together with the stored form of every entry.
    pub fn audit(&self, bases: &[Mfn]) {
        self.audit_with(bases, &[]);
    }

    /// [`Self::audit`], with `descriptors` also holding a general and a descriptor-page
    /// type reference each (what the hypervisor takes for a GDT frame).
    pub fn audit_with(&self, bases: &[Mfn], descriptors: &[Mfn]) {
        let len = TABLE_FRAMES as usize;
        let mut refs = vec![0u32; len];
        let mut types = vec![0u32; len];
        let mut want_type = vec![None; len];
        for &base in bases {
            refs[base.0 as usize] += 1;
            types[base.0 as usize] += 1;
            want_type[base.0 as usize] = Some(PageType::L4);
        }
        for &frame in descriptors {
            refs[frame.0 as usize] += 1;
            types[frame.0 as usize] += 1;
            want_type[frame.0 as usize] = Some(PageType::SegmentDescriptors);
        }
        for table in 0..TABLE_FRAMES {
            let table = Mfn(table);
            let (_, word) = self.counts(table);
            if word.flags().contains(TypeFlags::PINNED) {
                refs[table.0 as usize] += 1;
                types[table.0 as usize] += 1;
            }
            if Level::of_page_type(word.page_type()).is_none() {
                continue;
            }
            assert!(word.count() > 0, "{table}: typed at count 0");
            assert!(
                word.flags().contains(TypeFlags::VALIDATED),
                "{table}: not validated"
            );
            self.audit_table(
                table,
                word.page_type(),
                &mut refs,
                &mut types,
                &mut want_type,
            );
        }
        for mfn in 0..len {
            let (ref_count, word) = self.counts(Mfn(mfn as u64));
            assert_eq!(ref_count, refs[mfn], "general references of frame {mfn}");
            assert_eq!(word.count(), types[mfn], "type count of frame {mfn}");
            if let Some(want) = want_type[mfn] {
                assert_eq!(word.page_type(), want, "type of frame {mfn}");
            }
            if word.count() == 0 {
                assert_eq!(word, TypeInfo::NONE, "frame {mfn} at count 0");
            }
        }
    }

    fn audit_table(
        &self,
        table: Mfn,
        page_type: PageType,
        refs: &mut [u32],
        types: &mut [u32],
        want_type: &mut [Option<PageType>],
    ) {
        let level = Level::of_page_type(page_type).unwrap();
        for index in 0..ENTRIES {
            let raw = self.ram.read(table, index);
            if let Some(fixed) = self.layout.fixed_entry(page_type, index) {
                assert_eq!(raw, fixed, "{table}[{index}]: hypervisor entry");
                continue;
            }
            assert_ne!(
                raw, HV_L3_ENTRY,
                "{table}[{index}]: the window outside a window-L3"
            );
            let pte = Pte(raw);
            if must_be_present(page_type, index) {
                assert!(
                    pte.is_present(),
                    "{table}[{index}]: an L4 without its window-L3"
                );
            }
            if !pte.is_present() {
                continue;
            }
            assert_ne!(raw & USER, 0, "{table}[{index}]: U/S not forced");
            if level == Level::L1 {
                assert_eq!(raw & GLOBAL, 0, "{table}[{index}]: G not stripped");
            }
            let target = pte.mfn().0 as usize;
            refs[target] += 1;
            let typed = match child_type(level, index) {
                Some(child) => Some(child),
                None => pte.is_writable().then_some(PageType::None),
            };
            if let Some(page_type) = typed {
                types[target] += 1;
                want_type[target] = Some(page_type);
            }
        }
    }
}

/// A validated 4-level tree in a [`World`]: L4 slot 511 -> window-L3 index 0 -> L2 index
/// 0 -> L1, whose entries 0..4 map data frames writable and 4..8 read-only. Its addresses
/// start at [`TREE_BASE`].
pub struct Tree {
    pub world: World,
    pub l4: Mfn,
    pub l3: Mfn,
    pub l2: Mfn,
    pub l1: Mfn,
    /// Frames mapped by the L1: 0..4 writable, 4..8 read-only.
    pub data: Vec<Mfn>,
    /// Owned frames nothing references yet.
    pub spare: Vec<Mfn>,
}

impl Tree {
    /// Writes the tree into memory without validating anything.
    pub fn write() -> Tree {
        let mut world = World::new();
        let [l4, l3, l2, l1] = [0, 1, 2, 3].map(|i| world.owned[i]);
        let data = world.owned[4..12].to_vec();
        let spare = world.owned[12..].to_vec();
        let ram = &mut world.ram;
        ram.write(l4, WINDOW_L4_SLOT, pte(l3, WRITABLE));
        ram.write(l3, 0, pte(l2, WRITABLE));
        ram.write(l2, 0, pte(l1, WRITABLE));
        for (index, &frame) in data.iter().enumerate() {
            let flags = if index < 4 { WRITABLE } else { 0 };
            ram.write(l1, index, pte(frame, flags));
        }
        Tree {
            world,
            l4,
            l3,
            l2,
            l1,
            data,
            spare,
        }
    }

    /// Writes the tree and takes a base pointer on its L4, validating it all.
    pub fn validated() -> (Tree, crate::pin::BasePtr) {
        let mut tree = Tree::write();
        let base = tree
            .world
            .mmu()
            .new_baseptr(tree.l4, DOM, &mut tree.world.ram)
            .unwrap();
        (tree, base)
    }
}
