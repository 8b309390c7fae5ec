//! Property tests: random sequences of every operation (entry updates at every level with
//! random frames and flags, pins and unpins at every level, base pointers taken and
//! released, descriptor pages taken and released, relinquish) run against the crate and
//! against a reference model, checked after every step.
//!
//! The model ([`Model`]) knows nothing of the crate's type words or validation order. It
//! keeps only the roots (pins, base pointers, descriptor references) and reads the table
//! contents; from them it derives, independently, the type every reachable frame must
//! have and its general and type counts ([`Model::expect`]), and calls a state valid when
//! no frame needs two types and every entry of every reachable table passes the entry
//! rules (written out again here) and names a frame of the domain. An operation must
//! succeed exactly when the state it leads to is valid (for an entry update: the state
//! holding both the old and the new entry, as the new references are taken before the
//! old ones are dropped). After every step:
//! - the frame table equals the model's counts, types and pins, frame by frame;
//! - no frame typed as a page table or descriptor page is mapped writable by a validated
//!   L1, and no validated table maps a frame the domain does not own;
//! - the auditor's recount from the validated tables, pins, base pointers and descriptor
//!   references matches, the window entry is only in window-L3s and every validated L4's
//!   slot 511 names one, the guest's or the hypervisor's default window-L3 in its one
//!   stored form, installed where the guest left the slot empty ([`World::audit_with`]);
//! - a failed operation changed no count and no entry except into its stored form (what
//!   validation writes into sub-tables it validated before the failure: U/S set, G
//!   cleared, hypervisor entries); a successful update changed its entry to the expected
//!   value and nothing else but stored forms.
//!
//! Sequences shrink to short readable lists of [`Op`]s naming frames of a small pool.
//! `cargo test -p pvmm` runs proptest's default 256 sequences; more with, e.g.,
//! `PROPTEST_CASES=20000 cargo test --release -p pvmm proptests`.

use std::collections::BTreeMap;
use std::fmt;

use mm::addr::Mfn;
use mm::frame::{FrameState, Owner, PageType, TypeFlags, TypeInfo};
use proptest::prelude::*;

use crate::entry::{ENTRIES, Pte, PteFlags};
use crate::error::MmError;
use crate::level::Level;
use crate::memory::TableMemory;
use crate::pin::BasePtr;
use crate::testkit::{
    window_l4_entry, Preempt, Ram, Tree, World, DOM, HV_L3_ENTRY, M2P_L4_ENTRY, TABLE_FRAMES,
};
use crate::update::AccessedDirty;

/// Frames of the domain the operations use (the first four start out as a tree).
const POOL: u8 = 12;
/// A reserved frame (below the first usable one).
const RESERVED: Mfn = Mfn(3);
/// A frame beyond the frame table.
const BEYOND: Mfn = Mfn(1 << 30);

/// A frame an operation names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// One of the domain's frames, by its number in the pool.
    Own(u8),
    /// A frame of another domain.
    Foreign,
    /// A frame of the hypervisor.
    Hypervisor,
    /// The hypervisor's default window-L3.
    Window,
    /// A free frame.
    Free,
    /// A reserved frame.
    Reserved,
    /// A frame beyond the frame table.
    Beyond,
}

/// The flags of an entry value.
#[derive(Clone, Copy, Debug)]
enum Flags {
    /// Present, writable.
    Rw,
    /// Present, read-only.
    Ro,
    /// Present, writable, no-execute, accessed, dirty and available bits.
    RwNxAd,
    /// Present with G (allowed in L1 only, and stripped).
    Global,
    /// Present with PS (a huge page, or PAT in an L1: refused).
    Huge,
    /// Present with PCD and PWT (refused).
    Uncached,
    /// Zero.
    Empty,
    /// Not present, other bits set.
    Garbage,
}

/// An entry value: a frame and flags.
#[derive(Clone, Copy)]
struct Entry {
    frame: Frame,
    flags: Flags,
}

