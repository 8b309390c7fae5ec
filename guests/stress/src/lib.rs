//! guest-stress's interface and pure logic: the worker's command line ([`args`]), which
//! domain 0 writes and the worker parses, the `key=value` word syntax both use
//! ([`keyvalue`]), the log-linear histogram of lateness and round-trip times
//! ([`histogram`]) and the histogram's report lines ([`report`]), all as
//! `stress/PROTOCOL.md` defines them.
//!
//! The worker binary (`src/main.rs`, guest target only) and domain 0 (`guest-dom0`) use
//! it; everything here builds and is tested on the host. It must never touch the
//! hypervisor: no hypercalls, no hardware.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod args;
pub mod histogram;
pub mod keyvalue;
pub mod report;
