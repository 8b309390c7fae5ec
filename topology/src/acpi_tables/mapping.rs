//! The only place ACPI memory is touched: asks the hypervisor's [`AcpiHandler`] to map a
//! physical range and exposes it as a byte slice no longer than what was actually mapped.
//!
//! The ACPI entry points wrap their handler in a [`Mapper`] once, taking on its contract
//! there; the table walk and decoders then map through it safely. It must never hand out a
//! slice longer than the mapping's `region_length`, nor one that outlives the mapping.
#![allow(unsafe_code)]

use acpi::{AcpiHandler, PhysicalMapping};

use super::errors::TableProblem;

/// A handler known to honour the contract of
/// [`AcpiInfo::from_rsdp_address`](super::AcpiInfo::from_rsdp_address).
pub(crate) struct Mapper<'a, H: AcpiHandler> {
    handler: &'a H,
}

impl<'a, H: AcpiHandler> Mapper<'a, H> {
    /// # Safety
    ///
    /// `handler` may be asked for any physical address and length: it maps only memory that
    /// is safe to read and that nothing writes while mapped, and reports in `region_length`
    /// how many bytes are readable from `virtual_start` (fewer than asked, even 0, when it
    /// will not map the whole range).
    pub(crate) unsafe fn new(handler: &'a H) -> Mapper<'a, H> {
        Mapper { handler }
    }

    /// Maps `length` bytes at physical `address`, refusing a mapping that covers fewer.
    pub(crate) fn map(&self, address: u64, length: usize) -> Result<MappedRegion<H>, TableProblem> {
        let unmapped = |mapped| TableProblem::Unmapped {
            mapped,
            needed: length,
        };
        let start = usize::try_from(address).map_err(|_| unmapped(0))?;
        if length == 0 {
            return Err(unmapped(0));
        }
        // SAFETY: `length` is at least `size_of::<u8>()`, and `Mapper::new`'s caller
        // guarantees the handler copes with any address and reports truthfully what it
        // mapped, which is checked below.
        let mapping = unsafe { self.handler.map_physical_region::<u8>(start, length) };
        if mapping.region_length() < length {
            return Err(unmapped(mapping.region_length()));
        }
        Ok(MappedRegion { mapping, length })
    }
}

/// `length` bytes of physical memory, mapped by the handler until this value is dropped.
pub(crate) struct MappedRegion<H: AcpiHandler> {
    mapping: PhysicalMapping<H, u8>,
    length: usize,
}

impl<H: AcpiHandler> MappedRegion<H> {
    /// The mapped bytes, exactly the `length` asked for.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `Mapper::map` checked that the handler reports at least `length` readable
        // bytes from `virtual_start`, and the handler contract says nothing writes them while
        // mapped; the slice borrows `self`, so the mapping outlives it.
        unsafe { core::slice::from_raw_parts(self.mapping.virtual_start().as_ptr(), self.length) }
    }
}