/// One operation (printed on one line, so that a shrunk sequence reads as a list).
#[derive(Clone, Copy)]
enum Op {
    /// `mod_entry` of entry `index` of `table`.
    Set {
        table: Frame,
        index: usize,
        entry: Entry,
        preserve_ad: bool,
    },
    /// `pin_table` at `level`.
    Pin { frame: Frame, level: Level },
    /// `unpin_table`.
    Unpin { frame: Frame },
    /// `new_baseptr`.
    NewBase { frame: Frame },
    /// `put_baseptr` of one of the base pointers held (by position, modulo their number).
    PutBase { which: usize },
    /// A general and a descriptor-page type reference, as `set_gdt` takes.
    GetDescriptor { frame: Frame },
    /// Drops one descriptor reference held (by position, modulo their number).
    PutDescriptor { which: usize },
    /// The hypervisor drops its descriptor references, then relinquishes every base
    /// pointer and pin of the domain: every frame must end untyped and unreferenced.
    Relinquish,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Own(n) => write!(f, "own{n}"),
            Frame::Foreign => f.write_str("foreign"),
            Frame::Hypervisor => f.write_str("hypervisor"),
            Frame::Window => f.write_str("default-window-L3"),
            Frame::Free => f.write_str("free"),
            Frame::Reserved => f.write_str("reserved"),
            Frame::Beyond => f.write_str("beyond-RAM"),
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?}", self.frame, self.flags)
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Set {
                table,
                index,
                entry,
                preserve_ad,
            } => {
                let ad = if preserve_ad { " (preserving A/D)" } else { "" };
                write!(f, "set {table:?}[{index}] = {entry:?}{ad}")
            }
            Op::Pin { frame, level } => write!(f, "pin {frame:?} as {level:?}"),
            Op::Unpin { frame } => write!(f, "unpin {frame:?}"),
            Op::NewBase { frame } => write!(f, "new_baseptr {frame:?}"),
            Op::PutBase { which } => write!(f, "put_baseptr #{which}"),
            Op::GetDescriptor { frame } => write!(f, "get descriptor page {frame:?}"),
            Op::PutDescriptor { which } => write!(f, "put descriptor page #{which}"),
            Op::Relinquish => f.write_str("relinquish"),
        }
    }
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        8 => (0..4u8).prop_map(Frame::Own),
        8 => (4u8..POOL).prop_map(Frame::Own),
        1 => prop::sample::select(vec![
            Frame::Foreign,
            Frame::Hypervisor,
            Frame::Window,
            Frame::Free,
            Frame::Reserved,
            Frame::Beyond,
        ]),
    ]
}

/// The table an update writes: mostly the starting tree's four frames.
fn table() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => (0..4u8).prop_map(Frame::Own),
        1 => frame(),
    ]
}

fn index() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => prop::sample::select(vec![0usize, 1, 2, 256, 271, 272, 510, 511]),
        1 => 0..=ENTRIES,
    ]
}

fn flags() -> impl Strategy<Value = Flags> {
    prop_oneof![
        6 => Just(Flags::Rw),
        4 => Just(Flags::Ro),
        1 => Just(Flags::RwNxAd),
        1 => Just(Flags::Global),
        1 => Just(Flags::Huge),
        1 => Just(Flags::Uncached),
        2 => Just(Flags::Empty),
        1 => Just(Flags::Garbage),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let level = prop::sample::select(Level::ALL.to_vec());
    let entry = (frame(), flags()).prop_map(|(frame, flags)| Entry { frame, flags });
    prop_oneof![
        20 => (table(), index(), entry, any::<bool>()).prop_map(|(table, index, entry, preserve_ad)| {
            Op::Set { table, index, entry, preserve_ad }
        }),
        5 => (frame(), level).prop_map(|(frame, level)| Op::Pin { frame, level }),
        3 => frame().prop_map(|frame| Op::Unpin { frame }),
        4 => frame().prop_map(|frame| Op::NewBase { frame }),
        2 => (0..4usize).prop_map(|which| Op::PutBase { which }),
        2 => frame().prop_map(|frame| Op::GetDescriptor { frame }),
        1 => (0..4usize).prop_map(|which| Op::PutDescriptor { which }),
        1 => Just(Op::Relinquish),
    ]
}

/// What the model says one frame's metadata must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Expected {
    refs: u32,
    count: u32,
    page_type: Option<PageType>,
    pinned: bool,
}

