//! Per-frame metadata and the machine frame allocator.
//!
//! [`FrameTable`] holds one 16-byte [`FrameInfo`] for every machine frame from 0 up to
//! the highest frame it was told about, in storage the boot code places in the window.
//! It is the frame allocator and it is where paravirtual memory management keeps each
//! frame's owner, page type, type count, reference count and flags. Boot code builds it
//! once from the usable ranges; every later memory operation calls it. It never hands out
//! a frame outside those ranges, never hands out a frame twice, and never touches the
//! frames themselves, only their metadata.
//!
//! Free frames are threaded into a doubly-linked list through their own metadata: the
//! next link in the word an allocated frame uses for its TLB stamp, the previous link in
//! the owner word (whose top bit says "free"), so `alloc` and `free` are O(1), and so is
//! taking any one free frame off the list: [`FrameTable::alloc_run`] finds an aligned run
//! of free frames (machine-contiguous extents, as Xen's `extent_order`, and frames below an
//! address limit) by scanning the metadata and takes each one out where it lies.
//!
//! Locking: a `spin::Mutex` guards the free list (its head, its count, and the links of
//! every free frame). Under it, a frame reads as free exactly when it is on the list: a
//! frame between the list and an owner (being handed out, or being freed) reads as
//! reserved ([`FrameState::Reserved`]) for that moment. The metadata words are atomics:
//! the owner word is changed by compare-and-swap, and the type word packs type, count and
//! flags so that a single compare-and-swap changes them together, as Xen's
//! `get_page_type` needs.
//!
//! Later extension (not built): one free list per NUMA node, chosen by a node id stored
//! beside each range at construction, with `alloc` taking a preferred node and falling
//! back to the others. The per-frame layout would not change.

use core::sync::atomic::{AtomicU32, Ordering};

use bitflags::bitflags;
use spin::Mutex;

use crate::addr::{page_align_down, page_align_up, Mfn, PAGE_SHIFT};
use crate::memmap::PhysRange;

/// Size of one [`FrameInfo`] in bytes.
pub const FRAME_INFO_SIZE: u64 = 16;
const _: () = assert!(core::mem::size_of::<FrameInfo>() as u64 == FRAME_INFO_SIZE);
const _: () = assert!(core::mem::align_of::<FrameInfo>() == 4);

/// Free-list "no next frame" marker.
const NIL: u32 = u32::MAX;

/// Owner-word values. Zero means reserved, so zero-filled storage is all reserved.
const OWNER_RESERVED: u32 = 0;
/// Off the free list and on the way to an owner, or from one to the list (read as
/// reserved: nobody may use it meanwhile).
const OWNER_CLAIMED: u32 = 1;
const OWNER_HYPERVISOR: u32 = 2;
/// Domain owners are `OWNER_DOMAIN | domain id`.
const OWNER_DOMAIN: u32 = 1 << 16;
/// Free frames: this bit, and the previous frame on the free list in the bits below it
/// ([`PREV_NIL`] for the first).
const OWNER_FREE: u32 = 1 << 31;
/// The previous-frame field of a free frame's owner word, and its "no previous frame"
/// value; also the bound on frames a table can cover (2^31 - 1 frames, just under 8 TiB of
/// machine memory), so that no frame number is either marker.
const PREV_NIL: u32 = OWNER_FREE - 1;

/// Type-word layout: bits 0..=23 type count, 24..=26 page type, 27..=30 flags.
const TYPE_COUNT_MASK: u32 = (1 << 24) - 1;
const TYPE_SHIFT: u32 = 24;
const TYPE_MASK: u32 = 0b111 << TYPE_SHIFT;

/// A domain identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u16);

/// Who an allocated frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The hypervisor itself (heap, stacks, page tables of its own).
    Hypervisor,
    /// A guest domain.
    Domain(DomainId),
}

/// What the allocator knows about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameState {
    /// Not usable RAM, or RAM kept by the hypervisor at boot: never allocated or freed.
    /// (A frame also reads so for the moment it passes between the free list and an
    /// owner, inside `alloc*` or `free`.)
    Reserved,
    /// On the free list.
    Free,
    /// Handed out to an owner.
    Allocated(Owner),
}

impl FrameState {
    fn decode(raw: u32) -> FrameState {
        match raw {
            OWNER_RESERVED | OWNER_CLAIMED => FrameState::Reserved,
            free if free & OWNER_FREE != 0 => FrameState::Free,
            OWNER_HYPERVISOR => FrameState::Allocated(Owner::Hypervisor),
            // Only `encode_owner` writes other values: OWNER_DOMAIN | a u16.
            domain => FrameState::Allocated(Owner::Domain(DomainId(domain as u16))),
        }
    }
}

fn encode_owner(owner: Owner) -> u32 {
    match owner {
        Owner::Hypervisor => OWNER_HYPERVISOR,
        Owner::Domain(DomainId(id)) => OWNER_DOMAIN | u32::from(id),
    }
}

