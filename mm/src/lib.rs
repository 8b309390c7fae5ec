//! Memory management for the hypervisor: machine addresses, the firmware memory map,
//! per-frame metadata and the frame allocator, the hypervisor heap, and the layout of
//! the hypervisor's 64 MiB virtual window.
//!
//! Pure logic, built for the host (and tested there) and for the bare-metal target. The
//! hypervisor calls it; it never touches page tables, control registers or devices.
//! Only `heap` uses `unsafe` (it writes list links into the memory it manages).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod addr;
pub mod frame;
#[allow(unsafe_code)]
pub mod heap;
pub mod layout;
pub mod memmap;
#[cfg(test)]
mod proptests;
