//! Short-lived mappings of one machine frame in this CPU's temporary-mapping slots
//! ([`FrameMapping`]), and the typed views of the mapped frame that are the rest of the
//! hypervisor's only way into a frame's memory: its bytes, an atomic word at an offset,
//! or a plain-data value (a type marked [`AnyBitPattern`]) at an offset, each borrowed
//! from the mapping so that it cannot outlive it.
//!
//! The slots are 16 pages per CPU in the window region `mm::layout` places for them
//! ([`set_base`]); a mapping takes a free slot of the CPU it is made on, maps the frame
//! there (the page table entry must have been empty), and unmaps it (invalidating it on
//! this CPU) when dropped. A mapping is never shared with other CPUs (it is not `Send`).
//!
//! Frames mapped here are often mapped elsewhere too: by the guest that owns them (which
//! may write them from its own CPUs at any time), or by another CPU's mapping. Views that
//! other writers may race with are atomics ([`FrameMapping::atomic`]) or volatile copies
//! ([`FrameMapping::read`], [`FrameMapping::write`]); [`FrameMapping::bytes`] and
//! [`FrameMapping::view_mut`] are for frames the hypervisor alone writes at the time, or
//! for fields whose hand-over protocol says so (see `pv::shared`).
//!
//! Who decides which frame is mapped, and why, is the caller's business (`memory`, `pv`).

use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use mm::addr::{Mfn, PAGE_SIZE};
use mm::layout::TEMP_SLOTS_PER_CPU;
use spin::Once;

use super::paging::{self, MapKind};
use super::percpu;
pub use super::view::{AnyBitPattern, Shared};

/// Size of a frame, as an index bound.
const FRAME_BYTES: usize = PAGE_SIZE as usize;

/// First page of the temporary-mapping region (every CPU's slots, CPU by CPU).
static BASE: Once<u64> = Once::new();

/// Sets the window range the slots come from: `TEMP_SLOTS_PER_CPU` pages for each CPU,
/// from `base`. Before it, no mapping can be made ([`FrameMapping::new`] is `None`).
pub fn set_base(base: u64) {
    BASE.call_once(|| base);
}

/// A short-lived mapping of one machine frame in this CPU's temporary-mapping slots.
/// Unmapped (and invalidated on this CPU) when dropped; never shared with other CPUs.
pub struct FrameMapping {
    slot: u32,
    va: u64,
    /// Mapped writable (`new`), or read-only (`read_only`: the writing views panic).
    writable: bool,
    /// Not `Send` nor `Sync`: the slot and its translation are this CPU's.
    _cpu: PhantomData<*mut u8>,
}

impl FrameMapping {
    /// Maps `mfn` writable; `None` when all of this CPU's slots are in use.
    pub fn new(mfn: Mfn) -> Option<FrameMapping> {
        Self::with_kind(mfn, MapKind::Data)
    }

    /// Maps `mfn` read-only (a boot module): only the reading views ([`Self::bytes_ref`],
    /// [`Self::read`], loads through [`Self::atomic`]) may be used; the writing ones panic.
    pub fn read_only(mfn: Mfn) -> Option<FrameMapping> {
        Self::with_kind(mfn, MapKind::ReadOnly)
    }

    fn with_kind(mfn: Mfn, kind: MapKind) -> Option<FrameMapping> {
        let cpu = percpu::current();
        let slots = &cpu.temp_slots;
        let base = *BASE.get()?;
        // Claimed with one atomic step, so that a nested trap (an NMI or #MC) taking a slot
        // meanwhile cannot be handed the same one.
        let slot = loop {
            let taken = slots.load(Ordering::Relaxed);
            let slot = (!taken).trailing_zeros();
            if slot as u64 >= TEMP_SLOTS_PER_CPU {
                return None;
            }
            if slots.fetch_or(1 << slot, Ordering::Relaxed) & (1 << slot) == 0 {
                break slot;
            }
        };
        let va = base + (cpu.index.0 as u64 * TEMP_SLOTS_PER_CPU + slot as u64) * PAGE_SIZE;
        // `map_pinned` fails unless the entry was empty: from here to the drop, the page at
        // `va` maps `mfn` for this mapping alone, and nothing but the drop unmaps it.
        if paging::map_pinned(va, mfn.addr().0, kind).is_err() {
            slots.fetch_and(!(1 << slot), Ordering::Relaxed);
            return None;
        }
        Some(FrameMapping { slot, va, writable: kind == MapKind::Data, _cpu: PhantomData })
    }

    /// The frame's bytes (of a writable mapping: panics on a read-only one).
    pub fn bytes(&mut self) -> &mut [u8; FRAME_BYTES] {
        assert!(self.writable, "writing a read-only frame mapping");
        // SAFETY: `va` maps one whole frame, page aligned, for as long as `self` lives, on
        // this CPU only; the borrow of `self` keeps every other view of it away meanwhile.
        unsafe { &mut *(self.va as *mut [u8; FRAME_BYTES]) }
    }

