//! [`TableMemory`]: how this crate reads and writes page-table frames, asks for stale TLB
//! entries to be flushed and asks whether to stop a long walk, without ever touching
//! memory or reading a clock itself.
//!
//! The hypervisor implements it (through its temporary mappings and TLB-flush IPIs) and
//! passes it to every operation that looks at table contents; host tests implement it over
//! a map of frames. Implementations must never check or refuse anything: all policy is in
//! this crate.

use mm::addr::Mfn;

use crate::entry::{ACCESSED, DIRTY};

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
        self.write(mfn, index, value | (current & (ACCESSED | DIRTY)));
    }

    /// Called once each time frame `mfn` takes a type that forbids writable mappings (a
    /// page-table level, descriptor or shared page), after the type is set and before the
    /// contents are read. On return no CPU's TLB may still hold a writable translation of
    /// `mfn` that a since-removed L1 entry created. Flushing every CPU's TLB is the simple
    /// correct implementation (Xen filters with a per-frame timestamp).
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
}
