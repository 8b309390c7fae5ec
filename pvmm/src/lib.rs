//! Paravirtual memory management by direct paging, as in Xen's x86-64 PV guests: guests
//! own their 4-level page tables and the MMU uses them as they are, so the hypervisor
//! validates every table before it is used and every change after. A guest can then map
//! only frames it owns (or that are shared with it), never maps a page-table frame
//! writable, never touches the hypervisor's slots, and a frame changes type only when
//! nothing uses it in its current type.
//!
//! The hypervisor calls [`PvMmu`] from its `mmu_update`, `mmuext_op` and
//! `update_va_mapping` handlers, the domain builder and domain destruction; it gives it the
//! frame table ([`mm::frame::FrameTable`]), the fixed hypervisor entries ([`Layout`]) and
//! access to table contents ([`TableMemory`]). This crate is pure logic: it never maps
//! memory, loads CR3 or flushes a TLB itself, never allocates or frees a frame, and has no
//! `unsafe`. Walks over many tables (validation, devalidation, relinquish) stop when the
//! table memory says so and return [`MmError::Restart`]; calling the same operation
//! again continues them (see [`refs`]).
//!
//! Modules: [`entry`] (entry bits), [`level`] (table levels), [`policy`] (what an entry
//! may contain), [`memory`] (the table-access trait), [`refs`] (reference counting and the
//! counting model), `validate` (whole-table validation and devalidation, and how a
//! stopped walk is continued), [`update`] (one entry update),
//! [`pin`] (pins and base pointers), [`walk`] (finding an L1 entry), [`relinquish`]
//! (domain destruction), [`foreign`] (grant mappings), [`device`] (device memory), [`m2p`] (the read-only
//! machine-to-physical table's geometry and the entries that map it), [`error`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod entry;
pub mod error;
pub mod device;
pub mod foreign;
pub mod level;
pub mod m2p;
pub mod memory;
pub mod pin;
pub mod policy;
pub mod refs;
pub mod relinquish;
pub mod update;
mod validate;
pub mod walk;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod foreign_tests;
#[cfg(test)]
mod preempt_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use entry::{Pte, PteFlags};
pub use device::DeviceMemory;
pub use foreign::grant_entry;
pub use error::MmError;
pub use level::Level;
pub use memory::TableMemory;
pub use pin::BasePtr;
pub use policy::Layout;
pub use refs::{PvMmu, SharedWith};
pub use relinquish::RelinquishProgress;
pub use update::AccessedDirty;
pub use walk::EntrySlot;
