//! PCI, the pure part: configuration-space addresses (the 0xCF8/0xCFC mechanism),
//! function headers, BAR decoding and sizing, capability lists, bus enumeration
//! ([`config`], [`scan`]), and the policy that gives domain 0 its devices and nothing
//! else ([`policy`]: which configuration writes it may make, what a BAR sizing probe reads
//! back, and which machine frames are device memory it may map).
//!
//! Who calls it: the hypervisor (`pci` at boot, through a [`config::ConfigSpace`] on the
//! real ports; `pv::pci` for domain 0's port accesses; `pv::mmu`'s I/O-frame hook) and
//! domain 0 (its own enumeration, through the same ports, which the hypervisor filters).
//! It must never touch hardware itself: every access goes through the trait, so that the
//! host tests drive it with a simulated bus.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod policy;
pub mod scan;

#[cfg(test)]
mod sim;

pub use config::{Bar, BarKind, Bdf, ConfigAddress, ConfigSpace};
pub use policy::{ConfigWrite, DeviceAccess, IoRanges};
pub use scan::{Function, scan};