/// The use a guest frame is validated for (Xen's `PGT_*` types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageType {
    /// No special type: ordinary, writable memory.
    None,
    /// Level-1 page table.
    L1,
    /// Level-2 page table.
    L2,
    /// Level-3 page table (plain: linked at any L4 slot but the window's, or pinned).
    L3,
    /// Level-4 page table.
    L4,
    /// GDT or LDT page (segment descriptors).
    SegmentDescriptors,
    /// Shared with another domain.
    Shared,
    /// Level-3 page table under L4 slot 511, whose entry 511 is the hypervisor's window
    /// (as Xen's `PGT_pae_xen_l2`): a type of its own, so that such a table can never be
    /// linked where a plain L3 goes, nor a plain L3 where it goes.
    WindowL3,
}

impl PageType {
    const fn bits(self) -> u32 {
        (self as u32) << TYPE_SHIFT
    }

    /// Decodes the type field (every one of its eight values is a type).
    const fn from_bits(bits: u32) -> PageType {
        match (bits & TYPE_MASK) >> TYPE_SHIFT {
            1 => PageType::L1,
            2 => PageType::L2,
            3 => PageType::L3,
            4 => PageType::L4,
            5 => PageType::SegmentDescriptors,
            6 => PageType::Shared,
            7 => PageType::WindowL3,
            _ => PageType::None,
        }
    }
}

bitflags! {
    /// Flags kept in the type word.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TypeFlags: u32 {
        /// The frame's contents were validated for its current type.
        const VALIDATED = 1 << 27;
        /// The guest pinned the frame to its type (`MMUEXT_PIN_*`).
        const PINNED = 1 << 28;
        /// A validation or devalidation of the frame stopped half-way (preempted, as Xen's
        /// `PGT_partial`); how far it got is in the progress word
        /// ([`FrameInfo::progress`]). Whoever continues it clears the flag.
        const PARTIAL = 1 << 29;
        /// A validated page table whose progress word names a table that an update of it
        /// left half torn down (finished before the table's next update).
        const TEARDOWN = 1 << 30;
    }
}

/// A snapshot of a frame's type word: page type, type count and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo(u32);

impl TypeInfo {
    /// No type, count 0, no flags: the type word of every free frame.
    pub const NONE: TypeInfo = TypeInfo(0);
    /// Largest type count the word holds.
    pub const MAX_COUNT: u32 = TYPE_COUNT_MASK;

    /// The page type.
    pub const fn page_type(self) -> PageType {
        PageType::from_bits(self.0 & TYPE_MASK)
    }

    /// How many references of this type exist.
    pub const fn count(self) -> u32 {
        self.0 & TYPE_COUNT_MASK
    }

    /// The flags.
    pub const fn flags(self) -> TypeFlags {
        TypeFlags::from_bits_truncate(self.0)
    }

    /// The same word with another page type.
    pub const fn with_type(self, page_type: PageType) -> TypeInfo {
        TypeInfo((self.0 & !TYPE_MASK) | page_type.bits())
    }

    /// The same word with another count; `None` if `count` exceeds [`Self::MAX_COUNT`].
    pub const fn with_count(self, count: u32) -> Option<TypeInfo> {
        if count > Self::MAX_COUNT {
            return None;
        }
        Some(TypeInfo((self.0 & !TYPE_COUNT_MASK) | count))
    }

    /// The same word with other flags.
    pub const fn with_flags(self, flags: TypeFlags) -> TypeInfo {
        TypeInfo((self.0 & !TypeFlags::all().bits()) | flags.bits())
    }
}

/// Metadata of one machine frame (16 bytes, `repr(C)`):
///
/// | offset | field       | meaning                                                     |
/// |--------|-------------|-------------------------------------------------------------|
/// | 0      | `owner`     | 0 reserved, 1 in passing (reads as reserved), 2 hypervisor, |
/// |        |             | `0x1_0000 | domid` domain; free: bit 31 and the previous     |
/// |        |             | free frame (`0x7fff_ffff` = none)                            |
/// | 4      | `type_info` | bits 0-23 type count, 24-26 [`PageType`], 27-30 [`TypeFlags`] |
/// | 8      | `ref_count` | general references (mappings, grants, I/O)                  |
/// | 12     | `next_free` | free: the free-list link (next free frame, `u32::MAX` = end); |
/// |        |             | allocated, with [`TypeFlags::PARTIAL`] or [`TypeFlags::TEARDOWN`]: |
/// |        |             | the progress word ([`FrameInfo::progress`]); otherwise the   |
/// |        |             | TLB-flush stamp ([`FrameInfo::tlbflush_stamp`], 0 from allocation on) |
#[repr(C)]
#[derive(Debug)]
pub struct FrameInfo {
    owner: AtomicU32,
    type_info: AtomicU32,
    ref_count: AtomicU32,
    next_free: AtomicU32,
}

impl FrameInfo {
    /// A reserved frame with zero counts (all-zero bytes).
    pub const fn new() -> FrameInfo {
        FrameInfo {
            owner: AtomicU32::new(OWNER_RESERVED),
            type_info: AtomicU32::new(0),
            ref_count: AtomicU32::new(0),
            next_free: AtomicU32::new(NIL),
        }
    }

    /// Reserved, free or allocated to whom.
    pub fn state(&self) -> FrameState {
        FrameState::decode(self.owner.load(Ordering::Acquire))
    }

