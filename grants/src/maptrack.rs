//! One domain's maptrack: the grants of other domains (or its own) it has mapped, one
//! entry per successful `map_grant_ref`, whose index is the handle the guest unmaps with.
//!
//! The hypervisor keeps one [`Maptrack`] per domain behind a lock and holds it only for the
//! few steps here: a map [`Maptrack::reserve`]s a handle before it pins anything and
//! [`Maptrack::fill`]s (or [`Maptrack::cancel`]s) it after; an unmap takes the entry
//! ([`Maptrack::begin_unmap`]: it is marked busy, so that two unmaps of one handle on two
//! vCPUs cannot both release it, XSA-218/XSA-228) and gives it back with what it undid
//! ([`Maptrack::end_unmap`]); domain destruction drains every entry
//! ([`Maptrack::take_next`]). Each entry remembers what the map took (host and/or device
//! mapping, read-only or not, the frame), so that exactly that is released, whatever the
//! granter does with its entry meanwhile. Handles are bounded ([`DEFAULT_MAX_MAPS`]) and
//! the table grows in small chunks, fallibly. This module never touches a frame or a page
//! table.

use alloc::vec::Vec;

use abi::grant_table::{GntSt, GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY};
use abi::ids::DomId;
use mm::addr::Mfn;

/// The most mappings one domain may hold at once, unless its creator says otherwise
/// (Xen's default allows 1024 frames of 256; this hypervisor's heap is smaller).
pub const DEFAULT_MAX_MAPS: u32 = 2048;
/// Handles added at a time when the table grows.
const CHUNK: usize = 64;
const NO_SLOT: u32 = u32::MAX;

/// One mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// The granting domain.
    pub granter: DomId,
    pub gref: u32,
    /// The `GNTMAP_*` flags that are still mapped (host and/or device; read-only; how
    /// `host_addr` was given; available bits).
    pub flags: u32,
    /// The granted frame.
    pub mfn: Mfn,
}

impl MapEntry {
    pub const fn readonly(&self) -> bool {
        self.flags & GNTMAP_READONLY != 0
    }

    pub const fn host(&self) -> bool {
        self.flags & GNTMAP_HOST_MAP != 0
    }

    pub const fn device(&self) -> bool {
        self.flags & GNTMAP_DEVICE_MAP != 0
    }
}

/// What an unmap request undoes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapPlan {
    /// Remove the host mapping (the PTE at `host_addr`).
    pub host: bool,
    /// Drop the device mapping.
    pub device: bool,
}

impl UnmapPlan {
    /// Xen's `unmap_common` rules: a non-zero `dev_bus_addr` must be the frame's bus
    /// address (a machine address, for a PV domain without an IOMMU); a host mapping is
    /// undone when `host_addr` is non-zero, a device mapping when `dev_bus_addr` is; a
    /// request that names neither does nothing and succeeds.
    pub fn for_request(entry: &MapEntry, host_addr: u64, dev_bus_addr: u64) -> Result<UnmapPlan, GntSt> {
        if dev_bus_addr != 0 && dev_bus_addr != entry.mfn.0 << 12 {
            return Err(GntSt::GeneralError);
        }
        Ok(UnmapPlan { host: host_addr != 0 && entry.host(), device: dev_bus_addr != 0 && entry.device() })
    }

    /// The flags this plan removes from an entry.
    pub const fn flags(&self) -> u32 {
        (if self.host { GNTMAP_HOST_MAP } else { 0 }) | (if self.device { GNTMAP_DEVICE_MAP } else { 0 })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free { next: u32 },
    /// Handed out to a map in progress.
    Reserved,
    Live { entry: MapEntry, busy: bool },
}

/// One domain's mappings.
#[derive(Debug)]
pub struct Maptrack {
    slots: Vec<Slot>,
    free: u32,
    live: u32,
    limit: u32,
}

impl Maptrack {
    /// An empty maptrack of at most `limit` handles.
    pub const fn new(limit: u32) -> Maptrack {
        Maptrack { slots: Vec::new(), free: NO_SLOT, live: 0, limit }
    }

    /// Mappings held (and maps in progress).
    pub const fn live(&self) -> u32 {
        self.live
    }