    /// The frame's bytes, to read (of a read-only mapping too). Borrows the mapping
    /// mutably, so that no atomic view of it can write under the bytes.
    pub fn bytes_ref(&mut self) -> &[u8; FRAME_BYTES] {
        // SAFETY: `va` maps one whole frame (readable whatever its kind) for as long as
        // `self` lives, on this CPU only; the mutable borrow of `self` keeps every other
        // view of it away meanwhile.
        unsafe { &*(self.va as *const [u8; FRAME_BYTES]) }
    }

    /// The atomic `T` at byte `offset` of the frame. Panics unless `offset` is aligned for
    /// `T` and the `T` lies inside the frame (a caller's bug: offsets come from layouts).
    pub fn atomic<T: Shared>(&self, offset: usize) -> &T {
        let address = self.checked(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: `address` is aligned for `T` with the `T` inside the frame (checked),
        // which stays mapped while `self` is borrowed; `T: Shared` is valid for any bits
        // and only accessed atomically, so concurrent writers of the frame are fine.
        unsafe { &*(address as *const T) }
    }

    /// The `T` at byte `offset` of the frame, to read and write in place. Panics unless
    /// `offset` is aligned for `T` and the `T` lies inside the frame.
    pub fn view_mut<T: AnyBitPattern>(&mut self, offset: usize) -> &mut T {
        assert!(self.writable, "writing a read-only frame mapping");
        let address = self.checked(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: aligned, inside the frame (checked), mapped while `self` is borrowed
        // (mutably: no other view of this mapping meanwhile); any bits are a valid `T`.
        unsafe { &mut *(address as *mut T) }
    }

    /// A volatile copy of the `T` at byte `offset` (a value other mappings may be writing:
    /// the copy is of the bytes as they are). Panics unless `offset` is aligned for `T`
    /// and the `T` lies inside the frame.
    pub fn read<T: AnyBitPattern + Copy>(&self, offset: usize) -> T {
        let address = self.checked(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: aligned, inside the frame (checked) and mapped while `self` lives; any
        // bits are a valid `T`.
        unsafe { (address as *const T).read_volatile() }
    }

    /// Writes `value` at byte `offset` with one volatile store. Panics unless `offset` is
    /// aligned for `T` and the `T` lies inside the frame.
    pub fn write<T: AnyBitPattern>(&mut self, offset: usize, value: T) {
        assert!(self.writable, "writing a read-only frame mapping");
        let address = self.checked(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: aligned, inside the frame (checked), mapped while `self` is borrowed
        // mutably.
        unsafe { (address as *mut T).write_volatile(value) }
    }

    /// The address of byte `offset`, after checking that `size` bytes from it lie in the
    /// frame and that it is `align`-aligned (the frame is page aligned).
    fn checked(&self, offset: usize, size: usize, align: usize) -> u64 {
        assert!(
            offset.is_multiple_of(align) && offset.checked_add(size).is_some_and(|end| end <= FRAME_BYTES),
            "frame view of {size} bytes at {offset}"
        );
        self.va + offset as u64
    }
}

impl Drop for FrameMapping {
    fn drop(&mut self) {
        paging::unmap_pinned(self.va);
        percpu::current().temp_slots.fetch_and(!(1 << self.slot), Ordering::Relaxed);
    }
}

/// Self-check on a frame the caller owns (its contents are overwritten): the views see
/// the same memory (an atomic store in the bytes, a volatile write read back, a plain-data
/// view's field in the bytes, a read-only mapping reading it), and the mapping is pinned:
/// `paging::unmap` and `paging::protect` leave it, and only the drop removes it.
pub fn check_views(mfn: Mfn) -> (bool, alloc::string::String) {
    let Some(mut map) = FrameMapping::new(mfn) else { return (false, "no temporary mapping slot".into()) };
    let va = map.va;
    map.bytes().fill(0);
    let atomic: &core::sync::atomic::AtomicU64 = map.atomic(8);
    atomic.store(0x1122_3344_5566_7788, Ordering::Relaxed);
    let atomic_seen = map.bytes_ref()[8..16] == 0x1122_3344_5566_7788u64.to_le_bytes();
    map.write::<u32>(16, 0xdead_beef);
    let write_seen = map.read::<u32>(16) == 0xdead_beef;
    map.view_mut::<abi::shared_info::VcpuInfo>(64).evtchn_pending_sel = 0x0102_0304;
    let view_seen = map.bytes_ref()[72..80] == 0x0102_0304u64.to_le_bytes();
    let unmap_refused = paging::unmap(va).is_none() && paging::translate(va) == Some(mfn.addr().0);
    let protect_refused = paging::protect(va, MapKind::ReadOnly).is_err();
    drop(map);
    let dropped = paging::translate(va).is_none();
    let read_only_seen = FrameMapping::read_only(mfn).is_some_and(|map| map.read::<u64>(8) == 0x1122_3344_5566_7788);
    let ok = atomic_seen && write_seen && view_seen && unmap_refused && protect_refused && dropped && read_only_seen;
    let detail = alloc::format!(
        "atomic {atomic_seen}, volatile write {write_seen}, vcpu_info view {view_seen}, read-only mapping {read_only_seen}; unmap refused {unmap_refused}, protect refused {protect_refused}, gone after drop {dropped}"
    );
    (ok, detail)
}