    /// The owner of an allocated frame; `None` for free and reserved frames.
    pub fn owner(&self) -> Option<Owner> {
        match self.state() {
            FrameState::Allocated(owner) => Some(owner),
            FrameState::Reserved | FrameState::Free => None,
        }
    }

    /// The type word: page type, type count and flags, read together.
    pub fn type_info(&self) -> TypeInfo {
        TypeInfo(self.type_info.load(Ordering::Acquire))
    }

    /// The general reference count.
    pub fn ref_count(&self) -> u32 {
        self.ref_count.load(Ordering::Acquire)
    }

    /// The progress word of an allocated frame: where a preempted validation or
    /// devalidation of it stopped (paravirtual memory management's to encode). Meaningful
    /// only while the type word's flags say so ([`TypeFlags::PARTIAL`],
    /// [`TypeFlags::TEARDOWN`]); it shares its storage with the free-list link, which only
    /// free frames use, and with the TLB-flush stamp, which only frames without those flags
    /// use (whoever ends a partial state and leaves the frame untyped stamps it again).
    pub fn progress(&self) -> u32 {
        self.next_free.load(Ordering::Acquire)
    }

    /// Sets the progress word of an allocated frame (see [`Self::progress`]). Write it
    /// before setting the flag that makes it meaningful.
    pub fn set_progress(&self, value: u32) {
        self.next_free.store(value, Ordering::Release);
    }

    /// Atomically replaces the type word with `f(current)` unless `f` returns `None`;
    /// `f` may run several times under contention. Returns the previous word, or the
    /// current one as the error when `f` declined.
    pub fn update_type_info(
        &self,
        f: impl FnMut(TypeInfo) -> Option<TypeInfo>,
    ) -> Result<TypeInfo, TypeInfo> {
        let mut f = f;
        self.type_info
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |raw| {
                f(TypeInfo(raw)).map(|t| t.0)
            })
            .map(TypeInfo)
            .map_err(TypeInfo)
    }

    /// The TLB-flush stamp of an allocated frame: whatever its user last stored with
    /// [`Self::set_tlbflush_stamp`], 0 from allocation until then. (The word is the free-list
    /// link while the frame is free, and the progress word while a partial state's flag is
    /// set: a free frame's stamp is meaningless, and a frame is stamped again whenever its
    /// last type reference goes, after any partial state ended.)
    pub fn tlbflush_stamp(&self) -> u32 {
        self.next_free.load(Ordering::Acquire)
    }

    /// Records the TLB-flush stamp of an allocated frame (Xen's `tlbflush_timestamp`: when
    /// the last translation of some kind to it was removed). Only for allocated frames, by
    /// a holder of a reference or of the lock that serializes its owner's updates.
    pub fn set_tlbflush_stamp(&self, stamp: u32) {
        self.next_free.store(stamp, Ordering::Release);
    }

    /// Atomically replaces the reference count with `f(current)` unless `f` returns
    /// `None` (use `checked_add`/`checked_sub` to refuse overflow). Returns the previous
    /// count, or the current one as the error when `f` declined.
    pub fn update_ref_count(&self, f: impl FnMut(u32) -> Option<u32>) -> Result<u32, u32> {
        self.ref_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, f)
    }
}

impl Default for FrameInfo {
    fn default() -> FrameInfo {
        FrameInfo::new()
    }
}

/// Why a frame operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free frame left (or fewer than asked for; nothing was allocated).
    OutOfMemory {
        /// Frames asked for.
        requested: u64,
        /// Frames free at the time.
        free: u64,
    },
    /// The frame number is beyond the table.
    OutOfRange(Mfn),
    /// The frame is reserved: it is never allocated or freed.
    Reserved(Mfn),
    /// The frame is free already (double free, or never allocated).
    NotAllocated(Mfn),
    /// The frame still has references and cannot be freed.
    InUse {
        /// The frame.
        mfn: Mfn,
        /// Its general reference count.
        ref_count: u32,
        /// Its type count.
        type_count: u32,
    },
}

/// A snapshot of the allocator's counters, for leak checks: compare one taken before
/// creating domains with one taken after destroying them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames on the free list.
    pub free: u64,
    /// Frames that were usable at construction (free plus allocated).
    pub usable: u64,
}

impl FrameStats {
    /// Frames currently allocated.
    pub const fn allocated(&self) -> u64 {
        self.usable - self.free
    }
}

struct FreeList {
    head: u32,
    count: u64,
}

/// The frame metadata table and frame allocator.
pub struct FrameTable {
    frames: &'static [FrameInfo],
    free: Mutex<FreeList>,
    usable: u64,
}

