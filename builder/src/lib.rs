//! The PV domain builder: from a Xen PV64 ELF kernel (a boot module) to a domain's
//! start-of-day memory, as Xen's domain builder lays it out.
//!
//! The hypervisor calls it in three steps:
//! 1. [`PvKernel::parse`] checks the image, which it reads through an [`ImageSource`]
//!    ([`image`]: the hypervisor's boot modules are read a page or two at a time, never
//!    mapped whole) with a strictly bounds-checked ELF64 reader ([`elf`], on the `elf`
//!    crate's header parsers), the Xen notes in
//!    [`xen_notes`], the segments' placement in [`kernel`];
//! 2. [`Plan::new`] decides what goes in which pseudo-physical frame ([`layout`]), and
//!    [`Plan::minimum_nr_pages`] tells the smallest reservation a guest boots with;
//! 3. [`build()`] writes the frames through the hypervisor's [`GuestMemory`] and returns
//!    the entry state and the page-table frames to type and pin ([`build`](mod@build)),
//!    with the tables from [`page_tables`] and the `start_info` page from [`start_info`].
//!
//! The facts of the address space it obeys are in [`address_space`]; every refusal is a
//! [`BuildError`]. The hypervisor owns the frames, their types and the vCPU state: this
//! crate must never allocate guest frames, touch hardware or hold state between builds.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod address_space;
pub mod build;
pub mod elf;
pub mod error;
pub mod image;
pub mod kernel;
pub mod layout;
pub mod page_tables;
pub mod start_info;
pub mod xen_notes;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_image;

pub use build::{build, BuiltDomain, GuestMemory, HypervisorInputs};
pub use error::BuildError;
pub use image::{ImageSource, ReadError};
pub use kernel::PvKernel;
pub use layout::{DomainConfig, PfnRange, Plan};
pub use page_tables::{Level, PageTableFrame};
pub use xen_notes::XenNotes;
