//! Xen's grant tables, versions 1 and 2, as pure logic for the hypervisor: a domain's
//! table of grants (its shared frames, its version, the active entries that say which
//! grants another domain is using and how), the grantee's maptrack (the handles of the
//! grants it maps), and the argument checks of `GNTTABOP_copy` and the unmaps.
//!
//! Who calls it: the hypervisor's `grant_table_op` handlers (`pv::grants`), domain
//! destruction (its teardown releases the maps a domain holds and waits until nothing uses
//! its grants), and nothing else. The hypervisor owns the locks, allocates and frees the
//! frames, takes the frame references and writes page tables; this crate never takes a
//! lock, never allocates a frame, never touches a reference count and never maps memory:
//! it reads and writes the shared frames only through the caller's [`SharedMemory`], with
//! the atomic operations the grant protocol needs (a granter may change its entries while
//! the hypervisor reads them, so every read-modify-write is a compare-and-swap with a
//! bounded number of retries, as Xen's after XSA-295).
//!
//! Modules:
//! - [`shared`]: where each entry lives and the [`SharedMemory`] access trait.
//! - [`table`]: [`GrantTable`], one domain's grants: growth, pins (the `GTF_reading` and
//!   `GTF_writing` protocol of both versions), version changes, swaps.
//! - [`maptrack`]: [`Maptrack`], one domain's mappings of other domains' grants.
//! - [`copy`]: the bounds of a `GNTTABOP_copy` and who may name frames directly.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod copy;
pub mod maptrack;
pub mod shared;
pub mod table;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use maptrack::{MapEntry, Maptrack, UnmapPlan};
pub use shared::{SharedMemory, Version};
pub use table::{GrantTable, PinRequest, Pinned};
