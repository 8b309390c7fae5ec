//! The guest interface: Xen's public x86-64 PV ABI (and the PVH start info), shared by
//! the hypervisor and by our own PV guests, so that unmodified Xen PV64 guests run too.
//!
//! Every number and layout here is taken from Xen's public headers (`xen/include/public/`)
//! and each item names the header it mirrors. Layouts are `#[repr(C)]` structs of integers
//! (or integer newtypes) with explicit padding fields; their sizes and field offsets are
//! asserted at compile time. Because no field is a `bool`, enum or reference, every bit
//! pattern is a valid value of every struct, so reading one from guest memory is sound.
//! Raw numbers stay integers inside structs; the `abi_enum` types decode them.
//!
//! Who calls it: the hypervisor (hypercall decoding, domain building, event delivery) and
//! the guests (issuing hypercalls). What it must never do: hold state, touch hardware or
//! guest memory, or make policy decisions.
//!
//! Modules, grouped by header:
//! - [`hypercall`]: hypercall and sub-operation numbers, VIRQs, the multicall entry.
//! - [`errno`]: the guest-visible error numbers.
//! - [`ids`]: domain, port, vCPU and frame newtypes.
//! - [`start_info`], [`shared_info`], [`mmu`] (xen.h); [`arch_x86`] (arch-x86/xen.h,
//!   xen-x86_64.h); [`event_channel`], [`sched`], [`memory`], [`callback`], [`vcpu`],
//!   [`version`], [`features`], [`elfnote`], [`physdev`], [`grant_table`], [`pvh`]
//!   (hvm/start_info.h), [`console`] (io/console.h: the console ring page).
//! - [`hypercall_page`]: the bytes of the guest's hypercall page.
//! - [`args`]: which command each argument struct belongs to.
//! - [`control`]: this hypervisor's own control interface for domain 0 (not a Xen header).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod macros;

pub mod args;
pub mod arch_x86;
pub mod callback;
pub mod console;
pub mod control;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod features;
pub mod grant_table;
pub mod hypercall;
pub mod hypercall_page;
pub mod ids;
pub mod memory;
pub mod mmu;
pub mod physdev;
#[cfg(test)]
mod proptests;
pub mod pvh;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod vcpu;
pub mod version;