    /// Heap bytes the next [`Self::reserve`] may allocate, for the caller's room check.
    pub fn growth_bytes(&self) -> usize {
        if self.free != NO_SLOT || self.slots.len() < self.slots.capacity() {
            0
        } else {
            (self.slots.len() + CHUNK) * size_of::<Slot>()
        }
    }

    /// A handle for a map in progress: `NoDeviceSpace` when the domain holds its limit (or
    /// the table cannot grow), as Xen when it finds no free maptrack handle.
    pub fn reserve(&mut self) -> Result<u32, GntSt> {
        if self.free == NO_SLOT {
            let len = self.slots.len();
            let grow = CHUNK.min((self.limit as usize).saturating_sub(len));
            if grow == 0 || self.slots.try_reserve(grow).is_err() {
                return Err(GntSt::NoDeviceSpace);
            }
            // Room is reserved: this does not allocate.
            self.slots.resize(len + grow, Slot::Free { next: NO_SLOT });
            // Thread the new slots onto the free list, lowest first.
            for index in (len..len + grow).rev() {
                self.slots[index] = Slot::Free { next: self.free };
                self.free = index as u32;
            }
        }
        let handle = self.free;
        let Slot::Free { next } = self.slots[handle as usize] else {
            unreachable!("the free list names only free slots");
        };
        self.free = next;
        self.slots[handle as usize] = Slot::Reserved;
        self.live += 1;
        Ok(handle)
    }

    /// Records the mapping a reserved handle stands for.
    pub fn fill(&mut self, handle: u32, entry: MapEntry) {
        if let Some(slot @ Slot::Reserved) = self.slots.get_mut(handle as usize) {
            *slot = Slot::Live { entry, busy: false };
        }
    }

    /// Gives back a reserved handle whose map failed.
    pub fn cancel(&mut self, handle: u32) {
        if matches!(self.slots.get(handle as usize), Some(Slot::Reserved)) {
            self.release(handle);
        }
    }

    fn release(&mut self, handle: u32) {
        self.slots[handle as usize] = Slot::Free { next: self.free };
        self.free = handle;
        self.live -= 1;
    }

    /// The mapping `handle` stands for, marked busy until [`Self::end_unmap`]: `BadHandle`
    /// for a handle that maps nothing, or that another unmap holds.
    pub fn begin_unmap(&mut self, handle: u32) -> Result<MapEntry, GntSt> {
        match self.slots.get_mut(handle as usize) {
            Some(Slot::Live { entry, busy }) if !*busy => {
                *busy = true;
                Ok(*entry)
            }
            _ => Err(GntSt::BadHandle),
        }
    }

    /// Ends the unmap [`Self::begin_unmap`] started: the flags in `undone` are no longer
    /// mapped; with neither a host nor a device mapping left the handle is free again.
    /// Returns the entry as it was before.
    pub fn end_unmap(&mut self, handle: u32, undone: u32) -> Option<MapEntry> {
        let Some(Slot::Live { entry, busy }) = self.slots.get_mut(handle as usize) else { return None };
        let before = *entry;
        entry.flags &= !undone;
        *busy = false;
        if !entry.host() && !entry.device() {
            self.release(handle);
        }
        Some(before)
    }

    /// Takes out any one mapping (for the domain's destruction, when nothing else uses
    /// the maptrack); `None` once there is none.
    pub fn take_next(&mut self) -> Option<MapEntry> {
        let handle = self.slots.iter().position(|s| matches!(s, Slot::Live { .. }))?;
        let Slot::Live { entry, .. } = self.slots[handle] else { unreachable!("found live") };
        self.release(handle as u32);
        Some(entry)
    }

    /// The mapping `handle` stands for, if any.
    pub fn get(&self, handle: u32) -> Option<MapEntry> {
        match self.slots.get(handle as usize) {
            Some(Slot::Live { entry, .. }) => Some(*entry),
            _ => None,
        }
    }

    /// Gives the heap back once nothing is mapped.
    pub fn shrink_if_empty(&mut self) {
        if self.live == 0 {
            self.slots = Vec::new();
            self.free = NO_SLOT;
        }
    }
}