/// The reference model: the roots that keep frames typed. Table contents are read from
/// the same memory the crate works on.
#[derive(Clone, Debug, Default)]
struct Model {
    pins: BTreeMap<Mfn, PageType>,
}

/// The crate's state under test plus the model's roots.
struct Harness {
    world: World,
    model: Model,
    bases: Vec<BasePtr>,
    descriptors: Vec<Mfn>,
}

/// Bits a present entry may set at `level`, written out from the rules in
/// [`crate::policy`]'s documentation: no PWT, PCD or PS/PAT anywhere, G only in L1.
fn entry_allowed(level: Level, raw: u64) -> bool {
    if raw & PteFlags::PRESENT.bits() == 0 {
        return true;
    }
    let refused = PteFlags::WRITE_THROUGH | PteFlags::CACHE_DISABLE | PteFlags::HUGE_PAGE;
    let refused = match level {
        Level::L1 => refused,
        _ => refused | PteFlags::GLOBAL,
    };
    raw & refused.bits() == 0
}

/// The hypervisor's entries, written out again: L4 slots 256-271 and window-L3 entry 511.
fn model_reserved(table: PageType, index: usize) -> bool {
    match table {
        PageType::L4 => (256..272).contains(&index),
        PageType::WindowL3 => index == 511,
        _ => false,
    }
}

/// Whether `raw` as entry `index` of a `table` stands for the hypervisor's default
/// window-L3, written out again: L4 slot 511, present and naming its frame (any flags; a
/// validated L4 holds it in one form, [`window_l4_entry`]). An empty slot 511 gets it too
/// when the L4 is validated.
fn model_default_window(world: &World, table: PageType, index: usize, raw: u64) -> bool {
    table == PageType::L4 && index == 511 && raw & PteFlags::PRESENT.bits() != 0 && Pte(raw).mfn() == world.window_l3
}

/// The type the table an entry `index` of a `level` table names must take.
fn model_child(level: Level, index: usize) -> PageType {
    match level {
        Level::L4 if index == 511 => PageType::WindowL3,
        Level::L4 => PageType::L3,
        Level::L3 => PageType::L2,
        _ => PageType::L1,
    }
}

fn level_of(page_type: PageType) -> Option<Level> {
    match page_type {
        PageType::L1 => Some(Level::L1),
        PageType::L2 => Some(Level::L2),
        PageType::L3 | PageType::WindowL3 => Some(Level::L3),
        PageType::L4 => Some(Level::L4),
        _ => None,
    }
}

/// An entry's stored form: U/S on, G off in L1 (present entries only).
fn stored(level: Level, raw: u64) -> u64 {
    if raw & PteFlags::PRESENT.bits() == 0 {
        return raw;
    }
    match level {
        Level::L1 => (raw | PteFlags::USER.bits()) & !PteFlags::GLOBAL.bits(),
        _ => raw | PteFlags::USER.bits(),
    }
}

impl Model {
    /// Every frame's expected metadata under these roots and `mem`, with `extra` as a
    /// second value of one entry (an update's new value while the old one is held); `Err`
    /// says why the state is not valid.
    fn expect(
        &self,
        world: &World,
        bases: &[Mfn],
        descriptors: &[Mfn],
        mem: &Ram,
        extra: Option<(Mfn, usize, u64)>,
    ) -> Result<BTreeMap<Mfn, Expected>, String> {
        let mut state = Need {
            world,
            frames: BTreeMap::new(),
            scan: Vec::new(),
        };
        for (&mfn, &page_type) in &self.pins {
            state.typed(mfn, page_type)?;
            state.frames.get_mut(&mfn).unwrap().pinned = true;
        }
        for &mfn in bases {
            state.typed(mfn, PageType::L4)?;
        }
        for &mfn in descriptors {
            state.typed(mfn, PageType::SegmentDescriptors)?;
        }
        while let Some((table, page_type)) = state.scan.pop() {
            let level = level_of(page_type).unwrap();
            for index in (0..ENTRIES).filter(|&i| !model_reserved(page_type, i)) {
                let extra_value = extra
                    .filter(|&(t, i, _)| t == table && i == index)
                    .map(|(_, _, v)| v);
                for raw in core::iter::once(mem.read(table, index)).chain(extra_value) {
                    if raw & PteFlags::PRESENT.bits() == 0 || model_default_window(world, page_type, index, raw) {
                        continue;
                    }
                    if !entry_allowed(level, raw) {
                        return Err(format!("{table}[{index}] = {raw:#x}: bad bits"));
                    }
                    let target = Pte(raw).mfn();
                    match level {
                        Level::L1 if raw & PteFlags::WRITABLE.bits() != 0 => state.typed(target, PageType::None)?,
                        Level::L1 => state.referenced(target)?,
                        _ => state.typed(target, model_child(level, index))?,
                    }
                }
            }
        }
        Ok(state.frames)
    }