impl FrameTable {
    /// Builds the table over `storage`, which covers frames `0..storage.len()` (at most
    /// 2^31 - 1 of them).
    ///
    /// Every entry is reset; the whole pages inside `usable` (clipped to the table) become
    /// free and everything else reserved. Overlapping ranges are tolerated. Free frames
    /// are handed out in ascending order at first. `storage` may hold any bytes.
    pub fn new(storage: &'static mut [FrameInfo], usable: &[PhysRange]) -> FrameTable {
        let len = storage.len().min(PREV_NIL as usize);
        let storage = &mut storage[..len];
        storage.iter_mut().for_each(|info| *info = FrameInfo::new());
        let mut list = FreeList {
            head: NIL,
            count: 0,
        };
        for range in usable.iter().rev() {
            let first = page_align_up(range.start).unwrap_or(u64::MAX) >> PAGE_SHIFT;
            let end = (page_align_down(range.end) >> PAGE_SHIFT).min(len as u64);
            for index in (first..end).rev() {
                let index = index as u32;
                if *storage[index as usize].owner.get_mut() & OWNER_FREE != 0 {
                    continue;
                }
                if list.head != NIL {
                    *storage[list.head as usize].owner.get_mut() = OWNER_FREE | index;
                }
                let info = &mut storage[index as usize];
                *info.owner.get_mut() = OWNER_FREE | PREV_NIL;
                *info.next_free.get_mut() = list.head;
                list.head = index;
                list.count += 1;
            }
        }
        let usable = list.count;
        FrameTable {
            frames: storage,
            free: Mutex::new(list),
            usable,
        }
    }

    /// The metadata of `mfn`.
    pub fn frame(&self, mfn: Mfn) -> Result<&FrameInfo, FrameError> {
        usize::try_from(mfn.0)
            .ok()
            .and_then(|index| self.frames.get(index))
            .ok_or(FrameError::OutOfRange(mfn))
    }

    /// Number of frames the table covers (one more than the highest frame number).
    pub fn len(&self) -> u64 {
        self.frames.len() as u64
    }

    /// Whether the table covers no frame at all.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Allocates one frame for `owner`. Its type word is [`TypeInfo::NONE`] and its
    /// reference count 0.
    pub fn alloc(&self, owner: Owner) -> Result<Mfn, FrameError> {
        let mut list = self.free.lock();
        if list.head == NIL {
            return Err(FrameError::OutOfMemory {
                requested: 1,
                free: 0,
            });
        }
        let index = list.head;
        self.unlink(&mut list, index);
        Ok(self.hand_out(index, owner))
    }

    /// Allocates `count` frames for `owner` and appends them to `out`, taking the lock
    /// once (`out` grows outside it). All or nothing: on error no frame is allocated.
    pub fn alloc_many(
        &self,
        owner: Owner,
        count: usize,
        out: &mut impl Extend<Mfn>,
    ) -> Result<(), FrameError> {
        if count == 0 {
            return Ok(());
        }
        let first = {
            let mut list = self.free.lock();
            if list.count < count as u64 {
                return Err(FrameError::OutOfMemory {
                    requested: count as u64,
                    free: list.count,
                });
            }
            // Detach the first `count` frames as a chain: each keeps its next link and
            // reads as reserved until it is handed out below.
            let first = list.head;
            let mut last = first;
            for i in 0..count {
                if i > 0 {
                    last = self.frames[last as usize].next_free.load(Ordering::Relaxed);
                }
                self.frames[last as usize]
                    .owner
                    .store(OWNER_CLAIMED, Ordering::Release);
            }
            list.head = self.frames[last as usize].next_free.load(Ordering::Relaxed);
            if list.head != NIL {
                self.set_prev(list.head, PREV_NIL);
            }
            list.count -= count as u64;
            first
        };
        // The detached chain is ours alone now: walk it outside the lock.
        let mut next = first;
        out.extend((0..count).map(|_| {
            let index = next;
            next = self.frames[index as usize]
                .next_free
                .load(Ordering::Relaxed);
            self.hand_out(index, owner)
        }));
        Ok(())
    }

    /// Allocates `2^order` machine-contiguous frames for `owner`, the first a multiple of
    /// `2^order`, all below frame `below` (`u64::MAX`: anywhere); returns the first.
    /// `OutOfMemory` when no such run is free. Each frame is as [`Self::alloc`] leaves it.
    ///
    /// A single frame below the limit comes off the head of the list when the head
    /// qualifies; otherwise the metadata is scanned from frame 0 up, without the lock, for
    /// a run that reads free, which is then checked and taken under the lock (the lock is
    /// held for the run's own frames only). The scan is O(frames) in the worst case: at
    /// most one read per frame of the table.
    pub fn alloc_run(&self, owner: Owner, order: u32, below: u64) -> Result<Mfn, FrameError> {
        let size = 1u64.checked_shl(order).filter(|&size| size <= self.len());
        let out_of_memory = |size: u64| FrameError::OutOfMemory {
            requested: size,
            free: self.free_count(),
        };
        let Some(size) = size else {
            return Err(out_of_memory(1u64.checked_shl(order).unwrap_or(u64::MAX)));
        };
        let end = below.min(self.len());
        if size == 1 {
            let mut list = self.free.lock();
            let head = list.head;
            if head != NIL && u64::from(head) < end {
                self.unlink(&mut list, head);
                return Ok(self.hand_out(head, owner));
            }
        }
        let is_free = |index: u64| self.frames[index as usize].state() == FrameState::Free;
        let mut base = 0;
        while base + size <= end {
            if (base..base + size).all(is_free) {
                let mut list = self.free.lock();
                // Checked again: under the lock a frame reads free exactly when it is on
                // the list.
                if (base..base + size).all(is_free) {
                    for index in base..base + size {
                        self.unlink(&mut list, index as u32);
                        self.hand_out(index as u32, owner);
                    }
                    return Ok(Mfn(base));
                }
            }
            base += size;
        }
        Err(out_of_memory(size))
    }

