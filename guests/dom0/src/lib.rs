//! guest-dom0's pure logic: its command line ([`options`]) and the shape of the stress
//! run it derives from it and the machine ([`plan`]): which role each stress domain gets,
//! on which CPU, with which BVT parameters, under which predicted domain id, with which
//! command line; and the options and seeds of the fuzz run and containment cycles
//! ([`fuzzplan`]); and its console service's relay of each domain's console ring
//! ([`consoled`]).
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
