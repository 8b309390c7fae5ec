//! guest-fuzz's pure logic: its command line ([`options`]: the seed, the classes to avoid,
//! the families to run), its random numbers ([`rng`]), what it knows of its own domain
//! ([`world`]) and the generators that draw every value it passes to the hypervisor
//! ([`gen`]), with the rules that keep the fuzzer itself alive.
//!
//! The fuzzer binary (`src/main.rs`, guest target only) makes the calls; everything here
//! builds and is tested on the host. It must never make a hypercall.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod gen;
pub mod options;
pub mod rng;
pub mod world;
