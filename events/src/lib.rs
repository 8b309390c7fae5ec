//! Xen's 2-level event channels, as pure logic for the hypervisor: the lock-free
//! signalling path over a domain's shared-info bitmaps, the per-domain channel table
//! behind `event_channel_op`, and the pending check of `sched_op poll`.
//!
//! Who calls it: the hypervisor's event-channel and scheduler hypercalls, its VIRQ sources
//! (timers, console) and domain destruction. The hypervisor owns the locks, the domains and
//! the shared-info pages; this crate never touches hardware, never maps guest memory and
//! never takes a lock. The only shared state it writes is through the atomics the caller's
//! [`bitmap::SharedPage`] hands out.
//!
//! Modules:
//! - [`bitmap`]: setting, clearing and unmasking pending bits (callable from any CPU).
//! - [`table`]: [`table::Channels`], one domain's ports and their bindings.
//! - [`virq`]: which VIRQs are per-vCPU, and a domain's VIRQ-to-port map.
//! - [`poll`]: `SCHEDOP_poll`'s "is any of these ports pending?" and its wake-up rule.
//! - [`error`]: [`error::EventError`] and its guest-visible [`abi::errno::Errno`].
//! - [`limits`]: port counts.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bitmap;
pub mod error;
pub mod limits;
pub mod poll;
#[cfg(test)]
mod proptests;
pub mod table;
pub mod virq;

pub use bitmap::{Notify, SharedPage};
pub use error::EventError;
pub use table::{
    bind_interdomain, close_checked, Binding, ChannelStatus, Channels, Delivery, Endpoint,
    SendTarget, Unlink,
};