    /// Returns an allocated frame to the free list and resets its type word.
    ///
    /// Refuses reserved frames, free frames (double free) and frames with a non-zero
    /// reference or type count. The caller must hold the last reference: a reference
    /// taken concurrently with `free` is a bug in the caller.
    pub fn free(&self, mfn: Mfn) -> Result<(), FrameError> {
        let info = self.frame(mfn)?;
        let mut observed = info.owner.load(Ordering::Acquire);
        loop {
            match FrameState::decode(observed) {
                FrameState::Reserved => return Err(FrameError::Reserved(mfn)),
                FrameState::Free => return Err(FrameError::NotAllocated(mfn)),
                FrameState::Allocated(_) => {}
            }
            let (ref_count, type_count) = (info.ref_count(), info.type_info().count());
            if ref_count != 0 || type_count != 0 {
                return Err(FrameError::InUse {
                    mfn,
                    ref_count,
                    type_count,
                });
            }
            // Claimed first: it reads free only once it is on the list.
            match info.owner.compare_exchange(
                observed,
                OWNER_CLAIMED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => observed = now,
            }
        }
        info.type_info.store(0, Ordering::Relaxed);
        let mut list = self.free.lock();
        // `frame` succeeded, so the index is below `len() <= PREV_NIL`.
        let index = mfn.0 as u32;
        if list.head != NIL {
            self.set_prev(list.head, index);
        }
        info.next_free.store(list.head, Ordering::Relaxed);
        info.owner.store(OWNER_FREE | PREV_NIL, Ordering::Release);
        list.head = index;
        list.count += 1;
        Ok(())
    }

    /// Frames on the free list.
    pub fn free_count(&self) -> u64 {
        self.free.lock().count
    }

    /// Frames that were usable at construction.
    pub fn total_usable(&self) -> u64 {
        self.usable
    }

    /// The allocator's counters.
    pub fn stats(&self) -> FrameStats {
        FrameStats {
            free: self.free_count(),
            usable: self.usable,
        }
    }

    /// Takes free frame `index` off the list (the lock held): it reads as reserved until
    /// the caller hands it out.
    fn unlink(&self, list: &mut FreeList, index: u32) {
        let info = &self.frames[index as usize];
        let prev = info.owner.load(Ordering::Relaxed) & PREV_NIL;
        let next = info.next_free.load(Ordering::Relaxed);
        if prev == PREV_NIL {
            list.head = next;
        } else {
            self.frames[prev as usize]
                .next_free
                .store(next, Ordering::Relaxed);
        }
        if next != NIL {
            self.set_prev(next, prev);
        }
        info.owner.store(OWNER_CLAIMED, Ordering::Release);
        list.count -= 1;
    }

    /// Sets the previous-frame link of free frame `index` (the lock held).
    fn set_prev(&self, index: u32, prev: u32) {
        self.frames[index as usize]
            .owner
            .store(OWNER_FREE | prev, Ordering::Release);
    }

