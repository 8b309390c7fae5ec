//! Multiprocessor start-up and coordination: the real-mode trampoline application processors
//! start in, cross-CPU function calls over mailboxes and IPIs, and the TLB clock that says
//! which CPUs a flush must reach.
//!
//! Hardware-free apart from the trampoline's bytes; the hypervisor supplies the IPIs through
//! [`xcall::Platform`].
#![cfg_attr(not(test), no_std)]

pub mod tlbclock;
pub mod trampoline;
pub mod xcall;
