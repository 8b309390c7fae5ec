//! guest-dom0's pure logic: its command line ([`options`]) and the shape of the stress
//! run it derives from it and the machine ([`plan`]): which role each stress domain gets,
//! on which CPU, with which BVT parameters, under which predicted domain id, with which
//! command line; the options and seeds of the fuzz run and containment cycles
//! ([`fuzzplan`]); the options of an XTF test's domain ([`xtfplan`]); and its console
//! service's relay of each domain's console ring ([`consoled`]); the driver's side of a
//! virtio split virtqueue ([`virtq`]), which its virtio disk fills with bus addresses.
//!
//! The domain 0 binary (`src/main.rs`, guest target only) executes the plan through the
//! control interface; everything here builds and is tested on the host. It must never
//! make a hypercall.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod consoled;
pub mod fuzzplan;
pub mod options;
pub mod plan;
pub mod virtq;
pub mod xtfplan;