    /// Marks a frame taken off the free list as owned by `owner`.
    fn hand_out(&self, index: u32, owner: Owner) -> Mfn {
        let info = &self.frames[index as usize];
        // No TLB-flush stamp yet (the link word becomes the stamp while allocated).
        info.next_free.store(0, Ordering::Relaxed);
        info.owner.store(encode_owner(owner), Ordering::Release);
        Mfn(u64::from(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;
    use std::collections::HashSet;

    const DOM1: Owner = Owner::Domain(DomainId(1));

    fn range(first: u64, end: u64) -> PhysRange {
        PhysRange {
            start: first * PAGE_SIZE,
            end: end * PAGE_SIZE,
        }
    }

    fn table(frames: usize, usable: &[PhysRange]) -> FrameTable {
        let storage: Vec<FrameInfo> = (0..frames).map(|_| FrameInfo::new()).collect();
        FrameTable::new(Box::leak(storage.into_boxed_slice()), usable)
    }

    #[test]
    fn only_usable_frames_are_handed_out_in_ascending_order() {
        let t = table(32, &[range(4, 7), range(10, 12)]);
        assert_eq!(t.total_usable(), 5);
        assert_eq!(t.free_count(), 5);
        let got: Vec<_> = (0..5)
            .map(|_| t.alloc(Owner::Hypervisor).unwrap().0)
            .collect();
        assert_eq!(got, vec![4, 5, 6, 10, 11]);
        assert_eq!(
            t.alloc(DOM1),
            Err(FrameError::OutOfMemory {
                requested: 1,
                free: 0
            })
        );
        assert_eq!(t.frame(Mfn(3)).unwrap().state(), FrameState::Reserved);
        assert_eq!(t.frame(Mfn(7)).unwrap().state(), FrameState::Reserved);
    }

    #[test]
    fn construction_tolerates_odd_ranges() {
        let bytes = |start, end| PhysRange { start, end };
        let odd = [
            // Beyond the table: clipped to frames 20..24.
            range(20, 40),
            // Unaligned: only frame 2 is whole.
            bytes(0x1800, 0x3800),
            // Overlapping each other: frames 5..9 once.
            range(5, 8),
            range(6, 9),
            // Inverted, and absurdly high: nothing.
            bytes(0x9000, 0x8000),
            bytes(u64::MAX - 5, u64::MAX),
        ];
        let storage: Vec<FrameInfo> = (0..24).map(|_| FrameInfo::new()).collect();
        let storage = Box::leak(storage.into_boxed_slice());
        // Garbage in the storage must not survive construction.
        storage[3].owner = AtomicU32::new(OWNER_FREE);
        storage[3].ref_count = AtomicU32::new(7);
        let t = FrameTable::new(storage, &odd);
        assert_eq!(t.len(), 24);
        assert_eq!(t.total_usable(), 4 + 1 + 4);
        let mut got = Vec::new();
        t.alloc_many(DOM1, 9, &mut got).unwrap();
        got.sort();
        let expected: Vec<_> = [2, 5, 6, 7, 8, 20, 21, 22, 23]
            .into_iter()
            .map(Mfn)
            .collect();
        assert_eq!(got, expected);
        assert_eq!(t.frame(Mfn(3)).unwrap().state(), FrameState::Reserved);
        assert_eq!(t.frame(Mfn(3)).unwrap().ref_count(), 0);
    }

    #[test]
    fn alloc_sets_owner_and_free_clears_it() {
        let t = table(8, &[range(0, 8)]);
        let mfn = t.alloc(Owner::Domain(DomainId(0xffff))).unwrap();
        let info = t.frame(mfn).unwrap();
        assert_eq!(info.owner(), Some(Owner::Domain(DomainId(0xffff))));
        assert_eq!(
            info.state(),
            FrameState::Allocated(Owner::Domain(DomainId(0xffff)))
        );
        assert_eq!(info.type_info(), TypeInfo::NONE);
        let hv = t.alloc(Owner::Hypervisor).unwrap();
        assert_eq!(t.frame(hv).unwrap().owner(), Some(Owner::Hypervisor));
        t.free(mfn).unwrap();
        assert_eq!(info.owner(), None);
        assert_eq!(info.state(), FrameState::Free);
    }

    #[test]
    fn free_refuses_bad_frames() {
        let t = table(8, &[range(2, 4)]);
        let mfn = t.alloc(DOM1).unwrap();
        assert_eq!(t.free(Mfn(8)), Err(FrameError::OutOfRange(Mfn(8))));
        assert_eq!(
            t.free(Mfn(u64::MAX)),
            Err(FrameError::OutOfRange(Mfn(u64::MAX)))
        );
        assert_eq!(t.free(Mfn(0)), Err(FrameError::Reserved(Mfn(0))));
        assert_eq!(t.free(Mfn(3)), Err(FrameError::NotAllocated(Mfn(3))));
        t.free(mfn).unwrap();
        assert_eq!(
            t.free(mfn),
            Err(FrameError::NotAllocated(mfn)),
            "double free"
        );
        assert_eq!(t.free_count(), 2);
    }

    #[test]
    fn free_refuses_referenced_frames_and_resets_the_type() {
        let t = table(4, &[range(0, 4)]);
        let mfn = t.alloc(DOM1).unwrap();
        let info = t.frame(mfn).unwrap();
        info.update_ref_count(|c| c.checked_add(1)).unwrap();
        assert_eq!(
            t.free(mfn),
            Err(FrameError::InUse {
                mfn,
                ref_count: 1,
                type_count: 0
            })
        );
        info.update_ref_count(|c| c.checked_sub(1)).unwrap();
        let pinned = TypeInfo::NONE
            .with_type(PageType::L1)
            .with_flags(TypeFlags::PINNED);
        info.update_type_info(|_| pinned.with_count(2)).unwrap();
        assert_eq!(
            t.free(mfn),
            Err(FrameError::InUse {
                mfn,
                ref_count: 0,
                type_count: 2
            })
        );
        info.update_type_info(|t| t.with_count(0)).unwrap();
        t.free(mfn).unwrap();
        assert_eq!(info.type_info(), TypeInfo::NONE);
        assert_eq!(t.free_count(), 4);
    }

    #[test]
    fn type_word_round_trips_every_field() {
        let all = [
            PageType::None,
            PageType::L1,
            PageType::L2,
            PageType::L3,
            PageType::L4,
            PageType::SegmentDescriptors,
            PageType::Shared,
            PageType::WindowL3,
        ];
        for page_type in all {
            for flags in [TypeFlags::empty(), TypeFlags::VALIDATED, TypeFlags::all()] {
                let word = TypeInfo::NONE
                    .with_count(TypeInfo::MAX_COUNT)
                    .unwrap()
                    .with_type(page_type)
                    .with_flags(flags);
                assert_eq!(word.page_type(), page_type);
                assert_eq!(word.flags(), flags);
                assert_eq!(word.count(), TypeInfo::MAX_COUNT);
                let recounted = word.with_count(3).unwrap();
                assert_eq!(
                    (recounted.page_type(), recounted.flags()),
                    (page_type, flags)
                );
            }
        }
        assert_eq!(TypeInfo::NONE.with_count(TypeInfo::MAX_COUNT + 1), None);
        assert_eq!(TypeInfo::NONE.page_type(), PageType::None);
    }

    #[test]
    fn counter_updates_refuse_overflow() {
        let info = FrameInfo::new();
        info.update_ref_count(|_| Some(u32::MAX)).unwrap();
        assert_eq!(info.update_ref_count(|c| c.checked_add(1)), Err(u32::MAX));
        let full = TypeInfo::NONE.with_count(TypeInfo::MAX_COUNT).unwrap();
        info.update_type_info(|_| Some(full)).unwrap();
        let increment = |t: TypeInfo| t.with_count(t.count() + 1);
        assert_eq!(info.update_type_info(increment), Err(full));
        assert_eq!(
            info.update_type_info(|t| t.with_count(t.count() - 1)),
            Ok(full)
        );
    }

    #[test]
    fn alloc_many_is_all_or_nothing() {
        let t = table(16, &[range(0, 10)]);
        let mut out = Vec::new();
        assert_eq!(
            t.alloc_many(DOM1, 11, &mut out),
            Err(FrameError::OutOfMemory {
                requested: 11,
                free: 10
            })
        );
        assert!(out.is_empty());
        assert_eq!(t.free_count(), 10);
        t.alloc_many(DOM1, 0, &mut out).unwrap();
        assert!(out.is_empty());
        t.alloc_many(DOM1, 10, &mut out).unwrap();
        assert_eq!(out.len(), 10);
        assert!(out
            .iter()
            .all(|&m| t.frame(m).unwrap().owner() == Some(DOM1)));
        assert_eq!(t.free_count(), 0);
    }

    /// Walks the free list and checks it against the metadata: every link both ways, the
    /// count, and that exactly the frames on it read free.
    fn check_free_list(t: &FrameTable) {
        let list = t.free.lock();
        let mut on_list = HashSet::new();
        let (mut index, mut prev) = (list.head, PREV_NIL);
        while index != NIL {
            let owner = t.frames[index as usize].owner.load(Ordering::Relaxed);
            assert_eq!(owner, OWNER_FREE | prev, "frame {index}: previous link");
            assert!(on_list.insert(index), "frame {index} twice on the list");
            prev = index;
            index = t.frames[index as usize].next_free.load(Ordering::Relaxed);
        }
        assert_eq!(on_list.len() as u64, list.count);
        for (i, info) in t.frames.iter().enumerate() {
            assert_eq!(
                info.state() == FrameState::Free,
                on_list.contains(&(i as u32)),
                "frame {i}"
            );
        }
    }

    #[test]
    fn runs_are_aligned_contiguous_and_below_the_limit() {
        let t = table(64, &[range(1, 64)]);
        // Frame 0 is reserved: the first aligned run of 8 starts at 8.
        let run = t.alloc_run(DOM1, 3, u64::MAX).unwrap();
        assert_eq!(run, Mfn(8));
        for i in 8..16 {
            let info = t.frame(Mfn(i)).unwrap();
            assert_eq!(info.owner(), Some(DOM1));
            assert_eq!(info.type_info(), TypeInfo::NONE);
            assert_eq!(info.tlbflush_stamp(), 0);
        }
        assert_eq!(t.free_count(), 63 - 8);
        check_free_list(&t);
        // One frame taken out of the middle of the next run: it is skipped.
        let hole = t.alloc_run(DOM1, 0, 21).unwrap();
        assert_eq!(hole, Mfn(1), "the head qualifies");
        let mut taken = Vec::new();
        while let Ok(mfn) = t.alloc_run(DOM1, 0, 20) {
            taken.push(mfn);
        }
        assert_eq!(
            taken.len(),
            6 + 4,
            "frames 2..8 and 16..20 are the free ones below 20"
        );
        assert!(taken.iter().all(|m| m.0 < 20));
        check_free_list(&t);
        for mfn in taken.drain(..) {
            if mfn.0 != 18 {
                t.free(mfn).unwrap();
            }
        }
        check_free_list(&t);
        // Frame 18 is in use: 16..24 is no run of 8, 24..32 is.
        assert_eq!(t.alloc_run(DOM1, 3, u64::MAX), Ok(Mfn(24)));
        let free = t.free_count();
        assert_eq!(
            t.alloc_run(DOM1, 3, 24),
            Err(FrameError::OutOfMemory { requested: 8, free }),
            "no run of 8 below frame 24"
        );
        assert_eq!(t.alloc_run(DOM1, 5, u64::MAX), Ok(Mfn(32)));
        assert!(matches!(
            t.alloc_run(DOM1, 5, u64::MAX),
            Err(FrameError::OutOfMemory { requested: 32, .. })
        ));
        assert!(matches!(
            t.alloc_run(DOM1, 7, u64::MAX),
            Err(FrameError::OutOfMemory { requested: 128, .. })
        ));
        assert!(matches!(
            t.alloc_run(DOM1, 64, u64::MAX),
            Err(FrameError::OutOfMemory { .. })
        ));
        check_free_list(&t);
        for i in (8..16).chain(24..64) {
            t.free(Mfn(i)).unwrap();
        }
        t.free(Mfn(1)).unwrap();
        t.free(Mfn(18)).unwrap();
        check_free_list(&t);
        assert_eq!(t.free_count(), 63);
    }

    proptest::proptest! {
        /// Any mix of single, batched and contiguous allocations and frees keeps the free
        /// list exact (links, count, free frames), never hands a frame out twice, and
        /// gives every run aligned, below its limit and whole.
        #[test]
        fn any_mix_of_allocations_keeps_the_list_exact(
            ops in proptest::collection::vec((0u8..4, 0u32..5, 1u64..80, 0usize..64), 1..120)
        ) {
            let t = table(72, &[range(1, 40), range(44, 72)]);
            let mut held: Vec<Mfn> = Vec::new();
            for (kind, order, below, pick) in ops {
                match kind {
                    0 => if let Ok(mfn) = t.alloc(DOM1) { held.push(mfn) },
                    1 => { let _ = t.alloc_many(DOM1, (order * 3) as usize, &mut held); }
                    2 => if let Ok(run) = t.alloc_run(DOM1, order, below) {
                        let size = 1u64 << order;
                        proptest::prop_assert_eq!(run.0 % size, 0);
                        proptest::prop_assert!(run.0 + size <= below);
                        held.extend((0..size).map(|i| Mfn(run.0 + i)));
                    },
                    _ => if !held.is_empty() {
                        let mfn = held.swap_remove(pick % held.len());
                        proptest::prop_assert_eq!(t.free(mfn), Ok(()));
                    },
                }
                let unique: HashSet<Mfn> = held.iter().copied().collect();
                proptest::prop_assert_eq!(unique.len(), held.len());
                proptest::prop_assert_eq!(t.stats().allocated(), held.len() as u64);
                check_free_list(&t);
            }
        }
    }

    #[test]
    fn frames_in_passing_read_reserved() {
        let info = FrameInfo::new();
        info.owner.store(OWNER_CLAIMED, Ordering::Relaxed);
        assert_eq!(info.state(), FrameState::Reserved);
        assert_eq!(info.owner(), None);
        for prev in [0, 5, PREV_NIL] {
            info.owner.store(OWNER_FREE | prev, Ordering::Relaxed);
            assert_eq!(info.state(), FrameState::Free);
        }
    }

    #[test]
    fn hundred_domains_leave_no_leak_and_run_fast() {
        const DOMAINS: u16 = 100;
        const FRAMES_EACH: usize = 1024;
        let t = table(120_000, &[range(256, 120_000)]);
        let before = t.stats();
        let mut owned: Vec<Vec<Mfn>> = Vec::new();
        for dom in 0..DOMAINS {
            let mut frames = Vec::with_capacity(FRAMES_EACH);
            t.alloc_many(Owner::Domain(DomainId(dom)), FRAMES_EACH, &mut frames)
                .unwrap();
            owned.push(frames);
        }
        let unique: HashSet<Mfn> = owned.iter().flatten().copied().collect();
        assert_eq!(unique.len(), DOMAINS as usize * FRAMES_EACH);
        assert_eq!(t.stats().allocated(), unique.len() as u64);
        for (dom, frames) in owned.iter().enumerate() {
            for &mfn in frames {
                assert_eq!(
                    t.frame(mfn).unwrap().owner(),
                    Some(Owner::Domain(DomainId(dom as u16)))
                );
                t.free(mfn).unwrap();
            }
        }
        assert_eq!(t.stats(), before);
    }

    #[test]
    fn concurrent_alloc_and_free_never_duplicate() {
        let t: &'static FrameTable = Box::leak(Box::new(table(4096, &[range(0, 4096)])));
        let before = t.stats();
        let workers: Vec<_> = (0..4u16)
            .map(|w| {
                std::thread::spawn(move || {
                    let owner = Owner::Domain(DomainId(w));
                    let mut held = Vec::new();
                    for round in 0..2000 {
                        if round % 3 == 2 {
                            for mfn in held.drain(..) {
                                t.free(mfn).unwrap();
                            }
                        } else {
                            t.alloc_many(owner, 7, &mut held).unwrap();
                            held.push(t.alloc(owner).unwrap());
                            // A run, when one is free (others may hold every one).
                            if let Ok(run) = t.alloc_run(owner, 2, u64::MAX) {
                                assert_eq!(run.0 % 4, 0);
                                held.extend((0..4).map(|i| Mfn(run.0 + i)));
                            }
                        }
                        for &mfn in &held {
                            assert_eq!(t.frame(mfn).unwrap().owner(), Some(owner));
                        }
                    }
                    held
                })
            })
            .collect();
        let held: Vec<Vec<Mfn>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let mut all = HashSet::new();
        for frames in held {
            for mfn in frames {
                assert!(all.insert(mfn), "{mfn} handed out twice");
                t.free(mfn).unwrap();
            }
        }
        assert_eq!(t.stats(), before);
        check_free_list(t);
    }
}
