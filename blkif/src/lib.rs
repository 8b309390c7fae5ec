//! Xen's block device protocol (`io/blkif.h`, `io/xenbus.h`) as pure logic shared by the
//! block frontend (`guests/rt`) and the block backend (domain 0's blkback): the request and
//! response layouts as ring entries, the operations and statuses, the xenbus states and the
//! store keys of the handshake, and the backend's checking of every request against the
//! virtual block device it names.
//!
//! Modules:
//! - [`wire`]: the C layouts (`blkif_request`, `blkif_request_segment`, `blkif_response`,
//!   the discard and indirect forms), their [`xenring::Entry`] codecs, operation and
//!   status numbers.
//! - [`check`]: [`check::check_request`] turns a request copied off the ring into an
//!   [`check::Work`] the backend may perform, or a [`check::Refusal`] that carries the
//!   response to send; it never panics on any request.
//! - [`backend`]: [`backend::Backend`], one frontend's ring served with a bounded budget
//!   per round through the caller's [`backend::DataMover`] (grant copies).
//! - [`copies`]: a checked request as the `GNTTABOP_copy` descriptors that move its data
//!   between the frontend's grants and the backend's own disk frames.
//! - [`persistent`]: [`persistent::Persistent`], the grants of one frontend the backend
//!   keeps mapped for its disk (`feature-persistent`), a request as bus-address extents.
//! - [`frontend`]: [`frontend::Frontend`], requests with tracked ids, responses in any order.
//! - [`xenbus`]: `XenbusState`, the VBD key names, virtual device numbers (`xvda`).
//!
//! Who calls it: blkback (domain 0) and blkfront (guests). What it must never do: trust a
//! request: every field of a request is the frontend's to choose, so every path from a
//! request ends in work that stays inside the VBD or in an error response. Grant
//! references are not checked here (only the hypervisor knows whose they are): the backend
//! moves data with grant copies naming the frontend as the granter, or (persistent grants)
//! maps the frontend's grants for its device; the hypervisor refuses either for any
//! reference the frontend has not granted as the copy or map needs.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backend;
pub mod check;
pub mod copies;
pub mod frontend;
pub mod persistent;
pub mod wire;
pub mod xenbus;

pub use check::{check_request, Refusal, Vbd, Work};
pub use wire::{Request, Response, Segment};

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