    /// The type a pin of `level` takes: the window-L3 type for an L3 that is one in use.
    fn pin_type(&self, now: &BTreeMap<Mfn, Expected>, mfn: Mfn, level: Level) -> PageType {
        let is_window_l3 = now
            .get(&mfn)
            .is_some_and(|e| e.count > 0 && e.page_type == Some(PageType::WindowL3));
        match level {
            Level::L3 if is_window_l3 => PageType::WindowL3,
            _ => level.page_type(),
        }
    }
}

/// The model's derivation in progress.
struct Need<'a> {
    world: &'a World,
    frames: BTreeMap<Mfn, Expected>,
    scan: Vec<(Mfn, PageType)>,
}

impl Need<'_> {
    /// A general reference on `mfn`, which the domain must own.
    fn referenced(&mut self, mfn: Mfn) -> Result<(), String> {
        let owned = self
            .world
            .frames
            .frame(mfn)
            .is_ok_and(|info| info.state() == FrameState::Allocated(Owner::Domain(DOM)));
        if !owned {
            return Err(format!("{mfn} is not the domain's"));
        }
        self.frames.entry(mfn).or_default().refs += 1;
        Ok(())
    }

    /// A general and a `page_type` reference on `mfn`; a table is scanned once.
    fn typed(&mut self, mfn: Mfn, page_type: PageType) -> Result<(), String> {
        self.referenced(mfn)?;
        let frame = self.frames.get_mut(&mfn).unwrap();
        match frame.page_type {
            Some(have) if have != page_type => {
                return Err(format!("{mfn} needed as {have:?} and {page_type:?}"));
            }
            Some(_) => {}
            None => {
                frame.page_type = Some(page_type);
                if level_of(page_type).is_some() {
                    self.scan.push((mfn, page_type));
                }
            }
        }
        frame.count += 1;
        Ok(())
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            world: Tree::write().world,
            model: Model::default(),
            bases: Vec::new(),
            descriptors: Vec::new(),
        }
    }

    fn mfn(&self, frame: Frame) -> Mfn {
        match frame {
            Frame::Own(n) => self.world.owned[usize::from(n)],
            Frame::Foreign => self.world.foreign[0],
            Frame::Hypervisor => self.world.hypervisor,
            Frame::Window => self.world.window_l3,
            Frame::Free => self.world.free,
            Frame::Reserved => RESERVED,
            Frame::Beyond => BEYOND,
        }
    }

    fn value(&self, entry: Entry) -> u64 {
        let mfn = self.mfn(entry.frame);
        let flags = match entry.flags {
            Flags::Rw => PteFlags::PRESENT | PteFlags::WRITABLE,
            Flags::Ro => PteFlags::PRESENT,
            Flags::RwNxAd => {
                PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::NO_EXECUTE | PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::AVAILABLE_LOW | PteFlags::AVAILABLE_HIGH
            }
            Flags::Global => PteFlags::PRESENT | PteFlags::GLOBAL,
            Flags::Huge => PteFlags::PRESENT | PteFlags::HUGE_PAGE,
            Flags::Uncached => PteFlags::PRESENT | PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH,
            Flags::Empty => return 0,
            Flags::Garbage => PteFlags::WRITABLE | PteFlags::AVAILABLE_HIGH,
        };
        Pte::new(mfn, flags).raw()
    }

    fn base_mfns(&self) -> Vec<Mfn> {
        self.bases.iter().map(BasePtr::mfn).collect()
    }

    /// The model's expectation for the current state, which must be valid.
    fn expected_now(&self) -> BTreeMap<Mfn, Expected> {
        self.model
            .expect(
                &self.world,
                &self.base_mfns(),
                &self.descriptors,
                &self.world.ram,
                None,
            )
            .unwrap_or_else(|why| panic!("the model's current state is not valid: {why}"))
    }

    /// Whether the model accepts the state with these extra roots.
    fn valid_with(
        &self,
        pin: Option<(Mfn, PageType)>,
        base: Option<Mfn>,
        descriptor: Option<Mfn>,
    ) -> bool {
        let mut model = self.model.clone();
        if let Some((mfn, page_type)) = pin {
            model.pins.insert(mfn, page_type);
        }
        let mut bases = self.base_mfns();
        bases.extend(base);
        let mut descriptors = self.descriptors.clone();
        descriptors.extend(descriptor);
        model
            .expect(&self.world, &bases, &descriptors, &self.world.ram, None)
            .is_ok()
    }

    fn owned(&self, mfn: Mfn) -> bool {
        self.world
            .frames
            .frame(mfn)
            .is_ok_and(|info| info.state() == FrameState::Allocated(Owner::Domain(DOM)))
    }

    /// Runs `op` on the crate and the model; checks the answer and what changed.
    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let now = self.expected_now();
        let counts_before = self.world.snapshot();
        let memory_before = self.world.ram.clone();
        let mmu = self.world.mmu();
        // (the crate's answer, the model's, the entry an update wrote and its value)
        let (got, want, written): (bool, bool, Option<(Mfn, usize, u64)>) = match op {
            Op::Set {
                table,
                index,
                entry,
                preserve_ad,
            } => {
                let (table, new) = (self.mfn(table), self.value(entry));
                let ad = if preserve_ad {
                    AccessedDirty::Preserve
                } else {
                    AccessedDirty::Overwrite
                };
                let old = self.world.ram.read(table, index % ENTRIES);
                let ram = &mut self.world.ram;
                let got = until_done(|| mmu.mod_entry(table, index, new, ad, DOM, ram))?.is_ok();
                let held = now
                    .get(&table)
                    .filter(|e| e.count > 0)
                    .and_then(|e| e.page_type);
                let (want, value) = match held {
                    _ if index >= ENTRIES || !self.owned(table) => (false, new),
                    Some(page_type) if level_of(page_type).is_some() => {
                        let level = level_of(page_type).unwrap();
                        let clears_window =
                            page_type == PageType::L4 && index == 511 && new & PteFlags::PRESENT.bits() == 0;
                        let allowed = !model_reserved(page_type, index)
                            && !clears_window
                            && self
                                .model
                                .expect(
                                    &self.world,
                                    &self.base_mfns(),
                                    &self.descriptors,
                                    &memory_before,
                                    Some((table, index, new)),
                                )
                                .is_ok();
                        let kept = if preserve_ad {
                            old & (PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits())
                        } else {
                            0
                        };
                        if model_default_window(&self.world, page_type, index, new) {
                            (allowed, window_l4_entry(self.world.window_l3))
                        } else {
                            (allowed, stored(level, new) | kept)
                        }
                    }
                    Some(PageType::SegmentDescriptors | PageType::Shared) => (false, new),
                    _ => (true, new),
                };
                (got, want, Some((table, index, value)))
            }
            Op::Pin { frame, level } => {
                let mfn = self.mfn(frame);
                let page_type = self.model.pin_type(&now, mfn, level);
                let ram = &mut self.world.ram;
                let got = until_done(|| mmu.pin_table(mfn, level, DOM, ram))?.is_ok();
                let want = self.owned(mfn)
                    && !self.model.pins.contains_key(&mfn)
                    && self.valid_with(Some((mfn, page_type)), None, None);
                if got {
                    self.model.pins.insert(mfn, page_type);
                }
                (got, want, None)
            }
            Op::Unpin { frame } => {
                let mfn = self.mfn(frame);
                let ram = &mut self.world.ram;
                let got = until_done(|| mmu.unpin_table(mfn, DOM, ram))?.is_ok();
                let want = self.owned(mfn) && self.model.pins.contains_key(&mfn);
                if got {
                    self.model.pins.remove(&mfn);
                }
                (got, want, None)
            }
            Op::NewBase { frame } => {
                let mfn = self.mfn(frame);
                let want = self.owned(mfn) && self.valid_with(None, Some(mfn), None);
                let ram = &mut self.world.ram;
                let got = match until_done(|| mmu.new_baseptr(mfn, DOM, ram))? {
                    Ok(base) => {
                        self.bases.push(base);
                        true
                    }
                    Err(_) => false,
                };
                (got, want, None)
            }
            Op::PutBase { which } => {
                if !self.bases.is_empty() {
                    let base = self.bases.remove(which % self.bases.len());
                    let l4 = base.mfn();
                    let mut base = Some(base);
                    let ram = &mut self.world.ram;
                    let released = until_done(|| match base.take() {
                        Some(base) => mmu.put_baseptr(base, ram),
                        None => mmu.finish_teardown(l4, ram),
                    })?;
                    prop_assert_eq!(released, Ok(()));
                }
                (true, true, None)
            }
            Op::GetDescriptor { frame } => {
                let mfn = self.mfn(frame);
                let want = self.owned(mfn) && self.valid_with(None, None, Some(mfn));
                let ram = &mut self.world.ram;
                let descriptors = PageType::SegmentDescriptors;
                let got = until_done(|| mmu.get_page_and_type(mfn, descriptors, DOM, ram))?.is_ok();
                if got {
                    self.descriptors.push(mfn);
                }
                (got, want, None)
            }
            Op::PutDescriptor { which } => {
                if !self.descriptors.is_empty() {
                    let mfn = self.descriptors.remove(which % self.descriptors.len());
                    let ram = &mut self.world.ram;
                    prop_assert_eq!(until_done(|| mmu.put_page_and_type(mfn, ram))?, Ok(()));
                }
                (true, true, None)
            }
            Op::Relinquish => {
                for mfn in self.descriptors.drain(..) {
                    let ram = &mut self.world.ram;
                    prop_assert_eq!(until_done(|| mmu.put_page_and_type(mfn, ram))?, Ok(()));
                }
                let bases = core::mem::take(&mut self.bases);
                let result = crate::testkit::relinquish(
                    &mmu,
                    DOM,
                    &self.world.owned,
                    bases,
                    &mut self.world.ram,
                );
                prop_assert_eq!(result, Ok(()));
                self.model.pins.clear();
                for &mfn in &self.world.owned {
                    prop_assert_eq!(
                        self.world.counts(mfn),
                        (0, TypeInfo::NONE),
                        "{} after relinquish",
                        mfn
                    );
                }
                (true, true, None)
            }
        };
        prop_assert_eq!(
            got,
            want,
            "the crate and the model disagree on whether {:?} succeeds",
            op
        );
        if got {
            let except = written.filter(|_| got).map(|(t, i, v)| (t, i % ENTRIES, v));
            if let Some((table, index, value)) = except {
                prop_assert_eq!(
                    self.world.ram.read(table, index),
                    value,
                    "the entry {:?} wrote",
                    op
                );
            }
            only_stored_forms(
                &self.world,
                &memory_before,
                &self.world.ram,
                except.map(|(t, i, _)| (t, i)),
            )?;
        } else {
            prop_assert!(
                self.world.snapshot() == counts_before,
                "the failed {:?} changed counts",
                op
            );
            only_stored_forms(&self.world, &memory_before, &self.world.ram, None)?;
        }
        self.check()
    }

    /// The frame table against the model, and the invariants.
    fn check(&self) -> Result<(), TestCaseError> {
        let expected = self.expected_now();
        for mfn in (0..TABLE_FRAMES).map(Mfn) {
            let want = expected.get(&mfn).copied().unwrap_or_default();
            let (refs, word) = self.world.counts(mfn);
            prop_assert_eq!(refs, want.refs, "general references of {}", mfn);
            prop_assert_eq!(word.count(), want.count, "type count of {}", mfn);
            if want.count == 0 {
                prop_assert_eq!(word, TypeInfo::NONE, "{} is unused", mfn);
                continue;
            }
            let page_type = want.page_type.unwrap();
            prop_assert_eq!(word.page_type(), page_type, "type of {}", mfn);
            let table = level_of(page_type).is_some();
            prop_assert_eq!(
                word.flags().contains(TypeFlags::VALIDATED),
                table,
                "{} validated",
                mfn
            );
            prop_assert_eq!(
                word.flags().contains(TypeFlags::PINNED),
                want.pinned,
                "{} pinned",
                mfn
            );
        }
        // No table or descriptor frame mapped writable, no frame of another owner mapped.
        for table in (0..TABLE_FRAMES).map(Mfn) {
            let (_, word) = self.world.counts(table);
            let Some(level) = level_of(word.page_type()).filter(|_| word.count() > 0) else {
                continue;
            };
            for index in (0..ENTRIES).filter(|&i| !model_reserved(word.page_type(), i)) {
                let raw = self.world.ram.read(table, index);
                let pte = Pte(raw);
                if model_default_window(&self.world, word.page_type(), index, raw) {
                    prop_assert_eq!(raw, window_l4_entry(self.world.window_l3));
                    continue;
                }
                prop_assert!(
                    pte.is_present() || word.page_type() != PageType::L4 || index != 511,
                    "{} is an L4 without slot 511",
                    table
                );
                if !pte.is_present() {
                    continue;
                }
                prop_assert!(
                    self.owned(pte.mfn()),
                    "{}[{}] maps {}, not the domain's",
                    table,
                    index,
                    pte.mfn()
                );
                if level == Level::L1 && pte.is_writable() {
                    let (_, target) = self.world.counts(pte.mfn());
                    prop_assert_eq!(
                        target.page_type(),
                        PageType::None,
                        "{}[{}] maps {} writable",
                        table,
                        index,
                        pte.mfn()
                    );
                }
            }
        }
        self.world.audit_with(&self.base_mfns(), &self.descriptors);
        Ok(())
    }
}

