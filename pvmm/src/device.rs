//! Device memory in PV page tables: L1 entries that map frames of a PCI device's registers
//! (its BARs) for a domain that drives the device (domain 0), as Xen's `get_page_from_l1e`
//! does for frames outside RAM that `iomem_access_permitted` lets the domain map.
//!
//! The hypervisor gives every view ([`crate::PvMmu::with_device_memory`]) the same
//! [`DeviceMemory`]: which frames are device memory (fixed at boot, disjoint from RAM and
//! from the hypervisor's own devices: `pci::IoRanges`), and which domain may map them.
//! Such an entry holds no reference (the frame has no metadata to count in, or none that
//! matters: it is never allocated), so it is recognised again by its frame when it is
//! removed, replaced or torn down; that is why the set may never change while the run
//! lasts. Only L1 entries: a device frame as a page table, or through a huge page, is
//! refused like any frame the domain does not own.
//!
//! What such an entry may hold: the bits of any L1 entry, plus PWT and PCD; both are
//! forced on (uncacheable, PAT entry 3 as the hypervisor leaves PAT), since a device
//! register must never be cached or have its writes combined. PAT (bit 7) stays refused.
//! A domain the set does not name gets [`MmError::NotDeviceOwner`]; RAM, the
//! hypervisor's devices and every other frame never reach this path, so PWT and PCD on
//! them stay refused as before ([`crate::policy`]).

use mm::addr::Mfn;
use mm::frame::DomainId;

use crate::entry::{Pte, PteFlags};
use crate::error::MmError;
use crate::level::Level;
use crate::policy::{normalize, Checked};
use crate::refs::PvMmu;

/// The device-memory frames of the run and who may map them.
pub trait DeviceMemory {
    /// Whether `mfn` is device memory. Must give the same answer for the whole run.
    fn is_device(&self, mfn: Mfn) -> bool;
    /// Whether `dom` may map device frame `mfn`.
    fn may_map(&self, mfn: Mfn, dom: DomainId) -> bool;
}

/// The cache bits a device mapping always has: uncacheable.
pub const UNCACHED: PteFlags = PteFlags::WRITE_THROUGH.union(PteFlags::CACHE_DISABLE);

impl PvMmu<'_> {
    /// Whether this view knows `mfn` as device memory.
    pub(crate) fn is_device_memory(&self, mfn: Mfn) -> bool {
        self.device.is_some_and(|device| device.is_device(mfn))
    }

    /// The stored form of L1 entry `raw` when it maps device memory: `Ok(None)` when it
    /// does not (not an L1 entry, not present, or not a device frame), for the ordinary
    /// checks; an error when `dom` may not map it or it sets bits no L1 entry may.
    pub(crate) fn device_entry(&self, level: Level, raw: u64, dom: DomainId) -> Result<Option<u64>, MmError> {
        let pte = Pte(raw);
        if level != Level::L1 || !pte.is_present() || !self.is_device_memory(pte.mfn()) {
            return Ok(None);
        }
        let device = self.device.expect("is_device_memory said so");
        if !device.may_map(pte.mfn(), dom) {
            return Err(MmError::NotDeviceOwner { mfn: pte.mfn(), dom });
        }
        if pte.flags().contains(PteFlags::PAT_4K) {
            return Err(MmError::BadFlags { level, bits: PteFlags::PAT_4K });
        }
        // The ordinary bit checks, without the cache bits this path allows.
        match self.layout.check(level, pte.without(UNCACHED).raw())? {
            Checked::Present(_) => Ok(Some(Pte(normalize(level, raw)).with(UNCACHED).raw())),
            Checked::NotPresent => Ok(None),
        }
    }
}
