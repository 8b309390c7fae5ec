//! Multiprocessor start-up and coordination: the real-mode trampoline application processors
//! start in, and cross-CPU function calls over mailboxes and IPIs.
//!
//! Hardware-free apart from the trampoline's bytes; the hypervisor supplies the IPIs through
//! [`xcall::Platform`].
#![cfg_attr(not(test), no_std)]

pub mod trampoline;
pub mod xcall;