/// Calls `op` again while it returns `Restart` (each call must make progress, so a bounded
/// number of calls must do); its final answer.
fn until_done<T>(
    mut op: impl FnMut() -> Result<T, MmError>,
) -> Result<Result<T, MmError>, TestCaseError> {
    for _ in 0..100_000 {
        match op() {
            Err(MmError::Restart) => continue,
            other => return Ok(other),
        }
    }
    Err(TestCaseError::fail("an operation kept returning Restart"))
}

/// Fails unless every entry that differs between `before` and `after` (but `except`) went
/// into its stored form: U/S set, G cleared, or a hypervisor entry installed (the default
/// window-L3 in an L4's slot 511 among them).
fn only_stored_forms(
    world: &World,
    before: &Ram,
    after: &Ram,
    except: Option<(Mfn, usize)>,
) -> Result<(), TestCaseError> {
    let frames: std::collections::BTreeSet<Mfn> = before
        .contents()
        .into_iter()
        .chain(after.contents())
        .map(|(mfn, _)| mfn)
        .collect();
    for mfn in frames {
        for index in 0..ENTRIES {
            let (was, now) = (before.read(mfn, index), after.read(mfn, index));
            if was == now || except == Some((mfn, index)) {
                continue;
            }
            let normalized = was & PteFlags::PRESENT.bits() != 0
                && (now == stored(Level::L2, was) || now == stored(Level::L1, was));
            let default_window = window_l4_entry(world.window_l3);
            let hypervisor = (index == 511 && (now == HV_L3_ENTRY || now == default_window))
                || (index == 256 && now == M2P_L4_ENTRY)
                || ((256..272).contains(&index) && now == 0);
            prop_assert!(
                normalized || hypervisor,
                "{}[{}] changed from {:#x} to {:#x}",
                mfn,
                index,
                was,
                now
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_operation_sequences_match_the_model(
        loaded in any::<bool>(),
        preempt in prop_oneof![
            1 => Just(Preempt::Never),
            2 => (1u64..u64::MAX, 1u64..12).prop_map(|(seed, one_in)| Preempt::Random { seed, one_in }),
        ],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut harness = Harness::new();
        // Two thirds of the sequences run with operations stopped at random points and
        // called again until they finish.
        harness.world.ram.preempt = preempt;
        harness.check()?;
        if loaded {
            // Half the sequences start on the validated tree, as a running domain does.
            harness.step(Op::NewBase { frame: Frame::Own(0) })?;
            prop_assert_eq!(harness.bases.len(), 1);
        }
        for op in ops {
            harness.step(op)?;
        }
    }
}
