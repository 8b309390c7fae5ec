//! [`TableMemory`]: how this crate reads and writes page-table frames, asks for stale TLB
//! entries to be flushed and asks whether to stop a long walk, without ever touching
//! memory or reading a clock itself.
//!
//! The hypervisor implements it (through its temporary mappings and TLB-flush IPIs) and
//! passes it to every operation that looks at table contents; host tests implement it over
//! a map of frames. Implementations must never check or refuse anything: all policy is in
//! this crate.

use mm::addr::Mfn;
use mm::frame::PageType;

use crate::entry::PteFlags;

/// Access to the contents of page-table frames.
pub trait TableMemory {
    /// Reads entry `index` (0..512) of frame `mfn`.
    fn read(&self, mfn: Mfn, index: usize) -> u64;

    /// Writes entry `index` (0..512) of frame `mfn`.
    fn write(&mut self, mfn: Mfn, index: usize, value: u64);

    /// Writes `value` OR-ed with the accessed and dirty bits the entry holds at the moment
    /// of the write (`MMU_PT_UPDATE_PRESERVE_AD`). The default reads then writes, so it can
    /// lose an A/D bit the processor sets in between; an implementation over live tables
    /// should use a compare-and-swap loop.
    fn write_preserving_ad(&mut self, mfn: Mfn, index: usize, value: u64) {
        let current = self.read(mfn, index);
        self.write(mfn, index, value | (current & PteFlags::ACCESSED.union(PteFlags::DIRTY).bits()));
    }

    /// Writes `new` if the entry still holds `expected` (one atomic compare-and-swap on
    /// live tables, so that an accessed or dirty bit a processor sets in between makes it
    /// fail); whether it wrote. The default reads, compares, then writes.
    fn compare_exchange(&mut self, mfn: Mfn, index: usize, expected: u64, new: u64) -> bool {
        if self.read(mfn, index) != expected {
            return false;
        }
        self.write(mfn, index, new);
        true
    }

    /// Called once each time frame `mfn` takes a type that forbids writable mappings (a
    /// page-table level, descriptor or shared page), after the type is set and before the
    /// contents are read. On return no CPU's TLB may still hold a writable translation of
    /// `mfn` that a since-removed L1 entry created. Flushing every CPU's TLB is the simple
    /// correct implementation (Xen filters with a per-frame timestamp, recorded in
    /// [`Self::type_released`]).
    fn flush_stale_writable(&mut self, mfn: Mfn);

    /// Asked after each entry a validation or devalidation has processed (and after each
    /// frame a relinquish has looked at): `true` stops the operation there, which then
    /// returns [`crate::MmError::Restart`] with its progress kept in the frames, to be
    /// continued by calling it again. Every call makes progress before it asks, so an
    /// implementation may answer `true` as often as it likes. The hypervisor answers from
    /// a work and time budget per call; the default never stops.
    fn should_preempt(&mut self) -> bool {
        false
    }

    /// Called once each time frame `mfn` takes the writable type ([`PageType::None`]) at
    /// type count zero, before the writable mapping is stored. On return no CPU may still
    /// hold a translation *through* `mfn` from a time it was a page table (a
    /// paging-structure cache entry that a since-removed parent entry created): written to,
    /// the frame would otherwise steer that CPU's translations. Needed only if the frame
    /// was a table since the CPUs last flushed; the default does nothing (no TLB).
    fn flush_stale_tables(&mut self, _mfn: Mfn) {}

    /// Called when the last reference of `mfn`'s type `was` goes (the last writable
    /// mapping removed, a table devalidated, a descriptor page dropped), after every entry
    /// that referred to it in that type is gone and, for a table, before the frame becomes
    /// untyped. An implementation records the time here (Xen's `tlbflush_timestamp`), so
    /// that the two flushes above can skip CPUs that have flushed since. Calls for one
    /// domain's frames are serialized by the caller (the hypervisor's page-table lock).
    fn type_released(&mut self, _mfn: Mfn, _was: PageType) {}
}
